/**
 * Reading classic pcap files (layout in format.ts), as tcpdump writes them.
 *
 * Theory of operation. The whole file is one Uint8Array in memory. A reader
 * decodes the global header once (byte order and timestamp unit from the magic
 * number), then a cursor walks the records in order: `next(out)` fills a
 * caller-owned `PcapRecord` and returns false after the last one. A record's
 * `data` is a subarray of the file's bytes, not a copy: it stays valid while the
 * buffer lives, and writing into it writes into the buffer (the checksum tests
 * flip bits in place that way).
 *
 * A capture file is input from outside, and a capture that was cut off (tcpdump
 * killed mid-write, a disk that filled up) is a common one. So every length is
 * checked against the bytes present before it is used. A short or damaged file
 * raises a `PcapError` that names the file, the record, its byte offset and what
 * is missing; the records before it were already delivered. It never raises a
 * RangeError and never hands out a record that runs past the end of the file.
 *
 * pcapng files are recognised and refused with a hint, not misread.
 */

import { readFileSync } from 'node:fs';
import { VpmError } from '../base/errors.js';
import {
  ETH_OFF_ETHERTYPE,
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  ETHERTYPE_QINQ,
  ETHERTYPE_VLAN,
  LINKTYPE_ETHERNET,
  LINKTYPE_IPV4,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_LINUX_SLL2,
  LINKTYPE_RAW,
  PCAP_GLOBAL_HEADER_LEN,
  PCAP_LINKTYPE_MASK,
  PCAP_MAGIC_NSEC,
  PCAP_MAGIC_USEC,
  PCAP_MAX_SNAPLEN,
  PCAP_OFF_LINKTYPE,
  PCAP_OFF_MAGIC,
  PCAP_OFF_SNAPLEN,
  PCAP_OFF_VERSION_MAJOR,
  PCAP_OFF_VERSION_MINOR,
  PCAP_REC_OFF_CAPLEN,
  PCAP_REC_OFF_ORIGLEN,
  PCAP_REC_OFF_TS_FRAC,
  PCAP_REC_OFF_TS_SEC,
  PCAP_RECORD_HEADER_LEN,
  PCAP_VERSION_MAJOR,
  PCAPNG_MAGIC,
  SLL_HEADER_LEN,
  SLL_OFF_PROTOCOL,
  SLL2_HEADER_LEN,
  SLL2_OFF_PROTOCOL,
  VLAN_TAG_LEN,
} from './format.js';

export type PcapErrorCode =
  /** The file ends inside the global header, a record header or a record's data. */
  | 'ERR_PCAP_TRUNCATED'
  /** The first four bytes are no pcap magic number. */
  | 'ERR_PCAP_BAD_MAGIC'
  /** A pcapng file, which this reader does not read. */
  | 'ERR_PCAP_PCAPNG'
  /** A major version other than 2. */
  | 'ERR_PCAP_BAD_VERSION'
  /** A record header whose captured length no pcap writer produces. */
  | 'ERR_PCAP_BAD_RECORD';

export class PcapError extends VpmError<PcapErrorCode> {}

/** What the global header says, decoded. */
export interface PcapHeader {
  /** Byte order of the header fields (not of the packet data, which is wire order). */
  readonly littleEndian: boolean;
  /** Record timestamps count nanoseconds (magic 0xa1b23c4d) rather than microseconds. */
  readonly nanosecond: boolean;
  readonly versionMajor: number;
  readonly versionMinor: number;
  readonly snaplen: number;
  /** The link type (LINKTYPE_*), without the FCS bits of the field. */
  readonly linkType: number;
}

const EMPTY = new Uint8Array(0);

/** One record; allocate one and let `next` refill it, or take fresh ones from the iterator. */
export class PcapRecord {
  /** Position in the file, from 0. */
  index = 0;
  /** Byte offset of the record header in the file. */
  offset = 0;
  tsSec = 0;
  /** Fraction of the second in nanoseconds (a microsecond file's value times 1000). */
  tsNsec = 0;
  /** Bytes of the packet in the file (`data.length`). */
  caplen = 0;
  /** Bytes the packet had on the wire; more than `caplen` when the snapshot length cut it. */
  origlen = 0;
  /** The captured bytes: a view into the file's buffer, not a copy. */
  data: Uint8Array = EMPTY;
}

