/**
 * ICMP that vpm itself sends: the port unreachable with which a virtual service
 * answers a UDP datagram it cannot place (as a host answers a datagram to a closed
 * port), and the rate limit on everything vpm sends of ICMP.
 *
 * The error is built as Linux's icmp_send builds one (RFC 1812 §4.3.2.3): from
 * the address the datagram was sent to, to its source, quoting as much of the
 * offending datagram as fits in 576 bytes, TOS "internetwork control", TTL 64.
 * Written straight into a preallocated buffer; no allocation.
 */

import { checksum } from '../checksum/sum.js';
import { set16, set32 } from '../wire/bytes.js';
import { ICMP_HEADER_LEN } from '../wire/icmp.js';
import {
  IPPROTO_ICMP,
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
import type { PacketInfo } from '../wire/parse.js';

/** The longest ICMP error vpm writes (RFC 1812: at most 576 bytes in all). */
export const ICMP_ERROR_MAX = 576;
const QUOTE_MAX = ICMP_ERROR_MAX - IPV4_HEADER_LEN - ICMP_HEADER_LEN;
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
