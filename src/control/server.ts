/**
 * Control socket server. Two fences (docs/security.md):
 *   - the file system: the socket is created with its final mode already in
 *     place (the umask is set around bind(), so there is no moment at which a
 *     wider mode exists), then given its group; mode and group come from the
 *     access policy (access.ts: 0600 root-only unless the configuration grants
 *     something to other users). The directories above it that vpm owns are
 *     made searchable when other users need to reach it; one it cannot change is
 *     reported (`onWarning`).
 *   - the kernel's credentials: every connection's peer (SO_PEERCRED, read once
 *     on accept) and every request is decided by the policy before a handler
 *     runs; a refusal is an error answer (ERR_CONTROL_DENIED, ERR_AID_DENIED,
 *     ERR_PID_MISMATCH), counted by reason and reported (`onRefused`).
 * Handlers are async functions by command name (one of the protocol's commands,
 * requests.ts). Every request is validated once, here, before its handler runs:
 * the envelope, then its `args` against the command's schema; the handler gets
 * the validated args, typed from that schema. A handler's thrown error becomes an
 * error response with its `code` (ERR_INTERNAL if it has none). The server never
 * lets a client's input crash the daemon.
 */

import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import {
  AccessPolicy,
  type Peer,
  peerOf,
  REFUSAL_REASONS,
  type Refusal,
  type RefusalReason,
} from './access.js';
import {
  ControlError,
  type ControlResponse,
  checkArgs,
  checkRequest,
  MAX_LINE,
  PROTOCOL_VERSION,
} from './protocol.js';
import type { Command, CommandArgs } from './requests.js';

const ROOT_ONLY = AccessPolicy.rootOnly();

export type Handler<C extends Command> = (
  args: CommandArgs<C>,
  conn: Socket,
) => Promise<unknown> | unknown;

/**
 * A handler as stored, its argument type erased: dispatch() gives it only args
 * that passed its command's schema. (A method signature, so that any Handler<C>
 * is one without the type checker expanding CommandArgs<C>.)
 */
type StoredHandler = {
  handle(args: unknown, conn: Socket): Promise<unknown> | unknown;
}['handle'];

/** Counters of the control socket (`vpm stats`: control). */
export interface ControlStats {
  connections: number;
  open: number;
  /** Requests refused by the access policy, by reason. */
  refused: Record<RefusalReason, number>;
}

export class ControlServer {
  private server: Server | null = null;
  private readonly conns = new Set<Socket>();
  private readonly peers = new WeakMap<Socket, Peer>();
  private readonly handlers = new Map<string, StoredHandler>();
  private connections = 0;
  private readonly refused = Object.fromEntries(REFUSAL_REASONS.map((r) => [r, 0])) as Record<
    RefusalReason,
    number
  >;
  /** Called when a connection closes (the virtual layer ties registrations to it). */
  onClose?: (conn: Socket) => void;
  /** A request refused by the policy (already answered and counted). Must not throw. */
  onRefused?: (cmd: string, refusal: Refusal, peer: Peer) => void;
  /** Something about the socket's reachability the operator should know. Must not throw. */
  onWarning?: (message: string) => void;

  /**
   * `access`: the policy of the configuration running now (it changes on
   * reload); default root only.
   */
  constructor(
    readonly path: string,
    private readonly access: () => AccessPolicy = () => ROOT_ONLY,
  ) {}

  /** The kernel's credentials of a connection's peer, as read when it was accepted. */
  peer(conn: Socket): Peer | undefined {
    return this.peers.get(conn);
  }

  stats(): ControlStats {
    return { connections: this.connections, open: this.conns.size, refused: { ...this.refused } };
  }

  on<C extends Command>(cmd: C, h: Handler<C>): this {
    this.handlers.set(cmd, h as StoredHandler);
    return this;
  }

