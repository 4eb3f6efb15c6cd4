/**
 * `npm run bench:wakeup`: where a 64-byte request/response spends its time
 * through vpm.
 *
 * In a request/response exchange every packet wakes the daemon on its own (one
 * packet per batch), so neither batching nor offloads help and the cost of one
 * wake-up sets the rate. This script measures that cost and splits it, on the
 * same topology as `npm run bench:e2e` (bench/e2e/topology.ts), with client,
 * server and daemon pinned to CPU 0:
 *
 *  1. rate and CPU: tcpbench rr through vpm; the daemon's CPU time over the run
 *     (/proc/PID/stat, user + system) divided by the transactions: µs per
 *     transaction, and the same through nftables DNAT for scale;
 *  2. system calls: `perf trace -s -p PID` over a second run: epoll_pwait, read
 *     (and how many found the queue empty, EAGAIN) and write per transaction;
 *  3. where the CPU goes: `perf record -g` (cpu-clock sampling) over a third run,
 *     the daemon started with --perf-basic-prof so JIT frames have names; every
 *     sample is put in one bucket by its call stack (the innermost of: inside
 *     vpm_tun_write_batch → write(); inside vpm_tun_read_burst → read(); inside
 *     epoll_pwait → waiting; a JS frame → the pipeline in JS; on_poll, the
 *     addon's entry points, napi_* or Node/V8 → the N-API crossing and Node's
 *     callback machinery; anything else → other), and the shares times the µs
 *     per transaction of run 1 give the breakdown;
 *  4. the EAGAIN read alone: bench/wakeup/tunread.c calls read() a million
 *     times on an empty TUN and reports ns per call.
 *
 * Runs for both vpm daemons of the e2e topology (offloads on and off). Prints a
 * table and writes the "wakeup" section of docs/benchmarks.md. Needs root and
 * perf (Debian's linux-perf; scripts/setup.sh installs it). Run it alone on a
 * quiet machine. Exit status: 0 done, 1 failed, 2 bad arguments.
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/base/paths.js';
import { fmt3 } from './bench/common.js';
import { Lab, run, sweepStale } from './bench/e2e/lab.js';
import { PATH_NAMES, type PathId, VPM_PATHS, type VpmPathId } from './bench/e2e/model.js';
import {
  buildTcpbench,
  buildTopology,
  commandOnPath,
  cpuSeconds,
  pin,
  startVpm,
  TARGETS,
  type Topology,
  type Vpm,
} from './bench/e2e/topology.js';
import { startEchoServer, tcpbench } from './bench/e2e/workloads.js';
import { readOrNull, writeAtomic } from './bench/files.js';
import { type MachineFacts, machineFacts, machineLines } from './bench/machine.js';
import { mdTable, spliceSection, textTable } from './bench/report.js';

const DOC = 'docs/benchmarks.md';
const SECTION = 'wakeup';
const CPU = '0';
const SIZE = 64;

const BUCKETS = ['wait', 'read', 'write', 'napi', 'js', 'other'] as const;
type Bucket = (typeof BUCKETS)[number];
const BUCKET_NAMES: Record<Bucket, string> = {
  wait: 'epoll_pwait: waiting, and the context switches into and out of it',
  read: 'read(): the packet, and the one that finds the queue empty (EAGAIN)',
  write:
    'write(): the kernel passes the packet on in the writer’s context (routing, TCP, the socket)',
  napi: 'the N-API crossing and Node’s callback machinery (napi_*, make_callback, async hooks, microtasks)',
  js: 'the pipeline in JS (parse, lookup, rewrite, counters)',
  other: 'other (libuv loop, timers, GC)',
};

interface Options {
  seconds: number;
  json: string | null;
}

interface PathResult {
  path: VpmPathId;
  rate: number;
  p50Us: number;
  cpuPerTxUs: number;
  syscallsPerTx: { epoll: number; read: number; readEagain: number; write: number };
  samples: number;
  shares: Record<Bucket, number>;
}

interface Report {
  schema: 'vpm-bench-wakeup/1';
  machine: MachineFacts;
  seconds: number;
  dnat: { rate: number; p50Us: number };
  eagainNs: { vnetHdr: number; plain: number };
  paths: PathResult[];
  durationSec: number;
}

function parseArgs(argv: readonly string[]): Options {
  let seconds = 5;
  let json: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--seconds') {
      const v = argv[++i];
      if (!v || !/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 60)
        throw new Error(`--seconds needs an integer 1..60, got "${v ?? ''}"`);
      seconds = Number(v);
    } else if (a === '--json') {
      const v = argv[++i];
      if (!v) throw new Error('--json needs a file name');
      json = v;
    } else if (a === '-h' || a === '--help') {
      process.stdout.write(
        'usage: npm run bench:wakeup [-- --seconds S] [--json FILE]\n' +
          'Splits the daemon CPU time of a pinned 64 B request/response (see the script header).\n',
      );
      process.exit(0);
    } else throw new Error(`unknown argument "${a}"`);
  }
  return { seconds, json };
}

/**
 * Which bucket a sample's call stack (innermost frame first) belongs to. The
 * stacks come from frame pointers: the frame of a function that calls libc's
 * `syscall` (an assembly leaf without a frame) is skipped, so a sample inside a
 * system call names the syscall's caller's caller. The kernel's own frames and
 * the libc frame therefore decide first; the addon's frames after.
 */
