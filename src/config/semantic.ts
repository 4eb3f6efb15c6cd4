/**
 * The checks on meaning: what the schema cannot say about a config file, and
 * the resolution into the frozen `Config` the daemon runs on.
 *
 * The input has passed the schema (schema.ts), defaults included, so its shape
 * is `RawConfig`; only its meaning is in doubt: addresses and CIDRs that really
 * parse (ip-num parses and checks them; IPv4 becomes u32 numbers, IPv6 bigints,
 * any RFC 4291 text form, no zone id, no v4-mapped address), no host bits beyond
 * a prefix, references that name existing entries, no duplicates, no port or
 * address collisions (per family), no mixed-family translation (below). Every problem is
 * collected, each naming the field path and the bad value, so one run names
 * every mistake.
 *
 * IPv6. `tun.ipv6` is resolved here: on iff the file has an IPv6 address
 * anywhere (`ipv6Cause`). Mixed-family translation is refused: an IPv6 client
 * reaches only instances with an IPv6 address, an IPv4 client only IPv4 ones
 * (vpm rewrites addresses and ports, it does not translate between families:
 * that would be NAT64, with its own checksum, ICMP and fragment rules, and the
 * instance would see a client address of the other family, not the client's
 * real one). So an AID that can be selected for a service's family, and has
 * instances for that service but none of that family (and there is no pool to
 * register one), is an error naming the service and the AID.
 */

