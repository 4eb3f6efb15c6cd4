/**
 * The configuration (the seed's "configurator", FIG. 9): one JSON file that says
 * which virtual services exist, which applications (AIDs) serve them through which
 * real ports, and which selectors send a new connection to which AID.
 *
 * Theory of operation: the file goes through four steps, once, at start-up.
 *  1. parse: strict JSON with line and column on error (json.ts);
 *  2. structure: the published schema, docs/config.schema.json, interpreted by
 *     schema-validate.ts, which also fills in the schema's defaults;
 *  3. meaning: what a schema cannot say (addresses and CIDRs that really parse,
 *     no host bits, references that name existing entries, no duplicates, no
 *     port or address collisions, "udp" not supported yet);
 *  4. resolution: one deeply frozen `Config` with numeric forms ready for the
 *     data plane (addresses as u32, CIDRs as base/mask, port ranges as lo/hi,
 *     AIDs and services by index).
 * Every step collects all of its problems before failing, so one run names every
 * mistake; step 3 runs only when the structure is right, because its checks rely
 * on it. Failures are `ConfigError`s (exit code 2) that name the file, the field
 * and the bad value. Nothing here trusts the file: it may come from anyone who can
 * write it, and it decides where connections go.
 */

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { IPv4CidrRange } from 'ip-num';
import { packageRoot } from '../native/index.js';
import { ipv4ToString, parseIpv4 } from '../wire/address.js';
import { JsonSyntaxError, parseJson } from './json.js';
import {
  type CompiledSchema,
  compileSchema,
  formatPath,
  type PathSegment,
  type SchemaProblem,
  showValue,
} from './schema-validate.js';

// ---------------------------------------------------------------------------
// The resolved configuration. Defaults are those of docs/config.schema.json.

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** An IPv4 network: `(addr & mask) >>> 0 === base`. */
export interface Cidr {
  /** Network address, u32, host bits zero. */
  readonly base: number;
  /** Netmask, u32 (0 for /0, 0xffffffff for /32). */
  readonly mask: number;
  /** Prefix length, 0-32. */
  readonly prefix: number;
}

/** Inclusive port range; a single port has lo === hi. */
export interface PortRange {
  readonly lo: number;
  readonly hi: number;
}

export interface TunConfig {
  /** Interface name. Default "vpm0". */
  readonly name: string;
  /** Address assigned to the TUN device (u32); instances listen here by default. Default 198.19.255.1. */
  readonly address: number;
  /** Address local clients are translated to (u32); routed to the TUN, never assigned. Default 198.19.255.2. */
  readonly localClientAddress: number;
  /** Default 1500. */
  readonly mtu: number;
  /** Transmit queue length in packets. Default 10000. */
  readonly txQueueLen: number;
  /** Packets per native read/write call. Default 64. */
  readonly batchSize: number;
  /** Policy routing table for instance replies. Default 100. */
  readonly routeTable: number;
  /** Priority of vpm's `ip rule` entries. Default 100. */
  readonly rulePriority: number;
  /** Verify every TCP checksum (drop bad ones). Default true. */
  readonly verifyTcpChecksum: boolean;
}

export interface ServiceConfig {
  /** Position in `services`. */
  readonly index: number;
  readonly name: string;
  /** The virtual service address (VIP), u32. */
  readonly address: number;
  readonly port: number;
  /** Default "tcp" (the only one supported yet). */
  readonly protocol: 'tcp';
  /** Cooperative client side: index into cooperative.peers of the peer serving it, or null. */
  readonly peer: number | null;
}

export interface InstanceConfig {
  /** Local address the instance listens on, u32. Default tun.address. */
  readonly address: number;
  /** The real port. */
  readonly port: number;
  /** Index into `services` of the one service it serves, or null for every service. */
  readonly serviceIndex: number | null;
}

/** The port pool for instances registered at run time (`vpm exec`). */
export interface PoolConfig {
  readonly range: PortRange;
  /** A released port stays out of use this long. Default 2000. */
  readonly quarantineMs: number;
  /** A request waits this long for a free port before it fails. Default 5000. */
  readonly waitTimeoutMs: number;
}

export interface ApplicationConfig {
  /** Position in `applications`: the AID's number on the data plane. */
  readonly index: number;
  readonly aid: string;
  /** Empty: no live instance. Default []. */
  readonly instances: readonly InstanceConfig[];
  /** Programs (absolute paths) whose local client connections belong to this AID. Default []. */
  readonly executables: readonly string[];
}

