/**
 * Network namespaces for integration tests and `vpm demo`: hosts, veth links
 * between them, commands and long-running processes inside them, and a cleanup
 * that leaves nothing behind.
 *
 * Theory of operation. A `NetLab` owns everything one test file creates. Its
 * namespaces are named `vpmt-<pid>-<random>-<label>-<name>`, so two test files (or two
 * engineers) running at once never collide, and a leftover can be traced to the
 * process that made it. Devices are only ever created inside the lab's namespaces
 * (`ip link add ... netns N`), so deleting the namespaces removes them; the root
 * namespace's routes, rules, sysctls and devices are never touched.
 *
 * Processes started with `spawn` are tracked by pid. `cleanup()` stops them
 * (SIGTERM, then SIGKILL after a grace period), kills whatever else still runs
 * inside the lab's namespaces (a namespace, and its veths, live on as long as a
 * process is in it), deletes the namespaces, and removes the lab's temporary
 * directories. It is idempotent, and it keeps going past a failed step so that
 * one error does not strand the rest.
 *
 * A test that dies without reaching afterAll is covered too: on SIGINT, SIGTERM,
 * SIGHUP and at process exit every live lab is cleaned up synchronously. Only a
 * SIGKILL escapes that; the next `NetLab` then removes namespaces and directories
 * whose owning process no longer exists (`sweepStale`).
 *
 * It shells out to iproute2 and ethtool and throws readable errors: control-plane
 * code for tests and the demo, never for the daemon. What `vpm demo` can meet is a
 * LabError (a failed command, a cleanup that left something behind); the guards
 * that only tests call (requireRoot, requireCommands, waitFor) and misuse of the
 * lab (a bad label, a process it did not start) throw plain Errors.
 */

