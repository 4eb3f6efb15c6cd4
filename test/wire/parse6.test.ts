/**
 * The checked parser on IPv6 extension headers (RFC 8200 §4): packets built by
 * the independent builder with chains of hop-by-hop, routing, destination
 * options and fragment headers; what the parser reports is compared with what
 * the builder put where.
 */

import { describe, expect, it } from 'vitest';
import {
  Check,
  type CheckCode,
  checkFirstFragment,
  checkPacket,
  checkQuoted6,
  PacketInfo,
  QuotedPacket,
} from '../../src/wire/parse.js';
import {
  type Ext6,
  ext6Chain,
  icmp,
  ip6,
  ipv6x,
  NH_DEST_OPTS,
  NH_FRAGMENT,
  NH_HOP_BY_HOP,
  NH_NO_NEXT,
  NH_ROUTING,
  PROTO_ICMPV6,
  PROTO_TCP,
  PROTO_UDP,
  randomExt6,
  tcp,
  tcp6,
  tcp6x,
  udp6Fragments,
  udp6x,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

const ip = { src: ip6('2001:2::1'), dst: ip6('2001:2:0:1::9') };

function check(b: Uint8Array, off = 0, len = b.length - off): [CheckCode, PacketInfo] {
  const info = new PacketInfo();
  return [checkPacket(b, off, len, info), info];
}

const chainLen = (exts: Ext6[]) => ext6Chain(exts, PROTO_TCP).bytes.length;

describe('checkPacket: IPv6 extension headers', () => {
  it('walks hop-by-hop, routing and destination options to TCP, UDP and ICMPv6', () => {
    const exts: Ext6[] = [
      { type: NH_HOP_BY_HOP },
      { type: NH_ROUTING, units: 2 },
      { type: NH_DEST_OPTS, units: 1 },
    ];
    const hl = 40 + chainLen(exts);
    const t = tcp6x(ip, exts, { srcPort: 40000, dstPort: 9000, flags: 0x02 });
    const [code, info] = check(t);
    expect(code).toBe(Check.OK);
    expect(info.version).toBe(6);
    expect(info.protocol).toBe(PROTO_TCP);
    expect(info.ipHeaderLen).toBe(hl);
    expect(info.l4Off).toBe(hl);
    expect(info.srcPort).toBe(40000);
    expect(info.dstPort).toBe(9000);
    expect(info.srcOff).toBe(8);
    expect(info.dstOff).toBe(24);
    // The last next-header byte is the destination options header's first.
    expect(info.nextHeaderOff).toBe(hl - 16);
    expect(t[info.nextHeaderOff]).toBe(PROTO_TCP);
    expect(info.isFragment).toBe(false);

    const u = udp6x(ip, [{ type: NH_DEST_OPTS }], {
      srcPort: 1,
      dstPort: 2,
      payload: new Uint8Array(5),
    });
    const [cu, iu] = check(u);
    expect(cu).toBe(Check.OK);
    expect(iu.protocol).toBe(PROTO_UDP);
    expect(iu.l4Off).toBe(48);
    expect(iu.l4Len).toBe(13);

    const i6 = ipv6x(
      ip,
      [{ type: NH_HOP_BY_HOP }],
      PROTO_ICMPV6,
      icmp({ type: 143 }, { v: 6, ...ip }),
    );
    const [ci, ii] = check(i6);
    expect(ci).toBe(Check.OK);
    expect(ii.protocol).toBe(PROTO_ICMPV6);
    expect(ii.l4Off).toBe(48);
  });

  it('without extension headers reports what it did before, plus the address offsets', () => {
    const [code, info] = check(tcp6(ip, { srcPort: 1, dstPort: 2 }));
    expect(code).toBe(Check.OK);
    expect(info.ipHeaderLen).toBe(40);
    expect(info.l4Off).toBe(40);
    expect(info.nextHeaderOff).toBe(6);
    expect(info.fragId).toBe(0);
  });

  it('No Next Header after an extension header leaves the rest opaque', () => {
    const b = ipv6x(ip, [{ type: NH_DEST_OPTS }], NH_NO_NEXT, new Uint8Array(4));
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.protocol).toBe(NH_NO_NEXT);
    expect(info.l4Off).toBe(-1);
    expect(info.payloadOff).toBe(48);
    expect(info.payloadLen).toBe(4);
  });

  it('refuses a header that does not fit, hop-by-hop after the first, two fragment headers, a live routing header', () => {
    const l4 = tcp({ srcPort: 1, dstPort: 2 }, null);
    const cut = ipv6x(ip, [{ type: NH_DEST_OPTS, units: 3 }], PROTO_TCP, l4).subarray(0, 40 + 24);
    cut[5] = 24; // payload length: the 32-byte header claims more than there is
    expect(check(cut)[0]).toBe(Check.IPV6_BAD_EXT_HEADER);
    const late = ipv6x(ip, [{ type: NH_DEST_OPTS }, { type: NH_HOP_BY_HOP }], PROTO_TCP, l4);
    expect(check(late)[0]).toBe(Check.IPV6_BAD_EXT_HEADER);
    const twoFrag = ipv6x(
      ip,
      [
        { type: NH_FRAGMENT, offset: 0, more: true, id: 1 },
        { type: NH_FRAGMENT, offset: 0, more: true, id: 1 },
      ],
      PROTO_TCP,
      l4,
    );
    expect(check(twoFrag)[0]).toBe(Check.IPV6_BAD_EXT_HEADER);
    const route = ipv6x(ip, [{ type: NH_ROUTING, segmentsLeft: 1 }], PROTO_TCP, l4);
    expect(check(route)[0]).toBe(Check.IPV6_BAD_EXT_HEADER);
    const spent = ipv6x(ip, [{ type: NH_ROUTING, segmentsLeft: 0 }], PROTO_TCP, l4);
    expect(check(spent)[0]).toBe(Check.OK);
  });

  it('walks at most 8 extension headers', () => {
    const l4 = tcp({ srcPort: 1, dstPort: 2 }, null);
    const eight: Ext6[] = Array.from({ length: 8 }, () => ({ type: NH_DEST_OPTS }));
    expect(check(ipv6x(ip, eight, PROTO_TCP, l4))[0]).toBe(Check.OK);
    const nine: Ext6[] = Array.from({ length: 9 }, () => ({ type: NH_DEST_OPTS }));
    expect(check(ipv6x(ip, nine, PROTO_TCP, l4))[0]).toBe(Check.IPV6_EXT_HEADERS_TOO_LONG);
  });

  it('reports a fragment header: first and later fragments, the 32-bit identification', () => {
    const frags = udp6Fragments(
      ip,
      { srcPort: 5000, dstPort: 53, payload: new Uint8Array(100) },
      48,
      0xdeadbeef,
    );
    expect(frags).toHaveLength(3);
    const [c0, first] = check(frags[0]!);
    expect(c0).toBe(Check.OK);
    expect(first.isFragment).toBe(true);
    expect(first.moreFragments).toBe(true);
    expect(first.fragOffset).toBe(0);
    expect(first.fragId).toBe(0xdeadbeef);
    expect(first.protocol).toBe(PROTO_UDP);
    expect(first.ipHeaderLen).toBe(48);
    expect(first.l4Off).toBe(-1);
    expect(checkFirstFragment(frags[0]!, first)).toBe(true);
    expect(first.l4Off).toBe(48);
    expect(first.srcPort).toBe(5000);
    expect(first.dstPort).toBe(53);
    const [c2, last] = check(frags[2]!);
    expect(c2).toBe(Check.OK);
    expect(last.isFragment).toBe(true);
    expect(last.moreFragments).toBe(false);
    expect(last.fragOffset).toBe(96);
    expect(last.fragId).toBe(0xdeadbeef);
    expect(last.l4Off).toBe(-1);
    expect(checkFirstFragment(frags[2]!, last)).toBe(false);
  });

  it('parses an atomic fragment (offset 0, no M: RFC 6946) as the whole datagram it is', () => {
    const b = tcp6x(ip, [{ type: NH_FRAGMENT, offset: 0, more: false, id: 7 }], {
      srcPort: 1,
      dstPort: 2,
    });
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.isFragment).toBe(false);
    expect(info.l4Off).toBe(48);
    expect(info.protocol).toBe(PROTO_TCP);
  });

  it('accepts seeded random chains and points at the builder`s upper-layer header', () => {
    const rng = new Rng(0x6006);
    for (let i = 0; i < 2000; i++) {
      const exts = randomExt6(rng, 8);
      const b = tcp6x(ip, exts, {
        srcPort: i,
        dstPort: 9000,
        payload: new Uint8Array(rng.int(40)),
      });
      const [code, info] = check(b);
      expect(code).toBe(Check.OK);
      expect(info.l4Off).toBe(40 + ext6Chain(exts, PROTO_TCP).bytes.length);
      expect(info.srcPort).toBe(i);
    }
  });
});

