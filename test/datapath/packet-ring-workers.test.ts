/**
 * PacketRing across real threads: the first-packet path of issue 14.
 *
 *   producer worker 0 ──ring 0 (64 slots, 10-byte header)──┐
 *                                                          ├─> this thread: consume() on both
 *   producer worker 1 ──ring 1 (16 slots, no header)───────┘   rings, asleep while empty
 *
 * Each worker (fixtures/ring-producer.ts, TypeScript through
 * test/tun/fixtures/ts-loader.mjs) pushes a seeded stream of numbered packets
 * (fixtures/ring-stream.ts: lengths 1..2000 and some longer than a slot, the
 * number as the kind) as fast as it can in bursts with random pauses, then
 * ping-pongs single packets. This thread checks every packet as it drains it:
 * its number higher than the last of its ring (order), not seen before
 * (exactly once), accepted by the producer (never a refused one), its length,
 * header bytes and payload as the stream defines them. At the end: every
 * accepted packet arrived; the ring's counters are the producer's own (pushed
 * = accepted = received, full and oversize = its refusals); and no packet was
 * stranded — whenever the producer has finished a push and says so (a
 * message per ping-pong round, and its final message), a consumer that is
 * asleep (WAKE armed) has already received it. That last check is exact on
 * this thread: the consumer is this thread, so it is never between arming and
 * its re-check when a message is handled, and the producer is past its wake
 * check. The remaining packets of each ring then arrive without any further
 * push (the test waits for them through the rings' own wake-ups only).
 */

import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { PacketRing } from '../../src/datapath/packet-ring.js';
import { VNET_HDR_LEN } from '../../src/wire/virtio.js';
import {
  byteOf,
  lengthOf,
  pattern,
  ST_ACCEPTED,
  ST_FULL,
  ST_OVERSIZE,
} from './fixtures/ring-stream.js';

const PRODUCER = fileURLToPath(new URL('./fixtures/ring-producer.ts', import.meta.url));
const LOADER = fileURLToPath(new URL('../tun/fixtures/ts-loader.mjs', import.meta.url));
const STREAM = 30_000;
const PING_PONG = 2_000;

interface Own {
  attempts: number;
  accepted: number;
  full: number;
  oversize: number;
}

interface Lane {
  ring: PacketRing;
  seed: number;
  status: Uint8Array;
  ack: Int32Array;
  got: Uint8Array;
  last: number;
  received: number;
  violations: string[];
  /** Resolves when `received` reaches the target set at the producer's end. */
  target: number;
  reached: () => void;
}

function violation(l: Lane, msg: string): void {
  if (l.violations.length < 20) l.violations.push(msg);
}

function check(
  l: Lane,
  p: Uint8Array,
  buf: Uint8Array,
  off: number,
  len: number,
  seq: number,
): void {
  const hr = l.ring.headroom;
  if (!(seq >= 0 && seq < l.got.length)) {
    violation(l, `kind ${seq} is no packet number`);
    return;
  }
  if (seq <= l.last) violation(l, `packet ${seq} after ${l.last}`);
  if (l.got[seq]) violation(l, `packet ${seq} twice`);
  l.got[seq] = 1;
  l.last = seq;
  const want = lengthOf(l.seed, seq);
  if (len !== want) {
    violation(l, `packet ${seq}: length ${len}, sent ${want}`);
    return;
  }
  for (let i = -hr; i < len; i++) {
    if (buf[off + i] !== byteOf(p, seq, i)) {
      violation(l, `packet ${seq}: byte ${i} differs`);
      return;
    }
  }
}

