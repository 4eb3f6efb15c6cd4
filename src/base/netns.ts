/**
 * Which network namespace this process is in, and the control socket path that
 * is vpm's default in it. A leaf module (node built-ins only): the config's
 * default (`control.socket`) and the CLI's (`vpm stats` without -c or -s) must be
 * computed the same way, so that `ip netns exec X vpm stats` finds the daemon of
 * namespace X.
 *
 * Theory of operation. /run is not per network namespace (`ip netns exec` keeps
 * it), so a path keyed by the TUN name alone would be one file for a daemon
 * `vpm0` in every namespace. The default is therefore `/run/vpm/<tun>.sock` in
 * the initial namespace (the one of pid 1: /proc/self/ns/net and /proc/1/ns/net
 * name the same namespace), and otherwise under a directory of the namespace:
 * `/run/vpm/netns/<name>/<tun>.sock` when it has an `ip netns` name (a bind
 * mount in /run/netns of the same namespace: same device and inode, which is
 * how `ip netns identify` finds it; the first name in sorted order if it has
 * several), else `/run/vpm/netns/net-<inode>/<tun>.sock`. A process that
 * cannot read /proc/1/ns/net (not root, or a sandbox that hides pid 1) goes by
 * the name alone: a namespace with an `ip netns` name is another one, one
 * without is taken for the initial one.
 */

import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';

export interface NetnsIdentity {
  /** The initial network namespace (pid 1's), or (pid 1 out of reach) one without a name. */
  initial: boolean;
  /** Its `ip netns` name, if it has one. */
  name: string | null;
  /** Its inode number (as in "net:[4026531840]"). */
  inode: string;
}

const NETNS_DIR = '/run/netns';

/** The network namespace of this process (or of `pid`). */
export function currentNetns(pid: number | 'self' = 'self'): NetnsIdentity {
  const self = `/proc/${pid}/ns/net`;
  const link = readlinkSync(self);
  const inode = /\[(\d+)\]/.exec(link)?.[1] ?? link;
  let initial: boolean | null = null;
  try {
    initial = readlinkSync('/proc/1/ns/net') === link;
  } catch {
    // pid 1 is out of reach (not root, or a sandbox that hides it): decided below
  }
  if (initial === true) return { initial, name: null, inode };
  const st = statSync(self);
  let names: string[] = [];
  try {
    names = readdirSync(NETNS_DIR).sort();
  } catch {
    // no named namespaces at all
  }
  for (const n of names) {
    try {
      const s = statSync(join(NETNS_DIR, n));
      if (s.ino === st.ino && s.dev === st.dev) return { initial: false, name: n, inode };
    } catch {
      // removed meanwhile, or not a namespace
    }
  }
  // Not known to be another namespace, and no name: the initial one.
  return { initial: initial ?? true, name: null, inode };
}

/** The network namespace of process `pid`, as its /proc link ("net:[…]"), or null. */
export function netnsLink(pid: number | 'self'): string | null {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return null;
  }
}

/** vpm's default control socket path for TUN `tunName` in namespace `ns` (see above). */
export function defaultControlSocket(tunName: string, ns: NetnsIdentity = currentNetns()): string {
  if (ns.initial) return `/run/vpm/${tunName}.sock`;
  const dir = ns.name !== null ? ns.name : `net-${ns.inode}`;
  return `/run/vpm/netns/${dir}/${tunName}.sock`;
}