export function bucketOf(frames: readonly { sym: string; dso: string }[]): Bucket {
  let inSyscall = false;
  for (const f of frames) {
    const s = f.sym;
    if (s === 'tun_chr_write_iter' || s === 'tun_get_user') return 'write';
    if (s === 'tun_chr_read_iter' || s === 'tun_do_read' || s === 'tun_ring_recv') return 'read';
    if (s === 'do_epoll_wait' || s === 'ep_poll' || /^epoll_(p)?wait$/.test(s)) return 'wait';
    if (s === 'syscall' || s === 'entry_SYSCALL_64_after_hwframe') inSyscall = true;
    if (s === 'vpm_tun_write_batch' || s === 'raw_write') return 'write';
    if (s === 'vpm_tun_read_burst' || s === 'raw_read') return 'read';
    if (s === 'vpm_js_tun_write_tx' || s === 'vpm_js_tun_write_batch')
      return inSyscall ? 'write' : 'napi';
    if (s === 'on_poll') return inSyscall ? 'read' : 'napi';
    if (s.startsWith('JS:') || f.dso.startsWith('[JIT]')) return 'js';
    if (
      s.startsWith('vpm_js_') ||
      s.startsWith('napi_') ||
      s.startsWith('node::') ||
      s.startsWith('v8impl::')
    )
      return 'napi';
  }
  return 'other';
}

/** Parse `perf script -F ip,sym,dso` output: one stack per sample, innermost frame first. */
function bucketShares(text: string): { shares: Record<Bucket, number>; samples: number } {
  const counts: Record<Bucket, number> = { wait: 0, read: 0, write: 0, napi: 0, js: 0, other: 0 };
  let samples = 0;
  for (const block of text.split(/\n\s*\n/)) {
    const frames = block
      .split('\n')
      .map((l) => /^\s+[0-9a-f]+\s+(.*?)\s+\(([^)]*)\)\s*$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ sym: m[1]!.replace(/\+0x[0-9a-f]+$/, ''), dso: m[2]! }));
    if (frames.length === 0) continue;
    counts[bucketOf(frames)]++;
    samples++;
  }
  const shares = {} as Record<Bucket, number>;
  for (const b of BUCKETS) shares[b] = samples > 0 ? counts[b] / samples : Number.NaN;
  return { shares, samples };
}

function waitExit(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) resolve();
    else p.on('exit', () => resolve());
  });
}

interface St {
  lab: Lab;
  topo: Topology;
  bin: string;
  opts: Options;
}

async function rr(st: St, path: PathId) {
  return tcpbench(st.lab, st.topo.client, st.bin, 'rr', TARGETS[path], {
    seconds: st.opts.seconds,
    warmup: 0.3,
    size: SIZE,
    cpus: CPU,
  });
}

