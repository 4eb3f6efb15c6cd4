import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Check, type CheckCode, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import {
  TCP_ACK,
  TCP_CWR,
  TCP_ECE,
  TCP_FIN,
  TCP_OFF_CHECKSUM,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  TCP_URG,
  TcpRepr,
  TcpSegment,
} from '../../src/wire/tcp.js';
import {
  hex,
  ip4,
  ip6,
  ipv4,
  ipv6,
  PROTO_TCP,
  type Pseudo,
  pseudoSum,
  tcp,
  tcp4,
  unhex,
} from '../support/builder.js';

// Captured from Linux 6.18 with `tcpdump -i lo -xx` (Ethernet header stripped): the SYN
// of a Python client connecting to `python3 -m http.server` on 127.0.0.1:18080.
// Options: MSS 65495, SACK permitted, timestamps, NOP, window scale 10. On lo the
// kernel leaves a partial checksum (CHECKSUM_PARTIAL: the pseudo-header sum, fe30);
// the field below holds the full checksum tcpdump computed ("incorrect -> 0xe48d").
const SYN_IP = '4500 003c 6517 4000 4006 d7a2 7f00 0001 7f00 0001';
const SYN_TCP =
  'cdc2 46a0 d5e3 e5a1 0000 0000 a002 ffd7 e48d 0000' +
  ' 0204 ffd7 0402 080a 109f 8ae9 0000 0000 0103 030a';
const SYN_PARTIAL_CHECKSUM = 0xfe30;

// Captured the same way: the client's request "GET / HTTP/1.0\r\n\r\n" (PSH|ACK, 18
// bytes, timestamp options); loopback checksum fe3a replaced by tcpdump's 34ba.
const PSH_IP = '4500 0046 75a2 4000 4006 c70d 7f00 0001 7f00 0001';
const PSH_TCP =
  'd714 46a2 a50a 4ffa 11e2 2cde 8018 0040 34ba 0000 0101 080a bb42 8b53 704b 5ca9' +
  ' 4745 5420 2f20 4854 5450 2f31 2e30 0d0a 0d0a';

// Captured the same way over IPv6: SYN from ::1 to the closed port ::1.18083
// (loopback checksum 0030 replaced by tcpdump's 65b3).
const LOOP6 = ' 0000 0000 0000 0000 0000 0000 0000 0001'.repeat(2);
const SYN6_IP = `600b d5a6 0028 0640 ${LOOP6}`;
const SYN6_TCP =
  '8524 46a3 907b 24be 0000 0000 a002 ffc4 65b3 0000' +
  ' 0204 ffc4 0402 080a fcaf 6ac1 0000 0000 0103 030a';

const LO: Pseudo = { v: 4, src: 0x7f000001, dst: 0x7f000001 };
const LO6: Pseudo = { v: 6, src: ip6('::1'), dst: ip6('::1') };

function check(b: Uint8Array, off = 0, len = b.length - off): [CheckCode, PacketInfo] {
  const info = new PacketInfo();
  return [checkPacket(b, off, len, info), info];
}

