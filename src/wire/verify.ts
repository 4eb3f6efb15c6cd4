/**
 * Checksum validation of a packet that `checkPacket` accepted: the IPv4 header
 * checksum, and the TCP, UDP, ICMP or ICMPv6 checksum where the L4 header is
 * present (not for fragments). Costs a full sum over the packet: the data plane
 * does not call it per packet; tests, `vpm dump` and packet builders do.
 */

import { pseudoHeader4, pseudoHeader6 } from '../checksum/pseudo.js';
import { sum16 } from '../checksum/sum.js';
import { IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP } from './ipv4.js';
import { IPV6_OFF_DST, IPV6_OFF_SRC } from './ipv6.js';
import type { PacketInfo } from './parse.js';
import { TCP_OFF_CHECKSUM } from './tcp.js';
import { UDP_OFF_CHECKSUM } from './udp.js';

export const Verify = {
  OK: 0,
  BAD_IP_CHECKSUM: 1,
  BAD_L4_CHECKSUM: 2,
} as const;
export type VerifyCode = (typeof Verify)[keyof typeof Verify];

/** Both checks below: the IPv4 header checksum, then the L4 checksum. */
export function verifyChecksums(buf: Uint8Array, info: PacketInfo): VerifyCode {
  if (info.version === 4 && sum16(buf, info.ipOff, info.ipHeaderLen) !== 0xffff)
    return Verify.BAD_IP_CHECKSUM;
  return verifyL4Checksum(buf, info);
}

/**
 * The TCP, UDP, ICMP or ICMPv6 checksum alone (OK when the packet carries no L4
 * header), for a caller that has checked the IPv4 header checksum itself.
 */
export function verifyL4Checksum(buf: Uint8Array, info: PacketInfo): VerifyCode {
  const off = info.ipOff;
  const v4 = info.version === 4;
  // A fragment holds part of the datagram: its checksum can only be checked whole.
  if (info.l4Off < 0 || info.isFragment) return Verify.OK;
  const p = info.protocol;
  let pseudo = 0;
  if (p === IPPROTO_TCP || p === IPPROTO_UDP) {
    if (
      p === IPPROTO_UDP &&
      buf[info.l4Off + UDP_OFF_CHECKSUM] === 0 &&
      buf[info.l4Off + UDP_OFF_CHECKSUM + 1] === 0
    ) {
      // Over IPv4, 0 means "no checksum". Over IPv6 the checksum is mandatory and a
      // zero one is discarded (RFC 8200 §8.1), even where the data would sum to 0xffff.
      return v4 ? Verify.OK : Verify.BAD_L4_CHECKSUM;
    }
    pseudo = v4
      ? pseudoHeader4(info.srcAddr, info.dstAddr, p, info.l4Len)
      : pseudoHeader6(buf, off + IPV6_OFF_SRC, off + IPV6_OFF_DST, p, info.l4Len);
  } else if (p === IPPROTO_ICMPV6 && !v4) {
    // Only over IPv6: an IPv4 packet has no IPv6 addresses to build this from (its
    // bytes 8..40 may lie past its end); ICMPv6 over IPv4 is passed unchecked below.
    pseudo = pseudoHeader6(buf, off + IPV6_OFF_SRC, off + IPV6_OFF_DST, p, info.l4Len);
  } else if (p !== IPPROTO_ICMP) {
    return Verify.OK;
  }
  return sum16(buf, info.l4Off, info.l4Len, pseudo) === 0xffff ? Verify.OK : Verify.BAD_L4_CHECKSUM;
}

/**
 * Turn a partial TCP/UDP checksum (the pseudo-header sum a kernel leaves for the
 * NIC, virtio NEEDS_CSUM) into a complete one, as the NIC would: the field is
 * taken as part of the sum, and the complement stored (UDP's 0 as 0xffff). For a
 * packet vpm keeps beyond the batch (a held SYN), which then travels as a plain
 * packet. A no-op without a TCP/UDP header.
 */
export function completePartialChecksum(buf: Uint8Array, info: PacketInfo): void {
  const p = info.protocol;
  if (info.l4Off < 0 || (p !== IPPROTO_TCP && p !== IPPROTO_UDP)) return;
  const at = info.l4Off + (p === IPPROTO_TCP ? TCP_OFF_CHECKSUM : UDP_OFF_CHECKSUM);
  const c = ~sum16(buf, info.l4Off, info.l4Len) & 0xffff;
  const v = p === IPPROTO_UDP && c === 0 ? 0xffff : c;
  buf[at] = v >>> 8;
  buf[at + 1] = v & 0xff;
}
