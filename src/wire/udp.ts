/**
 * UDP header (RFC 768).
 *
 *     0      7 8     15 16    23 24    31
 *    +--------+--------+--------+--------+
 *    |     Source      |   Destination   |
 *    |      Port       |      Port       |
 *    +--------+--------+--------+--------+
 *    |     Length      |    Checksum     |
 *    +--------+--------+--------+--------+
 *
 * A checksum of 0 means "none" over IPv4; a computed 0 is sent as 0xffff.
 */

import { checksum, sum16 } from '../checksum/sum.js';
import { copyOf, get16, set16 } from './bytes.js';
import { WireError } from './error.js';

export const UDP_OFF_SRC_PORT = 0;
export const UDP_OFF_DST_PORT = 2;
export const UDP_OFF_LENGTH = 4;
export const UDP_OFF_CHECKSUM = 6;
export const UDP_HEADER_LEN = UDP_OFF_CHECKSUM + 2;

export class UdpDatagram {
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

  srcPort(): number {
    return get16(this.buf, this.off + UDP_OFF_SRC_PORT);
  }
  dstPort(): number {
    return get16(this.buf, this.off + UDP_OFF_DST_PORT);
  }
  /** Header plus payload, as the header says. */
  length(): number {
    return get16(this.buf, this.off + UDP_OFF_LENGTH);
  }
  checksum(): number {
    return get16(this.buf, this.off + UDP_OFF_CHECKSUM);
  }
  payloadOff(): number {
    return this.off + UDP_HEADER_LEN;
  }
  payloadLen(): number {
    return this.length() - UDP_HEADER_LEN;
  }

  setSrcPort(v: number): void {
    set16(this.buf, this.off + UDP_OFF_SRC_PORT, v);
  }
  setDstPort(v: number): void {
    set16(this.buf, this.off + UDP_OFF_DST_PORT, v);
  }
  setLength(v: number): void {
    set16(this.buf, this.off + UDP_OFF_LENGTH, v);
  }
  setChecksum(v: number): void {
    set16(this.buf, this.off + UDP_OFF_CHECKSUM, v);
  }

  /** Compute and store the checksum over `length()` bytes; 0 goes out as 0xffff. */
  fillChecksum(pseudo: number): void {
    this.setChecksum(0);
    const c = checksum(this.buf, this.off, this.length(), pseudo);
    this.setChecksum(c === 0 ? 0xffff : c);
  }
  /** A zero checksum field means the sender computed none: accepted. */
  verifyChecksum(pseudo: number): boolean {
    return this.checksum() === 0 || sum16(this.buf, this.off, this.length(), pseudo) === 0xffff;
  }
}

export interface UdpRepr {
  srcPort: number;
  dstPort: number;
  payload: Uint8Array;
}

export const UdpRepr = {
  parse(v: UdpDatagram, pseudo: number | null): UdpRepr {
    if (v.length() < UDP_HEADER_LEN) {
      throw new WireError('ERR_UDP_LENGTH', `bad UDP length ${v.length()}`);
    }
    if (pseudo !== null && !v.verifyChecksum(pseudo)) {
      throw new WireError('ERR_CHECKSUM', `bad UDP checksum 0x${v.checksum().toString(16)}`);
    }
    return {
      srcPort: v.srcPort(),
      dstPort: v.dstPort(),
      payload: copyOf(v.buf, v.payloadOff(), v.off + v.length()),
    };
  },

  bufferLen(r: UdpRepr): number {
    return UDP_HEADER_LEN + r.payload.length;
  },

  /** Write the datagram; `pseudo` null leaves the checksum 0 ("none"). */
  emit(r: UdpRepr, v: UdpDatagram, pseudo: number | null): void {
    v.setSrcPort(r.srcPort);
    v.setDstPort(r.dstPort);
    v.setLength(UDP_HEADER_LEN + r.payload.length);
    v.buf.set(r.payload, v.payloadOff());
    if (pseudo === null) v.setChecksum(0);
    else v.fillChecksum(pseudo);
  },
};
