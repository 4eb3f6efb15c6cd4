/**
 * Rewrites for the data plane: set a port, an IPv4 or an IPv6 address and fix
 * every checksum it is covered by, incrementally (RFC 1624), in O(1) whatever
 * the packet length.
 *
 *  - A port is covered by the L4 checksum only.
 *  - An IPv4 address is covered by the IP header checksum and, through the
 *    pseudo-header, by the TCP and UDP checksums (not by ICMP's).
 *  - UDP over IPv4: a checksum field of 0 means "none was computed" and stays 0;
 *    an updated checksum that comes out as 0 is sent as 0xffff (RFC 768).
 *  - `partial` (a packet the kernel handed over with a partial checksum, virtio
 *    NEEDS_CSUM): the L4 field holds the uncomplemented pseudo-header sum, so a
 *    port change leaves it alone and an address change adds ~old + new to it
 *    (checksum/incremental.ts says why); the IPv4 header checksum is complete
 *    either way.
 *  - An IPv6 address has no header checksum to fix; it is covered through the
 *    IPv6 pseudo-header (RFC 8200 §8.1) by the TCP, UDP and ICMPv6 checksums.
 *    A UDP/IPv6 checksum is mandatory: never left at 0, a computed 0 goes out as
 *    0xffff (a zero one is dropped on input, before any rewrite). The new
 *    address is four big-endian words of a typed array (`words[at..at+3]`), the
 *    data plane's form of an IPv6 address: no bigint, no allocation.
 *
 * TCP and UDP share these functions; `protocol` picks the checksum field. Pass
 * `l4Off` = -1 when the packet carries no L4 header (a non-first fragment). The
 * caller has validated the packet with `checkPacket`. The twin that recomputes
 * every checksum from scratch is `rewrite.reference.ts`.
 */

import {
  delta32,
  update16,
  update32,
  updateDelta,
  updatePartial32,
  updatePartialDelta,
} from '../checksum/incremental.js';
import { get16, get32, set16, set32 } from './bytes.js';
import { ICMP_OFF_CHECKSUM } from './icmp.js';
import {
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_OFF_CHECKSUM,
  IPV4_OFF_DST,
  IPV4_OFF_SRC,
} from './ipv4.js';
import { IPV6_OFF_DST, IPV6_OFF_SRC } from './ipv6.js';
import { TCP_OFF_CHECKSUM, TCP_OFF_DST_PORT, TCP_OFF_SRC_PORT } from './tcp.js';
import { UDP_OFF_CHECKSUM } from './udp.js';

/** Offset of the checksum field inside the L4 header, or -1 for a protocol without pseudo-header. */
export function l4ChecksumOffset(protocol: number): number {
  if (protocol === IPPROTO_TCP) return TCP_OFF_CHECKSUM;
  if (protocol === IPPROTO_UDP) return UDP_OFF_CHECKSUM;
  return -1;
}

function fixL4(
  buf: Uint8Array,
  l4Off: number,
  protocol: number,
  old: number,
  now: number,
  wide: boolean,
): void {
  const co = l4ChecksumOffset(protocol);
  if (l4Off < 0 || co < 0) return;
  const at = l4Off + co;
  const check = get16(buf, at);
  if (protocol === IPPROTO_UDP) {
    if (check === 0) return; // no checksum: leave it so
    const c = wide ? update32(check, old, now) : update16(check, old, now);
    set16(buf, at, c === 0 ? 0xffff : c);
    return;
  }
  set16(buf, at, wide ? update32(check, old, now) : update16(check, old, now));
}

function setPort(
  buf: Uint8Array,
  l4Off: number,
  protocol: number,
  field: number,
  port: number,
  partial: boolean,
): void {
  const old = get16(buf, l4Off + field);
  set16(buf, l4Off + field, port);
  // A partial sum covers the pseudo-header only; the port is summed later with the rest.
  if (!partial) fixL4(buf, l4Off, protocol, old, port, false);
}

