/**
 * Cooperation, the client side, on a MemoryTun (no kernel): held SYNs, what is
 * sent on or refused, and the counters. The peer is a PeerServer on loopback
 * with a scripted handler (the real server side is covered by
 * test/integration/cooperative.test.ts).
 *
 *   client apps (TUN 198.19.254.1)        Pipeline + Cooperation "client"         PeerServer "server"
 *   SYN → 198.19.0.9:9000  ──MemoryTun──►  hold → negotiate ──TCP 127.0.0.1:<ephemeral>──► handler (test double)
 *   SYN → 198.19.0.10:9000 (local service, FIG. 8: the AID is looked up, no peer)
 *   ◄── the SYN sent on (rewritten to VIP:p2, from 198.19.254.2), or one RST
 */

import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { type Config, parseConfig } from '../../src/config/config.js';
import { Cooperation } from '../../src/coop/cooperation.js';
import { DEFAULT_HOLD_LIMITS, type HeldStats, type HoldLimits } from '../../src/coop/held.js';
import type { Message } from '../../src/coop/protocol.js';
import { type AckAnswer, type OfferAnswer, PeerServer } from '../../src/coop/server.js';
import { pskTable } from '../../src/coop/tls.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { Counters, Drop } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline } from '../../src/datapath/pipeline.js';
import { FlowState } from '../../src/flow/state.js';
import { type FlowKeyArgs, FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { hex, ip4, ip6, tcp4, tcp6, udp4, udp6, words6 } from '../support/builder.js';
import { cleanup, runCleanup, waitFor } from './support.js';

const KEY_HEX = 'c0'.repeat(32);
const TUN_ADDR = ip4('198.19.254.1');
const LOCAL_CLIENT = ip4('198.19.254.2');
const VIP = ip4('198.19.0.9');
const LOCAL_VIP = ip4('198.19.0.10');
const INSTANCE_A2 = 19002;
const P2 = 40001;

const SYN = 0x02;
const ACK = 0x10;
const RST = 0x04;

const seg = (src: number, sp: number, dst: number, dp: number, flags: number, seq = 1000) =>
  tcp4({ src, dst, ident: 0x1234 }, { srcPort: sp, dstPort: dp, flags, seq, window: 64240 });

/** The RST vpm answers a SYN (seq) from src:sp to dst:dp with. */
const rstFor = (src: number, sp: number, dst: number, dp: number, seq: number) =>
  tcp4(
    { src: dst, dst: src },
    { srcPort: dp, dstPort: sp, seq: 0, ack: seq + 1, flags: RST | ACK, window: 0 },
  );

afterEach(runCleanup);

/**
 * What the peer does with a request: offer (after `gate`, if set), or refuse. The
 * n-th request (from 0) is offered p2 = P2 + n.
 */
class FakePeer {
  gate: Promise<void> | null = null;
  refuse: string | null = null;
  requests: Message<'request'>[] = [];
  handler = {
    request: async (m: Message<'request'>): Promise<OfferAnswer> => {
      const port = P2 + this.requests.length;
      this.requests.push(m);
      if (this.gate) await this.gate;
      if (this.refuse) return { type: 'refuse', body: { reason: this.refuse, message: 'no' } };
      return { type: 'offer', body: { aids: ['a1', 'a2'], port } };
    },
    ack: (): AckAnswer => ({ type: 'confirm' }),
  };
}

async function setup(
  o: {
    capacity?: number;
    beforeCooperation?: (t: FlowTable) => void;
    holdLimits?: Partial<HoldLimits>;
  } = {},
) {
  const peer = new FakePeer();
  const server = new PeerServer({
    host: '127.0.0.1',
    port: 0,
    name: 'server',
    keys: Buffer.from(KEY_HEX, 'hex'),
    // The daemon's client side speaks TLS 1.3 with its peer's key (src/coop/tls.ts).
    psk: pskTable([
      { name: 'client', keys: [{ id: 'default', key: Buffer.from(KEY_HEX, 'hex') }] },
    ]),
    handler: peer.handler,
  });
  const { port } = await server.listen();
  cleanup.push(() => server.close());
  const parsed = parseConfig(
    {
      tun: { name: 'vpm0', address: '198.19.254.1', localClientAddress: '198.19.254.2' },
      services: [
        { name: 'web', address: '198.19.0.9', port: 9000, peer: 'server' },
        { name: 'loc', address: '198.19.0.10', port: 9000 },
        // UDP: the same address and port as web (another service), a second port, a local one.
        { name: 'dns', protocol: 'udp', address: '198.19.0.9', port: 9000, peer: 'server' },
        { name: 'dns2', protocol: 'udp', address: '198.19.0.9', port: 9001, peer: 'server' },
        { name: 'locu', protocol: 'udp', address: '198.19.0.10', port: 9000 },
      ],
      applications: [
        { aid: 'a1' },
        { aid: 'a2', instances: [{ address: '198.19.254.1', port: INSTANCE_A2 }] },
      ],
      selectors: [
        { service: 'web', clientPorts: '50000-50999', aid: 'a1' },
        { service: 'web', clientPorts: '51000-51999', aid: 'a2' },
        { service: 'dns', clientPorts: '50000-50999', aid: 'a1' },
        { service: 'dns2', clientPorts: '50000-50999', aid: 'a1' },
      ],
      default: { refuse: true },
      cooperative: {
        name: 'client',
        timeoutMs: 2000,
        peers: [{ name: 'server', address: '198.18.0.1', port: 7070, key: KEY_HEX }],
      },
    },
    'cooperation.test.json',
  );
  // The peer listens on loopback, which a config file may not name: put it in afterwards.
  const co = parsed.cooperative!;
  const cfg: Config = {
    ...parsed,
    cooperative: { ...co, peers: [{ ...co.peers[0]!, address: ip4('127.0.0.1'), port }] },
  };
  const rules = rulesFromConfig(cfg);
  const instances = new InstanceSet();
  instances.replaceStatic(rules, staticInstancesFromConfig(cfg));
  const tun = new MemoryTun({ batchSize: 8 });
  const table = new FlowTable(
    o.capacity ?? 64,
    [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000],
    5,
  );
  const counters = new Counters(cfg.applications.length);
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
  /** AIDs the bind/connect library reported, by client port; `late` ones only after the SYN. */
  const reported = new Map<number, number>();
  let coop: Cooperation | null = null;
  const pipeline = new Pipeline(
    tun,
    table,
    rules,
    counters,
    {
      instances,
      verifyL4Checksum: true,
      localClientAddr: cfg.tun.localClientAddress,
      localClientAid: () => -1,
      negotiate: (buf, off, len, info, svc, aid, local) =>
        coop?.hold(buf, off, len, info, svc, aid, local),
      holdUnknownLocal: true,
    },
    new Set([TUN_ADDR]),
  );
  let clock = 1000;
  o.beforeCooperation?.(table);
  coop = new Cooperation(cfg, {
    pipeline,
    table,
    rules: () => rules,
    instances,
    log,
    now: () => clock++,
    localClientAid: (_addr, p) => reported.get(p) ?? -1,
    holdLimits: { ...DEFAULT_HOLD_LIMITS, ...o.holdLimits },
  });
  await coop.start();
  const c = coop;
  cleanup.push(() => c.close());
  tun.start((n) => pipeline.processBatch(n, clock));
  /** Wait until no SYN is held any more; return what was written meanwhile. */
  const settle = async (from: number) => {
    await waitFor(() => (c.stats().held as number) === 0);
    return tun.written.slice(from).map(hex);
  };
  /** The flow_refused lines logged so far: [reason, level, rst sent]. */
  const refusals = () =>
    logs.filter((l) => l.event === 'flow_refused').map((l) => [l.reason, l.level, l.rst]);
  /** The holder's queue counters. */
  const queue = () => c.stats().queue as HeldStats['queue'];
  return { peer, coop: c, tun, table, counters, logs, reported, settle, refusals, queue };
}

/** A flow that takes up the ports a held SYN would need (the table's key for side 0 and 1). */
function blocker(over: Partial<FlowKeyArgs>): FlowKeyArgs {
  return {
    proto: 6,
    clientAddr: ip4('198.18.99.1'),
    clientPort: 1,
    vipAddr: VIP,
    vport: 9000,
    natAddr: ip4('198.18.99.1'),
    natPort: 1,
    realAddr: ip4('198.18.99.2'),
    realPort: 1,
    service: 0,
    aid: 0,
    instance: 0,
    ...over,
  };
}

const INFO = 30;
const ERROR = 50;

describe('Cooperation, client side', () => {
  it('sends on the SYN it held, not what the receive buffer holds by the time the peer agrees', async () => {
    const { peer, tun, counters, settle } = await setup();
    let open = () => {};
    peer.gate = new Promise<void>((r) => {
      open = r;
    });
    const syn = seg(TUN_ADDR, 50001, VIP, 9000, SYN, 7000);
    tun.inject([syn]);
    await waitFor(() => peer.requests.length === 1);
    // Later batches reuse the receive buffer's slots while the negotiation runs.
    const n = tun.written.length;
    tun.inject([seg(ip4('198.18.9.9'), 1234, VIP, 9000, ACK, 1), seg(VIP, 1, TUN_ADDR, 2, ACK)]);
    open();
    expect(await settle(n)).toEqual([hex(seg(LOCAL_CLIENT, 50001, VIP, P2, SYN, 7000))]);
    expect(counters.heldInjected).toBe(1);
    expect(counters.drops[Drop.NO_FLOW]).toBe(2);
  });

  it('holds a retransmitted SYN only once', async () => {
    const { peer, tun, counters, settle, queue } = await setup();
    let open = () => {};
    peer.gate = new Promise<void>((r) => {
      open = r;
    });
    const syn = seg(TUN_ADDR, 50002, VIP, 9000, SYN, 7000);
    tun.inject([syn]);
    await waitFor(() => peer.requests.length === 1);
    tun.inject([syn]);
    open();
    expect(await settle(0)).toEqual([hex(seg(LOCAL_CLIENT, 50002, VIP, P2, SYN, 7000))]);
    expect(peer.requests).toHaveLength(1);
    expect(counters.drops[Drop.NEGOTIATING]).toBe(2);
    // A TCP request names no protocol (what a peer before UDP understands); nothing is queued.
    expect(Object.keys(peer.requests[0]!.body).sort()).toEqual(['aid', 'client', 'service']);
    expect(queue()).toEqual({ datagrams: 0, queued: 0, sent: 0, dropped: 0, overflow: 0 });
  });

  it('a refused negotiation: one RST, counted once in negotiationsFailed', async () => {
    const { peer, tun, counters, settle, refusals } = await setup();
    peer.refuse = 'no_aid';
    tun.inject([seg(TUN_ADDR, 50003, VIP, 9000, SYN, 300)]);
    expect(await settle(0)).toEqual([hex(rstFor(TUN_ADDR, 50003, VIP, 9000, 300))]);
    expect(counters).toMatchObject({
      negotiationsFailed: 1,
      localClientsRefused: 0,
      rstSent: 1,
      heldInjected: 0,
    });
    expect(refusals()).toEqual([['no_aid', INFO, true]]);
  });

  it('negotiated, but the table is full: one RST, logged refused_table_full', async () => {
    const { tun, table, counters, settle, refusals } = await setup({ capacity: 1 });
    const b = table.create(blocker({}), 1000);
    expect(b).toBeGreaterThanOrEqual(0);
    table.touch(b, FlowState.ESTABLISHED, 1000); // an embryonic one would give way
    tun.inject([seg(TUN_ADDR, 50004, VIP, 9000, SYN, 400)]);
    expect(await settle(0)).toEqual([hex(rstFor(TUN_ADDR, 50004, VIP, 9000, 400))]);
    expect(counters).toMatchObject({ negotiationsFailed: 1, rstSent: 1, heldInjected: 0 });
    expect(refusals()).toEqual([['refused_table_full', INFO, true]]);
  });

  it('negotiated, but VIP:p2 from that client is taken: one RST, logged refused_collision', async () => {
    const { tun, table, counters, settle, refusals } = await setup();
    // Another flow already uses the wire side the new one needs (VIP:p2 <-> local client:port).
    const taken = blocker({ realAddr: VIP, realPort: P2, natAddr: LOCAL_CLIENT, natPort: 50005 });
    expect(table.create(taken, 1000)).toBeGreaterThanOrEqual(0);
    tun.inject([seg(TUN_ADDR, 50005, VIP, 9000, SYN, 500)]);
    expect(await settle(0)).toEqual([hex(rstFor(TUN_ADDR, 50005, VIP, 9000, 500))]);
    expect(counters).toMatchObject({ negotiationsFailed: 1, rstSent: 1, heldInjected: 0 });
    expect(refusals()).toEqual([['refused_collision', INFO, true]]);
  });

  it('a held copy that does not parse: no RST can be built; counted once, logged as an error', async () => {
    const { coop, tun, counters, settle, refusals } = await setup();
    const syn = seg(TUN_ADDR, 50006, VIP, 9000, SYN, 600);
    const info = new PacketInfo();
    expect(checkPacket(syn, 0, syn.length, info)).toBe(Check.OK);
    // Hand over fewer bytes than the IPv4 total length says (a broken holder's copy).
    coop.hold(syn, 0, 30, info, 0, 0, true);
    expect(await settle(0)).toEqual([]);
    expect(tun.written).toEqual([]);
    expect(counters).toMatchObject({ negotiationsFailed: 1, rstSent: 0, heldInjected: 0 });
    expect(refusals()).toEqual([['malformed_held_packet', ERROR, false]]);
  });
});

describe('Cooperation, local clients whose AID is looked up (FIG. 8)', () => {
  it('places a local client by the AID reported after its SYN', async () => {
    const { tun, counters, reported, settle } = await setup();
    reported.set(52001, 1); // a2, reported by the bind/connect library after the SYN
    tun.inject([seg(TUN_ADDR, 52001, LOCAL_VIP, 9000, SYN, 800)]);
    expect(await settle(0)).toEqual([
      hex(seg(LOCAL_CLIENT, 52001, TUN_ADDR, INSTANCE_A2, SYN, 800)),
    ]);
    expect(counters).toMatchObject({ heldInjected: 1, localClientsRefused: 0, rstSent: 0 });
  });

  it('no AID to be found: one RST, counted in localClientsRefused, not negotiationsFailed', async () => {
    const { tun, counters, settle, refusals } = await setup();
    tun.inject([seg(TUN_ADDR, 52002, LOCAL_VIP, 9000, SYN, 900)]);
    expect(await settle(0)).toEqual([hex(rstFor(TUN_ADDR, 52002, LOCAL_VIP, 9000, 900))]);
    expect(counters).toMatchObject({ localClientsRefused: 1, negotiationsFailed: 0, rstSent: 1 });
    expect(refusals()).toEqual([['no_aid', INFO, true]]);
  });

  it('the table is full: one RST, logged refused_table_full, counted in localClientsRefused', async () => {
    const { tun, table, counters, reported, settle, refusals } = await setup({ capacity: 1 });
    const b = table.create(blocker({}), 1000);
    expect(b).toBeGreaterThanOrEqual(0);
    table.touch(b, FlowState.ESTABLISHED, 1000); // an embryonic one would give way
    reported.set(52003, 1);
    tun.inject([seg(TUN_ADDR, 52003, LOCAL_VIP, 9000, SYN, 100)]);
    expect(await settle(0)).toEqual([hex(rstFor(TUN_ADDR, 52003, LOCAL_VIP, 9000, 100))]);
    expect(counters).toMatchObject({ localClientsRefused: 1, negotiationsFailed: 0, rstSent: 1 });
    expect(refusals()).toEqual([['refused_table_full', INFO, true]]);
  });
});

describe('Cooperation and the translation table', () => {
  it("listens to flow removals beside the table's other users, never instead of them", async () => {
    const removed: number[] = [];
    const { table } = await setup({
      beforeCooperation: (t) => {
        t.addRemoveListener((s) => removed.push(s));
      },
    });
    const s = table.create(blocker({}), 1000);
    table.remove(s);
    expect(removed).toEqual([s]);
  });
});

// ---------------------------------------------------------------- UDP

const UDP = 17;
const VIP2_PORT = 9001;

/** Datagram number `n` of a flow from src:sp to dst:dp: its payload says n (and is `size` bytes). */
const dgram = (src: number, sp: number, dst: number, dp: number, n: number, size = 16) => {
  const payload = new Uint8Array(size).fill(n & 0xff);
  return udp4({ src, dst, ident: 0x2000 + n }, { srcPort: sp, dstPort: dp, payload });
};

/** Datagram n of client port `sp` to VIP:9000, as the application sends it. */
const out = (sp: number, n: number, size?: number) => dgram(TUN_ADDR, sp, VIP, 9000, n, size);
/** ... and as vpm sends it on: from the local-client address, to VIP:p2. */
const onWire = (sp: number, p2: number, n: number, size?: number) =>
  hex(dgram(LOCAL_CLIENT, sp, VIP, p2, n, size));

/** Gate the fake peer's offers; returns the function that opens it. */
function gated(peer: FakePeer): () => void {
  let open = () => {};
  peer.gate = new Promise<void>((r) => {
    open = r;
  });
  return open;
}

/** The ICMP messages among written packets: [type, code, destination]. */
function icmpOf(written: Uint8Array[]): [number, number, number][] {
  const info = new PacketInfo();
  const res: [number, number, number][] = [];
  for (const p of written) {
    if (checkPacket(p, 0, p.length, info) !== Check.OK || info.protocol !== 1) continue;
    res.push([p[info.l4Off]!, p[info.l4Off + 1]!, info.dstAddr]);
  }
  return res;
}

describe('Cooperation, client side, UDP: the queue of a flow being negotiated', () => {
  it('holds the first datagram, queues the later ones, sends them all on VIP:p2 in arrival order', async () => {
    const { peer, tun, table, counters, settle, queue, coop } = await setup();
    const open = gated(peer);
    tun.inject([out(50030, 0)]);
    await waitFor(() => peer.requests.length === 1);
    // While the peers negotiate: one at a time, and a batch of three.
    tun.inject([out(50030, 1)]);
    tun.inject([out(50030, 2), out(50030, 3), out(50030, 4)]);
    expect(queue()).toMatchObject({ datagrams: 4, queued: 4, overflow: 0 });
    expect(coop.stats()).toMatchObject({ held: 1 });
    expect(tun.written).toEqual([]);
    open();
    expect(await settle(0)).toEqual([0, 1, 2, 3, 4].map((n) => onWire(50030, P2, n)));
    expect(queue()).toEqual({ datagrams: 0, queued: 4, sent: 4, dropped: 0, overflow: 0 });
    expect(coop.stats()).toMatchObject({ held: 0, heldBytes: 0, resolved: 1 });
    expect(counters).toMatchObject({ heldInjected: 5, negotiationsFailed: 0 });
    expect(counters.drops[Drop.NEGOTIATING]).toBe(5);
    // The request named the protocol; the flow is a UDP one.
    expect(peer.requests.map((r) => r.body)).toEqual([
      { client: '198.19.254.2:50030', service: '198.19.0.9:9000', aid: 'a1', protocol: 'udp' },
    ]);
    const h = table.lookup(TUN_ADDR, 50030, VIP, 9000, UDP);
    expect(h).toBeGreaterThanOrEqual(0);
    expect(table.lookup(TUN_ADDR, 50030, VIP, 9000, 6)).toBe(-1);
    // From now on the flow exists: datagrams go straight through, replies come back from VIP:9000.
    const n = tun.written.length;
    tun.inject([out(50030, 5), dgram(VIP, P2, LOCAL_CLIENT, 50030, 99)]);
    expect(tun.written.slice(n).map(hex)).toEqual([
      onWire(50030, P2, 5),
      hex(dgram(VIP, 9000, TUN_ADDR, 50030, 99)),
    ]);
    expect(peer.requests).toHaveLength(1);
  });

  it('a bound per flow: what does not fit is dropped and counted, the rest goes in order', async () => {
    const { peer, tun, settle, queue } = await setup({ holdLimits: { maxQueuedPerFlow: 3 } });
    const open = gated(peer);
    tun.inject([out(50031, 0)]);
    await waitFor(() => peer.requests.length === 1);
    tun.inject([1, 2, 3, 4, 5, 6].map((n) => out(50031, n)));
    expect(queue()).toMatchObject({ datagrams: 3, queued: 3, overflow: 3 });
    open();
    expect(await settle(0)).toEqual([0, 1, 2, 3].map((n) => onWire(50031, P2, n)));
    expect(queue()).toEqual({ datagrams: 0, queued: 3, sent: 3, dropped: 0, overflow: 3 });
  });

  it('a bound in total, across flows: the datagrams of every flow count', async () => {
    const { peer, tun, settle, queue } = await setup({ holdLimits: { maxQueued: 4 } });
    const open = gated(peer);
    tun.inject([out(50032, 0), out(50033, 0)]);
    await waitFor(() => peer.requests.length === 2);
    tun.inject([1, 2, 3].map((n) => out(50032, n)));
    tun.inject([1, 2, 3].map((n) => out(50033, n)));
    expect(queue()).toMatchObject({ datagrams: 4, overflow: 2 });
    open();
    const written = await settle(0);
    const p2Of = (port: number) =>
      P2 + peer.requests.findIndex((r) => r.body.client.endsWith(`:${port}`));
    // Each flow's datagrams in their own order; the second flow got one place in the queue.
    expect(
      written.filter((w) => [0, 1, 2, 3].some((n) => w === onWire(50032, p2Of(50032), n))),
    ).toEqual([0, 1, 2, 3].map((n) => onWire(50032, p2Of(50032), n)));
    expect(
      written.filter((w) => [0, 1, 2, 3].some((n) => w === onWire(50033, p2Of(50033), n))),
    ).toEqual([0, 1].map((n) => onWire(50033, p2Of(50033), n)));
    expect(written).toHaveLength(6);
    expect(queue()).toEqual({ datagrams: 0, queued: 4, sent: 4, dropped: 0, overflow: 2 });
  });

  it('a bound in bytes (first packets and queue together), and in flows held', async () => {
    const len = out(50034, 0, 100).length;
    const { peer, tun, settle, queue, coop, counters } = await setup({
      holdLimits: { maxBytes: 3 * len, maxFlows: 1 },
    });
    const open = gated(peer);
    tun.inject([out(50034, 0, 100)]);
    await waitFor(() => peer.requests.length === 1);
    tun.inject([1, 2, 3].map((n) => out(50034, n, 100)));
    expect(queue()).toMatchObject({ datagrams: 2, overflow: 1 });
    expect(coop.stats()).toMatchObject({ held: 1, heldBytes: 3 * len });
    // A second flow while one is held (maxFlows 1): dropped uncopied, unanswered, counted.
    tun.inject([out(50035, 0, 100)]);
    expect(coop.stats()).toMatchObject({ held: 1, heldOverflow: 1 });
    open();
    expect(await settle(0)).toEqual([0, 1, 2].map((n) => onWire(50034, P2, n, 100)));
    expect(counters).toMatchObject({ negotiationsFailed: 0, icmpUnreachableSent: 0 });
    // Room again: the second flow's next datagram starts its own negotiation.
    tun.inject([out(50035, 1, 100)]);
    expect(await settle(3)).toEqual([onWire(50035, P2 + 1, 1, 100)]);
    expect(peer.requests).toHaveLength(2);
  });

  it('a refused negotiation: the first datagram is answered with one ICMP port unreachable, the queued ones are dropped and counted', async () => {
    const { peer, tun, counters, settle, queue, refusals, logs } = await setup();
    const open = gated(peer);
    peer.refuse = 'no_aid';
    tun.inject([out(50036, 0)]);
    await waitFor(() => peer.requests.length === 1);
    tun.inject([1, 2, 3].map((n) => out(50036, n)));
    open();
    await settle(0);
    expect(icmpOf(tun.written)).toEqual([[3, 3, TUN_ADDR]]);
    expect(tun.written).toHaveLength(1);
    expect(counters).toMatchObject({
      negotiationsFailed: 1,
      icmpUnreachableSent: 1,
      heldInjected: 0,
      rstSent: 0,
    });
    expect(queue()).toEqual({ datagrams: 0, queued: 3, sent: 0, dropped: 3, overflow: 0 });
    expect(refusals()).toEqual([['no_aid', INFO, true]]);
    expect(logs.find((l) => l.event === 'flow_refused')).toMatchObject({
      protocol: 'udp',
      queuedDropped: 3,
    });
  });

  it('negotiated, but the flow cannot be recorded: one ICMP, the queue dropped', async () => {
    const { peer, tun, table, counters, settle, queue, refusals } = await setup({ capacity: 1 });
    const b = table.create(blocker({}), 1000);
    expect(b).toBeGreaterThanOrEqual(0);
    table.touch(b, FlowState.ESTABLISHED, 1000); // an embryonic one would give way
    const open = gated(peer);
    tun.inject([out(50037, 0)]);
    await waitFor(() => peer.requests.length === 1);
    tun.inject([out(50037, 1), out(50037, 2)]);
    open();
    await settle(0);
    expect(icmpOf(tun.written)).toEqual([[3, 3, TUN_ADDR]]);
    expect(counters).toMatchObject({ negotiationsFailed: 1, heldInjected: 0 });
    expect(queue()).toMatchObject({ sent: 0, dropped: 2 });
    expect(refusals()).toEqual([['refused_table_full', INFO, true]]);
  });

  it('a TCP and a UDP flow from one client port to one VIP:port, and UDP flows to two services, are held and negotiated apart', async () => {
    const { peer, tun, table, settle, queue } = await setup();
    const open = gated(peer);
    const syn = seg(TUN_ADDR, 50038, VIP, 9000, SYN, 4000);
    tun.inject([syn, out(50038, 0), dgram(TUN_ADDR, 50038, VIP, VIP2_PORT, 0)]);
    await waitFor(() => peer.requests.length === 3);
    tun.inject([syn, out(50038, 1), dgram(TUN_ADDR, 50038, VIP, VIP2_PORT, 1)]);
    // The retransmitted SYN is not queued; a datagram of each UDP flow is.
    expect(queue()).toMatchObject({ datagrams: 2, overflow: 0 });
    open();
    const written = await settle(0);
    const p2 = (service: string, protocol: string | undefined) =>
      P2 +
      peer.requests.findIndex((r) => r.body.service === service && r.body.protocol === protocol);
    expect(peer.requests.map((r) => [r.body.service, r.body.protocol ?? 'none']).sort()).toEqual([
      ['198.19.0.9:9000', 'none'],
      ['198.19.0.9:9000', 'udp'],
      ['198.19.0.9:9001', 'udp'],
    ]);
    const tcpP2 = p2('198.19.0.9:9000', undefined);
    const udpP2 = p2('198.19.0.9:9000', 'udp');
    const udp2P2 = p2('198.19.0.9:9001', 'udp');
    expect(written.sort()).toEqual(
      [
        hex(seg(LOCAL_CLIENT, 50038, VIP, tcpP2, SYN, 4000)),
        onWire(50038, udpP2, 0),
        onWire(50038, udpP2, 1),
        hex(dgram(LOCAL_CLIENT, 50038, VIP, udp2P2, 0)),
        hex(dgram(LOCAL_CLIENT, 50038, VIP, udp2P2, 1)),
      ].sort(),
    );
    expect(table.lookup(TUN_ADDR, 50038, VIP, 9000, 6)).toBeGreaterThanOrEqual(0);
    expect(table.lookup(TUN_ADDR, 50038, VIP, 9000, UDP)).toBeGreaterThanOrEqual(0);
    expect(table.lookup(TUN_ADDR, 50038, VIP, VIP2_PORT, UDP)).toBeGreaterThanOrEqual(0);
  });

  it('a local UDP client placed by its AID (FIG. 8): the datagrams of its first batch follow the first', async () => {
    const { tun, counters, reported, settle, queue } = await setup();
    reported.set(52010, 1); // a2, reported after the first datagram
    // One batch: the first is held, the others queued before the holder runs at all.
    tun.inject([0, 1, 2].map((n) => dgram(TUN_ADDR, 52010, LOCAL_VIP, 9000, n)));
    expect(await settle(0)).toEqual(
      [0, 1, 2].map((n) => hex(dgram(LOCAL_CLIENT, 52010, TUN_ADDR, INSTANCE_A2, n))),
    );
    expect(counters).toMatchObject({ heldInjected: 3, localClientsRefused: 0 });
    expect(queue()).toMatchObject({ queued: 2, sent: 2 });
  });
});

// ---------------------------------------------------------------- IPv6

const TUN6 = ip6('2001:2:0:fe::1');
const LC6 = ip6('2001:2:0:fe::2');
const VIP6 = ip6('2001:2:0:9::9');
const LOCAL_VIP6 = ip6('2001:2:0:9::10');

const seg6 = (
  src: Uint8Array,
  sp: number,
  dst: Uint8Array,
  dp: number,
  flags: number,
  seq = 1000,
) => tcp6({ src, dst }, { srcPort: sp, dstPort: dp, flags, seq, window: 64240 });
const dgram6 = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number, n: number) =>
  udp6({ src, dst }, { srcPort: sp, dstPort: dp, payload: new Uint8Array(12).fill(n) });

