/**
 * Cooperation, the server side, on a MemoryTun (no kernel): what a negotiation
 * records, for TCP and for UDP, and what the pipeline then does with VIP:p2. The
 * client side is a real PeerClient on loopback.
 *
 *   PeerClient "client" ──TCP 127.0.0.1:<ephemeral>──► Cooperation "server" (PeerServer, p2 40000-40009)
 *   client 198.18.70.2 ⇄ VIP 198.19.0.9:p2 ──MemoryTun──► Pipeline ──► instance 198.19.255.1:19001 (a1)
 *
 * Services here: dns = udp/198.19.0.9:9000 (a1 only: a2's instance serves web
 * alone), web = tcp/198.19.0.9:9100 (a1, a2).
 */

import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { type Config, parseConfig } from '../../src/config/config.js';
import { PeerClient } from '../../src/coop/client.js';
import { Cooperation } from '../../src/coop/cooperation.js';
import type { RequestBody } from '../../src/coop/protocol.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { Counters, Drop } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline } from '../../src/datapath/pipeline.js';
import { FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { hex, ip4, tcp4, udp4 } from '../support/builder.js';
import { cleanup, runCleanup } from './support.js';

const KEY_HEX = 'd1'.repeat(32);
const TUN_ADDR = ip4('198.19.255.1');
const VIP = ip4('198.19.0.9');
const CLIENT = ip4('198.18.70.2');
const A1_PORT = 19001;
const TCP = 6;
const UDP = 17;
const SYN = 0x02;

afterEach(runCleanup);

const dgram = (src: number, sp: number, dst: number, dp: number, n: number) =>
  udp4(
    { src, dst, ident: 0x3000 + n },
    { srcPort: sp, dstPort: dp, payload: new Uint8Array(12).fill(n) },
  );

async function setup() {
  const parsed = parseConfig(
    {
      tun: { name: 'vpm0', address: '198.19.255.1', localClientAddress: '198.19.255.2' },
      services: [
        { name: 'dns', protocol: 'udp', address: '198.19.0.9', port: 9000 },
        { name: 'web', address: '198.19.0.9', port: 9100 },
      ],
      applications: [
        { aid: 'a1', instances: [{ port: A1_PORT }] },
        { aid: 'a2', instances: [{ port: 19002, service: 'web' }] },
      ],
      default: { refuse: true },
      cooperative: {
        name: 'server',
        listen: '198.18.20.2:7070',
        portRange: '40000-40009',
        peers: [{ name: 'client', key: KEY_HEX }],
      },
    },
    'cooperation-server.test.json',
  );
  // Listen on loopback, on a free port (a config file names neither).
  const cfg: Config = {
    ...parsed,
    cooperative: { ...parsed.cooperative!, listen: { address: ip4('127.0.0.1'), port: 0 } },
  };
  const rules = rulesFromConfig(cfg);
  const instances = new InstanceSet();
  instances.replaceStatic(rules, staticInstancesFromConfig(cfg));
  const tun = new MemoryTun({ batchSize: 8 });
  const table = new FlowTable(64, [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000], 5);
  const counters = new Counters(cfg.applications.length);
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
  const pipeline = new Pipeline(tun, table, rules, counters, {
    instances,
    verifyL4Checksum: true,
    localClientAddr: cfg.tun.localClientAddress,
  });
  const clock = 1000;
  const coop = new Cooperation(cfg, {
    pipeline,
    table,
    rules: () => rules,
    instances,
    log,
    now: () => clock,
  });
  await coop.start();
  cleanup.push(() => coop.close());
  tun.start((n) => pipeline.processBatch(n, clock));
  const client = new PeerClient({
    host: '127.0.0.1',
    port: coop.listenAddress()!.port,
    name: 'client',
    peer: 'server',
    key: Buffer.from(KEY_HEX, 'hex'),
    psk: { identity: 'client/default', key: Buffer.from(KEY_HEX, 'hex') },
    timeoutMs: 5000,
  });
  cleanup.push(() => client.close());
  /** Inject packets; return what the pipeline wrote for them. */
  const send = (...pkts: Uint8Array[]) => {
    const n = tun.written.length;
    tun.inject(pkts);
    return tun.written.slice(n).map(hex);
  };
  return { client, table, counters, logs, send, coop };
}

const req = (over: Partial<RequestBody> = {}): RequestBody => ({
  client: '198.18.70.2:33000',
  service: '198.19.0.9:9000',
  aid: 'a1',
  protocol: 'udp',
  ...over,
});

describe('Cooperation, server side: the protocol of a negotiation', () => {
  it('a UDP request: p2 offered, the flow recorded for UDP; datagrams to VIP:p2 reach the instance, its replies leave from VIP:p2; TCP to VIP:p2 is not negotiated', async () => {
    const { client, table, counters, logs, send } = await setup();
    const r = await client.negotiate(req());
    if (!r.ok) throw new Error(`refused: ${JSON.stringify(r)}`);
    expect(r.aids).toEqual(['a1']);
    expect(r.port).toBeGreaterThanOrEqual(40000);
    expect(r.port).toBeLessThanOrEqual(40009);
    const p2 = r.port;
    expect(table.lookup(CLIENT, 33000, VIP, p2, UDP)).toBeGreaterThanOrEqual(0);
    expect(table.lookup(CLIENT, 33000, VIP, p2, TCP)).toBe(-1);
    // The client's datagrams, as they come off the wire, go to a1's instance ...
    expect(send(dgram(CLIENT, 33000, VIP, p2, 1), dgram(CLIENT, 33000, VIP, p2, 2))).toEqual([
      hex(dgram(CLIENT, 33000, TUN_ADDR, A1_PORT, 1)),
      hex(dgram(CLIENT, 33000, TUN_ADDR, A1_PORT, 2)),
    ]);
    // ... and its replies back out from VIP:p2.
    expect(send(dgram(TUN_ADDR, A1_PORT, CLIENT, 33000, 3))).toEqual([
      hex(dgram(VIP, p2, CLIENT, 33000, 3)),
    ]);
    // The flow is UDP's: a TCP SYN to the same VIP:p2 was never negotiated.
    expect(
      send(tcp4({ src: CLIENT, dst: VIP }, { srcPort: 33000, dstPort: p2, flags: SYN, seq: 1 })),
    ).toEqual([]);
    expect(counters.drops[Drop.NOT_NEGOTIATED]).toBe(1);
    expect(logs.find((l) => l.event === 'flow_negotiated')).toMatchObject({
      side: 'server',
      protocol: 'udp',
      p2,
      real: `198.19.255.1:${A1_PORT}`,
    });
  });

  it('the protocol picks the service: TCP (no protocol, as a peer before UDP asks) and UDP each find only their own', async () => {
    const { client, table } = await setup();
    // VIP:9000 is UDP only: a request without protocol is for TCP, and refused.
    const tcpForUdp = await client.negotiate(req({ protocol: undefined }));
    expect(tcpForUdp).toMatchObject({ ok: false, by: 'peer', reason: 'no_service' });
    expect((tcpForUdp as { message: string }).message).toMatch(/not a tcp virtual service/);
    // VIP:9100 is TCP only.
    const udpForTcp = await client.negotiate(req({ service: '198.19.0.9:9100' }));
    expect(udpForTcp).toMatchObject({ ok: false, by: 'peer', reason: 'no_service' });
    // A TCP request for web, as before UDP: recorded as a TCP flow, to a2's instance.
    const web = await client.negotiate(
      req({ service: '198.19.0.9:9100', protocol: undefined, aid: 'a2' }),
    );
    if (!web.ok) throw new Error(`refused: ${JSON.stringify(web)}`);
    expect(web.aids).toEqual(['a1', 'a2']);
    const h = table.lookup(CLIENT, 33000, VIP, web.port, TCP);
    expect(h).toBeGreaterThanOrEqual(0);
    expect(table.realPort[h >> 1]).toBe(19002);
  });

  it('the UDP service offers only the AIDs with an instance for it', async () => {
    const { client, table } = await setup();
    // a2's only instance serves web (TCP): not offered for dns.
    const r = await client.negotiate(req({ aid: 'a2' }));
    expect(r).toMatchObject({ ok: false, by: 'self', reason: 'aid_mismatch', aids: ['a1'] });
    expect(table.size).toBe(0);
  });
});
