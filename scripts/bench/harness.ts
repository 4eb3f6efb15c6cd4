/**
 * Timing harness shared by the benchmark files.
 *
 * Theory of operation. A case is a loop function `(iters) => value` written out
 * in the case's own file, one function literal per implementation, so that the
 * call inside it stays monomorphic and V8 may inline it exactly as it would on
 * the data plane (a single generic loop calling `fn(...)` for every case would
 * turn megamorphic and handicap the small functions). The loop folds every
 * result into a value it returns; the harness adds that to a module-level black
 * hole that is reported at the end, so the JIT cannot drop the work as dead.
 *
 * `measure` first runs the loop with doubling iteration counts until one call
 * lasts at least an eighth of the target and the warm-up time is spent (this is
 * also where TurboFan compiles it), then scales the count so that one run lasts
 * about `targetNs`, then times `runs` runs with `process.hrtime.bigint()`. The
 * median run is the result; min and max show the spread.
 */

export interface BenchOptions {
  /** Timed runs per case; the median is reported. Default 7 (`--quick`: 3). */
  runs: number;
  /** Wanted duration of one timed run, in ns. Default 75 ms (`--quick`: 15 ms). */
  targetNs: number;
  /** Minimum warm-up time per case before timing, in ns. Default 150 ms (`--quick`: 20 ms). */
  warmupNs: number;
}

export const FULL: Readonly<BenchOptions> = Object.freeze({
  runs: 7,
  targetNs: 75e6,
  warmupNs: 150e6,
});

export const QUICK: Readonly<BenchOptions> = Object.freeze({
  runs: 3,
  targetNs: 15e6,
  warmupNs: 20e6,
});

/** A case's loop: runs `iters` operations and returns a value derived from all their results. */
export type Loop = (iters: number) => number;

export interface Stats {
  median: number;
  min: number;
  max: number;
}

export interface Measurement {
  /** Operations per timed run. */
  iters: number;
  /** Wall time of each timed run divided by `iters`, in ns, in run order. */
  nsPerOp: number[];
  /** Summary of `nsPerOp`. */
  ns: Stats;
}

let blackHole = 0;

/** The accumulated results of every loop; reported so that none of them is dead code. */
export function blackHoleValue(): number {
  return blackHole;
}

function timeOnce(loop: Loop, iters: number): number {
  const t0 = process.hrtime.bigint();
  const r = loop(iters);
  const t1 = process.hrtime.bigint();
  blackHole = (blackHole + (r % 0x40000000)) % 0x40000000;
  return Number(t1 - t0);
}

export function stats(xs: readonly number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return { median: Number.NaN, min: Number.NaN, max: Number.NaN };
  const median = n % 2 === 1 ? s[(n - 1) >>> 1]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
  return { median, min: s[0]!, max: s[n - 1]! };
}

/** Run a loop briefly without timing it: primes type feedback before any case is timed. */
export function prime(loop: Loop, ns: number): void {
  let iters = 1;
  let spent = 0;
  while (spent < ns) {
    spent += timeOnce(loop, iters);
    if (iters < 1 << 30) iters *= 2;
  }
}

export function measure(loop: Loop, opts: BenchOptions): Measurement {
  let iters = 1;
  let spent = 0;
  let last = 0;
  const floor = opts.targetNs / 8;
  for (;;) {
    last = timeOnce(loop, iters);
    spent += last;
    if (last >= floor && spent >= opts.warmupNs) break;
    if (last < floor) iters *= 2;
  }
  iters = Math.max(1, Math.round((iters * opts.targetNs) / Math.max(last, 1)));
  const nsPerOp: number[] = [];
  for (let r = 0; r < opts.runs; r++) nsPerOp.push(timeOnce(loop, iters) / iters);
  return { iters, nsPerOp, ns: stats(nsPerOp) };
}
