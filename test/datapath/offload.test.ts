/**
 * The pipeline on a MemoryTun with virtio-net headers (a TUN with offloads): what
 * the kernel hands over is a header and a packet, often a partial checksum and a
 * 64 KiB super-packet; what goes back must be the same super-packet, rewritten.
 *
 * The reference is software segmentation (src/wire/segment.ts, itself checked
 * against the builder in test/wire/segment.test.ts): for every rewrite the data
 * plane does, segmenting the rewritten super-packet must give, byte for byte,
 * what the plain (header-less) pipeline makes of each segment.
 */

import { describe, expect, it } from 'vitest';
import { Counters, DROP_REASONS, Drop } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline } from '../../src/datapath/pipeline.js';
import { Rules } from '../../src/datapath/rules.js';
import { FlowTable } from '../../src/flow/table.js';
import { TUN_OFFLOAD_ALL, TUN_OFFLOAD_SEGMENTATION } from '../../src/tun/device.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { segmentedSize, segmentSuperPacket } from '../../src/wire/segment.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import {
  VNET_F_DATA_VALID,
  VNET_F_NEEDS_CSUM,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_GSO_UDP,
  VNET_GSO_UDP_L4,
} from '../../src/wire/virtio.js';
import {
  hex,
  ip4,
  PROTO_TCP,
  randomBytes,
  type TcpSpec,
  tcp4,
  tcp4Partial,
  udp4,
  type VnetSpec,
  vnetHdr,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

const VIP = ip4('198.19.0.9');
const HOST = ip4('198.19.255.1');
const LOCAL_CLIENT = ip4('198.19.255.2');
const CLIENT = ip4('198.18.1.2');
const SYN = 0x02;
const ACK = 0x10;
const PSH = 0x08;
const EINVAL = 22;

function rules(): Rules {
  return new Rules({
    services: [{ name: 'web', addr: VIP, addr6: null, port: 9000, proto: PROTO_TCP, peer: -1 }],
    selectors: [],
    aidNames: ['a'],
    defaultAid: 0,
  });
}

/** AID a's one instance, for `r`. */
function instances(r: Rules): InstanceSet {
  const set = new InstanceSet();
  set.replaceStatic(r, [{ aid: 0, addr: HOST, addr6: null, port: 19001, service: -1, vport: 0 }]);
  return set;
}

/** One pipeline, with or without virtio-net headers. */
function setup(vnetHdr: boolean, opts: { verify?: boolean } = {}) {
  const tun = new MemoryTun({ batchSize: 16, vnetHdr, mtu: 9000 });
  const table = new FlowTable(64, [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000], 3);
  const counters = new Counters(1);
  const events: string[] = [];
  const r = rules();
  const p = new Pipeline(
    tun,
    table,
    r,
    counters,
    {
      instances: instances(r),
      verifyL4Checksum: opts.verify ?? true,
      localClientAddr: LOCAL_CLIENT,
      onDeviceEvent: (e, errno) => events.push(`${e}:${errno}`),
    },
    new Set([HOST]),
  );
  tun.start((n) => p.processBatch(n, 1000));
  const send = (...frames: Uint8Array[]): Uint8Array[] => {
    const before = tun.written.length;
    tun.inject(frames);
    return tun.written.slice(before);
  };
  const invariant = () => {
    let drops = 0;
    for (let i = 0; i < DROP_REASONS; i++) drops += counters.drops[i]!;
    expect(counters.packetsIn).toBe(counters.packetsOut + drops + counters.fragmentsHeld);
  };
  return { tun, table, counters, p, send, invariant, events };
}

const withHdr = (h: VnetSpec, pkt: Uint8Array) => {
  const f = new Uint8Array(10 + pkt.length);
  f.set(vnetHdr(h), 0);
  f.set(pkt, 10);
  return f;
};
/** The header the kernel puts on a partial-checksum TCP/IPv4 packet (20-byte IP header). */
const partialHdr = (gsoSize = 0, ipHl = 20): VnetSpec => ({
  flags: VNET_F_NEEDS_CSUM,
  gsoType: gsoSize > 0 ? VNET_GSO_TCPV4 : 0,
  gsoSize,
  hdrLen: 54321, // a lie: vpm never uses it
  csumStart: ipHl,
  csumOffset: 16,
});

function segments(pkt: Uint8Array, gsoSize: number): Uint8Array[] {
  const info = new PacketInfo();
  expect(checkPacket(pkt, 0, pkt.length, info)).toBe(Check.OK);
  const out = new Uint8Array(segmentedSize(info, gsoSize, 0));
  const o = new Uint32Array(2048);
  const l = new Uint32Array(2048);
  const n = segmentSuperPacket(pkt, info, gsoSize, out, 0, 0, o, l);
  expect(n).toBeGreaterThan(0);
  return Array.from({ length: n }, (_, k) => out.slice(o[k]!, o[k]! + l[k]!));
}

function verifies(pkt: Uint8Array): boolean {
  const info = new PacketInfo();
  return (
    checkPacket(pkt, 0, pkt.length, info) === Check.OK && verifyChecksums(pkt, info) === Verify.OK
  );
}

type Case = {
  name: string;
  /** The SYN (client side) that creates the flow, or a cooperative flow to create. */
  open: (p: Pipeline) => Uint8Array | null;
  /** Source and destination of the super-packet. */
  src: number;
  sport: number;
  dst: number;
  dport: number;
};

const CASES: Case[] = [
  {
    name: 'forward (client → instance)',
    open: () => tcp4({ src: CLIENT, dst: VIP }, { srcPort: 40000, dstPort: 9000, flags: SYN }),
    src: CLIENT,
    sport: 40000,
    dst: VIP,
    dport: 9000,
  },
  {
    name: 'reverse (instance → client)',
    open: () => tcp4({ src: CLIENT, dst: VIP }, { srcPort: 40001, dstPort: 9000, flags: SYN }),
    src: HOST,
    sport: 19001,
    dst: CLIENT,
    dport: 40001,
  },
  {
    name: 'local client (FIG. 8), forward',
    open: () => tcp4({ src: HOST, dst: VIP }, { srcPort: 33000, dstPort: 9000, flags: SYN }),
    src: HOST,
    sport: 33000,
    dst: VIP,
    dport: 9000,
  },
  {
    name: 'local client (FIG. 8), reverse',
    open: () => tcp4({ src: HOST, dst: VIP }, { srcPort: 33001, dstPort: 9000, flags: SYN }),
    src: HOST,
    sport: 19001,
    dst: LOCAL_CLIENT,
    dport: 33001,
  },
  {
    name: 'cooperative client side (to VIP:p2, port only)',
    open: (p) => {
      p.createFlow(
        {
          proto: PROTO_TCP,
          clientAddr: CLIENT,
          clientPort: 41000,
          vipAddr: VIP,
          vport: 9000,
          natAddr: CLIENT,
          natPort: 41000,
          realAddr: VIP,
          realPort: 40123,
          service: 0,
          aid: 0,
          instance: 0,
        },
        1000,
      );
      return null;
    },
    src: CLIENT,
    sport: 41000,
    dst: VIP,
    dport: 9000,
  },
];

describe('super-packets through the pipeline (differential against software segmentation)', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const rng = new Rng(c.name.length * 7919);
      const v = setup(true);
      const plain = setup(false);
      const syn = c.open(v.p);
      c.open(plain.p);
      if (syn) {
        expect(v.send(withHdr({}, syn))).toHaveLength(1);
        expect(plain.send(syn)).toHaveLength(1);
      }
      for (let k = 0; k < 60; k++) {
        const gso = 536 + rng.int(1000);
        const payloadLen = 1 + rng.int(Math.min(65535 - 120, gso * 45));
        const ip = { src: c.src, dst: c.dst, ident: rng.int(0x10000) };
        const t: TcpSpec = {
          srcPort: c.sport,
          dstPort: c.dport,
          seq: rng.u32(),
          ack: rng.u32(),
          flags: ACK | (rng.int(2) ? PSH : 0),
          window: rng.int(0x10000),
          options: randomBytes(rng, 4 * rng.int(11)),
          payload: randomBytes(rng, payloadLen),
        };
        const superPkt = tcp4Partial(ip, t);
        const out = v.send(withHdr(partialHdr(gso), superPkt));
        expect(out, `${c.name} #${k}`).toHaveLength(1);
        const frame = out[0]!;
        // The header goes back as it came, but for hdr_len, which is vpm's own.
        const tcpHl = 20 + t.options!.length;
        expect(hex(frame.subarray(0, 10))).toBe(
          hex(vnetHdr({ ...partialHdr(gso), hdrLen: 20 + tcpHl })),
        );
        const viaSuper = segments(frame.subarray(10), gso);
        const viaSegments = segments(superPkt, gso).flatMap((s) => plain.send(s));
        expect(viaSuper.map(hex), `${c.name} #${k}: gso ${gso} payload ${payloadLen}`).toEqual(
          viaSegments.map(hex),
        );
        for (const s of viaSuper) expect(verifies(s)).toBe(true);
      }
      expect(v.counters.superPacketsIn).toBe(60);
      expect(v.counters.superPacketsOut).toBe(60);
      expect(v.counters.segmentsOut).toBe(v.counters.segmentsIn);
      expect(v.counters.segmentsIn).toBeGreaterThan(60);
      v.invariant();
      plain.invariant();
    });
  }
});

