/**
 * Copies of SYNs, kept until the instance answers: the passive health check's
 * means to send a refused SYN to another instance of the AID.
 *
 * Theory of operation. A client's SYN that opens a flow to an AID with more than
 * one instance is copied, as the client sent it (a partial checksum completed by
 * the caller), into one slot of a fixed pool (`health.synCopies` slots of
 * SYN_COPY_MAX bytes, allocated at start-up). The slot belongs to the flow until
 * the instance answers — a SYN+ACK or a RST — or the flow is removed (expiry,
 * replacement): `release(flow)`. Each slot also records the instances the SYN
 * was sent to (at most MAX_TRIES), so that a retry never goes to one of them
 * again. A full pool (or a SYN longer than a slot: one with data, TCP Fast Open)
 * means only that this SYN cannot be retried; the caller counts it. Nothing here
 * allocates or throws after construction.
 */

/** The longest SYN kept: an IPv4 header and a TCP header with the most options (60 + 60). */
export const SYN_COPY_MAX = 120;
/** Instances one SYN is sent to at most (the first and the retries). */
export const MAX_TRIES = 8;

export class SynCopies {
  readonly capacity: number;
  /** The copies, slot k at k * SYN_COPY_MAX. */
  readonly buf: Uint8Array;
  readonly lengths: Uint16Array;
  /** Instances tried, slot k's at k * MAX_TRIES, `triedCount[k]` of them. */
  readonly tried: Uint16Array;
  readonly triedCount: Uint8Array;
  /** Per flow slot: its copy's slot, or -1. */
  private readonly ofFlow: Int32Array;
  private readonly freeStack: Int32Array;
  private freeTop: number;

  constructor(capacity: number, maxFlows: number) {
    this.capacity = capacity;
    this.buf = new Uint8Array(capacity * SYN_COPY_MAX);
    this.lengths = new Uint16Array(capacity);
    this.tried = new Uint16Array(capacity * MAX_TRIES);
    this.triedCount = new Uint8Array(capacity);
    this.ofFlow = new Int32Array(maxFlows).fill(-1);
    this.freeStack = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.freeStack[i] = capacity - 1 - i;
    this.freeTop = capacity;
  }

  /** Copies in use now. */
  get inUse(): number {
    return this.capacity - this.freeTop;
  }

  /** The copy slot of flow `flow`, or -1. */
  of(flow: number): number {
    return flow < this.ofFlow.length ? this.ofFlow[flow]! : -1;
  }

  /**
   * Keep `len` bytes at src[off] for flow `flow`, sent to instance `instance`.
   * Returns the copy's slot, or -1 (pool full, SYN too long: not kept).
   */
  take(flow: number, src: Uint8Array, off: number, len: number, instance: number): number {
    if (flow >= this.ofFlow.length || len > SYN_COPY_MAX) return -1;
    let k = this.ofFlow[flow]!;
    if (k < 0) {
      if (this.freeTop === 0) return -1;
      k = this.freeStack[--this.freeTop]!;
      this.ofFlow[flow] = k;
    }
    // A byte loop (at most 120 bytes): a subarray would allocate a view per SYN.
    const buf = this.buf;
    const at = k * SYN_COPY_MAX;
    for (let i = 0; i < len; i++) buf[at + i] = src[off + i]!;
    this.lengths[k] = len;
    this.tried[k * MAX_TRIES] = instance;
    this.triedCount[k] = 1;
    return k;
  }

  /** Note that copy `k` was sent to `instance`; false when it was sent to MAX_TRIES already. */
  addTried(k: number, instance: number): boolean {
    const n = this.triedCount[k]!;
    if (n >= MAX_TRIES) return false;
    this.tried[k * MAX_TRIES + n] = instance;
    this.triedCount[k] = n + 1;
    return true;
  }

  /** Flow `flow`'s copy is no longer needed (answered, or the flow is gone). */
  release(flow: number): void {
    if (flow >= this.ofFlow.length) return;
    const k = this.ofFlow[flow]!;
    if (k < 0) return;
    this.ofFlow[flow] = -1;
    this.freeStack[this.freeTop++] = k;
  }
}
