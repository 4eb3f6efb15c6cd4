/**
 * SharedFlowTable under concurrent churn, with real worker threads: the
 * randomized interleaving test of issue 14.
 *
 *   this thread (the writer)                 3 reader workers (fixtures/shared-reader.ts)
 *   ─ a seeded random sequence, full speed:  ─ until told to stop, at random:
 *     create / remove / repoint churn flows,   look up published perm flows (both sides:
 *     expire them (a clock of one tick per     always found, right slot, right fields),
 *     operation), publish perm flows now       never-inserted keys (never found), churn
 *     and then; index rebuilds follow from     keys (if found and unchanged: consistent
 *     the tombstones                            fields); count, touch and step perm flows
 *
 * The workers run the TypeScript sources through test/tun/fixtures/ts-loader.mjs
 * (module hooks registered in the worker by `--import`): no build needed. The
 * writer's sequence is a fixed number of operations, so what it does depends on
 * the seed only; the interleaving is whatever the scheduler makes of it. After
 * the stop: every worker's figures of every perm flow are what it did, each perm
 * flow's state and FIN bits are what its steps imply (the two FINs come from two
 * workers, racing), the shared counts (size, embryonic) match a scan, and the
 * churn flows left are exactly the writer's model.
 *
 * Dead keys: the writer marks each churn key's life around every create and
 * remove (a shared word per key), and a reader that finds a key whose removal
 * had returned before its lookup began, with no creation begun since, reports
 * it. Checked by mutation: with removals that leave a side's index entry in
 * place the readers still never find a dead key (the seqlock and the FREE state
 * of the slot turn it away); with the readers' seqlock check removed as well,
 * they do, and this test fails.
 */

import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { CREATE_FULL, SharedFlowTable } from '../../src/flow/shared-table.js';
import {
  FIN_FROM_CLIENT,
  FIN_FROM_SERVER,
  FlowState,
  STATE_TIMER,
  TimerClass,
} from '../../src/flow/state.js';
import { Rng } from '../support/rng.js';
import {
  CAPACITY,
  CHURN_KEYS,
  CHURN_LIVE_MAX,
  CHURN_REAL_PORT,
  churnKey,
  PERM_CREATED,
  PERM_MAX,
  permKey,
  STEP_ACK,
  STEP_FIN_CLIENT,
  STEP_FIN_SERVER,
  STEP_SYNACK,
  TIMEOUTS,
} from './fixtures/shared-keys.js';

const READER = fileURLToPath(new URL('./fixtures/shared-reader.ts', import.meta.url));
const LOADER = fileURLToPath(new URL('../tun/fixtures/ts-loader.mjs', import.meta.url));
const READERS = 3;
const WRITER_OPS = 60_000;

interface Report {
  violations: string[];
  steps: Uint8Array;
  figures: Float64Array;
  done: Record<string, number>;
}

/** The state a perm flow must end in, from the steps the workers report. */
function expectedState(steps: number): number {
  const fins = steps & (STEP_FIN_CLIENT | STEP_FIN_SERVER);
  if (fins === (STEP_FIN_CLIENT | STEP_FIN_SERVER)) return FlowState.TIME_WAIT;
  if (fins !== 0) return FlowState.FIN_WAIT;
  if (steps & STEP_ACK) return FlowState.ESTABLISHED;
  if (steps & STEP_SYNACK) return FlowState.SYN_RECEIVED;
  return FlowState.SYN_SENT;
}

