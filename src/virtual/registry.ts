/**
 * The virtual layer's registry: which program listens for which AID on which
 * virtual port, and on what real port it really does.
 *
 * Theory of operation. A program run under `vpm exec --aid A` that binds a
 * multiplexed port V asks the daemon (control command `bind`) for a real port.
 * Registrations are grouped by (AID, protocol, V): the first one of a group gets
 * a port from the pool and becomes a registered instance of A in the data plane's
 * instance set (src/datapath/instances.ts), so the next SYN for A to V can go
 * there; every later one of the same group — another process of the same AID,
 * the seed's "same virtualized stream" — gets the same real port and shares it
 * with SO_REUSEPORT. A registration ends when the program closes the socket
 * (`release`) or when the control connection it came on closes, which the kernel
 * does when the process exits, also by SIGKILL. When a group's last registration
 * ends, its instance leaves the set (new connections no longer go there;
 * established flows keep their translation) and its port goes back to the pool,
 * through quarantine. The registry owns the registered instances: a reload, which
 * replaces the rules and the static instances, leaves them where they are.
 *
 * Concurrent first binds of one group wait for the same pool request, so a group
 * never holds two ports.
 *
 * Addresses and families (`resolveBindAddress`). A bind's address says where
 * its instance listens and which family's clients it can serve:
 *
 *   "0.0.0.0"               IPv4: tun.address
 *   "::"                    both: tun.address and tun.address6 (the latter only
 *                           when the configuration has IPv6, tun.ipv6)
 *   "::" with v6only        IPv6: tun.address6
 *   tun.address / address6  the same as the wildcard of that family
 *   another IPv4 address    IPv4: that address (the library sends a v4-mapped
 *                           bind as its IPv4 address, and so is one)
 *   another IPv6 address    IPv6: that address
 *
 * Loopback (127/8, ::1) and IPv6 link-local (fe80::/10) addresses are refused:
 * packets from the TUN never reach them. An IPv6 bind (an IPv6 address, or
 * "::" v6only) is refused when the configuration has no IPv6 (tun.ipv6 false:
 * the TUN has no IPv6 address to deliver to). The wildcards and the TUN's own
 * addresses form one group per (AID, protocol, V), so "0.0.0.0" and "::" of one
 * AID share a real port (SO_REUSEPORT lets both sockets listen) and one
 * instance, which serves IPv4 while a registration of the group accepts IPv4
 * and IPv6 while one accepts IPv6: its families follow its registrations
 * (`InstanceSet.updateRegistered`, same index, same health). Another address is
 * a group of its own.
 *
 * Protocols. A group is one protocol's: a UDP bind of 9000 registers a UDP
 * instance (it serves the UDP services on 9000, never the TCP one on the same
 * address and port: instances.ts matches the protocol), and gets a pool port of
 * its own. One pool serves both protocols, and a pool port belongs to one group
 * at a time whatever its protocol, so a real port number names one instance and
 * `release` by port is unambiguous.
 *
 * Local clients (FIG. 8). The library reports the local address:port of a
 * program's connection to a multiplexed port (`connect`) before its first
 * packet leaves, so that the pipeline finds the program's AID for that packet
 * (`localClientAid`). The reports of each protocol are kept apart: TCP port 40000
 * and UDP port 40000 are two different sockets. A TCP report names one
 * connection attempt and stays until newer ones push it out (the oldest go first
 * past 65536). A UDP report names a socket, which sends datagrams, and creates
 * flows, for as long as it lives: it stays until that socket is closed (the
 * library's `release` of its pid and fd) or the control connection it came on
 * closes (the process ended), so neither newer reports nor a busy TCP client push
 * it out, and a port it no longer holds does not keep its AID for whoever binds
 * it next. A report whose address is not chosen yet ("0.0.0.0:P", "[::]:P": a
 * socket bound to the wildcard) is keyed by the port alone and matches a
 * client of either family on that port. IPv6 reports are kept by the data
 * plane's view of the address (`Reports`): a number made of the XOR of its
 * four words and the port, and the words for an exact compare, so the
 * pipeline's per-flow lookup (`localClientAid6`, four words read from the
 * packet) allocates nothing.
 */

