/**
 * The one checked entry point for untrusted packets.
 *
 * Everything that arrives from a device or a file goes through `checkPacket` before
 * any view touches it. It guarantees, for an accepted packet, that every offset and
 * length it reports lies inside `[off, off + len)` of the buffer:
 *   - IPv4: version 4, IHL >= 5, IHL*4 <= total length <= bytes available;
 *   - IPv6: the 40-byte fixed header and its payload length fit; the extension
 *     headers (hop-by-hop — first only —, routing — with no segments left —,
 *     destination options, one fragment header) each lie within the payload,
 *     at most IPV6_MAX_EXT_HEADERS of them, up to the upper-layer header;
 *   - TCP: the 20-byte header fits, 5 <= data offset and data offset*4 <= segment;
 *   - UDP: the 8-byte header fits, 8 <= length field <= IP payload;
 *   - ICMP / ICMPv6: the 8-byte header fits.
 * Fragments are reported, not reassembled: for any IPv4 fragment (MF set or a
 * non-zero offset) and any IPv6 packet with a fragment header that is not an
 * atomic fragment (RFC 6946: offset 0 and no M, a whole datagram, parsed as one)
 * the L4 fields are not parsed (`l4Off` is -1), since only the first fragment
 * carries the L4 header and it may be cut anywhere. The walk goes on after the
 * fragment header of a first fragment (RFC 7112: it holds the whole header
 * chain), so its `protocol` and `ipHeaderLen` are those of the upper layer; a
 * later fragment's `protocol` is its fragment header's next header.
 * `ipHeaderLen` counts the IPv6 extension headers: the upper-layer header is
 * at ipOff + ipHeaderLen, as the IPv4 one is after the options.
 *
 * It never throws and never allocates: the result goes into a caller-owned
 * `PacketInfo`, and the return value is a `Check` code (0 = accepted). Bytes after
 * the IP total length (link padding) are ignored. Checksums are not verified here:
 * that costs a full sum and is the caller's choice (verify.ts).
 */

import { enumNames } from '../base/enum.js';
import { get16, get32 } from './bytes.js';
import {
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_HEADER_LEN,
  IPV4_OFF_DST,
  IPV4_OFF_FLAGS_FRAG,
  IPV4_OFF_IDENT,
  IPV4_OFF_PROTOCOL,
  IPV4_OFF_SRC,
  IPV4_OFF_TOTAL_LEN,
} from './ipv4.js';
import {
  IPV6_EXT_MIN_LEN,
  IPV6_EXT_OFF_LEN,
  IPV6_FRAG_HEADER_LEN,
  IPV6_FRAG_MORE,
  IPV6_FRAG_OFF_IDENT,
  IPV6_FRAG_OFF_OFFSET_FLAGS,
  IPV6_FRAG_OFFSET_MASK,
  IPV6_HEADER_LEN,
  IPV6_MAX_EXT_HEADERS,
  IPV6_NH_DEST_OPTS,
  IPV6_NH_FRAGMENT,
  IPV6_NH_HOP_BY_HOP,
  IPV6_NH_ROUTING,
  IPV6_OFF_DST,
  IPV6_OFF_NEXT_HEADER,
  IPV6_OFF_PAYLOAD_LEN,
  IPV6_OFF_SRC,
  IPV6_RH_OFF_SEGMENTS_LEFT,
} from './ipv6.js';
import {
  TCP_HEADER_LEN,
  TCP_OFF_DATA_OFFSET,
  TCP_OFF_DST_PORT,
  TCP_OFF_FLAGS,
  TCP_OFF_SRC_PORT,
} from './tcp.js';
import { UDP_HEADER_LEN, UDP_OFF_LENGTH } from './udp.js';

