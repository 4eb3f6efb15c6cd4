/**
 * The flow table's state file: where the daemon's records live while it runs,
 * and what the next daemon reads back after a crash or a restart.
 *
 * Theory of operation. `createFlowFile` maps a new file (native stateMap: a
 * MAP_SHARED mapping, so every store of the table is in the file as it is
 * made, and nothing is lost when the process dies by any signal) at a
 * temporary name, the table is built in it and filled with the flows taken
 * over from the old file, and only then `commit` renames it over the old one.
 * A daemon killed before the rename leaves the old file in place, still
 * whole: the next start reads it again. After the rename, the new file has
 * every flow taken over.
 *
 * `readFlowFile` reads a file back (a copy: the old mapping, if any, is not
 * touched) and trusts nothing in it (layout.ts has the format):
 *   - the header must have the magic, FLOW_FILE_VERSION, a capacity in range,
 *     known flags, its check, and the file the size its layout needs; else
 *     the whole file is refused with a reason (`problem`), and no record is read;
 *   - each slot whose state is not FREE is a record; it is taken only if its
 *     version is RECORD_VERSION, its check matches, and its per-packet fields
 *     are in range (state, family, protocol, finite times); every other one is
 *     skipped and counted by reason (`skipped`).
 * Nothing here throws on bad content: a file that cannot be read at all is a
 * `problem` too.
 */

import { existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import {
  FLOW_FILE_MAGIC,
  FLOW_FILE_VERSION,
  FLOW_HEADER_BYTES,
  type FlowColumns,
  flowColumns,
  flowLayout,
  H_CAPACITY,
  H_CHECK,
  H_FLAGS,
  H_MAGIC,
  H_NEXT_ID_BYTE,
  H_VERSION,
  headerCheck,
  RECORD_VERSION,
  recordCheck,
} from '../flow/layout.js';
import { FlowState } from '../flow/state.js';
import type { FlowKeyArgs, FlowRecordArgs } from '../flow/table.js';
import { loadNative } from '../native/index.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../wire/ipv4.js';

/** The largest capacity a header may claim (FlowTable's own limit). */
const MAX_CAPACITY = 1 << 22;

/** Why a record of a state file was not taken. */
export type SkipReason =
  | 'other_version'
  | 'bad_check'
  | 'bad_state'
  | 'bad_family'
  | 'bad_protocol'
  | 'bad_time';

/**
 * One flow read back: the columns' values of its slot — its keys as `create`
 * takes them (family and flags always set; `addr6` the 16 words of an IPv6
 * flow, null for IPv4) and what `restoreFlow` takes over beside them.
 */
export type RecoveredFlow = Required<Omit<FlowKeyArgs, 'family' | 'addr6'>> &
  FlowRecordArgs & { family: 4 | 6; addr6: Uint32Array | null };

export interface FlowFileRead {
  /** The records taken, oldest last activity first. */
  flows: RecoveredFlow[];
  /** Records skipped, by reason. */
  skipped: Partial<Record<SkipReason, number>>;
  /** The whole file refused (and why), or null. */
  problem: string | null;
  /** The next flow id the old table would have given. */
  nextId: number;
  capacity: number;
}

/** Nothing read: a missing file (problem null), or one refused as a whole. */
const empty = (problem: string | null): FlowFileRead => ({
  flows: [],
  skipped: {},
  problem,
  nextId: 1,
  capacity: 0,
});

/** Read the state file at `path` back (see the top of the file). A missing file reads as empty. */
export function readFlowFile(path: string): FlowFileRead {
  if (!existsSync(path)) return empty(null);
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    return empty(`cannot read it: ${(e as Error).message}`);
  }
  return readFlowBytes(bytes);
}

