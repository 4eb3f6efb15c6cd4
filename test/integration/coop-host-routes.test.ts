/**
 * The cooperative client side's host routes (src/host/setup.ts, peerVips): what
 * vpm sends on towards VIP:p2 must leave through the network, not loop into the
 * TUN, so `vpm up` routes each peer VIP in table T+1 (T = tun.routeTable) by the
 * way to its peer when the peer's address is of the VIP's family, else by the
 * host's own way to the VIP (looked up before vpm routes the VIP to its TUN), for
 * packets in from the TUN (`ip rule ... iif vpm0 lookup T+1`), for both families.
 * After a SIGKILL, `vpm down` leaves the host's rules and routes as they were.
 * No traffic here: the kernel's tables, read while up and after.
 *
 *     ns host (IPv4 and IPv6)                                  ns net
 *       h0 198.18.1.1/24 2001:2:0:1::1/64  ══════veth══════  n0 198.18.1.254, 2001:2:0:1::fe
 *       default via 198.18.1.254 / 2001:2:0:1::fe
 *       198.18.30.0/24 via 198.18.1.253, 2001:2:0:30::/64 via 2001:2:0:1::fd (the peers' networks)
 *
 * Peers: v4peer 198.18.30.2, v6peer 2001:2:0:30::2. Services, both dual-stack:
 * web [198.19.0.9, 2001:2:0:9::9] served by v6peer, db [198.19.0.10, 2001:2:0:9::a]
 * by v4peer.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  hostState,
  requireVpmBuild,
  runVpm,
  type VpmConfigFile,
  VpmDaemon,
  writeVpmConfig,
} from '../support/vpm.js';

const KEY = 'c3d4e5f6'.repeat(8);

const CONFIG: VpmConfigFile = {
  services: [
    { name: 'web', address: ['198.19.0.9', '2001:2:0:9::9'], port: 9000, peer: 'v6peer' },
    { name: 'db', address: ['198.19.0.10', '2001:2:0:9::a'], port: 9000, peer: 'v4peer' },
  ],
  applications: [{ aid: 'a1' }],
  default: { aid: 'a1' },
  cooperative: {
    name: 'client',
    peers: [
      { name: 'v6peer', address: '2001:2:0:30::2', key: KEY },
      { name: 'v4peer', address: '198.18.30.2', key: KEY },
    ],
  },
};

const lines = (s: string) =>
  s
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');

describe('cooperative client side: the peer VIPs are routed out of the TUN, per family', () => {
  const lab = new NetLab('cooproutes');
  let ns: string;
  let dir: string;
  let configPath: string;
  let pristine: ReturnType<typeof hostState>;
  let pristine6: { rules6: string; routes6: string };
  const state6 = () => ({
    rules6: lab.run(ns, 'ip', ['-6', 'rule', 'show']),
    routes6: lab.run(ns, 'ip', ['-6', 'route', 'show', 'table', 'all']),
  });

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip');
    requireVpmBuild();
    ns = lab.namespace('host');
    const net = lab.namespace('net');
    lab.veth({ ns, dev: 'h0' }, { ns: net, dev: 'n0' });
    for (const [n, dev, addrs] of [
      [ns, 'h0', ['198.18.1.1/24', '2001:2:0:1::1/64']],
      [net, 'n0', ['198.18.1.254/24', '2001:2:0:1::fe/64']],
    ] as const)
      for (const a of addrs)
        lab.run(n, 'ip', [
          ...(a.includes(':') ? ['-6'] : []),
          ...['addr', 'add', a, 'dev', dev],
          ...(a.includes(':') ? ['nodad'] : []),
        ]);
    lab.run(ns, 'ip', ['route', 'add', 'default', 'via', '198.18.1.254']);
    lab.run(ns, 'ip', ['route', 'add', '198.18.30.0/24', 'via', '198.18.1.253']);
    lab.run(ns, 'ip', ['-6', 'route', 'add', 'default', 'via', '2001:2:0:1::fe']);
    lab.run(ns, 'ip', ['-6', 'route', 'add', '2001:2:0:30::/64', 'via', '2001:2:0:1::fd']);
    await waitFor(() => lab.run(ns, 'ip', ['-6', 'addr', 'show', 'tentative']).trim() === '', {
      what: 'DAD to end on the link-local addresses',
      timeoutMs: 10_000,
    });
    dir = lab.tempDir();
    configPath = writeVpmConfig(dir, CONFIG);
    pristine = hostState(lab, ns);
    pristine6 = state6();
  }, 60_000);

  afterAll(async () => {
    await lab.cleanup();
  });

  it('while up: table T+1 holds each VIP by its way, both families; after kill -9 and vpm down, nothing is left', async () => {
    const vpm = await VpmDaemon.startFile(lab, ns, configPath, dir);
    try {
      expect(lines(lab.run(ns, 'ip', ['route', 'show', 'table', '101']))).toEqual([
        // web's peer is reached over IPv6: the host's own way to the VIP (default route).
        '198.19.0.9 via 198.18.1.254 dev h0',
        // db's peer has an IPv4 address: the way to it.
        '198.19.0.10 via 198.18.1.253 dev h0',
      ]);
      const v6 = lines(lab.run(ns, 'ip', ['-6', 'route', 'show', 'table', '101']));
      expect(v6.map((l) => l.replace(/ metric \d+.*$/, ''))).toEqual([
        '2001:2:0:9::9 via 2001:2:0:1::fd dev h0',
        '2001:2:0:9::a via 2001:2:0:1::fe dev h0',
      ]);
      expect(lab.run(ns, 'ip', ['rule', 'show', 'pref', '100'])).toMatch(
        /^100:\s+from all iif vpm0 lookup 101\s*$/m,
      );
      expect(lab.run(ns, 'ip', ['-6', 'rule', 'show', 'pref', '100'])).toMatch(
        /^100:\s+from all iif vpm0 lookup 101\s*$/m,
      );
    } finally {
      await vpm.kill();
    }
    // The persistent TUN outlives the crash; vpm down deletes it, after the rules.
    expect(lab.run(ns, 'ip', ['-o', 'link', 'show'])).toMatch(/vpm0/);
    const down = await runVpm(lab, ns, ['down', '-c', configPath]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(/^undone: ip -6 rule del pref 100 iif vpm0 lookup 101$/m);
    expect(down.stdout).toMatch(/^undone: ip link delete dev vpm0$/m);
    await waitFor(() => !lab.run(ns, 'ip', ['-o', 'link', 'show']).includes('vpm0'), {
      what: 'vpm0 to disappear',
      timeoutMs: 5000,
    });
    expect(hostState(lab, ns)).toEqual(pristine);
    expect(state6()).toEqual(pristine6);
  });
});
