/**
 * The translation table shared by worker threads: one writer, lock-free readers.
 *
 * Theory of operation. Issue 14 runs one worker_thread per TUN queue, and a
 * packet of any flow may arrive on any queue, so every worker must find every
 * flow. FlowTable (table.ts) cannot be shared: its backward-shift deletion moves
 * entries under a concurrent reader (which then misses a live flow), every
 * packet relinks its timer lists, and its per-flow Float64 counters are
 * read-modify-written. This table keeps FlowTable's model — slots as handles,
 * two sides per flow in one open-addressing index of `slot*2+side+1` entries,
 * the same seeded hash, IPv4 and IPv6 keys (the fold of each IPv6 address in
 * the u32 columns, the 16 words in `addr6`, the family mixed into the hash),
 * the same states, timer classes and timeouts — and changes what concurrency
 * breaks. Everything shared lives in SharedArrayBuffers (`sharedTableHandles`
 * hands them to a worker through postMessage; `SharedFlowTable.attach` builds
 * that worker's view). The records use flowLayout's columns (layout.ts), so the
 * thread that later mirrors them into the crash-survival mapping copies bytes.
 *
 * Flow creation: one writer. Exactly one thread — the one that built the table,
 * the main thread, which also keeps classification, the port pool, the
 * registry and cooperative negotiation — creates, removes and repoints flows and
 * runs expiry. Any thread looks up, and any worker touches and counts. With one
 * writer the index needs no compare-and-swap: no two threads ever race to fill
 * a cell or to claim a key (the writer's own probe for a colliding key is
 * exact, as nobody else inserts), a free slot is handed out by one thread, and
 * the order of its stores is the only thing readers depend on. A worker that
 * sees a packet needing a new flow asks the writer (a message); the writer's
 * answer is the flow, or its refusal.
 *
 * Publication (seqlock per slot). `seq[s]` is odd while slot s is free or being
 * changed, even while it is a stable, published flow. The writer fills a slot's
 * fields while its seq is odd, then stores seq+1 (even), and only then stores
 * the two index entries (Atomics.store). A reader Atomics.loads an entry, then
 * the slot's seq q, compares the key fields (Atomics.load each), and loads seq
 * again: the match counts only if q is even and unchanged. All of these are
 * sequentially consistent atomics (the writer's field stores too), so in their
 * one total order the key reads sit between two reads of the same even seq —
 * and the writer changes fields only between an odd and the next even store of
 * seq, which is monotonic (no ABA short of 2^31 changes of one slot during one
 * lookup): a matching key was the slot's key for that whole interval. A reader
 * that meets an odd seq on a slot whose state is FREE skips the entry (it is a
 * stale entry of a removed flow: the flow it might name is not published yet,
 * or already gone); on a slot being changed (creation, repoint) it re-reads, at
 * most SPIN times, then skips — only side 0 of a flow in the middle of a repoint
 * can be missed so, and only when the writer is descheduled between two stores.
 *
 * Removal and reuse. The writer stores seq odd, exchanges the state to FREE,
 * stores TOMBSTONE into both index entries, and pushes the slot on a FIFO free
 * ring (a freed slot is reused as late as possible). A reader that loaded the
 * entry before the tombstone sees the odd seq, or — if the slot was reused
 * meanwhile — a new even seq and a key that either is not its key (it probes
 * on) or is (then it has found the flow that now holds that key: correct). A
 * cell is never set back to 0 while it may be read, so a probe run never breaks:
 * a key stays in the cell it was put in for as long as it lives, and every cell
 * between its home and it stays non-empty, so a reader that starts after the
 * key's publication always reaches it. Inserts reuse the first tombstone of the
 * run (after the writer's own lookup showed the key absent).
 *
 * Rebuild without blocking readers (double buffer, epochs). Tombstones
 * accumulate; when they exceed a quarter of the index the writer builds a fresh
 * index from the live slots in the spare buffer and switches the generation
 * word GEN (active index = GEN & 1) with one Atomics.store. The old index is
 * then never written until the writer's next switch. Readers announce which
 * generation they read: enter = load GEN = g, store ann[w] = g+1, load GEN
 * again and retry unless it is still g; leave = store ann[w] = 0. The writer
 * fills the spare (the index of generation GEN-1) only when every ann[w] is 0
 * or GEN+1. Why that is enough: a reader with ann = g+1 entered when GEN was g
 * (its second load); if the writer's check saw ann[w] = 0 before the reader's
 * store, then the writer's earlier store of GEN (which made g's index the
 * spare) precedes the reader's second load, so the reader retries on the new
 * GEN — so no reader is ever inside an index the writer clears. A reader
 * inside the old index after a switch still answers correctly: that index holds
 * every key that was live at the switch, unmodified, with no broken runs; flows
 * removed since are caught by their slot's seq (above); a flow inserted after
 * the switch is missing from it, which is right for a lookup that entered
 * before the insert. The writer never waits for a reader on this path: it
 * postpones the rebuild when a reader is still in the old generation (tries
 * again at its next change). Only when live entries plus tombstones reach 3/4
 * of the index (no empty cell would be left for a miss to stop at) does it spin
 * for the grace period, which lasts one lookup (nanoseconds) unless a reader is
 * descheduled in the middle of one. A worker that dies mid-lookup leaves its
 * ann set: `releaseWorker(w)` (by the writer, when it restarts the worker)
 * clears it.
 *
 * Per-packet updates, no locks, no relinking. `touch(s, state, now)` writes the
 * calling worker's own cells only: `lastSeen`, and `count` the packet and byte
 * counters, in per-worker columns (cell w*capacity+s, written by worker w
 * alone; worker-major so that two workers on two flows never share a cache
 * line). A cell belongs to one flow: `owner[w*capacity+s]` holds the slot's
 * generation `gen[s]` (the writer gives each new flow a fresh one), and a
 * worker that finds another generation there zeroes its cells first, then
 * stores the owner — so the writer never writes a worker's cell, every cell has
 * exactly one writer, and a reader summing a flow (`pktsInOf`, `lastSeenOf`,
 * ...) adds only the cells whose owner is the flow's generation, plus the
 * flow's base in the records (what `restoreFlow` brought; 0 for a new flow).
 * The counters are Float64 (plain stores by their one writer: no update is
 * lost; x64 and arm64 store an aligned float64 in one access, though the
 * language does not promise a reader an untorn one — these are statistics).
 * The state moves forward only: every transition of state.ts raises the state
 * number (TCP 1 → 6, UDP 7 → 8; FREE is never a target), so `touch` stores
 * the new state with a compare-and-swap loop that never lowers it and never
 * revives a FREE slot, and `advanceTcp` recomputes nextState from the state it
 * swaps from (each packet's transition is applied to the state as it is at
 * that moment: the outcome of some order of the packets, as on the wire). FIN
 * bits are Atomics.or'ed. The one thread that moves a flow out of the
 * embryonic classes — a worker's successful swap, or the writer's exchange to
 * FREE — decrements the shared embryonic count, so it is exact.
 *
 * A handle found by a worker can go stale: the writer may remove the flow and
 * reuse the slot before the worker has read the fields it rewrites with.
 * `lastSeq` is the seq the last successful lookup saw; `unchanged(s, q)` after
 * reading the fields tells whether they were still that flow's (a caller that
 * gets false looks up again). A touch or count through a stale handle lands
 * on the new occupant (a packet's worth) — as the free ring is FIFO this needs
 * a full cycle of the free slots during one packet.
 *
 * Expiry by the writer: `expire` scans slots from a cursor (at most `scan` per
 * call, all by default, and at most `budget` removals), and removes a flow
 * whose last activity — the latest of its base and its owned worker stamps —
 * is older than its timer class's timeout (class from its state, STATE_TIMER).
 * A flow touched by a worker during the scan of its slot may go at the end of
 * its timeout anyway; its next packet then finds no flow, as it would a
 * moment later.
 *
 * Floods (limits.embryonicFlows), without per-packet relinking. The writer
 * keeps its own queue of the flows created embryonic, in creation order, each
 * with the last-activity stamp it had when queued. The oldest embryonic flow is
 * found at the head: an entry whose flow has left the embryonic classes (which
 * it never re-enters) is dropped, and one that has been active since it was
 * queued (a retransmitted SYN) goes to the tail with its new stamp — a second
 * chance, at most SECOND_CHANCES per call — so the victim is the least
 * recently active embryonic flow, as in FlowTable, at O(1) amortized.
 *
 * Nothing here allocates or throws on lookup, touch or count. Writer-only
 * methods on a worker's view, and a worker index claimed twice, throw: those
 * are wiring errors, found at start-up.
 */

