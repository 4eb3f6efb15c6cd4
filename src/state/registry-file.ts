/**
 * The registry's state file: what the virtual layer's registry and port pool
 * were (RegistrySnapshot, src/virtual/registry.ts), for the next daemon after
 * a crash or a restart.
 *
 * Theory of operation. The daemon saves a snapshot after every change of the
 * registry (`Registry.onChange`), before the change is answered, so a port
 * answered to a program is on disk first. A save is atomic: the new content
 * goes to a temporary file beside the state file (mode 0600), which is
 * fsync'ed and renamed over the state file, and the directory is fsync'ed; a
 * crash at any point leaves the old file or the new one, never a mix. The file
 * is one line of JSON, an envelope:
 *
 *   {"magic":"vpm-registry","version":1,"sha256":"<hex>","body":"<snapshot as JSON text>"}
 *
 * the body kept as a string, so the checksum (SHA-256 of its UTF-8 bytes) is
 * over exactly what was written.
 *
 * Loading trusts nothing: the file may be torn by a disk that lied about a
 * flush, edited by hand, left by another version of vpm or written by
 * someone else. `loadRegistryState` never throws and never returns a snapshot
 * it has not checked field by field (types, ranges: ports 1-65535, pids and
 * descriptors, AID names as the configuration writes them, addresses that
 * parse, no unknown fields, bounded lengths). A missing file is no state (a
 * first start); anything else wrong is no state and a `problem` naming what
 * was wrong, for the daemon to log and count before it starts empty. Whether
 * a valid snapshot still fits the configuration (AIDs, services, processes
 * alive) is the registry's restore's to decide.
 */

import { createHash } from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { nameDef } from '../config/schema.js';
import type { PoolSnapshot } from '../virtual/pool.js';
import type {
  GroupSnapshot,
  RegistrationSnapshot,
  RegistrySnapshot,
  UdpReportSnapshot,
} from '../virtual/registry.js';
import { parseIpv4, parseIpv6 } from '../wire/address.js';

export const REGISTRY_STATE_MAGIC = 'vpm-registry';
export const REGISTRY_STATE_VERSION = 1;

/** Larger than any real state (a group per port, 2·65536 UDP reports), so a bigger file is not ours. */
const MAX_FILE_BYTES = 256 * 1024 * 1024;
const MAX_GROUPS = 65536;
const MAX_REGISTRATIONS = 1 << 20;
const MAX_UDP_REPORTS = 2 * 65536;
const MAX_TEXT = 65536;
const INT32_MAX = 2147483647;

const sha256 = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');

/**
 * Write `snap` to `path` atomically (tmp + fsync + rename + directory fsync),
 * mode 0600. Throws what the file system throws (the caller logs it: a state
 * that cannot be written costs the next restart its recovery, not this bind).
 */
export function saveRegistryState(path: string, snap: RegistrySnapshot): void {
  const body = JSON.stringify(snap);
  const text = `${JSON.stringify({
    magic: REGISTRY_STATE_MAGIC,
    version: REGISTRY_STATE_VERSION,
    sha256: sha256(body),
    body,
  })}\n`;
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    // A temporary file left by a crash may have had another mode.
    fchmodSync(fd, 0o600);
    const buf = Buffer.from(text, 'utf8');
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  // The rename itself must reach the disk too.
  const d = openSync(dir, 'r');
  try {
    fsyncSync(d);
  } finally {
    closeSync(d);
  }
}

export interface LoadedRegistryState {
  /** The checked snapshot; null when there is none or it cannot be trusted. */
  snapshot: RegistrySnapshot | null;
  /** Why a file that exists gave no snapshot; null when it gave one, or there is no file. */
  problem: string | null;
}

