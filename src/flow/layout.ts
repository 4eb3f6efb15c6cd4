/**
 * The flow table's records as bytes: the layout of the state file that
 * outlives the daemon (src/state/flow-file.ts), and the check of one record.
 *
 * Theory of operation. The columns that describe a flow — its keys, its
 * translation, its state, times and counters — are laid out one after another
 * in one buffer: a 256-byte header, then each column of `capacity` entries,
 * each starting on a 64-byte boundary, in the order of COLUMNS. The daemon's
 * table keeps those columns in a file-backed shared mapping (native
 * statemap.c), so every store it makes is in the file the moment it is made;
 * the hash index, the timer lists and the free stack are derived data and
 * stay on the heap, to be rebuilt from the records by the next daemon.
 *
 * A record is slot s across the columns. It is live when its state is not
 * FREE, its `ver` is RECORD_VERSION and its `check` is `recordCheck` of its
 * fixed fields (family, protocol, flags, service, AID, instance, the four
 * addresses and ports, the 128-bit addresses of an IPv6 flow, id and creation
 * time), which the table writes last, after every other field of a new flow
 * (`FlowTable.seal`). A daemon killed in the middle of writing a record leaves
 * a check that does not match (the old occupant's, or zero), and the record is
 * skipped, never trusted. The fields that change per packet — state, FIN
 * bits, last-seen time, counters — are not in the check (that would cost a
 * recomputation per packet); a reader checks them by range instead.
 *
 * Header (little-endian words): 0 magic, 1 FILE_VERSION, 2 capacity, 3 flags
 * (bit 0: IPv6 columns), 4 headerCheck, 5 the writer's pid, 6-7 unused; bytes
 * 32-39 the next flow id (a float64); the rest reserved (zero).
 */

export const FLOW_FILE_MAGIC = 0x46504d56; // "VMPF" little-endian
/** The layout of the file: header and columns. Another value is a file this code cannot read. */
export const FLOW_FILE_VERSION = 1;
/** The meaning of a record's fields (mixed into its check): another value is skipped. */
export const RECORD_VERSION = 1;
export const FLOW_HEADER_BYTES = 256;
/** Header word indexes and the byte offset of the next id. */
export const H_MAGIC = 0;
export const H_VERSION = 1;
export const H_CAPACITY = 2;
export const H_FLAGS = 3;
export const H_CHECK = 4;
export const H_PID = 5;
export const H_NEXT_ID_BYTE = 32;

/** Flow flags (the `flags` column). */
export const FLOW_NEGOTIATED = 1; // server side of a cooperative flow: vport is its p2
export const FLOW_PEER = 2; // client side of a cooperative flow: the real side is a peer's VIP:p2

type ArrayKind = 'f64' | 'u32' | 'u16' | 'u8';
const BYTES: Record<ArrayKind, number> = { f64: 8, u32: 4, u16: 2, u8: 1 };

/** The persisted columns, in file order (the widest first). addr6 has 16 words per slot. */
export const COLUMNS = [
  ['id', 'f64'],
  ['created', 'f64'],
  ['lastSeen', 'f64'],
  ['pktsIn', 'f64'],
  ['bytesIn', 'f64'],
  ['pktsOut', 'f64'],
  ['bytesOut', 'f64'],
  ['clientAddr', 'u32'],
  ['vipAddr', 'u32'],
  ['natAddr', 'u32'],
  ['realAddr', 'u32'],
  ['check', 'u32'],
  ['addr6', 'u32'],
  ['clientPort', 'u16'],
  ['vport', 'u16'],
  ['natPort', 'u16'],
  ['realPort', 'u16'],
  ['service', 'u16'],
  ['aid', 'u16'],
  ['instance', 'u16'],
  ['family', 'u8'],
  ['state', 'u8'],
  ['proto', 'u8'],
  ['fins', 'u8'],
  ['flags', 'u8'],
  ['ver', 'u8'],
] as const satisfies readonly (readonly [string, ArrayKind])[];

export type ColumnName = (typeof COLUMNS)[number][0];

