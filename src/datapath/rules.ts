/**
 * Classification rules, in the numeric form the data plane uses: virtual
 * services, selectors (client CIDR and port range → AID) and the default.
 * Immutable: built from the configuration at start-up and replaced as a whole on
 * reload, so a SYN always sees one consistent rule set; flows already in the table
 * keep what they were given. Where an AID's connections go — its live instances,
 * static and registered at run time — is not a rule: see instances.ts.
 *
 * Only a SYN that opens a new connection consults these rules. Lookups use
 * numeric Map keys and short arrays: no strings, no allocation.
 *
 * IPv6. A service may have an IPv4 address (`addr`, -1 without), an IPv6 one
 * (`addr6`, four big-endian words, null without), or both. The IPv6 lookups
 * read the packet's 16-byte address in place: a numeric Map keyed by its fold
 * (w0^w1^w2^w3, port, protocol) gives the first candidate, a chain the others
 * of the same fold, and the four words decide. A selector's client ranges are
 * per family (`cidrBase`/`cidrMask` for IPv4, `cidr6Words` for IPv6);
 * `anyClient` (no `clients` in the file) matches every client of both
 * families, and otherwise a client matches only the ranges of its own family.
 */

import { get32 } from '../wire/bytes.js';

export interface ServiceRule {
  name: string;
  /** IPv4 address, or -1 when the service has none. */
  addr: number;
  /** IPv6 address (4 words), or null / absent when the service has none. */
  addr6?: Uint32Array | null;
  port: number;
  proto: number;
  /** Cooperative client side: index of the peer serving it, or -1 (served here). */
  peer: number;
}

export interface SelectorRule {
  /** Service index, or -1 for every service. */
  service: number;
  /** (base, mask) pairs; empty = any client address. */
  cidrBase: Uint32Array;
  cidrMask: Uint32Array;
  /** IPv6 ranges, 8 words each: base w0..w3, mask w0..w3. Absent: none. */
  cidr6Words?: Uint32Array;
  /**
   * Any client of either family (the selector had no `clients`). Absent: true
   * exactly when neither family lists a range (the IPv4-only rules of old).
   */
  anyClient?: boolean;
  portLo: number;
  portHi: number;
  aid: number;
}

/** A rule as the Rules keep it: every optional field filled in. */
export type ServiceRuleOf = Readonly<Required<ServiceRule>>;
export type SelectorRuleOf = Readonly<Required<SelectorRule>>;

/**
 * A set of IPv6 addresses (4 words each) found in O(1) by the fold of the
 * address (and a small number: port and protocol, or 0) without allocation.
 */
class Addr6Index {
  private readonly words: Uint32Array;
  private readonly next: Int32Array;
  private readonly first = new Map<number, number>();
  private readonly values: Int32Array;
  private n = 0;

  constructor(capacity: number) {
    this.words = new Uint32Array(capacity * 4);
    this.next = new Int32Array(capacity).fill(-1);
    this.values = new Int32Array(capacity);
  }

  /** Add address w[at..at+3] with tag `tag` → `value` (an earlier equal entry wins). */
  add(w: Uint32Array, at: number, tag: number, value: number): void {
    if (this.find(w, at, tag) >= 0) return;
    const i = this.n++;
    for (let j = 0; j < 4; j++) this.words[i * 4 + j] = w[at + j]!;
    this.values[i] = value;
    const key = addr6Key(fold4(w, at), tag);
    const head = this.first.get(key);
    this.next[i] = head ?? -1;
    this.first.set(key, i);
  }

  /** The value of the entry for the address at buf[off] (16 bytes) with `tag`, or -1. */
  get(buf: Uint8Array, off: number, tag: number): number {
    const w0 = get32(buf, off);
    const w1 = get32(buf, off + 4);
    const w2 = get32(buf, off + 8);
    const w3 = get32(buf, off + 12);
    let i = this.first.get(addr6Key((w0 ^ w1 ^ w2 ^ w3) >>> 0, tag)) ?? -1;
    const ws = this.words;
    while (i >= 0) {
      const o = i * 4;
      if (ws[o] === w0 && ws[o + 1] === w1 && ws[o + 2] === w2 && ws[o + 3] === w3)
        return this.values[i]!;
      i = this.next[i]!;
    }
    return -1;
  }

  private find(w: Uint32Array, at: number, tag: number): number {
    let i = this.first.get(addr6Key(fold4(w, at), tag)) ?? -1;
    const ws = this.words;
    while (i >= 0) {
      const o = i * 4;
      if (
        ws[o] === w[at] &&
        ws[o + 1] === w[at + 1] &&
        ws[o + 2] === w[at + 2] &&
        ws[o + 3] === w[at + 3]
      )
        return i;
      i = this.next[i]!;
    }
    return -1;
  }
}

function fold4(w: Uint32Array, at: number): number {
  return (w[at]! ^ w[at + 1]! ^ w[at + 2]! ^ w[at + 3]!) >>> 0;
}

/** fold (32 bits) · tag (below 2^21: port << 8 | proto) fits a double exactly. */
function addr6Key(fold: number, tag: number): number {
  return fold * 0x200000 + tag;
}

const NO_WORDS = new Uint32Array(0);

export class Rules {
  readonly services: readonly ServiceRuleOf[];
  readonly selectors: readonly SelectorRuleOf[];
  readonly aidNames: readonly string[];
  /** AID index when no selector matches, or -1 to refuse. */
  readonly defaultAid: number;
  /** Cooperative server side: the p2 range on the service addresses (0-0 when off). */
  readonly coopLo: number;
  readonly coopHi: number;
  private readonly vips = new Set<number>();
  private readonly serviceIndex = new Map<number, number>();
  /** IPv6 VIPs (tag 0 → 1) and services (tag port << 8 | proto → index). */
  private readonly vips6: Addr6Index;
  private readonly services6: Addr6Index;

