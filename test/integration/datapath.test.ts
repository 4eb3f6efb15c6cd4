/*
 * The datapath end to end: the real daemon (`vpm up`), a real TUN, real kernel TCP,
 * real servers and clients, in network namespaces.
 *
 *                                    ns host
 *   ┌─────────────────────────────────────────────────────────────────────────┐
 *   │ vpm up ─ vpm0 (TUN) 198.19.255.1/32                                     │
 *   │   198.19.0.9/32 (VIP), 198.19.255.2/32 (local clients) → dev vpm0       │
 *   │   rules: from 198.19.255.1 tcp, from 198.19.255.1 icmp (iif lo) → table 100 │
 *   │ instances on 198.19.255.1: 19001 tenant-a, 19002 tenant-b,              │
 *   │   19003 host-local, 19080 python3 -m http.server; 19004 ghost: nobody   │
 *   │ local client (FIG. 8)                                                   │
 *   │ ha 198.18.1.1/24                                       hb 198.18.2.1/24 │
 *   └──┬───────────────────────────────────────────────────────────────┬──────┘
 *      │ veth                                                          │ veth
 *   ┌──┴───────────────────────────────┐            ┌──────────────────┴──────┐
 *   │ a0 198.18.1.2/24                 │            │ b0 198.18.2.2/24        │
 *   │    198.18.1.3/24   (→ ghost)     │            │ default via 198.18.2.1  │
 *   │    198.18.1.200/24 (no selector) │            │ clients: node, curl     │
 *   │ default via 198.18.1.1           │            └─────────────────────────┘
 *   │ clients: node, python3 raw       │                     ns tenant-b
 *   └──────────────────────────────────┘
 *              ns tenant-a
 *
 * Virtual services: web = 198.19.0.9:9000, files = 198.19.0.9:8080. Selectors, first
 * match wins: files → files; 198.18.1.3/32 → ghost; 198.18.1.0/25 → tenant-a;
 * 198.18.2.0/24 → tenant-b; 198.19.255.1/32 (local clients) → host-local; otherwise
 * refuse (so 198.18.1.200 matches nothing).
 *
 * The tests run in order on one daemon and share its counters: each one takes its
 * own before/after snapshot and asserts on the difference. The malformed-packet test
 * runs early (after one clean transfer, before the 1,000 connections), so that no
 * late packet of an earlier flow can land in its exact counter deltas.
 */

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ipHeaderOffset, readPcapFile } from '../../src/pcap/reader.js';
import { ipv6ToString } from '../../src/wire/address.js';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  type VpmConfigFile,
  VpmDaemon,
  type VpmStats,
  waitJsonEvent,
  withTimeout,
} from '../support/vpm.js';
import {
  clientResult,
  injectMalformed,
  type Plan,
  plan,
  runClient,
  spawnClient,
  startInstance,
  type Topology,
  twoTenants,
  VPORT,
} from './topology.js';

const FILES_PORT = 8080;
const MiB = 1 << 20;
/** Bytes each way per tenant in the bulk test. */
const BULK = 16 * MiB;
/** Connections in the concurrency test, split between the tenants. */
const MANY = 1000;
/** Packets per malformed class (8 classes). */
const INJECT_EACH = 5;

/** The suite's configuration for the addresses of one family (`P`). */
function config(P: Plan, ghost: string): VpmConfigFile {
  const net = (addr: string, v4: number) => `${addr}/${P.family === 6 ? v4 + 96 : v4}`;
  return {
    services: [
      { name: 'web', address: P.VIP, port: VPORT },
      { name: 'files', address: P.VIP, port: FILES_PORT },
    ],
    applications: [
      { aid: 'tenant-a', instances: [{ port: 19001 }] },
      { aid: 'tenant-b', instances: [{ port: 19002 }] },
      { aid: 'host-local', instances: [{ port: 19003 }] },
      { aid: 'ghost', instances: [{ port: 19004 }] },
      { aid: 'files', instances: [{ port: 19080 }] },
    ],
    selectors: [
      { service: 'files', aid: 'files' },
      { service: 'web', clients: [net(ghost, 32)], aid: 'ghost' },
      // tenant-a's link, its first half (the unmatched client is in the second half)
      { service: 'web', clients: [net(P.onLinkA(0), 25)], aid: 'tenant-a' },
      {
        service: 'web',
        clients: [P.family === 6 ? '2001:2:0:2::/64' : '198.18.2.0/24'],
        aid: 'tenant-b',
      },
      { service: 'web', clients: [net(P.TUN_ADDR, 32)], aid: 'host-local' },
    ],
    default: { refuse: true },
    // Orphan fragments are dropped by the daemon's 1 s timer once they have waited this long.
    timeouts: { fragmentMs: 1000 },
  };
}

