/**
 * Reference twin of `rewrite.ts`: write the field, then recompute every checksum
 * that covers it from scratch with the byte-at-a-time reference sum.
 */

import { checksumReference, sum16Reference } from '../checksum/sum.reference.js';
import { get16, set16, set32 } from './bytes.js';
import { IPPROTO_TCP, IPPROTO_UDP, IPV4_OFF_CHECKSUM, IPV4_OFF_DST, IPV4_OFF_SRC } from './ipv4.js';
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

export function setSrcPortReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  port: number,
): void {
  set16(buf, l4Off + TCP_OFF_SRC_PORT, port);
  recomputeIpv4Checksums(buf, ipOff, l4Off, protocol);
}

export function setDstPortReference(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  port: number,
): void {
  set16(buf, l4Off + TCP_OFF_DST_PORT, port);
  recomputeIpv4Checksums(buf, ipOff, l4Off, protocol);
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
