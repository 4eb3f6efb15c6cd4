/**
 * The live instances of each AID: where a new connection of that AID can go.
 *
 * Theory of operation. An instance comes from one of two places, each with its
 * own owner:
 *   - static: `applications[].instances` of the configuration. The daemon
 *     replaces all of them at start-up and on every reload (`replaceStatic`),
 *     in the same synchronous step in which it swaps the (immutable) `Rules`, so
 *     a SYN never sees the instances of one configuration with the services of
 *     another;
 *   - registered: a program under `vpm exec` that bound a multiplexed port. The
 *     registry (src/virtual/registry.ts) adds one when a group of registrations
 *     gets its real port (`addRegistered`) and removes it when the group's last
 *     registration ends (`removeRegistered`). They are not in the file, so a
 *     reload leaves them alone.
 *
 * Every instance has an index, its handle, which stays the same for as long as the
 * instance lives: `pick` returns it, a flow records it (the FlowTable `instance`
 * column), and per-instance state belongs in a column indexed by it: the
 * passive health check's "down until t" and refusal count (below). A reload keeps
 * the index of a static instance that is still configured the same way (AID,
 * address, port, service, virtual port, protocol), so such state would outlive
 * the reload too. A freed index is handed out again, oldest freed first, so that a flow of a removed
 * instance keeps an index that names no other instance for as long as possible;
 * whoever follows a flow's index back to its instance compares the address and
 * port (the flow has them). After a daemon restart the registry puts each
 * recovered registered instance back at its old index when that one is free
 * (`addRegistered(spec, at)`; the static instances of the same configuration
 * come back first, at theirs), so recovered flows keep naming it. There is at most one instance per real port, so
 * indices stay below 65536, the 16 bits of the flow column.
 *
 * `pick` runs on the data plane, for a flow's first packet (a TCP SYN, a UDP
 * datagram): round robin among the AID's instances that serve the service (its
 * service or any, its virtual port or any, its protocol or any: a registered
 * instance has the protocol it was bound for, so a UDP bind of 9000 never
 * receives the TCP service's connections on 9000, nor a TCP one its datagrams),
 * in a fixed order (the static ones in configuration order, then the registered
 * ones in the order they came), over one short array, with one counter per AID;
 * it allocates nothing. The counters start again at every `replaceStatic`, as
 * they did when they lived in the rules.
 *
 * Health (passive, TCP). The pipeline marks an instance down when it answers a
 * SYN with a RST (`markDown(index, until)`, until = now + health.downMs; every
 * later refusal pushes it further) and up again when it answers one with a
 * SYN+ACK (`markUp`). `pick(aid, svc, now)` goes round robin over the serving
 * instances that are up (down until ≤ now); when all of them are down it goes
 * round robin over all of them, as without a check, so a recovered instance is
 * found. `pickRetry` picks the instance a refused SYN is sent to next: one not
 * tried yet for that SYN, an up one (round robin) if there is one, else the one
 * whose down time ends first. `healthTick(now, fn)` (the daemon's timer) reports
 * each instance whose down time ran out. A freed index starts up, with no refusals.
 *
 * Families. An instance has an IPv4 address (`addr`, -1 without) and/or an
 * IPv6 one (`addr6`, four words, null without); `pick` and `pickRetry` take the
 * family of the client's packet and consider only instances with an address of
 * that family: vpm does not translate between families.
 */

import type { Rules } from './rules.js';

/** Where an instance listens, and what it serves. */
export interface InstanceSpec {
  /** AID index (position in `applications`). */
  aid: number;
  /** IPv4 address, or -1 when the instance has none. */
  addr: number;
  /** IPv6 address (4 words), or null / absent when the instance has none. */
  addr6?: Uint32Array | null;
  port: number;
  /** Service index it serves, or -1 for any service. */
  service: number;
  /** Virtual port it serves, or 0 for any. */
  vport: number;
  /**
   * IP protocol it serves (IPPROTO_TCP, IPPROTO_UDP), or 0 / absent for any: a
   * registered instance serves the protocol its socket was bound for, a static
   * one (a real port of the configuration) whatever its service says.
   */
  proto?: number;
}

export interface Instance extends Readonly<InstanceSpec> {
  /** The stable handle: what `pick` returns and flows record. */
  readonly index: number;
  /** IP protocol it serves, 0 for any. */
  readonly proto: number;
  readonly source: 'static' | 'registered';
}

const NO_INSTANCES: readonly Instance[] = Object.freeze([]);

