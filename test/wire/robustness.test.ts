/**
 * Robustness of the checked entry points: a million seeded random and mutated
 * buffers through `checkPacket`, and for each accepted one `verifyChecksums` and a
 * read of every field the PacketInfo says is present (for a first fragment, after
 * `checkFirstFragment`, against an oracle of its own); and random, cut and mutated
 * ICMP error bodies through `checkQuoted`.
 *
 * It checks that nothing throws; that every accepted packet's offsets lie inside
 * the bytes it was given; that each mutation class is refused with its own reason
 * (always, where the mutation determines the reason, and at least once in any case);
 * and that what is read from an accepted packet does not depend on any byte outside
 * [ipOff, ipOff + ipTotalLen): the bytes around the packet and its link padding are
 * changed and the whole check-verify-read is run again, which must give the same
 * answer. That last check is how an out-of-bounds read shows in JavaScript, where
 * reading past a typed array gives `undefined` rather than a fault.
 */

import { describe, expect, it } from 'vitest';
import { ipv4ToString, ipv6ToString } from '../../src/wire/address.js';
import { IcmpPacket, IcmpRepr } from '../../src/wire/icmp.js';
import { Ipv4Packet, Ipv4Repr } from '../../src/wire/ipv4.js';
import { Ipv6Header, Ipv6Repr } from '../../src/wire/ipv6.js';
import {
  CHECK_NAMES,
  Check,
  type CheckCode,
  checkFirstFragment,
  checkPacket,
  checkQuoted,
  checkQuoted6,
  PacketInfo,
  QuotedPacket,
} from '../../src/wire/parse.js';
import { TcpRepr, TcpSegment } from '../../src/wire/tcp.js';
import { UdpDatagram, UdpRepr } from '../../src/wire/udp.js';
import { verifyChecksums } from '../../src/wire/verify.js';
import {
  type Ext6,
  ext6Chain,
  icmp,
  icmp4,
  inetChecksum,
  ipv4,
  ipv6x,
  PROTO_ICMP,
  PROTO_ICMPV6,
  PROTO_TCP,
  PROTO_UDP,
  randomBytes,
  randomExt6,
  randomIp4,
  randomIp6,
  randomTcp,
  randomUdp,
  tcp,
  tcp4,
  udp,
  udp4,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

const CASES = 1_000_000;
const POOL = 1536;
/** Room around the packet that the independence check rewrites. */
const MARGIN = 64;

type Kind = 'tcp4' | 'udp4' | 'udp4-nocsum' | 'icmp4' | 'other4' | 'tcp6' | 'udp6' | 'icmp6';
const KINDS: Kind[] = ['tcp4', 'udp4', 'udp4-nocsum', 'icmp4', 'other4', 'tcp6', 'udp6', 'icmp6'];

interface Sample {
  kind: Kind;
  bytes: Uint8Array;
  v6: boolean;
  protocol: number;
  /** IP header length: IPv4 IHL, IPv6 40 + the extension headers. */
  hdr: number;
  /** IPv6: offsets of the extension headers in the packet (empty: none). */
  exts: number[];
}

/** An IPv6 sample: half of them behind a random chain of up to 4 extension headers. */
function v6Sample(
  rng: Rng,
  kind: Kind,
  protocol: number,
  l4: (src: Uint8Array, dst: Uint8Array) => Uint8Array,
): Sample {
  const ip = randomIp6(rng);
  const chain: Ext6[] = rng.int(2) === 0 ? randomExt6(rng, 4) : [];
  const bytes = ipv6x(ip, chain, protocol, l4(ip.src, ip.dst));
  const exts: number[] = [];
  let at = 40;
  for (const e of chain) {
    exts.push(at);
    at += e.type === 44 ? 8 : 8 * ((('units' in e ? e.units : 0) ?? 0) + 1);
  }
  expect(at).toBe(40 + ext6Chain(chain, protocol).bytes.length);
  return { kind, v6: true, protocol, bytes, hdr: at, exts };
}

function payloadLen(rng: Rng): number {
  // Mostly short (the mutations act on headers), sometimes up to a full Ethernet MTU.
  return rng.int(16) === 0 ? rng.int(1401) : rng.int(64);
}

function buildSample(rng: Rng, kind: Kind): Sample {
  const n = payloadLen(rng);
  switch (kind) {
    case 'tcp4':
      return {
        kind,
        v6: false,
        protocol: PROTO_TCP,
        bytes: tcp4(randomIp4(rng), randomTcp(rng, n)),
        hdr: 0,
        exts: [],
      };
    case 'udp4':
      return {
        kind,
        v6: false,
        protocol: PROTO_UDP,
        bytes: udp4(randomIp4(rng), randomUdp(rng, n)),
        hdr: 0,
        exts: [],
      };
    case 'udp4-nocsum':
      return {
        kind,
        v6: false,
        protocol: PROTO_UDP,
        bytes: udp4(randomIp4(rng), randomUdp(rng, n), false),
        hdr: 0,
        exts: [],
      };
    case 'icmp4':
      return {
        kind,
        v6: false,
        protocol: PROTO_ICMP,
        bytes: icmp4(randomIp4(rng), {
          type: rng.int(256),
          code: rng.int(256),
          rest: rng.u32(),
          data: randomBytes(rng, n),
        }),
        hdr: 0,
        exts: [],
      };
    case 'other4': {
      const protocol = [0, 4, 41, 47, 50, 132, 253][rng.int(7)]!;
      return {
        kind,
        v6: false,
        protocol,
        bytes: ipv4({ ...randomIp4(rng), protocol }, randomBytes(rng, n)),
        hdr: 0,
        exts: [],
      };
    }
    case 'tcp6':
      return v6Sample(rng, kind, PROTO_TCP, (src, dst) =>
        tcp(randomTcp(rng, n), { v: 6, src, dst }),
      );
    case 'udp6':
      return v6Sample(rng, kind, PROTO_UDP, (src, dst) =>
        udp(randomUdp(rng, n), { v: 6, src, dst }),
      );
    case 'icmp6':
      return v6Sample(rng, kind, PROTO_ICMPV6, (src, dst) =>
        icmp(
          { type: rng.int(256), code: rng.int(256), rest: rng.u32(), data: randomBytes(rng, n) },
          { v: 6, src, dst },
        ),
      );
  }
}

/** Mutation classes and the refusal each must produce (null: any outcome is allowed). */
const MUTATIONS = {
  intact: Check.OK,
  truncate: null, // TRUNCATED, BAD_IHL or BAD_TOTAL_LEN by how much: never OK
  ihlLow: Check.BAD_IHL,
  ihlBeyond: Check.BAD_IHL,
  totalHigh: Check.BAD_TOTAL_LEN,
  totalLow: Check.BAD_TOTAL_LEN,
  l4Cut: Check.L4_TRUNCATED,
  dataOffsetLow: Check.BAD_DATA_OFFSET,
  dataOffsetBeyond: Check.BAD_DATA_OFFSET,
  udpLenLow: Check.BAD_UDP_LEN,
  udpLenHigh: Check.BAD_UDP_LEN,
  fragment: Check.OK,
  badVersion: Check.BAD_VERSION,
  protocol: null, // another protocol number, IP checksum fixed: whatever that protocol makes of it
  flip: null,
  garbage: null,
  zeroLen: Check.TRUNCATED,
  offBeyond: Check.TRUNCATED,
  /** IPv6: an extension header whose length runs past the packet. */
  extLen: Check.IPV6_BAD_EXT_HEADER,
  /** IPv6: an extension header's next header changed (another header, an upper layer, a fragment header). */
  extNext: null,
  /** IPv6: the chain made longer than 8 headers (destination options inserted). */
  extMany: Check.IPV6_EXT_HEADERS_TOO_LONG,
} as const satisfies Record<string, CheckCode | null>;
type Mutation = keyof typeof MUTATIONS;
const MUTATION_NAMES = Object.keys(MUTATIONS) as Mutation[];
/** Refusals that a class without a fixed outcome must still show at least once. */
const MUST_SEE: Partial<Record<Mutation, CheckCode[]>> = {
  truncate: [Check.TRUNCATED, Check.BAD_IHL, Check.BAD_TOTAL_LEN],
  protocol: [Check.OK, Check.L4_TRUNCATED, Check.BAD_DATA_OFFSET, Check.BAD_UDP_LEN],
  flip: [Check.OK, Check.BAD_VERSION, Check.BAD_IHL, Check.BAD_TOTAL_LEN],
  garbage: [Check.TRUNCATED, Check.BAD_VERSION, Check.BAD_IHL, Check.BAD_TOTAL_LEN],
  extNext: [Check.OK, Check.IPV6_BAD_EXT_HEADER],
};

function set16(b: Uint8Array, i: number, v: number): void {
  b[i] = v >> 8;
  b[i + 1] = v & 0xff;
}

function get16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}

