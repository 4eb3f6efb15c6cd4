/**
 * Who may do what on the control socket (docs/security.md).
 *
 * Theory of operation. The kernel tells the daemon who connected: SO_PEERCRED
 * (pid, uid, gid) and SO_PEERGROUPS (supplementary groups), recorded by the
 * kernel when the peer called connect() and read once per connection through
 * the native addon (`peerOf`). Nothing a message says about its sender is
 * believed: a request is decided by the credentials of the connection it came
 * on. They are fixed for the connection's life: a program that connected as
 * root and then dropped to `nobody` keeps root's authority on that connection,
 * and so does a child that inherits it over fork().
 *
 * Each request is decided here before its handler runs (`decide`):
 *
 *   ping                                anyone who can connect
 *   flows, stats, instances, services   root, the monitoring group (control.monitorGroup);
 *                                       services also every user of an AID
 *   hello, bind, release, connect       root, or a user of the request's AID
 *                                       (applications[].users); a claimed pid
 *                                       must be the caller's own
 *   reload, and any other command       root only
 *
 * A refusal is an error answer with a stable code — ERR_CONTROL_DENIED (the
 * command), ERR_AID_DENIED (the AID), ERR_PID_MISMATCH (a pid that is not the
 * caller's) — counted by that reason and reported to the daemon's log.
 *
 * The pid check. The library sends getpid(); the kernel's pid is the daemon's
 * view of the same process. In another pid namespace (a container) the two
 * differ: the claimed pid is then accepted when it is one of the caller's pids
 * in its nested namespaces (the NSpid line of /proc/<pid>/status). Root's
 * requests are not checked (root can do anything the check would prevent).
 *
 * Users and groups by name are resolved once per configuration (start, reload)
 * through the C library (getpwnam_r, so NSS sources count); a name that does
 * not exist is a configuration error naming it.
 */

import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { ConfigError } from '../config/errors.js';
import type { Config } from '../config/types.js';
import { loadNative } from '../native/index.js';
import type { Command } from './requests.js';

/** The kernel's view of the process at the other end of a control connection. */
export interface Peer {
  /** The daemon's view (its pid namespace); 0 if the kernel could not tell. */
  readonly pid: number;
  /** -1: unknown (SO_PEERCRED failed): such a caller may only ping. */
  readonly uid: number;
  readonly gid: number;
  readonly groups: readonly number[];
}

export const UNKNOWN_PEER: Peer = { pid: 0, uid: -1, gid: -1, groups: [] };

/** Why a request was refused: the counters' and the log's names. */
export const REFUSAL_REASONS = ['command', 'aid', 'pid'] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

export type AccessErrorCode = 'ERR_CONTROL_DENIED' | 'ERR_AID_DENIED' | 'ERR_PID_MISMATCH';

export interface Refusal {
  reason: RefusalReason;
  code: AccessErrorCode;
  message: string;
}

/** Names to ids; the addon's in the daemon, a table in tests. */
export interface NameLookup {
  user(name: string): number | null;
  group(name: string): number | null;
  userName(uid: number): string | null;
}

export function nativeLookup(): NameLookup {
  const n = loadNative();
  return {
    user: (name) => n.lookupUser(name),
    group: (name) => n.lookupGroup(name),
    userName: (uid) => n.userName(uid),
  };
}

/** The credentials of a connected unix socket, or UNKNOWN_PEER. */
export function peerOf(socket: Socket): Peer {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return UNKNOWN_PEER;
  try {
    return loadNative().peerCred(fd);
  } catch {
    return UNKNOWN_PEER;
  }
}

/** The pids of `pid` in its nested pid namespaces (NSpid), outermost first; [pid] if unreadable. */
function nsPids(pid: number): number[] {
  try {
    const m = /^NSpid:\s*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (m) return m[1]!.trim().split(/\s+/).map(Number);
  } catch {
    // gone
  }
  return [pid];
}

const MONITOR: ReadonlySet<string> = new Set(['flows', 'stats', 'instances', 'services']);
const VIRTUAL: ReadonlySet<string> = new Set(['hello', 'bind', 'release', 'connect']);

/** The access rules of one configuration, names resolved. */
export class AccessPolicy {
  private constructor(
    private readonly aidIndex: ReadonlyMap<string, number>,
    /** Per AID: the uids allowed beside root; null: root only (not configured). */
    private readonly aidUsers: readonly (ReadonlySet<number> | null)[],
    readonly groupGid: number | null,
    readonly monitorGid: number | null,
    private readonly userName: (uid: number) => string | null,
  ) {}

  /** Root only, nothing configured (a ControlServer without a policy). */
  static rootOnly(): AccessPolicy {
    return new AccessPolicy(new Map(), [], null, null, () => null);
  }

