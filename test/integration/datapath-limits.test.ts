/*
 * A full translation table, through the real daemon: new connections are refused
 * at once (vpm's own RST), the ones in the table carry on untouched, and the slots
 * come back when they end.
 *
 *     ns tenant-a                            ns host                            ns tenant-b
 * ┌──────────────────┐        ┌────────────────────────────────────┐        ┌──────────────────┐
 * │ a0 198.18.1.2/24 │══veth══│ ha 198.18.1.1/24  hb 198.18.2.1/24 │══veth══│ b0 198.18.2.2/24 │
 * │ 2 transfers,     │        │ vpm up, limits.maxFlows 4          │        │ 2 transfers,     │
 * │ 1 refused        │        │ instances on 198.19.255.1:         │        │ 1 refused        │
 * └──────────────────┘        │   19001 tenant-a, 19002 tenant-b   │        └──────────────────┘
 *                             └────────────────────────────────────┘
 */

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import { type VpmConfigFile, VpmDaemon, waitJsonEvent } from '../support/vpm.js';
import {
  CLIENT_A,
  CLIENT_B,
  clientResult,
  runClient,
  spawnClient,
  startInstance,
  type Topology,
  twoTenants,
  VIP,
  VPORT,
} from './topology.js';

const MiB = 1 << 20;
const MAX_FLOWS = 4;

const CONFIG: VpmConfigFile = {
  services: [{ name: 'web', address: VIP, port: VPORT }],
  applications: [
    { aid: 'tenant-a', instances: [{ port: 19001 }] },
    { aid: 'tenant-b', instances: [{ port: 19002 }] },
  ],
  selectors: [
    { clients: ['198.18.1.0/24'], aid: 'tenant-a' },
    { clients: ['198.18.2.0/24'], aid: 'tenant-b' },
  ],
  default: { refuse: true },
  // The whole table may hold handshakes: the four transfers connect at once, and with the
  // default share (a quarter: 1) each SYN would evict the one before it (flood.test.ts
  // tests the share).
  limits: { maxFlows: MAX_FLOWS, embryonicFlows: MAX_FLOWS },
  // Closed flows give their slot back soon (the expiry tick is 1 s).
  timeouts: { timeWaitMs: 500 },
};

describe('datapath: translation table full', () => {
  let lab: NetLab;
  let topo: Topology;
  let vpm: VpmDaemon;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'sysctl');
    lab = new NetLab('dplimits');
    topo = twoTenants(lab);
    vpm = await VpmDaemon.start(lab, topo.host, CONFIG);
    await Promise.all([
      startInstance(lab, topo.host, 'tenant-a', 19001),
      startInstance(lab, topo.host, 'tenant-b', 19002),
    ]);
  });

  afterAll(async () => {
    if (vpm?.alive) await vpm.stop().catch(() => undefined);
    await lab?.cleanup();
  });

  it(`refuses new connections beyond limits.maxFlows=${MAX_FLOWS} promptly, while the existing transfers complete byte-identical`, async () => {
    const before = await vpm.stats();
    expect(before.flowsCapacity).toBe(MAX_FLOWS);
    // Fill the table with transfers slow enough to outlast the refusals.
    const xfers: ChildProcess[] = [];
    for (const [ns, localAddress] of [
      [topo.tenantA, CLIENT_A],
      [topo.tenantA, CLIENT_A],
      [topo.tenantB, CLIENT_B],
      [topo.tenantB, CLIENT_B],
    ] as const) {
      xfers.push(
        spawnClient(lab, ns, {
          mode: 'xfer',
          localAddress,
          up: 4 * MiB,
          down: 4 * MiB,
          paceMs: 4000,
        }),
      );
    }
    await Promise.all(xfers.map((x) => waitJsonEvent(lab, x, 'connected', 10_000)));
    expect((await vpm.stats()).flowsActive).toBe(MAX_FLOWS);

    const refused = await Promise.all([
      runClient(lab, topo.tenantA, { mode: 'hello', localAddress: CLIENT_A }),
      runClient(lab, topo.tenantB, { mode: 'hello' }),
    ]);
    for (const r of refused) {
      expect(r.event, r.output).toBe('error');
      expect(r.code).toBe('ECONNREFUSED');
      expect(r.ms as number).toBeLessThan(2000);
    }
    // The table's flows were still transferring when the new ones were refused.
    expect(xfers.every((x) => x.exitCode === null)).toBe(true);

    const results = await Promise.all(xfers.map((x) => clientResult(lab, x, 30_000)));
    for (const r of results) {
      expect(r.event, r.output).toBe('done');
      const trailer = r.trailer as Record<string, unknown>;
      expect(trailer.recvBytes).toBe(4 * MiB);
      expect(trailer.recvSha).toBe(r.sentSha);
      expect(r.recvBytes).toBe(4 * MiB);
      expect(r.recvSha).toBe(trailer.sentSha);
      expect(r.remoteAddress).toBe(VIP);
      expect(r.remotePort).toBe(VPORT);
    }
    const after = await vpm.stats();
    const drops = Object.fromEntries(
      Object.entries(after.drops).filter(([k, v]) => v !== before.drops[k]),
    );
    expect(drops).toEqual({ refused_table_full: 2 });
    expect(after.rstSent - before.rstSent).toBe(2);
    expect(after.flowsCreated - before.flowsCreated).toBe(MAX_FLOWS);
    expect(after.packetsIn).toBe(after.packetsOut + after.dropsTotal + after.fragmentsHeld);
    const refusals = vpm.logs().filter((l) => l.event === 'flow_refused');
    expect(refusals.map((l) => l.reason)).toEqual(['refused_table_full', 'refused_table_full']);
  });

  it('gives the slots back when the flows end: a new connection then succeeds', async () => {
    await waitFor(async () => (await vpm.stats()).flowsActive === 0, {
      what: 'the closed flows to expire',
      timeoutMs: 5000,
      intervalMs: 200,
    });
    const r = await runClient(lab, topo.tenantB, { mode: 'hello' });
    expect(r.event, r.output).toBe('done');
    expect((r.hello as Record<string, unknown>).instance).toBe('tenant-b');
    expect((await vpm.stats()).flowsExpired).toBeGreaterThanOrEqual(MAX_FLOWS);
  });
});
