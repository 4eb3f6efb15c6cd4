/**
 * The real vpm daemon in a test: start `vpm up` inside a NetLab namespace, wait
 * until it is ready, read its counters and flows, stop or kill it, and run the
 * other `vpm` subcommands the way a user would.
 *
 * Theory of operation. Every daemon gets its own directory from `lab.tempDir()`:
 * the config file is written there, and the control socket (hence the journal of
 * host changes, which lives beside it) is put there too, so two test files, each
 * with a daemon named vpm0 in its own namespace, never share a socket or a journal.
 * The daemon is the real CLI, spawned through `lab.spawn`, so it is tracked by pid
 * and killed with the lab on failure.
 * Control-socket queries are made from the test process itself: a unix socket path
 * is not namespaced, only its daemon is.
 *
 * Which code runs: the compiled CLI (`dist/src/cli/main.js`) when dist/ is current,
 * otherwise the TypeScript sources themselves through the test TS loader (slower to
 * start, ~2 s, but never stale): a test of stale JavaScript would pass or fail for
 * reasons that are not in src/. `VPM_TEST_CLI=dist` or `=src` forces one of them
 * (`dist` then fails when dist/ is stale).
 */

import type { ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { controlRequest } from '../../src/control/client.js';
import type { ExitInfo, NetLab } from './netns.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const VPM_DIST_MAIN = join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
export const VPM_SRC_MAIN = join(REPO_ROOT, 'src', 'cli', 'main.ts');
const TS_LOADER = join(REPO_ROOT, 'test', 'tun', 'fixtures', 'ts-loader.mjs');
const NATIVE_ADDON = join(REPO_ROOT, 'native', 'build', 'Release', 'vpm_native.node');

/** Files under src/ whose compiled .js in dist/ is missing or older. */
export function staleDist(): string[] {
  const stale: string[] = [];
  const walk = (dir: string): void => {
    for (const ent of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, ent.name);
      if (ent.isDirectory()) walk(path);
      else if (ent.name.endsWith('.ts') && !ent.name.endsWith('.d.ts')) {
        const js = join(REPO_ROOT, 'dist', relative(REPO_ROOT, path)).replace(/\.ts$/, '.js');
        if (!existsSync(js) || statSync(js).mtimeMs < statSync(path).mtimeMs)
          stale.push(relative(REPO_ROOT, path));
      }
    }
  };
  walk(join(REPO_ROOT, 'src'));
  return stale;
}

/** Throw unless the native addon is built (both ways of running vpm load it). */
export function requireVpmBuild(): void {
  if (!existsSync(NATIVE_ADDON))
    throw new Error(`${NATIVE_ADDON} is missing: run \`npm run build:native\``);
}

/** The node arguments that run the `vpm` CLI (see the top of this file for which one). */
export function vpmArgv(): string[] {
  const mode = process.env.VPM_TEST_CLI ?? 'auto';
  if (mode === 'src') return ['--import', TS_LOADER, VPM_SRC_MAIN];
  const stale = staleDist();
  if (stale.length === 0) return [VPM_DIST_MAIN];
  if (mode === 'dist') {
    throw new Error(
      `VPM_TEST_CLI=dist, but dist/ is older than src/ (${stale.slice(0, 5).join(', ')}${stale.length > 5 ? ', ...' : ''}): ` +
        'run `npx tsc -p tsconfig.json`',
    );
  }
  return ['--import', TS_LOADER, VPM_SRC_MAIN];
}

/** A raw config file (as JSON), before vpm's defaults: what a user would write. */
export type VpmConfigFile = Record<string, unknown>;

/** `vpm stats --json`, as far as tests read it. */
export interface VpmStats {
  packetsIn: number;
  packetsOut: number;
  bytesIn: number;
  bytesOut: number;
  dropsTotal: number;
  drops: Record<string, number>;
  flowsCreated: number;
  flowsExpired: number;
  flowsRefused: number;
  rstSent: number;
  /** IPv4 fragments waiting for their first fragment now. */
  fragmentsHeld: number;
  fragmentsReleased: number;
  icmp: {
    errorsTranslated: number;
    passed: number;
    echoReplies: number;
    unreachableSent: number;
    rateLimited: number;
  };
  flowsActive: number;
  flowsCapacity: number;
  perAid: Record<string, { bytesIn: number; bytesOut: number }>;
  tun: Record<string, unknown>;
  [key: string]: unknown;
}

/** One row of `vpm flows --json`. */
export interface VpmFlow {
  id: number;
  client: string;
  service: string;
  serviceName: string;
  aid: string;
  real: string;
  nat: string | null;
  state: string;
  packetsIn: number;
  bytesIn: number;
  packetsOut: number;
  bytesOut: number;
  [key: string]: unknown;
}

