/**
 * Classification rules, in the numeric form the data plane uses: virtual
 * services, selectors (client CIDR and port range → AID), the default, and the
 * live instances of each AID. Built from the configuration at start-up and
 * replaced as a whole on reload, so a SYN always sees one consistent rule set;
 * flows already in the table keep what they were given.
 *
 * Only a SYN that opens a new connection consults these rules. Lookups use
 * numeric Map keys and short arrays: no strings, no allocation.
 */

export interface ServiceRule {
  name: string;
  addr: number;
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
  portLo: number;
  portHi: number;
  aid: number;
}

export interface InstanceRule {
  addr: number;
  port: number;
  /** Service index it serves, or -1 for any service. */
  service: number;
  /** Virtual port it serves, or 0 for any. */
  vport: number;
}

export class Rules {
  readonly services: readonly ServiceRule[];
  readonly selectors: readonly SelectorRule[];
  readonly aidNames: readonly string[];
  /**
   * Instances per AID index; an empty list means "no live instance". The lists
   * are live: instances that register at run time (vpm exec) are pushed and
   * spliced here by the registry, and the next SYN sees them.
   */
  readonly instances: InstanceRule[][];
  /** AID index when no selector matches, or -1 to refuse. */
  readonly defaultAid: number;
  /** Cooperative server side: the p2 range on the service addresses (0-0 when off). */
  readonly coopLo: number;
  readonly coopHi: number;
  private readonly vips = new Set<number>();
  private readonly serviceIndex = new Map<number, number>();
  private readonly rr: Uint32Array;

  constructor(p: {
    services: readonly ServiceRule[];
    selectors: readonly SelectorRule[];
    aidNames: readonly string[];
    instances: InstanceRule[][];
    defaultAid: number;
    coopRange?: { lo: number; hi: number } | null;
  }) {
    this.services = p.services;
    this.selectors = p.selectors;
    this.aidNames = p.aidNames;
    this.instances = p.instances;
    this.defaultAid = p.defaultAid;
    this.coopLo = p.coopRange?.lo ?? 0;
    this.coopHi = p.coopRange?.hi ?? 0;
    for (const s of p.services) this.vips.add(s.addr);
    this.rr = new Uint32Array(p.aidNames.length);
    p.services.forEach((s, i) => {
      this.serviceIndex.set(serviceKey(s.addr, s.port, s.proto), i);
    });
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

  /**
   * Pick an instance of `aid` that serves service `svc`, round-robin among those
   * that do; -1 when there is none. Two passes over a short array: no allocation.
   */
  pickInstance(aid: number, svc: number): number {
    const list = this.instances[aid];
    if (list === undefined || list.length === 0) return -1;
    const vport = this.services[svc]?.port ?? -1;
    let n = 0;
    for (let i = 0; i < list.length; i++) if (serves(list[i]!, svc, vport)) n++;
    if (n === 0) return -1;
    let k = this.rr[aid]! % n;
    this.rr[aid] = (this.rr[aid]! + 1) >>> 0;
    for (let i = 0; i < list.length; i++) {
      if (serves(list[i]!, svc, vport) && k-- === 0) return i;
    }
    return -1;
  }
}

function serves(r: InstanceRule, svc: number, vport: number): boolean {
  return (r.service === -1 || r.service === svc) && (r.vport === 0 || r.vport === vport);
}

/** addr (32 bits) · port (16) · proto (8) fits a double exactly. */
function serviceKey(addr: number, port: number, proto: number): number {
  return (addr >>> 0) * 0x1000000 + port * 0x100 + proto;
}