/** The persisted columns of a table (its own, or views over a file read back). */
export interface FlowColumns {
  id: Float64Array;
  created: Float64Array;
  lastSeen: Float64Array;
  pktsIn: Float64Array;
  bytesIn: Float64Array;
  pktsOut: Float64Array;
  bytesOut: Float64Array;
  clientAddr: Uint32Array;
  vipAddr: Uint32Array;
  natAddr: Uint32Array;
  realAddr: Uint32Array;
  check: Uint32Array;
  addr6: Uint32Array;
  clientPort: Uint16Array;
  vport: Uint16Array;
  natPort: Uint16Array;
  realPort: Uint16Array;
  service: Uint16Array;
  aid: Uint16Array;
  instance: Uint16Array;
  family: Uint8Array;
  state: Uint8Array;
  proto: Uint8Array;
  fins: Uint8Array;
  flags: Uint8Array;
  ver: Uint8Array;
}

const align64 = (n: number) => Math.ceil(n / 64) * 64;

/** Byte offsets of each column for a table of `capacity` slots, and the file's size. */
export function flowLayout(
  capacity: number,
  ipv6: boolean,
): { offsets: Record<ColumnName, number>; bytes: number } {
  const offsets = {} as Record<ColumnName, number>;
  let at = FLOW_HEADER_BYTES;
  for (const [name, kind] of COLUMNS) {
    offsets[name] = at;
    const entries = name === 'addr6' ? (ipv6 ? capacity * 16 : 0) : capacity;
    at = align64(at + entries * BYTES[kind]);
  }
  return { offsets, bytes: at };
}

/** Typed-array views of every column over `buf` (which holds at least flowLayout's bytes). */
export function flowColumns(buf: ArrayBuffer, capacity: number, ipv6: boolean): FlowColumns {
  const { offsets } = flowLayout(capacity, ipv6);
  const out = {} as Record<ColumnName, Float64Array | Uint32Array | Uint16Array | Uint8Array>;
  for (const [name, kind] of COLUMNS) {
    const n = name === 'addr6' ? (ipv6 ? capacity * 16 : 0) : capacity;
    const o = offsets[name];
    out[name] =
      kind === 'f64'
        ? new Float64Array(buf, o, n)
        : kind === 'u32'
          ? new Uint32Array(buf, o, n)
          : kind === 'u16'
            ? new Uint16Array(buf, o, n)
            : new Uint8Array(buf, o, n);
  }
  return out as unknown as FlowColumns;
}

/** The check of a header's fixed words. */
export function headerCheck(capacity: number, flags: number): number {
  return mix(mix(mix(mix(0x9e3779b9, FLOW_FILE_MAGIC), FLOW_FILE_VERSION), capacity), flags);
}

function mix(h: number, v: number): number {
  h = Math.imul(h ^ v, 0x85ebca6b);
  return (h ^ (h >>> 13)) >>> 0;
}

const f64 = new Float64Array(2);
const f64w = new Uint32Array(f64.buffer);

/**
 * The check of record `s`'s fixed fields, for record version `version`: a
 * 32-bit mix that any change of one of them changes (the same in every
 * process: no per-table seed). Allocates nothing.
 */
export function recordCheck(c: FlowColumns, s: number, version = RECORD_VERSION): number {
  let h = mix(0x2545f491, version);
  h = mix(h, c.family[s]! | (c.proto[s]! << 8) | (c.flags[s]! << 16));
  h = mix(h, c.service[s]! | (c.aid[s]! << 16));
  h = mix(h, c.instance[s]!);
  h = mix(h, c.clientAddr[s]!);
  h = mix(h, c.vipAddr[s]!);
  h = mix(h, c.natAddr[s]!);
  h = mix(h, c.realAddr[s]!);
  h = mix(h, (c.clientPort[s]! << 16) | c.vport[s]!);
  h = mix(h, (c.natPort[s]! << 16) | c.realPort[s]!);
  f64[0] = c.id[s]!;
  f64[1] = c.created[s]!;
  h = mix(mix(h, f64w[0]!), f64w[1]!);
  h = mix(mix(h, f64w[2]!), f64w[3]!);
  if (c.family[s] === 6 && c.addr6.length > 0) {
    const o = s * 16;
    for (let i = 0; i < 16; i++) h = mix(h, c.addr6[o + i]!);
  }
  // Never 0: a zero-filled slot of a fresh file must not pass.
  return (h ^ (h >>> 16)) >>> 0 || 1;
}