// Views reused across cases, as on the data plane.
const ip4View = new Ipv4Packet();
const ip6View = new Ipv6Header();
const tcpView = new TcpSegment();
const udpView = new UdpDatagram();
const icmpView = new IcmpPacket();

/** Mix a value into a running 32-bit hash. */
function mix(h: number, v: number | boolean): number {
  return Math.imul(h ^ (typeof v === 'boolean' ? (v ? 1 : 0) : v), 0x01000193) >>> 0;
}

/**
 * Read every field the PacketInfo says is present, through the views and the Reprs,
 * and return a hash of all of it (with the verify result) for the independence check.
 */
function readAll(buf: Uint8Array, info: PacketInfo, verify: number, parseReprs: boolean): number {
  let h = mix(0x811c9dc5, verify);
  for (const k of Object.keys(info) as (keyof PacketInfo)[]) {
    const v = info[k];
    if (typeof v !== 'function') h = mix(h, v);
  }
  if (info.version === 4) {
    const v = ip4View.attach(buf, info.ipOff);
    h = mix(h, v.version());
    h = mix(h, v.ihl());
    h = mix(h, v.dscp());
    h = mix(h, v.ecn());
    h = mix(h, v.totalLen());
    h = mix(h, v.ident());
    h = mix(h, v.dontFragment());
    h = mix(h, v.moreFragments());
    h = mix(h, v.fragOffset());
    h = mix(h, v.isFragment());
    h = mix(h, v.ttl());
    h = mix(h, v.protocol());
    h = mix(h, v.checksum());
    h = mix(h, v.srcAddr());
    h = mix(h, v.dstAddr());
    h = mix(h, v.payloadOff());
    h = mix(h, v.payloadLen());
    h = mix(h, v.verifyChecksum());
    if (parseReprs) {
      h = mix(h, ipv4ToString(v.srcAddr()).length);
      if (v.verifyChecksum()) h = mix(h, Ipv4Repr.parse(v).payloadLen);
    }
  } else {
    const v = ip6View.attach(buf, info.ipOff);
    h = mix(h, v.version());
    h = mix(h, v.trafficClass());
    h = mix(h, v.flowLabel());
    h = mix(h, v.payloadLen());
    h = mix(h, v.nextHeader());
    h = mix(h, v.hopLimit());
    for (let i = 0; i < 16; i++) h = mix(h, buf[v.srcAddrOff() + i]! ^ buf[v.dstAddrOff() + i]!);
    if (parseReprs) {
      h = mix(h, ipv6ToString(buf, v.srcAddrOff()).length);
      h = mix(h, Ipv6Repr.parse(v).flowLabel);
    }
  }
  if (info.l4Off < 0) return h;
  if (info.protocol === PROTO_TCP) {
    const t = tcpView.attach(buf, info.l4Off, info.l4Len);
    h = mix(h, t.srcPort());
    h = mix(h, t.dstPort());
    h = mix(h, t.seqNumber());
    h = mix(h, t.ackNumber());
    h = mix(h, t.dataOffset());
    h = mix(h, t.flags());
    h = mix(h, t.fin() || t.syn() || t.rst() || t.psh() || t.ack() || t.urg());
    h = mix(h, t.window());
    h = mix(h, t.checksum());
    h = mix(h, t.urgentPointer());
    const oo = t.optionsOff();
    for (let i = 0; i < t.optionsLen(); i++) h = mix(h, buf[oo + i]!);
    h = mix(h, t.payloadOff());
    h = mix(h, t.payloadLen());
    if (parseReprs) h = mix(h, TcpRepr.parse(t, null).payload.length);
  } else if (info.protocol === PROTO_UDP) {
    const u = udpView.attach(buf, info.l4Off);
    h = mix(h, u.srcPort());
    h = mix(h, u.dstPort());
    h = mix(h, u.length());
    h = mix(h, u.checksum());
    h = mix(h, u.payloadOff());
    h = mix(h, u.payloadLen());
    if (parseReprs) h = mix(h, UdpRepr.parse(u, null).payload.length);
  } else {
    const m = icmpView.attach(buf, info.l4Off, info.l4Len);
    h = mix(h, m.msgType());
    h = mix(h, m.code());
    h = mix(h, m.checksum());
    h = mix(h, m.restOfHeader());
    h = mix(h, m.echoIdent());
    h = mix(h, m.echoSeq());
    h = mix(h, m.dataOff());
    h = mix(h, m.dataLen());
    if (parseReprs && info.protocol === PROTO_ICMP && m.verifyChecksum()) {
      h = mix(h, IcmpRepr.parse(m).data.length);
    }
  }
  return h;
}

