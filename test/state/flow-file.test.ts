import { describe, expect, it } from 'vitest';
import { flowLayout, RECORD_VERSION, recordCheck } from '../../src/flow/layout.js';
import { FlowState } from '../../src/flow/state.js';
import {
  CREATE_COLLISION,
  CREATE_FULL,
  type FlowKeyArgs,
  FlowTable,
} from '../../src/flow/table.js';
import { readFlowBytes } from '../../src/state/flow-file.js';

const TIMEOUTS = [10_000, 100_000, 20_000, 5_000, 30_000, 120_000];

function key(i: number, proto = 6): FlowKeyArgs {
  return {
    proto,
    clientAddr: 0xc6120102,
    clientPort: 40000 + i,
    vipAddr: 0xc6130009,
    vport: 9000,
    natAddr: 0xc6120102,
    natPort: 40000 + i,
    realAddr: 0xc613ff01,
    realPort: 19001,
    service: 0,
    aid: 1,
    instance: 2,
  };
}

function tableIn(cap: number, ipv6 = false) {
  const buf = new ArrayBuffer(flowLayout(cap, ipv6).bytes);
  return { buf, t: new FlowTable(cap, TIMEOUTS, 7, cap, ipv6, buf) };
}

describe('the flow state file', () => {
  it('reads back every live record of a table built in it, with its state, times and counters', () => {
    const { buf, t } = tableIn(64);
    const a = t.create(key(1), 1000);
    const b = t.create(key(2, 17), 2000);
    t.touch(a, FlowState.ESTABLISHED, 3000);
    t.pktsIn[a] = 5;
    t.bytesIn[a] = 7000;
    const c = t.create(key(3), 2500);
    t.remove(c);
    const r = readFlowBytes(new Uint8Array(buf));
    expect(r.problem).toBeNull();
    expect(r.skipped).toEqual({});
    expect(r.capacity).toBe(64);
    expect(r.nextId).toBe(4);
    // Oldest last activity first: b (2000), then a (3000).
    expect(r.flows.map((f) => [f.id, f.state, f.lastSeen])).toEqual([
      [t.id[b], FlowState.UDP_UNREPLIED, 2000],
      [t.id[a], FlowState.ESTABLISHED, 3000],
    ]);
    expect(r.flows[1]).toMatchObject({
      pktsIn: 5,
      bytesIn: 7000,
      clientPort: 40001,
      realPort: 19001,
    });
  });

  it('restoreFlow takes the records over into a new table: same keys, ids after the old ones, no eviction', () => {
    const { buf, t } = tableIn(8);
    t.create(key(1), 1000);
    t.create(key(2), 1100);
    const r = readFlowBytes(new Uint8Array(buf));
    const { t: u } = tableIn(2);
    for (const f of r.flows) {
      const s = u.restoreFlow({ ...f, addr6: undefined }, f);
      expect(s).toBeGreaterThanOrEqual(0);
    }
    u.reserveIds(r.nextId);
    expect(u.lookup(0xc6120102, 40001, 0xc6130009, 9000, 6)).toBeGreaterThanOrEqual(0);
    expect(u.lookup(0xc613ff01, 19001, 0xc6120102, 40002, 6) & 1).toBe(1);
    // Full: refused, not evicting a taken-over embryonic flow.
    expect(u.restoreFlow({ ...key(3) }, r.flows[0]!)).toBe(CREATE_FULL);
    expect(u.size).toBe(2);
    const { t: w } = tableIn(4);
    w.restoreFlow({ ...key(1) }, r.flows[0]!);
    expect(w.restoreFlow({ ...key(1) }, r.flows[0]!)).toBe(CREATE_COLLISION);
    expect(w.id[w.create(key(9), 5000)]).toBe(r.flows[0]!.id + 1);
  });

  it('skips each damaged record by its reason and keeps the others', () => {
    const { buf, t } = tableIn(16);
    const s = [0, 1, 2, 3, 4, 5].map((i) => t.create(key(i), 1000 + i));
    t.realPort[s[0]!] = 19002; // a fixed field changed behind the check
    t.ver[s[1]!] = RECORD_VERSION + 1; // another version's record...
    t.check[s[1]!] = recordCheck(t, s[1]!, RECORD_VERSION + 1); // ...with its own check
    t.state[s[2]!] = 200; // no such state (per-packet fields are checked by range)
    t.lastSeen[s[3]!] = Number.NaN;
    t.state[s[4]!] = FlowState.UDP_ASSURED; // a UDP state on a TCP flow
    const r = readFlowBytes(new Uint8Array(buf));
    expect(r.skipped).toEqual({ bad_check: 1, other_version: 1, bad_state: 2, bad_time: 1 });
    expect(r.flows.map((f) => f.clientPort)).toEqual([40005]);
  });

  it('refuses a whole file whose header is not sound, and never throws', () => {
    const { buf, t } = tableIn(16);
    t.create(key(1), 1000);
    const bytes = new Uint8Array(buf);
    const bad = (mutate: (b: Uint8Array) => Uint8Array) => readFlowBytes(mutate(bytes.slice()));
    expect(bad((b) => b.subarray(0, 100)).problem).toMatch(/shorter than its 256-byte header/);
    expect(bad((b) => b.subarray(0, 1000)).problem).toMatch(
      /shorter than the \d+ its 16 slots need/,
    );
    expect(
      bad((b) => {
        b[0] = b[0]! ^ 1;
        return b;
      }).problem,
    ).toMatch(/not a vpm flow state file/);
    expect(
      bad((b) => {
        new Uint32Array(b.buffer)[1] = 9;
        return b;
      }).problem,
    ).toMatch(/layout version 9/);
    expect(
      bad((b) => {
        new Uint32Array(b.buffer)[2] = 32; // capacity changed, its check not
        return b;
      }).problem,
    ).toMatch(/header check does not match/);
    expect(bad(() => new Uint8Array(0)).flows).toEqual([]);
    // Random bytes of every length up to a few pages: a problem or records, never an exception.
    let seed = 1;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed >>> 24;
    };
    for (let n = 0; n < 300; n++) {
      const b = bytes.slice();
      for (let k = 0; k < 20; k++) b[rnd() * 16 + (rnd() % 16)] = rnd();
      expect(() => readFlowBytes(b)).not.toThrow();
    }
  });

  it('an IPv6 record keeps its 128-bit addresses', () => {
    const { buf, t } = tableIn(8, true);
    const w = new Uint32Array(16).map((_, i) => 0x20010002 + i);
    t.create({ ...key(1), family: 6, addr6: w }, 1000);
    const r = readFlowBytes(new Uint8Array(buf));
    expect(r.flows).toHaveLength(1);
    expect([...r.flows[0]!.addr6!]).toEqual([...w]);
    expect(r.flows[0]!.family).toBe(6);
  });
});
