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
 * does when the process exits, also by SIGKILL (one recovered after a daemon
 * restart has no connection: below). When a group's last registration
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
 *
 * Surviving a restart (`snapshot`, `restore`, `sweep`, `onChange`). Programs
 * under `vpm exec` keep their real ports when the daemon dies (kill -9, a
 * crash, an upgrade), and the library talks to the daemon only inside bind,
 * connect, the UDP sends and close: an idle server never comes back by
 * itself. So the next daemon takes the registry over from a snapshot the old
 * one saved (src/state/registry-file.ts) after every change: `onChange` hooks
 * run synchronously after each change of what a snapshot holds, and `bind`
 * runs them before it resolves, so no port is answered that a crash could
 * forget and hand out twice. A snapshot names each group's AID by name, its
 * protocol, virtual port, address key and real port, its instance's index,
 * and each registration's pid, fd, families and process identity: `hostPid`,
 * the process in the daemon's pid namespace (the control connection's peer,
 * SO_PEERCRED; a program in a container reports its own getpid()), and its
 * start time (src/base/proc.ts), taken at bind time, against pid reuse. UDP
 * reports are in it the same way; TCP ones are not (RegistrySnapshot). The
 * pool's snapshot (ports in use, quarantine) comes with it.
 *
 * `restore` rebuilds a fresh registry from one, for the same configuration
 * or another: the pool first (ports in use stay in use); a registration stays
 * if its process is still the same (pid and start time), else it is dropped;
 * a group with a registration left comes back with its registered instance,
 * at its old index when free, if the configuration still has its AID, its
 * service and its address; a group it cannot serve is retired: no instance,
 * nobody joins it, but it keeps its port in use while one of its processes
 * lives (the program may still listen there; handing the port to another
 * group would make two listeners). Every other port in use goes back through
 * quarantine. Recovered registrations have no connection (`conn` null): each
 * ends at its program's `release` of (pid, fd) on any connection whose peer
 * is that process (the library opens a new one for it), or when `sweep`, which
 * the daemon calls every few seconds, finds its process gone. Registrations
 * with a connection are left to the connection: its last holder may be a
 * child that inherited it. A later bind of the same program joins its
 * recovered group as any bind does.
 */

import type { Socket } from 'node:net';
import { VpmError } from '../base/errors.js';
import { procStart, sameProcess } from '../base/proc.js';
import type { Config } from '../config/types.js';
import { peerOf } from '../control/access.js';
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
import type { PoolRestoreReport, PoolSnapshot, PortPool } from './pool.js';

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
  /** The pid the program reported (its getpid(), in its own pid namespace): `release` names it. */
  pid: number;
  /**
   * The same process in the daemon's pid namespace, whose liveness a restart
   * checks: the control connection's peer (SO_PEERCRED), else `pid`.
   */
  hostPid: number;
  /** procStart(hostPid) when it bound; null: unknown (it cannot survive a restart). */
  start: string | null;
  fd: number;
  /** The control connection it came on; null: recovered from a previous daemon's state. */
  conn: Socket | null;
  /** When it bound (Date.now(), ms). */
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
  /** Its key in Registry.groups. */
  gkey: string;
  /** AID index; -1 for a retired group whose AID the configuration no longer has. */
  aid: number;
  /** The AID's name: what a snapshot records (indices change with the configuration). */
  aidName: string;
  /** The address part of its key (BindTarget.key): "tun", or the address it was bound to. */
  key: string;
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
  /**
   * Recovered after a restart for a configuration that cannot serve it (its
   * AID, its service or its address is gone, or another group has its key):
   * no instance, and nobody joins it, but it holds its port for as long as a
   * registration of it lives. null: an ordinary group.
   */
  retired: GroupDropReason | null;
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
  /** The AID's name when reported: what a snapshot records (indices change with the configuration). */
  aidName: string;
  fd: number;
  /** null: no connection (kept until pushed out), or recovered (`recovered`). */
  conn: Socket | null;
  /** As Registration.hostPid and .start. */
  hostPid: number;
  start: string | null;
  /** Recovered from a previous daemon's state: ends at its release or when its process is gone. */
  recovered: boolean;
}

