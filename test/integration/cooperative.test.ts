/**
 * Cooperative multiplexing (FIG. 6/7): a vpm on the client host and a vpm on the
 * server host negotiate a port p2 for each connection; the wire between them
 * carries p2 in both directions; each application sees only the virtual port.
 *
 *   ns client                          ns router                        ns server
 * ┌──────────────────────────┐      ┌──────────────────┐      ┌───────────────────────────────┐
 * │ c0 198.18.10.2/24        │═veth═│ r0 198.18.10.1   │      │ s0 198.18.20.2/24             │
 * │ vpm (client side)        │      │ r1 198.18.20.1   │═veth═│ vpm (server side), listens    │
 * │  TUN 198.19.254.1        │      │ tcpdump on r1    │      │  198.18.20.2:7070 for peers   │
 * │  local clients → .254.2  │      │ VIP → server     │      │  TUN 198.19.255.1, instances  │
 * │ client apps, AIDs by     │      │ .254.0/24 → cli. │      │  a1 :19001, a2 :19002         │
 * │  source port selectors   │      └──────────────────┘      └───────────────────────────────┘
 * └──────────────────────────┘
 *
 * The virtual service web = 198.19.0.9:9000 is routed to the server host by the
 * router, and to its own TUN by each vpm.
 */

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/control/client.js';
import { NetLab, requireRoot, waitFor } from '../support/netns.js';
import {
  jsonLines,
  type VpmConfigFile,
  VpmDaemon,
  vpmArgv,
  writeVpmConfig,
} from '../support/vpm.js';
import { CLIENT_FIXTURE, clientResult, runClient, spawnClient, startInstance } from './topology.js';

const FORGE = fileURLToPath(new URL('./fixtures/forge.mjs', import.meta.url));

const VIP = '198.19.0.9';
const KEY = 'a1b2c3d4'.repeat(8);
const lab = new NetLab('coop');
let client: string;
let router: string;
let server: string;
let vpmC: VpmDaemon;
let vpmS: VpmDaemon;

const clientCfg: VpmConfigFile = {
  tun: { name: 'vpm0', address: '198.19.254.1', localClientAddress: '198.19.254.2' },
  services: [{ name: 'web', address: VIP, port: 9000, peer: 'server' }],
  applications: [{ aid: 'a1' }, { aid: 'a2' }, { aid: 'a3' }],
  selectors: [
    { clientPorts: '50000-50999', aid: 'a1' },
    { clientPorts: '51000-51999', aid: 'a2' },
    { clientPorts: '52000-52999', aid: 'a3' },
  ],
  default: { refuse: true },
  cooperative: {
    name: 'client',
    timeoutMs: 3000,
    peers: [{ name: 'server', address: '198.18.20.2', port: 7070, key: KEY }],
  },
};

const serverCfg: VpmConfigFile = {
  tun: { name: 'vpm0', address: '198.19.255.1', localClientAddress: '198.19.255.2' },
  services: [{ name: 'web', address: VIP, port: 9000 }],
  applications: [
    { aid: 'a1', instances: [{ port: 19001 }] },
    { aid: 'a2', instances: [{ port: 19002 }] },
  ],
  default: { refuse: true },
  cooperative: {
    name: 'server',
    listen: '198.18.20.2:7070',
    portRange: '40000-40999',
    peers: [{ name: 'client', key: KEY }],
  },
};

