/**
 * IPv4 fragments of translated flows, without reassembly.
 *
 * Theory of operation. Only the first fragment of a datagram (offset 0) carries
 * the ports, so only it can be matched to a flow (or create one). The pipeline
 * rewrites it like any packet — ports, addresses, the L4 checksum incrementally
 * (the update depends only on the fields that change, not on the rest of the
 * datagram) — and records here that the datagram (source, destination,
 * protocol, IP identification, as it arrived) belongs to flow side `handle`. The
 * later fragments of that datagram carry only the IP header: they get the same
 * address rewrite, and their header checksum, from that record.
 *
 * Fragments can arrive before their first fragment (reordering). Those wait here,
 * copied into a bounded arena (`limits.heldFragments` packets,
 * `limits.heldFragmentBytes` bytes), for `timeouts.fragmentMs`; when the first
 * fragment comes they are handed back to be rewritten and sent. A fragment that
 * does not fit is dropped (`fragment_held_overflow`), one whose first fragment
 * does not come in time is dropped when it expires (`fragmentsExpired`).
 *
 * The records: an open-addressing table of MAX_IDS entries keyed by the four
 * numbers (no strings), each with its expiry; an entry lives `fragmentMs` after
 * its first fragment (the later fragments may come in any order, so the last
 * one cannot end it), and an expired or older entry is simply overwritten: a
 * datagram whose records were pushed out by MAX_IDS newer ones loses its later
 * fragments (counted as `fragment_no_flow`). Nothing here allocates after
 * construction or throws.
 */

import { FlowState } from '../flow/state.js';

const EMPTY = -1;

/** `FragmentTable.lookup`: no record of the datagram (its first fragment has not come). */
export const FRAG_UNKNOWN = -1;
/**
 * `FragmentTable.lookup`: the datagram's first fragment came and matched no flow
 * (recorded with this handle), or the flow it matched is gone.
 */
export const FRAG_NO_FLOW = -2;

/** Records of datagrams whose first fragment was translated (a documented constant). */
export const MAX_IDS = 4096;
/** Linear probes before an insert overwrites the oldest entry it saw. */
const PROBES = 8;

export class FragmentTable {
  private readonly mask = MAX_IDS * 2 - 1;
  private readonly src = new Uint32Array(MAX_IDS * 2);
  private readonly dst = new Uint32Array(MAX_IDS * 2);
  /** protocol << 16 | identification; EMPTY when unused. */
  private readonly protoId = new Int32Array(MAX_IDS * 2).fill(EMPTY);
  private readonly handle = new Int32Array(MAX_IDS * 2);
  /** The flow's id (FlowTable.id): a record outlives its flow's slot only as a mismatch. */
  private readonly flowId = new Float64Array(MAX_IDS * 2);
  private readonly expires = new Float64Array(MAX_IDS * 2);

  private home(src: number, dst: number, pid: number): number {
    let h = Math.imul(src ^ 0x9e3779b9, 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13) ^ dst, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 16) ^ pid, 0x27d4eb2f);
    return (h ^ (h >>> 15)) & this.mask;
  }

  /**
   * Record that datagram (src, dst, proto, id) belongs to flow side `handle` (of
   * the flow whose id is `flowId`) until `now + ttl`; `handle` FRAG_NO_FLOW
   * records that its first fragment matched no flow.
   */
  record(
    src: number,
    dst: number,
    proto: number,
    id: number,
    handle: number,
    flowId: number,
    now: number,
    ttl: number,
  ): void {
    const pid = (proto << 16) | id;
    let i = this.home(src, dst, pid);
    let victim = i;
    for (let k = 0; k < PROBES; k++, i = (i + 1) & this.mask) {
      const same =
        this.protoId[i] === pid && this.src[i] === src >>> 0 && this.dst[i] === dst >>> 0;
      if (same || this.protoId[i] === EMPTY || this.expires[i]! <= now) {
        victim = i;
        break;
      }
      if (this.expires[i]! < this.expires[victim]!) victim = i;
    }
    this.src[victim] = src;
    this.dst[victim] = dst;
    this.protoId[victim] = pid;
    this.handle[victim] = handle;
    this.flowId[victim] = flowId;
    this.expires[victim] = now + ttl;
  }

  /**
   * The flow side of datagram (src, dst, proto, id); FRAG_UNKNOWN when there is
   * no record, FRAG_NO_FLOW when its first fragment matched no flow or the flow
   * it was recorded for is gone (`idOf[slot]`, FlowTable.id, no longer matches,
   * or `live(slot)` is false).
   */
  lookup(
    src: number,
    dst: number,
    proto: number,
    id: number,
    now: number,
    idOf: Float64Array,
    state: Uint8Array,
  ): number {
    const pid = (proto << 16) | id;
    let i = this.home(src, dst, pid);
    for (let k = 0; k < PROBES; k++, i = (i + 1) & this.mask) {
      if (
        this.protoId[i] === pid &&
        this.src[i] === src >>> 0 &&
        this.dst[i] === dst >>> 0 &&
        this.expires[i]! > now
      ) {
        const h = this.handle[i]!;
        if (h < 0) return FRAG_NO_FLOW;
        const s = h >> 1;
        return idOf[s] === this.flowId[i] && state[s] !== FlowState.FREE ? h : FRAG_NO_FLOW;
      }
    }
    return FRAG_UNKNOWN;
  }
}

