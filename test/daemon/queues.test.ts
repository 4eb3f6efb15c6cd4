/**
 * tun.queues: the config field (1..64 or "auto", default 1), what "auto" resolves
 * to, that a reload cannot change it, and that `vpm up` refuses more than the one
 * queue this daemon runs (ERR_CONFIG_INVALID) instead of silently running one.
 */

import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/errors.js';
import { parseConfig } from '../../src/config/load.js';
import { resolveTunQueues, TUN_AUTO_QUEUES_MAX } from '../../src/config/queues.js';
import { configToJson } from '../../src/config/summary.js';
import { refuseUnsupportedQueues } from '../../src/daemon/queues.js';
import { reloadPlan } from '../../src/daemon/reload.js';
import { NetLab, nsExec, requireCommands, requireRoot } from '../support/netns.js';
import { requireVpmBuild, runVpm, writeVpmConfig } from '../support/vpm.js';

function config(tun: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    tun,
    services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
    applications: [{ aid: 'a', instances: [{ port: 19001 }] }],
  };
}

function problems(queues: unknown): string[] {
  try {
    parseConfig(config({ queues }), 'q.json');
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).code).toBe('ERR_CONFIG_INVALID');
    return (e as ConfigError).message.split('\n');
  }
  throw new Error(`tun.queues ${JSON.stringify(queues)} was accepted`);
}

describe('tun.queues in the config', () => {
  it('defaults to 1; takes 1..64 and "auto"', () => {
    expect(parseConfig(config(), 'q.json').tun).toMatchObject({ queuesSetting: 1, queues: 1 });
    expect(parseConfig(config({ queues: 64 }), 'q.json').tun).toMatchObject({ queues: 64 });
    const auto = parseConfig(config({ queues: 'auto' }), 'q.json').tun;
    expect(auto.queuesSetting).toBe('auto');
    expect(auto.queues).toBe(resolveTunQueues('auto'));
    // Written back as given, not as this host resolved it.
    expect(
      (configToJson(parseConfig(config({ queues: 'auto' }), 'q.json')).tun as { queues: unknown })
        .queues,
    ).toBe('auto');
  });

  it('"auto" is one per core, at least 1, at most 16', () => {
    expect(resolveTunQueues('auto', 1)).toBe(1);
    expect(resolveTunQueues('auto', 2)).toBe(2);
    expect(resolveTunQueues('auto', 16)).toBe(16);
    expect(resolveTunQueues('auto', 96)).toBe(TUN_AUTO_QUEUES_MAX);
    expect(TUN_AUTO_QUEUES_MAX).toBe(16);
    expect(resolveTunQueues(5, 96)).toBe(5);
  });

  it('refuses 0, 65, "many", 2.5 naming the value', () => {
    for (const [v, shown] of [
      [0, '0'],
      [65, '65'],
      ['many', '"many"'],
      [2.5, '2.5'],
    ] as const) {
      expect(problems(v)).toEqual([
        `q.json: tun.queues: ${shown} matches none of the allowed forms: an integer 1 to 64, "auto"`,
      ]);
    }
  });

  it('is restart-only: a reload that changes it keeps the running value', () => {
    const current = parseConfig(config(), 'q.json');
    const next = parseConfig(config({ queues: 4 }), 'q.json');
    const plan = reloadPlan(current, next);
    expect(plan.needsRestart).toContain('tun');
    expect(plan.config.tun.queues).toBe(1);
  });

  it('the daemon refuses more than 1 queue (it runs one) with ERR_CONFIG_INVALID at tun.queues', () => {
    expect(() => refuseUnsupportedQueues(parseConfig(config(), 'q.json'))).not.toThrow();
    const e = (() => {
      try {
        refuseUnsupportedQueues(parseConfig(config({ queues: 2 }), 'q.json'));
      } catch (err) {
        return err as ConfigError;
      }
      throw new Error('accepted');
    })();
    expect(e.code).toBe('ERR_CONFIG_INVALID');
    expect(e.problems).toEqual([expect.objectContaining({ path: 'tun.queues', value: 2 })]);
    expect(e.message).toContain('one worker per TUN queue is not supported by the daemon yet');
  });
});

describe('vpm up with tun.queues > 1', () => {
  let lab: NetLab;
  beforeAll(() => {
    requireRoot();
    requireCommands('ip');
    requireVpmBuild();
    lab = new NetLab('queues');
  });
  afterAll(async () => {
    await lab?.cleanup();
  });

  it('refuses to start, exit 2, and leaves the namespace as it was (no TUN device)', async () => {
    const ns = lab.namespace('up');
    const dir = lab.tempDir();
    const file = writeVpmConfig(dir, config({ name: 'vpmq0', queues: 2 }));
    const r = await runVpm(lab, ns, ['up', '-c', file]);
    expect(r.code, r.stdout + r.stderr).toBe(2);
    expect(r.stderr).toContain(`${file}: tun.queues: 2 is more than this vpm runs`);
    expect(r.stderr).toContain('set tun.queues to 1');
    const [cmd, ...args] = nsExec(ns, 'ip', ['-o', 'link', 'show']);
    const links = execFileSync(cmd!, args).toString();
    expect(links).toContain('lo');
    expect(links).not.toContain('vpmq0');
  });
});
