/**
 * `npm run bench:e2e`: vpm end to end, against the kernel and nftables.
 *
 * Builds two network namespaces (client — veth — host, see bench/e2e/topology.ts),
 * starts two `vpm up` in the host namespace (one with `tun.offloads: "off"`, one
 * with the default), and measures the same client/server pair four ways in one
 * run, interleaved: kernel direct, nftables DNAT, vpm with offloads off, and vpm.
 * Metrics: TCP bulk throughput with iperf3 (1 and 4 streams), 64-byte
 * request/response rate with p50/p99 latency (unpinned, and pinned to CPU 0),
 * connections per second; and over UDP (a UDP service on the same VIP and port),
 * the rate of 64-byte datagrams the server receives from a sender as fast as it
 * goes, with the loss, and a UDP request/response rate (udpbench.c). vpm's own
 * counters, and its TUN's tx_dropped, are read around each of its measurements.
 * Prints a table to stdout with progress on stderr, and writes the
 * "End to end" section of docs/benchmarks.md. `--json [FILE]` adds the raw
 * results, `--quick` makes it a smoke test. Everything it creates (namespaces,
 * processes, the temporary directory) is removed at the end, on failure and on
 * SIGINT/SIGTERM. Exit status: 0 done, 1 failed, 2 bad arguments.
 */

import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/base/paths.js';
import { addDelta, emptyActivity } from './bench/e2e/activity.js';
import { type E2eOptions, parseArgs, USAGE } from './bench/e2e/cli.js';
import { Lab, type Proc, run, sweepStale } from './bench/e2e/lab.js';
import {
  type E2eReport,
  isUdpMetric,
  isVpmPath,
  METRIC_SPECS,
  METRICS,
  type MetricId,
  PATH_NAMES,
  PATHS,
  type PathId,
  type Sample,
  VPM_PATHS,
  type VpmActivity,
  type VpmPathId,
} from './bench/e2e/model.js';
import { buildRows, markdownSection, ratioChartSvg, textReport } from './bench/e2e/report.js';
import {
  allowedCpus,
  buildTcpbench,
  buildTopology,
  buildUdpbench,
  commandOnPath,
  cpuSeconds,
  DAEMONS,
  pin,
  startVpm,
  TARGETS,
  TARGETS6,
  type Topology,
  tunTxDropped,
  UDP_SERVER_PORTS,
  UDP_TARGETS,
  type Vpm,
  vpmStats,
} from './bench/e2e/topology.js';
import {
  iperf,
  startEchoServer,
  startIperfServer,
  startUdpServer,
  tcpbench,
  UDP_BATCH,
  udpBlast,
  udpRr,
} from './bench/e2e/workloads.js';
import { UsageError } from './bench/errors.js';
import { readOrNull, writeAtomic } from './bench/files.js';
import { machineFacts } from './bench/machine.js';
import { spliceSection } from './bench/report.js';

const DOC = 'docs/benchmarks.md';
const CHART = 'docs/e2e-ratios.svg';
const SECTION = 'e2e';
/** Payload of one request and of one response, and of one UDP datagram. */
const MESSAGE_BYTES = 64;
/** The CPU of the pinned variant. */
const PIN_CPU = '0';

/** The phases of a run: the metrics that share one server, and whether they are pinned. */
const PHASES: readonly {
  metrics: readonly MetricId[];
  server: 'iperf' | 'echo' | 'udp';
  pinned: boolean;
}[] = [
  { metrics: ['tcp1', 'tcp4', 'tcp1v6'], server: 'iperf', pinned: false },
  { metrics: ['rr', 'crr', 'rrv6'], server: 'echo', pinned: false },
  { metrics: ['rrPinned', 'rrPinnedv6'], server: 'echo', pinned: true },
  { metrics: ['udp64', 'udpRr'], server: 'udp', pinned: false },
];

/** What must be there before anything is created; each problem says how to fix it. */
function preflight(root: string): string[] {
  const problems: string[] = [];
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  if (uid !== 0) problems.push(`must run as root (it creates network namespaces); uid is ${uid}`);
  for (const cmd of ['ip', 'iperf3', 'nft', 'taskset', 'ss']) {
    if (!commandOnPath(cmd))
      problems.push(`${cmd} not found on PATH (npm run setup installs it: scripts/setup.sh)`);
  }
  if (!commandOnPath('cc') && !commandOnPath('gcc'))
    problems.push('no C compiler (cc or gcc) on PATH: apt-get install build-essential');
  if (!existsSync(join(root, 'dist/src/cli/main.js')))
    problems.push(
      'dist/src/cli/main.js is missing: build first (npm run build:native && npm run build)',
    );
  return problems;
}

