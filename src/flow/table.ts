/**
 * The translation table: every flow vpm forwards, findable in O(1) from either
 * direction.
 *
 * Theory of operation. A flow has two sides (passt's flow table):
 *   side 0, as the client sees it:  client addr:port  ⇄  virtual service VIP:vport
 *   side 1, as the server sees it:  nat addr:port     ⇄  instance real addr:port
 * (nat = the client's own address and port, except for clients on the vpm host
 * itself, which are translated to the local-client address so that replies come
 * back through the TUN). Each side is keyed by (source, destination) of the
 * packets that arrive on it: side 0 by (client, VIP), side 1 by (real, nat). A
 * packet is looked up by (its source addr:port, its destination addr:port); a
 * match on side 0 means "client → server", on side 1 "server → client", and the
 * slot holds everything needed for the rewrite.
 *
 * Storage is preallocated at start-up for `capacity` flows: typed-array columns
 * indexed by slot (the slot number is the flow's handle) — those that describe
 * a flow laid out in one buffer by layout.ts, which the daemon keeps in a
 * file-backed mapping so that they outlive it (each record sealed by a check
 * written last: `seal`) —, a free-slot stack, and
 * one open-addressing hash index (linear probing, power-of-two size, load <= 1/4)
 * whose entries are `slot*2 + side + 1`. Keys are numbers only; the hash is seeded
 * per table so that remote parties cannot aim collisions at a known function.
 * Deletion shifts later entries of the probe run back (no tombstones), so lookups
 * never degrade with churn.
 *
 * Expiry: each flow sits on one doubly-linked list per timer class (embryonic,
 * established, closing, linger; UDP unreplied, assured), in order of last activity; every packet moves its
 * flow to the tail. As a class has one timeout, the head is always the next to
 * expire: `expire(now)` pops heads until one is still fresh. No scan of the table,
 * no work per packet beyond a few array writes.
 *
 * Floods (limits.embryonicFlows). Embryonic flows — TCP flows whose handshake
 * has not completed (SYN_SENT, SYN_RECEIVED: timer class EMBRYONIC) and UDP flows
 * not answered yet (UDP_UNREPLIED) — may hold at most `embryonicLimit` slots. A
 * new flow that finds that share used, or the whole table full while some flow
 * is embryonic, takes the place of the least recently active embryonic flow: the
 * head of the EMBRYONIC or of the UDP_UNREPLIED list, whichever was seen last
 * longer ago (two heads compared, no scan). The evicted flow is removed like any
 * other (remove listeners run) and counted in `embryonicEvicted`. A flow that has
 * been answered (established, closing, UDP assured, ...) is never evicted: a table
 * full of them refuses new flows (CREATE_FULL).
 *
 * IPv6. A flow has a family (the `family` column, 4 or 6). When the table is
 * built with `ipv6`, a column `addr6` holds the 128-bit addresses of every
 * slot, 16 words at slot*16: client +0, VIP +4, nat +8, real +12 (each four
 * big-endian words). For an IPv6 flow the 32-bit address columns hold the fold
 * w0^w1^w2^w3 of each address: what the hash takes, and a first compare before
 * the four words are. The hash of an IPv6 key also mixes in the family, so a v4
 * and a v6 key that fold alike land apart; and each lookup matches one family
 * only: `lookup` (IPv4, the cheap path, one more byte compare) never returns an
 * IPv6 flow, `lookup6` reads the packet's 16-byte addresses in place and never
 * returns an IPv4 one. Without `ipv6` there is no addr6 column at all: what a
 * slot costs in bytes per family is in docs/architecture.md (data plane).
 *
 * Nothing here allocates or throws after construction (adding a remove listener
 * aside: that is control-plane wiring, done at start-up).
 */