/**
 * A view of `target` that records every element read outside [lo, hi): the exact
 * form of the out-of-bounds check, too slow for every case, run on a sample.
 * (Whole-word reads through sum16's Uint32Array bypass it; the two windows above
 * catch those through their results.)
 */
class ReadFence {
  lo = 0;
  hi = 0;
  strays: number[] = [];
  readonly view: Uint8Array;
  constructor(target: Uint8Array) {
    this.view = new Proxy(target, {
      get: (t, prop) => {
        if (typeof prop === 'string') {
          const i = Number(prop);
          if (prop !== '' && Number.isInteger(i) && String(i) === prop) {
            if ((i < this.lo || i >= this.hi) && this.strays.length < 8) this.strays.push(i);
            return t[i];
          }
        }
        const v = Reflect.get(t, prop, t);
        return typeof v === 'function' ? v.bind(t) : v;
      },
    });
  }
}

/** Offsets an accepted packet reports must lie inside [off, off + len) and agree with each other. */
function offsetsProblem(info: PacketInfo, off: number, len: number, bufLen: number): string | null {
  const ipEnd = info.ipOff + info.ipTotalLen;
  if (info.ipOff !== off) return 'ipOff';
  if (off + len > bufLen || ipEnd > off + len) return 'ipOff + ipTotalLen beyond the bytes given';
  if (info.ipHeaderLen < (info.version === 4 ? 20 : 40) || info.ipHeaderLen > info.ipTotalLen) {
    return 'ipHeaderLen';
  }
  if (info.l4Off >= 0) {
    if (info.isFragment) return 'l4Off for a fragment';
    if (info.l4Off !== info.ipOff + info.ipHeaderLen) return 'l4Off';
    if (info.l4Off + info.l4Len > ipEnd) return 'l4Off + l4Len beyond the packet';
    if (info.l4HeaderLen < 8 || info.l4HeaderLen > info.l4Len) return 'l4HeaderLen';
    if (info.payloadOff !== info.l4Off + info.l4HeaderLen) return 'payloadOff';
  } else if (!info.isFragment && info.payloadOff !== info.ipOff + info.ipHeaderLen) {
    return 'payloadOff of an opaque payload';
  }
  if (info.payloadLen < 0 || info.payloadOff + info.payloadLen > ipEnd) {
    return 'payloadOff + payloadLen beyond the packet';
  }
  return null;
}