async function run(seed: number) {
  const rings = [
    new PacketRing({ slots: 64, packetBytes: 2048, headroom: VNET_HDR_LEN }),
    new PacketRing({ slots: 16, packetBytes: 2048 }),
  ];
  const total = STREAM + PING_PONG;
  const lanes: Lane[] = rings.map((ring, r) => ({
    ring,
    seed: seed * 7 + r,
    status: new Uint8Array(new SharedArrayBuffer(total)),
    ack: new Int32Array(new SharedArrayBuffer(4)),
    got: new Uint8Array(total),
    last: -1,
    received: 0,
    violations: [],
    target: Number.POSITIVE_INFINITY,
    reached: () => {},
  }));
  const sink =
    (l: Lane, p: Uint8Array) => (buf: Uint8Array, off: number, len: number, seq: number) => {
      check(l, p, buf, off, len, seq);
      l.received++;
      Atomics.store(l.ack, 0, l.received);
      Atomics.notify(l.ack, 0);
      if (l.received === l.target) l.reached();
    };
  const sinks = lanes.map((l) => sink(l, pattern(l.seed)));
  const consumers = lanes.map((l, r) => l.ring.consume(sinks[r]!, 32));
  const strandedCheck = (l: Lane, what: string, unreceived: boolean) => {
    if (unreceived && l.ring.sleeping) {
      violation(l, `stranded: ${what} not received and the consumer asleep`);
      l.ring.drain(sinks[lanes.indexOf(l)]!, 1 << 30); // go on, to report everything
    }
  };
  const workers = lanes.map(
    (l) =>
      new Worker(PRODUCER, {
        execArgv: ['--import', LOADER],
        workerData: {
          handles: l.ring.handles(),
          seed: l.seed,
          streamPackets: STREAM,
          pingPong: PING_PONG,
          status: l.status.buffer,
          ack: l.ack.buffer,
        },
      }),
  );
  const ends = workers.map(
    (w, r) =>
      new Promise<{ own: Own; total: number }>((resolve, reject) => {
        const l = lanes[r]!;
        w.on('message', (m: { pushed?: number; done?: Own; total?: number }) => {
          if (m.pushed !== undefined) strandedCheck(l, `packet ${m.pushed}`, !l.got[m.pushed]);
          if (m.done) {
            strandedCheck(l, 'the last packets', !l.ring.empty);
            resolve({ own: m.done, total: m.total! });
          }
        });
        w.once('error', reject);
        w.once('exit', (code) =>
          reject(new Error(`producer ${r} exited (${code}) before reporting`)),
        );
      }),
  );
  const results = await Promise.all(ends);
  // Everything accepted arrives, through the rings' wake-ups only.
  await Promise.all(
    lanes.map(
      (l, r) =>
        new Promise<void>((resolve) => {
          l.target = results[r]!.own.accepted;
          l.reached = resolve;
          if (l.received >= l.target) resolve();
        }),
    ),
  );
  for (const l of lanes) l.ring.close();
  await Promise.all(consumers);
  await Promise.all(workers.map((w) => w.terminate()));
  return { lanes, results };
}

describe('PacketRing with real producer workers', () => {
  it('delivers every accepted packet exactly once, in order, byte-identical; counters add up; nothing stranded', async () => {
    const { lanes, results } = await run(20240614);
    for (const [r, l] of lanes.entries()) {
      const { own, total } = results[r]!;
      expect(l.violations, `ring ${r}`).toEqual([]);
      expect(total).toBe(STREAM + PING_PONG);
      expect(own.attempts).toBe(total);
      let accepted = 0;
      let full = 0;
      let oversize = 0;
      for (let s = 0; s < total; s++) {
        const st = l.status[s];
        if (st === ST_ACCEPTED) {
          accepted++;
          if (!l.got[s]) expect.fail(`ring ${r}: accepted packet ${s} never arrived`);
        } else {
          if (st === ST_FULL) full++;
          else if (st === ST_OVERSIZE) oversize++;
          else expect.fail(`ring ${r}: packet ${s} has no status`);
          if (l.got[s]) expect.fail(`ring ${r}: refused packet ${s} arrived`);
        }
      }
      expect([accepted, full, oversize]).toEqual([own.accepted, own.full, own.oversize]);
      expect(l.ring.pushed).toBe(own.accepted);
      expect(l.ring.received).toBe(own.accepted);
      expect(l.received).toBe(own.accepted);
      expect(l.ring.full).toBe(own.full);
      expect(l.ring.oversize).toBe(own.oversize);
      expect(l.ring.invalid).toBe(0);
      expect(l.ring.pushed + l.ring.full + l.ring.oversize).toBe(total);
      expect(l.ring.empty).toBe(true);
      // The stream did what it is for: oversize refusals, and a consumer woken from
      // sleep at least in every other ping-pong round (the producer waited for it).
      expect(oversize).toBeGreaterThan(0);
      expect(l.ring.wakeups).toBeGreaterThanOrEqual(PING_PONG / 2 - oversize);
    }
  });
});
