/**
 * IPv4 header (RFC 791 §3.1).
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |Version|  IHL  |   DSCP    |ECN|          Total Length         |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |         Identification        |Flags|      Fragment Offset    |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |  Time to Live |    Protocol   |         Header Checksum       |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                       Source Address                          |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                    Destination Address                        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                    Options                    |    Padding    |
 *
 * `Ipv4Packet` is a view over (buf, off): accessors read and write the buffer in
 * place and never allocate. It trusts that the bytes it touches exist; untrusted
 * input goes through `checkPacket` (parse.ts) first. `Ipv4Repr` is the plain record
 * for tests and the control plane.
 */

import { checksum, sum16 } from '../checksum/sum.js';
import { get16, get32, set16, set32 } from './bytes.js';
import { WireError } from './error.js';

export const IPV4_OFF_VER_IHL = 0;
export const IPV4_OFF_DSCP_ECN = 1;
export const IPV4_OFF_TOTAL_LEN = 2;
export const IPV4_OFF_IDENT = 4;
export const IPV4_OFF_FLAGS_FRAG = 6;
export const IPV4_OFF_TTL = 8;
export const IPV4_OFF_PROTOCOL = 9;
export const IPV4_OFF_CHECKSUM = 10;
export const IPV4_OFF_SRC = 12;
export const IPV4_OFF_DST = 16;
export const IPV4_HEADER_LEN = IPV4_OFF_DST + 4;
export const IPV4_MAX_HEADER_LEN = 60;

const FLAG_DF = 0x4000;
const FLAG_MF = 0x2000;
const FRAG_OFFSET_MASK = 0x1fff;

/** IP protocol numbers (IANA). */
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;

export class Ipv4Packet {
  buf: Uint8Array;
  off: number;

  constructor(buf: Uint8Array = new Uint8Array(0), off = 0) {
    this.buf = buf;
    this.off = off;
  }

  /** Re-target this view; a hot loop keeps one view and attaches it per packet. */
  attach(buf: Uint8Array, off: number): this {
    this.buf = buf;
    this.off = off;
    return this;
  }

  version(): number {
    return this.buf[this.off + IPV4_OFF_VER_IHL]! >>> 4;
  }
  /** Internet Header Length, in 32-bit words. */
  ihl(): number {
    return this.buf[this.off + IPV4_OFF_VER_IHL]! & 0x0f;
  }
  headerLen(): number {
    return this.ihl() << 2;
  }
  dscp(): number {
    return this.buf[this.off + IPV4_OFF_DSCP_ECN]! >>> 2;
  }
  ecn(): number {
    return this.buf[this.off + IPV4_OFF_DSCP_ECN]! & 0x03;
  }
  totalLen(): number {
    return get16(this.buf, this.off + IPV4_OFF_TOTAL_LEN);
  }
  ident(): number {
    return get16(this.buf, this.off + IPV4_OFF_IDENT);
  }
  dontFragment(): boolean {
    return (get16(this.buf, this.off + IPV4_OFF_FLAGS_FRAG) & FLAG_DF) !== 0;
  }
  moreFragments(): boolean {
    return (get16(this.buf, this.off + IPV4_OFF_FLAGS_FRAG) & FLAG_MF) !== 0;
  }
  /** Fragment offset in bytes (the field counts 8-byte units). */
  fragOffset(): number {
    return (get16(this.buf, this.off + IPV4_OFF_FLAGS_FRAG) & FRAG_OFFSET_MASK) << 3;
  }
  /** True for any piece of a fragmented datagram (MF set or a non-zero offset). */
  isFragment(): boolean {
    return (get16(this.buf, this.off + IPV4_OFF_FLAGS_FRAG) & (FLAG_MF | FRAG_OFFSET_MASK)) !== 0;
  }
  ttl(): number {
    return this.buf[this.off + IPV4_OFF_TTL]!;
  }
  protocol(): number {
    return this.buf[this.off + IPV4_OFF_PROTOCOL]!;
  }
  checksum(): number {
    return get16(this.buf, this.off + IPV4_OFF_CHECKSUM);
  }
  srcAddr(): number {
    return get32(this.buf, this.off + IPV4_OFF_SRC);
  }
  dstAddr(): number {
    return get32(this.buf, this.off + IPV4_OFF_DST);
  }
  payloadOff(): number {
    return this.off + this.headerLen();
  }
  payloadLen(): number {
    return this.totalLen() - this.headerLen();
  }