describe('checkQuoted6', () => {
  const q = new QuotedPacket();
  it('finds the ports behind the quoted extension headers, and nothing in a cut chain or a later fragment', () => {
    const pkt = tcp6x(ip, [{ type: NH_DEST_OPTS, units: 1 }], { srcPort: 40000, dstPort: 9000 });
    expect(checkQuoted6(pkt, 0, 40 + 16 + 8, q)).toBe(true);
    expect(q.version).toBe(6);
    expect(q.protocol).toBe(PROTO_TCP);
    expect(q.l4Off).toBe(56);
    expect(q.srcPort).toBe(40000);
    expect(q.dstPort).toBe(9000);
    expect(q.srcOff).toBe(8);
    expect(q.dstOff).toBe(24);
    expect(q.l4Quoted).toBe(8);
    expect(checkQuoted6(pkt, 0, 40 + 16 + 3, q)).toBe(false);
    expect(checkQuoted6(pkt, 0, 40 + 8, q)).toBe(false);
    const frags = udp6Fragments(ip, { srcPort: 1, dstPort: 2, payload: new Uint8Array(64) }, 40, 9);
    expect(checkQuoted6(frags[0]!, 0, frags[0]!.length, q)).toBe(true);
    expect(checkQuoted6(frags[1]!, 0, frags[1]!.length, q)).toBe(false);
    const v4ish = pkt.slice();
    v4ish[0] = 0x45;
    expect(checkQuoted6(v4ish, 0, v4ish.length, q)).toBe(false);
  });
});
