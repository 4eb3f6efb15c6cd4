/**
 * Writing classic pcap files (layout in format.ts) that tcpdump, tshark and
 * Wireshark read: microsecond timestamps, header fields in this machine's byte
 * order (as libpcap writes them), one link type for the whole file.
 *
 * Theory of operation. A `PcapWriter` encodes into one chunk allocated once: the
 * global header when it is made, then each record (16-byte header + the captured
 * bytes, cut at the snapshot length) as `write` is called. Nothing reaches the
 * sink until `flush()`, which hands it the bytes encoded since the last flush and
 * starts the chunk over. So the caller decides how often data leaves: `vpm dump`
 * flushes once per burst of packets (tcpdump -U), which keeps a reader at the
 * other end of a pipe current without a write(2) per packet. A record that does
 * not fit in what is left of the chunk flushes the chunk first; one larger than
 * the whole chunk goes to the sink by itself.
 *
 * The sink sees a view into the writer's chunk, valid only during the call: it
 * must write the bytes out synchronously or copy them.
 */

import { endianness } from 'node:os';
import {
  PCAP_GLOBAL_HEADER_LEN,
  PCAP_MAGIC_USEC,
  PCAP_MAX_SNAPLEN,
  PCAP_OFF_LINKTYPE,
  PCAP_OFF_MAGIC,
  PCAP_OFF_SIGFIGS,
  PCAP_OFF_SNAPLEN,
  PCAP_OFF_THISZONE,
  PCAP_OFF_VERSION_MAJOR,
  PCAP_OFF_VERSION_MINOR,
  PCAP_REC_OFF_CAPLEN,
  PCAP_REC_OFF_ORIGLEN,
  PCAP_REC_OFF_TS_FRAC,
  PCAP_REC_OFF_TS_SEC,
  PCAP_RECORD_HEADER_LEN,
  PCAP_SNAPLEN_IP,
  PCAP_VERSION_MAJOR,
  PCAP_VERSION_MINOR,
} from './format.js';

/** Receives encoded bytes; the view is only valid during the call. */
export type PcapSink = (bytes: Uint8Array) => void;

export interface PcapWriterOptions {
  /** LINKTYPE_* of every record (format.ts). */
  linkType: number;
  /** Longest record kept; longer packets are cut (OrigLen keeps their length). Default 65535. */
  snaplen?: number;
  /** Bytes encoded between flushes at most; default 256 KiB. */
  chunkSize?: number;
  /** Header byte order; default this machine's, as libpcap writes. */
  littleEndian?: boolean;
}

const DEFAULT_CHUNK = 256 * 1024;
const USEC_PER_SEC = 1_000_000;

/** The 24-byte global header of a microsecond pcap file. */
export function encodePcapHeader(
  linkType: number,
  snaplen = PCAP_SNAPLEN_IP,
  littleEndian = endianness() === 'LE',
): Uint8Array {
  const out = new Uint8Array(PCAP_GLOBAL_HEADER_LEN);
  const v = new DataView(out.buffer);
  v.setUint32(PCAP_OFF_MAGIC, PCAP_MAGIC_USEC, littleEndian);
  v.setUint16(PCAP_OFF_VERSION_MAJOR, PCAP_VERSION_MAJOR, littleEndian);
  v.setUint16(PCAP_OFF_VERSION_MINOR, PCAP_VERSION_MINOR, littleEndian);
  v.setInt32(PCAP_OFF_THISZONE, 0, littleEndian);
  v.setUint32(PCAP_OFF_SIGFIGS, 0, littleEndian);
  v.setUint32(PCAP_OFF_SNAPLEN, snaplen, littleEndian);
  v.setUint32(PCAP_OFF_LINKTYPE, linkType, littleEndian);
  return out;
}

/**
 * Split a wall-clock time in milliseconds (Date.now(), or performance.timeOrigin +
 * performance.now() for sub-millisecond precision) into pcap's seconds and
 * microseconds, rounding to the nearest microsecond without ever producing 1e6.
 */