/** Result of a `vpm` command run to completion. */
export interface VpmRun extends ExitInfo {
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Write `cfg` as `<dir>/<name>`, with `control.socket` set to `<dir>/vpm.sock`
 * unless the config names one. Returns the file's path.
 */
export function writeVpmConfig(dir: string, cfg: VpmConfigFile, name = 'vpm.json'): string {
  const control = (cfg.control ?? {}) as Record<string, unknown>;
  const full = { ...cfg, control: { socket: join(dir, 'vpm.sock'), ...control } };
  const path = join(dir, name);
  writeFileSync(path, `${JSON.stringify(full, null, 2)}\n`, { mode: 0o600 });
  return path;
}

/** Reject with `what` if `p` has not settled within `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Run `vpm ARGS` inside `ns` to completion (tracked by the lab; killed after
 * `timeoutMs`), in the working directory `cwd` if given. Never throws for a
 * non-zero exit: the caller asserts on it.
 */
export async function runVpm(
  lab: NetLab,
  ns: string,
  args: readonly string[],
  timeoutMs = 15_000,
  cwd?: string,
): Promise<VpmRun> {
  const t0 = performance.now();
  const child = lab.spawn(ns, process.execPath, [...vpmArgv(), ...args], { cwd });
  let exit: ExitInfo;
  try {
    exit = await withTimeout(lab.exited(child), timeoutMs, `vpm ${args.join(' ')}`);
  } catch (e) {
    await lab.stop(child, 'SIGKILL', 1000);
    throw new Error(`${(e as Error).message}\n${lab.output(child).stderr}`);
  }
  return { ...exit, ...lab.output(child), ms: Math.round(performance.now() - t0) };
}

/** JSON objects among the lines of `text` (pino logs, fixture events); other lines are skipped. */
export function jsonLines(text: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a line cut short by a kill: not an event
    }
  }
  return out;
}

/**
 * Wait until a spawned process has printed a JSON line with `"event": name` (on
 * stdout) and return the first such line; fail early, with its output, if it exits
 * without one.
 */