describe('TcpSegment: deconstruct', () => {
  it('reads every field of the captured SYN', () => {
    const b = unhex(SYN_TCP);
    const v = new TcpSegment(b);
    expect(v.len).toBe(40);
    expect(v.srcPort()).toBe(52674);
    expect(v.dstPort()).toBe(18080);
    expect(v.seqNumber()).toBe(3588482465);
    expect(v.ackNumber()).toBe(0);
    expect(v.dataOffset()).toBe(10);
    expect(v.headerLen()).toBe(40);
    expect(v.flags()).toBe(TCP_SYN);
    expect([v.fin(), v.syn(), v.rst(), v.psh(), v.ack(), v.urg()]).toEqual([
      false,
      true,
      false,
      false,
      false,
      false,
    ]);
    expect(v.window()).toBe(65495);
    expect(v.checksum()).toBe(0xe48d);
    expect(v.urgentPointer()).toBe(0);
    expect(v.optionsOff()).toBe(20);
    expect(v.optionsLen()).toBe(20);
    expect(hex(b.subarray(v.optionsOff(), v.optionsOff() + v.optionsLen()))).toBe(
      '0204ffd70402080a109f8ae9000000000103030a',
    );
    expect(v.payloadOff()).toBe(40);
    expect(v.payloadLen()).toBe(0);
    expect(v.verifyChecksum(pseudoSum(LO, PROTO_TCP, 40))).toBe(true);
  });

  it('reads the captured PSH|ACK with its payload, in place inside the IP packet', () => {
    const pkt = unhex(PSH_IP + PSH_TCP);
    const v = new TcpSegment(pkt, 20, 50);
    expect(v.srcPort()).toBe(55060);
    expect(v.dstPort()).toBe(18082);
    expect(v.seqNumber()).toBe(2768916474);
    expect(v.ackNumber()).toBe(300035294);
    expect(v.headerLen()).toBe(32);
    expect(v.flags()).toBe(TCP_PSH | TCP_ACK);
    expect(v.psh() && v.ack() && !v.syn()).toBe(true);
    expect(v.window()).toBe(64);
    expect(v.payloadOff()).toBe(52);
    expect(v.payloadLen()).toBe(18);
    expect(new TextDecoder().decode(pkt.subarray(52, 70))).toBe('GET / HTTP/1.0\r\n\r\n');
    expect(v.verifyChecksum(pseudoSum(LO, PROTO_TCP, 50))).toBe(true);
  });

  it('the loopback partial checksum does not verify; the corrected one does', () => {
    const b = unhex(SYN_TCP);
    const v = new TcpSegment(b);
    v.setChecksum(SYN_PARTIAL_CHECKSUM);
    expect(v.verifyChecksum(pseudoSum(LO, PROTO_TCP, 40))).toBe(false);
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, uncomplemented.
    expect(pseudoSum(LO, PROTO_TCP, 40)).toBe(SYN_PARTIAL_CHECKSUM);
  });

  it('reads the captured IPv6 SYN with the IPv6 pseudo-header', () => {
    const v = new TcpSegment(unhex(SYN6_TCP));
    expect(v.srcPort()).toBe(34084);
    expect(v.dstPort()).toBe(18083);
    expect(v.syn()).toBe(true);
    expect(v.window()).toBe(65476);
    expect(v.verifyChecksum(pseudoSum(LO6, PROTO_TCP, 40))).toBe(true);
  });

  it('maps each flag bit to its getter (RFC 9293 order CWR..FIN)', () => {
    const v = new TcpSegment(unhex(SYN_TCP));
    const bits = [TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR];
    expect(bits).toEqual([1, 2, 4, 8, 16, 32, 64, 128]);
    for (const bit of bits) {
      v.setFlags(bit);
      expect(v.flags()).toBe(bit);
      expect([v.fin(), v.syn(), v.rst(), v.psh(), v.ack(), v.urg()]).toEqual(
        [TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG].map((f) => f === bit),
      );
    }
  });

  it('ignores the reserved bits beside the data offset', () => {
    const b = unhex(SYN_TCP);
    b[12] = 0xaf;
    expect(new TcpSegment(b).dataOffset()).toBe(10);
  });
});

