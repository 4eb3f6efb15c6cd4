/**
 * Multi-queue TUN devices and the native addon in worker threads: each case is
 * test/tun/fixtures/mq-fixture.ts (its scenarios are described there) in a
 * namespace of its own, with real TUN queues, real UDP flows and real workers.
 */

import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot } from '../support/netns.js';
import { events, spawnTunFixture, waitEvent } from './fixture.js';

const MQ_FIXTURE = fileURLToPath(new URL('./fixtures/mq-fixture.ts', import.meta.url));

describe('kernel TUN: multi-queue and worker threads', () => {
  let lab: NetLab;
  let n = 0;

  beforeAll(() => {
    requireRoot();
    requireCommands('ip');
    lab = new NetLab('tunmq');
  });
  afterAll(async () => {
    await lab?.cleanup();
  });

  /** Run a scenario to its end; its "done" event (the fixture exits 0 after it). */
  async function run(scenario: string): Promise<Record<string, unknown>> {
    const child = spawnTunFixture(lab, lab.namespace(`q${n++}`), scenario, undefined, {
      script: MQ_FIXTURE,
    });
    const exit = lab.exited(child);
    const done = await waitEvent(lab, child, 'done', 60_000).catch(async (e: unknown) => {
      throw new Error(`${String(e)}\n${lab.output(child).stderr}`);
    });
    expect(await exit).toEqual({ code: 0, signal: null });
    expect(events(lab, child).filter((e) => e.event === 'worker-error')).toEqual([]);
    return done;
  }

  it('3 workers at once: addon, checksums, a queue and a capture each; terminate() while polling leaks no fd', async () => {
    const done = await run('workers');
    const rounds = done.rounds as Record<string, unknown>[];
    expect(rounds).toHaveLength(2);
    for (const r of rounds) {
      // Worker 0 ended by itself (0); 1 and 2 were terminated while polling (1).
      expect(r.codes).toEqual([0, 1, 1]);
      expect(r.checksums).toEqual(['ok', 'ok', 'ok']);
      // The main thread's queue and the 3 workers'; after teardown the main one only.
      expect(r.queuesWhileReading).toBe(4);
      expect(r.queuesAfter).toBe(1);
      expect(r.after).toBe(r.before);
    }
  });

  it('queue fds adopted by 2 workers: flows spread over both, and a write from either queue is delivered', async () => {
    const d = await run('adopt');
    expect(d.readingMultiQueue).toEqual([true, true]);
    // 64 flows by hash over 2 queues: each queue reads some, every flow stays on one.
    expect((d.perQueue as number[]).every((k) => k > 0)).toBe(true);
    expect((d.perQueue as number[])[0]! + (d.perQueue as number[])[1]!).toBe(64);
    expect(d.splitFlows).toBe(0);
    // Queue B wrote for a flow read on queue A: delivered to that flow's socket.
    expect(d.wrote).toEqual({ n: 1, refused: 0 });
    expect(d.delivered).toBe(`from-queue-${String(d.b)}`);
    // The kernel's flow table learned B from the write: the flow's next packet is read on B.
    expect(d.afterWrite).toEqual([d.b]);
    expect(d.codes).toEqual([0, 0]);
    expect(d.deleted).toBe(true);
    expect(d.after).toBe(d.before);
  });

  it('persist: 3 queues closed, the device and its address stay; reopened with 3 queues that read', async () => {
    const d = await run('persist');
    expect(d.created).toEqual({ existed: [false, true, true], queues: 3 });
    expect(d.stays).toBe(true);
    expect(d.addrKept).toBe(true);
    expect(d.reopened).toEqual({ existed: [true, true, true], queues: 3 });
    expect(d.read).toBe(true);
    expect(d.deleted).toBe(true);
  });

  it('a queue that cannot be attached (MAX_TAP_QUEUES) closes the queues opened before it', async () => {
    const d = await run('fail');
    expect(d.heldFds).toBe(250);
    // Queues 251..256 attached, the 257th refused with E2BIG: all six closed again.
    expect(d.error).toMatchObject({ code: 'ERR_TUN_OPEN', errno: 7 });
    expect(d.afterFail).toEqual({ fds: 250, queues: 250 });
    expect((d.bad as { code: string; message: string }[]).map((b) => b.code)).toEqual([
      'ERR_TUN_OPTION',
      'ERR_TUN_OPTION',
      'ERR_TUN_OPTION',
    ]);
    expect((d.bad as { message: string }[]).map((b) => b.message.split('got ')[1])).toEqual([
      '0',
      '257',
      '2.5',
    ]);
    expect(d.deleted).toBe(true);
    expect(d.after).toBe(0);
  });
});