import { type ChildProcess, execFileSync, spawn as spawnProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { VpmError } from '../base/errors.js';

export type LabErrorCode =
  /** A command (ip, ethtool, a program run to completion) failed: argv, status and stderr in the message. */
  | 'ERR_LAB_COMMAND'
  /** cleanup() could not stop, kill or delete everything: the message lists what is left. */
  | 'ERR_LAB_CLEANUP';

export class LabError extends VpmError<LabErrorCode> {}

const NS_PREFIX = 'vpmt';
const STALE_NS = new RegExp(`^${NS_PREFIX}-(\\d+)-[0-9a-f]{6}-`);
/** Most output kept per stream of a spawned process; the rest is dropped (and said so). */
const OUTPUT_CAP = 1 << 20;

/** Fail the calling test (never skip it) unless it runs as root. */
export function requireRoot(): void {
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  if (uid !== 0) {
    throw new Error(
      `this integration test must run as root (uid 0, it creates network namespaces); it runs as uid ${uid}. ` +
        'It fails rather than skips, so that a missing privilege is never mistaken for a pass.',
    );
  }
}

/** Fail the calling test unless every named program is on PATH. */
export function requireCommands(...names: string[]): void {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  const missing = names.filter(
    (name) =>
      !dirs.some((dir) => {
        try {
          accessSync(join(dir, name), constants.X_OK);
          return true;
        } catch {
          return false;
        }
      }),
  );
  if (missing.length > 0) {
    throw new Error(
      `this integration test needs ${missing.join(', ')} on PATH (${dirs.join(':')})`,
    );
  }
}

/** argv for running `cmd args...` inside namespace `ns` (`ip netns exec` execs in place: same pid). */
export function nsExec(ns: string, cmd: string, args: readonly string[] = []): string[] {
  return ['ip', 'netns', 'exec', ns, cmd, ...args];
}

export interface WaitOptions {
  /** What is awaited, for the timeout message. */
  what: string;
  /** Default 5000. */
  timeoutMs?: number;
  /** Default 25. */
  intervalMs?: number;
}

/**
 * Poll `cond` until it returns true; throw after the timeout, naming `what` and the
 * last error `cond` threw, if any (a throwing condition counts as not yet true).
 */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  opts: WaitOptions,
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const intervalMs = opts.intervalMs ?? 25;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      if (await cond()) return;
      lastError = null;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what}${why}`);
    }
    await sleep(intervalMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export interface RunOptions {
  /** Kill the command after this long. Default 15000. */
  timeoutMs?: number;
  /** Written to the command's stdin. */
  input?: string | Uint8Array;
}

/**
 * Run a program to completion and return its stdout; throw an error that shows the
 * command line, the exit status or signal, and stderr, when it fails.
 */
export function runCommand(file: string, args: readonly string[], opts: RunOptions = {}): string {
  try {
    return execFileSync(file, args, {
      encoding: 'utf8',
      input: opts.input,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      timeout: opts.timeoutMs ?? 15_000,
      maxBuffer: 64 << 20,
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & {
      status?: number | null;
      signal?: string | null;
      stderr?: string;
      stdout?: string;
    };
    const how =
      err.code === 'ETIMEDOUT'
        ? `timed out after ${opts.timeoutMs ?? 15_000} ms`
        : err.status != null
          ? `exited with status ${err.status}`
          : err.signal
            ? `was killed by ${err.signal}`
            : `failed to start (${err.code ?? err.message})`;
    const stderr = (err.stderr ?? '').trim();
    throw new LabError(
      'ERR_LAB_COMMAND',
      `command ${quote([file, ...args])} ${how}${stderr ? `\n--- stderr ---\n${stderr}` : ''}`,
    );
  }
}

function quote(argv: readonly string[]): string {
  return argv
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface Tracked {
  argv: string[];
  stdout: string;
  stderr: string;
  exited: Promise<ExitInfo>;
}

export interface SpawnOptions {
  /** Default 'ignore'. */
  stdin?: 'ignore' | 'pipe';
  env?: NodeJS.ProcessEnv;
  /** Working directory of the command; default the test process's. */
  cwd?: string;
}

/** One end of a veth link. */
export interface VethEnd {
  /** Full namespace name, as `namespace()` returned it. */
  ns: string;
  /** Device name inside that namespace (at most 15 characters). */
  dev: string;
  /** Address with prefix length, e.g. '198.18.0.1/24'; omitted: no address. */
  cidr?: string;
}

/** Offloads that make captured packets differ from the wire (see `setOffloads`). */
const OFFLOAD_FEATURES = ['tx', 'rx', 'tso', 'gso', 'gro'] as const;

/** Live labs, for the signal and exit handlers. */
const liveLabs = new Set<NetLab>();
let handlersInstalled = false;

function installProcessHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    for (const lab of liveLabs) lab.cleanupSync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      for (const lab of liveLabs) lab.cleanupSync();
      process.removeListener(sig, onSignal);
      // With nobody else listening, re-raise so the default action (exit) happens.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
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

/** Pids of the processes inside namespace `ns` (none if it is already gone). */
function pidsIn(ns: string): number[] {
  try {
    return runCommand('ip', ['netns', 'pids', ns], { timeoutMs: 5000 })
      .split('\n')
      .filter((l) => /^\d+$/.test(l.trim()))
      .map(Number);
  } catch {
    return [];
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function listNamespaces(): string[] {
  return runCommand('ip', ['netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

function deleteNamespace(ns: string): void {
  try {
    runCommand('ip', ['netns', 'del', ns], { timeoutMs: 10_000 });
  } catch (e) {
    if (listNamespaces().includes(ns)) throw e; // else: somebody already removed it
  }
}

/**
 * Delete test namespaces (with any process still inside them) and temporary
 * directories left by a process that no longer exists: a run that was SIGKILLed.
 * What belongs to a live process is never touched. Returns what was removed.
 */
export function sweepStale(): string[] {
  const removed: string[] = [];
  const stale = (name: string): boolean => {
    const m = STALE_NS.exec(name);
    return m !== null && !isAlive(Number(m[1]));
  };
  for (const ns of listNamespaces().filter(stale)) {
    for (const pid of pidsIn(ns)) killQuietly(pid, 'SIGKILL');
    try {
      deleteNamespace(ns);
      removed.push(ns);
    } catch {
      // another sweeper got there first, or it is busy: not this test's concern
    }
  }
  for (const name of readdirSync(tmpdir()).filter(stale)) {
    rmSync(join(tmpdir(), name), { recursive: true, force: true });
    removed.push(join(tmpdir(), name));
  }
  return removed;
}

export class NetLab {
  /** `vpmt-<pid>-<random>`: the prefix of every namespace this lab creates. */
  readonly id: string;
  private readonly namespaces: string[] = [];
  private readonly dirs: string[] = [];
  private readonly procs = new Map<ChildProcess, Tracked>();

  /** `label` goes into the namespace names, to tell test files apart in `ip netns list`. */
  constructor(readonly label: string) {
    if (!/^[a-z0-9]{1,16}$/.test(label))
      throw new Error(`bad lab label "${label}": use [a-z0-9]{1,16}`);
    this.id = `${NS_PREFIX}-${process.pid}-${randomBytes(3).toString('hex')}`;
    installProcessHandlers();
    liveLabs.add(this);
    sweepStale();
  }

  /**
   * Create namespace `<id>-<label>-<name>` with its loopback up, and return its full
   * name. `ipv6: false` turns IPv6 off inside it, which keeps router solicitations
   * and neighbour discovery out of captures.
   */
  namespace(name: string, opts: { ipv6?: boolean } = {}): string {
    const ns = `${this.id}-${this.label}-${name}`;
    runCommand('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    runCommand('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    if (opts.ipv6 === false) {
      this.run(ns, 'sysctl', [
        '-qw',
        'net.ipv6.conf.all.disable_ipv6=1',
        'net.ipv6.conf.default.disable_ipv6=1',
      ]);
    }
    return ns;
  }

  /**
   * A veth pair between two of the lab's namespaces (created directly inside them),
   * with addresses and both ends up. `offloads: false` turns checksum and
   * segmentation offloads off on both ends first (see `setOffloads`).
   */
  veth(a: VethEnd, b: VethEnd, opts: { offloads?: boolean } = {}): void {
    for (const end of [a, b]) {
      if (!this.namespaces.includes(end.ns)) {
        throw new Error(`veth end ${end.dev}: namespace ${end.ns} does not belong to this lab`);
      }
    }
    runCommand('ip', [
      'link',
      'add',
      a.dev,
      'netns',
      a.ns,
      'type',
      'veth',
      'peer',
      'name',
      b.dev,
      'netns',
      b.ns,
    ]);
    for (const end of [a, b]) {
      if (opts.offloads === false) this.setOffloads(end.ns, end.dev, false);
      if (end.cidr) runCommand('ip', ['-n', end.ns, 'addr', 'add', end.cidr, 'dev', end.dev]);
      runCommand('ip', ['-n', end.ns, 'link', 'set', end.dev, 'up']);
    }
  }

  /**
   * Turn checksum offload (tx, rx) and segmentation/receive offloads (tso, gso, gro)
   * on or off for a device. With them on, a capture on a veth shows what the stack
   * handed over, not what a wire would carry: unfilled partial checksums and 64 KiB
   * super-packets.
   */
  setOffloads(ns: string, dev: string, on: boolean): void {
    const state = on ? 'on' : 'off';
    this.run(ns, 'ethtool', ['-K', dev, ...OFFLOAD_FEATURES.flatMap((f) => [f, state])]);
  }

  /** `ethtool -k` of a device as feature name → on. */
  features(ns: string, dev: string): Map<string, boolean> {
    const out = new Map<string, boolean>();
    for (const line of this.run(ns, 'ethtool', ['-k', dev]).split('\n')) {
      const m = /^\s*([\w-]+):\s+(on|off)\b/.exec(line);
      if (m) out.set(m[1]!, m[2] === 'on');
    }
    return out;
  }

  /** A fresh temporary directory (mode 0700), removed with the lab. */
  tempDir(): string {
    const dir = mkdtempSync(join(tmpdir(), `${this.id}-${this.label}-`));
    this.dirs.push(dir);
    return dir;
  }

  /** Run a command inside `ns` to completion; return stdout, throw with stderr on failure. */
  run(ns: string, cmd: string, args: readonly string[] = [], opts: RunOptions = {}): string {
    const [file, ...rest] = nsExec(ns, cmd, args);
    return runCommand(file!, rest, opts);
  }

  /**
   * Start a command inside `ns` and track it until cleanup. Its stdout and stderr
   * are collected (see `output`, `waitForOutput`). The pid is the command's own.
   */
  spawn(
    ns: string,
    cmd: string,
    args: readonly string[] = [],
    opts: SpawnOptions = {},
  ): ChildProcess {
    const argv = nsExec(ns, cmd, args);
    const child = spawnProcess(argv[0]!, argv.slice(1), {
      stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    });
    const t: Tracked = {
      argv,
      stdout: '',
      stderr: '',
      exited: new Promise<ExitInfo>((resolve) => {
        let exit: ExitInfo | null = null;
        // 'close' comes after the output is all read; a descendant holding the
        // pipes open must not hang us, so 'exit' plus a second will do as well.
        child.once('close', (code, signal) => resolve(exit ?? { code, signal }));
        child.once('exit', (code, signal) => {
          exit = { code, signal };
          setTimeout(() => resolve({ code, signal }), 1000).unref();
        });
        child.once('error', (err) => {
          t.stderr += `\n[spawn error: ${err.message}]`;
          resolve({ code: null, signal: null });
        });
      }),
    };
    for (const stream of ['stdout', 'stderr'] as const) {
      child[stream]!.setEncoding('utf8');
      child[stream]!.on('data', (chunk: string) => {
        if (t[stream].length < OUTPUT_CAP) t[stream] += chunk;
        else if (!t[stream].endsWith('[output cut]')) t[stream] += '[output cut]';
      });
    }
    this.procs.set(child, t);
    return child;
  }

  /** The stdout and stderr a spawned process has written so far. */
  output(child: ChildProcess): { stdout: string; stderr: string } {
    const t = this.tracked(child);
    return { stdout: t.stdout, stderr: t.stderr };
  }

  /** Resolves when a spawned process has exited (and its output is read). */
  exited(child: ChildProcess): Promise<ExitInfo> {
    return this.tracked(child).exited;
  }

  /**
   * Wait until a spawned process's stdout or stderr matches `pattern`; fail early
   * if it exits first, showing what it wrote.
   */
  async waitForOutput(
    child: ChildProcess,
    pattern: RegExp,
    opts: { stream?: 'stdout' | 'stderr'; timeoutMs?: number } = {},
  ): Promise<void> {
    const t = this.tracked(child);
    const text = (): string => (opts.stream ? t[opts.stream] : `${t.stdout}\n${t.stderr}`);
    const hasExited = (): boolean => child.exitCode !== null || child.signalCode !== null;
    const fail = (why: string): Error =>
      new Error(
        `${why} waiting for ${pattern} from ${quote(t.argv)}\n--- stdout ---\n${t.stdout}\n--- stderr ---\n${t.stderr}`,
      );
    const timeoutMs = opts.timeoutMs ?? 5000;
    try {
      await waitFor(() => pattern.test(text()) || hasExited(), { what: `${pattern}`, timeoutMs });
    } catch {
      throw fail(`timed out after ${timeoutMs} ms`);
    }
    if (pattern.test(text())) return;
    const exit = await t.exited; // its last words may still be in the pipe
    if (!pattern.test(text())) throw fail(`it exited (${exit.code ?? exit.signal}) first`);
  }

  /**
   * Stop a spawned process by its pid: `signal` (default SIGTERM), then SIGKILL if
   * it is still running after `graceMs`. Resolves with how it ended.
   */
  async stop(
    child: ChildProcess,
    signal: NodeJS.Signals = 'SIGTERM',
    graceMs = 3000,
  ): Promise<ExitInfo> {
    const t = this.tracked(child);
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      killQuietly(child.pid, signal);
      const timer = sleep(graceMs).then(() => 'timeout' as const);
      if ((await Promise.race([t.exited, timer])) === 'timeout') killQuietly(child.pid, 'SIGKILL');
    }
    return t.exited;
  }

  /**
   * Stop every tracked process, kill anything else left inside the lab's
   * namespaces, and delete the namespaces (which deletes their devices). Safe to
   * call more than once; throws at the end if some step failed.
   */
  async cleanup(): Promise<void> {
    const errors: string[] = [];
    await Promise.all(
      [...this.procs.keys()].map(async (child) => {
        try {
          await this.stop(child, 'SIGTERM', 2000);
        } catch (e) {
          errors.push(`stopping pid ${child.pid}: ${(e as Error).message}`);
        }
      }),
    );
    this.procs.clear();
    this.removeNamespaces(errors);
    this.removeDirs(errors);
    liveLabs.delete(this);
    if (errors.length > 0)
      throw new LabError('ERR_LAB_CLEANUP', `NetLab ${this.id} cleanup:\n${errors.join('\n')}`);
  }

  /** The same as `cleanup`, synchronously and without grace: for signal and exit handlers. */
  cleanupSync(): void {
    for (const child of this.procs.keys()) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        killQuietly(child.pid, 'SIGKILL');
      }
    }
    this.procs.clear();
    this.removeNamespaces([]);
    this.removeDirs([]);
    liveLabs.delete(this);
  }

  private removeDirs(errors: string[]): void {
    while (this.dirs.length > 0) {
      const dir = this.dirs.pop()!;
      try {
        rmSync(dir, { recursive: true, force: true });
      } catch (e) {
        errors.push(`removing ${dir}: ${(e as Error).message}`);
      }
    }
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

  private tracked(child: ChildProcess): Tracked {
    const t = this.procs.get(child);
    if (!t) throw new Error(`pid ${child.pid} was not started by NetLab ${this.id}`);
    return t;
  }
}
