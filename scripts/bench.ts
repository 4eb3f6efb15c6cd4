/**
 * `npm run bench`: the checksum benchmarks.
 *
 * Runs every benchmark file under scripts/bench/ (sum16, RFC 1624 updates, packet
 * rewrites), each optimised routine against its reference twin (and the sum
 * against the C addon too), prints an aligned table to stdout with progress on
 * stderr, and writes the "Checksum" section of docs/benchmarks.md and the chart
 * docs/checksum-throughput.svg. `--json [FILE]` adds machine-readable results,
 * `--quick` makes it a smoke test. Exit status: 0 done, 1 failed, 2 bad arguments.
 */

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/base/paths.js';
import { loadNative, type NativeAddon } from '../src/native/index.js';
import { parseArgs, USAGE } from './bench/cli.js';
import type { BenchCase } from './bench/common.js';
import { UsageError } from './bench/errors.js';
import { readOrNull, writeAtomic } from './bench/files.js';
import { blackHoleValue, FULL, measure, prime, QUICK } from './bench/harness.js';
import { incrementalCases } from './bench/incremental.bench.js';
import { machineFacts } from './bench/machine.js';
import {
  type ChecksumReport,
  chartSvg,
  markdownSection,
  ratios,
  spliceSection,
  textReport,
} from './bench/report.js';
import { rewriteCases } from './bench/rewrite.bench.js';
import { sumCases } from './bench/sum.bench.js';

const DOC = 'docs/benchmarks.md';
const SVG = 'docs/checksum-throughput.svg';
const SECTION = 'checksum';

function main(argv: readonly string[]): number {
  let cli: ReturnType<typeof parseArgs>;
  try {
    cli = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`bench: ${e.message}\n(run with --help for the options)\n`);
    return 2;
  }
  if (cli.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const opts = cli.quick ? QUICK : FULL;
  const machine = machineFacts();
  const root = packageRoot();
  const t0 = process.hrtime.bigint();

  let native: NativeAddon;
  try {
    native = loadNative();
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    return 1;
  }

  // Build every case first (each file checks its implementations agree), so the
  // progress counter knows the total.
  const suites = {
    sum: sumCases(native),
    incremental: incrementalCases(),
    rewrite: rewriteCases(),
  };
  const total = suites.sum.length + suites.incremental.length + suites.rewrite.length;
  let done = 0;
  const primeNs = cli.quick ? 2e6 : 10e6;
  process.stderr.write(
    `bench: ${total} cases, ${cli.quick ? 'quick' : 'full'} mode (${opts.runs} runs of ~${opts.targetNs / 1e6} ms each)\n`,
  );

  const runSuite = <R>(cases: BenchCase<R>[]): R[] => {
    for (const c of cases) prime(c.loop, primeNs);
    return cases.map((c) => {
      done++;
      process.stderr.write(`[${done}/${total}] ${c.label} ... `);
      const r = c.result(measure(c.loop, opts));
      process.stderr.write(`${c.summary(r)}\n`);
      return r;
    });
  };
  const sum = runSuite(suites.sum);
  const incremental = runSuite(suites.incremental);
  const rewrite = runSuite(suites.rewrite);

  const report: ChecksumReport = {
    schema: 'vpm-bench-checksum/1',
    mode: cli.quick ? 'quick' : 'full',
    options: { ...opts },
    machine,
    sum,
    ratios: ratios(sum),
    incremental,
    rewrite,
    blackHole: blackHoleValue(),
    durationSec: Number(process.hrtime.bigint() - t0) / 1e9,
  };

  const jsonToStdout = cli.json === '-';
  (jsonToStdout ? process.stderr : process.stdout).write(`\n${textReport(report)}`);

  // The JSON first: if the docs cannot be written, the results are not lost.
  let status = 0;
  if (cli.json !== null) {
    const text = `${JSON.stringify(report, null, 2)}\n`;
    if (jsonToStdout) process.stdout.write(text);
    else {
      try {
        writeFileSync(cli.json, text);
        process.stderr.write(`bench: wrote ${cli.json}\n`);
      } catch (e) {
        process.stderr.write(`bench: cannot write ${cli.json}: ${(e as Error).message}\n`);
        status = 1;
      }
    }
  }

  const docPath = join(root, DOC);
  try {
    const section = markdownSection(report, 'checksum-throughput.svg');
    writeAtomic(docPath, spliceSection(readOrNull(docPath), SECTION, section));
    writeAtomic(join(root, SVG), chartSvg(report));
  } catch (e) {
    process.stderr.write(`bench: cannot update ${docPath}: ${(e as Error).message}\n`);
    return 1;
  }
  process.stderr.write(`bench: wrote ${DOC} (section "${SECTION}") and ${SVG}\n`);
  return status;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (e) {
  process.stderr.write(
    `bench: failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
  );
  process.exitCode = 1;
}
