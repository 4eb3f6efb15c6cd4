/**
 * Reference twin of `rewrite.ts`: write the field, then recompute every checksum
 * that covers it from scratch with the byte-at-a-time reference sum (IPv4: the
 * header checksum and TCP/UDP; IPv6: TCP, UDP and ICMPv6 over the 40-byte
 * pseudo-header of RFC 8200 §8.1, built here byte by byte).
 */

import { checksumReference, sum16Reference } from '../checksum/sum.reference.js';
import { get16, set16, set32 } from './bytes.js';
import { ICMP_OFF_CHECKSUM } from './icmp.js';
import {
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_OFF_CHECKSUM,
  IPV4_OFF_DST,
  IPV4_OFF_SRC,
} from './ipv4.js';
import { IPV6_HEADER_LEN, IPV6_OFF_DST, IPV6_OFF_PAYLOAD_LEN, IPV6_OFF_SRC } from './ipv6.js';
import { TCP_OFF_CHECKSUM, TCP_OFF_DST_PORT, TCP_OFF_SRC_PORT } from './tcp.js';
import { UDP_OFF_CHECKSUM, UDP_OFF_LENGTH } from './udp.js';

/** Recompute the IPv4 header checksum and, if an L4 header is present, the TCP/UDP checksum. */
export function recomputeIpv4Checksums(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
): void {
  const ihl = (buf[ipOff]! & 0x0f) * 4;
  set16(buf, ipOff + IPV4_OFF_CHECKSUM, 0);
  set16(buf, ipOff + IPV4_OFF_CHECKSUM, checksumReference(buf, ipOff, ihl));
  if (l4Off < 0) return;
  const pseudoBytes = new Uint8Array(12);
  pseudoBytes.set(buf.subarray(ipOff + IPV4_OFF_SRC, ipOff + IPV4_OFF_SRC + 8), 0);
  pseudoBytes[9] = protocol;
  if (protocol === IPPROTO_TCP) {
    const len = get16(buf, ipOff + 2) - ihl;
    set16(pseudoBytes, 10, len);
    set16(buf, l4Off + TCP_OFF_CHECKSUM, 0);
    const c = checksumReference(buf, l4Off, len, sum16Reference(pseudoBytes, 0, 12));
    set16(buf, l4Off + TCP_OFF_CHECKSUM, c);
  } else if (protocol === IPPROTO_UDP) {
    if (get16(buf, l4Off + UDP_OFF_CHECKSUM) === 0) return;
    const len = get16(buf, l4Off + UDP_OFF_LENGTH);
    set16(pseudoBytes, 10, len);
    set16(buf, l4Off + UDP_OFF_CHECKSUM, 0);
    const c = checksumReference(buf, l4Off, len, sum16Reference(pseudoBytes, 0, 12));
    set16(buf, l4Off + UDP_OFF_CHECKSUM, c === 0 ? 0xffff : c);
  }
}

/**
 * Recompute the TCP, UDP or ICMPv6 checksum of the IPv6 packet at `ipOff` whose
 * upper-layer header is at `l4Off` (after any extension headers); -1: none.
 * The upper-layer length is the rest of the payload (UDP: its length field).
 */
export function recomputeIpv6Checksums(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
): void {
  if (l4Off < 0) return;
  const end = ipOff + IPV6_HEADER_LEN + get16(buf, ipOff + IPV6_OFF_PAYLOAD_LEN);
  let field: number;
  let len: number;
  if (protocol === IPPROTO_TCP) {
    field = TCP_OFF_CHECKSUM;
    len = end - l4Off;
  } else if (protocol === IPPROTO_UDP) {
    field = UDP_OFF_CHECKSUM;
    len = get16(buf, l4Off + UDP_OFF_LENGTH);
  } else if (protocol === IPPROTO_ICMPV6) {
    field = ICMP_OFF_CHECKSUM;
    len = end - l4Off;
  } else {
    return;
  }
  const pseudo = new Uint8Array(40);
  pseudo.set(buf.subarray(ipOff + IPV6_OFF_SRC, ipOff + IPV6_OFF_SRC + 16), 0);
  pseudo.set(buf.subarray(ipOff + IPV6_OFF_DST, ipOff + IPV6_OFF_DST + 16), 16);
  set32(pseudo, 32, len);
  pseudo[39] = protocol;
  set16(buf, l4Off + field, 0);
  const c = checksumReference(buf, l4Off, len, sum16Reference(pseudo, 0, 40));
  set16(buf, l4Off + field, protocol === IPPROTO_UDP && c === 0 ? 0xffff : c);
}

/** Either family, by the version nibble at `ipOff`. */
export function recomputeChecksums(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
): void {
  if (buf[ipOff]! >>> 4 === 6) recomputeIpv6Checksums(buf, ipOff, l4Off, protocol);
  else recomputeIpv4Checksums(buf, ipOff, l4Off, protocol);
}

export function setSrcPortReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  port: number,
): void {
  set16(buf, l4Off + TCP_OFF_SRC_PORT, port);
  recomputeChecksums(buf, ipOff, l4Off, protocol);
}

export function setDstPortReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  port: number,
): void {
  set16(buf, l4Off + TCP_OFF_DST_PORT, port);
  recomputeChecksums(buf, ipOff, l4Off, protocol);
}

export function setIpv4SrcAddrReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  addr: number,
): void {
  set32(buf, ipOff + IPV4_OFF_SRC, addr);
  recomputeIpv4Checksums(buf, ipOff, l4Off, protocol);
}

export function setIpv4DstAddrReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  addr: number,
): void {
  set32(buf, ipOff + IPV4_OFF_DST, addr);
  recomputeIpv4Checksums(buf, ipOff, l4Off, protocol);
}

function setIpv6AddrReference(
  buf: Uint8Array,
  at: number,
  ipOff: number,
  l4Off: number,
  protocol: number,
  words: Uint32Array,
  w: number,
): void {
  for (let i = 0; i < 4; i++) set32(buf, at + 4 * i, words[w + i]!);
  recomputeIpv6Checksums(buf, ipOff, l4Off, protocol);
}

export function setIpv6SrcAddrReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  words: Uint32Array,
  w: number,
): void {
  setIpv6AddrReference(buf, ipOff + IPV6_OFF_SRC, ipOff, l4Off, protocol, words, w);
}

export function setIpv6DstAddrReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  words: Uint32Array,
  w: number,
): void {
  setIpv6AddrReference(buf, ipOff + IPV6_OFF_DST, ipOff, l4Off, protocol, words, w);
}
