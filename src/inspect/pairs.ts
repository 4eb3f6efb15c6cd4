/**
 * `vpm dump --pairs`: each TCP packet before and after translation, on one line.
 *
 * Theory of operation. vpm reads a packet from its TUN and writes the translated
 * packet back, so a capture on the TUN sees the original and, shortly after, its
 * translation. The two differ only in one address/port pair; TCP's flags, sequence
 * and acknowledgement numbers and the payload length stay as they were. The flows
 * of the daemon (`vpm flows`) say which tuples belong together: a flow with client
 * C, service V, real R and local-client address N (= C unless vpm translated the
 * client) has four tuples,
 *
 *     C > V   client side, client → server     N > R   real side, client → server
 *     V > C   client side, server → client     R > N   real side, server → client
 *
 * and a packet on one side pairs with the first waiting packet on the other side
 * of the same flow and direction that has the same flags, seq, ack and length.
 * Before ⇄ after is client side ⇄ real side for client → server, and the other way
 * round for replies.
 *
 * Each packet waits in one of two places. With a known tuple it waits, indexed by
 * its pairing key, for its partner. With an unknown tuple (the SYN of a new
 * connection, seen before the pairer learnt of the flow) it is parked, and the
 * owner is asked once for fresh flows (`requestFlows`); `setFlows` then looks at
 * the parked packets again. A fresh list that still does not know a packet that
 * arrived after the list was asked for triggers one more request. Whatever waits
 * longer than `timeoutMs` (longer, up to `maxParkMs`, while a request is out) is
 * printed alone, marked unpaired: a SYN vpm refused, a RST it made itself, or a
 * packet whose partner the kernel dropped. Lines come out when a pair completes or
 * a packet times out, so they are in completion order, not always capture order.
 */

import type { FlowTuples } from './filter.js';
import { detailText, type PacketFacts, packetText, timeText, tupleText } from './summary.js';

const SIDE_CLIENT = 0;
const SIDE_REAL = 1;
const DIR_TO_SERVER = 0;
const DIR_TO_CLIENT = 1;

interface Role {
  flow: number;
  side: number;
  dir: number;
}

interface Entry {
  timeMs: number;
  facts: PacketFacts;
  role: Role | null;
  /** Key in `waiting` while it waits for a partner ('' when parked). */
  key: string;
  done: boolean;
}

export interface PairerOptions {
  /** Printed lines (without a newline). */
  emit: (line: string) => void;
  /** Ask the owner for `setFlows` soon; never called again before it answers. */
  requestFlows: () => void;
  /** How long a packet waits for its partner; default 200 ms. */
  timeoutMs?: number;
  /** How long a parked packet may wait while fresh flows are being fetched; default 2000 ms. */
  maxParkMs?: number;
}

const tupleKey = (src: string, sport: number, dst: string, dport: number) =>
  `${src}:${sport}>${dst}:${dport}`;

/** "a.b.c.d:p" split at the last colon (the daemon's format). */
function split(ep: string): [string, number] {
  const i = ep.lastIndexOf(':');
  return [ep.slice(0, i), Number(ep.slice(i + 1))];
}

export class Pairer {
  private roles = new Map<string, Role>();
  /** Pairing key → packets waiting for a partner, oldest first. */
  private readonly waiting = new Map<string, Entry[]>();
  /** Every packet not yet printed, in capture order. */
  private queue: Entry[] = [];
  private readonly emit: (line: string) => void;
  private readonly requestFlows: () => void;
  private readonly timeoutMs: number;
  private readonly maxParkMs: number;
  /** Printed packets still in `queue`. */
  private doneInQueue = 0;
  private requestOut = false;
  /** Offered partners whose tuple was unknown while flows were being fetched. */
  private held: { facts: PacketFacts; timeMs: number }[] = [];
  /** Pairs printed, packets printed alone. */
  pairs = 0;
  unpaired = 0;
  partnersTaken = 0;

  constructor(opts: PairerOptions) {
    this.emit = opts.emit;
    this.requestFlows = opts.requestFlows;
    this.timeoutMs = opts.timeoutMs ?? 200;
    this.maxParkMs = opts.maxParkMs ?? 2000;
  }

  /** Packets not yet printed. */
  get outstanding(): number {
    return this.queue.length;
  }

  /**
   * Replace the known flows with `flows`, fetched by a request made at `askedAt`
   * (the clock of `push`), and look at the parked packets again.
   */
  setFlows(flows: readonly FlowTuples[], askedAt: number): void {
    const roles = new Map<string, Role>();
    for (const f of flows) {
      const [c, cp] = split(f.client);
      const [v, vp] = split(f.service);
      const [r, rp] = split(f.real);
      const [n, np] = f.nat ? split(f.nat) : [c, cp];
      roles.set(tupleKey(c, cp, v, vp), { flow: f.id, side: SIDE_CLIENT, dir: DIR_TO_SERVER });
      roles.set(tupleKey(v, vp, c, cp), { flow: f.id, side: SIDE_CLIENT, dir: DIR_TO_CLIENT });
      roles.set(tupleKey(n, np, r, rp), { flow: f.id, side: SIDE_REAL, dir: DIR_TO_SERVER });
      roles.set(tupleKey(r, rp, n, np), { flow: f.id, side: SIDE_REAL, dir: DIR_TO_CLIENT });
    }
    this.roles = roles;
    this.requestOut = false;
    let again = false;
    for (const e of this.queue) {
      if (e.done || e.role) continue;
      e.role = this.roleOf(e.facts);
      if (e.role) this.match(e);
      else if (e.timeMs >= askedAt) again = true;
    }
    this.compact();
    const held = this.held;
    this.held = [];
    for (const h of held) this.offerPartner(h.facts, h.timeMs);
    if (again) this.request();
  }

