/*
 * A SYN flood at the translation table's limit, through the real daemon: the
 * established transfers carry on byte-identical, the flood's embryonic flows stay
 * within their share (limits.embryonicFlows), the oldest giving way to the next,
 * counted, nothing is refused, and a new connection works once the flood stops.
 *
 *     ns tenant-a                            ns host                            ns tenant-b
 * ┌──────────────────┐        ┌────────────────────────────────────┐        ┌──────────────────┐
 * │ a0 198.18.1.2/24 │══veth══│ ha 198.18.1.1/24  hb 198.18.2.1/24 │══veth══│ b0 198.18.2.2/24 │
 * │ 1 transfer;      │        │ vpm up, limits.maxFlows 64,        │        │ 1 transfer,      │
 * │ raw SYNs from    │        │   limits.embryonicFlows 16         │        │ then a new       │
 * │ 198.18.1.200     │        │ instances on 198.19.255.1:         │        │ connection       │
 * │ (nobody's)       │        │   19001 tenant-a, 19002 tenant-b   │        │                  │
 * └──────────────────┘        └────────────────────────────────────┘        └──────────────────┘
 *
 * The flood comes from an address nobody holds: the instance's SYN+ACKs find no
 * neighbour for it, so no RST ever closes a flood flow (fixtures/flood.py).
 */

import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot } from '../support/netns.js';
import { jsonLines, type VpmConfigFile, VpmDaemon, waitJsonEvent } from '../support/vpm.js';
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
const MAX_FLOWS = 64;
const EMBRYONIC = 16;
const FLOOD = 2000;
const FLOOD_SRC = '198.18.1.200';
const FLOOD_FIXTURE = fileURLToPath(new URL('./fixtures/flood.py', import.meta.url));

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
  limits: { maxFlows: MAX_FLOWS, embryonicFlows: EMBRYONIC },
};

const num = (v: unknown) => v as number;

describe('datapath: a SYN flood at the table limit', () => {
  let lab: NetLab;
  let topo: Topology;
  let vpm: VpmDaemon;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'sysctl', 'python3');
    lab = new NetLab('flood');
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

  it(`keeps established transfers byte-identical through ${FLOOD} SYNs, holds the flood to limits.embryonicFlows=${EMBRYONIC}, and takes a new connection after it`, async () => {
    const before = await vpm.stats();
    expect(before.embryonicCapacity).toBe(EMBRYONIC);
    const xfers: ChildProcess[] = [
      spawnClient(lab, topo.tenantA, {
        mode: 'xfer',
        localAddress: CLIENT_A,
        up: 4 * MiB,
        down: 4 * MiB,
        paceMs: 6000,
      }),
      spawnClient(lab, topo.tenantB, {
        mode: 'xfer',
        localAddress: CLIENT_B,
        up: 4 * MiB,
        down: 4 * MiB,
        paceMs: 6000,
      }),
    ];
    await Promise.all(xfers.map((x) => waitJsonEvent(lab, x, 'connected', 10_000)));

    const out = lab.run(
      topo.tenantA,
      'python3',
      [
        FLOOD_FIXTURE,
        JSON.stringify({ src: FLOOD_SRC, dst: VIP, dport: VPORT, count: FLOOD, firstPort: 10000 }),
      ],
      { timeoutMs: 30_000 },
    );
    expect(jsonLines(out).find((e) => e.event === 'sent')?.sent).toBe(FLOOD);
    const flooded = await vpm.stats();
    // The transfers were still going when the flood ended.
    expect(xfers.every((x) => x.exitCode === null)).toBe(true);

    // Most of the flood reached vpm (the TUN's queue may have dropped a few) and made
    // flows; all but the share's worth gave way, the oldest first; none was refused.
    const created = num(flooded.flowsCreated) - num(before.flowsCreated) - xfers.length;
    expect(created).toBeGreaterThan(FLOOD / 2);
    expect(num(flooded.flowsEmbryonic)).toBeLessThanOrEqual(EMBRYONIC);
    expect(num(flooded.embryonicEvicted)).toBeGreaterThanOrEqual(
      created - EMBRYONIC - num(flooded.flowsExpired),
    );
    expect(num(flooded.flowsActive)).toBe(
      num(flooded.flowsCreated) - num(flooded.flowsExpired) - num(flooded.embryonicEvicted),
    );
    expect(flooded.drops.refused_table_full ?? 0).toBe(0);

    // A new connection right after the flood: its SYN evicts the oldest leftover.
    const hello = await runClient(lab, topo.tenantB, { mode: 'hello' });
    expect(hello.event, hello.output).toBe('done');
    expect((hello.hello as Record<string, unknown>).instance).toBe('tenant-b');
    const again = await runClient(lab, topo.tenantA, { mode: 'hello', localAddress: CLIENT_A });
    expect(again.event, again.output).toBe('done');

    const results = await Promise.all(xfers.map((x) => clientResult(lab, x, 60_000)));
    for (const r of results) {
      expect(r.event, r.output).toBe('done');
      const trailer = r.trailer as Record<string, unknown>;
      expect(trailer.recvBytes).toBe(4 * MiB);
      expect(trailer.recvSha).toBe(r.sentSha);
      expect(r.recvBytes).toBe(4 * MiB);
      expect(r.recvSha).toBe(trailer.sentSha);
    }
    const after = await vpm.stats();
    expect(after.drops.refused_table_full ?? 0).toBe(0);
    expect(num(after.flowsEmbryonic)).toBeLessThanOrEqual(EMBRYONIC);
    expect(after.packetsIn).toBe(after.packetsOut + after.dropsTotal + after.fragmentsHeld);
  });
});
