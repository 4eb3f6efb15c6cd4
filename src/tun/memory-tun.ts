/**
 * MemoryTun: a TunDevice without a kernel, for testing the pipeline.
 *
 * `inject(packets)` queues packets for reading. While the device is started they
 * are delivered at once, synchronously, exactly as the kernel device delivers
 * them: copied into consecutive slots of the one preallocated `rx` buffer, at
 * most `batchSize` per onBatch call. While stopped they wait (`pending`). An
 * exception thrown by onBatch propagates to the caller of inject (the kernel
 * device makes it an uncaught exception instead). inject from inside onBatch
 * queues; the packets follow in a later batch of the same delivery.
 *
 * With `vnetHdr`, each injected packet is what a read() of the kernel device
 * returns: a 10-byte virtio-net header, then the IP packet; rx offsets point at
 * the IP packet (headroom 10), and `written` holds header and packet as write()
 * got them. `refuse(frame)` (settable) plays the kernel's per-packet refusal: it
 * returns an errno to refuse that packet (counted in writeErrors, reported in
 * txErrnos and lastWriteRefused), 0 to take it.
 *
 * `write` copies each packet into `written` (test-only allocation) until
 * `writeCapacity` runs out; then it stops as a full kernel queue does (EAGAIN,
 * counted in writeQueueFull) and returns how many it took. Set writeCapacity
 * again to "drain" the queue.
 *
 * `fail()` makes the device fail like a deleted kernel device: reading stops,
 * then onError (or, without one, a thrown TunError) with ERR_TUN_IO.
 */

import {
  defaultSlotSize,
  emptyTunStats,
  TUN_DEFAULTS,
  TUN_MAX_BATCH,
  TUN_OFFLOAD_ALL,
  type TunDevice,
  type TunRx,
  type TunStats,
  type TunTx,
  VNET_HDR_LEN,
} from './device.js';
import { TunError } from './errors.js';

const EAGAIN = 11;
const EBADFD = 77;

export interface MemoryTunOptions {
  /** Default "mem0". */
  name?: string;
  /** Default 64 (as openTun). */
  batchSize?: number;
  /** Default 1500. */
  mtu?: number;
  /** Default: mtu + 1 rounded up to 64 (as openTun). */
  slotSize?: number;
  /** Packets write() accepts before it reports a full queue. Default Infinity. */
  writeCapacity?: number;
  /** Packets carry a virtio-net header (headroom 10). Default false. */
  vnetHdr?: boolean;
  /** The offload mask it reports (with vnetHdr). Default TUN_OFFLOAD_ALL. */
  offload?: number;
}

export class MemoryTun implements TunDevice {
  readonly name: string;
  readonly batchSize: number;
  readonly slotSize: number;
  readonly mtu: number;
  readonly headroom: number;
  offload: number;
  lastWriteRefused = 0;
  readonly txErrnos = new Int32Array(TUN_MAX_BATCH);
  readonly rx: TunRx;
  readonly tx: TunTx;
  /** Copies of the packets written (with their header, if any), in order. */
  readonly written: Uint8Array[] = [];
  /** Packets write() still accepts before it reports a full queue (EAGAIN). */
  writeCapacity: number;
  /** The kernel's verdict on one packet written (header and packet): an errno to refuse it, or 0. */
  refuse: ((frame: Uint8Array) => number) | null = null;
  /** Every setOffload() mask, in order. */
  readonly offloadHistory: number[] = [];

  #queue: Uint8Array[] = [];
  #head = 0;
  #onBatch: ((count: number) => void) | null = null;
  #onError: ((err: TunError) => void) | null = null;
  #delivering = false;
  #closed = false;
  readonly #st: TunStats = emptyTunStats();

  constructor(opts: MemoryTunOptions = {}) {
    this.name = opts.name ?? 'mem0';
    this.batchSize = opts.batchSize ?? TUN_DEFAULTS.batchSize;
    this.mtu = opts.mtu ?? TUN_DEFAULTS.mtu;
    const vnet = opts.vnetHdr ?? false;
    this.headroom = vnet ? VNET_HDR_LEN : 0;
    this.offload = vnet ? (opts.offload ?? TUN_OFFLOAD_ALL) : 0;
    this.slotSize = opts.slotSize ?? defaultSlotSize(this.mtu, vnet);
    this.writeCapacity = opts.writeCapacity ?? Number.POSITIVE_INFINITY;
    if (!Number.isInteger(this.batchSize) || this.batchSize < 1 || this.batchSize > TUN_MAX_BATCH) {
      throw new TunError(
        'ERR_TUN_OPTION',
        `MemoryTun: batchSize must be 1..${TUN_MAX_BATCH}, got ${this.batchSize}`,
      );
    }
    if (!Number.isInteger(this.slotSize) || this.slotSize <= this.mtu) {
      throw new TunError(
        'ERR_TUN_OPTION',
        `MemoryTun: slotSize must be an integer > mtu ${this.mtu}, got ${this.slotSize}`,
      );
    }
    this.rx = Object.freeze({
      buf: Buffer.alloc(this.batchSize * this.slotSize),
      offsets: new Uint32Array(this.batchSize),
      lengths: new Uint32Array(this.batchSize),
    });
    this.tx = Object.freeze({
      offsets: new Uint32Array(this.batchSize),
      lengths: new Uint32Array(this.batchSize),
    });
  }

