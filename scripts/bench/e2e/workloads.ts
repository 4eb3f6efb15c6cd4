/**
 * The load generators of `npm run bench:e2e`: iperf3 for bulk throughput, the C
 * helper tcpbench (tcpbench.c) for request/response and connection rates, and its
 * UDP twin udpbench (udpbench.c) for the 64-byte datagram rate and the UDP
 * request/response rate. Each client run returns its numbers or throws with the
 * command line and its output.
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

/** Wait until something listens on each of `ports` (TCP or UDP) inside `ns`. */
async function listening(
  lab: Lab,
  ns: string,
  server: Proc,
  ports: readonly number[] = [REAL_PORT],
  proto: 'tcp' | 'udp' = 'tcp',
): Promise<void> {
  const flags = proto === 'tcp' ? '-Hltn' : '-Hlun';
  await lab.until(
    () => {
      if (server.exit !== null) throw new Error(`server exited: ${lab.describe(server)}`);
      return ports.every((p) => lab.run(ns, 'ss', [flags, `sport = :${p}`]).trim() !== '');
    },
    `a server on ${proto} port(s) ${ports.join(', ')}`,
  );
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

/** The UDP server (udpbench server): counts blasts, echoes requests, on every one of `ports`. */
export async function startUdpServer(
  lab: Lab,
  ns: string,
  bin: string,
  ports: readonly number[],
): Promise<Proc> {
  const p = lab.spawn(ns, bin, ['server', ...ports.map(String)]);
  await listening(lab, ns, p, ports, 'udp');
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

/** Datagrams per sendmmsg() call of udpbench's blast (BATCH in udpbench.c). */
export const UDP_BATCH = 32;

export interface BlastResult {
  /** Datagrams per second the server received of those sent in the measured time. */
  rate: number;
  sent: number;
  received: number;
  /** Share of the datagrams sent that the server did not receive. */
  loss: number;
  seconds: number;
  sendErrors: number;
}

interface BlastJson {
  sent: number;
  received: number;
  seconds: number;
  sendErrors: number;
  queries: number;
  batch: number;
}

/**
 * One udpbench blast from the client namespace: `size`-byte datagrams as fast as
 * the sender goes (UDP_BATCH per sendmmsg) for `seconds` after `warmup`; the
 * server's count of them is the rate.
 */
export async function udpBlast(
  lab: Lab,
  ns: string,
  bin: string,
  t: Target,
  o: { seconds: number; warmup: number; size: number },
): Promise<BlastResult> {
  const args = ['blast', t.dst, String(t.port), t.src, String(o.seconds), String(o.warmup)];
  args.push(String(o.size));
  const p = lab.spawn(ns, bin, args);
  const exit = await lab.wait(p, (o.seconds + o.warmup) * 1000 + RUN_SLACK_MS);
  let j: BlastJson;
  try {
    j = JSON.parse(p.stdout) as BlastJson;
  } catch {
    throw new Error(`udpbench blast wrote no result: ${lab.describe(p)}`);
  }
  if (exit.code !== 0) throw new Error(`udpbench blast failed: ${lab.describe(p)}`);
  if (j.batch !== UDP_BATCH)
    throw new Error(`udpbench sends ${j.batch} datagrams per call, this script says ${UDP_BATCH}`);
  if (j.sent === 0 || j.received === 0)
    throw new Error(`udpbench blast: ${j.sent} datagrams sent, ${j.received} received`);
  return {
    rate: j.received / j.seconds,
    sent: j.sent,
    received: j.received,
    loss: Math.max(0, 1 - j.received / j.sent),
    seconds: j.seconds,
    sendErrors: j.sendErrors,
  };
}

/**
 * One udpbench rr run: one request outstanding at a time, `size` bytes each way;
 * a request not answered within udpbench's timeout (50 ms) counts as an error.
 */
export async function udpRr(
  lab: Lab,
  ns: string,
  bin: string,
  t: Target,
  o: { seconds: number; warmup: number; size: number },
): Promise<RrResult> {
  const args = ['rr', t.dst, String(t.port), t.src, String(o.seconds), String(o.warmup)];
  args.push(String(o.size));
  const p = lab.spawn(ns, bin, args);
  const exit = await lab.wait(p, (o.seconds + o.warmup) * 1000 + RUN_SLACK_MS);
  let j: TcpbenchJson;
  try {
    j = JSON.parse(p.stdout) as TcpbenchJson;
  } catch {
    throw new Error(`udpbench rr wrote no result: ${lab.describe(p)}`);
  }
  if (exit.code !== 0) throw new Error(`udpbench rr failed: ${lab.describe(p)}`);
  if (j.transactions === 0)
    throw new Error(
      `udpbench rr: no transaction completed (${j.errors} errors${j.lastError ? `, last: ${j.lastError}` : ''})`,
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