  constructor(p: {
    services: readonly ServiceRule[];
    selectors: readonly SelectorRule[];
    aidNames: readonly string[];
    defaultAid: number;
    coopRange?: { lo: number; hi: number } | null;
  }) {
    // Own frozen copies: nothing the caller does later changes a rule set in use.
    this.services = Object.freeze(
      p.services.map((s) =>
        Object.freeze({ ...s, addr6: s.addr6 ? Uint32Array.from(s.addr6.subarray(0, 4)) : null }),
      ),
    );
    this.selectors = Object.freeze(
      p.selectors.map((s) => {
        const cidr6Words = s.cidr6Words ? Uint32Array.from(s.cidr6Words) : NO_WORDS;
        return Object.freeze({
          ...s,
          cidr6Words,
          anyClient: s.anyClient ?? (s.cidrBase.length === 0 && cidr6Words.length === 0),
        });
      }),
    );
    this.aidNames = Object.freeze([...p.aidNames]);
    this.defaultAid = p.defaultAid;
    this.coopLo = p.coopRange?.lo ?? 0;
    this.coopHi = p.coopRange?.hi ?? 0;
    this.vips6 = new Addr6Index(p.services.length);
    this.services6 = new Addr6Index(p.services.length);
    this.services.forEach((s, i) => {
      if (s.addr !== -1) {
        this.vips.add(s.addr);
        this.serviceIndex.set(serviceKey(s.addr, s.port, s.proto), i);
      }
      if (s.addr6 !== null) {
        this.vips6.add(s.addr6, 0, 0, 1);
        this.services6.add(s.addr6, 0, (s.port << 8) | s.proto, i);
      }
    });
    Object.freeze(this);
  }

  /** Index of the virtual service at addr:port/proto, or -1. */
  findService(addr: number, port: number, proto: number): number {
    return this.serviceIndex.get(serviceKey(addr, port, proto)) ?? -1;
  }

  /** True for the address of a virtual service. */
  isVip(addr: number): boolean {
    return this.vips.has(addr);
  }

  /** Index of the virtual service at the IPv6 address buf[off..off+16), port, protocol; or -1. */
  findService6(buf: Uint8Array, off: number, port: number, proto: number): number {
    return this.services6.get(buf, off, (port << 8) | proto);
  }

  /** True for the IPv6 address (at buf[off]) of a virtual service. */
  isVip6(buf: Uint8Array, off: number): boolean {
    return this.vips6.get(buf, off, 0) >= 0;
  }

  /** isCoopPort for an IPv6 service address at buf[off]. */
  isCoopPort6(buf: Uint8Array, off: number, port: number): boolean {
    return port >= this.coopLo && port <= this.coopHi && this.coopHi !== 0 && this.isVip6(buf, off);
  }

  /** True for VIP:p2 of a cooperative connection (a service address and a port of the p2 range). */
  isCoopPort(addr: number, port: number): boolean {
    return port >= this.coopLo && port <= this.coopHi && this.coopHi !== 0 && this.vips.has(addr);
  }

  /** The AID for a new connection from client addr:port to service `svc`, or -1 (refuse). */
  selectAid(svc: number, clientAddr: number, clientPort: number): number {
    const sel = this.selectors;
    for (let i = 0; i < sel.length; i++) {
      const r = sel[i]!;
      if (r.service !== -1 && r.service !== svc) continue;
      if (clientPort < r.portLo || clientPort > r.portHi) continue;
      if (!r.anyClient) {
        const n = r.cidrBase.length;
        let hit = false;
        for (let j = 0; j < n; j++) {
          if ((clientAddr & r.cidrMask[j]!) >>> 0 === r.cidrBase[j]) {
            hit = true;
            break;
          }
        }
        if (!hit) continue;
      }
      return r.aid;
    }
    return this.defaultAid;
  }

  /**
   * The AID for a new connection from the IPv6 client at buf[addrOff] (16
   * bytes), port `clientPort`, to service `svc`, or -1 (refuse).
   */
  selectAid6(svc: number, buf: Uint8Array, addrOff: number, clientPort: number): number {
    const a0 = get32(buf, addrOff);
    const a1 = get32(buf, addrOff + 4);
    const a2 = get32(buf, addrOff + 8);
    const a3 = get32(buf, addrOff + 12);
    const sel = this.selectors;
    for (let i = 0; i < sel.length; i++) {
      const r = sel[i]!;
      if (r.service !== -1 && r.service !== svc) continue;
      if (clientPort < r.portLo || clientPort > r.portHi) continue;
      if (!r.anyClient) {
        const c = r.cidr6Words;
        let hit = false;
        for (let j = 0; j + 8 <= c.length; j += 8) {
          if (
            (a0 & c[j + 4]!) >>> 0 === c[j] &&
            (a1 & c[j + 5]!) >>> 0 === c[j + 1] &&
            (a2 & c[j + 6]!) >>> 0 === c[j + 2] &&
            (a3 & c[j + 7]!) >>> 0 === c[j + 3]
          ) {
            hit = true;
            break;
          }
        }
        if (!hit) continue;
      }
      return r.aid;
    }
    return this.defaultAid;
  }
}

/** addr (32 bits) · port (16) · proto (8) fits a double exactly. */
function serviceKey(addr: number, port: number, proto: number): number {
  return (addr >>> 0) * 0x1000000 + port * 0x100 + proto;
}
