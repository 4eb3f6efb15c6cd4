/**
 * The pipeline over IPv6 on a MemoryTun (no kernel): packets built by the
 * independent test builder go in, and what comes out is compared byte for byte
 * with packets the builder makes for the expected translation — TCP and UDP
 * both ways, selectors and instances by family, local clients, extension
 * headers, RSTs and ICMPv6 port unreachables, ICMPv6 errors (packet too big
 * above all) translated, echo answered, neighbour discovery and MLD dropped by
 * reason, fragments, the passive health check's retry, offloads (partial
 * checksums, TSO6 super-packets). Every test ends with the invariant
 * packets in = packets out + drops + fragments held.
 */

import { describe, expect, it } from 'vitest';
import { Counters, DROP_REASONS, Drop } from '../../src/datapath/counters.js';
import { InstanceSet, type InstanceSpec } from '../../src/datapath/instances.js';
import { Pipeline } from '../../src/datapath/pipeline.js';
import { Rules } from '../../src/datapath/rules.js';
import { FlowState } from '../../src/flow/state.js';
import { FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { segmentedSize, segmentSuperPacket } from '../../src/wire/segment.js';
import { VNET_F_NEEDS_CSUM, VNET_GSO_TCPV6 } from '../../src/wire/virtio.js';
import {
  type Ext6,
  hex,
  icmp,
  icmp6,
  ip4,
  ip6,
  ipv6x,
  NH_DEST_OPTS,
  NH_HOP_BY_HOP,
  PROTO_ICMPV6,
  PROTO_TCP,
  PROTO_UDP,
  tcp4,
  tcp6,
  tcp6Partial,
  tcp6Segments,
  tcp6x,
  udp6,
  udp6Fragments,
  vnetHdr,
  words6,
} from '../support/builder.js';

const VIP4 = ip4('198.19.0.9');
const HOST4 = ip4('198.19.255.1');
const VIP = ip6('2001:2:0:1::9');
const HOST = ip6('2001:2:0:ff::1');
const LOCAL_CLIENT = ip6('2001:2:0:ff::2');
const CLIENT_A = ip6('2001:2:1::2');
const CLIENT_B = ip6('2001:2:2::2');
const CLIENT_V4ONLY_AID = ip6('2001:2:3::2');
const STRANGER = ip6('2001:2:9::9');
const CLIENT4 = ip4('198.18.3.2');

const SYN = 0x02;
const ACK = 0x10;
const FIN = 0x01;
const RST = 0x04;
const PSH = 0x08;

/** An IPv6 CIDR as the 8 words of SelectorRule.cidr6Words (base, mask). */
function cidr6(base: Uint8Array, prefix: number): Uint32Array {
  const w = new Uint32Array(8);
  const b = words6(base);
  for (let i = 0; i < 4; i++) {
    const bits = Math.max(0, Math.min(32, prefix - 32 * i));
    const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
    w[4 + i] = mask;
    w[i] = (b[i]! & mask) >>> 0;
  }
  return w;
}

function cat(...ws: Uint32Array[]): Uint32Array {
  const out = new Uint32Array(ws.reduce((n, w) => n + w.length, 0));
  let at = 0;
  for (const w of ws) {
    out.set(w, at);
    at += w.length;
  }
  return out;
}

const NONE = new Uint32Array(0);

function makeRules(): Rules {
  return new Rules({
    services: [
      { name: 'web', addr: VIP4, addr6: words6(VIP), port: 9000, proto: PROTO_TCP, peer: -1 },
      { name: 'dns', addr: -1, addr6: words6(VIP), port: 5353, proto: PROTO_UDP, peer: -1 },
    ],
    selectors: [
      // A selector with IPv4 ranges only never matches an IPv6 client.
      {
        service: -1,
        cidrBase: Uint32Array.of(0),
        cidrMask: Uint32Array.of(0),
        cidr6Words: NONE,
        anyClient: false,
        portLo: 0,
        portHi: 65535,
        aid: 2,
      },
      {
        service: -1,
        cidrBase: NONE,
        cidrMask: NONE,
        cidr6Words: cat(cidr6(CLIENT_A, 48), cidr6(HOST, 128)),
        anyClient: false,
        portLo: 0,
        portHi: 65535,
        aid: 0,
      },
      {
        service: -1,
        cidrBase: NONE,
        cidrMask: NONE,
        cidr6Words: cidr6(CLIENT_B, 48),
        anyClient: false,
        portLo: 1024,
        portHi: 65535,
        aid: 1,
      },
      {
        service: -1,
        cidrBase: NONE,
        cidrMask: NONE,
        cidr6Words: cidr6(CLIENT_V4ONLY_AID, 48),
        anyClient: false,
        portLo: 0,
        portHi: 65535,
        aid: 2,
      },
    ],
    aidNames: ['tenant-a', 'tenant-b', 'v4-only'],
    defaultAid: -1,
  });
}

function makeInstances(rules: Rules, extraA: Omit<InstanceSpec, 'aid'>[] = []): InstanceSet {
  const set = new InstanceSet();
  set.replaceStatic(rules, [
    { aid: 0, addr: HOST4, addr6: words6(HOST), port: 19001, service: -1, vport: 0 },
    ...extraA.map((i) => ({ ...i, aid: 0 })),
    { aid: 1, addr: HOST4, addr6: words6(HOST), port: 19002, service: -1, vport: 0 },
    { aid: 2, addr: HOST4, addr6: null, port: 19004, service: -1, vport: 0 },
  ]);
  return set;
}

function setup(o: { vnet?: boolean; extraA?: Omit<InstanceSpec, 'aid'>[] } = {}) {
  const tun = new MemoryTun({ batchSize: 16, vnetHdr: o.vnet ?? false, mtu: 9000 });
  const table = new FlowTable(
    64,
    [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000],
    7,
    64,
    true,
  );
  const counters = new Counters(3);
  const rules = makeRules();
  const p = new Pipeline(
    tun,
    table,
    rules,
    counters,
    {
      instances: makeInstances(rules, o.extraA),
      verifyL4Checksum: true,
      localClientAddr: ip4('198.19.255.2'),
      localClientAddr6: words6(LOCAL_CLIENT),
    },
    new Set([HOST4]),
  );
  p.localAddrs6 = words6(HOST);
  p.localAddrs6Count = 1;
  const now = 1000;
  tun.start((n) => p.processBatch(n, now));
  const hr = o.vnet ? 10 : 0;
  const send = (...pkts: Uint8Array[]) => {
    const before = tun.written.length;
    tun.inject(pkts);
    return tun.written.slice(before).map((b) => hex(b.subarray(hr)));
  };
  const invariant = () => {
    let drops = 0;
    for (let i = 0; i < DROP_REASONS; i++) drops += counters.drops[i]!;
    expect(counters.packetsIn).toBe(counters.packetsOut + drops + counters.fragmentsHeld);
  };
  return { tun, table, counters, p, send, invariant };
}

const seg = (
  src: Uint8Array,
  sp: number,
  dst: Uint8Array,
  dp: number,
  flags: number,
  seq = 1000,
  ack = 0,
  payload?: Uint8Array,
) =>
  tcp6(
    { src, dst, flowLabel: 0x12345 },
    { srcPort: sp, dstPort: dp, flags, seq, ack, window: 64240, ...(payload ? { payload } : {}) },
  );

const dgram = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number, payload: Uint8Array) =>
  udp6({ src, dst }, { srcPort: sp, dstPort: dp, payload });

