/** What `npm run bench:e2e` measures: the paths, the metrics, and the shape of the results. */

import type { MachineFacts } from '../machine.js';

/**
 * The four ways the same client reaches the same server: directly, through the
 * kernel's NAT, and through vpm twice — one daemon with `tun.offloads: "off"`
 * and one with the default ("auto": virtio-net headers and super-packets).
 */
export const PATHS = ['direct', 'dnat', 'vpmOff', 'vpm'] as const;
export type PathId = (typeof PATHS)[number];

/** The paths that run through a vpm daemon. */
export const VPM_PATHS = ['vpmOff', 'vpm'] as const;
export type VpmPathId = (typeof VPM_PATHS)[number];

export function isVpmPath(p: PathId): p is VpmPathId {
  return p === 'vpmOff' || p === 'vpm';
}

export const PATH_NAMES: Readonly<Record<PathId, string>> = {
  direct: 'kernel direct',
  dnat: 'nftables DNAT',
  vpmOff: 'vpm, offloads off',
  vpm: 'vpm',
};

/** The metrics, in the order they are measured and shown. */
export const METRICS = [
  'tcp1',
  'tcp4',
  'rr',
  'rrPinned',
  'crr',
  'udp64',
  'udpRr',
  'tcp1v6',
  'rrv6',
  'rrPinnedv6',
] as const;
export type MetricId = (typeof METRICS)[number];

/** The IP family a metric runs over (`--family` selects by it). */
export type Family = 4 | 6;

export interface MetricSpec {
  /** Row label. */
  label: string;
  /** A few words for the chart's axis. */
  short: string;
  /** Unit of the primary value. */
  unit: string;
  /** Whether the metric has latency percentiles. */
  latency: boolean;
  /** Client, server and daemon pinned to CPU 0. */
  pinned: boolean;
  /** IP family of the client's connection (the paths' IPv6 addresses for 6). */
  family: Family;
  /** For an IPv6 metric: its IPv4 twin (the goal compares their ratios to DNAT). */
  v4?: MetricId;
}

export const METRIC_SPECS: Readonly<Record<MetricId, MetricSpec>> = {
  tcp1: {
    label: 'TCP bulk, 1 stream (iperf3)',
    short: 'TCP, 1 stream',
    unit: 'Gbit/s',
    latency: false,
    pinned: false,
    family: 4,
  },
  tcp4: {
    label: 'TCP bulk, 4 streams (iperf3)',
    short: 'TCP, 4 streams',
    unit: 'Gbit/s',
    latency: false,
    pinned: false,
    family: 4,
  },
  rr: {
    label: '64 B request/response',
    short: '64 B req/resp',
    unit: 'transactions/s',
    latency: true,
    pinned: false,
    family: 4,
  },
  rrPinned: {
    label: '64 B request/response, pinned to CPU 0',
    short: '64 B req/resp pinned',
    unit: 'transactions/s',
    latency: true,
    pinned: true,
    family: 4,
  },
  crr: {
    label: 'connections (connect, 64 B request/response, close)',
    short: 'connections/s',
    unit: 'connections/s',
    latency: true,
    pinned: false,
    family: 4,
  },
  udp64: {
    label: '64 B UDP datagrams, received by the server',
    short: '64 B UDP',
    unit: 'datagrams/s',
    latency: false,
    pinned: false,
    family: 4,
  },
  udpRr: {
    label: '64 B UDP request/response',
    short: 'UDP req/resp',
    unit: 'transactions/s',
    latency: true,
    pinned: false,
    family: 4,
  },
  tcp1v6: {
    label: 'TCP bulk, 1 stream, IPv6 (iperf3)',
    short: 'TCP, 1 stream, IPv6',
    unit: 'Gbit/s',
    latency: false,
    pinned: false,
    family: 6,
    v4: 'tcp1',
  },
  rrv6: {
    label: '64 B request/response, IPv6',
    short: '64 B req/resp, IPv6',
    unit: 'transactions/s',
    latency: true,
    pinned: false,
    family: 6,
    v4: 'rr',
  },
  rrPinnedv6: {
    label: '64 B request/response, IPv6, pinned to CPU 0',
    short: '64 B req/resp pinned, IPv6',
    unit: 'transactions/s',
    latency: true,
    pinned: true,
    family: 6,
    v4: 'rrPinned',
  },
};

