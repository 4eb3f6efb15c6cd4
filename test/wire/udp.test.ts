import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Check, type CheckCode, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { UDP_OFF_CHECKSUM, UdpDatagram, UdpRepr } from '../../src/wire/udp.js';
import {
  hex,
  inetSum,
  ip4,
  ip6,
  ipv4,
  ipv6,
  PROTO_UDP,
  type Pseudo,
  pseudoSum,
  udp,
  udp4,
  unhex,
} from '../support/builder.js';

// Captured from Linux 6.18 with `tcpdump -i lo -xx` (Ethernet header stripped): a
// Python UDP socket sending "vpm test" to 127.0.0.1:15353. The loopback checksum
// (fe23, the pseudo-header sum left by CHECKSUM_PARTIAL) is replaced by the full
// checksum tcpdump computed, 699b.
const UDP4 =
  '4500 0024 516b 4000 4011 eb5b 7f00 0001 7f00 0001' + ' 90cc 3bf9 0010 699b 7670 6d20 7465 7374';

// Captured the same way over IPv6: "hi v6" from ::1 to ::1.15354 (flow label 85b11;
// loopback checksum 0020 replaced by tcpdump's 3fb1).
const LOOP6 = ' 0000 0000 0000 0000 0000 0000 0000 0001'.repeat(2);
const UDP6 = `6008 5b11 000d 1140 ${LOOP6} c547 3bfa 000d 3fb1 6869 2076 36`;

const LO: Pseudo = { v: 4, src: 0x7f000001, dst: 0x7f000001 };
const LO6: Pseudo = { v: 6, src: ip6('::1'), dst: ip6('::1') };

function check(b: Uint8Array, off = 0, len = b.length - off): [CheckCode, PacketInfo] {
  const info = new PacketInfo();
  return [checkPacket(b, off, len, info), info];
}

/**
 * A UDP datagram whose checksum computes to 0, so it must go out as 0xffff (RFC 768):
 * the last payload word is chosen to bring the one's complement sum to 0xffff.
 */
function zeroChecksumDatagram(p: Pseudo): { payload: Uint8Array; bytes: Uint8Array } {
  const payload = new TextEncoder().encode('zero\0\0');
  const d = udp({ srcPort: 1234, dstPort: 5678, payload }, null); // checksum field 0
  const s = inetSum(d, pseudoSum(p, PROTO_UDP, d.length));
  const w = 0xffff - s; // s + w = 0xffff exactly
  payload[4] = w >> 8;
  payload[5] = w & 0xff;
  return { payload, bytes: udp({ srcPort: 1234, dstPort: 5678, payload }, p) };
}

describe('UdpDatagram: deconstruct', () => {
  it('reads every field of the captured IPv4 datagram', () => {
    const pkt = unhex(UDP4);
    const v = new UdpDatagram(pkt, 20);
    expect(v.srcPort()).toBe(37068);
    expect(v.dstPort()).toBe(15353);
    expect(v.length()).toBe(16);
    expect(v.checksum()).toBe(0x699b);
    expect(v.payloadOff()).toBe(28);
    expect(v.payloadLen()).toBe(8);
    expect(new TextDecoder().decode(pkt.subarray(28, 36))).toBe('vpm test');
    expect(v.verifyChecksum(pseudoSum(LO, PROTO_UDP, 16))).toBe(true);
    v.setChecksum(0xfe23); // the loopback partial checksum
    expect(v.verifyChecksum(pseudoSum(LO, PROTO_UDP, 16))).toBe(false);
  });

  it('reads the captured IPv6 datagram with the IPv6 pseudo-header', () => {
    const v = new UdpDatagram(unhex(UDP6), 40);
    expect(v.srcPort()).toBe(50503);
    expect(v.dstPort()).toBe(15354);
    expect(v.length()).toBe(13);
    expect(v.payloadLen()).toBe(5);
    expect(v.verifyChecksum(pseudoSum(LO6, PROTO_UDP, 13))).toBe(true);
  });

  it('takes a zero checksum as "none" and a stored 0xffff as a computed zero', () => {
    const v = new UdpDatagram(unhex(UDP4), 20);
    v.setChecksum(0);
    expect(v.verifyChecksum(pseudoSum(LO, PROTO_UDP, 16))).toBe(true);
    const z = zeroChecksumDatagram(LO);
    const zv = new UdpDatagram(z.bytes);
    expect(zv.checksum()).toBe(0xffff);
    expect(zv.verifyChecksum(pseudoSum(LO, PROTO_UDP, z.bytes.length))).toBe(true);
  });
});