async function measurePath(st: St, vpm: Vpm, dir: string): Promise<PathResult> {
  const pid = vpm.proc.pid;
  // 1. rate and CPU per transaction, nothing attached.
  const cpu0 = cpuSeconds(pid);
  const a = await rr(st, vpm.path);
  const cpuPerTxUs = ((cpuSeconds(pid) - cpu0) / a.transactions) * 1e6;
  // The warm-up's transactions are in the CPU time too: a small overestimate.

  // 2. system calls per transaction.
  const traceFile = join(dir, `trace-${vpm.path}.txt`);
  const trace = spawn('perf', ['trace', '-s', '-p', String(pid), '-o', traceFile], {
    stdio: 'ignore',
  });
  await new Promise((r) => setTimeout(r, 300));
  await rr(st, vpm.path);
  trace.kill('SIGINT');
  await waitExit(trace);
  const text = existsSync(traceFile) ? readFileSync(traceFile, 'utf8') : '';
  const line = (name: string) =>
    new RegExp(`^\\s*${name}\\s+(\\d+)\\s+(\\d+)`, 'm').exec(text) ?? ['', '0', '0'];
  // The trace spans the client's start and warm-up too: count per write instead,
  // as every packet is written once and a transaction is two packets.
  const epoll = line('epoll_pwait');
  const read = line('read');
  const write = line('write');
  const writes = Number(write[1]);
  const per = (n: string) => (writes > 0 ? (2 * Number(n)) / writes : Number.NaN);

  // 3. where the CPU goes.
  const perfData = join(dir, `perf-${vpm.path}.data`);
  const rec = spawn('perf', ['record', '-F', '4999', '-g', '-o', perfData, '-p', String(pid)], {
    stdio: 'ignore',
  });
  await new Promise((r) => setTimeout(r, 300));
  await rr(st, vpm.path);
  rec.kill('SIGINT');
  await waitExit(rec);
  const script = execFileSync('perf', ['script', '-i', perfData, '-F', 'ip,sym,dso'], {
    encoding: 'utf8',
    maxBuffer: 1 << 30,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const { shares, samples } = bucketShares(script);
  return {
    path: vpm.path,
    rate: a.rate,
    p50Us: a.p50Us,
    cpuPerTxUs,
    syscallsPerTx: {
      epoll: per(epoll[1]!),
      read: per(read[1]!),
      readEagain: per(read[2]!),
      write: per(write[1]!),
    },
    samples,
    shares,
  };
}

function eagainNs(lab: Lab, ns: string, bin: string, vnet: boolean): number {
  const out = lab.run(ns, bin, [vnet ? 'vpmrd1' : 'vpmrd0', vnet ? '1' : '0', '1000000']);
  return (JSON.parse(out) as { nsPerRead: number }).nsPerRead;
}

function table(r: Report): { head: string[]; rows: string[][] } {
  const head = ['', ...r.paths.map((p) => PATH_NAMES[p.path])];
  const rows: string[][] = [
    ['transactions/s (pinned, one CPU)', ...r.paths.map((p) => fmt3(p.rate))],
    [
      '  over nftables DNAT in the same run',
      ...r.paths.map((p) => `${fmt3(p.rate / r.dnat.rate)}×`),
    ],
    ['round trip p50, µs', ...r.paths.map((p) => fmt3(p.p50Us))],
    ['daemon CPU per transaction (2 packets), µs', ...r.paths.map((p) => fmt3(p.cpuPerTxUs))],
  ];
  for (const b of BUCKETS)
    rows.push([`  ${BUCKET_NAMES[b]}`, ...r.paths.map((p) => fmt3(p.shares[b] * p.cpuPerTxUs))]);
  rows.push(
    [
      'system calls per transaction: epoll_pwait / read (EAGAIN) / write',
      ...r.paths.map(
        (p) =>
          `${fmt3(p.syscallsPerTx.epoll)} / ${fmt3(p.syscallsPerTx.read)} (${fmt3(p.syscallsPerTx.readEagain)}) / ${fmt3(p.syscallsPerTx.write)}`,
      ),
    ],
    ['perf samples', ...r.paths.map((p) => String(p.samples))],
  );
  return { head, rows };
}

function markdown(r: Report): string {
  const t = table(r);
  return `## Where a small packet's time goes

<!-- Generated by scripts/bench-wakeup.ts (\`npm run bench:wakeup\`): edits between the bench:wakeup markers are overwritten. -->

A 64-byte request/response through vpm, client, server and daemon pinned to
CPU 0 (the "pinned" row of the end-to-end table): every packet wakes the daemon
on its own, so the cost of one wake-up sets the rate. Measured
${r.machine.date.slice(0, 10)} on ${r.machine.cpuModel} (${r.machine.cores} cores),
${r.machine.kernel}; ${r.seconds} s per run. nftables DNAT in the same run:
${fmt3(r.dnat.rate)} transactions/s.

${mdTable(t.head, t.rows, ['l', ...r.paths.map(() => 'r' as const)])}

How: the CPU per transaction is the daemon's user + system time
(\`/proc/PID/stat\`) over a tcpbench run divided by its transactions; the split
comes from \`perf record -g\` (cpu-clock, 4999 Hz) over a second run, each sample
put in one bucket by its call stack (scripts/bench-wakeup.ts, \`bucketOf\`), the
shares multiplied by the CPU per transaction; the system calls per transaction
from \`perf trace -s\` over a third run. A read() that finds the TUN's queue
empty costs ${fmt3(r.eagainNs.vnetHdr)} ns with virtio-net headers and
${fmt3(r.eagainNs.plain)} ns without (scripts/bench/wakeup/tunread.c, a
million calls): every burst ends with one, because a TUN has no way to ask how
many packets wait (no FIONREAD), and a burst that stopped early would leave
packets waiting for the next epoll_pwait.

What was cut (native/src/tun_napi.c, tun_dev.c): the rx buffer and the rx/tx
offset, length and errno arrays are the addon's own memory (one external
ArrayBuffer), so no typed array is looked up or checked per burst or per write
(that introspection was ~4% of the daemon's CPU in this profile before); and
read/write are raw system calls, without glibc's cancellation-point wrappers
(~2%). What stays: the context switches (the biggest share, inside the wait and
the write: client, daemon and server take turns on one CPU, four switches per
transaction where DNAT has two) and the kernel's own work in write(), which
nftables DNAT does too, in softirq; and one JS call per wake-up.

### Machine

${machineLines(r.machine)
  .map(([k, v]) => `- ${k}: ${v}`)
  .join('\n')}

\`\`\`sh
npm run bench:wakeup                 # writes this section
npm run bench:wakeup -- --seconds 10 # longer runs
\`\`\`
`;
}

async function main(argv: readonly string[]): Promise<number> {
  let opts: Options;
  try {
    opts = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`bench:wakeup: ${(e as Error).message}\n`);
    return 2;
  }
  const root = packageRoot();
  const missing = ['perf', 'taskset', 'iperf3', 'nft'].filter((c) => !commandOnPath(c));
  if (missing.length > 0 || process.getuid?.() !== 0) {
    process.stderr.write(
      `bench:wakeup: needs root and ${missing.join(', ') || 'nothing else'} (npm run setup installs the tools)\n`,
    );
    return 1;
  }
  for (const gone of sweepStale()) process.stderr.write(`bench:wakeup: removed stale ${gone}\n`);
  const machine = machineFacts();
  const t0 = Date.now();
  const lab = new Lab();
  let report: Report | null = null;
  try {
    const topo = buildTopology(lab);
    const { bin } = buildTcpbench(lab, root);
    const reader = join(lab.dir, 'tunread');
    run('cc', ['-O2', '-Wall', '-o', reader, join(root, 'scripts/bench/wakeup/tunread.c')], 60_000);
    const st: St = { lab, topo, bin, opts };
    const server = await startEchoServer(lab, topo.host, bin);
    pin(server.pid, CPU);
    const d = await rr(st, 'dnat');
    const paths: PathResult[] = [];
    for (const path of VPM_PATHS) {
      // --perf-basic-prof also makes V8 log code events: into the lab's directory,
      // not an isolate-*.log in the working directory.
      const vpm = await startVpm(lab, topo, root, path, [
        '--perf-basic-prof',
        '--no-logfile-per-isolate',
        `--logfile=${join(lab.dir, `v8-${path}.log`)}`,
      ]);
      pin(vpm.proc.pid, CPU);
      process.stderr.write(`bench:wakeup: ${PATH_NAMES[path]} ...\n`);
      paths.push(await measurePath(st, vpm, lab.dir));
      await lab.stop(vpm.proc, 'SIGTERM', 10_000);
    }
    report = {
      schema: 'vpm-bench-wakeup/1',
      machine,
      seconds: opts.seconds,
      dnat: { rate: d.rate, p50Us: d.p50Us },
      eagainNs: {
        vnetHdr: eagainNs(lab, topo.host, reader, true),
        plain: eagainNs(lab, topo.host, reader, false),
      },
      paths,
      durationSec: (Date.now() - t0) / 1000,
    };
  } finally {
    await lab.cleanup();
  }
  const t = table(report);
  process.stdout.write(
    `${textTable(t.head, t.rows, ['l', ...report.paths.map(() => 'r' as const)])}\n`,
  );
  if (opts.json) writeFileSync(opts.json, `${JSON.stringify(report, null, 2)}\n`);
  const docPath = join(root, DOC);
  writeAtomic(docPath, spliceSection(readOrNull(docPath), SECTION, markdown(report)));
  process.stderr.write(`bench:wakeup: wrote ${DOC} (section "${SECTION}")\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(
      `bench:wakeup: failed: ${e instanceof Error ? (e.stack ?? e.message) : e}\n`,
    );
    process.exitCode = 1;
  },
);
