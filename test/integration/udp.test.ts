/*
 * UDP, IPv4 fragments and ICMP through the real daemon, with real programs:
 * dnsmasq and dig, Python UDP servers and clients, ping, and a TCP download
 * through a router with a 1280-byte link (path MTU discovery).
 *
 *  ns a 198.18.1.2 ═╗                                  ╔═ ns b 198.18.2.2
 *                   ║   ns host                        ║
 *               ha 198.18.1.1   vpm0 198.19.255.1   hb 198.18.2.1
 *                   hr 198.18.6.2 ══ r1 198.18.6.1 [ns router] r0 198.18.5.1 (mtu 1280)
 *                                                              ║
 *                                                 ns c  c0 198.18.5.2 (mtu 1500)
 *
 * Services on VIP 198.19.0.9: dns udp/53 (a dnsmasq per tenant), echo udp/7 (a
 * Python server per tenant bound to the wildcard address), closed udp/54 (an
 * instance port nobody listens on), web tcp/9000. Tenant a is 198.18.1.0/24,
 * 198.18.5.0/24 and the vpm host itself; tenant b 198.18.2.0/24.
 *
 * The router's link to c has a 1280-byte MTU on the router's side only: c
 * announces an MSS of 1460, so the instance's full-sized segments reach the
 * router, which answers "fragmentation needed" to their source — the VIP. Only
 * if vpm translates that error for the instance's socket does the download
 * finish (tcp_mtu_probing is off: nothing else would rescue it).
 */

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  type HostState,
  hostState,
  jsonLines,
  rulesForTable,
  VpmDaemon,
  type VpmStats,
  waitJsonEvent,
} from '../support/vpm.js';
import {
  type Plan,
  plan,
  runClient,
  startInstance,
  type Topology,
  twoTenants,
} from './topology.js';

const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;
const ROUTE_TABLE = 200;

/** The router and tenant c of one family (IPv6: the same layout in 2001:2::/48). */
interface RouterPlan {
  hostR: string;
  routerR: string;
  routerC: string;
  CLIENT_C: string;
  CLIENT_C2: string;
  linkPrefix: number;
  /** The virtual service addresses, routed by the router to the vpm host. */
  vipNet: string;
  netC: string;
}

const ROUTER: Record<4 | 6, RouterPlan> = {
  4: {
    hostR: '198.18.6.2',
    routerR: '198.18.6.1',
    routerC: '198.18.5.1',
    CLIENT_C: '198.18.5.2',
    CLIENT_C2: '198.18.5.3',
    linkPrefix: 24,
    vipNet: '198.19.0.0/16',
    netC: '198.18.5.0/24',
  },
  6: {
    hostR: '2001:2:0:6::2',
    routerR: '2001:2:0:6::1',
    routerC: '2001:2:0:5::1',
    CLIENT_C: '2001:2:0:5::2',
    CLIENT_C2: '2001:2:0:5::3',
    linkPrefix: 64,
    vipNet: '2001:2:0:9::/64',
    netC: '2001:2:0:5::/64',
  },
};

const CONFIG = (offloads: 'auto' | 'off', P: Plan) => {
  const VIP = P.VIP;
  const v6 = P.family === 6;
  return {
    tun: { offloads, routeTable: ROUTE_TABLE },
    services: [
      { name: 'dns', address: VIP, port: 53, protocol: 'udp' },
      { name: 'echo', address: VIP, port: 7, protocol: 'udp' },
      { name: 'closed', address: VIP, port: 54, protocol: 'udp' },
      { name: 'web', address: VIP, port: 9000 },
    ],
    applications: [
      {
        aid: 'a',
        instances: [
          { port: 19053, service: 'dns' },
          { port: 19007, service: 'echo' },
          { port: 19054, service: 'closed' },
          { port: 19001, service: 'web' },
        ],
      },
      {
        aid: 'b',
        instances: [
          { port: 29053, service: 'dns' },
          { port: 29007, service: 'echo' },
        ],
      },
    ],
    selectors: [
      {
        clients: v6
          ? ['2001:2:0:1::/64', '2001:2:0:5::/64', `${P.TUN_ADDR}/128`]
          : ['198.18.1.0/24', '198.18.5.0/24', `${P.TUN_ADDR}/32`],
        aid: 'a',
      },
      { clients: [v6 ? '2001:2:0:2::/64' : '198.18.2.0/24'], aid: 'b' },
    ],
    timeouts: { fragmentMs: 1000 },
  };
};

