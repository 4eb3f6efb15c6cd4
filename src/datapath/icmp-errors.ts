/**
 * ICMP errors about a flow's packets, translated as a NAT translates them
 * (RFC 5508 REQ-3/4; Linux nf_nat_icmp_reply_translation does the same).
 *
 * Theory of operation. An ICMP error (destination unreachable — fragmentation
 * needed among them —, time exceeded, parameter problem, source quench) quotes
 * the IP header and at least 8 bytes of the packet it is about. If that packet is
 * one vpm sent, it is a translated packet, and the error names addresses and
 * ports the error's receiver never used:
 *   - quoted towards the server (nat:natPort → real:realPort), found on the
 *     flow's side 1: the error goes to the client. Outer destination nat →
 *     client, outer source real → VIP when the instance's host sent it; quoted
 *     source → client:clientPort, quoted destination → VIP:vport;
 *   - quoted towards the client (VIP:vport → client:clientPort), found on side
 *     0: the error goes to the server. Outer destination VIP → real, outer
 *     source client → nat when the client's host sent it; quoted source →
 *     real:realPort, quoted destination → nat:natPort.
 * The lookup key is the quoted packet reversed: it is the reply direction of the
 * side it belongs to. The outer destination must be the quoted source (an error
 * goes to the sender of what it quotes), or it is no error about that flow.
 *
 * Checksums: the outer IP header's and the quoted IP header's are updated
 * incrementally (the rewrite helpers with no L4 header); the quoted TCP/UDP
 * checksum too, but only when the quote holds it (TCP's lies beyond the 8 bytes
 * an error must quote: it is then left as it is); the ICMP checksum covers the
 * whole message with no pseudo-header and is computed afresh (the caller has
 * verified it: an error is small and rare). Nothing about the flow changes: an
 * ICMP message is not authenticated, so it neither refreshes nor removes a flow.
 *
 * ICMPv6 (RFC 4443: destination unreachable, packet too big — path MTU
 * discovery, RFC 8201 —, time exceeded, parameter problem) is translated the
 * same way, `translateIcmp6Error`, with the flow's IPv6 addresses (the table's
 * addr6 columns): there is no IP header checksum; the quoted TCP/UDP checksum
 * is updated through the quoted pseudo-header where quoted; the ICMPv6
 * checksum, which covers the outer pseudo-header, is computed afresh over the
 * new outer addresses. A packet too big's MTU stays: vpm adds no header.
 */

import { pseudoHeader6 } from '../checksum/pseudo.js';
import { checksum } from '../checksum/sum.js';
import type { FlowTable } from '../flow/table.js';
import { set16 } from '../wire/bytes.js';
import { ICMP_OFF_CHECKSUM } from '../wire/icmp.js';
import { IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP } from '../wire/ipv4.js';
import type { PacketInfo, QuotedPacket } from '../wire/parse.js';
import {
  setDstPortWithChecksumUpdate,
  setIpv4DstAddrWithChecksumUpdate,
  setIpv4SrcAddrWithChecksumUpdate,
  setIpv6DstAddrWithChecksumUpdate,
  setIpv6SrcAddrWithChecksumUpdate,
  setSrcPortWithChecksumUpdate,
} from '../wire/rewrite.js';
import { TCP_OFF_CHECKSUM } from '../wire/tcp.js';
import { UDP_OFF_CHECKSUM } from '../wire/udp.js';

/**
 * Translate the ICMP error `info` (in `buf`), which quotes `q`, about flow side
 * `h` of `t`. Returns false, leaving the packet as it was, when the error is not
 * addressed to the quoted packet's sender.
 */
export function translateIcmpError(
  buf: Uint8Array,
  info: PacketInfo,
  q: QuotedPacket,
  t: FlowTable,
  h: number,
): boolean {
  const s = h >> 1;
  const off = info.ipOff;
  // The quoted L4 checksum is updated only when it was quoted; protocol 0 has none to update.
  const field = q.protocol === IPPROTO_TCP ? TCP_OFF_CHECKSUM : UDP_OFF_CHECKSUM;
  const qp = q.l4Quoted >= field + 2 ? q.protocol : 0;
  const ql4 = qp === 0 ? -1 : q.l4Off;
  if ((h & 1) === 1) {
    // The quoted packet went to the server: the error goes back to the client.
    if (info.dstAddr !== t.natAddr[s]) return false;
    if (info.srcAddr === t.realAddr[s] && t.realAddr[s] !== t.vipAddr[s])
      setIpv4SrcAddrWithChecksumUpdate(buf, off, -1, IPPROTO_ICMP, t.vipAddr[s]!);
    if (t.natAddr[s] !== t.clientAddr[s]) {
      setIpv4DstAddrWithChecksumUpdate(buf, off, -1, IPPROTO_ICMP, t.clientAddr[s]!);
      setIpv4SrcAddrWithChecksumUpdate(buf, q.ipOff, ql4, qp, t.clientAddr[s]!);
    }
    setSrcPortWithChecksumUpdate(buf, q.l4Off, qp, t.clientPort[s]!);
    if (t.realAddr[s] !== t.vipAddr[s])
      setIpv4DstAddrWithChecksumUpdate(buf, q.ipOff, ql4, qp, t.vipAddr[s]!);
    setDstPortWithChecksumUpdate(buf, q.l4Off, qp, t.vport[s]!);
  } else {
    // The quoted packet went to the client: the error goes to the server.
    if (info.dstAddr !== t.vipAddr[s]) return false;
    if (info.srcAddr === t.clientAddr[s] && t.natAddr[s] !== t.clientAddr[s])
      setIpv4SrcAddrWithChecksumUpdate(buf, off, -1, IPPROTO_ICMP, t.natAddr[s]!);
    if (t.realAddr[s] !== t.vipAddr[s]) {
      setIpv4DstAddrWithChecksumUpdate(buf, off, -1, IPPROTO_ICMP, t.realAddr[s]!);
      setIpv4SrcAddrWithChecksumUpdate(buf, q.ipOff, ql4, qp, t.realAddr[s]!);
    }
    setSrcPortWithChecksumUpdate(buf, q.l4Off, qp, t.realPort[s]!);
    if (t.natAddr[s] !== t.clientAddr[s])
      setIpv4DstAddrWithChecksumUpdate(buf, q.ipOff, ql4, qp, t.natAddr[s]!);
    setDstPortWithChecksumUpdate(buf, q.l4Off, qp, t.natPort[s]!);
  }
  const m = info.l4Off;
  const end = off + info.ipTotalLen;
  set16(buf, m + ICMP_OFF_CHECKSUM, 0);
  set16(buf, m + ICMP_OFF_CHECKSUM, checksum(buf, m, end - m));
  return true;
}

