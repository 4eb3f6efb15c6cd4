import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FlowState, TimerClass } from '../../src/flow/state.js';
import {
  CREATE_COLLISION,
  CREATE_FULL,
  type FlowKeyArgs,
  FlowTable,
  MAX_REMOVE_LISTENERS,
} from '../../src/flow/table.js';

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

describe('FlowTable', () => {
  it('finds a flow from both directions and tells the side', () => {
    const t = new FlowTable(16, TIMEOUTS, 1);
    const k = key(5);
    const s = t.create(k, 0);
    expect(s).toBeGreaterThanOrEqual(0);
    expect(t.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, 6)).toBe(s * 2);
    expect(t.lookup(k.realAddr, k.realPort, k.natAddr, k.natPort, 6)).toBe(s * 2 + 1);
    expect(t.lookup(k.natAddr, k.natPort, k.realAddr, k.realPort, 6)).toBe(-1);
    // Wrong protocol, port or direction: no match.
    expect(t.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, 17)).toBe(-1);
    expect(t.lookup(k.vipAddr, k.vport, k.clientAddr, k.clientPort, 6)).toBe(-1);
    expect(t.lookup(k.clientAddr, k.clientPort + 1, k.vipAddr, k.vport, 6)).toBe(-1);
    expect(t.state[s]).toBe(FlowState.SYN_SENT);
  });

  it('refuses a duplicate key on either side, and a full table', () => {
    const t = new FlowTable(2, TIMEOUTS, 2);
    const a = t.create(key(1), 0);
    expect(a).toBeGreaterThanOrEqual(0);
    expect(t.create(key(1), 0)).toBe(CREATE_COLLISION);
    // Different client side, same server side (nat+real) → collision.
    expect(t.create(key(1, { vipAddr: 0xc613000a }), 0)).toBe(CREATE_COLLISION);
    const b = t.create(key(2), 0);
    expect(b).toBeGreaterThanOrEqual(0);
    // Full of established flows (embryonic ones would give way: see the flood tests).
    t.touch(a, FlowState.ESTABLISHED, 0);
    t.touch(b, FlowState.ESTABLISHED, 0);
    expect(t.create(key(3), 0)).toBe(CREATE_FULL);
    expect(t.size).toBe(2);
  });

  it('matches a Map model under random create/remove churn (backward-shift deletion)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 300 })), {
          minLength: 1,
          maxLength: 2000,
        }),
        fc.integer(),
        (ops, seed) => {
          const t = new FlowTable(128, TIMEOUTS, seed);
          const model = new Map<number, number>();
          for (const [add, i] of ops) {
            if (add) {
              const s = t.create(key(i), 0);
              if (model.has(i)) expect(s).toBe(CREATE_COLLISION);
              else if (model.size >= 128) expect(s).toBe(CREATE_FULL);
              else {
                expect(s).toBeGreaterThanOrEqual(0);
                t.touch(s, FlowState.ESTABLISHED, 0); // never evicted: the model holds
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
            expect(t.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, 6)).toBe(
              want === undefined ? -1 : want * 2,
            );
            expect(t.lookup(k.realAddr, k.realPort, k.natAddr, k.natPort, 6)).toBe(
              want === undefined ? -1 : want * 2 + 1,
            );
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('expires each timer class after its own idle time, oldest first, within a budget', () => {
    const t = new FlowTable(8, TIMEOUTS, 3);
    const a = t.create(key(1), 0); // embryonic, 10 s
    const b = t.create(key(2), 1000);
    const c = t.create(key(3), 2000);
    t.touch(c, FlowState.ESTABLISHED, 2000); // established, 1 h
    const expired: number[] = [];
    expect(t.expire(10_500, 100, (s) => expired.push(s))).toBe(1);
    expect(expired).toEqual([a]);
    // Activity moves b to the tail and renews it.
    t.touch(b, FlowState.SYN_RECEIVED, 10_900);
    expect(t.expire(20_000, 100)).toBe(0);
    expect(t.expire(20_901, 100)).toBe(1);
    expect(t.isLive(c)).toBe(true);
    expect(t.timerClass[c]).toBe(TimerClass.ESTABLISHED);
    expect(t.expire(3_602_001, 100)).toBe(1);
    expect(t.size).toBe(0);
    // Budget: 5 stale flows, budget 2 → 2 now, the rest later.
    for (let i = 10; i < 15; i++) t.create(key(i), 0);
    expect(t.expire(100_000, 2)).toBe(2);
    expect(t.expire(100_000, 100)).toBe(3);
  });

  it('reuses freed slots, gives fresh ids, and lists live flows', () => {
    const t = new FlowTable(4, TIMEOUTS, 4);
    const slots = [1, 2, 3, 4].map((i) => t.create(key(i), 0));
    for (const s of slots) t.touch(s, FlowState.ESTABLISHED, 0);
    expect(new Set(slots).size).toBe(4);
    expect(t.create(key(5), 0)).toBe(CREATE_FULL);
    const s1 = slots[2]!;
    const id1 = t.id[s1];
    t.remove(s1);
    t.remove(s1); // idempotent: the slot is not freed twice
    expect(t.size).toBe(3);
    const s2 = t.create(key(6), 0);
    expect(s2).toBe(s1); // the freed slot, not a new one: there is no other
    expect(t.id[s2]).not.toBe(id1);
    t.touch(s2, FlowState.ESTABLISHED, 0);
    expect(t.create(key(7), 0)).toBe(CREATE_FULL); // freed once, so reusable once
    const seen: number[] = [];
    t.forEach((s) => {
      seen.push(s);
    });
    expect(seen.sort()).toEqual([...slots].sort());
  });

  it('rejects an impossible capacity with a clear error', () => {
    expect(() => new FlowTable(0, TIMEOUTS)).toThrow(/capacity 0/);
    expect(() => new FlowTable(1.5, TIMEOUTS)).toThrow(/capacity 1.5/);
  });
});

describe('FlowTable remove listeners', () => {
  it('tells every listener, in order, before a flow goes (remove or expiry), while it is still there', () => {
    const t = new FlowTable(8, TIMEOUTS, 3);
    const seen: string[] = [];
    t.addRemoveListener((s) => seen.push(`first ${s} port ${t.clientPort[s]} state ${t.state[s]}`));
    t.addRemoveListener((s) => seen.push(`second ${s}`));
    const a = t.create(key(1), 0);
    t.remove(a);
    t.remove(a); // already free: nobody is told twice
    const b = t.create(key(2), 0);
    expect(t.expire(TIMEOUTS[TimerClass.EMBRYONIC]! + 1, 10)).toBe(1);
    expect(seen).toEqual([
      `first ${a} port 1025 state ${FlowState.SYN_SENT}`,
      `second ${a}`,
      `first ${b} port 1026 state ${FlowState.SYN_SENT}`,
      `second ${b}`,
    ]);
  });

  it('a second user cannot replace the first; each can take only its own listener off', () => {
    const t = new FlowTable(8, TIMEOUTS, 3);
    const calls: string[] = [];
    const offA = t.addRemoveListener(() => calls.push('a'));
    const offB = t.addRemoveListener(() => calls.push('b'));
    offA();
    offA(); // twice is harmless, and does not take b's off
    t.remove(t.create(key(1), 0));
    expect(calls).toEqual(['b']);
    offB();
    t.remove(t.create(key(2), 0));
    expect(calls).toEqual(['b']);
  });

  it('takes a small fixed number of listeners', () => {
    const t = new FlowTable(8, TIMEOUTS, 3);
    for (let i = 0; i < MAX_REMOVE_LISTENERS; i++) t.addRemoveListener(() => {});
    expect(() => t.addRemoveListener(() => {})).toThrow(
      new RangeError(`a flow table takes at most ${MAX_REMOVE_LISTENERS} remove listeners`),
    );
  });
});

describe('FlowTable flood policy (limits.embryonicFlows)', () => {
  const udp = (i: number) => key(i, { proto: 17 });
  const live = (t: FlowTable, k: FlowKeyArgs) =>
    t.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, k.proto) >= 0;

  it('keeps embryonic flows to their share: the oldest gives way, established flows never', () => {
    const t = new FlowTable(8, TIMEOUTS, 5, 3);
    const est = [1, 2, 3].map((i) => t.create(key(i), i));
    for (const s of est) t.touch(s, FlowState.ESTABLISHED, 3);
    // A flood of 100 SYNs, one per ms: at most 3 embryonic at once.
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

  it('with UDP: unreplied flows are embryonic, assured ones are not; the older head of the two lists goes', () => {
    const t = new FlowTable(8, TIMEOUTS, 6, 2);
    const a = t.create(udp(1), 0);
    t.touch(a, FlowState.UDP_ASSURED, 0);
    const syn = t.create(key(2), 1); // TCP embryonic, seen at 1
    const u = t.create(udp(3), 2); // UDP unreplied, seen at 2
    t.touch(syn, FlowState.SYN_SENT, 3); // a retransmitted SYN: now the UDP one is older
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
    const t = new FlowTable(4, TIMEOUTS, 7, 4);
    const s = [1, 2, 3].map((i) => t.create(key(i), i));
    for (const x of s) t.touch(x, FlowState.ESTABLISHED, 3);
    expect(t.create(key(4), 4)).toBeGreaterThanOrEqual(0);
    expect(t.create(key(5), 5)).toBeGreaterThanOrEqual(0); // evicts 4 (table full)
    expect(live(t, key(4))).toBe(false);
    expect(t.embryonicEvicted).toBe(1);
    t.touch(t.lookup(0xc6120100, 1024 + 5, 0xc6130009, 9000, 6) >> 1, FlowState.SYN_RECEIVED, 6);
    t.touch(t.lookup(0xc6120100, 1024 + 5, 0xc6130009, 9000, 6) >> 1, FlowState.ESTABLISHED, 6);
    expect(t.create(key(6), 7)).toBe(CREATE_FULL);
    expect(t.create(udp(7), 7)).toBe(CREATE_FULL);
    expect(t.embryonicEvicted).toBe(1);
    expect(t.size).toBe(4);
  });

  it('an evicted flow is removed like any other: remove listeners are told, while it is still there', () => {
    const t = new FlowTable(4, TIMEOUTS, 8, 1);
    const seen: string[] = [];
    t.addRemoveListener((s) => seen.push(`${s} port ${t.clientPort[s]} state ${t.state[s]}`));
    const a = t.create(key(1), 0);
    const b = t.create(key(2), 1);
    expect(seen).toEqual([`${a} port 1025 state ${FlowState.SYN_SENT}`]);
    expect(b).toBe(a); // the slot freed, reused
  });

  it('a collision evicts nothing', () => {
    const t = new FlowTable(4, TIMEOUTS, 9, 1);
    t.create(key(1), 0);
    expect(t.create(key(1), 1)).toBe(CREATE_COLLISION);
    expect(t.embryonicEvicted).toBe(0);
    expect(live(t, key(1))).toBe(true);
  });

  it('rejects an embryonic share beyond the capacity with a clear error', () => {
    expect(() => new FlowTable(8, TIMEOUTS, 1, 9)).toThrow(/embryonic flow limit 9 .*1\.\.8/);
    expect(() => new FlowTable(8, TIMEOUTS, 1, 0)).toThrow(/embryonic flow limit 0/);
  });
});
