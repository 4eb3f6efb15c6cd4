/** Pieces shared by the benchmark files: the case shape, seeded data and number formats. */

import type { Loop, Measurement } from './harness.js';

/** One timed case: its loop, and how a measurement becomes its result record. */
export interface BenchCase<R> {
  /** Shown in the progress line, e.g. "sum16 optimised TS 1500 B". */
  label: string;
  loop: Loop;
  result(m: Measurement): R;
  /** A few words for the progress line once the case is done. */
  summary(r: R): string;
}

/** Fill with seeded pseudo-random bytes (mulberry32): the same data on every run. */
export function fillRandom(b: Uint8Array, seed: number): void {
  let s = seed >>> 0;
  for (let i = 0; i < b.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    b[i] = (t ^ (t >>> 14)) & 0xff;
  }
}

/** A duration in ns with a unit that keeps 3 significant digits: "4.51 ns", "132 ns", "60.5 µs". */
export function fmtNs(ns: number): string {
  if (!Number.isFinite(ns)) return 'n/a';
  if (ns < 10) return `${ns.toFixed(2)} ns`;
  if (ns < 1000) return `${ns.toFixed(ns < 100 ? 1 : 0)} ns`;
  const us = ns / 1000;
  if (us < 1000) return `${us.toFixed(us < 10 ? 2 : us < 100 ? 1 : 0)} µs`;
  return `${(us / 1000).toFixed(2)} ms`;
}

/** A number with 3 significant digits at most, no exponent: 0.771, 11.5, 132. */
export function fmt3(x: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toFixed(3);
}

/** A ratio as "6.8×" (or "0.45×"). */
export function fmtRatio(x: number): string {
  return `${fmt3(x)}×`;
}

/** A range of durations in one unit, chosen by the larger end: "25.3–26.5 ns", "1.31–1.42 µs". */
export function fmtNsRange(lo: number, hi: number): string {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return 'n/a';
  const [div, unit] = hi < 1e3 ? [1, 'ns'] : hi < 1e6 ? [1e3, 'µs'] : [1e6, 'ms'];
  return `${fmt3(lo / div)}–${fmt3(hi / div)} ${unit}`;
}
