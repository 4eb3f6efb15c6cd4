/**
 * The translation table with IPv6 columns: IPv6 flows found from both sides by
 * their 128-bit addresses read in place, IPv4 and IPv6 keys that fold alike
 * kept apart, repoint for IPv6, churn against a Map model, and the bytes a slot
 * costs per family (the figures in docs/architecture.md).
 */

import { describe, expect, it } from 'vitest';
import { FlowState } from '../../src/flow/state.js';
import {
  CREATE_COLLISION,
  CREATE_FULL,
  type FlowKeyArgs,
  FlowTable,
  fold6,
} from '../../src/flow/table.js';
import { ip6, words6 } from '../support/builder.js';
import { Rng } from '../support/rng.js';

const TIMEOUTS = [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000];

const CLIENT = ip6('2001:2::1');
const VIP = ip6('2001:2:0:1::9');
const HOST = ip6('2001:2:0:ff::1');
const LOCAL = ip6('2001:2:0:ff::2');

function addrs(
  client: Uint8Array,
  vip: Uint8Array,
  nat: Uint8Array,
  real: Uint8Array,
): Uint32Array {
  const w = new Uint32Array(16);
  w.set(words6(client), 0);
  w.set(words6(vip), 4);
  w.set(words6(nat), 8);
  w.set(words6(real), 12);
  return w;
}

function key6(clientPort: number, over: Partial<FlowKeyArgs> = {}): FlowKeyArgs {
  return {
    family: 6,
    addr6: addrs(CLIENT, VIP, CLIENT, HOST),
    proto: 6,
    clientAddr: 0,
    clientPort,
    vipAddr: 0,
    vport: 9000,
    natAddr: 0,
    natPort: clientPort,
    realAddr: 0,
    realPort: 19001,
    service: 0,
    aid: 0,
    instance: 0,
    ...over,
  };
}

/** A packet-like buffer with the two addresses at odd offsets 3 and 19 + 5. */
function pair(src: Uint8Array, dst: Uint8Array): { buf: Uint8Array; so: number; d: number } {
  const buf = new Uint8Array(64).fill(0xa5);
  buf.set(src, 3);
  buf.set(dst, 24);
  return { buf, so: 3, d: 24 };
}

