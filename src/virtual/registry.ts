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
 */

import type { Socket } from 'node:net';
import { VpmError } from '../base/errors.js';
import type { Config } from '../config/types.js';
import type { BindArgs, ConnectArgs, HelloArgs, ReleaseArgs } from '../control/requests.js';
import type { InstanceSet } from '../datapath/instances.js';
import type { InstanceView } from '../view/views.js';
import { ipv4ToString, parseIpv4 } from '../wire/address.js';
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
  /** Reported client connections: key addr·2^16+port (addr 0 when not chosen yet) → AID index. */
  private readonly localClients = new Map<
    number,
    { aid: number; pid: number; remote: string; at: number }
  >();
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
    if (proto !== 'tcp')
      throw new RegistryError('ERR_NOT_MULTIPLEXED', `${proto} is not multiplexed yet`);
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
              port,
              service: -1,
              vport,
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

  /** The program closed a socket it bound through vpm. */
  release(conn: Socket, a: ReleaseArgs): { released: number } {
    const regs = this.byConn.get(conn);
    let n = 0;
    if (!regs) return { released: 0 };
    for (const reg of [...regs]) {
      if (reg.fd !== a.fd || reg.pid !== a.pid) continue;
      for (const [key, g] of this.groups) {
        if (g.regs.has(reg) && (a.port === undefined || a.port === g.port)) {
          this.dropReg(g, reg, key);
          n++;
        }
      }
    }
    return { released: n };
  }

  /** The control connection closed: every registration made on it ends. */
  connClosed(conn: Socket): number {
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
   * A program under `vpm exec` is about to connect to a multiplexed port: remember
   * the AID of its local address:port, so that its SYN — which follows this report,
   * as the library waits for the answer before it connects — can be given to the
   * instance of the same AID (one daemon for both ends, FIG. 8) or negotiated with
   * a peer (FIG. 6/7). `local` may have address 0.0.0.0 when the socket's address
   * is not chosen yet; the port alone then identifies it. Bounded: the oldest entry
   * goes first.
   */
  connectReport(a: ConnectArgs): { aid: string } {
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
    if (this.localClients.size >= MAX_LOCAL_CLIENTS) {
      const oldest = this.localClients.keys().next().value;
      if (oldest !== undefined) this.localClients.delete(oldest);
    }
    this.localClients.delete(key);
    this.localClients.set(key, {
      aid,
      pid: a.pid ?? 0,
      remote: a.remote ?? '',
      at: Date.now(),
    });
    return { aid: this.cfg.applications[aid]!.aid };
  }

  /**
   * The AID index reported for a local client at addr:port, or -1. Numeric keys:
   * this runs for a local client's SYN on the data plane.
   */
  localClientAid(addr: number, port: number): number {
    const e = this.localClients.get(addr * 0x10000 + port) ?? this.localClients.get(port);
    return e === undefined ? -1 : e.aid;
  }

  /** After a reload: the new configuration; the registered instances stay in the set. */
  rebind(cfg: Config): void {
    this.cfg = cfg;
  }

  instances(): InstanceView[] {
    const out: InstanceView[] = [];
    this.cfg.applications.forEach((app) => {
      for (const i of app.instances) {
        out.push({
          aid: app.aid,
          proto: 'tcp',
          vport: i.serviceIndex === null ? 0 : this.cfg.services[i.serviceIndex]!.port,
          address: ipv4ToString(i.address),
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
