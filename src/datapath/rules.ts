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
 */

export interface ServiceRule {
  name: string;
  /** IPv4 VIP, or -1 when the service has no IPv4 address. */
  addr: number;
  /** IPv6 VIP as four big-endian u32 words, or null when the service has no IPv6 address. */
  addr6: Uint32Array | null;
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
  /** IPv6 CIDRs, 8 words each: base w0..w3, then mask w0..w3. */
  cidr6Words: Uint32Array;
  /** The selector had no `clients`: every client of both families matches. */
  anyClient: boolean;
  portLo: number;
  portHi: number;
  aid: number;
}

export class Rules {
  readonly services: readonly ServiceRule[];
  readonly selectors: readonly SelectorRule[];
  readonly aidNames: readonly string[];
  /** AID index when no selector matches, or -1 to refuse. */
  readonly defaultAid: number;
  /** Cooperative server side: the p2 range on the service addresses (0-0 when off). */
  readonly coopLo: number;
  readonly coopHi: number;
  private readonly vips = new Set<number>();
  private readonly serviceIndex = new Map<number, number>();

  constructor(p: {
    services: readonly ServiceRule[];
    selectors: readonly SelectorRule[];
    aidNames: readonly string[];
    defaultAid: number;
    coopRange?: { lo: number; hi: number } | null;
  }) {
    // Own frozen copies: nothing the caller does later changes a rule set in use.
    this.services = Object.freeze(p.services.map((s) => Object.freeze({ ...s })));
    this.selectors = Object.freeze(p.selectors.map((s) => Object.freeze({ ...s })));
    this.aidNames = Object.freeze([...p.aidNames]);
    this.defaultAid = p.defaultAid;
    this.coopLo = p.coopRange?.lo ?? 0;
    this.coopHi = p.coopRange?.hi ?? 0;
    for (const s of p.services) this.vips.add(s.addr);
    p.services.forEach((s, i) => {
      this.serviceIndex.set(serviceKey(s.addr, s.port, s.proto), i);
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
      const n = r.cidrBase.length;
      if (n > 0) {
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
}

/** addr (32 bits) · port (16) · proto (8) fits a double exactly. */
function serviceKey(addr: number, port: number, proto: number): number {
  return (addr >>> 0) * 0x1000000 + port * 0x100 + proto;
}