beforeAll(async () => {
  requireRoot();
  client = lab.namespace('client', { ipv6: false });
  router = lab.namespace('router', { ipv6: false });
  server = lab.namespace('server', { ipv6: false });
  lab.veth(
    { ns: client, dev: 'c0', cidr: '198.18.10.2/24' },
    { ns: router, dev: 'r0', cidr: '198.18.10.1/24' },
  );
  lab.veth(
    { ns: router, dev: 'r1', cidr: '198.18.20.1/24' },
    { ns: server, dev: 's0', cidr: '198.18.20.2/24' },
  );
  lab.run(client, 'ip', ['route', 'add', 'default', 'via', '198.18.10.1']);
  lab.run(server, 'ip', ['route', 'add', 'default', 'via', '198.18.20.1']);
  lab.run(router, 'ip', ['route', 'add', `${VIP}/32`, 'via', '198.18.20.2']);
  lab.run(router, 'ip', ['route', 'add', '198.19.254.0/24', 'via', '198.18.10.2']);
  lab.run(router, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  vpmS = await VpmDaemon.start(lab, server, serverCfg);
  vpmC = await VpmDaemon.start(lab, client, clientCfg);
  await startInstance(lab, server, 'a1', 19001, '198.19.255.1');
  await startInstance(lab, server, 'a2', 19002, '198.19.255.1');
}, 90_000);

afterAll(async () => {
  await vpmC?.stop().catch(() => {});
  await vpmS?.stop().catch(() => {});
  await lab.cleanup();
});

/** The server daemon's negotiation-channel counters. */
async function serverChannel(): Promise<{ refused: Record<string, number> }> {
  const s = (await vpmS.stats()) as unknown as {
    cooperative: { server: { refused: Record<string, number> } };
  };
  return s.cooperative.server;
}

/** Ports seen on the wire between the client host's local-client address and the VIP. */
function wirePorts(pcap: string): { toVip: Set<number>; fromVip: Set<number> } {
  const text = lab.run(router, 'tcpdump', ['-nn', '-r', pcap, 'tcp']);
  const toVip = new Set<number>();
  const fromVip = new Set<number>();
  for (const line of text.split('\n')) {
    let m = /198\.19\.254\.2\.\d+ > 198\.19\.0\.9\.(\d+):/.exec(line);
    if (m) toVip.add(Number(m[1]));
    m = /198\.19\.0\.9\.(\d+) > 198\.19\.254\.2\.\d+:/.exec(line);
    if (m) fromVip.add(Number(m[1]));
  }
  return { toVip, fromVip };
}

describe('cooperative multiplexing between two vpm daemons', () => {
  it('clients of AIDs a1 and a2 each reach their own instance; the wire carries p2 both ways; 10 MB each way intact', async () => {
    const dir = lab.tempDir();
    const pcap = `${dir}/wire.pcap`;
    const dump = lab.spawn(router, 'tcpdump', [
      '-i',
      'r1',
      '--immediate-mode',
      '-nn',
      '-U',
      '-s',
      '128',
      '-w',
      pcap,
      'host',
      VIP,
      '-Z',
      'root',
    ]);
    // tcpdump says "listening on r1" once its capture is open: not a fixed sleep,
    // which a loaded machine overruns (then the capture misses the connections).
    await lab.waitForOutput(dump, /listening on r1/, { stream: 'stderr', timeoutMs: 10_000 });
    const xfer = {
      mode: 'xfer' as const,
      host: VIP,
      port: 9000,
      up: 10_000_000,
      down: 10_000_000,
      timeoutMs: 60_000,
    };
    const [r1, r2] = await Promise.all([
      clientResult(lab, spawnClient(lab, client, { ...xfer, localPort: 50001 }), 90_000),
      clientResult(lab, spawnClient(lab, client, { ...xfer, localPort: 51001 }), 90_000),
    ]);
    // tcpdump may not have read everything yet (libpcap hands packets over in
    // blocks, and a loaded machine starves it); on SIGINT it drops what it has not
    // read ("N packets received by filter", fewer "captured"). So wait until the
    // capture holds the connections before stopping it.
    await waitFor(
      () => {
        const w = wirePorts(pcap);
        return w.toVip.size >= 2 && w.fromVip.size >= 2;
      },
      { what: 'the capture on r1 to hold both connections both ways', timeoutMs: 15_000 },
    ).catch(() => {}); // the assertions below say what is missing
    await lab.stop(dump, 'SIGINT', 3000);
    for (const [r, aid] of [
      [r1, 'a1'],
      [r2, 'a2'],
    ] as const) {
      expect(r.event, r.output).toBe('done');
      const t = r as Record<string, unknown>;
      // The instance of the client's own AID answered, and saw the client host's
      // local-client address on its own real port.
      expect(t.hello, r.output).toMatchObject({
        instance: aid,
        remoteAddress: '198.19.254.2',
        localAddress: '198.19.255.1',
      });
      // Both directions byte-identical: the client's hashes equal the instance's.
      expect(t.sentSha, r.output).toBeTruthy();
      expect(t.sentSha).toBe((t.trailer as Record<string, unknown>)?.recvSha);
      expect(t.recvSha).toBe((t.trailer as Record<string, unknown>)?.sentSha);
      // The application sees only the virtual port.
      expect(t).toMatchObject({ remoteAddress: VIP, remotePort: 9000 });
    }
    const { toVip, fromVip } = wirePorts(pcap);
    expect([...toVip].length, `ports to VIP: ${[...toVip]}`).toBe(2);
    for (const p of [...toVip, ...fromVip]) {
      expect(p).toBeGreaterThanOrEqual(40000);
      expect(p).toBeLessThanOrEqual(40999);
    }
    expect([...fromVip].sort()).toEqual([...toVip].sort());
    expect(toVip.has(9000)).toBe(false);
    const logsS = vpmS.logs().filter((l) => l.event === 'flow_negotiated');
    expect(logsS.map((l) => l.aid).sort()).toEqual(['a1', 'a2']);
  }, 120_000);

  it('a client whose AID matches nothing on the server is reset quickly, logged on both sides, and leaves no flow', async () => {
    const t0 = Date.now();
    const r = await runClient(lab, client, {
      mode: 'hello',
      host: VIP,
      port: 9000,
      localPort: 52001,
    });
    expect(r.event, r.output).toBe('error');
    expect(r.code).toBe('ECONNREFUSED');
    expect(Date.now() - t0).toBeLessThan(3000);
    const c = vpmC.logs().find((l) => l.event === 'flow_refused' && l.reason === 'aid_mismatch');
    expect(c).toMatchObject({ clientAid: 'a3', serverAids: ['a1', 'a2'], peer: 'server' });
    await new Promise((r) => setTimeout(r, 200));
    const s = vpmS.logs().find((l) => l.event === 'negotiation_refused' && l.clientAid === 'a3');
    expect(s).toMatchObject({ serverAids: ['a1', 'a2'], peer: 'client' });
    for (const d of [vpmC, vpmS]) {
      const flows = await d.flows();
      expect(flows.filter((f) => String(f.client).endsWith(':52001'))).toEqual([]);
    }
  });

  it('refuses and counts a forged, a replayed and a truncated negotiation message, and keeps serving', async () => {
    const before = await serverChannel();
    const out = lab.run(router, process.execPath, [
      FORGE,
      JSON.stringify({
        host: '198.18.20.2',
        port: 7070,
        from: 'client',
        key: KEY,
        service: `${VIP}:9000`,
      }),
    ]);
    const res = jsonLines(out).find((e) => e.event === 'done')!.results as Record<
      string,
      { closedByServer: boolean; answerBytes: number }
    >;
    expect(res.valid!.answerBytes, out).toBeGreaterThan(0); // a valid request gets an offer
    for (const k of ['forged', 'replayed', 'truncated']) {
      expect(res[k], `${k}: ${out}`).toEqual({ closedByServer: true, answerBytes: 0 });
    }
    const after = await serverChannel();
    expect(after.refused.bad_mac! - before.refused.bad_mac!).toBe(1);
    expect(after.refused.replayed! - before.refused.replayed!).toBe(1);
    expect(after.refused.bad_length! - before.refused.bad_length!).toBe(1);
    // Still serving: a real client of a1 gets through.
    const r = await runClient(lab, client, {
      mode: 'hello',
      host: VIP,
      port: 9000,
      localPort: 50002,
    });
    expect(r.event, r.output).toBe('done');
  });

  it('refuses new connections within the timeout while the peer is down, and works again when it is back', async () => {
    await vpmS.stop();
    const t0 = Date.now();
    const r = await runClient(lab, client, {
      mode: 'hello',
      host: VIP,
      port: 9000,
      localPort: 50003,
    });
    expect(r.event, r.output).toBe('error');
    expect(r.code).toBe('ECONNREFUSED');
    expect(Date.now() - t0).toBeLessThan(3000 + 1500);
    expect(
      vpmC
        .logs()
        .some(
          (l) =>
            l.event === 'flow_refused' &&
            (l.reason === 'peer_unreachable' || l.reason === 'peer_timeout'),
        ),
    ).toBe(true);
    vpmS = await VpmDaemon.start(lab, server, serverCfg);
    let ok = false;
    for (let i = 0; i < 10 && !ok; i++) {
      const again = await runClient(lab, client, {
        mode: 'hello',
        host: VIP,
        port: 9000,
        localPort: 50004 + i,
      });
      ok = again.event === 'done';
      if (!ok) await new Promise((res) => setTimeout(res, 200));
    }
    expect(ok).toBe(true);
  }, 60_000);

  it("takes the client application's AID from the bind/connect library (vpm exec --aid)", async () => {
    const child = lab.spawn(client, process.execPath, [
      ...vpmArgv(),
      'exec',
      '--aid',
      'a2',
      '-s',
      vpmC.socket,
      '--',
      process.execPath,
      CLIENT_FIXTURE,
      JSON.stringify({ mode: 'hello', host: VIP, port: 9000 }),
    ]);
    const r = await clientResult(lab, child);
    expect(r.event, r.output).toBe('done');
    expect((r as Record<string, unknown>).hello).toMatchObject({ instance: 'a2' });
    // The library announced the connection (AID a2) before its SYN; no selector covers
    // this port unless by chance, and the negotiation named a2.
    const port = (r as Record<string, unknown>).localPort;
    await new Promise((res) => setTimeout(res, 100));
    const neg = vpmC
      .logs()
      .find((l) => l.event === 'flow_negotiated' && l.client === `198.19.254.1:${port}`);
    expect(neg, vpmC.output()).toMatchObject({ aid: 'a2', peer: 'server' });
  });

  it('drops a connection to VIP:p2 that no negotiation announced', async () => {
    const before = ((await vpmS.stats()) as unknown as { drops: Record<string, number> }).drops
      .not_negotiated!;
    // Straight from the router, past the client host's vpm: a SYN to a port of the p2 range.
    expect(() =>
      lab.run(router, 'curl', ['-sS', '--max-time', '1', `http://${VIP}:40500/`]),
    ).toThrow();
    const after = ((await vpmS.stats()) as unknown as { drops: Record<string, number> }).drops
      .not_negotiated!;
    expect(after - before).toBeGreaterThanOrEqual(1);
    expect((await vpmS.flows()).filter((f) => String(f.service).endsWith(':40500'))).toEqual([]);
  });

  // Last: it leaves both daemons on the new key.
  it('the channel is TLS 1.3, a capture shows no AID in clear text; during a key rollover a peer with the old key negotiates, after it not', async () => {
    const K2 = 'e5f6a7b8'.repeat(8);
    const reload = async (d: VpmDaemon, cfg: VpmConfigFile, peer: Record<string, unknown>) => {
      const co = cfg.cooperative as Record<string, unknown>;
      const old = (co.peers as Record<string, unknown>[])[0]!;
      const { key: _k, ...rest } = old;
      writeVpmConfig(d.dir, { ...cfg, cooperative: { ...co, peers: [{ ...rest, ...peer }] } });
      await controlRequest(d.socket, 'reload');
    };
    const a1 = (localPort: number) =>
      runClient(lab, client, { mode: 'hello', host: VIP, port: 9000, localPort });
    const channel = async () =>
      ((await vpmS.stats()) as unknown as { cooperative: { server: Record<string, unknown> } })
        .cooperative.server as {
        tlsHandshakeFailures: number;
        tlsProtocols: Record<string, number>;
      };
    const peerStats = async () =>
      (
        (await vpmC.stats()) as unknown as {
          cooperative: { peers: Record<string, { tls: string | null; pskIdentity: string }> };
        }
      ).cooperative.peers.server!;

    const pcap = `${lab.tempDir()}/channel.pcap`;
    const dump = lab.spawn(router, 'tcpdump', [
      ...['-i', 'r1', '--immediate-mode', '-nn', '-U', '-s', '0', '-w', pcap],
      ...['tcp', 'port', '7070'],
    ]);
    await lab.waitForOutput(dump, /listening on/, { stream: 'stderr', timeoutMs: 10_000 });

    // The connection up now: TLS 1.3, with the deprecated single key ("default").
    expect((await a1(50010)).event).toBe('done');
    expect(await peerStats()).toMatchObject({ tls: 'TLSv1.3', pskIdentity: 'client/default' });
    expect((await channel()).tlsProtocols).toEqual({ 'TLSv1.3': expect.any(Number) });

    // Rollover, step 1: the server accepts the new key and the old one.
    await reload(vpmS, serverCfg, {
      keys: [
        { id: 'new', key: K2 },
        { id: 'default', key: KEY },
      ],
    });
    expect((await a1(50011)).event).toBe('done');
    // A fresh handshake with the old key too (the forge fixture's valid request is answered).
    const forged = lab.run(router, process.execPath, [
      FORGE,
      JSON.stringify({
        host: '198.18.20.2',
        port: 7070,
        from: 'client',
        key: KEY,
        service: `${VIP}:9000`,
      }),
    ]);
    const res = jsonLines(forged).find((e) => e.event === 'done')!.results as Record<
      string,
      { answerBytes: number }
    >;
    expect(res.valid!.answerBytes, forged).toBeGreaterThan(0);

    // Step 3 (here before step 2, to show it): the server drops the old key; its
    // connection made with it is closed, and the old key no longer negotiates.
    const failedBefore = (await channel()).tlsHandshakeFailures;
    await reload(vpmS, serverCfg, { keys: [{ id: 'new', key: K2 }] });
    expect((await a1(50012)).event).not.toBe('done');
    await waitFor(async () => (await channel()).tlsHandshakeFailures > failedBefore, {
      what: 'the handshake with the old key to be refused',
    });

    // Step 2: the client offers the new key: it negotiates again.
    await reload(vpmC, clientCfg, { keys: [{ id: 'new', key: K2 }] });
    expect((await a1(50013)).event).toBe('done');
    expect(await peerStats()).toMatchObject({ tls: 'TLSv1.3', pskIdentity: 'client/new' });

    await lab.stop(dump, 'SIGINT', 5000);
    const bytes = readFileSync(pcap);
    // In clear: the PSK identities (the client's name and the key ids), never a message.
    expect(bytes.includes('client/new')).toBe(true);
    expect(bytes.includes('client/default')).toBe(true);
    for (const secret of ['"a1"', '"aid"', '"request"', '"offer"', VIP, '198.19.254.2'])
      expect(bytes.includes(secret), secret).toBe(false);
    // Every ServerHello says TLS 1.3 (supported_versions 0x0304).
    const versions = lab
      .run(router, 'tshark', [
        ...['-r', pcap, '-d', 'tcp.port==7070,tls', '-Y', 'tls.handshake.type == 2'],
        ...['-T', 'fields', '-e', 'tls.handshake.extensions.supported_version'],
      ])
      .split('\n')
      .filter((l) => l.trim() !== '');
    expect(versions.length).toBeGreaterThanOrEqual(2);
    for (const v of versions) expect(v.trim()).toBe('0x0304');
  });
});
