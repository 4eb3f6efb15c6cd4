/**
 * A ring of packets from one worker thread to the main thread (issue 14): the
 * way a packet that has no flow — a SYN, a flow's first datagram, anything only
 * classification can place, a remove such as a SYN on a closing flow — reaches
 * the one writer of the shared translation table (docs/scale.md, "The worker
 * model"). One ring per worker: single producer (the worker), single consumer
 * (the main thread), over one SharedArrayBuffer.
 *
 * Layout. A control block of 384 bytes, then `slots` slots (a power of two) of
 * `SLOT_PREFIX + packetBytes` bytes each. The words every thread touches sit on
 * cache lines of their own, so that the producer's stores do not invalidate the
 * consumer's line and the other way round:
 *
 *     byte   0  TAIL   i32  slots published (free-running, mod 2^32)   producer stores
 *     byte  64  HEAD   i32  slots consumed (free-running, mod 2^32)    consumer stores
 *     byte 128  WAKE   i32  AWAKE 0 / ARMED 1 (the consumer sleeps)     both
 *     byte 192  pushed, full, oversize, invalid, wakeups   f64 ×5      producer stores
 *     byte 256  received                                   f64         consumer stores
 *     byte 320  MAGIC, slots, packetBytes, headroom        i32 ×4      constructor
 *
 * A slot (offsets from its start; every slot starts 32-byte aligned):
 *
 *     0        4        8                 32 - headroom      32                 32 + packetBytes
 *     +--------+--------+ ... unused ... +------------------+----------------- ... -+
 *     |  len   |  kind  |                |  virtio-net hdr  |  packet (len bytes)    |
 *     |  i32   |  i32   |                | (headroom bytes) |                        |
 *     +--------+--------+ ... unused ... +------------------+----------------- ... -+
 *
 * `len` is the packet's length (0..packetBytes), `kind` the caller's reason
 * code (an int32, stored and returned as given). `headroom` is fixed per ring
 * (0, or VNET_HDR_LEN on a TUN with IFF_VNET_HDR; at most 24): push copies the
 * `headroom` bytes just before the packet, and drain hands the packet over
 * with its header at the same place — the device's own convention (the header
 * in the headroom before `off`), so the pipeline's code reads a ring slot as
 * it reads the device's receive buffer, and may rewrite the packet in place
 * there before it writes it out. A packet longer than `packetBytes` is never
 * truncated: push refuses it and counts it (`oversize`); off/len outside the
 * source buffer (or not integers) are refused and counted as `invalid`.
 *
 * Why each side sees complete slots. The producer reads HEAD (Atomics.load),
 * and if TAIL - HEAD < slots writes the slot at TAIL (plain stores: len, kind,
 * header, packet), then publishes TAIL + 1 with Atomics.store. The consumer
 * loads TAIL (Atomics.load), reads the slots from HEAD up to it (plain loads),
 * and publishes each consumed slot with Atomics.store of HEAD + 1. In the
 * ECMAScript memory model a sequentially consistent atomic store that is read
 * by an atomic load synchronizes-with it: every plain write made before the
 * store happens-before every plain read made after the load. So the consumer,
 * having seen TAIL = t + 1, reads slot t's bytes as the producer wrote them
 * (release on TAIL, acquire on TAIL); and the producer, having seen HEAD =
 * h + 1, overwrites slot h only after the consumer's reads of it (release on
 * HEAD, acquire on HEAD) — the consumer never sees a slot being rewritten. Each
 * index has one writer, so neither needs a compare-and-swap; TAIL - HEAD
 * (mod 2^32) is the number of full slots, exact for the side that owns the
 * index it did not load, and an under-estimate of the free (producer) or full
 * (consumer) slots for the other, never an over-estimate.
 *
 * Wake-up without spinning. The main thread waits with Atomics.waitAsync on
 * WAKE (Node 20 has it; a MessagePort message would cost the producer a
 * serialization and an allocation per wake-up, and would still need a word
 * saying whether the consumer sleeps, or else a message per packet). The
 * consumer, finding the ring empty, stores WAKE = ARMED, checks again whether
 * the ring is empty (re-loads TAIL), and only then calls waitAsync(WAKE,
 * ARMED); if the re-check finds a packet it stores AWAKE and drains. The
 * producer, after its Atomics.store of TAIL, loads WAKE, and if it is ARMED
 * changes it to AWAKE (compareExchange) and then calls Atomics.notify. It does
 * so only for an armed consumer, so a consumer that keeps up costs the producer
 * one atomic load per packet, no system call ("publishing into an empty ring"
 * would wake on every packet of a consumer that keeps up).
 *
 * No packet is stranded. Take the producer's last push (P1: store TAIL, P2:
 * load WAKE) and the consumer going to sleep (C1: store ARMED, C2: load TAIL,
 * C3: waitAsync). All are sequentially consistent, so they sit in one total
 * order. If P1 precedes C2, the re-check sees the packet and the consumer does
 * not sleep. Otherwise C1 < C2 < P1 < P2, so P2 reads ARMED (nothing else
 * stores to WAKE in between: the consumer's next step is C3, and close() is
 * the consumer's own), the producer's compareExchange makes it AWAKE, and it
 * notifies. waitAsync checks the value and enqueues the waiter atomically with
 * respect to notify: if C3 comes before the compareExchange, the waiter is
 * queued when notify runs and is woken; if after, C3 finds AWAKE ≠ ARMED and
 * returns "not-equal" at once, and the consumer drains. Either way the packet
 * is drained without any further push. Both halves matter: without the
 * re-check (C2), a push between the consumer's last drain and C1 reads AWAKE
 * and does not notify, and the consumer sleeps over a full ring; without the
 * change of the word before notify, a notify that runs before C3 is lost and
 * C3 sleeps on an unchanged ARMED.
 *
 * Counters. Each is a Float64 with one writer (pushed, full, oversize,
 * invalid, wakeups: the producer; received: the consumer), plain `+= 1`: no
 * update is lost, any thread may read them (x64 and arm64 store an aligned
 * float64 in one access, though the language does not promise an untorn read:
 * they are statistics; a reader that needs exact figures reads them after the
 * writer has synchronized with it, e.g. through a message). Refusals never
 * touch the ring: pushes = pushed + full + oversize + invalid.
 *
 * A pending waitAsync does not keep Node's event loop alive (the daemon's TUN
 * polls and control socket do). `close()` ends `consume` (it wakes the
 * consumer's own waiter).
 *
 * Roles. Exactly one thread pushes into a ring and exactly one drains it; the
 * constructor's view and an `attach`ed view can take either role (the daemon:
 * main thread constructs and drains, the worker attaches and pushes). Neither
 * role keeps a private copy of its index, so a ring survives its producer:
 * a worker that dies leaves its published slots for the consumer, and a
 * restarted worker attaches to the same ring and goes on from TAIL. push
 * never allocates or throws; drain allocates nothing per packet.
 */

