/**
 * Shared by the tests of the interception library and `vpm exec`: build the C
 * probe (fixtures/sockprobe.c) into a lab's temporary directory, run it under
 * the library, and a stand-in control server for the library's own protocol
 * and timeout tests (the end-to-end tests use the real `vpm up`).
 */

import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExitInfo, NetLab } from '../support/netns.js';
import { jsonLines, REPO_ROOT, withTimeout } from '../support/vpm.js';

export const PRELOAD_LIB = join(REPO_ROOT, 'native', 'build', 'libvpm_preload.so');
export const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));

/** Fail (never skip) unless the library is built. */
export function requirePreload(): void {
  if (!existsSync(PRELOAD_LIB))
    throw new Error(`${PRELOAD_LIB} is missing: run \`bash scripts/build-native.sh\``);
}

/** Compile fixtures/sockprobe.c into `dir`; returns the binary's path. */
export function compileProbe(dir: string): string {
  const out = join(dir, 'sockprobe');
  execFileSync(
    'gcc',
    ['-O1', '-Wall', '-Wextra', '-Werror', '-o', out, join(FIXTURES, 'sockprobe.c'), '-lpthread'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  return out;
}

/** One line of the probe's output. */
export interface ProbeEvent {
  event: string;
  i: number;
  pid: number;
  ok: boolean;
  errno: string | null;
  ms: number;
  fd?: number;
  port?: number;
  addr?: string;
  reuseport?: number;
  errnoKept?: boolean | null;
  of?: number;
  thread?: number;
  child?: number;
  status?: number;
}

export interface ProbeRun {
  events: ProbeEvent[];
  stdout: string;
  stderr: string;
  exit: ExitInfo;
  /** Wall time of the whole run. */
  ms: number;
}

/** The environment of a program under the library (what `vpm exec` sets). */
export function libEnv(
  socket: string,
  aid: string,
  ports: string,
  extra: NodeJS.ProcessEnv = {},
): NodeJS.ProcessEnv {
  return {
    ...process.env,
    LD_PRELOAD: PRELOAD_LIB,
    VPM_SOCKET: socket,
    VPM_AID: aid,
    VPM_PORTS: ports,
    ...extra,
  };
}

/** Run the probe with `ops` in `ns` to completion. */
export async function runProbe(
  lab: NetLab,
  ns: string,
  probe: string,
  env: NodeJS.ProcessEnv,
  ops: readonly string[],
  timeoutMs = 20_000,
): Promise<ProbeRun> {
  const t0 = performance.now();
  const child = lab.spawn(ns, probe, ops, { env });
  let exit: ExitInfo;
  try {
    exit = await withTimeout(lab.exited(child), timeoutMs, `sockprobe ${ops.join(' ')}`);
  } catch (e) {
    await lab.stop(child, 'SIGKILL', 1000);
    throw new Error(`${(e as Error).message}\n${lab.output(child).stderr}`);
  }
  const { stdout, stderr } = lab.output(child);
  return {
    events: jsonLines(stdout) as unknown as ProbeEvent[],
    stdout,
    stderr,
    exit,
    ms: performance.now() - t0,
  };
}

/** The event of argument `i` (the first, or the `n`th when several: threads). */
export function ev(run: ProbeRun, i: number, event?: string): ProbeEvent {
  const e = run.events.find((x) => x.i === i && (event === undefined || x.event === event));
  if (!e) throw new Error(`no event for argument ${i}\n${run.stdout}\n${run.stderr}`);
  return e;
}

export interface StandInRequest {
  /** 1 for the first connection accepted, 2 for the next, ... */
  conn: number;
  line: string;
  req: Record<string, unknown>;
}

/** Answer a (non-oneway) request with a line (no newline), or null for silence. */
export type Answer = (
  req: Record<string, unknown>,
  nth: number,
) => string | null | Promise<string | null>;

/**
 * A stand-in for the daemon's control socket: records every line, answers
 * requests through `answer`, never answers `oneway` messages (as the daemon).
 */
export class StandIn {
  readonly requests: StandInRequest[] = [];
  opened = 0;
  closed = 0;
  private readonly socks = new Set<Socket>();

  private constructor(
    readonly path: string,
    private readonly server: Server,
  ) {}

  static async start(path: string, answer: Answer): Promise<StandIn> {
    rmSync(path, { force: true });
    let nth = 0;
    const server = createServer();
    const s = new StandIn(path, server);
    server.on('connection', (c) => {
      const conn = ++s.opened;
      s.socks.add(c);
      let buf = '';
      c.setEncoding('utf8');
      c.on('error', () => {});
      c.on('close', () => {
        s.closed++;
        s.socks.delete(c);
      });
      c.on('data', (d: string) => {
        buf += d;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const req = JSON.parse(line) as Record<string, unknown>;
          s.requests.push({ conn, line, req });
          if (req.oneway === true) continue;
          const n = ++nth;
          void Promise.resolve(answer(req, n)).then((a) => {
            if (a !== null && !c.destroyed) c.write(`${a}\n`);
          });
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    return s;
  }

  /** Requests with this `cmd`. */
  cmd(cmd: string): StandInRequest[] {
    return this.requests.filter((r) => r.req.cmd === cmd);
  }

  async close(): Promise<void> {
    for (const c of this.socks) c.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.path, { force: true });
  }
}

/** A success answer granting `port`. */
export const grant = (req: Record<string, unknown>, port: number): string =>
  JSON.stringify({ v: 1, id: req.id, ok: true, result: { port } });

/** An error answer. */
export const refuse = (req: Record<string, unknown>, code: string, message: string): string =>
  JSON.stringify({ v: 1, id: req.id, ok: false, error: { code, message } });
