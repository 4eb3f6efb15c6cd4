/**
 * TCP header (RFC 9293 §3.1).
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |          Source Port          |       Destination Port        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                        Sequence Number                        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                    Acknowledgment Number                      |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |  Data |       |C|E|U|A|P|R|S|F|                               |
 *    | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
 *    |       |       |R|E|G|K|H|T|N|N|                               |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |           Checksum            |         Urgent Pointer        |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |                     Options                   |    Padding    |
 *
 * `TcpSegment` is a view over (buf, off) with `len` = the segment length (header
 * and payload), which the IP layer knows. Untrusted input goes through
 * `checkPacket` first, which guarantees 5 <= data offset and header <= len.
 */

import { checksum, sum16 } from '../checksum/sum.js';
import { copyOf, get16, get32, set16, set32 } from './bytes.js';
import { WireError } from './error.js';

export const TCP_OFF_SRC_PORT = 0;
export const TCP_OFF_DST_PORT = 2;
export const TCP_OFF_SEQ = 4;
export const TCP_OFF_ACK = 8;
export const TCP_OFF_DATA_OFFSET = 12;
export const TCP_OFF_FLAGS = 13;
export const TCP_OFF_WINDOW = 14;
export const TCP_OFF_CHECKSUM = 16;
export const TCP_OFF_URGENT = 18;
export const TCP_HEADER_LEN = TCP_OFF_URGENT + 2;
export const TCP_MAX_HEADER_LEN = 60;

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;
export const TCP_URG = 0x20;
export const TCP_ECE = 0x40;
export const TCP_CWR = 0x80;

export class TcpSegment {
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

  srcPort(): number {
    return get16(this.buf, this.off + TCP_OFF_SRC_PORT);
  }
  dstPort(): number {
    return get16(this.buf, this.off + TCP_OFF_DST_PORT);
  }
  seqNumber(): number {
    return get32(this.buf, this.off + TCP_OFF_SEQ);
  }
  ackNumber(): number {
    return get32(this.buf, this.off + TCP_OFF_ACK);
  }
  /** Data offset in 32-bit words. */
  dataOffset(): number {
    return this.buf[this.off + TCP_OFF_DATA_OFFSET]! >>> 4;
  }
  headerLen(): number {
    return this.dataOffset() << 2;
  }
  /** The eight flag bits CWR..FIN (RFC 9293 numbering). */
  flags(): number {
    return this.buf[this.off + TCP_OFF_FLAGS]!;
  }
  fin(): boolean {
    return (this.flags() & TCP_FIN) !== 0;
  }
  syn(): boolean {
    return (this.flags() & TCP_SYN) !== 0;
  }
  rst(): boolean {
    return (this.flags() & TCP_RST) !== 0;
  }
  psh(): boolean {
    return (this.flags() & TCP_PSH) !== 0;
  }
  ack(): boolean {
    return (this.flags() & TCP_ACK) !== 0;
  }
  urg(): boolean {
    return (this.flags() & TCP_URG) !== 0;
  }
  window(): number {
    return get16(this.buf, this.off + TCP_OFF_WINDOW);
  }
  checksum(): number {
    return get16(this.buf, this.off + TCP_OFF_CHECKSUM);
  }
  urgentPointer(): number {
    return get16(this.buf, this.off + TCP_OFF_URGENT);
  }
  optionsOff(): number {
    return this.off + TCP_HEADER_LEN;
  }
  optionsLen(): number {
    return this.headerLen() - TCP_HEADER_LEN;
  }
  payloadOff(): number {
    return this.off + this.headerLen();
  }
  payloadLen(): number {
    return this.len - this.headerLen();
  }

