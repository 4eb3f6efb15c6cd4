/**
 * The pipeline beyond TCP: UDP flows, IPv4 fragments, ICMP errors and echo.
 *
 * Expected packets are built independently (test/support/builder.ts computes
 * every checksum from scratch), so a byte-for-byte match checks each
 * incremental update the pipeline makes.
 */

import { describe, expect, it } from 'vitest';
import { Counters, DROP_REASONS, Drop } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline, type PipelineLimits } from '../../src/datapath/pipeline.js';
import { Rules } from '../../src/datapath/rules.js';
import { FlowState } from '../../src/flow/state.js';
import { FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { segmentedSize, segmentSuperPacket } from '../../src/wire/segment.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import { VNET_F_NEEDS_CSUM, VNET_GSO_UDP_L4 } from '../../src/wire/virtio.js';
import {
  hex,
  icmp4,
  inetChecksum,
  ip4,
  ipv4,
  PROTO_TCP,
  PROTO_UDP,
  pseudoSum,
  randomBytes,
  tcp4,
  udp,
  udp4,
  vnetHdr,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

const VIP = ip4('198.19.0.9');
const HOST = ip4('198.19.255.1');
const LOCAL_CLIENT = ip4('198.19.255.2');
const CLIENT = ip4('198.18.1.2');
const STRANGER = ip4('198.18.9.9');
const ROUTER = ip4('198.18.1.1');
const SYN = 0x02;
const ACK = 0x10;
const DNS = 53;
const REAL_UDP = 19053;
const REAL_TCP = 19001;

function makeRules(): Rules {
  return new Rules({
    services: [
      { name: 'dns-tcp', addr: VIP, addr6: null, port: DNS, proto: PROTO_TCP, peer: -1 },
      { name: 'dns', addr: VIP, addr6: null, port: DNS, proto: PROTO_UDP, peer: -1 },
    ],
    // Clients of 198.18.1.0/24 and the host itself are tenant a's; nobody else is anybody's.
    selectors: [
      {
        service: -1,
        cidrBase: Uint32Array.of(ip4('198.18.1.0')),
        cidrMask: Uint32Array.of(0xffffff00),
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        portLo: 0,
        portHi: 65535,
        aid: 0,
      },
      {
        service: -1,
        cidrBase: Uint32Array.of(HOST),
        cidrMask: Uint32Array.of(0xffffffff),
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        portLo: 0,
        portHi: 65535,
        aid: 0,
      },
    ],
    aidNames: ['a'],
    defaultAid: -1,
  });
}

function setup(
  o: {
    limits?: Partial<PipelineLimits>;
    vnetHdr?: boolean;
    batch?: number;
    capacity?: number;
    embryonic?: number;
  } = {},
) {
  const tun = new MemoryTun({ batchSize: o.batch ?? 128, vnetHdr: o.vnetHdr ?? false, mtu: 9000 });
  const table = new FlowTable(
    o.capacity ?? 64,
    [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000],
    11,
    o.embryonic,
  );
  const counters = new Counters(1);
  const rules = makeRules();
  const instances = new InstanceSet();
  instances.replaceStatic(rules, [
    { aid: 0, addr: HOST, addr6: null, port: REAL_TCP, service: 0, vport: 0 },
    { aid: 0, addr: HOST, addr6: null, port: REAL_UDP, service: 1, vport: 0 },
  ]);
  const limits: PipelineLimits = {
    heldFragments: 256,
    heldFragmentBytes: 1 << 20,
    fragmentMs: 5000,
    icmpPerSecond: 1000,
    ...o.limits,
  };
  const p = new Pipeline(
    tun,
    table,
    rules,
    counters,
    { instances, verifyL4Checksum: true, localClientAddr: LOCAL_CLIENT, limits },
    new Set([HOST]),
  );
  let now = 1000;
  tun.start((n) => p.processBatch(n, now));
  const hr = o.vnetHdr ? 10 : 0;
  const send = (...pkts: Uint8Array[]): Uint8Array[] => {
    const before = tun.written.length;
    tun.inject(pkts);
    return tun.written.slice(before).map((b) => b.subarray(hr));
  };
  const invariant = () => {
    let drops = 0;
    for (let i = 0; i < DROP_REASONS; i++) drops += counters.drops[i]!;
    expect(counters.packetsIn).toBe(counters.packetsOut + drops + counters.fragmentsHeld);
  };
  return {
    tun,
    table,
    counters,
    p,
    send,
    invariant,
    advance: (ms: number) => {
      now += ms;
      return now;
    },
    now: () => now,
  };
}

const dgram = (src: number, sp: number, dst: number, dp: number, payload: Uint8Array, ident = 7) =>
  udp4({ src, dst, ident, df: false }, { srcPort: sp, dstPort: dp, payload });

function verifies(pkt: Uint8Array): boolean {
  const info = new PacketInfo();
  return (
    checkPacket(pkt, 0, pkt.length, info) === Check.OK && verifyChecksums(pkt, info) === Verify.OK
  );
}

/** Split a whole IPv4 packet (20-byte header) into fragments of at most `size` payload bytes (a multiple of 8). */
function fragment(pkt: Uint8Array, size: number): Uint8Array[] {
  const payload = pkt.subarray(20);
  const out: Uint8Array[] = [];
  for (let at = 0; at < payload.length; at += size) {
    const part = payload.subarray(at, Math.min(payload.length, at + size));
    out.push(
      ipv4(
        {
          src: (pkt[12]! << 24) | (pkt[13]! << 16) | (pkt[14]! << 8) | pkt[15]!,
          dst: (pkt[16]! << 24) | (pkt[17]! << 16) | (pkt[18]! << 8) | pkt[19]!,
          protocol: pkt[9]!,
          ident: (pkt[4]! << 8) | pkt[5]!,
          ttl: pkt[8]!,
          df: false,
          mf: at + size < payload.length,
          fragOffset: at,
        },
        part,
      ),
    );
  }
  return out;
}

/** Reassemble fragments (any order) into the whole packet. */
function reassemble(frags: Uint8Array[]): Uint8Array {
  const parts = frags.map((f) => ({
    off: (((f[6]! << 8) | f[7]!) & 0x1fff) * 8,
    mf: (f[6]! & 0x20) !== 0,
    data: f.subarray((f[0]! & 15) * 4),
    head: f.subarray(0, 20),
  }));
  parts.sort((a, b) => a.off - b.off);
  const total = parts.reduce((n, p) => Math.max(n, p.off + p.data.length), 0);
  const body = new Uint8Array(total);
  for (const p of parts) body.set(p.data, p.off);
  const h = parts[0]!.head;
  return ipv4(
    {
      src: (h[12]! << 24) | (h[13]! << 16) | (h[14]! << 8) | h[15]!,
      dst: (h[16]! << 24) | (h[17]! << 16) | (h[18]! << 8) | h[19]!,
      protocol: h[9]!,
      ident: (h[4]! << 8) | h[5]!,
      ttl: h[8]!,
      df: false,
    },
    body,
  );
}

/** The ICMP error (type, code) from `src` to `dst` quoting `quoted` (the first `n` bytes of it). */
const icmpError = (
  src: number,
  dst: number,
  type: number,
  code: number,
  quoted: Uint8Array,
  rest = 0,
) => icmp4({ src, dst }, { type, code, rest, data: quoted });

describe('UDP flows', () => {
  it('translates a datagram to its instance and the reply back from VIP:port, following the state', () => {
    const { send, table, counters, invariant, advance } = setup();
    const q = randomBytes(new Rng(1), 40);
    expect(send(dgram(CLIENT, 40000, VIP, DNS, q)).map(hex)).toEqual([
      hex(dgram(CLIENT, 40000, HOST, REAL_UDP, q)),
    ]);
    const s = table.lookup(CLIENT, 40000, VIP, DNS, PROTO_UDP) >> 1;
    expect(table.state[s]).toBe(FlowState.UDP_UNREPLIED);
    // A TCP SYN on the same VIP:port is the other service, the other instance.
    expect(
      send(tcp4({ src: CLIENT, dst: VIP }, { srcPort: 40000, dstPort: DNS, flags: SYN })).map(hex),
    ).toEqual([
      hex(tcp4({ src: CLIENT, dst: HOST }, { srcPort: 40000, dstPort: REAL_TCP, flags: SYN })),
    ]);
    const r = randomBytes(new Rng(2), 300);
    advance(100);
    expect(send(dgram(HOST, REAL_UDP, CLIENT, 40000, r, 9)).map(hex)).toEqual([
      hex(dgram(VIP, DNS, CLIENT, 40000, r, 9)),
    ]);
    expect(table.state[s]).toBe(FlowState.UDP_ASSURED);
    // More client datagrams keep it assured.
    send(dgram(CLIENT, 40000, VIP, DNS, q));
    expect(table.state[s]).toBe(FlowState.UDP_ASSURED);
    expect(table.udpSize).toBe(1);
    expect(counters.flowsCreated).toBe(2);
    invariant();
  });

  it('expires an unreplied flow after udpUnrepliedMs and an assured one after udpAssuredMs, refreshed by traffic', () => {
    const { send, table, advance } = setup();
    send(dgram(CLIENT, 40001, VIP, DNS, new Uint8Array(4)));
    send(dgram(CLIENT, 40002, VIP, DNS, new Uint8Array(4)));
    send(dgram(HOST, REAL_UDP, CLIENT, 40002, new Uint8Array(4)));
    let now = advance(29_000);
    send(dgram(CLIENT, 40002, VIP, DNS, new Uint8Array(4))); // refreshes the assured one
    expect(table.expire(now, 100)).toBe(0);
    now = advance(1_001);
    expect(table.expire(now, 100)).toBe(1);
    expect(table.lookup(CLIENT, 40001, VIP, DNS, PROTO_UDP)).toBe(-1);
    now = advance(118_000);
    expect(table.expire(now, 100)).toBe(0);
    now = advance(2_000);
    expect(table.expire(now, 100)).toBe(1);
    expect(table.size).toBe(0);
    expect(table.udpSize).toBe(0);
  });

  it('a datagram flood from many source ports at the table limit: assured flows keep translating, the oldest unreplied give way, counted', () => {
    const { send, table, counters, invariant, advance } = setup({ capacity: 16, embryonic: 4 });
    const q = randomBytes(new Rng(3), 20);
    const r = randomBytes(new Rng(4), 20);
    // 12 assured flows: a datagram each way.
    for (let i = 0; i < 12; i++) {
      send(dgram(CLIENT, 30000 + i, VIP, DNS, q));
      send(dgram(HOST, REAL_UDP, CLIENT, 30000 + i, r, 9));
    }
    // 300 one-way datagrams from as many ports, one per ms.
    for (let i = 0; i < 300; i++) {
      advance(1);
      expect(send(dgram(CLIENT, 10000 + i, VIP, DNS, q)).map(hex)).toEqual([
        hex(dgram(CLIENT, 10000 + i, HOST, REAL_UDP, q)),
      ]);
      const port = 30000 + (i % 12);
      expect(send(dgram(HOST, REAL_UDP, CLIENT, port, r, 9)).map(hex)).toEqual([
        hex(dgram(VIP, DNS, CLIENT, port, r, 9)),
      ]);
    }
    expect(table.size).toBe(16);
    expect(table.embryonicSize).toBe(4);
    expect(table.embryonicEvicted).toBe(296);
    expect(counters.drops[Drop.REFUSED_TABLE_FULL]).toBe(0);
    // A late answer to an evicted flow finds none.
    expect(send(dgram(HOST, REAL_UDP, CLIENT, 10000, r, 9))).toEqual([]);
    expect(counters.drops[Drop.NO_FLOW]).toBe(1);
    // After the flood, a new client flow is created and answered.
    advance(1);
    expect(send(dgram(CLIENT, 41000, VIP, DNS, q)).map(hex)).toEqual([
      hex(dgram(CLIENT, 41000, HOST, REAL_UDP, q)),
    ]);
    expect(send(dgram(HOST, REAL_UDP, CLIENT, 41000, r, 9)).map(hex)).toEqual([
      hex(dgram(VIP, DNS, CLIENT, 41000, r, 9)),
    ]);
    // Full of assured flows (4 more assured ones): a new datagram is refused, port unreachable.
    for (let i = 0; i < 3; i++) {
      send(dgram(CLIENT, 42000 + i, VIP, DNS, q));
      send(dgram(HOST, REAL_UDP, CLIENT, 42000 + i, r, 9));
    }
    expect(table.embryonicSize).toBe(0);
    expect(table.size).toBe(16);
    const out = send(dgram(CLIENT, 43000, VIP, DNS, q));
    expect(out).toHaveLength(1);
    expect(counters.drops[Drop.REFUSED_TABLE_FULL]).toBe(1);
    expect(counters.icmpUnreachableSent).toBe(1);
    invariant();
  });

  it('keeps a checksum of 0 ("none") at 0 and sends a computed 0 as 0xffff', () => {
    const { send } = setup();
    const none = udp4(
      { src: CLIENT, dst: VIP, df: false },
      { srcPort: 40010, dstPort: DNS, payload: new Uint8Array(8) },
      false,
    );
    const [out] = send(none);
    expect(hex(out!)).toBe(
      hex(
        udp4(
          { src: CLIENT, dst: HOST, df: false },
          { srcPort: 40010, dstPort: REAL_UDP, payload: new Uint8Array(8) },
          false,
        ),
      ),
    );
    // Find a payload whose translated datagram sums to exactly 0: its checksum field must read 0xffff.
    let payload: Uint8Array | null = null;
    for (let v = 0; v < 0x10000 && !payload; v++) {
      const cand = Uint8Array.of(v >> 8, v & 0xff);
      const seg = udp({ srcPort: 40011, dstPort: REAL_UDP, payload: cand }, null);
      if (
        inetChecksum(seg, pseudoSum({ v: 4, src: CLIENT, dst: HOST }, PROTO_UDP, seg.length)) === 0
      )
        payload = cand;
    }
    expect(payload).not.toBeNull();
    const [t] = send(dgram(CLIENT, 40011, VIP, DNS, payload!));
    expect((t![26]! << 8) | t![27]!).toBe(0xffff);
    expect(verifies(t!)).toBe(true);
  });

  it('answers a datagram it cannot place with ICMP port unreachable from the VIP, rate-limited', () => {
    const { send, counters, advance, invariant } = setup({ limits: { icmpPerSecond: 100 } });
    const d = dgram(STRANGER, 5000, VIP, DNS, randomBytes(new Rng(3), 700));
    const [out] = send(d);
    // Quoting as much of the datagram as fits in 576 bytes (RFC 1812), from the VIP.
    const want = ipv4(
      { src: VIP, dst: STRANGER, protocol: 1, tos: 0xc0, df: false },
      (() => {
        const m = icmp4(
          { src: VIP, dst: STRANGER },
          { type: 3, code: 3, data: d.subarray(0, 548) },
        );
        return m.subarray(20);
      })(),
    );
    expect(hex(out!)).toBe(hex(want));
    expect(counters.drops[Drop.REFUSED_NO_SELECTOR]).toBe(1);
    // A closed UDP port of the VIP too (refused_no_service), and a burst: 100/s allows 5 at once.
    const burst = Array.from({ length: 20 }, (_, i) =>
      dgram(STRANGER, 6000 + i, VIP, 5353, new Uint8Array(4)),
    );
    expect(send(...burst)).toHaveLength(4); // one token went to the first answer
    expect(counters.drops[Drop.REFUSED_NO_SERVICE]).toBe(20);
    expect(counters.icmpRateLimited).toBe(16);
    advance(1000);
    expect(send(...burst.slice(0, 10))).toHaveLength(5);
    expect(counters.icmpUnreachableSent).toBe(10);
    invariant();
  });
});

describe('IPv4 fragments', () => {
  const big = (src: number, sp: number, dst: number, dp: number, seed: number, ident: number) =>
    dgram(src, sp, dst, dp, randomBytes(new Rng(seed), 4000), ident);

  it('translates a fragmented datagram in order, both ways, with the L4 checksum updated in the first fragment', () => {
    const { send, counters, invariant } = setup();
    const out = send(...fragment(big(CLIENT, 40100, VIP, DNS, 5, 0x1111), 1480));
    expect(out).toHaveLength(3);
    for (const f of out) expect(verifies(f)).toBe(true); // header checksums (L4: per fragment, not checked)
    expect(hex(reassemble(out))).toBe(hex(big(CLIENT, 40100, HOST, REAL_UDP, 5, 0x1111)));
    const back = send(...fragment(big(HOST, REAL_UDP, CLIENT, 40100, 6, 0x2222), 1200));
    expect(back).toHaveLength(4);
    expect(hex(reassemble(back))).toBe(hex(big(VIP, DNS, CLIENT, 40100, 6, 0x2222)));
    expect(verifies(reassemble(back))).toBe(true);
    expect(counters.packetsOut).toBe(7);
    invariant();
  });

  it('holds fragments that come before their first, and sends them when it comes', () => {
    const { send, counters, invariant } = setup();
    const frags = fragment(big(CLIENT, 40101, VIP, DNS, 7, 0x3333), 1000);
    expect(frags).toHaveLength(5);
    expect(send(frags[3]!, frags[1]!, frags[4]!)).toHaveLength(0);
    expect(counters.fragmentsHeld).toBe(3);
    invariant();
    const out = send(frags[0]!, frags[2]!);
    expect(out).toHaveLength(5);
    expect(hex(reassemble(out))).toBe(hex(big(CLIENT, 40101, HOST, REAL_UDP, 7, 0x3333)));
    expect(counters.fragmentsHeld).toBe(0);
    expect(counters.fragmentsReleased).toBe(3);
    invariant();
  });

  it('drops the later fragments of a datagram whose first fragment matched no flow, waiting or not', () => {
    const { send, counters, invariant } = setup();
    const frags = fragment(big(STRANGER, 40102, VIP, DNS, 8, 0x4444), 1480);
    send(frags[2]!);
    expect(counters.fragmentsHeld).toBe(1);
    send(frags[0]!); // refused: ICMP port unreachable goes out
    expect(counters.drops[Drop.REFUSED_NO_SELECTOR]).toBe(1);
    expect(counters.drops[Drop.FRAGMENT_NO_FLOW]).toBe(1);
    expect(send(frags[1]!)).toHaveLength(0);
    expect(counters.drops[Drop.FRAGMENT_NO_FLOW]).toBe(2);
    expect(counters.fragmentsHeld).toBe(0);
    invariant();
  });

  it('expires a fragment whose first never comes, and bounds the wait buffer', () => {
    const { send, counters, p, advance, invariant } = setup({
      limits: { heldFragments: 2, fragmentMs: 1000 },
    });
    const a = fragment(big(CLIENT, 40103, VIP, DNS, 9, 0x5555), 1480);
    const b = fragment(big(CLIENT, 40104, VIP, DNS, 10, 0x6666), 1480);
    send(a[1]!, a[2]!, b[1]!);
    expect(counters.fragmentsHeld).toBe(2);
    expect(counters.drops[Drop.FRAGMENT_HELD_OVERFLOW]).toBe(1);
    invariant();
    p.expireFragments(advance(999));
    expect(counters.fragmentsHeld).toBe(2);
    p.expireFragments(advance(1));
    expect(counters.fragmentsHeld).toBe(0);
    expect(counters.drops[Drop.FRAGMENT_EXPIRED]).toBe(2);
    invariant();
    // The first fragment after its followers expired still goes; they are gone.
    expect(send(a[0]!)).toHaveLength(1);
  });

  it('drops a tiny first fragment (RFC 1858) that does not hold the UDP header', () => {
    const { send, counters } = setup();
    const tiny = ipv4(
      { src: CLIENT, dst: VIP, protocol: PROTO_UDP, mf: true, df: false },
      Uint8Array.of(1, 2, 3, 4),
    );
    expect(send(tiny)).toHaveLength(0);
    expect(counters.drops[Drop.FRAGMENT_TOO_SHORT]).toBe(1);
  });

  it('a fragment of a flow that is gone is no_flow, even before its slot is reused', () => {
    const { send, table, counters } = setup();
    const frags = fragment(big(CLIENT, 40105, VIP, DNS, 11, 0x7777), 1480);
    send(frags[0]!);
    table.remove(table.lookup(CLIENT, 40105, VIP, DNS, PROTO_UDP) >> 1);
    expect(send(frags[1]!)).toHaveLength(0);
    expect(counters.drops[Drop.FRAGMENT_NO_FLOW]).toBe(1);
  });
});

describe('ICMP errors about flows (RFC 5508)', () => {
  it('translates a port unreachable the instance host sends about a datagram vpm delivered', () => {
    const { send, table, counters, invariant } = setup();
    const d = dgram(CLIENT, 40200, VIP, DNS, randomBytes(new Rng(12), 64));
    const [delivered] = send(d);
    const s = table.lookup(CLIENT, 40200, VIP, DNS, PROTO_UDP) >> 1;
    const seen = table.lastSeen[s];
    // The host quotes what it received (header + 8 bytes here; the rest of the quote is data).
    const err = icmpError(HOST, CLIENT, 3, 3, delivered!.subarray(0, 28 + 16));
    const [out] = send(err);
    // The client sees the error come from the VIP, about the datagram it sent.
    expect(hex(out!)).toBe(hex(icmpError(VIP, CLIENT, 3, 3, d.subarray(0, 28 + 16))));
    expect(counters.icmpErrorsTranslated).toBe(1);
    // Nothing else changes: not the state, not the idle timer.
    expect(table.state[s]).toBe(FlowState.UDP_UNREPLIED);
    expect(table.lastSeen[s]).toBe(seen);
    invariant();
  });

  it('translates fragmentation needed from a router about a segment vpm sent to the client', () => {
    const { send, counters } = setup();
    send(tcp4({ src: CLIENT, dst: VIP }, { srcPort: 40201, dstPort: DNS, flags: SYN }));
    const seg = tcp4(
      { src: HOST, dst: CLIENT },
      {
        srcPort: REAL_TCP,
        dstPort: 40201,
        flags: ACK,
        seq: 9,
        ack: 1,
        payload: new Uint8Array(1400),
      },
    );
    const [onWire] = send(seg);
    // The router quotes the header and 8 bytes: the TCP checksum is not in the quote.
    const err = icmpError(ROUTER, VIP, 3, 4, onWire!.subarray(0, 28), 1280);
    const [out] = send(err);
    expect(hex(out!)).toBe(hex(icmpError(ROUTER, HOST, 3, 4, seg.subarray(0, 28), 1280)));
    // With the TCP checksum quoted (RFC 1812 routers quote more), it is updated too.
    const [out2] = send(icmpError(ROUTER, VIP, 11, 0, onWire!.subarray(0, 60)));
    expect(hex(out2!)).toBe(hex(icmpError(ROUTER, HOST, 11, 0, seg.subarray(0, 60))));
    expect(counters.icmpErrorsTranslated).toBe(2);
  });

  it('translates errors about a local client (FIG. 8) both ways', () => {
    const { send } = setup();
    const d = dgram(HOST, 33000, VIP, DNS, new Uint8Array(20));
    const [delivered] = send(d); // HOST:33000 → as LOCAL_CLIENT:33000 → HOST:19053
    expect(hex(delivered!)).toBe(
      hex(dgram(LOCAL_CLIENT, 33000, HOST, REAL_UDP, new Uint8Array(20))),
    );
    // The instance's port is closed: the host answers the local-client address.
    const [toClient] = send(icmpError(HOST, LOCAL_CLIENT, 3, 3, delivered!.subarray(0, 28)));
    expect(hex(toClient!)).toBe(hex(icmpError(VIP, HOST, 3, 3, d.subarray(0, 28))));
    // The reply went out; the client's own socket is gone: the host answers the VIP.
    const [reply] = send(dgram(HOST, REAL_UDP, LOCAL_CLIENT, 33000, new Uint8Array(4)));
    const [toServer] = send(icmpError(HOST, VIP, 3, 3, reply!.subarray(0, 28)));
    expect(hex(toServer!)).toBe(
      hex(
        icmpError(
          LOCAL_CLIENT,
          HOST,
          3,
          3,
          dgram(HOST, REAL_UDP, LOCAL_CLIENT, 33000, new Uint8Array(4)).subarray(0, 28),
        ),
      ),
    );
  });

  it('drops an error with a bad checksum, or about no flow; passes the host other ICMP on', () => {
    const { send, counters, invariant } = setup();
    const quote = dgram(VIP, DNS, CLIENT, 40299, new Uint8Array(8)).subarray(0, 28);
    const bad = icmpError(CLIENT, VIP, 3, 3, quote);
    bad[22]! ^= 0x10;
    expect(send(bad)).toHaveLength(0);
    expect(counters.drops[Drop.ICMP_BAD_CHECKSUM]).toBe(1);
    expect(send(icmpError(CLIENT, VIP, 3, 3, quote))).toHaveLength(0);
    expect(counters.drops[Drop.ICMP_NO_FLOW]).toBe(1);
    // A quote too short to hold the ports is no flow either.
    expect(send(icmpError(CLIENT, VIP, 3, 3, quote.subarray(0, 22)))).toHaveLength(0);
    expect(counters.drops[Drop.ICMP_NO_FLOW]).toBe(2);
    // The host's own error about no flow (one that expired, say): dropped, not passed on
    // with the instance's address and port in it.
    const stale = icmpError(
      HOST,
      CLIENT,
      3,
      3,
      dgram(CLIENT, 1, HOST, REAL_UDP, new Uint8Array(8)).subarray(0, 28),
    );
    expect(send(stale)).toHaveLength(0);
    expect(counters.drops[Drop.ICMP_NO_FLOW]).toBe(3);
    // The host's other ICMP (an echo reply from the TUN address, steered here by the ICMP rule): unchanged.
    const other = icmp4({ src: HOST, dst: STRANGER }, { type: 0, rest: 0x00070001 });
    expect(send(other).map(hex)).toEqual([hex(other)]);
    expect(counters.icmpPassed).toBe(1);
    invariant();
  });
});

describe('ICMP echo to a virtual service address', () => {
  it('is answered in place, rate-limited', () => {
    const { send, counters, advance, invariant } = setup({ limits: { icmpPerSecond: 40 } });
    const data = randomBytes(new Rng(13), 56);
    const req = icmp4(
      { src: CLIENT, dst: VIP, ttl: 61, ident: 0xabc },
      { type: 8, rest: 0x12340001, data },
    );
    const [rep] = send(req);
    expect(hex(rep!)).toBe(
      hex(
        icmp4(
          { src: VIP, dst: CLIENT, ttl: 64, ident: 0xabc },
          { type: 0, rest: 0x12340001, data },
        ),
      ),
    );
    expect(counters.echoReplies).toBe(1);
    // Burst 2 at 40/s: one token left.
    expect(send(req, req, req)).toHaveLength(1);
    expect(counters.drops[Drop.ICMP_RATE_LIMITED]).toBe(2);
    advance(50); // two tokens' worth, the burst holds 2
    expect(send(req, req, req)).toHaveLength(2);
    // Echo to the local-client address is nobody's: dropped, not looped.
    expect(send(icmp4({ src: CLIENT, dst: LOCAL_CLIENT }, { type: 8, rest: 1 }))).toHaveLength(0);
    expect(counters.drops[Drop.ICMP_UNSUPPORTED]).toBe(1);
    invariant();
  });
});

describe('UDP with offloads', () => {
  /** A UDP/IPv4 datagram as the kernel hands it over with NEEDS_CSUM: the field holds the pseudo-header sum. */
  const udpPartial = (src: number, sp: number, dst: number, dp: number, payload: Uint8Array) => {
    const seg = udp({ srcPort: sp, dstPort: dp, payload }, null);
    const ps = pseudoSum({ v: 4, src, dst }, PROTO_UDP, seg.length);
    seg[6] = ps >> 8;
    seg[7] = ps & 0xff;
    return ipv4({ src, dst, protocol: PROTO_UDP, df: false }, seg);
  };
  const frame = (gso: number, pkt: Uint8Array) => {
    const h = vnetHdr({
      flags: VNET_F_NEEDS_CSUM,
      gsoType: gso > 0 ? VNET_GSO_UDP_L4 : 0,
      gsoSize: gso,
      hdrLen: 999,
      csumStart: 20,
      csumOffset: 6,
    });
    const f = new Uint8Array(10 + pkt.length);
    f.set(h);
    f.set(pkt, 10);
    return f;
  };
  const segments = (pkt: Uint8Array, gso: number) => {
    const info = new PacketInfo();
    expect(checkPacket(pkt, 0, pkt.length, info)).toBe(Check.OK);
    const out = new Uint8Array(segmentedSize(info, gso, 0));
    const o = new Uint32Array(256);
    const l = new Uint32Array(256);
    const n = segmentSuperPacket(pkt, info, gso, out, 0, 0, o, l);
    return Array.from({ length: n }, (_, k) => out.slice(o[k]!, o[k]! + l[k]!));
  };

  it('passes a UDP super-packet (gso_type UDP_L4) through whole, rewritten like its datagrams', () => {
    const v = setup({ vnetHdr: true });
    const rng = new Rng(14);
    for (let k = 0; k < 20; k++) {
      const gso = 100 + rng.int(1300);
      const payload = randomBytes(rng, gso * (2 + rng.int(20)) - rng.int(gso));
      const fromClient = k % 2 === 0;
      const pkt = fromClient
        ? udpPartial(CLIENT, 40300, VIP, DNS, payload)
        : udpPartial(HOST, REAL_UDP, CLIENT, 40300, payload);
      const out = v.tun.written.length;
      v.tun.inject([frame(gso, pkt)]);
      expect(v.tun.written.length - out, `#${k}`).toBe(1);
      const written = v.tun.written.at(-1)!;
      expect(written[4]! | (written[5]! << 8)).toBe(gso); // gso_size kept (little-endian)
      const got = segments(written.subarray(10), gso);
      const want = fromClient
        ? segments(udpPartial(CLIENT, 40300, HOST, REAL_UDP, payload), gso)
        : segments(udpPartial(VIP, DNS, CLIENT, 40300, payload), gso);
      expect(got.map(hex), `#${k}`).toEqual(want.map(hex));
      for (const s of got) expect(verifies(s)).toBe(true);
    }
    expect(v.counters.superPacketsOut).toBe(20);
    v.invariant();
  });
});

describe("holding the first datagrams of a flow to a peer's service", () => {
  function peerSetup(vnet: boolean) {
    const tun = new MemoryTun({ batchSize: 16, vnetHdr: vnet, mtu: 9000 });
    const table = new FlowTable(8, [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000], 3);
    const counters = new Counters(1);
    const held: { pkt: Uint8Array; proto: number; len: number }[] = [];
    const rules = new Rules({
      services: [{ name: 'dns', addr: VIP, addr6: null, port: DNS, proto: PROTO_UDP, peer: 0 }],
      selectors: [],
      aidNames: ['a'],
      defaultAid: 0,
    });
    const p = new Pipeline(tun, table, rules, counters, {
      instances: new InstanceSet(),
      verifyL4Checksum: true,
      localClientAddr: LOCAL_CLIENT,
      negotiate: (buf, off, len, info) =>
        held.push({ pkt: buf.slice(off, off + len), proto: info.protocol, len }),
    });
    tun.start((n) => p.processBatch(n, 1000));
    return { tun, counters, held };
  }

  it('hands over each datagram of a UDP super-packet, as the wire would carry them', () => {
    const { tun, held, counters } = peerSetup(true);
    const payload = randomBytes(new Rng(15), 3000);
    const seg = udp({ srcPort: 40400, dstPort: DNS, payload }, null);
    const ps = pseudoSum({ v: 4, src: CLIENT, dst: VIP }, PROTO_UDP, seg.length);
    seg[6] = ps >> 8;
    seg[7] = ps & 0xff;
    const pkt = ipv4({ src: CLIENT, dst: VIP, protocol: PROTO_UDP, df: false }, seg);
    const h = vnetHdr({
      flags: VNET_F_NEEDS_CSUM,
      gsoType: VNET_GSO_UDP_L4,
      gsoSize: 1000,
      csumStart: 20,
      csumOffset: 6,
    });
    const frame = new Uint8Array(10 + pkt.length);
    frame.set(h);
    frame.set(pkt, 10);
    tun.inject([frame]);
    expect(held.map((x) => x.len)).toEqual([1028, 1028, 1028]);
    for (let k = 0; k < 3; k++) {
      // The kernel's segmentation: IP ID + k, each its own UDP length and complete checksum.
      const want = udp4(
        { src: CLIENT, dst: VIP, df: false, ident: k },
        { srcPort: 40400, dstPort: DNS, payload: payload.subarray(k * 1000, (k + 1) * 1000) },
      );
      expect(hex(held[k]!.pkt)).toBe(hex(want));
    }
    expect(counters.drops[Drop.NEGOTIATING]).toBe(1);
  });

  it('drops a fragmented first datagram unanswered (only whole datagrams are held)', () => {
    const { tun, held, counters } = peerSetup(false);
    const frags = fragment(
      dgram(CLIENT, 40401, VIP, DNS, randomBytes(new Rng(16), 3000), 0x4321),
      1480,
    );
    tun.inject(frags);
    expect(held).toHaveLength(0);
    expect(tun.written).toHaveLength(0);
    expect(counters.drops[Drop.FRAGMENT_NOT_HELD]).toBe(1);
    expect(counters.drops[Drop.FRAGMENT_NO_FLOW]).toBe(2);
  });
});