export class InstanceSet {
  /** By index; null: a free index. */
  private readonly slots: (Instance | null)[] = [];
  /** Freed indices, oldest first. */
  private readonly free: number[] = [];
  private statics: Instance[] = [];
  /** Registered instances in the order they came. */
  private readonly registered: Instance[] = [];
  /** Per AID: the pick order (static ones, then registered ones). Rebuilt on every change. */
  private byAid: Instance[][] = [];
  /** Round-robin counter per AID. */
  private rr = new Uint32Array(0);
  /** Virtual port of each service index (of the rules given to `replaceStatic`). */
  private vports: readonly number[] = [];
  /** IP protocol of each service index (the same rules). */
  private protos: readonly number[] = [];
  /** Per index: down until this time (ms, the pipeline's clock); 0: up. */
  private downUntil = new Float64Array(16);
  /** Per index: marked down and not yet reported up again (healthTick, markUp). */
  private downFlag = new Uint8Array(16);
  /** Per index: SYNs it answered with a RST. */
  private refusalCount = new Float64Array(16);

  /**
   * Replace the static instances by those of a new configuration, for the rules
   * built from the same configuration (their services give the virtual ports).
   * Registered instances stay. Control plane (start-up, reload).
   */
  replaceStatic(rules: Rules, specs: readonly InstanceSpec[]): void {
    const old = new Map<string, Instance>();
    for (const i of this.statics) old.set(staticKey(i), i);
    const next: Instance[] = [];
    for (const s of specs) {
      const k = staticKey(s);
      const kept = old.get(k);
      if (kept) old.delete(k);
      next.push(kept ?? this.allocate(s, 'static'));
    }
    for (const gone of old.values()) this.release(gone.index);
    this.statics = next;
    this.vports = rules.services.map((s) => s.port);
    this.protos = rules.services.map((s) => s.proto);
    this.rr = new Uint32Array(Math.max(rules.aidNames.length, this.rr.length));
    this.rebuild();
  }

  /**
   * A registered instance (vpm exec): returns its index. Control plane.
   * `at`: the index it should have, when that one is free (the registry's
   * restore after a daemon restart puts an instance back at the index the
   * recovered flows recorded); otherwise, or without it, the next free one.
   */
  addRegistered(spec: InstanceSpec, at?: number): number {
    const i = this.allocate(spec, 'registered', at);
    this.registered.push(i);
    this.rebuild();
    return i.index;
  }

  /**
   * The registered instance `index` listens on other addresses now (its
   * registrations' families changed: a "::" bind joined a "0.0.0.0" one, the
   * last IPv6 one left): the same index, with its health. Control plane.
   */
  updateRegistered(index: number, spec: InstanceSpec): void {
    const old = this.slots[index];
    if (old?.source !== 'registered') return;
    const i = makeInstance(index, spec, 'registered');
    this.slots[index] = i;
    this.registered[this.registered.indexOf(old)] = i;
    this.rebuild();
  }

  /** The registered instance `index` is gone; new connections no longer go there. */
  removeRegistered(index: number): void {
    const i = this.slots[index];
    if (i?.source !== 'registered') return;
    this.registered.splice(this.registered.indexOf(i), 1);
    this.release(index);
    this.rebuild();
  }

  /** The instance with handle `index`, or undefined if none has it now. */
  get(index: number): Instance | undefined {
    return this.slots[index] ?? undefined;
  }

  /** The instances of `aid`, in pick order. */
  of(aid: number): readonly Instance[] {
    return this.byAid[aid] ?? NO_INSTANCES;
  }

  /** Every live instance, static ones first. */
  all(): readonly Instance[] {
    return [...this.statics, ...this.registered];
  }

  /**
   * True if `aid` has an instance that serves service `svc` (with an address of
   * `family`, 4 or 6, when given).
   */
  serving(aid: number, svc: number, family?: number): boolean {
    const list = this.byAid[aid];
    if (list === undefined) return false;
    const vport = this.vports[svc] ?? -1;
    const proto = this.protos[svc] ?? -1;
    for (let i = 0; i < list.length; i++) {
      const inst = list[i]!;
      if (serves(inst, svc, vport, proto) && (family === undefined || hasFamily(inst, family)))
        return true;
    }
    return false;
  }