  async listen(): Promise<void> {
    const { gid, mode } = this.access().socketMode();
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o755 });
    if (existsSync(this.path)) {
      if (!lstatSync(this.path).isSocket())
        throw new ControlError('ERR_CONTROL_SOCKET', `${this.path} exists and is not a socket`);
      rmSync(this.path); // stale socket of a dead daemon (the caller checked for a live one)
    }
    const server = createServer((c) => this.accept(c));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // bind() creates the file synchronously inside listen(), with mode 0777 &
      // ~umask: the mode is right from the first moment anyone could connect.
      const old = process.umask(0o777 & ~mode);
      try {
        server.listen(this.path, () => {
          server.off('error', reject);
          resolve();
        });
      } finally {
        process.umask(old);
      }
    });
    // Still root's group until here: the chown only widens, to the group meant.
    if (gid !== null) chownSync(this.path, 0, gid);
    chmodSync(this.path, mode);
    if (mode !== 0o600) this.makeReachable(mode);
  }

  /**
   * Other users must be able to search every directory above the socket. The
   * socket's own directory and those under /run/vpm are vpm's: they get the
   * search bits they lack; any other one that lacks them is reported.
   */
  private makeReachable(mode: number): void {
    const need = mode & 0o006 ? 0o001 : 0o010; // others, or the socket's group
    const own = dirname(this.path);
    for (let d = own; ; d = dirname(d)) {
      try {
        const st = statSync(d);
        if ((st.mode & need) === 0 && (st.mode & 0o001) === 0) {
          if (d === own || d === '/run/vpm' || d.startsWith('/run/vpm/')) {
            chmodSync(d, (st.mode & 0o7777) | 0o011);
          } else {
            this.onWarning?.(
              `${d} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}) is not searchable by other users: the users the configuration allows cannot reach the control socket ${this.path}`,
            );
          }
        }
      } catch {
        // vanished: listen() would have failed
      }
      if (d === '/' || dirname(d) === d) break;
    }
  }

  private accept(c: Socket): void {
    this.conns.add(c);
    this.connections++;
    this.peers.set(c, peerOf(c));
    let buf = '';
    c.setEncoding('utf8');
    const tooLong = () =>
      this.reply(c, {
        v: PROTOCOL_VERSION,
        id: null,
        ok: false,
        error: {
          code: 'ERR_CONTROL_BAD_REQUEST',
          message: `request line longer than ${MAX_LINE} bytes`,
        },
      });
    c.on('data', (chunk: string) => {
      buf += chunk;
      for (;;) {
        const nl = buf.indexOf('\n');
        if (nl < 0) break;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        // Also a whole line that came in one piece with its newline.
        if (line.length > MAX_LINE) tooLong();
        else if (line.trim().length > 0) void this.dispatch(c, line);
      }
      if (buf.length > MAX_LINE) {
        buf = '';
        tooLong();
      }
    });
    c.on('error', () => {});
    c.on('close', () => {
      this.conns.delete(c);
      try {
        this.onClose?.(c);
      } catch {
        // a close hook must not take the daemon down
      }
    });
  }

  private reply(c: Socket, r: ControlResponse): void {
    if (!c.destroyed) c.write(`${JSON.stringify(r)}\n`);
  }

  private async dispatch(c: Socket, line: string): Promise<void> {
    let req: unknown;
    try {
      req = JSON.parse(line);
    } catch {
      this.reply(c, {
        v: PROTOCOL_VERSION,
        id: null,
        ok: false,
        error: { code: 'ERR_CONTROL_BAD_REQUEST', message: 'request is not valid JSON' },
      });
      return;
    }
    const id = typeof req === 'object' && req !== null ? (req as { id?: unknown }).id : undefined;
    const rid = typeof id === 'number' || typeof id === 'string' ? id : null;
    const checked = checkRequest(req);
    if (!checked.ok) {
      this.reply(c, { v: PROTOCOL_VERSION, id: rid, ok: false, error: checked.error });
      return;
    }
    const { cmd, oneway } = checked.request;
    // Fire-and-forget requests get no response, not even an error (the sender does not read).
    const h = this.handlers.get(cmd);
    if (!h) {
      if (oneway !== true)
        this.reply(c, {
          v: PROTOCOL_VERSION,
          id: rid,
          ok: false,
          error: { code: 'ERR_CONTROL_UNKNOWN_COMMAND', message: `unknown command "${cmd}"` },
        });
      return;
    }
    // A command with a handler is one of the protocol's (on() takes only those).
    const args = checkArgs(cmd as Command, checked.request.args ?? {});
    if (!args.ok) {
      if (oneway !== true)
        this.reply(c, { v: PROTOCOL_VERSION, id: rid, ok: false, error: args.error });
      return;
    }
    const peer = this.peers.get(c);
    const refusal = peer
      ? this.access().decide(cmd as Command, args.args as Record<string, unknown>, peer)
      : null;
    if (refusal && peer) {
      this.refused[refusal.reason]++;
      try {
        this.onRefused?.(cmd, refusal, peer);
      } catch {
        // a logging hook must not take the daemon down
      }
      if (oneway !== true)
        this.reply(c, {
          v: PROTOCOL_VERSION,
          id: rid,
          ok: false,
          error: { code: refusal.code, message: refusal.message },
        });
      return;
    }
    if (oneway === true) {
      try {
        await h(args.args, c);
      } catch {
        // nothing to report to
      }
      return;
    }
    try {
      const result = await h(args.args, c);
      this.reply(c, { v: PROTOCOL_VERSION, id: rid, ok: true, result: result ?? null });
    } catch (e) {
      const err = e as { code?: unknown; message?: string };
      this.reply(c, {
        v: PROTOCOL_VERSION,
        id: rid,
        ok: false,
        error: {
          code: typeof err.code === 'string' ? err.code : 'ERR_INTERNAL',
          message: err.message ?? String(e),
        },
      });
    }
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
    rmSync(this.path, { force: true });
  }
}
