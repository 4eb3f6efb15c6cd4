/**
 * Network namespaces, veth links and processes for `npm run bench:e2e`, and a
 * cleanup that leaves nothing behind.
 *
 * Theory of operation. One `Lab` owns what one benchmark run creates: namespaces
 * named `vpmb-<pid>-<random>-<name>` (unique per run, traceable to the process that
 * made them), a temporary directory, and the processes it spawned (tracked by pid).
 * Devices are created directly inside the lab's namespaces (`ip -n NS link add ...
 * peer ... netns NS2`), so deleting the namespaces deletes them; nothing here
 * touches the root namespace's routes, rules, sysctls or devices.
 *
 * `cleanup()` stops the tracked processes (SIGTERM, SIGKILL after a grace period),
 * kills whatever else still runs inside the namespaces, deletes them and removes
 * the directory. It is idempotent and keeps going past a failed step. On SIGINT,
 * SIGTERM and SIGHUP, and at exit, `cleanupSync()` does the same without grace and
 * the process exits 128 + signal. A run that was SIGKILLed leaves its namespaces;
 * the next run removes those whose owning process is gone (`sweepStale`).
 *
 * Self-contained on purpose: scripts must not import from test/.
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const PREFIX = 'vpmb';
const STALE = new RegExp(`^${PREFIX}-(\\d+)-[0-9a-f]{6}-`);
/** Most output kept per stream of a spawned process. */
const OUTPUT_CAP = 1 << 20;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A spawned process with the output it has written so far. */
export interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly argv: readonly string[];
  stdout: string;
  stderr: string;
  readonly exited: Promise<ExitInfo>;
  /** Set once it has exited. */
  exit: ExitInfo | null;
}

function quote(argv: readonly string[]): string {
  return argv
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}

