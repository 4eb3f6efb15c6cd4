/**
 * HeldFlows (src/coop/held.ts) alone: keys, bounds, accounting. Cooperation's use of
 * it, through the pipeline, is in cooperation.test.ts.
 */

import { describe, expect, it } from 'vitest';
import { DEFAULT_HOLD_LIMITS, HeldFlows, type HeldInit } from '../../src/coop/held.js';

const init = (over: Partial<HeldInit> = {}): HeldInit => ({
  kind: 'negotiation',
  proto: 17,
  srcAddr: 0xc6120a02,
  srcPort: 50001,
  dstAddr: 0xc6130009,
  dstPort: 9000,
  svc: 0,
  aid: 0,
  local: false,
  since: 0,
  ...over,
});

/** Hold a flow with a first packet of `len` bytes. */
function hold(f: HeldFlows, over: Partial<HeldInit> = {}, len = 10) {
  expect(f.admit(len)).toBe(true);
  return f.add(init(over), new Uint8Array(len), 0, len);
}

describe('HeldFlows', () => {
  it('tells flows apart by protocol and both endpoints, the address and port of each in full', () => {
    const f = new HeldFlows();
    const base = init();
    const others: Partial<HeldInit>[] = [
      { proto: 6 },
      { srcAddr: base.srcAddr + 1 },
      { srcPort: base.srcPort + 1 },
      { dstAddr: base.dstAddr + 1 },
      { dstPort: base.dstPort + 1 },
      // Would collide in a key that packed the fields into fewer bits.
      { srcAddr: 0xffffffff, srcPort: 65535, dstAddr: 0xffffffff, dstPort: 65535 },
    ];
    const a = hold(f);
    const held = others.map((o) => hold(f, o));
    expect(f.size).toBe(1 + others.length);
    const get = (h: HeldInit) => f.get(h.proto, h.srcAddr, h.srcPort, h.dstAddr, h.dstPort);
    expect(get(a)).toBe(a);
    held.forEach((h) => {
      expect(get(h)).toBe(h);
    });
    f.take(a);
    expect(get(a)).toBeUndefined();
    expect(get(held[0]!)).toBe(held[0]);
  });

  it('queues copies, in order; take hands them over once, and keeps the books', () => {
    const f = new HeldFlows();
    const h = hold(f, {}, 20);
    const buf = new Uint8Array([9, 1, 2, 3, 9]);
    expect(f.enqueue(h, buf, 1, 3)).toBe(true);
    buf[2] = 7; // the receive buffer is reused: the queue has its own copy
    expect(f.enqueue(h, buf, 1, 3)).toBe(true);
    expect(f.stats()).toMatchObject({ flows: 1, bytes: 26, queue: { datagrams: 2, queued: 2 } });
    const q = f.take(h);
    expect(q.map((p) => [...p])).toEqual([
      [1, 2, 3],
      [1, 7, 3],
    ]);
    expect(f.take(h)).toEqual([]);
    // Nothing is queued behind a flow no longer held.
    expect(f.enqueue(h, buf, 0, 1)).toBe(false);
    f.settled(true);
    f.settled(false);
    expect(f.stats()).toEqual({
      flows: 0,
      bytes: 0,
      flowOverflow: 0,
      queue: { datagrams: 0, queued: 2, sent: 1, dropped: 1, overflow: 1 },
    });
  });

  it('bounds: per flow, in total, in bytes, in flows', () => {
    const f = new HeldFlows({ maxFlows: 2, maxQueuedPerFlow: 2, maxQueued: 3, maxBytes: 100 });
    const one = new Uint8Array(10);
    const a = hold(f, { srcPort: 1 });
    const b = hold(f, { srcPort: 2 });
    expect([1, 2, 3].map(() => f.enqueue(a, one, 0, 10))).toEqual([true, true, false]); // per flow
    expect([1, 2].map(() => f.enqueue(b, one, 0, 10))).toEqual([true, false]); // in total
    expect(f.admit(10)).toBe(false); // in flows
    f.take(b);
    expect(f.enqueue(a, new Uint8Array(100), 0, 100)).toBe(false); // in bytes (30 held)
    expect(f.admit(71)).toBe(false); // in bytes
    expect(f.admit(70)).toBe(true);
    expect(f.stats()).toMatchObject({
      flows: 1,
      bytes: 30,
      flowOverflow: 2,
      queue: { datagrams: 2, overflow: 3 },
    });
  });

  it('defaults: 4096 flows, 64 a flow, 1024 and 4 MiB in all', () => {
    expect(DEFAULT_HOLD_LIMITS).toEqual({
      maxFlows: 4096,
      maxQueuedPerFlow: 64,
      maxQueued: 1024,
      maxBytes: 4 * 1024 * 1024,
    });
  });
});

