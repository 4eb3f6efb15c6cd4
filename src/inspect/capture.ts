/**
 * Live capture through libpcap, by way of the `cap` binding.
 *
 * What the binding gives, and what it does not: `open(device, filter, bufSize,
 * buffer)` creates, activates (snaplen 65535, immediate mode, non-blocking) and
 * filters a libpcap handle, then polls its fd on the event loop; every packet is
 * copied into the one Buffer passed to `open` and announced by a 'packet' event
 * with its captured length. It returns the link type as a name ("RAW" for a TUN
 * device, which libpcap reports as DLT_RAW). It does not pass libpcap's timestamp
 * or the packet's original length, and it has no pcap_stats, so the caller stamps
 * packets on arrival and cannot learn the kernel's drop count.
 *
 * Two defects of the binding shape this module. A handle whose `open` failed is
 * left half made: `close()` on it, a second `open` on the same object (which
 * closes first), or its destructor (when the garbage collector reclaims it) stops
 * a libuv poll handle that was never started and aborts the process. So every
 * attempt uses a fresh object, failed objects are never touched again and are kept
 * referenced until the process exits. And libpcap's own error text says what went
 * wrong but not whether the device or the filter was at fault: when an open with a
 * filter fails, a second open without one tells the two apart.
 */

import { createRequire } from 'node:module';
import { VpmError } from '../base/errors.js';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_IEEE802_11_RADIOTAP,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_NULL,
  LINKTYPE_RAW,
  PCAP_SNAPLEN_IP,
} from '../pcap/format.js';

/** The part of the binding's `Cap` object used here (node_modules/cap/README.md). */
interface CapHandle {
  open(device: string, filter: string, bufSize: number, buffer: Buffer): string;
  close(): boolean;
  on(event: 'packet', cb: (nbytes: number, truncated: boolean) => void): void;
  removeAllListeners(event?: string): void;
}

interface CapModule {
  Cap: { new (): CapHandle; deviceList(): { name: string }[] };
}

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

let capModule: CapModule | null = null;
/** Handles that failed to open or were closed: kept from the collector (see the top). */
const retainedHandles: CapHandle[] = [];

function loadCap(): CapModule {
  if (!capModule) capModule = createRequire(import.meta.url)('cap') as CapModule;
  return capModule;
}

/** libpcap's DLT_RAW has the value 12 on most systems, 14 on OpenBSD; files say 101. */
const DLT_RAW_VALUES = new Set([12, 14]);

/**
 * The LINKTYPE_* value (what a pcap file header says) for the binding's link type
 * name, or null when there is none. The binding names five DLTs and reports any
 * other as "Unknown linktype N" with the DLT value, which equals the LINKTYPE value
 * except for the few historical ones handled here (tcpdump.org/linktypes.html).
 */
export function linkTypeFromCap(name: string): number | null {
  switch (name) {
    case 'RAW':
      return LINKTYPE_RAW;
    case 'ETHERNET':
      return LINKTYPE_ETHERNET;
    case 'NULL':
      return LINKTYPE_NULL;
    case 'LINKTYPE_LINUX_SLL':
      return LINKTYPE_LINUX_SLL;
    case 'IEEE802_11_RADIO':
      return LINKTYPE_IEEE802_11_RADIOTAP;
  }
  const m = /^Unknown linktype (\d+)$/.exec(name);
  if (!m) return null;
  const dlt = Number(m[1]);
  return DLT_RAW_VALUES.has(dlt) ? LINKTYPE_RAW : dlt;
}

export interface CaptureOptions {
  /** Kernel buffer for packets not yet read; default 8 MiB. */
  bufferSize?: number;
  /** Appended to the "no such device" message (e.g. a hint where the name came from). */
  missingHint?: string;
}

/** An open capture: packets arrive through `onPacket` until `close()`. */
export class LiveCapture {
  /** LINKTYPE_* for the pcap file. */
  readonly linkType: number;
  /** The binding's name for it ("RAW" for a TUN). */
  readonly linkName: string;
  private readonly handle: CapHandle;
  private readonly buffer: Buffer;
  private closed = false;

  private constructor(handle: CapHandle, buffer: Buffer, linkName: string, linkType: number) {
    this.handle = handle;
    this.buffer = buffer;
    this.linkName = linkName;
    this.linkType = linkType;
  }

  /**
   * Open `device` with a BPF `filter` ('' for everything). Throws a CaptureError
   * naming the device or quoting libpcap's message about the filter.
   */
  static open(device: string, filter: string, opts: CaptureOptions = {}): LiveCapture {
    const cap = loadCap();
    // Checked first: libpcap would print a warning of its own to stderr before failing.
    if (!cap.Cap.deviceList().some((d) => d.name === device)) {
      throw new CaptureError(
        'ERR_CAPTURE_NO_DEVICE',
        `no such device ${device}${opts.missingHint ? ` (${opts.missingHint})` : ''}`,
      );
    }
    const bufSize = opts.bufferSize ?? 8 << 20;
    // One byte more than libpcap's snapshot length, so a full-size packet never
    // counts as cut by the binding.
    const buffer = Buffer.alloc(PCAP_SNAPLEN_IP + 1);
    const attempt = (f: string): { handle: CapHandle; link: string } | { error: string } => {
      const handle = new cap.Cap();
      try {
        return { handle, link: handle.open(device, f, bufSize, buffer) };
      } catch (e) {
        retainedHandles.push(handle);
        return { error: (e as Error).message };
      }
    };
    const first = attempt(filter);
    if ('error' in first) {
      if (filter !== '') {
        const bare = attempt('');
        if (!('error' in bare)) {
          bare.handle.close();
          throw new CaptureError(
            'ERR_CAPTURE_FILTER',
            `bad capture filter "${filter}": ${first.error}`,
          );
        }
      }
      throw deviceError(device, first.error);
    }
    const linkType = linkTypeFromCap(first.link);
    if (linkType === null) {
      first.handle.close();
      throw new CaptureError(
        'ERR_CAPTURE_DEVICE',
        `cannot capture on ${device}: link type "${first.link}" has no pcap equivalent`,
      );
    }
    return new LiveCapture(first.handle, buffer, first.link, linkType);
  }

  /**
   * Deliver every packet to `cb`. `data` is a view into the one capture buffer:
   * valid only during the call (copy what must outlive it). `truncated` says the
   * binding cut the packet.
   */
  onPacket(cb: (data: Uint8Array, truncated: boolean) => void): void {
    const buf = this.buffer;
    this.handle.on('packet', (nbytes, truncated) => {
      if (!this.closed) cb(buf.subarray(0, nbytes), truncated);
    });
  }

  /** Stop capturing; safe inside a packet callback and more than once. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handle.close();
    this.handle.removeAllListeners('packet');
    // A closed handle is kept referenced too: its destructor does not release the
    // poll handle it leaves registered with the event loop.
    retainedHandles.push(this.handle);
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