/** Run a program to completion; return stdout, or throw with the command line and stderr. */
export function run(file: string, args: readonly string[], timeoutMs = 15_000): string {
  try {
    return execFileSync(file, args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: timeoutMs,
      maxBuffer: 16 << 20,
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { status?: number | null; stderr?: string };
    const how =
      err.code === 'ETIMEDOUT'
        ? `timed out after ${timeoutMs} ms`
        : err.status != null
          ? `exited with status ${err.status}`
          : `failed (${err.code ?? err.message})`;
    const stderr = (err.stderr ?? '').trim();
    throw new Error(`${quote([file, ...args])} ${how}${stderr ? `: ${stderr}` : ''}`);
  }
}

/** Like `run`, for input on stdin (nft -f -). */
export function runWithInput(file: string, args: readonly string[], input: string): string {
  try {
    return execFileSync(file, args, { encoding: 'utf8', input, timeout: 15_000 });
  } catch (e) {
    const stderr = ((e as { stderr?: string }).stderr ?? '').trim();
    throw new Error(`${quote([file, ...args])} failed${stderr ? `: ${stderr}` : ''}`);
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function listNamespaces(): string[] {
  return run('ip', ['netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

function pidsIn(ns: string): number[] {
  try {
    return run('ip', ['netns', 'pids', ns], 5000)
      .split('\n')
      .filter((l) => /^\d+$/.test(l.trim()))
      .map(Number);
  } catch {
    return [];
  }
}

function deleteNamespace(ns: string): void {
  try {
    run('ip', ['netns', 'del', ns], 10_000);
  } catch (e) {
    if (listNamespaces().includes(ns)) throw e;
  }
}

/** Remove namespaces and directories of earlier runs whose process no longer exists. */
export function sweepStale(): string[] {
  const removed: string[] = [];
  const stale = (name: string): boolean => {
    const m = STALE.exec(name);
    return m !== null && !isAlive(Number(m[1]));
  };
  for (const ns of listNamespaces().filter(stale)) {
    for (const pid of pidsIn(ns)) killQuietly(pid, 'SIGKILL');
    try {
      deleteNamespace(ns);
      removed.push(ns);
    } catch {
      // busy or already gone: not ours to insist on
    }
  }
  for (const name of readdirSync(tmpdir()).filter(stale)) {
    rmSync(join(tmpdir(), name), { recursive: true, force: true });
    removed.push(join(tmpdir(), name));
  }
  return removed;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

let liveLab: Lab | null = null;
let handlersInstalled = false;

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => liveLab?.cleanupSync());
  const codes = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 } as const;
  for (const sig of Object.keys(codes) as (keyof typeof codes)[]) {
    process.on(sig, () => {
      process.stderr.write(`\nbench:e2e: ${sig}: removing namespaces and processes\n`);
      liveLab?.cleanupSync();
      process.exit(128 + codes[sig]);
    });
  }
}

export class Lab {
  /** `vpmb-<pid>-<random>`: the prefix of every namespace of this run. */
  readonly id: string;
  readonly dir: string;
  private readonly namespaces: string[] = [];
  private readonly procs = new Set<Proc>();

  constructor() {
    if (liveLab !== null) throw new Error('one Lab per process');
    this.id = `${PREFIX}-${process.pid}-${randomBytes(3).toString('hex')}`;
    installHandlers();
    liveLab = this;
    this.dir = mkdtempSync(join(tmpdir(), `${this.id}-`));
  }

  /** Create namespace `<id>-<name>` with loopback up and IPv6 off; return its name. */
  namespace(name: string): string {
    const ns = `${this.id}-${name}`;
    run('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    this.sysctl(ns, 'net.ipv6.conf.all.disable_ipv6', '1');
    this.sysctl(ns, 'net.ipv6.conf.default.disable_ipv6', '1');
    return ns;
  }

  /** A sysctl inside one of the lab's namespaces (never the root namespace). */
  sysctl(ns: string, key: string, value: string): void {
    this.own(ns);
    this.run(ns, 'sysctl', ['-qw', `${key}=${value}`]);
  }

  /** A veth pair created directly inside two of the lab's namespaces, both ends up. */
  veth(a: { ns: string; dev: string }, b: { ns: string; dev: string }): void {
    this.own(a.ns);
    this.own(b.ns);
    run('ip', [
      '-n',
      a.ns,
      'link',
      'add',
      a.dev,
      'type',
      'veth',
      'peer',
      'name',
      b.dev,
      'netns',
      b.ns,
    ]);
    run('ip', ['-n', a.ns, 'link', 'set', a.dev, 'up']);
    run('ip', ['-n', b.ns, 'link', 'set', b.dev, 'up']);
  }

  /** Run a command inside `ns` to completion and return its stdout. */
  run(ns: string, cmd: string, args: readonly string[] = [], timeoutMs = 15_000): string {
    this.own(ns);
    return run('ip', ['netns', 'exec', ns, cmd, ...args], timeoutMs);
  }

  /**
   * Start a command inside `ns` (through `taskset -c CPUS` when `cpus` is given) and
   * track it until cleanup. `ip netns exec` and `taskset` exec in place, so the pid
   * is the command's own.
   */
  spawn(ns: string, cmd: string, args: readonly string[], cpus?: string): Proc {
    this.own(ns);
    const argv = [
      'ip',
      'netns',
      'exec',
      ns,
      ...(cpus ? ['taskset', '-c', cpus] : []),
      cmd,
      ...args,
    ];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid === undefined) throw new Error(`cannot start ${quote(argv)}`);
    let resolveExit!: (e: ExitInfo) => void;
    const p: Proc = {
      child,
      pid: child.pid,
      argv,
      stdout: '',
      stderr: '',
      exit: null,
      exited: new Promise<ExitInfo>((r) => {
        resolveExit = r;
      }),
    };
    child.once('close', (code, signal) => {
      p.exit = { code, signal };
      this.procs.delete(p);
      resolveExit(p.exit);
    });
    child.once('error', (err) => {
      p.stderr += `\n[spawn error: ${err.message}]`;
    });
    for (const stream of ['stdout', 'stderr'] as const) {
      child[stream]!.setEncoding('utf8');
      child[stream]!.on('data', (chunk: string) => {
        if (p[stream].length < OUTPUT_CAP) p[stream] += chunk;
      });
    }
    this.procs.add(p);
    return p;
  }

  /** Describe a process for an error message: its command line and its output. */
  describe(p: Proc): string {
    const exit = p.exit ? ` (exit ${p.exit.code ?? p.exit.signal})` : '';
    return `${quote(p.argv)}${exit}\n--- stdout ---\n${p.stdout.trim()}\n--- stderr ---\n${p.stderr.trim()}`;
  }

  /** Wait for a process to exit; kill it (by pid) and throw if it takes longer than `timeoutMs`. */
  async wait(p: Proc, timeoutMs: number): Promise<ExitInfo> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => {
      timer = setTimeout(() => r('late'), timeoutMs);
    });
    const r = await Promise.race([p.exited, late]);
    clearTimeout(timer);
    if (r === 'late') {
      await this.stop(p, 'SIGKILL', 1000);
      throw new Error(`timed out after ${timeoutMs} ms: ${this.describe(p)}`);
    }
    return r;
  }

  /** Wait until `cond()` holds, polling; fail after `timeoutMs`, naming `what`. */
  async until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline)
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await sleep(25);
    }
  }

  /** Stop a process by pid: `signal`, then SIGKILL after `graceMs`. */
  async stop(p: Proc, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<ExitInfo> {
    if (p.exit) return p.exit;
    killQuietly(p.pid, signal);
    const timer = sleep(graceMs).then(() => 'late' as const);
    if ((await Promise.race([p.exited, timer])) === 'late') killQuietly(p.pid, 'SIGKILL');
    return p.exited;
  }

  /** Stop everything, delete the namespaces and the directory; throw at the end if a step failed. */
  async cleanup(): Promise<void> {
    const errors: string[] = [];
    await Promise.all([...this.procs].map((p) => this.stop(p, 'SIGTERM', 3000)));
    this.removeNamespaces(errors);
    this.removeDir(errors);
    if (liveLab === this) liveLab = null;
    if (errors.length > 0) throw new Error(`cleanup of ${this.id}:\n${errors.join('\n')}`);
  }

  /** `cleanup` without grace, synchronously: for signal and exit handlers. */
  cleanupSync(): void {
    for (const p of this.procs) if (!p.exit) killQuietly(p.pid, 'SIGKILL');
    this.procs.clear();
    this.removeNamespaces([]);
    this.removeDir([]);
    if (liveLab === this) liveLab = null;
  }

  private removeNamespaces(errors: string[]): void {
    while (this.namespaces.length > 0) {
      const ns = this.namespaces.pop()!;
      for (const pid of pidsIn(ns)) killQuietly(pid, 'SIGKILL');
      try {
        deleteNamespace(ns);
      } catch (e) {
        errors.push(`deleting namespace ${ns}: ${(e as Error).message}`);
      }
    }
  }

  private removeDir(errors: string[]): void {
    try {
      rmSync(this.dir, { recursive: true, force: true });
    } catch (e) {
      errors.push(`removing ${this.dir}: ${(e as Error).message}`);
    }
  }

  private own(ns: string): void {
    if (!this.namespaces.includes(ns))
      throw new Error(`namespace ${ns} does not belong to this run`);
  }
}
