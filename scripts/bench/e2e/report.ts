/**
 * Turns the end-to-end results into an aligned text report for the terminal and
 * the "End to end" section of docs/benchmarks.md (written through the shared
 * `spliceSection`, which leaves the other suites' sections alone).
 */

import { fmt3, fmtRatio } from '../common.js';
import { machineLines } from '../machine.js';
import { mdTable, textTable } from '../report.js';
import {
  type Cell,
  type E2eReport,
  METRIC_SPECS,
  METRICS,
  type MetricId,
  PATH_NAMES,
  PATHS,
  type Row,
  type Sample,
  type Stats,
  stats,
  type VpmActivity,
} from './model.js';

/** The issue's numbers (same machine type, 2 vCPU), for scale. */
export const REFERENCE = Object.freeze({
  directGbps: 19.4,
  dnatGbps: 20.0,
  cRewriterGbps: 1.77,
  directPinnedTps: 67_500,
  cRewriterPinnedTps: 32_800,
  goalGbps: 1.4,
  goalPinnedTps: 26_000,
});

export function buildRows(samples: readonly Sample[]): Row[] {
  return METRICS.map((metric) => {
    const cells = {} as Record<(typeof PATHS)[number], Cell>;
    for (const path of PATHS) {
      const s = samples.filter((x) => x.metric === metric && x.path === path);
      const opt = (k: 'p50Us' | 'p99Us' | 'retransmits'): Stats | undefined =>
        s.some((x) => x[k] !== undefined) ? stats(s.map((x) => x[k] ?? Number.NaN)) : undefined;
      const cell: Cell = {
        value: stats(s.map((x) => x.value)),
        errors: s.reduce((a, x) => a + (x.errors ?? 0), 0),
        failures: s.filter((x) => x.error !== undefined).length,
      };
      const p50 = opt('p50Us');
      const p99 = opt('p99Us');
      const rtx = opt('retransmits');
      if (p50) cell.p50Us = p50;
      if (p99) cell.p99Us = p99;
      if (rtx) cell.retransmits = rtx;
      cells[path] = cell;
    }
    const d = cells.direct.value.median;
    return {
      metric,
      cells,
      dnatOverDirect: cells.dnat.value.median / d,
      vpmOverDirect: cells.vpm.value.median / d,
    };
  });
}

// ---------------------------------------------------------------------------
// Number formats

/** A rate with k/M: "67.5k", "1.23M", "812". */
function fmtRate(x: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  if (x >= 1e6) return `${fmt3(x / 1e6)}M`;
  if (x >= 1e3) return `${fmt3(x / 1e3)}k`;
  return fmt3(x);
}

function fmtValue(metric: MetricId, x: number): string {
  return METRIC_SPECS[metric].unit === 'Gbit/s' ? fmt3(x) : fmtRate(x);
}

