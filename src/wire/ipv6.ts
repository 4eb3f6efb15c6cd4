/**
 * IPv6 fixed header (RFC 8200 §3) and the extension headers the checked parser
 * walks (§4): hop-by-hop options, routing, destination options (each `Hdr Ext
 * Len` 8-octet units after the first 8), and the fragment header (8 bytes):
 *
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |  Next Header  |  Hdr Ext Len  |  (options, routing data ...)  |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |  Next Header  |   Reserved    |      Fragment Offset    |Res|M|
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                         Identification                        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * The view covers the fixed header; the walk itself is in parse.ts.
 *
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |Version| Traffic Class |           Flow Label                  |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |         Payload Length        |  Next Header  |   Hop Limit   |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                     Source Address (128 bits)                 |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                  Destination Address (128 bits)               |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */

import { copyOf, get16, get32, set16, set32 } from './bytes.js';
import { WireError } from './error.js';

export const IPV6_OFF_VER_TC_FLOW = 0;
export const IPV6_OFF_PAYLOAD_LEN = 4;
export const IPV6_OFF_NEXT_HEADER = 6;
export const IPV6_OFF_HOP_LIMIT = 7;
export const IPV6_OFF_SRC = 8;
export const IPV6_OFF_DST = 24;
export const IPV6_HEADER_LEN = IPV6_OFF_DST + 16;

/** Next-header values of the extension headers walked (IANA). */
export const IPV6_NH_HOP_BY_HOP = 0;
export const IPV6_NH_ROUTING = 43;
export const IPV6_NH_FRAGMENT = 44;
export const IPV6_NH_NO_NEXT = 59;
export const IPV6_NH_DEST_OPTS = 60;

/** Hop-by-hop, routing and destination options: next header, length in 8-octet units beyond the first 8. */
export const IPV6_EXT_OFF_NEXT_HEADER = 0;
export const IPV6_EXT_OFF_LEN = 1;
export const IPV6_EXT_MIN_LEN = 8;
/** Routing header: Segments Left. */
export const IPV6_RH_OFF_SEGMENTS_LEFT = 3;
/** Fragment header fields. */
export const IPV6_FRAG_OFF_NEXT_HEADER = 0;
export const IPV6_FRAG_OFF_OFFSET_FLAGS = 2;
export const IPV6_FRAG_OFF_IDENT = 4;
export const IPV6_FRAG_HEADER_LEN = IPV6_FRAG_OFF_IDENT + 4;
/** In the 16-bit offset/flags word: the offset (already in bytes: 8-octet units << 3) and M. */
export const IPV6_FRAG_OFFSET_MASK = 0xfff8;
export const IPV6_FRAG_MORE = 0x0001;
/** Most extension headers the checked parser walks before it gives up (a bound on work per packet). */
export const IPV6_MAX_EXT_HEADERS = 8;

export class Ipv6Header {
  buf: Uint8Array;
  off: number;

  constructor(buf: Uint8Array = new Uint8Array(0), off = 0) {
    this.buf = buf;
    this.off = off;
  }

  attach(buf: Uint8Array, off: number): this {
    this.buf = buf;
    this.off = off;
    return this;
  }

  version(): number {
    return this.buf[this.off]! >>> 4;
  }
  trafficClass(): number {
    return (get16(this.buf, this.off) >>> 4) & 0xff;
  }
  flowLabel(): number {
    return get32(this.buf, this.off) & 0xfffff;
  }
  payloadLen(): number {
    return get16(this.buf, this.off + IPV6_OFF_PAYLOAD_LEN);
  }
  nextHeader(): number {
    return this.buf[this.off + IPV6_OFF_NEXT_HEADER]!;
  }
  hopLimit(): number {
    return this.buf[this.off + IPV6_OFF_HOP_LIMIT]!;
  }
  srcAddrOff(): number {
    return this.off + IPV6_OFF_SRC;
  }
  dstAddrOff(): number {
    return this.off + IPV6_OFF_DST;
  }
  payloadOff(): number {
    return this.off + IPV6_HEADER_LEN;
  }

  setVersionTcFlow(trafficClass: number, flowLabel: number): void {
    set32(
      this.buf,
      this.off,
      ((6 << 28) | ((trafficClass & 0xff) << 20) | (flowLabel & 0xfffff)) >>> 0,
    );
  }
  setPayloadLen(v: number): void {
    set16(this.buf, this.off + IPV6_OFF_PAYLOAD_LEN, v);
  }
  setNextHeader(v: number): void {
    this.buf[this.off + IPV6_OFF_NEXT_HEADER] = v;
  }
  setHopLimit(v: number): void {
    this.buf[this.off + IPV6_OFF_HOP_LIMIT] = v;
  }
}

export interface Ipv6Repr {
  /** 16 bytes each. */
  srcAddr: Uint8Array;
  dstAddr: Uint8Array;
  nextHeader: number;
  payloadLen: number;
  hopLimit: number;
  trafficClass: number;
  flowLabel: number;
}

export const Ipv6Repr = {
  parse(v: Ipv6Header): Ipv6Repr {
    if (v.version() !== 6)
      throw new WireError('ERR_IP_VERSION', `not IPv6: version ${v.version()}`);
    return {
      srcAddr: copyOf(v.buf, v.srcAddrOff(), v.srcAddrOff() + 16),
      dstAddr: copyOf(v.buf, v.dstAddrOff(), v.dstAddrOff() + 16),
      nextHeader: v.nextHeader(),
      payloadLen: v.payloadLen(),
      hopLimit: v.hopLimit(),
      trafficClass: v.trafficClass(),
      flowLabel: v.flowLabel(),
    };
  },

  bufferLen(r: Ipv6Repr): number {
    return IPV6_HEADER_LEN + r.payloadLen;
  },

  emit(r: Ipv6Repr, v: Ipv6Header): void {
    if (r.srcAddr.length !== 16 || r.dstAddr.length !== 16) {
      throw new WireError('ERR_IPV6_ADDR', 'IPv6 addresses must be 16 bytes');
    }
    v.setVersionTcFlow(r.trafficClass, r.flowLabel);
    v.setPayloadLen(r.payloadLen);
    v.setNextHeader(r.nextHeader);
    v.setHopLimit(r.hopLimit);
    v.buf.set(r.srcAddr, v.srcAddrOff());
    v.buf.set(r.dstAddr, v.dstAddrOff());
  },
};