export class PcapReader {
  readonly header: PcapHeader;
  private readonly buf: Uint8Array;
  private readonly view: DataView;
  private readonly name: string;
  private pos = PCAP_GLOBAL_HEADER_LEN;
  private index = 0;

  /** `name` (a file path, say) only labels error messages. */
  constructor(buf: Uint8Array, name = 'pcap data') {
    this.buf = buf;
    this.name = name;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.header = this.readHeader();
  }

  /**
   * Fill `out` with the next record and return true, or return false at the end
   * of the file. Throws a PcapError when the file is cut short or damaged.
   */
  next(out: PcapRecord): boolean {
    const pos = this.pos;
    const left = this.buf.length - pos;
    if (left === 0) return false;
    if (left < PCAP_RECORD_HEADER_LEN) {
      throw new PcapError(
        'ERR_PCAP_TRUNCATED',
        `${this.where(pos)}: the record header needs ${PCAP_RECORD_HEADER_LEN} bytes, only ${left} remain (file cut short)`,
      );
    }
    const le = this.header.littleEndian;
    const caplen = this.view.getUint32(pos + PCAP_REC_OFF_CAPLEN, le);
    if (caplen > PCAP_MAX_SNAPLEN) {
      throw new PcapError(
        'ERR_PCAP_BAD_RECORD',
        `${this.where(pos)}: captured length ${caplen} is above the pcap maximum ${PCAP_MAX_SNAPLEN} (damaged record header)`,
      );
    }
    const start = pos + PCAP_RECORD_HEADER_LEN;
    if (caplen > this.buf.length - start) {
      throw new PcapError(
        'ERR_PCAP_TRUNCATED',
        `${this.where(pos)}: the header announces ${caplen} bytes of packet data, only ${this.buf.length - start} remain (file cut short)`,
      );
    }
    const frac = this.view.getUint32(pos + PCAP_REC_OFF_TS_FRAC, le);
    out.index = this.index;
    out.offset = pos;
    out.tsSec = this.view.getUint32(pos + PCAP_REC_OFF_TS_SEC, le);
    out.tsNsec = this.header.nanosecond ? frac : frac * 1000;
    out.caplen = caplen;
    out.origlen = this.view.getUint32(pos + PCAP_REC_OFF_ORIGLEN, le);
    out.data = this.buf.subarray(start, start + caplen);
    this.pos = start + caplen;
    this.index++;
    return true;
  }

  /** The remaining records, each a fresh `PcapRecord`. */
  *[Symbol.iterator](): Generator<PcapRecord, void, undefined> {
    for (;;) {
      const rec = new PcapRecord();
      if (!this.next(rec)) return;
      yield rec;
    }
  }

