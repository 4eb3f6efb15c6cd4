/**
 * Benchmark: the full RFC 1071 sum, `sum16`, in four implementations.
 *
 *  - twin:   `sum16Reference`, one byte at a time (the baseline, sum.reference.ts)
 *  - ts:     `sum16`, little-endian 32-bit words, four accumulators (sum.ts)
 *  - native: the C `sum16` through N-API, one call per buffer
 *  - batch:  the C `sum16Batch`, BATCH buffers per call (how the data plane crosses
 *            the native boundary: offsets and lengths in typed arrays)
 *
 * Every implementation walks the same BATCH buffers of one size, round robin, in
 * one arena of random bytes: 64-byte-aligned starts, at most ARENA_CAP bytes apart
 * in total, so the working set stays in L2 and the comparison is of the code, not
 * of the memory system.
 */

import { sum16 } from '../../src/checksum/sum.js';
import { sum16Reference } from '../../src/checksum/sum.reference.js';
import type { NativeAddon } from '../../src/native/index.js';
import { type BenchCase, fillRandom, fmtNs } from './common.js';
import { type Loop, type Measurement, type Stats, stats } from './harness.js';

export const SUM_SIZES: readonly number[] = [20, 64, 576, 1500, 9000, 65536];
/** Buffers per native batch call, and buffers in each size's working set. */
export const BATCH = 64;
const MASK = BATCH - 1;
/** Largest span of one size's working set: below L2 (1 MiB/core on the benchmark machine). */
const ARENA_CAP = 512 * 1024;

export type SumImpl = 'twin' | 'ts' | 'native' | 'batch';

export const SUM_IMPLS: readonly { id: SumImpl; label: string }[] = [
  { id: 'twin', label: 'reference twin (TS)' },
  { id: 'ts', label: 'optimised TS' },
  { id: 'native', label: 'native C, 1 call/buffer' },
  { id: 'batch', label: `native C, batch of ${BATCH}` },
];

export interface SumResult {
  impl: SumImpl;
  label: string;
  /** Bytes per buffer. */
  size: number;
  /** Buffers summed per timed operation (BATCH for `batch`, else 1). */
  buffersPerOp: number;
  /** Operations per timed run. */
  iters: number;
  /** Throughput, 1 GB = 1e9 bytes; the min comes from the slowest run. */
  gbps: Stats;
  nsPerBuffer: Stats;
}

interface Workload {
  size: number;
  buf: Uint8Array;
  offsets: Uint32Array;
  lengths: Uint32Array;
  out: Uint32Array;
}

function workload(size: number, seed: number): Workload {
  const slot = Math.ceil(size / 64) * 64;
  const stride = Math.min(slot, Math.floor(ARENA_CAP / BATCH / 64) * 64);
  const buf = new Uint8Array((BATCH - 1) * stride + slot);
  fillRandom(buf, seed);
  const offsets = new Uint32Array(BATCH);
  const lengths = new Uint32Array(BATCH).fill(size);
  for (let i = 0; i < BATCH; i++) offsets[i] = i * stride;
  return { size, buf, offsets, lengths, out: new Uint32Array(BATCH) };
}

// One function literal per implementation, so each call site sees one callee.

function twinLoop(w: Workload): Loop {
  const { buf, offsets, size } = w;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++)
      acc = (acc + sum16Reference(buf, offsets[i & MASK]!, size, 0)) | 0;
    return acc;
  };
}

function tsLoop(w: Workload): Loop {
  const { buf, offsets, size } = w;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) acc = (acc + sum16(buf, offsets[i & MASK]!, size, 0)) | 0;
    return acc;
  };
}

function nativeLoop(w: Workload, native: NativeAddon): Loop {
  const { buf, offsets, size } = w;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++)
      acc = (acc + native.sum16(buf, offsets[i & MASK]!, size, 0)) | 0;
    return acc;
  };
}

function batchLoop(w: Workload, native: NativeAddon): Loop {
  const { buf, offsets, lengths, out } = w;
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      native.sum16Batch(buf, offsets, lengths, BATCH, out);
      acc = (acc + out[i & MASK]!) | 0;
    }
    return acc;
  };
}

/** Throws unless all four implementations agree on every buffer of every workload. */
function check(ws: readonly Workload[], native: NativeAddon): void {
  for (const w of ws) {
    native.sum16Batch(w.buf, w.offsets, w.lengths, BATCH, w.out);
    for (let i = 0; i < BATCH; i++) {
      const off = w.offsets[i]!;
      const want = sum16Reference(w.buf, off, w.size, 0);
      const got = [sum16(w.buf, off, w.size, 0), native.sum16(w.buf, off, w.size, 0), w.out[i]!];
      if (got.some((g) => g !== want)) {
        throw new Error(
          `sum16 implementations disagree on ${w.size} B buffer ${i}: twin 0x${want.toString(16)}, ` +
            `ts/native/batch ${got.map((g) => `0x${g.toString(16)}`).join('/')}`,
        );
      }
    }
  }
}

export function sumCases(native: NativeAddon): BenchCase<SumResult>[] {
  const ws = SUM_SIZES.map((size, i) => workload(size, 0x1071 + i));
  check(ws, native);
  const cases: BenchCase<SumResult>[] = [];
  for (const w of ws) {
    for (const impl of SUM_IMPLS) {
      const buffersPerOp = impl.id === 'batch' ? BATCH : 1;
      const loop =
        impl.id === 'twin'
          ? twinLoop(w)
          : impl.id === 'ts'
            ? tsLoop(w)
            : impl.id === 'native'
              ? nativeLoop(w, native)
              : batchLoop(w, native);
      cases.push({
        label: `sum16 ${impl.label} ${w.size} B`,
        loop,
        result: (m: Measurement): SumResult => {
          const nsPerBuffer = m.nsPerOp.map((ns) => ns / buffersPerOp);
          return {
            impl: impl.id,
            label: impl.label,
            size: w.size,
            buffersPerOp,
            iters: m.iters,
            gbps: stats(nsPerBuffer.map((ns) => w.size / ns)),
            nsPerBuffer: stats(nsPerBuffer),
          };
        },
        summary: (r) => `${r.gbps.median.toFixed(2)} GB/s, ${fmtNs(r.nsPerBuffer.median)}/buffer`,
      });
    }
  }
  return cases;
}