export function splitTimestamp(ms: number): { sec: number; usec: number } {
  const us = Math.round(ms * 1000);
  const sec = Math.floor(us / USEC_PER_SEC);
  return { sec, usec: us - sec * USEC_PER_SEC };
}

export class PcapWriter {
  readonly linkType: number;
  readonly snaplen: number;
  /** Records written so far. */
  packets = 0;
  /** Bytes handed to the sink so far (the file's size once flushed). */
  bytesFlushed = 0;
  private readonly sink: PcapSink;
  private readonly chunk: Uint8Array;
  private readonly view: DataView;
  private readonly le: boolean;
  private used = 0;

  constructor(sink: PcapSink, opts: PcapWriterOptions) {
    const snaplen = opts.snaplen ?? PCAP_SNAPLEN_IP;
    if (!Number.isInteger(snaplen) || snaplen < 1 || snaplen > PCAP_MAX_SNAPLEN)
      throw new RangeError(`pcap snaplen ${snaplen} is not an integer 1-${PCAP_MAX_SNAPLEN}`);
    if (!Number.isInteger(opts.linkType) || opts.linkType < 0 || opts.linkType > 0xffff)
      throw new RangeError(`pcap link type ${opts.linkType} is not an integer 0-65535`);
    this.sink = sink;
    this.linkType = opts.linkType;
    this.snaplen = snaplen;
    this.le = opts.littleEndian ?? endianness() === 'LE';
    const size = Math.max(opts.chunkSize ?? DEFAULT_CHUNK, PCAP_GLOBAL_HEADER_LEN);
    this.chunk = new Uint8Array(size);
    this.view = new DataView(this.chunk.buffer);
    this.chunk.set(encodePcapHeader(opts.linkType, snaplen, this.le));
    this.used = PCAP_GLOBAL_HEADER_LEN;
  }

  /** Bytes encoded and not yet flushed. */
  get pending(): number {
    return this.used;
  }

  /**
   * Add one record: the first `snaplen` bytes of `data`, stamped `tsSec`.`tsUsec`.
   * `origLen` is the packet's length on the wire when `data` is already a cut.
   */
  write(data: Uint8Array, tsSec: number, tsUsec: number, origLen = data.length): void {
    const caplen = Math.min(data.length, this.snaplen);
    const need = PCAP_RECORD_HEADER_LEN + caplen;
    if (this.used + need > this.chunk.length) this.flush();
    const header = this.used + need <= this.chunk.length ? this.used : -1;
    let rec: Uint8Array;
    let off: number;
    let view: DataView;
    if (header >= 0) {
      rec = this.chunk;
      off = header;
      view = this.view;
    } else {
      // Larger than the whole chunk: encode it on its own.
      rec = new Uint8Array(need);
      off = 0;
      view = new DataView(rec.buffer);
    }
    view.setUint32(off + PCAP_REC_OFF_TS_SEC, tsSec >>> 0, this.le);
    view.setUint32(off + PCAP_REC_OFF_TS_FRAC, tsUsec >>> 0, this.le);
    view.setUint32(off + PCAP_REC_OFF_CAPLEN, caplen, this.le);
    view.setUint32(off + PCAP_REC_OFF_ORIGLEN, Math.max(origLen, caplen) >>> 0, this.le);
    rec.set(data.subarray(0, caplen), off + PCAP_RECORD_HEADER_LEN);
    this.packets++;
    if (header >= 0) {
      this.used += need;
    } else {
      this.sink(rec);
      this.bytesFlushed += need;
    }
  }

  /** `write` with a wall-clock time in milliseconds (see `splitTimestamp`). */
  writeAt(data: Uint8Array, timeMs: number, origLen = data.length): void {
    const t = splitTimestamp(timeMs);
    this.write(data, t.sec, t.usec, origLen);
  }

  /** Hand everything encoded since the last flush to the sink. */
  flush(): void {
    if (this.used === 0) return;
    const n = this.used;
    this.used = 0;
    this.sink(this.chunk.subarray(0, n));
    this.bytesFlushed += n;
  }
}
