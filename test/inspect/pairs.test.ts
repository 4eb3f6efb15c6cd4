import { describe, expect, it } from 'vitest';
import type { FlowTuples } from '../../src/inspect/filter.js';
import { Pairer } from '../../src/inspect/pairs.js';
import { describePacket, type PacketFacts } from '../../src/inspect/summary.js';
import { LINKTYPE_RAW } from '../../src/pcap/format.js';
import { ip4, tcp4, udp4 } from '../support/builder.js';

/*
 * What a capture on the TUN shows for one connection through vpm: each packet
 * as the kernel handed it over, then as vpm wrote it back. Packets are built by
 * the independent builder and decoded by describePacket, as vpm dump does.
 *
 *   flow 7: client 198.18.1.2:40000 ⇄ web 198.19.0.9:9000, real 198.19.255.1:19001
 *   flow 8: local client 198.19.255.1:40001 (as 198.19.255.2:40001), same service and real
 */

const FLOW7: FlowTuples = {
  id: 7,
  client: '198.18.1.2:40000',
  service: '198.19.0.9:9000',
  aid: 'web-1',
  real: '198.19.255.1:19001',
  nat: null,
};
const FLOW8: FlowTuples = {
  id: 8,
  client: '198.19.255.1:40001',
  service: '198.19.0.9:9000',
  aid: 'web-1',
  real: '198.19.255.1:19001',
  nat: '198.19.255.2:40001',
};

function ep(s: string): [number, number] {
  const i = s.lastIndexOf(':');
  return [ip4(s.slice(0, i)), Number(s.slice(i + 1))];
}

function pkt(from: string, to: string, flags: number, seq: number, ack = 0, len = 0): PacketFacts {
  const [src, srcPort] = ep(from);
  const [dst, dstPort] = ep(to);
  const b = tcp4({ src, dst }, { srcPort, dstPort, flags, seq, ack, payload: new Uint8Array(len) });
  return describePacket(b, LINKTYPE_RAW);
}

const C = '198.18.1.2:40000';
const V = '198.19.0.9:9000';
const R = '198.19.255.1:19001';

function harness(timeoutMs = 200) {
  const lines: string[] = [];
  let requests = 0;
  const p = new Pairer({
    emit: (l) => lines.push(l.replace(/^\S+ /, '')), // drop the time of day
    requestFlows: () => requests++,
    timeoutMs,
  });
  return { p, lines, requests: () => requests };
}

