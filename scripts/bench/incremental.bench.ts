/**
 * Benchmark: incremental checksum updates (RFC 1624 eqn. 3), `update16` and
 * `update32` against their twins in incremental.reference.ts.
 *
 * Each loop reads its operands (checksum, old value, new value) from a table of
 * seeded random values, so nothing is constant to the JIT, and sums the results.
 * The table read and the loop are part of every number, for both implementations;
 * the `floor` rows time just those, so an update costs its row minus the floor.
 */

import { update16, update32 } from '../../src/checksum/incremental.js';
import { update16Reference, update32Reference } from '../../src/checksum/incremental.reference.js';
import { type BenchCase, fillRandom, fmt3, fmtNs } from './common.js';
import { type Loop, type Measurement, type Stats, stats } from './harness.js';

const N = 4096;
const MASK = N - 1;

export type IncrementalFn = 'update16' | 'update32';
/** `floor` is the loop and the operand loads with no update: what every number includes. */
export type Impl = 'ts' | 'twin' | 'floor';

export interface IncrementalResult {
  fn: IncrementalFn;
  impl: Impl;
  label: string;
  iters: number;
  nsPerUpdate: Stats;
  /** Millions of updates per second; the min comes from the slowest run. */
  mUpdatesPerSec: Stats;
}

interface Operands {
  check: Uint16Array;
  old16: Uint16Array;
  new16: Uint16Array;
  old32: Uint32Array;
  new32: Uint32Array;
}

function operands(): Operands {
  const bytes = new Uint8Array(N * 14);
  fillRandom(bytes, 0x1624);
  const u16 = (i: number) => new Uint16Array(bytes.buffer, i * N * 2, N);
  return {
    check: u16(0),
    old16: u16(1),
    new16: u16(2),
    old32: new Uint32Array(bytes.buffer, N * 6, N),
    new32: new Uint32Array(bytes.buffer, N * 10, N),
  };
}

function ts16(o: Operands): Loop {
  const { check, old16, new16 } = o;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      const j = i & MASK;
      acc = (acc + update16(check[j]!, old16[j]!, new16[j]!)) | 0;
    }
    return acc;
  };
}

function twin16(o: Operands): Loop {
  const { check, old16, new16 } = o;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      const j = i & MASK;
      acc = (acc + update16Reference(check[j]!, old16[j]!, new16[j]!)) | 0;
    }
    return acc;
  };
}

function ts32(o: Operands): Loop {
  const { check, old32, new32 } = o;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      const j = i & MASK;
      acc = (acc + update32(check[j]!, old32[j]!, new32[j]!)) | 0;
    }
    return acc;
  };
}

function twin32(o: Operands): Loop {
  const { check, old32, new32 } = o;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      const j = i & MASK;
      acc = (acc + update32Reference(check[j]!, old32[j]!, new32[j]!)) | 0;
    }
    return acc;
  };
}

function floor16(o: Operands): Loop {
  const { check, old16, new16 } = o;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      const j = i & MASK;
      acc = (acc + (check[j]! ^ old16[j]! ^ new16[j]!)) | 0;
    }
    return acc;
  };
}

function floor32(o: Operands): Loop {
  const { check, old32, new32 } = o;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      const j = i & MASK;
      acc = (acc + ((check[j]! ^ old32[j]! ^ new32[j]!) & 0xffff)) | 0;
    }
    return acc;
  };
}

function check(o: Operands): void {
  for (let j = 0; j < N; j++) {
    const c = o.check[j]!;
    const a = update16(c, o.old16[j]!, o.new16[j]!);
    const b = update16Reference(c, o.old16[j]!, o.new16[j]!);
    const x = update32(c, o.old32[j]!, o.new32[j]!);
    const y = update32Reference(c, o.old32[j]!, o.new32[j]!);
    if (a !== b || x !== y) {
      throw new Error(
        `update16/update32 disagree with their twins at operand ${j}: ${a}/${b}, ${x}/${y}`,
      );
    }
  }
}

const FLOOR_LABEL = 'floor: loop and operand loads only';

export function incrementalCases(): BenchCase<IncrementalResult>[] {
  const o = operands();
  check(o);
  const plan: { fn: IncrementalFn; impl: Impl; label: string; loop: Loop }[] = [
    { fn: 'update16', impl: 'floor', label: FLOOR_LABEL, loop: floor16(o) },
    { fn: 'update16', impl: 'twin', label: 'reference twin (TS)', loop: twin16(o) },
    { fn: 'update16', impl: 'ts', label: 'optimised TS', loop: ts16(o) },
    { fn: 'update32', impl: 'floor', label: FLOOR_LABEL, loop: floor32(o) },
    { fn: 'update32', impl: 'twin', label: 'reference twin (TS)', loop: twin32(o) },
    { fn: 'update32', impl: 'ts', label: 'optimised TS', loop: ts32(o) },
  ];
  return plan.map((p) => ({
    label: `${p.fn} ${p.label}`,
    loop: p.loop,
    result: (m: Measurement): IncrementalResult => ({
      fn: p.fn,
      impl: p.impl,
      label: p.label,
      iters: m.iters,
      nsPerUpdate: m.ns,
      mUpdatesPerSec: stats(m.nsPerOp.map((ns) => 1e3 / ns)),
    }),
    summary: (r) => `${fmt3(r.mUpdatesPerSec.median)} M/s, ${fmtNs(r.nsPerUpdate.median)}`,
  }));
}