import type { Socket } from 'node:net';
import { VpmError } from '../base/errors.js';
import type { Config } from '../config/types.js';
import type { BindArgs, ConnectArgs, HelloArgs, ReleaseArgs } from '../control/requests.js';
import type { InstanceSet } from '../datapath/instances.js';
import type { InstanceView } from '../view/views.js';
import {
  formatAddr,
  type IpAddr,
  ipv4ToString,
  ipv6ToWords,
  ipv6Words,
  isV4Mapped,
  parseEndpoint,
  parseIpv4,
  parseIpv6,
} from '../wire/address.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../wire/ipv4.js';
import type { PortPool } from './pool.js';

export type RegistryErrorCode =
  | 'ERR_UNKNOWN_AID'
  | 'ERR_NOT_MULTIPLEXED'
  | 'ERR_NO_POOL'
  | 'ERR_BIND_ADDRESS'
  /** The registration's connection ended while its bind waited for a port. */
  | 'ERR_RELEASED'
  /** A request's arguments that the schema cannot refuse (an address that does not parse). */
  | 'ERR_CONTROL_BAD_REQUEST';

/** A refused hello/bind/connect/release; the control server answers with its code. */
export class RegistryError extends VpmError<RegistryErrorCode> {}

export interface Registration {
  id: number;
  pid: number;
  fd: number;
  conn: Socket;
  since: number;
  /** The families its socket accepts (resolveBindAddress). */
  v4: boolean;
  v6: boolean;
}

/** Where a bind's instance listens, and which families it serves. */
export interface BindTarget {
  /** The group's address part: "tun" for the wildcards and the TUN's addresses, else the address. */
  key: string;
  /** The instance's IPv4 address when it serves IPv4, or -1. */
  addr4: number;
  /** The instance's IPv6 address when it serves IPv6, or null. */
  addr6: bigint | null;
  /** The families this bind's socket accepts. */
  v4: boolean;
  v6: boolean;
}

/**
 * Resolve a bind request's address (`addr`, absent: "0.0.0.0") and `v6only` to
 * the instance it registers (the table in the module comment). Throws
 * ERR_BIND_ADDRESS for an address packets from the TUN cannot reach or this
 * configuration cannot serve.
 */
export function resolveBindAddress(
  cfg: Config,
  addr: string | undefined,
  v6only = false,
): BindTarget {
  const t = cfg.tun;
  const tun6 = t.ipv6 ? t.address6 : null;
  const wildcards = `0.0.0.0, :: or the TUN address ${ipv4ToString(t.address)}${t.ipv6 ? ` or ${formatAddr(t.address6)}` : ''}`;
  const tun = (v4: boolean, v6: boolean): BindTarget => ({
    key: 'tun',
    addr4: t.address,
    addr6: tun6,
    v4,
    v6,
  });
  const noIpv6 = (what: string) =>
    new RegistryError(
      'ERR_BIND_ADDRESS',
      `${what} is an IPv6 bind, and this daemon's configuration has no IPv6 (tun.ipv6 is off: no IPv6 address in the configuration file, and no tun.address6); bind to 0.0.0.0, or add IPv6 to the configuration and restart vpm`,
    );
  if (addr === undefined || addr === '0.0.0.0') return tun(true, false);
  const a4 = parseIpv4(addr);
  const a6 = a4 === null ? parseIpv6(addr) : null;
  if (a4 === null && a6 === null)
    throw new RegistryError(
      'ERR_BIND_ADDRESS',
      `"${addr}" is not an IPv4 or IPv6 address, "0.0.0.0" or "::"`,
    );
  if (a6 !== null && isV4Mapped(a6))
    return resolveBindAddress(cfg, ipv4ToString(Number(a6 & 0xffffffffn)));
  if (a6 === 0n) {
    // "::": dual-stack unless the socket has IPV6_V6ONLY.
    if (!v6only) return tun(true, t.ipv6);
    if (!t.ipv6) throw noIpv6('"::" with IPV6_V6ONLY');
    return tun(false, true);
  }
  if (a4 !== null) {
    if (a4 >>> 24 === 127)
      throw new RegistryError(
        'ERR_BIND_ADDRESS',
        `${addr} is a loopback address, which vpm cannot reach: bind to ${wildcards}`,
      );
    if (a4 === t.address) return tun(true, false);
    return { key: ipv4ToString(a4), addr4: a4, addr6: null, v4: true, v6: false };
  }
  const v6 = a6!;
  const text = formatAddr(v6);
  if (v6 === 1n)
    throw new RegistryError(
      'ERR_BIND_ADDRESS',
      `${text} is the IPv6 loopback address, which vpm cannot reach: bind to ${wildcards}`,
    );
  if (v6 >> 118n === 0x3fan)
    throw new RegistryError(
      'ERR_BIND_ADDRESS',
      `${text} is an IPv6 link-local address (fe80::/10), which vpm cannot reach: bind to ${wildcards}`,
    );
  if (!t.ipv6) throw noIpv6(text);
  if (v6 === t.address6) return tun(false, true);
  return { key: text, addr4: -1, addr6: v6, v4: false, v6: true };
}

