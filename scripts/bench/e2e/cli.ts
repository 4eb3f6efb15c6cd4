/** Command line of `npm run bench:e2e`: parsed once into a frozen options object. */

import { UsageError } from '../errors.js';
import type { Family } from './model.js';

export const USAGE = `usage: npm run bench:e2e [-- OPTIONS]      (or: node dist/scripts/bench-e2e.js [OPTIONS])

Measures one client/server pair four ways, interleaved, in network namespaces it
creates and removes: kernel direct, nftables DNAT, and through vpm (offloads off,
and on). TCP bulk throughput (iperf3, 1 and 4 streams), 64-byte request/response
rate and latency (unpinned and pinned to CPU 0), connections per second; UDP:
64-byte datagrams per second received (and the loss) from a sender as fast as it
goes, and a UDP request/response rate. Prints a table, and writes
docs/benchmarks.md (its "End to end" section only) and docs/e2e-ratios.svg.
Needs root.

options:
  --quick          1 repetition of 1 s per measurement: a smoke test, under a minute
  --duration S     seconds per measurement, an integer 1..60 (default 2; --quick: 1)
  --reps N         repetitions of every measurement, 1..20 (default 5; --quick: 1)
  --family F       IP families to measure: 4, 6 or 4,6 (default 4,6). IPv6 runs
                   TCP 1 stream and 64 B request/response (unpinned, pinned)
                   over the same four paths (nftables DNAT in a table ip6)
  --json [FILE]    also write the results as JSON to FILE, or to stdout when FILE
                   is left out (the table then goes to stderr); also --json=FILE
  -h, --help       show this help and exit

exit status: 0 done, 1 failed (also: a measurement failed), 2 bad arguments
`;

export interface E2eOptions {
  /** Short smoke run. Default false. */
  quick: boolean;
  /** Seconds per measurement. Default 2, quick 1. */
  duration: number;
  /** Repetitions per path and metric. Default 5, quick 1. */
  reps: number;
  /** Where the JSON goes: a file name, '-' for stdout, or null. Default null. */
  json: string | null;
  /** IP families whose metrics run. Default [4, 6]. */
  families: readonly Family[];
  /** Print the usage and exit. Default false. */
  help: boolean;
}

function familiesArg(text: string | undefined): Family[] {
  if (text === undefined || text === '' || text.startsWith('--'))
    throw new UsageError('option --family needs a value (4, 6 or 4,6)');
  const parts = text.split(',');
  const out: Family[] = [];
  for (const p of parts) {
    if (p !== '4' && p !== '6')
      throw new UsageError(`option --family: "${text}" is not 4, 6 or 4,6`);
    const f = Number(p) as Family;
    if (out.includes(f)) throw new UsageError(`option --family: "${text}" names ${p} twice`);
    out.push(f);
  }
  return out.sort();
}

function intArg(name: string, text: string | undefined, lo: number, hi: number): number {
  if (text === undefined || text === '' || text.startsWith('--'))
    throw new UsageError(`option ${name} needs a value (an integer ${lo}..${hi})`);
  if (!/^\d+$/.test(text) || Number(text) < lo || Number(text) > hi)
    throw new UsageError(`option ${name}: "${text}" is not an integer ${lo}..${hi}`);
  return Number(text);
}

export function parseArgs(argv: readonly string[]): Readonly<E2eOptions> {
  let quick = false;
  let duration: number | null = null;
  let reps: number | null = null;
  let json: string | null = null;
  let help = false;
  let families: Family[] | null = null;
  const seen = new Set<string>();
  const once = (name: string) => {
    if (seen.has(name)) throw new UsageError(`option ${name} given twice`);
    seen.add(name);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const [name, inline] =
      a.startsWith('--') && eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    const value = (): string | undefined => (inline !== undefined ? inline : argv[++i]);
    if (name === '--quick' && inline === undefined) {
      once(name);
      quick = true;
    } else if ((name === '-h' || name === '--help') && inline === undefined) {
      help = true;
    } else if (name === '--duration') {
      once(name);
      duration = intArg(name, value(), 1, 60);
    } else if (name === '--reps') {
      once(name);
      reps = intArg(name, value(), 1, 20);
    } else if (name === '--family') {
      once(name);
      families = familiesArg(value());
    } else if (name === '--json') {
      once(name);
      if (inline !== undefined) {
        if (inline === '') throw new UsageError('option --json= needs a file name after the "="');
        json = inline;
      } else {
        const next = argv[i + 1];
        if (next !== undefined && !next.startsWith('-')) {
          json = next;
          i++;
        } else {
          json = '-';
        }
      }
    } else if (a.startsWith('-')) {
      throw new UsageError(`unknown option "${a}"`);
    } else {
      throw new UsageError(`unexpected argument "${a}"`);
    }
  }
  return Object.freeze({
    quick,
    duration: duration ?? (quick ? 1 : 2),
    reps: reps ?? (quick ? 1 : 5),
    json,
    families: Object.freeze(families ?? ([4, 6] as Family[])),
    help,
  });
}