/** A registration as a snapshot records it (JSON). */
export interface RegistrationSnapshot {
  id: number;
  pid: number;
  hostPid: number;
  /** procStart(hostPid) at bind time; null: unknown. */
  start: string | null;
  fd: number;
  v4: boolean;
  v6: boolean;
  /** Date.now() at bind time, ms. */
  since: number;
}

/** A group (AID, protocol, virtual port, address) with its real port, as a snapshot records it. */
export interface GroupSnapshot {
  /** The AID by name. */
  aid: string;
  proto: 'tcp' | 'udp';
  vport: number;
  /** "tun" (the wildcards and the TUN's addresses) or the address bound (IPv4 dotted, IPv6 RFC 5952). */
  key: string;
  /** The addresses its instance listens on when it serves that family (informative: a restore resolves `key` again). */
  addr4: string | null;
  addr6: string | null;
  port: number;
  /** Its instance's index in the instance set; -1: none. */
  instance: number;
  registrations: RegistrationSnapshot[];
}

/** A UDP local client report as a snapshot records it. */
export interface UdpReportSnapshot {
  /** Its local address: IPv4 dotted, IPv6 RFC 5952, "0.0.0.0" when not chosen yet. */
  addr: string;
  port: number;
  aid: string;
  pid: number;
  hostPid: number;
  start: string | null;
  fd: number;
  remote: string;
  /** Date.now() when reported, ms. */
  at: number;
}

/**
 * What survives a daemon restart (JSON-serializable: src/state/registry-file.ts
 * writes it). TCP client reports are not in it: a TCP report is read once,
 * for its connection's SYN, which follows it within the same connect(); from
 * then on the flow (whose table survives on its own) carries the AID. They
 * come and go with every connection, and writing each one down before its
 * SYN may leave would put a file write in every local connect().
 */
export interface RegistrySnapshot {
  nextId: number;
  groups: GroupSnapshot[];
  udpReports: UdpReportSnapshot[];
  /** The pool's state (ports in use, quarantine: times in the pool's now() clock); null without a pool. */
  pool: PoolSnapshot | null;
}

/**
 * Why a restore dropped a registration, a group or a UDP report:
 *   process_gone  its process exited, or its pid is another process now (start time differs)
 *   aid_gone      the configuration has no such AID
 *   service_gone  its protocol and virtual port are no virtual service's
 *   address_gone  the configuration cannot serve its address (an IPv6 one without IPv6, ...)
 *   conflict      another group of the state holds its port or its key, or another report its
 *                 address:port (a damaged or forged state)
 *   invalid       a value that does not parse (a damaged or forged state)
 */
export type RestoreDropReason =
  | 'process_gone'
  | 'aid_gone'
  | 'service_gone'
  | 'address_gone'
  | 'conflict'
  | 'invalid';

/** Why a group is not back in service. */
export type GroupDropReason = Exclude<RestoreDropReason, 'invalid'>;

/** What `restore` did, for the daemon to log and count. */
export interface RestoreReport {
  /** Groups back in service (a registered instance again, unless no family of theirs is served). */
  groups: {
    aid: string;
    proto: 'tcp' | 'udp';
    vport: number;
    key: string;
    port: number;
    /** Its instance's index now (-1: none), and in the state. */
    instance: number;
    previousInstance: number;
    registrations: number;
    /** Its port is outside this daemon's pool (another pool.range, or none): never released to it. */
    outsidePool: boolean;
  }[];
  /**
   * Groups not back in service, with why. `held`: its port stays in use (no
   * instance, nobody joins) while a registration's process lives — a program
   * of a configuration that dropped it may still listen there — and goes back
   * through quarantine when the last one is gone; otherwise its port went
   * back through quarantine now (or is another group's, for a conflict).
   */
  droppedGroups: {
    aid: string;
    proto: 'tcp' | 'udp';
    vport: number;
    key: string;
    port: number;
    reason: GroupDropReason;
    held: boolean;
    registrations: number;
  }[];
  /** Registrations that ended, with why (those of a held group are not here: they are kept). */
  droppedRegistrations: {
    aid: string;
    proto: 'tcp' | 'udp';
    vport: number;
    port: number;
    pid: number;
    fd: number;
    reason: RestoreDropReason;
  }[];
  udpReports: {
    restored: number;
    dropped: { aid: string; local: string; pid: number; fd: number; reason: RestoreDropReason }[];
  };
  /** The pool's own report; null without a pool or without one in the state. */
  pool: PoolRestoreReport | null;
  /** Ports this restore released through quarantine: dropped groups', and in-use ports no group held. */
  released: number[];
}