/**
 * Fragments waiting for their first fragment: copies in one arena, in arrival
 * order. `add` copies a fragment (with `headroom` bytes in front for its
 * virtio-net header, which it zeroes: a held fragment goes out as a plain
 * packet); `take` moves the ones of one datagram to the front of the arena's
 * out-list; `expire` drops the stale. Compaction (when the arena's tail is
 * full) copies the live fragments down: the rare path.
 */
export class HeldFragments {
  readonly arena: Uint8Array;
  private readonly off: Uint32Array;
  private readonly len: Uint32Array;
  private readonly src: Uint32Array;
  private readonly dst: Uint32Array;
  private readonly pid: Int32Array;
  private readonly until: Float64Array;
  private n = 0;
  private tail = 0;
  bytes = 0;
  /** Offsets and lengths of the fragments `take` returned (valid until the next call). */
  readonly outOffsets: Uint32Array;
  readonly outLengths: Uint32Array;

  constructor(
    readonly maxCount: number,
    readonly maxBytes: number,
    private readonly headroom: number,
  ) {
    this.arena = new Uint8Array(maxBytes + maxCount * headroom);
    this.off = new Uint32Array(maxCount);
    this.len = new Uint32Array(maxCount);
    this.src = new Uint32Array(maxCount);
    this.dst = new Uint32Array(maxCount);
    this.pid = new Int32Array(maxCount);
    this.until = new Float64Array(maxCount);
    this.outOffsets = new Uint32Array(maxCount);
    this.outLengths = new Uint32Array(maxCount);
  }

  get count(): number {
    return this.n;
  }

  /** Hold a copy of buf[off, off + len) for datagram (src, dst, proto, id) until `until`. */
  add(
    buf: Uint8Array,
    off: number,
    len: number,
    src: number,
    dst: number,
    proto: number,
    id: number,
    until: number,
  ): boolean {
    if (this.n >= this.maxCount || this.bytes + len > this.maxBytes) return false;
    const need = this.headroom + len;
    if (this.tail + need > this.arena.length) this.compact();
    if (this.tail + need > this.arena.length) return false;
    const at = this.tail + this.headroom;
    this.arena.fill(0, this.tail, at);
    this.arena.set(buf.subarray(off, off + len), at);
    this.off[this.n] = at;
    this.len[this.n] = len;
    this.src[this.n] = src;
    this.dst[this.n] = dst;
    this.pid[this.n] = (proto << 16) | id;
    this.until[this.n] = until;
    this.n++;
    this.tail += need;
    this.bytes += len;
    return true;
  }

  /**
   * The held fragments of datagram (src, dst, proto, id), removed from the wait
   * list: their offsets and lengths in outOffsets/outLengths. Returns how many.
   * Valid until the next add.
   */
  take(src: number, dst: number, proto: number, id: number): number {
    const pid = (proto << 16) | id;
    let k = 0;
    let w = 0;
    for (let i = 0; i < this.n; i++) {
      if (this.pid[i] === pid && this.src[i] === src >>> 0 && this.dst[i] === dst >>> 0) {
        this.outOffsets[k] = this.off[i]!;
        this.outLengths[k] = this.len[i]!;
        this.bytes -= this.len[i]!;
        k++;
        continue;
      }
      this.moveEntry(i, w++);
    }
    this.n = w;
    // Nothing is added before the caller has sent what it took: the space is free.
    if (this.n === 0) this.tail = 0;
    return k;
  }

  /** Drop the fragments whose time ran out; returns how many. */
  expire(now: number): number {
    let w = 0;
    let gone = 0;
    for (let i = 0; i < this.n; i++) {
      if (this.until[i]! <= now) {
        this.bytes -= this.len[i]!;
        gone++;
        continue;
      }
      this.moveEntry(i, w++);
    }
    this.n = w;
    if (this.n === 0) this.tail = 0;
    return gone;
  }

  private moveEntry(from: number, to: number): void {
    if (from === to) return;
    this.off[to] = this.off[from]!;
    this.len[to] = this.len[from]!;
    this.src[to] = this.src[from]!;
    this.dst[to] = this.dst[from]!;
    this.pid[to] = this.pid[from]!;
    this.until[to] = this.until[from]!;
  }

  /** Copy the live fragments to the start of the arena (entries are in arena order). */
  private compact(): void {
    let at = 0;
    for (let i = 0; i < this.n; i++) {
      const o = this.off[i]!;
      const l = this.len[i]!;
      const dest = at + this.headroom;
      if (dest !== o) this.arena.copyWithin(dest, o, o + l);
      this.arena.fill(0, at, dest);
      this.off[i] = dest;
      at = dest + l;
    }
    this.tail = at;
  }
}