  /** Raw port setters: they leave the checksum alone (see wire/rewrite.ts). */
  setSrcPort(v: number): void {
    set16(this.buf, this.off + TCP_OFF_SRC_PORT, v);
  }
  setDstPort(v: number): void {
    set16(this.buf, this.off + TCP_OFF_DST_PORT, v);
  }
  setSeqNumber(v: number): void {
    set32(this.buf, this.off + TCP_OFF_SEQ, v);
  }
  setAckNumber(v: number): void {
    set32(this.buf, this.off + TCP_OFF_ACK, v);
  }
  /** Data offset in words; clears the reserved bits. */
  setDataOffset(words: number): void {
    this.buf[this.off + TCP_OFF_DATA_OFFSET] = (words & 0x0f) << 4;
  }
  setFlags(v: number): void {
    this.buf[this.off + TCP_OFF_FLAGS] = v;
  }
  setWindow(v: number): void {
    set16(this.buf, this.off + TCP_OFF_WINDOW, v);
  }
  setChecksum(v: number): void {
    set16(this.buf, this.off + TCP_OFF_CHECKSUM, v);
  }
  setUrgentPointer(v: number): void {
    set16(this.buf, this.off + TCP_OFF_URGENT, v);
  }

  /** Compute and store the checksum; `pseudo` from pseudoHeader4/6 with this.len. */
  fillChecksum(pseudo: number): void {
    this.setChecksum(0);
    this.setChecksum(checksum(this.buf, this.off, this.len, pseudo));
  }
  verifyChecksum(pseudo: number): boolean {
    return sum16(this.buf, this.off, this.len, pseudo) === 0xffff;
  }
}

/** Plain TCP segment record for tests and the control plane. */
export interface TcpRepr {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  /** CWR..FIN bits. */
  flags: number;
  window: number;
  urgent: number;
  /** Raw option bytes, a multiple of 4 long, at most 40. */
  options: Uint8Array;
  payload: Uint8Array;
}

export const TcpRepr = {
  defaults(p: Partial<TcpRepr> & Pick<TcpRepr, 'srcPort' | 'dstPort'>): TcpRepr {
    return {
      seq: 0,
      ack: 0,
      flags: 0,
      window: 65535,
      urgent: 0,
      options: new Uint8Array(0),
      payload: new Uint8Array(0),
      ...p,
    };
  },

  /** Parse a segment that `checkPacket` accepted; `pseudo` checks the checksum unless null. */
  parse(v: TcpSegment, pseudo: number | null): TcpRepr {
    if (v.dataOffset() < 5 || v.headerLen() > v.len) {
      throw new WireError('ERR_TCP_DATA_OFFSET', `bad TCP data offset ${v.dataOffset()}`);
    }
    if (pseudo !== null && !v.verifyChecksum(pseudo)) {
      throw new WireError('ERR_CHECKSUM', `bad TCP checksum 0x${v.checksum().toString(16)}`);
    }
    return {
      srcPort: v.srcPort(),
      dstPort: v.dstPort(),
      seq: v.seqNumber(),
      ack: v.ackNumber(),
      flags: v.flags(),
      window: v.window(),
      urgent: v.urgentPointer(),
      options: copyOf(v.buf, v.optionsOff(), v.optionsOff() + v.optionsLen()),
      payload: copyOf(v.buf, v.payloadOff(), v.off + v.len),
    };
  },

  headerLen(r: TcpRepr): number {
    return TCP_HEADER_LEN + r.options.length;
  },

  bufferLen(r: TcpRepr): number {
    return TCP_HEADER_LEN + r.options.length + r.payload.length;
  },

  /** Write header, options and payload into the view (its len must be bufferLen), then the checksum. */
  emit(r: TcpRepr, v: TcpSegment, pseudo: number): void {
    if (r.options.length % 4 !== 0 || r.options.length > TCP_MAX_HEADER_LEN - TCP_HEADER_LEN) {
      throw new WireError(
        'ERR_TCP_OPTIONS',
        `TCP options length ${r.options.length} is not a multiple of 4 up to 40`,
      );
    }
    v.setSrcPort(r.srcPort);
    v.setDstPort(r.dstPort);
    v.setSeqNumber(r.seq);
    v.setAckNumber(r.ack);
    v.setDataOffset((TCP_HEADER_LEN + r.options.length) >>> 2);
    v.setFlags(r.flags);
    v.setWindow(r.window);
    v.setUrgentPointer(r.urgent);
    v.buf.set(r.options, v.optionsOff());
    v.buf.set(r.payload, v.payloadOff());
    v.fillChecksum(pseudo);
  },
};