import { get32 } from '../wire/bytes.js';
import { IPPROTO_UDP } from '../wire/ipv4.js';
import { TCP_FIN } from '../wire/tcp.js';
import {
  FLOW_FILE_MAGIC,
  FLOW_FILE_VERSION,
  FLOW_HEADER_BYTES,
  type FlowColumns,
  flowColumns,
  flowLayout,
  H_CAPACITY,
  H_CHECK,
  H_FLAGS,
  H_MAGIC,
  H_NEXT_ID_BYTE,
  H_PID,
  H_VERSION,
  headerCheck,
  RECORD_VERSION,
  recordCheck,
} from './layout.js';
import {
  FIN_FROM_CLIENT,
  FIN_FROM_SERVER,
  FlowState,
  nextState,
  nextUdpState,
  STATE_TIMER,
  TIMER_CLASSES,
  TimerClass,
} from './state.js';
import {
  CREATE_COLLISION,
  CREATE_FULL,
  type FlowKeyArgs,
  type FlowRecordArgs,
  fold6,
  MAX_REMOVE_LISTENERS,
} from './table.js';

export { CREATE_COLLISION, CREATE_FULL };

/** An index cell of a removed entry: probed past, reusable by an insert. */
export const TOMBSTONE = -1;
/** Re-reads of a slot being changed before a lookup skips it. */
export const SPIN = 1024;
/** Most queue entries one eviction moves to the tail (second chances). */
const SECOND_CHANCES = 8;
/** Most worker views one table takes (the issue caps queues at 64). */
export const MAX_WORKERS = 64;
/** Mixed into the hash of an IPv6 key (as in table.ts). */
const FAMILY6_TAG = 0x600;
const NIL = -1;

// Control words (ctl): the generation, shared counts, then ann[w] and claim[w].
const C_GEN = 0;
const C_EMBRYONIC = 1;
const C_SIZE = 2;
const C_UDP = 3;
const C_EVICTED = 4;
const C_WORDS = 8;

