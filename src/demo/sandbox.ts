/**
 * A throw-away set of network namespaces for the demo (and anything else that
 * must show vpm without touching the host): unique names, veth links with
 * addresses from 198.18.0.0/15, processes started inside with their pids kept,
 * and one `destroy()` that stops those processes and deletes the namespaces (and
 * with them every device inside). `destroy()` also runs on SIGINT/SIGTERM and at
 * exit, so an interrupted demo leaves nothing behind. Nothing here touches the
 * root namespace's routes, rules or sysctls.
 */

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export class Sandbox {
  readonly prefix: string;
  private readonly namespaces: string[] = [];
  private readonly procs = new Set<ChildProcess>();
  private destroyed = false;
  private readonly onSignal = (sig: NodeJS.Signals) => {
    this.destroy();
    process.kill(process.pid, sig);
  };
  private readonly onExit = () => this.destroy();

  constructor(label: string) {
    this.prefix = `${label}-${process.pid}-${randomBytes(2).toString('hex')}`;
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
    process.once('exit', this.onExit);
  }

  /** Create namespace `<prefix>-<name>` with loopback up; returns its full name. */
  addNamespace(name: string): string {
    const ns = `${this.prefix}-${name}`;
    execFileSync('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    this.ip(ns, 'link', 'set', 'lo', 'up');
    return ns;
  }

  ip(ns: string, ...args: string[]): string {
    return execFileSync('ip', ['-n', ns, ...args], { encoding: 'utf8' });
  }

  /** A veth pair between two namespaces, both ends addressed (CIDR) and up. */
  link(nsA: string, devA: string, cidrA: string, nsB: string, devB: string, cidrB: string): void {
    execFileSync('ip', [
      'link',
      'add',
      devA,
      'netns',
      nsA,
      'type',
      'veth',
      'peer',
      'name',
      devB,
      'netns',
      nsB,
    ]);
    this.ip(nsA, 'addr', 'add', cidrA, 'dev', devA);
    this.ip(nsB, 'addr', 'add', cidrB, 'dev', devB);
    this.ip(nsA, 'link', 'set', devA, 'up');
    this.ip(nsB, 'link', 'set', devB, 'up');
  }

  /** Run a command in a namespace and return its stdout; throws with its stderr. */
  exec(ns: string, cmd: string, args: string[], timeoutMs = 20_000): string {
    return execFileSync('ip', ['netns', 'exec', ns, cmd, ...args], {
      encoding: 'utf8',
      timeout: timeoutMs,
    });
  }

  /** Start a long-running process in a namespace; it is stopped by destroy(). */
  spawn(ns: string, cmd: string, args: string[]): ChildProcess {
    const p = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.procs.add(p);
    p.once('exit', () => this.procs.delete(p));
    return p;
  }

  /** Stop one process by its pid: SIGTERM, then SIGKILL after `graceMs`. */
  async stop(p: ChildProcess, graceMs = 5000): Promise<number | null> {
    if (p.exitCode !== null || p.signalCode !== null) return p.exitCode;
    const exited = new Promise<number | null>((resolve) => p.once('exit', (code) => resolve(code)));
    p.kill('SIGTERM');
    const timer = setTimeout(() => p.kill('SIGKILL'), graceMs);
    const code = await exited;
    clearTimeout(timer);
    return code;
  }

  /** Stop every process, delete every namespace. Idempotent and synchronous. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
    process.off('exit', this.onExit);
    for (const p of this.procs) {
      if (p.pid !== undefined && p.exitCode === null) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    for (const ns of this.namespaces.reverse()) {
      // Anything still running inside (children of the processes above) goes first.
      try {
        const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' })
          .split(/\s+/)
          .filter(Boolean);
        for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
      } catch {
        // namespace gone or no pids
      }
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // already deleted
      }
    }
  }
}
