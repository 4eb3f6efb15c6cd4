/**
 * An independent packet builder for tests.
 *
 * It imports nothing from src/: every header is written byte by byte from the RFC
 * field diagrams, and every checksum comes from the tiny RFC 1071 sum below (a list
 * of 16-bit words added with end-around carry). So a test that builds a packet here
 * and reads, checks or rewrites it with src/wire and src/checksum compares the code
 * under test with a second, separately written statement of the same RFCs, not with
 * itself. Slow and allocating on purpose: clarity over speed.
 */

import type { Rng } from './rng.js';

// ---------------------------------------------------------------- hex and addresses

/** Hex (whitespace ignored) to bytes. */
export function unhex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  if (!/^([0-9a-f]{2})*$/i.test(clean)) throw new Error(`bad hex: ${s}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(2 * i, 2), 16);
  return out;
}

export function hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** '10.1.2.3' -> 0x0a010203 (a test helper: no validation beyond the shape). */
export function ip4(s: string): number {
  const p = s.split('.').map(Number);
  if (p.length !== 4) throw new Error(`bad IPv4 literal ${s}`);
  return ((p[0]! * 256 + p[1]!) * 256 + p[2]!) * 256 + p[3]!;
}

/** Full-form or '::'-compressed IPv6 literal (hex groups only) -> 16 bytes. */
export function ip6(s: string): Uint8Array {
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) throw new Error(`bad IPv6 literal ${s}`);
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const w = parseInt(g, 16);
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

// ---------------------------------------------------------------- RFC 1071, plainly

/** Big-endian 16-bit words of `b` (an odd last byte padded with a zero byte). */
function words(b: Uint8Array): number[] {
  const w: number[] = [];
  for (let i = 0; i < b.length; i += 2) w.push(b[i]! * 256 + (i + 1 < b.length ? b[i + 1]! : 0));
  return w;
}

/** One's complement sum of 16-bit words, end-around carry after every add. */
export function onesSum(ws: number[], initial = 0): number {
  let s = initial;
  for (const w of ws) {
    s += w;
    if (s > 0xffff) s -= 0xffff;
  }
  return s;
}

/** Folded, uncomplemented sum of the bytes. */
export function inetSum(b: Uint8Array, initial = 0): number {
  return onesSum(words(b), initial);
}

/** The value of a checksum field over the bytes (with the field itself zero). */
export function inetChecksum(b: Uint8Array, initial = 0): number {
  return 0xffff - inetSum(b, initial);
}

function put16(b: Uint8Array, i: number, v: number): void {
  b[i] = (v >> 8) & 0xff;
  b[i + 1] = v & 0xff;
}

function put32(b: Uint8Array, i: number, v: number): void {
  put16(b, i, Math.floor(v / 0x10000) & 0xffff);
  put16(b, i + 2, v & 0xffff);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ---------------------------------------------------------------- pseudo-headers

/** What the TCP/UDP/ICMPv6 checksum's pseudo-header needs from the IP layer. */
export type Pseudo =
  | { v: 4; src: number; dst: number }
  | { v: 6; src: Uint8Array; dst: Uint8Array };

/** RFC 9293 §3.1 / RFC 768 (IPv4, 12 bytes) and RFC 8200 §8.1 (IPv6, 40 bytes), as bytes. */
export function pseudoHeaderBytes(p: Pseudo, protocol: number, l4Len: number): Uint8Array {
  if (p.v === 4) {
    const b = new Uint8Array(12);
    put32(b, 0, p.src);
    put32(b, 4, p.dst);
    b[9] = protocol;
    put16(b, 10, l4Len);
    return b;
  }
  const b = new Uint8Array(40);
  b.set(p.src, 0);
  b.set(p.dst, 16);
  put32(b, 32, l4Len);
  b[39] = protocol;
  return b;
}

export function pseudoSum(p: Pseudo, protocol: number, l4Len: number): number {
  return inetSum(pseudoHeaderBytes(p, protocol, l4Len));
}

// ---------------------------------------------------------------- IPv4 (RFC 791)

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_ICMPV6 = 58;

export interface Ipv4Spec {
  src: number;
  dst: number;
  protocol: number;
  /** Default 64. */
  ttl?: number;
  /** Default 0. */
  ident?: number;
  /** The whole DSCP/ECN byte; default 0. */
  tos?: number;
  /** Default true. */
  df?: boolean;
  /** Default false. */
  mf?: boolean;
  /** In bytes, a multiple of 8; default 0. */
  fragOffset?: number;
  /** Raw option bytes, a multiple of 4 long; default none. */
  options?: Uint8Array;
}

/** IPv4 header (options included) for a payload of `payloadLen` bytes, checksum filled. */
export function ipv4Header(s: Ipv4Spec, payloadLen: number): Uint8Array {
  const opts = s.options ?? new Uint8Array(0);
  if (opts.length % 4 !== 0 || opts.length > 40) throw new Error('IPv4 options: 4n bytes, <= 40');
  const hl = 20 + opts.length;
  const h = new Uint8Array(hl);
  h[0] = 0x40 | (hl / 4);
  h[1] = s.tos ?? 0;
  put16(h, 2, hl + payloadLen);
  put16(h, 4, s.ident ?? 0);
  put16(h, 6, ((s.df ?? true) ? 0x4000 : 0) | (s.mf ? 0x2000 : 0) | ((s.fragOffset ?? 0) / 8));
  h[8] = s.ttl ?? 64;
  h[9] = s.protocol;
  // bytes 10-11: checksum, zero while summing
  put32(h, 12, s.src);
  put32(h, 16, s.dst);
  h.set(opts, 20);
  put16(h, 10, inetChecksum(h));
  return h;
}

export function ipv4(s: Ipv4Spec, payload: Uint8Array): Uint8Array {
  return concat(ipv4Header(s, payload.length), payload);
}

// ---------------------------------------------------------------- IPv6 (RFC 8200)

export interface Ipv6Spec {
  src: Uint8Array;
  dst: Uint8Array;
  nextHeader: number;
  /** Default 64. */
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
}

export function ipv6(s: Ipv6Spec, payload: Uint8Array): Uint8Array {
  const h = new Uint8Array(40);
  const tc = s.trafficClass ?? 0;
  const fl = s.flowLabel ?? 0;
  h[0] = 0x60 | (tc >> 4);
  h[1] = ((tc & 0x0f) << 4) | ((fl >> 16) & 0x0f);
  put16(h, 2, fl & 0xffff);
  put16(h, 4, payload.length);
  h[6] = s.nextHeader;
  h[7] = s.hopLimit ?? 64;
  h.set(s.src, 8);
  h.set(s.dst, 24);
  return concat(h, payload);
}

/** The 16 bytes of an IPv6 address as 4 big-endian words (the data plane's form). */
export function words6(a: Uint8Array): Uint32Array {
  const w = new Uint32Array(4);
  for (let i = 0; i < 4; i++)
    w[i] = ((a[4 * i]! << 24) | (a[4 * i + 1]! << 16) | (a[4 * i + 2]! << 8) | a[4 * i + 3]!) >>> 0;
  return w;
}

// ---------------------------------------------------------------- IPv6 extension headers (RFC 8200 §4)

export const NH_HOP_BY_HOP = 0;
export const NH_ROUTING = 43;
export const NH_FRAGMENT = 44;
export const NH_NO_NEXT = 59;
export const NH_DEST_OPTS = 60;

/**
 * One extension header: hop-by-hop, routing or destination options of
 * 8 * (units + 1) bytes (options: one PadN; routing: type 253, experimental,
 * with `segmentsLeft`), or a fragment header.
 */
export type Ext6 =
  | { type: 0 | 43 | 60; units?: number; segmentsLeft?: number }
  | { type: 44; offset: number; more: boolean; id: number };

/** The extension headers `exts` as bytes, each one's next header naming the following one, the last `upper`. */
export function ext6Chain(exts: Ext6[], upper: number): { first: number; bytes: Uint8Array } {
  const parts: Uint8Array[] = [];
  exts.forEach((e, i) => {
    const next = i + 1 < exts.length ? exts[i + 1]!.type : upper;
    if (e.type === NH_FRAGMENT) {
      const b = new Uint8Array(8);
      b[0] = next;
      put16(b, 2, (e.offset & 0xfff8) | (e.more ? 1 : 0));
      put32(b, 4, e.id);
      parts.push(b);
      return;
    }
    const units = e.units ?? 0;
    const b = new Uint8Array(8 * (units + 1));
    b[0] = next;
    b[1] = units;
    if (e.type === NH_ROUTING) {
      b[2] = 253;
      b[3] = e.segmentsLeft ?? 0;
    } else {
      b[2] = 1; // PadN over the rest of the header
      b[3] = b.length - 4;
    }
    parts.push(b);
  });
  return { first: exts.length > 0 ? exts[0]!.type : upper, bytes: concat(...parts) };
}

/** An IPv6 packet: fixed header, the extension headers `exts`, then the upper-layer bytes of protocol `upper`. */
export function ipv6x(
  ip: Omit<Ipv6Spec, 'nextHeader'>,
  exts: Ext6[],
  upper: number,
  l4: Uint8Array,
): Uint8Array {
  const c = ext6Chain(exts, upper);
  return ipv6({ ...ip, nextHeader: c.first }, concat(c.bytes, l4));
}

// ---------------------------------------------------------------- TCP (RFC 9293)

export interface TcpSpec {
  srcPort: number;
  dstPort: number;
  seq?: number;
  ack?: number;
  /** CWR..FIN bits; default 0x10 (ACK). */
  flags?: number;
  /** Default 65535. */
  window?: number;
  urgent?: number;
  /** Raw option bytes, a multiple of 4 long, <= 40. */
  options?: Uint8Array;
  payload?: Uint8Array;
}

/** A TCP segment; with `pseudo` null its checksum field is left 0. */
export function tcp(s: TcpSpec, pseudo: Pseudo | null): Uint8Array {
  const opts = s.options ?? new Uint8Array(0);
  if (opts.length % 4 !== 0 || opts.length > 40) throw new Error('TCP options: 4n bytes, <= 40');
  const payload = s.payload ?? new Uint8Array(0);
  const hl = 20 + opts.length;
  const b = new Uint8Array(hl + payload.length);
  put16(b, 0, s.srcPort);
  put16(b, 2, s.dstPort);
  put32(b, 4, s.seq ?? 0);
  put32(b, 8, s.ack ?? 0);
  b[12] = (hl / 4) << 4;
  b[13] = s.flags ?? 0x10;
  put16(b, 14, s.window ?? 65535);
  put16(b, 18, s.urgent ?? 0);
  b.set(opts, 20);
  b.set(payload, hl);
  if (pseudo) put16(b, 16, inetChecksum(b, pseudoSum(pseudo, PROTO_TCP, b.length)));
  return b;
}

// ---------------------------------------------------------------- UDP (RFC 768)

export interface UdpSpec {
  srcPort: number;
  dstPort: number;
  payload?: Uint8Array;
}

/**
 * A UDP datagram. With `pseudo` null the checksum is 0 ("none", IPv4 only);
 * a computed 0 is sent as 0xffff (RFC 768).
 */
export function udp(s: UdpSpec, pseudo: Pseudo | null): Uint8Array {
  const payload = s.payload ?? new Uint8Array(0);
  const b = new Uint8Array(8 + payload.length);
  put16(b, 0, s.srcPort);
  put16(b, 2, s.dstPort);
  put16(b, 4, b.length);
  b.set(payload, 8);
  if (pseudo) {
    const c = inetChecksum(b, pseudoSum(pseudo, PROTO_UDP, b.length));
    put16(b, 6, c === 0 ? 0xffff : c);
  }
  return b;
}

// ---------------------------------------------------------------- ICMP (RFC 792) and ICMPv6 (RFC 4443)

export interface IcmpSpec {
  type: number;
  code?: number;
  /** The 4 "rest of header" bytes as a u32 (echo: ident << 16 | seq). */
  rest?: number;
  data?: Uint8Array;
}

/** ICMP (IPv4: no pseudo-header) or, with an IPv6 `pseudo`, ICMPv6. */
export function icmp(s: IcmpSpec, pseudo: Pseudo | null = null): Uint8Array {
  const data = s.data ?? new Uint8Array(0);
  const b = new Uint8Array(8 + data.length);
  b[0] = s.type;
  b[1] = s.code ?? 0;
  put32(b, 4, s.rest ?? 0);
  b.set(data, 8);
  const initial = pseudo ? pseudoSum(pseudo, PROTO_ICMPV6, b.length) : 0;
  put16(b, 2, inetChecksum(b, initial));
  return b;
}

// ---------------------------------------------------------------- whole packets

type Ip4 = Omit<Ipv4Spec, 'protocol'>;
type Ip6 = Omit<Ipv6Spec, 'nextHeader'>;

export function tcp4(ip: Ip4, t: TcpSpec): Uint8Array {
  return ipv4({ ...ip, protocol: PROTO_TCP }, tcp(t, { v: 4, src: ip.src, dst: ip.dst }));
}

/** `checksum: false` sends the datagram without a checksum (field 0). */
export function udp4(ip: Ip4, u: UdpSpec, checksum = true): Uint8Array {
  const pseudo: Pseudo | null = checksum ? { v: 4, src: ip.src, dst: ip.dst } : null;
  return ipv4({ ...ip, protocol: PROTO_UDP }, udp(u, pseudo));
}

export function icmp4(ip: Ip4, m: IcmpSpec): Uint8Array {
  return ipv4({ ...ip, protocol: PROTO_ICMP }, icmp(m));
}

export function tcp6(ip: Ip6, t: TcpSpec): Uint8Array {
  return ipv6({ ...ip, nextHeader: PROTO_TCP }, tcp(t, { v: 6, src: ip.src, dst: ip.dst }));
}

/** `checksum: false` leaves the field 0 (invalid over IPv6: for tests of its refusal). */
export function udp6(ip: Ip6, u: UdpSpec, checksum = true): Uint8Array {
  const pseudo: Pseudo | null = checksum ? { v: 6, src: ip.src, dst: ip.dst } : null;
  return ipv6({ ...ip, nextHeader: PROTO_UDP }, udp(u, pseudo));
}

/** TCP/IPv6 behind the extension headers `exts`. */
export function tcp6x(ip: Ip6, exts: Ext6[], t: TcpSpec): Uint8Array {
  return ipv6x(ip, exts, PROTO_TCP, tcp(t, { v: 6, src: ip.src, dst: ip.dst }));
}

/** UDP/IPv6 behind the extension headers `exts`. */
export function udp6x(ip: Ip6, exts: Ext6[], u: UdpSpec): Uint8Array {
  return ipv6x(ip, exts, PROTO_UDP, udp(u, { v: 6, src: ip.src, dst: ip.dst }));
}

/**
 * The fragments of a UDP/IPv6 datagram (RFC 8200 §4.5): the datagram, checksum
 * over the whole of it, cut into pieces of `chunk` bytes (a multiple of 8),
 * each behind a fragment header with identification `id`.
 */
export function udp6Fragments(ip: Ip6, u: UdpSpec, chunk: number, id: number): Uint8Array[] {
  const l4 = udp(u, { v: 6, src: ip.src, dst: ip.dst });
  const out: Uint8Array[] = [];
  for (let at = 0; at < l4.length; at += chunk) {
    const more = at + chunk < l4.length;
    out.push(
      ipv6x(
        ip,
        [{ type: NH_FRAGMENT, offset: at, more, id }],
        PROTO_UDP,
        l4.subarray(at, at + chunk),
      ),
    );
  }
  return out;
}

export function icmp6(ip: Ip6, m: IcmpSpec): Uint8Array {
  return ipv6({ ...ip, nextHeader: PROTO_ICMPV6 }, icmp(m, { v: 6, src: ip.src, dst: ip.dst }));
}

// ---------------------------------------------------------------- checksum checks

/** True when the IPv4 header at `ipOff` sums to 0xffff (RFC 1071 §1). */
export function ipv4HeaderOk(b: Uint8Array, ipOff = 0): boolean {
  const hl = (b[ipOff]! & 0x0f) * 4;
  return inetSum(b.subarray(ipOff, ipOff + hl)) === 0xffff;
}

/** Recompute the TCP or UDP checksum of an IPv4 packet at `ipOff` (UDP 0 stays 0). */
export function expectedL4Checksum4(b: Uint8Array, ipOff = 0): number {
  const hl = (b[ipOff]! & 0x0f) * 4;
  const total = b[ipOff + 2]! * 256 + b[ipOff + 3]!;
  const proto = b[ipOff + 9]!;
  const l4 = b.slice(ipOff + hl, ipOff + total);
  const get32 = (i: number) =>
    ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
  const pseudo: Pseudo = { v: 4, src: get32(ipOff + 12), dst: get32(ipOff + 16) };
  const at = proto === PROTO_TCP ? 16 : 6;
  const len = proto === PROTO_TCP ? l4.length : l4[4]! * 256 + l4[5]!;
  const stored = l4[at]! * 256 + l4[at + 1]!;
  if (proto === PROTO_UDP && stored === 0) return 0;
  l4[at] = 0;
  l4[at + 1] = 0;
  const c = inetChecksum(l4.subarray(0, len), pseudoSum(pseudo, proto, len));
  return proto === PROTO_UDP && c === 0 ? 0xffff : c;
}

// ---------------------------------------------------------------- random packets

export function randomBytes(rng: Rng, n: number): Uint8Array {
  const b = new Uint8Array(n);
  rng.fill(b);
  return b;
}

/** A random IPv4 header spec (never a fragment) with options of 0-40 bytes about a quarter of the time. */
export function randomIp4(rng: Rng): Ip4 {
  return {
    src: rng.u32(),
    dst: rng.u32(),
    ttl: rng.int(256),
    ident: rng.int(0x10000),
    tos: rng.int(256),
    df: rng.int(2) === 0,
    options: rng.int(4) === 0 ? randomBytes(rng, 4 * rng.int(11)) : undefined,
  };
}

/**
 * A random chain of 0-`max` extension headers, in an order RFC 8200 allows
 * (hop-by-hop first if at all, no fragment header: see the fragment builders),
 * each of 8-32 bytes.
 */
export function randomExt6(rng: Rng, max = 4): Ext6[] {
  const n = rng.int(max + 1);
  const out: Ext6[] = [];
  for (let i = 0; i < n; i++) {
    const kinds: (0 | 43 | 60)[] = i === 0 ? [0, 43, 60] : [43, 60];
    out.push({ type: kinds[rng.int(kinds.length)]!, units: rng.int(4) });
  }
  return out;
}

export function randomIp6(rng: Rng): Ip6 {
  return {
    src: randomBytes(rng, 16),
    dst: randomBytes(rng, 16),
    hopLimit: rng.int(256),
    trafficClass: rng.int(256),
    flowLabel: rng.int(0x100000),
  };
}

export function randomTcp(rng: Rng, payloadLen: number): TcpSpec {
  return {
    srcPort: rng.int(0x10000),
    dstPort: rng.int(0x10000),
    seq: rng.u32(),
    ack: rng.u32(),
    flags: rng.int(256),
    window: rng.int(0x10000),
    urgent: rng.int(0x10000),
    options: randomBytes(rng, 4 * rng.int(11)),
    payload: randomBytes(rng, payloadLen),
  };
}

export function randomUdp(rng: Rng, payloadLen: number): UdpSpec {
  return {
    srcPort: rng.int(0x10000),
    dstPort: rng.int(0x10000),
    payload: randomBytes(rng, payloadLen),
  };
}

// ---------------------------------------------------------------- virtio-net header and super-packets

/** struct virtio_net_hdr as bytes (little-endian 16-bit fields), for packets on a TUN with IFF_VNET_HDR. */
export interface VnetSpec {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

export function vnetHdr(s: VnetSpec = {}): Uint8Array {
  const b = new Uint8Array(10);
  const le = (i: number, v: number) => {
    b[i] = v & 0xff;
    b[i + 1] = (v >> 8) & 0xff;
  };
  b[0] = s.flags ?? 0;
  b[1] = s.gsoType ?? 0;
  le(2, s.hdrLen ?? 0);
  le(4, s.gsoSize ?? 0);
  le(6, s.csumStart ?? 0);
  le(8, s.csumOffset ?? 0);
  return b;
}

/**
 * A TCP/IPv4 packet as the kernel hands it over with a partial checksum
 * (CHECKSUM_PARTIAL): the checksum field holds the folded, uncomplemented
 * pseudo-header sum over the whole L4 length.
 */
export function tcp4Partial(ip: Omit<Ipv4Spec, 'protocol'>, t: TcpSpec): Uint8Array {
  const seg = tcp(t, null);
  put16(seg, 16, pseudoSum({ v: 4, src: ip.src, dst: ip.dst }, PROTO_TCP, seg.length));
  return ipv4({ ...ip, protocol: PROTO_TCP }, seg);
}

/** tcp4Partial over IPv6: the field holds the 40-byte pseudo-header's folded sum. */
export function tcp6Partial(ip: Omit<Ipv6Spec, 'nextHeader'>, t: TcpSpec): Uint8Array {
  const seg = tcp(t, null);
  put16(seg, 16, pseudoSum({ v: 6, src: ip.src, dst: ip.dst }, PROTO_TCP, seg.length));
  return ipv6({ ...ip, nextHeader: PROTO_TCP }, seg);
}

/** The segments of a TCP/IPv6 super-packet (no identification over IPv6; payload length per segment). */
export function tcp6Segments(
  ip: Omit<Ipv6Spec, 'nextHeader'>,
  t: TcpSpec,
  gsoSize: number,
): Uint8Array[] {
  const payload = t.payload ?? new Uint8Array(0);
  const n = Math.max(1, Math.ceil(payload.length / gsoSize));
  const out: Uint8Array[] = [];
  for (let k = 0; k < n; k++) {
    let flags = t.flags ?? 0x10;
    if (k < n - 1) flags &= ~(0x01 | 0x08);
    if (k > 0) flags &= ~0x80;
    out.push(
      tcp6(ip, {
        ...t,
        seq: ((t.seq ?? 0) + k * gsoSize) >>> 0,
        flags,
        payload: payload.subarray(k * gsoSize, Math.min(payload.length, (k + 1) * gsoSize)),
      }),
    );
  }
  return out;
}

/**
 * The segments the kernel makes of a TCP/IPv4 super-packet (tcp_gso_segment):
 * built here from the specs, independently of src/wire/segment.ts.
 */
export function tcp4Segments(
  ip: Omit<Ipv4Spec, 'protocol'>,
  t: TcpSpec,
  gsoSize: number,
): Uint8Array[] {
  const payload = t.payload ?? new Uint8Array(0);
  const n = Math.max(1, Math.ceil(payload.length / gsoSize));
  const out: Uint8Array[] = [];
  for (let k = 0; k < n; k++) {
    let flags = t.flags ?? 0x10;
    if (k < n - 1) flags &= ~(0x01 | 0x08); // FIN, PSH only on the last
    if (k > 0) flags &= ~0x80; // CWR only on the first
    out.push(
      tcp4(
        { ...ip, ident: ((ip.ident ?? 0) + k) & 0xffff },
        {
          ...t,
          seq: ((t.seq ?? 0) + k * gsoSize) >>> 0,
          flags,
          payload: payload.subarray(k * gsoSize, Math.min(payload.length, (k + 1) * gsoSize)),
        },
      ),
    );
  }
  return out;
}
