import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import {
  l4ChecksumOffset,
  setDstPortWithChecksumUpdate,
  setIpv4DstAddrWithChecksumUpdate,
  setIpv4SrcAddrWithChecksumUpdate,
  setSrcPortWithChecksumUpdate,
} from '../../src/wire/rewrite.js';
import {
  setDstPortReference,
  setIpv4DstAddrReference,
  setIpv4SrcAddrReference,
  setSrcPortReference,
} from '../../src/wire/rewrite.reference.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import {
  expectedL4Checksum4,
  hex,
  type Ipv4Spec,
  icmp4,
  inetSum,
  ip4,
  ipv4,
  ipv4HeaderOk,
  PROTO_ICMP,
  PROTO_TCP,
  PROTO_UDP,
  pseudoSum,
  randomBytes,
  randomIp4,
  randomTcp,
  randomUdp,
  type TcpSpec,
  tcp4,
  type UdpSpec,
  udp,
  udp4,
  unhex,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

type Field = 'srcPort' | 'dstPort' | 'srcAddr' | 'dstAddr';
interface Op {
  field: Field;
  value: number;
}

const FIELDS: Field[] = ['srcPort', 'dstPort', 'srcAddr', 'dstAddr'];

/** Apply one rewrite with the optimised routine (incremental) or with the reference twin. */
function apply(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  proto: number,
  op: Op,
  twin: boolean,
): void {
  switch (op.field) {
    case 'srcPort':
      if (twin) setSrcPortReference(buf, ipOff, l4Off, proto, op.value);
      else setSrcPortWithChecksumUpdate(buf, l4Off, proto, op.value);
      break;
    case 'dstPort':
      if (twin) setDstPortReference(buf, ipOff, l4Off, proto, op.value);
      else setDstPortWithChecksumUpdate(buf, l4Off, proto, op.value);
      break;
    case 'srcAddr':
      if (twin) setIpv4SrcAddrReference(buf, ipOff, l4Off, proto, op.value);
      else setIpv4SrcAddrWithChecksumUpdate(buf, ipOff, l4Off, proto, op.value);
      break;
    case 'dstAddr':
      if (twin) setIpv4DstAddrReference(buf, ipOff, l4Off, proto, op.value);
      else setIpv4DstAddrWithChecksumUpdate(buf, ipOff, l4Off, proto, op.value);
      break;
  }
}

/** The packet at `ipOff` in a buffer with `tail` more bytes, the surroundings filled with 0xa5. */
function place(p: Uint8Array, ipOff: number, tail = 5): Uint8Array {
  const b = new Uint8Array(ipOff + p.length + tail).fill(0xa5);
  b.set(p, ipOff);
  return b;
}

function describePacket(b: Uint8Array, ipOff: number): PacketInfo {
  const info = new PacketInfo();
  expect(checkPacket(b, ipOff, b.length - ipOff, info)).toBe(Check.OK);
  return info;
}

/**
 * Run `ops` on two copies, one per implementation; after every step the buffers
 * must be identical (surroundings included). Returns the incremental copy.
 */
function runBoth(p: Uint8Array, ipOff: number, ops: Op[]): Uint8Array {
  const a = place(p, ipOff);
  const b = place(p, ipOff);
  const info = describePacket(a, ipOff);
  ops.forEach((op, step) => {
    apply(a, ipOff, info.l4Off, info.protocol, op, false);
    apply(b, ipOff, info.l4Off, info.protocol, op, true);
    if (hex(a) !== hex(b)) expect({ step, op, got: hex(a) }).toEqual({ step, op, got: hex(b) });
  });
  return a;
}

/** The builder's packet after the same rewrites: a third, independent answer. */
function rebuilt(
  kind: 'tcp' | 'udp',
  ip: Omit<Ipv4Spec, 'protocol'>,
  l4: TcpSpec | UdpSpec,
  withChecksum: boolean,
  ops: Op[],
): Uint8Array {
  const ipNow = { ...ip };
  const l4Now = { ...l4 };
  for (const op of ops) {
    if (op.field === 'srcAddr') ipNow.src = op.value;
    else if (op.field === 'dstAddr') ipNow.dst = op.value;
    else l4Now[op.field] = op.value;
  }
  return kind === 'tcp' ? tcp4(ipNow, l4Now) : udp4(ipNow, l4Now, withChecksum);
}