describe('pairing packets before and after translation', () => {
  it('pairs a new connection once the flows are known, in both directions', () => {
    const h = harness();
    h.p.setFlows([], 0);
    h.p.push(pkt(C, V, 0x02, 1000), 1); // SYN as sent: flow not known yet
    expect(h.requests()).toBe(1);
    h.p.push(pkt(C, R, 0x02, 1000), 1.1); // its translation; a request is already out
    expect(h.requests()).toBe(1);
    expect(h.lines).toEqual([]);
    h.p.setFlows([FLOW7], 0.5);
    h.p.push(pkt(R, C, 0x12, 5000, 1001), 2); // SYN+ACK from the instance
    h.p.push(pkt(V, C, 0x12, 5000, 1001), 2.1); // as the client gets it
    h.p.push(pkt(C, V, 0x18, 1001, 5001, 83), 3);
    h.p.push(pkt(C, R, 0x18, 1001, 5001, 83), 3.1);
    expect(h.lines).toEqual([
      '198.18.1.2:40000 > 198.19.0.9:9000  ⇄  198.18.1.2:40000 > 198.19.255.1:19001  [S] seq 1000 len 0',
      '198.19.255.1:19001 > 198.18.1.2:40000  ⇄  198.19.0.9:9000 > 198.18.1.2:40000  [S.] seq 5000 ack 1001 len 0',
      '198.18.1.2:40000 > 198.19.0.9:9000  ⇄  198.18.1.2:40000 > 198.19.255.1:19001  [P.] seq 1001 ack 5001 len 83',
    ]);
    expect([h.p.pairs, h.p.unpaired, h.p.outstanding]).toEqual([3, 0, 0]);
  });

  it('uses the translated client address of a local client', () => {
    const h = harness();
    h.p.setFlows([FLOW8], 0);
    h.p.push(pkt('198.19.255.1:40001', V, 0x10, 1, 2), 1);
    h.p.push(pkt('198.19.255.2:40001', R, 0x10, 1, 2), 1.1);
    h.p.push(pkt(R, '198.19.255.2:40001', 0x10, 2, 1), 2);
    h.p.push(pkt(V, '198.19.255.1:40001', 0x10, 2, 1), 2.1);
    expect(h.lines).toEqual([
      '198.19.255.1:40001 > 198.19.0.9:9000  ⇄  198.19.255.2:40001 > 198.19.255.1:19001  [.] seq 1 ack 2 len 0',
      '198.19.255.1:19001 > 198.19.255.2:40001  ⇄  198.19.0.9:9000 > 198.19.255.1:40001  [.] seq 2 ack 1 len 0',
    ]);
  });

  it('keeps before ⇄ after even when the capture shows them the other way round', () => {
    const h = harness();
    h.p.setFlows([FLOW7], 0);
    h.p.push(pkt(C, R, 0x10, 1, 2), 1);
    h.p.push(pkt(C, V, 0x10, 1, 2), 1.1);
    expect(h.lines[0]).toMatch(
      /^198\.18\.1\.2:40000 > 198\.19\.0\.9:9000 {2}⇄ {2}198\.18\.1\.2:40000 > 198\.19\.255\.1:19001/,
    );
  });

  it('pairs retransmissions first with first, and never two packets of one side', () => {
    const h = harness();
    h.p.setFlows([FLOW7], 0);
    h.p.push(pkt(C, V, 0x18, 1, 2, 10), 1);
    h.p.push(pkt(C, V, 0x18, 1, 2, 10), 1.1); // a retransmission before the translation
    expect(h.lines).toEqual([]);
    h.p.push(pkt(C, R, 0x18, 1, 2, 10), 1.2);
    h.p.push(pkt(C, R, 0x18, 1, 2, 10), 1.3);
    expect(h.lines).toHaveLength(2);
    expect(h.p.outstanding).toBe(0);
  });

  it('prints a packet without partner alone after the timeout', () => {
    const h = harness(200);
    h.p.setFlows([FLOW7], 0);
    h.p.push(pkt(C, V, 0x02, 1), 1000); // a SYN vpm refused: no translation follows
    h.p.push(pkt(C, V, 0x10, 9, 9), 1100);
    h.p.tick(1150);
    expect(h.lines).toEqual([]);
    h.p.tick(1200);
    expect(h.lines).toEqual(['TCP 198.18.1.2:40000 > 198.19.0.9:9000 [S] seq 1 len 0  (unpaired)']);
    h.p.tick(1300);
    expect(h.lines).toHaveLength(2);
    expect([h.p.pairs, h.p.unpaired, h.p.outstanding]).toEqual([0, 2, 0]);
  });

  it('gives a parked packet longer while flows are being fetched, then asks once more', () => {
    const h = harness(200);
    h.p.setFlows([], 0);
    h.p.push(pkt(C, V, 0x02, 1), 1000);
    expect(h.requests()).toBe(1);
    h.p.tick(1500); // the request is still out: it waits
    expect(h.lines).toEqual([]);
    // The answer was asked for before the packet arrived and does not know the flow:
    // ask again.
    h.p.setFlows([], 999);
    expect(h.requests()).toBe(2);
    h.p.setFlows([FLOW7], 1600);
    h.p.push(pkt(C, R, 0x02, 1), 1601);
    expect(h.lines).toHaveLength(1);
    expect(h.lines[0]).toContain('⇄');
  });

  it('does not ask again for a packet the fresh flows do not know, and times it out', () => {
    const h = harness(200);
    h.p.setFlows([], 0);
    h.p.push(pkt('198.18.9.9:1', V, 0x02, 1), 1000);
    h.p.setFlows([FLOW7], 1001); // asked after the packet: no such flow, really
    expect(h.requests()).toBe(1);
    h.p.tick(1200);
    expect(h.lines).toEqual(['TCP 198.18.9.9:1 > 198.19.0.9:9000 [S] seq 1 len 0  (unpaired)']);
  });

  it('times out parked packets normally when the flows cannot be fetched', () => {
    const h = harness(200);
    h.p.setFlows([], 0);
    h.p.push(pkt(C, V, 0x02, 1), 1000);
    h.p.tick(1300);
    expect(h.lines).toEqual([]);
    h.p.flowsFailed();
    h.p.tick(1300);
    expect(h.lines).toHaveLength(1);
  });

  it('prints what is not TCP, or malformed, at once', () => {
    const h = harness();
    h.p.setFlows([FLOW7], 0);
    h.p.push(
      describePacket(
        udp4({ src: ip4('198.18.1.2'), dst: ip4('198.19.0.9') }, { srcPort: 1, dstPort: 2 }),
        LINKTYPE_RAW,
      ),
      1,
    );
    h.p.push(describePacket(new Uint8Array([0x45, 0, 0]), LINKTYPE_RAW), 2);
    expect(h.lines).toEqual([
      'UDP 198.18.1.2:1 > 198.19.0.9:2 len 0',
      'malformed: truncated (3 bytes)',
    ]);
    expect(h.p.outstanding).toBe(0);
  });

  it('after -c takes only partners of waiting packets, holding unknown ones for the flows', () => {
    const h = harness();
    h.p.setFlows([FLOW7], 0);
    h.p.push(pkt(C, V, 0x10, 1, 2), 1);
    h.p.offerPartner(pkt(V, C, 0x10, 2, 1), 2); // not a partner: dropped
    h.p.offerPartner(pkt(C, R, 0x10, 1, 2), 3); // the partner
    expect(h.lines).toHaveLength(1);
    expect(h.p.partnersTaken).toBe(1);
    // A new connection, its SYN taken before -c ran out, the flows not known yet.
    const C2 = '198.18.1.2:40002';
    h.p.push(pkt(C2, V, 0x02, 7), 4);
    expect(h.requests()).toBe(1);
    h.p.offerPartner(pkt(C2, R, 0x02, 7), 5); // held until the flows arrive
    h.p.offerPartner(pkt(C2, R, 0x10, 8, 1), 5.1); // held, then not a partner
    h.p.setFlows([FLOW7, { ...FLOW7, id: 9, client: C2 }], 4.5);
    expect(h.lines).toHaveLength(2);
    expect(h.p.partnersTaken).toBe(2);
    expect(h.p.outstanding).toBe(0);
  });

  it('flushAll prints everything left, in capture order', () => {
    const h = harness();
    h.p.setFlows([FLOW7], 0);
    h.p.push(pkt(C, V, 0x10, 1, 2), 1);
    h.p.push(pkt(V, C, 0x10, 2, 1), 2);
    h.p.flushAll();
    expect(h.lines).toEqual([
      'TCP 198.18.1.2:40000 > 198.19.0.9:9000 [.] seq 1 ack 2 len 0  (unpaired)',
      'TCP 198.19.0.9:9000 > 198.18.1.2:40000 [.] seq 2 ack 1 len 0  (unpaired)',
    ]);
    expect(h.p.outstanding).toBe(0);
  });

  it('stays small when one packet waits long while thousands pair behind it', () => {
    const h = harness(1e9);
    h.p.setFlows([FLOW7], 0);
    h.p.push(pkt(C, V, 0x02, 1), 0); // never answered
    for (let i = 0; i < 5000; i++) {
      h.p.push(pkt(C, V, 0x10, 100 + i, 2), i);
      h.p.push(pkt(C, R, 0x10, 100 + i, 2), i);
    }
    expect(h.p.pairs).toBe(5000);
    expect(h.p.outstanding).toBeLessThanOrEqual(1025);
  });
});