describe('TcpSegment / TcpRepr: construct', () => {
  it('setters write each field and nothing else (buffer pre-filled with 0xa5)', () => {
    const b = new Uint8Array(24).fill(0xa5);
    const v = new TcpSegment(b, 2, 20);
    v.setSrcPort(0x0102);
    v.setDstPort(0x0304);
    v.setSeqNumber(0x05060708);
    v.setAckNumber(0xfffefdfc);
    expect(hex(b)).toBe(`a5a5 01020304 05060708 fffefdfc ${'a5'.repeat(10)}`.replace(/ /g, ''));
    v.setDataOffset(5); // clears the reserved bits
    v.setFlags(TCP_SYN | TCP_ACK);
    v.setWindow(0x1122);
    v.setChecksum(0x3344);
    v.setUrgentPointer(0x5566);
    expect(hex(b)).toBe('a5a5' + '01020304' + '05060708' + 'fffefdfc' + '5012112233445566a5a5');
  });

  it('TcpRepr.emit reproduces the captured SYN byte for byte', () => {
    const b = new Uint8Array(40).fill(0xa5);
    const r = TcpRepr.defaults({
      srcPort: 52674,
      dstPort: 18080,
      seq: 3588482465,
      flags: TCP_SYN,
      window: 65495,
      options: unhex('0204ffd70402080a109f8ae9000000000103030a'),
    });
    expect(TcpRepr.headerLen(r)).toBe(40);
    expect(TcpRepr.bufferLen(r)).toBe(40);
    TcpRepr.emit(r, new TcpSegment(b, 0, 40), pseudoSum(LO, PROTO_TCP, 40));
    expect(hex(b)).toBe(hex(unhex(SYN_TCP)));
  });

  it('TcpRepr.emit reproduces the captured PSH|ACK with its payload, at an offset', () => {
    const b = new Uint8Array(3 + 50 + 3).fill(0xa5);
    const r = TcpRepr.defaults({
      srcPort: 55060,
      dstPort: 18082,
      seq: 2768916474,
      ack: 300035294,
      flags: TCP_PSH | TCP_ACK,
      window: 64,
      options: unhex('0101080abb428b53704b5ca9'),
      payload: new TextEncoder().encode('GET / HTTP/1.0\r\n\r\n'),
    });
    TcpRepr.emit(r, new TcpSegment(b, 3, 50), pseudoSum(LO, PROTO_TCP, 50));
    expect(hex(b)).toBe(`a5a5a5${hex(unhex(PSH_TCP))}a5a5a5`);
  });

  it('TcpRepr.emit refuses options that are not 4n bytes up to 40', () => {
    const b = new Uint8Array(80);
    for (const n of [1, 3, 41, 44]) {
      const r = TcpRepr.defaults({ srcPort: 1, dstPort: 2, options: new Uint8Array(n) });
      expect(() => TcpRepr.emit(r, new TcpSegment(b, 0, 20 + n), 0)).toThrow(
        expect.objectContaining({ code: 'ERR_TCP_OPTIONS' }),
      );
    }
  });
});

describe('TcpRepr: parse and round trip', () => {
  it('parses the captured PSH|ACK', () => {
    const pkt = unhex(PSH_IP + PSH_TCP);
    const r = TcpRepr.parse(new TcpSegment(pkt, 20, 50), pseudoSum(LO, PROTO_TCP, 50));
    expect(r).toEqual({
      srcPort: 55060,
      dstPort: 18082,
      seq: 2768916474,
      ack: 300035294,
      flags: TCP_PSH | TCP_ACK,
      window: 64,
      urgent: 0,
      options: unhex('0101080abb428b53704b5ca9'),
      payload: new TextEncoder().encode('GET / HTTP/1.0\r\n\r\n'),
    });
  });

  it('refuses a bad checksum unless asked not to check it', () => {
    const b = unhex(SYN_TCP);
    b[TCP_OFF_CHECKSUM] = 0xfe;
    b[TCP_OFF_CHECKSUM + 1] = 0x30; // the loopback partial checksum
    const v = new TcpSegment(b);
    expect(() => TcpRepr.parse(v, pseudoSum(LO, PROTO_TCP, 40))).toThrow(
      expect.objectContaining({ code: 'ERR_CHECKSUM' }),
    );
    expect(TcpRepr.parse(v, null).seq).toBe(3588482465);
  });

  it('refuses a data offset below 5 or beyond the segment', () => {
    for (const [byte12, len] of [
      [0x40, 40],
      [0x00, 40],
      [0xb0, 40],
      [0x60, 20],
    ] as const) {
      const b = unhex(SYN_TCP);
      b[12] = byte12;
      expect(() => TcpRepr.parse(new TcpSegment(b, 0, len), null)).toThrow(
        expect.objectContaining({ code: 'ERR_TCP_DATA_OFFSET' }),
      );
    }
  });

  it('emit then parse is the identity; emit equals the independent builder byte for byte', () => {
    const repr = fc.record({
      srcPort: fc.nat({ max: 0xffff }),
      dstPort: fc.nat({ max: 0xffff }),
      seq: fc.nat({ max: 0xffffffff }),
      ack: fc.nat({ max: 0xffffffff }),
      flags: fc.nat({ max: 255 }),
      window: fc.nat({ max: 0xffff }),
      urgent: fc.nat({ max: 0xffff }),
      options: fc
        .nat({ max: 10 })
        .chain((w) => fc.uint8Array({ minLength: 4 * w, maxLength: 4 * w })),
      payload: fc.uint8Array({ maxLength: 1500 }),
    });
    const pseudo = fc.oneof(
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
        const len = TcpRepr.bufferLen(r);
        const b = new Uint8Array(off + len).fill(0xa5);
        const v = new TcpSegment(b, off, len);
        const ps = pseudoSum(p, PROTO_TCP, len);
        TcpRepr.emit(r, v, ps);
        expect(TcpRepr.parse(v, ps)).toEqual(r);
        expect(hex(b.subarray(off))).toBe(hex(tcp(r, p)));
      }),
      { numRuns: 1000, seed: 9293 },
    );
  });
});

