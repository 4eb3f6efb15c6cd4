/**
 * The kernel TUN device: /dev/net/tun through the native addon
 * (native/src/tun_napi.c, over the plain C of native/src/tun_dev.c).
 *
 * `openTun` opens the device (IFF_TUN | IFF_NO_PI, non-blocking; IFF_VNET_HDR with
 * `vnetHdr`), sets its offloads, MTU and transmit queue length, brings the link
 * up, and allocates the receive buffers once: `batchSize` slots of `slotSize`
 * bytes in one Buffer, plus the offsets and lengths arrays. Nothing is allocated
 * per packet or per batch after that. Reads are driven by a uv_poll handle on
 * Node's own event loop (no thread pool), so a started device keeps the process
 * alive until `close()` or `stop()`, and process.exit() is never held up by it.
 * With `persist` (TUNSETPERSIST) the device outlives its fd and an open of its
 * name attaches to it again (`existed`); `setPersist(false)` before `close()`
 * deletes it. `adoptTun` takes an fd another process handed over (handover.ts).
 *
 * Offloads. With `vnetHdr`, every packet read or written starts with a 10-byte
 * virtio-net header (src/wire/virtio.ts) in the `headroom` before its offset, and
 * the device asks for TUN_F_CSUM | TSO4 | TSO6 | TSO_ECN | USO4 | USO6 and keeps
 * what the kernel accepts (`offload`): the kernel then hands over TCP super-packets
 * of up to 64 KiB with a partial checksum, and takes them back unsplit. Without
 * it the offload mask is set to 0 explicitly, because the mask is device-wide and
 * outlives the fd that set it.
 *
 * Slot size. Without IFF_VNET_HDR the kernel hands over packets no larger than the
 * MTU (it segments before the TUN). A read into a too small buffer is cut without
 * an error, so a slot must be larger than any packet: the default is the MTU plus
 * one, rounded up to 64 bytes (1536 for MTU 1500), which keeps slots aligned. A
 * read that fills a whole slot is taken as cut and dropped (`readTruncated`).
 * With vnet headers a slot holds a whole super-packet and its header: 10 + 65535
 * bytes, plus one, rounded up (65600), so 64 slots take 4 MiB.
 *
 * Transmit queue. The kernel's default of 500 packets overflows under bulk load
 * (docs/deployment.md, step 5); the default here is 10,000.
 *
 * Adopting. `adoptTun` takes an fd another process handed over (src/tun/handover.ts)
 * instead of opening one: the addon checks that it is attached to a TUN as
 * `openTun` makes them (the flags of `vnetHdr` and `multiQueue`, no packet
 * information, 10-byte little-endian headers) and sets the offload mask that
 * process had again; from there on the same link settings, buffers and slots as
 * `openTun`. MTU, queue length and link state are device-wide and survived; they
 * are set again from the options (a no-op when unchanged), so pass the same ones.
 */

import { loadNative, type NativeAddon } from '../native/index.js';
import {
  type OpenTunOptions,
  type ResolvedTunOptions,
  resolveTunOptions,
  TUN_MAX_BATCH,
  type TunDevice,
  type TunRx,
  type TunStats,
  type TunTx,
  VNET_HDR_LEN,
} from './device.js';
import { type TunError, toTunError } from './errors.js';

type NativeHandle = ReturnType<NativeAddon['tunOpen']>;

/** Open a kernel TUN device (needs CAP_NET_ADMIN). Errors are TunErrors with a stable code. */
export function openTun(opts: OpenTunOptions = {}): KernelTun {
  const o = resolveTunOptions(opts);
  const native = loadNative();
  let handle: NativeHandle;
  try {
    handle = native.tunOpen({
      name: o.name,
      multiQueue: o.multiQueue,
      vnetHdr: o.vnetHdr,
      offload: o.offload,
      persist: o.persist,
    });
  } catch (e) {
    throw toTunError(e);
  }
  return configure(native, handle, o);
}

/** Options of `adoptTun`: those of `openTun` but the name, and what the sending process had. */
export interface AdoptTunOptions extends Omit<OpenTunOptions, 'name' | 'vnetHdr' | 'offload'> {
  /** IFF_VNET_HDR as the device was opened: checked, never changed. */
  vnetHdr: boolean;
  /** The TUN_F_* mask in effect in the sending process (its `offload`): set again. */
  offload: number;
}

/**
 * A KernelTun over `fd`, a TUN device's fd received from another process
 * (src/tun/handover.ts). Refused with ERR_TUN_ADOPT, naming what differs, unless
 * it is attached to a TUN of this network namespace as `openTun` opens them with
 * these options; the fd then stays the caller's. Once adopted, the device owns
 * it (closed by `close()`, also when configuring it fails here).
 */
export function adoptTun(fd: number, opts: AdoptTunOptions): KernelTun {
  const o = resolveTunOptions(opts);
  const native = loadNative();
  let handle: NativeHandle;
  try {
    handle = native.tunAdopt({
      fd,
      vnetHdr: o.vnetHdr,
      offload: o.offload,
      multiQueue: o.multiQueue,
    });
  } catch (e) {
    throw toTunError(e);
  }
  return configure(native, handle, o);
}

