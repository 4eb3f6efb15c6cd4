/**
 * The cooperative negotiation channel's framed connection: one stream between
 * two daemons, carrying the frames of src/coop/protocol.ts. Both ends use it —
 * the PeerServer (src/coop/server.ts) for every connection it accepts, the
 * PeerClient (src/coop/client.ts) for the one it keeps to its peer — and add
 * only what their role decides.
 *
 * Theory of operation. A FramedConnection takes a stream that is already
 * connected (a `net.Socket`; a `tls.TLSSocket` is one too, so an encrypted
 * channel needs no change here) and is *open* until exactly one of:
 *   - its owner closes it (`close()`);
 *   - the peer closes it or the transport fails (the socket's `close`);
 *   - it closes itself because the peer broke the protocol (below), or did not
 *     read what was written to it (more than maxWriteBuffer bytes queued).
 * Its owner is told once, synchronously, with the cause (`handler.closed`), and
 * nothing is read or written after that.
 *
 * Reading. A FrameReader holds at most one frame. A length prefix above the
 * maximum closes the connection as soon as its 4 bytes are in (`too_large`). A
 * frame that stays incomplete for frameTimeoutMs closes it (`frame_timeout`): the
 * timer runs from the first byte of an incomplete frame and is not reset by
 * later bytes, so a peer trickling one byte a second (slowloris) still times out.
 * A stream that ends inside a frame counts as `bad_length`.
 *
 * Untrusted input. Nothing in a frame is believed before its tag verifies. A
 * frame that does not authenticate (bad length, too large, unknown sender, bad
 * tag) or that replays an earlier one closes the connection at once, unanswered:
 * whoever sent it does not hold the key or is replaying captured traffic. A frame
 * that authenticates but is malformed, of another version or stale is handed to
 * the owner (`handler.unusable`), which may answer it, and the connection stays:
 * a peer with the key is misconfigured, not hostile. Every refusal is counted by
 * reason on the end the connection belongs to, and reported as an event.
 *
 * Writing. Each end remembers the nonces of the messages it sends in its replay
 * cache as well as those it receives, so a frame reflected back at its sender
 * (two daemons may share a name and a key) is refused as replayed.
 */

import type { Socket } from 'node:net';
import {
  type AnyMessage,
  type BodyOf,
  checkKey,
  DEFAULT_WINDOW_MS,
  type DecodeResult,
  decode,
  encode,
  FrameReader,
  isUnauthenticated,
  type KeyLookup,
  MAX_REFUSE_MESSAGE,
  type MessageType,
  makeMessage,
  type RefuseBody,
} from './protocol.js';
import { ReplayCache } from './replay.js';
import {
  type ChannelEvent,
  type ChannelRefusal,
  type ChannelStats,
  cloneStats,
  countRefuse,
  newChannelStats,
} from './stats.js';

/** Options of either end of the channel. */
export interface ChannelOptions {
  /** This daemon's name, sent as `from`. */
  name: string;
  /** Staleness window (ignored when `replay` is given). Default 30000. */
  windowMs?: number;
  /** Replay cache, shared by all connections of this end. Default: a new one with `windowMs`. */
  replay?: ReplayCache;
  /** How long an incomplete frame may sit in a connection's buffer. Default 2000. */
  frameTimeoutMs?: number;
  /** Bytes queued for a peer that does not read before its connection is closed. Default 65536. */
  maxWriteBuffer?: number;
  /** Clock, ms since the epoch. Default Date.now. */
  now?: () => number;
  /** Observability hook (logging). Must not throw. */
  onEvent?: (e: ChannelEvent) => void;
}

/** Keep a refusal message within the wire's limits (printable, bounded). */
export function refuseText(s: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping control characters is the point
  const clean = s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, ' ');
  return clean.length > MAX_REFUSE_MESSAGE ? `${clean.slice(0, MAX_REFUSE_MESSAGE - 3)}...` : clean;
}

/** A message of ours, built and encoded, ready to be put on a connection. */
export interface Outgoing {
  msg: AnyMessage;
  frame: Buffer;
}

/**
 * One end of the channel (a PeerServer or a PeerClient): its name, keys, replay
 * cache, clock, limits and counters, shared by all its connections.
 */
