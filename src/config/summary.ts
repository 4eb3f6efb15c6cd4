/**
 * Views of a resolved Config for people: the file form back (addresses as text,
 * every default written out), a short summary, and warnings about configs that
 * are valid but probably not what was meant (a selector that can never match, an
 * application nothing selects).
 */

import { formatAddr, formatEndpoint, formatIpv6, ipv4ToString } from '../wire/address.js';
import type {
  Cidr,
  Cidr6,
  Config,
  InstanceConfig,
  PortRange,
  SelectorConfig,
  ServiceConfig,
} from './types.js';

function cidrText(c: Cidr): string {
  return `${ipv4ToString(c.base)}/${c.prefix}`;
}

function cidr6Text(c: Cidr6): string {
  return `${formatIpv6(c.base)}/${c.prefix}`;
}

/** A selector's client networks as the file writes them (IPv4 first), or null for any client. */
function clientsText(s: SelectorConfig): string[] | null {
  if (s.clients === null && s.clients6 === null) return null;
  return [...(s.clients ?? []).map(cidrText), ...(s.clients6 ?? []).map(cidr6Text)];
}

/** A service's addresses, IPv4 first, RFC 5952 for IPv6. */
export function serviceAddresses(s: ServiceConfig): string[] {
  const out: string[] = [];
  if (s.address !== null) out.push(ipv4ToString(s.address));
  if (s.address6 !== null) out.push(formatIpv6(s.address6));
  return out;
}

/** Where an instance listens, one "ADDRESS:PORT" / "[IPv6]:PORT" per family it serves. */
export function instanceEndpoints(i: InstanceConfig): string[] {
  const out: string[] = [];
  if (i.address !== null) out.push(formatEndpoint(i.address, i.port));
  if (i.address6 !== null) out.push(formatEndpoint(i.address6, i.port));
  return out;
}

function portsText(r: PortRange): string {
  return r.lo === r.hi ? String(r.lo) : `${r.lo}-${r.hi}`;
}

/**
 * The config in file form with every default filled in. Parsing it again gives
 * an equal Config (tests hold it to that), so it is also the "effective config".
 */
export function configToJson(c: Config): Record<string, unknown> {
  return {
    tun: {
      name: c.tun.name,
      address: ipv4ToString(c.tun.address),
      localClientAddress: ipv4ToString(c.tun.localClientAddress),
      // Written only when IPv6 is on: giving them turns it on.
      ...(c.tun.ipv6
        ? {
            address6: formatIpv6(c.tun.address6),
            localClientAddress6: formatIpv6(c.tun.localClientAddress6),
          }
        : {}),
      mtu: c.tun.mtu,
      txQueueLen: c.tun.txQueueLen,
      batchSize: c.tun.batchSize,
      queues: c.tun.queuesSetting,
      routeTable: c.tun.routeTable,
      rulePriority: c.tun.rulePriority,
      offloads: c.tun.offloads,
      verifyChecksums: c.tun.verifyChecksums,
    },
    services: c.services.map((s) => ({
      name: s.name,
      address: serviceAddresses(s).length === 1 ? serviceAddresses(s)[0] : serviceAddresses(s),
      port: s.port,
      protocol: s.protocol,
      ...(s.peer === null ? {} : { peer: c.cooperative!.peers[s.peer]!.name }),
    })),
    applications: c.applications.map((a) => ({
      aid: a.aid,
      executables: [...a.executables],
      ...(a.users === null ? {} : { users: [...a.users] }),
      instances: a.instances.map((i) => ({
        // Both families is what no address says (the TUN's two addresses).
        ...(i.address !== null && i.address6 !== null
          ? {}
          : { address: formatAddr((i.address ?? i.address6)!) }),
        port: i.port,
        ...(i.serviceIndex === null ? {} : { service: c.services[i.serviceIndex]!.name }),
      })),
    })),
    selectors: c.selectors.map((s) => {
      const o: Record<string, unknown> = {};
      if (s.service !== null) o.service = s.service;
      const clients = clientsText(s);
      if (clients !== null) o.clients = clients;
      if (s.clientPorts !== null) o.clientPorts = portsText(s.clientPorts);
      o.aid = s.aid;
      return o;
    }),
    default: c.default.refuse ? { refuse: true } : { aid: c.default.aid },
    pool:
      c.pool === null
        ? null
        : {
            range: `${c.pool.range.lo}-${c.pool.range.hi}`,
            quarantineMs: c.pool.quarantineMs,
            waitTimeoutMs: c.pool.waitTimeoutMs,
          },
    cooperative:
      c.cooperative === null
        ? null
        : {
            name: c.cooperative.name,
            listen:
              c.cooperative.listen === null
                ? null
                : formatEndpoint(c.cooperative.listen.address, c.cooperative.listen.port),
            portRange: `${c.cooperative.portRange.lo}-${c.cooperative.portRange.hi}`,
            timeoutMs: c.cooperative.timeoutMs,
            peers: c.cooperative.peers.map((p) => ({
              name: p.name,
              ...(p.address === null ? {} : { address: formatAddr(p.address) }),
              port: p.port,
              // The deprecated single key is written as it was given.
              ...(p.keys.length === 1 && p.keys[0]!.id === 'default'
                ? { key: p.key }
                : { keys: p.keys.map((k) => ({ id: k.id, key: k.key })) }),
            })),
          },
    limits: { ...c.limits },
    health: { ...c.health },
    timeouts: { ...c.timeouts },
    control: {
      socket: c.control.socket,
      ...(c.control.group === null ? {} : { group: c.control.group }),
      ...(c.control.monitorGroup === null ? {} : { monitorGroup: c.control.monitorGroup }),
    },
    metrics: {
      listen:
        c.metrics.listen === null
          ? null
          : formatEndpoint(c.metrics.listen.address, c.metrics.listen.port),
    },
    log: { level: c.log.level },
  };
}

