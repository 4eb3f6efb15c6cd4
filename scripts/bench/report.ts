/**
 * Turns the checksum results into the three outputs: an aligned text report for
 * the terminal, the "Checksum" section of docs/benchmarks.md, and the chart.
 *
 * docs/benchmarks.md is shared by several benchmark suites. Each owns the text
 * between its `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` markers
 * and leaves everything else alone; `spliceSection` is the only writer.
 */

import { fmt3, fmtNs, fmtNsRange, fmtRatio } from './common.js';
import type { BenchOptions, Stats } from './harness.js';
import type { IncrementalResult } from './incremental.bench.js';
import { type MachineFacts, machineLines } from './machine.js';
import type { RewriteResult } from './rewrite.bench.js';
import { BATCH, SUM_IMPLS, SUM_SIZES, type SumImpl, type SumResult } from './sum.bench.js';
import { type ChartSpec, lineChartSvg, type Marker } from './svg.js';

/** The optimised TS sum should be at least this many times the twin at 1500 B. */
export const GOAL_TS_OVER_TWIN_1500 = 5;

export interface RatioRow {
  size: number;
  /** Median throughput of optimised TS divided by the twin's. */
  tsOverTwin: number;
  /** Optimised TS over native C, one call per buffer. */
  tsOverNative: number;
  /** Optimised TS over native C, batched. */
  tsOverBatch: number;
}

export interface ChecksumReport {
  schema: 'vpm-bench-checksum/1';
  mode: 'full' | 'quick';
  options: BenchOptions;
  machine: MachineFacts;
  sum: SumResult[];
  ratios: RatioRow[];
  incremental: IncrementalResult[];
  rewrite: RewriteResult[];
  /** The sum of every loop's results; only there so that no work is dead code. */
  blackHole: number;
  durationSec: number;
}

function sumOf(sum: readonly SumResult[], impl: SumImpl, size: number): SumResult | undefined {
  return sum.find((r) => r.impl === impl && r.size === size);
}

export function ratios(sum: readonly SumResult[]): RatioRow[] {
  return SUM_SIZES.map((size) => {
    const g = (impl: SumImpl) => sumOf(sum, impl, size)?.gbps.median ?? Number.NaN;
    return {
      size,
      tsOverTwin: g('ts') / g('twin'),
      tsOverNative: g('ts') / g('native'),
      tsOverBatch: g('ts') / g('batch'),
    };
  });
}

// ---------------------------------------------------------------------------
// Tables

type Align = 'l' | 'r';

/** Plain text table: columns padded to their widest cell, a rule under the header. */
export function textTable(head: string[], rows: string[][], align: Align[]): string {
  const w = head.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((s, c) => (align[c] === 'r' ? s.padStart(w[c]!) : s.padEnd(w[c]!)))
      .join('  ')
      .trimEnd();
  return [line(head), line(w.map((x) => '-'.repeat(x))), ...rows.map(line)].join('\n');
}