import { get32 } from '../wire/bytes.js';
import { IPPROTO_UDP } from '../wire/ipv4.js';
import {
  FLOW_FILE_MAGIC,
  FLOW_FILE_VERSION,
  FLOW_HEADER_BYTES,
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
import { FlowState, STATE_TIMER, TIMER_CLASSES, TimerClass } from './state.js';

const NIL = -1;

export interface FlowKeyArgs {
  /** 4 (the default when absent) or 6. */
  family?: 4 | 6;
  /**
   * IPv6 (family 6): the four addresses, 16 words: client 0-3, VIP 4-7, nat
   * 8-11, real 12-15 (the u32 address fields below are then ignored: the
   * table folds these).
   */
  addr6?: Uint32Array;
  proto: number;
  clientAddr: number;
  clientPort: number;
  vipAddr: number;
  vport: number;
  natAddr: number;
  natPort: number;
  realAddr: number;
  realPort: number;
  service: number;
  aid: number;
  instance: number;
  /** FLOW_NEGOTIATED / FLOW_PEER (layout.ts); absent: 0. */
  flags?: number;
}

/** What `restoreFlow` takes over from a record of a previous daemon, beside its keys. */
export interface FlowRecordArgs {
  state: number;
  fins: number;
  id: number;
  created: number;
  lastSeen: number;
  pktsIn: number;
  bytesIn: number;
  pktsOut: number;
  bytesOut: number;
}

/** Results of `create` below zero. */
export const CREATE_FULL = -1;
export const CREATE_COLLISION = -2;

/** Most remove listeners one table takes (see `addRemoveListener`). */
export const MAX_REMOVE_LISTENERS = 4;

/** Mixed into the hash of an IPv6 key (with the protocol): v4 and v6 keys that fold alike hash apart. */
const FAMILY6_TAG = 0x600;

/** The fold of the four words of an IPv6 address at w[at]: its 32-bit stand-in in the u32 columns. */
export function fold6(w: Uint32Array, at: number): number {
  return (w[at]! ^ w[at + 1]! ^ w[at + 2]! ^ w[at + 3]!) >>> 0;
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

export class FlowTable {
  readonly capacity: number;
  private readonly mask: number;
  private readonly index: Int32Array;
  private readonly hashes: Uint32Array; // per handle (slot*2+side)
  private readonly seed: number;

  /** True when the table has the IPv6 columns. */
  readonly ipv6: boolean;
  // Columns, indexed by slot.
  /** 4 or 6. */
  readonly family: Uint8Array;
  /** IPv6 addresses, 16 words per slot (client, VIP, nat, real); empty without `ipv6`. */
  readonly addr6: Uint32Array;
  /** lookup6's copy of a key's two addresses (8 words): preallocated, no allocation per packet. */
  private readonly key6 = new Uint32Array(8);
  readonly state: Uint8Array;
  readonly proto: Uint8Array;
  readonly fins: Uint8Array;
  readonly timerClass: Uint8Array;
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
  /** Flow id shown to users; unique for the table's life (and its state file's). */
  readonly id: Float64Array;
  readonly created: Float64Array;
  readonly lastSeen: Float64Array;
  /** Packets and bytes client → server and server → client. */
  readonly pktsIn: Float64Array;
  readonly bytesIn: Float64Array;
  readonly pktsOut: Float64Array;
  readonly bytesOut: Float64Array;
  /** FLOW_NEGOTIATED, FLOW_PEER (layout.ts): what a next daemon needs to take the flow over. */
  readonly flags: Uint8Array;
  /** RECORD_VERSION and recordCheck of each live slot, written last (`seal`; layout.ts). */
  readonly ver: Uint8Array;
  readonly check: Uint32Array;
  /** The header of the records' buffer: its words, and the next id at byte 32. */
  private readonly header: Uint32Array;
  private readonly headerNextId: Float64Array;

  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private readonly heads: Int32Array;
  private readonly tails: Int32Array;
  /** Idle timeout of each timer class, ms. */
  readonly timeouts: Float64Array;

  private readonly freeStack: Int32Array;
  private freeTop: number;
  private nextId = 1;
  /** Live flows, and the UDP ones among them. */
  size = 0;
  udpSize = 0;
  /** Most embryonic flows (TCP handshake not complete, UDP unreplied) at once: limits.embryonicFlows. */
  readonly embryonicLimit: number;
  /** Embryonic flows evicted to make room for a new flow (a counter). */
  embryonicEvicted = 0;
  /** Flows on each timer class's list. */
  private readonly classSize: Int32Array;
  /** See addRemoveListener. */
  private readonly removeListeners: ((slot: number) => void)[] = [];

  constructor(
    capacity: number,
    timeoutsMs: readonly number[],
    seed = (Math.random() * 0x1_0000_0000) >>> 0,
    embryonicLimit = capacity,
    ipv6 = false,
    /**
     * Where the records live: a buffer of at least flowLayout(capacity, ipv6).bytes,
     * zero-filled (the daemon's is a file-backed shared mapping: the records
     * outlive the process, layout.ts). Absent: a heap buffer of its own.
     */
    memory?: ArrayBuffer,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 22) {
      throw new RangeError(`flow table capacity ${capacity} must be an integer in 1..${1 << 22}`);
    }
    if (timeoutsMs.length !== TIMER_CLASSES)
      throw new RangeError(`expected ${TIMER_CLASSES} timeouts`);
    if (!Number.isInteger(embryonicLimit) || embryonicLimit < 1 || embryonicLimit > capacity) {
      throw new RangeError(
        `embryonic flow limit ${embryonicLimit} must be an integer in 1..${capacity} (the table's capacity)`,
      );
    }
    this.capacity = capacity;
    this.embryonicLimit = embryonicLimit;
    this.classSize = new Int32Array(TIMER_CLASSES);
    const size = nextPow2(capacity * 2 * 4);
    this.mask = size - 1;
    this.index = new Int32Array(size);
    this.hashes = new Uint32Array(capacity * 2);
    this.seed = seed >>> 0;
    this.ipv6 = ipv6;
    const layout = flowLayout(capacity, ipv6);
    const buf = memory ?? new ArrayBuffer(layout.bytes);
    if (buf.byteLength < layout.bytes)
      throw new RangeError(
        `flow table memory of ${buf.byteLength} bytes is smaller than the ${layout.bytes} its ${capacity} slots need`,
      );
    const c = flowColumns(buf, capacity, ipv6);
    this.family = c.family;
    this.addr6 = c.addr6;
    this.state = c.state;
    this.proto = c.proto;
    this.fins = c.fins;
    this.timerClass = new Uint8Array(capacity);
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
    this.lastSeen = c.lastSeen;
    this.pktsIn = c.pktsIn;
    this.bytesIn = c.bytesIn;
    this.pktsOut = c.pktsOut;
    this.bytesOut = c.bytesOut;
    this.flags = c.flags;
    this.ver = c.ver;
    this.check = c.check;
    this.header = new Uint32Array(buf, 0, FLOW_HEADER_BYTES / 4);
    this.headerNextId = new Float64Array(buf, H_NEXT_ID_BYTE, 1);
    const flagsWord = ipv6 ? 1 : 0;
    this.header[H_MAGIC] = FLOW_FILE_MAGIC;
    this.header[H_VERSION] = FLOW_FILE_VERSION;
    this.header[H_CAPACITY] = capacity;
    this.header[H_FLAGS] = flagsWord;
    this.header[H_CHECK] = headerCheck(capacity, flagsWord);
    this.header[H_PID] = process.pid;
    this.headerNextId[0] = this.nextId;
    this.prev = new Int32Array(capacity);
    this.next = new Int32Array(capacity);
    this.heads = new Int32Array(TIMER_CLASSES).fill(NIL);
    this.tails = new Int32Array(TIMER_CLASSES).fill(NIL);
    this.timeouts = Float64Array.from(timeoutsMs);
    this.freeStack = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.freeStack[i] = capacity - 1 - i;
    this.freeTop = capacity;
  }

  private hash(a: number, ap: number, b: number, bp: number, proto: number): number {
    let h = Math.imul(a ^ this.seed, 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13) ^ b, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 16) ^ ((ap << 16) | bp), 0x27d4eb2f);
    h = Math.imul(h ^ (h >>> 15) ^ proto, 0x165667b1);
    return (h ^ (h >>> 16)) >>> 0;
  }

  private matches(
    handle: number,
    a: number,
    ap: number,
    b: number,
    bp: number,
    proto: number,
  ): boolean {
    const s = handle >> 1;
    if (this.proto[s] !== proto || this.family[s] !== 4) return false;
    if ((handle & 1) === 0) {
      return (
        this.clientAddr[s] === a &&
        this.clientPort[s] === ap &&
        this.vipAddr[s] === b &&
        this.vport[s] === bp
      );
    }
    return (
      this.realAddr[s] === a &&
      this.realPort[s] === ap &&
      this.natAddr[s] === b &&
      this.natPort[s] === bp
    );
  }

  /**
   * Find the flow side whose (peer addr:port, local addr:port) is the packet's
   * (source, destination). Returns `slot*2 + side`, or -1.
   */
  lookup(
    srcAddr: number,
    srcPort: number,
    dstAddr: number,
    dstPort: number,
    proto: number,
  ): number {
    let i = this.hash(srcAddr, srcPort, dstAddr, dstPort, proto) & this.mask;
    for (;;) {
      const e = this.index[i]!;
      if (e === 0) return -1;
      if (this.matches(e - 1, srcAddr, srcPort, dstAddr, dstPort, proto)) return e - 1;
      i = (i + 1) & this.mask;
    }
  }

  /** matches() for an IPv6 key: the folds `fa`/`fb` first, then the words of key6. */
  private matches6(
    handle: number,
    fa: number,
    ap: number,
    fb: number,
    bp: number,
    proto: number,
  ): boolean {
    const s = handle >> 1;
    if (this.proto[s] !== proto || this.family[s] !== 6) return false;
    const k = this.key6;
    const x = this.addr6;
    const o = s * 16;
    if ((handle & 1) === 0) {
      return (
        this.clientAddr[s] === fa &&
        this.clientPort[s] === ap &&
        this.vipAddr[s] === fb &&
        this.vport[s] === bp &&
        x[o] === k[0] &&
        x[o + 1] === k[1] &&
        x[o + 2] === k[2] &&
        x[o + 3] === k[3] &&
        x[o + 4] === k[4] &&
        x[o + 5] === k[5] &&
        x[o + 6] === k[6] &&
        x[o + 7] === k[7]
      );
    }
    return (
      this.realAddr[s] === fa &&
      this.realPort[s] === ap &&
      this.natAddr[s] === fb &&
      this.natPort[s] === bp &&
      x[o + 12] === k[0] &&
      x[o + 13] === k[1] &&
      x[o + 14] === k[2] &&
      x[o + 15] === k[3] &&
      x[o + 8] === k[4] &&
      x[o + 9] === k[5] &&
      x[o + 10] === k[6] &&
      x[o + 11] === k[7]
    );
  }

  /** Probe for the IPv6 key now in key6 (source words 0-3, destination 4-7). */
  private find6(srcPort: number, dstPort: number, proto: number): number {
    const k = this.key6;
    const fa = fold6(k, 0);
    const fb = fold6(k, 4);
    let i = this.hash(fa, srcPort, fb, dstPort, proto | FAMILY6_TAG) & this.mask;
    for (;;) {
      const e = this.index[i]!;
      if (e === 0) return -1;
      if (this.matches6(e - 1, fa, srcPort, fb, dstPort, proto)) return e - 1;
      i = (i + 1) & this.mask;
    }
  }

  /**
   * `lookup` for IPv6: the packet's 16-byte source and destination addresses at
   * `srcOff` / `dstOff` of `buf`, read in place. Returns `slot*2 + side`, or -1
   * (always -1 for a table without IPv6 columns).
   */
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
    return this.find6(srcPort, dstPort, proto);
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
    return this.find6(srcPort, dstPort, proto);
  }

  private insert(handle: number, h: number): void {
    this.hashes[handle] = h;
    let i = h & this.mask;
    while (this.index[i] !== 0) i = (i + 1) & this.mask;
    this.index[i] = handle + 1;
  }

  private unindex(handle: number): void {
    let i = this.hashes[handle]! & this.mask;
    while (this.index[i] !== handle + 1) i = (i + 1) & this.mask;
    // Backward-shift deletion: pull later entries of the run into the hole when
    // their home position does not lie cyclically in (hole, j].
    let hole = i;
    let j = i;
    for (;;) {
      j = (j + 1) & this.mask;
      const e = this.index[j]!;
      if (e === 0) break;
      const home = this.hashes[e - 1]! & this.mask;
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!inRange) {
        this.index[hole] = e;
        hole = j;
      }
    }
    this.index[hole] = 0;
  }

  /**
   * Record a new flow in state SYN_SENT (TCP) or UDP_UNREPLIED (UDP). Returns its slot, CREATE_FULL when no slot
   * is free and no flow is embryonic, or CREATE_COLLISION when either side's key is already in use. When the
   * embryonic share is used up, or no slot is free, the oldest embryonic flow is removed first (the flood policy).
   */
  create(k: FlowKeyArgs, now: number): number {
    const v6 = k.family === 6;
    // An IPv6 flow needs the IPv6 columns (and its 16 words): without them, no room.
    if (v6 && (!this.ipv6 || k.addr6 === undefined || k.addr6.length < 16)) return CREATE_FULL;
    const embryonic = this.embryonicSize;
    if (this.freeTop === 0 && embryonic === 0) return CREATE_FULL;
    if (this.keyInUse(k)) return CREATE_COLLISION;
    if (this.freeTop === 0 || embryonic >= this.embryonicLimit) {
      // The flood policy (see the top of the file): the oldest embryonic flow gives way.
      this.remove(this.oldestEmbryonic());
      this.embryonicEvicted++;
    }
    const state = k.proto === IPPROTO_UDP ? FlowState.UDP_UNREPLIED : FlowState.SYN_SENT;
    const s = this.place(k, state, this.nextId++, now);
    this.pktsIn[s] = 0;
    this.bytesIn[s] = 0;
    this.pktsOut[s] = 0;
    this.bytesOut[s] = 0;
    this.fins[s] = 0;
    this.lastSeen[s] = now;
    this.headerNextId[0] = this.nextId;
    this.seal(s);
    return s;
  }

  /**
   * Take over a flow recorded by a previous daemon (its state file, read back
   * by src/state/flow-file.ts): the keys of `k` and the state, times, id and
   * counters of `r`, as they were. Never evicts: returns CREATE_FULL when no
   * slot is free, CREATE_COLLISION when a side's key is in use. Flows must come
   * in order of last activity, oldest first (the timer lists' order). Control
   * plane (start-up).
   */
  restoreFlow(k: FlowKeyArgs, r: FlowRecordArgs): number {
    const v6 = k.family === 6;
    if (v6 && (!this.ipv6 || k.addr6 === undefined || k.addr6.length < 16)) return CREATE_FULL;
    if (this.freeTop === 0) return CREATE_FULL;
    if (this.keyInUse(k)) return CREATE_COLLISION;
    const s = this.place(k, r.state, r.id, r.created);
    this.fins[s] = r.fins;
    this.lastSeen[s] = r.lastSeen;
    this.pktsIn[s] = r.pktsIn;
    this.bytesIn[s] = r.bytesIn;
    this.pktsOut[s] = r.pktsOut;
    this.bytesOut[s] = r.bytesOut;
    if (r.id >= this.nextId) this.nextId = r.id + 1;
    this.headerNextId[0] = this.nextId;
    this.seal(s);
    return s;
  }

  /** Flow ids from `next` on (at least): a previous daemon's table gave those below. */
  reserveIds(next: number): void {
    if (Number.isSafeInteger(next) && next > this.nextId) this.nextId = next;
    this.headerNextId[0] = this.nextId;
  }

  /** Is either side's key of `k` another flow's? */
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

  /** A free slot filled with `k` in `state`, indexed and on its timer list (counters, fins, lastSeen: the caller's). */
  private place(k: FlowKeyArgs, state: number, id: number, created: number): number {
    const v6 = k.family === 6;
    let ca = k.clientAddr;
    let va = k.vipAddr;
    let na = k.natAddr;
    let ra = k.realAddr;
    let tag = k.proto;
    const s = this.freeStack[--this.freeTop]!;
    this.family[s] = v6 ? 6 : 4;
    if (v6) {
      const w = k.addr6!;
      const x = this.addr6;
      const o = s * 16;
      for (let i = 0; i < 16; i++) x[o + i] = w[i]!;
      ca = fold6(w, 0);
      va = fold6(w, 4);
      na = fold6(w, 8);
      ra = fold6(w, 12);
      tag = k.proto | FAMILY6_TAG;
    }
    this.proto[s] = k.proto;
    this.flags[s] = k.flags ?? 0;
    this.clientAddr[s] = ca;
    this.clientPort[s] = k.clientPort;
    this.vipAddr[s] = va;
    this.vport[s] = k.vport;
    this.natAddr[s] = na;
    this.natPort[s] = k.natPort;
    this.realAddr[s] = ra;
    this.realPort[s] = k.realPort;
    this.service[s] = k.service;
    this.aid[s] = k.aid;
    this.instance[s] = k.instance;
    this.state[s] = state;
    this.id[s] = id;
    this.created[s] = created;
    this.lastSeen[s] = created;
    this.insert(s * 2, this.hash(ca, k.clientPort, va, k.vport, tag));
    this.insert(s * 2 + 1, this.hash(ra, k.realPort, na, k.natPort, tag));
    const c = STATE_TIMER[state]!;
    this.timerClass[s] = c;
    this.append(s, c);
    this.size++;
    if (k.proto === IPPROTO_UDP) this.udpSize++;
    return s;
  }

  /**
   * Mark slot s's record complete: its version and the check of its fixed
   * fields, written after them (layout.ts). Every change of a fixed field
   * (create, repoint) ends with it.
   */
  private seal(s: number): void {
    this.ver[s] = RECORD_VERSION;
    this.check[s] = recordCheck(this, s);
  }

  /** Embryonic flows now: TCP handshake not complete, UDP not answered. */
  get embryonicSize(): number {
    return this.classSize[TimerClass.EMBRYONIC]! + this.classSize[TimerClass.UDP_UNREPLIED]!;
  }

  /**
   * The embryonic flow seen last longest ago (-1: none): the older of the heads of
   * the two embryonic lists. Each list is in order of last activity.
   */
  oldestEmbryonic(): number {
    const a = this.heads[TimerClass.EMBRYONIC]!;
    const b = this.heads[TimerClass.UDP_UNREPLIED]!;
    if (a === NIL) return b;
    if (b === NIL) return a;
    return this.lastSeen[b]! < this.lastSeen[a]! ? b : a;
  }

  /**
   * Call `fn(slot)` just before each flow is removed (by `remove`, expiry or
   * replacement), while its columns still hold it. Listeners add up, called in
   * the order they were added: none can replace another. At most
   * MAX_REMOVE_LISTENERS (a control-plane hook, not a growing list). `fn` must
   * not throw. Returns the function that takes this listener off again.
   */
  addRemoveListener(fn: (slot: number) => void): () => void {
    if (this.removeListeners.length >= MAX_REMOVE_LISTENERS)
      throw new RangeError(`a flow table takes at most ${MAX_REMOVE_LISTENERS} remove listeners`);
    this.removeListeners.push(fn);
    return () => {
      const i = this.removeListeners.indexOf(fn);
      if (i >= 0) this.removeListeners.splice(i, 1);
    };
  }

  /** Remove a live flow; its slot goes back to the free stack. */
  remove(s: number): void {
    if (this.state[s] === FlowState.FREE) return;
    const ls = this.removeListeners;
    for (let i = 0; i < ls.length; i++) ls[i]!(s);
    this.unindex(s * 2);
    this.unindex(s * 2 + 1);
    this.unlink(s, this.timerClass[s]!);
    this.state[s] = FlowState.FREE;
    this.freeStack[this.freeTop++] = s;
    this.size--;
    if (this.proto[s] === IPPROTO_UDP) this.udpSize--;
  }

  /**
   * Point live flow `s` at another server side: real addr:port and instance (the
   * passive health check sends a refused SYN to another instance of the AID).
   * For an IPv6 flow the real address is `real6[at..at+3]` (`realAddr` is then
   * ignored). Side 1's key changes, side 0's stays. Returns false, changing
   * nothing, when the new side-1 key is another flow's (or an IPv6 flow is given
   * no IPv6 address).
   */
  repoint(
    s: number,
    realAddr: number,
    realPort: number,
    instance: number,
    real6: Uint32Array | null = null,
    at = 0,
  ): boolean {
    const proto = this.proto[s]!;
    const natAddr = this.natAddr[s]!;
    const natPort = this.natPort[s]!;
    if (this.family[s] === 6) {
      if (real6 === null) return false;
      const x = this.addr6;
      const o = s * 16;
      const other = this.lookupWords6(real6, at, realPort, x, o + 8, natPort, proto);
      if (other >= 0) return other === s * 2 + 1;
      this.unindex(s * 2 + 1);
      for (let i = 0; i < 4; i++) x[o + 12 + i] = real6[at + i]!;
      const ra = fold6(x, o + 12);
      this.realAddr[s] = ra;
      this.realPort[s] = realPort;
      this.instance[s] = instance;
      this.insert(s * 2 + 1, this.hash(ra, realPort, natAddr, natPort, proto | FAMILY6_TAG));
      this.seal(s);
      return true;
    }
    const other = this.lookup(realAddr, realPort, natAddr, natPort, proto);
    if (other >= 0) return other === s * 2 + 1;
    this.unindex(s * 2 + 1);
    this.realAddr[s] = realAddr;
    this.realPort[s] = realPort;
    this.instance[s] = instance;
    this.insert(s * 2 + 1, this.hash(realAddr, realPort, natAddr, natPort, proto));
    this.seal(s);
    return true;
  }

  /** Set the state and move the flow to the tail of its (possibly new) timer class. */
  touch(s: number, state: number, now: number): void {
    this.lastSeen[s] = now;
    this.state[s] = state;
    const old = this.timerClass[s]!;
    const c = STATE_TIMER[state]!;
    this.unlink(s, old);
    this.timerClass[s] = c;
    this.append(s, c);
  }

  isLive(s: number): boolean {
    return this.state[s] !== FlowState.FREE;
  }

  private append(s: number, c: number): void {
    const t = this.tails[c]!;
    this.prev[s] = t;
    this.next[s] = NIL;
    if (t === NIL) this.heads[c] = s;
    else this.next[t] = s;
    this.tails[c] = s;
    this.classSize[c]! += 1;
  }

  private unlink(s: number, c: number): void {
    const p = this.prev[s]!;
    const n = this.next[s]!;
    if (p === NIL) this.heads[c] = n;
    else this.next[p] = n;
    if (n === NIL) this.tails[c] = p;
    else this.prev[n] = p;
    this.classSize[c]! -= 1;
  }

  /**
   * Remove flows idle longer than their class's timeout, at most `budget` of them.
   * Calls `onExpire(slot)` before each removal. Returns how many were removed.
   */
  expire(now: number, budget: number, onExpire?: (slot: number) => void): number {
    let n = 0;
    for (let c = 0; c < TIMER_CLASSES; c++) {
      const limit = now - this.timeouts[c]!;
      for (;;) {
        const s = this.heads[c]!;
        if (s === NIL || this.lastSeen[s]! > limit || n >= budget) break;
        onExpire?.(s);
        this.remove(s);
        n++;
      }
    }
    return n;
  }

  /**
   * Bytes of the table's typed arrays (columns, index, lists, free stack): what
   * docs/architecture.md counts per slot. Control plane.
   */
  memoryBytes(): number {
    let n = 0;
    for (const v of Object.values(this)) if (ArrayBuffer.isView(v)) n += v.byteLength;
    return n;
  }

  /** Visit every live flow (control plane: `vpm flows`). */
  forEach(fn: (slot: number) => void): void {
    for (let c = 0; c < TIMER_CLASSES; c++) {
      for (let s = this.heads[c]!; s !== NIL; s = this.next[s]!) fn(s);
    }
  }
}