describe('checksums by header flag', () => {
  const data = (seed: number) => randomBytes(new Rng(seed), 300);

  it('NEEDS_CSUM: a partial sum is rewritten by the partial rule and not verified', () => {
    const { send, counters } = setup(true);
    send(withHdr({}, tcp4({ src: CLIENT, dst: VIP }, { srcPort: 1, dstPort: 9000, flags: SYN })));
    const t = { srcPort: 1, dstPort: 9000, flags: ACK, payload: data(1) };
    const out = send(withHdr(partialHdr(), tcp4Partial({ src: CLIENT, dst: VIP }, t)));
    expect(hex(out[0]!.subarray(10))).toBe(
      hex(tcp4Partial({ src: CLIENT, dst: HOST }, { ...t, dstPort: 19001 })),
    );
    expect(counters.drops[Drop.BAD_L4_CHECKSUM]).toBe(0);
  });

  it('DATA_VALID: verified by the kernel, so a bad checksum passes; flags 0 is verified here', () => {
    const { send, counters } = setup(true);
    send(withHdr({}, tcp4({ src: CLIENT, dst: VIP }, { srcPort: 2, dstPort: 9000, flags: SYN })));
    const good = tcp4({ src: CLIENT, dst: VIP }, { srcPort: 2, dstPort: 9000, payload: data(2) });
    const bad = good.slice();
    bad[bad.length - 1]! ^= 1;
    expect(send(withHdr({ flags: VNET_F_DATA_VALID }, bad))).toHaveLength(1);
    expect(counters.drops[Drop.BAD_L4_CHECKSUM]).toBe(0);
    expect(send(withHdr({}, bad))).toHaveLength(0);
    expect(counters.drops[Drop.BAD_L4_CHECKSUM]).toBe(1);
    // A complete checksum is updated by RFC 1624 and still verifies.
    const out = send(withHdr({}, good));
    expect(verifies(out[0]!.subarray(10))).toBe(true);
  });

  it('a RST vpm generates goes out behind an all-zero header', () => {
    const { send, tun } = setup(true);
    tun.inject([
      withHdr({}, tcp4({ src: CLIENT, dst: VIP }, { srcPort: 3, dstPort: 9001, flags: SYN })),
    ]);
    const rst = tun.written.at(-1)!;
    expect([...rst.subarray(0, 10)]).toEqual(new Array(10).fill(0));
    expect(verifies(rst.subarray(10))).toBe(true);
    expect(send()).toHaveLength(0);
  });
});