export interface PeerConfig {
  readonly name: string;
  /** Address of the peer's negotiation endpoint (u32), or null if it only connects to us. */
  readonly address: number | null;
  readonly port: number;
  /** Shared HMAC key, hex. */
  readonly key: string;
}

/** Cooperative multiplexing (FIG. 6/7). */
export interface CooperativeConfig {
  /** This daemon's name towards its peers. Default "vpm". */
  readonly name: string;
  /** Where peers negotiate with us, or null. Default null. */
  readonly listen: { readonly address: number; readonly port: number } | null;
  /** Ports p2 for negotiated connections. Default 40000-40999. */
  readonly portRange: PortRange;
  /** Negotiation timeout. Default 1000. */
  readonly timeoutMs: number;
  readonly peers: readonly PeerConfig[];
}

export interface SelectorConfig {
  /** Position in `selectors` (evaluation order). */
  readonly index: number;
  /** Service name, or null for any service. */
  readonly service: string | null;
  /** Index into `services`, or null for any service. */
  readonly serviceIndex: number | null;
  /** Client networks, or null for any client. */
  readonly clients: readonly Cidr[] | null;
  /** Client source ports, or null for any port. */
  readonly clientPorts: PortRange | null;
  readonly aid: string;
  /** Index into `applications`. */
  readonly aidIndex: number;
}

/** What to do when no selector matches. Default: refuse. */
export type DefaultConfig =
  | { readonly refuse: true }
  | { readonly refuse: false; readonly aid: string; readonly aidIndex: number };

export interface Config {
  /** The file this came from, as given (for messages and reload). */
  readonly source: string;
  readonly tun: TunConfig;
  readonly services: readonly ServiceConfig[];
  readonly applications: readonly ApplicationConfig[];
  /** In evaluation order; the first match wins. Default []. */
  readonly selectors: readonly SelectorConfig[];
  readonly default: DefaultConfig;
  /** Default null: no pool, only static instances. */
  readonly pool: PoolConfig | null;
  /** Default null: no cooperative multiplexing. */
  readonly cooperative: CooperativeConfig | null;
  readonly limits: {
    /** Translation table capacity. Default 65536. */
    readonly maxFlows: number;
  };
  readonly timeouts: {
    /** Handshake not complete. Default 10000. */
    readonly embryonicMs: number;
    /** Established and idle. Default 3600000. */
    readonly establishedIdleMs: number;
    /** After the first FIN. Default 60000. */
    readonly closingMs: number;
    /** After both FINs or a RST. Default 10000. */
    readonly timeWaitMs: number;
  };
  readonly control: {
    /** Control socket path. Default /run/vpm/<tun.name>.sock. */
    readonly socket: string;
  };
  readonly metrics: {
    /** Loopback address and port of /metrics, or null (default) for none. */
    readonly listen: { readonly address: number; readonly port: number } | null;
  };
  readonly log: {
    /** Default "info". */
    readonly level: LogLevel;
  };
}

// ---------------------------------------------------------------------------
// Errors.

export type ConfigErrorCode = 'ERR_CONFIG_READ' | 'ERR_CONFIG_PARSE' | 'ERR_CONFIG_INVALID';

export interface ConfigProblem {
  /** Field path such as `services[0].port`; `(root)` for the whole document. */
  readonly path: string;
  /** The bad value; absent for a missing field or a file-level problem. */
  readonly value?: unknown;
  /** What is wrong, naming the value and what was expected. */
  readonly message: string;
  /** Position in the file, where known (syntax errors, duplicate keys). */
  readonly line?: number;
  readonly column?: number;
}

/** How many problems the message lists; `problems` always has all of them. */
const MAX_LISTED = 50;

export class ConfigError extends Error {
  readonly exitCode = 2;
  constructor(
    readonly code: ConfigErrorCode,
    /** The config file, as given. */
    readonly file: string,
    readonly problems: readonly ConfigProblem[],
  ) {
    super(ConfigError.format(file, problems));
    this.name = 'ConfigError';
  }

  /** One line per problem: `file: path: message`, or `file:line:column: message`. */
  static format(file: string, problems: readonly ConfigProblem[]): string {
    const lines = problems.slice(0, MAX_LISTED).map((p) => {
      if (p.path === '' && p.line !== undefined)
        return `${file}:${p.line}:${p.column}: ${p.message}`;
      return p.path === '' ? `${file}: ${p.message}` : `${file}: ${p.path}: ${p.message}`;
    });
    if (problems.length > MAX_LISTED)
      lines.push(`${file}: ... and ${problems.length - MAX_LISTED} more problems`);
    return lines.join('\n');
  }
}

