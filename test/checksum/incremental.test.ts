import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { update16, update32 } from '../../src/checksum/incremental.js';
import {
  onesAdd,
  update16Reference,
  update32Reference,
} from '../../src/checksum/incremental.reference.js';
import { fold } from '../../src/checksum/sum.js';
import { foldReference } from '../../src/checksum/sum.reference.js';
import { inetChecksum } from '../support/builder.js';
import { Rng } from '../support/rng.js';

const EDGE16 = [0, 1, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff];
const EDGE32 = [
  0, 1, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0x80008000, 0xffff0000, 0x0000ffff,
  0xfffffffe, 0xffffffff,
];

function get16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}

describe('update16 (RFC 1624)', () => {
  it('gives 0x0000, not 0xffff, in the RFC 1624 §4 example', () => {
    // RFC 1624 §4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285. Recomputation gives
    // 0x0000; RFC 1141's eqn. 2 gives 0xffff; eqn. 3 (what update16 implements) 0x0000.
    expect(update16(0xdd2f, 0x5555, 0x3285)).toBe(0x0000);
    expect(update16Reference(0xdd2f, 0x5555, 0x3285)).toBe(0x0000);
    // The same case as data: the other words sum to 0xcd7a, then m changes.
    const data = new Uint8Array([0xcd, 0x7a, 0x55, 0x55]);
    expect(inetChecksum(data)).toBe(0xdd2f);
    data[2] = 0x32;
    data[3] = 0x85;
    expect(inetChecksum(data)).toBe(0x0000);
  });

  it('equals the twin for every checksum value against every pair of edge words (exhaustive)', () => {
    let n = 0;
    for (let check = 0; check <= 0xffff; check++) {
      for (const old of EDGE16) {
        for (const now of EDGE16) {
          const a = update16(check, old, now);
          const b = update16Reference(check, old, now);
          if (a !== b) expect({ check, old, now, a }).toEqual({ check, old, now, a: b });
          n++;
        }
      }
    }
    expect(n).toBe(65536 * EDGE16.length ** 2);
  });

  it('equals the twin for every 16-bit word against each edge word, old or new, with edge checksums', () => {
    // All 2^48 inputs would take too long: every word paired with each edge value both ways.
    for (const check of EDGE16) {
      for (let w = 0; w <= 0xffff; w++) {
        for (const e of EDGE16) {
          const a = update16(check, w, e);
          const b = update16Reference(check, w, e);
          if (a !== b)
            expect({ check, old: w, now: e, a }).toEqual({ check, old: w, now: e, a: b });
          const c = update16(check, e, w);
          const d = update16Reference(check, e, w);
          if (c !== d)
            expect({ check, old: e, now: w, c }).toEqual({ check, old: e, now: w, c: d });
        }
      }
    }
  });

  it('equals the twin on 200,000 seeded random inputs', () => {
    const rng = new Rng(1624);
    for (let i = 0; i < 200_000; i++) {
      const check = rng.int(0x10000);
      const old = rng.int(0x10000);
      const now = rng.int(0x10000);
      const a = update16(check, old, now);
      const b = update16Reference(check, old, now);
      if (a !== b) expect({ check, old, now, a }).toEqual({ check, old, now, a: b });
    }
  });

  it('equals a full recompute after a word of the data changes (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 2, maxLength: 64 }).filter((b) => b.some((x) => x !== 0)),
        fc.nat(),
        fc.nat({ max: 0xffff }),
        (data, pick, now) => {
          const b = data.length % 2 === 0 ? data : data.subarray(0, data.length - 1);
          if (!b.some((x) => x !== 0)) return; // all-zero data has no valid checksum form
          const at = 2 * (pick % (b.length / 2));
          const before = inetChecksum(b);
          const old = get16(b, at);
          b[at] = now >> 8;
          b[at + 1] = now & 0xff;
          if (!b.some((x) => x !== 0)) return;
          expect(update16(before, old, now)).toBe(inetChecksum(b));
        },
      ),
      { numRuns: 5000, seed: 3 },
    );
  });

  it('leaves a checksum unchanged when the word does not change, except that -0 (0xffff) becomes +0', () => {
    fc.assert(
      fc.property(fc.nat({ max: 0xffff }), fc.nat({ max: 0xffff }), (check, m) => {
        expect(update16(check, m, m)).toBe(check === 0xffff ? 0 : check);
      }),
      { numRuns: 5000, seed: 4 },
    );
  });

  it('ignores bits above 16 in its arguments, like the twin', () => {
    expect(update16(0x1dd2f, 0x25555, 0x33285)).toBe(0);
    expect(update16Reference(0x1dd2f, 0x25555, 0x33285)).toBe(0);
  });

  it('the twin adds with end-around carry', () => {
    expect(onesAdd(0xffff, 1)).toBe(1);
    expect(onesAdd(0xffff, 0xffff)).toBe(0xffff);
    expect(onesAdd(0, 0)).toBe(0);
  });
});