async function run(seed: number) {
  const t = new SharedFlowTable(CAPACITY, TIMEOUTS, seed, CAPACITY, true, READERS + 1, 0);
  const handles = t.sharedTableHandles();
  const pub = new SharedArrayBuffer((PERM_MAX + 3) * 4);
  const p = new Int32Array(pub);
  // Each churn key's life (fixtures/shared-reader.ts): 4n dead, +1 creating, +2 live, +3 removing.
  const lifeBuf = new SharedArrayBuffer(CHURN_KEYS * 4);
  const life = new Int32Array(lifeBuf);
  const toLife = (i: number, phase: 0 | 1 | 2 | 3) =>
    Atomics.store(life, i, (Atomics.load(life, i) & ~3) + (phase === 0 ? 4 : phase));
  /** Churn keys whose removal has begun (the remove listener) and not yet returned. */
  const removing: number[] = [];
  const STOP = PERM_MAX + 1;
  const READY = PERM_MAX + 2;
  const workers = Array.from(
    { length: READERS },
    (_, r) =>
      new Worker(READER, {
        execArgv: ['--import', LOADER],
        workerData: {
          handles,
          w: r + 1,
          readers: READERS,
          seed: seed * 31 + r,
          pub,
          life: lifeBuf,
        },
      }),
  );
  const reports = workers.map(
    (w) =>
      new Promise<Report>((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
        w.once('exit', (code) => reject(new Error(`reader exited (${code}) before reporting`)));
      }),
  );
  try {
    // Every reader is in its loop before the writer starts.
    while (Atomics.load(p, READY) < READERS) await new Promise((r) => setTimeout(r, 5));

    const rng = new Rng(seed);
    const churn = new Map<number, number>(); // churn key → slot
    const realPort = new Map<number, number>();
    let now = 0;
    let published = 0;
    let repoints = 0;
    let expired = 0;
    const permSlot: number[] = [];
    const removedChurn = (s: number) => {
      const i = t.service[s]! & 0x7fff;
      if ((t.service[s]! & 0x8000) !== 0) {
        churn.delete(i);
        realPort.delete(i);
        // Called before the removal: the key is "being removed" until the call that removes it returns.
        toLife(i, 3);
        removing.push(i);
      }
    };
    /** After a remove or expire returns: its keys are dead. */
    const settle = () => {
      for (const i of removing.splice(0)) toLife(i, 0);
    };
    t.addRemoveListener(removedChurn);
    for (let op = 0; op < WRITER_OPS; op++) {
      now++;
      const r = rng.int(100);
      if (published < PERM_MAX && r === 0) {
        const s = t.create(permKey(published), PERM_CREATED);
        if (s < 0) throw new Error(`perm ${published} not created: ${s}`);
        permSlot.push(s);
        Atomics.store(p, 1 + published, s);
        Atomics.store(p, 0, ++published);
      } else if (r < 45) {
        const i = rng.int(CHURN_KEYS);
        if (churn.has(i) || churn.size >= CHURN_LIVE_MAX) continue;
        toLife(i, 1);
        const s = t.create(churnKey(i), now);
        settle(); // a create may evict (the flood policy)
        if (s < 0) throw new Error(`churn ${i} not created: ${s}`);
        toLife(i, 2);
        churn.set(i, s);
        realPort.set(i, 19001);
        if (rng.int(4) === 0) t.touch(s, FlowState.ESTABLISHED, now); // kept past the embryonic timeout
      } else if (r < 85) {
        const i = rng.int(CHURN_KEYS);
        const s = churn.get(i);
        if (s !== undefined) {
          t.remove(s);
          settle();
        }
      } else if (r < 97) {
        const i = rng.int(CHURN_KEYS);
        const s = churn.get(i);
        if (s === undefined) continue;
        const port = CHURN_REAL_PORT + rng.int(4);
        if (!t.repoint(s, 0xc613ff02, port, port ^ 0x5a5a))
          throw new Error(`churn ${i} not repointed`);
        realPort.set(i, port);
        repoints++;
      } else {
        expired += t.expire(now, 64, undefined, 256);
        settle();
      }
    }
    while (published < PERM_MAX) {
      const s = t.create(permKey(published), PERM_CREATED);
      expect(s).not.toBe(CREATE_FULL);
      permSlot.push(s);
      Atomics.store(p, 1 + published, s);
      Atomics.store(p, 0, ++published);
    }
    Atomics.store(p, STOP, 1);
    const got = await Promise.all(reports);

    expect(got.flatMap((g) => g.violations)).toEqual([]);
    // The readers did overlap with the writer's churn, and the writer's sequence hit every path.
    for (const g of got) expect(g.done.permFound).toBeGreaterThan(0);
    for (const g of got) expect(g.done.deadChecked).toBeGreaterThan(0);
    expect(t.rebuilds).toBeGreaterThan(0);
    expect(repoints).toBeGreaterThan(0);
    expect(expired).toBeGreaterThan(0);

    // Figures per worker, state and FINs per perm flow.
    const f = new Float64Array(5);
    for (let i = 0; i < PERM_MAX; i++) {
      const s = permSlot[i]!;
      let stepsAll = 0;
      let pktsIn = 0;
      for (let r = 0; r < READERS; r++) {
        t.figuresOfWorker(s, r + 1, f);
        const want = Array.from(got[r]!.figures.subarray(i * 5, i * 5 + 5));
        expect(Array.from(f), `perm ${i} worker ${r + 1}`).toEqual(want);
        stepsAll |= got[r]!.steps[i]!;
        pktsIn += want[1]!;
      }
      expect(t.pktsInOf(s)).toBe(pktsIn);
      expect(t.state[s], `perm ${i} steps ${stepsAll}`).toBe(expectedState(stepsAll));
      const fins =
        (stepsAll & STEP_FIN_CLIENT ? FIN_FROM_CLIENT : 0) |
        (stepsAll & STEP_FIN_SERVER ? FIN_FROM_SERVER : 0);
      expect(t.fins[s]).toBe(fins);
    }
    // Shared counts against a scan, and the churn flows left against the model.
    let live = 0;
    let embryonic = 0;
    t.forEach((s) => {
      live++;
      const c = STATE_TIMER[t.state[s]!];
      if (c === TimerClass.EMBRYONIC || c === TimerClass.UDP_UNREPLIED) embryonic++;
    });
    expect(t.size).toBe(live);
    expect(live).toBe(PERM_MAX + churn.size);
    expect(t.embryonicSize).toBe(embryonic);
    for (let i = 0; i < CHURN_KEYS; i++) {
      const k = churnKey(i, realPort.get(i) ?? 19001);
      const s = churn.get(i);
      expect(t.lookup(k.clientAddr, k.clientPort, k.vipAddr, k.vport, 6)).toBe(
        s === undefined ? -1 : s * 2,
      );
      if (s !== undefined)
        expect(t.lookup(k.realAddr, k.realPort, k.natAddr, k.natPort, 6)).toBe(s * 2 + 1);
    }
    return { rebuilds: t.rebuilds, postponed: t.rebuildsPostponed, done: got.map((g) => g.done) };
  } finally {
    Atomics.store(p, STOP, 1);
    await Promise.allSettled(workers.map((w) => w.terminate()));
  }
}

describe('SharedFlowTable with real worker threads', () => {
  for (const seed of [1, 0x5eed, 0xc0ffee]) {
    it(`readers never miss a live flow nor find a dead one under the writer's churn (seed ${seed})`, async () => {
      const r = await run(seed);
      console.log(`seed ${seed}: ${JSON.stringify(r)}`);
    });
  }
});