/** `readFlowFile` of bytes in memory. */
export function readFlowBytes(bytes: Uint8Array): FlowFileRead {
  if (bytes.length < FLOW_HEADER_BYTES)
    return empty(`${bytes.length} bytes, shorter than its ${FLOW_HEADER_BYTES}-byte header`);
  // A private, aligned copy: the views below need 8-byte alignment, and nothing may change under them.
  const buf = new ArrayBuffer(bytes.length);
  new Uint8Array(buf).set(bytes);
  const h = new Uint32Array(buf, 0, FLOW_HEADER_BYTES / 4);
  if (h[H_MAGIC] !== FLOW_FILE_MAGIC)
    return empty(`not a vpm flow state file (magic 0x${h[H_MAGIC]!.toString(16)})`);
  if (h[H_VERSION] !== FLOW_FILE_VERSION)
    return empty(
      `written in layout version ${h[H_VERSION]}, which this vpm (layout ${FLOW_FILE_VERSION}) does not read`,
    );
  const capacity = h[H_CAPACITY]!;
  const flags = h[H_FLAGS]!;
  if (capacity < 1 || capacity > MAX_CAPACITY || (flags & ~1) !== 0)
    return empty(`header claims capacity ${capacity}, flags ${flags}: out of range`);
  if (h[H_CHECK] !== headerCheck(capacity, flags)) return empty('its header check does not match');
  const ipv6 = (flags & 1) === 1;
  const need = flowLayout(capacity, ipv6).bytes;
  if (bytes.length < need)
    return empty(`${bytes.length} bytes, shorter than the ${need} its ${capacity} slots need`);
  const nextId = new Float64Array(buf, H_NEXT_ID_BYTE, 1)[0]!;
  const c = flowColumns(buf, capacity, ipv6);
  const flows: RecoveredFlow[] = [];
  const skipped: Partial<Record<SkipReason, number>> = {};
  const skip = (r: SkipReason) => {
    skipped[r] = (skipped[r] ?? 0) + 1;
  };
  for (let s = 0; s < capacity; s++) {
    if (c.state[s] === FlowState.FREE) continue;
    const why = recordProblem(c, s);
    if (why !== null) {
      skip(why);
      continue;
    }
    flows.push(toRecovered(c, s));
  }
  flows.sort((a, b) => a.lastSeen - b.lastSeen);
  return {
    flows,
    skipped,
    problem: null,
    nextId: Number.isSafeInteger(nextId) && nextId >= 1 ? nextId : 1,
    capacity,
  };
}

function recordProblem(c: FlowColumns, s: number): SkipReason | null {
  if (c.ver[s] !== RECORD_VERSION) return 'other_version';
  if (c.check[s] !== recordCheck(c, s)) return 'bad_check';
  if (c.state[s]! > FlowState.UDP_ASSURED) return 'bad_state';
  const family = c.family[s];
  if (family !== 4 && !(family === 6 && c.addr6.length > 0)) return 'bad_family';
  const proto = c.proto[s];
  if (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) return 'bad_protocol';
  // A UDP flow has the UDP states only, a TCP flow the TCP ones.
  const udpState = c.state[s] === FlowState.UDP_UNREPLIED || c.state[s] === FlowState.UDP_ASSURED;
  if (udpState !== (proto === IPPROTO_UDP)) return 'bad_state';
  const id = c.id[s]!;
  if (!Number.isFinite(c.created[s]!) || !Number.isFinite(c.lastSeen[s]!)) return 'bad_time';
  if (!Number.isSafeInteger(id) || id < 1) return 'bad_check';
  return null;
}

function toRecovered(c: FlowColumns, s: number): RecoveredFlow {
  const finite = (v: number) => (Number.isFinite(v) && v >= 0 ? v : 0);
  return {
    family: c.family[s] === 6 ? 6 : 4,
    proto: c.proto[s]!,
    flags: c.flags[s]!,
    state: c.state[s]!,
    fins: c.fins[s]! & 3,
    service: c.service[s]!,
    aid: c.aid[s]!,
    instance: c.instance[s]!,
    clientAddr: c.clientAddr[s]!,
    clientPort: c.clientPort[s]!,
    vipAddr: c.vipAddr[s]!,
    vport: c.vport[s]!,
    natAddr: c.natAddr[s]!,
    natPort: c.natPort[s]!,
    realAddr: c.realAddr[s]!,
    realPort: c.realPort[s]!,
    addr6: c.family[s] === 6 ? c.addr6.slice(s * 16, s * 16 + 16) : null,
    id: c.id[s]!,
    created: c.created[s]!,
    lastSeen: c.lastSeen[s]!,
    pktsIn: finite(c.pktsIn[s]!),
    bytesIn: finite(c.bytesIn[s]!),
    pktsOut: finite(c.pktsOut[s]!),
    bytesOut: finite(c.bytesOut[s]!),
  };
}

/**
 * A new state file for a table of `capacity` slots: a zero-filled shared
 * mapping at `${path}.new`, which `commit()` renames to `path` (see the top).
 */
export function createFlowFile(
  path: string,
  capacity: number,
  ipv6: boolean,
): { memory: ArrayBuffer; commit: () => void } {
  const tmp = `${path}.new`;
  rmSync(tmp, { force: true });
  const memory = loadNative().stateMap(tmp, flowLayout(capacity, ipv6).bytes);
  return { memory, commit: () => renameSync(tmp, path) };
}
