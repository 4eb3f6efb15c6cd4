/**
 * Robustness of the pipeline's UDP, ICMP and fragment stages: seeded random and
 * mutated traffic through a Pipeline on a MemoryTun (without and with virtio-net
 * headers), configured with a TCP and a UDP service on the same VIP:port.
 *
 * What goes in: TCP segments and UDP datagrams of flows (both directions, zero
 * UDP checksums, IP options, super-packets on the device with headers), datagrams
 * to closed ports and to no service; ICMP echo requests and other messages to the
 * VIP, the local-client address and elsewhere; ICMP errors quoting packets vpm
 * sent towards a server or a client of a live flow, of an expired one and of
 * none, with quotes cut anywhere and quoted headers with options or a bad IHL;
 * IPv4 fragments of those datagrams (in order, reversed, shuffled, duplicated,
 * overlapping, the first one tiny or missing, ids from a small pool so that
 * datagrams collide, some held past `fragmentMs`), bursts of orphan fragments to
 * overflow the wait buffer, ICMP floods over the rate limit; and every kind of
 * it mutated (bytes flipped, cut, lengths and IHL changed, padding added, the IP
 * checksum fixed up or not), hostile virtio-net headers, and garbage. Time
 * advances between batches (sometimes past every timeout); flows expire as the
 * daemon's timer expires them, and so do held fragments.
 *
 * What is checked:
 *   - nothing throws; after every batch, after `expireFragments` and at the end,
 *     packetsIn === packetsOut + sum(drops) + fragmentsHeld, and every packet read
 *     was counted in;
 *   - every packet written passes checkPacket, is IPv4 with a correct header
 *     checksum, and, unless it is a fragment, has a correct TCP/UDP/ICMP checksum
 *     (src/wire/verify.ts and, separately, the test builder's RFC 1071 sum); a
 *     packet whose virtio-net header says NEEDS_CSUM carries the pseudo-header
 *     sum of its own addresses;
 *   - no TCP/UDP packet goes towards a client (anywhere but the instances'
 *     address) from anything but the VIP, nor with an instance's port as source
 *     port; no ICMP error towards a client quotes an instance's address and port
 *     (an error about no flow is dropped, not passed on);
 *   - a model: every input packet carries its own IP identification (a tag), and
 *     for an unmutated one the test knows, from the configuration alone, the only
 *     bytes its output may have (the translation built by the test builder, the
 *     echo reply, the message unchanged) and whether an output must appear (a
 *     packet of a flow that is live, a message passed on); fragments are matched
 *     the same way by datagram, offset and length, and a later fragment that comes
 *     after its first fragment (within fragmentMs, its flow the same) must come
 *     out. The virtio-net header comes back as it went in, but for hdr_len.
 * Some batches meet a full device queue or a kernel that refuses packets on write
 * (plain packets only, see `lossy`): no output is required there, the rest holds.
 * Nor is it in a batch where a new flow evicted an embryonic one (the flood policy,
 * limits.embryonicFlows): the model decides what must come out before the batch,
 * and one of its flows may have given way to a flow opened earlier in it.
 *
 * The harness is known to catch a bug: each of a list of faults planted by hand in
 * the pipeline (an untranslated quote or held fragment, a missed checksum update,
 * a flow id not compared, a counter not bumped, an off-by-one limit...) made it
 * fail. Run time: about a second per device kind.
 */

