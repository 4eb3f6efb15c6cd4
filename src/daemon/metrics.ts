/**
 * Prometheus metrics: the daemon's counters, read at scrape time (nothing is
 * done on the data plane for them), served on a loopback address only
 * (`metrics.listen` in the config; off by default).
 */

import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import { DROP_NAMES, DROP_REASONS } from '../datapath/counters.js';
import { formatAddr, type IpAddr } from '../wire/address.js';
import type { DeviceCounters } from './device-counters.js';

/** What the metrics read: the same snapshot `vpm stats` returns. */
export type StatsSource = () => Record<string, unknown>;

interface Snapshot {
  packetsIn: number;
  packetsOut: number;
  bytesIn: number;
  bytesOut: number;
  drops: Record<string, number>;
  flowsActive: number;
  udpFlowsActive: number;
  flowsCapacity: number;
  flowsEmbryonic: number;
  embryonicCapacity: number;
  embryonicEvicted: number;
  flowsCreated: number;
  flowsExpired: number;
  flowsRefused: number;
  rstSent: number;
  fragmentsHeld: number;
  fragmentsReleased: number;
  heldInjected: number;
  negotiationsFailed: number;
  localClientsRefused: number;
  icmp: {
    errorsTranslated: number;
    passed: number;
    echoReplies: number;
    unreachableSent: number;
    rateLimited: number;
  };
  health: {
    instanceRefusals: number;
    synRetried: number;
    refusalsForwarded: number;
    synNotKept: number;
    synCopiesInUse: number;
    instances: { aid: string; instance: string; up: boolean; refusals: number }[];
  };
  batches: number;
  batchSizes: Record<string, number>;
  perAid: Record<string, { bytesIn: number; bytesOut: number }>;
  pool: { inUse: number; free: number; quarantined: number; waiting: number } | null;
  /** The control socket's counters (absent before it listens). */
  control?: { connections: number; refused: Record<string, number> };
  uptimeMs: number;
  offload: {
    superPacketsIn: number;
    segmentsIn: number;
    superPacketsOut: number;
    segmentsOut: number;
    gsoRefused: number;
    softwareSegmented: number;
    softwareSegments: number;
  };
  tun: { offloads: string[] };
}

/** The TUN device's own counters (device-counters.ts), read at scrape time. */
export type DeviceSource = () => Promise<DeviceCounters | null>;

/**
 * Build a registry whose metrics are filled from `stats()` (and the device's
 * counters from `device()`) on every scrape.
 */
