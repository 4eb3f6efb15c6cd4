/**
 * SharedFlowTable in one thread: the FlowTable behaviours that still hold
 * (lookups from both sides, collisions, remove, repoint, IPv6, expiry by timer
 * class, the flood policy), what differs by design (states only move forward,
 * per-worker counters summed, a FIFO free ring, index rebuilds), the guards of
 * the one-writer rule, and the bytes a slot costs (docs/architecture.md). The
 * concurrent behaviour, with real worker threads: shared-table-race.test.ts.
 */

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { flowColumns, RECORD_VERSION, recordCheck } from '../../src/flow/layout.js';
import {
  CREATE_COLLISION,
  CREATE_FULL,
  SharedFlowTable,
  TOMBSTONE,
} from '../../src/flow/shared-table.js';
import { FIN_FROM_CLIENT, FlowState, TimerClass } from '../../src/flow/state.js';
import { type FlowKeyArgs, fold6 } from '../../src/flow/table.js';
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../../src/wire/tcp.js';
import { ip6, words6 } from '../support/builder.js';
import { Rng } from '../support/rng.js';

const TIMEOUTS = [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000];

function key(i: number, over: Partial<FlowKeyArgs> = {}): FlowKeyArgs {
  return {
    proto: 6,
    clientAddr: 0xc6120100 + (i >>> 16),
    clientPort: 1024 + (i & 0xffff),
    vipAddr: 0xc6130009,
    vport: 9000,
    natAddr: 0xc6120100 + (i >>> 16),
    natPort: 1024 + (i & 0xffff),
    realAddr: 0xc613ff01,
    realPort: 19001,
    service: 0,
    aid: 1,
    instance: 0,
    ...over,
  };
}

const side0 = (t: SharedFlowTable, k: FlowKeyArgs) =>
  t.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, k.proto);
const side1 = (t: SharedFlowTable, k: FlowKeyArgs) =>
  t.lookup(k.realAddr, k.realPort, k.natAddr, k.natPort, k.proto);
const live = (t: SharedFlowTable, k: FlowKeyArgs) => side0(t, k) >= 0;