  /** Throws ConfigError (ERR_CONFIG_INVALID) for a user or group that does not exist. */
  static fromConfig(cfg: Config, lookup: NameLookup = nativeLookup()): AccessPolicy {
    const bad = (path: string, value: string, what: string): never => {
      throw new ConfigError('ERR_CONFIG_INVALID', cfg.source, [
        { path, value, message: `there is no ${what} "${value}" on this host` },
      ]);
    };
    const user = (v: string | number, where: string): number => {
      if (typeof v === 'number') return v;
      return lookup.user(v) ?? bad(where, v, 'user');
    };
    const group = (v: string | number | null, where: string): number | null => {
      if (v === null || typeof v === 'number') return v;
      return lookup.group(v) ?? bad(where, v, 'group');
    };
    const aidUsers = cfg.applications.map((a) =>
      a.users === null
        ? null
        : new Set(a.users.map((u, j) => user(u, `applications[${a.index}].users[${j}]`))),
    );
    return new AccessPolicy(
      new Map(cfg.applications.map((a) => [a.aid, a.index])),
      aidUsers,
      group(cfg.control.group, 'control.group'),
      group(cfg.control.monitorGroup, 'control.monitorGroup'),
      (uid) => {
        try {
          return lookup.userName(uid);
        } catch {
          return null;
        }
      },
    );
  }

  /** Does the configuration let anyone but root use the socket? */
  grantsNonRoot(): boolean {
    return (
      this.monitorGid !== null ||
      this.aidUsers.some((s) => s !== null && [...s].some((uid) => uid !== 0))
    );
  }

  /**
   * The control socket's group and mode: control.group, 0660; without it, the
   * monitoring group when it is the only grant; 0666 when users are granted
   * AIDs without a group (every request is decided here anyway); 0600 when
   * nothing is granted to non-root users.
   */
  socketMode(): { gid: number | null; mode: number } {
    if (this.groupGid !== null) return { gid: this.groupGid, mode: 0o660 };
    const users = this.aidUsers.some((s) => s !== null && [...s].some((uid) => uid !== 0));
    if (!users && this.monitorGid !== null) return { gid: this.monitorGid, mode: 0o660 };
    return { gid: null, mode: users ? 0o666 : 0o600 };
  }

  private inGroup(p: Peer, gid: number | null): boolean {
    return gid !== null && (p.gid === gid || p.groups.includes(gid));
  }

  mayMonitor(p: Peer): boolean {
    return p.uid === 0 || this.inGroup(p, this.monitorGid);
  }

  /** May `p` register and report for AID index `aid`? */
  mayUseAid(p: Peer, aid: number): boolean {
    if (p.uid === 0) return true;
    return p.uid >= 0 && this.aidUsers[aid]?.has(p.uid) === true;
  }

  private usesSomeAid(p: Peer): boolean {
    return p.uid === 0 || (p.uid >= 0 && this.aidUsers.some((s) => s?.has(p.uid) === true));
  }

  /**
   * The AID index a local client connection of `uid` belongs to by its user:
   * the first application that names the user explicitly (root by default
   * belongs to no AID), or -1.
   */
  aidOfUser(uid: number): number {
    return this.aidUsers.findIndex((s) => s?.has(uid) === true);
  }

  /** "uid 65534 (nobody)" */
  who(p: Peer): string {
    if (p.uid < 0) return 'a caller the kernel could not identify';
    const name = this.userName(p.uid);
    return `uid ${p.uid}${name ? ` (${name})` : ''}, pid ${p.pid}`;
  }

  /** null: allowed; otherwise why not. `args` have passed their schema. */
  decide(cmd: Command, args: Record<string, unknown>, p: Peer): Refusal | null {
    if (cmd === 'ping') return null;
    if (p.uid === 0) return null;
    if (MONITOR.has(cmd)) {
      if (this.mayMonitor(p) || (cmd === 'services' && this.usesSomeAid(p))) return null;
      return {
        reason: 'command',
        code: 'ERR_CONTROL_DENIED',
        message: `"${cmd}" is not allowed for ${this.who(p)}: root and the monitoring group (control.monitorGroup) only`,
      };
    }
    if (!VIRTUAL.has(cmd))
      return {
        reason: 'command',
        code: 'ERR_CONTROL_DENIED',
        message: `"${cmd}" is not allowed for ${this.who(p)}: root only`,
      };
    if (!this.usesSomeAid(p))
      return {
        reason: 'command',
        code: 'ERR_CONTROL_DENIED',
        message: `"${cmd}" is not allowed for ${this.who(p)}: no application lists this user in applications[].users`,
      };
    const aid = args.aid;
    if (typeof aid === 'string') {
      const i = this.aidIndex.get(aid);
      // An unknown AID is the handler's to refuse (ERR_UNKNOWN_AID), as for root.
      if (i !== undefined && !this.mayUseAid(p, i))
        return {
          reason: 'aid',
          code: 'ERR_AID_DENIED',
          message: `${this.who(p)} may not use AID "${aid}" (not in its applications[].users)`,
        };
    }
    const pid = args.pid;
    if (typeof pid === 'number' && pid !== p.pid && !nsPids(p.pid).includes(pid))
      return {
        reason: 'pid',
        code: 'ERR_PID_MISMATCH',
        message: `the request claims pid ${pid}, but the caller is ${this.who(p)}`,
      };
    return null;
  }
}