describe('HeldFlows, IPv6', () => {
  /** A packet-like buffer with the source address at 8 and the destination at 24. */
  const pkt = (src: number[], dst: number[]) => {
    const b = new Uint8Array(40);
    const v = new DataView(b.buffer);
    for (let i = 0; i < 4; i++) {
      v.setUint32(8 + 4 * i, src[i]!);
      v.setUint32(24 + 4 * i, dst[i]!);
    }
    return b;
  };
  const SRC = [0x2001_0002, 0x0000_0010, 0, 2];
  // The same fold (w0^w1^w2^w3) as SRC: the Map key agrees, the words do not.
  const TWIN = [0x2001_0002, 0x0000_0010, 2, 0];
  const VIP = [0x2001_0002, 0x0000_0009, 0, 9];
  const init6 = (src: number[], dst: number[], over: Partial<HeldInit> = {}) =>
    init({ family: 6, addr6: Uint32Array.from([...src, ...dst]), ...over });

  it('tells IPv6 flows apart by their 128-bit addresses, also when their folds agree; IPv4 lookups never find them', () => {
    const f = new HeldFlows();
    const a = hold(f, init6(SRC, VIP));
    const twin = hold(f, init6(TWIN, VIP));
    const tcp = hold(f, init6(SRC, VIP, { proto: 6 }));
    expect(a.family).toBe(6);
    expect(f.size).toBe(3);
    expect(f.get6(17, pkt(SRC, VIP), 8, 50001, 24, 9000)).toBe(a);
    expect(f.get6(17, pkt(TWIN, VIP), 8, 50001, 24, 9000)).toBe(twin);
    expect(f.get6(6, pkt(SRC, VIP), 8, 50001, 24, 9000)).toBe(tcp);
    // Another port, another destination, source and destination swapped: none.
    expect(f.get6(17, pkt(SRC, VIP), 8, 50002, 24, 9000)).toBeUndefined();
    expect(f.get6(17, pkt(SRC, TWIN), 8, 50001, 24, 9000)).toBeUndefined();
    expect(f.get6(17, pkt(VIP, SRC), 8, 50001, 24, 9000)).toBeUndefined();
    // Not an IPv4 flow, whatever the IPv4 key (the folds, say).
    expect(f.get(17, a.srcAddr, 50001, a.dstAddr, 9000)).toBeUndefined();
    expect(f.get(17, init().srcAddr, 50001, init().dstAddr, 9000)).toBeUndefined();
    f.take(a);
    expect(f.get6(17, pkt(SRC, VIP), 8, 50001, 24, 9000)).toBeUndefined();
    expect(f.get6(17, pkt(TWIN, VIP), 8, 50001, 24, 9000)).toBe(twin);
    f.take(twin);
    f.take(tcp);
    expect(f.stats()).toMatchObject({ flows: 0, bytes: 0 });
  });

  it('an IPv4 and an IPv6 flow are held side by side and queue apart', () => {
    const f = new HeldFlows();
    const v4 = hold(f);
    const v6 = hold(f, init6(SRC, VIP));
    expect(f.get(17, v4.srcAddr, 50001, v4.dstAddr, 9000)).toBe(v4);
    expect(f.enqueue(v6, new Uint8Array(5), 0, 5)).toBe(true);
    expect(f.take(v4)).toEqual([]);
    expect(f.take(v6)).toHaveLength(1);
  });
});
