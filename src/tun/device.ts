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

import type { TunError } from './errors.js';

/** Counters of one device since it was opened. */
export interface TunStats {
  /** Times the device was found readable. */
  polls: number;
  /** Packets delivered to onBatch. */
  readPackets: number;
  /** onBatch calls; readPackets / readBatches is the mean batch. */
  readBatches: number;
  /** Bursts that filled the whole batch (more may have been waiting). */
  readFullBatches: number;
  /** Bursts that ended because the kernel had no more packets (EAGAIN). */
  readEagain: number;
  /** Reads that failed (the packet was dropped; a fatal one also stops reading). */
  readErrors: number;
  /** Packets that filled a whole slot and so may have been cut: dropped. */
  readTruncated: number;
  /** errno of the last failed read, 0 if none. */
  lastReadErrno: number;
  /** write() calls. */
  writeCalls: number;
  /** Packets the kernel accepted. */
  writePackets: number;
  /** Writes that found the queue full (EAGAIN/ENOBUFS); the rest of that batch was not written. */
  writeQueueFull: number;
  /** Packets the kernel refused with another errno (e.g. EINVAL): dropped. */
  writeErrors: number;
  /** errno of the last failed write, 0 if none. */
  lastWriteErrno: number;
}

/** The receive side: filled before each onBatch, valid until it returns. */
export interface TunRx {
  readonly buf: Buffer;
  readonly offsets: Uint32Array;
  readonly lengths: Uint32Array;
}

export interface TunDevice {
  /** The interface name the kernel gave the device (e.g. "vpm0"). */
  readonly name: string;
  /** Most packets per onBatch; also the length of rx.offsets and rx.lengths. */
  readonly batchSize: number;
  /** Bytes per rx slot; packet i of a burst starts at i * slotSize. Larger than any packet. */
  readonly slotSize: number;
  /** The device's MTU: the largest packet it reads or should be written. */
  readonly mtu: number;
  readonly rx: TunRx;
  /** Start reading; onBatch(count) once per burst. Throws ERR_TUN_STARTED if already started. */
  start(onBatch: (count: number) => void, onError?: (err: TunError) => void): void;
  /** Stop reading (idempotent); packets wait in the kernel's queue until start. */
  stop(): void;
  /** Write packets [0, count) of buf; returns how many were taken (see the module comment). */
  write(buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number;
  /** Close the device (idempotent). */
  close(): void;
  stats(): TunStats;
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
    lastReadErrno: 0,
    writeCalls: 0,
    writePackets: 0,
    writeQueueFull: 0,
    writeErrors: 0,
    lastWriteErrno: 0,
  };
}