/** "12.1 (11.8–12.5)", or the median alone for one repetition. */
function fmtStats(s: Stats, f: (x: number) => string): string {
  if (s.n === 0) return 'failed';
  if (s.n === 1 || s.min === s.max) return f(s.median);
  return `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
}

function fmtUs(x: number): string {
  return Number.isFinite(x) ? fmt3(x) : 'n/a';
}

function latencyCell(c: Cell): string {
  if (!c.p50Us || !c.p99Us || c.p50Us.n === 0) return 'n/a';
  return `${fmtUs(c.p50Us.median)} / ${fmtUs(c.p99Us.median)}`;
}

// ---------------------------------------------------------------------------
// The main table (text and markdown share the rows)

const HEAD = [
  'metric',
  'unit',
  ...PATHS.map((p) => PATH_NAMES[p]),
  'DNAT / direct',
  'vpm / direct',
];
const ALIGN: ('l' | 'r')[] = ['l', 'l', 'r', 'r', 'r', 'r', 'r'];

function tableRows(rows: readonly Row[]): string[][] {
  const out: string[][] = [];
  for (const r of rows) {
    const spec = METRIC_SPECS[r.metric];
    out.push([
      spec.label,
      spec.unit,
      ...PATHS.map((p) => fmtStats(r.cells[p].value, (x) => fmtValue(r.metric, x))),
      fmtRatio(r.dnatOverDirect),
      fmtRatio(r.vpmOverDirect),
    ]);
    if (spec.latency) {
      out.push(['  latency p50 / p99', 'µs', ...PATHS.map((p) => latencyCell(r.cells[p])), '', '']);
    }
  }
  return out;
}

function row(rows: readonly Row[], m: MetricId): Row | undefined {
  return rows.find((r) => r.metric === m);
}

/** One line per goal of the issue, met or not by this run. */
function goalLines(rows: readonly Row[]): string[] {
  const g = row(rows, 'tcp1')?.cells.vpm.value.median ?? Number.NaN;
  const t = row(rows, 'rrPinned')?.cells.vpm.value.median ?? Number.NaN;
  const verdict = (ok: boolean) => (ok ? 'met' : 'NOT met');
  return [
    `vpm, one TCP stream ≥ ${REFERENCE.goalGbps} Gbit/s: ${verdict(g >= REFERENCE.goalGbps)} (${fmt3(g)} Gbit/s)`,
    `vpm, 64 B request/response pinned ≥ ${fmtRate(REFERENCE.goalPinnedTps)} transactions/s: ${verdict(t >= REFERENCE.goalPinnedTps)} (${fmtRate(t)})`,
  ];
}

/** Measurements that failed, and transactions that did. */
function problemLines(r: E2eReport): string[] {
  const out: string[] = [];
  for (const s of r.samples) {
    if (s.error)
      out.push(
        `${METRIC_SPECS[s.metric].label}, ${PATH_NAMES[s.path]}, rep ${s.rep}: ${s.error.split('\n')[0]}`,
      );
  }
  for (const row of r.rows)
    for (const p of PATHS)
      if (row.cells[p].errors > 0)
        out.push(
          `${METRIC_SPECS[row.metric].label}, ${PATH_NAMES[p]}: ${row.cells[p].errors} failed transactions/connections`,
        );
  return out;
}

// ---------------------------------------------------------------------------
// vpm activity

function histogramText(a: VpmActivity): string {
  const total = Object.values(a.batchSizes).reduce((x, y) => x + y, 0);
  if (total === 0) return '–';
  return Object.entries(a.batchSizes)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k}: ${fmtPct(n / total)}`)
    .join(', ');
}

function fmtPct(f: number): string {
  const p = f * 100;
  if (p > 0 && p < 0.01) return '<0.01%';
  return `${p >= 10 ? p.toFixed(0) : p >= 1 ? p.toFixed(1) : p.toFixed(2)}%`;
}

function dropsText(a: VpmActivity): string {
  const parts = Object.entries(a.drops).map(([k, n]) => `${k} ${n}`);
  if (a.writeQueueFull > 0) parts.push(`TUN queue full ${a.writeQueueFull}`);
  return parts.length > 0 ? parts.join(', ') : '0';
}

const ACT_HEAD = [
  'workload',
  'packets',
  'packets/batch',
  'batch sizes (share of batches)',
  'daemon CPU',
  'CPU/packet',
  'drops',
];
const ACT_ALIGN: ('l' | 'r')[] = ['l', 'r', 'r', 'l', 'r', 'r', 'l'];

function activityRows(acts: readonly VpmActivity[]): string[][] {
  return acts.map((a) => [
    METRIC_SPECS[a.metric].label,
    fmtRate(a.packetsIn),
    a.batches > 0 ? fmt3(a.packetsIn / a.batches) : 'n/a',
    histogramText(a),
    a.wallSec > 0 ? `${(100 * (a.cpuSec / a.wallSec)).toFixed(0)}%` : 'n/a',
    a.packetsIn > 0 ? `${fmt3((a.cpuSec / a.packetsIn) * 1e6)} µs` : 'n/a',
    dropsText(a),
  ]);
}

function endStatsLine(r: E2eReport): string {
  const s = r.vpmStatsEnd;
  if (!s) return 'vpm stats at the end: not available.';
  const n = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : Number.NaN);
  return (
    `vpm stats at the end of the run: ${n('packetsIn')} packets in, ${n('packetsOut')} out, ` +
    `${n('dropsTotal')} dropped, ${n('batches')} batches (${fmt3(n('packetsIn') / n('batches'))} packets/batch), ` +
    `${n('flowsCreated')} flows created, ${n('flowsRefused')} refused, ${n('rstSent')} RSTs sent.`
  );
}

// ---------------------------------------------------------------------------
// Text report (stdout)

