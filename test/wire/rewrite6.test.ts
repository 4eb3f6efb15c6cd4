/**
 * Differential tests of every IPv6 rewrite: the incremental routines of
 * rewrite.ts against their reference twin (rewrite.reference.ts: write the
 * field, recompute the checksum from scratch), step by step, on seeded random
 * TCP, UDP and ICMPv6 packets behind random extension header chains at odd
 * offsets, and against a third answer: the independent builder's packet with
 * the new fields. Partial (NEEDS_CSUM) sums: rewritten partially and finished as
 * the kernel would, the packet equals the builder's.
 */

import { describe, expect, it } from 'vitest';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import {
  setDstPortWithChecksumUpdate,
  setIpv6DstAddrWithChecksumUpdate,
  setIpv6SrcAddrWithChecksumUpdate,
  setSrcPortWithChecksumUpdate,
} from '../../src/wire/rewrite.js';
import {
  setDstPortReference,
  setIpv6DstAddrReference,
  setIpv6SrcAddrReference,
  setSrcPortReference,
} from '../../src/wire/rewrite.reference.js';
import { completePartialChecksum, Verify, verifyChecksums } from '../../src/wire/verify.js';
import {
  type Ext6,
  hex,
  icmp,
  inetChecksum,
  ipv6x,
  PROTO_ICMPV6,
  PROTO_TCP,
  PROTO_UDP,
  pseudoSum,
  randomBytes,
  randomExt6,
  randomTcp,
  randomUdp,
  type TcpSpec,
  tcp,
  tcp6Partial,
  tcp6x,
  udp,
  udp6x,
  words6,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

type Kind = 'tcp' | 'udp' | 'icmp6';
type Field = 'srcPort' | 'dstPort' | 'srcAddr' | 'dstAddr';
const FIELDS: Field[] = ['srcPort', 'dstPort', 'srcAddr', 'dstAddr'];

interface Sample {
  kind: Kind;
  src: Uint8Array;
  dst: Uint8Array;
  exts: Ext6[];
  l4: TcpSpec;
  icmpData?: Uint8Array;
}

function build(s: Sample): Uint8Array {
  const ip = { src: s.src, dst: s.dst, hopLimit: 17 };
  if (s.kind === 'tcp') return tcp6x(ip, s.exts, s.l4);
  if (s.kind === 'udp') return udp6x(ip, s.exts, s.l4);
  return ipv6x(
    ip,
    s.exts,
    PROTO_ICMPV6,
    icmp({ type: 128, rest: 0x12345678, data: s.icmpData }, { v: 6, src: s.src, dst: s.dst }),
  );
}

function place(p: Uint8Array, at: number): Uint8Array {
  const b = new Uint8Array(at + p.length + 5).fill(0xa5);
  b.set(p, at);
  return b;
}

function info(b: Uint8Array, at: number): PacketInfo {
  const i = new PacketInfo();
  expect(checkPacket(b, at, b.length - at, i)).toBe(Check.OK);
  return i;
}

/** Hand-picked edges: all-zero and all-one words, addresses that differ in one word only. */
function edgeAddr(rng: Rng): Uint8Array {
  const a = randomBytes(rng, 16);
  switch (rng.int(4)) {
    case 0:
      return new Uint8Array(16);
    case 1:
      return new Uint8Array(16).fill(0xff);
    default:
      return a;
  }
}

describe('IPv6 rewrites against the reference twin and the builder', () => {
  it('every step equals the full recompute, and the end equals the rebuilt packet (8,000 seeded cases)', () => {
    const rng = new Rng(0x6e6);
    for (let c = 0; c < 8000; c++) {
      const kind: Kind = (['tcp', 'udp', 'icmp6'] as const)[rng.int(3)]!;
      const n = rng.int(300);
      const s: Sample = {
        kind,
        src: edgeAddr(rng),
        dst: edgeAddr(rng),
        exts: randomExt6(rng, 3),
        l4: kind === 'tcp' ? randomTcp(rng, n) : randomUdp(rng, n),
        icmpData: randomBytes(rng, n),
      };
      const at = rng.int(8);
      const pkt = build(s);
      const a = place(pkt, at);
      const b = place(pkt, at);
      const pi = info(a, at);
      const proto = pi.protocol;
      const steps = 1 + rng.int(6);
      for (let k = 0; k < steps; k++) {
        const field = kind === 'icmp6' ? FIELDS[2 + rng.int(2)]! : FIELDS[rng.int(4)]!;
        if (field === 'srcPort' || field === 'dstPort') {
          const port = rng.int(2) === 0 ? [0, 1, 0xffff][rng.int(3)]! : rng.int(0x10000);
          if (field === 'srcPort') {
            setSrcPortWithChecksumUpdate(a, pi.l4Off, proto, port);
            setSrcPortReference(b, at, pi.l4Off, proto, port);
            s.l4 = { ...s.l4, srcPort: port };
          } else {
            setDstPortWithChecksumUpdate(a, pi.l4Off, proto, port);
            setDstPortReference(b, at, pi.l4Off, proto, port);
            s.l4 = { ...s.l4, dstPort: port };
          }
        } else {
          const addr = edgeAddr(rng);
          const w = new Uint32Array(8);
          const o = rng.int(5);
          w.set(words6(addr), o);
          if (field === 'srcAddr') {
            setIpv6SrcAddrWithChecksumUpdate(a, at, pi.l4Off, proto, w, o);
            setIpv6SrcAddrReference(b, at, pi.l4Off, proto, w, o);
            s.src = addr;
          } else {
            setIpv6DstAddrWithChecksumUpdate(a, at, pi.l4Off, proto, w, o);
            setIpv6DstAddrReference(b, at, pi.l4Off, proto, w, o);
            s.dst = addr;
          }
        }
        if (hex(a) !== hex(b))
          expect({ c, k, field, got: hex(a) }).toEqual({ c, k, field, got: hex(b) });
      }
      expect(hex(a.subarray(at, at + pkt.length))).toBe(hex(build(s)));
      expect(verifyChecksums(a, info(a, at))).toBe(Verify.OK);
    }
  });

  it('never writes a UDP/IPv6 checksum of 0: a result of 0 goes out as 0xffff', () => {
    // Search for an address change whose correct checksum is 0 (0xffff on the wire).
    const rng = new Rng(99);
    let found = 0;
    for (let c = 0; c < 400_000 && found < 3; c++) {
      const src = randomBytes(rng, 16);
      const dst = randomBytes(rng, 16);
      const pkt = udp6x({ src, dst }, [], { srcPort: 1, dstPort: 2, payload: randomBytes(rng, 2) });
      const nsrc = randomBytes(rng, 16);
      const l4 = udp({ srcPort: 1, dstPort: 2, payload: pkt.subarray(48) }, null);
      if (inetChecksum(l4, pseudoSum({ v: 6, src: nsrc, dst }, PROTO_UDP, l4.length)) !== 0)
        continue;
      found++;
      setIpv6SrcAddrWithChecksumUpdate(pkt, 0, 40, PROTO_UDP, words6(nsrc), 0);
      expect(hex(pkt.subarray(46, 48))).toBe('ffff');
      expect(verifyChecksums(pkt, info(pkt, 0))).toBe(Verify.OK);
    }
    expect(found).toBeGreaterThan(0);
  });

  it('a partial (NEEDS_CSUM) sum follows the addresses, ports untouched; finished it equals the builder`s', () => {
    const rng = new Rng(0x9a27);
    for (let c = 0; c < 3000; c++) {
      const src = randomBytes(rng, 16);
      const dst = randomBytes(rng, 16);
      const nsrc = randomBytes(rng, 16);
      const ndst = randomBytes(rng, 16);
      const t = { ...randomTcp(rng, rng.int(600)) };
      const pkt = tcp6Partial({ src, dst }, t);
      const pi = info(pkt, 0);
      setIpv6SrcAddrWithChecksumUpdate(pkt, 0, pi.l4Off, PROTO_TCP, words6(nsrc), 0, true);
      setIpv6DstAddrWithChecksumUpdate(pkt, 0, pi.l4Off, PROTO_TCP, words6(ndst), 0, true);
      setSrcPortWithChecksumUpdate(pkt, pi.l4Off, PROTO_TCP, 7, true);
      setDstPortWithChecksumUpdate(pkt, pi.l4Off, PROTO_TCP, 8, true);
      const t2 = { ...t, srcPort: 7, dstPort: 8 };
      expect(hex(pkt)).toBe(hex(tcp6Partial({ src: nsrc, dst: ndst }, t2)));
      completePartialChecksum(pkt, info(pkt, 0));
      expect(hex(pkt)).toBe(hex(tcp6x({ src: nsrc, dst: ndst }, [], t2)));
    }
  });

  it('an address rewrite without an L4 header (a later fragment) changes the address only', () => {
    const pkt = ipv6x(
      { src: new Uint8Array(16), dst: new Uint8Array(16) },
      [{ type: 44, offset: 8, more: false, id: 3 }],
      PROTO_TCP,
      tcp({ srcPort: 1, dstPort: 2 }, null),
    );
    const before = pkt.slice();
    const w = Uint32Array.of(1, 2, 3, 4);
    setIpv6DstAddrWithChecksumUpdate(pkt, 0, -1, PROTO_TCP, w, 0);
    expect(hex(pkt.subarray(24, 40))).toBe('00000001000000020000000300000004');
    expect(hex(pkt.subarray(40))).toBe(hex(before.subarray(40)));
  });
});
