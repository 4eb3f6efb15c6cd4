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
 * it next.
 */

import type { Socket } from 'node:net';
import { VpmError } from '../base/errors.js';
import type { Config } from '../config/types.js';
import type { BindArgs, ConnectArgs, HelloArgs, ReleaseArgs } from '../control/requests.js';
import type { InstanceSet } from '../datapath/instances.js';
import type { InstanceView } from '../view/views.js';
import { formatAddr, ipv4ToString, parseIpv4 } from '../wire/address.js';
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
}

interface Group {
  aid: number;
  proto: 'tcp' | 'udp';
  vport: number;
  addr: number;
  port: number;
  /** Until the pool answers: the pending acquisition shared by concurrent first binds. */
  pending: Promise<number> | null;
  regs: Set<Registration>;
  /** Index of its instance in the instance set, or -1 while it has none. */
  instance: number;
}

const MAX_LOCAL_CLIENTS = 65536;

/** A reported local client: key addr·2^16+port (addr 0 when not chosen yet). */
interface LocalClient {
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

function splitHostPort(s: string): { addr: number; port: number } | null {
  const i = s.lastIndexOf(':');
  if (i < 0) return null;
  const addr = parseIpv4(s.slice(0, i));
  const port = Number(s.slice(i + 1));
  if (addr === null || !Number.isInteger(port) || port < 1 || port > 65535) return null;
  return { addr, port };
}

export class Registry {
  private readonly groups = new Map<string, Group>();
  private readonly byConn = new Map<Socket, Set<Registration>>();
  /** Reported TCP client connections by local address·2^16+port; the oldest go first. */
  private readonly tcpClients = new Map<number, LocalClient>();
  /** Reported UDP client sockets by local address·2^16+port, until the socket closes. */
  private readonly udpClients = new Map<number, UdpClient>();
  /** The keys of udpClients each control connection reported. */
  private readonly udpByConn = new Map<Socket, Set<number>>();
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
    const addr = this.instanceAddress(a.addr);
    const key = `${aid}/${proto}/${vport}/${addr}`;
    let g = this.groups.get(key);
    if (!g) {
      g = { aid, proto, vport, addr, port: 0, pending: null, regs: new Set(), instance: -1 };
      this.groups.set(key, g);
    }
    const reg: Registration = { id: this.nextId++, pid, fd, conn, since: Date.now() };
    g.regs.add(reg);
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
            g.instance = this.instanceSet.addRegistered({
              aid,
              addr: g.addr,
              // IPv6 registrations come with part C of issue 12.
              addr6: null,
              port,
              service: -1,
              vport,
              proto: proto === 'udp' ? IPPROTO_UDP : IPPROTO_TCP,
            });
          }
        }
      } catch (e) {
        g.pending = null;
        this.dropReg(g, reg, key);
        throw e;
      }
    }
    if (!g.regs.has(reg))
      throw new RegistryError('ERR_RELEASED', 'the registration ended while it waited for a port');
    return { port: g.port };
  }

  private instanceAddress(addr: string | undefined): number {
    if (addr === '0.0.0.0' || addr === '::' || addr === undefined) return this.cfg.tun.address;
    const a = parseIpv4(addr);
    if (a === null)
      throw new RegistryError(
        'ERR_BIND_ADDRESS',
        `"${addr}" is not an IPv4 address, "0.0.0.0" or "::"`,
      );
    if (a >>> 24 === 127) {
      throw new RegistryError(
        'ERR_BIND_ADDRESS',
        `${addr} is a loopback address, which vpm cannot reach: bind to 0.0.0.0, :: or the TUN address ${ipv4ToString(this.cfg.tun.address)}`,
      );
    }
    return a;
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
    g.regs.delete(reg);
    const regs = this.byConn.get(reg.conn);
    regs?.delete(reg);
    if (regs && regs.size === 0) this.byConn.delete(reg.conn);
    if (g.regs.size === 0) {
      if (g.port !== 0) this.endGroup(key, g);
      else if (g.pending === null) this.groups.delete(key);
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
   * ends, FIG. 8) or negotiated with a peer (FIG. 6/7). `local` may have address
   * 0.0.0.0 when the socket's address is not chosen yet; the port alone then
   * identifies it. TCP reports are bounded, the oldest going first; a UDP report
   * lives until its socket's `release` or its connection's end (`conn`; null: no
   * connection, kept until pushed out like a TCP one).
   */
  connectReport(a: ConnectArgs, conn: Socket | null = null): { aid: string } {
    const aid = this.aidIndex(a.aid);
    // The schema checked the form "a.b.c.d:port"; the numbers are checked here.
    const local = splitHostPort(a.local);
    if (local === null) {
      throw new RegistryError(
        'ERR_CONTROL_BAD_REQUEST',
        `"local" must be "a.b.c.d:port", got ${JSON.stringify(a.local)}`,
      );
    }
    const key = local.addr * 0x10000 + local.port;
    const entry = { aid, pid: a.pid ?? 0, remote: a.remote ?? '', at: Date.now() };
    if (a.proto === 'udp') {
      const old = this.udpClients.get(key);
      if (old) this.forgetUdpClient(key, old);
      else if (this.udpClients.size >= MAX_LOCAL_CLIENTS) {
        const oldest = this.udpClients.entries().next().value;
        if (oldest !== undefined) this.forgetUdpClient(oldest[0], oldest[1]);
      }
      this.udpClients.set(key, { ...entry, fd: a.fd ?? -1, conn });
      if (conn) {
        let keys = this.udpByConn.get(conn);
        if (!keys) {
          keys = new Set();
          this.udpByConn.set(conn, keys);
        }
        keys.add(key);
      }
    } else {
      if (this.tcpClients.size >= MAX_LOCAL_CLIENTS) {
        const oldest = this.tcpClients.keys().next().value;
        if (oldest !== undefined) this.tcpClients.delete(oldest);
      }
      this.tcpClients.delete(key);
      this.tcpClients.set(key, entry);
    }
    return { aid: this.cfg.applications[aid]!.aid };
  }

  private forgetUdpClient(key: number, e: UdpClient): void {
    this.udpClients.delete(key);
    if (!e.conn) return;
    const keys = this.udpByConn.get(e.conn);
    keys?.delete(key);
    if (keys?.size === 0) this.udpByConn.delete(e.conn);
  }

  /** End the UDP reports of (pid, fd) on `conn`; pid -1: all of them. Returns how many. */
  private dropUdpClients(conn: Socket, pid: number, fd: number): number {
    const keys = this.udpByConn.get(conn);
    if (!keys) return 0;
    let n = 0;
    for (const key of [...keys]) {
      const e = this.udpClients.get(key);
      if (e === undefined || e.conn !== conn) {
        keys.delete(key);
      } else if (pid === -1 || (e.pid === pid && e.fd === fd)) {
        this.forgetUdpClient(key, e);
        n++;
      }
    }
    if (keys.size === 0) this.udpByConn.delete(conn);
    return n;
  }

  /**
   * The AID index reported for a local client at addr:port of protocol `proto`
   * (IPPROTO_TCP, IPPROTO_UDP), or -1. Numeric keys: this runs on the data plane,
   * for a local client's first packet of a flow.
   */
  localClientAid(addr: number, port: number, proto: number = IPPROTO_TCP): number {
    const m = proto === IPPROTO_UDP ? this.udpClients : this.tcpClients;
    const e = m.get(addr * 0x10000 + port) ?? m.get(port);
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
      if (g.port === 0) continue;
      const regs = [...g.regs];
      out.push({
        aid: this.cfg.applications[g.aid]?.aid ?? `#${g.aid}`,
        proto: g.proto,
        vport: g.vport,
        address: ipv4ToString(g.addr),
        port: g.port,
        pids: [...new Set(regs.map((r) => r.pid))].sort((x, y) => x - y),
        registrations: regs.length,
        since: new Date(Math.min(...regs.map((r) => r.since))).toISOString(),
        source: 'registered',
      });
    }
    return out;
  }
}
