/**
 * Who owns a TCP or UDP socket: the executable of the process that holds the
 * socket with a given local address and port, found through /proc (the kernel's
 * socket table gives the inode, the processes' fd links give the owner). The
 * seed's configurator maps pathnames to AIDs; this is how vpm learns the pathname
 * of a local client it knows nothing else about.
 *
 * It reads files: control plane only (a held packet waits for it), never per packet.
 */

import { readdir, readFile, readlink } from 'node:fs/promises';

export type SocketProtocol = 'tcp' | 'udp';

const V4_WILDCARD = '00000000';
const V6_WILDCARD = '0'.repeat(32);

/**
 * The inode of the socket of `protocol` bound to local addr:port (IPv4 table,
 * then IPv6 v4-mapped), or null. A TCP client's socket always has its own address
 * once it connects; a UDP client that sends without connect() or bind() keeps the
 * wildcard address (0.0.0.0 or ::) in the table, so for UDP a socket bound to the
 * wildcard on that port is taken when none is bound to addr itself.
 */
export async function socketInode(
  addr: number,
  port: number,
  protocol: SocketProtocol = 'tcp',
): Promise<string | null> {
  return (await socketEntry(addr, port, protocol))?.inode ?? null;
}

/**
 * The inode and owning uid (the kernel's table records the uid of the socket's
 * creator) of the socket of `protocol` bound to local addr:port, found as
 * socketInode finds it, or null.
 */
export async function socketEntry(
  addr: number,
  port: number,
  protocol: SocketProtocol = 'tcp',
): Promise<{ inode: string; uid: number } | null> {
  const p = port.toString(16).toUpperCase().padStart(4, '0');
  const a = hex32le(addr);
  const exact = [`${a}:${p}`, `0000000000000000FFFF0000${a}:${p}`];
  const wildcard = protocol === 'udp' ? [`${V4_WILDCARD}:${p}`, `${V6_WILDCARD}:${p}`] : [];
  let fallback: { inode: string; uid: number } | null = null;
  for (const file of [`/proc/net/${protocol}`, `/proc/net/${protocol}6`]) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      const local = f[1];
      const inode = f[9];
      const uid = Number(f[7]);
      if (local === undefined || !inode || inode === '0' || !Number.isInteger(uid)) continue;
      if (exact.includes(local)) return { inode, uid };
      if (fallback === null && wildcard.includes(local)) fallback = { inode, uid };
    }
  }
  return fallback;
}

/** /proc/net/{tcp,udp} print an IPv4 address as the 4 bytes in memory order (little-endian u32 on x86). */
function hex32le(a: number): string {
  const b = [a & 0xff, (a >>> 8) & 0xff, (a >>> 16) & 0xff, a >>> 24];
  const le =
    process.arch === 'x64' ||
    process.arch === 'arm64' ||
    process.arch === 'ia32' ||
    process.arch === 'arm';
  const order = le ? b : b.reverse();
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
  addr: number,
  port: number,
  protocol: SocketProtocol = 'tcp',
): Promise<{ pid: number; exe: string } | null> {
  const inode = await socketInode(addr, port, protocol);
  return inode === null ? null : socketOwner(inode);
}