interface Group {
  aid: number;
  proto: 'tcp' | 'udp';
  vport: number;
  /** Where its instance listens for each family (BindTarget). */
  addr4: number;
  addr6: bigint | null;
  /** Its registrations that accept IPv4, IPv6: the instance serves a family while it has one. */
  n4: number;
  n6: number;
  /** The families its instance serves now. */
  serves4: boolean;
  serves6: boolean;
  port: number;
  /** Until the pool answers: the pending acquisition shared by concurrent first binds. */
  pending: Promise<number> | null;
  regs: Set<Registration>;
  /** Index of its instance in the instance set, or -1 while it has none. */
  instance: number;
}

const MAX_LOCAL_CLIENTS = 65536;

/** A reported local client, at its local address (0: not chosen yet; a bigint: IPv6) and port. */
interface LocalClient {
  addr: IpAddr;
  port: number;
  aid: number;
  pid: number;
  remote: string;
  at: number;
}

/** A UDP report also names its socket, (pid, fd) on its control connection: it lives as long. */
interface UdpClient extends LocalClient {
  fd: number;
  conn: Socket | null;
}

/** The report's local address: 0 for the unspecified one of either family, IPv4 for a v4-mapped one. */
function localAddress(a: IpAddr): IpAddr {
  if (typeof a === 'number') return a;
  if (a === 0n) return 0;
  return isV4Mapped(a) ? Number(a & 0xffffffffn) : a;
}

/** The data plane's key of an IPv6 local client: the fold of its words, and the port. */
function key6(w: Uint32Array, port: number): number {
  return ((w[0]! ^ w[1]! ^ w[2]! ^ w[3]!) >>> 0) * 0x10000 + port;
}

/**
 * One protocol's local client reports, by local address and port. IPv4 (and the
 * address not chosen yet, 0) by addr·2^16+port; IPv6 by key6 (fold·2^16+port)
 * with the address's words kept for an exact compare (usually one entry per
 * key). Each map keeps insertion order, so the first entry is the oldest
 * (approximately, for IPv6: the first key's first entry).
 */
class Reports<E extends LocalClient> {
  private readonly v4 = new Map<number, E>();
  private readonly v6 = new Map<number, { w: Uint32Array; e: E }[]>();
  private n6 = 0;

  /** Entries of `addr`'s family. */
  count(addr: IpAddr): number {
    return typeof addr === 'bigint' ? this.n6 : this.v4.size;
  }

  /** The report at exactly this address and port. Control plane. */
  find(addr: IpAddr, port: number): E | undefined {
    if (typeof addr === 'number') return this.v4.get(addr * 0x10000 + port);
    const w = ipv6Words(addr);
    for (const x of this.v6.get(key6(w, port)) ?? []) if (x.e.addr === addr) return x.e;
    return undefined;
  }