describe('UdpDatagram / UdpRepr: construct', () => {
  it('setters write each field and nothing else (buffer pre-filled with 0xa5)', () => {
    const b = new Uint8Array(10).fill(0xa5);
    const v = new UdpDatagram(b, 1);
    v.setSrcPort(0x0102);
    v.setDstPort(0xfffe);
    expect(hex(b)).toBe('a50102fffea5a5a5a5a5');
    v.setLength(8);
    v.setChecksum(0x1234);
    expect(hex(b)).toBe('a50102fffe00081234a5');
  });

  it('UdpRepr.emit reproduces the captured datagram byte for byte', () => {
    const r = { srcPort: 37068, dstPort: 15353, payload: new TextEncoder().encode('vpm test') };
    expect(UdpRepr.bufferLen(r)).toBe(16);
    const b = new Uint8Array(16).fill(0xa5);
    UdpRepr.emit(r, new UdpDatagram(b), pseudoSum(LO, PROTO_UDP, 16));
    expect(hex(b)).toBe(hex(unhex(UDP4).subarray(20)));
  });

  it('UdpRepr.emit with no pseudo-header writes checksum 0 ("none")', () => {
    const r = { srcPort: 37068, dstPort: 15353, payload: new TextEncoder().encode('vpm test') };
    const b = new Uint8Array(16).fill(0xa5);
    UdpRepr.emit(r, new UdpDatagram(b), null);
    expect(hex(b)).toBe(`90cc3bf900100000${hex(r.payload)}`);
  });

  it('UdpRepr.emit sends a computed checksum of 0 as 0xffff', () => {
    for (const p of [LO, LO6]) {
      const z = zeroChecksumDatagram(p);
      const b = new Uint8Array(z.bytes.length).fill(0xa5);
      UdpRepr.emit(
        { srcPort: 1234, dstPort: 5678, payload: z.payload },
        new UdpDatagram(b),
        pseudoSum(p, PROTO_UDP, b.length),
      );
      expect(b[UDP_OFF_CHECKSUM]).toBe(0xff);
      expect(b[UDP_OFF_CHECKSUM + 1]).toBe(0xff);
      expect(hex(b)).toBe(hex(z.bytes));
    }
  });
});

describe('UdpRepr: parse and round trip', () => {
  it('parses the captured IPv6 datagram', () => {
    const v = new UdpDatagram(unhex(UDP6), 40);
    expect(UdpRepr.parse(v, pseudoSum(LO6, PROTO_UDP, 13))).toEqual({
      srcPort: 50503,
      dstPort: 15354,
      payload: new TextEncoder().encode('hi v6'),
    });
  });

  it('parses only the length the header declares', () => {
    const b = unhex(UDP4);
    b[20 + 5] = 12; // UDP length 12: payload "vpm " (checksum not checked)
    expect(UdpRepr.parse(new UdpDatagram(b, 20), null).payload).toEqual(
      new TextEncoder().encode('vpm '),
    );
  });

  it('refuses a length below 8 and a bad checksum', () => {
    const b = unhex(UDP4);
    b[20 + 5] = 7;
    expect(() => UdpRepr.parse(new UdpDatagram(b, 20), null)).toThrow(
      expect.objectContaining({ code: 'ERR_UDP_LENGTH' }),
    );
    const c = unhex(UDP4);
    c[c.length - 1]! ^= 0x20;
    expect(() => UdpRepr.parse(new UdpDatagram(c, 20), pseudoSum(LO, PROTO_UDP, 16))).toThrow(
      expect.objectContaining({ code: 'ERR_CHECKSUM' }),
    );
  });

  it('emit then parse is the identity; emit equals the independent builder byte for byte', () => {
    const repr = fc.record({
      srcPort: fc.nat({ max: 0xffff }),
      dstPort: fc.nat({ max: 0xffff }),
      payload: fc.uint8Array({ maxLength: 1500, size: 'max' }),
    });
    const pseudo = fc.oneof(
      fc.constant(null),
      fc.record({
        v: fc.constant(4 as const),
        src: fc.nat({ max: 0xffffffff }),
        dst: fc.nat({ max: 0xffffffff }),
      }),
      fc.record({
        v: fc.constant(6 as const),
        src: fc.uint8Array({ minLength: 16, maxLength: 16 }),
        dst: fc.uint8Array({ minLength: 16, maxLength: 16 }),
      }),
    );
    fc.assert(
      fc.property(repr, pseudo, fc.nat({ max: 7 }), (r, p, off) => {
        const len = UdpRepr.bufferLen(r);
        const b = new Uint8Array(off + len).fill(0xa5);
        const v = new UdpDatagram(b, off);
        const ps = p === null ? null : pseudoSum(p, PROTO_UDP, len);
        UdpRepr.emit(r, v, ps);
        expect(UdpRepr.parse(v, ps)).toEqual(r);
        expect(hex(b.subarray(off))).toBe(hex(udp(r, p)));
      }),
      { numRuns: 1000, seed: 768 },
    );
  });
});

