import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ICMP_DEST_UNREACHABLE,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  ICMP_TIME_EXCEEDED,
  IcmpPacket,
  IcmpRepr,
} from '../../src/wire/icmp.js';
import { Ipv4Packet } from '../../src/wire/ipv4.js';
import { Check, type CheckCode, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import {
  hex,
  icmp,
  inetSum,
  ip4,
  ip6,
  ipv4,
  ipv6,
  PROTO_ICMP,
  PROTO_ICMPV6,
  pseudoSum,
  unhex,
} from '../support/builder.js';

// Captured from Linux 6.18 with `tcpdump -i lo -xx` (Ethernet header stripped): an
// echo request (ident 0x1234, seq 1, data "abcdefgh") written by a Python raw ICMP
// socket to 127.0.0.1, and the kernel's echo reply. ICMP has no pseudo-header and
// no offload on lo: both checksums are as sent.
const ECHO_REQUEST =
  '4500 0024 bf4e 4000 4001 7d88 7f00 0001 7f00 0001' + ' 0800 5435 1234 0001 6162 6364 6566 6768';
const ECHO_REPLY =
  '4500 0024 bf4f 0000 4001 bd87 7f00 0001 7f00 0001' + ' 0000 5c35 1234 0001 6162 6364 6566 6768';

// Captured the same way: the kernel's port unreachable for a UDP datagram ("vpm test")
// sent to a closed port; the data quotes the offending IP header and the UDP datagram
// (its checksum still the loopback partial fe23, as it was on the wire).
const INNER =
  '4500 0024 516b 4000 4011 eb5b 7f00 0001 7f00 0001 90cc 3bf9 0010 fe23 7670 6d20 7465 7374';
const PORT_UNREACHABLE = `45c0 0040 bf4d 0000 4001 bcad 7f00 0001 7f00 0001 0303 6698 0000 0000 ${INNER}`;

// Captured the same way over IPv6: an ICMPv6 echo request (ident 0x4321, seq 7, data
// "ping") from a Python raw ICMPv6 socket to ::1; the kernel filled in the checksum.
const LOOP6 = ' 0000 0000 0000 0000 0000 0000 0000 0001'.repeat(2);
const ECHO6 = `6007 1a96 000c 3a40 ${LOOP6} 8000 5dbe 4321 0007 7069 6e67`;

function check(b: Uint8Array, off = 0, len = b.length - off): [CheckCode, PacketInfo] {
  const info = new PacketInfo();
  return [checkPacket(b, off, len, info), info];
}

describe('IcmpPacket: deconstruct', () => {
  it('reads the captured echo request and reply', () => {
    const req = new IcmpPacket(unhex(ECHO_REQUEST), 20, 16);
    expect(req.msgType()).toBe(ICMP_ECHO_REQUEST);
    expect(req.code()).toBe(0);
    expect(req.checksum()).toBe(0x5435);
    expect(req.echoIdent()).toBe(0x1234);
    expect(req.echoSeq()).toBe(1);
    expect(req.restOfHeader()).toBe(0x12340001);
    expect(req.dataOff()).toBe(28);
    expect(req.dataLen()).toBe(8);
    expect(req.verifyChecksum()).toBe(true);
    const rep = new IcmpPacket(unhex(ECHO_REPLY), 20, 16);
    expect(rep.msgType()).toBe(ICMP_ECHO_REPLY);
    expect(rep.echoIdent()).toBe(0x1234);
    expect(rep.verifyChecksum()).toBe(true);
  });

  it('reads the captured port unreachable and the IP header it quotes', () => {
    const b = unhex(PORT_UNREACHABLE);
    const m = new IcmpPacket(b, 20, 44);
    expect(m.msgType()).toBe(ICMP_DEST_UNREACHABLE);
    expect(m.code()).toBe(3);
    expect(m.restOfHeader()).toBe(0);
    expect(m.dataLen()).toBe(36);
    expect(m.verifyChecksum()).toBe(true);
    const inner = new Ipv4Packet(b, m.dataOff());
    expect(inner.protocol()).toBe(17);
    expect(inner.ident()).toBe(0x516b);
    expect(inner.verifyChecksum()).toBe(true);
    b[b.length - 1]! ^= 0x01; // the quoted data is covered too
    expect(m.verifyChecksum()).toBe(false);
  });

  it('reads the captured ICMPv6 echo request (its checksum needs the IPv6 pseudo-header)', () => {
    const b = unhex(ECHO6);
    const m = new IcmpPacket(b, 40, 12);
    expect(m.msgType()).toBe(128);
    expect(m.echoIdent()).toBe(0x4321);
    expect(m.echoSeq()).toBe(7);
    expect(m.dataLen()).toBe(4);
    const pseudo = pseudoSum({ v: 6, src: ip6('::1'), dst: ip6('::1') }, PROTO_ICMPV6, 12);
    expect(inetSum(b.subarray(40), pseudo)).toBe(0xffff);
  });

  it('names the common message types by their RFC 792 numbers', () => {
    expect([ICMP_ECHO_REPLY, ICMP_DEST_UNREACHABLE, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED]).toEqual(
      [0, 3, 8, 11],
    );
  });
});

describe('IcmpPacket / IcmpRepr: construct', () => {
  it('setters write each field and nothing else (buffer pre-filled with 0xa5)', () => {
    const b = new Uint8Array(10).fill(0xa5);
    const m = new IcmpPacket(b, 1, 8);
    m.setMsgType(11);
    m.setCode(1);
    expect(hex(b)).toBe('a50b01a5a5a5a5a5a5a5');
    m.setChecksum(0x1234);
    m.setRestOfHeader(0xdeadbeef);
    expect(hex(b)).toBe('a50b011234deadbeefa5');
  });

  it('IcmpRepr.emit reproduces the captured echo request', () => {
    const r = {
      msgType: 8,
      code: 0,
      restOfHeader: 0x12340001,
      data: new TextEncoder().encode('abcdefgh'),
    };
    expect(IcmpRepr.bufferLen(r)).toBe(16);
    const b = new Uint8Array(16).fill(0xa5);
    IcmpRepr.emit(r, new IcmpPacket(b, 0, 16));
    expect(hex(b)).toBe(hex(unhex(ECHO_REQUEST).subarray(20)));
  });

  it('IcmpRepr.emit reproduces the captured port unreachable, at an offset', () => {
    const r = { msgType: 3, code: 3, restOfHeader: 0, data: unhex(INNER) };
    const b = new Uint8Array(2 + 44 + 2).fill(0xa5);
    IcmpRepr.emit(r, new IcmpPacket(b, 2, 44));
    expect(hex(b)).toBe(`a5a5${hex(unhex(PORT_UNREACHABLE).subarray(20))}a5a5`);
  });
});

describe('IcmpRepr: parse and round trip', () => {
  it('parses the captured echo reply', () => {
    expect(IcmpRepr.parse(new IcmpPacket(unhex(ECHO_REPLY), 20, 16))).toEqual({
      msgType: 0,
      code: 0,
      restOfHeader: 0x12340001,
      data: new TextEncoder().encode('abcdefgh'),
    });
  });

  it('refuses a message below 8 bytes and a bad checksum', () => {
    const b = unhex(ECHO_REQUEST);
    expect(() => IcmpRepr.parse(new IcmpPacket(b, 20, 7))).toThrow(
      expect.objectContaining({ code: 'ERR_TRUNCATED' }),
    );
    b[30]! ^= 0x80;
    expect(() => IcmpRepr.parse(new IcmpPacket(b, 20, 16))).toThrow(
      expect.objectContaining({ code: 'ERR_CHECKSUM' }),
    );
  });

  it('emit then parse is the identity; emit equals the independent builder byte for byte', () => {
    const repr = fc.record({
      msgType: fc.nat({ max: 255 }),
      code: fc.nat({ max: 255 }),
      restOfHeader: fc.nat({ max: 0xffffffff }),
      data: fc.uint8Array({ maxLength: 1500, size: 'max' }),
    });
    fc.assert(
      fc.property(repr, fc.nat({ max: 7 }), (r, off) => {
        const len = IcmpRepr.bufferLen(r);
        const b = new Uint8Array(off + len).fill(0xa5);
        const m = new IcmpPacket(b, off, len);
        IcmpRepr.emit(r, m);
        expect(IcmpRepr.parse(m)).toEqual(r);
        expect(hex(b.subarray(off))).toBe(
          hex(icmp({ type: r.msgType, code: r.code, rest: r.restOfHeader, data: r.data })),
        );
      }),
      { numRuns: 1000, seed: 792 },
    );
  });
});

describe('checkPacket: impossible ICMP lengths', () => {
  const ip = { src: ip4('192.0.2.1'), dst: ip4('192.0.2.2') };

  it('describes the captured port unreachable (no ports, no TCP flags)', () => {
    const [code, info] = check(unhex(PORT_UNREACHABLE));
    expect(code).toBe(Check.OK);
    expect(info.protocol).toBe(PROTO_ICMP);
    expect(info.l4Off).toBe(20);
    expect(info.l4HeaderLen).toBe(8);
    expect(info.l4Len).toBe(44);
    expect(info.srcPort).toBe(0);
    expect(info.dstPort).toBe(0);
    expect(info.tcpFlags).toBe(0);
    expect(info.payloadOff).toBe(28);
    expect(info.payloadLen).toBe(36);
  });

  it('refuses an ICMP message below 8 bytes as L4_TRUNCATED', () => {
    for (let n = 0; n < 8; n++) {
      expect(check(ipv4({ ...ip, protocol: PROTO_ICMP }, new Uint8Array(n).fill(8)))[0]).toBe(
        Check.L4_TRUNCATED,
      );
    }
    const exact = ipv4({ ...ip, protocol: PROTO_ICMP }, icmp({ type: 8 }));
    const [code, info] = check(exact);
    expect(code).toBe(Check.OK);
    expect(info.payloadLen).toBe(0);
  });

  it('refuses an ICMPv6 message below 8 bytes as L4_TRUNCATED', () => {
    const [code, info] = check(unhex(ECHO6));
    expect(code).toBe(Check.OK);
    expect(info.l4Off).toBe(40);
    expect(info.l4Len).toBe(12);
    expect(info.payloadLen).toBe(4);
    for (let n = 0; n < 8; n++) {
      const b = ipv6(
        { src: ip6('::1'), dst: ip6('::1'), nextHeader: PROTO_ICMPV6 },
        new Uint8Array(n),
      );
      expect(check(b)[0]).toBe(Check.L4_TRUNCATED);
    }
  });
});