  /** Add (after `remove` of any report at the same address and port). */
  add(e: E): void {
    if (typeof e.addr === 'number') {
      this.v4.set(e.addr * 0x10000 + e.port, e);
      return;
    }
    const w = ipv6Words(e.addr);
    const k = key6(w, e.port);
    const list = this.v6.get(k);
    if (list) list.push({ w, e });
    else this.v6.set(k, [{ w, e }]);
    this.n6++;
  }

  /** Remove e itself (not a newer report at its address); true if it was there. */
  remove(e: E): boolean {
    if (typeof e.addr === 'number') {
      const k = e.addr * 0x10000 + e.port;
      if (this.v4.get(k) !== e) return false;
      this.v4.delete(k);
      return true;
    }
    const w = ipv6Words(e.addr);
    const k = key6(w, e.port);
    const list = this.v6.get(k);
    const i = list ? list.findIndex((x) => x.e === e) : -1;
    if (i < 0) return false;
    list!.splice(i, 1);
    if (list!.length === 0) this.v6.delete(k);
    this.n6--;
    return true;
  }

  /** The oldest report of addr's family. */
  oldest(addr: IpAddr): E | undefined {
    if (typeof addr === 'number') return this.v4.values().next().value;
    return this.v6.values().next().value?.[0]?.e;
  }

  /** Data plane: the IPv4 client addr:port, else a report of that port without an address. */
  lookup(addr: number, port: number): E | undefined {
    return this.v4.get(addr * 0x10000 + port) ?? this.v4.get(port);
  }

  /** Data plane: the IPv6 client (4 words) at port, else a report of that port without an address. No allocation. */
  lookup6(w: Uint32Array, port: number): E | undefined {
    const list = this.v6.get(key6(w, port));
    if (list !== undefined) {
      for (let i = 0; i < list.length; i++) {
        const x = list[i]!.w;
        if (x[0] === w[0] && x[1] === w[1] && x[2] === w[2] && x[3] === w[3]) return list[i]!.e;
      }
    }
    return this.v4.get(port);
  }
}

export class Registry {
  private readonly groups = new Map<string, Group>();
  private readonly byConn = new Map<Socket, Set<Registration>>();
  /** Reported TCP client connections by local address and port; the oldest go first. */
  private readonly tcpClients = new Reports<LocalClient>();
  /** Reported UDP client sockets by local address and port, until the socket closes. */
  private readonly udpClients = new Reports<UdpClient>();
  /** The UDP reports each control connection made. */
  private readonly udpByConn = new Map<Socket, Set<UdpClient>>();
  private nextId = 1;

  constructor(
    private cfg: Config,
    private readonly instanceSet: InstanceSet,
    private readonly pool: PortPool | null,
  ) {}

  private aidIndex(aid: string): number {
    const i = this.cfg.applications.findIndex((a) => a.aid === aid);
    if (i < 0) {
      throw new RegistryError(
        'ERR_UNKNOWN_AID',
        `AID "${aid}" is not in the configuration (known: ${this.cfg.applications.map((a) => a.aid).join(', ')})`,
      );
    }
    return i;
  }

  /** The multiplexed (proto, vport) pairs: the ports of the virtual services. */
  ports(): { proto: string; vport: number }[] {
    const seen = new Set<string>();
    const out: { proto: string; vport: number }[] = [];
    for (const s of this.cfg.services) {
      const k = `${s.protocol}/${s.port}`;
      if (!seen.has(k)) {
        seen.add(k);
        out.push({ proto: s.protocol, vport: s.port });
      }
    }
    return out;
  }

  hello(args: HelloArgs): Record<string, unknown> {
    const aid = this.aidIndex(args.aid);
    return {
      aid: this.cfg.applications[aid]!.aid,
      known: true,
      ports: this.ports(),
      pool: this.pool ? this.pool.stats() : null,
      waitTimeoutMs: this.pool?.waitTimeoutMs ?? 0,
    };
  }

