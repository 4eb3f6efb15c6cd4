/*
 * The IPv6 host recipe (src/host/setup.ts): what `vpm up` sets up for a config
 * with IPv6 addresses, and that the host is exactly as before after a SIGTERM
 * and after a `kill -9` followed by `vpm down`: `ip -6 rule`, `ip -6 route`
 * (every table), `ip -6 addr`, `ip rule` and every IPv4/IPv6 conf sysctl. No
 * IPv6 traffic is translated here (that is the data plane's part of issue 12):
 * these are the kernel's tables, read while up and after.
 *
 *     ns host (IPv6 on, as on a real host)
 *       ha 198.18.1.1/24 2001:2:0:1::1/64 ══veth══ a0 (ns tenant-a)
 *       hb 198.18.2.1/24 2001:2:0:2::1/64 ══veth══ b0 (ns tenant-b)
 *       vpm0 (the TUN, while up): 198.19.255.1/32, 2001:2:0:ff::1/128
 *       ha accept_ra=1 (the default), hb force_forwarding=1 where the kernel has it
 *
 * The second part runs HostSetup itself, inside the namespace, with the way of
 * kernels before 6.17 (net.ipv6.conf.all.forwarding, "all"), on a TUN made with
 * `ip tuntap`, and leaves its journal behind as a crash would: the side effects
 * the kernel has (every device's forwarding, force_forwarding, default.forwarding)
 * and vpm's accept_ra=2 are restored by cleanStale, the code `vpm down` runs.
 */

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/base/paths.js';
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
import { type Topology, twoTenants } from './topology.js';

const CONFIG: VpmConfigFile = {
  services: [
    { name: 'web', address: ['198.19.0.9', '2001:2::9'], port: 9000 },
    { name: 'dns', address: '2001:2::53', port: 53, protocol: 'udp' },
  ],
  applications: [
    {
      aid: 'a',
      instances: [{ port: 19001 }, { address: '2001:2:0:1::1', port: 19005, service: 'web' }],
    },
  ],
  pool: { range: '20000-20009' },
  default: { aid: 'a' },
};

/** Everything of IPv6 (and the IPv4 rules) the recipe could leave behind. */
function state6(lab: NetLab, ns: string) {
  return {
    rules6: lab.run(ns, 'ip', ['-6', 'rule', 'show']),
    routes6: lab.run(ns, 'ip', ['-6', 'route', 'show', 'table', 'all']),
    addrs6: lab.run(ns, 'ip', ['-6', '-o', 'addr', 'show']),
  };
}

const lines = (s: string) => s.split('\n').filter((l) => l !== '');

