/**
 * Lifecycle of a real TUN device: closing while reading, exiting, exceptions in
 * onBatch, a device deleted underneath, finalizers and worker teardown. Each case
 * is a fixture process in its own namespace that makes its own traffic:
 *
 *     namespace vpmt-…-tunlife-N
 *     ┌─────────────────────────────────────────────────────────────┐
 *     │ tun-fixture: dgram ─► 198.18.11.2 ─► route ─► vpm0 ─► onBatch │
 *     └─────────────────────────────────────────────────────────────┘
 *
 * A device that is closed must let the process end by itself (no uv handle left),
 * and process.exit() must never wait for it (no blocked thread-pool read).
 */

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ExitInfo, NetLab, requireCommands, requireRoot, sleep } from '../support/netns.js';
import { events, type FixtureOptions, spawnTunFixture, waitEvent } from './fixture.js';

describe('kernel TUN: lifecycle', () => {
  let lab: NetLab;
  let n = 0;

  beforeAll(() => {
    requireRoot();
    requireCommands('ip');
    lab = new NetLab('tunlife');
  });
  afterAll(async () => {
    await lab?.cleanup();
  });

  function run(scenario: string, opts: FixtureOptions = {}): ChildProcess {
    return spawnTunFixture(lab, lab.namespace(`l${n++}`), scenario, undefined, opts);
  }

  /** The exit, or 'timeout' after ms. */
  async function exitWithin(child: ChildProcess, ms: number): Promise<ExitInfo | 'timeout'> {
    return Promise.race([lab.exited(child), sleep(ms).then(() => 'timeout' as const)]);
  }

  it('close() inside onBatch: no further batch, and the process ends by itself', async () => {
    const child = run('close-in-batch');
    const closed = await waitEvent(lab, child, 'closed');
    expect(closed).toMatchObject({ batches: 3, readBatches: 3 });
    expect(await exitWithin(child, 5000)).toEqual({ code: 0, signal: null });
    const exit = events(lab, child).find((e) => e.event === 'exit')!;
    expect(exit).toMatchObject({ code: 0, afterClose: 0 });
    // Microtasks and nextTicks queued in onBatch ran before the next batch.
    expect(exit).toMatchObject({ lateMicrotasks: 0, microtasks: 3, ticks: 3 });
  });

  it('close() from a timer while packets flow: the process ends by itself', async () => {
    const child = run('close-from-timer');
    const closed = await waitEvent(lab, child, 'closed');
    expect(closed.readBatches as number).toBeGreaterThanOrEqual(5);
    expect(await exitWithin(child, 5000)).toEqual({ code: 0, signal: null });
    expect(events(lab, child).find((e) => e.event === 'exit')).toMatchObject({ afterClose: 0 });
  });

  it('process.exit() while the device is started and reading exits at once', async () => {
    const child = run('exit-while-started');
    await waitEvent(lab, child, 'exiting');
    const t0 = Date.now();
    expect(await exitWithin(child, 3000)).toEqual({ code: 42, signal: null });
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('stop() and start() inside onBatch, and a stop that lets packets wait in the queue', async () => {
    const child = run('stop-start');
    const done = await waitEvent(lab, child, 'done');
    expect(done).toMatchObject({ restarts: 2, whileStopped: 0, queuedSeen: 50 });
    // Nothing was read while stopped: all 50 came after start().
    expect(done.readPackets).toBe((done.before as number) + (done.after as number));
    expect(await exitWithin(child, 5000)).toEqual({ code: 0, signal: null });
  });

  it('an exception thrown by onBatch reaches uncaughtException, and reading goes on', async () => {
    const child = run('throw-handled');
    const done = await waitEvent(lab, child, 'done');
    expect(done).toEqual({ event: 'done', caught: ['boom from onBatch'], batches: 5 });
    expect(await exitWithin(child, 5000)).toEqual({ code: 0, signal: null });
  });

  it('an exception thrown by onBatch without a handler ends the process like any uncaught one', async () => {
    const child = run('throw-uncaught');
    await waitEvent(lab, child, 'ready');
    expect(await exitWithin(child, 5000)).toEqual({ code: 1, signal: null });
    expect(lab.output(child).stderr).toMatch(/Error: boom nobody catches/);
    expect(events(lab, child).some((e) => e.event === 'survived')).toBe(false);
  });

  it('a device deleted underneath: reading stops with ERR_TUN_IO to onError; writes are counted', async () => {
    const child = run('device-deleted');
    const err = await waitEvent(lab, child, 'error');
    expect(err).toMatchObject({ code: 'ERR_TUN_IO', name: 'TunError', batches: 2 });
    expect(err.message).toMatch(/deleted or detached; reading stopped/);
    // The probe write is refused by the detached fd, counted, and does not throw.
    expect(err).toMatchObject({ taken: 1, writeErrors: 1 });
    expect(await exitWithin(child, 5000)).toEqual({ code: 0, signal: null });
  });

  it('a device dropped without close() is closed by its finalizer', async () => {
    const child = run('finalize', { nodeFlags: ['--expose-gc'] });
    const e = await waitEvent(lab, child, 'reopened');
    expect(e.name).toBe('vpmgc0');
    expect(await exitWithin(child, 5000)).toEqual({ code: 0, signal: null });
  });

  it('terminating a worker that reads a device closes it (env cleanup), without a crash', async () => {
    const child = run('worker');
    const e = await waitEvent(lab, child, 'reopened', 15_000);
    expect(e).toMatchObject({ name: 'vpmwk0', workerExit: 1 });
    expect(await exitWithin(child, 5000)).toEqual({ code: 0, signal: null });
  });
});
