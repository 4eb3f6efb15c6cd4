import { describe, expect, it } from 'vitest';
import {
  CHECK_NAMES,
  Check,
  type CheckCode,
  checkPacket,
  PacketInfo,
} from '../../src/wire/parse.js';
import {
  icmp4,
  ip4,
  ip6,
  ipv4,
  ipv4HeaderOk,
  PROTO_TCP,
  PROTO_UDP,
  tcp4,
  udp,
  udp4,
  udp6,
  unhex,
} from '../support/builder.js';

// Captured from Linux 6.18 with `tcpdump -i lo -xx` (Ethernet header stripped): the
// final ACK of a TCP handshake with `python3 -m http.server` on 127.0.0.1:18080
// (timestamps option; the TCP checksum is lo's partial one, fe28).
const ACK =
  '4500 0034 6518 4000 4006 d7a9 7f00 0001 7f00 0001' +
  ' cdc2 46a0 d5e3 e5a2 fb1f 411d 8010 0040 fe28 0000 0101 080a 109f 8ae9 a0a6 f51a';

const ip = { src: ip4('192.0.2.1'), dst: ip4('198.51.100.7') };

function check(b: Uint8Array, off = 0, len = b.length - off): [CheckCode, PacketInfo] {
  const info = new PacketInfo();
  return [checkPacket(b, off, len, info), info];
}

/** A UDP/IPv4 fragment: the builder's datagram with MF and the offset set, header checksum redone. */
function fragment(mf: boolean, offset: number, payload: Uint8Array): Uint8Array {
  return ipv4(
    { ...ip, protocol: PROTO_UDP, df: false, mf, fragOffset: offset, ident: 0x4242 },
    payload,
  );
}

describe('checkPacket: arguments and the version nibble', () => {
  it('refuses an empty buffer, a zero or negative length and a window beyond the buffer as TRUNCATED', () => {
    const b = unhex(ACK);
    expect(check(new Uint8Array(0))[0]).toBe(Check.TRUNCATED);
    expect(check(b, 0, 0)[0]).toBe(Check.TRUNCATED);
    expect(check(b, 0, -1)[0]).toBe(Check.TRUNCATED);
    expect(check(b, -1, 10)[0]).toBe(Check.TRUNCATED);
    expect(check(b, 0, b.length + 1)[0]).toBe(Check.TRUNCATED);
    expect(check(b, 1, b.length)[0]).toBe(Check.TRUNCATED);
    expect(check(b, b.length, 1)[0]).toBe(Check.TRUNCATED);
    expect(check(b, b.length + 100, 1)[0]).toBe(Check.TRUNCATED);
  });

  it('refuses NaN and infinite offsets and lengths as TRUNCATED', () => {
    // A NaN length slipped through every `x > len` comparison and the packet was
    // accepted with whatever total length its header claimed (fixed in parse.ts).
    const b = new Uint8Array(60);
    b.set(ipv4({ ...ip, protocol: 253 }, new Uint8Array(0)));
    b[2] = 0x10; // total length 4096, far beyond the buffer
    for (const [off, len] of [
      [0, Number.NaN],
      [Number.NaN, 20],
      [0, Number.POSITIVE_INFINITY],
      [Number.NEGATIVE_INFINITY, 20],
    ]) {
      expect(check(b, off, len)[0]).toBe(Check.TRUNCATED);
    }
  });

  it('refuses versions other than 4 and 6 as BAD_VERSION', () => {
    for (let v = 0; v < 16; v++) {
      if (v === 4 || v === 6) continue;
      const b = unhex(ACK);
      b[0] = (v << 4) | 5;
      const [code, info] = check(b);
      expect(code).toBe(Check.BAD_VERSION);
      expect(info.l4Off).toBe(-1);
    }
  });

  it('refuses a packet too short for its version as TRUNCATED', () => {
    expect(check(unhex('45'))[0]).toBe(Check.TRUNCATED);
    expect(check(unhex('60'))[0]).toBe(Check.TRUNCATED);
    expect(check(unhex(ACK), 0, 19)[0]).toBe(Check.TRUNCATED);
  });

  it('names every code', () => {
    const snake = (k: string) => k.toLowerCase();
    for (const [k, v] of Object.entries(Check)) expect(CHECK_NAMES[v]).toBe(snake(k));
    expect(CHECK_NAMES.length).toBe(Object.keys(Check).length);
  });
});