  /**
   * Register a bind; resolves to the real port the program must bind. The
   * arguments have passed their schema (src/control/requests.ts).
   */
  async bind(conn: Socket, a: BindArgs): Promise<{ port: number }> {
    const aid = this.aidIndex(a.aid);
    const { proto, vport, pid, fd } = a;
    if (!this.cfg.services.some((s) => s.protocol === proto && s.port === vport)) {
      throw new RegistryError(
        'ERR_NOT_MULTIPLEXED',
        `${proto}/${vport} is not the port of a virtual service`,
      );
    }
    if (!this.pool) {
      throw new RegistryError(
        'ERR_NO_POOL',
        'this daemon has no port pool (set pool.range in the configuration)',
      );
    }
    const target = resolveBindAddress(this.cfg, a.addr, a.v6only ?? false);
    const key = `${aid}/${proto}/${vport}/${target.key}`;
    let g = this.groups.get(key);
    if (!g) {
      g = {
        aid,
        proto,
        vport,
        addr4: target.addr4,
        addr6: target.addr6,
        n4: 0,
        n6: 0,
        serves4: false,
        serves6: false,
        port: 0,
        pending: null,
        regs: new Set(),
        instance: -1,
      };
      this.groups.set(key, g);
    }
    const reg: Registration = {
      id: this.nextId++,
      pid,
      fd,
      conn,
      since: Date.now(),
      v4: target.v4,
      v6: target.v6,
    };
    g.regs.add(reg);
    if (reg.v4) g.n4++;
    if (reg.v6) g.n6++;
    let regs = this.byConn.get(conn);
    if (!regs) {
      regs = new Set();
      this.byConn.set(conn, regs);
    }
    regs.add(reg);
    if (g.port === 0) {
      try {
        if (!g.pending) g.pending = this.pool.acquire();
        const port = await g.pending;
        if (g.port === 0) {
          g.port = port;
          g.pending = null;
          if (g.regs.size === 0) {
            // Everyone left while we waited.
            this.endGroup(key, g);
          } else {
            this.syncInstance(g);
          }
        }
      } catch (e) {
        g.pending = null;
        this.dropReg(g, reg, key);
        throw e;
      }
    } else {
      // A group with its port: this registration may add a family to its instance.
      this.syncInstance(g);
    }
    if (!g.regs.has(reg))
      throw new RegistryError('ERR_RELEASED', 'the registration ended while it waited for a port');
    return { port: g.port };
  }

  /**
   * Give group g (which has its port) the instance its registrations call for:
   * one serving IPv4 while one of them accepts IPv4, IPv6 while one accepts
   * IPv6. A change of families keeps the instance's index (and its health).
   */
  private syncInstance(g: Group): void {
    const v4 = g.n4 > 0 && g.addr4 !== -1;
    const v6 = g.n6 > 0 && g.addr6 !== null;
    if (g.instance >= 0 && v4 === g.serves4 && v6 === g.serves6) return;
    if (!v4 && !v6) {
      // Not reached (every registration accepts a family its group serves); no instance then.
      if (g.instance >= 0) this.instanceSet.removeRegistered(g.instance);
      g.instance = -1;
      g.serves4 = g.serves6 = false;
      return;
    }
    let addr6: Uint32Array | null = null;
    if (v6) {
      addr6 = new Uint32Array(4);
      ipv6ToWords(g.addr6!, addr6);
    }
    const spec = {
      aid: g.aid,
      addr: v4 ? g.addr4 : -1,
      addr6,
      port: g.port,
      service: -1,
      vport: g.vport,
      proto: g.proto === 'udp' ? IPPROTO_UDP : IPPROTO_TCP,
    };
    if (g.instance < 0) g.instance = this.instanceSet.addRegistered(spec);
    else this.instanceSet.updateRegistered(g.instance, spec);
    g.serves4 = v4;
    g.serves6 = v6;
  }

  /**
   * The program closed a socket it bound through vpm (its registration of that
   * port ends), or a UDP socket it reported as a client (its reports end). Both
   * are matched by (pid, fd) on the connection they came on: `released` counts
   * the registrations that ended, `reports` the UDP client reports.
   */
  release(conn: Socket, a: ReleaseArgs): { released: number; reports: number } {
    const reports = this.dropUdpClients(conn, a.pid, a.fd);
    const regs = this.byConn.get(conn);
    let n = 0;
    if (!regs) return { released: 0, reports };
    for (const reg of [...regs]) {
      if (reg.fd !== a.fd || reg.pid !== a.pid) continue;
      for (const [key, g] of this.groups) {
        if (g.regs.has(reg) && (a.port === undefined || a.port === g.port)) {
          this.dropReg(g, reg, key);
          n++;
        }
      }
    }
    return { released: n, reports };
  }