  /** The owner could not fetch flows: parked packets now time out normally. */
  flowsFailed(): void {
    this.requestOut = false;
  }

  /**
   * After -c: take the packet only if it completes a pair that waits. One of a
   * tuple not known yet, while flows are being fetched, is held until they arrive
   * and then taken or dropped. `partnersTaken` counts those taken.
   */
  offerPartner(facts: PacketFacts, timeMs: number): void {
    if (!facts.ok || facts.proto !== 'TCP') return;
    const role = this.roleOf(facts);
    if (!role) {
      if (this.requestOut) this.held.push({ facts, timeMs });
      return;
    }
    const list = this.waiting.get(pairKey(role, facts));
    if (!list?.some((w) => w.role!.side !== role.side)) return;
    this.partnersTaken++;
    this.push(facts, timeMs);
  }

  /** One captured packet, at `timeMs` (also the clock of `tick`). */
  push(facts: PacketFacts, timeMs: number): void {
    if (!facts.ok || facts.proto !== 'TCP') {
      this.emit(`${timeText(timeMs)} ${packetText(facts)}`);
      return;
    }
    const e: Entry = { timeMs, facts, role: this.roleOf(facts), key: '', done: false };
    this.queue.push(e);
    if (e.role) {
      this.match(e);
      this.compact();
    } else if (!this.requestOut) {
      this.request();
    }
  }

  /** Print, alone, what has waited too long by `now`. */
  tick(now: number): void {
    for (const e of this.queue) {
      // In capture order: once one is younger than the shorter limit, so are the rest.
      if (now - e.timeMs < this.timeoutMs) break;
      if (e.done) continue;
      const limit = !e.role && this.requestOut ? this.maxParkMs : this.timeoutMs;
      if (now - e.timeMs >= limit) this.alone(e);
    }
    this.compact();
  }

  /** Print everything still waiting, alone, in capture order. */
  flushAll(): void {
    for (const e of this.queue) if (!e.done) this.alone(e);
    this.queue = [];
    this.held = [];
    this.doneInQueue = 0;
  }

  private request(): void {
    this.requestOut = true;
    this.requestFlows();
  }

  private roleOf(f: PacketFacts): Role | null {
    return this.roles.get(tupleKey(f.src, f.srcPort, f.dst, f.dstPort)) ?? null;
  }

  private match(e: Entry): void {
    const role = e.role!;
    const key = pairKey(role, e.facts);
    const list = this.waiting.get(key);
    const i = list ? list.findIndex((w) => w.role!.side !== role.side) : -1;
    if (list && i >= 0) {
      const other = list[i]!;
      list.splice(i, 1);
      if (list.length === 0) this.waiting.delete(key);
      other.done = true;
      e.done = true;
      this.doneInQueue += 2;
      const clientFirst = role.dir === DIR_TO_SERVER;
      const [before, after] =
        (e.role!.side === SIDE_CLIENT) === clientFirst ? [e, other] : [other, e];
      const first = before.timeMs <= after.timeMs ? before : after;
      this.pairs++;
      this.emit(
        `${timeText(first.timeMs)} ${tupleText(before.facts)}  ⇄  ${tupleText(after.facts)}  ${detailText(before.facts)}`,
      );
      return;
    }
    e.key = key;
    if (list) list.push(e);
    else this.waiting.set(key, [e]);
  }

  private alone(e: Entry): void {
    e.done = true;
    this.doneInQueue++;
    if (e.key) {
      const list = this.waiting.get(e.key);
      if (list) {
        const i = list.indexOf(e);
        if (i >= 0) list.splice(i, 1);
        if (list.length === 0) this.waiting.delete(e.key);
      }
    }
    this.unpaired++;
    this.emit(`${timeText(e.timeMs)} ${packetText(e.facts)}  (unpaired)`);
  }

  /**
   * Drop printed packets from the front of the queue, and from the middle once
   * they are most of it (a packet that waits long keeps the front in place).
   */
  private compact(): void {
    let i = 0;
    while (i < this.queue.length && this.queue[i]!.done) i++;
    if (i > 0) {
      this.queue.splice(0, i);
      this.doneInQueue -= i;
    }
    if (this.queue.length > 1024 && this.doneInQueue * 2 > this.queue.length) {
      this.queue = this.queue.filter((e) => !e.done);
      this.doneInQueue = 0;
    }
  }
}

function pairKey(role: Role, f: PacketFacts): string {
  return `${role.flow}/${role.dir}/${f.flags}/${f.seq}/${f.ack}/${f.len}`;
}