/** One line describing what a selector matches and where it sends it. */
export function describeSelector(s: SelectorConfig): string {
  const parts = [
    s.service === null ? 'any service' : `service ${s.service}`,
    clientsText(s) === null ? 'any client' : `clients ${clientsText(s)!.join(' ')}`,
  ];
  if (s.clientPorts !== null) parts.push(`client ports ${portsText(s.clientPorts)}`);
  return `${parts.join(', ')} -> ${s.aid}`;
}

/** The short human summary `vpm check-config` prints (without the "ok" line). */
export function summarizeConfig(c: Config): string[] {
  const out: string[] = [];
  const v6 = c.tun.ipv6
    ? `; IPv6: address ${formatIpv6(c.tun.address6)}, local clients as ${formatIpv6(c.tun.localClientAddress6)}`
    : '';
  out.push(
    `tun ${c.tun.name}: address ${ipv4ToString(c.tun.address)}, local clients as ${ipv4ToString(c.tun.localClientAddress)}${v6}, mtu ${c.tun.mtu}`,
  );
  out.push(`services (${c.services.length}):`);
  for (const s of c.services)
    out.push(`  ${s.name}  ${serviceAddresses(s).join(' ')} ${s.protocol}/${s.port}`);
  out.push(`applications (${c.applications.length}):`);
  for (const a of c.applications) {
    const inst =
      a.instances.length === 0
        ? '(no live instance)'
        : a.instances.flatMap(instanceEndpoints).join(' ');
    out.push(`  ${a.aid}  ${inst}`);
  }
  out.push(`selectors (${c.selectors.length}, first match wins):`);
  for (const s of c.selectors) out.push(`  ${s.index + 1}. ${describeSelector(s)}`);
  out.push(
    `default: ${c.default.refuse ? 'refuse (answer as a closed port: RST, ICMP port unreachable)' : `-> ${c.default.aid}`}`,
  );
  return out;
}