/** `after - before` for every drop reason that changed. */
function dropDelta(before: VpmStats, after: VpmStats): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after.drops)) {
    const d = v - (before.drops[k] ?? 0);
    if (d !== 0) out[k] = d;
  }
  return out;
}

function expectBalanced(s: VpmStats): void {
  expect(s.packetsIn).toBe(s.packetsOut + s.dropsTotal + s.fragmentsHeld);
  expect(s.dropsTotal).toBe(Object.values(s.drops).reduce((a, b) => a + b, 0));
}

// The whole suite runs three times: over IPv4 with the default offloads (virtio-net
// headers, super-packets) and with tun.offloads "off" (plain packets, as before
// offloads), and over IPv6 with the default offloads.
describe.each([
  ['auto', 4],
  ['off', 4],
  ['auto', 6],
] as const)(
  'datapath (tun.offloads %s, IPv%d): two tenants, one virtual port, through the real daemon',
  (offloads, family) => {
    const P = plan(family);
    const { VIP, TUN_ADDR, LOCAL_CLIENT_ADDR, CLIENT_A, CLIENT_B } = P;
    const ep = P.ep;
    const GHOST_CLIENT = P.onLinkA(3);
    const UNMATCHED_CLIENT = P.onLinkA(200);
    const CONFIG = config(P, GHOST_CLIENT);
    let lab: NetLab;
    let topo: Topology;
    let vpm: VpmDaemon;
    let filesDir: string;

    beforeAll(async () => {
      requireRoot();
      requireCommands('ip', 'python3', 'tcpdump', 'curl', 'sysctl');
      lab = new NetLab('datapath');
      topo = twoTenants(lab, {
        family,
        extraA: [`${GHOST_CLIENT}/${P.linkPrefix}`, `${UNMATCHED_CLIENT}/${P.linkPrefix}`],
      });
      vpm = await VpmDaemon.start(lab, topo.host, { ...CONFIG, tun: { offloads } });
      await Promise.all([
        startInstance(lab, topo.host, 'tenant-a', 19001, TUN_ADDR),
        startInstance(lab, topo.host, 'tenant-b', 19002, TUN_ADDR),
        startInstance(lab, topo.host, 'host-local', 19003, TUN_ADDR),
      ]);
      filesDir = lab.tempDir();
    });

    afterAll(async () => {
      // Stop the daemon first with SIGTERM (so it undoes its host changes), then the rest.
      if (vpm?.alive) await vpm.stop().catch(() => undefined);
      await lab?.cleanup();
    });

    it('sends each client network to its own instance: 16 MiB each way byte-identical, real client address, client sees only VIP:9000', async () => {
      // Capture the tenants' side of the wire: nothing there may show an instance port.
      const caps = [topo.tenantA, topo.tenantB].map((ns, i) => {
        const file = join(lab.tempDir(), `tenant-${i}.pcap`);
        const dev = i === 0 ? 'a0' : 'b0';
        const child = lab.spawn(ns, 'tcpdump', [
          '-i',
          dev,
          '--immediate-mode', // nothing left in a ring block when it is stopped
          '-nn',
          '-U',
          '-s',
          '128',
          '-w',
          file,
          'tcp',
        ]);
        return { file, child };
      });
      for (const c of caps)
        await lab.waitForOutput(c.child, /listening on/, { stream: 'stderr', timeoutMs: 10_000 });

      const t0 = performance.now();
      const [a, b] = await Promise.all([
        runClient(lab, topo.tenantA, {
          mode: 'xfer',
          host: VIP,
          localAddress: CLIENT_A,
          up: BULK,
          down: BULK,
        }),
        runClient(lab, topo.tenantB, { mode: 'xfer', host: VIP, up: BULK, down: BULK }),
      ]);
      const seconds = (performance.now() - t0) / 1000;
      for (const c of caps) await lab.stop(c.child, 'SIGTERM', 5000);

      for (const [r, instance, addr] of [
        [a, 'tenant-a', CLIENT_A],
        [b, 'tenant-b', CLIENT_B],
      ] as const) {
        expect(r.event, r.output).toBe('done');
        const hello = r.hello as Record<string, unknown>;
        const trailer = r.trailer as Record<string, unknown>;
        // The right instance, and it saw the client's own address.
        expect(hello.instance).toBe(instance);
        expect(hello.remoteAddress).toBe(addr);
        expect(hello.remotePort).toBe(r.localPort);
        expect(hello.localPort).toBe(instance === 'tenant-a' ? 19001 : 19002);
        // The client only ever talks to the virtual service.
        expect(r.remoteAddress).toBe(VIP);
        expect(r.remotePort).toBe(VPORT);
        // Byte-identical both ways: each end hashed what it sent and what it received.
        expect(trailer.recvBytes).toBe(BULK);
        expect(trailer.recvSha).toBe(r.sentSha);
        expect(r.recvBytes).toBe(BULK);
        expect(r.recvSha).toBe(trailer.sentSha);
      }
      const mbps = (4 * BULK * 8) / seconds / 1e6;
      console.log(
        `bulk: 2 tenants x ${BULK / MiB} MiB each way in ${seconds.toFixed(2)} s (${mbps.toFixed(0)} Mbit/s aggregate)`,
      );

      // On the tenants' wire: only client ⇄ VIP:9000, never the TUN address or an instance port.
      for (const [i, cap] of caps.entries()) {
        const client = i === 0 ? a : b;
        const reader = readPcapFile(cap.file);
        const seen = new Set<string>();
        let tcp = 0;
        for (const rec of reader) {
          const d = rec.data;
          const ip = ipHeaderOffset(reader.header.linkType, d);
          if (ip < 0) continue;
          const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
          let src: string;
          let dst: string;
          if (family === 4) {
            if (d[ip]! >> 4 !== 4 || d[ip + 9] !== 6) continue;
            const l4 = ip + (d[ip]! & 0x0f) * 4;
            src = ep(d.subarray(ip + 12, ip + 16).join('.'), dv.getUint16(l4));
            dst = ep(d.subarray(ip + 16, ip + 20).join('.'), dv.getUint16(l4 + 2));
          } else {
            // TCP right after the fixed header: the kernel adds no extension header here.
            if (d[ip]! >> 4 !== 6 || d[ip + 6] !== 6) continue;
            const l4 = ip + 40;
            src = ep(ipv6ToString(d, ip + 8), dv.getUint16(l4));
            dst = ep(ipv6ToString(d, ip + 24), dv.getUint16(l4 + 2));
          }
          seen.add(src < dst ? `${src} ${dst}` : `${dst} ${src}`);
          tcp++;
        }
        expect(tcp).toBeGreaterThan(100);
        const ends = [
          ep(client.localAddress as string, client.localPort as number),
          ep(VIP, VPORT),
        ].sort();
        expect([...seen]).toEqual([ends.join(' ')]);
      }

      // The daemon's view of the same two flows.
      const flows = await vpm.flows();
      for (const [r, aid, port] of [
        [a, 'tenant-a', 19001],
        [b, 'tenant-b', 19002],
      ] as const) {
        const f = flows.find(
          (x) => x.client === ep(r.localAddress as string, r.localPort as number),
        );
        expect(f, JSON.stringify(flows)).toBeDefined();
        expect(f!.aid).toBe(aid);
        expect(f!.service).toBe(ep(VIP, VPORT));
        expect(f!.real).toBe(ep(TUN_ADDR, port));
        expect(f!.nat).toBeNull();
        expect(f!.bytesIn).toBeGreaterThan(BULK);
        expect(f!.bytesOut).toBeGreaterThan(BULK);
      }
      const s = await vpm.stats();
      expect(s.perAid['tenant-a']!.bytesIn).toBeGreaterThan(BULK);
      expect(s.perAid['tenant-b']!.bytesOut).toBeGreaterThan(BULK);
      expectBalanced(s);
    });

    it('survives malformed packets injected during a transfer, and counts each by its reason', async () => {
      const before = await vpm.stats();
      const xfer = spawnClient(lab, topo.tenantA, {
        mode: 'xfer',
        host: VIP,
        localAddress: CLIENT_A,
        up: 8 * MiB,
        down: 8 * MiB,
        paceMs: 1500,
      });
      await waitJsonEvent(lab, xfer, 'connected', 10_000);
      const sent = await injectMalformed(lab, topo.tenantA, CLIENT_A, INJECT_EACH, VIP);
      const injectedWhileRunning = xfer.exitCode === null;
      const r = await clientResult(lab, xfer);
      expect(r.event, r.output).toBe('done');
      expect(injectedWhileRunning).toBe(true);
      expect(r.recvSha).toBe((r.trailer as Record<string, unknown>).sentSha);
      expect((r.trailer as Record<string, unknown>).recvSha).toBe(r.sentSha);
      expect(vpm.alive).toBe(true);

      for (const v of Object.values(sent)) expect(v).toBe(INJECT_EACH);
      // The kernel may still be forwarding the last of them: wait until all are counted.
      const expected = {
        bad_l4_checksum: sent.bad_l4_checksum!,
        bad_data_offset: sent.doff_low! + sent.doff_high!,
        l4_truncated: sent.l4_truncated!,
        fragment_too_short: sent.frag_tiny!,
        no_flow: sent.frag_no_flow!,
        fragment_no_flow: sent.frag_no_flow!,
        // Waits for its first fragment, timeouts.fragmentMs (1 s here), then goes.
        fragment_expired: sent.frag_orphan!,
        unsupported_protocol: sent.proto_gre!,
        refused_no_service: sent.udp!,
        icmp_bad_checksum: sent.icmp_bad_sum!,
        icmp_no_flow: sent.icmp_no_flow!,
        ...(family === 6
          ? {
              bad_udp6_zero_checksum: sent.udp_zero_sum!,
              ipv6_ext_headers_too_long: sent.ext_chain_long!,
              ipv6_bad_ext_header: sent.ext_truncated!,
            }
          : {}),
      };
      const total = Object.values(expected).reduce((a, b) => a + b, 0);
      let after = before;
      await waitFor(
        async () => {
          after = await vpm.stats();
          return after.dropsTotal - before.dropsTotal >= total;
        },
        { what: 'the injected packets to be counted', timeoutMs: 5000 },
      );
      expect(dropDelta(before, after)).toEqual(expected);
      expectBalanced(after);
      console.log(
        `malformed: drops ${JSON.stringify(dropDelta(before, after))}; packetsIn ${after.packetsIn} = out ${after.packetsOut} + drops ${after.dropsTotal}`,
      );
    });

    it('serves a local client on the vpm host (FIG. 8): the instance sees the local-client address', async () => {
      const r = await runClient(lab, topo.host, { mode: 'xfer', host: VIP, up: MiB, down: MiB });
      expect(r.event, r.output).toBe('done');
      const hello = r.hello as Record<string, unknown>;
      expect(hello.instance).toBe('host-local');
      expect(hello.remoteAddress).toBe(LOCAL_CLIENT_ADDR);
      expect(hello.remotePort).toBe(r.localPort);
      expect(r.localAddress).toBe(TUN_ADDR);
      expect(r.remoteAddress).toBe(VIP);
      expect(r.remotePort).toBe(VPORT);
      expect(r.recvSha).toBe((r.trailer as Record<string, unknown>).sentSha);
      expect((r.trailer as Record<string, unknown>).recvSha).toBe(r.sentSha);
      const f = (await vpm.flows()).find((x) => x.client === ep(TUN_ADDR, r.localPort as number));
      expect(f?.aid).toBe('host-local');
      expect(f?.nat).toBe(ep(LOCAL_CLIENT_ADDR, r.localPort as number));
    });

    it('serves curl from python3 -m http.server on a second virtual port', async () => {
      const blob = randomBytes(2 * MiB + 1);
      writeFileSync(join(filesDir, 'blob.bin'), blob);
      const http = lab.spawn(topo.host, 'python3', [
        '-u',
        '-m',
        'http.server',
        '19080',
        '--bind',
        TUN_ADDR,
        '--directory',
        filesDir,
      ]);
      await lab.waitForOutput(http, /Serving HTTP/, { timeoutMs: 10_000 });
      const out = join(lab.tempDir(), 'blob.out');
      const w = lab.run(topo.tenantB, 'curl', [
        '-sS',
        '-g', // no globbing: the brackets of an IPv6 URL are the address's
        '--max-time',
        '10',
        '-o',
        out,
        '-w',
        '%{http_code} %{remote_ip} %{remote_port} %{size_download}',
        `http://${P.url(VIP)}:${FILES_PORT}/blob.bin`,
      ]);
      expect(w).toBe(`200 ${VIP} ${FILES_PORT} ${blob.length}`);
      const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
      expect(sha(readFileSync(out))).toBe(sha(blob));
      // The server's access log names the real client.
      await lab.waitForOutput(http, /"GET \/blob\.bin HTTP\/1\.1" 200/, { timeoutMs: 5000 });
      expect(lab.output(http).stderr).toMatch(
        new RegExp(`^${CLIENT_B.replace(/\./g, '\\.')} - - `, 'm'),
      );
      await lab.stop(http);
    });

    it('refuses promptly when the instance does not listen: the kernel RST travels back as VIP:9000', async () => {
      const before = await vpm.stats();
      const r = await runClient(lab, topo.tenantA, {
        mode: 'hello',
        host: VIP,
        localAddress: GHOST_CLIENT,
      });
      expect(r.event, r.output).toBe('error');
      expect(r.code).toBe('ECONNREFUSED');
      expect(r.ms as number).toBeLessThan(2000);
      const after = await vpm.stats();
      // vpm did not refuse it: it forwarded the SYN and the instance host's RST.
      expect(dropDelta(before, after)).toEqual({});
      expect(after.rstSent).toBe(before.rstSent);
      const f = (await vpm.flows()).find((x) =>
        x.client.startsWith(ep(GHOST_CLIENT, 0).slice(0, -1)),
      );
      expect(f?.aid).toBe('ghost');
      expect(f?.real).toBe(ep(TUN_ADDR, 19004));
      expect(f?.state).toBe('reset');
    });

    it('refuses promptly with its own RST when no selector matches and the default refuses', async () => {
      const before = (await vpm.cliJson('stats')) as VpmStats;
      const r = await runClient(lab, topo.tenantA, {
        mode: 'hello',
        host: VIP,
        localAddress: UNMATCHED_CLIENT,
      });
      expect(r.event, r.output).toBe('error');
      expect(r.code).toBe('ECONNREFUSED');
      expect(r.ms as number).toBeLessThan(2000);
      // Through the real CLI: `vpm stats --json -s SOCK`.
      const after = (await vpm.cliJson('stats')) as VpmStats;
      expect(dropDelta(before, after)).toEqual({ refused_no_selector: 1 });
      expect(after.rstSent - before.rstSent).toBe(1);
      expect(after.flowsRefused - before.flowsRefused).toBe(1);
      expect(after.flowsCreated).toBe(before.flowsCreated);
      const prefix = ep(UNMATCHED_CLIENT, 0).slice(0, -1); // "a.b.c.d:" or "[v6]:"
      const log = vpm
        .logs()
        .find((l) => l.event === 'flow_refused' && String(l.client).startsWith(prefix));
      expect(log?.reason).toBe('refused_no_selector');
      expect(String(log?.client).startsWith(prefix)).toBe(true);
      expect(log?.service).toBe(ep(VIP, VPORT));
    });

    it(`answers ${MANY} concurrent connections from both tenants, each by the right instance`, async () => {
      const before = await vpm.stats();
      const half = MANY / 2;
      const t0 = performance.now();
      const [a, b] = await withTimeout(
        Promise.all([
          runClient(
            lab,
            topo.tenantA,
            { mode: 'many', host: VIP, localAddress: CLIENT_A, count: half },
            40_000,
          ),
          runClient(lab, topo.tenantB, { mode: 'many', host: VIP, count: half }, 40_000),
        ]),
        45_000,
        `${MANY} connections`,
      );
      const ms = Math.round(performance.now() - t0);
      for (const [r, instance, addr] of [
        [a, 'tenant-a', CLIENT_A],
        [b, 'tenant-b', CLIENT_B],
      ] as const) {
        expect(r.event, r.output).toBe('done');
        expect(r.errors).toEqual({});
        expect(r.badEcho).toBe(0);
        expect(r.answered).toBe(half);
        expect(r.instances).toEqual({ [instance]: half });
        expect(r.serverSaw).toEqual({ [addr]: half });
        expect(r.clientSaw).toEqual({ [`${VIP}:${VPORT}`]: half });
      }
      const after = await vpm.stats();
      expect(after.flowsCreated - before.flowsCreated).toBe(MANY);
      expect(dropDelta(before, after)).toEqual({});
      expectBalanced(after);
      console.log(
        `many: ${MANY} connections opened, echoed and closed in ${ms} ms (tenant-a ${a.ms} ms, tenant-b ${b.ms} ms); flows active ${after.flowsActive}`,
      );
    });

    it('keeps its books balanced at the end: packetsIn = packetsOut + drops', async () => {
      const s = await vpm.stats();
      expectBalanced(s);
      expect(vpm.alive).toBe(true);
      console.log(
        `totals: packetsIn ${s.packetsIn}, packetsOut ${s.packetsOut}, dropsTotal ${s.dropsTotal}, flowsCreated ${s.flowsCreated}, rstSent ${s.rstSent}, drops ${JSON.stringify(
          Object.fromEntries(Object.entries(s.drops).filter(([, v]) => v > 0)),
        )}`,
      );
    });
  },
);