export class ChannelEnd {
  readonly name: string;
  readonly keys: KeyLookup;
  readonly replay: ReplayCache;
  readonly now: () => number;
  readonly frameTimeoutMs: number;
  readonly maxWriteBuffer: number;
  readonly counters: ChannelStats = newChannelStats();
  private readonly onEvent: ((e: ChannelEvent) => void) | undefined;

  /** Throws ERR_COOP_KEY for a key shorter than 32 bytes. */
  constructor(opts: ChannelOptions, keys: KeyLookup) {
    if (keys instanceof Uint8Array) checkKey(keys);
    else for (const [name, k] of keys) checkKey(k, `key of peer ${name}`);
    this.name = opts.name;
    this.keys = keys;
    this.now = opts.now ?? Date.now;
    this.replay =
      opts.replay ??
      new ReplayCache({ windowMs: opts.windowMs ?? DEFAULT_WINDOW_MS, now: this.now });
    this.frameTimeoutMs = opts.frameTimeoutMs ?? 2000;
    this.maxWriteBuffer = opts.maxWriteBuffer ?? 65536;
    this.onEvent = opts.onEvent;
  }

  event(e: ChannelEvent): void {
    try {
      this.onEvent?.(e);
    } catch {
      // a logging hook must not break the channel
    }
  }

  /** A copy of the counters. */
  stats(): ChannelStats {
    return cloneStats(this.counters);
  }

  /** Use `key` for peer `name` from now on (a client's key change; the map is its own). */
  setKey(name: string, key: Uint8Array): void {
    if (this.keys instanceof Map) this.keys.set(name, key);
  }

  /** The key shared with peer `to`. */
  keyFor(to: string): Uint8Array | undefined {
    return this.keys instanceof Uint8Array ? this.keys : this.keys.get(to);
  }

  /**
   * Build and encode a message of ours. Throws ERR_COOP_BAD_MESSAGE /
   * ERR_COOP_TOO_LARGE if it would not validate (our own bug: it is not sent).
   */
  build<T extends MessageType>(key: Uint8Array, type: T, id: number, body: BodyOf[T]): Outgoing {
    const msg = makeMessage(type, id, this.name, body, this.now()) as AnyMessage;
    return { msg, frame: encode(msg, key) };
  }
}

/** Why a framed connection ended, as its owner is told (once). */
export type CloseCause =
  | { kind: 'closed' }
  | { kind: 'lost' }
  | { kind: 'overflow' }
  | { kind: 'refused'; reason: ChannelRefusal; why: string };

/** An authenticated frame that was refused all the same (bad_json, bad_version, bad_field, stale). */
export type UnusableFrame = Extract<DecodeResult, { ok: false }>;

/** What the owner of a connection plugs in. */
export interface FramedHandler {
  /** An authenticated, fresh, valid message (already counted as received). */
  message(msg: AnyMessage): void;
  /** An authenticated frame that was refused (already counted): the connection stays. */
  unusable(r: UnusableFrame): void;
  /** The connection ended (see CloseCause). Called once. */
  closed(cause: CloseCause): void;
}

export class FramedConnection {
  private readonly reader = new FrameReader();
  private frameTimer: NodeJS.Timeout | null = null;
  private open = true;

  /**
   * `socket` is connected; `remote` names the other end in events and messages.
   * `keys`: this connection's own (a TLS connection's: the peer its PSK belongs
   * to, with that key); default the end's.
   */
  constructor(
    private readonly end: ChannelEnd,
    private readonly socket: Socket,
    readonly remote: string,
    private readonly handler: FramedHandler,
    private readonly keys: KeyLookup = end.keys,
  ) {
    socket.setNoDelay(true);
    socket.on('error', () => {}); // the `close` that follows is what counts
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('close', () => {
      if (this.open && this.reader.pending > 0)
        this.refused(
          'bad_length',
          `connection closed inside a frame (${this.reader.pending} bytes)`,
        );
      this.finish({ kind: 'lost' });
    });
  }

  /** Until it ends (see CloseCause); nothing is read or written after. */
  get alive(): boolean {
    return this.open;
  }

