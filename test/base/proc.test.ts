/**
 * Process identity (src/base/proc.ts): the start time of /proc/PID/stat, read
 * past a command name that holds spaces and ')', and sameProcess against
 * exits, zombies and other start times. Real processes, no mocks.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { procStart, sameProcess } from '../../src/base/proc.js';

const children: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const c of children.splice(0))
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function start(cmd: string, args: string[]): ChildProcess {
  const c = spawn(cmd, args, { stdio: 'ignore' });
  children.push(c);
  return c;
}

const exited = (c: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) resolve();
    else c.once('exit', () => resolve());
  });

/** Wait (no time limit but the test's) until `pred` holds, re-checking after each event-loop turn. */
async function until(pred: () => boolean): Promise<void> {
  while (!pred()) await new Promise((r) => setTimeout(r, 5));
}

describe('procStart / sameProcess', () => {
  it("reads this process's start time, which only this process has", () => {
    const s = procStart(process.pid);
    expect(s).toMatch(/^[0-9]+$/);
    expect(sameProcess(process.pid, s!)).toBe(true);
    expect(sameProcess(process.pid, String(Number(s) + 1))).toBe(false);
    expect(procStart(0)).toBeNull();
    expect(procStart(-1)).toBeNull();
    expect(procStart(2 ** 31)).toBeNull();
  });

  it("counts fields after the command name's last ')', however the program named itself", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vpm-proc-'));
    dirs.push(dir);
    // comm is the first 15 bytes of the file name: "x) 1 2 3 (y) z".
    const odd = join(dir, 'x) 1 2 3 (y) z');
    copyFileSync('/bin/sleep', odd);
    chmodSync(odd, 0o755);
    const c = start(odd, ['30']);
    await until(() => readFileSync(`/proc/${c.pid}/stat`, 'utf8').includes('(x) 1 2 3 (y) z)'));
    const stat = readFileSync(`/proc/${c.pid}/stat`, 'utf8');
    // Field 22 as a naive split past the real comm would find it.
    const expected = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    expect(procStart(c.pid!)).toBe(expected);
    expect(sameProcess(c.pid!, expected!)).toBe(true);
    // A split of the whole line on spaces would have read another field.
    expect(stat.split(' ')[21]).not.toBe(expected);
  });

  it('says a process that exited, or a zombie, is not the same process', async () => {
    const c = start('sleep', ['30']);
    const s = procStart(c.pid!)!;
    expect(sameProcess(c.pid!, s)).toBe(true);
    c.kill('SIGKILL');
    await exited(c);
    expect(sameProcess(c.pid!, s)).toBe(false);

    // A zombie: sh starts `sleep 0` in the background and becomes `sleep 30`
    // (exec), which never reaps it.
    const p = start('sh', ['-c', 'sleep 0 & exec sleep 30']);
    const kids = () => {
      try {
        return readFileSync(`/proc/${p.pid}/task/${p.pid}/children`, 'utf8').trim();
      } catch {
        return '';
      }
    };
    await until(() => kids() !== '');
    const z = Number(kids().split(' ')[0]);
    const zs = procStart(z)!;
    await until(() => {
      const st = readFileSync(`/proc/${z}/stat`, 'utf8');
      return st.slice(st.lastIndexOf(')') + 2).startsWith('Z');
    });
    expect(procStart(z)).toBe(zs);
    expect(sameProcess(z, zs)).toBe(false);
  });
});