// ---------------------------------------------------------------------------
// Loading.

let compiled: CompiledSchema | null = null;

/** Where the published schema lives (it is read at run time, from src/ and dist/ alike). */
export function configSchemaPath(): string {
  return join(packageRoot(), 'docs', 'config.schema.json');
}

/** The schema as a validator; a broken or missing schema file is a bug (plain Error). */
export function configSchema(): CompiledSchema {
  if (compiled === null) {
    const path = configSchemaPath();
    let schema: unknown;
    try {
      schema = JSON.parse(readFileSync(path, 'utf8'));
    } catch (e) {
      throw new Error(`cannot load the config schema ${path}: ${(e as Error).message}`);
    }
    compiled = compileSchema(schema);
  }
  return compiled;
}

/** Reads, validates and resolves a config file. Throws ConfigError. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'EISDIR' ? 'it is a directory' : err.message;
    throw new ConfigError('ERR_CONFIG_READ', file, [
      { path: '', message: `cannot read the config file: ${why}` },
    ]);
  }
  return parseConfigText(text, file);
}

/** Parses JSON text, then validates and resolves it. `file` names it in messages. */
export function parseConfigText(text: string, file: string): Config {
  let parsed: ReturnType<typeof parseJson>;
  try {
    parsed = parseJson(text);
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    throw new ConfigError('ERR_CONFIG_PARSE', file, [
      { path: '', message: `invalid JSON: ${e.message}`, line: e.line, column: e.column },
    ]);
  }
  const duplicates: ConfigProblem[] = parsed.duplicates.map((d) => ({
    path: formatPath(d.path),
    message: `duplicate key at line ${d.line}, column ${d.column} (JSON would silently keep only the last one)`,
    line: d.line,
    column: d.column,
  }));
  return resolveChecked(parsed.value, file, duplicates);
}

/** Validates and resolves an already parsed value. `file` names it in messages. */
export function parseConfig(obj: unknown, file: string): Config {
  return resolveChecked(obj, file, []);
}

function resolveChecked(obj: unknown, file: string, earlier: ConfigProblem[]): Config {
  const result = configSchema().validate(obj);
  const problems = [...earlier, ...result.problems.map(fromSchemaProblem)];
  if (problems.length > 0) throw new ConfigError('ERR_CONFIG_INVALID', file, problems);
  const checker = new Checker(result.value as RawConfig);
  const config = checker.resolve(file);
  if (checker.problems.length > 0)
    throw new ConfigError('ERR_CONFIG_INVALID', file, checker.problems);
  return deepFreeze(config);
}

function fromSchemaProblem(p: SchemaProblem): ConfigProblem {
  const path = formatPath(p.path);
  return p.value === undefined
    ? { path, message: p.message }
    : { path, value: p.value, message: p.message };
}

function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

// ---------------------------------------------------------------------------
// Semantic checks and resolution. The input has passed the schema, defaults
// included, so its shape is the one below; only its meaning is in doubt.

interface RawConfig {
  tun: {
    name: string;
    address: string;
    localClientAddress: string;
    mtu: number;
    txQueueLen: number;
    batchSize: number;
    routeTable: number;
    rulePriority: number;
    verifyTcpChecksum: boolean;
  };
  services: {
    name: string;
    address: string;
    port: number;
    protocol: 'tcp' | 'udp';
    peer?: string;
  }[];
  applications: {
    aid: string;
    executables: string[];
    instances: { address?: string; port: number; service?: string }[];
  }[];
  cooperative: {
    name: string;
    listen: string | null;
    portRange: string;
    timeoutMs: number;
    peers: { name: string; address?: string; port: number; key: string }[];
  } | null;
  pool: { range: string; quarantineMs: number; waitTimeoutMs: number } | null;
  selectors: { service?: string; clients?: string[]; clientPorts?: string; aid: string }[];
  default: { aid: string } | { refuse: true };
  limits: Config['limits'];
  timeouts: Config['timeouts'];
  control: { socket?: string };
  metrics: { listen: string | null };
  log: { level: LogLevel };
}