function verifies(b: Uint8Array, ipOff: number): boolean {
  return verifyChecksums(b, describePacket(b, ipOff)) === Verify.OK;
}

// ---------------------------------------------------------------- fast-check arbitraries

const u16 = fc.nat({ max: 0xffff });
const u32 = fc.nat({ max: 0xffffffff });
const edge16 = fc.constantFrom(0, 1, 0x8000, 0xfffe, 0xffff);
const edge32 = fc.constantFrom(0, 1, 0xffff, 0x10000, 0x80000000, 0x7fffffff, 0xffffffff);
const words = (max: number) =>
  fc.nat({ max }).chain((w) => fc.uint8Array({ minLength: 4 * w, maxLength: 4 * w }));
const payload = fc.nat({ max: 1500 }).chain((n) => fc.uint8Array({ minLength: n, maxLength: n }));

const ipArb = fc.record({
  src: fc.oneof(u32, edge32),
  dst: fc.oneof(u32, edge32),
  ttl: fc.nat({ max: 255 }),
  ident: u16,
  tos: fc.nat({ max: 255 }),
  df: fc.boolean(),
  options: fc.oneof(fc.constant(new Uint8Array(0)), words(10)),
});
const tcpArb = fc.record({
  srcPort: fc.oneof(u16, edge16),
  dstPort: fc.oneof(u16, edge16),
  seq: u32,
  ack: u32,
  flags: fc.nat({ max: 255 }),
  window: u16,
  urgent: u16,
  options: words(10),
  payload,
});
const udpArb = fc.record({
  srcPort: fc.oneof(u16, edge16),
  dstPort: fc.oneof(u16, edge16),
  payload,
});
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ field: fc.constantFrom<Field>('srcPort', 'dstPort'), value: fc.oneof(u16, edge16) }),
  fc.record({ field: fc.constantFrom<Field>('srcAddr', 'dstAddr'), value: fc.oneof(u32, edge32) }),
);
const opsArb = fc.array(opArb, { minLength: 1, maxLength: 8 });