describe('checkPacket robustness', () => {
  it(`survives ${CASES.toLocaleString('en')} random and mutated buffers, refusing each mutation for its reason`, () => {
    const started = performance.now();
    const rng = new Rng(0xb0b0_f00d);
    const pool: Sample[] = [];
    for (let i = 0; i < POOL; i++) pool.push(buildSample(rng, KINDS[i % KINDS.length]!));

    // A hot-loop set-up: one work buffer and one PacketInfo for every case.
    const work = new Uint8Array(MARGIN + 8 + 1600 + MARGIN);
    const info = new PacketInfo();
    const counts = new Map<Mutation, number[]>(
      MUTATION_NAMES.map((m) => [m, new Array<number>(CHECK_NAMES.length).fill(0)]),
    );
    const verifyCounts = [0, 0, 0];
    const failures: string[] = [];
    const fail = (msg: string) => {
      if (failures.length < 20) failures.push(msg);
    };
    const fence = new ReadFence(work);
    let fenced = 0;
    let accepted = 0;
    let checked = 0;
    let independenceChecks = 0;
    const firstInfo = new PacketInfo();
    let firstChecks = 0;
    let firstAccepted = 0;

    // A mutation that does not apply to the sample drawn (an IHL change to IPv6, a
    // data offset to UDP...) draws again: CASES buffers all go through checkPacket.
    for (let c = 0; checked < CASES; c++) {
      const s = pool[rng.int(POOL)]!;
      const p = s.bytes;
      const mutation = MUTATION_NAMES[rng.int(MUTATION_NAMES.length)]!;
      // Random bytes around the packet, so that a read past its end sees garbage.
      const base = MARGIN + rng.int(8);
      for (let i = base - MARGIN; i < base; i++) work[i] = rng.u32();
      work.set(p, base);
      for (let i = base + p.length; i < base + p.length + MARGIN; i++) work[i] = rng.u32();
      let off = base;
      let len = p.length;
      let want: CheckCode | null = MUTATIONS[mutation];
      let applied = true;
      const ihl = s.v6 ? s.hdr : (p[0]! & 0x0f) * 4;
      const l4 = base + ihl;
      const l4Avail = p.length - ihl;

      switch (mutation) {
        case 'intact':
          break;
        case 'truncate':
          len = rng.int(p.length); // 0 .. length-1: always below the declared total
          if (len === 0) want = Check.TRUNCATED;
          break;
        case 'ihlLow':
          if (s.v6) applied = false;
          else work[base] = 0x40 | rng.int(5);
          break;
        case 'ihlBeyond':
          // An IHL of up to 60 bytes can exceed only a packet shorter than that.
          if (s.v6 || p.length >= 60) applied = false;
          else {
            const min = Math.floor(p.length / 4) + 1;
            work[base] = 0x40 | (min + rng.int(16 - min));
          }
          break;
        case 'totalHigh':
          if (s.v6)
            set16(work, base + 4, p.length - 40 + 1 + rng.int(0x10000 - (p.length - 40) - 1));
          else set16(work, base + 2, p.length + 1 + rng.int(0x10000 - p.length - 1));
          break;
        case 'totalLow':
          if (s.v6) applied = false;
          else set16(work, base + 2, rng.int(ihl));
          break;
        case 'l4Cut': {
          const need =
            s.protocol === PROTO_TCP
              ? 20
              : s.protocol === PROTO_UDP
                ? 8
                : s.kind === 'other4'
                  ? 0
                  : 8;
          if (need === 0) applied = false;
          else {
            const avail = rng.int(need);
            if (s.v6) set16(work, base + 4, ihl - 40 + avail);
            else set16(work, base + 2, ihl + avail);
            len = ihl + avail + (rng.int(2) === 0 ? 0 : rng.int(40)); // sometimes with link padding
          }
          break;
        }
        case 'dataOffsetLow':
          if (s.protocol !== PROTO_TCP) applied = false;
          else work[l4 + 12] = (rng.int(5) << 4) | rng.int(16);
          break;
        case 'dataOffsetBeyond':
          if (s.protocol !== PROTO_TCP || l4Avail >= 60) applied = false;
          else {
            const min = Math.floor(l4Avail / 4) + 1;
            work[l4 + 12] = (min + rng.int(16 - min)) << 4;
          }
          break;
        case 'udpLenLow':
          if (s.protocol !== PROTO_UDP) applied = false;
          else set16(work, l4 + 4, rng.int(8));
          break;
        case 'udpLenHigh':
          if (s.protocol !== PROTO_UDP) applied = false;
          else {
            set16(work, l4 + 4, l4Avail + 1 + rng.int(0x10000 - l4Avail - 1));
            if (rng.int(2) === 0) len += rng.int(MARGIN); // padding does not make room
          }
          break;
        case 'fragment':
          if (s.v6) applied = false;
          else {
            const mf = rng.int(2) === 0;
            const fo = rng.int(2) === 0 && mf ? 0 : 1 + rng.int(0x1fff);
            set16(work, base + 6, (mf ? 0x2000 : 0) | fo);
            // A first fragment cut anywhere in (or before) its L4 header, a third of the time.
            if (fo === 0 && rng.int(3) === 0) set16(work, base + 2, ihl + rng.int(l4Avail + 1));
            set16(work, base + 10, 0);
            set16(work, base + 10, inetChecksum(work.subarray(base, base + ihl)));
          }
          break;
        case 'badVersion': {
          const v = [0, 1, 2, 3, 5, 7, 8, 9, 15][rng.int(9)]!;
          work[base] = (v << 4) | (work[base]! & 0x0f);
          break;
        }
        case 'protocol': {
          // Including the mismatched ones: ICMPv6 over IPv4 and ICMP over IPv6.
          const proto = [PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, rng.int(256)][rng.int(5)]!;
          if (s.v6) work[base + 6] = proto;
          else {
            work[base + 9] = proto;
            set16(work, base + 10, 0);
            set16(work, base + 10, inetChecksum(work.subarray(base, base + ihl)));
          }
          break;
        }
        case 'flip': {
          const n = 1 + rng.int(8);
          // Flips land in the first 64 bytes (the headers) three times in four.
          for (let i = 0; i < n; i++) {
            const at = rng.int(4) === 0 ? rng.int(p.length) : rng.int(Math.min(64, p.length));
            work[base + at]! ^= 1 << rng.int(8);
          }
          break;
        }
        case 'garbage': {
          len = rng.int(100);
          for (let i = 0; i < len; i++) work[base + i] = rng.u32();
          // A plausible first byte half the time, so garbage reaches the later checks.
          if (len > 0 && rng.int(2) === 0) work[base] = rng.int(2) === 0 ? 0x45 : 0x60;
          for (let i = base + len; i < base + len + MARGIN; i++) work[i] = rng.u32();
          break;
        }
        case 'zeroLen':
          len = 0;
          break;
        case 'extLen':
          if (s.exts.length === 0) applied = false;
          else work[base + s.exts[rng.int(s.exts.length)]! + 1] = 255; // 2 KiB: beyond any sample
          break;
        case 'extNext': {
          if (s.exts.length === 0) applied = false;
          else {
            const nh = [0, 43, 44, 59, 60, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, rng.int(256)][
              rng.int(9)
            ]!;
            work[base + s.exts[rng.int(s.exts.length)]!] = nh;
          }
          break;
        }
        case 'extMany': {
          // Nine destination options headers in front of the upper layer (sample rebuilt in place).
          if (!s.v6 || p.length + 9 * 8 > 1600) applied = false;
          else {
            const extra = 9 * 8;
            work.copyWithin(base + 40 + extra, base + 40, base + p.length);
            const nh = work[base + 6]!;
            for (let k = 0; k < 9; k++) {
              const h = base + 40 + 8 * k;
              work.fill(0, h, h + 8);
              work[h] = k < 8 ? 60 : nh;
              work[h + 2] = 1; // PadN
              work[h + 3] = 4;
            }
            work[base + 6] = 60;
            set16(work, base + 4, p.length - 40 + extra);
            len = p.length + extra;
            for (let i = base + len; i < base + len + MARGIN; i++) work[i] = rng.u32();
          }
          break;
        }
        case 'offBeyond':
          switch (rng.int(5)) {
            case 0:
              off = work.length - rng.int(len); // the packet runs off the end
              break;
            case 1:
              off = work.length + rng.int(100);
              break;
            case 2:
              off = -1 - rng.int(100);
              break;
            case 3:
              len = work.length - off + 1 + rng.int(100);
              break;
            default:
              if (rng.int(2) === 0) off = Number.NaN;
              else len = Number.NaN;
          }
          break;
      }
      if (!applied) continue;

      let code: CheckCode;
      try {
        code = checkPacket(work, off, len, info);
      } catch (e) {
        fail(`${mutation}/${s.kind}: checkPacket threw ${String(e)}`);
        continue;
      }
      checked++;
      counts.get(mutation)![code]!++;
      if (want !== null && code !== want) {
        fail(`${mutation}/${s.kind} case ${c}: ${CHECK_NAMES[code]}, want ${CHECK_NAMES[want]}`);
      }
      if (mutation === 'truncate' && code === Check.OK) fail(`truncate/${s.kind}: accepted`);
      if (code !== Check.OK) continue;
      accepted++;

      const problem = offsetsProblem(info, off, len, work.length);
      if (problem) {
        fail(`${mutation}/${s.kind} case ${c}: ${problem}`);
        continue;
      }
      if (mutation === 'fragment') {
        const frag = get16(work, base + 6);
        if (
          !info.isFragment ||
          info.l4Off !== -1 ||
          info.moreFragments !== ((frag & 0x2000) !== 0) ||
          info.fragOffset !== (frag & 0x1fff) * 8
        ) {
          fail(`fragment/${s.kind} case ${c}: fragment fields wrong`);
        }
      }
      // A first fragment: checkFirstFragment against its oracle, on a PacketInfo of its own.
      let first = -1;
      if (info.isFragment && info.fragOffset === 0) {
        firstChecks++;
        checkPacket(work, off, len, firstInfo);
        const problem = firstFragmentProblem(work, firstInfo);
        if (problem) fail(`${mutation}/${s.kind} case ${c}: checkFirstFragment: ${problem}`);
        first = firstDigest(firstInfo);
        if (firstInfo.l4Off >= 0) firstAccepted++;
      }

      const parseReprs = (c & 3) === 0;
      let digest: number;
      let verify: number;
      try {
        verify = verifyChecksums(work, info);
        digest = readAll(work, info, verify, parseReprs);
      } catch (e) {
        fail(`${mutation}/${s.kind} case ${c}: verify/read threw ${String(e)}`);
        continue;
      }
      verifyCounts[verify]!++;
      if ((mutation === 'intact' || mutation === 'fragment') && verify !== 0) {
        fail(`${mutation}/${s.kind} case ${c}: verify ${verify} on a well-formed packet`);
      }

      // Independence: change every byte outside the packet proper, run it all again.
      independenceChecks++;
      const ipEnd = info.ipOff + info.ipTotalLen;
      for (let i = Math.max(0, off - MARGIN); i < off; i++) work[i]! ^= 0xff;
      for (let i = ipEnd; i < Math.min(work.length, off + len + MARGIN); i++) work[i]! ^= 0xff;
      const info2 = new PacketInfo();
      const code2 = checkPacket(work, off, len, info2);
      const verify2 = code2 === Check.OK ? verifyChecksums(work, info2) : -1;
      const digest2 = code2 === Check.OK ? readAll(work, info2, verify2, parseReprs) : -1;
      const first2 =
        code2 === Check.OK && info2.isFragment && info2.fragOffset === 0
          ? firstDigestAfterCheck(work, info2)
          : -1;
      if (code2 !== code || verify2 !== verify || digest2 !== digest || first2 !== first) {
        fail(
          `${mutation}/${s.kind} case ${c}: result depends on bytes outside the packet ` +
            `(code ${code}/${code2}, verify ${verify}/${verify2})`,
        );
      }

      // And on a sample, the exact check: no element read outside the bytes given
      // (checkPacket) or outside the packet it accepted (verify and the reads).
      if ((c & 7) === 0) {
        fenced++;
        const info3 = new PacketInfo();
        fence.strays.length = 0;
        fence.lo = off;
        fence.hi = off + len;
        checkPacket(fence.view, off, len, info3);
        fence.lo = info3.ipOff;
        fence.hi = info3.ipOff + info3.ipTotalLen;
        if (info3.isFragment) checkFirstFragment(fence.view, info3);
        readAll(fence.view, info3, verifyChecksums(fence.view, info3), true);
        if (fence.strays.length > 0) {
          fail(
            `${mutation}/${s.kind} case ${c}: read byte(s) ${fence.strays.map((i) => i - off)} ` +
              `outside the packet [0, ${info3.ipTotalLen}) (protocol ${info3.protocol}, v${info3.version})`,
          );
        }
      }
    }
    const seconds = (performance.now() - started) / 1000;

    const header = ['mutation'.padEnd(17), ...CHECK_NAMES.map((n) => n.padStart(16))].join('');
    const rows = MUTATION_NAMES.map((m) =>
      [m.padEnd(17), ...counts.get(m)!.map((n) => String(n).padStart(16))].join(''),
    );
    console.log(
      [
        `checkPacket robustness: ${checked} buffers in ${seconds.toFixed(1)} s, ${accepted} accepted, ` +
          `verify ok/bad_ip/bad_l4 = ${verifyCounts.join('/')}, ${independenceChecks} independence re-runs, ` +
          `${fenced} fenced, ${firstChecks} first fragments (${firstAccepted} with their L4 header)`,
        header,
        ...rows,
      ].join('\n'),
    );

    expect(failures).toEqual([]);
    for (const m of MUTATION_NAMES) {
      const row = counts.get(m)!;
      const want = MUTATIONS[m];
      if (want !== null)
        expect(row[want], `${m} never gave ${CHECK_NAMES[want]}`).toBeGreaterThan(0);
      for (const code of MUST_SEE[m] ?? []) {
        expect(row[code], `${m} never gave ${CHECK_NAMES[code]}`).toBeGreaterThan(0);
      }
    }
    // The flips must also have been caught by the checksums, not only by the parser.
    expect(verifyCounts[1]).toBeGreaterThan(0);
    expect(verifyCounts[2]).toBeGreaterThan(0);
    // First fragments both with and without their whole L4 header.
    expect(firstAccepted).toBeGreaterThan(0);
    expect(firstChecks - firstAccepted).toBeGreaterThan(0);
  });
});

