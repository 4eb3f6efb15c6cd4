/**
 * Live capture through libpcap, by way of the addon (native/src/capture.c).
 *
 * Why not a JS binding: the capture must keep up with 64 KiB super-packets and
 * with bursts of small ones, say what it lost, and stamp packets with the kernel's
 * time. So the addon opens libpcap in its ring's normal mode (TPACKET_V3:
 * variable-sized frames in blocks handed over when full or after `timeoutMs`),
 * with a large buffer (32 MiB by default), polls it on the event loop and hands
 * packets over in batches — one JS call per batch, with their kernel timestamps
 * and original lengths — and reports pcap_stats: packets the filter passed and
 * those the kernel dropped because the ring was full. (The `cap` binding used
 * before opened libpcap in immediate mode, whose fixed 64 KiB frames made an
 * 8 MiB buffer hold ~120 packets; delivered one JS event per packet; and had no
 * pcap_stats: a burst of a 108 KB response overflowed it unseen.)
 *
 * Closing drains: `stop()` waits one block timeout, so that the kernel hands over
 * the last partly filled block, reads everything left, then closes.
 */

import { VpmError } from '../base/errors.js';
import { loadNative } from '../native/index.js';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_IEEE802_11_RADIOTAP,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_NULL,
  LINKTYPE_RAW,
  PCAP_SNAPLEN_IP,
} from '../pcap/format.js';

export type CaptureErrorCode =
  /** The device does not exist in this network namespace. */
  | 'ERR_CAPTURE_NO_DEVICE'
  /** Not allowed to capture (needs root or CAP_NET_RAW). */
  | 'ERR_CAPTURE_PERMISSION'
  /** libpcap could not compile the filter. */
  | 'ERR_CAPTURE_FILTER'
  /** Anything else libpcap refused (device down, ...). */
  | 'ERR_CAPTURE_DEVICE';

export class CaptureError extends VpmError<CaptureErrorCode> {
  /** 2 for a bad filter (bad input), 1 otherwise. */
  readonly exitCode: number;
  constructor(code: CaptureErrorCode, message: string) {
    super(code, message);
    this.exitCode = code === 'ERR_CAPTURE_FILTER' ? 2 : 1;
  }
}

/** libpcap's DLT_RAW has the value 12 on most systems, 14 on OpenBSD; files say 101. */
const DLT_RAW_VALUES = new Set([12, 14]);
const DLT_EN10MB = 1;
const DLT_NULL = 0;
const DLT_LINUX_SLL = 113;
const DLT_IEEE802_11_RADIO = 127;

/**
 * The LINKTYPE_* value (what a pcap file header says) for a libpcap DLT, or null
 * when there is none. A DLT equals its LINKTYPE except for the few historical ones
 * handled here (tcpdump.org/linktypes.html).
 */
export function linkTypeFromDlt(dlt: number): number | null {
  if (!Number.isInteger(dlt) || dlt < 0) return null;
  if (DLT_RAW_VALUES.has(dlt)) return LINKTYPE_RAW;
  switch (dlt) {
    case DLT_EN10MB:
      return LINKTYPE_ETHERNET;
    case DLT_NULL:
      return LINKTYPE_NULL;
    case DLT_LINUX_SLL:
      return LINKTYPE_LINUX_SLL;
    case DLT_IEEE802_11_RADIO:
      return LINKTYPE_IEEE802_11_RADIOTAP;
  }
  return dlt;
}

export interface CaptureOptions {
  /** Kernel buffer (the capture ring) for packets not yet read; default 32 MiB. */
  bufferSize?: number;
  /** Longest block hold-back in the ring, ms; default 10 (the latency of a live text dump). */
  timeoutMs?: number;
  /** Appended to the "no such device" message (e.g. a hint where the name came from). */
  missingHint?: string;
}

/** What the capture itself counted since it opened (pcap_stats). */
export interface CaptureStats {
  /** Packets the filter passed. */
  received: number;
  /** Of those, dropped by the kernel because the capture ring was full. */
  dropped: number;
  /** Dropped by the interface (0 on a TUN). */
  ifDropped: number;
}

type Handle = { readonly dlt: number; readonly linkName: string };

/** Packets per read call, and the room they need (snapshot length each, 8-byte aligned). */
const READ_BATCH = 64;