/** Read and check the state at `path` (module comment). Never throws. */
export function loadRegistryState(path: string): LoadedRegistryState {
  let raw: Buffer;
  try {
    raw = readFileSync(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') return { snapshot: null, problem: null };
    return { snapshot: null, problem: `cannot read ${path}: ${err.code ?? err.message}` };
  }
  try {
    return { snapshot: parseRegistryState(raw), problem: null };
  } catch (e) {
    if (e instanceof StateProblem) return { snapshot: null, problem: `${path}: ${e.message}` };
    return { snapshot: null, problem: `${path}: ${(e as Error).message ?? String(e)}` };
  }
}

class StateProblem extends Error {}

const bad = (what: string): never => {
  throw new StateProblem(what);
};

/** The envelope and the body of a state file's bytes, checked; throws StateProblem. */
function parseRegistryState(raw: Buffer): RegistrySnapshot {
  if (raw.length === 0) bad('empty file');
  if (raw.length > MAX_FILE_BYTES) bad(`${raw.length} bytes: larger than any registry state`);
  const text = raw.toString('utf8');
  let env: unknown;
  try {
    env = JSON.parse(text);
  } catch {
    bad(`not JSON (truncated or damaged: ${raw.length} bytes)`);
  }
  if (!isObject(env)) bad('not a JSON object');
  const e = env as Record<string, unknown>;
  if (e.magic !== REGISTRY_STATE_MAGIC)
    bad(`not a vpm registry state (magic ${short(e.magic)}, want "${REGISTRY_STATE_MAGIC}")`);
  if (e.version !== REGISTRY_STATE_VERSION)
    bad(`version ${short(e.version)}; this vpm reads version ${REGISTRY_STATE_VERSION}`);
  onlyKeys(e, ['magic', 'version', 'sha256', 'body'], 'envelope');
  if (typeof e.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(e.sha256))
    bad('envelope: sha256 is not 64 hex digits');
  if (typeof e.body !== 'string') bad('envelope: body is not a string');
  const body = e.body as string;
  if (sha256(body) !== e.sha256) bad('checksum mismatch: the body is not what was written');
  let snap: unknown;
  try {
    snap = JSON.parse(body);
  } catch {
    bad('body: not JSON');
  }
  return checkSnapshot(snap);
}

// ---- the shape, field by field ------------------------------------------------

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function short(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
}

function onlyKeys(o: Record<string, unknown>, keys: readonly string[], at: string): void {
  for (const k of Object.keys(o))
    if (!keys.includes(k)) bad(`${at}: unknown field ${JSON.stringify(k).slice(0, 70)}`);
  for (const k of keys) if (!Object.hasOwn(o, k)) bad(`${at}: no field "${k}"`);
}

function object(v: unknown, at: string, keys: readonly string[]): Record<string, unknown> {
  if (!isObject(v)) bad(`${at}: not an object`);
  const o = v as Record<string, unknown>;
  onlyKeys(o, keys, at);
  return o;
}

function array(v: unknown, at: string, max: number): unknown[] {
  if (!Array.isArray(v)) bad(`${at}: not an array`);
  const a = v as unknown[];
  if (a.length > max) bad(`${at}: ${a.length} entries, more than ${max}`);
  return a;
}

function int(v: unknown, at: string, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)
    bad(`${at}: ${short(v)} is not an integer ${lo}-${hi}`);
  return v as number;
}

const port = (v: unknown, at: string) => int(v, at, 1, 65535);

function finite(v: unknown, at: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(`${at}: ${short(v)} is not a number`);
  return v as number;
}

function bool(v: unknown, at: string): boolean {
  if (typeof v !== 'boolean') bad(`${at}: ${short(v)} is not true or false`);
  return v as boolean;
}

function text(v: unknown, at: string, max = MAX_TEXT): string {
  if (typeof v !== 'string' || v.length > max) bad(`${at}: not a string of at most ${max}`);
  return v as string;
}

const NAME = new RegExp(nameDef.pattern);

function aidName(v: unknown, at: string): string {
  if (typeof v !== 'string' || !NAME.test(v)) bad(`${at}: ${short(v)} is not an AID name`);
  return v as string;
}

function proto(v: unknown, at: string): 'tcp' | 'udp' {
  if (v !== 'tcp' && v !== 'udp') bad(`${at}: ${short(v)} is not "tcp" or "udp"`);
  return v as 'tcp' | 'udp';
}

/** A process start time (field 22 of /proc/PID/stat) or null. */
function start(v: unknown, at: string): string | null {
  if (v === null) return null;
  if (typeof v !== 'string' || !/^[0-9]{1,20}$/.test(v))
    bad(`${at}: ${short(v)} is not a start time (decimal digits) or null`);
  return v as string;
}

function ipv4(v: unknown, at: string): string {
  if (typeof v !== 'string' || parseIpv4(v) === null)
    bad(`${at}: ${short(v)} is not an IPv4 address`);
  return v as string;
}

function ipv6(v: unknown, at: string): string {
  if (typeof v !== 'string' || v.length > 64 || parseIpv4(v) !== null || parseIpv6(v) === null)
    bad(`${at}: ${short(v)} is not an IPv6 address`);
  return v as string;
}

function address(v: unknown, at: string): string {
  if (typeof v === 'string' && v.length <= 64 && (parseIpv4(v) !== null || parseIpv6(v) !== null))
    return v;
  return bad(`${at}: ${short(v)} is not an IP address`);
}