  /** Packets injected and not delivered yet. */
  get pending(): number {
    return this.#queue.length - this.#head;
  }

  get started(): boolean {
    return this.#onBatch !== null;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Queue packets for reading (copied now); delivered at once if started. */
  inject(packets: readonly Uint8Array[]): void {
    this.#checkOpen('inject');
    for (const p of packets) {
      if (p.length >= this.slotSize) {
        throw new RangeError(
          `MemoryTun.inject: a packet of ${p.length} bytes does not fit a slot of ${this.slotSize}`,
        );
      }
    }
    for (const p of packets) this.#queue.push(Uint8Array.prototype.slice.call(p));
    this.#deliver();
  }

  /** Fail as a deleted kernel device does: stop reading, then onError(ERR_TUN_IO). */
  fail(errno = EBADFD): void {
    this.#checkOpen('fail');
    const onError = this.#onError;
    this.stop();
    this.#st.readErrors++;
    this.#st.lastReadErrno = errno;
    const err = new TunError(
      'ERR_TUN_IO',
      `TUN device ${this.name}: read failed: errno ${errno}; reading stopped`,
      errno,
      'read',
    );
    if (onError) onError(err);
    else throw err;
  }

  start(onBatch: (count: number) => void, onError?: (err: TunError) => void): void {
    this.#checkOpen('start');
    if (this.#onBatch) {
      throw new TunError(
        'ERR_TUN_STARTED',
        `MemoryTun.start: ${this.name} is already started; stop() it first`,
      );
    }
    this.#onBatch = onBatch;
    this.#onError = onError ?? null;
    this.#deliver();
  }

  stop(): void {
    this.#onBatch = null;
    this.#onError = null;
  }

  write(buf: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, count: number): number {
    this.#checkOpen('write');
    this.lastWriteRefused = 0;
    if (!Number.isInteger(count) || count < 0 || count > offsets.length || count > lengths.length) {
      throw new RangeError(
        `MemoryTun.write: count ${count} exceeds offsets (${offsets.length}) or lengths (${lengths.length})`,
      );
    }
    for (let i = 0; i < count; i++) {
      if (offsets[i]! < this.headroom || offsets[i]! + lengths[i]! > buf.length) {
        throw new RangeError(
          `MemoryTun.write: packet ${i} (off ${offsets[i]} len ${lengths[i]}) beyond buffer of ${buf.length} bytes or without its ${this.headroom}-byte header room`,
        );
      }
    }
    this.#st.writeCalls++;
    let i = 0;
    for (; i < count; i++) {
      if (this.writeCapacity <= 0) {
        this.#st.writeQueueFull++;
        this.#st.lastWriteErrno = EAGAIN;
        break;
      }
      const off = offsets[i]! - this.headroom;
      const copy = new Uint8Array(lengths[i]! + this.headroom);
      copy.set(buf.subarray(off, off + copy.length));
      const errno = this.refuse?.(copy) ?? 0;
      this.txErrnos[i] = errno;
      if (errno !== 0) {
        this.#st.writeErrors++;
        this.#st.lastWriteErrno = errno;
        this.lastWriteRefused++;
        continue;
      }
      this.written.push(copy);
      this.writeCapacity--;
      this.#st.writePackets++;
    }
    return i;
  }

  writeTx(count: number): number {
    if (!Number.isInteger(count) || count < 0 || count > this.batchSize)
      throw new RangeError(`MemoryTun.writeTx: count ${count} is not 0..${this.batchSize}`);
    return this.write(this.rx.buf, this.tx.offsets, this.tx.lengths, count);
  }

  setOffload(mask: number): void {
    this.#checkOpen('setOffload');
    if (mask !== 0 && this.headroom === 0)
      throw new TunError('ERR_TUN_OPTION', `MemoryTun.setOffload: ${this.name} has no headers`);
    this.offload = mask;
    this.offloadHistory.push(mask);
  }

  close(): void {
    this.stop();
    this.#closed = true;
    this.#queue = [];
    this.#head = 0;
  }

  stats(): TunStats {
    return { ...this.#st };
  }

  #checkOpen(what: string): void {
    if (this.#closed)
      throw new TunError('ERR_TUN_CLOSED', `MemoryTun.${what}: ${this.name} is closed`);
  }

  #deliver(): void {
    if (this.#delivering) return; // inject/start from inside onBatch: the loop below goes on
    this.#delivering = true;
    try {
      const { buf, offsets, lengths } = this.rx;
      while (this.#onBatch && this.#head < this.#queue.length) {
        let n = 0;
        while (n < this.batchSize && this.#head < this.#queue.length) {
          const p = this.#queue[this.#head++]!;
          if (p.length < this.headroom) {
            this.#st.readShort++; // as the kernel device: shorter than its header, dropped
            continue;
          }
          const at = n * this.slotSize;
          buf.set(p, at);
          offsets[n] = at + this.headroom;
          lengths[n] = p.length - this.headroom;
          n++;
        }
        if (this.#head === this.#queue.length) {
          this.#queue = [];
          this.#head = 0;
        }
        if (n === 0) continue; // only short packets: nothing to deliver
        this.#st.polls++;
        this.#st.readPackets += n;
        this.#st.readBatches++;
        if (n === this.batchSize) this.#st.readFullBatches++;
        else this.#st.readEagain++;
        this.#onBatch(n);
      }
    } finally {
      this.#delivering = false;
    }
  }
}