/** Are the IPv6 addresses w[a..a+3] and w[b..b+3] the same? */
export function same6(w: Uint32Array, a: number, b: number): boolean {
  return w[a] === w[b] && w[a + 1] === w[b + 1] && w[a + 2] === w[b + 2] && w[a + 3] === w[b + 3];
}

/** Is the 16-byte address at buf[off] the words w[at..at+3]? */
export function is6(buf: Uint8Array, off: number, w: Uint32Array, at: number): boolean {
  for (let i = 0; i < 4; i++) {
    const o = off + 4 * i;
    const v = ((buf[o]! << 24) | (buf[o + 1]! << 16) | (buf[o + 2]! << 8) | buf[o + 3]!) >>> 0;
    if (v !== w[at + i]) return false;
  }
  return true;
}

/**
 * translateIcmpError for an ICMPv6 error `info` (in `buf`) quoting the IPv6
 * packet `q`, about IPv6 flow side `h` of `t`. Returns false, leaving the
 * packet as it was, when the error is not addressed to the quoted packet's sender.
 */
export function translateIcmp6Error(
  buf: Uint8Array,
  info: PacketInfo,
  q: QuotedPacket,
  t: FlowTable,
  h: number,
): boolean {
  const s = h >> 1;
  const off = info.ipOff;
  const a = t.addr6;
  const client = s * 16;
  const vip = client + 4;
  const nat = client + 8;
  const real = client + 12;
  const field = q.protocol === IPPROTO_TCP ? TCP_OFF_CHECKSUM : UDP_OFF_CHECKSUM;
  const qp = q.l4Quoted >= field + 2 ? q.protocol : 0;
  const ql4 = qp === 0 ? -1 : q.l4Off;
  const qip = q.ipOff;
  // The outer addresses: no checksum of their own (the ICMPv6 one is redone below).
  const none = IPPROTO_ICMPV6;
  if ((h & 1) === 1) {
    // The quoted packet went to the server: the error goes back to the client.
    if (!is6(buf, info.dstOff, a, nat)) return false;
    if (is6(buf, info.srcOff, a, real) && !same6(a, real, vip))
      setIpv6SrcAddrWithChecksumUpdate(buf, off, -1, none, a, vip);
    if (!same6(a, nat, client)) {
      setIpv6DstAddrWithChecksumUpdate(buf, off, -1, none, a, client);
      setIpv6SrcAddrWithChecksumUpdate(buf, qip, ql4, qp, a, client);
    }
    setSrcPortWithChecksumUpdate(buf, q.l4Off, qp, t.clientPort[s]!);
    if (!same6(a, real, vip)) setIpv6DstAddrWithChecksumUpdate(buf, qip, ql4, qp, a, vip);
    setDstPortWithChecksumUpdate(buf, q.l4Off, qp, t.vport[s]!);
  } else {
    // The quoted packet went to the client: the error goes to the server.
    if (!is6(buf, info.dstOff, a, vip)) return false;
    if (is6(buf, info.srcOff, a, client) && !same6(a, nat, client))
      setIpv6SrcAddrWithChecksumUpdate(buf, off, -1, none, a, nat);
    if (!same6(a, real, vip)) {
      setIpv6DstAddrWithChecksumUpdate(buf, off, -1, none, a, real);
      setIpv6SrcAddrWithChecksumUpdate(buf, qip, ql4, qp, a, real);
    }
    setSrcPortWithChecksumUpdate(buf, q.l4Off, qp, t.realPort[s]!);
    if (!same6(a, nat, client)) setIpv6DstAddrWithChecksumUpdate(buf, qip, ql4, qp, a, nat);
    setDstPortWithChecksumUpdate(buf, q.l4Off, qp, t.natPort[s]!);
  }
  const m = info.l4Off;
  const len = off + info.ipTotalLen - m;
  set16(buf, m + ICMP_OFF_CHECKSUM, 0);
  const pseudo = pseudoHeader6(buf, info.srcOff, info.dstOff, IPPROTO_ICMPV6, len);
  set16(buf, m + ICMP_OFF_CHECKSUM, checksum(buf, m, len, pseudo));
  return true;
}