/** Results of `checkPacket`; anything but OK is a reason to drop the packet. */
export const Check = {
  OK: 0,
  /** Empty, or shorter than the fixed IP header. */
  TRUNCATED: 1,
  /** IP version neither 4 nor 6. */
  BAD_VERSION: 2,
  /** IPv4 IHL below 5, or a header longer than the packet. */
  BAD_IHL: 3,
  /** IP total/payload length beyond the bytes received, or below the header length. */
  BAD_TOTAL_LEN: 4,
  /** The L4 header does not fit in the IP payload. */
  L4_TRUNCATED: 5,
  /** TCP data offset below 5 or beyond the segment. */
  BAD_DATA_OFFSET: 6,
  /** UDP length field below 8 or beyond the IP payload. */
  BAD_UDP_LEN: 7,
  /**
   * An IPv6 extension header that does not fit the payload, a hop-by-hop header
   * that is not the first, a second fragment header, a routing header with
   * segments left (vpm is no hop of a source route), or a first fragment whose
   * header chain is cut.
   */
  IPV6_BAD_EXT_HEADER: 8,
  /** More than IPV6_MAX_EXT_HEADERS IPv6 extension headers. */
  IPV6_EXT_HEADERS_TOO_LONG: 9,
} as const;
export type CheckCode = (typeof Check)[keyof typeof Check];

/** Names of the Check codes, indexed by code. */
export const CHECK_NAMES: readonly string[] = enumNames(Check);

/** Filled in place by `checkPacket`; allocate one and reuse it for every packet. */
export class PacketInfo {
  /** 4 or 6. */
  version = 0;
  ipOff = 0;
  ipHeaderLen = 0;
  /** IPv4 total length, or 40 + IPv6 payload length. */
  ipTotalLen = 0;
  /** IPv4 protocol or IPv6 next header. */
  protocol = 0;
  /** IPv4 source and destination as u32 (0 for IPv6: use srcOff/dstOff). */
  srcAddr = 0;
  dstAddr = 0;
  /** Offsets of the source and destination addresses in the buffer (4 or 16 bytes). */
  srcOff = 0;
  dstOff = 0;
  /** Any fragment (IPv4: MF set or offset non-zero; IPv6: a fragment header, not atomic). */
  isFragment = false;
  moreFragments = false;
  /** Fragment offset in bytes. */
  fragOffset = 0;
  /** Of a fragment: the identification (IPv4: 16 bits, IPv6: 32 bits). */
  fragId = 0;
  /** IPv6: offset of the next-header byte that names `protocol` (fixed header or last extension header); -1 for IPv4. */
  nextHeaderOff = -1;
  /** Offset of the L4 header in the buffer, -1 when not parsed (fragment, other protocol). */
  l4Off = -1;
  /** L4 header plus payload (UDP: the length field). */
  l4Len = 0;
  l4HeaderLen = 0;
  srcPort = 0;
  dstPort = 0;
  /** TCP flag bits CWR..FIN, 0 for other protocols. */
  tcpFlags = 0;
  payloadOff = 0;
  payloadLen = 0;

  reset(): void {
    this.version = 0;
    this.ipOff = 0;
    this.ipHeaderLen = 0;
    this.ipTotalLen = 0;
    this.protocol = 0;
    this.srcAddr = 0;
    this.dstAddr = 0;
    this.srcOff = 0;
    this.dstOff = 0;
    this.isFragment = false;
    this.moreFragments = false;
    this.fragOffset = 0;
    this.fragId = 0;
    this.nextHeaderOff = -1;
    this.l4Off = -1;
    this.l4Len = 0;
    this.l4HeaderLen = 0;
    this.srcPort = 0;
    this.dstPort = 0;
    this.tcpFlags = 0;
    this.payloadOff = 0;
    this.payloadLen = 0;
  }
}

/**
 * Validate the packet of `len` bytes at `buf[off]` and describe it in `out`.
 * Returns Check.OK or the reason it was refused; `out` is only meaningful on OK.
 */
export function checkPacket(buf: Uint8Array, off: number, len: number, out: PacketInfo): CheckCode {
  out.reset();
  // Written so that NaN fails it: a NaN length would pass every later `x > len`.
  if (!(off >= 0 && len > 0 && off + len <= buf.length)) return Check.TRUNCATED;
  const version = buf[off]! >>> 4;
  out.version = version;
  out.ipOff = off;
  if (version === 4) return checkIpv4(buf, off, len, out);
  if (version === 6) return checkIpv6(buf, off, len, out);
  return Check.BAD_VERSION;
}

