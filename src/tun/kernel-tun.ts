/**
 * The kernel TUN device: /dev/net/tun through the native addon (native/src/tun.c).
 *
 * `openTun` opens the device (IFF_TUN | IFF_NO_PI, non-blocking), sets its MTU and
 * transmit queue length, brings the link up, and allocates the receive buffers
 * once: `batchSize` slots of `slotSize` bytes in one Buffer, plus the offsets and
 * lengths arrays. Nothing is allocated per packet or per batch after that. Reads
 * are driven by a uv_poll handle on Node's own event loop (no thread pool), so a
 * started device keeps the process alive until `close()` or `stop()`, and
 * process.exit() is never held up by it.
 *
 * Slot size. Without IFF_VNET_HDR the kernel hands over packets no larger than the
 * MTU (it segments before the TUN). A read into a too small buffer is cut without
 * an error, so a slot must be larger than any packet: the default is the MTU plus
 * one, rounded up to 64 bytes (1536 for MTU 1500), which keeps slots aligned. A
 * read that fills a whole slot is taken as cut and dropped (`readTruncated`).
 * With vnet headers (not supported yet) the slot will need 10 + 65535 bytes.
 *
 * Transmit queue. The kernel's default of 500 packets overflows under bulk load
 * (DESIGN.md); the default here is 10,000.
 */

import { loadNative, type NativeAddon } from '../native/index.js';
import type { TunDevice, TunRx, TunStats } from './device.js';
import { TunError, toTunError } from './errors.js';

type NativeHandle = ReturnType<NativeAddon['tunOpen']>;

/** Options of `openTun`; every field is optional and says its default. */
export interface OpenTunOptions {
  /** Interface name, or a kernel pattern with one %d. Default "vpm%d". */
  name?: string;
  /** IFF_MULTI_QUEUE: each openTun of the same name adds a queue. Default false. */
  multiQueue?: boolean;
  /** Packets per read burst, fixed for the device's life: 1..4096. Default 64. */
  batchSize?: number;
  /** MTU set on the device: 68..65535. Default 1500. */
  mtu?: number;
  /** Bytes per rx slot, larger than mtu. Default: mtu + 1 rounded up to 64. */
  slotSize?: number;
  /** Transmit queue length (packets the kernel queues for us to read). Default 10,000. */
  txQueueLen?: number;
  /** Bring the link up. Default true. */
  up?: boolean;
  /** IFF_VNET_HDR with offloads: reserved; true is refused (ERR_TUN_UNSUPPORTED). Default false. */
  vnetHdr?: boolean;
}

export const TUN_DEFAULTS = Object.freeze({
  name: 'vpm%d',
  multiQueue: false,
  batchSize: 64,
  mtu: 1500,
  txQueueLen: 10_000,
  up: true,
  vnetHdr: false,
});

export const TUN_MAX_BATCH = 4096;
export const TUN_MIN_MTU = 68;
export const TUN_MAX_MTU = 65535;
const SLOT_ALIGN = 64;
/** Offsets are 32-bit, and one rx buffer this large is already absurd. */
const MAX_RX_BYTES = 1 << 30;

/** The default slot for an MTU: larger than any packet, a multiple of 64 bytes. */
export function defaultSlotSize(mtu: number): number {
  return Math.ceil((mtu + 1) / SLOT_ALIGN) * SLOT_ALIGN;
}

export type ResolvedTunOptions = Readonly<Required<OpenTunOptions>>;

function intIn(field: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new TunError(
      'ERR_TUN_OPTION',
      `openTun: ${field} must be an integer ${lo}..${hi}, got ${v}`,
    );
  }
  return v;
}

/** Fill in defaults and validate; throws ERR_TUN_OPTION naming the bad field and value. */
export function resolveTunOptions(opts: OpenTunOptions = {}): ResolvedTunOptions {
  const mtu = intIn('mtu', opts.mtu ?? TUN_DEFAULTS.mtu, TUN_MIN_MTU, TUN_MAX_MTU);
  const batchSize = intIn('batchSize', opts.batchSize ?? TUN_DEFAULTS.batchSize, 1, TUN_MAX_BATCH);
  const slotSize = intIn(
    'slotSize',
    opts.slotSize ?? defaultSlotSize(mtu),
    mtu + 1,
    Math.floor(MAX_RX_BYTES / batchSize),
  );
  return Object.freeze({
    name: opts.name ?? TUN_DEFAULTS.name,
    multiQueue: opts.multiQueue ?? TUN_DEFAULTS.multiQueue,
    batchSize,
    mtu,
    slotSize,
    txQueueLen: intIn('txQueueLen', opts.txQueueLen ?? TUN_DEFAULTS.txQueueLen, 1, 0x7fffffff),
    up: opts.up ?? TUN_DEFAULTS.up,
    vnetHdr: opts.vnetHdr ?? TUN_DEFAULTS.vnetHdr,
  });
}

/** Open a kernel TUN device (needs CAP_NET_ADMIN). Errors are TunErrors with a stable code. */
export function openTun(opts: OpenTunOptions = {}): KernelTun {
  const o = resolveTunOptions(opts);
  const native = loadNative();
  let handle: NativeHandle;
  try {
    handle = native.tunOpen({ name: o.name, multiQueue: o.multiQueue, vnetHdr: o.vnetHdr });
  } catch (e) {
    throw toTunError(e);
  }
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
  readonly rx: TunRx;
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
    this.rx = Object.freeze({
      buf: Buffer.alloc(o.batchSize * o.slotSize),
      offsets: new Uint32Array(o.batchSize),
      lengths: new Uint32Array(o.batchSize),
    });
  }

  start(onBatch: (count: number) => void, onError?: (err: TunError) => void): void {
    // Without an onError, the error is thrown from here into the native caller, which
    // raises it as an uncaught exception: a device that stops reading is never silent.
    const report = (e: Error): void => {
      const err = toTunError(e) as TunError;
      if (onError) onError(err);
      else throw err;
    };
    const { buf, offsets, lengths } = this.rx;
    try {
      this.#native.tunStart(this.#handle, buf, this.slotSize, offsets, lengths, onBatch, report);
    } catch (e) {
      throw toTunError(e);
    }
  }

  stop(): void {
    this.#native.tunStop(this.#handle);
  }

  write(buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number {
    try {
      return this.#native.tunWriteBatch(this.#handle, buf, offsets, lengths, count);
    } catch (e) {
      throw toTunError(e);
    }
  }

  close(): void {
    this.#native.tunClose(this.#handle);
  }

  stats(): TunStats {
    return this.#native.tunStats(this.#handle);
  }
}
