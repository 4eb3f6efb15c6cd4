/**
 * Cooperative multiplexing of UDP (FIG. 6/7): the client host's vpm holds the
 * first datagram of a new flow, queues the ones that follow while it negotiates p2
 * with the server host's vpm, then sends them all on VIP:p2; the replies come back
 * from VIP:vport. Real kernel UDP through the real TUNs and two real daemons.
 *
 *   ns client                          ns router                 ns server
 * ┌──────────────────────────┐      ┌──────────────────┐      ┌───────────────────────────────┐
 * │ c0 198.18.10.2/24        │═veth═│ r0 198.18.10.1   │      │ s0 198.18.20.2/24             │
 * │ vpm (client side)        │      │ r1 198.18.20.1   │═veth═│ vpm (server side), listens    │
 * │  TUN 198.19.254.1        │      │ VIP → server     │      │  198.18.20.2:7070 for peers   │
 * │  local clients → .254.2  │      │ .254.0/24 → cli. │      │  TUN 198.19.255.1, instances  │
 * │ UDP clients, AIDs by     │      └──────────────────┘      │  a1 :19001 (UDP and TCP),     │
 * │  source port selectors   │                                │  a2 :19002 (UDP)              │
 * └──────────────────────────┘                                └───────────────────────────────┘
 *
 * Services: dns = udp/198.19.0.9:9000 and web = tcp/198.19.0.9:9000 (the same
 * address and port), both served by the server host.
 *
 * Queueing is made certain, not likely: for the bursts whose datagrams must be
 * queued, the server daemon is stopped (SIGSTOP) before the client sends, so the
 * negotiation cannot finish; the test waits until the client daemon's queue holds
 * every datagram after the first, then lets the server go on (SIGCONT).
 *
 * The suite runs once per family, with the addresses of COOP_PLANS
 * (coop-topology.ts): over IPv6 the services are udp/tcp [2001:2:0:9::9]:9000, the
 * peers negotiate over IPv6 and a refused flow is answered with an ICMPv6 port
 * unreachable.
 */

import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot, waitFor } from '../support/netns.js';
import { jsonLines, type VpmConfigFile, VpmDaemon, waitJsonEvent } from '../support/vpm.js';
import { COOP_PLANS, type CoopPlan, coopNamespaces, coopTun } from './coop-topology.js';
import { clientResult, runClient, startInstance } from './topology.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
const UDP_INSTANCE = `${FIXTURES}coop-udp-instance.mjs`;
const UDP_CLIENT = `${FIXTURES}coop-udp-client.mjs`;

const KEY = 'e5f6a7b8'.repeat(8);
const BURST = 8;

function clientConfig(P: CoopPlan): VpmConfigFile {
  return {
    tun: coopTun(P, 'client'),
    services: [
      { name: 'dns', protocol: 'udp', address: P.VIP, port: 9000, peer: 'server' },
      { name: 'web', address: P.VIP, port: 9000, peer: 'server' },
    ],
    applications: [{ aid: 'a1' }, { aid: 'a2' }, { aid: 'a3' }],
    selectors: [
      { clientPorts: '50000-50999', aid: 'a1' },
      { clientPorts: '51000-51999', aid: 'a2' },
      { clientPorts: '52000-52999', aid: 'a3' },
    ],
    default: { refuse: true },
    cooperative: {
      name: 'client',
      // Long enough for the waits on a stopped server below; nothing waits for it to pass.
      timeoutMs: 20_000,
      peers: [{ name: 'server', address: P.S0, port: 7070, key: KEY }],
    },
  };
}

function serverConfig(P: CoopPlan): VpmConfigFile {
  return {
    tun: coopTun(P, 'server'),
    services: [
      { name: 'dns', protocol: 'udp', address: P.VIP, port: 9000 },
      { name: 'web', address: P.VIP, port: 9000 },
    ],
    applications: [
      { aid: 'a1', instances: [{ port: 19001 }] },
      { aid: 'a2', instances: [{ port: 19002, service: 'dns' }] },
    ],
    default: { refuse: true },
    cooperative: {
      name: 'server',
      listen: P.ep(P.S0, 7070),
      portRange: '40000-40999',
      peers: [{ name: 'client', key: KEY }],
    },
  };
}

interface Reply {
  from: string;
  instance: string;
  seen: string;
  via: string;
}