/** An open capture: packets arrive through `onPacket` until `stop()`/`close()`. */
export class LiveCapture {
  /** LINKTYPE_* for the pcap file. */
  readonly linkType: number;
  /** libpcap's name for the link type ("RAW" for a TUN). */
  readonly linkName: string;
  /** The block timeout, ms (how long stop() waits for the last block). */
  readonly timeoutMs: number;
  private readonly handle: Handle;
  private readonly buf = new Uint8Array(READ_BATCH * (Math.ceil(PCAP_SNAPLEN_IP / 8) * 8));
  private readonly rec = new Float64Array(READ_BATCH * 5);
  private cb: ((data: Uint8Array, timeMs: number, origLen: number) => void) | null = null;
  private closed = false;

  private constructor(handle: Handle, linkType: number, timeoutMs: number) {
    this.handle = handle;
    this.linkName = handle.linkName;
    this.linkType = linkType;
    this.timeoutMs = timeoutMs;
  }

  /**
   * Open `device` with a BPF `filter` ('' for everything). Throws a CaptureError
   * naming the device or quoting libpcap's message about the filter.
   */
  static open(device: string, filter: string, opts: CaptureOptions = {}): LiveCapture {
    const native = loadNative();
    // Checked first: a clear "no such device", and the hint where the name came from.
    if (!native.capDevices().includes(device)) {
      throw new CaptureError(
        'ERR_CAPTURE_NO_DEVICE',
        `no such device ${device}${opts.missingHint ? ` (${opts.missingHint})` : ''}`,
      );
    }
    const timeoutMs = opts.timeoutMs ?? 10;
    let handle: Handle;
    try {
      handle = native.capOpen(device, filter, {
        snaplen: PCAP_SNAPLEN_IP,
        bufferSize: opts.bufferSize ?? 32 << 20,
        timeoutMs,
      });
    } catch (e) {
      const err = e as Error & { code?: string };
      if (err.code === 'ERR_CAPTURE_FILTER')
        throw new CaptureError(
          'ERR_CAPTURE_FILTER',
          `bad capture filter "${filter}": ${err.message}`,
        );
      throw deviceError(device, err.message);
    }
    const linkType = linkTypeFromDlt(handle.dlt);
    if (linkType === null) {
      native.capClose(handle);
      throw new CaptureError(
        'ERR_CAPTURE_DEVICE',
        `cannot capture on ${device}: link type "${handle.linkName}" has no pcap equivalent`,
      );
    }
    return new LiveCapture(handle, linkType, timeoutMs);
  }

  /**
   * Deliver every packet to `cb`: its bytes (a view into the capture buffer,
   * valid only during the call), the kernel's timestamp in ms since the epoch,
   * and its length on the wire (more than data.length when the snapshot cut it).
   */
  onPacket(cb: (data: Uint8Array, timeMs: number, origLen: number) => void): void {
    this.cb = cb;
    loadNative().capStart(this.handle, () => this.readAll());
  }

  /** Read whatever the ring holds now, in batches. */
  private readAll(): void {
    const native = loadNative();
    const { buf, rec } = this;
    for (;;) {
      if (this.closed && this.cb === null) return;
      const n = native.capRead(this.handle, buf, rec);
      for (let i = 0; i < n; i++) {
        const r = i * 5;
        const off = rec[r]!;
        const cb = this.cb;
        if (cb)
          cb(
            buf.subarray(off, off + rec[r + 1]!),
            rec[r + 3]! * 1000 + rec[r + 4]! / 1000,
            rec[r + 2]!,
          );
      }
      if (n < READ_BATCH) return;
    }
  }

  /** The capture's own counters (pcap_stats), or null once closed. */
  stats(): CaptureStats | null {
    if (this.closed) return null;
    return loadNative().capStats(this.handle);
  }

  /**
   * Stop: wait for the kernel to hand over the last partly filled block, deliver
   * what is left, and close. Resolves with the final counters.
   */
  async stop(): Promise<CaptureStats | null> {
    if (this.closed) return null;
    await new Promise((r) => setTimeout(r, 2 * this.timeoutMs + 5));
    if (this.closed) return null;
    this.readAll();
    const st = this.stats();
    this.close();
    return st;
  }

  /** Close at once (what is still in the ring is not delivered); safe more than once. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cb = null;
    loadNative().capClose(this.handle);
  }
}

function deviceError(device: string, message: string): CaptureError {
  if (/permission|not permitted|EPERM|EACCES/i.test(message)) {
    return new CaptureError(
      'ERR_CAPTURE_PERMISSION',
      `cannot capture on ${device}: ${message} (capturing needs root or CAP_NET_RAW)`,
    );
  }
  if (/no such device/i.test(message)) {
    return new CaptureError('ERR_CAPTURE_NO_DEVICE', `no such device ${device}`);
  }
  return new CaptureError('ERR_CAPTURE_DEVICE', `cannot capture on ${device}: ${message}`);
}
