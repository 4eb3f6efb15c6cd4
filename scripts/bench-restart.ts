/**
 * `npm run bench:restart -- [--runs N]`: the gap a daemon change leaves in a
 * connection's traffic, for the two ways a new daemon takes over (issue 13):
 * `vpm restart` (the TUN's fd handed over, SCM_RIGHTS) and `kill -9` followed
 * by `vpm up` (the persistent TUN attached again).
 *
 * Each run is the measurement of test/integration/crash-survival.test.ts ("vpm
 * restart during a transfer"), in namespaces it builds and removes: a 1 kHz UDP
 * probe through vpm (4,000 numbered datagrams, echoed by the instance) while a
 * paced TCP transfer runs, once across a `vpm restart` and once across `kill -9`
 * + `vpm up`; each probe reports the datagrams lost and the longest time
 * between two answers (the stall a client sees). The test writes its figures to
 * the file named by VPM_GAP_OUT; this script runs it N times (default 5) and
 * prints the medians, min and max. Run it alone on a quiet machine. Exit
 * status: 0 done, 1 a run failed, 2 bad arguments.
 */

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/base/paths.js';

interface Probe {
  sent: number;
  lost: number;
  maxGapMs: number;
}

const args = process.argv.slice(2);
let runs = 5;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--runs') {
    runs = Number(args[++i]);
    if (!Number.isInteger(runs) || runs < 1 || runs > 100) {
      process.stderr.write(`bench:restart: --runs must be an integer 1..100, got ${args[i]}\n`);
      process.exit(2);
    }
  } else {
    process.stderr.write(`bench:restart: unknown argument ${args[i]} (usage: --runs N)\n`);
    process.exit(2);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'vpm-bench-restart-'));
const out = join(dir, 'gaps.jsonl');
try {
  for (let r = 1; r <= runs; r++) {
    const t = spawnSync(
      'npx',
      ['vitest', 'run', 'test/integration/crash-survival.test.ts', '-t', 'vpm restart during'],
      { cwd: packageRoot(), env: { ...process.env, VPM_GAP_OUT: out }, encoding: 'utf8' },
    );
    if (t.status !== 0) {
      process.stderr.write(`${t.stdout}\n${t.stderr}\nbench:restart: run ${r} failed\n`);
      process.exit(1);
    }
    process.stderr.write(`run ${r}/${runs} done\n`);
  }
  const rows = readFileSync(out, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { restart: Probe; crash: Probe });
  const stat = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return { median: s[Math.floor(s.length / 2)]!, min: s[0]!, max: s[s.length - 1]! };
  };
  const line = (name: string, ps: Probe[]) => {
    const lost = stat(ps.map((p) => p.lost));
    const gap = stat(ps.map((p) => p.maxGapMs));
    return `| ${name} | ${lost.median} (${lost.min}–${lost.max}) of ${ps[0]!.sent} | ${gap.median} (${gap.min}–${gap.max}) |`;
  };
  process.stdout.write(
    [
      `${rows.length} runs, medians (min–max):`,
      '',
      '| path | datagrams lost | longest stall, ms |',
      '| --- | --- | --- |',
      line(
        '`vpm restart` (fd handed over)',
        rows.map((r) => r.restart),
      ),
      line(
        '`kill -9`, then `vpm up`',
        rows.map((r) => r.crash),
      ),
      '',
    ].join('\n'),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
