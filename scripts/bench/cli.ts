/** Command line of `npm run bench`: parsed once into a frozen options object. */

import { UsageError } from './errors.js';

export const USAGE = `usage: npm run bench [-- OPTIONS]      (or: node dist/scripts/bench.js [OPTIONS])

Measures the checksum routines (RFC 1071 sum, RFC 1624 updates, packet rewrites),
prints a table, and writes docs/benchmarks.md (its "Checksum" section only) and
docs/checksum-throughput.svg.

options:
  --quick          3 short runs per case instead of 7 long ones: a smoke test,
                   with noisier numbers
  --json [FILE]    also write the results as JSON to FILE, or to stdout when FILE
                   is left out (the table then goes to stderr); also --json=FILE
  -h, --help       show this help and exit
`;

export interface CliOptions {
  /** Fewer, shorter runs. Default false. */
  quick: boolean;
  /** Where the JSON goes: a file name, '-' for stdout, or null for no JSON. Default null. */
  json: string | null;
  /** Print the usage and exit. Default false. */
  help: boolean;
}

export function parseArgs(argv: readonly string[]): Readonly<CliOptions> {
  const o: CliOptions = { quick: false, json: null, help: false };
  const seen = new Set<string>();
  const once = (name: string) => {
    if (seen.has(name)) throw new UsageError(`option ${name} given twice`);
    seen.add(name);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') {
      once('--quick');
      o.quick = true;
    } else if (a === '-h' || a === '--help') {
      o.help = true;
    } else if (a === '--json') {
      once('--json');
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('-')) {
        o.json = next;
        i++;
      } else {
        o.json = '-';
      }
    } else if (a.startsWith('--json=')) {
      once('--json');
      const file = a.slice('--json='.length);
      if (file === '') throw new UsageError('option --json= needs a file name after the "="');
      o.json = file;
    } else if (a.startsWith('-')) {
      throw new UsageError(`unknown option "${a}"`);
    } else {
      throw new UsageError(`unexpected argument "${a}" (only --json takes a value)`);
    }
  }
  return Object.freeze(o);
}
