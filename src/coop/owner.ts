/**
 * Who owns a TCP socket: the executable of the process that holds the socket
 * with a given local address and port, found through /proc (the kernel's socket
 * table gives the inode, the processes' fd links give the owner). The seed's
 * configurator maps pathnames to AIDs; this is how vpm learns the pathname of a
 * local client it knows nothing else about.
 *
 * It reads files: control plane only (a held SYN waits for it), never per packet.
 */

import { readdir, readFile, readlink } from 'node:fs/promises';

/** The inode of the TCP socket bound to local addr:port (IPv4 table, then IPv6 v4-mapped), or null. */
export async function socketInode(addr: number, port: number): Promise<string | null> {
  const want4 = `${hex32le(addr)}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const want6 = `0000000000000000FFFF0000${hex32le(addr)}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const [file, want] of [
    ['/proc/net/tcp', want4],
    ['/proc/net/tcp6', want6],
  ] as const) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1] === want && f[9] && f[9] !== '0') return f[9];
    }
  }
  return null;
}

/** /proc/net/tcp prints an IPv4 address as the 4 bytes in memory order (little-endian u32 on x86). */
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

/** The executable of the local socket addr:port's owner, or null. */
export async function ownerExecutable(
  addr: number,
  port: number,
): Promise<{ pid: number; exe: string } | null> {
  const inode = await socketInode(addr, port);
  return inode === null ? null : socketOwner(inode);
}
