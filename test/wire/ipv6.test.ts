import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IPV6_HEADER_LEN, Ipv6Header, Ipv6Repr } from '../../src/wire/ipv6.js';
import { Check, type CheckCode, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { hex, ip6, ipv6, PROTO_UDP, udp6, unhex } from '../support/builder.js';

// Captured from Linux 6.18 with `tcpdump -i lo -xx` (Ethernet header stripped), a
// Python UDP socket sending to ::1: "hi v6" with the kernel's flow label 85b11, and
// "EF" from a socket with IPV6_TCLASS 0xb8 (DSCP EF), flow label 2f942. The UDP
// checksums are lo's partial ones (0020, 001d); the fixed headers are as sent.
const LOOP6 = ' 0000 0000 0000 0000 0000 0000 0000 0001'.repeat(2);
const HI_V6 = `6008 5b11 000d 1140 ${LOOP6} c547 3bfa 000d 0020 6869 2076 36`;
const TCLASS = `6b82 f942 000a 1140 ${LOOP6} 9ac1 3bfb 000a 001d 4546`;

// RFC 3849 documentation prefix with distinct bytes everywhere, hand-assembled from
// the RFC 8200 §3 diagram (no checksum in the IPv6 header to get wrong).
const DOC =
  '6fff ffff 0000 3bff 2001 0db8 0001 0002 0003 0004 0005 0006 2001 0db8 ffff fffe fffd fffc fffb fffa';

function check(b: Uint8Array, off = 0, len = b.length - off): [CheckCode, PacketInfo] {
  const info = new PacketInfo();
  return [checkPacket(b, off, len, info), info];
}

describe('Ipv6Header: deconstruct', () => {
  it('reads every field of the captured "hi v6" header', () => {
    const b = unhex(HI_V6);
    const v = new Ipv6Header(b);
    expect(v.version()).toBe(6);
    expect(v.trafficClass()).toBe(0);
    expect(v.flowLabel()).toBe(0x85b11);
    expect(v.payloadLen()).toBe(13);
    expect(v.nextHeader()).toBe(PROTO_UDP);
    expect(v.hopLimit()).toBe(64);
    expect(v.srcAddrOff()).toBe(8);
    expect(v.dstAddrOff()).toBe(24);
    expect(hex(b.subarray(v.srcAddrOff(), v.srcAddrOff() + 16))).toBe(hex(ip6('::1')));
    expect(v.payloadOff()).toBe(40);
  });

  it('splits the traffic class across its nibbles (captured with IPV6_TCLASS 0xb8)', () => {
    const v = new Ipv6Header(unhex(TCLASS));
    expect(v.trafficClass()).toBe(0xb8);
    expect(v.flowLabel()).toBe(0x2f942);
    expect(v.payloadLen()).toBe(10);
  });

  it('reads all-ones fields without sign trouble, at an offset', () => {
    const b = new Uint8Array(45).fill(0xa5);
    b.set(unhex(DOC), 5);
    const v = new Ipv6Header(b, 5);
    expect(v.version()).toBe(6);
    expect(v.trafficClass()).toBe(0xff);
    expect(v.flowLabel()).toBe(0xfffff);
    expect(v.payloadLen()).toBe(0);
    expect(v.nextHeader()).toBe(59);
    expect(v.hopLimit()).toBe(255);
    expect(v.srcAddrOff()).toBe(13);
    expect(v.payloadOff()).toBe(45);
  });
});

describe('Ipv6Header / Ipv6Repr: construct', () => {
  it('setters write each field and nothing else (buffer pre-filled with 0xa5)', () => {
    const b = new Uint8Array(40).fill(0xa5);
    const v = new Ipv6Header(b);
    v.setVersionTcFlow(0xb8, 0x2f942);
    expect(hex(b.subarray(0, 8))).toBe('6b82f942a5a5a5a5');
    v.setPayloadLen(0x1234);
    v.setNextHeader(6);
    v.setHopLimit(1);
    expect(hex(b.subarray(0, 10))).toBe('6b82f94212340601a5a5');
    v.setVersionTcFlow(0x1ff, 0x1fffff); // out-of-range values are masked to their fields
    expect(hex(b.subarray(0, 4))).toBe('6fffffff');
  });

  it('Ipv6Repr.emit reproduces the captured header byte for byte', () => {
    const b = new Uint8Array(40).fill(0xa5);
    const r = {
      srcAddr: ip6('::1'),
      dstAddr: ip6('::1'),
      nextHeader: 17,
      payloadLen: 10,
      hopLimit: 64,
      trafficClass: 0xb8,
      flowLabel: 0x2f942,
    };
    expect(Ipv6Repr.bufferLen(r)).toBe(50);
    Ipv6Repr.emit(r, new Ipv6Header(b));
    expect(hex(b)).toBe(hex(unhex(TCLASS).subarray(0, 40)));
  });

  it('Ipv6Repr.emit refuses addresses that are not 16 bytes', () => {
    const r = {
      srcAddr: new Uint8Array(4),
      dstAddr: ip6('::1'),
      nextHeader: 17,
      payloadLen: 0,
      hopLimit: 64,
      trafficClass: 0,
      flowLabel: 0,
    };
    expect(() => Ipv6Repr.emit(r, new Ipv6Header(new Uint8Array(40)))).toThrow(
      expect.objectContaining({ code: 'ERR_IPV6_ADDR' }),
    );
  });
});

describe('Ipv6Repr: parse and round trip', () => {
  it('parses the documentation header', () => {
    expect(Ipv6Repr.parse(new Ipv6Header(unhex(DOC)))).toEqual({
      srcAddr: ip6('2001:db8:1:2:3:4:5:6'),
      dstAddr: ip6('2001:db8:ffff:fffe:fffd:fffc:fffb:fffa'),
      nextHeader: 59,
      payloadLen: 0,
      hopLimit: 255,
      trafficClass: 0xff,
      flowLabel: 0xfffff,
    });
  });

  it('refuses a version other than 6', () => {
    const b = unhex(DOC);
    b[0] = 0x4f;
    expect(() => Ipv6Repr.parse(new Ipv6Header(b))).toThrow(
      expect.objectContaining({ code: 'ERR_IP_VERSION' }),
    );
  });

  it('emit then parse is the identity; emit equals the independent builder byte for byte', () => {
    const addr = fc.uint8Array({ minLength: 16, maxLength: 16 });
    const repr = fc.record({
      srcAddr: addr,
      dstAddr: addr,
      nextHeader: fc.nat({ max: 255 }),
      payloadLen: fc.nat({ max: 0xffff }),
      hopLimit: fc.nat({ max: 255 }),
      trafficClass: fc.nat({ max: 255 }),
      flowLabel: fc.nat({ max: 0xfffff }),
    });
    fc.assert(
      fc.property(repr, fc.nat({ max: 7 }), (r, off) => {
        const b = new Uint8Array(off + 40).fill(0xa5);
        const v = new Ipv6Header(b, off);
        Ipv6Repr.emit(r, v);
        expect(Ipv6Repr.parse(v)).toEqual(r);
        const want = ipv6(
          {
            src: r.srcAddr,
            dst: r.dstAddr,
            nextHeader: r.nextHeader,
            hopLimit: r.hopLimit,
            trafficClass: r.trafficClass,
            flowLabel: r.flowLabel,
          },
          new Uint8Array(r.payloadLen),
        ).subarray(0, 40);
        expect(hex(b.subarray(off))).toBe(hex(want));
      }),
      { numRuns: 1000, seed: 8200 },
    );
  });
});

describe('checkPacket: impossible IPv6 lengths', () => {
  const ip = { src: ip6('2001:db8::1'), dst: ip6('2001:db8::2') };

  it('describes the captured "hi v6" datagram', () => {
    const [code, info] = check(unhex(HI_V6));
    expect(code).toBe(Check.OK);
    expect(info.version).toBe(6);
    expect(info.ipHeaderLen).toBe(40);
    expect(info.ipTotalLen).toBe(53);
    expect(info.protocol).toBe(PROTO_UDP);
    expect(info.srcAddr).toBe(0);
    expect(info.dstAddr).toBe(0);
    expect(info.isFragment).toBe(false);
    expect(info.l4Off).toBe(40);
    expect(info.srcPort).toBe(50503);
  });

  it('refuses fewer than 40 bytes as TRUNCATED', () => {
    const b = unhex(HI_V6);
    for (let len = 1; len < IPV6_HEADER_LEN; len++)
      expect(check(b, 0, len)[0]).toBe(Check.TRUNCATED);
  });

  it('refuses a payload length beyond the bytes given as BAD_TOTAL_LEN', () => {
    const b = unhex(HI_V6);
    b[5] = 14;
    expect(check(b)[0]).toBe(Check.BAD_TOTAL_LEN);
    b[4] = 0xff;
    b[5] = 0xff;
    expect(check(b)[0]).toBe(Check.BAD_TOTAL_LEN);
    expect(check(unhex(HI_V6), 0, 52)[0]).toBe(Check.BAD_TOTAL_LEN);
  });

  it('accepts trailing link padding and reports only the declared payload', () => {
    const p = udp6(ip, { srcPort: 1, dstPort: 2, payload: new Uint8Array(4) });
    const b = new Uint8Array(p.length + 20);
    b.set(p);
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.ipTotalLen).toBe(52);
    expect(info.payloadOff + info.payloadLen).toBe(52);
  });

  it('leaves a payload it does not parse opaque (No Next Header, ESP); refuses a cut extension header', () => {
    for (const nh of [59, 50]) {
      const b = ipv6({ ...ip, nextHeader: nh }, new Uint8Array(3));
      const [code, info] = check(b);
      expect(code).toBe(Check.OK);
      expect(info.protocol).toBe(nh);
      expect(info.l4Off).toBe(-1);
      expect(info.payloadOff).toBe(40);
      expect(info.payloadLen).toBe(3);
    }
    // Hop-by-hop and fragment headers are 8 bytes at least: 3 cannot hold one.
    for (const nh of [0, 43, 44, 60]) {
      const b = ipv6({ ...ip, nextHeader: nh }, new Uint8Array(3));
      expect(check(b)[0]).toBe(Check.IPV6_BAD_EXT_HEADER);
    }
    const [code, info] = check(unhex(DOC));
    expect(code).toBe(Check.OK);
    expect(info.ipTotalLen).toBe(40);
    expect(info.payloadLen).toBe(0);
  });
});