describe('the IPv6 host recipe', () => {
  let lab: NetLab;
  let topo: Topology;
  let dir: string;
  let configPath: string;
  let pristine: string[];
  let pristineState: ReturnType<typeof hostState>;
  let pristine6: ReturnType<typeof state6>;
  const daemons: VpmDaemon[] = [];

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'sysctl');
    requireVpmBuild();
    lab = new NetLab('hostv6');
    topo = twoTenants(lab);
    lab.run(topo.host, 'ip', ['-6', 'addr', 'add', '2001:2:0:1::1/64', 'dev', 'ha', 'nodad']);
    lab.run(topo.host, 'ip', ['-6', 'addr', 'add', '2001:2:0:2::1/64', 'dev', 'hb', 'nodad']);
    lab.run(topo.host, 'sysctl', ['-qw', 'net.ipv6.conf.ha.accept_ra=1']);
    dir = lab.tempDir();
    configPath = writeVpmConfig(dir, CONFIG);
    // The veths' link-local addresses are tentative until duplicate address
    // detection ends, and their local routes come only then: the state to compare
    // with is the settled one.
    await waitFor(
      () => lab.run(topo.host, 'ip', ['-6', 'addr', 'show', 'tentative']).trim() === '',
      {
        what: 'DAD to end on ha and hb',
        timeoutMs: 10_000,
      },
    );
    pristine = hostSysctls(lab, topo.host);
    pristineState = hostState(lab, topo.host);
    pristine6 = state6(lab, topo.host);
    expect(pristine).toContain('/proc/sys/net/ipv6/conf/all/forwarding:0');
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  afterEach(async () => {
    for (const d of daemons.splice(0)) if (d.alive) await d.stop().catch(() => undefined);
  });

  async function up(): Promise<VpmDaemon> {
    const d = await VpmDaemon.startFile(lab, topo.host, configPath, dir);
    daemons.push(d);
    return d;
  }

  async function tunGone(): Promise<void> {
    await waitFor(() => !lab.run(topo.host, 'ip', ['-o', 'link', 'show']).includes('vpm0'), {
      what: 'vpm0 to disappear',
      timeoutMs: 5000,
    });
  }

  function expectPristine(): void {
    expect(hostSysctls(lab, topo.host)).toEqual(pristine);
    expect(hostState(lab, topo.host)).toEqual(pristineState);
    expect(state6(lab, topo.host)).toEqual(pristine6);
  }

  it('while up: the TUN address, routes, rules and TUN sysctls of the recipe', async () => {
    const vpm = await up();
    const ns = topo.host;
    expect(lab.run(ns, 'ip', ['-6', '-o', 'addr', 'show', 'dev', 'vpm0'])).toMatch(
      /inet6 2001:2:0:ff::1\/128 scope global nodad/,
    );
    // No link-local address, no SLAAC: addr_gen_mode 1 before the link went up.
    expect(lab.run(ns, 'ip', ['-6', '-o', 'addr', 'show', 'dev', 'vpm0'])).not.toMatch(/fe80::/);
    const routes = lab.run(ns, 'ip', ['-6', 'route', 'show', 'dev', 'vpm0']);
    for (const r of ['2001:2::9', '2001:2::53', '2001:2:0:ff::2'])
      expect(routes).toMatch(new RegExp(`^${r.replace(/\./g, '\\.')} `, 'm'));
    expect(lab.run(ns, 'ip', ['-6', 'route', 'show', 'table', '100'])).toMatch(
      /^default dev vpm0 /m,
    );
    expect(lines(lab.run(ns, 'ip', ['-6', 'rule', 'show', 'pref', '100']))).toEqual([
      '100:\tfrom 2001:2:0:ff::1 ipproto tcp lookup 100',
      '100:\tfrom 2001:2:0:ff::1 ipproto udp lookup 100',
      '100:\tfrom all iif lo ipproto udp sport 20000-20009 lookup 100',
      '100:\tfrom all iif lo ipproto udp sport 19001 lookup 100',
      '100:\tfrom all iif lo ipproto udp sport 19005 lookup 100',
      '100:\tfrom 2001:2:0:1::1 ipproto tcp sport 19005 lookup 100',
      '100:\tfrom 2001:2:0:ff::1 iif lo ipproto ipv6-icmp lookup 100',
    ]);
    const sysctl = (k: string) => lab.run(ns, 'cat', [`/proc/sys/net/ipv6/conf/vpm0/${k}`]).trim();
    expect({
      disable_ipv6: sysctl('disable_ipv6'),
      accept_dad: sysctl('accept_dad'),
      router_solicitations: sysctl('router_solicitations'),
      accept_ra: sysctl('accept_ra'),
      autoconf: sysctl('autoconf'),
      addr_gen_mode: sysctl('addr_gen_mode'),
      forwarding: sysctl('forwarding'),
    }).toEqual({
      disable_ipv6: '0',
      accept_dad: '0',
      router_solicitations: '0',
      accept_ra: '0',
      autoconf: '0',
      addr_gen_mode: '1',
      // The TUN's own: 0, so that it is in no all-routers group (no MLD on it).
      forwarding: '0',
    });
    // No multicast on the TUN, and no group the kernel would report there: only
    // ff02::1 and ff01::1 (never reported) are left.
    expect(lab.run(ns, 'ip', ['-o', 'link', 'show', 'vpm0'])).not.toMatch(/[<,]MULTICAST[,>]/);
    const groups = lab
      .run(ns, 'ip', ['-6', 'maddr', 'show', 'dev', 'vpm0'])
      .split('\n')
      .filter((l) => l.includes('inet6'))
      .map((l) => l.trim().split(/\s+/)[1])
      .sort();
    expect(groups).toEqual(['ff01::1', 'ff02::1']);
    // Forwarding: all.forwarding, for packets in on any device (force_forwarding is per ingress device).
    const during = hostSysctls(lab, ns, []);
    expect(during).toContain('/proc/sys/net/ipv6/conf/all/forwarding:1');
    expect(await vpm.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expectPristine();
  });

  it('SIGKILL, then vpm down: the -6 rules are undone, the persistent TUN deleted with its routes and address', async () => {
    const vpm = await up();
    expect(lab.run(topo.host, 'ip', ['-6', 'rule', 'show'])).toMatch(/lookup 100/);
    await vpm.kill();
    // What a crash leaves behind: everything, for the next vpm up to take over —
    // the rules, and the persistent TUN with its IPv6 address and routes.
    expect(lab.run(topo.host, 'ip', ['-6', 'rule', 'show'])).toMatch(/lookup 100/);
    expect(lab.run(topo.host, 'ip', ['-6', 'addr', 'show', 'dev', 'vpm0'])).toMatch(
      /inet6 2001:2:0:ff::1\/128/,
    );
    const down = await runVpm(lab, topo.host, ['down', '-c', configPath]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(/^undone: ip link delete dev vpm0$/m);
    await tunGone();
    expect(down.stdout).toMatch(
      /^undone: ip -6 rule del pref 100 from 2001:2:0:ff::1 ipproto ipv6-icmp iif lo lookup 100$/m,
    );
    expect(down.stdout).toMatch(
      /^undone: ip -6 rule del pref 100 from 2001:2:0:1::1 ipproto tcp sport 19005 lookup 100$/m,
    );
    expectPristine();
  });
});

describe('HostSetup with net.ipv6.conf.all.forwarding (kernels before 6.17), after a crash', () => {
  let lab: NetLab;
  let ns: string;
  let dir: string;

  beforeAll(() => {
    requireRoot();
    requireCommands('ip', 'sysctl');
    lab = new NetLab('fwd6');
    ns = lab.namespace('host');
    const peer = lab.namespace('peer');
    lab.veth({ ns, dev: 'ha', cidr: '198.18.1.1/24' }, { ns: peer, dev: 'a0' });
    lab.veth({ ns, dev: 'hb', cidr: '198.18.2.1/24' }, { ns: peer, dev: 'b0' });
    const settings = [
      'net.ipv4.ip_forward=0',
      'net.ipv6.conf.all.forwarding=0',
      'net.ipv6.conf.ha.accept_ra=1',
      'net.ipv6.conf.hb.accept_ra=2',
      'net.ipv6.conf.lo.accept_ra=0',
    ];
    lab.run(ns, 'sysctl', ['-qw', ...settings]);
    // A device that forwards on its own (6.17+): turning all.forwarding off clears it.
    if (lab.run(ns, 'sh', ['-c', 'ls /proc/sys/net/ipv6/conf/hb']).includes('force_forwarding'))
      lab.run(ns, 'sysctl', ['-qw', 'net.ipv6.conf.hb.force_forwarding=1']);
    // The daemon's TUN stands in as a persistent one (it outlives the crash: removed below).
    lab.run(ns, 'ip', ['tuntap', 'add', 'dev', 'vpm0', 'mode', 'tun']);
    dir = lab.tempDir();
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  /** Run `body` (an ES module's code, with HostSetup & co. imported) in the namespace. */
  function inNs(body: string): string {
    const setup = join(packageRoot(), 'dist', 'src', 'host', 'setup.js');
    const file = join(dir, `step-${Math.random().toString(36).slice(2)}.mjs`);
    writeFileSync(
      file,
      `import { HostSetup, cleanStale } from ${JSON.stringify(setup)};\n${body}\n`,
    );
    return lab.run(ns, process.execPath, [file]);
  }

  it('journals what the kernel changes (and accept_ra 1 → 2), and cleanStale restores every value', () => {
    const before = hostSysctls(lab, ns, ['vpm0']);
    const stateFile = join(dir, 'vpm0.state.json');
    const plan = {
      tunName: 'vpm0',
      tunAddr: '198.19.255.1',
      localClientAddr: '198.19.255.2',
      mtu: 1500,
      txQueueLen: 1000,
      vips: ['198.19.0.9'],
      replyPorts: [{ lo: 19001, hi: 19001 }],
      replyProtocols: ['tcp'],
      routeTable: 100,
      rulePriority: 100,
      ipv6: {
        tunAddr: '2001:2:0:ff::1',
        localClientAddr: '2001:2:0:ff::2',
        vips: ['2001:2::9'],
        otherInstanceAddrs: [],
      },
    };
    // Apply, and exit without undoing: what a kill -9 leaves.
    inNs(
      `await new HostSetup(${JSON.stringify(stateFile)}, 'vpm0').apply(${JSON.stringify(plan)});`,
    );
    const during = hostSysctls(lab, ns, ['vpm0']);
    expect(during).toContain('/proc/sys/net/ipv6/conf/all/forwarding:1');
    expect(during).toContain('/proc/sys/net/ipv6/conf/default/forwarding:1');
    expect(during).toContain('/proc/sys/net/ipv6/conf/ha/forwarding:1');
    // Router advertisements stay accepted where they were: accept_ra 1 became 2.
    expect(during).toContain('/proc/sys/net/ipv6/conf/ha/accept_ra:2');
    expect(during).toContain('/proc/sys/net/ipv6/conf/hb/accept_ra:2');
    expect(lab.run(ns, 'ip', ['-6', 'rule', 'show'])).toMatch(
      /from 2001:2:0:ff::1 ipproto tcp lookup 100/,
    );
    // What the journal holds for each: the value before, ahead of all.forwarding itself.
    const journal = JSON.parse(lab.run(ns, 'cat', [stateFile])) as {
      changes: { kind: string; key?: string; old?: string }[];
    };
    const keys = journal.changes.filter((c) => c.kind === 'sysctl').map((c) => `${c.key}=${c.old}`);
    expect(keys).toContain('net.ipv6.conf.ha.accept_ra=1');
    expect(keys).toContain('net.ipv6.conf.default.forwarding=0');
    expect(keys.indexOf('net.ipv6.conf.ha.forwarding=0')).toBeLessThan(
      keys.indexOf('net.ipv6.conf.all.forwarding=0'),
    );
    expect(keys).not.toContain('net.ipv6.conf.hb.accept_ra=2');

    // The TUN went with the daemon; then `vpm down` (cleanStale) restores the host.
    lab.run(ns, 'ip', ['tuntap', 'del', 'dev', 'vpm0', 'mode', 'tun']);
    const undone = JSON.parse(
      inNs(`console.log(JSON.stringify(await cleanStale(${JSON.stringify(stateFile)})));`),
    ) as string[];
    expect(undone).toContain('sysctl net.ipv6.conf.all.forwarding=0');
    expect(undone).toContain('sysctl net.ipv6.conf.ha.accept_ra=1');
    expect(undone).toContain(
      'ip -6 rule del pref 100 from 2001:2:0:ff::1 ipproto ipv6-icmp iif lo lookup 100',
    );
    expect(hostSysctls(lab, ns, ['vpm0'])).toEqual(before);
    expect(lab.run(ns, 'ip', ['-6', 'rule', 'show'])).not.toMatch(/lookup 100/);
    expect(lab.run(ns, 'ip', ['rule', 'show'])).not.toMatch(/lookup 100/);
  });
});
