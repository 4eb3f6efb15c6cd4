/**
 * BPF filters for `vpm dump`'s shortcuts (--service, --aid, --flow), built from
 * what the daemon reports over its control socket.
 *
 * Why each filter names two kinds of endpoint: the TUN carries every translated
 * packet twice, once as the kernel handed it to vpm and once as vpm wrote it back.
 * A client's packet crosses it addressed to VIP:vport and again addressed to the
 * instance's real address:port; the reply crosses it from real address:port and
 * again from VIP:vport. A filter on one side only would show half of each
 * translation, so every shortcut matches both.
 *
 * The daemon's strings are still checked (a dotted quad or an IPv6 address, port
 * 1-65535) before they go into a filter: text that libpcap compiles should never
 * come from anywhere unchecked. IPv6 endpoints are "[ADDRESS]:PORT" in the
 * daemon's reports and go into the filter as RFC 5952 text (`host 2001:2::9`,
 * which libpcap compiles to an ip6 match).
 */

import { VpmError } from '../base/errors.js';
import type { FlowView, InstanceView, ServiceView } from '../view/views.js';
import { formatAddr, parseAddr, parseEndpoint as parseIpEndpoint } from '../wire/address.js';

export interface Endpoint {
  addr: string;
  port: number;
}

/** A service as the control command `services` reports it. */
/** What a filter needs of a flow (`flows`: docs/control-protocol.md). */
export type FlowTuples = Pick<FlowView, 'id' | 'client' | 'service' | 'aid' | 'real' | 'nat'> &
  Partial<Pick<FlowView, 'protocol'>>;

/** A filter part and the protocol it is about ('tcp' when a daemon did not say). */
interface Part {
  proto: string;
  f: string;
}

/** What a filter needs of an instance (`instances`). */
export type InstanceEndpoint = Pick<InstanceView, 'aid' | 'proto' | 'vport' | 'address' | 'port'>;

/** A flow, service or endpoint that no capture filter can be built for (bad input). */
export class FilterError extends VpmError<'ERR_DUMP_FILTER'> {
  constructor(message: string) {
    super('ERR_DUMP_FILTER', message);
  }
}

/**
 * "198.19.0.9:9000" or "[2001:2::9]:9000" → endpoint (its address in canonical
 * text), or null when it is not an address and a port 1-65535.
 */
export function parseEndpoint(s: string): Endpoint | null {
  const e = parseIpEndpoint(s);
  if (e === null || e.port < 1) return null;
  return { addr: formatAddr(e.address), port: e.port };
}

function endpoint(s: string, what: string): Endpoint {
  const e = parseEndpoint(s);
  if (!e) throw new FilterError(`the daemon reported ${what} "${s}", which is not ADDRESS:PORT`);
  return e;
}

function checked(e: Endpoint): Endpoint {
  const a = parseAddr(e.addr);
  if (a === null || !Number.isInteger(e.port) || e.port < 1 || e.port > 65535)
    throw new FilterError(`not an IP address and port: ${JSON.stringify(e)}`);
  return { addr: formatAddr(a), port: e.port };
}

/** The endpoint as the daemon writes it: "a.b.c.d:port", "[v6]:port". */
const key = (e: Endpoint) =>
  e.addr.includes(':') ? `[${e.addr}]:${e.port}` : `${e.addr}:${e.port}`;

/** A service's addresses in canonical text (`addresses`, or `address` from an older daemon). */
function addressesOf(s: ServiceView): string[] {
  return (s.addresses ?? [s.address]).map((a) => {
    const p = parseAddr(a);
    return p === null ? a : formatAddr(p);
  });
}

/** Is the flow endpoint text `s` one of `keys` (compared in canonical form)? */
function isKnown(keys: ReadonlySet<string>, s: string): boolean {
  const e = parseEndpoint(s);
  return e !== null && keys.has(key(e));
}

function unique(list: Endpoint[]): Endpoint[] {
  const seen = new Map<string, Endpoint>();
  for (const e of list) if (!seen.has(key(e))) seen.set(key(e), e);
  return [...seen.values()];
}

/** Packets from or to `e`: `(src host A and src port P) or (dst host A and dst port P)`. */
export function endpointFilter(e: Endpoint): string {
  const { addr, port } = checked(e);
  return `(src host ${addr} and src port ${port}) or (dst host ${addr} and dst port ${port})`;
}

/** Packets of one connection `a` ⇄ `b`, in both directions. */
export function tupleFilter(a: Endpoint, b: Endpoint): string {
  checked(a);
  checked(b);
  const one = (x: Endpoint, y: Endpoint) =>
    `(src host ${x.addr} and src port ${x.port} and dst host ${y.addr} and dst port ${y.port})`;
  return `${one(a, b)} or ${one(b, a)}`;
}

/**
 * `tcp and ((p1) or (p2) ...)` — one such group per protocol, or-ed when the
 * parts are of more than one (`(tcp and (...)) or (udp and (...))`); the empty
 * list matches nothing.
 */