describe('a held SYN (cooperative mode, local clients) on a device with headers', () => {
  it('is handed over with its partial checksum completed, and injected behind a zero header', () => {
    const tun = new MemoryTun({ batchSize: 4, vnetHdr: true });
    const table = new FlowTable(8, [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000], 3);
    const counters = new Counters(1);
    const held: Uint8Array[] = [];
    const r = new Rules({
      services: [{ name: 'web', addr: VIP, addr6: null, port: 9000, proto: PROTO_TCP, peer: 0 }],
      selectors: [],
      aidNames: ['a'],
      defaultAid: 0,
    });
    const p = new Pipeline(tun, table, r, counters, {
      instances: new InstanceSet(),
      verifyL4Checksum: true,
      localClientAddr: LOCAL_CLIENT,
      negotiate: (buf, off, len) => held.push(buf.slice(off, off + len)),
    });
    tun.start((n) => p.processBatch(n, 1000));
    const t = { srcPort: 4444, dstPort: 9000, flags: SYN, seq: 1 };
    tun.inject([withHdr(partialHdr(), tcp4Partial({ src: CLIENT, dst: VIP }, t))]);
    expect(held).toHaveLength(1);
    expect(hex(held[0]!)).toBe(hex(tcp4({ src: CLIENT, dst: VIP }, t)));
    const k = {
      proto: PROTO_TCP,
      clientAddr: CLIENT,
      clientPort: 4444,
      vipAddr: VIP,
      vport: 9000,
      natAddr: CLIENT,
      natPort: 4444,
      realAddr: VIP,
      realPort: 40001,
      service: 0,
      aid: 0,
      instance: 0,
    };
    expect(p.injectHeld(held[0]!, k, 1000)).toBeGreaterThanOrEqual(0);
    const out = tun.written.at(-1)!;
    expect([...out.subarray(0, 10)]).toEqual(new Array(10).fill(0));
    expect(hex(out.subarray(10))).toBe(
      hex(tcp4({ src: CLIENT, dst: VIP }, { ...t, dstPort: 40001 })),
    );
    // A refusal's RST goes out behind a zero header too.
    expect(p.refuseHeld(held[0]!, 'negotiation')).toBe(true);
    const rst = tun.written.at(-1)!;
    expect([...rst.subarray(0, 10)]).toEqual(new Array(10).fill(0));
    expect(verifies(rst.subarray(10))).toBe(true);
  });
});

