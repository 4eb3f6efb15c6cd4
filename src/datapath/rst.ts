/**
 * Build the TCP RST with which vpm refuses a SYN it cannot place (no selector, no
 * instance, table full): from the virtual service back to the client, as RFC 9293
 * §3.10.7.1 has a closed port answer a SYN: SEQ=0, ACK=SEG.SEQ+SEG.LEN(+1 for the
 * SYN), flags RST|ACK. Written straight into a preallocated buffer; no allocation.
 */

import { pseudoHeader4 } from '../checksum/pseudo.js';
import { checksum } from '../checksum/sum.js';
import { get32, set16, set32 } from '../wire/bytes.js';
import { IPPROTO_TCP, IPV4_HEADER_LEN } from '../wire/ipv4.js';
import type { PacketInfo } from '../wire/parse.js';
import { TCP_ACK, TCP_FIN, TCP_HEADER_LEN, TCP_RST, TCP_SYN } from '../wire/tcp.js';

export const RST_LEN = IPV4_HEADER_LEN + TCP_HEADER_LEN;

/** Write a RST answering the packet described by `info` (in `inBuf`) at `out[o]`. Returns its length. */
export function writeRst(inBuf: Uint8Array, info: PacketInfo, out: Uint8Array, o: number): number {
  const l4 = info.l4Off;
  const flags = info.tcpFlags;
  let segLen = info.payloadLen;
  if (flags & TCP_SYN) segLen++;
  if (flags & TCP_FIN) segLen++;
  const ack = (get32(inBuf, l4 + 4) + segLen) >>> 0;

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

  // TCP header.
  const t = o + IPV4_HEADER_LEN;
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
  const pseudo = pseudoHeader4(info.dstAddr, info.srcAddr, IPPROTO_TCP, TCP_HEADER_LEN);
  set16(out, t + 16, checksum(out, t, TCP_HEADER_LEN, pseudo));
  return RST_LEN;
}