import { setImmediate as nextTurn } from 'node:timers/promises';

/** What `handles()` gives to postMessage and `PacketRing.attach` takes back. */
export interface PacketRingHandles {
  buffer: SharedArrayBuffer;
}

export interface PacketRingOptions {
  /** Slot count, a power of two in 2..2^20. */
  slots: number;
  /** Largest packet a slot holds, a multiple of 32 in 32..65536 (default 2048). */
  packetBytes?: number;
  /** Bytes before each packet copied with it (the virtio-net header): 0..24 (default 0). */
  headroom?: number;
}

/** Called by `drain` per packet: `buf[off, off + len)`, header in `buf[off - headroom, off)`; valid only during the call. */
export type PacketSink = (buf: Uint8Array, off: number, len: number, kind: number) => void;

/** Bytes before the packet in a slot: len, kind, the header's space. */
export const SLOT_PREFIX = 32;
/** Most header bytes a ring copies (SLOT_PREFIX less len and kind). */
export const MAX_HEADROOM = SLOT_PREFIX - 8;
export const DEFAULT_PACKET_BYTES = 2048;
const MAX_SLOTS = 1 << 20;
const MAX_PACKET_BYTES = 65536;
const CTL_BYTES = 384;
const MAGIC = 0x52494e47; // "RING"

// Int32 word indexes in the control block.
const TAIL = 0;
const HEAD = 16;
const WAKE = 32;
const G_MAGIC = 80;
const G_SLOTS = 81;
const G_PACKET_BYTES = 82;
const G_HEADROOM = 83;
// Float64 indexes in the control block.
const C_PUSHED = 24;
const C_FULL = 25;
const C_OVERSIZE = 26;
const C_INVALID = 27;
const C_WAKEUPS = 28;
const C_RECEIVED = 32;

// Atomics.waitAsync (ES2024, in Node since 16) is not in the compiler's lib yet.
type WaitAsync = (
  a: Int32Array,
  index: number,
  value: number,
) =>
  | { async: false; value: 'not-equal' | 'timed-out' }
  | { async: true; value: Promise<'ok' | 'timed-out'> };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

const AWAKE = 0;
const ARMED = 1;

export class PacketRing {
  readonly slots: number;
  readonly packetBytes: number;
  readonly headroom: number;
  private readonly buffer: SharedArrayBuffer;
  private readonly ctl: Int32Array;
  private readonly c: Float64Array;
  private readonly u8: Uint8Array;
  private readonly i32: Int32Array;
  private readonly mask: number;
  private readonly stride: number;
  private closed = false;