function checkIpv4(buf: Uint8Array, off: number, len: number, out: PacketInfo): CheckCode {
  if (len < IPV4_HEADER_LEN) return Check.TRUNCATED;
  const ihl = (buf[off]! & 0x0f) << 2;
  if (ihl < IPV4_HEADER_LEN || ihl > len) return Check.BAD_IHL;
  const total = get16(buf, off + IPV4_OFF_TOTAL_LEN);
  if (total > len || total < ihl) return Check.BAD_TOTAL_LEN;
  const frag = get16(buf, off + IPV4_OFF_FLAGS_FRAG);
  out.ipHeaderLen = ihl;
  out.ipTotalLen = total;
  out.protocol = buf[off + IPV4_OFF_PROTOCOL]!;
  out.srcAddr = get32(buf, off + IPV4_OFF_SRC);
  out.dstAddr = get32(buf, off + IPV4_OFF_DST);
  out.srcOff = off + IPV4_OFF_SRC;
  out.dstOff = off + IPV4_OFF_DST;
  out.moreFragments = (frag & 0x2000) !== 0;
  out.fragOffset = (frag & 0x1fff) << 3;
  out.isFragment = (frag & 0x3fff) !== 0;
  if (out.isFragment) {
    out.fragId = get16(buf, off + IPV4_OFF_IDENT);
    return Check.OK;
  }
  return checkL4(buf, off + ihl, total - ihl, out);
}

function checkIpv6(buf: Uint8Array, off: number, len: number, out: PacketInfo): CheckCode {
  if (len < IPV6_HEADER_LEN) return Check.TRUNCATED;
  const payload = get16(buf, off + IPV6_OFF_PAYLOAD_LEN);
  if (IPV6_HEADER_LEN + payload > len) return Check.BAD_TOTAL_LEN;
  const end = off + IPV6_HEADER_LEN + payload;
  out.ipTotalLen = IPV6_HEADER_LEN + payload;
  out.srcOff = off + IPV6_OFF_SRC;
  out.dstOff = off + IPV6_OFF_DST;
  const p = walkIpv6(buf, off, end, out);
  if (p < 0) return -p as CheckCode;
  out.ipHeaderLen = p - off;
  if (out.isFragment) return Check.OK;
  return checkL4(buf, p, end - p, out);
}

/**
 * Walk the extension headers of the IPv6 packet at `off` (ending at `end`), at
 * most IPV6_MAX_EXT_HEADERS of them: sets protocol, nextHeaderOff and the
 * fragment fields of `out`; returns the offset of the upper-layer header (or,
 * for a later fragment, of what follows its fragment header), or -(Check code).
 */
function walkIpv6(buf: Uint8Array, off: number, end: number, out: PacketInfo): number {
  let nhOff = off + IPV6_OFF_NEXT_HEADER;
  let nh = buf[nhOff]!;
  let p = off + IPV6_HEADER_LEN;
  let n = 0;
  let sawFragment = false;
  for (;;) {
    if (nh === IPV6_NH_HOP_BY_HOP || nh === IPV6_NH_ROUTING || nh === IPV6_NH_DEST_OPTS) {
      // RFC 8200 §4.1: hop-by-hop options only right after the fixed header.
      if (nh === IPV6_NH_HOP_BY_HOP && n !== 0) return -Check.IPV6_BAD_EXT_HEADER;
      if (++n > IPV6_MAX_EXT_HEADERS) return -Check.IPV6_EXT_HEADERS_TOO_LONG;
      if (p + IPV6_EXT_MIN_LEN > end) return -Check.IPV6_BAD_EXT_HEADER;
      const hl = (buf[p + IPV6_EXT_OFF_LEN]! + 1) << 3;
      if (p + hl > end) return -Check.IPV6_BAD_EXT_HEADER;
      // A routing header with segments left names a later hop: the destination
      // address (and so the pseudo-header) is not the final one.
      if (nh === IPV6_NH_ROUTING && buf[p + IPV6_RH_OFF_SEGMENTS_LEFT] !== 0)
        return -Check.IPV6_BAD_EXT_HEADER;
      nhOff = p;
      nh = buf[p]!;
      p += hl;
    } else if (nh === IPV6_NH_FRAGMENT) {
      if (sawFragment) return -Check.IPV6_BAD_EXT_HEADER;
      sawFragment = true;
      if (++n > IPV6_MAX_EXT_HEADERS) return -Check.IPV6_EXT_HEADERS_TOO_LONG;
      if (p + IPV6_FRAG_HEADER_LEN > end) return -Check.IPV6_BAD_EXT_HEADER;
      const fo = get16(buf, p + IPV6_FRAG_OFF_OFFSET_FLAGS);
      const offset = fo & IPV6_FRAG_OFFSET_MASK;
      const more = (fo & IPV6_FRAG_MORE) !== 0;
      nhOff = p;
      nh = buf[p]!;
      p += IPV6_FRAG_HEADER_LEN;
      // An atomic fragment (offset 0, no M) is a whole datagram (RFC 6946).
      if (offset !== 0 || more) {
        out.isFragment = true;
        out.moreFragments = more;
        out.fragOffset = offset;
        out.fragId = get32(buf, p - IPV6_FRAG_HEADER_LEN + IPV6_FRAG_OFF_IDENT);
        if (offset !== 0) break; // a later fragment: what follows is opaque
      }
    } else {
      break;
    }
  }
  out.protocol = nh;
  out.nextHeaderOff = nhOff;
  return p;
}

