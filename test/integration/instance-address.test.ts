/*
 * Instances on a local address other than the TUN's (`instances[].address`): the
 * host's own uplink addresses. Their replies must go back through vpm (or the
 * client gets them from the instance's real address and the connection hangs),
 * and nothing else the host sends from those addresses may.
 *
 *     ns tenant-a                            ns host                            ns tenant-b
 * ┌──────────────────┐        ┌────────────────────────────────────┐        ┌──────────────────┐
 * │ a0 198.18.1.2/24 │══veth══│ ha 198.18.1.1/24  hb 198.18.2.1/24 │══veth══│ b0 198.18.2.2/24 │
 * │ client           │        │ tenant-a: TCP + UDP bound to       │        │ client           │
 * └──────────────────┘        │   198.18.1.1:19003 (address set)   │        └──────────────────┘
 *                             │ tenant-b: TCP on 0.0.0.0:19004,    │
 *                             │   UDP on 198.18.2.1:19004          │
 *                             │   (instance address 198.18.2.1)    │
 *                             │ not vpm's: TCP on 198.18.1.1:19500 │
 *                             │ all.rp_filter=1 (strict)           │
 *                             └────────────────────────────────────┘
 */

import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  type HostState,
  hostState,
  jsonLines,
  requireVpmBuild,
  rulesForTable,
  type VpmConfigFile,
  VpmDaemon,
  waitJsonEvent,
  writeVpmConfig,
} from '../support/vpm.js';
import {
  CLIENT_A,
  CLIENT_B,
  HOST_A,
  HOST_B,
  runClient,
  startInstance,
  type Topology,
  twoTenants,
  VIP,
} from './topology.js';

const TABLE = 100;
const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;

const CONFIG = (bAddress: string | undefined): VpmConfigFile => ({
  services: [
    { name: 'web', address: VIP, port: 9000 },
    { name: 'echo', address: VIP, port: 7, protocol: 'udp' },
  ],
  applications: [
    { aid: 'tenant-a', instances: [{ address: HOST_A, port: 19003 }] },
    {
      aid: 'tenant-b',
      instances: [bAddress === undefined ? { port: 19004 } : { address: bAddress, port: 19004 }],
    },
  ],
  selectors: [{ clients: ['198.18.2.0/24'], aid: 'tenant-b' }],
  default: { aid: 'tenant-a' },
});