import { IPv4, IPv4CidrRange, IPv4Prefix, Validator } from 'ip-num';
import { defaultControlSocket } from '../base/netns.js';
import { formatIpv6, type IpAddr, ipv4ToString, isV4Mapped, parseIpv6 } from '../wire/address.js';
import type { ConfigProblem } from './errors.js';
import { resolveTunQueues } from './queues.js';
import type { RawConfig } from './schema.js';
import type {
  ApplicationConfig,
  Cidr,
  Cidr6,
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

const V6_LOOPBACK = 1n;

/** IPv6 ranges that can never be a service, TUN or instance address, with why. */
const UNUSABLE6: readonly { base: bigint; prefix: number; text: string }[] = [
  { base: 0n, prefix: 128, text: 'the unspecified address (::)' },
  { base: V6_LOOPBACK, prefix: 128, text: 'the loopback address (::1)' },
  { base: 0xffn << 120n, prefix: 8, text: 'a multicast address (ff00::/8)' },
  {
    base: 0xfe80n << 112n,
    prefix: 10,
    text: 'a link-local address (fe80::/10), which means something only with a zone id',
  },
];

/** The top `prefix` bits of a 128-bit address. */
function mask6(prefix: number): bigint {
  return prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(128 - prefix);
}

function inCidr6(a: bigint, base: bigint, prefix: number): boolean {
  return (a & mask6(prefix)) === base;
}

/**
 * The first place in the file that makes it use IPv6 (turns tun.ipv6 on), as a
 * field path, or null. `given` is the file before the schema's defaults.
 */
export function ipv6Cause(raw: RawConfig, given: unknown): string | null {
  const v6 = (a: string | undefined | null) => typeof a === 'string' && a.includes(':');
  const tun = (given as { tun?: Record<string, unknown> } | null)?.tun;
  if (typeof tun === 'object' && tun !== null) {
    if (Object.hasOwn(tun, 'address6')) return 'tun.address6';
    if (Object.hasOwn(tun, 'localClientAddress6')) return 'tun.localClientAddress6';
  }
  for (const [i, s] of raw.services.entries()) {
    const list = Array.isArray(s.address) ? s.address : [s.address];
    const j = list.findIndex(v6);
    if (j >= 0)
      return Array.isArray(s.address) ? `services[${i}].address[${j}]` : `services[${i}].address`;
  }
  for (const [i, a] of raw.applications.entries())
    for (const [j, inst] of a.instances.entries())
      if (v6(inst.address)) return `applications[${i}].instances[${j}].address`;
  for (const [i, sel] of raw.selectors.entries()) {
    const j = (sel.clients ?? []).findIndex(v6);
    if (j >= 0) return `selectors[${i}].clients[${j}]`;
  }
  const co = raw.cooperative;
  if (co !== null) {
    if (co.listen?.startsWith('[')) return 'cooperative.listen';
    for (const [i, pe] of co.peers.entries())
      if (v6(pe.address)) return `cooperative.peers[${i}].address`;
  }
  return null;
}

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

  /**
   * An IPv6 address in any RFC 4291 text form, usable as `role`; 0n if it is
   * not one. What people write instead of an address gets its own message.
   */
  private address6(path: readonly PathSegment[], s: string, role: string): bigint {
    const a = this.parse6(path, s, s);
    if (a === null) return 0n;
    for (const u of UNUSABLE6) {
      if (inCidr6(a, u.base, u.prefix)) {
        this.bad(path, s, `${showValue(s)} is ${u.text} and cannot be ${role}`);
        break;
      }
    }
    return a;
  }

  /** `text` (part of `whole`) as an IPv6 address, or null with a problem said. */
  private parse6(path: readonly PathSegment[], text: string, whole: string): bigint | null {
    const shown = showValue(whole);
    const pct = text.indexOf('%');
    let why: string | null = null;
    if (pct >= 0)
      why = `has a zone id (${text.slice(pct)}): vpm takes no zone ids, which name an interface rather than an address; use a global or unique local address`;
    else if (text.startsWith('[') || text.endsWith(']'))
      why = 'is in brackets: write the address without them (brackets belong to "[ADDRESS]:PORT")';
    else if (text.includes('/')) why = 'has a prefix length: an address is written without one';
    const a = why === null ? parseIpv6(text) : null;
    if (why === null && a === null)
      why = `is not a valid IPv6 address${text === whole ? '' : ` (${text})`} (eight groups of 1-4 hex digits separated by ':', one '::' at most, optionally ending in a dotted quad)`;
    if (why !== null) {
      this.bad(path, whole, `${shown} ${why}`);
      return null;
    }
    if (isV4Mapped(a!)) {
      this.bad(
        path,
        whole,
        `${shown} is a v4-mapped IPv6 address (::ffff:0:0/96), an IPv4 address in IPv6 form: use the IPv4 form ${JSON.stringify(ipv4ToString(Number(a! & 0xffffffffn)))}`,
      );
      return null;
    }
    return a;
  }

  /** An address of either family (a colon makes it IPv6); 0 / 0n if it does not parse. */
  private anyAddress(path: readonly PathSegment[], s: string, role: string): IpAddr {
    return s.includes(':') ? this.address6(path, s, role) : this.address(path, s, role);
  }

  /** "ADDRESS:PORT" or "[IPv6]:PORT" (the schema checked the shape). */
  private endpoint(
    path: readonly PathSegment[],
    text: string,
  ): { address: IpAddr | null; port: number } {
    const colon = text.lastIndexOf(':');
    const host = text.slice(0, colon);
    const port = Number(text.slice(colon + 1));
    let address: IpAddr | null;
    if (host.startsWith('[')) address = this.parse6(path, host.slice(1, -1), text);
    else {
      const a = parseAddress(host);
      address = a === null ? null : u32(a);
      if (a === null)
        this.bad(path, text, `${showValue(text)}: ${host} is not a valid IPv4 address`);
    }
    if (!(port >= 1 && port <= 65535))
      this.bad(path, text, `${showValue(text)}: port ${port} is out of range 1-65535`);
    return { address, port };
  }

  private cidr6(path: readonly PathSegment[], s: string): Cidr6 {
    const none: Cidr6 = { base: 0n, prefix: 0 };
    const slash = s.lastIndexOf('/');
    const addrText = s.slice(0, slash);
    const prefixText = s.slice(slash + 1);
    if (addrText.includes('%') || addrText.includes('[')) {
      this.parse6(path, addrText, s);
      return none;
    }
    const a = parseIpv6(addrText);
    if (a === null) {
      this.bad(path, s, `${showValue(s)} is not a valid CIDR: ${addrText} is not an IPv6 address`);
      return none;
    }
    if (!/^(0|[1-9][0-9]{0,2})$/.test(prefixText) || Number(prefixText) > 128) {
      this.bad(path, s, `${showValue(s)} is not a valid CIDR: the prefix length must be 0-128`);
      return none;
    }
    const prefix = Number(prefixText);
    if (isV4Mapped(a) && prefix >= 96) {
      this.bad(
        path,
        s,
        `${showValue(s)} is a v4-mapped IPv6 range (in ::ffff:0:0/96): write the IPv4 CIDR ${JSON.stringify(`${ipv4ToString(Number(a & 0xffffffffn))}/${prefix - 96}`)}`,
      );
      return none;
    }
    const network = a & mask6(prefix);
    if (network !== a)
      this.bad(
        path,
        s,
        `${showValue(s)} has host bits set beyond the /${prefix} prefix (the network is ${formatIpv6(network)}/${prefix})`,
      );
    return { base: network, prefix };
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

  /**
   * Mixed-family translation is refused (see the theory of operation): for each
   * family of each service served here, every AID a connection of that family
   * can be selected for (a selector of the service or of any, whose clients can
   * be of that family; the default), if it has instances for the service, must
   * have one of that family, unless a pool can register one at run time. An AID
   * without any instance for the service is only warned about (summary.ts), as
   * it always was.
   */
  private mixedFamilies(
    services: readonly ServiceConfig[],
    applications: readonly ApplicationConfig[],
    selectors: readonly SelectorConfig[],
    dflt: DefaultConfig,
    pool: boolean,
  ): void {
    if (pool) return;
    const said = new Set<string>();
    for (const svc of services) {
      if (svc.peer !== null) continue; // served by the peer
      for (const fam of [4, 6] as const) {
        const vip = fam === 4 ? svc.address : svc.address6;
        if (vip === null) continue;
        const aids: { aid: number; by: string }[] = [];
        for (const sel of selectors) {
          if (sel.aidIndex < 0) continue;
          if (sel.serviceIndex !== null && sel.serviceIndex !== svc.index) continue;
          const nets = fam === 4 ? sel.clients : sel.clients6;
          if (nets !== null && nets.length === 0) continue;
          aids.push({ aid: sel.aidIndex, by: `selectors[${sel.index}]` });
        }
        if (!dflt.refuse && dflt.aidIndex >= 0)
          aids.push({ aid: dflt.aidIndex, by: 'the default' });
        for (const { aid, by } of aids) {
          const app = applications[aid];
          if (app === undefined) continue;
          const serving = app.instances.filter(
            (i) => i.serviceIndex === null || i.serviceIndex === svc.index,
          );
          if (serving.length === 0) continue;
          if (serving.some((i) => (fam === 4 ? i.address : i.address6) !== null)) continue;
          const key = `${svc.index}/${fam}/${aid}`;
          if (said.has(key)) continue;
          said.add(key);
          const other = fam === 4 ? 'IPv6' : 'IPv4';
          this.bad(
            ['services', svc.index, 'address'],
            this.raw.services[svc.index]!.address,
            `service ${JSON.stringify(svc.name)} has an IPv${fam} address, and ${by} sends its connections to application ${JSON.stringify(app.aid)}, whose instances for it are all ${other}: vpm does not translate between families (an IPv${fam} client reaches only instances with an IPv${fam} address); give ${app.aid} an instance without an address (it then serves both families) or one with an IPv${fam} address`,
          );
        }
      }
    }
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
    const tunAddress6 = this.address6(['tun', 'address6'], t.address6, 'the TUN address');
    const localClient6 = this.address6(
      ['tun', 'localClientAddress6'],
      t.localClientAddress6,
      'the local client address',
    );
    if (tunAddress6 === localClient6 && tunAddress6 !== 0n)
      this.bad(
        ['tun', 'localClientAddress6'],
        t.localClientAddress6,
        `${showValue(t.localClientAddress6)} is also tun.address6; the local client address must be a different, unassigned address`,
      );
    const ipv6 = ipv6Cause(raw, this.given) !== null;
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
            : this.anyAddress(['cooperative', 'peers', i, 'address'], pe.address, 'a peer address');
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
        const e = this.endpoint(['cooperative', 'listen'], co.listen);
        listen = { address: e.address ?? 0, port: e.port };
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
      // One address of either family, or one of each.
      const texts = Array.isArray(s.address) ? s.address : [s.address];
      const addrPath = (j: number) =>
        Array.isArray(s.address) ? ['services', i, 'address', j] : at('address');
      let vip: number | null = null;
      let vip6: bigint | null = null;
      texts.forEach((text, j) => {
        const a = this.anyAddress(addrPath(j), text, 'a service address');
        const other = typeof a === 'bigint' ? vip6 : vip;
        if (other !== null) {
          this.bad(
            addrPath(j),
            text,
            `${showValue(text)} is a second ${typeof a === 'bigint' ? 'IPv6' : 'IPv4'} address; a service has at most one address of each family (two services for two addresses)`,
          );
          return;
        }
        if (typeof a === 'bigint') vip6 = a;
        else vip = a;
        const [tunA, localA, tunName, localName] =
          typeof a === 'bigint'
            ? [tunAddress6, localClient6, 'tun.address6', 'tun.localClientAddress6']
            : [tunAddress, localClient, 'tun.address', 'tun.localClientAddress'];
        if (a !== 0 && a !== 0n && a === tunA)
          this.bad(
            addrPath(j),
            text,
            `${showValue(text)} is ${tunName}; a service address must be a different address routed to the TUN`,
          );
        else if (a !== 0 && a !== 0n && a === localA)
          this.bad(
            addrPath(j),
            text,
            `${showValue(text)} is ${localName}; a service address must be a different address`,
          );
        const endpoint = `${typeof a}/${a}/${s.protocol}/${s.port}`;
        const same = serviceByEndpoint.get(endpoint);
        if (same !== undefined)
          this.bad(
            at('port'),
            s.port,
            `${text} ${s.protocol}/${s.port} is already services[${same}] (${JSON.stringify(raw.services[same]!.name)})`,
          );
        else serviceByEndpoint.set(endpoint, i);
      });
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
        address6: vip6,
        port: s.port,
        protocol: s.protocol,
        peer,
      });
    });
    const vips = new Map<IpAddr, number>();
    services.forEach((s, i) => {
      for (const a of [s.address, s.address6]) if (a !== null && !vips.has(a)) vips.set(a, i);
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
        // No address: both TUN addresses (the IPv6 one when the file uses IPv6).
        let address: number | null = tunAddress;
        let address6: bigint | null = ipv6 ? tunAddress6 : null;
        if (inst.address !== undefined) {
          const a = this.anyAddress(at('address'), inst.address, 'an instance address');
          address = typeof a === 'bigint' ? null : a;
          address6 = typeof a === 'bigint' ? a : null;
          const vip = vips.get(a);
          const local = typeof a === 'bigint' ? localClient6 : localClient;
          if (a !== 0 && a !== 0n && vip !== undefined)
            this.bad(
              at('address'),
              inst.address,
              `${showValue(inst.address)} is the address of service ${JSON.stringify(raw.services[vip]!.name)}, which is routed to the TUN; an instance must listen on a local address`,
            );
          else if (a !== 0 && a !== 0n && a === local)
            this.bad(
              at('address'),
              inst.address,
              `${showValue(inst.address)} is tun.localClientAddress${typeof a === 'bigint' ? '6' : ''}, which is never assigned; an instance must listen on a local address`,
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
        return { address, address6, port: inst.port, serviceIndex };
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
      let clients: Cidr[] | null = null;
      let clients6: Cidr6[] | null = null;
      if (sel.clients !== undefined) {
        clients = [];
        clients6 = [];
        for (const [j, c] of sel.clients.entries()) {
          const path = ['selectors', i, 'clients', j];
          if (c.slice(0, c.lastIndexOf('/')).includes(':')) clients6.push(this.cidr6(path, c));
          else clients.push(this.cidr(path, c));
        }
      }
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
        clients6,
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

    this.mixedFamilies(services, applications, selectors, dflt, pool !== null);

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
      const e = this.endpoint(['metrics', 'listen'], text);
      const loopback =
        typeof e.address === 'bigint'
          ? e.address === V6_LOOPBACK
          : e.address !== null && LOOPBACK.contains(IPv4.fromNumber(BigInt(e.address)));
      if (e.address !== null && !loopback)
        this.bad(
          ['metrics', 'listen'],
          text,
          `${showValue(text)} is not a loopback address; metrics are served on 127.0.0.0/8 or [::1] only`,
        );
      listen = { address: e.address ?? 0, port: e.port };
    }

    return {
      source,
      tun: {
        name: t.name,
        address: tunAddress,
        localClientAddress: localClient,
        address6: tunAddress6,
        localClientAddress6: localClient6,
        ipv6,
        mtu: t.mtu,
        txQueueLen: t.txQueueLen,
        batchSize: t.batchSize,
        queuesSetting: t.queues,
        queues: resolveTunQueues(t.queues),
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
