/**
 * The load generators of `npm run bench:e2e`: iperf3 for bulk throughput, and the
 * C helper tcpbench (tcpbench.c) for request/response and connection rates. Each
 * client run returns its numbers or throws with the command line and its output.
 */

import type { Lab, Proc } from './lab.js';
import { REAL_PORT, type Target } from './topology.js';

/** Slack for a client run beyond its own duration, before it is taken as hung. */
const RUN_SLACK_MS = 20_000;

export interface ThroughputResult {
  /** Received by the server, Gbit/s (10^9). */
  gbps: number;
  retransmits: number;
  seconds: number;
}

interface IperfJson {
  error?: string;
  end?: {
    sum_received?: { bits_per_second?: number; seconds?: number };
    sum_sent?: { retransmits?: number };
  };
}

/** Wait until something listens on the server port inside `ns`. */
async function listening(lab: Lab, ns: string, server: Proc): Promise<void> {
  await lab.until(() => {
    if (server.exit !== null) throw new Error(`server exited: ${lab.describe(server)}`);
    return lab.run(ns, 'ss', ['-Hltn', `sport = :${REAL_PORT}`]).trim() !== '';
  }, `a server on port ${REAL_PORT}`);
}

export async function startIperfServer(lab: Lab, ns: string): Promise<Proc> {
  const p = lab.spawn(ns, 'iperf3', ['-s', '-p', String(REAL_PORT)]);
  await listening(lab, ns, p);
  return p;
}

export async function startEchoServer(lab: Lab, ns: string, bin: string): Promise<Proc> {
  const p = lab.spawn(ns, bin, ['server', String(REAL_PORT)]);
  await listening(lab, ns, p);
  return p;
}

/** One iperf3 run from the client namespace: `streams` parallel streams for `seconds`. */
export async function iperf(
  lab: Lab,
  ns: string,
  t: Target,
  streams: number,
  seconds: number,
): Promise<ThroughputResult> {
  const args = ['-c', t.dst, '-p', String(t.port), '-B', t.src, '-t', String(seconds)];
  args.push('-P', String(streams), '-J', '--connect-timeout', '3000');
  const p = lab.spawn(ns, 'iperf3', args);
  const exit = await lab.wait(p, seconds * 1000 + RUN_SLACK_MS);
  let j: IperfJson;
  try {
    j = JSON.parse(p.stdout) as IperfJson;
  } catch {
    throw new Error(`iperf3 wrote no JSON: ${lab.describe(p)}`);
  }
  const bps = j.end?.sum_received?.bits_per_second;
  if (j.error || exit.code !== 0 || bps === undefined)
    throw new Error(`iperf3 failed${j.error ? `: ${j.error}` : ''}: ${lab.describe(p)}`);
  return {
    gbps: bps / 1e9,
    retransmits: j.end?.sum_sent?.retransmits ?? 0,
    seconds: j.end?.sum_received?.seconds ?? seconds,
  };
}

export interface RrResult {
  /** Transactions (rr) or connections (crr) per second. */
  rate: number;
  transactions: number;
  seconds: number;
  errors: number;
  lastError: string;
  p50Us: number;
  p99Us: number;
}

interface TcpbenchJson {
  transactions: number;
  seconds: number;
  errors: number;
  lastError: string;
  p50Us: number;
  p99Us: number;
}

/**
 * One tcpbench client run: `rr` (one connection, back-to-back transactions) or
 * `crr` (a new connection per transaction), after `warmup` seconds not counted.
 * `cpus` pins the client (taskset -c).
 */
export async function tcpbench(
  lab: Lab,
  ns: string,
  bin: string,
  mode: 'rr' | 'crr',
  t: Target,
  o: { seconds: number; warmup: number; size: number; cpus?: string },
): Promise<RrResult> {
  const args = [
    mode,
    t.dst,
    String(t.port),
    t.src,
    String(o.seconds),
    String(o.warmup),
    String(o.size),
  ];
  const p = lab.spawn(ns, bin, args, o.cpus);
  const exit = await lab.wait(p, (o.seconds + o.warmup) * 1000 + RUN_SLACK_MS);
  let j: TcpbenchJson;
  try {
    j = JSON.parse(p.stdout) as TcpbenchJson;
  } catch {
    throw new Error(`tcpbench ${mode} wrote no result: ${lab.describe(p)}`);
  }
  if (exit.code !== 0) throw new Error(`tcpbench ${mode} failed: ${lab.describe(p)}`);
  if (j.transactions === 0)
    throw new Error(
      `tcpbench ${mode}: no transaction completed (${j.errors} errors${j.lastError ? `, last: ${j.lastError}` : ''})`,
    );
  return {
    rate: j.transactions / j.seconds,
    transactions: j.transactions,
    seconds: j.seconds,
    errors: j.errors,
    lastError: j.lastError,
    p50Us: j.p50Us,
    p99Us: j.p99Us,
  };
}
