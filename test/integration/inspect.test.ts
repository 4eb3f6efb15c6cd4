/**
 * Inspection of a running daemon: `vpm flows --json` lists exactly the live
 * connections, `vpm stats` counters add up, the Prometheus endpoint answers with
 * the same counters and only on loopback, and the log lines have their stable
 * shape.
 *
 *   tenant-a (198.18.1.2) ──veth── host: vpm (metrics 127.0.0.1:9464), instances ──veth── tenant-b (198.18.2.2)
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot } from '../support/netns.js';
import { VpmDaemon } from '../support/vpm.js';
import {
  CLIENT_A,
  CLIENT_B,
  clientResult,
  HOST_A,
  runClient,
  spawnClient,
  startInstance,
  type Topology,
  TUN_ADDR,
  twoTenants,
  VIP,
} from './topology.js';

const lab = new NetLab('inspect');
let topo: Topology;
let vpm: VpmDaemon;

beforeAll(async () => {
  requireRoot();
  topo = twoTenants(lab);
  vpm = await VpmDaemon.start(lab, topo.host, {
    services: [{ name: 'web', address: VIP, port: 9000 }],
    applications: [
      { aid: 'tenant-a', instances: [{ port: 19001 }] },
      { aid: 'tenant-b', instances: [{ port: 19002 }] },
    ],
    selectors: [
      { clients: ['198.18.1.0/25'], aid: 'tenant-a' },
      { clients: ['198.18.2.0/24'], aid: 'tenant-b' },
    ],
    default: { refuse: true },
    metrics: { listen: '127.0.0.1:9464' },
  });
  await startInstance(lab, topo.host, 'tenant-a', 19001);
  await startInstance(lab, topo.host, 'tenant-b', 19002);
}, 60_000);

afterAll(async () => {
  await vpm?.stop().catch(() => {});
  await lab.cleanup();
});

describe('inspection', () => {
  it('vpm flows --json lists exactly the live connections, with their AIDs and ports', async () => {
    const slow = { mode: 'xfer' as const, up: 200_000, down: 1000, paceMs: 6000 };
    const clients = [
      spawnClient(lab, topo.tenantA, slow),
      spawnClient(lab, topo.tenantA, slow),
      spawnClient(lab, topo.tenantB, slow),
    ];
    // While they are all sending:
    // Poll over the control socket until all three are established, then read them
    // once through the real CLI, as a user would.
    for (let i = 0; i < 100; i++) {
      const quick = await vpm.flows();
      if (quick.filter((f) => f.state === 'established').length === 3) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const flows = (await vpm.cliJson('flows')) as Record<string, unknown>[];
    const live = flows.filter((f) => f.state === 'established');
    expect(flows.length, JSON.stringify(flows)).toBe(3);
    const summary = live
      .map(
        (f) =>
          `${String(f.client).replace(/:\d+$/, '')} ${f.service} ${f.serviceName} ${f.aid} ${f.real}`,
      )
      .sort();
    expect(summary).toEqual([
      `${CLIENT_A} ${VIP}:9000 web tenant-a ${TUN_ADDR}:19001`,
      `${CLIENT_A} ${VIP}:9000 web tenant-a ${TUN_ADDR}:19001`,
      `${CLIENT_B} ${VIP}:9000 web tenant-b ${TUN_ADDR}:19002`,
    ]);
    for (const f of live) {
      expect(f.nat).toBeNull();
      expect(Number(f.packetsIn)).toBeGreaterThan(0);
      expect(Number(f.id)).toBeGreaterThan(0);
    }
    const results = await Promise.all(clients.map((c) => clientResult(lab, c)));
    for (const r of results) expect(r.event, r.output).toBe('done');
    // The same ids, the client ports match what the clients saw.
    const ids = new Set(live.map((f) => f.id));
    expect(ids.size).toBe(3);
  });

  it('vpm stats adds up, and the metrics endpoint serves the same counters on loopback only', async () => {
    // A refused connection too: a client address no selector takes.
    lab.run(topo.tenantA, 'ip', ['addr', 'add', '198.18.1.200/24', 'dev', 'a0']);
    const refused = await runClient(lab, topo.tenantA, {
      mode: 'hello',
      localAddress: '198.18.1.200',
    });
    expect(refused.event).toBe('error');
    const s = await vpm.stats();
    expect(s.packetsIn).toBe(s.packetsOut + s.dropsTotal + s.fragmentsHeld);
    const text = lab.run(topo.host, 'curl', [
      '-sS',
      '--max-time',
      '5',
      'http://127.0.0.1:9464/metrics',
    ]);
    const metric = (name: string) => {
      const m = new RegExp(`^${name.replace(/[{}"]/g, (c) => `\\${c}`)} (\\S+)$`, 'm').exec(text);
      if (!m) throw new Error(`${name} not in /metrics:\n${text}`);
      return Number(m[1]);
    };
    const after = await vpm.stats();
    // Counters only grow: the scrape lies between the two snapshots.
    expect(metric('vpm_flows_created_total')).toBeGreaterThanOrEqual(s.flowsCreated as number);
    expect(metric('vpm_flows_created_total')).toBeLessThanOrEqual(after.flowsCreated as number);
    expect(metric('vpm_drops_total{reason="refused_no_selector"}')).toBe(1);
    expect(metric('vpm_rst_sent_total')).toBe(1);
    expect(metric('vpm_packets_total{direction="in"}')).toBeGreaterThanOrEqual(
      s.packetsIn as number,
    );
    expect(text).toMatch(/^# TYPE vpm_packets_total counter$/m);
    expect(text).toMatch(/^# TYPE vpm_flows_active gauge$/m);
    expect(text).toMatch(/^vpm_aid_bytes_total\{aid="tenant-a",direction="in"\} [1-9]\d*$/m);
    // Not on the host's other addresses: nothing listens there.
    expect(() =>
      lab.run(topo.tenantA, 'curl', ['-sS', '--max-time', '3', `http://${HOST_A}:9464/metrics`]),
    ).toThrow(/Connection refused|Failed to connect/);
  });

  it('logs the refusal with a stable shape', () => {
    const refusal = vpm.logs().find((l) => l.event === 'flow_refused');
    expect(refusal).toMatchObject({
      level: 30,
      event: 'flow_refused',
      reason: 'refused_no_selector',
      client: expect.stringMatching(/^198\.18\.1\.200:\d+$/),
      service: `${VIP}:9000`,
    });
    const ready = vpm.logs().find((l) => l.event === 'ready');
    expect(ready).toMatchObject({ metrics: '127.0.0.1:9464', tun: 'vpm0' });
  });
});
