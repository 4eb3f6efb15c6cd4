/**
 * The fuzz targets (scripts/fuzz/targets/, run by `npm run fuzz`) on their seed
 * corpus (test/fuzz/corpus/): every file loads and every target runs on each
 * without throwing, and the seeds get where they are meant to (flows through the
 * pipeline, frames that decode), so neither the targets nor the corpus can rot
 * between fuzzing runs. The fuzzing itself is not part of `npm test`.
 */

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PipelineHarness } from '../../scripts/fuzz/harness.js';
import * as control from '../../scripts/fuzz/targets/control.js';
import * as coop from '../../scripts/fuzz/targets/coop.js';
import * as parse from '../../scripts/fuzz/targets/parse.js';
import * as pipeline from '../../scripts/fuzz/targets/pipeline.js';
import { decode } from '../../src/coop/protocol.js';
import { ReplayCache } from '../../src/coop/replay.js';

const ROOT = 'test/fuzz/corpus';
const TARGETS = { parse, pipeline, control, coop } as const;

function corpus(target: string): [string, Buffer][] {
  const dir = join(ROOT, target);
  return readdirSync(dir)
    .sort()
    .map((f) => [f, readFileSync(join(dir, f))]);
}

describe('fuzz targets on their seed corpus', () => {
  for (const [name, target] of Object.entries(TARGETS)) {
    it(`${name}: every seed runs without a crash`, () => {
      const files = corpus(name);
      expect(files.length).toBeGreaterThanOrEqual(5);
      for (const [file, data] of files) {
        expect(() => target.fuzz(data), `${name}/${file}`).not.toThrow();
      }
      // Nothing in a target depends on the input being a Buffer of its own.
      target.fuzz(Buffer.alloc(0));
      target.fuzz(Buffer.from([0xff, 0x00, 0x01]));
    });
  }

  it('pipeline: the seeds make flows and packets out, and the invariant holds', () => {
    let out = 0;
    let flows = 0;
    for (const [file, data] of corpus('pipeline')) {
      const h = new PipelineHarness();
      const frames = pipeline.records(data, h.tun.slotSize - 1).map((r) => r.frame);
      for (const f of frames) h.inject([f]);
      expect(h.counters.packetsIn, file).toBe(frames.length);
      out += h.counters.packetsOut;
      flows += h.counters.flowsCreated;
    }
    expect(flows).toBeGreaterThanOrEqual(5);
    expect(out).toBeGreaterThanOrEqual(15);
  });

  it('coop: the stream seeds are frames that decode', () => {
    let ok = 0;
    for (const [file, data] of corpus('coop')) {
      if (!file.startsWith('stream-') || file.includes('two') || file.includes('bad')) continue;
      const r = decode(
        data.subarray(1),
        coop.KEY,
        new ReplayCache({ now: () => 1_700_000_000_000 }),
      );
      expect(r.ok, file).toBe(true);
      ok++;
    }
    expect(ok).toBeGreaterThanOrEqual(5);
  });

  it('a broken invariant is a crash', () => {
    const h = new PipelineHarness();
    h.counters.packetsOut++;
    expect(() => h.check('test')).toThrow(/invariant/);
  });
});