describe('Pipeline over IPv6', () => {
  it('translates a whole TCP connection both ways, byte for byte, and follows its state', () => {
    const { send, table, counters, invariant } = setup();
    expect(send(seg(CLIENT_A, 40000, VIP, 9000, SYN, 1000))).toEqual([
      hex(seg(CLIENT_A, 40000, HOST, 19001, SYN, 1000)),
    ]);
    expect(send(seg(HOST, 19001, CLIENT_A, 40000, SYN | ACK, 5000, 1001))).toEqual([
      hex(seg(VIP, 9000, CLIENT_A, 40000, SYN | ACK, 5000, 1001)),
    ]);
    const data = new Uint8Array(1400).map((_, i) => (i * 7) & 0xff);
    expect(send(seg(CLIENT_A, 40000, VIP, 9000, ACK | PSH, 1001, 5001, data))).toEqual([
      hex(seg(CLIENT_A, 40000, HOST, 19001, ACK | PSH, 1001, 5001, data)),
    ]);
    const buf = seg(CLIENT_A, 40000, VIP, 9000, ACK);
    const s = table.lookup6(buf, 8, 40000, 24, 9000, PROTO_TCP) >> 1;
    expect(table.family[s]).toBe(6);
    expect(table.state[s]).toBe(FlowState.ESTABLISHED);
    send(seg(HOST, 19001, CLIENT_A, 40000, FIN | ACK, 5001, 2401));
    expect(table.state[s]).toBe(FlowState.FIN_WAIT);
    send(seg(CLIENT_A, 40000, VIP, 9000, FIN | ACK, 2401, 5002));
    expect(table.state[s]).toBe(FlowState.TIME_WAIT);
    expect(counters.flowsCreated).toBe(1);
    invariant();
  });

  it('picks the AID by IPv6 selector, refuses with a RST when none matches (an IPv4-only selector never does)', () => {
    const { send, counters, invariant } = setup();
    expect(send(seg(CLIENT_B, 40000, VIP, 9000, SYN))).toEqual([
      hex(seg(CLIENT_B, 40000, HOST, 19002, SYN)),
    ]);
    // Tenant B's selector wants ports from 1024; the catch-all IPv4 selector (0.0.0.0/0) is no IPv6 one.
    expect(send(seg(CLIENT_B, 999, VIP, 9000, SYN, 77))).toEqual([
      hex(
        tcp6(
          { src: VIP, dst: CLIENT_B },
          { srcPort: 9000, dstPort: 999, seq: 0, ack: 78, flags: RST | ACK, window: 0 },
        ),
      ),
    ]);
    expect(counters.drops[Drop.REFUSED_NO_SELECTOR]).toBe(1);
    expect(send(seg(STRANGER, 40000, VIP, 9000, SYN))).toHaveLength(1);
    expect(counters.drops[Drop.REFUSED_NO_SELECTOR]).toBe(2);
    expect(counters.rstSent).toBe(2);
    // The same 0.0.0.0/0 selector takes an IPv4 client to its IPv4-only instance.
    const out = send(
      tcp4({ src: CLIENT4, dst: VIP4 }, { srcPort: 40000, dstPort: 9000, flags: SYN }),
    );
    expect(out).toEqual([
      hex(tcp4({ src: CLIENT4, dst: HOST4 }, { srcPort: 40000, dstPort: 19004, flags: SYN })),
    ]);
    invariant();
  });

  it('refuses a mixed-family translation: an IPv6 client of an AID whose instances are IPv4 only', () => {
    const { send, counters, invariant } = setup();
    expect(send(seg(CLIENT_V4ONLY_AID, 40000, VIP, 9000, SYN))).toHaveLength(1); // the RST
    expect(counters.drops[Drop.REFUSED_NO_INSTANCE]).toBe(1);
    expect(counters.flowsCreated).toBe(0);
    invariant();
  });

  it('a local client (this host`s IPv6 address) goes through the local-client address', () => {
    const { send, invariant } = setup();
    expect(send(seg(HOST, 33000, VIP, 9000, SYN))).toEqual([
      hex(seg(LOCAL_CLIENT, 33000, HOST, 19001, SYN)),
    ]);
    expect(send(seg(HOST, 19001, LOCAL_CLIENT, 33000, SYN | ACK, 5000, 1001))).toEqual([
      hex(seg(VIP, 9000, HOST, 33000, SYN | ACK, 5000, 1001)),
    ]);
    invariant();
  });

  it('translates a SYN behind extension headers, keeping the chain', () => {
    const { send, invariant } = setup();
    const exts: Ext6[] = [{ type: NH_HOP_BY_HOP }, { type: NH_DEST_OPTS, units: 2 }];
    const t = { srcPort: 40000, dstPort: 9000, flags: SYN, seq: 5 };
    expect(send(tcp6x({ src: CLIENT_A, dst: VIP }, exts, t))).toEqual([
      hex(tcp6x({ src: CLIENT_A, dst: HOST }, exts, { ...t, dstPort: 19001 })),
    ]);
    invariant();
  });

  it('translates UDP both ways, refuses a zero checksum, answers a closed port with ICMPv6 port unreachable', () => {
    const { send, counters, invariant } = setup();
    const q = new Uint8Array(30).fill(1);
    expect(send(dgram(CLIENT_A, 5000, VIP, 5353, q))).toEqual([
      hex(dgram(CLIENT_A, 5000, HOST, 19001, q)),
    ]);
    expect(send(dgram(HOST, 19001, CLIENT_A, 5000, q))).toEqual([
      hex(dgram(VIP, 5353, CLIENT_A, 5000, q)),
    ]);
    const zero = udp6(
      { src: CLIENT_A, dst: VIP },
      { srcPort: 5000, dstPort: 5353, payload: q },
      false,
    );
    expect(send(zero)).toEqual([]);
    expect(counters.drops[Drop.BAD_UDP6_ZERO_CHECKSUM]).toBe(1);
    const closed = dgram(CLIENT_A, 5001, VIP, 5999, q);
    expect(send(closed)).toEqual([
      hex(icmp6({ src: VIP, dst: CLIENT_A }, { type: 1, code: 4, data: closed })),
    ]);
    expect(counters.drops[Drop.REFUSED_NO_SERVICE]).toBe(1);
    expect(counters.icmpUnreachableSent).toBe(1);
    invariant();
  });

  it('translates ICMPv6 packet too big and time exceeded about a flow, both directions', () => {
    const { send, counters, invariant } = setup();
    send(seg(CLIENT_A, 40000, VIP, 9000, SYN, 1000));
    send(seg(HOST, 19001, CLIENT_A, 40000, SYN | ACK, 5000, 1001));
    const data = new Uint8Array(1400).map((_, i) => i & 0xff);
    const sent = seg(CLIENT_A, 40000, VIP, 9000, ACK, 1001, 5001, data);
    const [translated] = send(sent);
    const quoteLen = 1280 - 48;
    // A 1280-byte hop between vpm and the instance: packet too big to the client.
    const ptbIn = icmp6(
      { src: HOST, dst: CLIENT_A },
      {
        type: 2,
        rest: 1280,
        data: Uint8Array.from(Buffer.from(translated!, 'hex')).subarray(0, quoteLen),
      },
    );
    const ptbOut = icmp6(
      { src: VIP, dst: CLIENT_A },
      { type: 2, rest: 1280, data: sent.subarray(0, quoteLen) },
    );
    expect(send(ptbIn)).toEqual([hex(ptbOut)]);
    // Time exceeded from the client's side about a server → client packet: to the instance.
    const back = seg(VIP, 9000, CLIENT_A, 40000, ACK, 5001, 1001);
    const teIn = icmp6({ src: CLIENT_A, dst: VIP }, { type: 3, data: back });
    const teOut = icmp6(
      { src: CLIENT_A, dst: HOST },
      { type: 3, data: seg(HOST, 19001, CLIENT_A, 40000, ACK, 5001, 1001) },
    );
    expect(send(teIn)).toEqual([hex(teOut)]);
    expect(counters.icmpErrorsTranslated).toBe(2);
    // About no flow; and a bad checksum.
    const stray = icmp6(
      { src: HOST, dst: CLIENT_B },
      { type: 1, data: seg(CLIENT_B, 1, HOST, 19001, ACK) },
    );
    expect(send(stray)).toEqual([]);
    expect(counters.drops[Drop.ICMP_NO_FLOW]).toBe(1);
    const bad = ptbIn.slice();
    bad[bad.length - 1]! ^= 0xff;
    expect(send(bad)).toEqual([]);
    expect(counters.drops[Drop.ICMP_BAD_CHECKSUM]).toBe(1);
    invariant();
  });

  it('answers an echo request to an IPv6 VIP in place; drops other ICMPv6 for it; passes what is not for vpm', () => {
    const { send, counters, invariant } = setup();
    const data = new Uint8Array(56).fill(0x42);
    expect(
      send(icmp6({ src: CLIENT_A, dst: VIP, hopLimit: 9 }, { type: 128, rest: 0x01020003, data })),
    ).toEqual([
      hex(icmp6({ src: VIP, dst: CLIENT_A, hopLimit: 64 }, { type: 129, rest: 0x01020003, data })),
    ]);
    expect(counters.echoReplies).toBe(1);
    expect(send(icmp6({ src: CLIENT_A, dst: LOCAL_CLIENT }, { type: 128, rest: 1 }))).toEqual([]);
    expect(send(icmp6({ src: CLIENT_A, dst: VIP }, { type: 200 }))).toEqual([]);
    expect(counters.drops[Drop.ICMP_UNSUPPORTED]).toBe(2);
    const hostsOwn = icmp6({ src: HOST, dst: CLIENT_A }, { type: 129, rest: 7 });
    expect(send(hostsOwn)).toEqual([hex(hostsOwn)]);
    expect(counters.icmpPassed).toBe(1);
    invariant();
  });

  it('drops neighbour discovery and MLD chatter by reason (also malformed), writes nothing', () => {
    const { send, counters, invariant } = setup();
    const ll = ip6('fe80::1');
    const rs = icmp6({ src: ll, dst: ip6('ff02::2'), hopLimit: 255 }, { type: 133 });
    const ns = icmp6(
      { src: ip6('::'), dst: ip6('ff02::1:ff00:1'), hopLimit: 255 },
      { type: 135, data: VIP },
    );
    const na = icmp6({ src: ll, dst: ip6('ff02::1'), hopLimit: 255 }, { type: 136, data: VIP });
    const mld2 = ipv6x(
      { src: ll, dst: ip6('ff02::16'), hopLimit: 1 },
      [{ type: NH_HOP_BY_HOP }],
      PROTO_ICMPV6,
      icmp({ type: 143, data: new Uint8Array(24) }, { v: 6, src: ll, dst: ip6('ff02::16') }),
    );
    const mldQuery = icmp6(
      { src: ll, dst: ip6('ff02::1'), hopLimit: 1 },
      { type: 130, data: new Uint8Array(16) },
    );
    const badRs = rs.slice();
    badRs[42]! ^= 0xff; // checksum: still router chatter
    expect(send(rs, ns, na, mld2, mldQuery, badRs)).toEqual([]);
    expect(counters.drops[Drop.ICMPV6_ND]).toBe(4);
    expect(counters.drops[Drop.ICMPV6_MLD]).toBe(2);
    invariant();
  });

  it('passes the fragments of a translated UDP datagram, in order and with later fragments first', () => {
    const { send, counters, invariant } = setup();
    const payload = new Uint8Array(3000).map((_, i) => (i * 13) & 0xff);
    const u = { srcPort: 5000, dstPort: 5353, payload };
    const frags = udp6Fragments({ src: CLIENT_A, dst: VIP }, u, 1232, 0x01020304);
    expect(frags).toHaveLength(3);
    const want = udp6Fragments(
      { src: CLIENT_A, dst: HOST },
      { ...u, dstPort: 19001 },
      1232,
      0x01020304,
    ).map(hex);
    expect(send(...frags)).toEqual(want);
    // Another datagram, last fragment first, then the middle, then the first.
    const frags2 = udp6Fragments({ src: CLIENT_A, dst: VIP }, u, 1232, 0x01020305);
    const want2 = udp6Fragments(
      { src: CLIENT_A, dst: HOST },
      { ...u, dstPort: 19001 },
      1232,
      0x01020305,
    ).map(hex);
    expect(send(frags2[2]!)).toEqual([]);
    expect(send(frags2[1]!)).toEqual([]);
    expect(counters.fragmentsHeld).toBe(2);
    invariant();
    expect(send(frags2[0]!).sort()).toEqual([...want2].sort());
    expect(counters.fragmentsHeld).toBe(0);
    expect(counters.fragmentsReleased).toBe(2);
    // The replies come back fragmented too.
    const back = udp6Fragments(
      { src: HOST, dst: CLIENT_A },
      { srcPort: 19001, dstPort: 5000, payload },
      1232,
      77,
    );
    const wantBack = udp6Fragments(
      { src: VIP, dst: CLIENT_A },
      { srcPort: 5353, dstPort: 5000, payload },
      1232,
      77,
    ).map(hex);
    expect(send(...back)).toEqual(wantBack);
    // A later fragment of a datagram whose first matched no flow.
    const stray = udp6Fragments({ src: STRANGER, dst: VIP }, u, 1232, 9);
    expect(send(stray[0]!)).toHaveLength(1); // no selector: refused, answered (ICMPv6 port unreachable)
    expect(send(stray[1]!)).toEqual([]);
    expect(counters.drops[Drop.FRAGMENT_NO_FLOW]).toBe(1);
    invariant();
  });

  it('retries a refused SYN on the AID`s other IPv6 instance (the passive health check)', () => {
    const { send, counters, table, invariant } = setup({
      extraA: [{ addr: HOST4, addr6: words6(HOST), port: 19003, service: -1, vport: 0 }],
    });
    expect(send(seg(CLIENT_A, 40000, VIP, 9000, SYN, 1000))).toEqual([
      hex(seg(CLIENT_A, 40000, HOST, 19001, SYN, 1000)),
    ]);
    // Nothing listens on 19001: its RST is answered by the SYN sent to 19003.
    expect(send(seg(HOST, 19001, CLIENT_A, 40000, RST | ACK, 0, 1001))).toEqual([
      hex(seg(CLIENT_A, 40000, HOST, 19003, SYN, 1000)),
    ]);
    expect(counters.synRetried).toBe(1);
    expect(counters.instanceRefusals).toBe(1);
    expect(send(seg(HOST, 19003, CLIENT_A, 40000, SYN | ACK, 5000, 1001))).toEqual([
      hex(seg(VIP, 9000, CLIENT_A, 40000, SYN | ACK, 5000, 1001)),
    ]);
    const s = table.lookup6(seg(CLIENT_A, 1, VIP, 1, 0), 8, 40000, 24, 9000, PROTO_TCP) >> 1;
    expect(table.realPort[s]).toBe(19003);
    invariant();
  });

  it('with offloads: a partial checksum follows the IPv6 addresses, a TSO6 super-packet passes whole', () => {
    const { send, counters, invariant } = setup({ vnet: true });
    const frame = (h: Parameters<typeof vnetHdr>[0], pkt: Uint8Array) => {
      const f = new Uint8Array(10 + pkt.length);
      f.set(vnetHdr(h), 0);
      f.set(pkt, 10);
      return f;
    };
    const partial = { flags: VNET_F_NEEDS_CSUM, csumStart: 40, csumOffset: 16, hdrLen: 9999 };
    const syn = { srcPort: 40000, dstPort: 9000, flags: SYN, seq: 1000 };
    expect(send(frame(partial, tcp6Partial({ src: CLIENT_A, dst: VIP }, syn)))).toEqual([
      hex(tcp6Partial({ src: CLIENT_A, dst: HOST }, { ...syn, dstPort: 19001 })),
    ]);
    const payload = new Uint8Array(20_000).map((_, i) => (i * 3) & 0xff);
    const t = { srcPort: 40000, dstPort: 9000, flags: ACK | PSH, seq: 1001, ack: 1, payload };
    const tso = { ...partial, gsoType: VNET_GSO_TCPV6, gsoSize: 1440 };
    const out = send(frame(tso, tcp6Partial({ src: CLIENT_A, dst: VIP }, t)));
    expect(out).toHaveLength(1);
    const pkt = Uint8Array.from(Buffer.from(out[0]!, 'hex'));
    expect(hex(pkt)).toBe(hex(tcp6Partial({ src: CLIENT_A, dst: HOST }, { ...t, dstPort: 19001 })));
    // What the kernel will make of it: the builder's segments of the translated stream.
    const info = new PacketInfo();
    expect(checkPacket(pkt, 0, pkt.length, info)).toBe(Check.OK);
    const buf = new Uint8Array(segmentedSize(info, 1440, 0));
    const offs = new Uint32Array(64);
    const lens = new Uint32Array(64);
    const n = segmentSuperPacket(pkt, info, 1440, buf, 0, 0, offs, lens);
    const segs = Array.from({ length: n }, (_, k) =>
      hex(buf.subarray(offs[k]!, offs[k]! + lens[k]!)),
    );
    expect(segs).toEqual(
      tcp6Segments({ src: CLIENT_A, dst: HOST }, { ...t, dstPort: 19001 }, 1440).map(hex),
    );
    expect(counters.superPacketsIn).toBe(1);
    expect(counters.superPacketsOut).toBe(1);
    expect(counters.segmentsOut).toBe(Math.ceil(20_000 / 1440));
    invariant();
  });

  it('segments a TSO6 super-packet in software when the kernel refuses it (no IP id; payload length per segment)', () => {
    const { send, counters, tun, invariant } = setup({ vnet: true });
    tun.refuse = (frame) => (frame[1] !== 0 ? 22 : 0);
    const frame = (h: Parameters<typeof vnetHdr>[0], pkt: Uint8Array) => {
      const f = new Uint8Array(10 + pkt.length);
      f.set(vnetHdr(h), 0);
      f.set(pkt, 10);
      return f;
    };
    const syn = { srcPort: 40000, dstPort: 9000, flags: SYN, seq: 1000 };
    send(frame({}, tcp6({ src: CLIENT_A, dst: VIP }, syn)));
    const payload = new Uint8Array(5000).map((_, i) => (i * 5) & 0xff);
    const t = { srcPort: 40000, dstPort: 9000, flags: ACK | PSH | FIN, seq: 1001, ack: 1, payload };
    const tso = {
      flags: VNET_F_NEEDS_CSUM,
      csumStart: 40,
      csumOffset: 16,
      gsoType: VNET_GSO_TCPV6,
      gsoSize: 1200,
    };
    const out = send(frame(tso, tcp6Partial({ src: CLIENT_A, dst: VIP }, t)));
    expect(out).toEqual(
      tcp6Segments({ src: CLIENT_A, dst: HOST }, { ...t, dstPort: 19001 }, 1200).map(hex),
    );
    expect(counters.gsoRefused).toBe(1);
    expect(counters.softwareSegmented).toBe(1);
    expect(counters.softwareSegments).toBe(5);
    invariant();
  });

  it('drops IPv6 with a bad or too long extension header chain, and other upper layers, by reason', () => {
    const { send, counters, invariant } = setup();
    const nine: Ext6[] = Array.from({ length: 9 }, () => ({ type: NH_DEST_OPTS }));
    expect(
      send(tcp6x({ src: CLIENT_A, dst: VIP }, nine, { srcPort: 1, dstPort: 9000, flags: SYN })),
    ).toEqual([]);
    expect(counters.drops[Drop.IPV6_EXT_HEADERS_TOO_LONG]).toBe(1);
    const late: Ext6[] = [{ type: NH_DEST_OPTS }, { type: NH_HOP_BY_HOP }];
    expect(
      send(tcp6x({ src: CLIENT_A, dst: VIP }, late, { srcPort: 1, dstPort: 9000, flags: SYN })),
    ).toEqual([]);
    expect(counters.drops[Drop.IPV6_BAD_EXT_HEADER]).toBe(1);
    expect(send(ipv6x({ src: CLIENT_A, dst: VIP }, [], 47, new Uint8Array(20)))).toEqual([]);
    expect(send(ipv6x({ src: CLIENT_A, dst: VIP }, [], 1, new Uint8Array(20)))).toEqual([]);
    expect(counters.drops[Drop.UNSUPPORTED_PROTOCOL]).toBe(2);
    expect(counters.flowsCreated).toBe(0);
    invariant();
  });
});