/** What a worker needs to attach to a table: postMessage carries it (structured clone shares the SABs). */
export interface SharedTableHandles {
  capacity: number;
  ipv6: boolean;
  workers: number;
  seed: number;
  embryonicLimit: number;
  timeouts: number[];
  /** flowLayout's header and columns (layout.ts). */
  records: SharedArrayBuffer;
  /** Generation, counts, per-worker announcements and claims. */
  ctl: SharedArrayBuffer;
  /** Per slot: seq (i32), then gen (u32). */
  slots: SharedArrayBuffer;
  index0: SharedArrayBuffer;
  index1: SharedArrayBuffer;
  /** Per worker per slot: lastSeen, pktsIn, bytesIn, pktsOut, bytesOut (f64), owner (u32). */
  perWorker: SharedArrayBuffer;
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Is `state` in one of the two embryonic timer classes (the flood policy's share)? */
function embryonicState(state: number): boolean {
  const c = STATE_TIMER[state]!;
  return state !== FlowState.FREE && (c === TimerClass.EMBRYONIC || c === TimerClass.UDP_UNREPLIED);
}

export class SharedFlowTable {
  readonly capacity: number;
  readonly ipv6: boolean;
  /** Worker views the table has columns for. */
  readonly workers: number;
  /** This view's worker index: whose per-worker cells its touch and count write. */
  readonly workerIndex: number;
  /** True for the view that built the table: the one writer. */
  readonly isWriter: boolean;
  readonly embryonicLimit: number;
  /** Idle timeout of each timer class, ms. */
  readonly timeouts: Float64Array;
  private readonly seed: number;
  private readonly mask: number;

  // Records (flowLayout columns over the records SAB).
  readonly family: Uint8Array;
  readonly addr6: Uint32Array;
  readonly state: Uint8Array;
  readonly proto: Uint8Array;
  readonly fins: Uint8Array;
  readonly service: Uint16Array;
  readonly aid: Uint16Array;
  readonly instance: Uint16Array;
  readonly clientAddr: Uint32Array;
  readonly clientPort: Uint16Array;
  readonly vipAddr: Uint32Array;
  readonly vport: Uint16Array;
  readonly natAddr: Uint32Array;
  readonly natPort: Uint16Array;
  readonly realAddr: Uint32Array;
  readonly realPort: Uint16Array;
  readonly id: Float64Array;
  readonly created: Float64Array;
  readonly flags: Uint8Array;
  readonly ver: Uint8Array;
  readonly check: Uint32Array;
  /**
   * The base of each flow's last activity and counters: the creation time and
   * zeros for a new flow, a previous daemon's figures for a restored one.
   * The flow's figures are these plus its workers' (lastSeenOf, pktsInOf, ...).
   */
  readonly baseLastSeen: Float64Array;
  readonly basePktsIn: Float64Array;
  readonly baseBytesIn: Float64Array;
  readonly basePktsOut: Float64Array;
  readonly baseBytesOut: Float64Array;
  private readonly columns: FlowColumns;
  private readonly headerNextId: Float64Array;

  // Shared control.
  private readonly ctl: Int32Array;
  private readonly annAt: number;
  private readonly claimAt: number;
  /** Per slot: the seqlock word (odd: free or being changed). */
  private readonly seq: Int32Array;
  /** Per slot: the generation of its flow (fresh for each flow; never 0 for a live one). */
  private readonly gen: Uint32Array;
  private readonly index0: Int32Array;
  private readonly index1: Int32Array;
  // Per worker (cell w*capacity+s).
  private readonly wLastSeen: Float64Array;
  private readonly wPktsIn: Float64Array;
  private readonly wBytesIn: Float64Array;
  private readonly wPktsOut: Float64Array;
  private readonly wBytesOut: Float64Array;
  private readonly wOwner: Uint32Array;
  /** This worker's first cell. */
  private readonly wBase: number;
  private readonly handles: SharedTableHandles;

  /** lookup6's copy of a key's two addresses: preallocated, per view. */
  private readonly key6 = new Uint32Array(8);
  /** The seq the last successful lookup saw (see `unchanged`). */
  lastSeq = 0;

  // Writer-private state (heap; empty in a worker's view).
  private readonly cellOf: Int32Array; // per handle: its cell in the active index
  private readonly freeRing: Int32Array;
  private freeHead = 0;
  private freeCount = 0;
  private readonly qPrev: Int32Array; // the embryonic queue
  private readonly qNext: Int32Array;
  private readonly qStamp: Float64Array;
  private qHead = NIL;
  private qTail = NIL;
  private readonly onQueue: Uint8Array;
  private nextId = 1;
  private nextGen = 1;
  private tombs = 0;
  private used = 0; // non-zero cells of the active index
  private cursor = 0;
  /** Index rebuilds done, and the ones postponed because a reader was in the old generation. */
  rebuilds = 0;
  rebuildsPostponed = 0;
  private readonly removeListeners: ((slot: number) => void)[] = [];

  /**
   * The writer's table (FlowTable's parameters, then how many worker views it
   * has columns for, and which of them this thread's own touches use).
   * `attach` (not for callers): a worker's view over existing handles.
   */
  constructor(
    capacity: number,
    timeoutsMs: readonly number[],
    seed = (Math.random() * 0x1_0000_0000) >>> 0,
    embryonicLimit = capacity,
    ipv6 = false,
    workers = 1,
    workerIndex = 0,
    attach?: SharedTableHandles,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 22)
      throw new RangeError(`flow table capacity ${capacity} must be an integer in 1..${1 << 22}`);
    if (timeoutsMs.length !== TIMER_CLASSES)
      throw new RangeError(`expected ${TIMER_CLASSES} timeouts`);
    if (!Number.isInteger(embryonicLimit) || embryonicLimit < 1 || embryonicLimit > capacity)
      throw new RangeError(
        `embryonic flow limit ${embryonicLimit} must be an integer in 1..${capacity} (the table's capacity)`,
      );
    if (!Number.isInteger(workers) || workers < 1 || workers > MAX_WORKERS)
      throw new RangeError(`worker count ${workers} must be an integer in 1..${MAX_WORKERS}`);
    if (!Number.isInteger(workerIndex) || workerIndex < 0 || workerIndex >= workers)
      throw new RangeError(`worker index ${workerIndex} must be an integer in 0..${workers - 1}`);
    this.capacity = capacity;
    this.ipv6 = ipv6;
    this.workers = workers;
    this.workerIndex = workerIndex;
    this.isWriter = attach === undefined;
    this.embryonicLimit = embryonicLimit;
    this.timeouts = Float64Array.from(timeoutsMs);
    this.seed = seed >>> 0;
    const indexSize = nextPow2(capacity * 2 * 4);
    this.mask = indexSize - 1;
    const cells = workers * capacity;
    const h: SharedTableHandles = attach ?? {
      capacity,
      ipv6,
      workers,
      seed: this.seed,
      embryonicLimit,
      timeouts: Array.from(timeoutsMs),
      records: new SharedArrayBuffer(flowLayout(capacity, ipv6).bytes),
      ctl: new SharedArrayBuffer((C_WORDS + 2 * workers) * 4),
      slots: new SharedArrayBuffer(capacity * 8),
      index0: new SharedArrayBuffer(indexSize * 4),
      index1: new SharedArrayBuffer(indexSize * 4),
      perWorker: new SharedArrayBuffer(cells * (5 * 8 + 4)),
    };
    this.handles = h;
    // A SharedArrayBuffer is what flowColumns' typed arrays view here; its type says ArrayBuffer.
    const c = flowColumns(h.records as unknown as ArrayBuffer, capacity, ipv6);
    this.columns = c;
    this.family = c.family;
    this.addr6 = c.addr6;
    this.state = c.state;
    this.proto = c.proto;
    this.fins = c.fins;
    this.service = c.service;
    this.aid = c.aid;
    this.instance = c.instance;
    this.clientAddr = c.clientAddr;
    this.clientPort = c.clientPort;
    this.vipAddr = c.vipAddr;
    this.vport = c.vport;
    this.natAddr = c.natAddr;
    this.natPort = c.natPort;
    this.realAddr = c.realAddr;
    this.realPort = c.realPort;
    this.id = c.id;
    this.created = c.created;
    this.flags = c.flags;
    this.ver = c.ver;
    this.check = c.check;
    this.baseLastSeen = c.lastSeen;
    this.basePktsIn = c.pktsIn;
    this.baseBytesIn = c.bytesIn;
    this.basePktsOut = c.pktsOut;
    this.baseBytesOut = c.bytesOut;
    this.headerNextId = new Float64Array(h.records, H_NEXT_ID_BYTE, 1);
    this.ctl = new Int32Array(h.ctl);
    this.annAt = C_WORDS;
    this.claimAt = C_WORDS + workers;
    this.seq = new Int32Array(h.slots, 0, capacity);
    this.gen = new Uint32Array(h.slots, capacity * 4, capacity);
    this.index0 = new Int32Array(h.index0);
    this.index1 = new Int32Array(h.index1);
    const pw = h.perWorker;
    this.wLastSeen = new Float64Array(pw, 0, cells);
    this.wPktsIn = new Float64Array(pw, cells * 8, cells);
    this.wBytesIn = new Float64Array(pw, cells * 16, cells);
    this.wPktsOut = new Float64Array(pw, cells * 24, cells);
    this.wBytesOut = new Float64Array(pw, cells * 32, cells);
    this.wOwner = new Uint32Array(pw, cells * 40, cells);
    this.wBase = workerIndex * capacity;
    if (Atomics.compareExchange(this.ctl, this.claimAt + workerIndex, 0, 1) !== 0)
      throw new Error(
        `worker index ${workerIndex} of this flow table is already in use by another view (releaseWorker frees it)`,
      );
    const n = this.isWriter ? capacity : 0;
    this.cellOf = new Int32Array(n * 2);
    this.freeRing = new Int32Array(n);
    this.qPrev = new Int32Array(n);
    this.qNext = new Int32Array(n);
    this.qStamp = new Float64Array(n);
    this.onQueue = new Uint8Array(n);
    if (!this.isWriter) return;
    for (let s = 0; s < capacity; s++) {
      this.freeRing[s] = s;
      this.seq[s] = 1; // free: odd
    }
    this.freeCount = capacity;
    const header = new Uint32Array(h.records, 0, FLOW_HEADER_BYTES / 4);
    const flagsWord = ipv6 ? 1 : 0;
    header[H_MAGIC] = FLOW_FILE_MAGIC;
    header[H_VERSION] = FLOW_FILE_VERSION;
    header[H_CAPACITY] = capacity;
    header[H_FLAGS] = flagsWord;
    header[H_CHECK] = headerCheck(capacity, flagsWord);
    header[H_PID] = process.pid;
    this.headerNextId[0] = this.nextId;
  }

  /** A worker's view of the writer's table (handles from `sharedTableHandles`, via postMessage). */
  static attach(h: SharedTableHandles, workerIndex: number): SharedFlowTable {
    return new SharedFlowTable(
      h.capacity,
      h.timeouts,
      h.seed,
      h.embryonicLimit,
      h.ipv6,
      h.workers,
      workerIndex,
      h,
    );
  }

  /** The buffers and parameters a worker attaches with (writer only). */
  sharedTableHandles(): SharedTableHandles {
    this.writerOnly('sharedTableHandles');
    return this.handles;
  }

  /**
   * Free worker index `w` again: its claim and its announcement (the writer,
   * when a worker has exited — or died in the middle of a lookup — before a
   * new one attaches with the same index).
   */
  releaseWorker(w: number): void {
    this.writerOnly('releaseWorker');
    Atomics.store(this.ctl, this.annAt + w, 0);
    Atomics.store(this.ctl, this.claimAt + w, 0);
  }

  private writerOnly(what: string): void {
    if (!this.isWriter)
      throw new Error(
        `SharedFlowTable.${what}: only the writer (the thread that built the table) may call it; this is worker ${this.workerIndex}'s view`,
      );
  }

  // ---- hashing and key compares ----

  private hash(a: number, ap: number, b: number, bp: number, proto: number): number {
    let h = Math.imul(a ^ this.seed, 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13) ^ b, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 16) ^ ((ap << 16) | bp), 0x27d4eb2f);
    h = Math.imul(h ^ (h >>> 15) ^ proto, 0x165667b1);
    return (h ^ (h >>> 16)) >>> 0;
  }

  /** The hash of side `side` of slot s, from its columns (writer: rebuild). */
  private sideHash(s: number, side: number): number {
    const tag = this.family[s] === 6 ? this.proto[s]! | FAMILY6_TAG : this.proto[s]!;
    return side === 0
      ? this.hash(this.clientAddr[s]!, this.clientPort[s]!, this.vipAddr[s]!, this.vport[s]!, tag)
      : this.hash(this.realAddr[s]!, this.realPort[s]!, this.natAddr[s]!, this.natPort[s]!, tag);
  }

  /** The key compare of an IPv4 side, all loads atomic (inside the seqlock read). */
  private keys4(h: number, a: number, ap: number, b: number, bp: number, proto: number): boolean {
    const s = h >> 1;
    if (Atomics.load(this.proto, s) !== proto || Atomics.load(this.family, s) !== 4) return false;
    if ((h & 1) === 0)
      return (
        Atomics.load(this.clientAddr, s) === a &&
        Atomics.load(this.clientPort, s) === ap &&
        Atomics.load(this.vipAddr, s) === b &&
        Atomics.load(this.vport, s) === bp
      );
    return (
      Atomics.load(this.realAddr, s) === a &&
      Atomics.load(this.realPort, s) === ap &&
      Atomics.load(this.natAddr, s) === b &&
      Atomics.load(this.natPort, s) === bp
    );
  }

  /** The key compare of an IPv6 side against key6 (folds first, then the words). */
  private keys6(h: number, fa: number, ap: number, fb: number, bp: number, proto: number): boolean {
    const s = h >> 1;
    if (Atomics.load(this.proto, s) !== proto || Atomics.load(this.family, s) !== 6) return false;
    const k = this.key6;
    const x = this.addr6;
    const o = s * 16;
    if ((h & 1) === 0)
      return (
        Atomics.load(this.clientAddr, s) === fa &&
        Atomics.load(this.clientPort, s) === ap &&
        Atomics.load(this.vipAddr, s) === fb &&
        Atomics.load(this.vport, s) === bp &&
        Atomics.load(x, o) === k[0] &&
        Atomics.load(x, o + 1) === k[1] &&
        Atomics.load(x, o + 2) === k[2] &&
        Atomics.load(x, o + 3) === k[3] &&
        Atomics.load(x, o + 4) === k[4] &&
        Atomics.load(x, o + 5) === k[5] &&
        Atomics.load(x, o + 6) === k[6] &&
        Atomics.load(x, o + 7) === k[7]
      );
    return (
      Atomics.load(this.realAddr, s) === fa &&
      Atomics.load(this.realPort, s) === ap &&
      Atomics.load(this.natAddr, s) === fb &&
      Atomics.load(this.natPort, s) === bp &&
      Atomics.load(x, o + 12) === k[0] &&
      Atomics.load(x, o + 13) === k[1] &&
      Atomics.load(x, o + 14) === k[2] &&
      Atomics.load(x, o + 15) === k[3] &&
      Atomics.load(x, o + 8) === k[4] &&
      Atomics.load(x, o + 9) === k[5] &&
      Atomics.load(x, o + 10) === k[6] &&
      Atomics.load(x, o + 11) === k[7]
    );
  }

  /**
   * The seqlock read of entry `h`: 1 its key matches (stable), 0 it does not
   * (or the slot is free, or kept changing for SPIN reads).
   */
  private matchAt(h: number, a: number, ap: number, b: number, bp: number, tag: number): boolean {
    const s = h >> 1;
    const seq = this.seq;
    for (let spin = 0; spin < SPIN; spin++) {
      const q = Atomics.load(seq, s);
      if ((q & 1) !== 0) {
        if (Atomics.load(this.state, s) === FlowState.FREE) return false;
        continue;
      }
      const m =
        tag < FAMILY6_TAG
          ? this.keys4(h, a, ap, b, bp, tag)
          : this.keys6(h, a, ap, b, bp, tag ^ FAMILY6_TAG);
      if (Atomics.load(seq, s) === q) {
        if (m) this.lastSeq = q;
        return m;
      }
    }
    return false;
  }

  /** Enter a lookup: the index of the generation announced (a worker), or the active one (the writer). */
  private enter(): Int32Array {
    const ctl = this.ctl;
    if (this.isWriter) return (ctl[C_GEN]! & 1) === 0 ? this.index0 : this.index1;
    const at = this.annAt + this.workerIndex;
    for (;;) {
      const g = Atomics.load(ctl, C_GEN);
      Atomics.store(ctl, at, g + 1);
      if (Atomics.load(ctl, C_GEN) === g) return (g & 1) === 0 ? this.index0 : this.index1;
    }
  }

  private leave(): void {
    if (!this.isWriter) Atomics.store(this.ctl, this.annAt + this.workerIndex, 0);
  }

  /** Probe for (a, ap, b, bp) with protocol tag `tag` (proto, | FAMILY6_TAG for IPv6). */
  private find(a: number, ap: number, b: number, bp: number, tag: number): number {
    const idx = this.enter();
    const mask = this.mask;
    let i = this.hash(a, ap, b, bp, tag) & mask;
    let found = -1;
    for (;;) {
      const e = Atomics.load(idx, i);
      if (e === 0) break;
      if (e !== TOMBSTONE && this.matchAt(e - 1, a, ap, b, bp, tag)) {
        found = e - 1;
        break;
      }
      i = (i + 1) & mask;
    }
    this.leave();
    return found;
  }

  /**
   * Find the flow side whose (peer addr:port, local addr:port) is the packet's
   * (source, destination). Returns `slot*2 + side`, or -1. Any thread.
   */
  lookup(
    srcAddr: number,
    srcPort: number,
    dstAddr: number,
    dstPort: number,
    proto: number,
  ): number {
    return this.find(srcAddr >>> 0, srcPort, dstAddr >>> 0, dstPort, proto);
  }

  /** `lookup` for IPv6: the 16-byte addresses at srcOff / dstOff of buf, read in place. */
  lookup6(
    buf: Uint8Array,
    srcOff: number,
    srcPort: number,
    dstOff: number,
    dstPort: number,
    proto: number,
  ): number {
    if (!this.ipv6) return -1;
    const k = this.key6;
    k[0] = get32(buf, srcOff);
    k[1] = get32(buf, srcOff + 4);
    k[2] = get32(buf, srcOff + 8);
    k[3] = get32(buf, srcOff + 12);
    k[4] = get32(buf, dstOff);
    k[5] = get32(buf, dstOff + 4);
    k[6] = get32(buf, dstOff + 8);
    k[7] = get32(buf, dstOff + 12);
    return this.find(fold6(k, 0), srcPort, fold6(k, 4), dstPort, proto | FAMILY6_TAG);
  }

  /** `lookup6` with the addresses as words: source a[aAt..aAt+3], destination b[bAt..bAt+3]. */
  lookupWords6(
    a: Uint32Array,
    aAt: number,
    srcPort: number,
    b: Uint32Array,
    bAt: number,
    dstPort: number,
    proto: number,
  ): number {
    if (!this.ipv6) return -1;
    const k = this.key6;
    k[0] = a[aAt]!;
    k[1] = a[aAt + 1]!;
    k[2] = a[aAt + 2]!;
    k[3] = a[aAt + 3]!;
    k[4] = b[bAt]!;
    k[5] = b[bAt + 1]!;
    k[6] = b[bAt + 2]!;
    k[7] = b[bAt + 3]!;
    return this.find(fold6(k, 0), srcPort, fold6(k, 4), dstPort, proto | FAMILY6_TAG);
  }

  /** The seq of slot s now: with `lastSeq`, tells whether fields read after a lookup were that flow's. */
  seqOf(s: number): number {
    return Atomics.load(this.seq, s);
  }

  /** Is slot s still the flow (and version of it) whose seq was `q`? */
  unchanged(s: number, q: number): boolean {
    return Atomics.load(this.seq, s) === q;
  }

  isLive(s: number): boolean {
    return Atomics.load(this.state, s) !== FlowState.FREE;
  }

  // ---- per-packet updates (any worker, its own cells) ----

  /** This worker's cell of slot s, taken over for the slot's current flow if it held another's. */
  private own(s: number): number {
    const i = this.wBase + s;
    const g = Atomics.load(this.gen, s);
    if (this.wOwner[i] !== g) {
      this.wLastSeen[i] = 0;
      this.wPktsIn[i] = 0;
      this.wBytesIn[i] = 0;
      this.wPktsOut[i] = 0;
      this.wBytesOut[i] = 0;
      Atomics.store(this.wOwner, i, g);
    }
    return i;
  }

  /** Raise slot s's state to `to` (never lower, never a FREE slot); the embryonic count follows. */
  private raise(s: number, to: number): void {
    const st = this.state;
    let cur = Atomics.load(st, s);
    while (to > cur && cur !== FlowState.FREE) {
      const was = Atomics.compareExchange(st, s, cur, to);
      if (was === cur) {
        if (embryonicState(cur) && !embryonicState(to)) Atomics.sub(this.ctl, C_EMBRYONIC, 1);
        return;
      }
      cur = was;
    }
  }

  /**
   * A packet of flow s: this worker's last-seen stamp is `now`, and the state
   * becomes `state` unless it is already further (states only move forward).
   */
  touch(s: number, state: number, now: number): void {
    this.wLastSeen[this.own(s)] = now;
    this.raise(s, state);
  }

  /** Count a packet of `bytes` on flow s: client → server (`fromClient`) or back. This worker's cells. */
  count(s: number, fromClient: boolean, bytes: number): void {
    const i = this.own(s);
    if (fromClient) {
      this.wPktsIn[i]! += 1;
      this.wBytesIn[i]! += bytes;
    } else {
      this.wPktsOut[i]! += 1;
      this.wBytesOut[i]! += bytes;
    }
  }

  /**
   * A TCP segment with `flags` on flow s: FIN bit recorded (Atomics.or), the
   * state advanced by nextState from the state it is swapped from (a
   * compare-and-swap loop: each packet's transition applies to the state as
   * it is), last seen `now`. Returns the state after.
   */
  advanceTcp(s: number, flags: number, fromClient: boolean, now: number): number {
    this.wLastSeen[this.own(s)] = now;
    if ((flags & TCP_FIN) !== 0)
      Atomics.or(this.fins, s, fromClient ? FIN_FROM_CLIENT : FIN_FROM_SERVER);
    return this.advance(s, flags, fromClient, true);
  }

  /** advanceTcp for a UDP datagram: unreplied → assured once the server has answered. */
  advanceUdp(s: number, fromClient: boolean, now: number): number {
    this.wLastSeen[this.own(s)] = now;
    return this.advance(s, 0, fromClient, false);
  }

  private advance(s: number, flags: number, fromClient: boolean, tcp: boolean): number {
    const st = this.state;
    let cur = Atomics.load(st, s);
    for (;;) {
      if (cur === FlowState.FREE) return cur;
      const to = tcp
        ? nextState(cur, Atomics.load(this.fins, s), flags, fromClient)
        : nextUdpState(cur, fromClient);
      if (to <= cur) return cur;
      const was = Atomics.compareExchange(st, s, cur, to);
      if (was === cur) {
        if (embryonicState(cur) && !embryonicState(to)) Atomics.sub(this.ctl, C_EMBRYONIC, 1);
        return to;
      }
      cur = was;
    }
  }

  // ---- a flow's figures: its base plus the cells its workers own ----

  private sum(base: Float64Array, cols: Float64Array, s: number): number {
    const g = Atomics.load(this.gen, s);
    const cap = this.capacity;
    let n = base[s]!;
    for (let w = 0, i = s; w < this.workers; w++, i += cap)
      if (Atomics.load(this.wOwner, i) === g) n += cols[i]!;
    return n;
  }

  /** The flow's last activity: the latest of its base and its workers' stamps. */
  lastSeenOf(s: number): number {
    const g = Atomics.load(this.gen, s);
    const cap = this.capacity;
    let t = this.baseLastSeen[s]!;
    for (let w = 0, i = s; w < this.workers; w++, i += cap) {
      if (Atomics.load(this.wOwner, i) !== g) continue;
      const x = this.wLastSeen[i]!;
      if (x > t) t = x;
    }
    return t;
  }
  pktsInOf(s: number): number {
    return this.sum(this.basePktsIn, this.wPktsIn, s);
  }
  bytesInOf(s: number): number {
    return this.sum(this.baseBytesIn, this.wBytesIn, s);
  }
  pktsOutOf(s: number): number {
    return this.sum(this.basePktsOut, this.wPktsOut, s);
  }
  bytesOutOf(s: number): number {
    return this.sum(this.baseBytesOut, this.wBytesOut, s);
  }
  /**
   * Worker w's own share of flow s (per-queue figures): `out` gets its last
   * seen stamp, packets and bytes in, packets and bytes out — all 0 when its
   * cells hold another flow or none. Control plane.
   */
  figuresOfWorker(s: number, w: number, out: Float64Array): void {
    const i = w * this.capacity + s;
    const mine = Atomics.load(this.wOwner, i) === Atomics.load(this.gen, s);
    out[0] = mine ? this.wLastSeen[i]! : 0;
    out[1] = mine ? this.wPktsIn[i]! : 0;
    out[2] = mine ? this.wBytesIn[i]! : 0;
    out[3] = mine ? this.wPktsOut[i]! : 0;
    out[4] = mine ? this.wBytesOut[i]! : 0;
  }

  // ---- shared counts ----

  /** Live flows. */
  get size(): number {
    return Atomics.load(this.ctl, C_SIZE);
  }
  /** Live UDP flows. */
  get udpSize(): number {
    return Atomics.load(this.ctl, C_UDP);
  }
  /** Embryonic flows now: TCP handshake not complete, UDP not answered. */
  get embryonicSize(): number {
    return Atomics.load(this.ctl, C_EMBRYONIC);
  }
  /** Embryonic flows evicted to make room for a new flow. */
  get embryonicEvicted(): number {
    return Atomics.load(this.ctl, C_EVICTED);
  }

  // ---- the writer ----

  /**
   * Record a new flow in state SYN_SENT (TCP) or UDP_UNREPLIED (UDP): FlowTable.create's
   * results and flood policy. Writer only.
   */
  create(k: FlowKeyArgs, now: number): number {
    this.writerOnly('create');
    if (k.family === 6 && (!this.ipv6 || k.addr6 === undefined || k.addr6.length < 16))
      return CREATE_FULL;
    const embryonic = this.embryonicSize;
    if (this.freeCount === 0 && embryonic === 0) return CREATE_FULL;
    if (this.keyInUse(k)) return CREATE_COLLISION;
    if (this.freeCount === 0 || embryonic >= this.embryonicLimit) {
      const victim = this.oldestEmbryonic();
      if (victim >= 0) {
        this.remove(victim);
        Atomics.add(this.ctl, C_EVICTED, 1);
      } else if (this.freeCount === 0) return CREATE_FULL; // they all left the embryonic classes meanwhile
    }
    const state = k.proto === IPPROTO_UDP ? FlowState.UDP_UNREPLIED : FlowState.SYN_SENT;
    this.room(2);
    const s = this.place(k, state, this.nextId++, now, now, 0);
    this.headerNextId[0] = this.nextId;
    this.publish(s);
    return s;
  }

  /**
   * Take over a flow recorded by a previous daemon (FlowTable.restoreFlow):
   * its figures become the flow's base. Never evicts. Writer only (start-up).
   */
  restoreFlow(k: FlowKeyArgs, r: FlowRecordArgs): number {
    this.writerOnly('restoreFlow');
    if (k.family === 6 && (!this.ipv6 || k.addr6 === undefined || k.addr6.length < 16))
      return CREATE_FULL;
    if (this.freeCount === 0) return CREATE_FULL;
    if (this.keyInUse(k)) return CREATE_COLLISION;
    this.room(2);
    const s = this.place(k, r.state, r.id, r.created, r.lastSeen, r.fins);
    this.basePktsIn[s] = r.pktsIn;
    this.baseBytesIn[s] = r.bytesIn;
    this.basePktsOut[s] = r.pktsOut;
    this.baseBytesOut[s] = r.bytesOut;
    if (r.id >= this.nextId) this.nextId = r.id + 1;
    this.headerNextId[0] = this.nextId;
    this.publish(s);
    return s;
  }

  /** Flow ids from `next` on (at least). Writer only. */
  reserveIds(next: number): void {
    this.writerOnly('reserveIds');
    if (Number.isSafeInteger(next) && next > this.nextId) this.nextId = next;
    this.headerNextId[0] = this.nextId;
  }

  private keyInUse(k: FlowKeyArgs): boolean {
    if (k.family === 6) {
      const w = k.addr6!;
      return (
        this.lookupWords6(w, 0, k.clientPort, w, 4, k.vport, k.proto) >= 0 ||
        this.lookupWords6(w, 12, k.realPort, w, 8, k.natPort, k.proto) >= 0
      );
    }
    return (
      this.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, k.proto) >= 0 ||
      this.lookup(k.realAddr, k.realPort, k.natAddr, k.natPort, k.proto) >= 0
    );
  }

  /** Fill a free slot (its seq odd) with `k`; published by `publish`. */
  private place(
    k: FlowKeyArgs,
    state: number,
    id: number,
    created: number,
    lastSeen: number,
    fins: number,
  ): number {
    const s = this.freeRing[this.freeHead]!;
    this.freeHead = this.freeHead + 1 === this.capacity ? 0 : this.freeHead + 1;
    this.freeCount--;
    const v6 = k.family === 6;
    let ca = k.clientAddr >>> 0;
    let va = k.vipAddr >>> 0;
    let na = k.natAddr >>> 0;
    let ra = k.realAddr >>> 0;
    Atomics.store(this.family, s, v6 ? 6 : 4);
    if (v6) {
      const w = k.addr6!;
      const o = s * 16;
      for (let i = 0; i < 16; i++) Atomics.store(this.addr6, o + i, w[i]!);
      ca = fold6(w, 0);
      va = fold6(w, 4);
      na = fold6(w, 8);
      ra = fold6(w, 12);
    }
    Atomics.store(this.proto, s, k.proto);
    Atomics.store(this.flags, s, k.flags ?? 0);
    Atomics.store(this.clientAddr, s, ca);
    Atomics.store(this.clientPort, s, k.clientPort);
    Atomics.store(this.vipAddr, s, va);
    Atomics.store(this.vport, s, k.vport);
    Atomics.store(this.natAddr, s, na);
    Atomics.store(this.natPort, s, k.natPort);
    Atomics.store(this.realAddr, s, ra);
    Atomics.store(this.realPort, s, k.realPort);
    Atomics.store(this.service, s, k.service);
    Atomics.store(this.aid, s, k.aid);
    Atomics.store(this.instance, s, k.instance);
    Atomics.store(this.fins, s, fins);
    this.id[s] = id;
    this.created[s] = created;
    this.baseLastSeen[s] = lastSeen;
    this.basePktsIn[s] = 0;
    this.baseBytesIn[s] = 0;
    this.basePktsOut[s] = 0;
    this.baseBytesOut[s] = 0;
    const g = this.nextGen;
    this.nextGen = g === 0xffffffff ? 1 : g + 1;
    Atomics.store(this.gen, s, g);
    if (embryonicState(state)) {
      Atomics.add(this.ctl, C_EMBRYONIC, 1);
      this.enqueue(s, lastSeen);
    }
    Atomics.store(this.state, s, state);
    Atomics.add(this.ctl, C_SIZE, 1);
    if (k.proto === IPPROTO_UDP) Atomics.add(this.ctl, C_UDP, 1);
    return s;
  }

  /** Seal slot s, make its seq even, then index both sides: the publication order. */
  private publish(s: number): void {
    this.seal(s);
    Atomics.add(this.seq, s, 1); // odd → even: stable
    this.insert(s * 2, this.sideHash(s, 0));
    this.insert(s * 2 + 1, this.sideHash(s, 1));
  }

  private seal(s: number): void {
    this.ver[s] = RECORD_VERSION;
    this.check[s] = recordCheck(this.columns, s);
  }

  private activeIndex(): Int32Array {
    return (this.ctl[C_GEN]! & 1) === 0 ? this.index0 : this.index1;
  }

  /**
   * Before `n` inserts (and before the slot they are for is filled: a rebuild
   * indexes every slot that is not FREE): live and tombstone cells must stay
   * below 3/4 of the index, so that every probe run ends in an empty cell —
   * rebuild first, waiting for readers if need be.
   */
  private room(n: number): void {
    if (this.used + n > ((this.mask + 1) * 3) / 4) this.rebuild(true);
  }

  private insert(handle: number, h: number): void {
    const idx = this.activeIndex();
    const mask = this.mask;
    let i = h & mask;
    for (;;) {
      const e = idx[i]!;
      if (e === 0) {
        this.used++;
        break;
      }
      if (e === TOMBSTONE) {
        this.tombs--;
        break;
      }
      i = (i + 1) & mask;
    }
    Atomics.store(idx, i, handle + 1);
    this.cellOf[handle] = i;
  }

  private unindex(handle: number): void {
    Atomics.store(this.activeIndex(), this.cellOf[handle]!, TOMBSTONE);
    this.tombs++;
  }

  /** After removals: rebuild once tombstones pass a quarter of the index (when readers allow). */
  private maybeRebuild(): void {
    if (this.tombs > (this.mask + 1) / 4) this.rebuild(false);
  }

  /** No reader is in the spare index (the previous generation's): see the top of the file. */
  private graceOver(): boolean {
    const ctl = this.ctl;
    const next = ctl[C_GEN]! + 1;
    for (let w = 0; w < this.workers; w++) {
      const a = Atomics.load(ctl, this.annAt + w);
      if (a !== 0 && a !== next) return false;
    }
    return true;
  }

  /**
   * Build a fresh index from the live slots in the spare buffer and switch to
   * it. Returns false when postponed (a reader is still in the spare, and
   * `wait` is false).
   */
  private rebuild(wait: boolean): boolean {
    if (!this.graceOver()) {
      if (!wait) {
        this.rebuildsPostponed++;
        return false;
      }
      while (!this.graceOver()) {
        // Spin: one reader is finishing a lookup in the old generation.
      }
    }
    const g = this.ctl[C_GEN]!;
    const spare = (g & 1) === 0 ? this.index1 : this.index0;
    spare.fill(0);
    const mask = this.mask;
    let used = 0;
    for (let s = 0; s < this.capacity; s++) {
      if (this.state[s] === FlowState.FREE) continue;
      for (let side = 0; side < 2; side++) {
        let i = this.sideHash(s, side) & mask;
        while (spare[i] !== 0) i = (i + 1) & mask;
        spare[i] = s * 2 + side + 1;
        this.cellOf[s * 2 + side] = i;
        used++;
      }
    }
    Atomics.store(this.ctl, C_GEN, g + 1);
    this.used = used;
    this.tombs = 0;
    this.rebuilds++;
    return true;
  }

  /**
   * Call `fn(slot)` just before each flow is removed (remove, expiry,
   * eviction), while its columns still hold it (FlowTable.addRemoveListener).
   * Writer only.
   */
  addRemoveListener(fn: (slot: number) => void): () => void {
    this.writerOnly('addRemoveListener');
    if (this.removeListeners.length >= MAX_REMOVE_LISTENERS)
      throw new RangeError(`a flow table takes at most ${MAX_REMOVE_LISTENERS} remove listeners`);
    this.removeListeners.push(fn);
    return () => {
      const i = this.removeListeners.indexOf(fn);
      if (i >= 0) this.removeListeners.splice(i, 1);
    };
  }

  /** Remove a live flow: seq odd, state FREE, tombstones, then the slot is free. Writer only. */
  remove(s: number): void {
    this.writerOnly('remove');
    if (this.state[s] === FlowState.FREE) return;
    const ls = this.removeListeners;
    for (let i = 0; i < ls.length; i++) ls[i]!(s);
    Atomics.add(this.seq, s, 1); // even → odd: being changed
    const was = Atomics.exchange(this.state, s, FlowState.FREE);
    if (embryonicState(was)) Atomics.sub(this.ctl, C_EMBRYONIC, 1);
    this.unindex(s * 2);
    this.unindex(s * 2 + 1);
    if (this.onQueue[s] === 1) this.dequeue(s);
    let tail = this.freeHead + this.freeCount;
    if (tail >= this.capacity) tail -= this.capacity;
    this.freeRing[tail] = s;
    this.freeCount++;
    Atomics.sub(this.ctl, C_SIZE, 1);
    if (this.proto[s] === IPPROTO_UDP) Atomics.sub(this.ctl, C_UDP, 1);
    this.maybeRebuild();
  }

  /**
   * Point live flow s at another server side (FlowTable.repoint): side 1's key
   * changes under the slot's seqlock, side 0's stays. Returns false, changing
   * nothing, when the new key is another flow's or an IPv6 flow gets no IPv6
   * address. Writer only.
   */
  repoint(
    s: number,
    realAddr: number,
    realPort: number,
    instance: number,
    real6: Uint32Array | null = null,
    at = 0,
  ): boolean {
    this.writerOnly('repoint');
    const proto = this.proto[s]!;
    const v6 = this.family[s] === 6;
    if (v6) {
      if (real6 === null) return false;
      const other = this.lookupWords6(
        real6,
        at,
        realPort,
        this.addr6,
        s * 16 + 8,
        this.natPort[s]!,
        proto,
      );
      if (other >= 0) return other === s * 2 + 1;
    } else {
      const other = this.lookup(realAddr, realPort, this.natAddr[s]!, this.natPort[s]!, proto);
      if (other >= 0) return other === s * 2 + 1;
    }
    this.room(1);
    Atomics.add(this.seq, s, 1); // odd: being changed
    this.unindex(s * 2 + 1);
    if (v6) {
      const o = s * 16 + 12;
      for (let i = 0; i < 4; i++) Atomics.store(this.addr6, o + i, real6![at + i]!);
      Atomics.store(this.realAddr, s, fold6(this.addr6, o));
    } else {
      Atomics.store(this.realAddr, s, realAddr >>> 0);
    }
    Atomics.store(this.realPort, s, realPort);
    Atomics.store(this.instance, s, instance);
    this.seal(s);
    Atomics.add(this.seq, s, 1); // even: stable again
    this.insert(s * 2 + 1, this.sideHash(s, 1));
    this.maybeRebuild();
    return true;
  }

  // The embryonic queue (writer-private): creation order, with second chances.

  private enqueue(s: number, stamp: number): void {
    this.qStamp[s] = stamp;
    this.qPrev[s] = this.qTail;
    this.qNext[s] = NIL;
    if (this.qTail === NIL) this.qHead = s;
    else this.qNext[this.qTail] = s;
    this.qTail = s;
    this.onQueue[s] = 1;
  }

  private dequeue(s: number): void {
    const p = this.qPrev[s]!;
    const n = this.qNext[s]!;
    if (p === NIL) this.qHead = n;
    else this.qNext[p] = n;
    if (n === NIL) this.qTail = p;
    else this.qPrev[n] = p;
    this.onQueue[s] = 0;
  }

  /**
   * The embryonic flow to evict (-1: none): the queue's head, once the heads
   * that left the embryonic classes are dropped and the ones active since
   * they were queued have had their second chance. Writer only.
   */
  oldestEmbryonic(): number {
    this.writerOnly('oldestEmbryonic');
    let chances = SECOND_CHANCES;
    for (;;) {
      const s = this.qHead;
      if (s === NIL) return NIL;
      if (!embryonicState(Atomics.load(this.state, s))) {
        this.dequeue(s);
        continue;
      }
      const seen = this.lastSeenOf(s);
      if (chances > 0 && seen > this.qStamp[s]! && this.qNext[s] !== NIL) {
        chances--;
        this.dequeue(s);
        this.enqueue(s, seen);
        continue;
      }
      return s;
    }
  }

  /**
   * Remove flows idle longer than their class's timeout: at most `budget`
   * removals and `scan` slots looked at per call (from where the last call
   * stopped; all slots by default). Calls `onExpire(slot)` before each
   * removal. Returns how many were removed. Writer only.
   */
  expire(
    now: number,
    budget: number,
    onExpire?: (slot: number) => void,
    scan = this.capacity,
  ): number {
    this.writerOnly('expire');
    let n = 0;
    const cap = this.capacity;
    for (let k = 0; k < scan && n < budget; k++) {
      const s = this.cursor;
      this.cursor = s + 1 === cap ? 0 : s + 1;
      const st = Atomics.load(this.state, s);
      if (st === FlowState.FREE) continue;
      if (this.lastSeenOf(s) > now - this.timeouts[STATE_TIMER[st]!]!) continue;
      onExpire?.(s);
      this.remove(s);
      n++;
    }
    return n;
  }

  /** Visit every live flow, in slot order (control plane). */
  forEach(fn: (slot: number) => void): void {
    for (let s = 0; s < this.capacity; s++)
      if (Atomics.load(this.state, s) !== FlowState.FREE) fn(s);
  }

  /**
   * Bytes of the table: its shared buffers and, in the writer's view, its
   * private arrays (what docs/architecture.md counts per slot). Control plane.
   */
  memoryBytes(): number {
    const h = this.handles;
    let n =
      h.records.byteLength +
      h.ctl.byteLength +
      h.slots.byteLength +
      h.index0.byteLength +
      h.index1.byteLength +
      h.perWorker.byteLength;
    n +=
      this.cellOf.byteLength +
      this.freeRing.byteLength +
      this.qPrev.byteLength +
      this.qNext.byteLength +
      this.qStamp.byteLength +
      this.onQueue.byteLength;
    return n;
  }
}