/** Set the TCP/UDP source port and update the L4 checksum. Both protocols keep ports at 0 and 2. */
export function setSrcPortWithChecksumUpdate(
  buf: Uint8Array,
  l4Off: number,
  protocol: number,
  port: number,
  partial = false,
): void {
  setPort(buf, l4Off, protocol, TCP_OFF_SRC_PORT, port, partial);
}

export function setDstPortWithChecksumUpdate(
  buf: Uint8Array,
  l4Off: number,
  protocol: number,
  port: number,
  partial = false,
): void {
  setPort(buf, l4Off, protocol, TCP_OFF_DST_PORT, port, partial);
}

function setAddr(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  field: number,
  addr: number,
  partial: boolean,
): void {
  const at = ipOff + field;
  const old = get32(buf, at);
  const now = addr >>> 0;
  set32(buf, at, now);
  const ipc = ipOff + IPV4_OFF_CHECKSUM;
  set16(buf, ipc, update32(get16(buf, ipc), old, now));
  if (!partial) {
    fixL4(buf, l4Off, protocol, old, now, true);
    return;
  }
  const co = l4ChecksumOffset(protocol);
  if (l4Off < 0 || co < 0) return;
  set16(buf, l4Off + co, updatePartial32(get16(buf, l4Off + co), old, now));
}

/** Set the IPv4 source address; update the header checksum and the TCP/UDP pseudo-header sum. */
export function setIpv4SrcAddrWithChecksumUpdate(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  addr: number,
  partial = false,
): void {
  setAddr(buf, ipOff, l4Off, protocol, IPV4_OFF_SRC, addr, partial);
}

export function setIpv4DstAddrWithChecksumUpdate(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  addr: number,
  partial = false,
): void {
  setAddr(buf, ipOff, l4Off, protocol, IPV4_OFF_DST, addr, partial);
}

/** Offset of the checksum field inside an upper-layer header over IPv6 (ICMPv6 has a pseudo-header there), or -1. */
export function l4ChecksumOffset6(protocol: number): number {
  if (protocol === IPPROTO_TCP) return TCP_OFF_CHECKSUM;
  if (protocol === IPPROTO_UDP) return UDP_OFF_CHECKSUM;
  if (protocol === IPPROTO_ICMPV6) return ICMP_OFF_CHECKSUM;
  return -1;
}

function setAddr6(
  buf: Uint8Array,
  at: number,
  l4Off: number,
  protocol: number,
  words: Uint32Array,
  w: number,
  partial: boolean,
): void {
  let d = 0;
  for (let i = 0; i < 4; i++) {
    const o = at + 4 * i;
    const now = words[w + i]!;
    d += delta32(get32(buf, o), now);
    set32(buf, o, now);
  }
  const co = l4ChecksumOffset6(protocol);
  if (l4Off < 0 || co < 0) return;
  const f = l4Off + co;
  const check = get16(buf, f);
  if (partial) {
    set16(buf, f, updatePartialDelta(check, d));
    return;
  }
  const c = updateDelta(check, d);
  set16(buf, f, protocol === IPPROTO_UDP && c === 0 ? 0xffff : c);
}

/**
 * Set the IPv6 source address of the packet at `ipOff` to `words[w..w+3]` and
 * update the TCP/UDP/ICMPv6 checksum (pseudo-header) at `l4Off` (-1: none).
 */
export function setIpv6SrcAddrWithChecksumUpdate(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  words: Uint32Array,
  w: number,
  partial = false,
): void {
  setAddr6(buf, ipOff + IPV6_OFF_SRC, l4Off, protocol, words, w, partial);
}

export function setIpv6DstAddrWithChecksumUpdate(
  buf: Uint8Array,
  ipOff: number,
  l4Off: number,
  protocol: number,
  words: Uint32Array,
  w: number,
  partial = false,
): void {
  setAddr6(buf, ipOff + IPV6_OFF_DST, l4Off, protocol, words, w, partial);
}