/** How the registry tells who a process is; the defaults read /proc and SO_PEERCRED. */
export interface RegistryOptions {
  /** The pid of a control connection's peer in the daemon's pid namespace, 0 if unknown. */
  peerPid?: (conn: Socket) => number;
  /** The start time of a process (src/base/proc.ts). */
  procStart?: (pid: number) => string | null;
  /** Is `pid` still the process started at `start`? (src/base/proc.ts) */
  sameProcess?: (pid: number, start: string) => boolean;
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

  /** Every report (control plane: snapshots). */
  *values(): IterableIterator<E> {
    yield* this.v4.values();
    for (const list of this.v6.values()) for (const x of list) yield x.e;
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

/** What a registry change touched (onChange). */
export type RegistryChange = 'ports' | 'reports';

export class Registry {
  private readonly groups = new Map<string, Group>();
  private readonly byConn = new Map<Socket, Set<Registration>>();
  /** Registrations recovered from a previous daemon's state (no connection). */
  private readonly recovered = new Set<Registration>();
  /** The group of each registration. */
  private readonly groupOf = new Map<Registration, Group>();
  /** Reported TCP client connections by local address and port; the oldest go first. */
  private readonly tcpClients = new Reports<LocalClient>();
  /** Reported UDP client sockets by local address and port, until the socket closes. */
  private readonly udpClients = new Reports<UdpClient>();
  /** The UDP reports each control connection made. */
  private readonly udpByConn = new Map<Socket, Set<UdpClient>>();
  /** UDP reports recovered from a previous daemon's state. */
  private readonly udpRecovered = new Set<UdpClient>();
  private readonly listeners: ((what: RegistryChange) => void)[] = [];
  private nextId = 1;
  private readonly peerPid: (conn: Socket) => number;
  private readonly procStart: (pid: number) => string | null;
  private readonly sameProcess: (pid: number, start: string) => boolean;

  constructor(
    private cfg: Config,
    private readonly instanceSet: InstanceSet,
    private readonly pool: PortPool | null,
    opts: RegistryOptions = {},
  ) {
    this.peerPid = opts.peerPid ?? ((c) => peerOf(c).pid);
    this.procStart = opts.procStart ?? procStart;
    this.sameProcess = opts.sameProcess ?? sameProcess;
  }

  /**
   * Call `fn` synchronously after every change of what a snapshot holds (a
   * bind that got its port, a release, a connection's end, a UDP report, a
   * sweep, a restore), before the change is answered: `bind` runs it before
   * it resolves, so a daemon that writes the snapshot in `fn` has the port on
   * disk before the program hears of it. `fn` must not throw (what it throws
   * is caught and dropped: a state that cannot be written must not fail a
   * bind; the daemon logs it). Returns a function that removes it.
   *
   * `fn` is told what changed: `ports` — which real ports are held, by whom
   * (bind, release of a registration, a connection's end, a sweep, a restore):
   * to be written before the answer; `reports` — only the UDP local-client
   * reports (a `connect` report, a release or end of reports alone): what a
   * daemon may write a moment later, coalescing many (a program that opens a
   * UDP socket per query reports at that rate).
   */
  onChange(fn: (what: RegistryChange) => void): () => void {
    this.listeners.push(fn);
    return () => {
      const i = this.listeners.indexOf(fn);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  private changed(what: RegistryChange): void {
    for (const fn of [...this.listeners]) {
      try {
        fn(what);
      } catch {
        // The hook's own failure (module comment of onChange).
      }
    }
  }

  /** The pid of a connection's peer in the daemon's pid namespace; 0: unknown. */
  private peer(conn: Socket | null): number {
    if (!conn) return 0;
    try {
      const p = this.peerPid(conn);
      return Number.isInteger(p) && p > 0 ? p : 0;
    } catch {
      return 0;
    }
  }

  /** The daemon's view of the process behind a request: its pid here, and its start time. */
  private who(conn: Socket | null, pid: number): { hostPid: number; start: string | null } {
    const peer = this.peer(conn);
    const hostPid = peer > 0 ? peer : pid;
    return { hostPid, start: hostPid > 0 ? this.procStart(hostPid) : null };
  }

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
   * arguments have passed their schema (src/control/requests.ts). The change
   * hooks (`onChange`) run before it resolves or rejects, with the group's
   * port and this registration in place: a port is never answered before it
   * is in the state a restart recovers.
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
        gkey: key,
        aid,
        aidName: this.cfg.applications[aid]!.aid,
        key: target.key,
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
        retired: null,
      };
      this.groups.set(key, g);
    }
    const reg: Registration = {
      id: this.nextId++,
      pid,
      ...this.who(conn, pid),
      fd,
      conn,
      since: Date.now(),
      v4: target.v4,
      v6: target.v6,
    };
    this.addReg(g, reg);
    try {
      if (g.port === 0) {
        try {
          if (!g.pending) g.pending = this.pool.acquire();
          const port = await g.pending;
          if (g.port === 0) {
            g.port = port;
            g.pending = null;
            if (g.regs.size === 0) {
              // Everyone left while we waited.
              this.endGroup(g);
            } else {
              this.syncInstance(g);
            }
          }
        } catch (e) {
          g.pending = null;
          this.dropReg(reg);
          throw e;
        }
      } else {
        // A group with its port: this registration may add a family to its instance.
        this.syncInstance(g);
      }
      if (!g.regs.has(reg))
        throw new RegistryError(
          'ERR_RELEASED',
          'the registration ended while it waited for a port',
        );
      return { port: g.port };
    } finally {
      // Before the answer (this runs before the promise settles): see onChange.
      this.changed('ports');
    }
  }

  private addReg(g: Group, reg: Registration): void {
    g.regs.add(reg);
    if (reg.v4) g.n4++;
    if (reg.v6) g.n6++;
    this.groupOf.set(reg, g);
    if (reg.conn === null) {
      this.recovered.add(reg);
      return;
    }
    let regs = this.byConn.get(reg.conn);
    if (!regs) {
      regs = new Set();
      this.byConn.set(reg.conn, regs);
    }
    regs.add(reg);
  }

  /**
   * Give group g (which has its port) the instance its registrations call for:
   * one serving IPv4 while one of them accepts IPv4, IPv6 while one accepts
   * IPv6. A change of families keeps the instance's index (and its health).
   * `at`: the index a new instance should have (restore), if free.
   */
  private syncInstance(g: Group, at?: number): void {
    const v4 = g.n4 > 0 && g.addr4 !== -1;
    const v6 = g.n6 > 0 && g.addr6 !== null;
    if (g.instance >= 0 && v4 === g.serves4 && v6 === g.serves6) return;
    if (!v4 && !v6) {
      // No family its registrations accept is one this configuration serves
      // (a bind never makes such a group; a restore without IPv6 can): no instance.
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
    if (g.instance < 0) g.instance = this.instanceSet.addRegistered(spec, at);
    else this.instanceSet.updateRegistered(g.instance, spec);
    g.serves4 = v4;
    g.serves6 = v6;
  }

  /**
   * The program closed a socket it bound through vpm (its registration of that
   * port ends), or a UDP socket it reported as a client (its reports end). Both
   * are matched by (pid, fd) on the connection they came on, and among the
   * registrations and reports recovered from a previous daemon (which have no
   * connection: the library opens a new one for the release) when the
   * connection's peer is their process or unknown. `released` counts the
   * registrations that ended, `reports` the UDP client reports.
   */
  release(conn: Socket, a: ReleaseArgs): { released: number; reports: number } {
    let reports = this.dropUdpClients(conn, a.pid, a.fd);
    let peer = -1;
    const mayRelease = (hostPid: number) => {
      if (peer < 0) peer = this.peer(conn);
      return peer === 0 || peer === hostPid;
    };
    for (const e of [...this.udpRecovered]) {
      if (e.pid === a.pid && e.fd === a.fd && mayRelease(e.hostPid)) {
        this.forgetUdpClient(e);
        reports++;
      }
    }
    let n = 0;
    const mine = [...(this.byConn.get(conn) ?? [])];
    for (const reg of this.recovered) if (mayRelease(reg.hostPid)) mine.push(reg);
    for (const reg of mine) {
      if (reg.fd !== a.fd || reg.pid !== a.pid) continue;
      const g = this.groupOf.get(reg);
      if (g && (a.port === undefined || a.port === g.port)) {
        this.dropReg(reg);
        n++;
      }
    }
    if (n + reports > 0) this.changed(n > 0 ? 'ports' : 'reports');
    return { released: n, reports };
  }

  /**
   * The control connection closed: every registration made on it ends, and so do
   * its UDP client reports. Returns the number of registrations that ended.
   */
  connClosed(conn: Socket): number {
    const reports = this.dropUdpClients(conn, -1, -1);
    const regs = this.byConn.get(conn);
    let n = 0;
    for (const reg of [...(regs ?? [])]) {
      if (this.groupOf.has(reg)) n++;
      this.dropReg(reg);
    }
    this.byConn.delete(conn);
    if (n + reports > 0) this.changed(n > 0 ? 'ports' : 'reports');
    return n;
  }

  /**
   * End the recovered registrations and UDP reports whose process is gone
   * (exited, or its pid is another process now). Registrations with a control
   * connection are left to it: it closes when its last holder exits, which
   * may be a child that inherited it after the one that bound exited. The
   * daemon calls this every few seconds. Returns how many ended.
   */
  sweep(): number {
    const known = new Map<string, boolean>();
    const alive = (hostPid: number, start: string | null): boolean => {
      if (start === null) return false;
      const k = `${hostPid}/${start}`;
      let v = known.get(k);
      if (v === undefined) {
        v = this.sameProcess(hostPid, start);
        known.set(k, v);
      }
      return v;
    };
    let n = 0;
    for (const reg of [...this.recovered]) {
      if (alive(reg.hostPid, reg.start)) continue;
      this.dropReg(reg);
      n++;
    }
    for (const e of [...this.udpRecovered]) {
      if (alive(e.hostPid, e.start)) continue;
      this.forgetUdpClient(e);
      n++;
    }
    if (n > 0) this.changed('ports');
    return n;
  }

  private dropReg(reg: Registration): void {
    const g = this.groupOf.get(reg);
    this.groupOf.delete(reg);
    if (reg.conn === null) {
      this.recovered.delete(reg);
    } else {
      const regs = this.byConn.get(reg.conn);
      regs?.delete(reg);
      if (regs && regs.size === 0) this.byConn.delete(reg.conn);
    }
    if (!g) return;
    if (g.regs.delete(reg)) {
      if (reg.v4) g.n4--;
      if (reg.v6) g.n6--;
    }
    if (g.regs.size === 0) {
      if (g.port !== 0) this.endGroup(g);
      else if (g.pending === null) this.groups.delete(g.gkey);
    } else if (g.instance >= 0) {
      this.syncInstance(g);
    }
  }

  private endGroup(g: Group): void {
    this.groups.delete(g.gkey);
    if (g.instance >= 0) {
      this.instanceSet.removeRegistered(g.instance);
      g.instance = -1;
    }
    // A restored group's port may be outside this pool (another pool.range).
    if (g.port !== 0 && this.pool?.isInUse(g.port)) this.pool.release(g.port);
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
   * connection, kept until pushed out like a TCP one). A UDP report is part of
   * the snapshot (the change hooks run); a TCP one is not (RegistrySnapshot).
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
      const e: UdpClient = {
        ...entry,
        aidName: this.cfg.applications[aid]!.aid,
        fd: a.fd ?? -1,
        conn,
        ...this.who(conn, entry.pid),
        recovered: false,
      };
      this.addUdpClient(e);
      this.changed('reports');
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

  /** Add a UDP report in the place of any at its address and port, within the bound. */
  private addUdpClient(e: UdpClient): void {
    const old = this.udpClients.find(e.addr, e.port);
    if (old) this.forgetUdpClient(old);
    else if (this.udpClients.count(e.addr) >= MAX_LOCAL_CLIENTS) {
      const oldest = this.udpClients.oldest(e.addr);
      if (oldest !== undefined) this.forgetUdpClient(oldest);
    }
    this.udpClients.add(e);
    if (e.recovered) {
      this.udpRecovered.add(e);
    } else if (e.conn) {
      let set = this.udpByConn.get(e.conn);
      if (!set) {
        set = new Set();
        this.udpByConn.set(e.conn, set);
      }
      set.add(e);
    }
  }

  private forgetUdpClient(e: UdpClient): void {
    this.udpClients.remove(e);
    if (e.recovered) {
      this.udpRecovered.delete(e);
      return;
    }
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

  /**
   * What survives a restart (RegistrySnapshot): every group that has its port
   * (with its registrations), every UDP report, the pool, the next id. A group
   * still waiting for its port is not in it: nothing was answered for it.
   */
  snapshot(): RegistrySnapshot {
    const groups: GroupSnapshot[] = [];
    for (const g of this.groups.values()) {
      if (g.port === 0) continue;
      groups.push({
        aid: g.aidName,
        proto: g.proto,
        vport: g.vport,
        key: g.key,
        addr4: g.addr4 === -1 ? null : ipv4ToString(g.addr4),
        addr6: g.addr6 === null ? null : formatAddr(g.addr6),
        port: g.port,
        instance: g.instance,
        registrations: [...g.regs]
          .map((r) => ({
            id: r.id,
            pid: r.pid,
            hostPid: r.hostPid,
            start: r.start,
            fd: r.fd,
            v4: r.v4,
            v6: r.v6,
            since: r.since,
          }))
          .sort((x, y) => x.id - y.id),
      });
    }
    const udpReports: UdpReportSnapshot[] = [];
    for (const e of this.udpClients.values()) {
      udpReports.push({
        addr: typeof e.addr === 'number' ? ipv4ToString(e.addr) : formatAddr(e.addr),
        port: e.port,
        aid: e.aidName,
        pid: e.pid,
        hostPid: e.hostPid,
        start: e.start,
        fd: e.fd,
        remote: e.remote,
        at: e.at,
      });
    }
    return {
      nextId: this.nextId,
      groups,
      udpReports,
      pool: this.pool ? this.pool.snapshot() : null,
    };
  }

  /**
   * Take over the state of a previous daemon (its `snapshot()`, for this
   * configuration or another one) into this fresh registry, whose pool has
   * handed out nothing and whose instance set has this configuration's static
   * instances already. Recovered registrations have no control connection:
   * they end at the program's `release` (on whatever connection it comes) or
   * when `sweep` finds their process gone.
   *
   *   1. The pool comes back as it was (PortPool.restore): ports in use stay
   *      in use, the quarantine keeps its remaining time.
   *   2. Each registration stays if its process is the same (sameProcess of
   *      its hostPid and start time), else it is dropped (process_gone).
   *   3. Each group with a registration left comes back in service if this
   *      configuration has its AID (by name), its service (protocol, virtual
   *      port) and its address: its registered instance again, at its old
   *      index if that is free, serving the families its registrations accept
   *      that this configuration has. Otherwise (aid_gone, service_gone,
   *      address_gone, or a key another group took: conflict) it is retired:
   *      no instance, but its port stays in use while a registration's
   *      process lives (the program may still listen there). A group whose
   *      port another group holds already is dropped (conflict).
   *   4. Every port in use in the state that no group holds now goes back
   *      through quarantine; a held port that the state's pool had free or in
   *      quarantine is taken back out (it is in use).
   *   5. UDP reports stay if their AID exists and their process is the same.
   *
   * Runs the change hooks once. Returns what it did, with reasons.
   */
  restore(snap: RegistrySnapshot, opts: Pick<RegistryOptions, 'sameProcess'> = {}): RestoreReport {
    if (
      this.groups.size > 0 ||
      this.byConn.size > 0 ||
      this.recovered.size > 0 ||
      !this.udpClients.values().next().done
    ) {
      throw new Error('Registry.restore needs a fresh registry (no groups, no reports)');
    }
    const same = opts.sameProcess ?? this.sameProcess;
    const report: RestoreReport = {
      groups: [],
      droppedGroups: [],
      droppedRegistrations: [],
      udpReports: { restored: 0, dropped: [] },
      pool: snap.pool && this.pool ? this.pool.restore(snap.pool) : null,
      released: [],
    };
    const alive = (hostPid: number, start: string | null): boolean =>
      start !== null && Number.isInteger(hostPid) && hostPid > 0 && same(hostPid, start);
    const held = new Set<number>();
    for (const gs of snap.groups) {
      const where = { aid: gs.aid, proto: gs.proto, vport: gs.vport, port: gs.port };
      const dropRegs = (regs: RegistrationSnapshot[], reason: RestoreDropReason) => {
        for (const r of regs)
          report.droppedRegistrations.push({ ...where, pid: r.pid, fd: r.fd, reason });
      };
      if (!Number.isInteger(gs.port) || gs.port < 1 || gs.port > 65535 || held.has(gs.port)) {
        // Another group holds that port (or it is none): a damaged state.
        dropRegs(gs.registrations, 'conflict');
        report.droppedGroups.push({
          ...where,
          key: gs.key,
          reason: 'conflict',
          held: false,
          registrations: 0,
        });
        continue;
      }
      const live = gs.registrations.filter((r) => alive(r.hostPid, r.start));
      dropRegs(
        gs.registrations.filter((r) => !live.includes(r)),
        'process_gone',
      );
      if (live.length === 0) {
        report.droppedGroups.push({
          ...where,
          key: gs.key,
          reason: 'process_gone',
          held: false,
          registrations: 0,
        });
        continue;
      }
      // Can this configuration serve it?
      let reason: GroupDropReason | null = null;
      const aid = this.cfg.applications.findIndex((x) => x.aid === gs.aid);
      let target: BindTarget | null = null;
      if (aid < 0) reason = 'aid_gone';
      else if (!this.cfg.services.some((x) => x.protocol === gs.proto && x.port === gs.vport))
        reason = 'service_gone';
      else {
        try {
          // "::" is the dual-stack wildcard: the TUN's addresses of both families.
          target = resolveBindAddress(this.cfg, gs.key === 'tun' ? '::' : gs.key);
        } catch {
          reason = 'address_gone';
        }
      }
      // A retired group's key names its port, which no other group holds: nobody joins it.
      if (reason === null && this.groups.has(`${aid}/${gs.proto}/${gs.vport}/${target!.key}`))
        reason = 'conflict';
      const g: Group = {
        gkey:
          reason === null ? `${aid}/${gs.proto}/${gs.vport}/${target!.key}` : `retired/${gs.port}`,
        aid: reason === null ? aid : -1,
        aidName: gs.aid,
        key: reason === null ? target!.key : gs.key,
        proto: gs.proto,
        vport: gs.vport,
        addr4: target?.addr4 ?? -1,
        addr6: target?.addr6 ?? null,
        n4: 0,
        n6: 0,
        serves4: false,
        serves6: false,
        port: gs.port,
        pending: null,
        regs: new Set(),
        instance: -1,
        retired: reason,
      };
      if (reason !== null) {
        // Retired groups keep what the state said of their addresses, for the next restore.
        g.addr4 = gs.addr4 === null ? -1 : (parseIpv4(gs.addr4) ?? -1);
        g.addr6 = gs.addr6 === null ? null : parseIpv6(gs.addr6);
      }
      this.groups.set(g.gkey, g);
      for (const r of live) {
        this.addReg(g, {
          id: r.id,
          pid: r.pid,
          hostPid: r.hostPid,
          start: r.start,
          fd: r.fd,
          conn: null,
          since: r.since,
          v4: r.v4,
          v6: r.v6,
        });
        if (r.id >= this.nextId) this.nextId = r.id + 1;
      }
      held.add(g.port);
      const outsidePool = !(this.pool?.claim(g.port) ?? false);
      if (reason === null) {
        this.syncInstance(g, gs.instance >= 0 ? gs.instance : undefined);
        report.groups.push({
          aid: gs.aid,
          proto: gs.proto,
          vport: gs.vport,
          key: g.key,
          port: g.port,
          instance: g.instance,
          previousInstance: gs.instance,
          registrations: g.regs.size,
          outsidePool,
        });
      } else {
        report.droppedGroups.push({
          ...where,
          key: gs.key,
          reason,
          held: true,
          registrations: g.regs.size,
        });
      }
    }
    // Ports in use that no group holds now: back through quarantine.
    for (const port of snap.pool?.inUse ?? []) {
      if (held.has(port) || !this.pool?.isInUse(port)) continue;
      this.pool.release(port);
      report.released.push(port);
    }
    for (const u of snap.udpReports) {
      const drop = (reason: RestoreDropReason) =>
        report.udpReports.dropped.push({
          aid: u.aid,
          local: u.addr.includes(':') ? `[${u.addr}]:${u.port}` : `${u.addr}:${u.port}`,
          pid: u.pid,
          fd: u.fd,
          reason,
        });
      const a4 = parseIpv4(u.addr);
      const a6 = a4 === null ? parseIpv6(u.addr) : null;
      if ((a4 === null && a6 === null) || !Number.isInteger(u.port) || u.port < 1 || u.port > 65535)
        drop('invalid');
      else if (!alive(u.hostPid, u.start)) drop('process_gone');
      else {
        const aid = this.cfg.applications.findIndex((x) => x.aid === u.aid);
        const addr = localAddress(a4 ?? a6!);
        if (aid < 0) drop('aid_gone');
        else if (this.udpClients.find(addr, u.port) !== undefined) drop('conflict');
        else {
          this.addUdpClient({
            addr,
            port: u.port,
            aid,
            aidName: u.aid,
            pid: u.pid,
            remote: u.remote,
            at: u.at,
            fd: u.fd,
            conn: null,
            hostPid: u.hostPid,
            start: u.start,
            recovered: true,
          });
          report.udpReports.restored++;
        }
      }
    }
    if (Number.isInteger(snap.nextId) && snap.nextId > this.nextId) this.nextId = snap.nextId;
    this.changed('ports');
    return report;
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
        const recovered = regs.filter((r) => r.conn === null).length;
        out.push({
          aid: this.cfg.applications[g.aid]?.aid ?? `#${g.aid}`,
          proto: g.proto,
          vport: g.vport,
          address: formatAddr(address),
          port: g.port,
          pids: [...new Set(regs.map((r) => r.pid))].sort((x, y) => x - y),
          registrations: regs.length,
          ...(recovered > 0 ? { recovered } : {}),
          since: new Date(Math.min(...regs.map((r) => r.since))).toISOString(),
          source: 'registered',
        });
      }
    }
    return out;
  }
}