  setVersionAndIhl(version: number, ihl: number): void {
    this.buf[this.off + IPV4_OFF_VER_IHL] = ((version & 0x0f) << 4) | (ihl & 0x0f);
  }
  setDscpEcn(dscp: number, ecn: number): void {
    this.buf[this.off + IPV4_OFF_DSCP_ECN] = ((dscp & 0x3f) << 2) | (ecn & 0x03);
  }
  setTotalLen(v: number): void {
    set16(this.buf, this.off + IPV4_OFF_TOTAL_LEN, v);
  }
  setIdent(v: number): void {
    set16(this.buf, this.off + IPV4_OFF_IDENT, v);
  }
  /** Flags and offset together; `fragOffset` in bytes, a multiple of 8. */
  setFragment(dontFragment: boolean, moreFragments: boolean, fragOffset: number): void {
    const v =
      (dontFragment ? FLAG_DF : 0) |
      (moreFragments ? FLAG_MF : 0) |
      ((fragOffset >>> 3) & FRAG_OFFSET_MASK);
    set16(this.buf, this.off + IPV4_OFF_FLAGS_FRAG, v);
  }
  setTtl(v: number): void {
    this.buf[this.off + IPV4_OFF_TTL] = v;
  }
  setProtocol(v: number): void {
    this.buf[this.off + IPV4_OFF_PROTOCOL] = v;
  }
  setChecksum(v: number): void {
    set16(this.buf, this.off + IPV4_OFF_CHECKSUM, v);
  }
  /** Raw setters: they leave the checksums alone (see wire/rewrite.ts for the updating ones). */
  setSrcAddr(a: number): void {
    set32(this.buf, this.off + IPV4_OFF_SRC, a);
  }
  setDstAddr(a: number): void {
    set32(this.buf, this.off + IPV4_OFF_DST, a);
  }

  /** Compute and store the header checksum over the whole header (options included). */
  fillChecksum(): void {
    this.setChecksum(0);
    this.setChecksum(checksum(this.buf, this.off, this.headerLen()));
  }
  /** A header with a correct checksum sums to 0xffff (RFC 1071 §1). */
  verifyChecksum(): boolean {
    return sum16(this.buf, this.off, this.headerLen()) === 0xffff;
  }
}

/** Plain IPv4 header record (no options) for tests and the control plane. */
export interface Ipv4Repr {
  srcAddr: number;
  dstAddr: number;
  protocol: number;
  /** Length of what follows the header. */
  payloadLen: number;
  ttl: number;
  ident: number;
  dscp: number;
  ecn: number;
  dontFragment: boolean;
  moreFragments: boolean;
  /** In bytes, a multiple of 8. */
  fragOffset: number;
}

export const Ipv4Repr = {
  defaults(
    p: Partial<Ipv4Repr> & Pick<Ipv4Repr, 'srcAddr' | 'dstAddr' | 'protocol' | 'payloadLen'>,
  ): Ipv4Repr {
    return {
      ttl: 64,
      ident: 0,
      dscp: 0,
      ecn: 0,
      dontFragment: true,
      moreFragments: false,
      fragOffset: 0,
      ...p,
    };
  },

  /** Parse a header that `checkPacket` accepted; refuses a bad checksum. */
  parse(v: Ipv4Packet): Ipv4Repr {
    if (v.version() !== 4)
      throw new WireError('ERR_IP_VERSION', `not IPv4: version ${v.version()}`);
    if (!v.verifyChecksum()) {
      throw new WireError(
        'ERR_CHECKSUM',
        `bad IPv4 header checksum 0x${v.checksum().toString(16)}`,
      );
    }
    return {
      srcAddr: v.srcAddr(),
      dstAddr: v.dstAddr(),
      protocol: v.protocol(),
      payloadLen: v.payloadLen(),
      ttl: v.ttl(),
      ident: v.ident(),
      dscp: v.dscp(),
      ecn: v.ecn(),
      dontFragment: v.dontFragment(),
      moreFragments: v.moreFragments(),
      fragOffset: v.fragOffset(),
    };
  },

  bufferLen(r: Ipv4Repr): number {
    return IPV4_HEADER_LEN + r.payloadLen;
  },

  /** Write a 20-byte header with its checksum; the payload is the caller's. */
  emit(r: Ipv4Repr, v: Ipv4Packet): void {
    v.setVersionAndIhl(4, IPV4_HEADER_LEN >>> 2);
    v.setDscpEcn(r.dscp, r.ecn);
    v.setTotalLen(IPV4_HEADER_LEN + r.payloadLen);
    v.setIdent(r.ident);
    v.setFragment(r.dontFragment, r.moreFragments, r.fragOffset);
    v.setTtl(r.ttl);
    v.setProtocol(r.protocol);
    v.setSrcAddr(r.srcAddr);
    v.setDstAddr(r.dstAddr);
    v.fillChecksum();
  },
};