describe('instances on an address other than tun.address', () => {
  let lab: NetLab;
  let topo: Topology;
  let pristine: HostState;
  let dir: string;
  let configPath: string;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'sysctl', 'python3');
    requireVpmBuild();
    lab = new NetLab('instaddr');
    topo = twoTenants(lab);
    // Strict reverse-path filtering host-wide: vpm's own TUN setting must still let
    // the translated packets in (the kernel uses max(all, device)).
    lab.run(topo.host, 'sysctl', ['-qw', 'net.ipv4.conf.all.rp_filter=1']);
    await Promise.all([
      startInstance(lab, topo.host, 'tenant-a', 19003, HOST_A),
      startInstance(lab, topo.host, 'tenant-b', 19004, '0.0.0.0'),
      startInstance(lab, topo.host, 'not-vpm', 19500, HOST_A),
      startResponder(lab, topo.host, 'tenant-a', HOST_A, 19003),
      // A UDP server on the wildcard address answers from the address its route
      // lookup picks, A (see docs/deployment.md): a UDP instance on X binds X.
      startResponder(lab, topo.host, 'tenant-b', HOST_B, 19004),
    ]);
    dir = lab.tempDir();
    configPath = writeVpmConfig(dir, CONFIG(HOST_B));
    pristine = hostState(lab, topo.host);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  const daemons: VpmDaemon[] = [];
  afterEach(async () => {
    for (const d of daemons.splice(0)) if (d.alive) await d.stop().catch(() => undefined);
  });

  async function up(): Promise<VpmDaemon> {
    const d = await VpmDaemon.startFile(lab, topo.host, configPath, dir);
    daemons.push(d);
    return d;
  }

  async function tcpHello(ns: string, client: string): Promise<Record<string, unknown>> {
    const r = await runClient(lab, ns, { mode: 'hello', localAddress: client, timeoutMs: 10_000 });
    expect(r.event, r.output).toBe('done');
    return r.hello as Record<string, unknown>;
  }

  it('TCP and UDP through vpm reach instances on the uplink addresses; the host’s other traffic from them is untouched', async () => {
    const vpm = await up();
    expect(rulesForTable(lab, topo.host, TABLE)).toEqual([
      `100:\tfrom 198.19.255.1 ipproto tcp lookup ${TABLE}`,
      `100:\tfrom 198.19.255.1 ipproto udp lookup ${TABLE}`,
      `100:\tfrom all iif lo ipproto udp sport 19003-19004 lookup ${TABLE}`,
      `100:\tfrom ${HOST_A} ipproto tcp sport 19003 lookup ${TABLE}`,
      `100:\tfrom ${HOST_B} ipproto tcp sport 19004 lookup ${TABLE}`,
      `100:\tfrom 198.19.255.1 iif lo ipproto icmp lookup ${TABLE}`,
    ]);

    // TCP: a server bound to the address, and one on the wildcard address.
    const a = await tcpHello(topo.tenantA, CLIENT_A);
    expect(a.instance).toBe('tenant-a');
    expect(a.remoteAddress).toBe(CLIENT_A);
    const b = await tcpHello(topo.tenantB, CLIENT_B);
    expect(b.instance).toBe('tenant-b');
    expect(b.remoteAddress).toBe(CLIENT_B);

    // UDP: the replies come from VIP:7, and the instance saw the real client.
    const ua = udpClient(lab, topo.tenantA, { mode: 'who', host: VIP, port: 7 });
    expect(ua.from).toBe(`${VIP}:7`);
    expect((ua.reply as Record<string, unknown>).name).toBe('tenant-a');
    expect(String((ua.reply as Record<string, unknown>).saw)).toMatch(/^198\.18\.1\.2:/);
    const ub = udpClient(lab, topo.tenantB, { mode: 'who', host: VIP, port: 7 });
    expect(ub.from).toBe(`${VIP}:7`);
    expect((ub.reply as Record<string, unknown>).name).toBe('tenant-b');

    // The host's own service on the uplink address, reached directly: not steered.
    const direct = await runClient(lab, topo.tenantA, {
      mode: 'hello',
      host: HOST_A,
      port: 19500,
      localAddress: CLIENT_A,
      timeoutMs: 10_000,
    });
    expect(direct.event, direct.output).toBe('done');
    expect((direct.hello as Record<string, unknown>).instance).toBe('not-vpm');

    const flows = await vpm.flows();
    expect(flows.map((f) => f.real).sort()).toEqual(
      expect.arrayContaining([`${HOST_A}:19003`, `${HOST_B}:19004`]),
    );

    expect(await vpm.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostState(lab, topo.host)).toEqual(pristine);
  });

  it('a reload adds and removes exactly the rules of the instance addresses; SIGKILL leaves them journalled', async () => {
    const vpm = await up();
    const ruleB = `100:\tfrom ${HOST_B} ipproto tcp sport 19004 lookup ${TABLE}`;
    expect(rulesForTable(lab, topo.host, TABLE)).toContain(ruleB);

    // tenant-b's instance moves to the TUN address: its rule goes.
    writeVpmConfig(dir, CONFIG(undefined));
    process.kill(vpm.pid, 'SIGHUP');
    await waitJsonEvent(lab, vpm.child, 'reloaded', 10_000);
    expect(rulesForTable(lab, topo.host, TABLE)).not.toContain(ruleB);
    expect(rulesForTable(lab, topo.host, TABLE)).toContain(
      `100:\tfrom ${HOST_A} ipproto tcp sport 19003 lookup ${TABLE}`,
    );

    // And back: the rule returns, and the instance behind it answers.
    writeVpmConfig(dir, CONFIG(HOST_B));
    process.kill(vpm.pid, 'SIGHUP');
    await waitFor(
      () =>
        jsonLines(lab.output(vpm.child).stdout).filter((l) => l.event === 'reloaded').length >= 2,
      { what: 'the second reload', timeoutMs: 10_000 },
    );
    expect(rulesForTable(lab, topo.host, TABLE)).toContain(ruleB);
    expect((await tcpHello(topo.tenantB, CLIENT_B)).instance).toBe('tenant-b');

    // A crash leaves the rules; the journal lists them, and vpm down removes them.
    await vpm.kill();
    expect(existsSync(vpm.stateFile)).toBe(true);
    expect(rulesForTable(lab, topo.host, TABLE)).toContain(ruleB);
    const second = await up();
    expect(await second.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostState(lab, topo.host)).toEqual(pristine);
  });
});

async function startResponder(lab: NetLab, ns: string, name: string, host: string, port: number) {
  const child = lab.spawn(ns, 'python3', [
    `${FIXTURES}udp-responder.py`,
    JSON.stringify({ name, host, port }),
  ]);
  await waitJsonEvent(lab, child, 'ready', 10_000);
  return child;
}

function udpClient(
  lab: NetLab,
  ns: string,
  args: Record<string, unknown>,
): Record<string, unknown> {
  const out = lab.run(ns, 'python3', [`${FIXTURES}udp-client.py`, JSON.stringify(args)], {
    timeoutMs: 20_000,
  });
  const done = jsonLines(out).find((e) => e.event === 'done');
  if (!done) throw new Error(`udp-client.py ${JSON.stringify(args)}:\n${out}`);
  return done;
}