export function buildMetrics(stats: StatsSource, device?: DeviceSource): Registry {
  const reg = new Registry();
  let snap: Snapshot | null = null;
  // Each gauge's collect() reads the same snapshot, taken once per scrape by the first.
  const take = () => {
    snap = stats() as unknown as Snapshot;
    return snap;
  };
  type Setter = (labels: Record<string, string>, v: number) => void;
  // Monotonic counters are prom-client Counters (type "counter", names ending in
  // _total), the others Gauges; both are filled from the snapshot at scrape time.
  const g = (
    name: string,
    help: string,
    labelNames: string[],
    fill: (set: Setter, s: Snapshot) => void,
    first = false,
  ) => {
    const current = () => (first || snap === null ? take() : snap);
    if (name.endsWith('_total')) {
      new Counter({
        name,
        help,
        labelNames,
        registers: [reg],
        collect() {
          const s = current();
          this.reset();
          fill((l, v) => this.inc(l, v), s);
        },
      });
    } else {
      new Gauge({
        name,
        help,
        labelNames,
        registers: [reg],
        collect() {
          const s = current();
          this.reset();
          fill((l, v) => this.set(l, v), s);
        },
      });
    }
  };

  g(
    'vpm_packets_total',
    'Packets read from (in) and written to (out) the TUN device.',
    ['direction'],
    (m, s) => {
      m({ direction: 'in' }, s.packetsIn);
      m({ direction: 'out' }, s.packetsOut);
    },
    true,
  );
  g(
    'vpm_bytes_total',
    'Bytes read from (in) and written to (out) the TUN device.',
    ['direction'],
    (m, s) => {
      m({ direction: 'in' }, s.bytesIn);
      m({ direction: 'out' }, s.bytesOut);
    },
  );
  g(
    'vpm_drops_total',
    'Packets dropped, by reason (docs/errors.md). packets in = out + drops, of the packets vpm read (those the kernel dropped first: vpm_device_dropped_total).',
    ['reason'],
    (m, s) => {
      for (let i = 1; i < DROP_REASONS; i++)
        m({ reason: DROP_NAMES[i]! }, s.drops[DROP_NAMES[i]!] ?? 0);
    },
  );
  g('vpm_flows_active', 'Flows in the translation table, by protocol.', ['protocol'], (m, s) => {
    m({ protocol: 'tcp' }, s.flowsActive - s.udpFlowsActive);
    m({ protocol: 'udp' }, s.udpFlowsActive);
  });
  g('vpm_flows_capacity', 'Capacity of the translation table.', [], (m, s) =>
    m({}, s.flowsCapacity),
  );
  g(
    'vpm_flows_embryonic',
    'Embryonic flows in the table: TCP handshake not complete, UDP not answered.',
    [],
    (m, s) => m({}, s.flowsEmbryonic),
  );
  g(
    'vpm_flows_embryonic_capacity',
    'Their share of the table (limits.embryonicFlows).',
    [],
    (m, s) => m({}, s.embryonicCapacity),
  );
  g(
    'vpm_flows_embryonic_evicted_total',
    'Embryonic flows evicted, the oldest first, to make room for a new flow (the flood policy).',
    [],
    (m, s) => m({}, s.embryonicEvicted),
  );
  g('vpm_flows_created_total', 'Flows created.', [], (m, s) => m({}, s.flowsCreated));
  g('vpm_flows_expired_total', 'Flows removed by their idle timers.', [], (m, s) =>
    m({}, s.flowsExpired),
  );
  g(
    'vpm_flows_refused_total',
    'New flows refused (answered with RST or ICMP port unreachable).',
    [],
    (m, s) => m({}, s.flowsRefused),
  );
  g('vpm_rst_sent_total', 'RSTs generated by vpm.', [], (m, s) => m({}, s.rstSent));
  g(
    'vpm_held_total',
    'First packets of flows held (negotiation, owner lookup) and how each ended: sent on (injected) or refused.',
    ['outcome'],
    (m, s) => {
      m({ outcome: 'injected' }, s.heldInjected);
      m({ outcome: 'negotiation_failed' }, s.negotiationsFailed);
      m({ outcome: 'local_client_refused' }, s.localClientsRefused);
    },
  );
  g(
    'vpm_icmp_total',
    'ICMP handled by vpm: errors about flows translated, messages passed on unchanged, echo replies and port unreachables sent, messages not sent because of the rate limit.',
    ['kind'],
    (m, s) => {
      m({ kind: 'error_translated' }, s.icmp.errorsTranslated);
      m({ kind: 'passed' }, s.icmp.passed);
      m({ kind: 'echo_reply' }, s.icmp.echoReplies);
      m({ kind: 'unreachable_sent' }, s.icmp.unreachableSent);
      m({ kind: 'rate_limited' }, s.icmp.rateLimited);
    },
  );
  g(
    'vpm_instance_up',
    'Passive health check: 1 if the instance gets new connections, 0 while it is marked down (it refused one).',
    ['aid', 'instance'],
    (m, s) => {
      for (const i of s.health.instances) m({ aid: i.aid, instance: i.instance }, i.up ? 1 : 0);
    },
  );
  g(
    'vpm_instance_refusals_total',
    'SYNs the instance answered with a RST (nothing listening).',
    ['aid', 'instance'],
    (m, s) => {
      for (const i of s.health.instances) m({ aid: i.aid, instance: i.instance }, i.refusals);
    },
  );
  g(
    'vpm_health_total',
    'Passive health check: refusals by instances, refused SYNs sent to another instance (syn_retried), refusals passed on to the client (refusal_forwarded), SYNs not kept for a retry (syn_not_kept: the copies were all in use).',
    ['kind'],
    (m, s) => {
      m({ kind: 'instance_refusal' }, s.health.instanceRefusals);
      m({ kind: 'syn_retried' }, s.health.synRetried);
      m({ kind: 'refusal_forwarded' }, s.health.refusalsForwarded);
      m({ kind: 'syn_not_kept' }, s.health.synNotKept);
    },
  );
  g(
    'vpm_syn_copies_in_use',
    'SYNs kept until their instance answers (health.synCopies).',
    [],
    (m, s) => m({}, s.health.synCopiesInUse),
  );
  g('vpm_fragments_held', 'IPv4 fragments waiting for their first fragment.', [], (m, s) =>
    m({}, s.fragmentsHeld),
  );
  g(
    'vpm_fragments_released_total',
    'Fragments that waited and went out once their first fragment came.',
    [],
    (m, s) => m({}, s.fragmentsReleased),
  );
  g('vpm_batches_total', 'Batches read from the TUN device.', [], (m, s) => m({}, s.batches));
  g('vpm_batch_size_batches', 'Batches by size bucket (packets per batch).', ['size'], (m, s) => {
    for (const [size, n] of Object.entries(s.batchSizes)) m({ size }, n);
  });
  g(
    'vpm_aid_bytes_total',
    'Bytes per application, client to server (in) and back (out).',
    ['aid', 'direction'],
    (m, s) => {
      for (const [aid, b] of Object.entries(s.perAid)) {
        m({ aid, direction: 'in' }, b.bytesIn);
        m({ aid, direction: 'out' }, b.bytesOut);
      }
    },
  );
  g(
    'vpm_control_refused_total',
    "Control requests refused by the access policy, by reason: command (not allowed for the caller), aid (an AID the caller may not use), pid (a pid that is not the caller's).",
    ['reason'],
    (m, s) => {
      for (const [reason, n] of Object.entries(s.control?.refused ?? {})) m({ reason }, n);
    },
  );
  g('vpm_pool_ports', 'Ports of the pool by state.', ['state'], (m, s) => {
    if (!s.pool) return;
    m({ state: 'in_use' }, s.pool.inUse);
    m({ state: 'free' }, s.pool.free);
    m({ state: 'quarantined' }, s.pool.quarantined);
  });
  g('vpm_pool_waiting', 'Port requests waiting for a free port.', [], (m, s) =>
    m({}, s.pool?.waiting ?? 0),
  );
  g(
    'vpm_super_packets_total',
    'Offloads: super-packets (64 KiB GSO packets) read from (in) and written to (out) the TUN whole.',
    ['direction'],
    (m, s) => {
      m({ direction: 'in' }, s.offload.superPacketsIn);
      m({ direction: 'out' }, s.offload.superPacketsOut);
    },
  );
  g(
    'vpm_super_packet_segments_total',
    'Offloads: the wire segments the super-packets stood for, read (in) and written (out).',
    ['direction'],
    (m, s) => {
      m({ direction: 'in' }, s.offload.segmentsIn);
      m({ direction: 'out' }, s.offload.segmentsOut);
    },
  );
  g(
    'vpm_gso_refused_total',
    'Super-packets the kernel refused on write (vpm then segments in software).',
    [],
    (m, s) => m({}, s.offload.gsoRefused),
  );
  g(
    'vpm_software_segmented_total',
    'Super-packets vpm segmented itself after a refusal.',
    [],
    (m, s) => m({}, s.offload.softwareSegmented),
  );
  g(
    'vpm_tun_offload',
    'The TUN offloads in effect (1 per TUN_F_* name), none without virtio-net headers.',
    ['offload'],
    (m, s) => {
      for (const o of s.tun.offloads) m({ offload: o }, 1);
    },
  );
  g('vpm_uptime_seconds', 'Seconds since the daemon started.', [], (m, s) =>
    m({}, s.uptimeMs / 1000),
  );
  if (device) deviceMetrics(reg, device);
  return reg;
}