  /**
   * Pick an instance of `aid` that serves service `svc`, round robin among those
   * that do and are up at `now` (all of them, when none is up): its index, or -1
   * when there is none. Only instances with an address of `family` (4, 6)
   * count. Two passes over a short array, no allocation: this runs for every SYN.
   */
  pick(aid: number, svc: number, now = 0, family = 4): number {
    const list = this.byAid[aid];
    if (list === undefined || list.length === 0) return -1;
    const vport = this.vports[svc] ?? -1;
    const proto = this.protos[svc] ?? -1;
    const down = this.downUntil;
    let n = 0;
    let up = 0;
    for (let i = 0; i < list.length; i++) {
      const inst = list[i]!;
      if (!serves(inst, svc, vport, proto) || !hasFamily(inst, family)) continue;
      n++;
      if (down[inst.index]! <= now) up++;
    }
    if (n === 0) return -1;
    const onlyUp = up > 0;
    let k = this.rr[aid]! % (onlyUp ? up : n);
    this.rr[aid] = (this.rr[aid]! + 1) >>> 0;
    for (let i = 0; i < list.length; i++) {
      const inst = list[i]!;
      if (!serves(inst, svc, vport, proto) || !hasFamily(inst, family)) continue;
      if (onlyUp && down[inst.index]! > now) continue;
      if (k-- === 0) return inst.index;
    }
    return -1;
  }

  /**
   * The instance a refused SYN of `aid` to `svc` goes to next: one that serves
   * the service and is none of `tried[from .. from+count)`; an up one (round
   * robin) if there is one, else the one whose down time ends first; with an
   * address of `family`. -1: none left. No allocation (the pipeline's rare path).
   */
  pickRetry(
    aid: number,
    svc: number,
    now: number,
    tried: Uint16Array,
    from: number,
    count: number,
    family = 4,
  ): number {
    const list = this.byAid[aid];
    if (list === undefined) return -1;
    const vport = this.vports[svc] ?? -1;
    const proto = this.protos[svc] ?? -1;
    const down = this.downUntil;
    let up = 0;
    let soonest = -1;
    for (let i = 0; i < list.length; i++) {
      const inst = list[i]!;
      if (
        !serves(inst, svc, vport, proto) ||
        !hasFamily(inst, family) ||
        wasTried(inst.index, tried, from, count)
      )
        continue;
      if (down[inst.index]! <= now) up++;
      else if (soonest < 0 || down[inst.index]! < down[soonest]!) soonest = inst.index;
    }
    if (up === 0) return soonest;
    let k = this.rr[aid]! % up;
    this.rr[aid] = (this.rr[aid]! + 1) >>> 0;
    for (let i = 0; i < list.length; i++) {
      const inst = list[i]!;
      if (
        !serves(inst, svc, vport, proto) ||
        !hasFamily(inst, family) ||
        wasTried(inst.index, tried, from, count)
      )
        continue;
      if (down[inst.index]! <= now && k-- === 0) return inst.index;
    }
    return -1;
  }

  /** Instance `index` refused a connection: down until `until`. Returns true if it was up. */
  markDown(index: number, until: number, now: number): boolean {
    if (index >= this.downUntil.length) return false;
    const wasUp = this.downUntil[index]! <= now;
    this.refusalCount[index]! += 1;
    if (until > this.downUntil[index]!) this.downUntil[index] = until;
    this.downFlag[index] = 1;
    return wasUp;
  }

  /** Instance `index` accepted a connection: up at once. Returns true if it was marked down. */
  markUp(index: number): boolean {
    if (index >= this.downUntil.length || this.downFlag[index] === 0) return false;
    this.downUntil[index] = 0;
    this.downFlag[index] = 0;
    return true;
  }

  /** True if instance `index` is marked down at `now`. */
  isDown(index: number, now: number): boolean {
    return index < this.downUntil.length && this.downUntil[index]! > now;
  }

  /** The health of instance `index` at `now` (control plane: `vpm instances`, metrics). */
  health(index: number, now: number): { up: boolean; downUntil: number; refusals: number } {
    const until = index < this.downUntil.length ? this.downUntil[index]! : 0;
    return {
      up: until <= now,
      downUntil: until > now ? until : 0,
      refusals: index < this.refusalCount.length ? this.refusalCount[index]! : 0,
    };
  }

  /** Call `fn` for each instance whose down time ran out since it was marked (the daemon's timer). */
  healthTick(now: number, fn: (i: Instance) => void): void {
    const f = this.downFlag;
    for (let x = 0; x < this.slots.length; x++) {
      if (f[x] === 0 || this.downUntil[x]! > now) continue;
      f[x] = 0;
      this.downUntil[x] = 0;
      const i = this.slots[x];
      if (i) fn(i);
    }
  }

