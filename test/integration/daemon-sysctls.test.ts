/*
 * A hardened host: its sysctls are the same before `vpm up` and after every kind
 * of stop. Writing net.ipv4.ip_forward makes the kernel rewrite
 * conf.all.accept_redirects (to the opposite), conf.default.forwarding and every
 * device's forwarding (inet_forward_change in net/ipv4/devinet.c): restoring
 * ip_forward=0 alone would leave ICMP redirects accepted on every interface, and
 * a device that forwarded on its own (hb here) not forwarding.
 *
 *     ns tenant-a               ns host                                ns tenant-b
 *     a0 198.18.1.2 ══veth══ ha 198.18.1.1   hb 198.18.2.1 ══veth══ b0 198.18.2.2
 *                            ip_forward=0, all.accept_redirects=0,
 *                            default.accept_redirects=0, hb.forwarding=1
 *
 * Every sysctl is read and written inside the lab's host namespace only.
 */

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  hostState,
  hostSysctls,
  requireVpmBuild,
  runVpm,
  type VpmConfigFile,
  VpmDaemon,
  writeVpmConfig,
} from '../support/vpm.js';
import { CLIENT_A, runClient, startInstance, type Topology, twoTenants, VIP } from './topology.js';

const CONFIG: VpmConfigFile = {
  services: [{ name: 'web', address: VIP, port: 9000 }],
  applications: [{ aid: 'tenant-a', instances: [{ port: 19001 }] }],
  default: { aid: 'tenant-a' },
};

describe('a hardened host: sysctls before vpm up and after each kind of stop', () => {
  let lab: NetLab;
  let topo: Topology;
  let dir: string;
  let configPath: string;
  let pristine: string[];
  let pristineState: ReturnType<typeof hostState>;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'sysctl');
    requireVpmBuild();
    lab = new NetLab('sysctls');
    topo = twoTenants(lab);
    lab.run(topo.host, 'sysctl', [
      '-qw',
      'net.ipv4.conf.all.accept_redirects=0',
      'net.ipv4.conf.default.accept_redirects=0',
      'net.ipv4.conf.hb.forwarding=1',
    ]);
    await startInstance(lab, topo.host, 'tenant-a', 19001, '0.0.0.0');
    dir = lab.tempDir();
    configPath = writeVpmConfig(dir, CONFIG);
    pristine = hostSysctls(lab, topo.host);
    pristineState = hostState(lab, topo.host);
    expect(pristine).toContain('/proc/sys/net/ipv4/ip_forward:0');
    expect(pristine).toContain('/proc/sys/net/ipv4/conf/all/accept_redirects:0');
    expect(pristine).toContain('/proc/sys/net/ipv4/conf/hb/forwarding:1');
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
    // vpm is really up: forwarding on, and a client gets through.
    const during = hostSysctls(lab, topo.host);
    expect(during).toContain('/proc/sys/net/ipv4/ip_forward:1');
    expect(during).toContain('/proc/sys/net/ipv4/conf/ha/forwarding:1');
    const r = await runClient(lab, topo.tenantA, { mode: 'hello', localAddress: CLIENT_A });
    expect(r.event, r.output).toBe('done');
    return d;
  }

  async function tunGone(): Promise<void> {
    await waitFor(() => !lab.run(topo.host, 'ip', ['-o', 'link', 'show']).includes('vpm0'), {
      what: 'vpm0 to disappear',
      timeoutMs: 5000,
    });
  }

  it('SIGTERM', async () => {
    const vpm = await up();
    expect(await vpm.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostSysctls(lab, topo.host)).toEqual(pristine);
    expect(hostState(lab, topo.host)).toEqual(pristineState);
  });

  it('SIGKILL, then vpm down', async () => {
    const vpm = await up();
    await vpm.kill();
    const down = await runVpm(lab, topo.host, ['down', '-c', configPath]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(/^undone: sysctl net\.ipv4\.conf\.all\.accept_redirects=0$/m);
    expect(down.stdout).toMatch(/^undone: sysctl net\.ipv4\.conf\.hb\.forwarding=1$/m);
    // The persistent TUN is deleted, last; its own sysctls go with it (none restored, nor said to be).
    expect(
      down.stdout.split('\n').filter((l) => l.startsWith('undone:') && l.includes('vpm0')),
    ).toEqual(['undone: ip link delete dev vpm0']);
    await tunGone();
    expect(hostSysctls(lab, topo.host)).toEqual(pristine);
    expect(hostState(lab, topo.host)).toEqual(pristineState);
  });

  it('SIGKILL, then the next vpm up (and its SIGTERM)', async () => {
    const first = await up();
    await first.kill();
    const second = await up();
    // It takes the crashed daemon's state over, journal and all: nothing undone first.
    expect(second.logs().some((l) => l.event === 'stale_state_removed')).toBe(false);
    expect(
      second.logs().find((l) => l.event === 'state_adopted'),
      second.output(),
    ).toBeDefined();
    // While the second daemon runs, the host is as a first start would leave it.
    expect(hostSysctls(lab, topo.host)).toContain('/proc/sys/net/ipv4/conf/all/accept_redirects:0');
    expect(await second.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostSysctls(lab, topo.host)).toEqual(pristine);
    expect(hostState(lab, topo.host)).toEqual(pristineState);
  });
});
