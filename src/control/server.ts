/**
 * Control socket server. Root-only: the socket file is created with mode 0600 in
 * a directory of mode 0700, and each connecting peer's uid is not trusted beyond
 * that (file permissions are the access control, as for other daemons' sockets).
 * Handlers are async functions by command name; a handler's thrown error becomes
 * an error response with its `code` (ERR_INTERNAL if it has none). The server
 * never lets a client's input crash the daemon.
 */

import { chmodSync, existsSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { type ControlResponse, checkRequest, MAX_LINE, PROTOCOL_VERSION } from './protocol.js';

export type Handler = (args: Record<string, unknown>, conn: Socket) => Promise<unknown> | unknown;

export class ControlServer {
  private server: Server | null = null;
  private readonly conns = new Set<Socket>();
  readonly handlers = new Map<string, Handler>();
  /** Called when a connection closes (the virtual layer ties registrations to it). */
  onClose?: (conn: Socket) => void;

  constructor(readonly path: string) {}

  on(cmd: string, h: Handler): this {
    this.handlers.set(cmd, h);
    return this;
  }

  async listen(): Promise<void> {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    if (existsSync(this.path)) {
      if (!lstatSync(this.path).isSocket())
        throw new Error(`${this.path} exists and is not a socket`);
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
    c.on('data', (chunk: string) => {
      buf += chunk;
      for (;;) {
        const nl = buf.indexOf('\n');
        if (nl < 0) break;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim().length > 0) void this.dispatch(c, line);
      }
      if (buf.length > MAX_LINE) {
        buf = '';
        this.reply(c, {
          v: PROTOCOL_VERSION,
          id: null,
          ok: false,
          error: {
            code: 'ERR_CONTROL_BAD_REQUEST',
            message: `request line longer than ${MAX_LINE} bytes`,
          },
        });
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
    const bad = checkRequest(req);
    const id = (req as { id?: unknown }).id;
    const rid = typeof id === 'number' || typeof id === 'string' ? id : null;
    if (bad) {
      this.reply(c, { v: PROTOCOL_VERSION, id: rid, ok: false, error: bad });
      return;
    }
    const { cmd, args, oneway } = req as {
      cmd: string;
      args?: Record<string, unknown>;
      oneway?: unknown;
    };
    if (oneway === true) {
      // Fire-and-forget: no response, not even an error (the sender does not read).
      const h = this.handlers.get(cmd);
      if (h) {
        try {
          await h(args ?? {}, c);
        } catch {
          // nothing to report to
        }
      }
      return;
    }
    const h = this.handlers.get(cmd);
    if (!h) {
      this.reply(c, {
        v: PROTOCOL_VERSION,
        id: rid,
        ok: false,
        error: { code: 'ERR_CONTROL_UNKNOWN_COMMAND', message: `unknown command "${cmd}"` },
      });
      return;
    }
    try {
      const result = await h(args ?? {}, c);
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
