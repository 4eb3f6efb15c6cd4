/**
 * vpm's own view of the benchmark: differences of `vpm stats --json` snapshots
 * taken around each measurement of a vpm path, summed per metric and path, with
 * the daemon's CPU time. Only that path's traffic reaches its daemon, so a
 * difference taken around one of its measurements is that measurement's alone.
 */

import type { MetricId, VpmActivity, VpmPathId } from './model.js';

type Json = Record<string, unknown>;

function num(o: unknown, key: string): number {
  const v = (o as Json | undefined)?.[key];
  return typeof v === 'number' ? v : 0;
}

function numMap(o: unknown, key: string): Record<string, number> {
  const m = (o as Json | undefined)?.[key];
  const out: Record<string, number> = {};
  if (m && typeof m === 'object')
    for (const [k, v] of Object.entries(m as Json)) if (typeof v === 'number') out[k] = v;
  return out;
}

export function emptyActivity(metric: MetricId, path: VpmPathId): VpmActivity {
  return {
    metric,
    path,
    wallSec: 0,
    cpuSec: 0,
    packetsIn: 0,
    packetsOut: 0,
    bytesIn: 0,
    superPacketsIn: 0,
    segmentsIn: 0,
    batches: 0,
    batchSizes: {},
    drops: {},
    flowsCreated: 0,
    flowsRefused: 0,
    rstSent: 0,
    writeQueueFull: 0,
    tunQueueDrops: 0,
  };
}

/**
 * Add the difference `after - before` of two stats snapshots to `acc`, and the
 * packets the TUN dropped in between (`tunDropped`, from its tx_dropped).
 */
export function addDelta(
  acc: VpmActivity,
  before: Json,
  after: Json,
  wallSec: number,
  cpuSec: number,
  tunDropped = 0,
): void {
  const d = (k: string) => num(after, k) - num(before, k);
  acc.tunQueueDrops += tunDropped;
  acc.wallSec += wallSec;
  acc.cpuSec += cpuSec;
  acc.packetsIn += d('packetsIn');
  acc.packetsOut += d('packetsOut');
  acc.bytesIn += d('bytesIn');
  acc.superPacketsIn +=
    num(after.offload, 'superPacketsIn') - num(before.offload, 'superPacketsIn');
  acc.segmentsIn += num(after.offload, 'segmentsIn') - num(before.offload, 'segmentsIn');
  acc.batches += d('batches');
  acc.flowsCreated += d('flowsCreated');
  acc.flowsRefused += d('flowsRefused');
  acc.rstSent += d('rstSent');
  acc.writeQueueFull += num(after.tun, 'writeQueueFull') - num(before.tun, 'writeQueueFull');
  const hb = numMap(before, 'batchSizes');
  for (const [k, v] of Object.entries(numMap(after, 'batchSizes')))
    acc.batchSizes[k] = (acc.batchSizes[k] ?? 0) + v - (hb[k] ?? 0);
  const db = numMap(before, 'drops');
  for (const [k, v] of Object.entries(numMap(after, 'drops'))) {
    const n = v - (db[k] ?? 0);
    if (n !== 0) acc.drops[k] = (acc.drops[k] ?? 0) + n;
  }
}