function anyOf(parts: Part[]): string {
  if (parts.length === 0) throw new FilterError('nothing to capture');
  const groups = new Map<string, string[]>();
  for (const p of parts) {
    const g = groups.get(p.proto) ?? [];
    g.push(`(${p.f})`);
    groups.set(p.proto, g);
  }
  const out = [...groups].map(([proto, fs]) => `${proto} and (${fs.join(' or ')})`);
  return out.length === 1 ? out[0]! : out.map((g) => `(${g})`).join(' or ');
}

const protoOf = (f: FlowTuples) => f.protocol ?? 'tcp';

/**
 * Combine filters the way tcpdump users write them: `(a) and (b)`. Empty ones are
 * left out; none at all gives '' (everything).
 */
export function andFilters(parts: readonly string[]): string {
  const live = parts.map((p) => p.trim()).filter((p) => p !== '');
  if (live.length <= 1) return live[0] ?? '';
  return live.map((p) => `(${p})`).join(' and ');
}

/** Find a service by name or by "VIP:PORT"; throws FilterError listing the known ones. */
export function findService(services: readonly ServiceView[], spec: string): ServiceView {
  const e = parseEndpoint(spec);
  const found = services.find((s) =>
    e ? addressesOf(s).includes(e.addr) && s.port === e.port : s.name === spec,
  );
  if (found) return found;
  const known = services
    .map(
      (s) =>
        `${s.name} (${addressesOf(s)
          .map((a) => key({ addr: a, port: s.port }))
          .join(' ')})`,
    )
    .join(', ');
  throw new FilterError(`--service: no service "${spec}"; the daemon has ${known || 'none'}`);
}

/**
 * --service: the virtual endpoint, and every real endpoint that can serve it: the
 * instances registered for its port (or for any port) and the real side of its
 * current flows.
 */
export function serviceFilter(
  svc: ServiceView,
  instances: readonly InstanceEndpoint[],
  flows: readonly FlowTuples[],
): string {
  // A dual-stack service has a VIP of each family.
  const vips: Endpoint[] = addressesOf(svc).map((addr) => ({ addr, port: svc.port }));
  const vipKeys = new Set(vips.map(key));
  const reals: Endpoint[] = [];
  for (const i of instances) {
    if (i.proto === svc.protocol && (i.vport === svc.port || i.vport === 0))
      reals.push({ addr: i.address, port: i.port });
  }
  for (const f of flows) {
    if (isKnown(vipKeys, f.service) && protoOf(f) === svc.protocol)
      reals.push(endpoint(f.real, `flow ${f.id} real`));
  }
  return anyOf(
    [...vips, ...unique(reals)].map((e) => ({ proto: svc.protocol, f: endpointFilter(e) })),
  );
}

/**
 * --aid: the real endpoints of the AID's instances (both sides of every
 * connection to them), and the client ⇄ VIP side of its current flows.
 */
export function aidFilter(
  aid: string,
  instances: readonly InstanceEndpoint[],
  flows: readonly FlowTuples[],
): string {
  // An instance serves its protocol's services; one for any service, both protocols.
  const reals: { proto: string; e: Endpoint }[] = [];
  for (const i of instances) {
    if (i.aid !== aid) continue;
    const e = { addr: i.address, port: i.port };
    if (i.vport === 0) for (const proto of ['tcp', 'udp']) reals.push({ proto, e });
    else reals.push({ proto: i.proto, e });
  }
  const own = flows.filter((f) => f.aid === aid);
  for (const f of own) reals.push({ proto: protoOf(f), e: endpoint(f.real, `flow ${f.id} real`) });
  if (reals.length === 0)
    throw new FilterError(`--aid: the daemon has no instance and no flow of AID "${aid}"`);
  const seen = new Set<string>();
  const parts: Part[] = [];
  for (const r of reals) {
    const k = `${r.proto} ${key(r.e)}`;
    if (seen.has(k)) continue;
    seen.add(k);
    parts.push({ proto: r.proto, f: endpointFilter(r.e) });
  }
  for (const f of own)
    parts.push({
      proto: protoOf(f),
      f: tupleFilter(endpoint(f.client, `flow ${f.id} client`), endpoint(f.service, 'a service')),
    });
  return anyOf(parts);
}

/** --flow: exactly the flow's client ⇄ VIP and nat ⇄ real connections. */
export function flowFilter(flow: FlowTuples): string {
  const client = endpoint(flow.client, `flow ${flow.id} client`);
  const vip = endpoint(flow.service, `flow ${flow.id} service`);
  const real = endpoint(flow.real, `flow ${flow.id} real`);
  const nat = flow.nat ? endpoint(flow.nat, `flow ${flow.id} nat`) : client;
  const proto = protoOf(flow);
  return anyOf([
    { proto, f: tupleFilter(client, vip) },
    { proto, f: tupleFilter(nat, real) },
  ]);
}
