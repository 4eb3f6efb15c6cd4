/**
 * Network namespaces, veth links and processes for `npm run bench:e2e`: a thin
 * layer over the project's namespace lab (src/sandbox/netlab.ts, which the demo
 * and the integration tests use too), adding what the benchmark needs — CPU
 * pinning at start (taskset), process records with their output, and waits with
 * deadlines. The lab names its namespaces `vpmt-<pid>-<random>-bench-<name>`,
 * removes everything it made on cleanup, on SIGINT/SIGTERM/SIGHUP and at exit,
 * and sweeps what a SIGKILLed run left behind.
 */

import type { ChildProcess } from 'node:child_process';
import { type ExitInfo, NetLab, runCommand, sweepStale } from '../../../src/sandbox/netlab.js';

export type { ExitInfo };
export { sweepStale };

/** A spawned process with the output it has written so far. */
export interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly argv: readonly string[];
  readonly stdout: string;
  readonly stderr: string;
  readonly exited: Promise<ExitInfo>;
  /** Set once it has exited. */
  readonly exit: ExitInfo | null;
}

function quote(argv: readonly string[]): string {
  return argv
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}

/** Run a program to completion; return stdout, or throw with the command line and stderr. */
export function run(file: string, args: readonly string[], timeoutMs = 15_000): string {
  return runCommand(file, args, { timeoutMs });
}

/** Like `run`, with input on stdin (nft -f -). */
export function runWithInput(file: string, args: readonly string[], input: string): string {
  return runCommand(file, args, { input });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class Lab {
  private readonly lab = new NetLab('bench');
  /** The prefix of every namespace of this run. */
  readonly id = `${this.lab.id}-bench`;
  readonly dir = this.lab.tempDir();

  /** Create namespace `<id>-<name>` with loopback up and IPv6 on (the IPv6 paths); return its name. */
  namespace(name: string): string {
    return this.lab.namespace(name);
  }

  /** A sysctl inside one of the lab's namespaces (never the root namespace). */
  sysctl(ns: string, key: string, value: string): void {
    this.lab.run(ns, 'sysctl', ['-qw', `${key}=${value}`]);
  }

  /** A veth pair created directly inside two of the lab's namespaces, both ends up. */
  veth(a: { ns: string; dev: string }, b: { ns: string; dev: string }): void {
    this.lab.veth(a, b);
  }

  /** Run a command inside `ns` to completion and return its stdout. */
  run(ns: string, cmd: string, args: readonly string[] = [], timeoutMs = 15_000): string {
    return this.lab.run(ns, cmd, args, { timeoutMs });
  }

  /** Start a process inside `ns`, pinned to `cpus` (a taskset list) when given. */
  spawn(ns: string, cmd: string, args: readonly string[], cpus?: string): Proc {
    const argv = cpus ? ['taskset', '-c', cpus, cmd, ...args] : [cmd, ...args];
    const child = this.lab.spawn(ns, argv[0]!, argv.slice(1));
    if (child.pid === undefined) throw new Error(`cannot start ${quote(argv)}`);
    const lab = this.lab;
    let exit: ExitInfo | null = null;
    const exited = lab.exited(child).then((e) => {
      exit = e;
      return e;
    });
    return {
      child,
      pid: child.pid,
      argv,
      get stdout() {
        return lab.output(child).stdout;
      },
      get stderr() {
        return lab.output(child).stderr;
      },
      exited,
      get exit() {
        return exit;
      },
    };
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
  stop(p: Proc, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<ExitInfo> {
    return this.lab.stop(p.child, signal, graceMs);
  }

  /** Stop everything, delete the namespaces and the directory. */
  cleanup(): Promise<void> {
    return this.lab.cleanup();
  }
}