describe('headers that do not fit the packet are counted drops', () => {
  const syn = tcp4({ src: CLIENT, dst: VIP }, { srcPort: 5, dstPort: 9000, flags: SYN });
  const udp = udp4({ src: CLIENT, dst: VIP }, { srcPort: 5, dstPort: 9000 });
  it.each([
    ['unknown flag bit', { flags: 4 }, syn, Drop.VNET_BAD_FLAGS],
    [
      'NEEDS_CSUM and DATA_VALID',
      { flags: 3, csumStart: 20, csumOffset: 16 },
      syn,
      Drop.VNET_BAD_FLAGS,
    ],
    ['UFO', { ...partialHdr(1000), gsoType: VNET_GSO_UDP }, syn, Drop.VNET_BAD_GSO_TYPE],
    ['gso_type 2', { ...partialHdr(1000), gsoType: 2 }, syn, Drop.VNET_BAD_GSO_TYPE],
    ['TCPV6 on IPv4', { ...partialHdr(1000), gsoType: VNET_GSO_TCPV6 }, syn, Drop.VNET_BAD_GSO],
    ['UDP_L4 on TCP', { ...partialHdr(1000), gsoType: VNET_GSO_UDP_L4 }, syn, Drop.VNET_BAD_GSO],
    ['gso_size 0', { ...partialHdr(1000), gsoSize: 0 }, syn, Drop.VNET_BAD_GSO],
    ['GSO without NEEDS_CSUM', { gsoType: VNET_GSO_TCPV4, gsoSize: 1000 }, syn, Drop.VNET_BAD_GSO],
    ['csum_start not the L4 header', { ...partialHdr(), csumStart: 24 }, syn, Drop.VNET_BAD_CSUM],
    [
      'csum_offset not the TCP checksum',
      { ...partialHdr(), csumOffset: 6 },
      syn,
      Drop.VNET_BAD_CSUM,
    ],
    ['csum past the end', { ...partialHdr(), csumStart: 60000 }, syn, Drop.VNET_BAD_CSUM],
  ] as const)('%s', (_name, h, pkt, reason) => {
    const { send, counters, invariant } = setup(true);
    expect(send(withHdr(h, pkt))).toHaveLength(0);
    expect(counters.drops[reason]).toBe(1);
    invariant();
    void udp;
  });
});