describe('rewrites with checksum update', () => {
  it('rewrite the captured SYN: destination 127.0.0.1:18080 -> 10.0.0.2:8080, as the builder would build it', () => {
    // Captured from Linux 6.18 with `tcpdump -i lo -xx`: the SYN of a Python client to
    // `python3 -m http.server` on 127.0.0.1:18080, with the full TCP checksum e48d that
    // tcpdump computed in place of lo's partial one.
    const syn = unhex(
      '4500 003c 6517 4000 4006 d7a2 7f00 0001 7f00 0001 cdc2 46a0 d5e3 e5a1 0000 0000 a002 ffd7' +
        ' e48d 0000 0204 ffd7 0402 080a 109f 8ae9 0000 0000 0103 030a',
    );
    const ops: Op[] = [
      { field: 'dstAddr', value: ip4('10.0.0.2') },
      { field: 'dstPort', value: 8080 },
    ];
    const out = runBoth(syn, 0, ops).subarray(0, 60);
    const want = tcp4(
      { src: ip4('127.0.0.1'), dst: ip4('10.0.0.2'), ident: 0x6517 },
      {
        srcPort: 52674,
        dstPort: 8080,
        seq: 3588482465,
        flags: 0x02,
        window: 65495,
        options: unhex('0204ffd70402080a109f8ae9000000000103030a'),
      },
    );
    expect(hex(out)).toBe(hex(want));
    expect(verifies(out, 0)).toBe(true);
  });

  it('TCP/IPv4: any sequence of rewrites equals the twin byte for byte, the builder too, and verifies (fast-check)', () => {
    fc.assert(
      fc.property(ipArb, tcpArb, opsArb, fc.nat({ max: 7 }), (ip, t, ops, ipOff) => {
        const out = runBoth(tcp4(ip, t), ipOff, ops);
        const want = rebuilt('tcp', ip, t, true, ops);
        expect(hex(out.subarray(ipOff, ipOff + want.length))).toBe(hex(want));
        expect(verifies(out, ipOff)).toBe(true);
      }),
      { numRuns: 1000, seed: 1624 },
    );
  });

  it('UDP/IPv4 (with and without checksum): the same, and a zero checksum stays zero (fast-check)', () => {
    fc.assert(
      fc.property(
        ipArb,
        udpArb,
        fc.boolean(),
        opsArb,
        fc.nat({ max: 7 }),
        (ip, u, withCsum, ops, ipOff) => {
          const out = runBoth(udp4(ip, u, withCsum), ipOff, ops);
          const want = rebuilt('udp', ip, u, withCsum, ops);
          expect(hex(out.subarray(ipOff, ipOff + want.length))).toBe(hex(want));
          const l4 = ipOff + (out[ipOff]! & 0x0f) * 4;
          const field = (out[l4 + 6]! << 8) | out[l4 + 7]!;
          if (withCsum) expect(field).not.toBe(0);
          else expect(field).toBe(0);
          expect(verifies(out, ipOff)).toBe(true);
        },
      ),
      { numRuns: 1000, seed: 768 },
    );
  });

  it('a UDP checksum that computes to 0 goes out as 0xffff, a TCP one as 0x0000 (port rewrite)', () => {
    const rng = new Rng(0xffff);
    for (let n = 0; n < 200; n++) {
      for (const proto of [PROTO_UDP, PROTO_TCP]) {
        const ip = randomIp4(rng);
        const l4 = proto === PROTO_UDP ? randomUdp(rng, rng.int(40)) : randomTcp(rng, rng.int(40));
        const p = proto === PROTO_UDP ? udp4(ip, l4) : tcp4(ip, l4 as TcpSpec);
        const hl = (p[0]! & 0x0f) * 4;
        // The source port that brings the sum of pseudo-header + segment to 0xffff:
        // sum everything with that port and the checksum field zeroed, take the rest.
        const seg = p.slice(hl);
        const at = proto === PROTO_UDP ? 6 : 16;
        seg[0] = seg[1] = seg[at] = seg[at + 1] = 0;
        const s = inetSum(seg, pseudoSum({ v: 4, src: ip.src, dst: ip.dst }, proto, seg.length));
        const port = 0xffff - s;
        const out = runBoth(p, 3, [{ field: 'srcPort', value: port }]);
        const field = (out[3 + hl + at]! << 8) | out[3 + hl + at + 1]!;
        expect(field).toBe(proto === PROTO_UDP ? 0xffff : 0x0000);
        expect(verifies(out, 3)).toBe(true);
        // ...and from that state a further rewrite still matches the twin.
        const again = runBoth(out.subarray(3, 3 + p.length), 0, [
          { field: 'dstAddr', value: rng.u32() },
        ]);
        expect(verifies(again, 0)).toBe(true);
      }
    }
  });

  it('a UDP checksum that computes to 0 after an address rewrite goes out as 0xffff', () => {
    const rng = new Rng(0xfffe);
    for (let n = 0; n < 200; n++) {
      const ip = randomIp4(rng);
      const u = randomUdp(rng, rng.int(40));
      const p = udp4(ip, u);
      // The destination address whose pseudo-header makes the datagram sum to 0xffff.
      const d = udp(u, null);
      const s = inetSum(d, pseudoSum({ v: 4, src: ip.src, dst: 0 }, PROTO_UDP, d.length));
      const dst = 0xffff - s; // high half 0, low half the rest
      const out = runBoth(p, 0, [{ field: 'dstAddr', value: dst }]);
      const hl = (p[0]! & 0x0f) * 4;
      expect(hex(out.subarray(hl + 6, hl + 8))).toBe('ffff');
      expect(expectedL4Checksum4(out)).toBe(0xffff);
      expect(verifies(out, 0)).toBe(true);
    }
  });

  it('rewriting a field to its own value changes nothing', () => {
    const p = tcp4(
      { src: ip4('192.0.2.1'), dst: ip4('192.0.2.2') },
      { srcPort: 1, dstPort: 2, payload: new Uint8Array(9) },
    );
    const out = runBoth(p, 0, [
      { field: 'srcPort', value: 1 },
      { field: 'dstAddr', value: ip4('192.0.2.2') },
    ]);
    expect(hex(out.subarray(0, p.length))).toBe(hex(p));
  });

  it('a fragment (l4Off -1): the address rewrite fixes the IP header checksum and leaves the L4 bytes', () => {
    const frag = ipv4(
      { src: ip4('192.0.2.1'), dst: ip4('192.0.2.2'), protocol: PROTO_TCP, mf: true, df: false },
      randomBytes(new Rng(7), 48),
    );
    const info = describePacket(frag, 0);
    expect(info.l4Off).toBe(-1);
    const out = runBoth(frag, 0, [
      { field: 'srcAddr', value: ip4('10.1.1.1') },
      { field: 'dstAddr', value: ip4('10.2.2.2') },
    ]);
    expect(ipv4HeaderOk(out)).toBe(true);
    expect(hex(out.subarray(20, frag.length))).toBe(hex(frag.subarray(20)));
    expect(hex(out.subarray(0, frag.length))).toBe(
      hex(
        ipv4(
          { src: ip4('10.1.1.1'), dst: ip4('10.2.2.2'), protocol: PROTO_TCP, mf: true, df: false },
          frag.subarray(20),
        ),
      ),
    );
  });

  it('ICMP: an address rewrite fixes the IP header and leaves the ICMP checksum (no pseudo-header)', () => {
    const p = icmp4(
      { src: ip4('192.0.2.1'), dst: ip4('192.0.2.2') },
      { type: 8, rest: 0x12340001, data: new Uint8Array(8) },
    );
    const a = place(p, 2);
    const info = describePacket(a, 2);
    setIpv4SrcAddrWithChecksumUpdate(a, 2, info.l4Off, PROTO_ICMP, ip4('10.0.0.1'));
    expect(hex(a.subarray(2 + 20, 2 + p.length))).toBe(hex(p.subarray(20)));
    expect(hex(a.subarray(2, 2 + p.length))).toBe(
      hex(
        icmp4(
          { src: ip4('10.0.0.1'), dst: ip4('192.0.2.2') },
          { type: 8, rest: 0x12340001, data: new Uint8Array(8) },
        ),
      ),
    );
    expect(verifies(a, 2)).toBe(true);
  });

  it('l4ChecksumOffset picks the TCP or UDP field and nothing else', () => {
    expect(l4ChecksumOffset(PROTO_TCP)).toBe(16);
    expect(l4ChecksumOffset(PROTO_UDP)).toBe(6);
    expect(l4ChecksumOffset(PROTO_ICMP)).toBe(-1);
    expect(l4ChecksumOffset(58)).toBe(-1);
    expect(l4ChecksumOffset(47)).toBe(-1);
  });
});