function firstLine(cmd: string, args: string[]): string {
  try {
    return run(cmd, args).split('\n')[0]?.trim() ?? cmd;
  } catch {
    return `${cmd}: unknown version`;
  }
}

/** Whether `--family` selects metric `m`. */
function selected(opts: Readonly<E2eOptions>, m: MetricId): boolean {
  return opts.families.includes(METRIC_SPECS[m].family);
}

/** Paths in the order of one round: rotated by `k`, so no path is always first. */
function rotated(k: number): PathId[] {
  return PATHS.map((_, i) => PATHS[(i + k) % PATHS.length]!);
}

interface RunState {
  opts: Readonly<E2eOptions>;
  lab: Lab;
  topo: Topology;
  root: string;
  daemons: Record<VpmPathId, Vpm>;
  bin: string;
  /** udpbench. */
  udpBin: string;
  warmup: number;
  samples: Sample[];
  /** Keyed by `${path}/${metric}`. */
  activity: Map<string, VpmActivity>;
  /** The latest `vpm stats` snapshot of each daemon, taken after its last measurement. */
  lastStats: Record<VpmPathId, Record<string, unknown> | null>;
  total: number;
}

const activityKey = (path: VpmPathId, metric: MetricId) => `${path}/${metric}`;

function summary(s: Sample): string {
  if (s.error !== undefined) return `FAILED: ${s.error.split('\n')[0]}`;
  const spec = METRIC_SPECS[s.metric];
  const v = spec.unit === 'Gbit/s' ? s.value.toFixed(2) : s.value.toFixed(0);
  const extra =
    s.p50Us !== undefined
      ? ` (p50 ${s.p50Us.toFixed(1)} µs, p99 ${s.p99Us?.toFixed(1)} µs${s.errors ? `, ${s.errors} errors` : ''})`
      : s.retransmits !== undefined
        ? ` (${s.retransmits} retransmits)`
        : s.loss !== undefined
          ? ` (${s.sent} sent, ${(100 * s.loss).toFixed(1)}% lost)`
          : '';
  const cpu =
    s.daemonCpuSec !== undefined && s.wallSec
      ? `, vpm CPU ${((100 * s.daemonCpuSec) / s.wallSec).toFixed(0)}%`
      : '';
  return `${v} ${spec.unit}${extra}${cpu}`;
}