export async function waitJsonEvent(
  lab: NetLab,
  child: ChildProcess,
  name: string,
  timeoutMs = 10_000,
): Promise<Record<string, unknown>> {
  await lab.waitForOutput(child, new RegExp(`"event":"${name}"`), {
    stream: 'stdout',
    timeoutMs,
  });
  // The line may still be incomplete when the pattern first shows: wait for its end.
  let found: Record<string, unknown> | undefined;
  const deadline = Date.now() + timeoutMs;
  while (!found) {
    found = jsonLines(lab.output(child).stdout).find((e) => e.event === name);
    if (found) break;
    if (Date.now() > deadline) throw new Error(`event ${name}: line never completed`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return found;
}

export interface VpmStartOptions {
  /** Directory for the config, socket and journal; default a fresh `lab.tempDir()`. */
  dir?: string;
  /** Default 15000. */
  readyTimeoutMs?: number;
  /**
   * Run the daemon in this working directory, naming its config file relative to
   * it on the command line (`vpm up -c cfg.json`). Default: the test's, absolute path.
   */
  cwd?: string;
  /** The daemon's environment. Default: the test process's. */
  env?: NodeJS.ProcessEnv;
  /** More arguments after `up -c FILE` (e.g. `--keep-state`). */
  args?: string[];
  /** The command: `up` (default) or `restart` (take over from the running daemon). */
  command?: 'up' | 'restart';
}

/** A running `vpm up` inside a namespace. */
export class VpmDaemon {
  private constructor(
    readonly lab: NetLab,
    readonly ns: string,
    readonly dir: string,
    readonly configPath: string,
    readonly socket: string,
    readonly child: ChildProcess,
  ) {}

  /** Write `cfg` (socket in the daemon's directory), run `vpm up -c` in `ns`, wait for "ready". */
  static async start(
    lab: NetLab,
    ns: string,
    cfg: VpmConfigFile,
    opts: VpmStartOptions = {},
  ): Promise<VpmDaemon> {
    const dir = opts.dir ?? lab.tempDir();
    const configPath = writeVpmConfig(dir, cfg);
    return VpmDaemon.startFile(lab, ns, configPath, dir, opts);
  }

  /**
   * Run `vpm up -c configPath` for a config file already written by
   * `writeVpmConfig` (its directory `dir` holds the socket and the journal).
   */
  static async startFile(
    lab: NetLab,
    ns: string,
    configPath: string,
    dir: string,
    opts: Omit<VpmStartOptions, 'dir'> = {},
  ): Promise<VpmDaemon> {
    requireVpmBuild();
    const argPath = opts.cwd === undefined ? configPath : relative(opts.cwd, configPath);
    const child = lab.spawn(
      ns,
      process.execPath,
      [...vpmArgv(), opts.command ?? 'up', '-c', argPath, ...(opts.args ?? [])],
      {
        cwd: opts.cwd,
        env: opts.env,
      },
    );
    const d = new VpmDaemon(lab, ns, dir, configPath, join(dir, 'vpm.sock'), child);
    try {
      await waitJsonEvent(lab, child, 'ready', opts.readyTimeoutMs ?? 15_000);
    } catch (e) {
      await lab.stop(child, 'SIGKILL', 1000);
      throw e;
    }
    const ready = d.logs().find((l) => l.event === 'ready');
    if (ready && typeof ready.control === 'string')
      (d as { socket: string }).socket = ready.control;
    return d;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Still running? */
  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The journal of host changes: `<tun.name>.state.json` beside the socket. */
  get stateFile(): string {
    const cfg = JSON.parse(readFileSync(this.configPath, 'utf8')) as { tun?: { name?: string } };
    return join(dirname(this.socket), `${cfg.tun?.name ?? 'vpm0'}.state.json`);
  }

  /** The daemon's pino log lines so far. */
  logs(): Record<string, unknown>[] {
    return jsonLines(this.lab.output(this.child).stdout);
  }

  /** stdout and stderr so far, for failure messages. */
  output(): string {
    const o = this.lab.output(this.child);
    return `--- vpm stdout ---\n${o.stdout}\n--- vpm stderr ---\n${o.stderr}`;
  }

  async stats(timeoutMs = 5000): Promise<VpmStats> {
    return (await controlRequest(this.socket, 'stats', {}, timeoutMs)) as VpmStats;
  }

  async flows(timeoutMs = 5000): Promise<VpmFlow[]> {
    return (await controlRequest(this.socket, 'flows', {}, timeoutMs)) as VpmFlow[];
  }

  /** `vpm <cmd> --json -s SOCKET` through the real CLI, run in the daemon's namespace. */
  async cliJson(cmd: 'stats' | 'flows' | 'instances', timeoutMs = 15_000): Promise<unknown> {
    const r = await runVpm(this.lab, this.ns, [cmd, '--json', '-s', this.socket], timeoutMs);
    if (r.code !== 0) throw new Error(`vpm ${cmd} exited ${r.code ?? r.signal}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  /**
   * Send `signal` and wait for the exit. SIGTERM must be enough: if the daemon is
   * still there after `timeoutMs`, it is killed and this throws.
   */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<ExitInfo> {
    if (!this.alive) return this.lab.exited(this.child);
    process.kill(this.pid, signal);
    try {
      return await withTimeout(this.lab.exited(this.child), timeoutMs, `vpm to exit on ${signal}`);
    } catch (e) {
      await this.lab.stop(this.child, 'SIGKILL', 1000);
      throw new Error(`${(e as Error).message}\n${this.output()}`);
    }
  }

  /** SIGKILL: the daemon gets no chance to undo anything (a crash). */
  kill(): Promise<ExitInfo> {
    return this.stop('SIGKILL', 5000);
  }
}

/** What `vpm up` may change in a namespace, as text to compare before and after. */
export interface HostState {
  rules: string;
  routes: string;
  links: string;
  addrs: string;
  ipForward: string;
}

/**
 * `ip rule`, `ip -4 route show table all`, `ip -o link`, `ip -4 -o addr` and
 * net.ipv4.ip_forward inside `ns`. Link state and flags are included, counters are
 * not. IPv6 routes and addresses are left out: the kernel adds link-local ones
 * on its own schedule (after duplicate address detection), and vpm adds none.
 */
export function hostState(lab: NetLab, ns: string): HostState {
  return {
    rules: lab.run(ns, 'ip', ['rule', 'show']),
    routes: lab.run(ns, 'ip', ['-4', 'route', 'show', 'table', 'all']),
    links: lab.run(ns, 'ip', ['-o', 'link', 'show']),
    addrs: lab.run(ns, 'ip', ['-4', '-o', 'addr', 'show']),
    ipForward: lab.run(ns, 'cat', ['/proc/sys/net/ipv4/ip_forward']).trim(),
  };
}

/**
 * Every IPv4 and IPv6 per-device and host-wide `conf` sysctl inside `ns`
 * (/proc/sys/net/ipv{4,6}/conf/{all,default,DEV}/*, and net.ipv4.ip_forward), one
 * "path:value" line each, sorted; the devices in `skip` (the TUN, which exists only
 * while vpm is up) left out. Unreadable entries (ipv6 stable_secret) are left out.
 */
export function hostSysctls(lab: NetLab, ns: string, skip: readonly string[] = ['vpm0']): string[] {
  const out = lab.run(ns, 'sh', [
    '-c',
    'grep -rs . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf /proc/sys/net/ipv6/conf || true',
  ]);
  return out
    .split('\n')
    .filter((l) => l !== '' && !skip.some((d) => l.includes(`/conf/${d}/`)))
    .sort();
}

/** The lines of `ip rule show` (`ip -6 rule show` for family 6) that use the routing table `table`. */
export function rulesForTable(lab: NetLab, ns: string, table: number, family: 4 | 6 = 4): string[] {
  return lab
    .run(ns, 'ip', [family === 6 ? '-6' : '-4', 'rule', 'show'])
    .split('\n')
    .filter((l) => new RegExp(`lookup ${table}\\b`).test(l));
}
