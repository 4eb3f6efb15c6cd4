/**
 * The random/mutation pool of `npm run fuzz:packets` (scripts/fuzz-packets.ts),
 * IPv6 flows with random extension header chains among its packets, through the
 * fuzz harness's pipeline (IPv6 on): a short seeded run as a test — no crash,
 * every packet accounted for (packets in = out + drops + held, checked by the
 * harness after every batch), every packet written one checkPacket accepts —
 * and the IPv6 paths are reached (flows, ICMPv6 errors, fragments, ND drops).
 */

import { describe, expect, it } from 'vitest';
import { PipelineHarness } from '../../scripts/fuzz/harness.js';
import { mutate, pool } from '../../scripts/fuzz-packets.js';
import { Drop } from '../../src/datapath/counters.js';
import { Rng } from '../support/rng.js';

describe('fuzz:packets pool with IPv6, as a short test run', () => {
  it('60,000 packets, 40 % as built and the rest mutated: no crash, all accounted', () => {
    const rng = new Rng(0x6066);
    const h = new PipelineHarness({ capacity: 256, batchSize: 32, seed: 3 });
    const frames = pool(rng);
    const v6 = frames.filter((f) => f.length > 10 && f[10]! >> 4 === 6);
    expect(v6.length).toBeGreaterThan(100);
    const maxLen = h.tun.slotSize - 1;
    let sent = 0;
    let batches = 0;
    while (sent < 60_000) {
      const batch: Uint8Array[] = [];
      const size = 1 + rng.int(32);
      for (let i = 0; i < size; i++) {
        // Half the draws from the IPv6 frames.
        const f = rng.int(2) === 0 ? v6[rng.int(v6.length)]! : frames[rng.int(frames.length)]!;
        batch.push(rng.int(10) < 4 ? f : mutate(rng, f, maxLen));
      }
      h.now += rng.int(10) === 0 ? rng.int(3000) : 0;
      h.refuseWrites = rng.int(200) === 0;
      h.inject(batch);
      h.refuseWrites = false;
      if (++batches % 256 === 0) h.expire();
      sent += size;
    }
    h.now += 40_000;
    h.expire();
    const c = h.counters;
    // Frames shorter than the virtio-net header never reach the pipeline (the device drops them).
    expect(c.packetsIn).toBe(sent - h.tun.stats().readShort);
    expect(c.flowsCreated).toBeGreaterThan(50);
    expect(c.icmpErrorsTranslated).toBeGreaterThan(0);
    expect(c.echoReplies).toBeGreaterThan(0);
    expect(c.superPacketsOut).toBeGreaterThan(0);
    for (const r of [
      Drop.ICMPV6_ND,
      Drop.ICMPV6_MLD,
      Drop.IPV6_BAD_EXT_HEADER,
      Drop.BAD_L4_CHECKSUM,
      Drop.FRAGMENT_NO_FLOW,
    ])
      expect(c.drops[r], `drop reason ${r}`).toBeGreaterThan(0);
    expect(c.drops[Drop.IPV6]).toBe(0);
  });
});
