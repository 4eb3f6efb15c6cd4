/**
 * Fuzz target: the pipeline (src/datapath/pipeline.ts) over a MemoryTun with
 * virtio-net headers, offloads on, a TCP and a UDP service (scripts/fuzz/harness.ts).
 *
 * The input is a sequence of records, each one frame the device reads:
 *
 *   ctl (1 byte) | length (2 bytes, big-endian) | frame (length bytes: the 10-byte
 *   virtio-net header, then the packet)
 *
 * ctl bits 0-2: how far the clock moves before this frame (0, 1, 10, 100, 500,
 * 1000, 2000 ms or 40 s: past every timeout); bit 3: the batch ends after this
 * frame; bit 4: the daemon's timer runs (flows and held fragments expire) before
 * it; bit 5: the device refuses the packets written in this frame's batch
 * (EINVAL). A record cut short takes what is left. Every input starts from an
 * empty table. A crash is an exception from the pipeline or a broken invariant
 * (PipelineHarness.check: packetsIn = packetsOut + drops + fragmentsHeld, every
 * packet read counted, every packet written accepted by checkPacket).
 */

import { PipelineHarness } from '../harness.js';

const ADVANCE = [0, 1, 10, 100, 500, 1000, 2000, 40_000];

let h: PipelineHarness | null = null;

/** Decodes the records of `data`: [ctl, frame] pairs. */
export function records(data: Uint8Array, maxFrame: number): { ctl: number; frame: Uint8Array }[] {
  const out: { ctl: number; frame: Uint8Array }[] = [];
  let i = 0;
  while (i < data.length) {
    const ctl = data[i]!;
    const len = i + 2 < data.length ? (data[i + 1]! << 8) | data[i + 2]! : 0;
    const start = Math.min(i + 3, data.length);
    const end = Math.min(start + Math.min(len, maxFrame), data.length);
    out.push({ ctl, frame: data.subarray(start, end) });
    i = end;
  }
  return out;
}

export function fuzz(data: Buffer): void {
  if (!h) h = new PipelineHarness();
  const harness = h;
  harness.reset();
  const maxFrame = harness.tun.slotSize - 1;
  let batch: Uint8Array[] = [];
  let refuse = false;
  const flush = () => {
    if (batch.length === 0) return;
    harness.refuseWrites = refuse;
    harness.inject(batch);
    harness.refuseWrites = false;
    batch = [];
    refuse = false;
  };
  for (const { ctl, frame } of records(data, maxFrame)) {
    const advance = ADVANCE[ctl & 7]!;
    if (advance > 0 || ctl & 0x10) flush();
    harness.now += advance;
    if (ctl & 0x10) harness.expire();
    if (ctl & 0x20) refuse = true;
    batch.push(frame);
    if (ctl & 0x08 || batch.length === harness.tun.batchSize) flush();
  }
  flush();
  harness.now += 40_000;
  harness.expire();
}