describe('checkPacket: impossible TCP lengths', () => {
  const ip = { src: ip4('192.0.2.1'), dst: ip4('192.0.2.2') };

  it('describes the captured PSH|ACK', () => {
    const [code, info] = check(unhex(PSH_IP + PSH_TCP));
    expect(code).toBe(Check.OK);
    expect(info.l4Off).toBe(20);
    expect(info.l4HeaderLen).toBe(32);
    expect(info.l4Len).toBe(50);
    expect(info.srcPort).toBe(55060);
    expect(info.dstPort).toBe(18082);
    expect(info.tcpFlags).toBe(TCP_PSH | TCP_ACK);
    expect(info.payloadOff).toBe(52);
    expect(info.payloadLen).toBe(18);
  });

  it('refuses a segment shorter than 20 bytes as L4_TRUNCATED', () => {
    for (let n = 0; n < 20; n++) {
      const b = ipv4({ ...ip, protocol: PROTO_TCP }, new Uint8Array(n).fill(0x50));
      expect(check(b)[0]).toBe(Check.L4_TRUNCATED);
    }
  });

  it('refuses a data offset below 5 as BAD_DATA_OFFSET', () => {
    for (let words = 0; words < 5; words++) {
      const b = tcp4(ip, { srcPort: 1, dstPort: 2, payload: new Uint8Array(30) });
      b[20 + 12] = words << 4;
      expect(check(b)[0]).toBe(Check.BAD_DATA_OFFSET);
    }
  });

  it('refuses a data offset beyond the segment as BAD_DATA_OFFSET', () => {
    const syn = unhex(SYN_IP + SYN_TCP);
    for (const words of [11, 12, 15]) {
      const b = syn.slice();
      b[20 + 12] = words << 4;
      expect(check(b)[0]).toBe(Check.BAD_DATA_OFFSET);
    }
    // A header that fits the bytes received but not the segment the IP total length declares.
    const b = tcp4(ip, { srcPort: 1, dstPort: 2, options: new Uint8Array(20) });
    const padded = new Uint8Array(b.length + 40);
    padded.set(b);
    padded[20 + 12] = 0xf0;
    expect(check(padded)[0]).toBe(Check.BAD_DATA_OFFSET);
  });

  it('accepts a header that fills the segment exactly (no payload)', () => {
    const [code, info] = check(unhex(SYN_IP + SYN_TCP));
    expect(code).toBe(Check.OK);
    expect(info.l4HeaderLen).toBe(40);
    expect(info.payloadOff).toBe(60);
    expect(info.payloadLen).toBe(0);
    expect(info.tcpFlags).toBe(TCP_SYN);
  });

  it('applies the same checks over IPv6', () => {
    const [code, info] = check(unhex(SYN6_IP + SYN6_TCP));
    expect(code).toBe(Check.OK);
    expect(info.l4Off).toBe(40);
    expect(info.l4HeaderLen).toBe(40);
    expect(info.srcPort).toBe(34084);
    const b = unhex(SYN6_IP + SYN6_TCP);
    b[40 + 12] = 0x40;
    expect(check(b)[0]).toBe(Check.BAD_DATA_OFFSET);
    b[40 + 12] = 0xb0;
    expect(check(b)[0]).toBe(Check.BAD_DATA_OFFSET);
    const short = ipv6(
      { src: ip6('::1'), dst: ip6('::1'), nextHeader: PROTO_TCP },
      new Uint8Array(19),
    );
    expect(check(short)[0]).toBe(Check.L4_TRUNCATED);
  });
});