describe('random and hostile virtio headers', () => {
  it('never throw, and every packet is counted as out or dropped', () => {
    const rng = new Rng(0xbad5);
    const { send, invariant, counters } = setup(true);
    const pkts = [
      tcp4({ src: CLIENT, dst: VIP }, { srcPort: 7, dstPort: 9000, flags: SYN }),
      tcp4Partial(
        { src: CLIENT, dst: VIP },
        { srcPort: 7, dstPort: 9000, payload: new Uint8Array(3000) },
      ),
      tcp4Partial(
        { src: HOST, dst: CLIENT },
        { srcPort: 19001, dstPort: 7, payload: new Uint8Array(99) },
      ),
      udp4({ src: CLIENT, dst: VIP }, { srcPort: 7, dstPort: 9000, payload: new Uint8Array(2000) }),
    ];
    for (let i = 0; i < 20_000; i++) {
      const h: VnetSpec = {
        flags: rng.int(4) === 0 ? rng.int(256) : rng.int(4),
        gsoType: [0, 1, 3, 4, 5, 0x81, rng.int(256)][rng.int(7)]!,
        hdrLen: rng.int(0x10000),
        gsoSize: rng.int(3) === 0 ? rng.int(0x10000) : rng.int(2000),
        csumStart: rng.int(2) ? 20 : rng.int(0x10000),
        csumOffset: [16, 6, rng.int(0x10000)][rng.int(3)]!,
      };
      let pkt = pkts[rng.int(pkts.length)]!;
      if (rng.int(4) === 0) {
        pkt = pkt.slice(0, rng.int(pkt.length + 1)); // cut anywhere, also into the header
      }
      const frame = withHdr(h, pkt);
      send(rng.int(10) === 0 ? frame.subarray(0, rng.int(10)) : frame);
    }
    invariant();
    expect(counters.packetsOut).toBeGreaterThan(0);
    expect(counters.drops[Drop.VNET_BAD_FLAGS]).toBeGreaterThan(0);
    expect(counters.drops[Drop.VNET_BAD_GSO]).toBeGreaterThan(0);
    expect(counters.drops[Drop.VNET_BAD_CSUM]).toBeGreaterThan(0);
  });
});