  private readHeader(): PcapHeader {
    const len = this.buf.length;
    if (len >= 4 && this.view.getUint32(PCAP_OFF_MAGIC, false) === PCAPNG_MAGIC) {
      throw new PcapError(
        'ERR_PCAP_PCAPNG',
        `${this.name}: this is a pcapng file; only classic pcap is read (convert it with "editcap -F pcap in out" or capture with "tcpdump -w")`,
      );
    }
    if (len < PCAP_GLOBAL_HEADER_LEN) {
      throw new PcapError(
        'ERR_PCAP_TRUNCATED',
        `${this.name}: the pcap global header needs ${PCAP_GLOBAL_HEADER_LEN} bytes, the file has ${len}`,
      );
    }
    const magicLe = this.view.getUint32(PCAP_OFF_MAGIC, true);
    const magicBe = this.view.getUint32(PCAP_OFF_MAGIC, false);
    let littleEndian: boolean;
    let nanosecond: boolean;
    if (magicLe === PCAP_MAGIC_USEC || magicLe === PCAP_MAGIC_NSEC) {
      littleEndian = true;
      nanosecond = magicLe === PCAP_MAGIC_NSEC;
    } else if (magicBe === PCAP_MAGIC_USEC || magicBe === PCAP_MAGIC_NSEC) {
      littleEndian = false;
      nanosecond = magicBe === PCAP_MAGIC_NSEC;
    } else {
      throw new PcapError(
        'ERR_PCAP_BAD_MAGIC',
        `${this.name}: not a pcap file (first bytes ${magicBe.toString(16).padStart(8, '0')}, expected a1b2c3d4 or a1b23c4d in either byte order)`,
      );
    }
    const versionMajor = this.view.getUint16(PCAP_OFF_VERSION_MAJOR, littleEndian);
    const versionMinor = this.view.getUint16(PCAP_OFF_VERSION_MINOR, littleEndian);
    if (versionMajor !== PCAP_VERSION_MAJOR) {
      throw new PcapError(
        'ERR_PCAP_BAD_VERSION',
        `${this.name}: pcap version ${versionMajor}.${versionMinor} is not supported (expected ${PCAP_VERSION_MAJOR}.x)`,
      );
    }
    return {
      littleEndian,
      nanosecond,
      versionMajor,
      versionMinor,
      snaplen: this.view.getUint32(PCAP_OFF_SNAPLEN, littleEndian),
      linkType: this.view.getUint32(PCAP_OFF_LINKTYPE, littleEndian) & PCAP_LINKTYPE_MASK,
    };
  }

  private where(pos: number): string {
    return `${this.name}: record ${this.index} at byte ${pos}`;
  }
}

/** Read a whole pcap file into memory and open a reader on it. */
export function readPcapFile(path: string): PcapReader {
  return new PcapReader(readFileSync(path), path);
}

/**
 * Offset of the IPv4 or IPv6 header within a captured frame of the given link
 * type, or -1 when the frame carries something else (ARP, say), is too short to
 * tell, or the link type is not one of those in format.ts. Ethernet frames may
 * carry 802.1Q / 802.1ad tags, which are skipped. The IP header itself is not
 * checked here: hand the result to `checkPacket`.
 */
export function ipHeaderOffset(linkType: number, frame: Uint8Array): number {
  const len = frame.length;
  switch (linkType) {
    case LINKTYPE_ETHERNET: {
      let typeOff = ETH_OFF_ETHERTYPE;
      for (;;) {
        if (typeOff + 2 > len) return -1;
        const type = (frame[typeOff]! << 8) | frame[typeOff + 1]!;
        if (type === ETHERTYPE_VLAN || type === ETHERTYPE_QINQ) {
          typeOff += VLAN_TAG_LEN;
          continue;
        }
        const ipOff = typeOff + 2;
        return isIpEtherType(type) && ipOff < len ? ipOff : -1;
      }
    }
    case LINKTYPE_LINUX_SLL:
      return cookedIpOffset(frame, SLL_OFF_PROTOCOL, SLL_HEADER_LEN);
    case LINKTYPE_LINUX_SLL2:
      return cookedIpOffset(frame, SLL2_OFF_PROTOCOL, SLL2_HEADER_LEN);
    case LINKTYPE_RAW: {
      if (len === 0) return -1;
      const version = frame[0]! >>> 4;
      return version === 4 || version === 6 ? 0 : -1;
    }
    case LINKTYPE_IPV4:
      return len > 0 ? 0 : -1;
    default:
      return -1;
  }
}

function isIpEtherType(type: number): boolean {
  return type === ETHERTYPE_IPV4 || type === ETHERTYPE_IPV6;
}

function cookedIpOffset(frame: Uint8Array, protocolOff: number, headerLen: number): number {
  if (frame.length <= headerLen) return -1;
  const type = (frame[protocolOff]! << 8) | frame[protocolOff + 1]!;
  return isIpEtherType(type) ? headerLen : -1;
}
