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
 */

import { checksum } from '../checksum/sum.js';
import type { FlowTable } from '../flow/table.js';
import { set16 } from '../wire/bytes.js';
import { ICMP_OFF_CHECKSUM } from '../wire/icmp.js';
import { IPPROTO_ICMP, IPPROTO_TCP } from '../wire/ipv4.js';
import type { PacketInfo, QuotedPacket } from '../wire/parse.js';
import {
  setDstPortWithChecksumUpdate,
  setIpv4DstAddrWithChecksumUpdate,
  setIpv4SrcAddrWithChecksumUpdate,
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
