/**
 * ICMP for IPv4 (RFC 792).
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |     Type      |     Code      |          Checksum             |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                     Rest of Header                            |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                     Data ...
 *
 * The checksum covers the whole ICMP message and has no pseudo-header, so an IPv4
 * address rewrite leaves it alone. For echo, Rest of Header is identifier and
 * sequence number; for errors (destination unreachable, time exceeded) it is unused
 * or carries the next-hop MTU, and the data is the offending IP header plus 8 bytes.
 */

import { checksum, sum16 } from '../checksum/sum.js';
import { copyOf, get16, get32, set16, set32 } from './bytes.js';
import { WireError } from './error.js';

export const ICMP_OFF_TYPE = 0;
export const ICMP_OFF_CODE = 1;
export const ICMP_OFF_CHECKSUM = 2;
export const ICMP_OFF_REST = 4;
export const ICMP_HEADER_LEN = ICMP_OFF_REST + 4;

export const ICMP_ECHO_REPLY = 0;
export const ICMP_DEST_UNREACHABLE = 3;
export const ICMP_SOURCE_QUENCH = 4;
export const ICMP_ECHO_REQUEST = 8;
export const ICMP_TIME_EXCEEDED = 11;
export const ICMP_PARAMETER_PROBLEM = 12;
/** Destination unreachable codes. */
export const ICMP_PORT_UNREACHABLE = 3;
export const ICMP_FRAG_NEEDED = 4;

/** The error messages that quote an offending IP header (RFC 792, RFC 5508 REQ-3/4). */
export function isIcmpError(type: number): boolean {
  return (
    type === ICMP_DEST_UNREACHABLE ||
    type === ICMP_SOURCE_QUENCH ||
    type === ICMP_TIME_EXCEEDED ||
    type === ICMP_PARAMETER_PROBLEM
  );
}

/**
 * ICMPv6 (RFC 4443): the same 8-byte layout (type, code, checksum, 4 bytes), but
 * the checksum covers the IPv6 pseudo-header too (RFC 8200 §8.1), so an address
 * rewrite must update it. Types below 128 are errors, from 128 informational.
 */
export const ICMP6_DEST_UNREACHABLE = 1;
export const ICMP6_PACKET_TOO_BIG = 2;
export const ICMP6_TIME_EXCEEDED = 3;
export const ICMP6_PARAMETER_PROBLEM = 4;
export const ICMP6_ECHO_REQUEST = 128;
export const ICMP6_ECHO_REPLY = 129;
/** Destination unreachable codes. */
export const ICMP6_PORT_UNREACHABLE = 4;
/** MLD (RFC 2710): query, report, done; MLDv2 report (RFC 3810). */
export const ICMP6_MLD_QUERY = 130;
export const ICMP6_MLD_REPORT = 131;
export const ICMP6_MLD_DONE = 132;
export const ICMP6_MLD2_REPORT = 143;
/** Neighbour discovery (RFC 4861): router/neighbour solicitation/advertisement, redirect. */
export const ICMP6_ROUTER_SOLICIT = 133;
export const ICMP6_REDIRECT = 137;

/** The ICMPv6 errors that quote an offending packet and are translated (RFC 4443 §3). */
export function isIcmp6Error(type: number): boolean {
  return type >= ICMP6_DEST_UNREACHABLE && type <= ICMP6_PARAMETER_PROBLEM;
}

/**
 * Neighbour discovery and router chatter: RFC 4861 (133-137), inverse ND
 * (RFC 3122: 141, 142), SEND certification paths (RFC 3971: 148, 149),
 * multicast router discovery (RFC 4286: 151-153).
 */
export function isIcmp6NeighbourDiscovery(type: number): boolean {
  return (
    (type >= ICMP6_ROUTER_SOLICIT && type <= ICMP6_REDIRECT) ||
    type === 141 ||
    type === 142 ||
    type === 148 ||
    type === 149 ||
    (type >= 151 && type <= 153)
  );
}

/** Multicast listener discovery: MLD query, report, done, MLDv2 report. */
export function isIcmp6Mld(type: number): boolean {
  return (type >= ICMP6_MLD_QUERY && type <= ICMP6_MLD_DONE) || type === ICMP6_MLD2_REPORT;
}

export class IcmpPacket {
  buf: Uint8Array;
  off: number;
  len: number;

  constructor(buf: Uint8Array = new Uint8Array(0), off = 0, len = buf.length - off) {
    this.buf = buf;
    this.off = off;
    this.len = len;
  }

  attach(buf: Uint8Array, off: number, len: number): this {
    this.buf = buf;
    this.off = off;
    this.len = len;
    return this;
  }

  msgType(): number {
    return this.buf[this.off + ICMP_OFF_TYPE]!;
  }
  code(): number {
    return this.buf[this.off + ICMP_OFF_CODE]!;
  }
  checksum(): number {
    return get16(this.buf, this.off + ICMP_OFF_CHECKSUM);
  }
  restOfHeader(): number {
    return get32(this.buf, this.off + ICMP_OFF_REST);
  }
  /** Echo identifier (echo request/reply only). */
  echoIdent(): number {
    return get16(this.buf, this.off + ICMP_OFF_REST);
  }
  echoSeq(): number {
    return get16(this.buf, this.off + ICMP_OFF_REST + 2);
  }
  dataOff(): number {
    return this.off + ICMP_HEADER_LEN;
  }
  dataLen(): number {
    return this.len - ICMP_HEADER_LEN;
  }

  setMsgType(v: number): void {
    this.buf[this.off + ICMP_OFF_TYPE] = v;
  }
  setCode(v: number): void {
    this.buf[this.off + ICMP_OFF_CODE] = v;
  }
  setChecksum(v: number): void {
    set16(this.buf, this.off + ICMP_OFF_CHECKSUM, v);
  }
  setRestOfHeader(v: number): void {
    set32(this.buf, this.off + ICMP_OFF_REST, v);
  }

  fillChecksum(): void {
    this.setChecksum(0);
    this.setChecksum(checksum(this.buf, this.off, this.len));
  }
  verifyChecksum(): boolean {
    return sum16(this.buf, this.off, this.len) === 0xffff;
  }
}

export interface IcmpRepr {
  msgType: number;
  code: number;
  restOfHeader: number;
  data: Uint8Array;
}

export const IcmpRepr = {
  parse(v: IcmpPacket): IcmpRepr {
    if (v.len < ICMP_HEADER_LEN)
      throw new WireError('ERR_TRUNCATED', `ICMP message of ${v.len} bytes`);
    if (!v.verifyChecksum()) {
      throw new WireError('ERR_CHECKSUM', `bad ICMP checksum 0x${v.checksum().toString(16)}`);
    }
    return {
      msgType: v.msgType(),
      code: v.code(),
      restOfHeader: v.restOfHeader(),
      data: copyOf(v.buf, v.dataOff(), v.off + v.len),
    };
  },

  bufferLen(r: IcmpRepr): number {
    return ICMP_HEADER_LEN + r.data.length;
  },

  emit(r: IcmpRepr, v: IcmpPacket): void {
    v.setMsgType(r.msgType);
    v.setCode(r.code);
    v.setRestOfHeader(r.restOfHeader);
    v.buf.set(r.data, v.dataOff());
    v.fillChecksum();
  },
};