describe('FlowTable with IPv6 columns', () => {
  it('finds an IPv6 flow from both sides, reading the addresses in place', () => {
    const t = new FlowTable(16, TIMEOUTS, 1, 16, true);
    const s = t.create(key6(40000), 0);
    expect(s).toBeGreaterThanOrEqual(0);
    expect(t.family[s]).toBe(6);
    const c = pair(CLIENT, VIP);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(s * 2);
    const r = pair(HOST, CLIENT);
    expect(t.lookup6(r.buf, r.so, 19001, r.d, 40000, 6)).toBe(s * 2 + 1);
    // Wrong direction, port, protocol, one bit of an address: no match.
    expect(t.lookup6(c.buf, c.d, 9000, c.so, 40000, 6)).toBe(-1);
    expect(t.lookup6(c.buf, c.so, 40001, c.d, 9000, 6)).toBe(-1);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 17)).toBe(-1);
    c.buf[3 + 15]! ^= 1;
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(-1);
    // The u32 columns hold the folds.
    expect(t.clientAddr[s]).toBe(fold6(words6(CLIENT), 0));
    expect(t.realAddr[s]).toBe(fold6(words6(HOST), 0));
    expect(Array.from(t.addr6.subarray(s * 16, s * 16 + 16))).toEqual(
      Array.from(addrs(CLIENT, VIP, CLIENT, HOST)),
    );
  });

  it('keeps apart an IPv4 and an IPv6 key that fold alike, and two IPv6 keys with one fold', () => {
    const t = new FlowTable(16, TIMEOUTS, 2, 16, true);
    const s6 = t.create(key6(40000), 0);
    // An IPv4 flow whose addresses are the folds of the IPv6 one's, same ports.
    const f = (a: Uint8Array) => fold6(words6(a), 0);
    const k4: FlowKeyArgs = {
      proto: 6,
      clientAddr: f(CLIENT),
      clientPort: 40000,
      vipAddr: f(VIP),
      vport: 9000,
      natAddr: f(CLIENT),
      natPort: 40000,
      realAddr: f(HOST),
      realPort: 19001,
      service: 0,
      aid: 0,
      instance: 0,
    };
    const s4 = t.create(k4, 0);
    expect(s4).toBeGreaterThanOrEqual(0);
    expect(s4).not.toBe(s6);
    expect(t.family[s4]).toBe(4);
    expect(t.lookup(f(CLIENT), 40000, f(VIP), 9000, 6)).toBe(s4 * 2);
    expect(t.lookup(f(HOST), 19001, f(CLIENT), 40000, 6)).toBe(s4 * 2 + 1);
    const c = pair(CLIENT, VIP);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(s6 * 2);
    // Another IPv6 client whose address folds to the same value: words swapped.
    const w = words6(CLIENT);
    const swapped = new Uint8Array(16);
    const dv = new DataView(swapped.buffer);
    dv.setUint32(0, w[1]!);
    dv.setUint32(4, w[0]!);
    dv.setUint32(8, w[2]!);
    dv.setUint32(12, w[3]!);
    expect(fold6(words6(swapped), 0)).toBe(f(CLIENT));
    const s6b = t.create(key6(40000, { addr6: addrs(swapped, VIP, swapped, HOST) }), 0);
    expect(s6b).toBeGreaterThanOrEqual(0);
    const c2 = pair(swapped, VIP);
    expect(t.lookup6(c2.buf, c2.so, 40000, c2.d, 9000, 6)).toBe(s6b * 2);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(s6 * 2);
    expect(t.create(key6(40000), 0)).toBe(CREATE_COLLISION);
  });

  it('refuses an IPv6 flow in a table without IPv6 columns (and lookup6 finds nothing)', () => {
    const t = new FlowTable(16, TIMEOUTS, 3);
    expect(t.addr6.length).toBe(0);
    expect(t.create(key6(40000), 0)).toBe(CREATE_FULL);
    const c = pair(CLIENT, VIP);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(-1);
  });

  it('repoints an IPv6 flow at another instance: the server side moves, the client side stays', () => {
    const t = new FlowTable(16, TIMEOUTS, 4, 16, true);
    const k = key6(40000, { addr6: addrs(HOST, VIP, LOCAL, HOST) });
    const s = t.create(k, 0);
    const other = ip6('2001:2:0:ff::7');
    expect(t.repoint(s, 0, 19002, 1, words6(other))).toBe(true);
    const r = pair(other, LOCAL);
    expect(t.lookup6(r.buf, r.so, 19002, r.d, 40000, 6)).toBe(s * 2 + 1);
    const old = pair(HOST, LOCAL);
    expect(t.lookup6(old.buf, old.so, 19001, old.d, 40000, 6)).toBe(-1);
    const c = pair(HOST, VIP);
    expect(t.lookup6(c.buf, c.so, 40000, c.d, 9000, 6)).toBe(s * 2);
    expect(t.instance[s]).toBe(1);
    expect(t.repoint(s, 0, 19003, 2, null)).toBe(false);
  });

  it('matches a Map model under random churn of both families', () => {
    const rng = new Rng(0x7ab);
    const t = new FlowTable(128, TIMEOUTS, 5, 128, true);
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
      const live = model.get(id);
      if (live !== undefined && rng.int(2) === 0) {
        t.remove(live);
        model.delete(id);
        continue;
      }
      const s = v6
        ? t.create(key6(1000 + i, { addr6: addrs(client(i), VIP, client(i), HOST) }), 0)
        : t.create(
            {
              proto: 6,
              clientAddr: 0xc6120000 + i,
              clientPort: 1000 + i,
              vipAddr: 0xc6130009,
              vport: 9000,
              natAddr: 0xc6120000 + i,
              natPort: 1000 + i,
              realAddr: 0xc613ff01,
              realPort: 19001,
              service: 0,
              aid: 0,
              instance: 0,
            },
            0,
          );
      if (live !== undefined) expect(s).toBe(t.size >= 128 ? CREATE_FULL : CREATE_COLLISION);
      else if (s >= 0) {
        model.set(id, s);
        // Keep them established: the flood policy would evict embryonic ones.
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
        if (rng.int(8) !== 0) break; // check a few each step, all of them now and then
      }
    }
    expect(t.size).toBe(model.size);
  });

  it('costs the bytes per slot docs/architecture.md says: 149 without IPv6 columns, 213 with', () => {
    // Capacity a power of two: the index (load <= 1/4, two sides) is exactly 8 entries per slot.
    const cap = 1 << 14;
    const v4 = new FlowTable(cap, TIMEOUTS, 6);
    const v6 = new FlowTable(cap, TIMEOUTS, 6, cap, true);
    // Fixed overhead (timer lists, timeouts, the lookup scratch) is below one slot's worth.
    expect(Math.floor(v4.memoryBytes() / cap)).toBe(149);
    expect(Math.floor(v6.memoryBytes() / cap)).toBe(213);
  });
});