  /**
   * The control connection closed: every registration made on it ends, and so do
   * its UDP client reports. Returns the number of registrations that ended.
   */
  connClosed(conn: Socket): number {
    this.dropUdpClients(conn, -1, -1);
    const regs = this.byConn.get(conn);
    if (!regs) return 0;
    let n = 0;
    for (const reg of [...regs]) {
      for (const [key, g] of this.groups) {
        if (g.regs.has(reg)) {
          this.dropReg(g, reg, key);
          n++;
        }
      }
    }
    this.byConn.delete(conn);
    return n;
  }

  private dropReg(g: Group, reg: Registration, key: string): void {
    if (g.regs.delete(reg)) {
      if (reg.v4) g.n4--;
      if (reg.v6) g.n6--;
    }
    const regs = this.byConn.get(reg.conn);
    regs?.delete(reg);
    if (regs && regs.size === 0) this.byConn.delete(reg.conn);
    if (g.regs.size === 0) {
      if (g.port !== 0) this.endGroup(key, g);
      else if (g.pending === null) this.groups.delete(key);
    } else if (g.instance >= 0) {
      this.syncInstance(g);
    }
  }

  private endGroup(key: string, g: Group): void {
    this.groups.delete(key);
    if (g.instance >= 0) {
      this.instanceSet.removeRegistered(g.instance);
      g.instance = -1;
    }
    if (g.port !== 0) this.pool?.release(g.port);
    g.port = 0;
  }

  /**
   * A program under `vpm exec` is about to send its first packet to a multiplexed
   * port (a TCP connect; a UDP socket's first datagram to one, or its connect):
   * remember the AID of its local address:port, so that that packet — which
   * follows this report, as the library waits for the answer before the packet
   * can leave — can be given to the instance of the same AID (one daemon for both
   * ends, FIG. 8) or negotiated with a peer (FIG. 6/7). `local` is "a.b.c.d:port"
   * or "[v6]:port"; its address may be 0.0.0.0 or :: when the socket's address is
   * not chosen yet: the port alone then identifies it, for either family. TCP reports are bounded, the oldest going first; a UDP report
   * lives until its socket's `release` or its connection's end (`conn`; null: no
   * connection, kept until pushed out like a TCP one).
   */
  connectReport(a: ConnectArgs, conn: Socket | null = null): { aid: string } {
    const aid = this.aidIndex(a.aid);
    // The schema checked the form "a.b.c.d:port" / "[v6]:port"; the numbers are checked here.
    const ep = parseEndpoint(a.local);
    if (ep === null || ep.port === 0) {
      throw new RegistryError(
        'ERR_CONTROL_BAD_REQUEST',
        `"local" must be "a.b.c.d:port" or "[v6]:port" with a port 1-65535, got ${JSON.stringify(a.local)}`,
      );
    }
    const addr = localAddress(ep.address);
    const port = ep.port;
    const entry = { addr, port, aid, pid: a.pid ?? 0, remote: a.remote ?? '', at: Date.now() };
    if (a.proto === 'udp') {
      const old = this.udpClients.find(addr, port);
      if (old) this.forgetUdpClient(old);
      else if (this.udpClients.count(addr) >= MAX_LOCAL_CLIENTS) {
        const oldest = this.udpClients.oldest(addr);
        if (oldest !== undefined) this.forgetUdpClient(oldest);
      }
      const e: UdpClient = { ...entry, fd: a.fd ?? -1, conn };
      this.udpClients.add(e);
      if (conn) {
        let set = this.udpByConn.get(conn);
        if (!set) {
          set = new Set();
          this.udpByConn.set(conn, set);
        }
        set.add(e);
      }
    } else {
      const old = this.tcpClients.find(addr, port);
      if (old) this.tcpClients.remove(old);
      else if (this.tcpClients.count(addr) >= MAX_LOCAL_CLIENTS) {
        const oldest = this.tcpClients.oldest(addr);
        if (oldest !== undefined) this.tcpClients.remove(oldest);
      }
      this.tcpClients.add(entry);
    }
    return { aid: this.cfg.applications[aid]!.aid };
  }

