/**
 * The TUN device interface the data plane is written against (after wireguard-go's
 * `tun.Device`): packets cross it in batches through preallocated buffers, and the
 * batch size and slot size are fixed for the device's life.
 *
 * Reading. `start(onBatch)` arms the device. Whenever packets are waiting, the
 * device fills `rx` — packet i is `rx.buf[rx.offsets[i] .. rx.offsets[i] + rx.lengths[i])`,
 * i < count <= batchSize — and calls `onBatch(count)` once for the whole burst. The
 * bytes are valid only until onBatch returns: the next burst reuses the same buffer.
 * The handler may rewrite packets in place and hand rx.buf with its own (or the
 * same) offsets/lengths straight to `write`. `stop()` pauses reading; `start` again
 * resumes. A device that can read no more (deleted under us) stops and calls
 * `onError` once; without an onError the error is thrown as an uncaught exception.
 * An exception thrown by onBatch is never swallowed: it becomes an uncaught
 * exception of the process.
 *
 * Writing. `write(buf, offsets, lengths, count)` hands `count` packets to the
 * kernel in one call and never blocks. It returns n: packets [0, n) were taken
 * (written, or refused one by one by the kernel — counted in `writeErrors`), and
 * packets [n, count) were not written because the device's queue is full
 * (`writeQueueFull`); the caller counts those as drops.
 *
 * After `close()` (idempotent; allowed inside onBatch) no onBatch follows, and
 * `start`/`write` throw ERR_TUN_CLOSED. `stats()` still works.
 */

import type { NativeTunStats } from '../native/index.js';
import { VNET_HDR_LEN } from '../wire/virtio.js';
import { TunError } from './errors.js';

/** Counters of one device since it was opened (kept by the addon, native/src/tun_dev.c). */
export type TunStats = NativeTunStats;

/** The receive side: filled before each onBatch, valid until it returns. */
export interface TunRx {
  readonly buf: Buffer;
  readonly offsets: Uint32Array;
  readonly lengths: Uint32Array;
}

/** The transmit side of `writeTx`: packets of rx.buf, batchSize entries. */
export interface TunTx {
  readonly offsets: Uint32Array;
  readonly lengths: Uint32Array;
}

export interface TunDevice {
  /** The interface name the kernel gave the device (e.g. "vpm0"). */
  readonly name: string;
  /** Most packets per onBatch; also the length of rx.offsets and rx.lengths. */
  readonly batchSize: number;
  /** Bytes per rx slot; packet i of a burst lies in slot i. Larger than any packet and its header. */
  readonly slotSize: number;
  /** The device's MTU: without offloads, the largest packet it reads or should be written. */
  readonly mtu: number;
  /**
   * Bytes in front of every packet that hold its virtio-net header: VNET_HDR_LEN
   * (10) on a device opened with vnetHdr, else 0. rx offsets point at the IP
   * packet, its header is the `headroom` bytes before; a packet written must have
   * its header in the same place (src/wire/virtio.ts).
   */
  readonly headroom: number;
  /** The TUN_F_* offload mask in effect (0 without virtio-net headers). */
  readonly offload: number;
  /**
   * After each write(): how many of the packets it took the kernel refused, with
   * the errno of packet i in txErrnos[i] (0: written) for i below write()'s result.
   */
  readonly lastWriteRefused: number;
  readonly txErrnos: Int32Array;
  readonly rx: TunRx;
  readonly tx: TunTx;
  /** Start reading; onBatch(count) once per burst. Throws ERR_TUN_STARTED if already started. */
  start(onBatch: (count: number) => void, onError?: (err: TunError) => void): void;
  /** Stop reading (idempotent); packets wait in the kernel's queue until start. */
  stop(): void;
  /** Write packets [0, count) of buf; returns how many were taken (see the module comment). */
  write(buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number;
  /**
   * The data plane's write: packets [0, count) of rx.buf as tx.offsets/tx.lengths
   * say (rewritten in place); the same contract as `write`, without the arrays
   * crossing the native boundary on every call.
   */
  writeTx(count: number): number;
  /**
   * Set the TUN_F_* offload mask (device-wide). The data plane drops the
   * segmentation offloads with it when the kernel refuses a super-packet it wrote.
   */
  setOffload(mask: number): void;
  /** Close the device (idempotent). */
  close(): void;
  stats(): TunStats;
}

/** Length of struct virtio_net_hdr (src/wire/virtio.ts), set with TUNSETVNETHDRSZ. */
export { VNET_HDR_LEN };

/** TUNSETOFFLOAD bits (include/uapi/linux/if_tun.h). USO4/USO6 exist since Linux 6.2 and go together. */
export const TunOffload = {
  CSUM: 0x01,
  TSO4: 0x02,
  TSO6: 0x04,
  TSO_ECN: 0x08,
  USO4: 0x20,
  USO6: 0x40,
} as const;

/** Everything vpm can use; openTun settles for what the kernel accepts. */
export const TUN_OFFLOAD_ALL =
  TunOffload.CSUM |
  TunOffload.TSO4 |
  TunOffload.TSO6 |
  TunOffload.TSO_ECN |
  TunOffload.USO4 |
  TunOffload.USO6;

/** The segmentation bits: the kernel hands over and takes back super-packets. */
export const TUN_OFFLOAD_SEGMENTATION =
  TunOffload.TSO4 | TunOffload.TSO6 | TunOffload.TSO_ECN | TunOffload.USO4 | TunOffload.USO6;

/** Names of the bits in `mask`, e.g. ["csum", "tso4", "tso6"] (for logs and stats). */
export function offloadNames(mask: number): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(TunOffload)) if (mask & v) out.push(k.toLowerCase());
  return out;
}