  /** No instance stays down past `until` (a reload with a shorter health.downMs). */
  capDown(until: number): void {
    const d = this.downUntil;
    for (let x = 0; x < d.length; x++) if (d[x]! > until) d[x] = until;
  }

  /** Every instance up again (health.downMs set to 0 on reload). */
  clearHealth(): void {
    this.downUntil.fill(0);
    this.downFlag.fill(0);
  }

  /** The live instance with this real address and port (the one instance of a real port), if any. */
  byAddress(addr: number, port: number): Instance | undefined {
    for (const i of this.slots) if (i && i.addr === addr && i.port === port) return i;
    return undefined;
  }

  /** The same for an IPv6 address (4 words). Control plane. */
  byAddress6(addr: Uint32Array, port: number): Instance | undefined {
    for (const i of this.slots) {
      const a = i?.addr6;
      if (i && a && i.port === port && a.every((w, k) => w === addr[k])) return i;
    }
    return undefined;
  }

  private allocate(s: InstanceSpec, source: Instance['source'], at?: number): Instance {
    let index: number;
    if (at !== undefined && Number.isInteger(at) && at >= 0 && at < 65536 && !this.slots[at]) {
      index = at;
      const k = this.free.indexOf(at);
      if (k >= 0) this.free.splice(k, 1);
      // The indices skipped on the way are free ones, handed out later as usual.
      for (let x = this.slots.length; x < at; x++) {
        this.slots[x] = null;
        this.free.push(x);
      }
    } else {
      index = this.free.length > 0 ? this.free.shift()! : this.slots.length;
    }
    if (index >= this.downUntil.length) {
      let n = this.downUntil.length * 2;
      while (n <= index) n *= 2;
      const d = new Float64Array(n);
      d.set(this.downUntil);
      this.downUntil = d;
      const f = new Uint8Array(n);
      f.set(this.downFlag);
      this.downFlag = f;
      const r = new Float64Array(n);
      r.set(this.refusalCount);
      this.refusalCount = r;
    }
    // A new instance starts up, without refusals.
    this.downUntil[index] = 0;
    this.downFlag[index] = 0;
    this.refusalCount[index] = 0;
    const i = makeInstance(index, s, source);
    this.slots[index] = i;
    return i;
  }

  private release(index: number): void {
    this.slots[index] = null;
    this.free.push(index);
  }

  private rebuild(): void {
    const byAid: Instance[][] = [];
    for (const i of [...this.statics, ...this.registered]) {
      while (byAid.length <= i.aid) byAid.push([]);
      byAid[i.aid]!.push(i);
    }
    this.byAid = byAid;
    if (this.rr.length < byAid.length) {
      const rr = new Uint32Array(byAid.length);
      rr.set(this.rr);
      this.rr = rr;
    }
  }
}

/**
 * Does instance `i` serve service `svc` (virtual port `vport`, protocol `proto`)?
 * Its service, its virtual port and its protocol must each be the service's or
 * "any": a registered UDP instance of 9000 serves no TCP service on 9000.
 */
function serves(i: Instance, svc: number, vport: number, proto: number): boolean {
  return (
    (i.service === -1 || i.service === svc) &&
    (i.vport === 0 || i.vport === vport) &&
    (i.proto === 0 || i.proto === proto)
  );
}

function makeInstance(index: number, s: InstanceSpec, source: Instance['source']): Instance {
  return Object.freeze({
    index,
    source,
    aid: s.aid,
    addr: s.addr,
    // Present on every instance (one shape); null without an IPv6 address.
    addr6: s.addr6 ? Uint32Array.from(s.addr6.subarray(0, 4)) : null,
    port: s.port,
    service: s.service,
    vport: s.vport,
    proto: s.proto ?? 0,
  });
}

/** Has instance `i` an address of `family` (4 or 6)? */
function hasFamily(i: Instance, family: number): boolean {
  return family === 6 ? (i.addr6 ?? null) !== null : i.addr !== -1;
}

function wasTried(index: number, tried: Uint16Array, from: number, count: number): boolean {
  for (let j = 0; j < count; j++) if (tried[from + j] === index) return true;
  return false;
}

/** What makes a static instance the same one across a reload. */
function staticKey(s: InstanceSpec): string {
  const a6 = s.addr6 ? Array.from(s.addr6.subarray(0, 4)).join('.') : '';
  return `${s.aid}/${s.addr}/${a6}/${s.port}/${s.service}/${s.vport}/${s.proto ?? 0}`;
}
