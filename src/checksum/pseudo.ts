/**
 * Pseudo-header sums for TCP and UDP checksums (RFC 793 §3.1 / RFC 768 for IPv4,
 * RFC 8200 §8.1 for IPv6). Each returns the folded, uncomplemented sum, to be
 * passed as `initial` to `sum16` over the L4 header and payload.
 */

import { fold, sum16 } from './sum.js';

/** IPv4 pseudo-header: source, destination (u32), zero, protocol, L4 length. */
export function pseudoHeader4(src: number, dst: number, protocol: number, l4Len: number): number {
  return fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + l4Len);
}

/**
 * IPv6 pseudo-header: the 16-byte source and destination at `srcOff` / `dstOff` in
 * `buf`, the 32-bit upper-layer length and the next header value.
 */
export function pseudoHeader6(
  buf: Uint8Array,
  srcOff: number,
  dstOff: number,
  nextHeader: number,
  l4Len: number,
): number {
  const addrs = sum16(buf, srcOff, 16, sum16(buf, dstOff, 16));
  return fold(addrs + (l4Len >>> 16) + (l4Len & 0xffff) + nextHeader);
}