function checkL4(buf: Uint8Array, l4Off: number, avail: number, out: PacketInfo): CheckCode {
  const proto = out.protocol;
  if (proto === IPPROTO_TCP) {
    if (avail < TCP_HEADER_LEN) return Check.L4_TRUNCATED;
    const hl = (buf[l4Off + TCP_OFF_DATA_OFFSET]! >>> 4) << 2;
    if (hl < TCP_HEADER_LEN || hl > avail) return Check.BAD_DATA_OFFSET;
    out.l4HeaderLen = hl;
    out.l4Len = avail;
    out.tcpFlags = buf[l4Off + TCP_OFF_FLAGS]!;
  } else if (proto === IPPROTO_UDP) {
    if (avail < UDP_HEADER_LEN) return Check.L4_TRUNCATED;
    const ulen = get16(buf, l4Off + UDP_OFF_LENGTH);
    if (ulen < UDP_HEADER_LEN || ulen > avail) return Check.BAD_UDP_LEN;
    out.l4HeaderLen = UDP_HEADER_LEN;
    out.l4Len = ulen;
  } else if (proto === IPPROTO_ICMP || proto === IPPROTO_ICMPV6) {
    if (avail < 8) return Check.L4_TRUNCATED;
    out.l4HeaderLen = 8;
    out.l4Len = avail;
  } else {
    // Another protocol: the IP layer is valid, the payload is opaque.
    out.payloadOff = l4Off;
    out.payloadLen = avail;
    return Check.OK;
  }
  out.l4Off = l4Off;
  if (proto === IPPROTO_TCP || proto === IPPROTO_UDP) {
    out.srcPort = get16(buf, l4Off + TCP_OFF_SRC_PORT);
    out.dstPort = get16(buf, l4Off + TCP_OFF_DST_PORT);
  }
  out.payloadOff = l4Off + out.l4HeaderLen;
  out.payloadLen = out.l4Len - out.l4HeaderLen;
  return Check.OK;
}

/**
 * A first fragment (offset 0, more to come) of TCP or UDP, after checkPacket
 * accepted it as a fragment: fill in its L4 offset and ports (`checkPacket`
 * parses no L4 header in a fragment). Returns false when the fragment does not
 * hold the whole L4 header — a TCP header of its data offset, or UDP's 8 bytes —
 * (RFC 1858's tiny fragments): such a first fragment cannot be translated.
 * l4Len is the L4 bytes of this fragment only; the UDP length field, which is
 * the whole datagram's, is not checked.
 */
export function checkFirstFragment(buf: Uint8Array, info: PacketInfo): boolean {
  if (!info.isFragment || info.fragOffset !== 0) return false;
  const l4 = info.ipOff + info.ipHeaderLen;
  const avail = info.ipTotalLen - info.ipHeaderLen;
  const proto = info.protocol;
  let hl: number;
  if (proto === IPPROTO_TCP) {
    if (avail < TCP_HEADER_LEN) return false;
    hl = (buf[l4 + TCP_OFF_DATA_OFFSET]! >>> 4) << 2;
    if (hl < TCP_HEADER_LEN || hl > avail) return false;
    info.tcpFlags = buf[l4 + TCP_OFF_FLAGS]!;
  } else if (proto === IPPROTO_UDP) {
    if (avail < UDP_HEADER_LEN) return false;
    hl = UDP_HEADER_LEN;
  } else {
    return false;
  }
  info.l4Off = l4;
  info.l4HeaderLen = hl;
  info.l4Len = avail;
  info.srcPort = get16(buf, l4 + TCP_OFF_SRC_PORT);
  info.dstPort = get16(buf, l4 + TCP_OFF_DST_PORT);
  info.payloadOff = l4 + hl;
  info.payloadLen = avail - hl;
  return true;
}

