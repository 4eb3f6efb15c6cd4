import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  IPV4_HEADER_LEN,
  IPV4_OFF_CHECKSUM,
  IPV4_OFF_DST,
  IPV4_OFF_SRC,
  Ipv4Packet,
  Ipv4Repr,
} from '../../src/wire/ipv4.js';
import { Check, type CheckCode, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { hex, ip4, ipv4, ipv4Header, ipv4HeaderOk, PROTO_UDP, unhex } from '../support/builder.js';

// Wikipedia, "Internet checksum" / "IPv4 header checksum" worked example: a UDP
// datagram from 192.168.0.1 to 192.168.0.199, header checksum b861.
const WIKIPEDIA = '4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7';

// Captured from Linux 6.18 with `tcpdump -i lo -xx`: the IPv4 header of the SYN of a
// Python client connecting to `python3 -m http.server` on 127.0.0.1:18080.
const SYN_HEADER = '4500 003c 6517 4000 4006 d7a2 7f00 0001 7f00 0001';

// Captured the same way: the kernel's ICMP port unreachable for a UDP datagram sent
// to a closed port on 127.0.0.1 (TOS 0xc0 = DSCP CS6, no DF, ident bf4d).
const ICMP_ERR_HEADER = '45c0 0040 bf4d 0000 4001 bcad 7f00 0001 7f00 0001';

// Captured the same way: a UDP datagram ("opts") sent from a socket with IP_TOS 0xb9
// (DSCP EF, ECN ECT(1)) and IP_OPTIONS = Record Route with one slot, which the kernel
// filled with 127.0.0.1: IHL 7, 8 option bytes, then UDP (checksum partial, see udp tests).
const WITH_OPTIONS =
  '47b9 0028 6714 4000 4011 c26f 7f00 0001 7f00 0001 0707 087f 0000 0100' +
  ' a471 3bfc 000c fe1f 6f70 7473';

function check(b: Uint8Array, off = 0, len = b.length - off): [CheckCode, PacketInfo] {
  const info = new PacketInfo();
  return [checkPacket(b, off, len, info), info];
}

/** The vector's header followed by `payloadLen` zero bytes, so checkPacket sees a whole packet. */
function withPayload(header: string, payloadLen: number): Uint8Array {
  const h = unhex(header);
  const b = new Uint8Array(h.length + payloadLen);
  b.set(h);
  return b;
}

describe('Ipv4Packet: deconstruct', () => {
  it('reads every field of the Wikipedia example', () => {
    const v = new Ipv4Packet(unhex(WIKIPEDIA));
    expect(v.version()).toBe(4);
    expect(v.ihl()).toBe(5);
    expect(v.headerLen()).toBe(20);
    expect(v.dscp()).toBe(0);
    expect(v.ecn()).toBe(0);
    expect(v.totalLen()).toBe(0x73);
    expect(v.ident()).toBe(0);
    expect(v.dontFragment()).toBe(true);
    expect(v.moreFragments()).toBe(false);
    expect(v.fragOffset()).toBe(0);
    expect(v.isFragment()).toBe(false);
    expect(v.ttl()).toBe(64);
    expect(v.protocol()).toBe(17);
    expect(v.checksum()).toBe(0xb861);
    expect(v.srcAddr()).toBe(ip4('192.168.0.1'));
    expect(v.dstAddr()).toBe(ip4('192.168.0.199'));
    expect(v.payloadOff()).toBe(20);
    expect(v.payloadLen()).toBe(0x73 - 20);
    expect(v.verifyChecksum()).toBe(true);
  });

  it('reads the captured ICMP error header (DSCP CS6, no DF)', () => {
    const v = new Ipv4Packet(unhex(ICMP_ERR_HEADER));
    expect(v.dscp()).toBe(48);
    expect(v.ecn()).toBe(0);
    expect(v.totalLen()).toBe(64);
    expect(v.ident()).toBe(0xbf4d);
    expect(v.dontFragment()).toBe(false);
    expect(v.isFragment()).toBe(false);
    expect(v.protocol()).toBe(1);
    expect(v.verifyChecksum()).toBe(true);
  });

  it('reads a header with options (IHL 7) and verifies the checksum over the options', () => {
    const b = unhex(WITH_OPTIONS);
    const v = new Ipv4Packet(b);
    expect(v.ihl()).toBe(7);
    expect(v.headerLen()).toBe(28);
    expect(v.dscp()).toBe(46);
    expect(v.ecn()).toBe(1);
    expect(v.totalLen()).toBe(40);
    expect(v.payloadOff()).toBe(28);
    expect(v.payloadLen()).toBe(12);
    expect(v.verifyChecksum()).toBe(true);
    b[22]! ^= 0x01; // one bit of the recorded route
    expect(v.verifyChecksum()).toBe(false);
  });

  it('works at an offset and after attach() to another buffer', () => {
    const b = new Uint8Array(40).fill(0xa5);
    b.set(unhex(SYN_HEADER), 7);
    const v = new Ipv4Packet(b, 7);
    expect(v.ident()).toBe(0x6517);
    expect(v.protocol()).toBe(6);
    expect(v.srcAddr()).toBe(0x7f000001);
    expect(v.payloadOff()).toBe(27);
    expect(v.verifyChecksum()).toBe(true);
    v.attach(unhex(WIKIPEDIA), 0);
    expect(v.protocol()).toBe(17);
    expect(v.payloadOff()).toBe(20);
  });

  it('tells fragments by MF or a non-zero offset, not by DF or the reserved bit', () => {
    const v = new Ipv4Packet(unhex(WIKIPEDIA));
    const flags = (hi: number, lo: number) => {
      v.buf[6] = hi;
      v.buf[7] = lo;
      return [v.dontFragment(), v.moreFragments(), v.fragOffset(), v.isFragment()];
    };
    expect(flags(0x40, 0x00)).toEqual([true, false, 0, false]); // DF only
    expect(flags(0x80, 0x00)).toEqual([false, false, 0, false]); // reserved bit only
    expect(flags(0x20, 0x00)).toEqual([false, true, 0, true]); // first fragment
    expect(flags(0x20, 0xb9)).toEqual([false, true, 1480, true]); // middle fragment
    expect(flags(0x00, 0xb9)).toEqual([false, false, 1480, true]); // last fragment
    expect(flags(0x1f, 0xff)).toEqual([false, false, 0x1fff * 8, true]); // largest offset
    expect(flags(0xff, 0xff)).toEqual([true, true, 0x1fff * 8, true]);
  });
});

describe('Ipv4Packet: construct', () => {
  it('setters write each field and nothing else (buffer pre-filled with 0xa5)', () => {
    const b = new Uint8Array(20).fill(0xa5);
    const v = new Ipv4Packet(b);
    v.setVersionAndIhl(4, 5);
    expect(hex(b)).toBe('45a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5');
    v.setDscpEcn(46, 1);
    v.setTotalLen(0x0073);
    v.setIdent(0x1234);
    v.setFragment(false, true, 1480);
    v.setTtl(1);
    v.setProtocol(6);
    expect(hex(b)).toBe('45b900731234' + '20b9' + '0106' + 'a5a5' + 'a5a5a5a5a5a5a5a5');
    v.setSrcAddr(ip4('10.0.0.1'));
    v.setDstAddr(ip4('255.255.255.255'));
    v.setChecksum(0xbeef);
    expect(hex(b)).toBe('45b900731234' + '20b90106beef' + '0a000001ffffffff');
  });

  it('fillChecksum covers the options: rebuilding the captured IHL-7 header gives its bytes', () => {
    const b = new Uint8Array(28).fill(0xa5);
    const v = new Ipv4Packet(b);
    v.setVersionAndIhl(4, 7);
    v.setDscpEcn(46, 1);
    v.setTotalLen(40);
    v.setIdent(0x6714);
    v.setFragment(true, false, 0);
    v.setTtl(64);
    v.setProtocol(17);
    v.setSrcAddr(ip4('127.0.0.1'));
    v.setDstAddr(ip4('127.0.0.1'));
    b.set(unhex('0707087f00000100'), 20);
    v.fillChecksum();
    expect(hex(b)).toBe(hex(unhex(WITH_OPTIONS).subarray(0, 28)));
  });

  it('Ipv4Repr.emit writes every byte of the Wikipedia header', () => {
    const b = new Uint8Array(20).fill(0xa5);
    const r = Ipv4Repr.defaults({
      srcAddr: ip4('192.168.0.1'),
      dstAddr: ip4('192.168.0.199'),
      protocol: 17,
      payloadLen: 0x73 - 20,
    });
    Ipv4Repr.emit(r, new Ipv4Packet(b));
    expect(hex(b)).toBe(hex(unhex(WIKIPEDIA)));
    expect(Ipv4Repr.bufferLen(r)).toBe(0x73);
  });

  it('Ipv4Repr.emit at an offset reproduces the captured ICMP error header and leaves its neighbours', () => {
    const b = new Uint8Array(26).fill(0xa5);
    Ipv4Repr.emit(
      {
        srcAddr: 0x7f000001,
        dstAddr: 0x7f000001,
        protocol: 1,
        payloadLen: 44,
        ttl: 64,
        ident: 0xbf4d,
        dscp: 48,
        ecn: 0,
        dontFragment: false,
        moreFragments: false,
        fragOffset: 0,
      },
      new Ipv4Packet(b, 3),
    );
    expect(hex(b)).toBe(`a5a5a5${hex(unhex(ICMP_ERR_HEADER))}a5a5a5`);
  });
});

describe('Ipv4Repr: parse and round trip', () => {
  it('parses the captured SYN header', () => {
    expect(Ipv4Repr.parse(new Ipv4Packet(unhex(SYN_HEADER)))).toEqual({
      srcAddr: 0x7f000001,
      dstAddr: 0x7f000001,
      protocol: 6,
      payloadLen: 40,
      ttl: 64,
      ident: 0x6517,
      dscp: 0,
      ecn: 0,
      dontFragment: true,
      moreFragments: false,
      fragOffset: 0,
    });
  });

  it('parses a header with options: payloadLen excludes them', () => {
    const r = Ipv4Repr.parse(new Ipv4Packet(unhex(WITH_OPTIONS)));
    expect(r.payloadLen).toBe(12);
    expect(r.dscp).toBe(46);
    expect(r.ecn).toBe(1);
  });

  it('refuses a bad checksum and a wrong version with a coded WireError', () => {
    const b = unhex(WIKIPEDIA);
    b[IPV4_OFF_CHECKSUM + 1]! ^= 1;
    expect(() => Ipv4Repr.parse(new Ipv4Packet(b))).toThrow(
      expect.objectContaining({ code: 'ERR_CHECKSUM' }),
    );
    const c = unhex(WIKIPEDIA);
    c[0] = 0x65;
    expect(() => Ipv4Repr.parse(new Ipv4Packet(c))).toThrow(
      expect.objectContaining({ code: 'ERR_IP_VERSION' }),
    );
  });

  it('emit then parse is the identity, and emit equals the independent builder byte for byte', () => {
    const repr = fc.record({
      srcAddr: fc.nat({ max: 0xffffffff }),
      dstAddr: fc.nat({ max: 0xffffffff }),
      protocol: fc.nat({ max: 255 }),
      payloadLen: fc.nat({ max: 0xffff - 20 }),
      ttl: fc.nat({ max: 255 }),
      ident: fc.nat({ max: 0xffff }),
      dscp: fc.nat({ max: 63 }),
      ecn: fc.nat({ max: 3 }),
      dontFragment: fc.boolean(),
      moreFragments: fc.boolean(),
      fragOffset: fc.nat({ max: 0x1fff }).map((u) => u * 8),
    });
    fc.assert(
      fc.property(repr, fc.nat({ max: 7 }), (r, off) => {
        const b = new Uint8Array(off + 20).fill(0xa5);
        const v = new Ipv4Packet(b, off);
        Ipv4Repr.emit(r, v);
        expect(Ipv4Repr.parse(v)).toEqual(r);
        const want = ipv4Header(
          {
            src: r.srcAddr,
            dst: r.dstAddr,
            protocol: r.protocol,
            ttl: r.ttl,
            ident: r.ident,
            tos: (r.dscp << 2) | r.ecn,
            df: r.dontFragment,
            mf: r.moreFragments,
            fragOffset: r.fragOffset,
          },
          r.payloadLen,
        );
        expect(hex(b.subarray(off))).toBe(hex(want));
        expect(ipv4HeaderOk(b, off)).toBe(true);
      }),
      { numRuns: 2000, seed: 791 },
    );
  });
});

describe('checkPacket: impossible IPv4 lengths', () => {
  // A 40-byte datagram of protocol 253 (RFC 3692 experimental): the L4 layer stays
  // opaque, so these cases exercise the IP checks alone.
  const base = () =>
    ipv4({ src: ip4('192.0.2.1'), dst: ip4('198.51.100.2'), protocol: 253 }, new Uint8Array(20));

  it('accepts the intact packet', () => {
    const [code, info] = check(base());
    expect(code).toBe(Check.OK);
    expect(info.ipHeaderLen).toBe(20);
    expect(info.ipTotalLen).toBe(40);
    expect(info.payloadOff).toBe(20);
    expect(info.payloadLen).toBe(20);
  });

  it('refuses a packet truncated below the 20-byte header as TRUNCATED', () => {
    const b = base();
    for (let len = 0; len < IPV4_HEADER_LEN; len++)
      expect(check(b, 0, len)[0]).toBe(Check.TRUNCATED);
  });

  it('refuses IHL below 5 as BAD_IHL', () => {
    for (let ihl = 0; ihl < 5; ihl++) {
      const b = base();
      b[0] = 0x40 | ihl;
      expect(check(b)[0]).toBe(Check.BAD_IHL);
    }
  });

  it('refuses an IHL beyond the bytes given as BAD_IHL', () => {
    const b = base();
    b[0] = 0x4f; // 60-byte header in a 40-byte packet
    expect(check(b)[0]).toBe(Check.BAD_IHL);
    const c = base();
    c[0] = 0x46; // 24-byte header, only 20 bytes given
    expect(check(c, 0, 20)[0]).toBe(Check.BAD_IHL);
  });

  it('refuses a total length beyond the bytes given as BAD_TOTAL_LEN, whatever the buffer holds', () => {
    const b = base();
    b[2] = 0;
    b[3] = 41;
    expect(check(b)[0]).toBe(Check.BAD_TOTAL_LEN);
    b[2] = 0xff;
    b[3] = 0xff;
    expect(check(b)[0]).toBe(Check.BAD_TOTAL_LEN);
    // The buffer is longer, but the caller said 39 bytes.
    expect(check(base(), 0, 39)[0]).toBe(Check.BAD_TOTAL_LEN);
  });

  it('refuses a total length below the header length as BAD_TOTAL_LEN', () => {
    for (const total of [0, 1, 19]) {
      const b = base();
      b[2] = total >> 8;
      b[3] = total & 0xff;
      expect(check(b)[0]).toBe(Check.BAD_TOTAL_LEN);
    }
    const b = base();
    b[0] = 0x47; // IHL 7 = 28 bytes, total length 24
    b[3] = 24;
    expect(check(b)[0]).toBe(Check.BAD_TOTAL_LEN);
  });

  it('accepts the edges: total = IHL (empty payload) and total = bytes given, ignoring link padding', () => {
    const b = base();
    b[3] = 20;
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.ipTotalLen).toBe(20);
    expect(info.payloadLen).toBe(0);
    const c = base();
    c[0] = 0x4a; // IHL 10 = 40 bytes = the whole packet
    expect(check(c)[0]).toBe(Check.OK);
  });

  it('reports the addresses, protocol and IP offsets of the SYN capture', () => {
    const b = new Uint8Array(4 + 60).fill(0xa5);
    b.set(withPayload(SYN_HEADER, 40), 4);
    b[4 + 20 + 12] = 0xa0; // data offset 10 (the rest of the TCP header stays 0xa5)
    const [code, info] = check(b, 4, 60);
    expect(code).toBe(Check.OK);
    expect(info.version).toBe(4);
    expect(info.ipOff).toBe(4);
    expect(info.ipHeaderLen).toBe(20);
    expect(info.ipTotalLen).toBe(60);
    expect(info.protocol).toBe(6);
    expect(info.srcAddr).toBe(0x7f000001);
    expect(info.dstAddr).toBe(0x7f000001);
    expect(info.l4Off).toBe(24);
    expect(b[4 + IPV4_OFF_SRC]).toBe(0x7f);
    expect(b[4 + IPV4_OFF_DST + 3]).toBe(1);
  });

  it('reports the payload of a UDP packet after IPv4 options', () => {
    const [code, info] = check(unhex(WITH_OPTIONS));
    expect(code).toBe(Check.OK);
    expect(info.ipHeaderLen).toBe(28);
    expect(info.protocol).toBe(PROTO_UDP);
    expect(info.l4Off).toBe(28);
    expect(info.payloadOff).toBe(36);
    expect(info.payloadLen).toBe(4);
  });
});
