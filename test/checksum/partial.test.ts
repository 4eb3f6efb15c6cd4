/**
 * Partial (pseudo-header) checksums: the rules for a packet the kernel handed
 * over with NEEDS_CSUM. The property that matters: rewrite the addresses with
 * the partial rule, let "the kernel" finish the checksum, and the result equals
 * a full recompute over the rewritten packet.
 */

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { updatePartial32 } from '../../src/checksum/incremental.js';
import { updatePartial32Reference } from '../../src/checksum/incremental.reference.js';
import { checkPacket, PacketInfo } from '../../src/wire/parse.js';
import {
  setDstPortWithChecksumUpdate,
  setIpv4DstAddrWithChecksumUpdate,
  setIpv4SrcAddrWithChecksumUpdate,
  setSrcPortWithChecksumUpdate,
} from '../../src/wire/rewrite.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import { hex, inetChecksum, tcp4, tcp4Partial } from '../support/builder.js';

/** What the kernel does with a CHECKSUM_PARTIAL packet: sum [csum_start, end) and store the complement. */
function finish(pkt: Uint8Array, l4Off: number, field: number): void {
  const c = inetChecksum(pkt.subarray(l4Off));
  pkt[l4Off + field] = c >> 8;
  pkt[l4Off + field + 1] = c & 0xff;
}

describe('updatePartial32', () => {
  it('equals its reference twin', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 0xffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (s, a, b) => {
          expect(updatePartial32(s, a, b)).toBe(updatePartial32Reference(s, a, b));
        },
      ),
      { numRuns: 20_000 },
    );
  });

  it('rewritten partially, then finished, equals the packet built with the new addresses and ports', () => {
    fc.assert(
      fc.property(
        fc.record({
          src: fc.integer({ min: 0, max: 0xffffffff }),
          dst: fc.integer({ min: 0, max: 0xffffffff }),
          nsrc: fc.integer({ min: 0, max: 0xffffffff }),
          ndst: fc.integer({ min: 0, max: 0xffffffff }),
          sp: fc.integer({ min: 0, max: 0xffff }),
          dp: fc.integer({ min: 0, max: 0xffff }),
          nsp: fc.integer({ min: 0, max: 0xffff }),
          ndp: fc.integer({ min: 0, max: 0xffff }),
          payload: fc.uint8Array({ maxLength: 600 }),
        }),
        (r) => {
          const t = { srcPort: r.sp, dstPort: r.dp, seq: 7, payload: r.payload };
          const pkt = tcp4Partial({ src: r.src, dst: r.dst }, t);
          const info = new PacketInfo();
          checkPacket(pkt, 0, pkt.length, info);
          setIpv4SrcAddrWithChecksumUpdate(pkt, 0, info.l4Off, 6, r.nsrc, true);
          setIpv4DstAddrWithChecksumUpdate(pkt, 0, info.l4Off, 6, r.ndst, true);
          setSrcPortWithChecksumUpdate(pkt, info.l4Off, 6, r.nsp, true);
          setDstPortWithChecksumUpdate(pkt, info.l4Off, 6, r.ndp, true);
          // Still partial: exactly the pseudo-header sum of the new addresses.
          expect(hex(pkt)).toBe(
            hex(
              tcp4Partial({ src: r.nsrc, dst: r.ndst }, { ...t, srcPort: r.nsp, dstPort: r.ndp }),
            ),
          );
          finish(pkt, info.l4Off, 16);
          const want = tcp4({ src: r.nsrc, dst: r.ndst }, { ...t, srcPort: r.nsp, dstPort: r.ndp });
          expect(hex(pkt)).toBe(hex(want));
          checkPacket(pkt, 0, pkt.length, info);
          expect(verifyChecksums(pkt, info)).toBe(Verify.OK);
        },
      ),
      { numRuns: 3000 },
    );
  });
});