describe('SharedFlowTable (one thread)', () => {
  it('finds a flow from both directions and tells the side', () => {
    const t = new SharedFlowTable(16, TIMEOUTS, 1);
    const k = key(5);
    const s = t.create(k, 0);
    expect(s).toBeGreaterThanOrEqual(0);
    expect(side0(t, k)).toBe(s * 2);
    expect(side1(t, k)).toBe(s * 2 + 1);
    expect(t.lookup(k.natAddr, k.natPort, k.realAddr, k.realPort, 6)).toBe(-1);
    expect(t.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, 17)).toBe(-1);
    expect(t.lookup(k.vipAddr, k.vport, k.clientAddr, k.clientPort, 6)).toBe(-1);
    expect(t.lookup(k.clientAddr, k.clientPort + 1, k.vipAddr, k.vport, 6)).toBe(-1);
    expect(t.state[s]).toBe(FlowState.SYN_SENT);
    expect(t.size).toBe(1);
    // The record is sealed as FlowTable's are (layout.ts): the mirror copies bytes.
    expect(t.ver[s]).toBe(RECORD_VERSION);
    const h = t.sharedTableHandles();
    expect(t.check[s]).toBe(
      recordCheck(flowColumns(h.records as unknown as ArrayBuffer, 16, false), s),
    );
  });

  it('refuses a duplicate key on either side, and a full table of established flows', () => {
    const t = new SharedFlowTable(2, TIMEOUTS, 2);
    const a = t.create(key(1), 0);
    expect(a).toBeGreaterThanOrEqual(0);
    expect(t.create(key(1), 0)).toBe(CREATE_COLLISION);
    expect(t.create(key(1, { vipAddr: 0xc613000a }), 0)).toBe(CREATE_COLLISION);
    const b = t.create(key(2), 0);
    expect(b).toBeGreaterThanOrEqual(0);
    t.touch(a, FlowState.ESTABLISHED, 0);
    t.touch(b, FlowState.ESTABLISHED, 0);
    expect(t.create(key(3), 0)).toBe(CREATE_FULL);
    expect(t.size).toBe(2);
  });

  it('matches a Map model under random create/remove churn', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 300 })), {
          minLength: 1,
          maxLength: 2000,
        }),
        fc.integer(),
        (ops, seed) => {
          const t = new SharedFlowTable(128, TIMEOUTS, seed);
          const model = new Map<number, number>();
          for (const [add, i] of ops) {
            if (add) {
              const s = t.create(key(i), 0);
              if (model.has(i)) expect(s).toBe(CREATE_COLLISION);
              else if (model.size >= 128) expect(s).toBe(CREATE_FULL);
              else {
                expect(s).toBeGreaterThanOrEqual(0);
                t.touch(s, FlowState.ESTABLISHED, 0);
                model.set(i, s);
              }
            } else if (model.has(i)) {
              t.remove(model.get(i)!);
              model.delete(i);
            }
          }
          expect(t.size).toBe(model.size);
          for (let i = 0; i <= 300; i++) {
            const k = key(i);
            const want = model.get(i);
            expect(side0(t, k)).toBe(want === undefined ? -1 : want * 2);
            expect(side1(t, k)).toBe(want === undefined ? -1 : want * 2 + 1);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('rebuilds the index once tombstones pass a quarter of it, and lookups go on across the switch', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 3); // index of 64 cells: rebuild past 16 tombstones
    const keep = t.create(key(1000), 0);
    t.touch(keep, FlowState.ESTABLISHED, 0);
    let i = 0;
    while (t.rebuilds === 0 && i < 100) t.remove(t.create(key(i++), 0));
    expect(t.rebuilds).toBe(1);
    expect(i).toBeGreaterThanOrEqual(8); // 2 tombstones a flow, fewer when an insert reuses one
    expect(side0(t, key(1000))).toBe(keep * 2);
    expect(side1(t, key(1000))).toBe(keep * 2 + 1);
    const h = t.sharedTableHandles();
    const active = new Int32Array(new Int32Array(h.ctl)[0]! & 1 ? h.index1 : h.index0);
    expect(active.filter((e) => e === TOMBSTONE).length).toBe(0);
    expect(active.filter((e) => e !== 0).length).toBe(2);
  });

  it('a worker that sits in the old generation postpones the rebuild; the writer does not wait for it', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 3, 8, false, 2, 0);
    const h = t.sharedTableHandles();
    const ctl = new Int32Array(h.ctl);
    // Worker 1 announced generation 0 (ann = gen + 1) and has not left: a lookup in progress.
    Atomics.store(ctl, 8 + 1, 1);
    let i = 0;
    while (t.rebuilds === 0 && i < 100) t.remove(t.create(key(i++), 0));
    expect(t.rebuilds).toBe(1); // the spare (generation -1) had nobody in it
    expect(ctl[0]).toBe(1);
    // Now worker 1 may be reading the spare (generation 0's index): postponed, and churn goes on.
    // (Stop at the first postponement: far below the 3/4 mark, where the writer would wait.)
    for (let n = 0; n < 30 && t.rebuildsPostponed === 0; n++) t.remove(t.create(key(i++), 0));
    expect(t.rebuildsPostponed).toBe(1);
    t.remove(t.create(key(i++), 0));
    expect(t.rebuildsPostponed).toBe(2);
    expect(t.rebuilds).toBe(1);
    Atomics.store(ctl, 8 + 1, 0); // it left
    t.remove(t.create(key(i++), 0));
    expect(t.rebuilds).toBe(2);
    for (let j = 0; j < i; j++) expect(live(t, key(j))).toBe(false);
  });

  it("expires each timer class after its own idle time, within a budget, from the workers' stamps", () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 3, 8, false, 2, 0);
    const w1 = SharedFlowTable.attach(t.sharedTableHandles(), 1);
    const a = t.create(key(1), 0);
    const b = t.create(key(2), 1000);
    const c = t.create(key(3), 2000);
    t.touch(c, FlowState.ESTABLISHED, 2000);
    const expired: number[] = [];
    expect(t.expire(10_500, 100, (s) => expired.push(s))).toBe(1);
    expect(expired).toEqual([a]);
    // Another worker's activity renews b: last seen is the latest stamp of any worker.
    w1.touch(b, FlowState.SYN_RECEIVED, 10_900);
    expect(t.lastSeenOf(b)).toBe(10_900);
    expect(t.expire(20_000, 100)).toBe(0);
    expect(t.expire(20_901, 100)).toBe(1);
    expect(t.isLive(c)).toBe(true);
    expect(w1.isLive(c)).toBe(true);
    expect(t.expire(3_602_001, 100)).toBe(1);
    expect(t.size).toBe(0);
    for (let i = 10; i < 15; i++) t.create(key(i), 0);
    expect(t.expire(100_000, 2)).toBe(2);
    expect(t.expire(100_000, 100)).toBe(3);
    // A bounded scan: 8 slots, 3 per call.
    for (let i = 20; i < 25; i++) t.create(key(i), 0);
    let n = 0;
    for (let call = 0; call < 3; call++) n += t.expire(100_000, 100, undefined, 3);
    expect(n).toBe(5);
  });

  it('reuses freed slots first in first out, gives fresh ids, and lists live flows', () => {
    const t = new SharedFlowTable(4, TIMEOUTS, 4);
    const slots = [1, 2, 3, 4].map((i) => t.create(key(i), 0));
    for (const s of slots) t.touch(s, FlowState.ESTABLISHED, 0);
    expect(new Set(slots).size).toBe(4);
    expect(t.create(key(5), 0)).toBe(CREATE_FULL);
    const s1 = slots[2]!;
    const id1 = t.id[s1];
    t.remove(s1);
    t.remove(s1);
    expect(t.size).toBe(3);
    const s2 = t.create(key(6), 0);
    expect(s2).toBe(s1);
    expect(t.id[s2]).not.toBe(id1);
    t.touch(s2, FlowState.ESTABLISHED, 0);
    expect(t.create(key(7), 0)).toBe(CREATE_FULL);
    const seen: number[] = [];
    t.forEach((s) => {
      seen.push(s);
    });
    expect(seen.sort()).toEqual([...slots].sort());
  });

  it('repoints the server side: the old key goes, the new one finds the slot, the client side stays', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 5);
    const k = key(1);
    const s = t.create(k, 0);
    const q = t.seqOf(s);
    expect(t.repoint(s, 0xc613ff02, 19002, 1)).toBe(true);
    expect(t.unchanged(s, q)).toBe(false); // a reader holding the old seq knows
    expect(side1(t, k)).toBe(-1);
    expect(t.lookup(0xc613ff02, 19002, k.natAddr, k.natPort, 6)).toBe(s * 2 + 1);
    expect(side0(t, k)).toBe(s * 2);
    expect(t.instance[s]).toBe(1);
    // Onto its own key: true, nothing changes; onto another flow's: false.
    expect(t.repoint(s, 0xc613ff02, 19002, 1)).toBe(true);
    const o = t.create(key(2), 0);
    expect(t.repoint(o, 0xc613ff02, 19002, 1, null)).toBe(true); // different nat port: free
    const k3 = key(3);
    const p = t.create(k3, 0);
    expect(t.repoint(p, 0xc613ff02, 19002, 1)).toBe(true);
    expect(t.repoint(p, 0xc613ff01, 19001, 0)).toBe(true);
    expect(t.repoint(s, k3.realAddr, k3.realPort, 0)).toBe(true); // nat differs: no clash
    expect(t.check[s]).toBe(
      recordCheck(
        flowColumns(t.sharedTableHandles().records as unknown as ArrayBuffer, 8, false),
        s,
      ),
    );
  });

  it('states only move forward; FINs and counters add up per worker', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 6, 8, false, 3, 0);
    const h = t.sharedTableHandles();
    const w1 = SharedFlowTable.attach(h, 1);
    const w2 = SharedFlowTable.attach(h, 2);
    const s = t.create(key(1), 0);
    expect(t.embryonicSize).toBe(1);
    expect(w1.advanceTcp(s, TCP_SYN | TCP_ACK, false, 1)).toBe(FlowState.SYN_RECEIVED);
    expect(w2.advanceTcp(s, TCP_ACK, true, 2)).toBe(FlowState.ESTABLISHED);
    expect(t.embryonicSize).toBe(0);
    w1.touch(s, FlowState.SYN_SENT, 3); // a stale state: not lowered
    expect(t.state[s]).toBe(FlowState.ESTABLISHED);
    expect(w2.advanceTcp(s, TCP_FIN | TCP_ACK, true, 4)).toBe(FlowState.FIN_WAIT);
    expect(t.fins[s]).toBe(FIN_FROM_CLIENT);
    expect(w1.advanceTcp(s, TCP_FIN | TCP_ACK, false, 5)).toBe(FlowState.TIME_WAIT);
    expect(w1.advanceTcp(s, TCP_RST, false, 6)).toBe(FlowState.RESET);
    for (let i = 0; i < 5; i++) w1.count(s, true, 100);
    for (let i = 0; i < 3; i++) w2.count(s, true, 10);
    w2.count(s, false, 1000);
    t.count(s, false, 1);
    expect(t.pktsInOf(s)).toBe(8);
    expect(w2.bytesInOf(s)).toBe(530);
    expect(t.pktsOutOf(s)).toBe(2);
    expect(t.bytesOutOf(s)).toBe(1001);
    const f = new Float64Array(5);
    t.figuresOfWorker(s, 1, f);
    expect(Array.from(f)).toEqual([6, 5, 500, 0, 0]);
    t.figuresOfWorker(s, 0, f);
    expect(Array.from(f)).toEqual([0, 0, 0, 1, 1]); // counted, never touched
    expect(t.lastSeenOf(s)).toBe(6);
    // A new flow in the slot starts from zero: the worker cells belonged to the old one.
    t.remove(s);
    expect(t.isLive(s)).toBe(false);
    w1.touch(s, FlowState.ESTABLISHED, 7); // a stale handle: a FREE slot is not revived
    expect(t.state[s]).toBe(FlowState.FREE);
    const t2 = new SharedFlowTable(1, TIMEOUTS, 6, 1, false, 2, 0);
    const v1 = SharedFlowTable.attach(t2.sharedTableHandles(), 1);
    const a = t2.create(key(1), 0);
    v1.count(a, true, 50);
    t2.remove(a);
    const b = t2.create(key(2), 10);
    expect(b).toBe(a);
    expect(t2.pktsInOf(b)).toBe(0);
    expect(t2.lastSeenOf(b)).toBe(10);
    v1.count(b, true, 7);
    expect(t2.bytesInOf(b)).toBe(7);
    // UDP: unreplied until the server answers.
    const u = t.create(key(9, { proto: 17 }), 0);
    expect(w1.advanceUdp(u, true, 1)).toBe(FlowState.UDP_UNREPLIED);
    expect(w2.advanceUdp(u, false, 2)).toBe(FlowState.UDP_ASSURED);
    expect(t.udpSize).toBe(1);
  });

  it('keeps the one-writer rule and one view per worker index', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 7, 8, false, 2, 0);
    const h = t.sharedTableHandles();
    const w = SharedFlowTable.attach(h, 1);
    expect(() => w.create(key(1), 0)).toThrow(/only the writer .* worker 1's view/);
    expect(() => w.remove(0)).toThrow(/SharedFlowTable.remove: only the writer/);
    expect(() => w.expire(0, 1)).toThrow(/only the writer/);
    expect(() => SharedFlowTable.attach(h, 1)).toThrow(/worker index 1 .* already in use/);
    expect(() => SharedFlowTable.attach(h, 2)).toThrow(/worker index 2 must be an integer in 0..1/);
    t.releaseWorker(1);
    expect(SharedFlowTable.attach(h, 1).workerIndex).toBe(1);
    expect(() => new SharedFlowTable(0, TIMEOUTS)).toThrow(/capacity 0/);
    expect(() => new SharedFlowTable(8, TIMEOUTS, 1, 9)).toThrow(/embryonic flow limit 9 .*1\.\.8/);
    expect(() => new SharedFlowTable(8, TIMEOUTS, 1, 8, false, 65)).toThrow(/worker count 65/);
  });

  it('tells every remove listener before a flow goes (remove, expiry, eviction)', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 3, 1);
    const seen: string[] = [];
    t.addRemoveListener((s) => seen.push(`${s} port ${t.clientPort[s]} state ${t.state[s]}`));
    const a = t.create(key(1), 0);
    t.remove(a);
    t.remove(a);
    const b = t.create(key(2), 0);
    const c = t.create(key(3), 1); // evicts b (share of 1)
    expect(t.expire(TIMEOUTS[TimerClass.EMBRYONIC]! + 2, 10)).toBe(1);
    expect(seen).toEqual([
      `${a} port 1025 state ${FlowState.SYN_SENT}`,
      `${b} port 1026 state ${FlowState.SYN_SENT}`,
      `${c} port 1027 state ${FlowState.SYN_SENT}`,
    ]);
  });
});

