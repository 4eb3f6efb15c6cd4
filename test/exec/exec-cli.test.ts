/*
 * `vpm exec` as a process: it passes its program's exit status and death by
 * signal through exactly, forwards the termination signals, fails like a
 * shell for a missing or non-executable command, and refuses clearly (exit 1)
 * when the daemon is not running, the AID is unknown or there is no pool. The
 * real CLI against real daemons.
 *
 *   ns pool                                  ns nopool
 *  ┌──────────────────────────────────┐     ┌──────────────────────────────┐
 *  │ vpm up (pool 20000-20009,        │     │ vpm up (no pool)             │
 *  │         waitTimeoutMs 1000)      │     │ vpm exec ... → exit 1        │
 *  │ vpm exec --aid tenant-a -- ...   │     └──────────────────────────────┘
 *  └──────────────────────────────────┘
 */

import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  requireVpmBuild,
  runVpm,
  type VpmConfigFile,
  VpmDaemon,
  vpmArgv,
  withTimeout,
} from '../support/vpm.js';
import { PRELOAD_LIB, requirePreload } from './helpers.js';

const BASE: VpmConfigFile = {
  services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
  applications: [{ aid: 'tenant-a', instances: [] }],
  default: { refuse: true },
};

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('vpm exec: exit status, signals, refusals', () => {
  let lab: NetLab;
  let ns: string;
  let nsNoPool: string;
  let dir: string;
  let vpm: VpmDaemon;
  let noPool: VpmDaemon;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'gcc', 'sh');
    requireVpmBuild();
    requirePreload();
    lab = new NetLab('execcli');
    ns = lab.namespace('pool');
    nsNoPool = lab.namespace('nopool');
    dir = lab.tempDir();
    [vpm, noPool] = await Promise.all([
      VpmDaemon.start(lab, ns, {
        ...BASE,
        pool: { range: '20000-20009', quarantineMs: 500, waitTimeoutMs: 1000 },
      }),
      VpmDaemon.start(lab, nsNoPool, BASE),
    ]);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  const execArgs = (argv: readonly string[], aid = 'tenant-a'): string[] => [
    'exec',
    '--aid',
    aid,
    '-s',
    vpm.socket,
    '--',
    ...argv,
  ];

  it('passes the exit status through', async () => {
    for (const status of [0, 3, 255]) {
      const r = await runVpm(lab, ns, execArgs(['sh', '-c', `exit ${status}`]));
      expect(r, r.stderr).toMatchObject({ code: status, signal: null });
    }
  });

  it('a program killed by a signal: vpm exec ends by the same signal', async () => {
    for (const sig of ['TERM', 'KILL', 'INT'] as const) {
      const r = await runVpm(lab, ns, execArgs(['sh', '-c', `kill -${sig} $$`]));
      expect(r, r.stderr).toMatchObject({ code: null, signal: `SIG${sig}` });
    }
  });

  it('forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the program', async () => {
    const codes = { INT: 10, TERM: 11, HUP: 12, QUIT: 13, USR1: 14, USR2: 15 } as const;
    const traps = Object.entries(codes)
      .map(([sig, code]) => `trap 'exit ${code}' ${sig};`)
      .join(' ');
    const script = `${traps} echo ready; while :; do sleep 0.05; done`;
    await Promise.all(
      Object.entries(codes).map(async ([sig, code]) => {
        const child = lab.spawn(ns, process.execPath, [
          ...vpmArgv(),
          ...execArgs(['sh', '-c', script]),
        ]);
        await lab.waitForOutput(child, /ready/, { stream: 'stdout', timeoutMs: 15_000 });
        process.kill(child.pid!, `SIG${sig}` as NodeJS.Signals);
        const exit = await withTimeout(lab.exited(child), 10_000, `exit after SIG${sig}`);
        expect(exit, `SIG${sig}`).toEqual({ code, signal: null });
      }),
    );
  });

  it('SIGTERM to vpm exec ends a program that does not catch it, and vpm exec shows SIGTERM', async () => {
    const child = lab.spawn(ns, process.execPath, [
      ...vpmArgv(),
      ...execArgs(['sh', '-c', 'echo $$; exec sleep 30']),
    ]);
    await lab.waitForOutput(child, /^\d+\n/, { stream: 'stdout', timeoutMs: 15_000 });
    const sleeper = Number(lab.output(child).stdout.trim());
    expect(alive(sleeper)).toBe(true);
    process.kill(child.pid!, 'SIGTERM');
    const exit = await withTimeout(lab.exited(child), 10_000, 'exit after SIGTERM');
    expect(exit).toEqual({ code: null, signal: 'SIGTERM' });
    await waitFor(() => !alive(sleeper), { what: `pid ${sleeper} to be gone` });
  });

  it('like a shell: 127 for a missing command, 126 for one that is not executable', async () => {
    const missing = await runVpm(lab, ns, execArgs(['no-such-command-vpm-test']));
    expect(missing).toMatchObject({ code: 127, signal: null });
    expect(missing.stderr).toContain('vpm: no-such-command-vpm-test: command not found');
    const file = join(dir, 'not-executable.sh');
    writeFileSync(file, '#!/bin/sh\necho hi\n', { mode: 0o644 });
    const notExec = await runVpm(lab, ns, execArgs([file]));
    expect(notExec).toMatchObject({ code: 126, signal: null });
    expect(notExec.stderr).toContain(`vpm: ${file}: permission denied`);
  });

  it('sets LD_PRELOAD (before an existing one) and the VPM_* settings from hello', async () => {
    const other = join(dir, 'libempty.so');
    execFileSync('gcc', ['-shared', '-fPIC', '-o', other, '-x', 'c', '/dev/null']);
    const child = lab.spawn(
      ns,
      process.execPath,
      [
        ...vpmArgv(),
        ...execArgs([
          'sh',
          '-c',
          'printf "%s\\n" "$LD_PRELOAD" "$VPM_SOCKET" "$VPM_AID" "$VPM_PORTS" "$VPM_TIMEOUT_MS" "$VPM_DEBUG"',
        ]),
      ],
      { env: { ...process.env, LD_PRELOAD: other } },
    );
    const exit = await withTimeout(lab.exited(child), 15_000, 'vpm exec sh');
    expect(exit).toEqual({ code: 0, signal: null });
    expect(lab.output(child).stdout.split('\n')).toEqual([
      `${PRELOAD_LIB}:${other}`,
      vpm.socket,
      'tenant-a',
      'tcp:9000',
      String(3000 + 1000), // the library's 3 s plus the pool's waitTimeoutMs
      '', // VPM_DEBUG: only with --debug
      '',
    ]);
  });

  it('refuses with exit 1 and a clear message: no daemon, unknown AID; notes a daemon without a pool', async () => {
    const none = join(dir, 'no-daemon.sock');
    const down = await runVpm(lab, ns, ['exec', '--aid', 'tenant-a', '-s', none, '--', 'true']);
    expect(down).toMatchObject({ code: 1, signal: null });
    expect(down.stderr).toContain(`vpm: vpm is not running (no daemon at ${none})`);

    const unknown = await runVpm(lab, ns, execArgs(['true'], 'tenant-zz'));
    expect(unknown).toMatchObject({ code: 1, signal: null });
    expect(unknown.stderr).toContain('vpm: AID "tenant-zz" is not in the configuration');

    const nopool = await runVpm(lab, nsNoPool, [
      'exec',
      '--aid',
      'tenant-a',
      '-c',
      noPool.configPath,
      '--',
      'true',
    ]);
    // A client program is fine without a pool (its connects are reported); binds would be refused.
    expect(nopool).toMatchObject({ code: 0, signal: null });
    expect(nopool.stderr).toContain(`vpm: note: the daemon at ${noPool.socket} has no port pool`);
  });

  it('usage errors exit 2: no --aid, no command, both -c and -s, a bad --timeout', async () => {
    for (const args of [
      ['exec', '-s', vpm.socket, '--', 'true'],
      ['exec', '--aid', 'tenant-a', '-s', vpm.socket],
      ['exec', '--aid', 'tenant-a', '-s', vpm.socket, '-c', vpm.configPath, '--', 'true'],
      ['exec', '--aid', 'tenant-a', '-s', vpm.socket, '--timeout', 'soon', '--', 'true'],
    ]) {
      const r = await runVpm(lab, ns, args);
      expect(r, args.join(' ')).toMatchObject({ code: 2, signal: null });
    }
  });

  it("the program's own options stay its own, even those that look like vpm's (-c, -s)", async () => {
    const r = await runVpm(lab, ns, [
      'exec',
      '--aid',
      'tenant-a',
      '-s',
      vpm.socket,
      'sh',
      '-c',
      'echo "$0 $1"',
      '-s',
    ]);
    expect(r).toMatchObject({ code: 0, signal: null, stdout: '-s \n' });
  });
});