describe('rewrites: differential against the twin on seeded random packets', () => {
  it('60,000 packets (payloads 0-2000 bytes and 65,535-byte datagrams, offsets 0-7), 1-4 rewrites each', () => {
    const rng = new Rng(0x0ff5e7);
    let cases = 0;
    let steps = 0;
    let big = 0;
    for (let i = 0; i < 60_000; i++) {
      const kind = rng.int(3); // TCP, UDP, UDP without checksum
      const ip = randomIp4(rng);
      const ipHl = 20 + (ip.options?.length ?? 0);
      let n = rng.int(2001);
      const huge = i % 1000 === 999;
      if (huge) big++;
      let p: Uint8Array;
      if (kind === 0) {
        const t = randomTcp(rng, 0);
        if (huge) n = 65535 - ipHl - 20 - (t.options?.length ?? 0);
        p = tcp4(ip, { ...t, payload: randomBytes(rng, n) });
      } else {
        if (huge) n = 65535 - ipHl - 8;
        p = udp4(ip, randomUdp(rng, n), kind === 1);
      }
      if (huge) expect(p.length).toBe(65535);
      const ipOff = rng.int(8);
      const a = place(p, ipOff, 3);
      const b = place(p, ipOff, 3);
      const info = describePacket(a, ipOff);
      const k = 1 + rng.int(4);
      for (let s = 0; s < k; s++) {
        const field = FIELDS[rng.int(4)]!;
        const wide = field === 'srcAddr' || field === 'dstAddr';
        const value =
          rng.int(8) === 0
            ? [0, 0xffff, 0x8000, 0xffffffff][rng.int(4)]! & (wide ? 0xffffffff : 0xffff)
            : wide
              ? rng.u32()
              : rng.int(0x10000);
        const op = { field, value: value >>> 0 };
        apply(a, ipOff, info.l4Off, info.protocol, op, false);
        apply(b, ipOff, info.l4Off, info.protocol, op, true);
        steps++;
      }
      // The whole buffer, surroundings included: no stray writes either.
      let same = a.length === b.length;
      for (let j = 0; same && j < a.length; j++) same = a[j] === b[j];
      if (!same) expect({ i, got: hex(a) }).toEqual({ i, got: hex(b) });
      cases++;
    }
    expect(cases).toBe(60_000);
    expect(big).toBe(60);
    expect(steps).toBeGreaterThan(100_000);
  });
});
