/**
 * IPv4 and IPv6 fragments of translated flows, without reassembly.
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
 * IPv6 fragments (the fragment header, RFC 8200 §4.5) go the same way; their
 * datagram is (source, destination, 32-bit identification), the 128-bit
 * addresses kept as words (a fold hashes them, the words decide), the
 * protocol not part of the key (a later fragment's next header need not be the
 * first's). The pipeline takes a datagram's key before its first fragment is
 * rewritten.
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

/** Entry kinds: none, an IPv4 datagram, an IPv6 datagram. */
const KIND_EMPTY = 0;
const KIND_V4 = 4;
const KIND_V6 = 6;

/** The fold of an IPv6 key's 8 words (source 0-3, destination 4-7): its source and destination stand-ins. */
function foldSrc(k: Uint32Array): number {
  return (k[0]! ^ k[1]! ^ k[2]! ^ k[3]!) >>> 0;
}
function foldDst(k: Uint32Array): number {
  return (k[4]! ^ k[5]! ^ k[6]! ^ k[7]!) >>> 0;
}

export class FragmentTable {
  private readonly mask = MAX_IDS * 2 - 1;
  /** KIND_*: what the entry holds. */
  private readonly kind = new Uint8Array(MAX_IDS * 2);
  /** IPv4: the addresses; IPv6: their folds (the words are in `addr6`). */
  private readonly src = new Uint32Array(MAX_IDS * 2);
  private readonly dst = new Uint32Array(MAX_IDS * 2);
  /** IPv4: protocol << 16 | identification; IPv6: the 32-bit identification (RFC 8200 keys by addresses and id). */
  private readonly ident = new Uint32Array(MAX_IDS * 2);
  private readonly handle = new Int32Array(MAX_IDS * 2);
  /** The flow's id (FlowTable.id): a record outlives its flow's slot only as a mismatch. */
  private readonly flowId = new Float64Array(MAX_IDS * 2);
  private readonly expires = new Float64Array(MAX_IDS * 2);
  /** IPv6 entries' addresses, 8 words each (source, destination); empty without `ipv6`. */
  private readonly addr6: Uint32Array;

  constructor(ipv6 = false) {
    this.addr6 = new Uint32Array(ipv6 ? MAX_IDS * 2 * 8 : 0);
  }