/**
 * The client side with IPv6 on: web = tcp/[2001:2:0:9::9]:9000 and dns = udp on the
 * same, both a peer's (a1 by client ports 50000-50999); loc = [2001:2:0:9::10]:9000
 * here, a2's instance on [2001:2:0:fe::1]:19002. Local clients come from the TUN's
 * IPv6 address and are translated to 2001:2:0:fe::2.
 */
async function setup6() {
  const peer = new FakePeer();
  const server = new PeerServer({
    host: '127.0.0.1',
    port: 0,
    name: 'server',
    keys: Buffer.from(KEY_HEX, 'hex'),
    psk: pskTable([
      { name: 'client', keys: [{ id: 'default', key: Buffer.from(KEY_HEX, 'hex') }] },
    ]),
    handler: peer.handler,
  });
  const { port } = await server.listen();
  cleanup.push(() => server.close());
  const parsed = parseConfig(
    {
      tun: {
        name: 'vpm0',
        address: '198.19.254.1',
        localClientAddress: '198.19.254.2',
        address6: '2001:2:0:fe::1',
        localClientAddress6: '2001:2:0:fe::2',
      },
      services: [
        { name: 'web', address: '2001:2:0:9::9', port: 9000, peer: 'server' },
        { name: 'dns', protocol: 'udp', address: '2001:2:0:9::9', port: 9000, peer: 'server' },
        { name: 'loc', address: '2001:2:0:9::10', port: 9000 },
      ],
      applications: [
        { aid: 'a1' },
        { aid: 'a2', instances: [{ address: '2001:2:0:fe::1', port: INSTANCE_A2 }] },
      ],
      selectors: [
        { service: 'web', clientPorts: '50000-50999', aid: 'a1' },
        { service: 'dns', clientPorts: '50000-50999', aid: 'a1' },
      ],
      default: { refuse: true },
      cooperative: {
        name: 'client',
        timeoutMs: 2000,
        peers: [{ name: 'server', address: '198.18.0.1', port: 7070, key: KEY_HEX }],
      },
    },
    'cooperation6.test.json',
  );
  const co = parsed.cooperative!;
  const cfg: Config = {
    ...parsed,
    cooperative: { ...co, peers: [{ ...co.peers[0]!, address: ip4('127.0.0.1'), port }] },
  };
  const rules = rulesFromConfig(cfg);
  const instances = new InstanceSet();
  instances.replaceStatic(rules, staticInstancesFromConfig(cfg));
  const tun = new MemoryTun({ batchSize: 8 });
  const timeouts = [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000];
  const table = new FlowTable(64, timeouts, 5, 64, true);
  const counters = new Counters(cfg.applications.length);
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
  /** AIDs the library reported for IPv6 local clients, by port (after the SYN). */
  const reported6 = new Map<number, number>();
  let coop: Cooperation | null = null;
  const pipeline = new Pipeline(
    tun,
    table,
    rules,
    counters,
    {
      instances,
      verifyL4Checksum: true,
      localClientAddr: cfg.tun.localClientAddress,
      localClientAddr6: words6(LC6),
      negotiate: (buf, off, len, info, svc, aid, local) =>
        coop?.hold(buf, off, len, info, svc, aid, local),
      holdUnknownLocal: true,
    },
    new Set([ip4('198.19.254.1')]),
  );
  pipeline.localAddrs6 = words6(TUN6);
  pipeline.localAddrs6Count = 1;
  const clock = 1000;
  coop = new Cooperation(cfg, {
    pipeline,
    table,
    rules: () => rules,
    instances,
    log,
    now: () => clock,
    localClientAid6: (_addr, p) => reported6.get(p) ?? -1,
  });
  await coop.start();
  const c = coop;
  cleanup.push(() => c.close());
  tun.start((n) => pipeline.processBatch(n, clock));
  const settle = async (from: number) => {
    await waitFor(() => (c.stats().held as number) === 0);
    return tun.written.slice(from).map(hex);
  };
  return { peer, coop: c, tun, table, counters, logs, reported6, settle };
}