  /** Count a refusal by `reason` and report it. */
  refused(reason: ChannelRefusal, detail: string): void {
    this.end.counters.refused[reason]++;
    this.end.event({ kind: 'refused', reason, detail, remote: this.remote });
  }

  /** Encode and write (throws like ChannelEnd.build); false if the connection is unusable. */
  send<T extends MessageType>(to: string, type: T, id: number, body: BodyOf[T]): boolean {
    const key = this.keys instanceof Uint8Array ? this.keys : this.keys.get(to);
    // No key cannot happen: `to` is our peer, or authenticated with this very key.
    if (!this.open || !key) return false;
    return this.put(this.end.build(key, type, id, body));
  }

  /**
   * Write a refusal, its message made printable and short; one that would not
   * validate (a bad reason code from a handler) goes out as `internal` instead.
   */
  refuse(to: string, id: number, body: RefuseBody): boolean {
    const out: RefuseBody = { reason: body.reason, message: refuseText(body.message) };
    if (body.aids !== undefined) out.aids = body.aids;
    try {
      return this.send(to, 'refuse', id, out);
    } catch {
      return this.send(to, 'refuse', id, {
        reason: 'internal',
        message: 'invalid refusal from the handler',
      });
    }
  }

  /** Write an encoded message; false if the connection is gone or its peer does not read. */
  put(out: Outgoing): boolean {
    if (!this.open || this.socket.destroyed) return false;
    if (this.socket.writableLength + out.frame.length > this.end.maxWriteBuffer) {
      this.end.counters.overflows++;
      this.end.event({ kind: 'overflow', remote: this.remote });
      this.finish({ kind: 'overflow' });
      return false;
    }
    const { msg } = out;
    this.end.replay.check(msg.nonce, msg.ts); // our own nonce: a reflected copy is a replay
    this.socket.write(out.frame);
    this.end.counters.sent[msg.type]++;
    if (msg.type === 'refuse') countRefuse(this.end.counters.refusesSent, msg.body.reason);
    return true;
  }

  /** Close it from this side (no refusal counted). */
  close(): void {
    this.finish({ kind: 'closed' });
  }

  private onData(chunk: Buffer): void {
    if (!this.open) return;
    const r = this.reader.push(chunk, (frame) => {
      this.onFrame(frame);
      return this.open;
    });
    if (r === 'too_large') {
      this.fault(
        'too_large',
        'length prefix above the maximum frame',
        'sent a frame larger than the maximum',
      );
      return;
    }
    if (!this.open || this.reader.pending === 0) this.clearFrameTimer();
    else if (!this.frameTimer) {
      this.frameTimer = setTimeout(() => {
        this.frameTimer = null;
        const ms = this.end.frameTimeoutMs;
        this.fault(
          'frame_timeout',
          `incomplete frame (${this.reader.pending} bytes) for ${ms} ms`,
          `left a frame incomplete for ${ms} ms`,
        );
      }, this.end.frameTimeoutMs);
    }
  }

  private onFrame(frame: Buffer): void {
    const end = this.end;
    const r = decode(frame, this.keys, end.replay, { now: end.now() });
    if (!r.ok) {
      if (isUnauthenticated(r.reason) || r.reason === 'replayed') {
        this.fault(r.reason, r.detail, `sent a frame refused as ${r.reason} (${r.detail})`);
        return;
      }
      this.refused(r.reason, r.detail);
      this.handler.unusable(r);
      return;
    }
    const msg = r.msg;
    end.counters.received[msg.type]++;
    if (msg.type === 'refuse') countRefuse(end.counters.refusesReceived, msg.body.reason);
    this.handler.message(msg);
  }

  /** The peer broke the protocol: count it, close, and tell the owner `why` (phrased about the peer). */
  private fault(reason: ChannelRefusal, detail: string, why: string): void {
    this.refused(reason, detail);
    this.finish({ kind: 'refused', reason, why });
  }

  private clearFrameTimer(): void {
    if (this.frameTimer) clearTimeout(this.frameTimer);
    this.frameTimer = null;
  }

  private finish(cause: CloseCause): void {
    if (!this.open) return;
    this.open = false;
    this.clearFrameTimer();
    this.socket.destroy();
    this.handler.closed(cause);
  }
}