describe('update32', () => {
  it('equals the twin for every checksum value against every pair of 32-bit edge words (exhaustive)', () => {
    for (let check = 0; check <= 0xffff; check++) {
      for (const old of EDGE32) {
        for (const now of EDGE32) {
          const a = update32(check, old, now);
          const b = update32Reference(check, old, now);
          if (a !== b) expect({ check, old, now, a }).toEqual({ check, old, now, a: b });
        }
      }
    }
  });

  it('equals the twin and two update16 calls on 200,000 seeded random inputs', () => {
    const rng = new Rng(3232);
    for (let i = 0; i < 200_000; i++) {
      const check = rng.int(0x10000);
      const old = i % 7 === 0 ? EDGE32[rng.int(EDGE32.length)]! : rng.u32();
      const now = i % 5 === 0 ? EDGE32[rng.int(EDGE32.length)]! : rng.u32();
      const a = update32(check, old, now);
      const b = update32Reference(check, old, now);
      const c = update16(update16(check, old >>> 16, now >>> 16), old & 0xffff, now & 0xffff);
      if (a !== b || a !== c)
        expect({ check, old, now, a, c }).toEqual({ check, old, now, a: b, c: b });
    }
  });

  it('equals a full recompute after an aligned 32-bit word changes (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 4, maxLength: 64 }),
        fc.nat(),
        fc.nat({ max: 0xffffffff }),
        (data, pick, now) => {
          const b = data.subarray(0, data.length - (data.length % 4));
          const at = 4 * (pick % (b.length / 4));
          b[0]! |= 0x40; // never all zero, before or after (like an IP header's version)
          if (at === 0) now = (now | 0x40000000) >>> 0;
          const before = inetChecksum(b);
          const old = ((get16(b, at) << 16) | get16(b, at + 2)) >>> 0;
          b[at] = now >>> 24;
          b[at + 1] = (now >>> 16) & 0xff;
          b[at + 2] = (now >>> 8) & 0xff;
          b[at + 3] = now & 0xff;
          expect(update32(before, old, now)).toBe(inetChecksum(b));
        },
      ),
      { numRuns: 5000, seed: 5 },
    );
  });

  it('accepts a signed 32-bit address (as `x | 0` gives) like its unsigned value', () => {
    fc.assert(
      fc.property(
        fc.nat({ max: 0xffff }),
        fc.nat({ max: 0xffffffff }),
        fc.nat({ max: 0xffffffff }),
        (c, o, n) => {
          expect(update32(c, o | 0, n | 0)).toBe(update32(c, o, n));
        },
      ),
      { numRuns: 2000, seed: 6 },
    );
  });
});

describe('fold (what update16 and update32 are built on)', () => {
  it('equals the twin at the carry edges', () => {
    const edges = [
      0,
      1,
      0xfffe,
      0xffff,
      0x10000,
      0x10001,
      0x1fffe,
      0x1ffff,
      0x2fffd,
      0xfffeffff,
      0xffff0000,
      0x7fffffff,
      0x80000000,
      0xffffffff,
      0x100000000,
      0x100000001,
      0xffffffffff,
      2 ** 48 - 1,
      2 ** 52,
      Number.MAX_SAFE_INTEGER,
    ];
    for (const x of edges) expect([x, fold(x)]).toEqual([x, foldReference(x)]);
    for (let k = 1; k < 2000; k++) {
      // Multiples of 0xffff are the one's complement zero: they fold to 0xffff, never 0.
      expect(fold(k * 0xffff)).toBe(0xffff);
      expect(fold(k * 0xffff * 0x10001)).toBe(foldReference(k * 0xffff * 0x10001));
    }
  });

  it('equals the twin on 200,000 seeded random integers of every magnitude up to 2^53', () => {
    const rng = new Rng(0xf01d);
    for (let i = 0; i < 200_000; i++) {
      const bits = 1 + rng.int(53);
      const x = Math.floor((rng.u32() * 0x200000 + (rng.u32() >>> 11)) / 2 ** (53 - bits));
      const a = fold(x);
      const b = foldReference(x);
      if (a !== b) expect({ x, a }).toEqual({ x, a: b });
    }
  });
});
