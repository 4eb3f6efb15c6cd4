/**
 * Build the TCP RST with which vpm refuses a SYN it cannot place (no selector, no
 * instance, table full): from the virtual service back to the client, as RFC 9293
 * §3.10.7.1 has a closed port answer a SYN: SEQ=0, ACK=SEG.SEQ+SEG.LEN(+1 for the
 * SYN), flags RST|ACK. Over IPv4 or IPv6, the family of the SYN (IPv6: a 40-byte
 * header, hop limit 64, no extension headers). Written straight into a
 * preallocated buffer; no allocation.
 */

import { pseudoHeader4, pseudoHeader6 } from '../checksum/pseudo.js';
import { checksum } from '../checksum/sum.js';
import { get32, set16, set32 } from '../wire/bytes.js';
import { IPPROTO_TCP, IPV4_HEADER_LEN } from '../wire/ipv4.js';
import {
  IPV6_HEADER_LEN,
  IPV6_OFF_DST,
  IPV6_OFF_HOP_LIMIT,
  IPV6_OFF_NEXT_HEADER,
  IPV6_OFF_PAYLOAD_LEN,
  IPV6_OFF_SRC,
} from '../wire/ipv6.js';
import type { PacketInfo } from '../wire/parse.js';
import { TCP_ACK, TCP_FIN, TCP_HEADER_LEN, TCP_RST, TCP_SYN } from '../wire/tcp.js';

/** An IPv4 RST. */
export const RST_LEN = IPV4_HEADER_LEN + TCP_HEADER_LEN;
/** An IPv6 RST. */
export const RST6_LEN = IPV6_HEADER_LEN + TCP_HEADER_LEN;
/** Room for a RST of either family. */
export const RST_MAX = RST6_LEN;

/** Write a RST answering the packet described by `info` (in `inBuf`) at `out[o]`. Returns its length. */
export function writeRst(inBuf: Uint8Array, info: PacketInfo, out: Uint8Array, o: number): number {
  let t: number;
  if (info.version === 6) {
    // IPv6 header: from the SYN's destination back to its source.
    set32(out, o, 0x60000000);
    set16(out, o + IPV6_OFF_PAYLOAD_LEN, TCP_HEADER_LEN);
    out[o + IPV6_OFF_NEXT_HEADER] = IPPROTO_TCP;
    out[o + IPV6_OFF_HOP_LIMIT] = 64;
    for (let i = 0; i < 16; i++) {
      out[o + IPV6_OFF_SRC + i] = inBuf[info.dstOff + i]!;
      out[o + IPV6_OFF_DST + i] = inBuf[info.srcOff + i]!;
    }
    t = o + IPV6_HEADER_LEN;
  } else {
    // IPv4 header.
    out[o] = 0x45;
    out[o + 1] = 0;
    set16(out, o + 2, RST_LEN);
    set16(out, o + 4, 0);
    set16(out, o + 6, 0x4000); // DF
    out[o + 8] = 64;
    out[o + 9] = IPPROTO_TCP;
    set16(out, o + 10, 0);
    set32(out, o + 12, info.dstAddr);
    set32(out, o + 16, info.srcAddr);
    set16(out, o + 10, checksum(out, o, IPV4_HEADER_LEN));
    t = o + IPV4_HEADER_LEN;
  }

  const l4 = info.l4Off;
  const flags = info.tcpFlags;
  let segLen = info.payloadLen;
  if (flags & TCP_SYN) segLen++;
  if (flags & TCP_FIN) segLen++;
  const ack = (get32(inBuf, l4 + 4) + segLen) >>> 0;

  // TCP header.
  set16(out, t, info.dstPort);
  set16(out, t + 2, info.srcPort);
  if (flags & TCP_ACK) {
    // RFC 9293: if the incoming segment has ACK, the RST takes its SEQ from SEG.ACK.
    set32(out, t + 4, get32(inBuf, l4 + 8));
    set32(out, t + 8, 0);
    out[t + 13] = TCP_RST;
  } else {
    set32(out, t + 4, 0);
    set32(out, t + 8, ack);
    out[t + 13] = TCP_RST | TCP_ACK;
  }
  out[t + 12] = (TCP_HEADER_LEN >>> 2) << 4;
  set16(out, t + 14, 0);
  set16(out, t + 16, 0);
  set16(out, t + 18, 0);
  const pseudo =
    info.version === 6
      ? pseudoHeader6(out, o + IPV6_OFF_SRC, o + IPV6_OFF_DST, IPPROTO_TCP, TCP_HEADER_LEN)
      : pseudoHeader4(info.dstAddr, info.srcAddr, IPPROTO_TCP, TCP_HEADER_LEN);
  set16(out, t + 16, checksum(out, t, TCP_HEADER_LEN, pseudo));
  return info.version === 6 ? RST6_LEN : RST_LEN;
}
