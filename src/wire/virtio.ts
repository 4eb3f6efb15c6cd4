/**
 * The virtio-net header (struct virtio_net_hdr, include/uapi/linux/virtio_net.h)
 * that precedes every packet on a TUN opened with IFF_VNET_HDR:
 *
 *     0       1       2               4               6               8              10
 *    +-------+-------+---------------+---------------+---------------+---------------+
 *    | flags |  gso  |    hdr_len    |   gso_size    |  csum_start   |  csum_offset  |
 *    |       | type  |               |               |               |               |
 *    +-------+-------+---------------+---------------+---------------+---------------+
 *
 * The 16-bit fields are little-endian: vpm sets TUNSETVNETLE, which is the host's
 * own order on every little-endian host and the same bytes on a big-endian one.
 *
 * What the kernel says with it on read (virtio_net_hdr_from_skb):
 *  - flags NEEDS_CSUM: the packet's checksum is partial (CHECKSUM_PARTIAL): the L4
 *    checksum field at csum_start + csum_offset holds the folded, uncomplemented
 *    pseudo-header sum, and whoever sends the packet on sums [csum_start, end).
 *    Offsets count from the start of the IP packet (IFF_NO_PI).
 *  - flags DATA_VALID: the checksum was verified by the kernel (CHECKSUM_UNNECESSARY).
 *  - gso_type TCPV4/TCPV6/UDP_L4 (ECN bit with TCP): a super-packet of up to 64 KiB
 *    that stands for segments of gso_size payload bytes each (the last may be
 *    shorter); always with NEEDS_CSUM.
 *  - hdr_len: a hint of how much is linear. Never trusted (wireguard-go
 *    tun/offload_linux.go: it can be the whole first packet on the forward path);
 *    vpm recomputes it before writing (`headerLength`).
 * On write the kernel takes the same header back (__virtio_net_hdr_to_skb):
 * GSO needs gso_size > 0, TCP with NEEDS_CSUM needs csum_offset 16, UDP_L4 needs
 * NEEDS_CSUM and csum_offset 6; a super-packet is marked SKB_GSO_DODGY and the
 * kernel segments it where needed.
 *
 * `checkVnetHdr` is the one way a header read from the device is validated
 * against the packet `checkPacket` parsed: it never throws or allocates.
 */

import { get16le, set16le } from './bytes.js';
import { IPPROTO_TCP, IPPROTO_UDP } from './ipv4.js';
import type { PacketInfo } from './parse.js';
import { TCP_OFF_CHECKSUM } from './tcp.js';
import { UDP_OFF_CHECKSUM } from './udp.js';

export const VNET_OFF_FLAGS = 0;
export const VNET_OFF_GSO_TYPE = 1;
export const VNET_OFF_HDR_LEN = 2;
export const VNET_OFF_GSO_SIZE = 4;
export const VNET_OFF_CSUM_START = 6;
export const VNET_OFF_CSUM_OFFSET = 8;
export const VNET_HDR_LEN = VNET_OFF_CSUM_OFFSET + 2;

/** flags */
export const VNET_F_NEEDS_CSUM = 1;
export const VNET_F_DATA_VALID = 2;

/** gso_type */
export const VNET_GSO_NONE = 0;
export const VNET_GSO_TCPV4 = 1;
/** UFO (IPv4 UDP fragmentation offload): never asked for (no TUN_F_UFO), refused. */
export const VNET_GSO_UDP = 3;
export const VNET_GSO_TCPV6 = 4;
export const VNET_GSO_UDP_L4 = 5;
export const VNET_GSO_ECN = 0x80;

/** Results of `checkVnetHdr`; the pipeline counts each as a drop reason. */
export const VnetCheck = {
  OK: 0,
  /** Flag bits other than NEEDS_CSUM or DATA_VALID, or both at once. */
  BAD_FLAGS: 1,
  /** A gso_type that is none of NONE, TCPV4, TCPV6, UDP_L4 (ECN only with TCP). */
  BAD_GSO_TYPE: 2,
  /** A super-packet that does not fit its gso_type (family, protocol), has gso_size 0, or no NEEDS_CSUM. */
  BAD_GSO: 3,
  /** NEEDS_CSUM whose csum_start/csum_offset are not the TCP or UDP checksum field of the packet. */
  BAD_CSUM: 4,
} as const;
export type VnetCheckCode = (typeof VnetCheck)[keyof typeof VnetCheck];

/** A view of one virtio-net header at `buf[off]` (unchecked: the caller owns the 10 bytes). */
export class VirtioNetHdr {
  buf: Uint8Array;
  off: number;

  constructor(buf: Uint8Array = new Uint8Array(VNET_HDR_LEN), off = 0) {
    this.buf = buf;
    this.off = off;
  }

  attach(buf: Uint8Array, off: number): this {
    this.buf = buf;
    this.off = off;
    return this;
  }