/**
 * The L4 header length a first fragment (offset 0) must be accepted with by
 * checkFirstFragment, or -1: TCP with 20 bytes and its data offset's worth in the
 * fragment, UDP with 8; nothing else (an oracle from RFC 793/768, RFC 1858).
 */
function firstFragmentHeaderLen(b: Uint8Array, off: number): number {
  const { ihl, end, proto } = upperLayer(b, off);
  const avail = end - off - ihl;
  if (proto === PROTO_TCP) {
    if (avail < 20) return -1;
    const hl = (b[off + ihl + 12]! >> 4) * 4;
    return hl >= 20 && hl <= avail ? hl : -1;
  }
  if (proto === PROTO_UDP) return avail >= 8 ? 8 : -1;
  return -1;
}

/** Run checkFirstFragment on `info` (a first fragment checkPacket accepted) and compare it with the oracle. */
function firstFragmentProblem(b: Uint8Array, info: PacketInfo): string | null {
  const off = info.ipOff;
  const want = firstFragmentHeaderLen(b, off);
  const got = checkFirstFragment(b, info);
  if (got !== want >= 0) return `${got ? 'accepted' : 'refused'}, the oracle says ${want}`;
  if (!got) return info.l4Off === -1 ? null : 'refused, but l4Off set';
  const { ihl, end } = upperLayer(b, off);
  if (info.l4Off !== off + ihl) return 'l4Off';
  if (info.l4HeaderLen !== want) return 'l4HeaderLen';
  if (info.l4Len !== end - info.l4Off) return 'l4Len';
  if (info.srcPort !== get16(b, info.l4Off) || info.dstPort !== get16(b, info.l4Off + 2))
    return 'ports';
  if (info.payloadOff !== info.l4Off + want || info.payloadOff + info.payloadLen !== end)
    return 'payload';
  if (info.protocol === PROTO_TCP && info.tcpFlags !== b[info.l4Off + 13]) return 'tcpFlags';
  return null;
}

