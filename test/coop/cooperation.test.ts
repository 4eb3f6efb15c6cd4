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
import type { Message } from '../../src/coop/protocol.js';
import { type AckAnswer, type OfferAnswer, PeerServer } from '../../src/coop/server.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { Counters, Drop } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline } from '../../src/datapath/pipeline.js';
import { type FlowKeyArgs, FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { hex, ip4, tcp4 } from '../support/builder.js';
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

/** What the peer does with a request: offer (after `gate`, if set), or refuse. */
class FakePeer {
  gate: Promise<void> | null = null;
  refuse: string | null = null;
  requests: Message<'request'>[] = [];
  handler = {
    request: async (m: Message<'request'>): Promise<OfferAnswer> => {
      this.requests.push(m);
      if (this.gate) await this.gate;
      if (this.refuse) return { type: 'refuse', body: { reason: this.refuse, message: 'no' } };
      return { type: 'offer', body: { aids: ['a1', 'a2'], port: P2 } };
    },
    ack: (): AckAnswer => ({ type: 'confirm' }),
  };
}

async function setup(o: { capacity?: number; beforeCooperation?: (t: FlowTable) => void } = {}) {
  const peer = new FakePeer();
  const server = new PeerServer({
    host: '127.0.0.1',
    port: 0,
    name: 'server',
    keys: Buffer.from(KEY_HEX, 'hex'),
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
      ],
      applications: [
        { aid: 'a1' },
        { aid: 'a2', instances: [{ address: '198.19.254.1', port: INSTANCE_A2 }] },
      ],
      selectors: [
        { service: 'web', clientPorts: '50000-50999', aid: 'a1' },
        { service: 'web', clientPorts: '51000-51999', aid: 'a2' },
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
  return { peer, coop: c, tun, table, counters, logs, reported, settle, refusals };
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
    const { peer, tun, counters, settle } = await setup();
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
    expect(table.create(blocker({}), 1000)).toBeGreaterThanOrEqual(0);
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
    expect(table.create(blocker({}), 1000)).toBeGreaterThanOrEqual(0);
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