describe('SharedFlowTable flood policy (limits.embryonicFlows)', () => {
  const udp = (i: number) => key(i, { proto: 17 });

  it('keeps embryonic flows to their share: the oldest gives way, established flows never', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 5, 3);
    const est = [1, 2, 3].map((i) => t.create(key(i), i));
    for (const s of est) t.touch(s, FlowState.ESTABLISHED, 3);
    for (let i = 0; i < 100; i++) {
      expect(t.create(key(1000 + i), 10 + i)).toBeGreaterThanOrEqual(0);
      expect(t.embryonicSize).toBe(Math.min(i + 1, 3));
    }
    expect(t.embryonicEvicted).toBe(97);
    expect(t.size).toBe(6);
    for (const i of [1, 2, 3]) expect(live(t, key(i))).toBe(true);
    for (let i = 0; i < 97; i++) expect(live(t, key(1000 + i))).toBe(false);
    for (let i = 97; i < 100; i++) expect(live(t, key(1000 + i))).toBe(true);
  });

  it('with UDP: the least recently active embryonic flow goes (a retransmitted SYN gets a second chance)', () => {
    const t = new SharedFlowTable(8, TIMEOUTS, 6, 2, false, 2, 0);
    const w1 = SharedFlowTable.attach(t.sharedTableHandles(), 1);
    const a = t.create(udp(1), 0);
    w1.touch(a, FlowState.UDP_ASSURED, 0);
    const syn = t.create(key(2), 1);
    const u = t.create(udp(3), 2);
    w1.touch(syn, FlowState.SYN_SENT, 3); // on another worker: now the UDP one is older
    expect(t.oldestEmbryonic()).toBe(u);
    expect(t.create(udp(4), 4)).toBeGreaterThanOrEqual(0);
    expect(live(t, udp(3))).toBe(false);
    expect(live(t, key(2))).toBe(true);
    expect(t.oldestEmbryonic()).toBe(syn);
    expect(t.create(udp(5), 5)).toBeGreaterThanOrEqual(0);
    expect(live(t, key(2))).toBe(false);
    expect(live(t, udp(1))).toBe(true);
    expect(t.embryonicEvicted).toBe(2);
    expect(t.udpSize).toBe(3);
  });

  it('a full table: a new flow takes the oldest embryonic slot below the share; full of established ones, it is refused', () => {
    const t = new SharedFlowTable(4, TIMEOUTS, 7, 4);
    const s = [1, 2, 3].map((i) => t.create(key(i), i));
    for (const x of s) t.touch(x, FlowState.ESTABLISHED, 3);
    expect(t.create(key(4), 4)).toBeGreaterThanOrEqual(0);
    expect(t.create(key(5), 5)).toBeGreaterThanOrEqual(0);
    expect(live(t, key(4))).toBe(false);
    expect(t.embryonicEvicted).toBe(1);
    const h5 = side0(t, key(5)) >> 1;
    t.touch(h5, FlowState.SYN_RECEIVED, 6);
    t.touch(h5, FlowState.ESTABLISHED, 6);
    expect(t.create(key(6), 7)).toBe(CREATE_FULL);
    expect(t.create(udp(7), 7)).toBe(CREATE_FULL);
    expect(t.embryonicEvicted).toBe(1);
    expect(t.size).toBe(4);
  });

  it('a collision evicts nothing', () => {
    const t = new SharedFlowTable(4, TIMEOUTS, 9, 1);
    t.create(key(1), 0);
    expect(t.create(key(1), 1)).toBe(CREATE_COLLISION);
    expect(t.embryonicEvicted).toBe(0);
    expect(live(t, key(1))).toBe(true);
  });
});

