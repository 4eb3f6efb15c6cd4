import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { pseudoHeader4, pseudoHeader6 } from '../../src/checksum/pseudo.js';
import { checksum } from '../../src/checksum/sum.js';
import { ip6, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, pseudoSum, unhex } from '../support/builder.js';

const LO = 0x7f000001;

describe('pseudoHeader4', () => {
  // On lo, Linux leaves TCP/UDP checksums to "offload" (CHECKSUM_PARTIAL): the field
  // holds the folded pseudo-header sum, uncomplemented. So each capture from Linux
  // 6.18 (`tcpdump -i lo -xx`) is a vector: protocol, L4 length -> field as captured.
  it.each([
    ['SYN to http.server, 40-byte header', PROTO_TCP, 40, 0xfe30],
    ['"GET / HTTP/1.0" PSH|ACK, 50 bytes', PROTO_TCP, 50, 0xfe3a],
    ['handshake ACK, 32 bytes', PROTO_TCP, 32, 0xfe28],
    ['"vpm test" UDP, 16 bytes', PROTO_UDP, 16, 0xfe23],
    ['"opts" UDP after IPv4 options, 12 bytes', PROTO_UDP, 12, 0xfe1f],
  ])('127.0.0.1 -> 127.0.0.1, %s: %s', (_name, proto, len, field) => {
    expect(pseudoHeader4(LO, LO, proto, len)).toBe(field);
  });

  it('completes the captured SYN: complement of pseudo + segment is the checksum tcpdump computed', () => {
    const seg = unhex(
      'cdc2 46a0 d5e3 e5a1 0000 0000 a002 ffd7 0000 0000 0204 ffd7 0402 080a 109f 8ae9 0000 0000 0103 030a',
    );
    expect(checksum(seg, 0, 40, pseudoHeader4(LO, LO, PROTO_TCP, 40))).toBe(0xe48d);
  });

  it("equals the builder's 12-byte pseudo-header summed word by word (fast-check)", () => {
    fc.assert(
      fc.property(
        fc.nat({ max: 0xffffffff }),
        fc.nat({ max: 0xffffffff }),
        fc.nat({ max: 255 }),
        fc.nat({ max: 0xffff }),
        (src, dst, proto, len) => {
          const want = pseudoSum({ v: 4, src, dst }, proto, len);
          expect(pseudoHeader4(src, dst, proto, len)).toBe(want);
          // Addresses that went through `| 0` (signed) give the same sum.
          expect(pseudoHeader4(src | 0, dst | 0, proto, len)).toBe(want);
        },
      ),
      { numRuns: 20_000, seed: 793 },
    );
  });

  it('folds the largest values', () => {
    expect(pseudoHeader4(0xffffffff, 0xffffffff, 255, 0xffff)).toBe(
      pseudoSum({ v: 4, src: 0xffffffff, dst: 0xffffffff }, 255, 0xffff),
    );
    expect(pseudoHeader4(0, 0, 0, 0)).toBe(0);
  });
});

describe('pseudoHeader6', () => {
  const LOOP = new Uint8Array(32);
  LOOP.set(ip6('::1'), 0);
  LOOP.set(ip6('::1'), 16);

  // Captured the same way over IPv6 (::1 -> ::1): the partial checksums as on the wire.
  it.each([
    ['"hi v6" UDP, 13 bytes', PROTO_UDP, 13, 0x0020],
    ['"EF" UDP with traffic class b8, 10 bytes', PROTO_UDP, 10, 0x001d],
    ['SYN to a closed port, 40 bytes', PROTO_TCP, 40, 0x0030],
  ])('::1 -> ::1, %s', (_name, proto, len, field) => {
    expect(pseudoHeader6(LOOP, 0, 16, proto, len)).toBe(field);
  });

  it('completes the captured ICMPv6 echo request (the kernel computed its checksum, 5dbe)', () => {
    const msg = unhex('8000 0000 4321 0007 7069 6e67');
    expect(checksum(msg, 0, 12, pseudoHeader6(LOOP, 0, 16, PROTO_ICMPV6, 12))).toBe(0x5dbe);
  });

  it("equals the builder's 40-byte pseudo-header, addresses anywhere in the buffer, 32-bit lengths (fast-check)", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.nat({ max: 255 }),
        fc.oneof(fc.nat({ max: 0xffff }), fc.nat({ max: 0xffffffff })),
        fc.nat({ max: 7 }),
        fc.nat({ max: 40 }),
        (src, dst, proto, len, srcOff, gap) => {
          const b = new Uint8Array(srcOff + 16 + gap + 16 + 3).fill(0xa5);
          b.set(src, srcOff);
          const dstOff = srcOff + 16 + gap;
          b.set(dst, dstOff);
          expect(pseudoHeader6(b, srcOff, dstOff, proto, len)).toBe(
            pseudoSum({ v: 6, src, dst }, proto, len),
          );
        },
      ),
      { numRuns: 20_000, seed: 8200 },
    );
  });

  it('folds all-ones addresses and the largest jumbogram length', () => {
    const b = new Uint8Array(32).fill(0xff);
    const ones = new Uint8Array(16).fill(0xff);
    expect(pseudoHeader6(b, 0, 16, 255, 0xffffffff)).toBe(
      pseudoSum({ v: 6, src: ones, dst: ones }, 255, 0xffffffff),
    );
    expect(pseudoHeader6(new Uint8Array(32), 0, 16, 0, 0)).toBe(0);
  });
});
