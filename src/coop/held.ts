/**
 * The flows the cooperative holder keeps while their fate is decided: the first
 * packet of each (a TCP SYN, a UDP datagram), and for UDP the later datagrams of
 * the flow that arrive meanwhile, queued in arrival order. Bounded, with every
 * packet it will not keep counted (docs/cooperative.md, "Held flows and the
 * queue").
 *
 * A held flow is known by its protocol and both endpoints: a TCP and a UDP flow
 * from one client port, or flows from one client port to two services, are held
 * (and negotiated) apart. Lookups go through two numeric Map levels — client
 * addr·port (48 bits), then service addr·port·protocol (56 bits) — so a packet
 * that is only counted (a retransmitted SYN, an overflowing datagram) costs no
 * allocation; a packet that is kept costs its one copy. An IPv6 flow is known
 * the same way by its 128-bit addresses: its Map key folds each address to 32
 * bits (the flow table's fold), and the few flows whose folds and ports agree
 * share a short list, told apart by comparing the words with the packet's bytes
 * in place (again no allocation for a packet that is only counted).
 *
 * Called from inside the pipeline's batch (`negotiate`): nothing here throws or
 * calls back into the pipeline.
 */

import type { HeldKind } from '../datapath/pipeline.js';
import { fold6 } from '../flow/table.js';
import { get32 } from '../wire/bytes.js';

/** Bounds of what the holder keeps. */
export interface HoldLimits {
  /** Flows held at once; the first packet of one more is dropped (uncopied) and counted. */
  maxFlows: number;
  /** Later datagrams queued behind the first of one UDP flow. */
  maxQueuedPerFlow: number;
  /** Later datagrams queued across all held flows. */
  maxQueued: number;
  /** Bytes of every copy held: first packets and queued datagrams together. */
  maxBytes: number;
}

export const DEFAULT_HOLD_LIMITS: Readonly<HoldLimits> = Object.freeze({
  maxFlows: 4096,
  maxQueuedPerFlow: 64,
  maxQueued: 1024,
  maxBytes: 4 * 1024 * 1024,
});

export interface Held {
  /** The holder's own copy of the first packet. */
  readonly pkt: Uint8Array;
  readonly kind: HeldKind;
  /** IPPROTO_TCP or IPPROTO_UDP. */
  readonly proto: number;
  /** 4 or 6. */
  readonly family: 4 | 6;
  /** IPv4: the addresses. IPv6: the folds of the addresses (see addr6). */
  readonly srcAddr: number;
  readonly srcPort: number;
  readonly dstAddr: number;
  readonly dstPort: number;
  readonly svc: number;
  readonly aid: number;
  readonly local: boolean;
  readonly since: number;
  /** IPv6: the source (words 0-3) and destination (4-7) addresses, big-endian words; null for IPv4. */
  readonly addr6: Uint32Array | null;
  /** Later datagrams (copies), in arrival order; emptied by `take`. */
  queue: Uint8Array[];
  /** Still held: `take` has not run. */
  live: boolean;
}

/** What `add` is told; family 4 and no addr6 when absent (srcAddr/dstAddr are then ignored for IPv6). */
export type HeldInit = Omit<Held, 'pkt' | 'queue' | 'live' | 'family' | 'addr6'> & {
  family?: 4 | 6;
  addr6?: Uint32Array | null;
};

const srcKey = (addr: number, port: number) => (addr >>> 0) * 0x10000 + port;
const dstKey = (addr: number, port: number, proto: number) =>
  ((addr >>> 0) * 0x10000 + port) * 0x100 + proto;

/** A copy of buf[off, off+len): never a view (`buf` is the device's receive buffer). */
function copyOf(buf: Uint8Array, off: number, len: number): Uint8Array {
  const c = new Uint8Array(len);
  c.set(buf.subarray(off, off + len));
  return c;
}

export interface HeldStats {
  /** Flows held now. */
  flows: number;
  /** Bytes of all copies held now (first packets and queued datagrams). */
  bytes: number;
  /** First packets of new flows dropped, uncopied, because maxFlows or maxBytes was reached. */
  flowOverflow: number;
  queue: {
    /** Datagrams queued now. */
    datagrams: number;
    /** Datagrams ever queued: = sent + dropped + datagrams. */
    queued: number;
    /** Queued datagrams sent on (`sendHeld`) after their flow was placed. */
    sent: number;
    /** Queued datagrams dropped: their flow was refused, or sending one failed. */
    dropped: number;
    /** Datagrams not queued because a bound (per flow, in total, bytes) was reached. */
    overflow: number;
  };
}

/** Do the 16 bytes at buf[off] hold the address of words w[at..at+3]? */
function same6(buf: Uint8Array, off: number, w: Uint32Array, at: number): boolean {
  return (
    get32(buf, off) === w[at] &&
    get32(buf, off + 4) === w[at + 1] &&
    get32(buf, off + 8) === w[at + 2] &&
    get32(buf, off + 12) === w[at + 3]
  );
}

/** fold6 of the 16 bytes at buf[off], read in place. */
function foldAt(buf: Uint8Array, off: number): number {
  return (get32(buf, off) ^ get32(buf, off + 4) ^ get32(buf, off + 8) ^ get32(buf, off + 12)) >>> 0;
}

export class HeldFlows {
  private readonly bySrc = new Map<number, Map<number, Held>>();
  /** IPv6: source fold·port → the flows held from there (short lists). */
  private readonly bySrc6 = new Map<number, Held[]>();
  private flows = 0;
  private bytes = 0;
  private datagrams = 0;
  private flowOverflow = 0;
  private queued = 0;
  private sent = 0;
  private dropped = 0;
  private overflow = 0;

