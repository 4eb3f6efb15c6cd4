/**
 * SIGHUP reloads the configuration: new rules apply to new connections, flows
 * already in the table keep their translation; an invalid file is refused with a
 * log line and the old configuration stays. A reload's host commands (the reply
 * rules) never stop the data plane: while the daemon's ip(8) is held, packets of a
 * running connection are still forwarded and the control socket still answers.
 *
 *   tenant-a (198.18.1.2) ──veth── host: vpm, instances "first" :19001 and "second" :19002
 *   clients, pinger                     the daemon's PATH starts with a gated ip(8)
 */

import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/control/client.js';
import { NetLab, requireRoot, waitFor } from '../support/netns.js';
import { jsonLines, rulesForTable, VpmDaemon, waitJsonEvent } from '../support/vpm.js';
import {
  clientResult,
  runClient,
  spawnClient,
  startInstance,
  type Topology,
  twoTenants,
  VIP,
  VPORT,
} from './topology.js';

const PINGER = new URL('./fixtures/pinger.mjs', import.meta.url).pathname;

const lab = new NetLab('reload');
let topo: Topology;
let vpm: VpmDaemon;
let gate: IpGate;

/**
 * ip(8) for the daemon alone: a script first on the daemon's PATH that runs the
 * real ip, except while `<gate>/hold` exists: then each call first writes
 * `<gate>/held.<pid>` (the time in ms and its arguments) and waits until hold is
 * removed. The test
 * holds the daemon's host commands for as long as it likes, and sees when one
 * is waiting. Only the daemon's environment has it; the lab's own commands and
 * everything else in the test run the real ip.
 */
interface IpGate {
  env: NodeJS.ProcessEnv;
  hold(): void;
  release(): void;
  /** The arguments of the calls held since the last `clear`. */
  held(): string[];
  /** When (Date.now()) the first of them began. */
  heldSince(): number;
  clear(): void;
}

function ipGate(): IpGate {
  const dir = lab.tempDir();
  const bin = join(dir, 'bin');
  const g = join(dir, 'gate');
  mkdirSync(bin);
  mkdirSync(g);
  const real = execFileSync('sh', ['-c', 'command -v ip'], { encoding: 'utf8' }).trim();
  writeFileSync(
    join(bin, 'ip'),
    [
      '#!/bin/sh',
      `if [ -e '${g}/hold' ]; then`,
      `  echo "$(date +%s%3N) $*" > '${g}/held.'$$`,
      `  while [ -e '${g}/hold' ]; do sleep 0.02; done`,
      'fi',
      `exec '${real}' "$@"`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  const held = () => readdirSync(g).filter((f) => f.startsWith('held.'));
  return {
    env: { ...process.env, PATH: `${bin}${delimiter}${process.env.PATH ?? ''}` },
    hold: () => writeFileSync(join(g, 'hold'), ''),
    release: () => rmSync(join(g, 'hold'), { force: true }),
    held: () => held().map((f) => readFileSync(join(g, f), 'utf8').trim().replace(/^\d+ /, '')),
    heldSince: () =>
      Math.min(...held().map((f) => Number(readFileSync(join(g, f), 'utf8').split(' ')[0]))),
    clear: () => {
      for (const f of held()) rmSync(join(g, f), { force: true });
    },
  };
}

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
  gate = ipGate();
  vpm = await VpmDaemon.start(lab, topo.host, config('first'), { env: gate.env });
  await startInstance(lab, topo.host, 'first', 19001);
  await startInstance(lab, topo.host, 'second', 19002);
}, 60_000);