/** The UDP metrics: their own server and ports (topology.ts, UDP_TARGETS). */
export function isUdpMetric(m: MetricId): boolean {
  return m === 'udp64' || m === 'udpRr';
}

/** One measurement of one metric over one path. */
export interface Sample {
  metric: MetricId;
  path: PathId;
  /** 1-based repetition. */
  rep: number;
  /** Position in the run (1-based), to see the interleaving. */
  seq: number;
  /** The primary value in the metric's unit; NaN when the measurement failed. */
  value: number;
  /** Measured seconds (after any warm-up). */
  seconds: number;
  /** Latency percentiles of one transaction / connection, in µs. */
  p50Us?: number;
  p99Us?: number;
  /** iperf3: TCP retransmissions seen by the sender. */
  retransmits?: number;
  /** tcpbench, udpbench rr: failed transactions or connections (UDP: no answer in time). */
  errors?: number;
  /** udpbench blast: datagrams sent in the measured time, received by the server, and the share lost. */
  sent?: number;
  received?: number;
  loss?: number;
  /** vpm paths only: CPU seconds the daemon used while the client ran (and its stats were read). */
  daemonCpuSec?: number;
  /** vpm only: wall-clock seconds of the same span. */
  wallSec?: number;
  /** Why the measurement failed. */
  error?: string;
}

/** Median with the smallest and largest value. */
export interface Stats {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function stats(values: readonly number[]): Stats {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return { median: Number.NaN, min: Number.NaN, max: Number.NaN, n: 0 };
  const mid = v.length >> 1;
  const median = v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

/** The numbers of one metric over one path, over all repetitions. */
export interface Cell {
  value: Stats;
  p50Us?: Stats;
  p99Us?: Stats;
  retransmits?: Stats;
  /** Share of the datagrams sent that the server did not receive (UDP blast). */
  loss?: Stats;
  errors: number;
  failures: number;
}

export interface Row {
  metric: MetricId;
  cells: Record<PathId, Cell>;
  /** Median of nftables DNAT over the median of kernel direct. */
  dnatOverDirect: number;
  /** Median of each path over the median of nftables DNAT (the goals are ratios to DNAT). */
  overDnat: Record<PathId, number>;
}

/** vpm's counters over the measurements of one metric on one vpm path (differences of snapshots). */
export interface VpmActivity {
  metric: MetricId;
  path: VpmPathId;
  /** Wall-clock seconds of the vpm measurements (client run time, warm-up included). */
  wallSec: number;
  /** CPU seconds (user + system) of the daemon over the same time. */
  cpuSec: number;
  packetsIn: number;
  packetsOut: number;
  bytesIn: number;
  /** Super-packets read (offloads) and the segments they stood for. */
  superPacketsIn: number;
  segmentsIn: number;
  batches: number;
  /** Batch-size histogram buckets ("1", "2-3", ..., "256+") → count of batches. */
  batchSizes: Record<string, number>;
  /** Non-zero drop reasons. */
  drops: Record<string, number>;
  flowsCreated: number;
  flowsRefused: number;
  rstSent: number;
  /** TUN writes the kernel refused for a full queue. */
  writeQueueFull: number;
  /**
   * Packets the kernel dropped on their way into the TUN because vpm had not read
   * the ones before (the device's tx_dropped): lost before vpm saw them.
   */
  tunQueueDrops: number;
}

export interface E2eReport {
  schema: 'vpm-bench-e2e/3';
  mode: 'full' | 'quick';
  options: {
    duration: number;
    reps: number;
    warmupSec: number;
    /** Payload of a TCP request/response and of a UDP datagram. */
    messageBytes: number;
    /** UDP blast: datagrams per sendmmsg() call. */
    udpBatch: number;
    /** `--family`: the IP families measured. */
    families: Family[];
  };
  machine: MachineFacts;
  tools: { iperf3: string; cc: string; nft: string };
  /** Load average at the end (the machine facts hold the one at the start). */
  loadAvgEnd: number;
  rows: Row[];
  samples: Sample[];
  vpmActivity: VpmActivity[];
  /** `vpm stats --json` of each daemon at the end of the run. */
  vpmStatsEnd: Record<VpmPathId, Record<string, unknown> | null>;
  /** The configuration each daemon ran with. */
  vpmConfig: Record<VpmPathId, Record<string, unknown>>;
  durationSec: number;
}
