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
 * allocation; a packet that is kept costs its one copy.
 *
 * Called from inside the pipeline's batch (`negotiate`): nothing here throws or
 * calls back into the pipeline.
 */

import type { HeldKind } from '../datapath/pipeline.js';

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
  readonly srcAddr: number;
  readonly srcPort: number;
  readonly dstAddr: number;
  readonly dstPort: number;
  readonly svc: number;
  readonly aid: number;
  readonly local: boolean;
  readonly since: number;
  /** Later datagrams (copies), in arrival order; emptied by `take`. */
  queue: Uint8Array[];
  /** Still held: `take` has not run. */
  live: boolean;
}

export type HeldInit = Omit<Held, 'pkt' | 'queue' | 'live'>;

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

export class HeldFlows {
  private readonly bySrc = new Map<number, Map<number, Held>>();
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
    const h: Held = { ...init, pkt: copyOf(buf, off, len), queue: [], live: true };
    const sk = srcKey(h.srcAddr, h.srcPort);
    let inner = this.bySrc.get(sk);
    if (inner === undefined) {
      inner = new Map();
      this.bySrc.set(sk, inner);
    }
    inner.set(dstKey(h.dstAddr, h.dstPort, h.proto), h);
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
    const inner = this.bySrc.get(sk);
    if (inner !== undefined) {
      inner.delete(dstKey(h.dstAddr, h.dstPort, h.proto));
      if (inner.size === 0) this.bySrc.delete(sk);
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