const CLIENT = ip6('2001:2::1');
const VIP = ip6('2001:2:0:1::9');
const HOST = ip6('2001:2:0:ff::1');
const LOCAL = ip6('2001:2:0:ff::2');

function addrs(c: Uint8Array, v: Uint8Array, n: Uint8Array, r: Uint8Array): Uint32Array {
  const w = new Uint32Array(16);
  w.set(words6(c), 0);
  w.set(words6(v), 4);
  w.set(words6(n), 8);
  w.set(words6(r), 12);
  return w;
}

function key6(clientPort: number, over: Partial<FlowKeyArgs> = {}): FlowKeyArgs {
  return key(0, {
    family: 6,
    addr6: addrs(CLIENT, VIP, CLIENT, HOST),
    clientAddr: 0,
    clientPort,
    vipAddr: 0,
    natAddr: 0,
    natPort: clientPort,
    realAddr: 0,
    ...over,
  });
}

function pair(src: Uint8Array, dst: Uint8Array): { buf: Uint8Array; so: number; d: number } {
  const buf = new Uint8Array(64).fill(0xa5);
  buf.set(src, 3);
  buf.set(dst, 24);
  return { buf, so: 3, d: 24 };
}

describe('SharedFlowTable with IPv6 columns', () => {
  it('finds an IPv6 flow from both sides in place, and keeps apart a v4 key that folds alike', () => {
    const t = new SharedFlowTable(16, TIMEOUTS, 1, 16, true, 2, 0);
    const w = SharedFlowTable.attach(t.sharedTableHandles(), 1);
    const s = t.create(key6(40000), 0);
    const c = pair(CLIENT, VIP);
    expect(w.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(s * 2);
    const r = pair(HOST, CLIENT);
    expect(w.lookup6(r.buf, r.so, 19001, r.d, 40000, 6)).toBe(s * 2 + 1);
    expect(w.lookup6(c.buf, c.d, 9000, c.so, 40000, 6)).toBe(-1);
    expect(w.lookup6(c.buf, c.so, 40000, c.d, 9000, 17)).toBe(-1);
    expect(w.clientAddr[s]).toBe(fold6(words6(CLIENT), 0));
    const f = (a: Uint8Array) => fold6(words6(a), 0);
    const s4 = t.create(
      key(0, {
        clientAddr: f(CLIENT),
        clientPort: 40000,
        vipAddr: f(VIP),
        natAddr: f(CLIENT),
        natPort: 40000,
        realAddr: f(HOST),
      }),
      0,
    );
    expect(s4).toBeGreaterThanOrEqual(0);
    expect(w.lookup(f(CLIENT), 40000, f(VIP), 9000, 6)).toBe(s4 * 2);
    expect(w.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(s * 2);
    c.buf[3 + 15]! ^= 1;
    expect(w.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(-1);
    expect(t.create(key6(40000), 0)).toBe(CREATE_COLLISION);
  });

  it('refuses an IPv6 flow in a table without IPv6 columns', () => {
    const t = new SharedFlowTable(16, TIMEOUTS, 3);
    expect(t.addr6.length).toBe(0);
    expect(t.create(key6(40000), 0)).toBe(CREATE_FULL);
    const c = pair(CLIENT, VIP);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(-1);
  });

  it('repoints an IPv6 flow: the server side moves, the client side stays', () => {
    const t = new SharedFlowTable(16, TIMEOUTS, 4, 16, true);
    const s = t.create(key6(40000, { addr6: addrs(HOST, VIP, LOCAL, HOST) }), 0);
    const other = ip6('2001:2:0:ff::7');
    expect(t.repoint(s, 0, 19002, 1, words6(other))).toBe(true);
    const r = pair(other, LOCAL);
    expect(t.lookup6(r.buf, r.so, 19002, r.d, 40000, 6)).toBe(s * 2 + 1);
    const old = pair(HOST, LOCAL);
    expect(t.lookup6(old.buf, old.so, 19001, old.d, 40000, 6)).toBe(-1);
    const c = pair(HOST, VIP);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(s * 2);
    expect(t.repoint(s, 0, 19003, 2, null)).toBe(false);
  });

  it('matches a Map model under random churn of both families', () => {
    const rng = new Rng(0x7ab);
    const t = new SharedFlowTable(128, TIMEOUTS, 5, 128, true);
    const model = new Map<string, number>();
    const client = (i: number) => {
      const a = ip6('2001:2::');
      a[14] = i >> 8;
      a[15] = i & 0xff;
      return a;
    };
    for (let step = 0; step < 20_000; step++) {
      const i = rng.int(300);
      const v6 = rng.int(2) === 0;
      const id = `${v6 ? 6 : 4}/${i}`;
      const had = model.get(id);
      if (had !== undefined && rng.int(2) === 0) {
        t.remove(had);
        model.delete(id);
        continue;
      }
      const s = v6
        ? t.create(key6(1000 + i, { addr6: addrs(client(i), VIP, client(i), HOST) }), 0)
        : t.create(
            key(0, {
              clientAddr: 0xc6120000 + i,
              clientPort: 1000 + i,
              natAddr: 0xc6120000 + i,
              natPort: 1000 + i,
            }),
            0,
          );
      if (had !== undefined) expect(s).toBe(t.size >= 128 ? CREATE_FULL : CREATE_COLLISION);
      else if (s >= 0) {
        model.set(id, s);
        t.touch(s, FlowState.ESTABLISHED, 0);
      } else expect(s).toBe(CREATE_FULL);
      for (const [k, slot] of model) {
        const [fam, n] = k.split('/').map(Number) as [number, number];
        if (fam === 6) {
          const c = pair(client(n), VIP);
          expect(t.lookup6(c.buf, c.so, 1000 + n, c.d, 9000, 6)).toBe(slot * 2);
        } else {
          expect(t.lookup(0xc6120000 + n, 1000 + n, 0xc6130009, 9000, 6)).toBe(slot * 2);
        }
        if (rng.int(8) !== 0) break;
      }
    }
    expect(t.size).toBe(model.size);
    expect(t.rebuilds).toBeGreaterThan(0);
  });
});

describe('SharedFlowTable memory', () => {
  it('costs the bytes per slot docs/architecture.md says, for 1, 2, 4 and 16 workers', () => {
    const cap = 1 << 14;
    const perSlot = (ipv6: boolean, workers: number) =>
      Math.floor(new SharedFlowTable(cap, TIMEOUTS, 6, cap, ipv6, workers).memoryBytes() / cap);
    // 96 records (v4) + 8 seq/gen + 2 × 32 indexes + 29 writer-private + 44 per worker.
    expect([1, 2, 4, 16].map((w) => perSlot(false, w))).toEqual([241, 285, 373, 901]);
    expect([1, 2, 4, 16].map((w) => perSlot(true, w))).toEqual([305, 349, 437, 965]);
  });
});
