/**
 * SIGHUP reloads the configuration: new rules apply to new connections, flows
 * already in the table keep their translation; an invalid file is refused with a
 * log line and the old configuration stays.
 *
 *   tenant-a (198.18.1.2) ──veth── host: vpm, instances "first" :19001 and "second" :19002
 */

import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot } from '../support/netns.js';
import { VpmDaemon } from '../support/vpm.js';
import {
  clientResult,
  runClient,
  spawnClient,
  startInstance,
  type Topology,
  twoTenants,
} from './topology.js';

const lab = new NetLab('reload');
let topo: Topology;
let vpm: VpmDaemon;

const config = (aid: string) => ({
  services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
  applications: [
    { aid: 'first', instances: [{ port: 19001 }] },
    { aid: 'second', instances: [{ port: 19002 }] },
  ],
  selectors: [{ clients: ['198.18.1.0/24'], aid }],
  default: { refuse: true },
});

beforeAll(async () => {
  requireRoot();
  topo = twoTenants(lab);
  vpm = await VpmDaemon.start(lab, topo.host, config('first'));
  await startInstance(lab, topo.host, 'first', 19001);
  await startInstance(lab, topo.host, 'second', 19002);
}, 60_000);

afterAll(async () => {
  await vpm?.stop().catch(() => {});
  await lab.cleanup();
});

async function waitLog(event: string, n = 1): Promise<Record<string, unknown>[]> {
  for (let i = 0; i < 200; i++) {
    const found = vpm.logs().filter((l) => l.event === event);
    if (found.length >= n) return found;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no ${event} log line:\n${vpm.output()}`);
}

describe('reload on SIGHUP', () => {
  it('sends new connections by the new rules while an existing transfer completes on the old instance', async () => {
    expect((await runClient(lab, topo.tenantA, { mode: 'hello' })).hello).toMatchObject({
      instance: 'first',
    });
    const running = spawnClient(lab, topo.tenantA, {
      mode: 'xfer',
      up: 4_000_000,
      down: 4_000_000,
      paceMs: 2500,
    });
    await new Promise((r) => setTimeout(r, 500));
    const cfg = JSON.parse(readFileSync(vpm.configPath, 'utf8'));
    cfg.selectors = config('second').selectors;
    writeFileSync(vpm.configPath, JSON.stringify(cfg));
    process.kill(vpm.pid, 'SIGHUP');
    await waitLog('reloaded');
    expect((await runClient(lab, topo.tenantA, { mode: 'hello' })).hello).toMatchObject({
      instance: 'second',
    });
    const r = await clientResult(lab, running);
    expect(r.event, r.output).toBe('done');
    const t = r as Record<string, unknown>;
    expect(t.hello).toMatchObject({ instance: 'first' });
    expect(t.sentSha).toBe((t.trailer as Record<string, unknown>).recvSha);
    expect(t.recvSha).toBe((t.trailer as Record<string, unknown>).sentSha);
  }, 60_000);

  it('keeps the old configuration when the new file is invalid, and says why', async () => {
    const good = readFileSync(vpm.configPath, 'utf8');
    writeFileSync(vpm.configPath, good.replace('"port":9000', '"port":70000'));
    process.kill(vpm.pid, 'SIGHUP');
    const [failed] = await waitLog('reload_failed');
    expect(String(failed!.err)).toMatch(/services\[0\]\.port: 70000 is above the maximum 65535/);
    expect(vpm.alive).toBe(true);
    expect((await runClient(lab, topo.tenantA, { mode: 'hello' })).hello).toMatchObject({
      instance: 'second',
    });
    writeFileSync(vpm.configPath, good);
  });

  it('refuses a connection to a port of the VIP that is no service at once, like a closed port', async () => {
    const t0 = Date.now();
    const r = await runClient(lab, topo.tenantA, { mode: 'hello', port: 9001 });
    expect(r.event, r.output).toBe('error');
    expect(r.code).toBe('ECONNREFUSED');
    expect(Date.now() - t0).toBeLessThan(2000);
    const s = (await vpm.stats()) as unknown as { drops: Record<string, number> };
    expect(s.drops.refused_no_service).toBe(1);
  });
});
