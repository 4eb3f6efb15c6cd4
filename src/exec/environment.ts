/**
 * What `vpm exec` puts into the environment of the program it runs: the
 * interception library (LD_PRELOAD) and its settings (VPM_*), derived from the
 * daemon's answer to `hello`. Pure functions: src/cli/exec.ts does the I/O.
 */

import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { VpmError } from '../base/errors.js';
import { packageRoot } from '../base/paths.js';

/** How long the library waits for the daemon, on top of the pool's own wait. */
export const DEFAULT_TIMEOUT_MS = 3000;

/** native/build/libvpm_preload.so, built by scripts/build-native.sh. */
export function preloadLibraryPath(): string {
  return join(packageRoot(), 'native', 'build', 'libvpm_preload.so');
}

/**
 * Why another user could not load the library at `lib` (a directory above it
 * that others cannot search, or the file not readable by others), or null.
 * ld.so skips a preload library it cannot open with only a warning, and the
 * program would then bind its real port 9000 outside vpm.
 */
export function unreadableByOthers(lib: string): string | null {
  try {
    if ((statSync(lib).mode & 0o004) === 0) return `${lib} is not readable by other users`;
    for (let d = dirname(lib); ; d = dirname(d)) {
      const m = statSync(d).mode & 0o7777;
      if ((m & 0o001) === 0)
        return `${d} (mode ${m.toString(8).padStart(4, '0')}) is not searchable by other users`;
      if (dirname(d) === d) return null;
    }
  } catch (e) {
    return (e as Error).message;
  }
}

/** Can this process read `lib`? */
export function readable(lib: string): boolean {
  try {
    accessSync(lib, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** A multiplexed port, as `hello` lists it. */
export interface MultiplexedPort {
  proto: 'tcp' | 'udp';
  vport: number;
}

/** The part of the daemon's `hello` answer that `vpm exec` uses. */
export interface Hello {
  aid: string;
  ports: MultiplexedPort[];
  /** How long a bind may wait for a free port in the pool (0: no wait). */
  waitTimeoutMs: number;
  /**
   * The daemon has no port pool: the program's binds of multiplexed ports will be
   * refused (ERR_NO_POOL), but its connects are still reported — which is what a
   * client host in cooperative mode needs.
   */
  noPool: boolean;
}

export type ExecErrorCode =
  /** The daemon's hello answer is malformed. */
  | 'ERR_CONTROL_IO'
  /** The AID is not in the daemon's config. */
  | 'ERR_UNKNOWN_AID'
  /** The interception library's path cannot go into LD_PRELOAD. */
  | 'ERR_PRELOAD_PATH'
  /** The interception library is not built. */
  | 'ERR_PRELOAD_MISSING';

/** Why a program cannot run under vpm; exit status 1. */
export class ExecError extends VpmError<ExecErrorCode> {
  readonly exitCode: number;
  constructor(code: ExecErrorCode, message: string, exitCode = 1) {
    super(code, message);
    this.exitCode = exitCode;
  }
}

const isObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

/**
 * Check the daemon's `hello` result for `aid` (it comes over a socket: trust
 * its shape only after looking) and say clearly why a program could not run
 * under vpm: unknown AID. A daemon without a pool is fine for client programs
 * (`noPool`): only their binds of multiplexed ports fail.
 */
export function parseHello(aid: string, socket: string, result: unknown): Hello {
  if (!isObject(result))
    throw new ExecError('ERR_CONTROL_IO', `the daemon at ${socket} sent a malformed hello answer`);
  if (result.known === false)
    throw new ExecError(
      'ERR_UNKNOWN_AID',
      `AID "${aid}" is not in the configuration of the daemon at ${socket}`,
    );
  const noPool = result.pool === null || result.pool === undefined;
  if (!Array.isArray(result.ports))
    throw new ExecError('ERR_CONTROL_IO', `the daemon at ${socket} sent no port list in hello`);
  const ports: MultiplexedPort[] = [];
  for (const p of result.ports as unknown[]) {
    if (
      !isObject(p) ||
      (p.proto !== 'tcp' && p.proto !== 'udp') ||
      typeof p.vport !== 'number' ||
      !Number.isInteger(p.vport) ||
      p.vport < 1 ||
      p.vport > 65535
    ) {
      throw new ExecError(
        'ERR_CONTROL_IO',
        `the daemon at ${socket} sent a bad port in hello: ${JSON.stringify(p)}`,
      );
    }
    ports.push({ proto: p.proto, vport: p.vport });
  }
  const pool = isObject(result.pool) ? result.pool : {};
  const wait = result.waitTimeoutMs ?? pool.waitTimeoutMs ?? 0;
  const waitTimeoutMs = typeof wait === 'number' && Number.isFinite(wait) && wait > 0 ? wait : 0;
  return { aid, ports, waitTimeoutMs, noPool };
}

/** VPM_PORTS: "tcp:9000,udp:5353". */
export function portsList(ports: readonly MultiplexedPort[]): string {
  return ports.map((p) => `${p.proto}:${p.vport}`).join(',');
}

/**
 * LD_PRELOAD with `lib` first. ld.so splits the list at spaces and colons and
 * knows no quoting, so a path with either cannot be preloaded at all.
 */
export function preloadValue(lib: string, existing: string | undefined): string {
  if (/[\s:]/.test(lib))
    throw new ExecError(
      'ERR_PRELOAD_PATH',
      `the interception library's path "${lib}" contains a space or a colon, which LD_PRELOAD cannot express; install vpm in a directory without them`,
    );
  const rest = (existing ?? '')
    .split(/[\s:]+/)
    .filter((p) => p.length > 0 && p !== lib)
    .join(':');
  return rest ? `${lib}:${rest}` : lib;
}

export interface ExecEnvOptions {
  /** Absolute path of the control socket. */
  socket: string;
  hello: Hello;
  /** Absolute path of libvpm_preload.so. */
  lib: string;
  /** The library's base timeout; default DEFAULT_TIMEOUT_MS. */
  timeoutMs?: number;
  /** VPM_DEBUG=1: the library traces every decision on stderr. Default false. */
  debug?: boolean;
}

/** The environment of the program: `base` plus the library and its settings. */
export function execEnvironment(base: NodeJS.ProcessEnv, o: ExecEnvOptions): NodeJS.ProcessEnv {
  if (!existsSync(o.lib))
    throw new ExecError(
      'ERR_PRELOAD_MISSING',
      `the interception library ${o.lib} is not built (run: npm run build:native)`,
    );
  const env: NodeJS.ProcessEnv = {
    ...base,
    LD_PRELOAD: preloadValue(o.lib, base.LD_PRELOAD),
    VPM_SOCKET: o.socket,
    VPM_AID: o.hello.aid,
    VPM_PORTS: portsList(o.hello.ports),
    VPM_TIMEOUT_MS: String((o.timeoutMs ?? DEFAULT_TIMEOUT_MS) + o.hello.waitTimeoutMs),
  };
  if (o.debug) env.VPM_DEBUG = '1';
  return env;
}
