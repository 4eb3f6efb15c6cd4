/**
 * The one checked entry point for untrusted packets.
 *
 * Everything that arrives from a device or a file goes through `checkPacket` before
 * any view touches it. It guarantees, for an accepted packet, that every offset and
 * length it reports lies inside `[off, off + len)` of the buffer:
 *   - IPv4: version 4, IHL >= 5, IHL*4 <= total length <= bytes available;
 *   - IPv6: the 40-byte fixed header and its payload length fit;
 *   - TCP: the 20-byte header fits, 5 <= data offset and data offset*4 <= segment;
 *   - UDP: the 8-byte header fits, 8 <= length field <= IP payload;
 *   - ICMP / ICMPv6: the 8-byte header fits.
 * Fragments are reported, not reassembled: for any IPv4 fragment (MF set or a
 * non-zero offset) the L4 fields are not parsed (`l4Off` is -1), since only the
 * first fragment carries the L4 header and it may be cut anywhere.
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
  IPV4_OFF_PROTOCOL,
  IPV4_OFF_SRC,
  IPV4_OFF_TOTAL_LEN,
} from './ipv4.js';
import { IPV6_HEADER_LEN, IPV6_OFF_NEXT_HEADER, IPV6_OFF_PAYLOAD_LEN } from './ipv6.js';
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
  /** IPv4 source and destination as u32 (0 for IPv6: use the view's offsets). */
  srcAddr = 0;
  dstAddr = 0;
  /** IPv4: any fragment (MF set or offset non-zero). */
  isFragment = false;
  moreFragments = false;
  /** Fragment offset in bytes. */
  fragOffset = 0;
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
    this.isFragment = false;
    this.moreFragments = false;
    this.fragOffset = 0;
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
  out.moreFragments = (frag & 0x2000) !== 0;
  out.fragOffset = (frag & 0x1fff) << 3;
  out.isFragment = (frag & 0x3fff) !== 0;
  if (out.isFragment) return Check.OK;
  return checkL4(buf, off + ihl, total - ihl, out);
}

function checkIpv6(buf: Uint8Array, off: number, len: number, out: PacketInfo): CheckCode {
  if (len < IPV6_HEADER_LEN) return Check.TRUNCATED;
  const payload = get16(buf, off + IPV6_OFF_PAYLOAD_LEN);
  if (IPV6_HEADER_LEN + payload > len) return Check.BAD_TOTAL_LEN;
  out.ipHeaderLen = IPV6_HEADER_LEN;
  out.ipTotalLen = IPV6_HEADER_LEN + payload;
  out.protocol = buf[off + IPV6_OFF_NEXT_HEADER]!;
  return checkL4(buf, off + IPV6_HEADER_LEN, payload, out);
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

/** What an ICMP error quotes of the offending packet (`checkQuoted`). */
export class QuotedPacket {
  /** Offset of the quoted IPv4 header. */
  ipOff = 0;
  ipHeaderLen = 0;
  protocol = 0;
  srcAddr = 0;
  dstAddr = 0;
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
  q.ipOff = off;
  q.ipHeaderLen = ihl;
  q.protocol = proto;
  q.srcAddr = get32(buf, off + IPV4_OFF_SRC);
  q.dstAddr = get32(buf, off + IPV4_OFF_DST);
  q.l4Off = off + ihl;
  q.srcPort = get16(buf, off + ihl + TCP_OFF_SRC_PORT);
  q.dstPort = get16(buf, off + ihl + TCP_OFF_DST_PORT);
  q.l4Quoted = end - (off + ihl);
  return true;
}