describe('checkPacket: impossible UDP lengths', () => {
  const ip = { src: ip4('192.0.2.1'), dst: ip4('192.0.2.2') };

  it('describes the captured datagram', () => {
    const [code, info] = check(unhex(UDP4));
    expect(code).toBe(Check.OK);
    expect(info.protocol).toBe(PROTO_UDP);
    expect(info.l4Off).toBe(20);
    expect(info.l4HeaderLen).toBe(8);
    expect(info.l4Len).toBe(16);
    expect(info.srcPort).toBe(37068);
    expect(info.dstPort).toBe(15353);
    expect(info.tcpFlags).toBe(0);
    expect(info.payloadOff).toBe(28);
    expect(info.payloadLen).toBe(8);
  });

  it('refuses an IP payload shorter than 8 bytes as L4_TRUNCATED', () => {
    for (let n = 0; n < 8; n++) {
      const b = ipv4({ ...ip, protocol: PROTO_UDP }, new Uint8Array(n));
      expect(check(b)[0]).toBe(Check.L4_TRUNCATED);
    }
  });

  it('refuses a UDP length below 8 as BAD_UDP_LEN', () => {
    for (let n = 0; n < 8; n++) {
      const b = udp4(ip, { srcPort: 1, dstPort: 2, payload: new Uint8Array(10) });
      b[20 + 4] = 0;
      b[20 + 5] = n;
      expect(check(b)[0]).toBe(Check.BAD_UDP_LEN);
    }
  });

  it('refuses a UDP length beyond the IP payload as BAD_UDP_LEN, even with bytes in the buffer', () => {
    const b = unhex(UDP4);
    b[20 + 5] = 17;
    expect(check(b)[0]).toBe(Check.BAD_UDP_LEN);
    b[20 + 4] = 0xff;
    b[20 + 5] = 0xff;
    expect(check(b)[0]).toBe(Check.BAD_UDP_LEN);
    // Link padding after the IP total length does not count as UDP payload.
    const padded = new Uint8Array(60);
    padded.set(unhex(UDP4));
    padded[20 + 5] = 20;
    expect(check(padded)[0]).toBe(Check.BAD_UDP_LEN);
  });

  it('accepts a UDP length below the IP payload and reports the UDP length', () => {
    const b = unhex(UDP4);
    b[20 + 5] = 8; // empty datagram, 8 trailing bytes inside the IP packet
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.l4Len).toBe(8);
    expect(info.payloadOff).toBe(28);
    expect(info.payloadLen).toBe(0);
  });

  it('applies the same checks over IPv6', () => {
    const [code, info] = check(unhex(UDP6));
    expect(code).toBe(Check.OK);
    expect(info.l4Off).toBe(40);
    expect(info.l4Len).toBe(13);
    expect(info.payloadLen).toBe(5);
    const b = unhex(UDP6);
    b[40 + 5] = 14;
    expect(check(b)[0]).toBe(Check.BAD_UDP_LEN);
    b[40 + 5] = 7;
    expect(check(b)[0]).toBe(Check.BAD_UDP_LEN);
    const short = ipv6(
      { src: ip6('::1'), dst: ip6('::1'), nextHeader: PROTO_UDP },
      new Uint8Array(7),
    );
    expect(check(short)[0]).toBe(Check.L4_TRUNCATED);
  });
});