function firstDigestAfterCheck(b: Uint8Array, info: PacketInfo): number {
  checkFirstFragment(b, info);
  return firstDigest(info);
}

function firstDigest(info: PacketInfo): number {
  let h = mix(0x811c9dc5, info.l4Off);
  for (const v of [info.l4HeaderLen, info.l4Len, info.srcPort, info.dstPort, info.payloadLen])
    h = mix(h, v);
  return h;
}

describe('checkQuoted robustness', () => {
  const QUOTES = 200_000;
  it(`takes ${QUOTES.toLocaleString('en')} random, cut and mutated ICMP error bodies: exactly the well-formed quotes, read within the body`, () => {
    const rng = new Rng(0x0c0f_fee5);
    const pool: Uint8Array[] = [];
    for (let i = 0; i < 512; i++) {
      const kind = (['tcp4', 'udp4', 'udp4-nocsum', 'icmp4', 'other4'] as const)[i % 5]!;
      pool.push(buildSample(rng, kind).bytes);
    }
    const work = new Uint8Array(MARGIN + 8 + 1600 + MARGIN);
    const q = new QuotedPacket();
    const q2 = new QuotedPacket();
    const fence = new ReadFence(work);
    const failures: string[] = [];
    const fail = (msg: string) => {
      if (failures.length < 20) failures.push(msg);
    };
    let accepted = 0;
    const refusedFor = new Map<string, number>();
    for (let c = 0; c < QUOTES; c++) {
      const p = pool[rng.int(pool.length)]!;
      // As an error quotes it: the whole packet, its header and 8 bytes, or cut anywhere.
      const k = rng.int(4);
      const ihlOf = (p[0]! & 0x0f) * 4;
      let n = k === 0 ? p.length : k === 1 ? Math.min(p.length, ihlOf + 8) : rng.int(p.length + 1);
      n = Math.min(n, 548);
      const base = MARGIN + rng.int(8);
      for (let i = base - MARGIN; i < base; i++) work[i] = rng.u32();
      work.set(p.subarray(0, n), base);
      for (let i = base + n; i < base + n + MARGIN; i++) work[i] = rng.u32();
      if (n > 0 && rng.int(4) === 0) {
        // The quoted header damaged: version and IHL, the protocol, or any byte.
        const m = rng.int(3);
        if (m === 0) work[base] = rng.int(256);
        else if (m === 1 && n > 9)
          work[base + 9] = [PROTO_TCP, PROTO_UDP, 1, 0, rng.int(256)][rng.int(5)]!;
        else work[base + rng.int(n)] = rng.int(256);
      }
      const end = base + n;
      // The oracle: an IPv4 header (version 4, IHL >= 5) wholly quoted, then 4 bytes of TCP/UDP ports.
      const v = n > 0 ? work[base]! >> 4 : -1;
      const ihl = n > 0 ? (work[base]! & 0x0f) * 4 : 0;
      const why =
        n < 20
          ? 'short'
          : v !== 4
            ? 'version'
            : ihl < 20 || base + ihl + 4 > end
              ? 'ihl'
              : work[base + 9] !== PROTO_TCP && work[base + 9] !== PROTO_UDP
                ? 'protocol'
                : null;
      let got: boolean;
      try {
        got = checkQuoted(work, base, end, q);
      } catch (e) {
        fail(`case ${c}: threw ${String(e)}`);
        continue;
      }
      if (got !== (why === null)) {
        fail(`case ${c}: ${got ? 'accepted' : 'refused'} ${n} bytes, the oracle: ${why ?? 'ok'}`);
        continue;
      }
      if (!got) {
        refusedFor.set(why!, (refusedFor.get(why!) ?? 0) + 1);
        continue;
      }
      accepted++;
      const l4 = base + ihl;
      const at = (i: number) =>
        ((work[i]! << 24) | (work[i + 1]! << 16) | (work[i + 2]! << 8) | work[i + 3]!) >>> 0;
      if (
        q.ipOff !== base ||
        q.ipHeaderLen !== ihl ||
        q.protocol !== work[base + 9] ||
        q.srcAddr !== at(base + 12) ||
        q.dstAddr !== at(base + 16) ||
        q.l4Off !== l4 ||
        q.srcPort !== get16(work, l4) ||
        q.dstPort !== get16(work, l4 + 2) ||
        q.l4Quoted !== end - l4
      )
        fail(`case ${c}: fields of the quote wrong`);
      // Independence from the bytes around the body, and on a sample, reads fenced to it.
      for (let i = base - MARGIN; i < base; i++) work[i]! ^= 0xff;
      for (let i = end; i < end + MARGIN; i++) work[i]! ^= 0xff;
      const again = checkQuoted(work, base, end, q2);
      if (
        !again ||
        q2.srcPort !== q.srcPort ||
        q2.dstPort !== q.dstPort ||
        q2.srcAddr !== q.srcAddr ||
        q2.l4Quoted !== q.l4Quoted
      )
        fail(`case ${c}: result depends on bytes outside the body`);
      if ((c & 7) === 0) {
        fence.strays.length = 0;
        fence.lo = base;
        fence.hi = end;
        checkQuoted(fence.view, base, end, q2);
        if (fence.strays.length > 0)
          fail(`case ${c}: read byte(s) ${fence.strays.map((i) => i - base)} outside [0, ${n})`);
      }
    }
    console.log(
      `checkQuoted robustness: ${QUOTES} bodies, ${accepted} accepted, refused: ${JSON.stringify(Object.fromEntries(refusedFor))}`,
    );
    expect(failures).toEqual([]);
    expect(accepted).toBeGreaterThan(0);
    for (const why of ['short', 'version', 'ihl', 'protocol'])
      expect(refusedFor.get(why) ?? 0, `never refused for ${why}`).toBeGreaterThan(0);
  });
});