describe('checkPacket: what it reports', () => {
  it('describes the captured ACK completely', () => {
    const [code, info] = check(unhex(ACK));
    expect(code).toBe(Check.OK);
    expect({ ...info }).toEqual({
      version: 4,
      ipOff: 0,
      ipHeaderLen: 20,
      ipTotalLen: 52,
      protocol: PROTO_TCP,
      srcAddr: 0x7f000001,
      dstAddr: 0x7f000001,
      srcOff: 12,
      dstOff: 16,
      isFragment: false,
      moreFragments: false,
      fragOffset: 0,
      fragId: 0,
      nextHeaderOff: -1,
      l4Off: 20,
      l4Len: 32,
      l4HeaderLen: 32,
      srcPort: 52674,
      dstPort: 18080,
      tcpFlags: 0x10,
      payloadOff: 52,
      payloadLen: 0,
    });
  });

  it('reports absolute offsets for a packet inside a larger buffer, ignoring what surrounds it', () => {
    const p = tcp4(ip, { srcPort: 1000, dstPort: 2000, payload: new Uint8Array(11) });
    const b = new Uint8Array(7 + p.length + 9).fill(0xa5);
    b.set(p, 7);
    const [code, info] = check(b, 7, p.length);
    expect(code).toBe(Check.OK);
    expect(info.ipOff).toBe(7);
    expect(info.l4Off).toBe(27);
    expect(info.payloadOff).toBe(47);
    expect(info.payloadLen).toBe(11);
    expect(info.srcPort).toBe(1000);
  });

  it('resets the PacketInfo it is given: a refusal after an acceptance leaves nothing stale', () => {
    const info = new PacketInfo();
    expect(checkPacket(unhex(ACK), 0, 52, info)).toBe(Check.OK);
    const bad = unhex(ACK);
    bad[32] = 0x40; // data offset 4
    expect(checkPacket(bad, 0, 52, info)).toBe(Check.BAD_DATA_OFFSET);
    expect(info.l4Off).toBe(-1);
    expect(info.srcPort).toBe(0);
    expect(info.tcpFlags).toBe(0);
    expect(info.payloadLen).toBe(0);
    // ...and an acceptance after a refusal describes only the new packet.
    expect(checkPacket(udp4(ip, { srcPort: 5, dstPort: 6 }), 0, 28, info)).toBe(Check.OK);
    expect(info.tcpFlags).toBe(0);
    expect(info.l4HeaderLen).toBe(8);
  });

  it('leaves an unknown protocol opaque: IP payload reported, no L4 fields', () => {
    const b = ipv4({ ...ip, protocol: 47 }, new Uint8Array(24)); // GRE
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.protocol).toBe(47);
    expect(info.l4Off).toBe(-1);
    expect(info.srcPort).toBe(0);
    expect(info.payloadOff).toBe(20);
    expect(info.payloadLen).toBe(24);
  });

  it('parses TCP after IPv4 options', () => {
    const b = tcp4(
      { ...ip, options: unhex('01010100') },
      { srcPort: 7, dstPort: 8, payload: new Uint8Array(5) },
    );
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.ipHeaderLen).toBe(24);
    expect(info.l4Off).toBe(24);
    expect(info.payloadOff).toBe(44);
    expect(info.payloadLen).toBe(5);
  });
});

describe('checkPacket: IPv4 fragments are reported, not parsed', () => {
  const datagram = udp({ srcPort: 53, dstPort: 3333, payload: new Uint8Array(2000).fill(7) }, null);

  it('first fragment: MF, offset 0, l4Off -1 even though the UDP header is there', () => {
    const b = fragment(true, 0, datagram.subarray(0, 1480));
    expect(ipv4HeaderOk(b)).toBe(true);
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.isFragment).toBe(true);
    expect(info.moreFragments).toBe(true);
    expect(info.fragOffset).toBe(0);
    expect(info.l4Off).toBe(-1);
    expect(info.srcPort).toBe(0);
    expect(info.dstPort).toBe(0);
    expect(info.ipTotalLen).toBe(1500);
    expect(info.protocol).toBe(PROTO_UDP);
    expect(info.srcAddr).toBe(ip.src);
  });

  it('middle and last fragments: offset in bytes, MF as set', () => {
    const mid = check(fragment(true, 1480, datagram.subarray(1480, 1488)));
    expect(mid[0]).toBe(Check.OK);
    expect([mid[1].isFragment, mid[1].moreFragments, mid[1].fragOffset, mid[1].l4Off]).toEqual([
      true,
      true,
      1480,
      -1,
    ]);
    const last = check(fragment(false, 1488, datagram.subarray(1488)));
    expect(last[0]).toBe(Check.OK);
    expect([last[1].isFragment, last[1].moreFragments, last[1].fragOffset, last[1].l4Off]).toEqual([
      true,
      false,
      1488,
      -1,
    ]);
    const far = check(fragment(false, 0x1fff * 8, new Uint8Array(3)));
    expect(far[1].fragOffset).toBe(65528);
  });

  it('a fragment whose L4 header would be impossible is still accepted: it is not parsed', () => {
    // 3 bytes of "UDP" would be L4_TRUNCATED in an unfragmented packet.
    expect(check(fragment(false, 8, new Uint8Array(3)))[0]).toBe(Check.OK);
    const tcpFrag = ipv4({ ...ip, protocol: PROTO_TCP, mf: true, df: false }, new Uint8Array(20));
    expect(check(tcpFrag)[0]).toBe(Check.OK); // data offset 0 would be BAD_DATA_OFFSET
  });

  it('DF alone (or the reserved flag) is not a fragment', () => {
    const b = udp4({ ...ip, df: true }, { srcPort: 1, dstPort: 2 });
    const [code, info] = check(b);
    expect(code).toBe(Check.OK);
    expect(info.isFragment).toBe(false);
    expect(info.l4Off).toBe(20);
    b[6]! |= 0x80;
    expect(check(b)[1].isFragment).toBe(false);
  });

  it('IPv6 and ICMP packets are never fragments here (no extension headers walked)', () => {
    const [c6, i6] = check(udp6({ src: ip6('::1'), dst: ip6('::2') }, { srcPort: 1, dstPort: 2 }));
    expect(c6).toBe(Check.OK);
    expect(i6.isFragment).toBe(false);
    const [c4, i4] = check(icmp4(ip, { type: 8 }));
    expect(c4).toBe(Check.OK);
    expect(i4.isFragment).toBe(false);
  });
});
