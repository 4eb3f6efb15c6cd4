/**
 * Turns the end-to-end results into an aligned text report for the terminal and
 * the "End to end" section of docs/benchmarks.md (written through the shared
 * `spliceSection`, which leaves the other suites' sections alone).
 */

import { fmt3, fmtRatio } from '../common.js';
import { machineLines } from '../machine.js';
import { mdTable, textTable } from '../report.js';
import { barChartSvg } from '../svg.js';
import {
  type Cell,
  type E2eReport,
  METRIC_SPECS,
  METRICS,
  type MetricId,
  PATH_NAMES,
  PATHS,
  type PathId,
  type Row,
  type Sample,
  type Stats,
  stats,
  VPM_PATHS,
  type VpmActivity,
} from './model.js';

/** The offloads issue's numbers (same machine type, 2 vCPU, one run of its own), for scale. */
export const REFERENCE = Object.freeze({
  dnatGbps: 34.6,
  vpmBeforeGbps: 2.48,
  cRewriterGbps: 2.9,
  cRewriterVnetGbps: 22.2,
  dnatPinnedTps: 111_000,
  vpmBeforePinnedTps: 37_200,
  dnatCps: 18_000,
  vpmBeforeCps: 9_780,
  /** The UDP issue: a C TUN rewriter, one packet per read(), 64 B datagrams, over DNAT. */
  cRewriterUdp64OverDnat: 0.77,
});

/** The offloads and UDP issues' goals: vpm (offloads on) over nftables DNAT in the same run. */
export const GOALS: readonly { metric: MetricId; ratio: number; label: string }[] = [
  { metric: 'tcp1', ratio: 0.6, label: 'TCP 1 stream' },
  { metric: 'tcp4', ratio: 0.5, label: 'TCP 4 streams' },
  { metric: 'rrPinned', ratio: 0.55, label: '64 B request/response, pinned' },
  { metric: 'crr', ratio: 0.7, label: 'connections/s' },
  { metric: 'udp64', ratio: 0.6, label: '64 B UDP datagrams' },
];

/** IPv6 goal (issue 12): vpm's ratio to DNAT over IPv6 within 10 % of its ratio over IPv4. */
export const V6_WITHIN = 0.1;