/** One measurement of `metric` over `path`; a failure is recorded, not thrown (unless vpm died). */
async function measure(st: RunState, metric: MetricId, path: PathId, rep: number): Promise<Sample> {
  const { lab, topo, opts } = st;
  const seq = st.samples.length + 1;
  const spec = METRIC_SPECS[metric];
  process.stderr.write(
    `[${String(seq).padStart(String(st.total).length)}/${st.total}] rep ${rep}/${opts.reps}  ${spec.label}  ${PATH_NAMES[path]} ... `,
  );
  for (const d of Object.values(st.daemons))
    if (d.proc.exit !== null)
      throw new Error(`vpm (${PATH_NAMES[d.path]}) exited during the run: ${lab.describe(d.proc)}`);
  const t = isUdpMetric(metric)
    ? UDP_TARGETS[path]
    : spec.family === 6
      ? TARGETS6[path]
      : TARGETS[path];
  const vpm = isVpmPath(path) ? st.daemons[path] : null;
  // Only this path reaches its daemon, so the snapshot after its previous
  // measurement still holds before this one.
  const before = vpm ? (st.lastStats[vpm.path] ?? vpmStats(st.root, vpm.socket)) : null;
  const cpu0 = vpm ? cpuSeconds(vpm.proc.pid) : 0;
  const tunDropped0 = vpm ? tunTxDropped(lab, topo.host, DAEMONS[vpm.path].tun) : 0;
  const t0 = process.hrtime.bigint();
  const sample: Sample = { metric, path, rep, seq, value: Number.NaN, seconds: opts.duration };
  try {
    if (metric === 'tcp1' || metric === 'tcp4' || metric === 'tcp1v6') {
      const r = await iperf(lab, topo.client, t, metric === 'tcp4' ? 4 : 1, opts.duration);
      sample.value = r.gbps;
      sample.seconds = r.seconds;
      sample.retransmits = r.retransmits;
    } else if (metric === 'udp64') {
      const o = { seconds: opts.duration, warmup: st.warmup, size: MESSAGE_BYTES };
      const r = await udpBlast(lab, topo.client, st.udpBin, t, o);
      sample.value = r.rate;
      sample.seconds = r.seconds;
      sample.sent = r.sent;
      sample.received = r.received;
      sample.loss = r.loss;
    } else if (metric === 'udpRr') {
      const o = { seconds: opts.duration, warmup: st.warmup, size: MESSAGE_BYTES };
      const r = await udpRr(lab, topo.client, st.udpBin, t, o);
      sample.value = r.rate;
      sample.seconds = r.seconds;
      sample.p50Us = r.p50Us;
      sample.p99Us = r.p99Us;
      sample.errors = r.errors;
    } else {
      const mode = metric === 'crr' ? 'crr' : 'rr';
      const o = { seconds: opts.duration, warmup: st.warmup, size: MESSAGE_BYTES };
      const r = await tcpbench(
        lab,
        topo.client,
        st.bin,
        mode,
        t,
        spec.pinned ? { ...o, cpus: PIN_CPU } : o,
      );
      sample.value = r.rate;
      sample.seconds = r.seconds;
      sample.p50Us = r.p50Us;
      sample.p99Us = r.p99Us;
      sample.errors = r.errors;
    }
  } catch (e) {
    sample.error = (e as Error).message;
  }
  if (vpm && before) {
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = cpuSeconds(vpm.proc.pid) - cpu0;
    sample.daemonCpuSec = cpu;
    sample.wallSec = wall;
    const after = vpmStats(st.root, vpm.socket);
    st.lastStats[vpm.path] = after;
    const tunDropped = tunTxDropped(lab, topo.host, DAEMONS[vpm.path].tun) - tunDropped0;
    addDelta(st.activity.get(activityKey(vpm.path, metric))!, before, after, wall, cpu, tunDropped);
  }
  process.stderr.write(`${summary(sample)}\n`);
  st.samples.push(sample);
  return sample;
}

async function runPhases(st: RunState): Promise<void> {
  const { lab, topo } = st;
  const daemons = Object.values(st.daemons);
  const allCpus = allowedCpus();
  for (const all of PHASES) {
    const metrics = all.metrics.filter((m) => selected(st.opts, m));
    if (metrics.length === 0) continue;
    const phase = { ...all, metrics };
    let server: Proc | null = null;
    try {
      const cpus = phase.pinned ? PIN_CPU : undefined;
      server =
        phase.server === 'iperf'
          ? await startIperfServer(lab, topo.host)
          : phase.server === 'udp'
            ? await startUdpServer(lab, topo.host, st.udpBin, UDP_SERVER_PORTS)
            : await startEchoServer(lab, topo.host, st.bin);
      if (cpus) {
        pin(server.pid, cpus);
        for (const d of daemons) pin(d.proc.pid, cpus);
      }
      for (let rep = 1; rep <= st.opts.reps; rep++) {
        for (const [mi, metric] of phase.metrics.entries()) {
          for (const path of rotated(rep - 1 + mi)) await measure(st, metric, path, rep);
        }
      }
    } finally {
      if (phase.pinned) for (const d of daemons) if (d.proc.exit === null) pin(d.proc.pid, allCpus);
      if (server) await lab.stop(server);
    }
  }
}

