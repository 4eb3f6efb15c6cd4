/**
 * Cooperation, the client side, on a MemoryTun (no kernel): held SYNs, what is
 * sent on or refused, and the counters. The peer is a PeerServer on loopback
 * with a scripted handler (the real server side is covered by
 * test/integration/cooperative.test.ts).
 *
 *   client apps (TUN 198.19.254.1)        Pipeline + Cooperation "client"         PeerServer "server"
 *   SYN → 198.19.0.9:9000  ──MemoryTun──►  hold → negotiate ──TCP 127.0.0.1:<ephemeral>──► handler (test double)
 *   SYN → 198.19.0.10:9000 (local service, FIG. 8: the AID is looked up, no peer)
 *   ◄── the SYN sent on (rewritten to VIP:p2, from 198.19.254.2), or one RST
 */

import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { type Config, parseConfig } from '../../src/config/config.js';
import { type AckAnswer, type OfferAnswer, PeerServer } from '../../src/coop/channel.js';
import { Cooperation } from '../../src/coop/cooperation.js';
import type { Message } from '../../src/coop/protocol.js';
import { rulesFromConfig } from '../../src/daemon/rules-from-config.js';
import { Counters, Drop } from '../../src/datapath/counters.js';
import { Pipeline } from '../../src/datapath/pipeline.js';
import { FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { hex, ip4, tcp4 } from '../support/builder.js';

const KEY_HEX = 'c0'.repeat(32);
const TUN_ADDR = ip4('198.19.254.1');
const LOCAL_CLIENT = ip4('198.19.254.2');
const VIP = ip4('198.19.0.9');
const INSTANCE_A2 = 19002;
const P2 = 40001;

const SYN = 0x02;
const ACK = 0x10;

const seg = (src: number, sp: number, dst: number, dp: number, flags: number, seq = 1000) =>
  tcp4({ src, dst, ident: 0x1234 }, { srcPort: sp, dstPort: dp, flags, seq, window: 64240 });

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!();
});

async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** What the peer does with a request: offer (after `gate`, if set), or refuse. */
class FakePeer {
  gate: Promise<void> | null = null;
  refuse: string | null = null;
  requests: Message<'request'>[] = [];
  handler = {
    request: async (m: Message<'request'>): Promise<OfferAnswer> => {
      this.requests.push(m);
      if (this.gate) await this.gate;
      if (this.refuse) return { type: 'refuse', body: { reason: this.refuse, message: 'no' } };
      return { type: 'offer', body: { aids: ['a1', 'a2'], port: P2 } };
    },
    ack: (): AckAnswer => ({ type: 'confirm' }),
  };
}

async function setup(o: { capacity?: number } = {}) {
  const peer = new FakePeer();
  const server = new PeerServer({
    host: '127.0.0.1',
    port: 0,
    name: 'server',
    keys: Buffer.from(KEY_HEX, 'hex'),
    handler: peer.handler,
  });
  const { port } = await server.listen();
  cleanup.push(() => server.close());
  const parsed = parseConfig(
    {
      tun: { name: 'vpm0', address: '198.19.254.1', localClientAddress: '198.19.254.2' },
      services: [
        { name: 'web', address: '198.19.0.9', port: 9000, peer: 'server' },
        { name: 'loc', address: '198.19.0.10', port: 9000 },
      ],
      applications: [
        { aid: 'a1' },
        { aid: 'a2', instances: [{ address: '198.19.254.1', port: INSTANCE_A2 }] },
      ],
      selectors: [
        { service: 'web', clientPorts: '50000-50999', aid: 'a1' },
        { service: 'web', clientPorts: '51000-51999', aid: 'a2' },
      ],
      default: { refuse: true },
      cooperative: {
        name: 'client',
        timeoutMs: 2000,
        peers: [{ name: 'server', address: '198.18.0.1', port: 7070, key: KEY_HEX }],
      },
    },
    'cooperation.test.json',
  );
  // The peer listens on loopback, which a config file may not name: put it in afterwards.
  const co = parsed.cooperative!;
  const cfg: Config = {
    ...parsed,
    cooperative: { ...co, peers: [{ ...co.peers[0]!, address: ip4('127.0.0.1'), port }] },
  };
  const rules = rulesFromConfig(cfg);
  const tun = new MemoryTun({ batchSize: 8 });
  const table = new FlowTable(o.capacity ?? 64, [10_000, 3_600_000, 60_000, 10_000], 5);
  const counters = new Counters(cfg.applications.length);
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => logs.push(JSON.parse(s)) });
  /** AIDs the bind/connect library reported, by client port; `late` ones only after the SYN. */
  const reported = new Map<number, number>();
  let coop: Cooperation | null = null;
  const pipeline = new Pipeline(
    tun,
    table,
    rules,
    counters,
    {
      verifyL4Checksum: true,
      localClientAddr: cfg.tun.localClientAddress,
      localClientAid: () => -1,
      negotiate: (buf, off, len, info, svc, aid, local) =>
        coop?.hold(buf, off, len, info, svc, aid, local),
      holdUnknownLocal: true,
    },
    new Set([TUN_ADDR]),
  );
  let clock = 1000;
  coop = new Cooperation(cfg, {
    pipeline,
    table,
    rules: () => rules,
    log,
    now: () => clock++,
    localClientAid: (_addr, p) => reported.get(p) ?? -1,
  });
  await coop.start();
  const c = coop;
  cleanup.push(() => c.close());
  tun.start((n) => pipeline.processBatch(n, clock));
  /** Wait until no SYN is held any more; return what was written meanwhile. */
  const settle = async (from: number) => {
    await waitFor(() => (c.stats().held as number) === 0);
    return tun.written.slice(from).map(hex);
  };
  return { peer, coop: c, tun, table, counters, logs, reported, settle };
}

describe('Cooperation, client side', () => {
  it('sends on the SYN it held, not what the receive buffer holds by the time the peer agrees', async () => {
    const { peer, tun, counters, settle } = await setup();
    let open = () => {};
    peer.gate = new Promise<void>((r) => {
      open = r;
    });
    const syn = seg(TUN_ADDR, 50001, VIP, 9000, SYN, 7000);
    tun.inject([syn]);
    await waitFor(() => peer.requests.length === 1);
    // Later batches reuse the receive buffer's slots while the negotiation runs.
    const n = tun.written.length;
    tun.inject([seg(ip4('198.18.9.9'), 1234, VIP, 9000, ACK, 1), seg(VIP, 1, TUN_ADDR, 2, ACK)]);
    open();
    expect(await settle(n)).toEqual([hex(seg(LOCAL_CLIENT, 50001, VIP, P2, SYN, 7000))]);
    expect(counters.synInjected).toBe(1);
    expect(counters.drops[Drop.NO_FLOW]).toBe(2);
  });
});