/**
 * vpm_device_*: the TUN's counters kept by the kernel, one read of
 * /proc/self/net/dev per scrape (taken by the first of these metrics, awaited by
 * the others). direction "tx" is toward vpm (tx_dropped: packets the kernel
 * dropped because vpm had not read its queue), "rx" what vpm wrote back.
 */
function deviceMetrics(reg: Registry, device: DeviceSource): void {
  let pending: Promise<DeviceCounters | null> = Promise.resolve(null);
  const families: [string, string, (d: DeviceCounters) => [number, number]][] = [
    [
      'vpm_device_packets_total',
      "The TUN device's packets, by the kernel's count: tx = read by vpm, rx = written by vpm.",
      (d) => [d.txPackets, d.rxPackets],
    ],
    [
      'vpm_device_bytes_total',
      "The TUN device's bytes, by the kernel's count: tx = read by vpm, rx = written by vpm.",
      (d) => [d.txBytes, d.rxBytes],
    ],
    [
      'vpm_device_dropped_total',
      'Packets the kernel dropped on the TUN device: tx = not read by vpm (its queue was full), rx = written by vpm and dropped.',
      (d) => [d.txDropped, d.rxDropped],
    ],
    [
      'vpm_device_errors_total',
      "The TUN device's error counters (/proc/net/dev errs).",
      (d) => [d.txErrors, d.rxErrors],
    ],
    [
      'vpm_device_fifo_errors_total',
      "The TUN device's FIFO (overrun) counters (/proc/net/dev fifo).",
      (d) => [d.txFifo, d.rxFifo],
    ],
  ];
  families.forEach(([name, help, pick], k) => {
    new Counter({
      name,
      help,
      labelNames: ['direction'],
      registers: [reg],
      async collect() {
        if (k === 0) pending = device();
        const d = await pending;
        this.reset();
        if (d === null) return;
        const [tx, rx] = pick(d);
        // prom-client Counters only go up: set the kernel's value.
        this.inc({ direction: 'tx' }, tx);
        this.inc({ direction: 'rx' }, rx);
      },
    });
  });
}

/** Serve GET /metrics on `address:port` (a loopback address; the config checks it). */
export async function serveMetrics(reg: Registry, address: IpAddr, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
      return;
    }
    reg.metrics().then(
      (body) => res.writeHead(200, { 'content-type': reg.contentType }).end(body),
      (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, formatAddr(address), () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