/** Link settings and buffers of an opened or adopted device; closes it when they fail. */
function configure(native: NativeAddon, handle: NativeHandle, o: ResolvedTunOptions): KernelTun {
  try {
    native.tunSetMtu(handle.name, o.mtu);
    native.tunSetTxQueueLen(handle.name, o.txQueueLen);
    if (o.up) native.tunSetUp(handle.name, true);
  } catch (e) {
    native.tunClose(handle);
    throw toTunError(e);
  }
  return new KernelTun(native, handle, o);
}

export class KernelTun implements TunDevice {
  readonly name: string;
  readonly multiQueue: boolean;
  readonly batchSize: number;
  readonly slotSize: number;
  readonly mtu: number;
  readonly headroom: number;
  offload: number;
  /** The device existed before this open: a persistent TUN attached again. */
  readonly existed: boolean;
  lastWriteRefused = 0;
  readonly txErrnos: Int32Array;
  readonly rx: TunRx;
  readonly tx: TunTx;
  readonly #native: NativeAddon;
  readonly #handle: NativeHandle;

  constructor(native: NativeAddon, handle: NativeHandle, o: ResolvedTunOptions) {
    this.#native = native;
    this.#handle = handle;
    this.name = handle.name;
    this.multiQueue = handle.multiQueue;
    this.batchSize = o.batchSize;
    this.slotSize = o.slotSize;
    this.mtu = o.mtu;
    this.headroom = handle.vnetHdr ? VNET_HDR_LEN : 0;
    this.offload = handle.offload;
    this.existed = handle.existed;
    // The buffers are the addon's (C memory): no typed array crosses the native
    // boundary per burst or per write. Sections as native/index.ts describes.
    const n = o.batchSize;
    const ab = native.tunBuffers(handle, o.slotSize, n);
    const rxLen = n * o.slotSize;
    const arr = Math.ceil((n * 4) / 64) * 64;
    const u32 = (k: number) => new Uint32Array(ab, rxLen + k * arr, n);
    this.rx = Object.freeze({ buf: Buffer.from(ab, 0, rxLen), offsets: u32(0), lengths: u32(1) });
    this.tx = Object.freeze({ offsets: u32(2), lengths: u32(3) });
    this.txErrnos = new Int32Array(ab, rxLen + 4 * arr, TUN_MAX_BATCH);
  }

  start(onBatch: (count: number) => void, onError?: (err: TunError) => void): void {
    // Without an onError, the error is thrown from here into the native caller, which
    // raises it as an uncaught exception: a device that stops reading is never silent.
    const report = (e: Error): void => {
      const err = toTunError(e) as TunError;
      if (onError) onError(err);
      else throw err;
    };
    try {
      this.#native.tunStart(this.#handle, onBatch, report);
    } catch (e) {
      throw toTunError(e);
    }
  }

  stop(): void {
    this.#native.tunStop(this.#handle);
  }

  /** TUNSETPERSIST: false before `close()` deletes the device with that close. */
  setPersist(on: boolean): void {
    try {
      this.#native.tunSetPersist(this.#handle, on);
    } catch (e) {
      throw toTunError(e);
    }
  }

  write(buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number {
    let r: number;
    try {
      r = this.#native.tunWriteBatch(this.#handle, buf, offsets, lengths, count, this.txErrnos);
    } catch (e) {
      throw toTunError(e);
    }
    // n + 65536 * refused (both at most TUN_MAX_BATCH): one number, no object per call.
    this.lastWriteRefused = Math.floor(r / 65536);
    return r % 65536;
  }

  writeTx(count: number): number {
    let r: number;
    try {
      r = this.#native.tunWriteTx(this.#handle, count);
    } catch (e) {
      throw toTunError(e);
    }
    this.lastWriteRefused = Math.floor(r / 65536);
    return r % 65536;
  }

  setOffload(mask: number): void {
    try {
      this.#native.tunSetOffload(this.#handle, mask);
    } catch (e) {
      throw toTunError(e);
    }
    this.offload = mask;
  }

  close(): void {
    this.#native.tunClose(this.#handle);
  }

  /**
   * The device's fd, to hand to another process (src/tun/handover.ts); stop()
   * first, so that only one process reads. ERR_TUN_CLOSED after close().
   */
  fd(): number {
    try {
      return this.#native.tunFd(this.#handle);
    } catch (e) {
      throw toTunError(e);
    }
  }

  /**
   * Give the fd up without closing it, for another thread to `adoptTun` (fds are
   * process-wide; a handle belongs to the thread that made it): stops reading, takes
   * the fd off this thread's event loop and leaves this device closed
   * (ERR_TUN_CLOSED). The fd, still attached to its queue, is the caller's.
   */
  detach(): number {
    try {
      return this.#native.tunDetach(this.#handle);
    } catch (e) {
      throw toTunError(e);
    }
  }

  stats(): TunStats {
    return this.#native.tunStats(this.#handle);
  }
}