/** Ranges that can never be a service, TUN or instance address, with why. */
const UNUSABLE: readonly { base: number; mask: number; text: string }[] = [
  { base: 0x00000000, mask: 0xff000000, text: 'in 0.0.0.0/8 ("this network")' },
  { base: 0x7f000000, mask: 0xff000000, text: 'a loopback address (127.0.0.0/8)' },
  { base: 0xe0000000, mask: 0xf0000000, text: 'a multicast address (224.0.0.0/4)' },
  { base: 0xf0000000, mask: 0xf0000000, text: 'reserved or broadcast (240.0.0.0/4)' },
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

class Checker {
  readonly problems: ConfigProblem[] = [];

  constructor(private readonly raw: RawConfig) {}

  private bad(path: readonly PathSegment[], value: unknown, message: string): void {
    this.problems.push({ path: formatPath(path), value, message });
  }

  /** A unicast address usable for a service, the TUN or an instance; 0 if it does not parse. */
  private address(path: readonly PathSegment[], s: string, role: string): number {
    const a = parseIpv4(s);
    if (a === null) {
      this.bad(
        path,
        s,
        `${showValue(s)} is not a valid IPv4 address (four numbers 0-255, no leading zeros)`,
      );
      return 0;
    }
    for (const u of UNUSABLE) {
      if ((a & u.mask) >>> 0 === u.base) {
        this.bad(path, s, `${showValue(s)} is ${u.text} and cannot be ${role}`);
        return a;
      }
    }
    return a;
  }

  private cidr(path: readonly PathSegment[], s: string): Cidr {
    const none: Cidr = { base: 0, mask: 0, prefix: 0 };
    const slash = s.indexOf('/');
    const addrText = s.slice(0, slash);
    const prefixText = s.slice(slash + 1);
    const a = parseIpv4(addrText);
    if (a === null) {
      this.bad(path, s, `${showValue(s)} is not a valid CIDR: ${addrText} is not an IPv4 address`);
      return none;
    }
    const prefix = Number(prefixText);
    if (!/^(0|[1-9][0-9]?)$/.test(prefixText) || prefix > 32) {
      this.bad(path, s, `${showValue(s)} is not a valid CIDR: the prefix length must be 0-32`);
      return none;
    }
    let range: IPv4CidrRange;
    try {
      range = IPv4CidrRange.fromCidr(s);
    } catch (e) {
      this.bad(path, s, `${showValue(s)} is not a valid CIDR: ${(e as Error).message}`);
      return none;
    }
    const base = Number(range.getFirst().getValue());
    const mask = Number(range.getPrefix().toMask().getValue());
    if (base !== a) {
      this.bad(
        path,
        s,
        `${showValue(s)} has host bits set beyond the /${prefix} prefix (the network is ${ipv4ToString(base)}/${prefix})`,
      );
    }
    return { base, mask, prefix };
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
        return { name: pe.name, address, port: pe.port, key: pe.key.toLowerCase() };
      });
      let listen: CooperativeConfig['listen'] = null;
      if (co.listen !== null) {
        const colon = co.listen.lastIndexOf(':');
        const a = parseIpv4(co.listen.slice(0, colon));
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
        listen = { address: a ?? 0, port };
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
      if (s.protocol !== 'tcp')
        this.bad(
          at('protocol'),
          s.protocol,
          `${showValue(s.protocol)} is not supported yet (only "tcp")`,
        );
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
      services.push({ index: i, name: s.name, address: vip, port: s.port, protocol: 'tcp', peer });
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
      applications.push({ index: i, aid: app.aid, instances, executables: [...app.executables] });
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
    const socket = raw.control.socket ?? `/run/vpm/${t.name}.sock`;
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
      const a = parseIpv4(text.slice(0, colon));
      const port = Number(text.slice(colon + 1));
      if (a === null)
        this.bad(
          ['metrics', 'listen'],
          text,
          `${showValue(text)}: ${text.slice(0, colon)} is not a valid IPv4 address`,
        );
      else if (a >>> 24 !== 127)
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
      listen = { address: a ?? 0, port };
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
        verifyTcpChecksum: t.verifyTcpChecksum,
      },
      services,
      applications,
      selectors,
      default: dflt,
      pool,
      cooperative,
      limits: { maxFlows: raw.limits.maxFlows },
      timeouts: {
        embryonicMs: raw.timeouts.embryonicMs,
        establishedIdleMs: raw.timeouts.establishedIdleMs,
        closingMs: raw.timeouts.closingMs,
        timeWaitMs: raw.timeouts.timeWaitMs,
      },
      control: { socket },
      metrics: { listen },
      log: { level: raw.log.level },
    };
  }
}