  private home(src: number, dst: number, pid: number): number {
    let h = Math.imul(src ^ 0x9e3779b9, 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13) ^ dst, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 16) ^ pid, 0x27d4eb2f);
    return (h ^ (h >>> 15)) & this.mask;
  }

  private same(
    i: number,
    kind: number,
    src: number,
    dst: number,
    id: number,
    k6: Uint32Array | null,
  ): boolean {
    if (this.kind[i] !== kind || this.ident[i] !== id || this.src[i] !== src || this.dst[i] !== dst)
      return false;
    if (k6 === null) return true;
    const a = this.addr6;
    const o = i * 8;
    for (let j = 0; j < 8; j++) if (a[o + j] !== k6[j]) return false;
    return true;
  }

  private put(
    kind: number,
    src: number,
    dst: number,
    id: number,
    k6: Uint32Array | null,
    handle: number,
    flowId: number,
    now: number,
    ttl: number,
  ): void {
    let i = this.home(src, dst, id);
    let victim = i;
    for (let k = 0; k < PROBES; k++, i = (i + 1) & this.mask) {
      if (
        this.same(i, kind, src, dst, id, k6) ||
        this.kind[i] === KIND_EMPTY ||
        this.expires[i]! <= now
      ) {
        victim = i;
        break;
      }
      if (this.expires[i]! < this.expires[victim]!) victim = i;
    }
    this.kind[victim] = kind;
    this.src[victim] = src;
    this.dst[victim] = dst;
    this.ident[victim] = id;
    if (k6 !== null) {
      const o = victim * 8;
      for (let j = 0; j < 8; j++) this.addr6[o + j] = k6[j]!;
    }
    this.handle[victim] = handle;
    this.flowId[victim] = flowId;
    this.expires[victim] = now + ttl;
  }

  private get(
    kind: number,
    src: number,
    dst: number,
    id: number,
    k6: Uint32Array | null,
    now: number,
    idOf: Float64Array,
    state: Uint8Array,
  ): number {
    let i = this.home(src, dst, id);
    for (let k = 0; k < PROBES; k++, i = (i + 1) & this.mask) {
      if (this.same(i, kind, src, dst, id, k6) && this.expires[i]! > now) {
        const h = this.handle[i]!;
        if (h < 0) return FRAG_NO_FLOW;
        const s = h >> 1;
        return idOf[s] === this.flowId[i] && state[s] !== FlowState.FREE ? h : FRAG_NO_FLOW;
      }
    }
    return FRAG_UNKNOWN;
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
    this.put(
      KIND_V4,
      src >>> 0,
      dst >>> 0,
      ((proto << 16) | id) >>> 0,
      null,
      handle,
      flowId,
      now,
      ttl,
    );
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
    return this.get(
      KIND_V4,
      src >>> 0,
      dst >>> 0,
      ((proto << 16) | id) >>> 0,
      null,
      now,
      idOf,
      state,
    );
  }

  /**
   * `record` for an IPv6 datagram: `key` holds its source (words 0-3) and
   * destination (4-7) as they arrived, `id` the fragment header's 32-bit
   * identification. A no-op for a table built without IPv6.
   */
  record6(
    key: Uint32Array,
    id: number,
    handle: number,
    flowId: number,
    now: number,
    ttl: number,
  ): void {
    if (this.addr6.length === 0) return;
    this.put(KIND_V6, foldSrc(key), foldDst(key), id >>> 0, key, handle, flowId, now, ttl);
  }

  /** `lookup` for an IPv6 datagram (key and id as for record6). */
  lookup6(
    key: Uint32Array,
    id: number,
    now: number,
    idOf: Float64Array,
    state: Uint8Array,
  ): number {
    if (this.addr6.length === 0) return FRAG_UNKNOWN;
    return this.get(KIND_V6, foldSrc(key), foldDst(key), id >>> 0, key, now, idOf, state);
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
  /** 4 or 6. */
  private readonly fam: Uint8Array;
  /** IPv4: the addresses; IPv6: their folds (the held copy itself has the words). */
  private readonly src: Uint32Array;
  private readonly dst: Uint32Array;
  /** IPv4: protocol << 16 | identification; IPv6: the 32-bit identification. */
  private readonly pid: Uint32Array;
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
    this.fam = new Uint8Array(maxCount);
    this.src = new Uint32Array(maxCount);
    this.dst = new Uint32Array(maxCount);
    this.pid = new Uint32Array(maxCount);
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
    return this.hold(buf, off, len, 4, src >>> 0, dst >>> 0, ((proto << 16) | id) >>> 0, until);
  }

  /**
   * Hold a copy of the IPv6 fragment buf[off, off + len) of datagram (`key`:
   * source words 0-3, destination 4-7; fragment identification `id`).
   */
  add6(
    buf: Uint8Array,
    off: number,
    len: number,
    key: Uint32Array,
    id: number,
    until: number,
  ): boolean {
    return this.hold(buf, off, len, 6, foldSrc(key), foldDst(key), id >>> 0, until);
  }

  private hold(
    buf: Uint8Array,
    off: number,
    len: number,
    fam: number,
    src: number,
    dst: number,
    pid: number,
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
    this.fam[this.n] = fam;
    this.src[this.n] = src;
    this.dst[this.n] = dst;
    this.pid[this.n] = pid;
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
    return this.takeWhere(4, src >>> 0, dst >>> 0, ((proto << 16) | id) >>> 0, null);
  }

  /** `take` for the IPv6 datagram (`key`, `id`) as for add6. */
  take6(key: Uint32Array, id: number): number {
    return this.takeWhere(6, foldSrc(key), foldDst(key), id >>> 0, key);
  }

  /** Is the held IPv6 fragment i of the datagram whose addresses are `key`? (Its copy has them.) */
  private addrsAre(i: number, key: Uint32Array): boolean {
    const a = this.arena;
    const o = this.off[i]! + 8; // IPV6_OFF_SRC; the destination follows at 24
    for (let j = 0; j < 8; j++) {
      const p = o + 4 * j;
      const v = ((a[p]! << 24) | (a[p + 1]! << 16) | (a[p + 2]! << 8) | a[p + 3]!) >>> 0;
      if (v !== key[j]) return false;
    }
    return true;
  }

  private takeWhere(
    fam: number,
    src: number,
    dst: number,
    pid: number,
    key: Uint32Array | null,
  ): number {
    let k = 0;
    let w = 0;
    for (let i = 0; i < this.n; i++) {
      if (
        this.fam[i] === fam &&
        this.pid[i] === pid &&
        this.src[i] === src &&
        this.dst[i] === dst &&
        (key === null || this.addrsAre(i, key))
      ) {
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
    this.fam[to] = this.fam[from]!;
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