/** dnsmasq answering who.vpm.test with `answer`, on the TUN address, logging every query. */
async function startDnsmasq(
  lab: NetLab,
  ns: string,
  port: number,
  answer: string,
  TUN_ADDR: string,
) {
  const child = lab.spawn(ns, 'dnsmasq', [
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--bind-interfaces',
    `--listen-address=${TUN_ADDR}`,
    `--port=${port}`,
    `--address=/who.vpm.test/${answer}`,
    '--log-queries',
    '--log-facility=-',
    '--pid-file=',
    '--user=root',
  ]);
  await lab.waitForOutput(child, /started, version/, { stream: 'stderr', timeoutMs: 10_000 });
  return child;
}

async function startResponder(lab: NetLab, ns: string, name: string, port: number, host: string) {
  const child = lab.spawn(ns, 'python3', [
    `${FIXTURES}udp-responder.py`,
    JSON.stringify({ name, port, host }),
  ]);
  await waitJsonEvent(lab, child, 'ready', 10_000);
  return child;
}

/** Run fixtures/udp-client.py in `ns`; its "done" line, or a failure with its output. */
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

const delta = (a: VpmStats, b: VpmStats, k: keyof VpmStats['icmp']) => b.icmp[k] - a.icmp[k];
const drops = (a: VpmStats, b: VpmStats, reason: string) =>
  (b.drops[reason] ?? 0) - (a.drops[reason] ?? 0);