/** All-zero counters. */
export function emptyTunStats(): TunStats {
  return {
    polls: 0,
    readPackets: 0,
    readBatches: 0,
    readFullBatches: 0,
    readEagain: 0,
    readErrors: 0,
    readTruncated: 0,
    readShort: 0,
    lastReadErrno: 0,
    writeCalls: 0,
    writePackets: 0,
    writeQueueFull: 0,
    writeErrors: 0,
    lastWriteErrno: 0,
  };
}

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
  /**
   * Bytes per rx slot, larger than any packet plus its header. Default: mtu + 1
   * rounded up to 64; with vnetHdr, 10 + 65536 rounded up to 64 (a super-packet).
   */
  slotSize?: number;
  /** Transmit queue length (packets the kernel queues for us to read). Default 10,000. */
  txQueueLen?: number;
  /** Bring the link up. Default true. */
  up?: boolean;
  /**
   * IFF_VNET_HDR: every packet carries a virtio-net header, and the kernel may
   * hand over and take back checksum-offloaded packets and 64 KiB super-packets
   * (the offloads it accepts of `offload`). Default false.
   */
  vnetHdr?: boolean;
  /** With vnetHdr: the TUN_F_* mask to ask for. Default TUN_OFFLOAD_ALL. */
  offload?: number;
  /**
   * TUNSETPERSIST: the device (with its addresses and routes) outlives the fd,
   * and an open of an existing device of that name attaches to it again
   * (`existed` says so). `setPersist(false)` before `close()` deletes it. Default false.
   */
  persist?: boolean;
}

export const TUN_DEFAULTS = Object.freeze({
  name: 'vpm%d',
  multiQueue: false,
  batchSize: 64,
  mtu: 1500,
  txQueueLen: 10_000,
  up: true,
  vnetHdr: false,
  offload: TUN_OFFLOAD_ALL,
  persist: false,
});

export const TUN_MAX_BATCH = 4096;
export const TUN_MIN_MTU = 68;
export const TUN_MAX_MTU = 65535;
const SLOT_ALIGN = 64;
/** Offsets are 32-bit, and one rx buffer this large is already absurd. */
const MAX_RX_BYTES = 1 << 30;

/** The largest IPv4/IPv6 packet (a super-packet's length fits the 16-bit length field). */
export const MAX_PACKET = 65535;

/**
 * The default slot: larger than any packet (so that a full slot means "cut"), a
 * multiple of 64 bytes. Without headers that is the MTU plus one; with them a
 * whole super-packet plus its header.
 */
export function defaultSlotSize(mtu: number, vnetHdr = false): number {
  const largest = vnetHdr ? VNET_HDR_LEN + MAX_PACKET : mtu;
  return Math.ceil((largest + 1) / SLOT_ALIGN) * SLOT_ALIGN;
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
  const vnetHdr = opts.vnetHdr ?? TUN_DEFAULTS.vnetHdr;
  const slotSize = intIn(
    'slotSize',
    opts.slotSize ?? defaultSlotSize(mtu, vnetHdr),
    vnetHdr ? VNET_HDR_LEN + MAX_PACKET + 1 : mtu + 1,
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
    vnetHdr,
    offload: intIn('offload', opts.offload ?? TUN_DEFAULTS.offload, 0, 0xff),
    persist: opts.persist ?? TUN_DEFAULTS.persist,
  });
}