interface QueueStats {
  datagrams: number;
  queued: number;
  sent: number;
  dropped: number;
  overflow: number;
}

interface CoopStats {
  held: number;
  heldOverflow: number;
  resolved: number;
  refused: number;
  queue: QueueStats;
}

async function coopStats(d: VpmDaemon): Promise<CoopStats> {
  return (await d.stats()).cooperative as unknown as CoopStats;
}

/** Counters of the client daemon's data plane that a refusal moves. */
async function dataStats(d: VpmDaemon): Promise<{ failed: number; unreachable: number }> {
  const s = (await d.stats()) as unknown as {
    negotiationsFailed: number;
    icmp: { unreachableSent: number };
  };
  return { failed: s.negotiationsFailed, unreachable: s.icmp.unreachableSent };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

describe.each([4, 6] as const)(
  'cooperative multiplexing of UDP between two vpm daemons (IPv%d)',
  (family) => {
    const P = COOP_PLANS[family];
    const { VIP } = P;
    const clientCfg = clientConfig(P);
    const serverCfg = serverConfig(P);
    const lab = new NetLab(`coopudp${family}`);
    let client: string;
    let server: string;
    let vpmC: VpmDaemon;
    let vpmS: VpmDaemon;
    const udpInstances = new Map<string, ChildProcess>();

    beforeAll(async () => {
      requireRoot();
      ({ client, server } = coopNamespaces(lab, P));
      vpmS = await VpmDaemon.start(lab, server, serverCfg);
      vpmC = await VpmDaemon.start(lab, client, clientCfg);
      for (const [name, port] of [
        ['a1', 19001],
        ['a2', 19002],
      ] as const) {
        const child = lab.spawn(server, process.execPath, [
          UDP_INSTANCE,
          JSON.stringify({ name, host: P.SERVER_TUN, port }),
        ]);
        await waitJsonEvent(lab, child, 'ready', 10_000);
        udpInstances.set(name, child);
      }
      await startInstance(lab, server, 'a1', 19001, P.SERVER_TUN); // TCP, for web
    }, 90_000);

    afterAll(async () => {
      // Never leave the server daemon stopped: it could not act on SIGTERM.
      if (vpmS?.alive) process.kill(vpmS.pid, 'SIGCONT');
      await vpmC?.stop().catch(() => {});
      await vpmS?.stop().catch(() => {});
      await lab.cleanup();
    });

    /** Start a UDP client in the client namespace: a burst of `count` datagrams from `localPort`. */
    function udpClient(localPort: number, o: { count?: number; connect?: boolean } = {}) {
      return lab.spawn(client, process.execPath, [
        UDP_CLIENT,
        JSON.stringify({
          host: VIP,
          port: 9000,
          localPort,
          count: o.count ?? BURST,
          connect: o.connect ?? false,
          timeoutMs: 30_000,
        }),
      ]);
    }

    /** The payloads instance `name` received from `from`, in the order it got them. */
    function received(name: string, from: string): string[] {
      return jsonLines(lab.output(udpInstances.get(name)!).stdout)
        .filter((e) => e.event === 'datagram' && e.from === from)
        .map((e) => String(e.payload));
    }

    /**
     * Run `send` with the server daemon stopped, so that no negotiation can finish,
     * until `until()` holds (the client daemon has queued what it should); then let
     * the server daemon go on. It is let go whatever happens.
     */
    async function withServerStopped(
      send: () => void,
      until: () => Promise<boolean>,
      what: string,
    ) {
      process.kill(vpmS.pid, 'SIGSTOP');
      try {
        send();
        await waitFor(until, { what, timeoutMs: 15_000 });
      } finally {
        process.kill(vpmS.pid, 'SIGCONT');
      }
    }

    /**
     * The first log line of daemon `d` that `pred` accepts, once it is in: a line is
     * written before what follows from it reaches the test, but the test may read the
     * daemon's output later than that.
     */
    async function logLine(
      d: VpmDaemon,
      pred: (l: Record<string, unknown>) => boolean,
      what: string,
    ): Promise<Record<string, unknown>> {
      await waitFor(() => d.logs().some(pred), { what, timeoutMs: 10_000 }).catch(() => {});
      const line = d.logs().find(pred);
      if (!line) throw new Error(`no log line: ${what}\n${d.output()}`);
      return line;
    }

    /** What instance `name` received from `from`, once `n` datagrams are in (or the wait gives up). */
    async function receivedN(name: string, from: string, n: number): Promise<string[]> {
      await waitFor(() => received(name, from).length >= n, {
        what: `instance ${name} to print ${n} datagrams from ${from}`,
        timeoutMs: 10_000,
      }).catch(() => {}); // the assertion on what came says what is missing
      return received(name, from);
    }

    it('a burst: the first datagram is held, the rest queued while the peers negotiate; all reach the instance via VIP:p2; the replies come from VIP:9000', async () => {
      const before = await coopStats(vpmC);
      let udp: ChildProcess | null = null;
      await withServerStopped(
        () => {
          udp = udpClient(50001);
        },
        async () => (await coopStats(vpmC)).queue.datagrams === BURST - 1,
        `the client daemon to queue ${BURST - 1} datagrams behind the first`,
      );
      const r = await clientResult(lab, udp!, 40_000);
      expect(r.event, `${r.output}\n${vpmC.output()}`).toBe('done');
      const payloads = range(BURST).map((i) => `50001-${i}`);
      // Every datagram reached a1's instance, exactly once, from the client host's
      // local-client address on the client's own port. (The queue's order is
      // asserted in test/coop: the kernel does not promise UDP order across CPUs.)
      expect((await receivedN('a1', P.ep(P.CLIENT_LC, 50001), BURST)).sort()).toEqual(
        [...payloads].sort(),
      );
      // Every reply came back, from VIP:9000 as the application sees it.
      const replies = r.replies as Reply[];
      expect(replies.map((x) => x.seen).sort()).toEqual([...payloads].sort());
      for (const x of replies)
        expect(x).toMatchObject({
          from: P.ep(VIP, 9000),
          instance: 'a1',
          via: P.ep(P.CLIENT_LC, 50001),
        });
      // The client daemon sent the queued datagrams on, none dropped, none overflowed.
      const after = await coopStats(vpmC);
      expect(after.queue.queued - before.queue.queued).toBe(BURST - 1);
      expect(after.queue.sent - before.queue.sent).toBe(BURST - 1);
      expect(after.queue).toMatchObject({ datagrams: 0, dropped: before.queue.dropped });
      expect(after.queue.overflow).toBe(before.queue.overflow);
      expect(after.resolved - before.resolved).toBe(1);
      // On the server, the flow is the UDP one for VIP:p2, and it carried the burst both ways.
      const neg = await logLine(
        vpmS,
        (l) => l.event === 'flow_negotiated' && l.client === P.ep(P.CLIENT_LC, 50001),
        'the server daemon to log the negotiated flow',
      );
      expect(neg, vpmS.output()).toMatchObject({ protocol: 'udp', aid: 'a1', side: 'server' });
      const p2 = neg.p2 as number;
      expect(p2).toBeGreaterThanOrEqual(40000);
      expect(p2).toBeLessThanOrEqual(40999);
      const sFlow = (await vpmS.flows()).find((f) => f.client === P.ep(P.CLIENT_LC, 50001));
      expect(sFlow).toMatchObject({
        protocol: 'udp',
        service: P.ep(VIP, p2),
        real: P.ep(P.SERVER_TUN, 19001),
        packetsIn: BURST,
        packetsOut: BURST,
      });
      const cFlow = (await vpmC.flows()).find((f) => f.client === P.ep(P.CLIENT_TUN, 50001));
      expect(cFlow).toMatchObject({
        protocol: 'udp',
        service: P.ep(VIP, 9000),
        real: P.ep(VIP, p2),
        packetsIn: BURST,
        packetsOut: BURST,
      });
    }, 90_000);

    it('a TCP connection from the same client port to the same VIP:9000 is negotiated apart, as TCP', async () => {
      const r = await runClient(lab, client, {
        mode: 'hello',
        host: VIP,
        port: 9000,
        localPort: 50001,
      });
      expect(r.event, r.output).toBe('done');
      expect((r as Record<string, unknown>).hello).toMatchObject({
        instance: 'a1',
        remoteAddress: P.CLIENT_LC,
      });
      const isTcp = (l: Record<string, unknown>) =>
        l.event === 'flow_negotiated' &&
        l.client === P.ep(P.CLIENT_LC, 50001) &&
        l.protocol === 'tcp';
      await logLine(vpmS, isTcp, 'the server daemon to log the TCP negotiation');
      const negs = vpmS
        .logs()
        .filter((l) => l.event === 'flow_negotiated' && l.client === P.ep(P.CLIENT_LC, 50001));
      expect(negs.map((l) => l.protocol).sort()).toEqual(['tcp', 'udp']);
      expect(new Set(negs.map((l) => l.p2)).size).toBe(2);
    });

    it('a second flow, from another client port, gets its own negotiation and its own instance', async () => {
      const before = await coopStats(vpmC);
      const r = await clientResult(lab, udpClient(51001), 40_000);
      expect(r.event, `${r.output}\n${vpmC.output()}`).toBe('done');
      const payloads = range(BURST).map((i) => `51001-${i}`);
      expect((await receivedN('a2', P.ep(P.CLIENT_LC, 51001), BURST)).sort()).toEqual(
        [...payloads].sort(),
      );
      const replies = r.replies as Reply[];
      expect(replies.map((x) => x.seen).sort()).toEqual([...payloads].sort());
      for (const x of replies) expect(x).toMatchObject({ from: P.ep(VIP, 9000), instance: 'a2' });
      await logLine(
        vpmS,
        (l) => l.event === 'flow_negotiated' && l.client === P.ep(P.CLIENT_LC, 51001),
        'the server daemon to log the second negotiation',
      );
      const negs = vpmS
        .logs()
        .filter((l) => l.event === 'flow_negotiated' && l.protocol === 'udp')
        .map((l) => [l.client, l.aid, l.p2]);
      expect(negs.map(([c, a]) => [c, a])).toEqual([
        [P.ep(P.CLIENT_LC, 50001), 'a1'],
        [P.ep(P.CLIENT_LC, 51001), 'a2'],
      ]);
      expect(negs[0]![2]).not.toBe(negs[1]![2]);
      // However many of this burst came while it was negotiated: each was sent on.
      const after = await coopStats(vpmC);
      expect(after.resolved - before.resolved).toBe(1);
      expect(after.queue.sent - before.queue.sent).toBe(after.queue.queued - before.queue.queued);
      expect(after.queue).toMatchObject({ datagrams: 0, dropped: before.queue.dropped });
    }, 60_000);

    it('a refused flow: its first datagram is answered with one ICMP port unreachable, the queued ones are dropped and counted; no flow is left', async () => {
      const before = await coopStats(vpmC);
      const dBefore = await dataStats(vpmC);
      let udp: ChildProcess | null = null;
      // AID a3 is not served on the server: the negotiation ends in aid_mismatch.
      await withServerStopped(
        () => {
          udp = udpClient(52001, { connect: true });
        },
        async () => (await coopStats(vpmC)).queue.datagrams === BURST - 1,
        `the client daemon to queue ${BURST - 1} datagrams behind the first`,
      );
      const r = await clientResult(lab, udp!, 40_000);
      // The connected socket learns of the closed port from the ICMP message.
      expect(r.event, r.output).toBe('error');
      expect(r.code).toBe('ECONNREFUSED');
      expect(r.replies).toEqual([]);
      const refusal = await logLine(
        vpmC,
        (l) => l.event === 'flow_refused' && l.client === P.ep(P.CLIENT_TUN, 52001),
        'the client daemon to log the refusal',
      );
      expect(refusal, vpmC.output()).toMatchObject({
        reason: 'aid_mismatch',
        protocol: 'udp',
        clientAid: 'a3',
        rst: true,
        queuedDropped: BURST - 1,
      });
      const after = await coopStats(vpmC);
      expect(after.queue.dropped - before.queue.dropped).toBe(BURST - 1);
      expect(after.queue.sent).toBe(before.queue.sent);
      expect(after.refused - before.refused).toBe(1);
      const dAfter = await dataStats(vpmC);
      expect(dAfter.failed - dBefore.failed).toBe(1);
      expect(dAfter.unreachable - dBefore.unreachable).toBe(1);
      await logLine(
        vpmS,
        (l) =>
          l.event === 'negotiation_refused' &&
          l.clientAid === 'a3' &&
          l.protocol === 'udp' &&
          l.client === P.ep(P.CLIENT_LC, 52001),
        'the server daemon to log the refused offer',
      );
      for (const d of [vpmC, vpmS]) {
        const flows = await d.flows();
        expect(flows.filter((f) => String(f.client).endsWith(':52001'))).toEqual([]);
      }
      expect(received('a1', P.ep(P.CLIENT_LC, 52001))).toEqual([]);
    }, 60_000);
  },
);