/** Markdown table, padded so that the source reads as well as the rendering. */
export function mdTable(head: string[], rows: string[][], align: Align[]): string {
  const w = head.map((h, c) => Math.max(3, h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const pad = (s: string, c: number) => (align[c] === 'r' ? s.padStart(w[c]!) : s.padEnd(w[c]!));
  const line = (cells: string[]) => `| ${cells.map(pad).join(' | ')} |`;
  const rule = `|${w.map((x, c) => (align[c] === 'r' ? `${'-'.repeat(x + 1)}:` : `${'-'.repeat(x + 2)}`)).join('|')}|`;
  return [line(head), rule, ...rows.map(line)].join('\n');
}

function sizeLabel(size: number): string {
  return `${size} B`;
}

function range(s: Stats, f: (x: number) => string): string {
  return `${f(s.min)}–${f(s.max)}`;
}

function sumRows(r: ChecksumReport): string[][] {
  const rows: string[][] = [];
  for (const size of SUM_SIZES) {
    for (const impl of SUM_IMPLS) {
      const x = sumOf(r.sum, impl.id, size);
      if (!x) continue;
      rows.push([
        sizeLabel(size),
        impl.label,
        fmt3(x.gbps.median),
        range(x.gbps, fmt3),
        fmtNs(x.nsPerBuffer.median),
        fmtNsRange(x.nsPerBuffer.min, x.nsPerBuffer.max),
      ]);
    }
  }
  return rows;
}
const SUM_HEAD = ['size', 'implementation', 'GB/s', 'min–max', 'time/buffer', 'min–max'];
const SUM_ALIGN: Align[] = ['r', 'l', 'r', 'r', 'r', 'r'];

function ratioRows(r: ChecksumReport): string[][] {
  return r.ratios.map((x) => [
    sizeLabel(x.size),
    fmtRatio(x.tsOverTwin),
    fmtRatio(x.tsOverNative),
    fmtRatio(x.tsOverBatch),
  ]);
}
const RATIO_HEAD = [
  'size',
  'optimised TS / twin',
  'optimised TS / native C (1 call)',
  `optimised TS / native C (batch of ${BATCH})`,
];
const RATIO_ALIGN: Align[] = ['r', 'r', 'r', 'r'];

function speedup(twinNs: number | undefined, tsNs: number): string {
  return twinNs === undefined ? '' : fmtRatio(twinNs / tsNs);
}

function incrementalRows(r: ChecksumReport): string[][] {
  return r.incremental.map((x) => {
    const twin = r.incremental.find((y) => y.fn === x.fn && y.impl === 'twin');
    return [
      x.fn,
      x.label,
      fmt3(x.mUpdatesPerSec.median),
      range(x.mUpdatesPerSec, fmt3),
      fmtNs(x.nsPerUpdate.median),
      x.impl === 'ts' ? speedup(twin?.nsPerUpdate.median, x.nsPerUpdate.median) : '',
    ];
  });
}
const INC_HEAD = ['function', 'implementation', 'M updates/s', 'min–max', 'time/update', 'vs twin'];
const INC_ALIGN: Align[] = ['l', 'l', 'r', 'r', 'r', 'r'];

function rewriteRows(r: ChecksumReport): string[][] {
  return r.rewrite.map((x) => {
    const twin = r.rewrite.find((y) => y.kind === x.kind && y.size === x.size && y.impl === 'twin');
    return [
      x.kind === 'port' ? 'dst port' : 'dst addr + dst port',
      `${x.size} B`,
      x.label,
      fmtNs(x.nsPerPacket.median),
      fmtNsRange(x.nsPerPacket.min, x.nsPerPacket.max),
      x.impl === 'ts' ? speedup(twin?.nsPerPacket.median, x.nsPerPacket.median) : '',
    ];
  });
}
const RW_HEAD = ['rewrite', 'packet', 'implementation', 'time/packet', 'min–max', 'vs twin'];
const RW_ALIGN: Align[] = ['l', 'r', 'l', 'r', 'r', 'r'];

function methodLine(r: ChecksumReport): string {
  const o = r.options;
  return (
    `${r.mode} mode: median of ${o.runs} timed runs of ~${o.targetNs / 1e6} ms per case, ` +
    `after ≥${o.warmupNs / 1e6} ms of warm-up`
  );
}

function goalLine(r: ChecksumReport): string {
  const at = r.ratios.find((x) => x.size === 1500);
  if (!at) return '';
  const ok = at.tsOverTwin >= GOAL_TS_OVER_TWIN_1500;
  return `Goal, optimised TS ≥ ${GOAL_TS_OVER_TWIN_1500}× the twin at 1500 B: ${ok ? 'met' : 'NOT met'} (${fmtRatio(at.tsOverTwin)}).`;
}

/** A few sentences derived from this run's numbers, to help read the tables. */
function readingNotes(r: ChecksumReport): string {
  const ns = (impl: SumImpl, size: number) => sumOf(r.sum, impl, size)?.nsPerBuffer.median;
  const notes: string[] = [];
  const n20 = ns('native', 20);
  const b20 = ns('batch', 20);
  if (n20 !== undefined && b20 !== undefined) {
    notes.push(
      `- One N-API call costs about ${fmtNs(n20 - b20)} here (native C at 20 B, one call ` +
        `per buffer against batched): below ~576 B the call, not the sum, dominates, ` +
        `which is why the data plane crosses the boundary in batches.`,
    );
  }
  const big = r.ratios.find((x) => x.size === 65536);
  if (big) {
    notes.push(
      `- On 64 KiB buffers the optimised TypeScript reaches ${Math.round(big.tsOverNative * 100)}% ` +
        `of the throughput of the C loop (which gcc vectorises), and the byte-at-a-time ` +
        `twin is ${fmtRatio(big.tsOverTwin)} slower than the optimised TypeScript.`,
    );
  }
  return notes.join('\n');
}

// ---------------------------------------------------------------------------
// Text report (stdout)

export function textReport(r: ChecksumReport): string {
  const facts = machineLines(r.machine)
    .map(([k, v]) => `  ${`${k}:`.padEnd(23)}${v}`)
    .join('\n');
  return [
    'vpm checksum benchmark',
    `  ${methodLine(r)}; took ${r.durationSec.toFixed(0)} s`,
    facts,
    '',
    `RFC 1071 sum16 throughput (1 GB = 1e9 bytes; min–max over the runs)`,
    textTable(SUM_HEAD, sumRows(r), SUM_ALIGN),
    '',
    'Ratios of median throughput (above 1×: optimised TS is faster)',
    textTable(RATIO_HEAD, ratioRows(r), RATIO_ALIGN),
    goalLine(r),
    '',
    'Incremental checksum updates (RFC 1624 eqn. 3)',
    textTable(INC_HEAD, incrementalRows(r), INC_ALIGN),
    '',
    'Whole rewrite of one TCP/IPv4 packet (incremental vs full recompute)',
    textTable(RW_HEAD, rewriteRows(r), RW_ALIGN),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------
// docs/benchmarks.md

export const DOC_TITLE = `# Benchmarks

Numbers measured by \`npm run bench\` on the machine each section names. Each
benchmark suite rewrites only its own section, the text between its
\`<!-- bench:NAME:start -->\` and \`<!-- bench:NAME:end -->\` markers; everything
outside the markers is kept, so other suites (and prose) can live beside it.
`;

export function markdownSection(r: ChecksumReport, svgName: string): string {
  const m = r.machine;
  const date = m.date.slice(0, 10);
  const o = r.options;
  return `## Checksum

<!-- Generated by scripts/bench.ts (\`npm run bench\`): edits between the bench:checksum markers are overwritten. -->

The Internet checksum routines of \`src/checksum/\`, each against its reference
twin and against the C addon. Measured ${date} on ${m.cpuModel} (${m.cores} cores),
Node ${m.node}; ${methodLine(r)}.${r.mode === 'quick' ? ' **Quick mode: a smoke test, not numbers to quote.**' : ''}

![Checksum throughput against buffer size, one line per implementation](${svgName})

### RFC 1071 sum throughput

\`sum16(buf, off, len)\` over one buffer of each size (1 GB = 10^9 bytes; the
min–max columns are the slowest and the fastest run).

${mdTable(SUM_HEAD, sumRows(r), SUM_ALIGN)}

Ratios of the median throughputs (above 1×: the optimised TypeScript is faster):

${mdTable(RATIO_HEAD, ratioRows(r), RATIO_ALIGN)}

${goalLine(r)}

${readingNotes(r)}

### Incremental updates (RFC 1624)

${mdTable(INC_HEAD, incrementalRows(r), INC_ALIGN)}

### Whole rewrite of one TCP/IPv4 packet

\`setDstPortWithChecksumUpdate\` (and \`setIpv4DstAddrWithChecksumUpdate\` before it
for "dst addr + dst port") against the twin in \`rewrite.reference.ts\`, which writes
the fields and recomputes the IP header and TCP checksums from scratch with the
byte-at-a-time sum (once per packet, also when two fields change). The packet
length is the whole IPv4 packet.

${mdTable(RW_HEAD, rewriteRows(r), RW_ALIGN)}

### Method

- Implementations: *reference twin* is \`sum16Reference\` (\`sum.reference.ts\`, one
  byte at a time); *optimised TS* is \`sum16\` (\`sum.ts\`: aligned little-endian
  32-bit words through a Uint32Array, four accumulators, 16 words a round);
  *native C* is the addon's \`sum16\` called once per buffer through N-API;
  *batch* is \`sum16Batch\`, ${BATCH} buffers (offsets and lengths in Uint32Arrays)
  per call, the way the data plane crosses the native boundary.
- Data: for each size, ${BATCH} buffers of seeded random bytes at 64-byte-aligned
  offsets of one arena of about 0.5 MiB at most (within L2), visited round robin by
  every implementation. Before timing, the script checks that all four
  implementations give the same sum for every buffer, that \`update16\`/\`update32\`
  equal their twins on every operand, and that both rewrites leave identical,
  valid packets.
- Timing: each case is a loop written out for its implementation (so the call
  stays monomorphic and may be inlined, as on the data plane). All loops of a
  suite run briefly first so that type feedback covers every size; then each
  case warms up for at least ${o.warmupNs / 1e6} ms while the iteration count doubles, the
  count is scaled so a run lasts ~${o.targetNs / 1e6} ms, and ${o.runs} runs are timed with
  \`process.hrtime.bigint()\`. The median run is reported, with the min and max.
  Every result is added into an accumulator that is returned and reported
  (black hole: ${r.blackHole}), so the JIT cannot drop the work. Loop overhead
  and operand loads are inside every number.
- Noise: the machine may run other work (load average at start:
  ${m.loadAvg1.toFixed(2)}); compare ratios rather than absolute numbers across runs.

### Machine

${machineLines(m)
  .map(([k, v]) => `- ${k}: ${v}`)
  .join('\n')}

### Reproduce

\`\`\`sh
npm run bench                          # full run, writes this section and ${svgName}
npm run bench -- --quick               # smoke test: fewer, shorter runs
npm run bench -- --json results.json   # also the raw results as JSON
\`\`\`
`;
}

/**
 * Put `body` between the markers of section `name` in `existing` (the current
 * file, or null if there is none), keeping everything else. Refuses a file whose
 * markers are unpaired, duplicated or out of order rather than guess.
 */
export function spliceSection(existing: string | null, name: string, body: string): string {
  const start = `<!-- bench:${name}:start -->`;
  const end = `<!-- bench:${name}:end -->`;
  const block = `${start}\n${body.trimEnd()}\n${end}`;
  if (existing === null || existing.trim() === '') return `${DOC_TITLE}\n${block}\n`;
  const count = (s: string) => existing.split(s).length - 1;
  const ns = count(start);
  const ne = count(end);
  if (ns === 0 && ne === 0) return `${existing.trimEnd()}\n\n${block}\n`;
  const i = existing.indexOf(start);
  const j = existing.indexOf(end);
  if (ns !== 1 || ne !== 1 || j < i) {
    throw new Error(
      `the ${name} markers in the benchmarks file are broken (${ns} start, ${ne} end marker(s)` +
        `${ns === 1 && ne === 1 ? ', end before start' : ''}); fix them by hand, then run again`,
    );
  }
  return existing.slice(0, i) + block + existing.slice(j + end.length);
}

// ---------------------------------------------------------------------------
// Chart

/** Colour-blind-safe colours (Okabe–Ito), plus a marker and dash each so the lines also differ in grey. */
const STYLE: Record<SumImpl, { color: string; marker: Marker; dash: string }> = {
  twin: { color: '#D55E00', marker: 'square', dash: '6 4' },
  ts: { color: '#0072B2', marker: 'circle', dash: '' },
  native: { color: '#009E73', marker: 'triangle', dash: '2 3' },
  batch: { color: '#CC79A7', marker: 'diamond', dash: '' },
};

export function chartSvg(r: ChecksumReport): string {
  const m = r.machine;
  const spec: ChartSpec = {
    title: 'vpm checksum throughput (RFC 1071 sum16)',
    subtitle: `${m.cpuModel}, ${m.cores} cores, Node ${m.node}, ${m.date.slice(0, 10)}; median of ${r.options.runs} runs${r.mode === 'quick' ? ' (quick mode)' : ''}`,
    xLabel: 'buffer size, bytes (log scale)',
    yLabel: 'throughput, GB/s (log scale)',
    xTicks: SUM_SIZES.map((s) => ({ x: s, label: String(s) })),
    series: SUM_IMPLS.map((impl) => ({
      label: impl.label,
      ...STYLE[impl.id],
      points: SUM_SIZES.flatMap((size) => {
        const x = sumOf(r.sum, impl.id, size);
        return x ? [{ x: size, y: x.gbps.median, lo: x.gbps.min, hi: x.gbps.max }] : [];
      }),
    })),
    footnote: 'Generated by scripts/bench.ts (npm run bench); details in docs/benchmarks.md.',
  };
  return lineChartSvg(spec);
}
