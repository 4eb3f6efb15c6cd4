/**
 * The checks on meaning: what the schema cannot say about a config file, and
 * the resolution into the frozen `Config` the daemon runs on.
 *
 * The input has passed the schema (schema.ts), defaults included, so its shape
 * is `RawConfig`; only its meaning is in doubt: addresses and CIDRs that really
 * parse (ip-num parses and checks them; the data plane gets u32 numbers), no host
 * bits beyond a prefix, references that name existing entries, no duplicates, no
 * port or address collisions. Every problem is
 * collected, each naming the field path and the bad value, so one run names
 * every mistake.
 */

import { IPv4, IPv4CidrRange, IPv4Prefix, Validator } from 'ip-num';
import { defaultControlSocket } from '../base/netns.js';
import type { ConfigProblem } from './errors.js';
import type { RawConfig } from './schema.js';
import type {
  ApplicationConfig,
  Cidr,
  Config,
  CooperativeConfig,
  DefaultConfig,
  InstanceConfig,
  PeerConfig,
  PeerKey,
  PoolConfig,
  PortRange,
  SelectorConfig,
  ServiceConfig,
} from './types.js';
import { formatPath, type PathSegment, showValue } from './validator.js';

/** The dotted quad `s` parsed and checked by ip-num, or null if it is not one. */
function parseAddress(s: string): IPv4 | null {
  return Validator.isValidIPv4String(s)[0] ? IPv4.fromString(s) : null;
}

/** The data plane's form of an address: an unsigned 32-bit number. */
function u32(a: IPv4): number {
  return Number(a.getValue());
}

const LOOPBACK = IPv4CidrRange.fromCidr('127.0.0.0/8');

/** Ranges that can never be a service, TUN or instance address, with why. */
const UNUSABLE: readonly { range: IPv4CidrRange; text: string }[] = [
  { range: IPv4CidrRange.fromCidr('0.0.0.0/8'), text: 'in 0.0.0.0/8 ("this network")' },
  { range: LOOPBACK, text: 'a loopback address (127.0.0.0/8)' },
  { range: IPv4CidrRange.fromCidr('224.0.0.0/4'), text: 'a multicast address (224.0.0.0/4)' },
  { range: IPv4CidrRange.fromCidr('240.0.0.0/4'), text: 'reserved or broadcast (240.0.0.0/4)' },
];

const RESERVED_TABLES: Record<number, string> = {
  253: "the kernel's default table",
  254: "the kernel's main table",
  255: "the kernel's local table",
};

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

function listNames(names: readonly string[]): string {
  const shown = names.slice(0, 10).map((n) => JSON.stringify(n));
  return shown.join(', ') + (names.length > 10 ? ', ...' : '');
}

/**
 * Checks the meaning of a config that passed the schema (defaults filled in) and
 * resolves it; `problems` lists everything wrong, and the returned Config is only
 * meaningful without problems. Not frozen yet. `given` is the value as it was
 * before the defaults, for the few checks that must know what the file itself
 * says (a deprecated field beside its new name).
 */
export function resolveConfig(
  raw: RawConfig,
  source: string,
  given: unknown = raw,
): { config: Config; problems: readonly ConfigProblem[] } {
  const checker = new Checker(raw, given);
  const config = checker.resolve(source);
  return { config, problems: checker.problems };
}

class Checker {
  readonly problems: ConfigProblem[] = [];

  constructor(
    private readonly raw: RawConfig,
    private readonly given: unknown,
  ) {}

  /** Whether the file itself (not a default) sets tun.<key>. */
  private givenTun(key: string): boolean {
    const tun = (this.given as { tun?: unknown } | null)?.tun;
    return typeof tun === 'object' && tun !== null && Object.hasOwn(tun, key);
  }

  private bad(path: readonly PathSegment[], value: unknown, message: string): void {
    this.problems.push({ path: formatPath(path), value, message });
  }

  /** limits.embryonicFlows resolved: null is a quarter of maxFlows (at least 1); more than maxFlows is a problem. */
  private embryonicFlows(maxFlows: number, given: number | null): number {
    if (given === null) return Math.max(1, Math.floor(maxFlows / 4));
    if (given > maxFlows) {
      this.bad(
        ['limits', 'embryonicFlows'],
        given,
        `${given} is more than limits.maxFlows (${maxFlows}): embryonic flows are a share of the table`,
      );
    }
    return given;
  }