afterAll(async () => {
  gate?.release();
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
    // The transfer's connection must exist (classified by the old rules) before the
    // reload: wait for the client to say it is connected, not for a fixed time,
    // which a loaded machine overruns (then its SYN meets the new rules).
    await waitJsonEvent(lab, running, 'connected', 15_000);
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

/** The pinger's progress lines so far: round trips `n` done at wall-clock time `t`. */
function progress(child: ReturnType<NetLab['spawn']>): { n: number; t: number }[] {
  return jsonLines(lab.output(child).stdout)
    .filter((e) => e.event === 'progress')
    .map((e) => ({ n: e.n as number, t: e.t as number }));
}

const roundTrips = (child: ReturnType<NetLab['spawn']>) => progress(child).pop()?.n ?? 0;

/** A pinger in tenant-a, with `n` round trips through vpm done. */
async function startPinger(n = 20): Promise<ReturnType<NetLab['spawn']>> {
  const p = lab.spawn(topo.tenantA, process.execPath, [
    PINGER,
    JSON.stringify({ host: VIP, port: VPORT }),
  ]);
  await waitFor(() => roundTrips(p) >= n, {
    what: `${n} round trips through vpm\n${lab.output(p).stdout.slice(-500)}`,
    timeoutMs: 10_000,
  });
  return p;
}

/**
 * Once the reload has reached its host commands and the daemon's ip(8) is held,
 * `n` more round trips complete — counted between two of the pinger's progress
 * lines that are both later than the moment the ip call began: the data plane
 * was not waiting for ip (with one message in flight, at most one round trip
 * can finish without vpm forwarding). And the reload was still under way: the
 * call still held, nothing logged.
 */
async function forwardsWhileHeld(p: ReturnType<NetLab['spawn']>, reloadedBefore: number, n = 20) {
  await waitFor(() => gate.held().length > 0, {
    what: 'the reload to run ip(8)',
    timeoutMs: 10_000,
  });
  const heldAt = gate.heldSince();
  const during = () => {
    const after = progress(p).filter((l) => l.t > heldAt);
    return after.length < 2 ? 0 : after[after.length - 1]!.n - after[0]!.n;
  };
  await waitFor(() => during() >= n, {
    what: `${n} round trips through vpm while its ip(8) is held (${during()} done; held: ${gate.held().join('; ')})`,
    timeoutMs: 10_000,
  });
  // Still inside the reload: one command held (they run one at a time), nothing logged.
  expect(gate.held()).toHaveLength(1);
  expect(vpm.logs().filter((l) => l.event === 'reloaded')).toHaveLength(reloadedBefore);
}

/** Stop the pinger; its one connection must have lasted through everything. */
async function stopPinger(p: ReturnType<NetLab['spawn']>): Promise<void> {
  const n1 = roundTrips(p);
  await waitFor(() => roundTrips(p) >= n1 + 20, {
    what: 'round trips after the reload',
    timeoutMs: 10_000,
  });
  await lab.stop(p);
  const last = lab.output(p).stdout.trim().split('\n').pop() ?? '';
  expect(JSON.parse(last), lab.output(p).stdout.slice(-500)).toMatchObject({ event: 'done' });
}

// The reply rules by port range (the ICMP rule of the same table has none).
const replyRules = () =>
  rulesForTable(lab, topo.host, 100)
    .filter((l) => l.includes(' sport '))
    .map((l) => /sport (\S+)/.exec(l)?.[1]);

describe("reload while packets flow, with the daemon's ip(8) held", () => {
  it('SIGHUP: packets are forwarded while the reload waits for ip; then the reply rules follow the new instance ports', async () => {
    expect(replyRules()).toEqual(['19001-19002']);
    const pinger = await startPinger();
    const reloaded = vpm.logs().filter((l) => l.event === 'reloaded').length;
    const cfg = JSON.parse(readFileSync(vpm.configPath, 'utf8'));
    cfg.applications[0].instances.push({ port: 19003 });
    writeFileSync(vpm.configPath, JSON.stringify(cfg));
    gate.clear();
    gate.hold();
    try {
      process.kill(vpm.pid, 'SIGHUP');
      await forwardsWhileHeld(pinger, reloaded);
    } finally {
      gate.release();
    }
    await waitLog('reloaded', reloaded + 1);
    expect(replyRules()).toEqual(['19001-19003']);
    await stopPinger(pinger);
  }, 60_000);

  it('the control request reload: packets are forwarded and stats answered while ip is held; then the rules go back', async () => {
    const pinger = await startPinger();
    const reloaded = vpm.logs().filter((l) => l.event === 'reloaded').length;
    const cfg = JSON.parse(readFileSync(vpm.configPath, 'utf8'));
    cfg.applications[0].instances.pop();
    writeFileSync(vpm.configPath, JSON.stringify(cfg));
    gate.clear();
    gate.hold();
    let answer: Promise<unknown> | undefined;
    try {
      answer = controlRequest(vpm.socket, 'reload', {}, 30_000);
      await forwardsWhileHeld(pinger, reloaded);
      const s = await vpm.stats();
      expect(s.flowsActive).toBeGreaterThanOrEqual(1);
    } finally {
      gate.release();
    }
    expect(await answer).toMatchObject({ ok: true, services: 1, applications: 2, selectors: 1 });
    expect(replyRules()).toEqual(['19001-19002']);
    await stopPinger(pinger);
  }, 60_000);
});
