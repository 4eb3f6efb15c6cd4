/**
 * Control socket server. Root-only: the socket file is created with mode 0600 in
 * a directory of mode 0700, and each connecting peer's uid is not trusted beyond
 * that (file permissions are the access control, as for other daemons' sockets).
 * Handlers are async functions by command name (one of the protocol's commands,
 * requests.ts). Every request is validated once, here, before its handler runs:
 * the envelope, then its `args` against the command's schema; the handler gets
 * the validated args, typed from that schema. A handler's thrown error becomes an
 * error response with its `code` (ERR_INTERNAL if it has none). The server never
 * lets a client's input crash the daemon.
 */

import { chmodSync, existsSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import {
  ControlError,
  type ControlResponse,
  checkArgs,
  checkRequest,
  MAX_LINE,
  PROTOCOL_VERSION,
} from './protocol.js';
import type { Command, CommandArgs } from './requests.js';

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

export class ControlServer {
  private server: Server | null = null;
  private readonly conns = new Set<Socket>();
  private readonly handlers = new Map<string, StoredHandler>();
  /** Called when a connection closes (the virtual layer ties registrations to it). */
  onClose?: (conn: Socket) => void;

  constructor(readonly path: string) {}

  on<C extends Command>(cmd: C, h: Handler<C>): this {
    this.handlers.set(cmd, h as StoredHandler);
    return this;
  }

  async listen(): Promise<void> {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    if (existsSync(this.path)) {
      if (!lstatSync(this.path).isSocket())
        throw new ControlError('ERR_CONTROL_SOCKET', `${this.path} exists and is not a socket`);
      rmSync(this.path); // stale socket of a dead daemon (the caller checked for a live one)
    }
    const server = createServer((c) => this.accept(c));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(this.path, 0o600);
  }

  private accept(c: Socket): void {
    this.conns.add(c);
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