  /** A new ring (the consumer's side, usually: the main thread). */
  constructor(o: PacketRingOptions);
  /** A view of an existing ring (`attach`). */
  constructor(o: PacketRingOptions, buffer: SharedArrayBuffer);
  constructor(o: PacketRingOptions, existing?: SharedArrayBuffer) {
    const packetBytes = o.packetBytes ?? DEFAULT_PACKET_BYTES;
    const headroom = o.headroom ?? 0;
    const slots = o.slots;
    if (!Number.isInteger(slots) || slots < 2 || slots > MAX_SLOTS || (slots & (slots - 1)) !== 0)
      throw new RangeError(`packet ring slots ${slots} must be a power of two in 2..${MAX_SLOTS}`);
    if (
      !Number.isInteger(packetBytes) ||
      packetBytes < 32 ||
      packetBytes > MAX_PACKET_BYTES ||
      packetBytes % 32 !== 0
    )
      throw new RangeError(
        `packet ring packetBytes ${packetBytes} must be a multiple of 32 in 32..${MAX_PACKET_BYTES}`,
      );
    if (!Number.isInteger(headroom) || headroom < 0 || headroom > MAX_HEADROOM)
      throw new RangeError(
        `packet ring headroom ${headroom} must be an integer in 0..${MAX_HEADROOM}`,
      );
    this.slots = slots;
    this.packetBytes = packetBytes;
    this.headroom = headroom;
    this.mask = slots - 1;
    this.stride = SLOT_PREFIX + packetBytes;
    const bytes = CTL_BYTES + slots * this.stride;
    this.buffer = existing ?? new SharedArrayBuffer(bytes);
    if (this.buffer.byteLength !== bytes)
      throw new RangeError(
        `packet ring buffer of ${this.buffer.byteLength} bytes, expected ${bytes}`,
      );
    this.ctl = new Int32Array(this.buffer, 0, CTL_BYTES / 4);
    this.c = new Float64Array(this.buffer, 0, CTL_BYTES / 8);
    this.u8 = new Uint8Array(this.buffer, CTL_BYTES);
    this.i32 = new Int32Array(this.buffer, CTL_BYTES);
    if (existing === undefined) {
      this.ctl[G_SLOTS] = slots;
      this.ctl[G_PACKET_BYTES] = packetBytes;
      this.ctl[G_HEADROOM] = headroom;
      Atomics.store(this.ctl, G_MAGIC, MAGIC);
    }
  }

  /** What to postMessage to the thread on the other side. */
  handles(): PacketRingHandles {
    return { buffer: this.buffer };
  }

  /** The other thread's view of a ring made by `new PacketRing` (geometry read from the buffer). */
  static attach(h: PacketRingHandles): PacketRing {
    if (!(h?.buffer instanceof SharedArrayBuffer) || h.buffer.byteLength < CTL_BYTES)
      throw new TypeError('packet ring handles need the SharedArrayBuffer of handles().buffer');
    const ctl = new Int32Array(h.buffer, 0, CTL_BYTES / 4);
    if (Atomics.load(ctl, G_MAGIC) !== MAGIC)
      throw new TypeError('packet ring handles: the buffer is not a packet ring');
    return new PacketRing(
      { slots: ctl[G_SLOTS]!, packetBytes: ctl[G_PACKET_BYTES]!, headroom: ctl[G_HEADROOM]! },
      h.buffer,
    );
  }

  // ─── producer (one worker) ────────────────────────────────────────────────

  /**
   * Copies `buf[off, off + len)` and the `headroom` bytes before it into the
   * next slot and publishes it. False, counted, when the ring is full (`full`),
   * the packet is longer than a slot (`oversize`), or off/len do not fit in buf
   * (`invalid`). Never allocates or throws.
   */
  push(buf: Uint8Array, off: number, len: number, kind: number): boolean {
    const hr = this.headroom;
    if (
      (off | 0) !== off ||
      (len | 0) !== len ||
      len < 0 ||
      off - hr < 0 ||
      off + len > buf.length
    ) {
      this.c[C_INVALID]! += 1;
      return false;
    }
    if (len > this.packetBytes) {
      this.c[C_OVERSIZE]! += 1;
      return false;
    }
    const ctl = this.ctl;
    const tail = Atomics.load(ctl, TAIL);
    if (((tail - Atomics.load(ctl, HEAD)) | 0) === this.slots) {
      this.c[C_FULL]! += 1;
      return false;
    }
    const p = (tail & this.mask) * this.stride;
    const u8 = this.u8;
    this.i32[p >> 2] = len;
    this.i32[(p >> 2) + 1] = kind | 0;
    // Byte loops: a subarray for TypedArray.set would allocate a view per packet.
    const h = p + SLOT_PREFIX - hr;
    const from = off - hr;
    for (let i = 0; i < hr; i++) u8[h + i] = buf[from + i]!;
    const d = p + SLOT_PREFIX;
    for (let i = 0; i < len; i++) u8[d + i] = buf[off + i]!;
    Atomics.store(ctl, TAIL, (tail + 1) | 0); // publish (release)
    this.c[C_PUSHED]! += 1;
    if (
      Atomics.load(ctl, WAKE) === ARMED &&
      Atomics.compareExchange(ctl, WAKE, ARMED, AWAKE) === ARMED
    ) {
      Atomics.notify(ctl, WAKE, 1);
      this.c[C_WAKEUPS]! += 1;
    }
    return true;
  }