import { describe, expect, it } from 'vitest';
import { Counters, DROP_NAMES, DROP_REASONS, Drop } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline, type PipelineLimits } from '../../src/datapath/pipeline.js';
import { Rules } from '../../src/datapath/rules.js';
import { FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { CHECK_NAMES, Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import {
  VNET_F_DATA_VALID,
  VNET_F_NEEDS_CSUM,
  VNET_GSO_ECN,
  VNET_GSO_TCPV4,
  VNET_GSO_UDP_L4,
} from '../../src/wire/virtio.js';
import {
  hex,
  type Ipv4Spec,
  icmp,
  inetChecksum,
  inetSum,
  ip4,
  ipv4,
  ipv4HeaderOk,
  PROTO_ICMP,
  PROTO_TCP,
  PROTO_UDP,
  pseudoSum,
  randomBytes,
  tcp,
  tcp6,
  udp,
  type VnetSpec,
  vnetHdr,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

// ---------------------------------------------------------------- the configuration

const VIP = ip4('198.19.0.9');
const VPORT = 9000;
/** The instances' address (the TUN address), and the address local clients are given. */
const HOST = ip4('198.19.255.1');
const LOCAL_CLIENT = ip4('198.19.255.2');
/** A router between vpm and a client or server: it sends ICMP errors too. */
const ROUTER = ip4('198.18.0.254');
/** An address that reached the TUN but is no VIP (the host's own traffic). */
const OTHER = ip4('198.19.0.77');
const NET_A = ip4('198.18.1.0');
const NET_B = ip4('198.18.2.0');
const NET_C = ip4('198.18.3.0');
/** Outside every selector: never a flow. */
const NOWHERE = ip4('198.18.200.0');
const CLIENTS = [
  ip4('198.18.1.2'),
  ip4('198.18.1.3'),
  ip4('198.18.2.2'),
  ip4('198.18.3.2'),
  HOST,
  ip4('198.18.9.9'),
];
const CLIENT_PORTS = [40000, 40001, 40002, 33000, 1000, 19001, 50000, 65535];
/** The instances' ports: TCP and UDP both use 19001 (tenant a) and 19002 (tenant b). */
const REAL_PORTS = new Set([19001, 19002]);

const LIMITS: PipelineLimits = {
  heldFragments: 24,
  heldFragmentBytes: 12_000,
  fragmentMs: 1500,
  icmpPerSecond: 400,
};
/**
 * embryonic, established, closing, linger, UDP unreplied, UDP assured (ms): a UDP
 * flow can expire (and its slot be reused) while its datagram's fragments are
 * still expected (fragmentMs).
 */
const TIMEOUTS = [4000, 30_000, 3000, 2000, 1000, 8000];
const CAPACITY = 64;

const EINVAL = 22;
const SYN = 0x02;
const ACK = 0x10;
const FIN = 0x01;
const RST = 0x04;
const PSH = 0x08;

function rules(): Rules {
  const all = { portLo: 0, portHi: 65535 };
  const mask24 = Uint32Array.of(0xffffff00);
  return new Rules({
    services: [
      { name: 'web', addr: VIP, addr6: null, port: VPORT, proto: PROTO_TCP, peer: -1 },
      { name: 'dns', addr: VIP, addr6: null, port: VPORT, proto: PROTO_UDP, peer: -1 },
    ],
    selectors: [
      {
        service: -1,
        cidrBase: Uint32Array.of(NET_A),
        cidrMask: mask24,
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        ...all,
        aid: 0,
      },
      {
        service: -1,
        cidrBase: Uint32Array.of(HOST),
        cidrMask: Uint32Array.of(0xffffffff),
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        ...all,
        aid: 0,
      },
      {
        service: -1,
        cidrBase: Uint32Array.of(NET_B),
        cidrMask: mask24,
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        portLo: 1024,
        portHi: 65535,
        aid: 1,
      },
      // UDP only: a TCP SYN from there is refused.
      {
        service: 1,
        cidrBase: Uint32Array.of(NET_C),
        cidrMask: mask24,
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        ...all,
        aid: 1,
      },
    ],
    aidNames: ['tenant-a', 'tenant-b'],
    defaultAid: -1,
  });
}

function instances(r: Rules): InstanceSet {
  const set = new InstanceSet();
  set.replaceStatic(r, [
    { aid: 0, addr: HOST, addr6: null, port: 19001, service: 0, vport: 0 },
    { aid: 0, addr: HOST, addr6: null, port: 19001, service: 1, vport: 0 },
    { aid: 1, addr: HOST, addr6: null, port: 19002, service: -1, vport: 0 },
  ]);
  return set;
}

// ---------------------------------------------------------------- the model (from the configuration alone)

/** The AID a new flow from client:port gets (the selectors above), or -1. */
function aidOf(client: number, port: number, proto: number): number {
  const net = (client & 0xffffff00) >>> 0;
  if (net === NET_A || client === HOST) return 0;
  if (net === NET_B && port >= 1024) return 1;
  if (net === NET_C && proto === PROTO_UDP) return 1;
  return -1;
}
const realPortOf = (aid: number) => (aid === 0 ? 19001 : 19002);
const natOf = (client: number) => (client === HOST ? LOCAL_CLIENT : client);

type Ip4 = Omit<Ipv4Spec, 'protocol'>;

/** A TCP segment or UDP datagram as the builder makes it. */
interface L4Pkt {
  ip: Ip4;
  proto: number;
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  options: Uint8Array;
  payload: Uint8Array;
  /** UDP: with a checksum (false: field 0). */
  csum: boolean;
}

function l4Of(p: L4Pkt): Uint8Array {
  const pseudo = { v: 4 as const, src: p.ip.src, dst: p.ip.dst };
  if (p.proto === PROTO_TCP)
    return tcp(
      {
        srcPort: p.sport,
        dstPort: p.dport,
        seq: p.seq,
        ack: p.ack,
        flags: p.flags,
        window: p.window,
        options: p.options,
        payload: p.payload,
      },
      pseudo,
    );
  return udp({ srcPort: p.sport, dstPort: p.dport, payload: p.payload }, p.csum ? pseudo : null);
}

const bytesOf = (p: L4Pkt) => ipv4({ ...p.ip, protocol: p.proto }, l4Of(p));

/** Where vpm sends the addresses of a packet from src to dst (a later fragment's rewrite), or null. */
function addressesOut(src: number, dst: number): { src: number; dst: number } | null {
  if (dst === VIP) return { src: natOf(src), dst: HOST };
  if (src === HOST && dst !== HOST) return { src: VIP, dst: dst === LOCAL_CLIENT ? HOST : dst };
  return null;
}

/** The packet vpm makes of `p` if a flow takes it (the only translation the configuration allows), or null. */
function translated(p: L4Pkt): L4Pkt | null {
  const { src, dst } = p.ip;
  if (dst === VIP && p.dport === VPORT) {
    const aid = aidOf(src, p.sport, p.proto);
    if (aid < 0) return null;
    return { ...p, ip: { ...p.ip, src: natOf(src), dst: HOST }, dport: realPortOf(aid) };
  }
  if (src === HOST && REAL_PORTS.has(p.sport)) {
    const client = dst === LOCAL_CLIENT ? HOST : dst;
    const aid = aidOf(client, p.dport, p.proto);
    if (aid < 0 || realPortOf(aid) !== p.sport || natOf(client) !== dst) return null;
    return { ...p, ip: { ...p.ip, src: VIP, dst: client }, sport: VPORT };
  }
  return null;
}

// ---------------------------------------------------------------- small helpers

function get16(b: Uint8Array, i: number): number {
  return (b[i]! << 8) | b[i + 1]!;
}
function get32(b: Uint8Array, i: number): number {
  return ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
}
function get16le(b: Uint8Array, i: number): number {
  return b[i]! | (b[i + 1]! << 8);
}
function put16(b: Uint8Array, i: number, v: number): void {
  b[i] = (v >> 8) & 0xff;
  b[i + 1] = v & 0xff;
}

/** Recompute the IPv4 header checksum (when the header is there to sum). */
function fixIp(b: Uint8Array): void {
  const hl = (b[0]! & 0x0f) * 4;
  if (b.length < 20 || hl < 20 || hl > b.length) return;
  put16(b, 10, 0);
  put16(b, 10, inetChecksum(b.subarray(0, hl)));
}

/** FNV-1a of the bytes, with their length: a key for sets of expected packets. */
function digest(b: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return `${b.length}:${(h >>> 0).toString(16)}`;
}

/** The builder's own check of an IPv4 packet's L4 checksum (TCP, UDP, ICMP; no fragments). */
function l4SumOk(pkt: Uint8Array): boolean {
  const hl = (pkt[0]! & 0x0f) * 4;
  const total = get16(pkt, 2);
  const proto = pkt[9]!;
  const l4 = pkt.subarray(hl, total);
  if (proto === PROTO_ICMP) return inetSum(l4) === 0xffff;
  const pseudo = { v: 4 as const, src: get32(pkt, 12), dst: get32(pkt, 16) };
  if (proto === PROTO_TCP) return inetSum(l4, pseudoSum(pseudo, proto, l4.length)) === 0xffff;
  if (proto !== PROTO_UDP) return true;
  if (get16(l4, 6) === 0) return true;
  const len = get16(l4, 4);
  return inetSum(l4.subarray(0, len), pseudoSum(pseudo, proto, len)) === 0xffff;
}

/** The pseudo-header sum of the packet's own addresses and L4 length (what NEEDS_CSUM wants in the field). */
function partialSum(info: PacketInfo): number {
  return pseudoSum({ v: 4, src: info.srcAddr, dst: info.dstAddr }, info.protocol, info.l4Len);
}

/** Make a TCP/UDP packet's checksum partial (the kernel's CHECKSUM_PARTIAL); null when it has no L4 header. */
function toPartial(pkt: Uint8Array): { csumStart: number; csumOffset: number } | null {
  const info = new PacketInfo();
  if (checkPacket(pkt, 0, pkt.length, info) !== Check.OK || info.version !== 4) return null;
  if (info.l4Off < 0 || (info.protocol !== PROTO_TCP && info.protocol !== PROTO_UDP)) return null;
  const co = info.protocol === PROTO_TCP ? 16 : 6;
  put16(pkt, info.l4Off + co, partialSum(info));
  return { csumStart: info.l4Off, csumOffset: co };
}

/** hdr_len as vpm must write it: up to the end of the L4 header; the IP header of a fragment. */
function headerLen(pkt: Uint8Array): number {
  const hl = (pkt[0]! & 0x0f) * 4;
  if ((get16(pkt, 6) & 0x3fff) !== 0) return hl;
  if (pkt[9] === PROTO_TCP) return hl + (pkt[hl + 12]! >> 4) * 4;
  if (pkt[9] === PROTO_UDP || pkt[9] === PROTO_ICMP) return hl + 8;
  return hl;
}

const isFragment = (b: Uint8Array) =>
  b.length >= 20 && b[0]! >> 4 === 4 && (get16(b, 6) & 0x3fff) !== 0;

/** A fragment's identity: IP id, offset, length, protocol. */
const fragKey = (b: Uint8Array) =>
  `${get16(b, 4)}/${(get16(b, 6) & 0x1fff) * 8}/${get16(b, 2)}/${b[9]}`;

const ICMP_ERRORS: readonly [number, number][] = [
  [3, 3],
  [3, 3],
  [3, 1],
  [3, 4],
  [3, 13],
  [11, 0],
  [12, 0],
  [4, 0],
];
const isIcmpError = (t: number) => t === 3 || t === 4 || t === 11 || t === 12;

// ---------------------------------------------------------------- one run

interface Tagged {
  what: string;
  /** The frame as it was injected (for failure messages). */
  frame: Uint8Array;
  /** Not mutated: the model below applies. */
  pristine: boolean;
  /** The IP packets its output may be (pristine only); empty: none may appear. */
  accept: Uint8Array[];
  /** An output must appear (a packet of a live flow; a message passed on). */
  must: boolean;
  /** The virtio-net header it went in with. */
  hdr: Uint8Array | null;
  seen: number;
}

interface Generated {
  pkt: Uint8Array;
  what: string;
  accept: Uint8Array[];
  must: boolean;
  /** The model covers it (false: garbage, floods). */
  model: boolean;
}

/** A datagram the test cut into fragments. */
interface Datagram {
  serial: number;
  /** Source, destination, protocol and IP id: what vpm knows it by. */
  key: string;
  client: number;
  cport: number;
  proto: number;
  /** When its first fragment came out translated (null: not yet), and the id of the flow it had. */
  firstOut: number | null;
  flowId: number;
  /** The flow's id before the batch its first fragment went in (-1: none). */
  idBefore: number;
}

/** A packet waiting to be sent in a later batch (a fragment, or one of a burst). */
interface Pending {
  due: number;
  pkt: Uint8Array;
  what: string;
  model: boolean;
  dgram?: Datagram;
  /** The fragment as vpm must write it, if the configuration translates it. */
  out?: Uint8Array | null;
}

interface RunResult {
  failures: string[];
  counters: Counters;
  matched: Record<string, number>;
  mustChecked: number;
  /** Embryonic flows evicted by new ones (the table's counter), and the batches where that happened. */
  embryonicEvicted: number;
  evictingBatches: number;
  /** Of which later fragments (that came after their first fragment). */
  mustFragments: number;
  packets: number;
}

function run(seed: number, vnet: boolean, batches: number): RunResult {
  const rng = new Rng(seed);
  const hr = vnet ? 10 : 0;
  const tun = new MemoryTun({ batchSize: 16, vnetHdr: vnet });
  const table = new FlowTable(CAPACITY, TIMEOUTS, seed);
  const counters = new Counters(2);
  const r = rules();
  const p = new Pipeline(
    tun,
    table,
    r,
    counters,
    {
      instances: instances(r),
      verifyL4Checksum: true,
      limits: LIMITS,
      localClientAddr: LOCAL_CLIENT,
    },
    new Set([HOST]),
  );
  let now = 10_000;
  tun.start((n) => p.processBatch(n, now));

  const failures: string[] = [];
  const fail = (msg: string) => {
    if (failures.length < 20) failures.push(msg);
  };
  const matched: Record<string, number> = {};
  const match = (k: string) => {
    matched[k] = (matched[k] ?? 0) + 1;
  };
  let mustChecked = 0;
  let evictingBatches = 0;
  let mustFragmentsChecked = 0;
  let injected = 0;

  const pick = <T>(a: readonly T[]): T => a[rng.int(a.length)]!;
  const chance = (n: number) => rng.int(n) === 0;

  // --- the tags (IP identification of every non-fragment packet) of the batch being built
  let tagNo = 0;
  const nextTag = () => {
    tagNo = (tagNo % 0xffff) + 1;
    return tagNo;
  };
  let batchTags = new Map<number, Tagged>();
  // --- fragments: what each may become on the way out, and the keys no model covers
  const fragExpect = new Map<string, Set<string>>();
  const tainted = new Set<string>();
  const expectFragment = (out: Uint8Array) => {
    const k = `${get32(out, 12)}/${get32(out, 16)}/${fragKey(out)}`;
    let set = fragExpect.get(k);
    if (!set) {
      set = new Set();
      fragExpect.set(k, set);
    }
    set.add(digest(out));
  };
  const taint = (b: Uint8Array) => {
    if (b.length >= 20 && b[0]! >> 4 === 4 && (get16(b, 6) & 0x3fff) !== 0) tainted.add(fragKey(b));
  };
  /** Fragments waiting to be sent in a later batch. */
  let pending: Pending[] = [];
  /** The datagrams cut into fragments, by the expected output of their first fragment. */
  const firstOf = new Map<string, Datagram>();
  /** The datagram whose first fragment came last, by (source, destination, protocol, id); -1: a mutated one. */
  const lastFirst = new Map<string, number>();
  let datagrams = 0;
  /** Later fragments that must come out in this batch, by their expected bytes. */
  let mustFragments = new Map<string, number>();
  let mustWhat = new Map<string, string>();
  let batchNo = 0;

  const ipSpec = (src: number, dst: number, ident: number): Ip4 => ({
    src,
    dst,
    ident,
    ttl: 1 + rng.int(255),
    tos: rng.int(4) === 0 ? rng.int(256) : 0,
    df: rng.int(2) === 0,
    options: chance(8) ? randomBytes(rng, 4 * (1 + rng.int(4))) : undefined,
  });

  const payloadLen = (big: boolean) =>
    big && chance(6) ? 500 + rng.int(vnet ? 6000 : 900) : chance(8) ? rng.int(1000) : rng.int(64);

  function l4Pkt(
    ip: Ip4,
    proto: number,
    sport: number,
    dport: number,
    flags: number,
    big = true,
  ): L4Pkt {
    return {
      ip,
      proto,
      sport,
      dport,
      seq: rng.u32(),
      ack: rng.u32(),
      flags,
      window: rng.int(0x10000),
      options: chance(6) ? randomBytes(rng, 4 * rng.int(4)) : new Uint8Array(0),
      payload: randomBytes(rng, payloadLen(big)),
      csum: !chance(5),
    };
  }

  const clientFlags = () =>
    pick([SYN, SYN, SYN, ACK, ACK | PSH, ACK | PSH, FIN | ACK, RST, rng.int(256)]);
  const serverFlags = () => pick([SYN | ACK, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST | ACK]);

  /** The id (FlowTable.id) of the datagram's flow, or -1 if it has none. */
  function flowIdOf(d: Datagram): number {
    const h = table.lookup(d.client, d.cport, VIP, VPORT, d.proto);
    return h < 0 ? -1 : table.id[h >> 1]!;
  }

  /** The flow slot of client:cport/proto, or -1; its columns checked against the model. */
  function liveFlow(client: number, cport: number, proto: number): number {
    const h = table.lookup(client, cport, VIP, VPORT, proto);
    if (h < 0) return -1;
    const s = h >> 1;
    const aid = aidOf(client, cport, proto);
    if (
      (h & 1) !== 0 ||
      aid < 0 ||
      table.realAddr[s] !== HOST ||
      table.realPort[s] !== realPortOf(aid) ||
      table.natAddr[s] !== natOf(client) ||
      table.natPort[s] !== cport
    )
      fail(
        `flow ${client}:${cport}/${proto} in the table is not the model's: real ${table.realAddr[s]}:${table.realPort[s]}, nat ${table.natAddr[s]}:${table.natPort[s]}`,
      );
    return s;
  }

  // --- generators: each returns one IP packet carrying `tag` as its identification

  /** A TCP segment or UDP datagram of a flow (either direction), or to a closed port or no service. */
  function genTransport(tag: number, proto: number): Generated {
    const client = pick(CLIENTS);
    const cport = pick(CLIENT_PORTS);
    const aid = aidOf(client, cport, proto);
    let pkt: L4Pkt;
    let what: string;
    if (rng.int(5) < 3) {
      const odd = chance(10);
      const dst = odd ? pick([VIP, OTHER, HOST]) : VIP;
      const dport = odd ? pick([9001, 53, VPORT]) : VPORT;
      pkt = l4Pkt(ipSpec(client, dst, tag), proto, cport, dport, clientFlags());
      what = `${proto === PROTO_TCP ? 'TCP' : 'UDP'} from a client`;
    } else {
      const sport = chance(10) ? pick([19001, 19002, 19003]) : realPortOf(Math.max(0, aid));
      pkt = l4Pkt(ipSpec(HOST, natOf(client), tag), proto, sport, cport, serverFlags());
      what = `${proto === PROTO_TCP ? 'TCP' : 'UDP'} from an instance`;
    }
    const t = translated(pkt);
    const live = t !== null && liveFlow(client, cport, proto) >= 0;
    return { pkt: bytesOf(pkt), what, accept: t ? [bytesOf(t)] : [], must: live, model: true };
  }

  /** An ICMP echo request (or another query) to the VIP, the local-client address or elsewhere. */
  function genEcho(tag: number): Generated {
    const src = pick([...CLIENTS, ROUTER]);
    const v = rng.int(10);
    const [dst, type] =
      v < 5
        ? [VIP, 8]
        : v < 6
          ? [LOCAL_CLIENT, 8]
          : v < 8
            ? [pick([OTHER, HOST, ip4('198.18.1.2')]), 8]
            : v < 9
              ? [VIP, pick([0, 13, 17])]
              : [OTHER, 13];
    const ip = { ...ipSpec(src, dst, tag), options: undefined };
    const m = {
      type,
      code: chance(8) ? rng.int(256) : 0,
      rest: rng.u32(),
      data: randomBytes(rng, chance(8) ? rng.int(1400) : rng.int(64)),
    };
    const pkt = ipv4({ ...ip, protocol: PROTO_ICMP }, icmp(m));
    const bad = chance(10);
    if (bad) pkt[22]! ^= 1 + rng.int(255);
    const ours = dst === VIP || dst === LOCAL_CLIENT;
    let accept: Uint8Array[] = [];
    if (bad) accept = [];
    else if (!ours) accept = [pkt];
    else if (dst === VIP && type === 8)
      accept = [
        ipv4({ ...ip, src: VIP, dst: src, ttl: 64, protocol: PROTO_ICMP }, icmp({ ...m, type: 0 })),
      ];
    const what = [
      'echo request to the VIP',
      'echo request to the local-client address',
      'echo request elsewhere',
      'other ICMP to the VIP',
      'other ICMP elsewhere',
    ][v < 5 ? 0 : v < 6 ? 1 : v < 8 ? 2 : v < 9 ? 3 : 4]!;
    return { pkt, what, accept, must: !bad && !ours, model: true };
  }

  /** An ICMP error quoting a packet vpm sent towards a server or a client, of a live flow or not, or of none. */
  function genIcmpError(tag: number): Generated {
    const [type, code] = pick(ICMP_ERRORS);
    const rest = type === 3 && code === 4 ? rng.int(0x10000) : type === 12 ? rng.int(60) << 24 : 0;
    const proto = rng.int(2) === 0 ? PROTO_TCP : PROTO_UDP;
    const client = pick(CLIENTS);
    const cport = pick(CLIENT_PORTS);
    const aid = aidOf(client, cport, proto);
    const nat = natOf(client);
    const v = rng.int(10);
    let inner: L4Pkt;
    /** The quoted packet and the outer addresses after translation (null: no translation). */
    let innerOut: L4Pkt | null = null;
    let outer: { src: number; dst: number };
    let outerOut: { src: number; dst: number } | null = null;
    let what: string;
    const wrong = () => pick([VIP, ROUTER, ip4('198.18.1.9'), LOCAL_CLIENT, OTHER, HOST]);
    if (v < 4 && aid >= 0) {
      // About a packet vpm sent to the server: the error goes to the client.
      const real = realPortOf(aid);
      inner = l4Pkt(ipSpec(nat, HOST, rng.int(0x10000)), proto, cport, real, clientFlags(), false);
      innerOut = { ...inner, ip: { ...inner.ip, src: client, dst: VIP }, dport: VPORT };
      outer = { src: rng.int(2) === 0 ? HOST : ROUTER, dst: chance(6) ? wrong() : nat };
      if (outer.dst === nat) outerOut = { src: outer.src === HOST ? VIP : outer.src, dst: client };
      what = 'ICMP error about a packet towards a server';
    } else if (v < 7 && aid >= 0) {
      // About a packet vpm sent to the client: the error goes to the server.
      inner = l4Pkt(
        ipSpec(VIP, client, rng.int(0x10000)),
        proto,
        VPORT,
        cport,
        serverFlags(),
        false,
      );
      innerOut = { ...inner, ip: { ...inner.ip, src: HOST, dst: nat }, sport: realPortOf(aid) };
      outer = { src: rng.int(2) === 0 ? client : ROUTER, dst: chance(6) ? wrong() : VIP };
      if (outer.dst === VIP) outerOut = { src: outer.src === client ? nat : outer.src, dst: HOST };
      what = 'ICMP error about a packet towards a client';
    } else {
      // About no flow (the quote's addresses are outside every selector).
      const a = (NOWHERE + 1 + rng.int(250)) >>> 0;
      const [src, dst] = rng.int(2) === 0 ? [a, pick([VIP, HOST, a + 1])] : [pick([VIP, HOST]), a];
      inner = l4Pkt(
        ipSpec(src, dst, rng.int(0x10000)),
        proto,
        pick(CLIENT_PORTS),
        pick([VPORT, 19001, 19002]),
        clientFlags(),
        false,
      );
      outer = { src: pick([ROUTER, a, HOST]), dst: pick([VIP, LOCAL_CLIENT, OTHER, a, HOST]) };
      what = 'ICMP error about no flow';
    }
    const full = bytesOf(inner);
    const ihl = (full[0]! & 0x0f) * 4;
    // How much is quoted: all of it, the header and 8 bytes (RFC 792), the ports only, or too little.
    const q = rng.int(8);
    const quoteLen =
      q < 3
        ? Math.min(full.length, 548)
        : q < 5
          ? Math.min(full.length, ihl + 8)
          : q < 6
            ? Math.min(full.length, ihl + 4 + rng.int(4))
            : q < 7
              ? ihl + rng.int(Math.min(full.length, 548) - ihl + 1)
              : rng.int(ihl + 4);
    const quote = full.slice(0, quoteLen);
    let quoteOk = quoteLen >= ihl + 4;
    if (chance(12) && quote.length > 0) {
      // A quoted header that is no IPv4 header: IHL below 5, beyond the quote, or another version.
      const kind = rng.int(3);
      if (kind === 0) quote[0] = 0x40 | rng.int(5);
      else if (kind === 1)
        quote[0] = 0x40 | Math.min(15, Math.floor(quoteLen / 4) + 1 + rng.int(3));
      else quote[0] = (pick([0, 5, 6, 15]) << 4) | (quote[0]! & 0x0f);
      quoteOk = (quote[0]! & 0x0f) * 4 === ihl && quote[0]! >> 4 === 4;
      if (quoteOk) quoteOk = quoteLen >= ihl + 4;
    }
    const ip = { ...ipSpec(outer.src, outer.dst, tag), options: undefined };
    const m = { type, code, rest, data: quote };
    const pkt = ipv4({ ...ip, protocol: PROTO_ICMP }, icmp(m));
    const bad = chance(10);
    if (bad) pkt[22]! ^= 1 + rng.int(255);
    const accept: Uint8Array[] = [];
    let live = false;
    if (!bad) {
      if (innerOut && outerOut && quoteOk) {
        // The quote as vpm rewrites it: the ports and addresses, both quoted checksums where
        // they were quoted (an L4 checksum only partly quoted stays as it was).
        const qOut = bytesOf(innerOut).subarray(0, quoteLen);
        const field = ihl + (proto === PROTO_TCP ? 16 : 6);
        if (quoteLen < field + 2) for (let j = field; j < quoteLen; j++) qOut[j] = full[j]!;
        accept.push(
          ipv4(
            { ...ip, src: outerOut.src, dst: outerOut.dst, protocol: PROTO_ICMP },
            icmp({ ...m, data: qOut }),
          ),
        );
        live = liveFlow(client, cport, proto) >= 0;
      }
      // An error about no flow is dropped, wherever it goes.
    }
    return { pkt, what, accept, must: !bad && live, model: true };
  }

  /** A TCP/UDP datagram (or an echo request) of a flow or not, cut into fragments sent in some order. */
  function genFragments(): void {
    const v = rng.int(12);
    const client = pick(CLIENTS);
    const cport = pick(CLIENT_PORTS);
    const proto = v === 0 ? PROTO_ICMP : rng.int(2) === 0 ? PROTO_TCP : PROTO_UDP;
    const aid = aidOf(client, cport, proto);
    const id = rng.int(3) === 0 ? 1 + rng.int(8) : rng.int(0x10000);
    const toServer = rng.int(5) < 3;
    const [src, dst] = toServer ? [client, VIP] : [HOST, natOf(client)];
    const ip: Ip4 = { ...ipSpec(src, dst, id), df: false };
    let l4: Uint8Array;
    let l4Out: Uint8Array | null = null;
    let hl = 8;
    if (proto === PROTO_ICMP) {
      l4 = icmp({ type: 8, rest: rng.u32(), data: randomBytes(rng, 40 + rng.int(600)) });
    } else {
      const sport = toServer ? cport : realPortOf(Math.max(0, aid));
      const dport = toServer ? VPORT : cport;
      const pk = l4Pkt(ip, proto, sport, dport, toServer ? clientFlags() : serverFlags(), false);
      pk.payload = randomBytes(rng, 16 + rng.int(vnet ? 1400 : 1100));
      l4 = l4Of(pk);
      const t = translated(pk);
      if (t) l4Out = l4Of(t);
      if (proto === PROTO_TCP) hl = 20 + pk.options.length;
    }
    // The cuts: the first fragment holds the L4 header (or, one time in eight, too little of it).
    let first = chance(8)
      ? 8 * (1 + rng.int(Math.max(1, Math.floor((hl - 1) / 8))))
      : Math.ceil(hl / 8) * 8 + 8 * rng.int(Math.max(1, (l4.length - hl) / 24));
    if (first >= l4.length) first = Math.max(8, Math.floor((l4.length - 1) / 8) * 8);
    const tooShort = first < hl;
    const cuts = [0, first];
    while (cuts[cuts.length - 1]! < l4.length) {
      const left = l4.length - cuts[cuts.length - 1]!;
      const next = chance(3) ? left : 8 * (1 + rng.int(Math.max(1, Math.floor(left / 16))));
      cuts.push(Math.min(l4.length, cuts[cuts.length - 1]! + next));
    }
    const d: Datagram = {
      serial: ++datagrams,
      key: `${src}/${dst}/${proto}/${id}`,
      client,
      cport,
      proto,
      firstOut: null,
      flowId: 0,
      idBefore: -1,
    };
    const out = addressesOut(src, dst);
    const ipOut = out ? { ...ip, src: out.src, dst: out.dst } : null;
    const piece = (from: number, to: number, body: Uint8Array, hdr: Ip4) =>
      ipv4({ ...hdr, protocol: proto, mf: to < l4.length, fragOffset: from }, body.slice(from, to));
    // A later fragment keeps its bytes, only its addresses are rewritten; the first is the
    // translated datagram's first fragment (ports and L4 checksum rewritten).
    const pieces: { pkt: Uint8Array; out: Uint8Array | null }[] = [];
    const add = (from: number, to: number) => {
      let o: Uint8Array | null = null;
      if (ipOut && from > 0) o = piece(from, to, l4, ipOut);
      else if (ipOut && l4Out && !tooShort) {
        o = piece(from, to, l4Out, ipOut);
        firstOf.set(digest(o), d);
      }
      if (o) expectFragment(o);
      pieces.push({ pkt: piece(from, to, l4, ip), out: o });
    };
    for (let k = 0; k + 1 < cuts.length; k++) add(cuts[k]!, cuts[k + 1]!);
    if (chance(8) && l4.length > 24) {
      // Overlapping: a piece across other pieces' boundaries.
      const from = 8 * (1 + rng.int(Math.floor((l4.length - 9) / 8)));
      add(from, Math.min(l4.length, from + 8 * (1 + rng.int(20))));
    }
    if (chance(8)) pieces.push(pick(pieces));
    // The order they go in.
    const order = rng.int(5);
    if (order === 1) pieces.reverse();
    else if (order === 2)
      for (let i = pieces.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [pieces[i], pieces[j]] = [pieces[j]!, pieces[i]!];
      }
    else if (order === 3) pieces.push(pieces.shift()!); // the first one last
    const i0 = pieces.findIndex((x) => (get16(x.pkt, 6) & 0x1fff) === 0);
    if (i0 >= 0 && chance(6)) pieces.splice(i0, 1); // the first one never comes
    const late = chance(10);
    let due = batchNo;
    for (const x of pieces) {
      // In order of the list, a batch or two apart at most, or some (all) of them late: about
      // 0.8-2.4 s, around fragmentMs and the UDP flows' expiry.
      due += rng.int(3) === 0 ? 1 + rng.int(2) : 0;
      pending.push({
        due: due + (late || chance(12) ? 25 + rng.int(50) : 0),
        pkt: x.pkt,
        what: `fragment of ${proto}/${toServer ? 'to a server' : 'to a client'}`,
        model: true,
        dgram: d,
        out: x.out,
      });
    }
  }

  /** Later fragments of datagrams whose first fragment never comes (random ids): they wait, overflow, expire. */
  function genOrphans(): void {
    const n = 8 + rng.int(33);
    for (let i = 0; i < n; i++) {
      const client = pick(CLIENTS);
      const [src, dst] = rng.int(2) === 0 ? [client, VIP] : [HOST, natOf(client)];
      const ip: Ip4 = { ...ipSpec(src, dst, rng.int(0x10000)), df: false };
      const proto = rng.int(2) === 0 ? PROTO_TCP : PROTO_UDP;
      const body = randomBytes(rng, 8 + rng.int(400));
      const spec = { ...ip, protocol: proto, mf: chance(2), fragOffset: 8 * (1 + rng.int(180)) };
      const x = ipv4(spec, body);
      const out = addressesOut(src, dst);
      if (out) expectFragment(ipv4({ ...spec, src: out.src, dst: out.dst }, body));
      pending.push({ due: batchNo + rng.int(2), pkt: x, what: 'orphan fragment', model: true });
    }
  }

  /**
   * A burst: echo requests to the VIP and datagrams to a closed port (over the ICMP
   * rate limit), or datagrams of new flows from many ports (the table fills).
   */
  function genFlood(): void {
    const n = 12 + rng.int(30);
    const scan = chance(2);
    for (let i = 0; i < n; i++) {
      const src = pick(CLIENTS);
      const x = scan
        ? ipv4(
            { src, dst: VIP, protocol: PROTO_UDP, ident: 0 },
            udp(
              { srcPort: 1024 + rng.int(60000), dstPort: VPORT, payload: randomBytes(rng, 20) },
              { v: 4, src, dst: VIP },
            ),
          )
        : chance(2)
          ? ipv4(
              { src, dst: VIP, protocol: PROTO_ICMP, ident: 0 },
              icmp({ type: 8, rest: rng.u32(), data: randomBytes(rng, 16) }),
            )
          : ipv4(
              { src, dst: VIP, protocol: PROTO_UDP, ident: 0 },
              udp(
                { srcPort: 1024 + rng.int(60000), dstPort: 9001, payload: randomBytes(rng, 20) },
                { v: 4, src, dst: VIP },
              ),
            );
      pending.push({ due: batchNo, pkt: x, what: 'flood', model: false });
    }
  }

  function genOne(tag: number): Generated | null {
    const k = rng.int(100);
    if (k < 20) return genTransport(tag, PROTO_TCP);
    if (k < 46) return genTransport(tag, PROTO_UDP);
    if (k < 53) return genEcho(tag);
    if (k < 70) return genIcmpError(tag);
    if (k < 84) {
      genFragments();
      return null;
    }
    if (k < 85) {
      genOrphans();
      return null;
    }
    if (k < 87) {
      genFlood();
      return null;
    }
    if (k < 90) {
      const b = randomBytes(rng, rng.int(120));
      if (b.length > 0 && chance(2)) b[0] = 0x45;
      return { pkt: b, what: 'garbage', accept: [], must: false, model: false };
    }
    if (k < 91) {
      const b = tcp6(
        { src: randomBytes(rng, 16), dst: randomBytes(rng, 16) },
        { srcPort: 1, dstPort: VPORT, flags: SYN },
      );
      return { pkt: b, what: 'IPv6', accept: [], must: false, model: false };
    }
    if (k < 92) {
      const b = ipv4({ ...ipSpec(pick(CLIENTS), VIP, tag), protocol: 47 }, randomBytes(rng, 40));
      return { pkt: b, what: 'GRE', accept: [], must: false, model: false };
    }
    return genTransport(tag, rng.int(3) === 0 ? PROTO_TCP : PROTO_UDP);
  }

  /** Damage a packet in one of several ways; the result is no longer covered by the model. */
  function mutate(src: Uint8Array): Uint8Array {
    let b = src.slice();
    const n = b.length;
    if (n === 0) return b;
    const hl = Math.min(n, (b[0]! & 0x0f) * 4);
    const l4 = Math.max(20, hl);
    switch (rng.int(9)) {
      case 0:
      case 1: {
        const flips = 1 + rng.int(3);
        for (let i = 0; i < flips; i++)
          b[rng.int(4) === 0 ? rng.int(n) : rng.int(Math.min(48, n))] = rng.u32() & 0xff;
        if (rng.int(2) === 0) fixIp(b);
        break;
      }
      case 2:
        b = b.slice(0, rng.int(n));
        break;
      case 3:
        if (n >= 4) put16(b, 2, chance(2) ? rng.int(0x10000) : Math.max(0, n - 1 - rng.int(40)));
        fixIp(b);
        break;
      case 4:
        if (b[9] === PROTO_UDP && n >= l4 + 8) {
          const avail = n - l4;
          const kind = rng.int(4);
          const len =
            kind === 0
              ? rng.int(8)
              : kind === 1
                ? avail + 1 + rng.int(100)
                : 8 + rng.int(Math.max(1, avail - 7));
          put16(b, l4 + 4, len);
          if (kind === 3 && len <= avail) {
            // A shorter datagram in a longer IP payload, its checksum right for its own length.
            put16(b, l4 + 6, 0);
            const c = inetChecksum(
              b.subarray(l4, l4 + len),
              pseudoSum({ v: 4, src: get32(b, 12), dst: get32(b, 16) }, PROTO_UDP, len),
            );
            put16(b, l4 + 6, c === 0 ? 0xffff : c);
          }
        } else if (b[9] === PROTO_TCP && n >= l4 + 20) {
          b[l4 + 12] = rng.int(256);
        } else if (n > l4 + 8) {
          b[l4 + rng.int(8)] = rng.int(256);
        }
        break;
      case 5:
        b[0] = 0x40 | rng.int(16);
        fixIp(b);
        break;
      case 6: {
        const padded = new Uint8Array(n + 1 + rng.int(40));
        padded.set(b);
        padded.set(randomBytes(rng, padded.length - n), n);
        b = padded;
        break;
      }
      case 7:
        if (b[9] === PROTO_UDP && n >= l4 + 8) put16(b, l4 + 6, 0);
        else if (n >= 20) {
          put16(b, 6, rng.int(0x10000)); // flags and fragment offset
          fixIp(b);
        }
        break;
      default:
        if (n > 2) b[rng.int(2) === 0 ? n - 1 : 1 + rng.int(n - 1)]! ^= 1 << rng.int(8);
    }
    return b;
  }

  /** Give an IPv4 packet its tag (its identification), fixing the header checksum if it was right. */
  function retag(b: Uint8Array, tag: number): void {
    if (b.length < 6 || b[0]! >> 4 !== 4) return;
    const ok = b.length >= 20 && ipv4HeaderOk(b);
    put16(b, 4, tag);
    if (ok) fixIp(b);
  }

  /** The virtio-net header for a packet (which it may make partial); `benign`: the kernel's own kinds. */
  function header(pkt: Uint8Array): { hdr: Uint8Array; benign: boolean; partial: boolean } {
    const mode = rng.int(20);
    const info = new PacketInfo();
    const verifies =
      checkPacket(pkt, 0, pkt.length, info) === Check.OK &&
      info.version === 4 &&
      (info.isFragment || verifyChecksums(pkt, info) === Verify.OK);
    let spec: VnetSpec = {};
    let benign = true;
    let partial = false;
    if (mode < 10) {
      spec = {};
    } else if (mode < 13) {
      spec = verifies ? { flags: VNET_F_DATA_VALID } : {};
    } else if (mode < 18) {
      const c = toPartial(pkt);
      if (c) {
        partial = true;
        spec = { flags: VNET_F_NEEDS_CSUM, hdrLen: rng.int(200), ...c };
        const payload = info.payloadLen;
        if (chance(3) && payload > 1) {
          const tcpGso = info.protocol === PROTO_TCP;
          spec.gsoType = tcpGso ? VNET_GSO_TCPV4 | (chance(4) ? VNET_GSO_ECN : 0) : VNET_GSO_UDP_L4;
          spec.gsoSize = 1 + rng.int(Math.min(1400, payload));
        }
      }
    } else {
      benign = false;
      spec = {
        flags: chance(4) ? rng.int(256) : rng.int(4),
        gsoType: pick([0, 0, 1, 3, 4, 5, 0x81, rng.int(256)]),
        hdrLen: rng.int(0x10000),
        gsoSize: chance(3) ? rng.int(0x10000) : rng.int(2000),
        csumStart: chance(2) ? (pkt[0]! & 0x0f) * 4 : rng.int(0x10000),
        csumOffset: pick([16, 6, rng.int(0x10000)]),
      };
      if (spec.flags === VNET_F_DATA_VALID && !verifies) spec.flags = 0;
      if (spec.flags === VNET_F_NEEDS_CSUM) partial = toPartial(pkt) !== null;
    }
    return { hdr: vnetHdr(spec), benign, partial };
  }

  const outInfo = new PacketInfo();

  /** Everything an output must satisfy. */
  function checkOutput(frame: Uint8Array): boolean {
    const hdr = vnet ? frame.subarray(0, hr) : null;
    const pkt = frame.subarray(hr);
    const say = (msg: string): boolean => {
      fail(`batch ${batchNo}: ${msg}: output ${hex(frame)}`);
      return false;
    };
    const code = checkPacket(pkt, 0, pkt.length, outInfo);
    if (code !== Check.OK) return say(`checkPacket says ${CHECK_NAMES[code]}`);
    const o = outInfo;
    if (o.version !== 4) return say('not IPv4');
    if (o.ipTotalLen !== pkt.length) say('written with bytes beyond its total length');
    if (!ipv4HeaderOk(pkt)) say('IPv4 header checksum wrong');
    const partial = hdr !== null && (hdr[0]! & VNET_F_NEEDS_CSUM) !== 0;
    if (hdr) {
      if (hdr[0]! > 2) say('virtio-net header with flag bits vpm refuses');
      if (
        partial &&
        (o.l4Off < 0 ||
          get16le(hdr, 6) !== o.l4Off ||
          get16le(hdr, 8) !== (o.protocol === PROTO_TCP ? 16 : 6))
      )
        say('NEEDS_CSUM header that does not name the L4 checksum');
    }
    if (!o.isFragment) {
      if (partial) {
        const field = o.l4Off + (o.protocol === PROTO_TCP ? 16 : 6);
        if (get16(pkt, field) % 0xffff !== partialSum(o) % 0xffff)
          say('partial checksum is not the pseudo-header sum of the packet as written');
      } else {
        if (verifyChecksums(pkt, o) !== Verify.OK) say('verifyChecksums refuses it');
        if (!l4SumOk(pkt)) say('L4/ICMP checksum wrong (builder)');
      }
    }
    // Towards a client: from the VIP, never from an instance's port.
    const proto = o.protocol;
    const ihl = o.ipHeaderLen;
    if (proto === PROTO_TCP || proto === PROTO_UDP) {
      if (o.dstAddr !== HOST) {
        if (o.srcAddr !== VIP) say('TCP/UDP towards a client from an address other than the VIP');
        if (o.fragOffset === 0 && pkt.length >= ihl + 4 && REAL_PORTS.has(get16(pkt, ihl)))
          say("TCP/UDP towards a client with an instance's port as source port");
      }
    } else if (proto === PROTO_ICMP && !o.isFragment && isIcmpError(pkt[ihl]!)) {
      const q = ihl + 8;
      const qhl = (pkt[q]! & 0x0f) * 4;
      if (
        o.dstAddr !== HOST &&
        pkt[q]! >> 4 === 4 &&
        qhl >= 20 &&
        q + qhl + 4 <= pkt.length &&
        (pkt[q + 9] === PROTO_TCP || pkt[q + 9] === PROTO_UDP) &&
        get32(pkt, q + 16) === HOST &&
        REAL_PORTS.has(get16(pkt, q + qhl + 2))
      )
        say(
          "an ICMP error towards a client quotes an instance's address and port, and vpm wrote it",
        );
    }
    if (o.isFragment) {
      if (hdr && (hdr[1] !== 0 || partial)) say('a fragment with GSO or NEEDS_CSUM');
      // Known by its bytes: a first fragment that came out as the model has it, a later
      // fragment that had to.
      const dk = digest(pkt);
      const d = firstOf.get(dk);
      if (d) {
        // Which flow the first fragment was recorded for is certain for UDP (its flows only
        // expire, between batches) and for a TCP flow that was the same before and after the
        // batch (a SYN after a FIN may replace one within a batch).
        d.flowId = flowIdOf(d);
        const sure = d.proto === PROTO_UDP || (d.idBefore >= 0 && d.idBefore === d.flowId);
        d.firstOut = sure ? now : null;
      }
      const m = mustFragments.get(dk);
      if (m !== undefined) mustFragments.set(dk, m - 1);
      if (tainted.has(fragKey(pkt))) return true;
      const k = `${o.srcAddr}/${o.dstAddr}/${fragKey(pkt)}`;
      if (!fragExpect.get(k)?.has(dk))
        return say('a fragment that is the translation of no fragment sent');
      match(o.fragOffset === 0 ? 'first fragment' : 'later fragment');
      return true;
    }
    const tag = get16(pkt, 4);
    if (tag === 0) {
      // What vpm sends itself: a RST, or a port unreachable, from the VIP, behind a zero header.
      const rst = proto === PROTO_TCP && (pkt[ihl + 13]! & RST) !== 0;
      const unreachable = proto === PROTO_ICMP && pkt[ihl] === 3 && pkt[ihl + 1] === 3;
      if (!(rst || unreachable) || o.srcAddr !== VIP)
        say('identification 0 on what vpm did not make');
      if (hdr?.some((x) => x !== 0)) say('a RST or ICMP error of vpm behind a non-zero header');
      match(rst ? 'RST' : 'port unreachable');
      return true;
    }
    const t = batchTags.get(tag);
    if (!t) return say(`identification ${tag}: no packet of this batch had it`);
    t.seen++;
    if (t.seen > 1) say(`${t.what}: written twice`);
    if (hdr && t.hdr) {
      for (let i = 0; i < hr; i++)
        if (i !== 2 && i !== 3 && hdr[i] !== t.hdr[i])
          say(`${t.what}: virtio-net header changed (in ${hex(t.hdr)})`);
    }
    if (!t.pristine) return true;
    if (hdr && get16le(hdr, 2) !== headerLen(pkt)) say(`${t.what}: hdr_len ${get16le(hdr, 2)}`);
    const h = digest(pkt);
    if (!t.accept.some((a) => digest(a) === h))
      return say(
        `${t.what}: not what the configuration makes of it (in ${hex(t.frame)}; expected ${
          t.accept.length === 0 ? 'no output' : t.accept.map(hex).join(' or ')
        })`,
      );
    match(t.what);
    return true;
  }

  function invariant(when: string): void {
    let drops = 0;
    for (let i = 0; i < DROP_REASONS; i++) drops += counters.drops[i]!;
    const sum = counters.packetsOut + drops + counters.fragmentsHeld;
    if (counters.packetsIn !== sum)
      fail(
        `${when}: packetsIn ${counters.packetsIn} != out ${counters.packetsOut} + drops ${drops} + held ${counters.fragmentsHeld}`,
      );
    const read = injected - tun.stats().readShort;
    if (counters.packetsIn !== read)
      fail(`${when}: ${read} packets read, ${counters.packetsIn} in`);
    if (counters.fragmentsHeld > LIMITS.heldFragments)
      fail(`${when}: ${counters.fragmentsHeld} fragments held`);
  }

  for (batchNo = 1; batchNo <= batches && failures.length < 20; batchNo++) {
    // Time goes on: mostly a little, sometimes past every timeout, sometimes past the UDP
    // flows' expiry but not fragmentMs (a flow goes, its slot is reused, its datagram's
    // record is still there).
    now += chance(300)
      ? LIMITS.fragmentMs + rng.int(5000)
      : chance(80)
        ? TIMEOUTS[4]! + rng.int(LIMITS.fragmentMs - TIMEOUTS[4]!)
        : chance(4)
          ? rng.int(200)
          : rng.int(20);
    table.expire(now, 100_000);
    if (chance(25)) {
      p.expireFragments(now);
      invariant(`batch ${batchNo}, after expireFragments`);
    }
    batchTags = new Map();
    mustFragments = new Map();
    mustWhat = new Map();
    const size = chance(3) ? 16 : 1 + rng.int(16);
    const frames: Uint8Array[] = [];
    for (let tries = 0; frames.length < size && tries < 200; tries++) {
      let g: Generated | null = null;
      let tag = 0;
      let from: Pending | null = null;
      const due = pending.findIndex((x) => x.due <= batchNo);
      if (due >= 0 && rng.int(3) !== 0) {
        from = pending[due]!;
        pending.splice(due, 1);
        g = { pkt: from.pkt, what: from.what, accept: [], must: false, model: from.model };
      } else {
        tag = nextTag();
        g = genOne(tag);
        if (!g) continue;
      }
      let pkt = g.pkt;
      let pristine = g.model;
      if (chance(isFragment(pkt) ? 8 : 4)) {
        pkt = mutate(pkt);
        pristine = false;
      }
      if (pkt.length + hr >= tun.slotSize) continue; // padded beyond a slot
      // Every packet but a fragment carries its tag; a fragment is known by its datagram.
      const fragment = isFragment(pkt);
      if (!fragment) {
        if (tag === 0) tag = nextTag();
        retag(pkt, tag);
      }
      if (!pristine) taint(pkt);
      if (fragment && (get16(pkt, 6) & 0x1fff) === 0 && from?.dgram)
        from.dgram.idBefore = flowIdOf(from.dgram);
      if (fragment && (get16(pkt, 6) & 0x1fff) === 0)
        lastFirst.set(
          `${get32(pkt, 12)}/${get32(pkt, 16)}/${pkt[9]}/${get16(pkt, 4)}`,
          pristine && from?.dgram ? from.dgram.serial : -1,
        );
      let hdr: Uint8Array | null = null;
      let benign = true;
      let accept = g.accept;
      if (vnet) {
        const h = header(pkt);
        hdr = h.hdr;
        benign = h.benign;
        if (h.partial && pristine)
          accept = accept.map((a) => {
            const c = a.slice();
            toPartial(c);
            return c;
          });
      }
      let frame = hdr ? new Uint8Array(hr + pkt.length) : pkt;
      if (hdr) {
        frame.set(hdr, 0);
        frame.set(pkt, hr);
        if (!benign && chance(10)) frame = frame.slice(0, rng.int(hr)); // shorter than its header
      }
      if (!fragment && tag !== 0)
        batchTags.set(tag, {
          what: g.what,
          frame,
          pristine,
          accept,
          must: pristine && benign && g.must,
          hdr,
          seen: 0,
        });
      frames.push(frame);
      // A later fragment of a datagram whose first fragment came out (in an earlier batch,
      // within fragmentMs, its flow still the same one, no other first fragment of the same
      // datagram identity since) goes out with the first one's translation.
      const dg = from?.dgram;
      if (
        dg &&
        from?.out &&
        pristine &&
        benign &&
        (get16(pkt, 6) & 0x1fff) !== 0 &&
        dg.firstOut !== null &&
        now < dg.firstOut + LIMITS.fragmentMs &&
        lastFirst.get(dg.key) === dg.serial &&
        flowIdOf(dg) === dg.flowId
      ) {
        const k = digest(from.out);
        mustFragments.set(k, (mustFragments.get(k) ?? 0) + 1);
        mustWhat.set(
          k,
          `datagram ${dg.key} #${dg.serial}, first out at ${dg.firstOut}, now ${now}, in ${hex(frame)}`,
        );
      }
    }
    // Now and then the device's queue is full, or the kernel refuses packets on write
    // (EINVAL): counted drops, so no output is required in such a batch. Only plain
    // packets are refused here: the segments of a refused super-packet carry IP IDs of
    // their own (id + k), which this model's tagging by IP ID does not follow;
    // offload.test.ts checks that path, two refusals in one batch included.
    const lossy = chance(15);
    if (lossy) {
      if (chance(2)) tun.writeCapacity = rng.int(frames.length + 2);
      else tun.refuse = (f) => ((!vnet || f[1] === 0) && rng.int(3) === 0 ? EINVAL : 0);
    }
    const before = tun.written.length;
    const evictedBefore = table.embryonicEvicted;
    const dropsBefore = Float64Array.from(counters.drops);
    const dropsNow = () =>
      DROP_NAMES.map((n, i) => [n, counters.drops[i]! - dropsBefore[i]!] as const)
        .filter(([, v]) => v > 0)
        .map(([n, v]) => `${n} ${v}`)
        .join(', ');
    try {
      tun.inject(frames);
    } catch (e) {
      fail(
        `batch ${batchNo}: the pipeline threw ${(e as Error).stack ?? String(e)}\ninput:\n${frames.map(hex).join('\n')}`,
      );
      break;
    }
    tun.writeCapacity = Number.POSITIVE_INFINITY;
    tun.refuse = null;
    injected += frames.length;
    invariant(`batch ${batchNo}`);
    for (const f of tun.written.slice(before)) checkOutput(f);
    tun.written.length = 0;
    const evicting = table.embryonicEvicted !== evictedBefore;
    if (evicting) evictingBatches++;
    for (const [k, n] of mustFragments) {
      if (lossy || evicting) break;
      mustFragmentsChecked++;
      if (n > 0)
        fail(
          `batch ${batchNo}: a later fragment after its first one: no output (${mustWhat.get(k)}; drops in this batch: ${dropsNow()})`,
        );
    }
    for (const t of batchTags.values()) {
      if (!t.must || lossy || evicting) continue;
      mustChecked++;
      if (t.seen === 0)
        fail(
          `batch ${batchNo}: ${t.what}: no output (in ${hex(t.frame)}; drops in this batch: ${dropsNow()})`,
        );
    }
    if (pending.length > 2000) pending = pending.slice(-1000);
  }
  // Whatever still waits runs out of time.
  now += LIMITS.fragmentMs + 1;
  p.expireFragments(now);
  invariant('at the end, after expireFragments');
  if (counters.fragmentsHeld !== 0) fail(`${counters.fragmentsHeld} fragments still held`);
  return {
    failures,
    counters,
    matched,
    mustChecked: mustChecked + mustFragmentsChecked,
    embryonicEvicted: table.embryonicEvicted,
    evictingBatches,
    mustFragments: mustFragmentsChecked,
    packets: injected,
  };
}

// ---------------------------------------------------------------- the tests

function report(name: string, r: RunResult, seconds: number): void {
  const c = r.counters;
  const drops = DROP_NAMES.map((n, i) => [n, c.drops[i]!] as const)
    .filter(([, v]) => v > 0)
    .map(([n, v]) => `${n} ${v}`)
    .join(', ');
  console.log(
    `pipeline robustness (UDP, ICMP, fragments), ${name}: ${r.packets} packets in ${seconds.toFixed(1)} s; ` +
      `out ${c.packetsOut}, released ${c.fragmentsReleased}, ICMP translated ${c.icmpErrorsTranslated}, ` +
      `passed ${c.icmpPassed}, echo replies ${c.echoReplies}, unreachable ${c.icmpUnreachableSent}, ` +
      `rate-limited ${c.icmpRateLimited}, RSTs ${c.rstSent}, flows ${c.flowsCreated}, super-packets ${c.superPacketsIn}; ` +
      `model matches ${JSON.stringify(r.matched)}, ${r.mustChecked} required outputs (${r.mustFragments} of them later fragments)\n  drops: ${drops}`,
  );
}

/** Every stage the fuzz is meant to reach, reached. */
function expectCoverage(r: RunResult, vnet: boolean): void {
  const c = r.counters;
  for (const reason of [
    Drop.TRUNCATED,
    Drop.BAD_IHL,
    Drop.BAD_TOTAL_LEN,
    Drop.L4_TRUNCATED,
    Drop.BAD_UDP_LEN,
    Drop.BAD_IP_CHECKSUM,
    Drop.BAD_L4_CHECKSUM,
    Drop.IPV6,
    Drop.UNSUPPORTED_PROTOCOL,
    Drop.FRAGMENT_NO_FLOW,
    Drop.NO_FLOW,
    Drop.NOT_SERVICE,
    Drop.REFUSED_NO_SELECTOR,
    Drop.REFUSED_NO_SERVICE,
    Drop.FRAGMENT_TOO_SHORT,
    Drop.FRAGMENT_HELD_OVERFLOW,
    Drop.FRAGMENT_EXPIRED,
    Drop.ICMP_BAD_CHECKSUM,
    Drop.ICMP_NO_FLOW,
    Drop.ICMP_UNSUPPORTED,
    Drop.ICMP_RATE_LIMITED,
    Drop.TX_ERROR,
    Drop.TX_REFUSED,
    ...(vnet
      ? [Drop.VNET_BAD_FLAGS, Drop.VNET_BAD_GSO_TYPE, Drop.VNET_BAD_GSO, Drop.VNET_BAD_CSUM]
      : []),
  ])
    expect(c.drops[reason], `drop reason ${DROP_NAMES[reason]} never seen`).toBeGreaterThan(0);
  // A full table here holds embryonic flows, which give way (refused_table_full, a table
  // full of established flows, is pipeline.test.ts's).
  expect(r.embryonicEvicted).toBeGreaterThan(0);
  expect(c.fragmentsReleased).toBeGreaterThan(0);
  expect(c.icmpErrorsTranslated).toBeGreaterThan(0);
  expect(c.icmpPassed).toBeGreaterThan(0);
  expect(c.echoReplies).toBeGreaterThan(0);
  expect(c.icmpUnreachableSent).toBeGreaterThan(0);
  expect(c.icmpRateLimited).toBeGreaterThan(0);
  expect(c.rstSent).toBeGreaterThan(0);
  if (vnet) expect(c.superPacketsIn).toBeGreaterThan(0);
  for (const k of [
    'TCP from a client',
    'TCP from an instance',
    'UDP from a client',
    'UDP from an instance',
    'ICMP error about a packet towards a server',
    'ICMP error about a packet towards a client',
    'echo request to the VIP',
    'echo request elsewhere',
    'first fragment',
    'later fragment',
    'RST',
    'port unreachable',
  ])
    expect(r.matched[k] ?? 0, `no output checked against the model for "${k}"`).toBeGreaterThan(20);
  // An ICMP error about no flow has no output: it is dropped, and counted.
  expect(c.drops[Drop.ICMP_NO_FLOW]!).toBeGreaterThan(20);
  expect(r.mustChecked).toBeGreaterThan(1000);
  expect(r.mustFragments).toBeGreaterThan(20);
}

describe('pipeline robustness: UDP, ICMP and IPv4 fragments', () => {
  for (const [name, vnet, seed] of [
    ['plain packets', false, 0x0d9_f00d],
    ['virtio-net headers', true, 0x1ce_c0de],
  ] as const) {
    it(`${name}: random and mutated traffic, no exception, every packet counted, every output valid`, () => {
      const t0 = performance.now();
      const r = run(seed, vnet, 2000);
      report(name, r, (performance.now() - t0) / 1000);
      expect(r.failures).toEqual([]);
      expectCoverage(r, vnet);
    });
  }
});