  private forgetUdpClient(e: UdpClient): void {
    this.udpClients.remove(e);
    if (!e.conn) return;
    const set = this.udpByConn.get(e.conn);
    set?.delete(e);
    if (set?.size === 0) this.udpByConn.delete(e.conn);
  }

  /** End the UDP reports of (pid, fd) on `conn`; pid -1: all of them. Returns how many. */
  private dropUdpClients(conn: Socket, pid: number, fd: number): number {
    const set = this.udpByConn.get(conn);
    if (!set) return 0;
    let n = 0;
    for (const e of [...set]) {
      if (pid === -1 || (e.pid === pid && e.fd === fd)) {
        this.forgetUdpClient(e);
        n++;
      }
    }
    if (set.size === 0) this.udpByConn.delete(conn);
    return n;
  }

  /**
   * The AID index reported for a local client at addr:port of protocol `proto`
   * (IPPROTO_TCP, IPPROTO_UDP), or -1. Numeric keys: this runs on the data plane,
   * for a local client's first packet of a flow.
   */
  localClientAid(addr: number, port: number, proto: number = IPPROTO_TCP): number {
    const m = proto === IPPROTO_UDP ? this.udpClients : this.tcpClients;
    const e = m.lookup(addr, port);
    return e === undefined ? -1 : e.aid;
  }

  /**
   * `localClientAid` for an IPv6 local client: its address as four big-endian
   * words (`addr`, read only during the call). No allocation: a number key and
   * an exact compare of the words.
   */
  localClientAid6(addr: Uint32Array, port: number, proto: number = IPPROTO_TCP): number {
    const m = proto === IPPROTO_UDP ? this.udpClients : this.tcpClients;
    const e = m.lookup6(addr, port);
    return e === undefined ? -1 : e.aid;
  }

  /** After a reload: the new configuration; the registered instances stay in the set. */
  rebind(cfg: Config): void {
    this.cfg = cfg;
  }

  instances(): InstanceView[] {
    const out: InstanceView[] = [];
    this.cfg.applications.forEach((app) => {
      // One row per family a static instance serves (both without an address).
      for (const i of app.instances.flatMap((x) =>
        [x.address, x.address6]
          .filter((a) => a !== null)
          .map((a) => ({ ...x, shown: formatAddr(a!) })),
      )) {
        out.push({
          aid: app.aid,
          // A static instance serves its service's protocol, or both without one.
          proto: i.serviceIndex === null ? 'any' : this.cfg.services[i.serviceIndex]!.protocol,
          vport: i.serviceIndex === null ? 0 : this.cfg.services[i.serviceIndex]!.port,
          address: i.shown,
          port: i.port,
          pids: [],
          registrations: 0,
          since: '',
          source: 'static',
        });
      }
    });
    for (const g of this.groups.values()) {
      if (g.port === 0 || g.instance < 0) continue;
      // One row per family its instance serves, as for a static instance.
      const addrs: IpAddr[] = [];
      if (g.serves4) addrs.push(g.addr4);
      if (g.serves6) addrs.push(g.addr6!);
      for (const address of addrs) {
        const regs = [...g.regs].filter((r) => (typeof address === 'bigint' ? r.v6 : r.v4));
        out.push({
          aid: this.cfg.applications[g.aid]?.aid ?? `#${g.aid}`,
          proto: g.proto,
          vport: g.vport,
          address: formatAddr(address),
          port: g.port,
          pids: [...new Set(regs.map((r) => r.pid))].sort((x, y) => x - y),
          registrations: regs.length,
          since: new Date(Math.min(...regs.map((r) => r.since))).toISOString(),
          source: 'registered',
        });
      }
    }
    return out;
  }
}