describe('Cooperation, client side, over IPv6', () => {
  it('an IPv6 SYN is held (once), negotiated with [v6]:port endpoints, and sent on to [VIP6]:p2 from the IPv6 local-client address, with an IPv6 flow', async () => {
    const { peer, tun, table, counters, logs, settle, coop } = await setup6();
    let open = () => {};
    peer.gate = new Promise<void>((r) => {
      open = r;
    });
    const syn = seg6(TUN6, 50001, VIP6, 9000, SYN, 7000);
    tun.inject([syn]);
    await waitFor(() => peer.requests.length === 1);
    tun.inject([syn]); // a retransmission: not held twice
    open();
    expect(await settle(0)).toEqual([hex(seg6(LC6, 50001, VIP6, P2, SYN, 7000))]);
    expect(peer.requests).toHaveLength(1);
    expect(peer.requests[0]!.body).toEqual({
      client: '[2001:2:0:fe::2]:50001',
      service: '[2001:2:0:9::9]:9000',
      aid: 'a1',
    });
    expect(counters.drops[Drop.NEGOTIATING]).toBe(2);
    expect(counters.heldInjected).toBe(1);
    // The flow is an IPv6 one, found from the client's packets and the peer's answers.
    const buf = new Uint8Array(40);
    buf.set(TUN6, 8);
    buf.set(VIP6, 24);
    const h = table.lookup6(buf, 8, 50001, 24, 9000, 6);
    expect(h).toBeGreaterThanOrEqual(0);
    expect(table.family[h >> 1]).toBe(6);
    expect(tun.written.length).toBe(1);
    tun.inject([seg6(VIP6, P2, LC6, 50001, SYN | ACK, 1)]);
    expect(tun.written.slice(1).map(hex)).toEqual([
      hex(seg6(VIP6, 9000, TUN6, 50001, SYN | ACK, 1)),
    ]);
    expect(logs.find((l) => l.event === 'flow_negotiated')).toMatchObject({
      side: 'client',
      client: '[2001:2:0:fe::1]:50001',
      service: '[2001:2:0:9::9]:9000',
      p2: P2,
    });
    expect(coop.stats()).toMatchObject({ resolved: 1, refused: 0 });
  });

  it('a refused IPv6 negotiation (family_mismatch from the peer): one IPv6 RST, counted by reason, no flow', async () => {
    const { peer, tun, table, counters, logs, settle, coop } = await setup6();
    peer.refuse = 'family_mismatch';
    tun.inject([seg6(TUN6, 50002, VIP6, 9000, SYN, 300)]);
    const rst = tcp6(
      { src: VIP6, dst: TUN6 },
      { srcPort: 9000, dstPort: 50002, seq: 0, ack: 301, flags: RST | ACK, window: 0 },
    );
    expect(await settle(0)).toEqual([hex(rst)]);
    expect(counters.negotiationsFailed).toBe(1);
    expect(coop.stats()).toMatchObject({ refused: 1, refusedReasons: { family_mismatch: 1 } });
    expect(logs.find((l) => l.event === 'flow_refused')).toMatchObject({
      reason: 'family_mismatch',
      client: '[2001:2:0:fe::1]:50002',
      service: '[2001:2:0:9::9]:9000',
    });
    expect(table.size).toBe(0);
  });

  it('IPv6 UDP: the later datagrams of a held flow are queued and follow the first to [VIP6]:p2', async () => {
    const { peer, tun, settle } = await setup6();
    let open = () => {};
    peer.gate = new Promise<void>((r) => {
      open = r;
    });
    tun.inject([dgram6(TUN6, 50003, VIP6, 9000, 0)]);
    await waitFor(() => peer.requests.length === 1);
    tun.inject([dgram6(TUN6, 50003, VIP6, 9000, 1), dgram6(TUN6, 50003, VIP6, 9000, 2)]);
    open();
    expect(await settle(0)).toEqual([0, 1, 2].map((n) => hex(dgram6(LC6, 50003, VIP6, P2, n))));
    expect(peer.requests[0]!.body).toMatchObject({
      client: '[2001:2:0:fe::2]:50003',
      protocol: 'udp',
    });
  });

  it('a local IPv6 client of a local service (FIG. 8), its AID reported after the SYN: placed on the IPv6 instance', async () => {
    const { tun, reported6, settle, logs } = await setup6();
    reported6.set(55001, 1); // a2
    tun.inject([seg6(TUN6, 55001, LOCAL_VIP6, 9000, SYN, 10)]);
    expect(await settle(0)).toEqual([hex(seg6(LC6, 55001, TUN6, INSTANCE_A2, SYN, 10))]);
    expect(logs.find((l) => l.event === 'flow_created')).toMatchObject({
      aid: 'a2',
      how: 'library report',
      client: '[2001:2:0:fe::1]:55001',
      real: `[2001:2:0:fe::1]:${INSTANCE_A2}`,
    });
  });
});
