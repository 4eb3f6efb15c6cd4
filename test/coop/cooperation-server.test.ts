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
import { hex, ip4, ip6, tcp4, tcp6, udp4, udp6, words6 } from '../support/builder.js';
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

// ---------------------------------------------------------------- IPv6

const VIP6 = ip6('2001:2:0:9::9');
const TUN6 = ip6('2001:2:0:ff::1');
const CLIENT6 = ip6('2001:2:0:70::2');
const A1_DNS_PORT = 19011;

/**
 * The server side with IPv6 on, its channel on [::1]: web = tcp [198.19.0.9 and
 * 2001:2:0:9::9]:9100 (a1 of both families, a2 with an IPv4 instance only), dns =
 * udp/[2001:2:0:9::9]:9000 (a1, on 19011), old = tcp/198.19.0.9:9001 (IPv4 only), api = tcp
 * [198.19.0.9 and 2001:2:0:9::9]:9200 (a3, with an IPv4 instance only).
 */
async function setup6() {
  const parsed = parseConfig(
    {
      tun: {
        name: 'vpm0',
        address: '198.19.255.1',
        localClientAddress: '198.19.255.2',
        address6: '2001:2:0:ff::1',
      },
      services: [
        { name: 'web', address: ['198.19.0.9', '2001:2:0:9::9'], port: 9100 },
        { name: 'dns', protocol: 'udp', address: '2001:2:0:9::9', port: 9000 },
        { name: 'old', address: '198.19.0.9', port: 9001 },
        { name: 'api', address: ['198.19.0.9', '2001:2:0:9::9'], port: 9200 },
      ],
      applications: [
        {
          aid: 'a1',
          instances: [
            { port: A1_PORT, service: 'web' },
            { port: A1_DNS_PORT, service: 'dns' },
          ],
        },
        { aid: 'a2', instances: [{ address: '198.19.255.1', port: 19002, service: 'web' }] },
        { aid: 'a3', instances: [{ address: '198.19.255.1', port: 19003, service: 'api' }] },
      ],
      default: { refuse: true },
      cooperative: {
        name: 'server',
        listen: '[2001:2:0:20::2]:7070',
        portRange: '40000-40009',
        peers: [{ name: 'client', key: KEY_HEX }],
      },
    },
    'cooperation-server6.test.json',
  );
  expect(parsed.tun.ipv6).toBe(true);
  // Listen on the IPv6 loopback, on a free port.
  const cfg: Config = {
    ...parsed,
    cooperative: { ...parsed.cooperative!, listen: { address: 1n, port: 0 } },
  };
  const rules = rulesFromConfig(cfg);
  const instances = new InstanceSet();
  instances.replaceStatic(rules, staticInstancesFromConfig(cfg));
  const tun = new MemoryTun({ batchSize: 8 });
  const timeouts = [10_000, 3_600_000, 60_000, 10_000, 30_000, 120_000];
  const table = new FlowTable(64, timeouts, 5, 64, true);
  const counters = new Counters(cfg.applications.length);
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
  const pipeline = new Pipeline(tun, table, rules, counters, {
    instances,
    verifyL4Checksum: true,
    localClientAddr: cfg.tun.localClientAddress,
    localClientAddr6: words6(ip6('2001:2:0:ff::2')),
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
  const listen = coop.listenAddress()!;
  const client = new PeerClient({
    host: '::1',
    port: listen.port,
    name: 'client',
    peer: 'server',
    key: Buffer.from(KEY_HEX, 'hex'),
    psk: { identity: 'client/default', key: Buffer.from(KEY_HEX, 'hex') },
    timeoutMs: 5000,
  });
  cleanup.push(() => client.close());
  const send = (...pkts: Uint8Array[]) => {
    const n = tun.written.length;
    tun.inject(pkts);
    return tun.written.slice(n).map(hex);
  };
  return { client, table, counters, logs, send, coop, listen };
}

const req6 = (over: Partial<RequestBody> = {}): RequestBody => ({
  client: '[2001:2:0:70::2]:33000',
  service: '[2001:2:0:9::9]:9100',
  aid: 'a1',
  ...over,
});

const syn6 = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number) =>
  tcp6({ src, dst }, { srcPort: sp, dstPort: dp, flags: SYN, seq: 7, window: 64240 });

/** A packet's buffer with the IPv6 addresses at 8 (source) and 24 (destination), for lookup6. */
const addrs6 = (src: Uint8Array, dst: Uint8Array) => {
  const b = new Uint8Array(40);
  b.set(src, 8);
  b.set(dst, 24);
  return b;
};

describe('Cooperation, server side, over IPv6', () => {
  it('a request of [v6]:port endpoints over an IPv6 channel: an IPv6 flow is recorded; a SYN to [VIP6]:p2 reaches the instance on the TUN IPv6 address, its answer leaves from [VIP6]:p2', async () => {
    const { client, table, logs, send, coop, listen } = await setup6();
    expect(listen.address).toBe('::1');
    const r = await client.negotiate(req6());
    if (!r.ok) throw new Error(`refused: ${JSON.stringify(r)}`);
    // a2's only instance is IPv4: not offered to an IPv6 client.
    expect(r.aids).toEqual(['a1']);
    const p2 = r.port;
    const key = addrs6(CLIENT6, VIP6);
    const h = table.lookup6(key, 8, 33000, 24, p2, TCP);
    expect(h).toBeGreaterThanOrEqual(0);
    expect(table.family[h >> 1]).toBe(6);
    // No IPv4 flow of it, and no UDP one.
    expect(table.lookup6(key, 8, 33000, 24, p2, UDP)).toBe(-1);
    expect(send(syn6(CLIENT6, 33000, VIP6, p2))).toEqual([
      hex(syn6(CLIENT6, 33000, TUN6, A1_PORT)),
    ]);
    expect(send(syn6(TUN6, A1_PORT, CLIENT6, 33000))).toEqual([
      hex(syn6(VIP6, p2, CLIENT6, 33000)),
    ]);
    expect(logs.find((l) => l.event === 'flow_negotiated')).toMatchObject({
      side: 'server',
      protocol: 'tcp',
      client: '[2001:2:0:70::2]:33000',
      service: '[2001:2:0:9::9]:9100',
      real: `[2001:2:0:ff::1]:${A1_PORT}`,
      p2,
    });
    expect(coop.stats()).toMatchObject({ serverRefused: {} });
  });

  it('UDP over IPv6: the datagrams to [VIP6]:p2 reach the instance', async () => {
    const { client, table, send } = await setup6();
    const r = await client.negotiate(req6({ service: '[2001:2:0:9::9]:9000', protocol: 'udp' }));
    if (!r.ok) throw new Error(`refused: ${JSON.stringify(r)}`);
    const d = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number) =>
      udp6({ src, dst }, { srcPort: sp, dstPort: dp, payload: new Uint8Array(8).fill(3) });
    expect(table.lookup6(addrs6(CLIENT6, VIP6), 8, 33000, 24, r.port, UDP)).toBeGreaterThanOrEqual(
      0,
    );
    expect(send(d(CLIENT6, 33000, VIP6, r.port))).toEqual([
      hex(d(CLIENT6, 33000, TUN6, A1_DNS_PORT)),
    ]);
  });

  it('refuses family_mismatch, counted: mixed endpoints, a service without an IPv6 address here, AIDs that serve it over IPv4 only; an IPv4 request to the same daemon still works', async () => {
    const { client, table, coop, logs } = await setup6();
    const mixed = await client.negotiate(req6({ service: '198.19.0.9:9100' }));
    expect(mixed).toMatchObject({ ok: false, by: 'peer', reason: 'family_mismatch' });
    expect((mixed as { message: string }).message).toMatch(/IPv6.*IPv4.*does not translate/);
    const old = await client.negotiate(req6({ service: '[2001:2:0:9::9]:9001' }));
    expect(old).toMatchObject({ ok: false, by: 'peer', reason: 'family_mismatch' });
    expect((old as { message: string }).message).toMatch(
      /old \(tcp port 9001\) has no IPv6 address here/,
    );
    // Nothing at all on that port: no_service, as before.
    const none = await client.negotiate(req6({ service: '[2001:2:0:9::9]:9555' }));
    expect(none).toMatchObject({ ok: false, by: 'peer', reason: 'no_service' });
    // a2 asks over IPv6: a2 is not offered (its instance is IPv4), so it declines.
    const a2 = await client.negotiate(req6({ aid: 'a2' }));
    expect(a2).toMatchObject({ ok: false, by: 'self', reason: 'aid_mismatch', aids: ['a1'] });
    expect(table.size).toBe(0);
    // The same service over IPv4 offers both.
    const v4 = await client.negotiate(
      req6({ client: '198.18.70.2:33001', service: '198.19.0.9:9100', aid: 'a2' }),
    );
    if (!v4.ok) throw new Error(`refused: ${JSON.stringify(v4)}`);
    expect(v4.aids).toEqual(['a1', 'a2']);
    expect(table.lookup(CLIENT, 33001, VIP, v4.port, TCP)).toBeGreaterThanOrEqual(0);
    expect(coop.stats()).toMatchObject({ serverRefused: { family_mismatch: 2, no_service: 1 } });
    expect(
      logs.filter((l) => l.event === 'negotiation_refused' && l.reason === 'family_mismatch'),
    ).toHaveLength(2);
  });

  it('a dual-stack service whose AIDs all serve it over IPv4 only: family_mismatch naming them', async () => {
    const { client, coop } = await setup6();
    const r = await client.negotiate(req6({ service: '[2001:2:0:9::9]:9200', aid: 'a3' }));
    expect(r).toMatchObject({ ok: false, by: 'peer', reason: 'family_mismatch' });
    expect((r as { message: string }).message).toBe(
      'no application serves [2001:2:0:9::9]:9200 over IPv6 here (a3 only over IPv4)',
    );
    expect(coop.stats()).toMatchObject({ serverRefused: { family_mismatch: 1 } });
    // Over IPv4 it is served.
    const v4 = await client.negotiate(
      req6({ client: '198.18.70.2:33002', service: '198.19.0.9:9200', aid: 'a3' }),
    );
    expect(v4).toMatchObject({ ok: true, aids: ['a3'] });
  });
});
