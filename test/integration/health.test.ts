/**
 * The passive health check with the real kernel: one AID with two instances, one
 * of them not listening (stopped). The host answers a SYN to the stopped one
 * with a RST; vpm marks it down, sends that SYN to the other instance and new
 * connections too, so every connection of the client succeeds — without the
 * check, round robin sent every other connection to the closed port and the
 * client got "connection refused". Then the instance starts, the down time
 * ends, and it gets connections again.
 *
 *   tenant-a (198.18.1.2) ──veth── host: vpm; instance "first" :19001,
 *   sequential clients                    "second" :19002 (started late)
 */

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../../src/view/views.js';
import { NetLab, requireRoot, waitFor } from '../support/netns.js';
import { type VpmConfigFile, VpmDaemon, writeVpmConfig } from '../support/vpm.js';
import { startInstance, type Topology, twoTenants, VIP, VPORT } from './topology.js';

const lab = new NetLab('health');
let topo: Topology;
let vpm: VpmDaemon;

const config = (downMs: number, offloads: 'auto' | 'off'): VpmConfigFile => ({
  tun: { offloads },
  services: [{ name: 'web', address: VIP, port: VPORT }],
  applications: [{ aid: 'web', instances: [{ port: 19001 }, { port: 19002 }] }],
  default: { aid: 'web' },
  health: { downMs },
});

/**
 * `n` connections one after the other from tenant-a, each reading the instance's
 * hello line: the instance names (or "error:CODE"), in order.
 */
function sequential(n: number): string[] {
  const script = `
    const net = require('node:net');
    const one = () => new Promise((resolve) => {
      const s = net.connect({ host: '${VIP}', port: ${VPORT} });
      let buf = '';
      s.setTimeout(15000, () => { s.destroy(); resolve('timeout'); });
      s.on('error', (e) => resolve('error:' + e.code));
      s.on('data', (d) => {
        buf += d;
        const nl = buf.indexOf('\\n');
        if (nl < 0) return;
        resolve(JSON.parse(buf.slice(0, nl)).instance);
        s.destroy();
      });
    });
    (async () => {
      const out = [];
      for (let i = 0; i < ${n}; i++) out.push(await one());
      console.log(JSON.stringify(out));
    })();
  `;
  const out = lab.run(topo.tenantA, process.execPath, ['-e', script], { timeoutMs: 120_000 });
  return JSON.parse(out.trim().split('\n').pop()!) as string[];
}

const instances = async () => (await vpm.cliJson('instances')) as InstanceView[];
const byPort = (list: InstanceView[], port: number) => list.find((i) => i.port === port)!;

beforeAll(() => {
  requireRoot();
  topo = twoTenants(lab);
}, 60_000);

afterAll(async () => {
  await vpm?.stop().catch(() => {});
  await lab.cleanup();
});

describe.each(['auto', 'off'] as const)('passive health check (tun.offloads %s)', (offloads) => {
  let first: ChildProcess | null = null;
  let second: ChildProcess | null = null;

  beforeAll(async () => {
    // A long down time first: the stopped instance stays down while the test looks.
    vpm = await VpmDaemon.start(lab, topo.host, config(600_000, offloads));
    first = await startInstance(lab, topo.host, 'first', 19001);
  }, 60_000);

  afterAll(async () => {
    // By pid, before the next daemon brings the TUN address back.
    for (const c of [first, second]) if (c) await lab.stop(c, 'SIGTERM', 5000);
    first = null;
    second = null;
    await vpm?.stop();
  });

  it('a stopped instance with two of its AID: every connection succeeds', async () => {
    const answered = sequential(40);
    expect(answered).toEqual(Array(40).fill('first'));
    const stats = await vpm.stats();
    const h = stats.health as Record<string, number>;
    // The first SYN to the stopped instance was refused, and sent to "first" instead;
    // after that no new connection went to it.
    expect(h.instanceRefusals).toBe(1);
    expect(h.synRetried).toBe(1);
    expect(h.refusalsForwarded).toBe(0);
    expect(stats.flowsRefused).toBe(0);
    const list = await instances();
    expect(byPort(list, 19002).health).toMatchObject({ state: 'down', refusals: 1 });
    expect(byPort(list, 19001).health).toMatchObject({ state: 'up', refusals: 0 });
    const down = vpm.logs().filter((l) => l.event === 'instance_down');
    expect(down).toHaveLength(1);
    expect(down[0]).toMatchObject({ aid: 'web', instance: '198.19.255.1:19002' });
  });

  it('gets connections again once it runs and its down time is over', async () => {
    second = await startInstance(lab, topo.host, 'second', 19002);
    // A reload with a short down time shortens the running mark too.
    writeVpmConfig(vpm.dir, config(200, offloads));
    process.kill(vpm.pid, 'SIGHUP');
    await waitFor(
      () =>
        vpm.logs().some((l) => l.event === 'instance_up' && l.instance === '198.19.255.1:19002'),
      { what: 'instance_up for 19002', timeoutMs: 15_000 },
    );
    expect(byPort(await instances(), 19002).health).toMatchObject({ state: 'up', refusals: 1 });
    // Round robin over both again: of four connections, two go to each.
    const answered = sequential(4);
    expect(answered.filter((a) => a === 'second')).toHaveLength(2);
    expect(answered.filter((a) => a === 'first')).toHaveLength(2);
    const h = (await vpm.stats()).health as Record<string, number>;
    expect(h.instanceRefusals).toBe(1);
  });
});