  flags(): number {
    return this.buf[this.off + VNET_OFF_FLAGS]!;
  }
  gsoType(): number {
    return this.buf[this.off + VNET_OFF_GSO_TYPE]!;
  }
  hdrLen(): number {
    return get16le(this.buf, this.off + VNET_OFF_HDR_LEN);
  }
  gsoSize(): number {
    return get16le(this.buf, this.off + VNET_OFF_GSO_SIZE);
  }
  csumStart(): number {
    return get16le(this.buf, this.off + VNET_OFF_CSUM_START);
  }
  csumOffset(): number {
    return get16le(this.buf, this.off + VNET_OFF_CSUM_OFFSET);
  }
  needsCsum(): boolean {
    return (this.flags() & VNET_F_NEEDS_CSUM) !== 0;
  }
  dataValid(): boolean {
    return (this.flags() & VNET_F_DATA_VALID) !== 0;
  }
  isGso(): boolean {
    return this.gsoType() !== VNET_GSO_NONE;
  }

  setFlags(v: number): void {
    this.buf[this.off + VNET_OFF_FLAGS] = v;
  }
  setGsoType(v: number): void {
    this.buf[this.off + VNET_OFF_GSO_TYPE] = v;
  }
  setHdrLen(v: number): void {
    set16le(this.buf, this.off + VNET_OFF_HDR_LEN, v);
  }
  setGsoSize(v: number): void {
    set16le(this.buf, this.off + VNET_OFF_GSO_SIZE, v);
  }
  setCsumStart(v: number): void {
    set16le(this.buf, this.off + VNET_OFF_CSUM_START, v);
  }
  setCsumOffset(v: number): void {
    set16le(this.buf, this.off + VNET_OFF_CSUM_OFFSET, v);
  }

  /** All zero: no offload, a complete checksum (what vpm writes with the packets it builds). */
  clear(): void {
    this.buf.fill(0, this.off, this.off + VNET_HDR_LEN);
  }
}

/**
 * Validate the header at `buf[hdrOff]` against the packet `info` describes (the
 * packet starts at info.ipOff). Returns VnetCheck.OK or why it cannot be used.
 */
export function checkVnetHdr(buf: Uint8Array, hdrOff: number, info: PacketInfo): VnetCheckCode {
  const flags = buf[hdrOff + VNET_OFF_FLAGS]!;
  const gso = buf[hdrOff + VNET_OFF_GSO_TYPE]!;
  if ((flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)) !== 0) return VnetCheck.BAD_FLAGS;
  if (flags === (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)) return VnetCheck.BAD_FLAGS;
  const needs = (flags & VNET_F_NEEDS_CSUM) !== 0;
  if (gso !== VNET_GSO_NONE) {
    const base = gso & ~VNET_GSO_ECN;
    let fits: boolean;
    if (base === VNET_GSO_TCPV4) fits = info.version === 4 && info.protocol === IPPROTO_TCP;
    else if (base === VNET_GSO_TCPV6) fits = info.version === 6 && info.protocol === IPPROTO_TCP;
    else if (base === VNET_GSO_UDP_L4 && gso === base) fits = info.protocol === IPPROTO_UDP;
    else return VnetCheck.BAD_GSO_TYPE;
    if (!fits || !needs || info.l4Off < 0 || get16le(buf, hdrOff + VNET_OFF_GSO_SIZE) === 0)
      return VnetCheck.BAD_GSO;
  }
  if (needs) {
    const co =
      info.protocol === IPPROTO_TCP
        ? TCP_OFF_CHECKSUM
        : info.protocol === IPPROTO_UDP
          ? UDP_OFF_CHECKSUM
          : -1;
    if (
      co < 0 ||
      info.l4Off < 0 ||
      get16le(buf, hdrOff + VNET_OFF_CSUM_START) !== info.l4Off - info.ipOff ||
      get16le(buf, hdrOff + VNET_OFF_CSUM_OFFSET) !== co
    )
      return VnetCheck.BAD_CSUM;
  }
  return VnetCheck.OK;
}

/**
 * hdr_len as vpm writes it: the headers up to the end of the L4 header, counted
 * from the start of the IP packet (the kernel's own value is not trusted); the IP
 * header alone for a packet whose L4 header is not parsed (a fragment).
 */
export function headerLength(info: PacketInfo): number {
  if (info.l4Off < 0) return info.ipHeaderLen;
  return info.l4Off - info.ipOff + info.l4HeaderLen;
}

/** Segments a super-packet stands for: ceil(payload / gso_size); 1 for a plain packet. */
export function segmentCount(info: PacketInfo, gsoSize: number): number {
  if (gsoSize <= 0 || info.payloadLen <= gsoSize) return 1;
  return Math.ceil(info.payloadLen / gsoSize);
}
