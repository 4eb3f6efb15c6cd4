/**
 * Software segmentation: what the kernel does with a super-packet (a GSO packet,
 * virtio-net gso_type TCPV4/TCPV6/UDP_L4) before it goes on a wire, written to
 * be obviously correct rather than fast. It is the reference twin of every
 * rewrite of a super-packet (segmenting the rewritten super-packet must give,
 * byte for byte, the rewritten segments), and the data plane's rare path when
 * the kernel refuses to take a super-packet back.
 *
 * For a super-packet of payload P with gso_size S there are n = ceil(P / S)
 * segments; segment i carries payload bytes [i*S, min((i+1)*S, P)) behind a copy
 * of all headers, with (Linux tcp_gso_segment, __udp_gso_segment, inet_gso_segment):
 *  - IPv4: total length of the segment, identification id + i (mod 2^16), a
 *    freshly computed header checksum;
 *  - IPv6: payload length of the segment (extension headers copied as they are);
 *  - TCP: sequence number seq + i*S; FIN and PSH only on the last segment, CWR
 *    only on the first; every other field and the options as they are;
 *  - UDP: length of the segment;
 *  - a complete L4 checksum (whatever the super-packet's field held: a partial
 *    sum, typically), UDP's 0 sent as 0xffff.
 * Each segment is written into `out` behind `headroom` zero bytes (an all-zero
 * virtio-net header: a plain packet with a complete checksum).
 */

import { pseudoHeader4, pseudoHeader6 } from '../checksum/pseudo.js';
import { checksum } from '../checksum/sum.js';
import { get16, get32, set16, set32 } from './bytes.js';
import {
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_OFF_CHECKSUM,
  IPV4_OFF_IDENT,
  IPV4_OFF_TOTAL_LEN,
} from './ipv4.js';
import { IPV6_HEADER_LEN, IPV6_OFF_DST, IPV6_OFF_PAYLOAD_LEN, IPV6_OFF_SRC } from './ipv6.js';
import type { PacketInfo } from './parse.js';
import { TCP_CWR, TCP_FIN, TCP_OFF_CHECKSUM, TCP_OFF_FLAGS, TCP_OFF_SEQ, TCP_PSH } from './tcp.js';
import { UDP_OFF_CHECKSUM, UDP_OFF_LENGTH } from './udp.js';

/** Results below zero of `segmentSuperPacket`. */
export const SEGMENT_TOO_LARGE = -1;
export const SEGMENT_NOT_GSO = -2;

/** Bytes `segmentSuperPacket` writes for this super-packet: every segment's headers, payload and headroom. */
export function segmentedSize(info: PacketInfo, gsoSize: number, headroom: number): number {
  const n = info.payloadLen === 0 ? 1 : Math.ceil(info.payloadLen / gsoSize);
  const headers = info.l4Off - info.ipOff + info.l4HeaderLen;
  return n * (headroom + headers) + info.payloadLen;
}

/**
 * Segment the super-packet described by `info` (checked by checkPacket; TCP or
 * UDP, not a fragment) at gso_size `gsoSize` into `out` from `outOff`: segment k
 * at out[offsets[k] .. + lengths[k]), behind `headroom` zero bytes. Returns the
 * number of segments, SEGMENT_NOT_GSO when the packet cannot be segmented (no L4
 * header, gso_size 0, another protocol), or SEGMENT_TOO_LARGE when `out` or the
 * offset arrays are too small.
 */
export function segmentSuperPacket(
  buf: Uint8Array,
  info: PacketInfo,
  gsoSize: number,
  out: Uint8Array,
  outOff: number,
  headroom: number,
  offsets: Uint32Array,
  lengths: Uint32Array,
): number {
  const proto = info.protocol;
  if (info.l4Off < 0 || gsoSize <= 0 || (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP))
    return SEGMENT_NOT_GSO;
  const ipOff = info.ipOff;
  const ipHdrLen = info.l4Off - ipOff; // IPv6: fixed header and extension headers
  const l4HdrLen = info.l4HeaderLen;
  const hdrLen = ipHdrLen + l4HdrLen;
  const payload = info.payloadLen;
  const n = payload === 0 ? 1 : Math.ceil(payload / gsoSize);
  if (n > offsets.length || n > lengths.length) return SEGMENT_TOO_LARGE;
  if (outOff + segmentedSize(info, gsoSize, headroom) > out.length) return SEGMENT_TOO_LARGE;

  const v4 = info.version === 4;
  const id = v4 ? get16(buf, ipOff + IPV4_OFF_IDENT) : 0;
  const seq = proto === IPPROTO_TCP ? get32(buf, info.l4Off + TCP_OFF_SEQ) : 0;
  const flags = proto === IPPROTO_TCP ? buf[info.l4Off + TCP_OFF_FLAGS]! : 0;
  let at = outOff;
  for (let k = 0; k < n; k++) {
    const start = k * gsoSize;
    const chunk = Math.min(gsoSize, payload - start);
    out.fill(0, at, at + headroom);
    const ip = at + headroom;
    const l4 = ip + ipHdrLen;
    out.set(buf.subarray(ipOff, ipOff + hdrLen), ip);
    out.set(buf.subarray(info.payloadOff + start, info.payloadOff + start + chunk), l4 + l4HdrLen);
    const l4Len = l4HdrLen + chunk;

    let pseudo: number;
    if (v4) {
      set16(out, ip + IPV4_OFF_TOTAL_LEN, ipHdrLen + l4Len);
      set16(out, ip + IPV4_OFF_IDENT, (id + k) & 0xffff);
      set16(out, ip + IPV4_OFF_CHECKSUM, 0);
      set16(out, ip + IPV4_OFF_CHECKSUM, checksum(out, ip, ipHdrLen));
      pseudo = pseudoHeader4(info.srcAddr, info.dstAddr, proto, l4Len);
    } else {
      set16(out, ip + IPV6_OFF_PAYLOAD_LEN, ipHdrLen - IPV6_HEADER_LEN + l4Len);
      pseudo = pseudoHeader6(out, ip + IPV6_OFF_SRC, ip + IPV6_OFF_DST, proto, l4Len);
    }

    if (proto === IPPROTO_TCP) {
      set32(out, l4 + TCP_OFF_SEQ, (seq + start) >>> 0);
      let f = flags;
      if (k < n - 1) f &= ~(TCP_FIN | TCP_PSH);
      if (k > 0) f &= ~TCP_CWR;
      out[l4 + TCP_OFF_FLAGS] = f;
      set16(out, l4 + TCP_OFF_CHECKSUM, 0);
      set16(out, l4 + TCP_OFF_CHECKSUM, checksum(out, l4, l4Len, pseudo));
    } else {
      set16(out, l4 + UDP_OFF_LENGTH, l4Len);
      set16(out, l4 + UDP_OFF_CHECKSUM, 0);
      const c = checksum(out, l4, l4Len, pseudo);
      set16(out, l4 + UDP_OFF_CHECKSUM, c === 0 ? 0xffff : c);
    }
    offsets[k] = ip;
    lengths[k] = ipHdrLen + l4Len;
    at = ip + ipHdrLen + l4Len;
  }
  return n;
}
