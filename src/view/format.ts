/**
 * Text rendering of what the daemon reports: the tables of `vpm flows` and
 * `vpm instances` and the summary of `vpm stats` (also used by `vpm demo`).
 */

import type { FlowView, InstanceView } from './views.js';

export function formatFlows(flows: FlowView[]): string {
  const head = [
    'ID',
    'PROTO',
    'CLIENT',
    'SERVICE',
    'AID',
    'REAL',
    'STATE',
    'AGE',
    'PKTS IN/OUT',
    'BYTES IN/OUT',
  ];
  const rows = flows.map((f) => [
    String(f.id),
    f.protocol,
    f.nat ? `${f.client} (as ${f.nat})` : f.client,
    `${f.serviceName} ${f.service}`,
    f.aid,
    f.real,
    f.state,
    `${(f.ageMs / 1000).toFixed(1)}s`,
    `${f.packetsIn}/${f.packetsOut}`,
    `${f.bytesIn}/${f.bytesOut}`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [
    line(head),
    ...rows.map(line),
    `${flows.length} flow${flows.length === 1 ? '' : 's'}`,
  ].join('\n');
}

export function formatStats(s: Record<string, unknown>): string {
  const drops = s.drops as Record<string, number>;
  const nonzero = Object.entries(drops).filter(([, v]) => v > 0);
  const lines = [
    `packets in ${s.packetsIn}  out ${s.packetsOut}  dropped ${s.dropsTotal}`,
    `bytes   in ${s.bytesIn}  out ${s.bytesOut}`,
    `flows   active ${s.flowsActive}/${s.flowsCapacity} (udp ${s.udpFlowsActive ?? 0})  created ${s.flowsCreated}  expired ${s.flowsExpired}  refused ${s.flowsRefused}  rst sent ${s.rstSent}`,
    `embryonic ${s.flowsEmbryonic ?? 0}/${s.embryonicCapacity ?? 0}  evicted ${s.embryonicEvicted ?? 0}`,
    `drops   ${nonzero.length === 0 ? 'none' : nonzero.map(([k, v]) => `${k} ${v}`).join(', ')}`,
    ...deviceLines(s),
    icmpLine(s),
    healthLine(s),
    offloadLine(s),
    `batches ${s.batches}  sizes ${Object.entries(s.batchSizes as Record<string, number>)
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k}:${v}`)
      .join(' ')}`,
  ];
  for (const [aid, b] of Object.entries(
    s.perAid as Record<string, { bytesIn: number; bytesOut: number }>,
  )) {
    lines.push(`aid     ${aid}: bytes in ${b.bytesIn} out ${b.bytesOut}`);
  }
  return lines.join('\n');
}

export function formatInstances(list: InstanceView[]): string {
  const head = ['AID', 'VPORT', 'REAL', 'PIDS', 'SOURCE', 'SINCE', 'HEALTH', 'REFUSALS'];
  const rows = list.map((i) => [
    i.aid,
    i.vport === 0 ? 'any' : `${i.proto}/${i.vport}`,
    i.address.includes(':') ? `[${i.address}]:${i.port}` : `${i.address}:${i.port}`,
    i.pids.length === 0 ? '-' : i.pids.join(','),
    i.source === 'static'
      ? 'config'
      : `vpm exec (${i.registrations}${i.recovered ? `, ${i.recovered} recovered` : ''})`,
    i.since || '-',
    !i.health
      ? '-'
      : i.health.state === 'up'
        ? 'up'
        : `down ${(i.health.downForMs / 1000).toFixed(1)}s`,
    i.health ? String(i.health.refusals) : '-',
  ]);
  const widths = head.map((h, k) => Math.max(h.length, ...rows.map((r) => r[k]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, k) => c.padEnd(widths[k]!))
      .join('  ')
      .trimEnd();
  return [
    line(head),
    ...rows.map(line),
    `${list.length} instance${list.length === 1 ? '' : 's'}`,
  ].join('\n');
}

/**
 * The TUN's own counters, kept by the kernel (`device` in the stats; tx is
 * toward vpm): "device  vpm0 (the kernel's counters): handed to vpm 12, not read
 * by vpm (TUN queue full) 3; written by vpm 12, dropped 0", and a line of errors
 * and FIFO overruns when there are any.
 */
function deviceLines(s: Record<string, unknown>): string[] {
  const d = s.device as Record<string, number | string> | null | undefined;
  if (d === undefined) return [];
  if (d === null) return ["device  the TUN's counters could not be read (/proc/self/net/dev)"];
  const lines = [
    `device  ${d.name} (the kernel's counters): handed to vpm ${d.txPackets}, not read by vpm (TUN queue full) ${d.txDropped}; written by vpm ${d.rxPackets}, dropped ${d.rxDropped}`,
  ];
  if (Number(d.txErrors) + Number(d.txFifo) + Number(d.rxErrors) + Number(d.rxFifo) > 0)
    lines.push(
      `device  errors toward vpm ${d.txErrors}, fifo ${d.txFifo}; from vpm ${d.rxErrors}, fifo ${d.rxFifo}`,
    );
  return lines;
}

/** "icmp    errors translated 2 ... rate-limited 0" and "frags   waiting 0  released 3". */
function icmpLine(s: Record<string, unknown>): string {
  const i = (s.icmp ?? {}) as Record<string, number>;
  return (
    `icmp    errors translated ${i.errorsTranslated ?? 0}  passed ${i.passed ?? 0}  echo replies ${i.echoReplies ?? 0}` +
    `  unreachable sent ${i.unreachableSent ?? 0}  rate-limited ${i.rateLimited ?? 0}\n` +
    `frags   waiting ${s.fragmentsHeld ?? 0}  released ${s.fragmentsReleased ?? 0}`
  );
}

/** "health  refusals 3  syn retried 2  refusals forwarded 1  not kept 0  copies in use 1". */
function healthLine(s: Record<string, unknown>): string {
  const h = (s.health ?? {}) as Record<string, number>;
  return (
    `health  instance refusals ${h.instanceRefusals ?? 0}  syn retried ${h.synRetried ?? 0}` +
    `  refusals forwarded ${h.refusalsForwarded ?? 0}  syn not kept ${h.synNotKept ?? 0}  syn copies in use ${h.synCopiesInUse ?? 0}`
  );
}

/** "offload csum, tso4, ...  super-packets in 12 (540 segments) out 12 (540)", or "offload off". */
function offloadLine(s: Record<string, unknown>): string {
  const tun = (s.tun ?? {}) as { offloads?: string[]; segmentingInSoftware?: boolean };
  const o = (s.offload ?? {}) as Record<string, number>;
  const names = tun.offloads ?? [];
  if (names.length === 0) return 'offload off (no virtio-net headers)';
  let line =
    `offload ${names.join(', ')}  super-packets in ${o.superPacketsIn ?? 0} (${o.segmentsIn ?? 0} segments)` +
    `  out ${o.superPacketsOut ?? 0} (${o.segmentsOut ?? 0} segments)`;
  if ((o.gsoRefused ?? 0) > 0 || tun.segmentingInSoftware)
    line += `  refused by the kernel ${o.gsoRefused ?? 0}, segmented by vpm ${o.softwareSegmented ?? 0} (${o.softwareSegments ?? 0} segments)`;
  return line;
}