describe('a super-packet the kernel refuses on write', () => {
  it('is segmented in software and delivered; segmentation goes over to vpm for good', () => {
    const { tun, send, counters, events, invariant, p } = setup(true);
    let refusedTries = 0;
    tun.refuse = (frame) => {
      if (frame[1] === 0) return 0;
      refusedTries++;
      return EINVAL;
    };
    send(withHdr({}, tcp4({ src: CLIENT, dst: VIP }, { srcPort: 8, dstPort: 9000, flags: SYN })));
    const t = { srcPort: 8, dstPort: 9000, seq: 100, payload: randomBytes(new Rng(8), 5000) };
    const out = send(withHdr(partialHdr(1448), tcp4Partial({ src: CLIENT, dst: VIP }, t)));
    const want = segments(tcp4Partial({ src: CLIENT, dst: HOST }, { ...t, dstPort: 19001 }), 1448);
    expect(out.map((f) => hex(f.subarray(10)))).toEqual(want.map(hex));
    for (const f of out) expect([...f.subarray(0, 10)]).toEqual(new Array(10).fill(0));
    expect(refusedTries).toBe(1);
    expect(events).toEqual(['gso_refused:22']);
    expect(tun.offloadHistory).toEqual([TUN_OFFLOAD_ALL & ~TUN_OFFLOAD_SEGMENTATION]);
    expect(p.segmentingInSoftware).toBe(true);
    expect(counters.gsoRefused).toBe(1);
    expect(counters.softwareSegmented).toBe(1);
    expect(counters.softwareSegments).toBe(4);
    expect(counters.superPacketsOut).toBe(0);
    // A super-packet still queued afterwards is segmented before any write: no new refusal.
    const again = send(withHdr(partialHdr(1000), tcp4Partial({ src: CLIENT, dst: VIP }, t)));
    expect(again).toHaveLength(5);
    expect(refusedTries).toBe(1);
    expect(counters.softwareSegmented).toBe(2);
    // Plain packets are written as before.
    expect(
      send(withHdr({}, tcp4({ src: CLIENT, dst: VIP }, { srcPort: 8, dstPort: 9000 }))),
    ).toHaveLength(1);
    invariant();
  });

  it('two refused super-packets and a refused plain packet in one batch: each judged by its own errno', () => {
    // The segments' writes refill the device's errnos: the batch's must be kept apart.
    const { tun, send, counters, invariant } = setup(true);
    send(withHdr({}, tcp4({ src: CLIENT, dst: VIP }, { srcPort: 10, dstPort: 9000, flags: SYN })));
    const plain = withHdr(
      {},
      tcp4({ src: CLIENT, dst: VIP }, { srcPort: 10, dstPort: 9000, seq: 7 }),
    );
    tun.refuse = (frame) => (frame[1] !== 0 || frame.length === plain.length ? EINVAL : 0);
    const t = (seq: number) => ({
      srcPort: 10,
      dstPort: 9000,
      flags: ACK,
      seq,
      payload: randomBytes(new Rng(seq), 3000),
    });
    const out = send(
      withHdr(partialHdr(1000), tcp4Partial({ src: CLIENT, dst: VIP }, t(1))),
      plain,
      withHdr(partialHdr(1000), tcp4Partial({ src: CLIENT, dst: VIP }, t(5001))),
    );
    const want = [1, 5001].flatMap((seq) =>
      segments(tcp4Partial({ src: CLIENT, dst: HOST }, { ...t(seq), dstPort: 19001 }), 1000),
    );
    expect(out.map((f) => hex(f.subarray(10)))).toEqual(want.map(hex));
    expect(counters.gsoRefused).toBe(2);
    expect(counters.softwareSegmented).toBe(2);
    expect(counters.drops[Drop.TX_REFUSED]).toBe(1);
    invariant();
  });

  it('a plain packet the kernel refuses is a counted drop, not a packet out', () => {
    const { tun, send, counters, invariant } = setup(true);
    tun.refuse = () => EINVAL;
    send(withHdr({}, tcp4({ src: CLIENT, dst: VIP }, { srcPort: 9, dstPort: 9000, flags: SYN })));
    expect(counters.drops[Drop.TX_REFUSED]).toBe(1);
    expect(counters.packetsOut).toBe(0);
    invariant();
  });
});