  /** A unicast address usable for a service, the TUN or an instance; 0 if it does not parse. */
  private address(path: readonly PathSegment[], s: string, role: string): number {
    const a = parseAddress(s);
    if (a === null) {
      this.bad(
        path,
        s,
        `${showValue(s)} is not a valid IPv4 address (four numbers 0-255, no leading zeros)`,
      );
      return 0;
    }
    for (const u of UNUSABLE) {
      if (u.range.contains(a)) {
        this.bad(path, s, `${showValue(s)} is ${u.text} and cannot be ${role}`);
        break;
      }
    }
    return u32(a);
  }

  private cidr(path: readonly PathSegment[], s: string): Cidr {
    const none: Cidr = { base: 0, mask: 0, prefix: 0 };
    const slash = s.indexOf('/');
    const addrText = s.slice(0, slash);
    const prefixText = s.slice(slash + 1);
    const a = parseAddress(addrText);
    if (a === null) {
      this.bad(path, s, `${showValue(s)} is not a valid CIDR: ${addrText} is not an IPv4 address`);
      return none;
    }
    // ip-num reads "/08" as 8; the canonical form has no leading zero.
    let prefix: IPv4Prefix | null = null;
    if (/^(0|[1-9][0-9]?)$/.test(prefixText)) {
      try {
        prefix = IPv4Prefix.fromNumber(BigInt(prefixText));
      } catch {
        // above 32
      }
    }
    if (prefix === null) {
      this.bad(path, s, `${showValue(s)} is not a valid CIDR: the prefix length must be 0-32`);
      return none;
    }
    const range = new IPv4CidrRange(a, prefix);
    const bits = Number(prefix.getValue());
    const network = range.getFirst();
    if (!network.isEquals(a)) {
      this.bad(
        path,
        s,
        `${showValue(s)} has host bits set beyond the /${bits} prefix (the network is ${network.toString()}/${bits})`,
      );
    }
    return { base: u32(network), mask: u32(prefix.toMask()), prefix: bits };
  }

  private portRange(path: readonly PathSegment[], s: string): PortRange {
    const [loText, hiText = loText] = s.split('-') as [string, string?];
    const lo = Number(loText);
    const hi = Number(hiText);
    for (const p of [lo, hi]) {
      if (p > 65535) {
        this.bad(path, s, `${showValue(s)}: port ${p} is above the maximum 65535`);
        return { lo: 0, hi: 0 };
      }
    }
    if (lo > hi)
      this.bad(path, s, `${showValue(s)}: the low end ${lo} is above the high end ${hi}`);
    return { lo, hi };
  }