/** Does selector `a` match every connection `b` matches? (Sufficient, not necessary.) */
function covers(a: SelectorConfig, b: SelectorConfig): boolean {
  if (a.serviceIndex !== null && a.serviceIndex !== b.serviceIndex) return false;
  if (a.clients !== null) {
    if (b.clients === null) return false;
    const inside = (n: Cidr) =>
      a.clients!.some((m) => m.prefix <= n.prefix && (n.base & m.mask) >>> 0 === m.base);
    if (!b.clients.every(inside)) return false;
  }
  if (a.clients6 !== null) {
    if (b.clients6 === null) return false;
    const top = (x: bigint, p: number) => (p === 0 ? 0n : x >> BigInt(128 - p));
    const inside = (n: Cidr6) =>
      a.clients6!.some(
        (m) => m.prefix <= n.prefix && top(n.base, m.prefix) === top(m.base, m.prefix),
      );
    if (!b.clients6.every(inside)) return false;
  }
  if (a.clientPorts !== null) {
    if (b.clientPorts === null) return false;
    if (a.clientPorts.lo > b.clientPorts.lo || a.clientPorts.hi < b.clientPorts.hi) return false;
  }
  return true;
}

/** RFC 4787 REQ-5: a UDP mapping does not expire in less than 2 minutes. */
const RFC4787_MIN_MS = 120_000;

/** Things that are valid but probably mistakes. */
export function configWarnings(c: Config): string[] {
  const out: string[] = [...c.deprecated];
  for (const b of c.selectors) {
    const a = c.selectors.find((x) => x.index < b.index && covers(x, b));
    if (a !== undefined)
      out.push(
        `selectors[${b.index}] can never match: selectors[${a.index}] (${describeSelector(a)}) matches everything it does`,
      );
  }
  if (c.services.some((s) => s.protocol === 'udp') && c.timeouts.udpAssuredMs < RFC4787_MIN_MS)
    out.push(
      `timeouts.udpAssuredMs ${c.timeouts.udpAssuredMs} is below ${RFC4787_MIN_MS}, the least RFC 4787 (REQ-5) allows a UDP mapping: a UDP flow idle longer than that loses its translation, and a client behind vpm that sends keep-alives every 2 minutes loses its server`,
    );
  out.push(...applicationWarnings(c));
  return out;
}

/**
 * What is wrong with the applications, in the modes the config runs in. An AID
 * is named by a selector or the default; by its executables (a local client's
 * socket owner); on a cooperative server side (`cooperative.listen`), by the
 * peers' negotiations, which are offered the AIDs that serve the service; on a
 * cooperative client side (a service with a `peer`), by the local clients that
 * report it (`vpm exec --aid`, the bind/connect library). Only an AID none of
 * these can name is warned about. An instance is needed only where a connection
 * selected for the AID goes to a service served here (a peer's service is
 * served by the peer); with a pool, instances come from `vpm exec` by design.
 */
function applicationWarnings(c: Config): string[] {
  const out: string[] = [];
  const local = (i: number | null) =>
    i === null ? c.services.some((s) => s.peer === null) : c.services[i]!.peer === null;
  const named = new Set<number>();
  /** AIDs that selectors or the default send connections to a local service to. */
  const servedHere = new Set<number>();
  for (const s of c.selectors) {
    named.add(s.aidIndex);
    if (local(s.serviceIndex)) servedHere.add(s.aidIndex);
  }
  if (!c.default.refuse) {
    named.add(c.default.aidIndex);
    if (local(null)) servedHere.add(c.default.aidIndex);
  }
  const serverSide = c.cooperative?.listen != null && local(null);
  const clientSide = c.services.some((s) => s.peer !== null);
  for (const a of c.applications) {
    const negotiated = serverSide && (a.instances.length > 0 || c.pool !== null);
    if (!named.has(a.index) && a.executables.length === 0 && !negotiated && !clientSide) {
      const why =
        a.instances.length === 0 && c.pool === null
          ? `${serverSide ? ', nor offered to peers' : ''}, and it has no instance and there is no pool: no connection ever reaches it`
          : `: only a local client run with vpm exec --aid ${a.aid} reaches it`;
      out.push(
        `applications[${a.index}] (${a.aid}) is not named by any selector or the default${why}`,
      );
    } else if (servedHere.has(a.index) && a.instances.length === 0 && c.pool === null)
      out.push(
        `applications[${a.index}] (${a.aid}) has no instance and there is no pool: connections selected for it are refused`,
      );
  }
  return out;
}