async function main(argv: readonly string[]): Promise<number> {
  let opts: Readonly<E2eOptions>;
  try {
    opts = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`bench:e2e: ${e.message}\n(run with --help for the options)\n`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const root = packageRoot();
  const problems = preflight(root);
  if (problems.length > 0) {
    process.stderr.write(`bench:e2e: cannot run:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
    return 1;
  }
  const machine = machineFacts();
  const t0 = process.hrtime.bigint();
  const warmup = opts.quick ? 0.2 : 0.3;
  const metricsRun = METRICS.filter((m) => selected(opts, m));
  const total = metricsRun.length * PATHS.length * opts.reps;
  process.stderr.write(
    `bench:e2e: ${total} measurements, ${opts.quick ? 'quick' : 'full'} mode (${opts.reps} × ${opts.duration} s per metric and path)\n`,
  );
  for (const gone of sweepStale()) process.stderr.write(`bench:e2e: removed stale ${gone}\n`);

  const lab = new Lab();
  let st: RunState | null = null;
  const vpmStatsEnd: Record<VpmPathId, Record<string, unknown> | null> = {
    vpm: null,
    vpmOff: null,
  };
  let cc = '';
  let failure: Error | null = null;
  try {
    process.stderr.write(`bench:e2e: namespaces ${lab.id}-{client,host}\n`);
    const topo = buildTopology(lab);
    const built = buildTcpbench(lab, root);
    const udpBuilt = buildUdpbench(lab, root);
    cc = built.cc;
    const daemons = {} as Record<VpmPathId, Vpm>;
    for (const path of VPM_PATHS) {
      daemons[path] = await startVpm(lab, topo, root, path);
      process.stderr.write(
        `bench:e2e: vpm up for "${PATH_NAMES[path]}" (pid ${daemons[path].proc.pid})\n`,
      );
    }
    st = {
      opts,
      lab,
      topo,
      root,
      daemons,
      bin: built.bin,
      udpBin: udpBuilt.bin,
      warmup,
      samples: [],
      activity: new Map(
        VPM_PATHS.flatMap((p) => metricsRun.map((m) => [activityKey(p, m), emptyActivity(m, p)])),
      ),
      lastStats: { vpm: null, vpmOff: null },
      total,
    };
    await runPhases(st);
    for (const path of VPM_PATHS) {
      const d = daemons[path];
      vpmStatsEnd[path] = vpmStats(root, d.socket);
      const exit = await lab.stop(d.proc, 'SIGTERM', 10_000);
      if (exit.code !== 0)
        throw new Error(
          `vpm (${PATH_NAMES[path]}) did not stop cleanly (${exit.code ?? exit.signal}): ${lab.describe(d.proc)}`,
        );
    }
  } catch (e) {
    failure = e as Error;
  } finally {
    try {
      await lab.cleanup();
    } catch (e) {
      process.stderr.write(`bench:e2e: ${(e as Error).message}\n`);
      failure ??= e as Error;
    }
  }
  if (failure !== null || st === null) {
    process.stderr.write(
      `\nbench:e2e: failed: ${failure?.stack ?? failure?.message ?? 'unknown'}\n`,
    );
    return 1;
  }

  const report: E2eReport = {
    schema: 'vpm-bench-e2e/3',
    mode: opts.quick ? 'quick' : 'full',
    options: {
      duration: opts.duration,
      reps: opts.reps,
      warmupSec: warmup,
      messageBytes: MESSAGE_BYTES,
      udpBatch: UDP_BATCH,
      families: [...opts.families],
    },
    machine,
    tools: {
      iperf3: firstLine('iperf3', ['--version']),
      cc,
      nft: firstLine('nft', ['--version']),
    },
    loadAvgEnd: os.loadavg()[0] ?? 0,
    rows: buildRows(st.samples),
    samples: st.samples,
    vpmActivity: VPM_PATHS.flatMap((p) =>
      metricsRun.map((m) => st.activity.get(activityKey(p, m))!),
    ),
    vpmStatsEnd,
    vpmConfig: { vpm: st.daemons.vpm.config, vpmOff: st.daemons.vpmOff.config },
    durationSec: Number(process.hrtime.bigint() - t0) / 1e9,
  };

  const jsonToStdout = opts.json === '-';
  (jsonToStdout ? process.stderr : process.stdout).write(`\n${textReport(report)}`);
  let status = st.samples.some((s) => s.error !== undefined) ? 1 : 0;
  if (opts.json !== null) {
    const text = `${JSON.stringify(report, null, 2)}\n`;
    if (jsonToStdout) process.stdout.write(text);
    else {
      try {
        writeFileSync(opts.json, text);
        process.stderr.write(`bench:e2e: wrote ${opts.json}\n`);
      } catch (e) {
        process.stderr.write(`bench:e2e: cannot write ${opts.json}: ${(e as Error).message}\n`);
        status = 1;
      }
    }
  }
  const docPath = join(root, DOC);
  try {
    writeAtomic(docPath, spliceSection(readOrNull(docPath), SECTION, markdownSection(report)));
    writeAtomic(join(root, CHART), ratioChartSvg(report));
  } catch (e) {
    process.stderr.write(`bench:e2e: cannot update ${docPath}: ${(e as Error).message}\n`);
    return 1;
  }
  process.stderr.write(`bench:e2e: wrote ${DOC} (section "${SECTION}") and ${CHART}\n`);
  if (status !== 0) process.stderr.write('bench:e2e: some measurements failed (see "problems")\n');
  return status;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(
      `bench:e2e: failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`,
    );
    process.exitCode = 1;
  },
);