/** What an ICMP error quotes of the offending packet (`checkQuoted`, `checkQuoted6`). */
export class QuotedPacket {
  /** 4 or 6. */
  version = 0;
  /** Offset of the quoted IP header. */
  ipOff = 0;
  /** IPv4 header with options; IPv6 fixed header and the extension headers quoted. */
  ipHeaderLen = 0;
  protocol = 0;
  /** IPv4 addresses (0 for IPv6). */
  srcAddr = 0;
  dstAddr = 0;
  /** Offsets of the quoted addresses. */
  srcOff = 0;
  dstOff = 0;
  /** Offset of the quoted L4 header; its ports. */
  l4Off = 0;
  srcPort = 0;
  dstPort = 0;
  /** Quoted bytes from l4Off to the end of the ICMP message. */
  l4Quoted = 0;
}

/**
 * The IPv4 packet an ICMP error quotes (its message body, from `off` to `end`):
 * an IPv4 header (version 4, IHL ≥ 5, wholly quoted) and at least the 4 bytes of
 * TCP or UDP ports after it. Returns false otherwise (another protocol, or too
 * little quoted). The quoted header's own lengths are not checked against what
 * is quoted: it describes a packet that was cut.
 */
export function checkQuoted(buf: Uint8Array, off: number, end: number, q: QuotedPacket): boolean {
  if (end - off < IPV4_HEADER_LEN || buf[off]! >>> 4 !== 4) return false;
  const ihl = (buf[off]! & 0x0f) << 2;
  if (ihl < IPV4_HEADER_LEN || off + ihl + 4 > end) return false;
  const proto = buf[off + IPV4_OFF_PROTOCOL]!;
  if (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) return false;
  q.version = 4;
  q.ipOff = off;
  q.ipHeaderLen = ihl;
  q.protocol = proto;
  q.srcAddr = get32(buf, off + IPV4_OFF_SRC);
  q.dstAddr = get32(buf, off + IPV4_OFF_DST);
  q.srcOff = off + IPV4_OFF_SRC;
  q.dstOff = off + IPV4_OFF_DST;
  q.l4Off = off + ihl;
  q.srcPort = get16(buf, off + ihl + TCP_OFF_SRC_PORT);
  q.dstPort = get16(buf, off + ihl + TCP_OFF_DST_PORT);
  q.l4Quoted = end - (off + ihl);
  return true;
}

/** Scratch for the quoted packet's header walk (its fragment fields). */
const quotedWalk = new PacketInfo();

/**
 * The IPv6 packet an ICMPv6 error quotes (RFC 4443 §2.4(c): as much as fits),
 * from `off` to `end`: the fixed header (version 6), its extension headers walked
 * as `checkPacket` walks them but within the quote, and at least the 4 bytes of
 * TCP or UDP ports after them. False otherwise: another protocol, a later
 * fragment (no ports), a header chain cut by the quote. The quoted payload
 * length is not checked against what is quoted (the packet was cut).
 */
export function checkQuoted6(buf: Uint8Array, off: number, end: number, q: QuotedPacket): boolean {
  if (end - off < IPV6_HEADER_LEN || buf[off]! >>> 4 !== 6) return false;
  const w = quotedWalk;
  w.reset();
  const p = walkIpv6(buf, off, end, w);
  if (p < 0 || (w.isFragment && w.fragOffset !== 0) || p + 4 > end) return false;
  const proto = w.protocol;
  if (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) return false;
  q.version = 6;
  q.ipOff = off;
  q.ipHeaderLen = p - off;
  q.protocol = proto;
  q.srcAddr = 0;
  q.dstAddr = 0;
  q.srcOff = off + IPV6_OFF_SRC;
  q.dstOff = off + IPV6_OFF_DST;
  q.l4Off = p;
  q.srcPort = get16(buf, p + TCP_OFF_SRC_PORT);
  q.dstPort = get16(buf, p + TCP_OFF_DST_PORT);
  q.l4Quoted = end - p;
  return true;
}
