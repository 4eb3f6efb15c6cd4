/**
 * The passive health check on a MemoryTun: an instance that answers a SYN with a
 * RST (nothing listens) is marked down, the SYN goes to another instance of the
 * AID instead (the client never sees the refusal), new connections skip the
 * instance until health.downMs has passed, and only when no instance is left does
 * the RST reach the client. Packets are compared byte for byte with the builder's.
 */

import { describe, expect, it } from 'vitest';
import { Counters, DROP_REASONS } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline } from '../../src/datapath/pipeline.js';
import { Rules } from '../../src/datapath/rules.js';
import { FlowState } from '../../src/flow/state.js';
import { FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { VNET_F_NEEDS_CSUM } from '../../src/wire/virtio.js';
import { hex, ip4, PROTO_TCP, tcp4, tcp4Partial, vnetHdr } from '../support/builder.js';

const VIP = ip4('198.19.0.9');
const HOST = ip4('198.19.255.1');
const LOCAL_CLIENT = ip4('198.19.255.2');
const CLIENT = ip4('198.18.1.2');
const SYN = 0x02;
const ACK = 0x10;
const RST = 0x04;
const DOWN_MS = 5000;

function setup(
  o: { instances?: number; downMs?: number; synCopies?: number; vnetHdr?: boolean } = {},
) {
  const tun = new MemoryTun({ batchSize: 16, vnetHdr: o.vnetHdr ?? false });
  const table = new FlowTable(64, [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000], 5);
  const counters = new Counters(1);
  const rules = new Rules({
    services: [{ name: 'web', addr: VIP, addr6: null, port: 9000, proto: PROTO_TCP, peer: -1 }],
    selectors: [],
    aidNames: ['web'],
    defaultAid: 0,
  });
  const instances = new InstanceSet();
  instances.replaceStatic(
    rules,
    Array.from({ length: o.instances ?? 2 }, (_, i) => ({
      aid: 0,
      addr: HOST,
      addr6: null,
      port: 19001 + i,
      service: -1,
      vport: 0,
    })),
  );
  const events: string[] = [];
  const p = new Pipeline(
    tun,
    table,
    rules,
    counters,
    {
      instances,
      verifyL4Checksum: true,
      localClientAddr: LOCAL_CLIENT,
      health: { downMs: o.downMs ?? DOWN_MS, synCopies: o.synCopies ?? 16 },
      onInstanceEvent: (e, i) => events.push(`${e}:${i}`),
    },
    new Set([HOST]),
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
    instances,
    events,
    p,
    send,
    invariant,
    now: () => now,
    setNow: (t: number) => {
      now = t;
    },
  };
}

const seg = (src: number, sp: number, dst: number, dp: number, flags: number, seq = 0, ack = 0) =>
  tcp4({ src, dst, ident: 0x1234 }, { srcPort: sp, dstPort: dp, flags, seq, ack, window: 64240 });

/** The client's SYN from port `cp` (ISN 1000 + cp) and what the instance on `port` gets of it. */
const synFrom = (cp: number) => seg(CLIENT, cp, VIP, 9000, SYN, 1000 + cp);
const synTo = (cp: number, port: number) => seg(CLIENT, cp, HOST, port, SYN, 1000 + cp);
/** The refusal of instance `port` (nothing listening): RST|ACK acknowledging the SYN. */
const refusal = (cp: number, port: number) =>
  seg(HOST, port, CLIENT, cp, RST | ACK, 0, 1000 + cp + 1);
const synAck = (cp: number, port: number) =>
  seg(HOST, port, CLIENT, cp, SYN | ACK, 7000, 1000 + cp + 1);

describe('passive health check', () => {
  it('sends a refused SYN to the other instance, drops the RST and marks the refusing one down', () => {
    const { send, table, counters, instances, events, invariant, now, p } = setup();
    expect(send(synFrom(40000))).toEqual([hex(synTo(40000, 19001))]);
    expect(p.synCopiesInUse).toBe(1);
    // Instance 19001 refuses: the client sees nothing, 19002 gets the very same SYN.
    expect(send(refusal(40000, 19001))).toEqual([hex(synTo(40000, 19002))]);
    expect(instances.isDown(0, now())).toBe(true);
    expect(instances.isDown(1, now())).toBe(false);
    expect(instances.health(0, now())).toEqual({
      up: false,
      downUntil: now() + DOWN_MS,
      refusals: 1,
    });
    expect(events).toEqual(['down:0']);
    expect(counters.instanceRefusals).toBe(1);
    expect(counters.synRetried).toBe(1);
    expect(counters.refusalsForwarded).toBe(0);
    // The flow now points at 19002, found from its side; the old side-1 key is gone.
    const s = table.lookup(CLIENT, 40000, VIP, 9000, PROTO_TCP) >> 1;
    expect(table.realPort[s]).toBe(19002);
    expect(table.instance[s]).toBe(1);
    expect(table.lookup(HOST, 19001, CLIENT, 40000, PROTO_TCP)).toBe(-1);
    expect(table.lookup(HOST, 19002, CLIENT, 40000, PROTO_TCP)).toBe(s * 2 + 1);
    // 19002 accepts: the client's handshake completes with the service.
    expect(send(synAck(40000, 19002))).toEqual([
      hex(seg(VIP, 9000, CLIENT, 40000, SYN | ACK, 7000, 41001)),
    ]);
    expect(table.state[s]).toBe(FlowState.SYN_RECEIVED);
    expect(p.synCopiesInUse).toBe(0);
    invariant();
  });

  it('sends new connections to the instances that are up, and to the refusing one again after downMs', () => {
    const { send, setNow, now, events, invariant } = setup();
    send(synFrom(40000));
    send(refusal(40000, 19001));
    for (let cp = 40001; cp <= 40006; cp++)
      expect(send(synFrom(cp))).toEqual([hex(synTo(cp, 19002))]);
    // Still down 1 ms before downMs has passed.
    setNow(now() + DOWN_MS - 1);
    expect(send(synFrom(40007))).toEqual([hex(synTo(40007, 19002))]);
    setNow(now() + 1);
    const ports = new Set<string>();
    for (let cp = 40010; cp < 40014; cp++) {
      const out = send(synFrom(cp));
      expect(out.length).toBe(1);
      ports.add(
        out[0] === hex(synTo(cp, 19001))
          ? '19001'
          : out[0] === hex(synTo(cp, 19002))
            ? '19002'
            : out[0]!,
      );
    }
    expect([...ports].sort()).toEqual(['19001', '19002']);
    expect(events).toEqual(['down:0']);
    invariant();
  });

  it('marks an instance up at once when it accepts a SYN while marked down', () => {
    const { send, instances, events, now } = setup({ instances: 2 });
    send(synFrom(40000));
    send(refusal(40000, 19001)); // retried on 19002
    send(refusal(40000, 19002)); // both down now: the RST reaches the client
    expect(instances.isDown(0, now())).toBe(true);
    expect(instances.isDown(1, now())).toBe(true);
    // All down: round robin over all of them, so a recovered one is found.
    const out = send(synFrom(40001));
    expect([hex(synTo(40001, 19001)), hex(synTo(40001, 19002))]).toContain(out[0]);
    const port = out[0] === hex(synTo(40001, 19001)) ? 19001 : 19002;
    send(synAck(40001, port));
    expect(instances.isDown(port - 19001, now())).toBe(false);
    expect(events).toEqual(['down:0', 'down:1', `up:${port - 19001}`]);
  });

  it('lets the RST reach the client when no instance of the AID is left', () => {
    const { send, counters, invariant } = setup({ instances: 2 });
    send(synFrom(40000));
    expect(send(refusal(40000, 19001))).toEqual([hex(synTo(40000, 19002))]);
    // Each instance is tried once per SYN: the second refusal goes to the client.
    expect(send(refusal(40000, 19002))).toEqual([
      hex(seg(VIP, 9000, CLIENT, 40000, RST | ACK, 0, 41001)),
    ]);
    expect(counters.instanceRefusals).toBe(2);
    expect(counters.synRetried).toBe(1);
    expect(counters.refusalsForwarded).toBe(1);
    invariant();
  });

  it('forwards the RST of an AID with one instance, and marks it down', () => {
    const { send, instances, counters, now } = setup({ instances: 1 });
    send(synFrom(40000));
    expect(send(refusal(40000, 19001))).toEqual([
      hex(seg(VIP, 9000, CLIENT, 40000, RST | ACK, 0, 41001)),
    ]);
    expect(instances.isDown(0, now())).toBe(true);
    expect(counters.synNotKept).toBe(0); // nothing to retry on: no copy wanted
    // Its only instance, down: still used (round robin over all when all are down).
    expect(send(synFrom(40001))).toEqual([hex(synTo(40001, 19001))]);
  });

  it('forwards the RST when the SYN copy pool was full (the SYN was not retryable, never lost)', () => {
    const { send, counters, instances, invariant, now } = setup({ synCopies: 1 });
    expect(send(synFrom(40000))).toEqual([hex(synTo(40000, 19001))]);
    expect(send(synFrom(40001))).toEqual([hex(synTo(40001, 19002))]);
    expect(counters.synNotKept).toBe(1);
    expect(send(refusal(40001, 19002))).toEqual([
      hex(seg(VIP, 9000, CLIENT, 40001, RST | ACK, 0, 41002)),
    ]);
    expect(instances.isDown(1, now())).toBe(true);
    expect(counters.refusalsForwarded).toBe(1);
    // A SYN+ACK frees its copy: the next SYN is kept again.
    send(synAck(40000, 19001));
    send(synFrom(40002));
    expect(counters.synNotKept).toBe(1);
    invariant();
  });

  it('frees the copy when the flow is removed', () => {
    const { send, table, counters, p } = setup({ synCopies: 1 });
    send(synFrom(40000));
    expect(p.synCopiesInUse).toBe(1);
    table.remove(table.lookup(CLIENT, 40000, VIP, 9000, PROTO_TCP) >> 1);
    expect(p.synCopiesInUse).toBe(0);
    send(synFrom(40001));
    expect(counters.synNotKept).toBe(0);
  });

  it('takes only a RST that acknowledges the SYN as a refusal', () => {
    const { send, counters, instances, now, p } = setup();
    send(synFrom(40000));
    const wrongAck = seg(HOST, 19001, CLIENT, 40000, RST | ACK, 0, 12345);
    expect(send(wrongAck)).toEqual([hex(seg(VIP, 9000, CLIENT, 40000, RST | ACK, 0, 12345))]);
    expect(instances.isDown(0, now())).toBe(false);
    expect(counters.instanceRefusals).toBe(0);
    expect(p.synCopiesInUse).toBe(0); // answered all the same
  });

  it('is off with downMs 0: the RST goes to the client, nothing is marked', () => {
    const { send, counters, instances, now, p } = setup({ downMs: 0 });
    send(synFrom(40000));
    expect(p.synCopiesInUse).toBe(0);
    expect(send(refusal(40000, 19001))).toEqual([
      hex(seg(VIP, 9000, CLIENT, 40000, RST | ACK, 0, 41001)),
    ]);
    expect(instances.isDown(0, now())).toBe(false);
    expect(counters.instanceRefusals).toBe(0);
  });

  it('with offloads: a partial-checksum SYN is retried as a plain packet behind an all-zero header', () => {
    const { send, counters, invariant } = setup({ vnetHdr: true });
    const ip = { src: CLIENT, dst: VIP, ident: 0x1234 };
    const t = { srcPort: 40000, dstPort: 9000, flags: SYN, seq: 41000, ack: 0, window: 64240 };
    const hdr = { flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 16 };
    const frame = (h: Uint8Array, pkt: Uint8Array) => {
      const f = new Uint8Array(h.length + pkt.length);
      f.set(h, 0);
      f.set(pkt, h.length);
      return f;
    };
    const out = send(frame(vnetHdr(hdr), tcp4Partial(ip, t)));
    expect(out.length).toBe(1);
    expect(out[0]).toBe(
      hex(
        frame(
          vnetHdr({ ...hdr, hdrLen: 40 }),
          tcp4Partial({ ...ip, dst: HOST }, { ...t, dstPort: 19001 }),
        ),
      ),
    );
    const retried = send(frame(vnetHdr(), refusal(40000, 19001)));
    expect(retried).toEqual([hex(frame(vnetHdr(), synTo(40000, 19002)))]);
    expect(counters.synRetried).toBe(1);
    invariant();
  });
});