for (const [mode, family] of [
  ['auto', 4],
  ['off', 4],
  ['auto', 6],
] as const) {
  describe(`UDP, fragments and ICMP through vpm (tun.offloads "${mode}", IPv${family})`, () => {
    const P = plan(family);
    const R = ROUTER[family];
    const { VIP, TUN_ADDR, LOCAL_CLIENT_ADDR, CLIENT_A, CLIENT_B } = P;
    const { CLIENT_C, CLIENT_C2 } = R;
    const v6 = family === 6;
    const ip = v6 ? ['-6'] : [];
    const nodad = v6 ? ['nodad'] : [];
    let lab: NetLab;
    let topo: Topology;
    let router: string;
    let tenantC: string;
    let vpm: VpmDaemon;
    let pristine: HostState;
    const dns: ChildProcess[] = [];

    beforeAll(async () => {
      requireRoot();
      requireCommands('ip', 'dnsmasq', 'dig', 'ping', 'python3');
      lab = new NetLab(`udp${mode}${family}`);
      topo = twoTenants(lab, { family });
      router = lab.namespace('router', { ipv6: v6 });
      tenantC = lab.namespace('c', { ipv6: v6 });
      lab.veth({ ns: topo.host, dev: 'hr' }, { ns: router, dev: 'r1' });
      lab.veth({ ns: router, dev: 'r0' }, { ns: tenantC, dev: 'c0' });
      for (const [ns, dev, addr] of [
        [topo.host, 'hr', R.hostR],
        [router, 'r1', R.routerR],
        [router, 'r0', R.routerC],
        [tenantC, 'c0', CLIENT_C],
        // A second address: the path MTU the kernel learns is per destination.
        [tenantC, 'c0', CLIENT_C2],
      ] as const)
        lab.run(ns, 'ip', [...ip, 'addr', 'add', `${addr}/${R.linkPrefix}`, 'dev', dev, ...nodad]);
      // IPv6's minimum MTU: the smallest hop an IPv6 path can have.
      lab.run(router, 'ip', ['link', 'set', 'r0', 'mtu', '1280']);
      lab.run(router, 'sysctl', [
        '-qw',
        v6 ? 'net.ipv6.conf.all.forwarding=1' : 'net.ipv4.ip_forward=1',
      ]);
      lab.run(router, 'ip', [...ip, 'route', 'add', R.vipNet, 'via', R.hostR]);
      lab.run(tenantC, 'ip', [...ip, 'route', 'add', 'default', 'via', R.routerC]);
      lab.run(topo.host, 'ip', [...ip, 'route', 'add', R.netC, 'via', R.routerR]);
      pristine = hostState(lab, topo.host);
      vpm = await VpmDaemon.start(lab, topo.host, CONFIG(mode, P));
      dns.push(await startDnsmasq(lab, topo.host, 19053, '198.18.100.1', TUN_ADDR));
      dns.push(await startDnsmasq(lab, topo.host, 29053, '198.18.100.2', TUN_ADDR));
      const wildcard = v6 ? '::' : '0.0.0.0';
      await startResponder(lab, topo.host, 'a', 19007, wildcard);
      await startResponder(lab, topo.host, 'b', 29007, wildcard);
      await startInstance(lab, topo.host, 'web-a', 19001, TUN_ADDR);
    });

    afterAll(async () => {
      if (vpm?.alive) await vpm.stop().catch(() => undefined);
      await lab?.cleanup();
    });

    it('steers UDP replies and the host ICMP into the TUN with their own rules', () => {
      const rules = rulesForTable(lab, topo.host, ROUTE_TABLE, family).join('\n');
      // UDP from any address the host sends, by instance port (merged into ranges) ...
      for (const p of ['19001', '19007', '19053-19054', '29007', '29053'])
        expect(rules).toMatch(new RegExp(`from all iif lo ipproto udp sport ${p} lookup`));
      // ... and TCP, UDP and ICMP from the TUN address whatever the port (path MTU lookups have none).
      expect(rules).toMatch(new RegExp(`from ${TUN_ADDR} ipproto udp lookup`));
      expect(rules).toMatch(new RegExp(`from ${TUN_ADDR} ipproto tcp lookup`));
      expect(rules).toMatch(
        new RegExp(`from ${TUN_ADDR} iif lo ipproto ${v6 ? 'ipv6-icmp' : 'icmp'} lookup`),
      );
    });

    it('dig from each tenant gets its own dnsmasq; dnsmasq sees the real client, dig only VIP:53', async () => {
      const ask = (ns: string) =>
        lab
          .run(ns, 'dig', [
            `@${VIP}`,
            '-p',
            '53',
            '+short',
            '+tries=2',
            '+time=3',
            'who.vpm.test',
            'A',
          ])
          .trim();
      expect(ask(topo.tenantA)).toBe('198.18.100.1');
      expect(ask(topo.tenantB)).toBe('198.18.100.2');
      // A local client on the vpm host (FIG. 8): tenant a by its selector, seen as the local-client address.
      expect(ask(topo.host)).toBe('198.18.100.1');
      // dnsmasq logs each query as it answers it; the pipe may bring the line a little later.
      const esc = (a: string) => a.replace(/\./g, '\\.');
      const seen = (child: ChildProcess, client: string) =>
        lab.waitForOutput(
          child,
          new RegExp(`query\\[A\\] who\\.vpm\\.test from ${esc(client)}\\b`),
          {
            stream: 'stderr',
            timeoutMs: 5000,
          },
        );
      await seen(dns[0]!, CLIENT_A);
      await seen(dns[0]!, LOCAL_CLIENT_ADDR);
      await seen(dns[1]!, CLIENT_B);
      const logA = lab.output(dns[0]!).stderr;
      const logB = lab.output(dns[1]!).stderr;
      expect(logA).not.toContain(`from ${CLIENT_B}`);
      expect(logB).not.toContain(`from ${CLIENT_A}`);
    });

    it('a wildcard-bound UDP server answers each tenant as itself, from VIP:7, seeing the real client', async () => {
      for (const [ns, client, name] of [
        [topo.tenantA, CLIENT_A, 'a'],
        [topo.tenantB, CLIENT_B, 'b'],
      ] as const) {
        const r = udpClient(lab, ns, { mode: 'who', host: VIP, port: 7 });
        const reply = r.reply as { name: string; saw: string };
        expect(reply.name).toBe(name);
        // The client's own address and port (its socket is bound to the wildcard address).
        expect(reply.saw).toBe(P.ep(client, Number(String(r.local).split(':').pop())));
        expect(r.from).toBe(P.ep(VIP, 7));
      }
      const flows = await vpm.flows();
      const udpFlows = flows.filter((f) => (f as { protocol?: string }).protocol === 'udp');
      expect(udpFlows.length).toBeGreaterThanOrEqual(2);
      const s = await vpm.stats();
      expect((s as { udpFlowsActive?: number }).udpFlowsActive).toBe(udpFlows.length);
    });

    it('carries 4000-byte datagrams (fragments on a 1500 MTU) intact both ways', async () => {
      const before = await vpm.stats();
      for (const ns of [topo.tenantA, topo.tenantB]) {
        const r = udpClient(lab, ns, { mode: 'echo', host: VIP, port: 7, size: 4000, count: 5 });
        expect(r.echoed).toBe(5);
        expect(r.from).toEqual([P.ep(VIP, 7)]);
      }
      const after = await vpm.stats();
      // 3 fragments each way per datagram, 10 datagrams, at least (retries add more).
      expect(after.packetsIn - before.packetsIn).toBeGreaterThanOrEqual(60);
      for (const r of [
        'fragment_no_flow',
        'fragment_too_short',
        'fragment_held_overflow',
        'no_flow',
      ])
        expect(drops(before, after, r), r).toBe(0);
    });

    it('sends fragments that come before their first once it comes, and expires an orphan', async () => {
      const before = await vpm.stats();
      const r = udpClient(lab, topo.tenantA, {
        mode: 'fragments',
        host: VIP,
        port: 7,
        src: CLIENT_A,
      });
      expect(r.from).toBe(P.ep(VIP, 7));
      expect(r.len).toBe(3000);
      let after = before;
      await waitFor(
        async () => {
          after = await vpm.stats();
          return drops(before, after, 'fragment_expired') >= 1;
        },
        { what: 'the orphan fragment to expire (timeouts.fragmentMs 1000)', timeoutMs: 10_000 },
      );
      expect(after.fragmentsReleased - before.fragmentsReleased).toBe(2);
      expect(drops(before, after, 'fragment_expired')).toBe(1);
      expect(after.fragmentsHeld).toBe(0);
      expect(after.packetsIn).toBe(after.packetsOut + after.dropsTotal + after.fragmentsHeld);
    });

    it('the host port unreachable about a closed instance port reaches the client as from VIP:54', async () => {
      const before = await vpm.stats();
      expect(udpClient(lab, topo.tenantA, { mode: 'refused', host: VIP, port: 54 }).error).toBe(
        'ECONNREFUSED',
      );
      const after = await vpm.stats();
      expect(delta(before, after, 'errorsTranslated')).toBeGreaterThanOrEqual(1);
    });

    it('a UDP port of the VIP that is no service answers port unreachable itself', async () => {
      const before = await vpm.stats();
      expect(udpClient(lab, topo.tenantB, { mode: 'refused', host: VIP, port: 55 }).error).toBe(
        'ECONNREFUSED',
      );
      const after = await vpm.stats();
      expect(delta(before, after, 'unreachableSent')).toBeGreaterThanOrEqual(1);
      expect(drops(before, after, 'refused_no_service')).toBeGreaterThanOrEqual(1);
    });

    it('ping of the VIP answers', async () => {
      const before = await vpm.stats();
      const out = lab.run(topo.tenantA, 'ping', [...ip, '-c', '3', '-i', '0.2', '-W', '3', VIP], {
        timeoutMs: 15_000,
      });
      expect(out).toMatch(/3 packets transmitted, 3 received/);
      const after = await vpm.stats();
      expect(delta(before, after, 'echoReplies')).toBe(3);
    });

    if (v6)
      it('neighbour discovery and listener chatter on the TUN is counted, harmless and not logged per packet', async () => {
        const before = await vpm.stats();
        const logsBefore = vpm.logs().length;
        const out = lab.run(topo.host, 'python3', [
          `${FIXTURES}nd-chatter.py`,
          JSON.stringify({ dev: 'vpm0', target: TUN_ADDR, count: 25 }),
        ]);
        const sent = jsonLines(out).find((e) => e.event === 'sent')?.sent as Record<string, number>;
        const total = Object.values(sent).reduce((a, b) => a + b, 0);
        expect(total).toBe(100);
        const nd =
          sent.router_solicitation! + sent.neighbour_solicitation! + sent.neighbour_advertisement!;
        const mld = sent.mld_report!;
        let after = before;
        await waitFor(
          async () => {
            after = await vpm.stats();
            return (
              drops(before, after, 'icmpv6_nd') >= nd && drops(before, after, 'icmpv6_mld') >= mld
            );
          },
          { what: 'the chatter to be counted', timeoutMs: 5000 },
        );
        // At least what was sent: the kernel may add chatter of its own on the TUN meanwhile.
        expect(drops(before, after, 'icmpv6_nd')).toBeGreaterThanOrEqual(nd);
        expect(drops(before, after, 'icmpv6_mld')).toBeGreaterThanOrEqual(mld);
        expect(after.packetsIn).toBe(after.packetsOut + after.dropsTotal + after.fragmentsHeld);
        expect(vpm.alive).toBe(true);
        // Not a line per packet: at most a handful of log lines in the meantime.
        expect(vpm.logs().length - logsBefore).toBeLessThan(5);
        // And the data plane goes on: a DNS query still works.
        const answer = lab
          .run(topo.tenantA, 'dig', [
            `@${VIP}`,
            '+short',
            '+tries=2',
            '+time=3',
            'who.vpm.test',
            'A',
          ])
          .trim();
        expect(answer).toBe('198.18.100.1');
      });

    it('path MTU discovery: a download through the 1280-byte link completes, its "fragmentation needed" translated', async () => {
      const before = await vpm.stats();
      const r = await runClient(
        lab,
        tenantC,
        // From CLIENT_C itself: IPv6 source selection could pick CLIENT_C2, whose path
        // MTU the next test needs unlearned.
        {
          mode: 'xfer',
          host: VIP,
          localAddress: CLIENT_C,
          up: 1000,
          down: 4_000_000,
          timeoutMs: 30_000,
        },
        40_000,
      );
      expect(r.event, r.output).toBe('done');
      expect(r.recvSha).toBe((r.trailer as Record<string, unknown>).sentSha);
      const after = await vpm.stats();
      expect(delta(before, after, 'errorsTranslated')).toBeGreaterThanOrEqual(1);
    });

    it('path MTU discovery on the vpm host\'s own path: its own "fragmentation needed" is translated too', async () => {
      // The small link is now the host's way out (hr), not the router's.
      lab.run(router, 'ip', ['link', 'set', 'r0', 'mtu', '1500']);
      lab.run(topo.host, 'ip', ['link', 'set', 'hr', 'mtu', '1280']);
      try {
        const before = await vpm.stats();
        const r = await runClient(
          lab,
          tenantC,
          {
            mode: 'xfer',
            host: VIP,
            localAddress: CLIENT_C2,
            up: 1000,
            down: 4_000_000,
            timeoutMs: 30_000,
          },
          40_000,
        );
        expect(r.event, r.output).toBe('done');
        expect(r.recvSha).toBe((r.trailer as Record<string, unknown>).sentSha);
        const after = await vpm.stats();
        expect(delta(before, after, 'errorsTranslated')).toBeGreaterThanOrEqual(1);
      } finally {
        lab.run(topo.host, 'ip', ['link', 'set', 'hr', 'mtu', '1500']);
        lab.run(router, 'ip', ['link', 'set', 'r0', 'mtu', '1280']);
      }
    });

    it('leaves the host as it found it', async () => {
      await vpm.stop();
      expect(hostState(lab, topo.host)).toEqual(pristine);
    });
  });
}