/** A row per metric that has samples, in METRICS order. */
export function buildRows(samples: readonly Sample[]): Row[] {
  const measured = new Set(samples.map((s) => s.metric));
  return METRICS.filter((m) => measured.has(m)).map((metric) => {
    const cells = {} as Record<PathId, Cell>;
    for (const path of PATHS) {
      const s = samples.filter((x) => x.metric === metric && x.path === path);
      const opt = (k: 'p50Us' | 'p99Us' | 'retransmits' | 'loss'): Stats | undefined =>
        s.some((x) => x[k] !== undefined) ? stats(s.map((x) => x[k] ?? Number.NaN)) : undefined;
      const cell: Cell = {
        value: stats(s.map((x) => x.value)),
        errors: s.reduce((a, x) => a + (x.errors ?? 0), 0),
        failures: s.filter((x) => x.error !== undefined).length,
      };
      const p50 = opt('p50Us');
      const p99 = opt('p99Us');
      const rtx = opt('retransmits');
      const loss = opt('loss');
      if (p50) cell.p50Us = p50;
      if (p99) cell.p99Us = p99;
      if (rtx) cell.retransmits = rtx;
      if (loss) cell.loss = loss;
      cells[path] = cell;
    }
    const dnat = cells.dnat.value.median;
    const overDnat = {} as Record<PathId, number>;
    for (const p of PATHS) overDnat[p] = cells[p].value.median / dnat;
    return { metric, cells, dnatOverDirect: dnat / cells.direct.value.median, overDnat };
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

function lossCell(c: Cell): string {
  if (!c.loss || c.loss.n === 0) return 'n/a';
  return fmtStats(c.loss, fmtPct);
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
  ...VPM_PATHS.map((p) => `${PATH_NAMES[p]} / DNAT`),
];
const ALIGN: ('l' | 'r')[] = ['l', 'l', ...PATHS.map(() => 'r' as const), 'r', 'r', 'r'];

function tableRows(rows: readonly Row[]): string[][] {
  const out: string[][] = [];
  for (const r of rows) {
    const spec = METRIC_SPECS[r.metric];
    out.push([
      spec.label,
      spec.unit,
      ...PATHS.map((p) => fmtStats(r.cells[p].value, (x) => fmtValue(r.metric, x))),
      fmtRatio(r.dnatOverDirect),
      ...VPM_PATHS.map((p) => fmtRatio(r.overDnat[p])),
    ]);
    if (r.metric === 'udp64') {
      out.push([
        '  loss (sent, not received)',
        '%',
        ...PATHS.map((p) => lossCell(r.cells[p])),
        '',
        ...VPM_PATHS.map(() => ''),
      ]);
    }
    if (spec.latency) {
      out.push([
        '  latency p50 / p99',
        'µs',
        ...PATHS.map((p) => latencyCell(r.cells[p])),
        '',
        ...VPM_PATHS.map(() => ''),
      ]);
    }
  }
  return out;
}

function row(rows: readonly Row[], m: MetricId): Row | undefined {
  return rows.find((r) => r.metric === m);
}

/** One line per goal of the issue, met or not by this run. */
function goalLines(rows: readonly Row[]): string[] {
  const verdict = (ok: boolean) => (ok ? 'met' : 'NOT met');
  const lines = GOALS.filter((g) => row(rows, g.metric) !== undefined).map((g) => {
    const r = row(rows, g.metric);
    const x = r?.overDnat.vpm ?? Number.NaN;
    let line = `vpm / DNAT, ${g.label} ≥ ${g.ratio}×: ${verdict(x >= g.ratio)} (${fmtRatio(x)})`;
    if (g.metric === 'rrPinned') {
      const off = r?.overDnat.vpmOff ?? Number.NaN;
      line += `; not below vpm with offloads off (${fmtRatio(off)}): ${verdict(x >= off)}`;
    }
    return line;
  });
  for (const r6 of rows) {
    const twin = METRIC_SPECS[r6.metric].v4;
    const r4 = twin === undefined ? undefined : row(rows, twin);
    if (twin === undefined || r4 === undefined) continue;
    const x6 = r6.overDnat.vpm;
    const x4 = r4.overDnat.vpm;
    const rel = x6 / x4;
    lines.push(
      `vpm / DNAT over IPv6 within ${V6_WITHIN * 100} % of IPv4, ${METRIC_SPECS[twin].short}: ${verdict(
        Math.abs(rel - 1) <= V6_WITHIN,
      )} (IPv6 ${fmtRatio(x6)}, IPv4 ${fmtRatio(x4)}: ${Number.isFinite(rel) ? rel.toFixed(2) : 'n/a'} of it)`,
    );
  }
  return lines;
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
    for (const p of PATHS as readonly PathId[])
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
  if (!Number.isFinite(f)) return 'n/a';
  const p = f * 100;
  if (p > 0 && p < 0.01) return '<0.01%';
  return `${p >= 10 ? p.toFixed(0) : p >= 1 ? p.toFixed(1) : p.toFixed(2)}%`;
}

function dropsText(a: VpmActivity): string {
  const parts = Object.entries(a.drops).map(([k, n]) => `${k} ${n}`);
  if (a.writeQueueFull > 0) parts.push(`TUN queue full ${a.writeQueueFull}`);
  if (a.tunQueueDrops > 0) parts.push(`not read, TUN queue full ${a.tunQueueDrops}`);
  return parts.length > 0 ? parts.join(', ') : '0';
}

const ACT_HEAD = [
  'workload',
  'path',
  'packets',
  'segments/packet',
  'packets/batch',
  'batch sizes (share of batches)',
  'daemon CPU',
  'CPU/packet',
  'CPU/GB',
  'drops',
];
const ACT_ALIGN: ('l' | 'r')[] = ['l', 'l', 'r', 'r', 'r', 'l', 'r', 'r', 'r', 'l'];

/** Wire segments per packet read: super-packets stand for several, the rest for one. */
function segmentsPerPacket(a: VpmActivity): number {
  if (a.packetsIn === 0) return Number.NaN;
  return (a.packetsIn - a.superPacketsIn + a.segmentsIn) / a.packetsIn;
}

function activityRows(acts: readonly VpmActivity[]): string[][] {
  return acts.map((a) => [
    METRIC_SPECS[a.metric].label,
    PATH_NAMES[a.path],
    fmtRate(a.packetsIn),
    fmt3(segmentsPerPacket(a)),
    a.batches > 0 ? fmt3(a.packetsIn / a.batches) : 'n/a',
    histogramText(a),
    a.wallSec > 0 ? `${(100 * (a.cpuSec / a.wallSec)).toFixed(0)}%` : 'n/a',
    a.packetsIn > 0 ? `${fmt3((a.cpuSec / a.packetsIn) * 1e6)} µs` : 'n/a',
    a.bytesIn > 0 ? `${fmt3(a.cpuSec / (a.bytesIn / 1e9))} s` : 'n/a',
    dropsText(a),
  ]);
}

function endStatsLines(r: E2eReport): string[] {
  return VPM_PATHS.map((path) => {
    const s = r.vpmStatsEnd[path];
    if (!s) return `${PATH_NAMES[path]}: stats at the end not available.`;
    const n = (k: string) => (typeof s[k] === 'number' ? (s[k] as number) : Number.NaN);
    const tun = (s.tun ?? {}) as Record<string, unknown>;
    const offloads = Array.isArray(tun.offloads) ? (tun.offloads as string[]).join(', ') : 'none';
    return (
      `${PATH_NAMES[path]} (offloads: ${offloads || 'none'}), stats at the end of the run: ` +
      `${n('packetsIn')} packets in, ${n('packetsOut')} out, ` +
      `${n('dropsTotal')} dropped, ${n('batches')} batches (${fmt3(n('packetsIn') / n('batches'))} packets/batch), ` +
      `${n('flowsCreated')} flows created, ${n('flowsRefused')} refused, ${n('rstSent')} RSTs sent.`
    );
  });
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
    ...endStatsLines(r),
  ];
  const problems = problemLines(r);
  if (problems.length > 0) lines.push('', 'problems:', ...problems.map((p) => `  ${p}`));
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------
// Markdown section (docs/benchmarks.md)

function referenceTable(rows: readonly Row[]): string {
  const v = (m: MetricId, p: PathId) => row(rows, m)?.cells[p].value.median ?? Number.NaN;
  const q = (m: MetricId, p: PathId) => row(rows, m)?.overDnat[p] ?? Number.NaN;
  const head = ['measurement', 'the issue', 'this run'];
  const body = [
    [
      'one TCP stream, nftables DNAT',
      `${fmt3(REFERENCE.dnatGbps)} Gbit/s`,
      `${fmt3(v('tcp1', 'dnat'))} Gbit/s`,
    ],
    [
      'one TCP stream, vpm without offloads',
      `${fmt3(REFERENCE.vpmBeforeGbps)} Gbit/s (${fmtRatio(REFERENCE.vpmBeforeGbps / REFERENCE.dnatGbps)} DNAT)`,
      `${fmt3(v('tcp1', 'vpmOff'))} Gbit/s (${fmtRatio(q('tcp1', 'vpmOff'))} DNAT)`,
    ],
    [
      'one TCP stream, C TUN rewriter, one read()/write() per packet',
      `${fmt3(REFERENCE.cRewriterGbps)} Gbit/s`,
      '',
    ],
    [
      'one TCP stream, the same C rewriter with IFF_VNET_HDR and TSO',
      `${fmt3(REFERENCE.cRewriterVnetGbps)} Gbit/s (${fmtRatio(REFERENCE.cRewriterVnetGbps / REFERENCE.dnatGbps)} DNAT)`,
      `vpm: ${fmt3(v('tcp1', 'vpm'))} Gbit/s (${fmtRatio(q('tcp1', 'vpm'))} DNAT)`,
    ],
    [
      '64 B request/response pinned, DNAT',
      `${fmtRate(REFERENCE.dnatPinnedTps)} transactions/s`,
      `${fmtRate(v('rrPinned', 'dnat'))} transactions/s`,
    ],
    [
      '64 B request/response pinned, vpm',
      `${fmtRate(REFERENCE.vpmBeforePinnedTps)} transactions/s (${fmtRatio(REFERENCE.vpmBeforePinnedTps / REFERENCE.dnatPinnedTps)} DNAT), before offloads`,
      `${fmtRate(v('rrPinned', 'vpm'))} transactions/s (${fmtRatio(q('rrPinned', 'vpm'))} DNAT)`,
    ],
    [
      'connections/s, vpm',
      `${fmtRate(REFERENCE.vpmBeforeCps)} (${fmtRatio(REFERENCE.vpmBeforeCps / REFERENCE.dnatCps)} DNAT), before offloads`,
      `${fmtRate(v('crr', 'vpm'))} (${fmtRatio(q('crr', 'vpm'))} DNAT)`,
    ],
    [
      '64 B UDP datagrams, C TUN rewriter, one packet per read()',
      `${fmtRatio(REFERENCE.cRewriterUdp64OverDnat)} DNAT (the UDP issue)`,
      `vpm: ${fmtRate(v('udp64', 'vpm'))} datagrams/s (${fmtRatio(q('udp64', 'vpm'))} DNAT)`,
    ],
  ];
  return mdTable(head, body, ['l', 'l', 'l']);
}

/** A few sentences derived from this run's numbers, to help read the tables. */
function readingNotes(r: E2eReport): string {
  const notes: string[] = [];
  const act = (path: 'vpm' | 'vpmOff', m: MetricId) =>
    r.vpmActivity.find((a) => a.path === path && a.metric === m);
  const rr = row(r.rows, 'rrPinned');
  if (rr) {
    const d = rr.cells.dnat.p50Us?.median;
    const v = rr.cells.vpm.p50Us?.median;
    if (d !== undefined && v !== undefined && Number.isFinite(d) && Number.isFinite(v))
      notes.push(
        `- Pinned to one CPU, a 64-byte round trip takes ${fmt3(d)} µs (median) through ` +
          `nftables DNAT and ${fmt3(v)} µs through vpm. vpm reads and writes two packets per ` +
          `transaction (the request and the response), so it adds about ${fmt3((v - d) / 2)} µs ` +
          `per packet on that CPU, its wake-ups and context switches included.`,
      );
  }
  const on = act('vpm', 'tcp1');
  const off = act('vpmOff', 'tcp1');
  if (on && off && on.packetsIn > 0 && off.packetsIn > 0 && on.bytesIn > 0 && off.bytesIn > 0) {
    notes.push(
      `- One bulk stream: with offloads each packet vpm read stood for ` +
        `${fmt3(segmentsPerPacket(on))} wire segments (super-packets of up to 64 KiB, rewritten ` +
        `once), against 1 without; the daemon spent ${fmt3(on.cpuSec / (on.bytesIn / 1e9))} ` +
        `CPU-seconds per GB with offloads and ${fmt3(off.cpuSec / (off.bytesIn / 1e9))} without ` +
        `(its CPU time includes the kernel's work inside its read() and write() calls: a ` +
        `packet written to the TUN is routed and delivered in the writer's context).`,
    );
  }
  const rrRow = row(r.rows, 'rr');
  const spread = rrRow
    ? (PATHS as readonly PathId[]).filter((p) => {
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
  const udp = row(r.rows, 'udp64');
  const udpAct = act('vpm', 'udp64');
  if (udp && udpAct && udpAct.batches > 0) {
    const loss = (p: PathId) => udp.cells[p].loss?.median ?? Number.NaN;
    notes.push(
      `- 64-byte datagrams, as fast as one sender goes: the server received ` +
        `${fmtRate(udp.cells.dnat.value.median)}/s through nftables DNAT ` +
        `(${fmtPct(loss('dnat'))} of what was sent lost on the way) and ` +
        `${fmtRate(udp.cells.vpm.value.median)}/s through vpm (${fmtPct(loss('vpm'))} lost); ` +
        `vpm read ${fmt3(udpAct.packetsIn / udpAct.batches)} packets per batch there (a ` +
        `wake-up's cost shared by a batch, unlike request/response); the kernel dropped ` +
        `${fmtRate(udpAct.tunQueueDrops)} datagrams in the TUN's queue before vpm could read ` +
        `them, and vpm's own drops were: ${dropsText({ ...udpAct, tunQueueDrops: 0 })}.`,
    );
  }
  const rrAct = act('vpm', 'rr');
  if (rrAct && rrAct.batches > 0)
    notes.push(
      `- Request/response traffic arrives one packet at a time ` +
        `(${fmt3(rrAct.packetsIn / rrAct.batches)} packets per batch): there neither batching ` +
        `nor offloads can help, and the cost per wake-up of the daemon sets the rate ` +
        `(its breakdown: "Where a small packet's time goes", below).`,
    );
  // IPv6 against IPv4: vpm's own cost per packet, apart from the baseline's.
  for (const m6 of METRICS) {
    const twin = METRIC_SPECS[m6].v4;
    const a6 = act('vpm', m6);
    const a4 = twin === undefined ? undefined : act('vpm', twin);
    const r6 = row(r.rows, m6);
    const r4 = twin === undefined ? undefined : row(r.rows, twin);
    if (!a6 || !a4 || !r6 || !r4 || a6.packetsIn === 0 || a4.packetsIn === 0) continue;
    const cpu6 = (1e6 * a6.cpuSec) / a6.packetsIn;
    const cpu4 = (1e6 * a4.cpuSec) / a4.packetsIn;
    notes.push(
      `- ${METRIC_SPECS[m6].short} against IPv4: vpm ${fmtValue(m6, r6.cells.vpm.value.median)} ` +
        `over IPv6 and ${fmtValue(twin!, r4.cells.vpm.value.median)} over IPv4, nftables DNAT ` +
        `${fmtValue(m6, r6.cells.dnat.value.median)} and ${fmtValue(twin!, r4.cells.dnat.value.median)}; ` +
        `vpm's CPU per packet ${fmt3(cpu6)} µs over IPv6, ${fmt3(cpu4)} µs over IPv4 ` +
        `(${fmtPct(cpu6 / cpu4 - 1)} more).`,
    );
  }
  return notes.join('\n');
}

export function markdownSection(r: E2eReport): string {
  const m = r.machine;
  const quick = r.mode === 'quick' ? ' **Quick mode: a smoke test, not numbers to quote.**' : '';
  const problems = problemLines(r);
  return `## End to end: kernel direct, nftables DNAT and vpm

<!-- Generated by scripts/bench-e2e.ts (\`npm run bench:e2e\`): edits between the bench:e2e markers are overwritten. -->

One client and one server in two network namespaces, the same pair measured four
ways in one run, over TCP and over UDP: *kernel direct* (the client connects to the server's own address
and port), *nftables DNAT* (the client connects to the virtual service
${'`198.19.0.9:9000`'}, rewritten by an nft \`dnat\` rule in prerouting), *vpm*
(the same virtual service through \`vpm up\` and its TUN, offloads on: the
default \`tun.offloads: "auto"\`) and *vpm, offloads off* (a second daemon with
\`tun.offloads: "off"\` on its own TUN, serving ${'`198.19.0.10:9000`'}). The rows
marked IPv6 (\`--family 6\`) are the same four paths over IPv6: the services'
second addresses ${'`[2001:2:0:9::9]:9000`'} and ${'`[2001:2:0:9::10]:9000`'}, DNAT in an
nft \`table ip6\`. The
ratios the goals speak of are those to DNAT, in the last two columns. Measured
${m.date.slice(0, 10)} on ${m.cpuModel} (${m.cores} cores), Node ${m.node},
${m.kernel}; ${r.mode} mode: median of ${r.options.reps} repetition(s) of
${r.options.duration} s per cell, (min–max) over the repetitions; the ratios
divide medians.${quick}

${mdTable(HEAD, tableRows(r.rows), ALIGN)}

![vpm and kernel direct relative to nftables DNAT, per workload](e2e-ratios.svg)

${goalLines(r.rows)
  .map((l) => `- Goal, ${l}.`)
  .join('\n')}
${problems.length > 0 ? `\nProblems in this run:\n\n${problems.map((p) => `- ${p}`).join('\n')}\n` : ''}
### Reference numbers from the issue, for scale

Measured by the offloads issue on this machine type (2 vCPU), in one run of its
own, partly with other tools; not by this script. The C TUN rewriter is a
prototype doing one \`read()\`/\`write()\` per packet, without and with virtio-net
headers and TSO: the closest thing to vpm's data path.

${referenceTable(r.rows)}

### What vpm did

Each daemon's own counters (\`vpm stats --json\` before and after each of its
measurements, summed per workload), and the CPU time of the daemon process over
the same measurements (from \`/proc/PID/stat\`, user + system, all threads; 100% is one
CPU; the span is the client's whole run, its start-up and warm-up included, so
short runs understate it). Packets are those read from the TUN, both
directions; with offloads a super-packet counts once and stands for several wire
segments (\`segments/packet\`). CPU/GB is the daemon's CPU-seconds per 10^9
bytes it read. The daemon's system time can include kernel work done inside its
\`write()\` calls: a packet written to the TUN is passed up the stack (routing,
TCP, the server's socket) in the writer's context.

${mdTable(ACT_HEAD, activityRows(r.vpmActivity), ACT_ALIGN)}

${endStatsLines(r)
  .map((l) => `- ${l}`)
  .join('\n')}

${readingNotes(r)}

### Method

- Topology: namespace *client* — veth — namespace *host*. The host runs the
  server (on \`0.0.0.0:19001\`), the nft rules and two \`vpm up\` (each
  configured like \`docs/examples/two-tenants.json\`, with \`limits.maxFlows\`
  131072 and the control socket in the run's temporary directory). vpm: TUN
  vpm0, VIP \`198.19.0.9:9000\` → instance \`198.19.255.1:19001\`, default
  offloads (the TUN with virtio-net headers; the kernel accepted the TUN_F_*
  mask the stats line above names). vpm, offloads off: TUN vpm1, VIP
  \`198.19.0.10:9000\` → \`198.19.254.1:19001\`, route table and rule priority
  101. The client's source address picks the path: 198.18.1.2 goes to
  \`198.18.1.1:19001\` directly, 198.18.1.3 to the VIP through the nft \`dnat\`
  rule, 198.18.1.4 through vpm with offloads off, 198.18.1.5 through vpm. A
  raw-priority \`notrack\` rule keeps connection tracking (which DNAT needs) to
  the DNAT client's packets, so the direct and vpm paths run without it. Veth
  offloads are the kernel's defaults (TSO/GSO/GRO on); both TUNs have MTU 1500.
- Interleaving: for each repetition, every metric of a phase is measured over
  the four paths, the order of the paths rotated each time, so that other work
  on the machine hits all paths alike. Phases: bulk (iperf3 server), then
  request/response and connections (tcpbench server), then the pinned
  request/response (server, client and both daemons pinned with \`taskset -c
  0\`, the daemons with \`taskset -a -p\` and set back afterwards).
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
- UDP: each daemon also has a UDP service on its VIP and port 9000 (next to the
  TCP one), served by an instance on a port of its own (\`198.19.255.1:19011\`,
  \`198.19.254.1:19012\`); direct and DNAT (an nft \`udp dport\` \`dnat\` rule) go to
  \`198.18.1.1:19100\`. Separate ports because vpm steers every UDP datagram the
  host sends from an instance port into its TUN, whatever its source address.
  The load is \`udpbench\` (\`scripts/bench/e2e/udpbench.c\`, compiled at run time
  like tcpbench), one server process on the three ports.
- 64-byte UDP datagrams: one connected socket sends ${r.options.messageBytes}-byte datagrams (UDP
  payload; 92-byte IP packets) as fast as it can, ${r.options.udpBatch} per \`sendmmsg()\`, for
  ${r.options.warmupSec} s not counted and then ${r.options.duration} s; after 0.3 s for what is still
  on its way it asks the server (a query datagram over the same path, retried)
  how many of the measured ones it received. The rate is that count over the
  sending time; the loss is the share of the datagrams sent that the server did
  not receive. The sending CPU also does the kernel's receive work for what it
  sends (a veth hands each packet to the backlog of the CPU that sent it): for
  kernel direct and DNAT that is the whole path to the server's socket, so there
  sender and path share one CPU and little is lost: the rate is what one CPU
  sends and forwards. Through vpm that CPU's part ends at the TUN's queue and the
  daemon forwards on the other CPU; what it cannot keep up with is dropped in the
  TUN's queue, before vpm reads it (the TUN's \`tx_dropped\`, read around each vpm
  measurement: "not read, TUN queue full" in the drops column above): the loss.
  Batching the sends keeps the sender's own share of its CPU small.
- UDP request/response: one socket, one ${r.options.messageBytes}-byte request outstanding, echoed
  by the server; every transaction's time is kept (p50/p99 as for TCP). A
  request without an answer within 50 ms counts as a failed transaction (and
  costs those 50 ms); late answers are told apart by a sequence number.
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

/** docs/e2e-ratios.svg: every path over nftables DNAT, per workload, with the goals. */
export function ratioChartSvg(r: E2eReport): string {
  const paths: PathId[] = ['direct', 'vpmOff', 'vpm'];
  const colors: Record<string, string> = { direct: '#7f8c8d', vpmOff: '#e59866', vpm: '#1f618d' };
  const m = r.machine;
  return barChartSvg({
    title: 'End to end, relative to nftables DNAT (1.0 = as fast as the kernel NAT)',
    subtitle: `${m.date.slice(0, 10)} · ${m.cpuModel} (${m.cores} cores) · ${m.kernel} · median of ${r.options.reps} × ${r.options.duration} s, ${r.mode} mode`,
    yLabel: 'throughput / rate over nftables DNAT',
    categories: r.rows.map((row) => METRIC_SPECS[row.metric].short),
    series: paths.map((p) => ({
      label: PATH_NAMES[p],
      color: colors[p]!,
      values: r.rows.map((row) => {
        const d = row.cells.dnat.value.median;
        const v = row.cells[p].value;
        return { y: v.median / d, lo: v.min / d, hi: v.max / d };
      }),
    })),
    reference: { y: 1, label: 'nftables DNAT' },
    marks: {
      label: 'goal for vpm',
      values: r.rows.map((row) => GOALS.find((g) => g.metric === row.metric)?.ratio ?? Number.NaN),
    },
    footnote:
      'npm run bench:e2e (scripts/bench-e2e.ts); the table in docs/benchmarks.md has the numbers',
  });
}