  resolve(source: string): Config {
    const raw = this.raw;

    // The TUN device.
    const t = raw.tun;
    const tunAddress = this.address(['tun', 'address'], t.address, 'the TUN address');
    const localClient = this.address(
      ['tun', 'localClientAddress'],
      t.localClientAddress,
      'the local client address',
    );
    if (tunAddress === localClient && tunAddress !== 0)
      this.bad(
        ['tun', 'localClientAddress'],
        t.localClientAddress,
        `${showValue(t.localClientAddress)} is also tun.address; the local client address must be a different, unassigned address`,
      );
    const reserved = RESERVED_TABLES[t.routeTable];
    if (reserved !== undefined)
      this.bad(
        ['tun', 'routeTable'],
        t.routeTable,
        `${t.routeTable} is ${reserved}; choose another table (e.g. 100)`,
      );
    // The old name of verifyChecksums is still taken; both at once must agree.
    const deprecated: string[] = [];
    let verifyChecksums = t.verifyChecksums;
    if (t.verifyTcpChecksum !== undefined) {
      const given = this.givenTun('verifyChecksums');
      if (given && t.verifyTcpChecksum !== t.verifyChecksums)
        this.bad(
          ['tun', 'verifyTcpChecksum'],
          t.verifyTcpChecksum,
          `${showValue(t.verifyTcpChecksum)} contradicts tun.verifyChecksums ${showValue(t.verifyChecksums)}; verifyTcpChecksum is the deprecated name of verifyChecksums: keep only that`,
        );
      verifyChecksums = t.verifyTcpChecksum;
      deprecated.push(
        'tun.verifyTcpChecksum is deprecated: it is now tun.verifyChecksums (which also covers UDP and ICMP)',
      );
    }

    // Cooperative peers (services refer to them).
    const peerByName = new Map<string, number>();
    let cooperative: CooperativeConfig | null = null;
    if (raw.cooperative !== null) {
      const co = raw.cooperative;
      const peers: PeerConfig[] = co.peers.map((pe, i) => {
        const prev = peerByName.get(pe.name);
        if (prev !== undefined)
          this.bad(
            ['cooperative', 'peers', i, 'name'],
            pe.name,
            `${showValue(pe.name)} is already cooperative.peers[${prev}]`,
          );
        else peerByName.set(pe.name, i);
        const address =
          pe.address === undefined
            ? null
            : this.address(['cooperative', 'peers', i, 'address'], pe.address, 'a peer address');
        let keys: PeerKey[] = [];
        if (pe.keys !== undefined && pe.key !== undefined)
          this.bad(
            ['cooperative', 'peers', i, 'key'],
            pe.key,
            'give either keys or the deprecated key, not both',
          );
        else if (pe.keys !== undefined) {
          const seen = new Set<string>();
          keys = pe.keys.map((k, j) => {
            if (seen.has(k.id))
              this.bad(
                ['cooperative', 'peers', i, 'keys', j, 'id'],
                k.id,
                `${showValue(k.id)} is already a key id of peer ${showValue(pe.name)}`,
              );
            seen.add(k.id);
            return { id: k.id, key: k.key.toLowerCase() };
          });
        } else if (pe.key !== undefined) {
          keys = [{ id: 'default', key: pe.key.toLowerCase() }];
          deprecated.push(
            `cooperative.peers[${i}].key is deprecated: write keys: [{"id": "default", "key": ...}] (several keys allow a rollover)`,
          );
        } else
          this.bad(
            ['cooperative', 'peers', i],
            pe.name,
            `peer ${showValue(pe.name)} has no key: give keys: [{"id": ..., "key": ...}]`,
          );
        return { name: pe.name, address, port: pe.port, key: keys[0]?.key ?? '', keys };
      });
      let listen: CooperativeConfig['listen'] = null;
      if (co.listen !== null) {
        const colon = co.listen.lastIndexOf(':');
        const a = parseAddress(co.listen.slice(0, colon));
        const port = Number(co.listen.slice(colon + 1));
        if (a === null)
          this.bad(
            ['cooperative', 'listen'],
            co.listen,
            `${showValue(co.listen)}: ${co.listen.slice(0, colon)} is not a valid IPv4 address`,
          );
        if (!(port >= 1 && port <= 65535))
          this.bad(
            ['cooperative', 'listen'],
            co.listen,
            `${showValue(co.listen)}: port ${port} is out of range 1-65535`,
          );
        listen = { address: a === null ? 0 : u32(a), port };
      }
      const portRange = this.portRange(['cooperative', 'portRange'], co.portRange);
      if (portRange.lo < 1)
        this.bad(
          ['cooperative', 'portRange'],
          co.portRange,
          `${showValue(co.portRange)}: port 0 cannot be handed out`,
        );
      cooperative = { name: co.name, listen, portRange, timeoutMs: co.timeoutMs, peers };
    }

    // Services.
    const services: ServiceConfig[] = [];
    const serviceByName = new Map<string, number>();
    const serviceByEndpoint = new Map<string, number>();
    const servicePorts = new Map<number, number>();
    raw.services.forEach((s, i) => {
      const at = (k: string) => ['services', i, k];
      const prev = serviceByName.get(s.name);
      if (prev !== undefined)
        this.bad(
          at('name'),
          s.name,
          `${showValue(s.name)} is already the name of services[${prev}]`,
        );
      else serviceByName.set(s.name, i);
      const vip = this.address(at('address'), s.address, 'a service address');
      if (vip !== 0 && vip === tunAddress)
        this.bad(
          at('address'),
          s.address,
          `${showValue(s.address)} is tun.address; a service address must be a different address routed to the TUN`,
        );
      else if (vip !== 0 && vip === localClient)
        this.bad(
          at('address'),
          s.address,
          `${showValue(s.address)} is tun.localClientAddress; a service address must be a different address`,
        );
      const endpoint = `${vip}/${s.protocol}/${s.port}`;
      const same = serviceByEndpoint.get(endpoint);
      if (same !== undefined)
        this.bad(
          at('port'),
          s.port,
          `${s.address} ${s.protocol}/${s.port} is already services[${same}] (${JSON.stringify(raw.services[same]!.name)})`,
        );
      else serviceByEndpoint.set(endpoint, i);
      if (!servicePorts.has(s.port)) servicePorts.set(s.port, i);
      let peer: number | null = null;
      if (s.peer !== undefined) {
        peer = peerByName.get(s.peer) ?? null;
        if (peer === null)
          this.bad(
            at('peer'),
            s.peer,
            raw.cooperative === null
              ? `${showValue(s.peer)}: there is no cooperative section with peers`
              : `${showValue(s.peer)} is not a peer (known: ${listNames([...peerByName.keys()])})`,
          );
        else if (raw.cooperative!.peers[peer]!.address === undefined)
          this.bad(
            at('peer'),
            s.peer,
            `peer ${showValue(s.peer)} has no address, so this daemon cannot negotiate with it`,
          );
      }
      if (cooperative && s.port >= cooperative.portRange.lo && s.port <= cooperative.portRange.hi)
        this.bad(
          at('port'),
          s.port,
          `${s.port} lies in cooperative.portRange ${raw.cooperative!.portRange}; a service port must be outside it`,
        );
      services.push({
        index: i,
        name: s.name,
        address: vip,
        port: s.port,
        protocol: s.protocol,
        peer,
      });
    });
    const vips = new Map<number, number>();
    services.forEach((s, i) => {
      if (!vips.has(s.address)) vips.set(s.address, i);
    });

    // The port pool.
    let pool: PoolConfig | null = null;
    if (raw.pool !== null) {
      const range = this.portRange(['pool', 'range'], raw.pool.range);
      if (range.lo < 1)
        this.bad(
          ['pool', 'range'],
          raw.pool.range,
          `${showValue(raw.pool.range)}: port 0 cannot be handed out`,
        );
      for (const [port, i] of servicePorts) {
        if (port >= range.lo && port <= range.hi)
          this.bad(
            ['pool', 'range'],
            raw.pool.range,
            `${showValue(raw.pool.range)} contains ${port}, the port of service ${JSON.stringify(raw.services[i]!.name)}`,
          );
      }
      pool = { range, quarantineMs: raw.pool.quarantineMs, waitTimeoutMs: raw.pool.waitTimeoutMs };
    }

    // Applications and their instances.
    const applications: ApplicationConfig[] = [];
    const appByAid = new Map<string, number>();
    const instanceByPort = new Map<number, string>();
    raw.applications.forEach((app, i) => {
      const prev = appByAid.get(app.aid);
      if (prev !== undefined)
        this.bad(
          ['applications', i, 'aid'],
          app.aid,
          `${showValue(app.aid)} is already applications[${prev}]`,
        );
      else appByAid.set(app.aid, i);
      const instances: InstanceConfig[] = app.instances.map((inst, j) => {
        const at = (k: string) => ['applications', i, 'instances', j, k];
        let address = tunAddress;
        if (inst.address !== undefined) {
          address = this.address(at('address'), inst.address, 'an instance address');
          const vip = vips.get(address);
          if (address !== 0 && vip !== undefined)
            this.bad(
              at('address'),
              inst.address,
              `${showValue(inst.address)} is the address of service ${JSON.stringify(raw.services[vip]!.name)}, which is routed to the TUN; an instance must listen on a local address`,
            );
          else if (address !== 0 && address === localClient)
            this.bad(
              at('address'),
              inst.address,
              `${showValue(inst.address)} is tun.localClientAddress, which is never assigned; an instance must listen on a local address`,
            );
        }
        const owner = instanceByPort.get(inst.port);
        if (owner !== undefined)
          this.bad(
            at('port'),
            inst.port,
            `${inst.port} is already used by ${owner}; instance ports must be unique (replies are steered back by source port alone)`,
          );
        else
          instanceByPort.set(
            inst.port,
            `applications[${i}].instances[${j}] (${JSON.stringify(app.aid)})`,
          );
        const svc = servicePorts.get(inst.port);
        if (svc !== undefined)
          this.bad(
            at('port'),
            inst.port,
            `${inst.port} is the port of service ${JSON.stringify(raw.services[svc]!.name)}; an instance port must differ from every service port (replies from instance ports are steered into the TUN)`,
          );
        if (pool !== null && inst.port >= pool.range.lo && inst.port <= pool.range.hi)
          this.bad(
            at('port'),
            inst.port,
            `${inst.port} lies in pool.range ${raw.pool!.range}; a static instance port must be outside the pool`,
          );
        let serviceIndex: number | null = null;
        if (inst.service !== undefined) {
          serviceIndex = serviceByName.get(inst.service) ?? null;
          if (serviceIndex === null)
            this.bad(
              at('service'),
              inst.service,
              `${showValue(inst.service)} is not a service (known: ${listNames([...serviceByName.keys()])})`,
            );
        }
        return { address, port: inst.port, serviceIndex };
      });
      applications.push({
        index: i,
        aid: app.aid,
        instances,
        executables: [...app.executables],
        users: app.users === undefined ? null : [...app.users],
      });
    });
    const aids = [...appByAid.keys()];

    // Selectors, in order.
    const selectors: SelectorConfig[] = raw.selectors.map((sel, i) => {
      let serviceIndex: number | null = null;
      if (sel.service !== undefined) {
        serviceIndex = serviceByName.get(sel.service) ?? null;
        if (serviceIndex === null)
          this.bad(
            ['selectors', i, 'service'],
            sel.service,
            `${showValue(sel.service)} is not a service (known: ${listNames([...serviceByName.keys()])})`,
          );
      }
      const clients =
        sel.clients?.map((c, j) => this.cidr(['selectors', i, 'clients', j], c)) ?? null;
      const clientPorts =
        sel.clientPorts === undefined
          ? null
          : this.portRange(['selectors', i, 'clientPorts'], sel.clientPorts);
      const aidIndex = appByAid.get(sel.aid);
      if (aidIndex === undefined)
        this.bad(
          ['selectors', i, 'aid'],
          sel.aid,
          `${showValue(sel.aid)} is not an application (known: ${listNames(aids)})`,
        );
      return {
        index: i,
        service: sel.service ?? null,
        serviceIndex,
        clients,
        clientPorts,
        aid: sel.aid,
        aidIndex: aidIndex ?? -1,
      };
    });

    // The default.
    let dflt: DefaultConfig = { refuse: true };
    if ('aid' in raw.default) {
      const aid = raw.default.aid;
      const aidIndex = appByAid.get(aid);
      if (aidIndex === undefined)
        this.bad(
          ['default', 'aid'],
          aid,
          `${showValue(aid)} is not an application (known: ${listNames(aids)})`,
        );
      dflt = { refuse: false, aid, aidIndex: aidIndex ?? -1 };
    }

    // Control socket and metrics.
    // Unique per network namespace (base/netns.ts): the CLI computes the same.
    const socket = raw.control.socket ?? defaultControlSocket(t.name);
    const socketBytes = Buffer.byteLength(socket);
    if (socketBytes > MAX_SOCKET_PATH_BYTES)
      this.bad(
        ['control', 'socket'],
        socket,
        `${showValue(socket)} is ${socketBytes} bytes long; a unix socket path has at most ${MAX_SOCKET_PATH_BYTES}`,
      );
    if (socket.endsWith('/'))
      this.bad(
        ['control', 'socket'],
        socket,
        `${showValue(socket)} names a directory, expected a socket file path`,
      );

    let listen: Config['metrics']['listen'] = null;
    if (raw.metrics.listen !== null) {
      const text = raw.metrics.listen;
      const colon = text.lastIndexOf(':');
      const a = parseAddress(text.slice(0, colon));
      const port = Number(text.slice(colon + 1));
      if (a === null)
        this.bad(
          ['metrics', 'listen'],
          text,
          `${showValue(text)}: ${text.slice(0, colon)} is not a valid IPv4 address`,
        );
      else if (!LOOPBACK.contains(a))
        this.bad(
          ['metrics', 'listen'],
          text,
          `${showValue(text)} is not a loopback address; metrics are served on 127.0.0.0/8 only`,
        );
      if (port < 1 || port > 65535)
        this.bad(
          ['metrics', 'listen'],
          text,
          `${showValue(text)}: port ${port} is out of range 1-65535`,
        );
      listen = { address: a === null ? 0 : u32(a), port };
    }

    return {
      source,
      tun: {
        name: t.name,
        address: tunAddress,
        localClientAddress: localClient,
        mtu: t.mtu,
        txQueueLen: t.txQueueLen,
        batchSize: t.batchSize,
        routeTable: t.routeTable,
        rulePriority: t.rulePriority,
        offloads: t.offloads,
        verifyChecksums,
      },
      deprecated,
      services,
      applications,
      selectors,
      default: dflt,
      pool,
      cooperative,
      limits: {
        maxFlows: raw.limits.maxFlows,
        embryonicFlows: this.embryonicFlows(raw.limits.maxFlows, raw.limits.embryonicFlows),
        heldFragments: raw.limits.heldFragments,
        heldFragmentBytes: raw.limits.heldFragmentBytes,
        icmpPerSecond: raw.limits.icmpPerSecond,
      },
      health: { downMs: raw.health.downMs, synCopies: raw.health.synCopies },
      timeouts: {
        embryonicMs: raw.timeouts.embryonicMs,
        establishedIdleMs: raw.timeouts.establishedIdleMs,
        closingMs: raw.timeouts.closingMs,
        timeWaitMs: raw.timeouts.timeWaitMs,
        udpUnrepliedMs: raw.timeouts.udpUnrepliedMs,
        udpAssuredMs: raw.timeouts.udpAssuredMs,
        fragmentMs: raw.timeouts.fragmentMs,
      },
      control: {
        socket,
        group: raw.control.group ?? null,
        monitorGroup: raw.control.monitorGroup ?? null,
      },
      metrics: { listen },
      log: { level: raw.log.level },
    };
  }
}
