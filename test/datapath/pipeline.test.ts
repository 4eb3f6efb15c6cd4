/**
 * The pipeline on a MemoryTun (no kernel): packets built by the independent test
 * builder go in, and what comes out is compared byte for byte with packets the
 * builder makes for the expected translation — so the rewrite and every checksum
 * are checked against a second statement of the RFCs, not against themselves.
 */

import { describe, expect, it } from 'vitest';
import { Counters, DROP_REASONS, Drop } from '../../src/datapath/counters.js';
import { InstanceSet, type InstanceSpec } from '../../src/datapath/instances.js';
import { INJECT_MALFORMED, Pipeline } from '../../src/datapath/pipeline.js';
import { Rules } from '../../src/datapath/rules.js';
import { FlowState } from '../../src/flow/state.js';
import { CREATE_COLLISION, FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import {
  hex,
  icmp4,
  inetChecksum,
  ip4,
  ip6,
  PROTO_TCP,
  tcp4,
  tcp6,
  udp4,
  unhex,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

const VIP = ip4('198.19.0.9');
const HOST = ip4('198.19.255.1');
const LOCAL_CLIENT = ip4('198.19.255.2');
const CLIENT_A = ip4('198.18.1.2');
const CLIENT_B = ip4('198.18.2.2');
const STRANGER = ip4('198.18.9.9');

const SYN = 0x02;
const ACK = 0x10;
const FIN = 0x01;
const RST = 0x04;
const PSH = 0x08;

/** An AID's instance, as the tests list them (the AID is the list's position). */
type TestInstance = Omit<InstanceSpec, 'aid'>;

/** The instance set for `rules` with the static instances `perAid[aid]`. */
function instanceSet(rules: Rules, perAid: TestInstance[][]): InstanceSet {
  const set = new InstanceSet();
  set.replaceStatic(
    rules,
    perAid.flatMap((list, aid) => list.map((i) => ({ ...i, aid }))),
  );
  return set;
}

function makeRules(): Rules {
  return new Rules({
    services: [{ name: 'web', addr: VIP, addr6: null, port: 9000, proto: PROTO_TCP, peer: -1 }],
    selectors: [
      {
        service: 0,
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
        cidrBase: Uint32Array.of(ip4('198.18.2.0')),
        cidrMask: Uint32Array.of(0xffffff00),
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        portLo: 1024,
        portHi: 65535,
        aid: 1,
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
    aidNames: ['tenant-a', 'tenant-b'],
    defaultAid: -1,
  });
}

function makeInstances(rules: Rules, opts: { instancesB?: TestInstance[] } = {}): InstanceSet {
  return instanceSet(rules, [
    [{ addr: HOST, addr6: null, port: 19001, service: -1, vport: 0 }],
    opts.instancesB ?? [{ addr: HOST, addr6: null, port: 19002, service: -1, vport: 0 }],
  ]);
}

function setup(
  o: {
    capacity?: number;
    embryonic?: number;
    instancesB?: TestInstance[];
    writeCapacity?: number;
    verify?: boolean;
  } = {},
) {
  const tun = new MemoryTun({
    batchSize: 16,
    ...(o.writeCapacity !== undefined ? { writeCapacity: o.writeCapacity } : {}),
  });
  const table = new FlowTable(
    o.capacity ?? 64,
    [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000],
    7,
    o.embryonic,
  );
  const counters = new Counters(2);
  const events: string[] = [];
  const rules = makeRules();
  const p = new Pipeline(
    tun,
    table,
    rules,
    counters,
    {
      instances: makeInstances(rules, o),
      verifyL4Checksum: o.verify ?? true,
      localClientAddr: LOCAL_CLIENT,
      onFlowEvent: (e, _s, r) => events.push(`${e}:${r}`),
    },
    new Set([HOST, ip4('198.18.1.1')]),
  );
  let now = 1000;
  tun.start((n) => p.processBatch(n, now));
  const send = (...pkts: Uint8Array[]) => {
    const before = tun.written.length;
    tun.inject(pkts);
    return tun.written.slice(before).map((b) => hex(b));
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
    events,
    p,
    send,
    invariant,
    setNow: (t: number) => {
      now = t;
    },
  };
}

const seg = (
  src: number,
  sp: number,
  dst: number,
  dp: number,
  flags: number,
  seq = 1000,
  ack = 0,
  payload?: Uint8Array,
) =>
  tcp4(
    { src, dst, ident: 0x1234 },
    { srcPort: sp, dstPort: dp, flags, seq, ack, window: 64240, ...(payload ? { payload } : {}) },
  );

describe('Pipeline', () => {
  it('translates a whole connection both ways, byte for byte, and follows its state', () => {
    const { send, table, counters, invariant } = setup();
    // Client SYN to the VIP → instance of tenant-a, client address kept.
    expect(send(seg(CLIENT_A, 40000, VIP, 9000, SYN, 1000))).toEqual([
      hex(seg(CLIENT_A, 40000, HOST, 19001, SYN, 1000)),
    ]);
    // Server SYN+ACK from the real port → back from VIP:9000.
    expect(send(seg(HOST, 19001, CLIENT_A, 40000, SYN | ACK, 5000, 1001))).toEqual([
      hex(seg(VIP, 9000, CLIENT_A, 40000, SYN | ACK, 5000, 1001)),
    ]);
    const data = new Uint8Array(1400).map((_, i) => (i * 7) & 0xff);
    expect(send(seg(CLIENT_A, 40000, VIP, 9000, ACK | PSH, 1001, 5001, data))).toEqual([
      hex(seg(CLIENT_A, 40000, HOST, 19001, ACK | PSH, 1001, 5001, data)),
    ]);
    const s = table.lookup(CLIENT_A, 40000, VIP, 9000, PROTO_TCP) >> 1;
    expect(table.state[s]).toBe(FlowState.ESTABLISHED);
    send(seg(HOST, 19001, CLIENT_A, 40000, FIN | ACK, 5001, 2401));
    expect(table.state[s]).toBe(FlowState.FIN_WAIT);
    send(seg(CLIENT_A, 40000, VIP, 9000, FIN | ACK, 2401, 5002));
    expect(table.state[s]).toBe(FlowState.TIME_WAIT);
    expect(counters.flowsCreated).toBe(1);
    expect(counters.aidBytesIn[0]).toBeGreaterThan(1400);
    expect(counters.aidBytesOut[0]).toBeGreaterThan(0);
    invariant();
  });

  it('sends tenant B to its own instance on the same virtual port', () => {
    const { send } = setup();
    expect(send(seg(CLIENT_B, 50000, VIP, 9000, SYN))).toEqual([
      hex(seg(CLIENT_B, 50000, HOST, 19002, SYN)),
    ]);
  });

  it('translates a local client (FIG. 8) to the local-client address and back', () => {
    const { send } = setup();
    expect(send(seg(HOST, 33000, VIP, 9000, SYN))).toEqual([
      hex(seg(LOCAL_CLIENT, 33000, HOST, 19001, SYN)),
    ]);
    expect(send(seg(HOST, 19001, LOCAL_CLIENT, 33000, SYN | ACK, 9, 1001))).toEqual([
      hex(seg(VIP, 9000, HOST, 33000, SYN | ACK, 9, 1001)),
    ]);
  });

  it('refuses a SYN no selector matches with a RST from the virtual service', () => {
    const { send, counters, events, invariant } = setup();
    const out = send(seg(STRANGER, 1234, VIP, 9000, SYN, 77));
    // RFC 9293 §3.10.7.1: SEQ 0, ACK = SEG.SEQ + 1, RST|ACK.
    expect(out).toEqual([
      hex(
        tcp4(
          { src: VIP, dst: STRANGER },
          { srcPort: 9000, dstPort: 1234, seq: 0, ack: 78, flags: RST | ACK, window: 0 },
        ),
      ),
    ]);
    expect(counters.drops[Drop.REFUSED_NO_SELECTOR]).toBe(1);
    expect(counters.rstSent).toBe(1);
    expect(events).toEqual([`refused:${Drop.REFUSED_NO_SELECTOR}`]);
    // Tenant B's selector wants client ports >= 1024.
    send(seg(CLIENT_B, 999, VIP, 9000, SYN));
    expect(counters.drops[Drop.REFUSED_NO_SELECTOR]).toBe(2);
    invariant();
  });

  it('refuses a SYN for an AID without a live instance', () => {
    const { send, counters } = setup({ instancesB: [] });
    expect(send(seg(CLIENT_B, 50000, VIP, 9000, SYN)).length).toBe(1);
    expect(counters.drops[Drop.REFUSED_NO_INSTANCE]).toBe(1);
  });

  it('refuses new connections when the table is full and leaves established flows alone', () => {
    const { send, counters, invariant } = setup({ capacity: 2 });
    for (const port of [40001, 40002]) {
      send(seg(CLIENT_A, port, VIP, 9000, SYN));
      send(seg(HOST, 19001, CLIENT_A, port, SYN | ACK, 1, 1001));
      send(seg(CLIENT_A, port, VIP, 9000, ACK, 1001, 2));
    }
    const out = send(seg(CLIENT_A, 40003, VIP, 9000, SYN, 5));
    expect(out).toEqual([
      hex(
        tcp4(
          { src: VIP, dst: CLIENT_A },
          { srcPort: 9000, dstPort: 40003, seq: 0, ack: 6, flags: RST | ACK, window: 0 },
        ),
      ),
    ]);
    expect(counters.drops[Drop.REFUSED_TABLE_FULL]).toBe(1);
    // The existing flows still pass.
    expect(send(seg(HOST, 19001, CLIENT_A, 40001, ACK, 2, 1001))).toEqual([
      hex(seg(VIP, 9000, CLIENT_A, 40001, ACK, 2, 1001)),
    ]);
    invariant();
  });

  it('a SYN flood at the table limit: established flows keep translating, the oldest embryonic flows give way, counted', () => {
    const { send, table, counters, invariant, setNow } = setup({ capacity: 16, embryonic: 4 });
    // 12 established connections.
    for (let i = 0; i < 12; i++) {
      const port = 30000 + i;
      send(seg(CLIENT_A, port, VIP, 9000, SYN));
      send(seg(HOST, 19001, CLIENT_A, port, SYN | ACK, 1, 1001));
      send(seg(CLIENT_A, port, VIP, 9000, ACK, 1001, 2));
    }
    expect(table.size).toBe(12);
    // A flood of 200 SYNs from as many ports, never answered, a millisecond apart.
    let now = 1000;
    for (let i = 0; i < 200; i++) {
      setNow(++now);
      expect(send(seg(CLIENT_A, 50000 + i, VIP, 9000, SYN))).toEqual([
        hex(seg(CLIENT_A, 50000 + i, HOST, 19001, SYN)),
      ]);
      // Established connections keep working in the middle of it.
      const port = 30000 + (i % 12);
      expect(send(seg(CLIENT_A, port, VIP, 9000, ACK | PSH, 1001, 2))).toEqual([
        hex(seg(CLIENT_A, port, HOST, 19001, ACK | PSH, 1001, 2)),
      ]);
    }
    expect(table.size).toBe(16);
    expect(table.embryonicSize).toBe(4);
    expect(table.embryonicEvicted).toBe(196);
    expect(counters.drops[Drop.REFUSED_TABLE_FULL]).toBe(0);
    // The four newest SYNs hold the share; the oldest were evicted: their SYN+ACK finds no flow.
    for (let i = 196; i < 200; i++)
      expect(table.lookup(CLIENT_A, 50000 + i, VIP, 9000, PROTO_TCP)).toBeGreaterThanOrEqual(0);
    expect(send(seg(HOST, 19001, CLIENT_A, 50000, SYN | ACK, 1, 1001))).toEqual([]);
    expect(counters.drops[Drop.NO_FLOW]).toBe(1);
    for (let i = 0; i < 12; i++) {
      const s = table.lookup(CLIENT_A, 30000 + i, VIP, 9000, PROTO_TCP) >> 1;
      expect(table.state[s]).toBe(FlowState.ESTABLISHED);
    }
    // After the flood a new connection completes.
    setNow(++now);
    expect(send(seg(CLIENT_B, 41000, VIP, 9000, SYN))).toEqual([
      hex(seg(CLIENT_B, 41000, HOST, 19002, SYN)),
    ]);
    expect(send(seg(HOST, 19002, CLIENT_B, 41000, SYN | ACK, 1, 1001))).toEqual([
      hex(seg(VIP, 9000, CLIENT_B, 41000, SYN | ACK, 1, 1001)),
    ]);
    expect(send(seg(CLIENT_B, 41000, VIP, 9000, ACK, 1001, 2))).toEqual([
      hex(seg(CLIENT_B, 41000, HOST, 19002, ACK, 1001, 2)),
    ]);
    invariant();
  });

  it('a table full of established flows refuses new ones (refused_table_full), evicting none', () => {
    const { send, table, counters, invariant } = setup({ capacity: 4, embryonic: 2 });
    for (let i = 0; i < 4; i++) {
      const port = 30000 + i;
      send(seg(CLIENT_A, port, VIP, 9000, SYN));
      send(seg(HOST, 19001, CLIENT_A, port, SYN | ACK, 1, 1001));
      send(seg(CLIENT_A, port, VIP, 9000, ACK, 1001, 2));
    }
    for (let i = 0; i < 10; i++) send(seg(CLIENT_A, 50000 + i, VIP, 9000, SYN));
    expect(counters.drops[Drop.REFUSED_TABLE_FULL]).toBe(10);
    expect(table.embryonicEvicted).toBe(0);
    expect(table.size).toBe(4);
    invariant();
  });

  it('drops what is not a virtual service or belongs to no flow, with reasons', () => {
    const { send, counters, invariant } = setup();
    // A closed port of the VIP: RST, as a host answers for a closed port.
    expect(send(seg(CLIENT_A, 40000, VIP, 9001, SYN, 10))).toEqual([
      hex(
        tcp4(
          { src: VIP, dst: CLIENT_A },
          { srcPort: 9001, dstPort: 40000, seq: 0, ack: 11, flags: RST | ACK, window: 0 },
        ),
      ),
    ]);
    expect(counters.drops[Drop.REFUSED_NO_SERVICE]).toBe(1);
    // Another address that reached the TUN: dropped silently.
    expect(send(seg(CLIENT_A, 40000, ip4('198.19.0.77'), 9000, SYN))).toEqual([]);
    expect(counters.drops[Drop.NOT_SERVICE]).toBe(1);
    expect(send(seg(CLIENT_A, 40000, VIP, 9000, ACK))).toEqual([]);
    expect(send(seg(HOST, 19001, CLIENT_A, 40000, ACK))).toEqual([]);
    expect(counters.drops[Drop.NO_FLOW]).toBe(2);
    invariant();
  });

  it('counts every malformed or unsupported packet under its own reason', () => {
    const { send, counters, invariant } = setup();
    const good = seg(CLIENT_A, 40000, VIP, 9000, SYN);
    const mut = (f: (b: Uint8Array) => void, from = good) => {
      const b = from.slice();
      f(b);
      return b;
    };
    const refix = (b: Uint8Array) => {
      // Recompute the IPv4 header checksum (builder's sum) so only the intended fault remains.
      b[10] = 0;
      b[11] = 0;
      const c = inetChecksum(b.subarray(0, (b[0]! & 15) * 4));
      b[10] = c >>> 8;
      b[11] = c & 0xff;
    };
    const cases: [number, Uint8Array][] = [
      [Drop.TRUNCATED, good.subarray(0, 12)],
      [
        Drop.BAD_VERSION,
        mut((b) => {
          b[0] = 0x55;
        }),
      ],
      [
        Drop.BAD_IHL,
        mut((b) => {
          b[0] = 0x44;
          refix(b);
        }),
      ],
      [
        Drop.BAD_TOTAL_LEN,
        mut((b) => {
          b[2] = 0x10;
          refix(b);
        }),
      ],
      [
        Drop.BAD_IP_CHECKSUM,
        mut((b) => {
          b[8] = 63;
        }),
      ],
      [
        Drop.BAD_L4_CHECKSUM,
        mut((b) => {
          b[30] = b[30]! ^ 0x01;
        }),
      ],
      [
        Drop.BAD_DATA_OFFSET,
        mut((b) => {
          b[32] = 0x40;
        }),
      ],
      [
        Drop.L4_TRUNCATED,
        mut((b) => {
          b[3] = 30;
          refix(b);
        }).subarray(0, 30),
      ],
      [
        // A first fragment that does not hold the whole TCP header.
        Drop.FRAGMENT_TOO_SHORT,
        mut((b) => {
          b[3] = 30;
          b[6] = 0x20;
          refix(b);
        }).subarray(0, 30),
      ],
      [
        Drop.UNSUPPORTED_PROTOCOL,
        mut(
          (b) => {
            b[9] = 47; // GRE
            refix(b);
          },
          udp4({ src: CLIENT_A, dst: VIP }, { srcPort: 1, dstPort: 9000, payload: unhex('0102') }),
        ),
      ],
      // A timestamp request to the VIP: only echo requests and errors are for vpm.
      [Drop.ICMP_UNSUPPORTED, icmp4({ src: CLIENT_A, dst: VIP }, { type: 13, code: 0, rest: 0 })],
      [
        Drop.IPV6,
        tcp6(
          { src: ip6('2001:db8::1'), dst: ip6('2001:db8::2') },
          { srcPort: 1, dstPort: 9000, flags: SYN },
        ),
      ],
    ];
    for (const [reason, pkt] of cases) {
      const before = counters.drops[reason]!;
      expect(send(pkt), `reason ${reason}`).toEqual([]);
      expect(counters.drops[reason], `reason ${reason}`).toBe(before + 1);
    }
    expect(counters.flowsCreated).toBe(0);
    invariant();
  });

  it('with TCP checksum verification off, forwards a bad checksum still bad (the receiver drops it)', () => {
    const { send, counters } = setup({ verify: false });
    const syn = seg(CLIENT_A, 40000, VIP, 9000, SYN);
    syn[36] = syn[36]! ^ 0x01; // TCP checksum, high byte
    const [out] = send(syn);
    expect(out).toBeDefined();
    expect(counters.drops[Drop.BAD_L4_CHECKSUM]).toBe(0);
    // The translated packet equals the good translation but for the same one-bit error.
    const want = seg(CLIENT_A, 40000, HOST, 19001, SYN);
    want[36] = want[36]! ^ 0x01;
    expect(out).toBe(hex(want));
  });

  it('counts packets the device does not take as tx_error', () => {
    const { send, tun, counters, invariant } = setup({ writeCapacity: 1 });
    tun.inject([
      seg(CLIENT_A, 40001, VIP, 9000, SYN),
      seg(CLIENT_A, 40002, VIP, 9000, SYN),
      seg(CLIENT_A, 40003, VIP, 9000, SYN),
    ]);
    void send;
    expect(counters.packetsOut).toBe(1);
    expect(counters.drops[Drop.TX_ERROR]).toBe(2);
    invariant();
  });

  it('starts a new connection when a SYN reuses the ports of a closed one', () => {
    const { send, table, counters } = setup();
    send(seg(CLIENT_A, 40000, VIP, 9000, SYN));
    send(seg(HOST, 19001, CLIENT_A, 40000, RST | ACK, 0, 1001));
    const s = table.lookup(CLIENT_A, 40000, VIP, 9000, PROTO_TCP) >> 1;
    expect(table.state[s]).toBe(FlowState.RESET);
    expect(send(seg(CLIENT_A, 40000, VIP, 9000, SYN, 9999))).toEqual([
      hex(seg(CLIENT_A, 40000, HOST, 19001, SYN, 9999)),
    ]);
    expect(counters.flowsCreated).toBe(2);
    const s2 = table.lookup(CLIENT_A, 40000, VIP, 9000, PROTO_TCP) >> 1;
    expect(table.state[s2]).toBe(FlowState.SYN_SENT);
  });

  it('forgets expired flows', () => {
    const { send, table, counters } = setup();
    send(seg(CLIENT_A, 40000, VIP, 9000, SYN));
    expect(table.expire(1000 + 10_001, 100)).toBe(1);
    expect(send(seg(HOST, 19001, CLIENT_A, 40000, SYN | ACK, 1, 1001))).toEqual([]);
    expect(counters.drops[Drop.NO_FLOW]).toBe(1);
  });

  it('never throws and keeps its counters adding up under 100,000 random and mutated packets', () => {
    const { tun, counters, invariant } = setup({ capacity: 256 });
    const rng = new Rng(0xda7a);
    const seeds = [
      seg(CLIENT_A, 40000, VIP, 9000, SYN),
      seg(CLIENT_B, 50000, VIP, 9000, SYN),
      seg(HOST, 19001, CLIENT_A, 40000, SYN | ACK, 1, 1001),
      seg(CLIENT_A, 40000, VIP, 9000, ACK | PSH, 1001, 2, new Uint8Array(100)),
    ];
    const batch: Uint8Array[] = [];
    for (let i = 0; i < 100_000; i++) {
      const base = seeds[rng.int(seeds.length)]!;
      let b: Uint8Array;
      const kind = rng.int(4);
      if (kind === 0) {
        b = new Uint8Array(rng.int(120));
        rng.fill(b);
      } else {
        b = base.slice(0, kind === 1 ? rng.int(base.length + 1) : base.length);
        const flips = 1 + rng.int(3);
        for (let f = 0; f < flips && b.length > 0; f++) b[rng.int(b.length)] = rng.u32() & 0xff;
        if (kind === 3) b[0] = 0x45; // keep it IPv4 more often
      }
      batch.push(b);
      if (batch.length === 16) {
        tun.inject(batch);
        batch.length = 0;
        tun.written.length = 0;
      }
    }
    expect(counters.packetsIn).toBe(100_000);
    invariant();
  });
});

describe('Pipeline, cooperative mode (FIG. 6/7)', () => {
  const TA = HOST; // the client host's own address (its TUN address)
  const CA = LOCAL_CLIENT; // the address the client host's vpm gives local clients
  const P2 = 40001;

  function coopSetup(side: 'client' | 'server') {
    const tun = new MemoryTun({ batchSize: 16 });
    const table = new FlowTable(64, [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000], 9);
    const counters = new Counters(2);
    const held: { pkt: Uint8Array; svc: number; aid: number }[] = [];
    const rules = new Rules({
      services: [
        {
          name: 'web',
          addr: VIP,
          addr6: null,
          port: 9000,
          proto: PROTO_TCP,
          peer: side === 'client' ? 0 : -1,
        },
      ],
      selectors: [],
      aidNames: ['a1', 'a2'],
      defaultAid: -1,
      coopRange: side === 'server' ? { lo: 40000, hi: 40999 } : null,
    });
    const p = new Pipeline(
      tun,
      table,
      rules,
      counters,
      {
        instances: instanceSet(rules, [
          [{ addr: HOST, addr6: null, port: 20001, service: -1, vport: 9000 }],
          [],
        ]),
        verifyL4Checksum: true,
        localClientAddr: CA,
        localClientAid: (a, port) => (a === TA && port === 33000 ? 1 : -1),
        // A copy: `buf` is the receive buffer, a Buffer, whose slice() is only a view.
        negotiate: (buf, off, len, _info, svc, aid) =>
          held.push({ pkt: Uint8Array.prototype.slice.call(buf, off, off + len), svc, aid }),
      },
      new Set([TA]),
    );
    tun.start((n) => p.processBatch(n, 1000));
    const send = (pkt: Uint8Array) => {
      const before = tun.written.length;
      tun.inject([pkt]);
      return tun.written.slice(before).map((b) => hex(b));
    };
    return { tun, table, counters, held, p, send };
  }

  it('client side: holds the SYN with the local client AID, then sends it on to VIP:p2 and translates replies back', () => {
    const { send, held, p, counters, tun } = coopSetup('client');
    const syn = seg(TA, 33000, VIP, 9000, SYN, 500);
    expect(send(syn)).toEqual([]);
    expect(counters.drops[Drop.NEGOTIATING]).toBe(1);
    expect(held).toHaveLength(1);
    expect(held[0]).toMatchObject({ svc: 0, aid: 1 });
    expect(hex(held[0]!.pkt)).toBe(hex(syn));
    // Negotiated: p2 = 40001, AID a2.
    const k = {
      proto: 6,
      clientAddr: TA,
      clientPort: 33000,
      vipAddr: VIP,
      vport: 9000,
      natAddr: CA,
      natPort: 33000,
      realAddr: VIP,
      realPort: P2,
      service: 0,
      aid: 1,
      instance: 0,
    };
    const n = tun.written.length;
    expect(p.injectHeld(held[0]!.pkt, k, 1001)).toBeGreaterThanOrEqual(0);
    expect(hex(tun.written[n]!)).toBe(hex(seg(CA, 33000, VIP, P2, SYN, 500)));
    expect(counters.heldInjected).toBe(1);
    // The server's SYN+ACK comes back from VIP:p2 to CA and leaves as VIP:9000 → TA.
    expect(send(seg(VIP, P2, CA, 33000, SYN | ACK, 7, 501))).toEqual([
      hex(seg(VIP, 9000, TA, 33000, SYN | ACK, 7, 501)),
    ]);
  });

  it('client side: a refused negotiation answers the client with a RST', () => {
    const { send, held, p, counters, tun } = coopSetup('client');
    send(seg(TA, 33001, VIP, 9000, SYN, 41));
    const n = tun.written.length;
    expect(p.refuseHeld(held[0]!.pkt, 'negotiation')).toBe(true);
    expect(tun.written).toHaveLength(n + 1);
    expect(hex(tun.written[n]!)).toBe(
      hex(
        tcp4(
          { src: VIP, dst: TA },
          { srcPort: 9000, dstPort: 33001, seq: 0, ack: 42, flags: RST | ACK, window: 0 },
        ),
      ),
    );
    expect(counters.negotiationsFailed).toBe(1);
    expect(counters.localClientsRefused).toBe(0);
    expect(counters.rstSent).toBe(1);
  });

  it('client side: a held SYN that cannot be placed is reported, never answered, by injectHeld', () => {
    const { send, held, p, counters, table, tun } = coopSetup('client');
    send(seg(TA, 33002, VIP, 9000, SYN, 41));
    const k = {
      proto: 6,
      clientAddr: TA,
      clientPort: 33002,
      vipAddr: VIP,
      vport: 9000,
      natAddr: CA,
      natPort: 33002,
      realAddr: VIP,
      realPort: P2,
      service: 0,
      aid: 1,
      instance: 0,
    };
    const n = tun.written.length;
    // Collision: a flow of that client to VIP:9000 exists already.
    const other = table.create({ ...k, realPort: P2 + 1, natPort: 1 }, 1000);
    expect(other).toBeGreaterThanOrEqual(0);
    expect(p.injectHeld(held[0]!.pkt, k, 1001)).toBe(CREATE_COLLISION);
    table.remove(other);
    // Malformed: the copy is cut short of its IPv4 total length.
    expect(p.injectHeld(held[0]!.pkt.subarray(0, 30), k, 1001)).toBe(INJECT_MALFORMED);
    expect(tun.written).toHaveLength(n);
    expect(counters).toMatchObject({ rstSent: 0, negotiationsFailed: 0, heldInjected: 0 });
    // Refusing a malformed copy counts it but can build no RST.
    expect(p.refuseHeld(held[0]!.pkt.subarray(0, 30), 'local_client')).toBe(false);
    expect(tun.written).toHaveLength(n);
    expect(counters).toMatchObject({ rstSent: 0, localClientsRefused: 1, negotiationsFailed: 0 });
  });

  it('server side: a negotiated flow takes VIP:p2 to the instance; an unannounced VIP:p2 is dropped', () => {
    const { send, p, counters } = coopSetup('server');
    const CLIENT = ip4('198.18.70.2');
    expect(send(seg(CLIENT, 33000, VIP, P2, SYN, 1))).toEqual([]);
    expect(counters.drops[Drop.NOT_NEGOTIATED]).toBe(1);
    const s = p.createFlow(
      {
        proto: 6,
        clientAddr: CLIENT,
        clientPort: 33000,
        vipAddr: VIP,
        vport: P2,
        natAddr: CLIENT,
        natPort: 33000,
        realAddr: HOST,
        realPort: 20001,
        service: 0,
        aid: 0,
        instance: 0,
      },
      1000,
    );
    expect(s).toBeGreaterThanOrEqual(0);
    expect(send(seg(CLIENT, 33000, VIP, P2, SYN, 1))).toEqual([
      hex(seg(CLIENT, 33000, HOST, 20001, SYN, 1)),
    ]);
    expect(send(seg(HOST, 20001, CLIENT, 33000, SYN | ACK, 9, 2))).toEqual([
      hex(seg(VIP, P2, CLIENT, 33000, SYN | ACK, 9, 2)),
    ]);
  });
});