  // ─── consumer (the main thread) ───────────────────────────────────────────

  /**
   * Calls `fn` on up to `max` published slots in order, each with a view into
   * the ring that is valid only during the call (the slot is handed back to
   * the producer when fn returns, or throws: a throwing fn loses that packet,
   * never blocks the ring). Returns how many it consumed.
   */
  drain(fn: PacketSink, max: number): number {
    const ctl = this.ctl;
    let head = Atomics.load(ctl, HEAD);
    const tail = Atomics.load(ctl, TAIL); // acquire: the slots up to it are complete
    let n = 0;
    while (head !== tail && n < max) {
      const p = (head & this.mask) * this.stride;
      const len = this.i32[p >> 2]!;
      const kind = this.i32[(p >> 2) + 1]!;
      head = (head + 1) | 0;
      n++;
      try {
        fn(this.u8, p + SLOT_PREFIX, len, kind);
      } finally {
        Atomics.store(ctl, HEAD, head); // release the slot to the producer
        this.c[C_RECEIVED]! += 1;
      }
    }
    return n;
  }

  /** Whether nothing is published and not consumed (exact for the consumer). */
  get empty(): boolean {
    return Atomics.load(this.ctl, TAIL) === Atomics.load(this.ctl, HEAD);
  }

  /** Published slots not consumed yet. */
  get length(): number {
    return (Atomics.load(this.ctl, TAIL) - Atomics.load(this.ctl, HEAD)) >>> 0;
  }

  /** Whether the consumer is armed: asleep, or about to be, waiting for a push. */
  get sleeping(): boolean {
    return Atomics.load(this.ctl, WAKE) === ARMED;
  }

  /**
   * The consumer's wait: null when there is something to drain now (or the
   * ring is closed); otherwise a promise that settles once a producer has
   * published (or close() was called). Arms WAKE and checks again after arming
   * (see the theory of operation).
   */
  whenReadable(): Promise<unknown> | null {
    if (this.closed || !this.empty) return null;
    const ctl = this.ctl;
    Atomics.store(ctl, WAKE, ARMED);
    if (!this.empty || this.closed) {
      Atomics.store(ctl, WAKE, AWAKE);
      return null;
    }
    const w = waitAsync(ctl, WAKE, ARMED);
    return w.async ? w.value : null; // not async: a producer disarmed it already
  }

  /**
   * Drains the ring until close(): up to `max` packets per turn of the event
   * loop, asleep (no spinning) while it is empty.
   */
  async consume(fn: PacketSink, max: number): Promise<void> {
    while (!this.closed) {
      this.drain(fn, max);
      if (this.closed) return;
      if (!this.empty) {
        await nextTurn(); // more to do: let the event loop run first
        continue;
      }
      const w = this.whenReadable();
      if (w !== null) await w;
    }
  }

  /** Ends `consume` (wakes its wait). The ring itself stays usable by `drain`. */
  close(): void {
    this.closed = true;
    Atomics.store(this.ctl, WAKE, AWAKE);
    Atomics.notify(this.ctl, WAKE);
  }

  // ─── counters (readable from any thread) ──────────────────────────────────

  /** Packets published. */
  get pushed(): number {
    return this.c[C_PUSHED]!;
  }
  /** Packets refused because the ring was full. */
  get full(): number {
    return this.c[C_FULL]!;
  }
  /** Packets refused because they were longer than a slot. */
  get oversize(): number {
    return this.c[C_OVERSIZE]!;
  }
  /** Pushes refused because off/len did not fit the source buffer. */
  get invalid(): number {
    return this.c[C_INVALID]!;
  }
  /** Notifies the producer sent to a sleeping consumer. */
  get wakeups(): number {
    return this.c[C_WAKEUPS]!;
  }
  /** Packets drained. */
  get received(): number {
    return this.c[C_RECEIVED]!;
  }
}
