/**
 * Who owns a TCP or UDP socket: the executable of the process that holds the
 * socket with a given local address and port (IPv4 or IPv6), found through /proc (the kernel's
 * socket table gives the inode, the processes' fd links give the owner). The
 * seed's configurator maps pathnames to AIDs; this is how vpm learns the pathname
 * of a local client it knows nothing else about.
 *
 * It reads files: control plane only (a held packet waits for it), never per packet.
 */

import { readdir, readFile, readlink } from 'node:fs/promises';
import { type IpAddr, ipv6Words, isV4Mapped } from '../wire/address.js';

export type SocketProtocol = 'tcp' | 'udp';

const V4_WILDCARD = '00000000';
const V6_WILDCARD = '0'.repeat(32);

/**
 * The inode of the socket of `protocol` bound to local addr:port, or null.
 * `addr` is an IPv4 address (a number; also found as the v4-mapped address of a
 * dual-stack AF_INET6 socket) or an IPv6 one (a bigint; a v4-mapped one counts
 * as its IPv4 address). A TCP client's socket always has its own address once
 * it connects; a UDP client that sends without connect() or bind() keeps the
 * wildcard address (0.0.0.0 or ::) in the table, so for UDP a socket bound to
 * the wildcard on that port is taken when none is bound to addr itself.
 */
export async function socketInode(
  addr: IpAddr,
  port: number,
  protocol: SocketProtocol = 'tcp',
): Promise<string | null> {
  return (await socketEntry(addr, port, protocol))?.inode ?? null;
}

/** Where to look for a local addr:port: the /proc/net files and the local_address texts. */
export interface SocketQuery {
  files: string[];
  /** local_address values of a socket bound to addr:port itself. */
  exact: string[];
  /** local_address values of a wildcard socket on the port (UDP only), taken when no exact one is. */
  wildcard: string[];
}

/**
 * The local_address forms of addr:port in /proc/net/{tcp,udp}[6]. The kernel
 * prints an IPv4 address as one u32 in host byte order ("%08X"), and an IPv6
 * one as its four 32-bit words, each the same way ("%08X%08X%08X%08X"): on a
 * little-endian host the bytes of each word appear reversed. An IPv4
 * connection of an AF_INET6 socket shows in the IPv6 table as ::ffff:a.b.c.d.
 */
export function socketQuery(addr: IpAddr, port: number, protocol: SocketProtocol): SocketQuery {
  const p = port.toString(16).toUpperCase().padStart(4, '0');
  let v4: number | null = typeof addr === 'number' ? addr : null;
  if (typeof addr === 'bigint' && isV4Mapped(addr)) v4 = Number(addr & 0xffff_ffffn);
  if (v4 !== null) {
    const a = hex32(v4);
    return {
      files: [`/proc/net/${protocol}`, `/proc/net/${protocol}6`],
      exact: [`${a}:${p}`, `0000000000000000${hex32(0xffff)}${a}:${p}`],
      wildcard: protocol === 'udp' ? [`${V4_WILDCARD}:${p}`, `${V6_WILDCARD}:${p}`] : [],
    };
  }
  const w = ipv6Words(addr as bigint);
  return {
    files: [`/proc/net/${protocol}6`],
    exact: [`${[...w].map(hex32).join('')}:${p}`],
    wildcard: protocol === 'udp' ? [`${V6_WILDCARD}:${p}`] : [],
  };
}

/**
 * The first entry of a /proc/net/{tcp,udp}[6] table (`text`) whose local address
 * is one of `q.exact`, else the first one in `q.wildcard`; or null.
 */
export function findSocketIn(
  text: string,
  q: Pick<SocketQuery, 'exact' | 'wildcard'>,
): { exact: boolean; inode: string; uid: number } | null {
  let fallback: { exact: boolean; inode: string; uid: number } | null = null;
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    const local = f[1];
    const inode = f[9];
    const uid = Number(f[7]);
    if (local === undefined || !inode || inode === '0' || !Number.isInteger(uid)) continue;
    if (q.exact.includes(local)) return { exact: true, inode, uid };
    if (fallback === null && q.wildcard.includes(local)) fallback = { exact: false, inode, uid };
  }
  return fallback;
}

/**
 * The inode and owning uid (the kernel's table records the uid of the socket's
 * creator) of the socket of `protocol` bound to local addr:port, found as
 * socketInode finds it, or null.
 */
export async function socketEntry(
  addr: IpAddr,
  port: number,
  protocol: SocketProtocol = 'tcp',
): Promise<{ inode: string; uid: number } | null> {
  const q = socketQuery(addr, port, protocol);
  let fallback: { inode: string; uid: number } | null = null;
  for (const file of q.files) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    const hit = findSocketIn(text, q);
    if (hit?.exact) return { inode: hit.inode, uid: hit.uid };
    if (hit && fallback === null) fallback = { inode: hit.inode, uid: hit.uid };
  }
  return fallback;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** A u32 as /proc/net prints it: its 4 bytes in memory order (little-endian u32 on x86). */
function hex32(a: number): string {
  const b = [a >>> 24, (a >>> 16) & 0xff, (a >>> 8) & 0xff, a & 0xff];
  const order = LITTLE_ENDIAN ? b.reverse() : b;
  return order.map((x) => x.toString(16).toUpperCase().padStart(2, '0')).join('');
}

/** pid and executable path of the process holding socket `inode`, or null. */
export async function socketOwner(inode: string): Promise<{ pid: number; exe: string } | null> {
  const target = `socket:[${inode}]`;
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((d) => /^\d+$/.test(d));
  } catch {
    return null;
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    for (const fd of fds) {
      try {
        if ((await readlink(`/proc/${pid}/fd/${fd}`)) === target) {
          return { pid: Number(pid), exe: await readlink(`/proc/${pid}/exe`) };
        }
      } catch {
        // closed meanwhile
      }
    }
  }
  return null;
}

/** The executable of the owner of the local `protocol` socket addr:port, or null. */
export async function ownerExecutable(
  addr: IpAddr,
  port: number,
  protocol: SocketProtocol = 'tcp',
): Promise<{ pid: number; exe: string } | null> {
  const inode = await socketInode(addr, port, protocol);
  return inode === null ? null : socketOwner(inode);
}
