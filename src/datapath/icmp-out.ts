/**
 * ICMP that vpm itself sends: the port unreachable with which a virtual service
 * answers a UDP datagram it cannot place (as a host answers a datagram to a closed
 * port), and the rate limit on everything vpm sends of ICMP.
 *
 * The error is built as Linux's icmp_send builds one (RFC 1812 §4.3.2.3): from
 * the address the datagram was sent to, to its source, quoting as much of the
 * offending datagram as fits in 576 bytes, TOS "internetwork control", TTL 64.
 * Written straight into a preallocated buffer; no allocation.
 *
 * Over IPv6 the port unreachable is ICMPv6 destination unreachable, code 4
 * (RFC 4443 §3.1), built as Linux's icmp6_send builds one: from the address the
 * datagram was sent to, to its source, hop limit 64, quoting as much of the
 * datagram as fits in the IPv6 minimum MTU (1280 bytes in all, RFC 4443
 * §2.4(c)), the checksum over the ICMPv6 pseudo-header.
 */

import { pseudoHeader6 } from '../checksum/pseudo.js';
import { checksum } from '../checksum/sum.js';
import { set16, set32 } from '../wire/bytes.js';
import { ICMP_HEADER_LEN } from '../wire/icmp.js';
import {
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPV4_HEADER_LEN,
  IPV4_OFF_CHECKSUM,
  IPV4_OFF_DSCP_ECN,
  IPV4_OFF_DST,
  IPV4_OFF_FLAGS_FRAG,
  IPV4_OFF_IDENT,
  IPV4_OFF_PROTOCOL,
  IPV4_OFF_SRC,
  IPV4_OFF_TOTAL_LEN,
  IPV4_OFF_TTL,
  IPV4_OFF_VER_IHL,
} from '../wire/ipv4.js';
import {
  IPV6_HEADER_LEN,
  IPV6_OFF_DST,
  IPV6_OFF_HOP_LIMIT,
  IPV6_OFF_NEXT_HEADER,
  IPV6_OFF_PAYLOAD_LEN,
  IPV6_OFF_SRC,
} from '../wire/ipv6.js';
import type { PacketInfo } from '../wire/parse.js';

/** The longest ICMP error vpm writes over IPv4 (RFC 1812: at most 576 bytes in all). */
export const ICMP_ERROR_MAX = 576;
const QUOTE_MAX = ICMP_ERROR_MAX - IPV4_HEADER_LEN - ICMP_HEADER_LEN;
/** The longest ICMPv6 error vpm writes (RFC 4443 §2.4(c): the IPv6 minimum MTU). */
export const ICMP6_ERROR_MAX = 1280;
const QUOTE6_MAX = ICMP6_ERROR_MAX - IPV6_HEADER_LEN - ICMP_HEADER_LEN;
/** Room for an ICMP error of either family. */
export const ICMP_OUT_MAX = ICMP6_ERROR_MAX;

/** IPTOS_PREC_INTERNETCONTROL, as Linux marks its ICMP errors. */
const TOS_INTERNETCONTROL = 0xc0;

/**
 * Write the ICMP error (type, code) about the IPv4 packet `info` describes (in
 * `inBuf`) at `out[o]`: from the packet's destination to its source. Returns its
 * length.
 */
export function writeIcmpError(
  inBuf: Uint8Array,
  info: PacketInfo,
  type: number,
  code: number,
  out: Uint8Array,
  o: number,
): number {
  const quote = Math.min(info.ipTotalLen, QUOTE_MAX);
  const total = IPV4_HEADER_LEN + ICMP_HEADER_LEN + quote;
  out[o + IPV4_OFF_VER_IHL] = 0x45;
  out[o + IPV4_OFF_DSCP_ECN] = TOS_INTERNETCONTROL;
  set16(out, o + IPV4_OFF_TOTAL_LEN, total);
  set16(out, o + IPV4_OFF_IDENT, 0);
  set16(out, o + IPV4_OFF_FLAGS_FRAG, 0);
  out[o + IPV4_OFF_TTL] = 64;
  out[o + IPV4_OFF_PROTOCOL] = IPPROTO_ICMP;
  set16(out, o + IPV4_OFF_CHECKSUM, 0);
  set32(out, o + IPV4_OFF_SRC, info.dstAddr);
  set32(out, o + IPV4_OFF_DST, info.srcAddr);
  set16(out, o + IPV4_OFF_CHECKSUM, checksum(out, o, IPV4_HEADER_LEN));
  const m = o + IPV4_HEADER_LEN;
  out[m] = type;
  out[m + 1] = code;
  set16(out, m + 2, 0);
  set32(out, m + 4, 0);
  out.set(inBuf.subarray(info.ipOff, info.ipOff + quote), m + ICMP_HEADER_LEN);
  set16(out, m + 2, checksum(out, m, ICMP_HEADER_LEN + quote));
  return total;
}

/**
 * Write the ICMPv6 error (type, code) about the IPv6 packet `info` describes (in
 * `inBuf`) at `out[o]`: from the packet's destination to its source, the 4
 * bytes after the checksum zero (unused). Returns its length.
 */
export function writeIcmp6Error(
  inBuf: Uint8Array,
  info: PacketInfo,
  type: number,
  code: number,
  out: Uint8Array,
  o: number,
): number {
  const quote = Math.min(info.ipTotalLen, QUOTE6_MAX);
  const icmpLen = ICMP_HEADER_LEN + quote;
  set32(out, o, 0x60000000);
  set16(out, o + IPV6_OFF_PAYLOAD_LEN, icmpLen);
  out[o + IPV6_OFF_NEXT_HEADER] = IPPROTO_ICMPV6;
  out[o + IPV6_OFF_HOP_LIMIT] = 64;
  for (let i = 0; i < 16; i++) {
    out[o + IPV6_OFF_SRC + i] = inBuf[info.dstOff + i]!;
    out[o + IPV6_OFF_DST + i] = inBuf[info.srcOff + i]!;
  }
  const m = o + IPV6_HEADER_LEN;
  out[m] = type;
  out[m + 1] = code;
  set16(out, m + 2, 0);
  set32(out, m + 4, 0);
  out.set(inBuf.subarray(info.ipOff, info.ipOff + quote), m + ICMP_HEADER_LEN);
  const pseudo = pseudoHeader6(out, o + IPV6_OFF_SRC, o + IPV6_OFF_DST, IPPROTO_ICMPV6, icmpLen);
  set16(out, m + 2, checksum(out, m, icmpLen, pseudo));
  return IPV6_HEADER_LEN + icmpLen;
}

/**
 * A token bucket: `perSecond` tokens a second, at most `burst` saved up (Linux's
 * net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst work so, with 1000 and 50).
 * `now` in milliseconds, monotonic.
 */
export class TokenBucket {
  private tokens: number;
  private last = Number.NaN;
  private rate = 0;
  private burst = 1;

  constructor(perSecond: number) {
    this.setRate(perSecond);
    this.tokens = this.burst;
  }

  /** Change the rate (config reload); the burst is a twentieth of it, at least 1. */
  setRate(perSecond: number): void {
    this.rate = perSecond / 1000;
    this.burst = Math.max(1, Math.floor(perSecond / 20));
    if (this.tokens > this.burst) this.tokens = this.burst;
  }

  /** Take a token if there is one. */
  take(now: number): boolean {
    if (!Number.isNaN(this.last)) {
      const t = this.tokens + (now - this.last) * this.rate;
      this.tokens = Math.min(t, this.burst);
    }
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