function checkRegistration(v: unknown, at: string): RegistrationSnapshot {
  const o = object(v, at, ['id', 'pid', 'hostPid', 'start', 'fd', 'v4', 'v6', 'since']);
  return {
    id: int(o.id, `${at}.id`, 1, Number.MAX_SAFE_INTEGER),
    pid: int(o.pid, `${at}.pid`, 1, INT32_MAX),
    hostPid: int(o.hostPid, `${at}.hostPid`, 1, INT32_MAX),
    start: start(o.start, `${at}.start`),
    fd: int(o.fd, `${at}.fd`, 0, INT32_MAX),
    v4: bool(o.v4, `${at}.v4`),
    v6: bool(o.v6, `${at}.v6`),
    since: finite(o.since, `${at}.since`),
  };
}

function checkGroup(v: unknown, at: string): GroupSnapshot {
  const o = object(v, at, [
    'aid',
    'proto',
    'vport',
    'key',
    'addr4',
    'addr6',
    'port',
    'instance',
    'registrations',
  ]);
  const key = o.key === 'tun' ? 'tun' : address(o.key, `${at}.key`);
  return {
    aid: aidName(o.aid, `${at}.aid`),
    proto: proto(o.proto, `${at}.proto`),
    vport: port(o.vport, `${at}.vport`),
    key,
    addr4: o.addr4 === null ? null : ipv4(o.addr4, `${at}.addr4`),
    addr6: o.addr6 === null ? null : ipv6(o.addr6, `${at}.addr6`),
    port: port(o.port, `${at}.port`),
    instance: int(o.instance, `${at}.instance`, -1, 65535),
    registrations: array(o.registrations, `${at}.registrations`, MAX_REGISTRATIONS).map((r, i) =>
      checkRegistration(r, `${at}.registrations[${i}]`),
    ),
  };
}

function checkUdpReport(v: unknown, at: string): UdpReportSnapshot {
  const o = object(v, at, ['addr', 'port', 'aid', 'pid', 'hostPid', 'start', 'fd', 'remote', 'at']);
  return {
    addr: address(o.addr, `${at}.addr`),
    port: port(o.port, `${at}.port`),
    aid: aidName(o.aid, `${at}.aid`),
    // 0: the report named no pid.
    pid: int(o.pid, `${at}.pid`, 0, INT32_MAX),
    hostPid: int(o.hostPid, `${at}.hostPid`, 0, INT32_MAX),
    start: start(o.start, `${at}.start`),
    // -1: the report named no descriptor.
    fd: int(o.fd, `${at}.fd`, -1, INT32_MAX),
    remote: text(o.remote, `${at}.remote`),
    at: finite(o.at, `${at}.at`),
  };
}

function checkPool(v: unknown, at: string): PoolSnapshot {
  const o = object(v, at, ['lo', 'hi', 'inUse', 'quarantine']);
  const lo = port(o.lo, `${at}.lo`);
  const hi = port(o.hi, `${at}.hi`);
  if (lo > hi) bad(`${at}: lo ${lo} is above hi ${hi}`);
  return {
    lo,
    hi,
    inUse: array(o.inUse, `${at}.inUse`, 65535).map((p, i) => port(p, `${at}.inUse[${i}]`)),
    quarantine: array(o.quarantine, `${at}.quarantine`, 65535).map((q, i) => {
      const e = object(q, `${at}.quarantine[${i}]`, ['port', 'released']);
      return {
        port: port(e.port, `${at}.quarantine[${i}].port`),
        released: finite(e.released, `${at}.quarantine[${i}].released`),
      };
    }),
  };
}

/** The body's shape (RegistrySnapshot), field by field; throws StateProblem naming the first bad one. */
function checkSnapshot(v: unknown): RegistrySnapshot {
  const o = object(v, 'body', ['nextId', 'groups', 'udpReports', 'pool']);
  return {
    nextId: int(o.nextId, 'body.nextId', 1, Number.MAX_SAFE_INTEGER),
    groups: array(o.groups, 'body.groups', MAX_GROUPS).map((g, i) =>
      checkGroup(g, `body.groups[${i}]`),
    ),
    udpReports: array(o.udpReports, 'body.udpReports', MAX_UDP_REPORTS).map((u, i) =>
      checkUdpReport(u, `body.udpReports[${i}]`),
    ),
    pool: o.pool === null ? null : checkPool(o.pool, 'body.pool'),
  };
}