export function textReport(r: E2eReport): string {
  const lines = [
    `End to end (${r.mode}): median of ${r.options.reps} × ${r.options.duration} s per cell (min–max); ratios of medians`,
    '',
    textTable(HEAD, tableRows(r.rows), ALIGN),
    '',
    ...goalLines(r.rows),
    '',
    'vpm counters and CPU during its measurements:',
    textTable(ACT_HEAD, activityRows(r.vpmActivity), ACT_ALIGN),
    endStatsLine(r),
  ];
  const problems = problemLines(r);
  if (problems.length > 0) lines.push('', 'problems:', ...problems.map((p) => `  ${p}`));
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------
// Markdown section (docs/benchmarks.md)

function referenceTable(rows: readonly Row[]): string {
  const v = (m: MetricId, p: (typeof PATHS)[number]) =>
    row(rows, m)?.cells[p].value.median ?? Number.NaN;
  const head = ['measurement', 'issue', 'this run'];
  const body = [
    [
      'one iperf3 stream, kernel direct',
      `≈ ${REFERENCE.directGbps} Gbit/s`,
      `${fmt3(v('tcp1', 'direct'))} Gbit/s`,
    ],
    [
      'one iperf3 stream, nftables DNAT',
      `≈ ${fmt3(REFERENCE.dnatGbps)} Gbit/s`,
      `${fmt3(v('tcp1', 'dnat'))} Gbit/s`,
    ],
    [
      'one iperf3 stream, C TUN rewriter, one read()/write() per packet',
      `≈ ${REFERENCE.cRewriterGbps} Gbit/s`,
      `vpm: ${fmt3(v('tcp1', 'vpm'))} Gbit/s`,
    ],
    [
      '64 B ping-pong pinned to one CPU, direct',
      `${fmtRate(REFERENCE.directPinnedTps)} transactions/s`,
      `${fmtRate(v('rrPinned', 'direct'))} transactions/s`,
    ],
    [
      '64 B ping-pong pinned to one CPU, C TUN rewriter',
      `${fmtRate(REFERENCE.cRewriterPinnedTps)} transactions/s`,
      `vpm: ${fmtRate(v('rrPinned', 'vpm'))} transactions/s`,
    ],
    [
      'goal for vpm without offloads',
      `≥ ${REFERENCE.goalGbps} Gbit/s and ≥ ${fmtRate(REFERENCE.goalPinnedTps)} transactions/s pinned`,
      `${fmt3(v('tcp1', 'vpm'))} Gbit/s and ${fmtRate(v('rrPinned', 'vpm'))} transactions/s pinned`,
    ],
  ];
  return mdTable(head, body, ['l', 'l', 'l']);
}

/** A few sentences derived from this run's numbers, to help read the tables. */
function readingNotes(r: E2eReport): string {
  const notes: string[] = [];
  const rr = row(r.rows, 'rrPinned');
  if (rr) {
    const d = rr.cells.direct.p50Us?.median;
    const v = rr.cells.vpm.p50Us?.median;
    if (d !== undefined && v !== undefined && Number.isFinite(d) && Number.isFinite(v))
      notes.push(
        `- Pinned to one CPU, a 64-byte round trip takes ${fmt3(d)} µs (median) directly and ` +
          `${fmt3(v)} µs through vpm. vpm reads and writes two packets per transaction (the ` +
          `request and the response), so it adds about ${fmt3((v - d) / 2)} µs per packet ` +
          `on that CPU, wake-ups and context switches included.`,
      );
  }
  const bulk = r.vpmActivity.find((a) => a.metric === 'tcp1');
  if (bulk && bulk.batches > 0 && bulk.packetsIn > 0 && bulk.cpuSec > 0) {
    const perBatch = bulk.packetsIn / bulk.batches;
    const batchSize = (r.vpmConfig.tun as { batchSize?: number } | undefined)?.batchSize;
    const full =
      batchSize !== undefined && perBatch >= 0.8 * batchSize
        ? ` (of at most ${batchSize}: the reads mostly fill the batch, so the daemon is behind the kernel, not waiting for it)`
        : '';
    notes.push(
      `- During one bulk stream vpm moved ${fmt3(perBatch)} packets per batch on average${full} ` +
        `and used ${(100 * (bulk.cpuSec / bulk.wallSec)).toFixed(0)}% of a CPU, ` +
        `${fmt3((bulk.cpuSec / bulk.packetsIn) * 1e6)} µs per packet (both directions; no ` +
        `offloads: the kernel cuts the stream into 1500-byte packets before the TUN). Per ` +
        `CPU-second of the daemon that is ${fmt3((bulk.bytesIn * 8) / bulk.cpuSec / 1e9)} Gbit: ` +
        `its throughput follows the CPU time it gets, which other work on the machine ` +
        `takes away, so this is the steadier number to compare across runs.`,
    );
  }
  const rrRow = row(r.rows, 'rr');
  const spread = rrRow
    ? PATHS.filter((p) => {
        const v = rrRow.cells[p].value;
        return v.n > 1 && v.max > 2 * v.min;
      })
    : [];
  if (rrRow && spread.length > 0)
    notes.push(
      `- Unpinned, request/response rates vary by more than 2× between repetitions ` +
        `(${spread.map((p) => `${PATH_NAMES[p]} ${fmtRate(rrRow.cells[p].value.min)}–${fmtRate(rrRow.cells[p].value.max)}/s`).join(', ')}): ` +
        `whether the scheduler keeps client and server on one CPU or wakes one from the ` +
        `other decides, not the path (see the per-repetition p50s in the JSON). The ` +
        `pinned row is the one to compare.`,
    );
  const pinned = row(r.rows, 'rrPinned');
  const pv = pinned?.cells.vpm;
  if (pv?.p50Us && pv.value.n > 1 && pv.value.max > 1.2 * pv.value.min)
    notes.push(
      `- Pinned, vpm's median round trip stays near ${fmt3(pv.p50Us.median)} µs ` +
        `(${fmtRate(1e6 / pv.p50Us.median)}/s if every transaction took that long) while its ` +
        `rate varies ${fmtRate(pv.value.min)}–${fmtRate(pv.value.max)}/s: three processes ` +
        `share CPU 0 with whatever else the machine runs there.`,
    );
  const rrFree = row(r.rows, 'rr')?.cells.vpm.value.median;
  const rrPinned = row(r.rows, 'rrPinned')?.cells.vpm.value.median;
  if (rrFree !== undefined && rrPinned !== undefined && rrFree < 0.8 * rrPinned)
    notes.push(
      `- Through vpm, request/response is faster pinned to one CPU (${fmtRate(rrPinned)}/s) ` +
        `than free on both (${fmtRate(rrFree)}/s): unpinned, client, server and daemon ` +
        `probably wake each other across CPUs, and a cross-CPU wake-up is costly in a ` +
        `virtual machine; the direct path has one process fewer in the chain.`,
    );
  const rrAct = r.vpmActivity.find((a) => a.metric === 'rr');
  if (rrAct && rrAct.batches > 0)
    notes.push(
      `- Request/response traffic arrives one packet at a time ` +
        `(${fmt3(rrAct.packetsIn / rrAct.batches)} packets per batch): there batching cannot ` +
        `help, and the cost per wake-up of the daemon sets the rate.`,
    );
  return notes.join('\n');
}

export function markdownSection(r: E2eReport): string {
  const m = r.machine;
  const quick = r.mode === 'quick' ? ' **Quick mode: a smoke test, not numbers to quote.**' : '';
  const problems = problemLines(r);
  return `## End to end: kernel direct, nftables DNAT and vpm

<!-- Generated by scripts/bench-e2e.ts (\`npm run bench:e2e\`): edits between the bench:e2e markers are overwritten. -->

One client and one server in two network namespaces, the same pair measured three
ways in one run: *kernel direct* (the client connects to the server's own address
and port), *nftables DNAT* (the client connects to the virtual service
${'`198.19.0.9:9000`'}, rewritten by an nft \`dnat\` rule in prerouting) and *vpm*
(the same virtual service through \`vpm up\` and its TUN). Measured
${m.date.slice(0, 10)} on ${m.cpuModel} (${m.cores} cores), Node ${m.node},
${m.kernel}; ${r.mode} mode: median of ${r.options.reps} repetition(s) of
${r.options.duration} s per cell, (min–max) over the repetitions; the ratios
divide medians.${quick}

${mdTable(HEAD, tableRows(r.rows), ALIGN)}

${goalLines(r.rows)
  .map((l) => `- Goal, ${l}.`)
  .join('\n')}
${problems.length > 0 ? `\nProblems in this run:\n\n${problems.map((p) => `- ${p}`).join('\n')}\n` : ''}
### Reference numbers from the issue, for scale

Measured by the issue on this machine type (2 vCPU) with other tools; not by this
script. The C TUN rewriter is a prototype doing one \`read()\`/\`write()\` per packet
without offloads, the closest thing to vpm's data path.

${referenceTable(r.rows)}

### What vpm did

vpm's own counters (\`vpm stats --json\` before and after each vpm measurement,
summed per workload), and the CPU time of the daemon process over the same
measurements (from \`/proc/PID/stat\`, user + system, all threads; 100% is one
CPU; the span is the client's whole run, its start-up and warm-up included, so
short runs understate it). Packets are those read from the TUN, both
directions. The daemon's system time can include kernel work done inside its
\`write()\` calls: a packet written to the TUN is passed up the stack (routing,
TCP, the server's socket) in the writer's context.

${mdTable(ACT_HEAD, activityRows(r.vpmActivity), ACT_ALIGN)}

${endStatsLine(r)}

${readingNotes(r)}

### Method

- Topology: namespace *client* — veth — namespace *host*. The host runs the
  server (on \`0.0.0.0:19001\`), the nft rules and \`vpm up\` (configured like
  \`docs/examples/two-tenants.json\`, with \`limits.maxFlows\` 131072 and the
  control socket in the run's temporary directory; VIP \`198.19.0.9:9000\` →
  instance \`198.19.255.1:19001\`). The client's source address picks the path:
  198.18.1.2 goes to \`198.18.1.1:19001\` directly, 198.18.1.3 to the VIP through
  the nft \`dnat\` rule, 198.18.1.4 to the VIP through vpm. A raw-priority
  \`notrack\` rule keeps connection tracking (which DNAT needs) to the DNAT
  client's packets, so the direct and vpm paths run without it. Veth offloads
  are the kernel's defaults (TSO/GSO/GRO on); vpm's TUN has none (MTU 1500).
- Interleaving: for each repetition, every metric of a phase is measured over
  the three paths, the order of the paths rotated each time, so that other work
  on the machine hits all paths alike. Phases: bulk (iperf3 server), then
  request/response and connections (tcpbench server), then the pinned
  request/response (server, client and daemon pinned with \`taskset -c 0\`, the
  daemon with \`taskset -a -p\` and set back afterwards).
- Bulk: \`iperf3 -c DST -B SRC -t ${r.options.duration} -P 1\` (and \`-P 4\`), \`-J\`; the
  number is \`end.sum_received.bits_per_second\` (10^9 bits per Gbit).
- Request/response: \`tcpbench\` (\`scripts/bench/e2e/tcpbench.c\`, compiled with
  the system C compiler at run time): one connection, TCP_NODELAY, write
  ${r.options.messageBytes} bytes, read ${r.options.messageBytes} bytes back, repeat; every transaction's time is
  kept and the nearest-rank p50/p99 reported. Connections: \`connect\`, one
  ${r.options.messageBytes}-byte transaction, \`close\`, repeat; a connection
  counts once its response has arrived. Both after a ${r.options.warmupSec} s warm-up
  that is not counted. The server is a one-thread epoll echo server in the same
  file. Written in C rather than with node \`net\`: a node process spends about
  as long per message in its event loop as the kernel spends on the whole round
  trip, so a node client and server would measure themselves.
- Connections per second: the client reuses TIME_WAIT ports (\`tcp_tw_reuse=1\`,
  ports 1024–65535, both set inside the client namespace only).
- Noise: the machine may run other work (load average ${m.loadAvg1.toFixed(2)} at the
  start, ${r.loadAvgEnd.toFixed(2)} at the end); compare the ratios, and the
  min–max spread, rather than absolute numbers across runs.

### Machine

${machineLines(m)
  .map(([k, v]) => `- ${k}: ${v}`)
  .join('\n')}
- iperf3: ${r.tools.iperf3}; C compiler: ${r.tools.cc}; ${r.tools.nft}
- load average at the end: ${r.loadAvgEnd.toFixed(2)}; run time ${r.durationSec.toFixed(0)} s

### Reproduce

\`\`\`sh
npm run bench:e2e                          # full run (a few minutes), writes this section
npm run bench:e2e -- --quick               # smoke test, under a minute
npm run bench:e2e -- --duration 5 --reps 5 # longer, steadier numbers
npm run bench:e2e -- --json e2e.json       # also the raw results as JSON
\`\`\`
`;
}