  constructor(readonly limits: Readonly<HoldLimits> = DEFAULT_HOLD_LIMITS) {}

  get size(): number {
    return this.flows;
  }

  /** The held flow of `proto` from src:sport to dst:dport, if any. */
  get(proto: number, src: number, sport: number, dst: number, dport: number): Held | undefined {
    return this.bySrc.get(srcKey(src, sport))?.get(dstKey(dst, dport, proto));
  }

  /**
   * The held IPv6 flow of `proto` from the address at buf[srcOff]:sport to the
   * one at buf[dstOff]:dport (16 bytes each, read in place), if any.
   */
  get6(
    proto: number,
    buf: Uint8Array,
    srcOff: number,
    sport: number,
    dstOff: number,
    dport: number,
  ): Held | undefined {
    const list = this.bySrc6.get(srcKey(foldAt(buf, srcOff), sport));
    if (list === undefined) return undefined;
    for (let i = 0; i < list.length; i++) {
      const h = list[i]!;
      if (h.proto !== proto || h.dstPort !== dport || h.srcPort !== sport) continue;
      if (same6(buf, srcOff, h.addr6!, 0) && same6(buf, dstOff, h.addr6!, 4)) return h;
    }
    return undefined;
  }

  /**
   * Is there room for one more flow whose first packet is `len` bytes? False —
   * counted in flowOverflow — when maxFlows flows are held or its copy would pass
   * maxBytes: the packet is then dropped, and nothing was allocated for it.
   */
  admit(len: number): boolean {
    const lim = this.limits;
    if (this.flows < lim.maxFlows && this.bytes + len <= lim.maxBytes) return true;
    this.flowOverflow++;
    return false;
  }

  /**
   * Hold a new flow whose first packet is buf[off, off+len) (copied), after
   * `admit(len)` said yes. The caller has checked that the flow is not held already.
   */
  add(init: HeldInit, buf: Uint8Array, off: number, len: number): Held {
    const family = init.family ?? 4;
    const addr6 =
      family === 6 ? Uint32Array.from((init.addr6 ?? new Uint32Array(8)).subarray(0, 8)) : null;
    const h: Held = {
      ...init,
      family,
      addr6,
      srcAddr: addr6 ? fold6(addr6, 0) : init.srcAddr,
      dstAddr: addr6 ? fold6(addr6, 4) : init.dstAddr,
      pkt: copyOf(buf, off, len),
      queue: [],
      live: true,
    };
    const sk = srcKey(h.srcAddr, h.srcPort);
    if (addr6) {
      let list = this.bySrc6.get(sk);
      if (list === undefined) {
        list = [];
        this.bySrc6.set(sk, list);
      }
      list.push(h);
    } else {
      let inner = this.bySrc.get(sk);
      if (inner === undefined) {
        inner = new Map();
        this.bySrc.set(sk, inner);
      }
      inner.set(dstKey(h.dstAddr, h.dstPort, h.proto), h);
    }
    this.flows++;
    this.bytes += len;
    return h;
  }

  /**
   * Queue a copy of a later datagram of held flow `h`. False — counted in
   * `overflow`, nothing copied — when a bound is reached or `h` is no longer held.
   */
  enqueue(h: Held, buf: Uint8Array, off: number, len: number): boolean {
    const lim = this.limits;
    if (
      !h.live ||
      h.queue.length >= lim.maxQueuedPerFlow ||
      this.datagrams >= lim.maxQueued ||
      this.bytes + len > lim.maxBytes
    ) {
      this.overflow++;
      return false;
    }
    h.queue.push(copyOf(buf, off, len));
    this.datagrams++;
    this.queued++;
    this.bytes += len;
    return true;
  }

  /**
   * Stop holding `h` (its fate is decided) and hand over its queued datagrams, in
   * arrival order; nothing more is queued behind it. The caller reports each with
   * `sentOne`/`droppedOne` (or all at once with `dropAll`). Idempotent: a second
   * call returns nothing.
   */
  take(h: Held): Uint8Array[] {
    if (!h.live) return [];
    h.live = false;
    const sk = srcKey(h.srcAddr, h.srcPort);
    if (h.addr6) {
      const list = this.bySrc6.get(sk);
      if (list !== undefined) {
        const i = list.indexOf(h);
        if (i >= 0) list.splice(i, 1);
        if (list.length === 0) this.bySrc6.delete(sk);
      }
    } else {
      const inner = this.bySrc.get(sk);
      if (inner !== undefined) {
        inner.delete(dstKey(h.dstAddr, h.dstPort, h.proto));
        if (inner.size === 0) this.bySrc.delete(sk);
      }
    }
    const q = h.queue;
    h.queue = [];
    this.flows--;
    this.bytes -= h.pkt.length;
    for (const p of q) this.bytes -= p.length;
    this.datagrams -= q.length;
    return q;
  }

  /** A taken datagram was sent on (true) or dropped (false). */
  settled(sent: boolean): void {
    if (sent) this.sent++;
    else this.dropped++;
  }

  /** `n` taken datagrams were dropped (their flow was refused). */
  droppedAll(n: number): void {
    this.dropped += n;
  }

  stats(): HeldStats {
    return {
      flows: this.flows,
      bytes: this.bytes,
      flowOverflow: this.flowOverflow,
      queue: {
        datagrams: this.datagrams,
        queued: this.queued,
        sent: this.sent,
        dropped: this.dropped,
        overflow: this.overflow,
      },
    };
  }
}