describe('checkQuoted6 robustness', () => {
  const QUOTES = 100_000;
  it(`takes ${QUOTES.toLocaleString('en')} random, cut and mutated ICMPv6 error bodies (extension header chains among them): whole quotes exactly, reads within the body`, () => {
    const rng = new Rng(0x6c0f_fee6);
    const pool: Sample[] = [];
    for (let i = 0; i < 512; i++)
      pool.push(buildSample(rng, (['tcp6', 'udp6', 'icmp6'] as const)[i % 3]!));
    const work = new Uint8Array(MARGIN + 8 + 1600 + MARGIN);
    const q = new QuotedPacket();
    const q2 = new QuotedPacket();
    const fence = new ReadFence(work);
    const failures: string[] = [];
    const fail = (msg: string) => {
      if (failures.length < 20) failures.push(msg);
    };
    let accepted = 0;
    let exact = 0;
    for (let c = 0; c < QUOTES; c++) {
      const sample = pool[rng.int(pool.length)]!;
      const p = sample.bytes;
      // As an error quotes it: whole (up to 1232 bytes, RFC 4443's 1280 minus the
      // headers), its headers and 8 bytes, or cut anywhere; sometimes damaged.
      const k = rng.int(4);
      let n =
        k === 0 ? p.length : k === 1 ? Math.min(p.length, sample.hdr + 8) : rng.int(p.length + 1);
      n = Math.min(n, 1232);
      const base = MARGIN + rng.int(8);
      for (let i = base - MARGIN; i < base; i++) work[i] = rng.u32();
      work.set(p.subarray(0, n), base);
      for (let i = base + n; i < base + n + MARGIN; i++) work[i] = rng.u32();
      const damaged = n > 0 && rng.int(4) === 0;
      if (damaged) work[base + rng.int(Math.min(n, sample.hdr + 4))] = rng.int(256);
      const end = base + n;
      let got: boolean;
      try {
        got = checkQuoted6(work, base, end, q);
      } catch (e) {
        fail(`case ${c}: threw ${String(e)}`);
        continue;
      }
      // The oracle where the quote is what was built: the headers and 4 bytes of ports there.
      if (!damaged && n >= sample.hdr + 4) {
        const want = sample.protocol === PROTO_TCP || sample.protocol === PROTO_UDP;
        if (got !== want)
          fail(`case ${c}: ${got ? 'accepted' : 'refused'} an intact ${sample.kind} quote`);
        else if (got && q.l4Off !== base + sample.hdr)
          fail(`case ${c}: l4Off ${q.l4Off - base}, built ${sample.hdr}`);
        exact++;
      } else if (!damaged && n < sample.hdr + 4 && got) {
        fail(`case ${c}: accepted a quote cut before its ports (${n} of ${sample.hdr + 4} bytes)`);
      }
      if (!got) continue;
      accepted++;
      if (
        q.version !== 6 ||
        (q.protocol !== PROTO_TCP && q.protocol !== PROTO_UDP) ||
        q.l4Off < base + 40 ||
        (q.l4Off - base) % 8 !== 0 ||
        q.l4Off + 4 > end ||
        q.srcOff !== base + 8 ||
        q.dstOff !== base + 24 ||
        q.srcPort !== get16(work, q.l4Off) ||
        q.dstPort !== get16(work, q.l4Off + 2) ||
        q.l4Quoted !== end - q.l4Off
      )
        fail(`case ${c}: fields of the quote wrong`);
      for (let i = base - MARGIN; i < base; i++) work[i]! ^= 0xff;
      for (let i = end; i < end + MARGIN; i++) work[i]! ^= 0xff;
      if (!checkQuoted6(work, base, end, q2) || q2.l4Off !== q.l4Off || q2.srcPort !== q.srcPort)
        fail(`case ${c}: result depends on bytes outside the body`);
      if ((c & 7) === 0) {
        fence.strays.length = 0;
        fence.lo = base;
        fence.hi = end;
        checkQuoted6(fence.view, base, end, q2);
        if (fence.strays.length > 0)
          fail(`case ${c}: read byte(s) ${fence.strays.map((i) => i - base)} outside [0, ${n})`);
      }
    }
    console.log(
      `checkQuoted6 robustness: ${QUOTES} bodies, ${accepted} accepted, ${exact} against the oracle`,
    );
    expect(failures).toEqual([]);
    expect(accepted).toBeGreaterThan(0);
    expect(exact).toBeGreaterThan(QUOTES / 10);
  });
});

/**
 * Where the upper-layer header of the (first fragment) packet at `off` starts,
 * by a walk written for this oracle: IPv4 by its IHL; IPv6 along the next
 * headers 0, 43, 60 (length byte) and 44 (8 bytes), as RFC 8200 §4 lays them out.
 */
function upperLayer(b: Uint8Array, off: number): { ihl: number; end: number; proto: number } {
  if (b[off]! >> 4 === 4) {
    return { ihl: (b[off]! & 0x0f) * 4, end: off + get16(b, off + 2), proto: b[off + 9]! };
  }
  let nh = b[off + 6]!;
  let at = 40;
  for (;;) {
    if (nh === 44) {
      nh = b[off + at]!;
      at += 8;
    } else if (nh === 0 || nh === 43 || nh === 60) {
      const len = 8 * (b[off + at + 1]! + 1);
      nh = b[off + at]!;
      at += len;
    } else break;
  }
  return { ihl: at, end: off + 40 + get16(b, off + 4), proto: nh };
}
