/**
 * The cooperative negotiation channel: TCP transport for src/coop/protocol.ts.
 * The server side (the vpm serving a cooperative virtual service) runs a
 * PeerServer; each client side keeps one PeerClient per peer it negotiates with.
 *
 * Theory of operation, server side. Each connection has a FrameReader (at most one
 * frame buffered) and a table of open negotiations, keyed by id:
 *
 *   request --handler.request--> requested --offer sent--> offered --ack--> acking --confirm sent--> done
 *                                    |                        |  \                 \
 *                                 refuse                 timeout  client refuse,    handler refuses,
 *                                                        disconnect, port/AID       or the confirm
 *                                                        mismatch                   cannot be sent
 *
 * For every offer the handler returns, exactly one of two things happens: the
 * confirm is written (the translation stands), or `handler.abandon` is called
 * once, with the reason, so that p2 goes back to the pool. An ack is accepted
 * only for an id this connection offered, from the peer it was offered to, for
 * the offered port and one of the offered AIDs: the handler never sees an ack it
 * did not make an offer for. Ids are the client's: they are scoped to the
 * connection, so two client sides (or one after a reconnect) never collide.
 *
 * Untrusted input. A frame that does not authenticate (bad length, too large,
 * unknown sender, bad tag) or that replays an earlier one closes the connection
 * at once, unanswered: whoever sent it does not hold the key or is replaying
 * captured traffic. A frame that authenticates but is malformed, of another
 * version or stale is counted and answered with a refusal when its id is legible
 * (a peer with the key is misconfigured, not hostile; tell it why), and the
 * connection stays. A frame that stays incomplete for frameTimeoutMs (a stalled
 * or slowloris peer) closes the connection. Every refusal is counted by reason.
 *
 * Client side. One TCP connection, opened on demand by the first call and after
 * any loss; concurrent calls share one connection attempt, and a failed attempt
 * makes calls fail fast (ERR_PEER_UNREACHABLE) for retryAfterMs instead of
 * hammering a dead peer. Every call has one deadline: if the connection is not up
 * by then it fails with ERR_PEER_UNREACHABLE, if the reply is not in by then with
 * ERR_PEER_TIMEOUT. Replies are matched to calls by id and must be of an
 * expected type (request -> offer|refuse, ack -> confirm|refuse). A lost
 * connection fails the calls sent on it (ERR_PEER_DISCONNECTED). An offer that
 * arrives after its call gave up is answered with a refusal (`timeout`) so the
 * server releases p2 at once instead of waiting for its own timer.
 *
 * Both sides remember the nonces they send in their replay cache as well as
 * those they receive, so a frame reflected back at its sender (two daemons may
 * share a name and a key) is refused as replayed.
 */

import { randomBytes } from 'node:crypto';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import {
  type AckBody,
  type AnyMessage,
  type BodyOf,
  CoopError,
  checkKey,
  DECODE_REASONS,
  DEFAULT_WINDOW_MS,
  decode,
  encode,
  FrameReader,
  isUnauthenticated,
  type KeyLookup,
  MAX_REFUSE_MESSAGE,
  MESSAGE_TYPES,
  type Message,
  type MessageType,
  makeMessage,
  type OfferBody,
  REFUSE_REASONS,
  type RefuseBody,
  type RequestBody,
} from './protocol.js';
import { ReplayCache } from './replay.js';

/** Why a frame or a connection was refused by the channel (decode reasons plus two). */
export const CHANNEL_REFUSALS = [...DECODE_REASONS, 'frame_timeout', 'unexpected'] as const;
export type ChannelRefusal = (typeof CHANNEL_REFUSALS)[number];

export type ChannelEvent =
  | { kind: 'refused'; reason: ChannelRefusal; detail: string; remote: string }
  | { kind: 'connected'; remote: string }
  | { kind: 'disconnected'; remote: string; pending: number }
  | { kind: 'overflow'; remote: string };

function zeroes<K extends string>(keys: readonly K[]): Record<K, number> {
  const o = {} as Record<K, number>;
  for (const k of keys) o[k] = 0;
  return o;
}

/** Refusal reasons counted by name; any other code the peer invents counts as `other`. */
const COUNTED_REFUSE_REASONS = [...REFUSE_REASONS, 'other'] as const;
type CountedRefuseReason = (typeof COUNTED_REFUSE_REASONS)[number];

function countRefuse(into: Record<CountedRefuseReason, number>, reason: string): void {
  const k = (REFUSE_REASONS as readonly string[]).includes(reason)
    ? (reason as CountedRefuseReason)
    : 'other';
  into[k]++;
}

/** Counters common to both ends. */
export interface ChannelStats {
  sent: Record<MessageType, number>;
  received: Record<MessageType, number>;
  /** Frames (or connections) refused, by reason. */
  refused: Record<ChannelRefusal, number>;
  /** `refuse` messages this side sent / got, by their reason code. */
  refusesSent: Record<CountedRefuseReason, number>;
  refusesReceived: Record<CountedRefuseReason, number>;
  /** Server: offers abandoned because no ack came in time. Client: calls that got no reply in time. */
  timeouts: number;
  /** Connections closed because the peer did not read what we wrote (maxWriteBuffer). */
  overflows: number;
}

function newChannelStats(): ChannelStats {
  return {
    sent: zeroes(MESSAGE_TYPES),
    received: zeroes(MESSAGE_TYPES),
    refused: zeroes(CHANNEL_REFUSALS),
    refusesSent: zeroes(COUNTED_REFUSE_REASONS),
    refusesReceived: zeroes(COUNTED_REFUSE_REASONS),
    timeouts: 0,
    overflows: 0,
  };
}

function cloneStats(s: ChannelStats): ChannelStats {
  return {
    sent: { ...s.sent },
    received: { ...s.received },
    refused: { ...s.refused },
    refusesSent: { ...s.refusesSent },
    refusesReceived: { ...s.refusesReceived },
    timeouts: s.timeouts,
    overflows: s.overflows,
  };
}

/** Keep a refusal message within the wire's limits (printable, bounded). */
function refuseText(s: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping control characters is the point
  const clean = s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, ' ');
  return clean.length > MAX_REFUSE_MESSAGE ? `${clean.slice(0, MAX_REFUSE_MESSAGE - 3)}...` : clean;
}

// ===========================================================================
// Server side

/** Who is on the other end of a server connection. */
export interface PeerInfo {
  /** The authenticated sender name of the message. */
  name: string;
  /** Remote "address:port" of the TCP connection. */
  remote: string;
  /** Connection serial number (for logs). */
  connection: number;
}

/** An offer made and not yet settled. */
export interface Negotiation {
  id: number;
  /** The peer it was offered to (authenticated sender of the request). */
  peer: string;
  request: RequestBody;
  offer: OfferBody;
  /** When the offer was sent (server clock). */
  offeredAt: number;
}

/**
 * Why an offer ended without a confirm: no ack in time; the connection closed;
 * the client refused; the ack named another port or an AID not offered; the
 * handler refused the ack (or threw); the offer could not be encoded; the server
 * was closed.
 */
export const ABANDON_REASONS = [
  'timeout',
  'disconnected',
  'refused',
  'port_mismatch',
  'aid_mismatch',
  'declined',
  'unsent',
  'closed',
] as const;
export type AbandonReason = (typeof ABANDON_REASONS)[number];

export type OfferAnswer = { type: 'offer'; body: OfferBody } | { type: 'refuse'; body: RefuseBody };
export type AckAnswer = { type: 'confirm' } | { type: 'refuse'; body: RefuseBody };

/** What the server side's daemon plugs in. A handler that throws makes a refusal `internal`. */
export interface ServerHandler {
  /** A client side asks: offer (the AIDs listening on the service, and a fresh p2) or refuse. */
  request(msg: Message<'request'>, peer: PeerInfo): OfferAnswer | Promise<OfferAnswer>;
  /**
   * The client side accepted the offer (already checked: same peer, port and an
   * offered AID). Record the translation and confirm, or refuse.
   */
  ack(msg: Message<'ack'>, neg: Negotiation, peer: PeerInfo): AckAnswer | Promise<AckAnswer>;
  /** An offer ended without a confirm (see AbandonReason): release its p2. Called once per such offer. */
  abandon?(neg: Negotiation, why: AbandonReason, peer: PeerInfo): void;
}

export interface PeerServerOptions {
  /** Address to listen on. */
  host: string;
  /** TCP port; 0 picks a free one (see `address()`). */
  port: number;
  /** This daemon's name, sent as `from`. */
  name: string;
  /** The peers' keys by name, or one key for any peer. */
  keys: KeyLookup;
  handler: ServerHandler;
  /** Staleness window (ignored when `replay` is given). Default 30000. */
  windowMs?: number;
  /** Replay cache, shared by all connections. Default: a new one with `windowMs`. */
  replay?: ReplayCache;
  /** How long an offer waits for its ack. Default 2000. */
  offerTimeoutMs?: number;
  /** How long an incomplete frame may sit in a connection's buffer. Default 2000. */
  frameTimeoutMs?: number;
  /** Concurrent connections; more are closed at once. Default 64. */
  maxConnections?: number;
  /** Open negotiations per connection; more are refused `busy`. Default 256. */
  maxNegotiations?: number;
  /** Bytes queued for a peer that does not read before its connection is closed. Default 65536. */
  maxWriteBuffer?: number;
  /** Clock, ms since the epoch. Default Date.now. */
  now?: () => number;
  /** Observability hook (logging). Must not throw. */
  onEvent?: (e: ChannelEvent) => void;
}

export interface PeerServerStats extends ChannelStats {
  connections: number;
  open: number;
  /** Connections closed on arrival because maxConnections were open. */
  rejectedConnections: number;
  offered: number;
  confirmed: number;
  abandoned: Record<AbandonReason, number>;
}

interface NegState {
  state: 'requested' | 'offered' | 'acking';
  neg: Negotiation;
  timer: NodeJS.Timeout | null;
}

interface ServerConn {
  serial: number;
  socket: Socket;
  remote: string;
  reader: FrameReader;
  frameTimer: NodeJS.Timeout | null;
  negs: Map<number, NegState>;
  alive: boolean;
}

export class PeerServer {
  private server: Server | null = null;
  private readonly conns = new Set<ServerConn>();
  private readonly replay: ReplayCache;
  private readonly now: () => number;
  private readonly offerTimeoutMs: number;
  private readonly frameTimeoutMs: number;
  private readonly maxConnections: number;
  private readonly maxNegotiations: number;
  private readonly maxWriteBuffer: number;
  private serial = 0;
  private closing = false;
  private readonly counters = newChannelStats();
  private connections = 0;
  private rejectedConnections = 0;
  private offered = 0;
  private confirmed = 0;
  private readonly abandoned = zeroes(ABANDON_REASONS);

  constructor(private readonly opts: PeerServerOptions) {
    if (opts.keys instanceof Uint8Array) checkKey(opts.keys);
    else for (const [name, k] of opts.keys) checkKey(k, `key of peer ${name}`);
    this.now = opts.now ?? Date.now;
    this.replay =
      opts.replay ??
      new ReplayCache({ windowMs: opts.windowMs ?? DEFAULT_WINDOW_MS, now: this.now });
    this.offerTimeoutMs = opts.offerTimeoutMs ?? 2000;
    this.frameTimeoutMs = opts.frameTimeoutMs ?? 2000;
    this.maxConnections = opts.maxConnections ?? 64;
    this.maxNegotiations = opts.maxNegotiations ?? 256;
    this.maxWriteBuffer = opts.maxWriteBuffer ?? 65536;
  }

  async listen(): Promise<AddressInfo> {
    if (this.server) throw new CoopError('ERR_PEER_LISTENING', 'PeerServer is already listening');
    this.closing = false;
    const server = createServer((s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      const fail = (e: NodeJS.ErrnoException) =>
        reject(
          new CoopError(
            'ERR_PEER_LISTEN',
            `cannot listen for peers on ${this.opts.host}:${this.opts.port}: ${e.code ?? e.message}`,
          ),
        );
      server.once('error', fail);
      server.listen({ host: this.opts.host, port: this.opts.port }, () => {
        server.off('error', fail);
        resolve();
      });
    });
    server.on('error', () => {}); // after listen: per-connection errors are handled per socket
    this.server = server;
    return this.address();
  }

  /** Where the server listens (the real port when `port` was 0). */
  address(): AddressInfo {
    const a = this.server?.address();
    if (!a || typeof a === 'string')
      throw new CoopError('ERR_PEER_NOT_LISTENING', 'PeerServer is not listening');
    return a;
  }

  stats(): PeerServerStats {
    return {
      ...cloneStats(this.counters),
      connections: this.connections,
      open: this.conns.size,
      rejectedConnections: this.rejectedConnections,
      offered: this.offered,
      confirmed: this.confirmed,
      abandoned: { ...this.abandoned },
    };
  }

  /** Stop listening, close every connection, abandon open offers (`closed`). */
  async close(): Promise<void> {
    this.closing = true;
    const s = this.server;
    this.server = null;
    for (const c of this.conns) c.socket.destroy();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private event(e: ChannelEvent): void {
    try {
      this.opts.onEvent?.(e);
    } catch {
      // a logging hook must not break the channel
    }
  }

  private refused(c: ServerConn, reason: ChannelRefusal, detail: string): void {
    this.counters.refused[reason]++;
    this.event({ kind: 'refused', reason, detail, remote: c.remote });
  }

  private accept(socket: Socket): void {
    const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`;
    socket.on('error', () => {});
    if (this.closing || this.conns.size >= this.maxConnections) {
      this.rejectedConnections++;
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const c: ServerConn = {
      serial: ++this.serial,
      socket,
      remote,
      reader: new FrameReader(),
      frameTimer: null,
      negs: new Map(),
      alive: true,
    };
    this.conns.add(c);
    this.connections++;
    this.event({ kind: 'connected', remote });
    socket.on('data', (chunk: Buffer) => this.onData(c, chunk));
    socket.on('close', () => this.onClose(c));
  }

  private onData(c: ServerConn, chunk: Buffer): void {
    const r = c.reader.push(chunk, (frame) => {
      this.onFrame(c, frame);
      return c.alive;
    });
    if (r === 'too_large') {
      this.refused(c, 'too_large', 'length prefix above the maximum frame');
      this.drop(c);
      return;
    }
    if (!c.alive) return;
    // The timer runs from the first byte of an incomplete frame and is not reset
    // by later bytes: a peer trickling one byte a second still times out.
    if (c.reader.pending === 0) {
      if (c.frameTimer) clearTimeout(c.frameTimer);
      c.frameTimer = null;
    } else if (!c.frameTimer) {
      c.frameTimer = setTimeout(() => {
        c.frameTimer = null;
        this.refused(
          c,
          'frame_timeout',
          `incomplete frame (${c.reader.pending} bytes) for ${this.frameTimeoutMs} ms`,
        );
        this.drop(c);
      }, this.frameTimeoutMs);
    }
  }

  private drop(c: ServerConn): void {
    c.alive = false;
    c.socket.destroy();
  }

  private onClose(c: ServerConn): void {
    // Closed by the peer in the middle of a frame: a frame shorter than its length.
    if (c.alive && !this.closing && c.reader.pending > 0)
      this.refused(c, 'bad_length', `connection closed inside a frame (${c.reader.pending} bytes)`);
    c.alive = false;
    this.conns.delete(c);
    if (c.frameTimer) clearTimeout(c.frameTimer);
    c.frameTimer = null;
    let open = 0;
    for (const [id, st] of c.negs) {
      // `requested` and `acking` negotiations settle when their handler returns.
      if (st.state !== 'offered') continue;
      open++;
      c.negs.delete(id);
      this.abandon(c, st, this.closing ? 'closed' : 'disconnected');
    }
    this.event({ kind: 'disconnected', remote: c.remote, pending: open });
  }

  private info(c: ServerConn, name: string): PeerInfo {
    return { name, remote: c.remote, connection: c.serial };
  }

  private abandon(c: ServerConn, st: NegState, why: AbandonReason): void {
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
    this.abandoned[why]++;
    if (why === 'timeout') this.counters.timeouts++;
    try {
      this.opts.handler.abandon?.(st.neg, why, this.info(c, st.neg.peer));
    } catch {
      // the daemon's problem; the channel keeps going
    }
  }

  /** Write one message to a connection; false if it could not go out. */
  private send<T extends MessageType>(
    c: ServerConn,
    to: string,
    type: T,
    id: number,
    body: BodyOf[T],
  ): boolean {
    if (!c.alive) return false;
    const key = this.opts.keys instanceof Uint8Array ? this.opts.keys : this.opts.keys.get(to);
    if (!key) return false; // cannot happen: `to` authenticated with this very key
    const msg = makeMessage(type, id, this.opts.name, body, this.now()) as AnyMessage;
    const frame = encode(msg, key); // throws only for our own bad message: callers catch
    if (c.socket.writableLength + frame.length > this.maxWriteBuffer) {
      this.counters.overflows++;
      this.event({ kind: 'overflow', remote: c.remote });
      this.drop(c);
      return false;
    }
    this.replay.check(msg.nonce, msg.ts); // our own nonce: a reflected copy is a replay
    c.socket.write(frame);
    this.counters.sent[type]++;
    if (msg.type === 'refuse') countRefuse(this.counters.refusesSent, msg.body.reason);
    return true;
  }

  private sendRefuse(
    c: ServerConn,
    to: string,
    id: number,
    reason: string,
    message: string,
    aids?: string[],
  ): void {
    const body: RefuseBody = { reason, message: refuseText(message) };
    if (aids) body.aids = aids;
    try {
      this.send(c, to, 'refuse', id, body);
    } catch {
      this.send(c, to, 'refuse', id, {
        reason: 'internal',
        message: 'invalid refusal from the handler',
      });
    }
  }

  private onFrame(c: ServerConn, frame: Buffer): void {
    const r = decode(frame, this.opts.keys, this.replay, { now: this.now() });
    if (!r.ok) {
      this.refused(c, r.reason, r.detail);
      if (isUnauthenticated(r.reason) || r.reason === 'replayed') {
        this.drop(c);
      } else if (r.id !== undefined && r.sender !== undefined) {
        // Authenticated but unusable: tell the peer why (it holds the key).
        this.sendRefuse(c, r.sender, r.id, r.reason, r.detail);
      }
      return;
    }
    const msg = r.msg;
    this.counters.received[msg.type]++;
    switch (msg.type) {
      case 'request':
        void this.onRequest(c, msg);
        return;
      case 'ack':
        void this.onAck(c, msg);
        return;
      case 'refuse':
        countRefuse(this.counters.refusesReceived, msg.body.reason);
        this.onClientRefuse(c, msg);
        return;
      case 'offer':
      case 'confirm':
        this.refused(
          c,
          'unexpected',
          `a ${msg.type} from ${msg.from} (server side accepts request, ack, refuse)`,
        );
        this.sendRefuse(c, msg.from, msg.id, 'unexpected', `a server does not accept ${msg.type}`);
        return;
    }
  }

  private async onRequest(c: ServerConn, msg: Message<'request'>): Promise<void> {
    const { id, from } = msg;
    if (c.negs.has(id)) {
      this.sendRefuse(
        c,
        from,
        id,
        'duplicate_id',
        `negotiation ${id} is already open on this connection`,
      );
      return;
    }
    if (c.negs.size >= this.maxNegotiations) {
      this.sendRefuse(c, from, id, 'busy', `${c.negs.size} negotiations open on this connection`);
      return;
    }
    const st: NegState = {
      state: 'requested',
      neg: { id, peer: from, request: msg.body, offer: { aids: [], port: 0 }, offeredAt: 0 },
      timer: null,
    };
    c.negs.set(id, st);
    let answer: OfferAnswer;
    try {
      answer = await this.opts.handler.request(msg, this.info(c, from));
    } catch (e) {
      answer = {
        type: 'refuse',
        body: { reason: 'internal', message: `handler failed: ${(e as Error).message}` },
      };
    }
    if (answer.type === 'refuse') {
      c.negs.delete(id);
      this.sendRefuse(c, from, id, answer.body.reason, answer.body.message, answer.body.aids);
      return;
    }
    st.neg.offer = answer.body;
    this.offered++;
    if (!c.alive) {
      c.negs.delete(id);
      this.abandon(c, st, this.closing ? 'closed' : 'disconnected');
      return;
    }
    st.state = 'offered';
    st.neg.offeredAt = this.now();
    let sent: boolean;
    try {
      sent = this.send(c, from, 'offer', id, answer.body);
    } catch (e) {
      c.negs.delete(id);
      this.abandon(c, st, 'unsent');
      this.sendRefuse(c, from, id, 'internal', `cannot send the offer: ${(e as Error).message}`);
      return;
    }
    if (!sent) {
      // The connection went away on the write; onClose may already have run.
      if (c.negs.get(id) === st) {
        c.negs.delete(id);
        this.abandon(c, st, this.closing ? 'closed' : 'disconnected');
      }
      return;
    }
    st.timer = setTimeout(() => {
      st.timer = null;
      if (c.negs.get(id) !== st || st.state !== 'offered') return;
      c.negs.delete(id);
      this.abandon(c, st, 'timeout');
    }, this.offerTimeoutMs);
  }

  private async onAck(c: ServerConn, msg: Message<'ack'>): Promise<void> {
    const { id, from } = msg;
    const st = c.negs.get(id);
    if (st?.state !== 'offered' || st.neg.peer !== from) {
      this.sendRefuse(
        c,
        from,
        id,
        'unknown_negotiation',
        `no open offer ${id} for ${from} on this connection`,
      );
      return;
    }
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
    const offer = st.neg.offer;
    if (msg.body.port !== offer.port) {
      c.negs.delete(id);
      this.abandon(c, st, 'port_mismatch');
      this.sendRefuse(
        c,
        from,
        id,
        'port_mismatch',
        `ack names port ${msg.body.port}, the offer was ${offer.port}`,
      );
      return;
    }
    if (!offer.aids.includes(msg.body.aid)) {
      c.negs.delete(id);
      this.abandon(c, st, 'aid_mismatch');
      this.sendRefuse(
        c,
        from,
        id,
        'aid_mismatch',
        `AID ${msg.body.aid} was not offered`,
        offer.aids,
      );
      return;
    }
    st.state = 'acking';
    let answer: AckAnswer;
    try {
      answer = await this.opts.handler.ack(msg, st.neg, this.info(c, from));
    } catch (e) {
      answer = {
        type: 'refuse',
        body: { reason: 'internal', message: `handler failed: ${(e as Error).message}` },
      };
    }
    c.negs.delete(id);
    if (answer.type === 'refuse') {
      this.abandon(c, st, 'declined');
      this.sendRefuse(c, from, id, answer.body.reason, answer.body.message, answer.body.aids);
      return;
    }
    // The commit point: the confirm goes out, or the offer is abandoned.
    if (this.send(c, from, 'confirm', id, { port: offer.port })) this.confirmed++;
    else this.abandon(c, st, this.closing ? 'closed' : 'disconnected');
  }

  private onClientRefuse(c: ServerConn, msg: Message<'refuse'>): void {
    const st = c.negs.get(msg.id);
    // A refusal for anything but an open offer to this peer changes nothing (and gets no answer).
    if (st?.state !== 'offered' || st.neg.peer !== msg.from) return;
    c.negs.delete(msg.id);
    this.abandon(c, st, 'refused');
  }
}

// ===========================================================================
// Client side

export interface PeerClientOptions {
  /** The peer's negotiation endpoint. */
  host: string;
  port: number;
  /** This daemon's name, sent as `from`. */
  name: string;
  /** The peer's name: replies must come from it. */
  peer: string;
  /** The key shared with this peer. */
  key: Uint8Array;
  /** Deadline of one call (request or ack), connecting included. Default 1000. */
  timeoutMs?: number;
  /** Longest a connection attempt may take. Default 1000. */
  connectTimeoutMs?: number;
  /** After a failed connection attempt, calls fail at once for this long. Default 100. */
  retryAfterMs?: number;
  /** Staleness window (ignored when `replay` is given). Default 30000. */
  windowMs?: number;
  replay?: ReplayCache;
  /** How long an incomplete frame may sit in the buffer. Default 2000. */
  frameTimeoutMs?: number;
  /** Calls in flight; more fail with ERR_PEER_BUSY. Default 1024. */
  maxPending?: number;
  /** Default 65536. */
  maxWriteBuffer?: number;
  now?: () => number;
  onEvent?: (e: ChannelEvent) => void;
}

export interface PeerClientStats extends ChannelStats {
  connected: boolean;
  pending: number;
  /** Connections established. */
  connects: number;
  /** Calls failed with ERR_PEER_UNREACHABLE. */
  unreachable: number;
  /** Connections lost (by either side). */
  disconnects: number;
  /** Replies for calls that had already given up. */
  late: number;
}

export type NegotiationResult =
  | { ok: true; id: number; aid: string; port: number; aids: string[] }
  | {
      ok: false;
      id: number;
      /** Who said no: the peer (its refusal) or this side (AID not offered). */
      by: 'peer' | 'self';
      reason: string;
      message: string;
      aids?: string[];
    };

interface Pending {
  expect: readonly MessageType[];
  resolve: (m: AnyMessage) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
  /** The connection the call went out on; null while connecting. */
  socket: Socket | null;
}

export class PeerClient {
  private socket: Socket | null = null;
  private connecting: Promise<Socket> | null = null;
  private failedAt = -Infinity;
  private failure = '';
  private closed = false;
  private readonly pending = new Map<number, Pending>();
  private nextId = randomBytes(4).readUInt32BE(0);
  private readonly replay: ReplayCache;
  private readonly keys: ReadonlyMap<string, Uint8Array>;
  private readonly now: () => number;
  readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly retryAfterMs: number;
  private readonly frameTimeoutMs: number;
  private readonly maxPending: number;
  private readonly maxWriteBuffer: number;
  private readonly counters = newChannelStats();
  private connects = 0;
  private unreachable = 0;
  private disconnects = 0;
  private late = 0;

  constructor(private readonly opts: PeerClientOptions) {
    checkKey(opts.key, `key of peer ${opts.peer}`);
    this.keys = new Map([[opts.peer, opts.key]]);
    this.now = opts.now ?? Date.now;
    this.replay =
      opts.replay ??
      new ReplayCache({ windowMs: opts.windowMs ?? DEFAULT_WINDOW_MS, now: this.now });
    this.timeoutMs = opts.timeoutMs ?? 1000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 1000;
    this.retryAfterMs = opts.retryAfterMs ?? 100;
    this.frameTimeoutMs = opts.frameTimeoutMs ?? 2000;
    this.maxPending = opts.maxPending ?? 1024;
    this.maxWriteBuffer = opts.maxWriteBuffer ?? 65536;
  }

  private get where(): string {
    return `peer ${this.opts.peer} at ${this.opts.host}:${this.opts.port}`;
  }

  /** Step 1: ask for the service. Resolves with the peer's offer or refusal. */
  request(
    body: RequestBody,
    timeoutMs = this.timeoutMs,
  ): Promise<Message<'offer'> | Message<'refuse'>> {
    return this.call('request', this.allocId(), body, ['offer', 'refuse'], timeoutMs) as Promise<
      Message<'offer'> | Message<'refuse'>
    >;
  }

  /** Step 2: accept offer `id`. Resolves with the peer's confirm or refusal. */
  ack(
    id: number,
    body: AckBody,
    timeoutMs = this.timeoutMs,
  ): Promise<Message<'confirm'> | Message<'refuse'>> {
    return this.call('ack', id, body, ['confirm', 'refuse'], timeoutMs) as Promise<
      Message<'confirm'> | Message<'refuse'>
    >;
  }

  /**
   * Step 2': decline offer `id` (one way; no answer). Sent only on the live
   * connection: if it is gone, the peer has already dropped the offer.
   */
  refuse(id: number, body: RefuseBody): void {
    if (this.socket)
      this.write(this.socket, 'refuse', id, { ...body, message: refuseText(body.message) });
  }

  /**
   * The whole negotiation for one held SYN: request, check the client's AID
   * against the offer, then ack (and wait for the confirm) or refuse. Everything,
   * connecting included, within `timeoutMs`. Rejects with a CoopError
   * (ERR_PEER_UNREACHABLE, ERR_PEER_TIMEOUT, ERR_PEER_DISCONNECTED,
   * ERR_PEER_PROTOCOL, ERR_PEER_BUSY, ERR_PEER_CLOSED); a refusal is a result.
   */
  async negotiate(body: RequestBody, timeoutMs = this.timeoutMs): Promise<NegotiationResult> {
    const deadline = this.now() + timeoutMs;
    const first = await this.request(body, timeoutMs);
    const id = first.id;
    if (first.type === 'refuse') return { ok: false, id, by: 'peer', ...first.body };
    const offer = first.body;
    if (!offer.aids.includes(body.aid)) {
      const message = `AID ${body.aid} is not among the offered ${offer.aids.join(', ')}`;
      this.refuse(id, { reason: 'aid_mismatch', message, aids: [body.aid] });
      return {
        ok: false,
        id,
        by: 'self',
        reason: 'aid_mismatch',
        message: refuseText(message),
        aids: offer.aids,
      };
    }
    const left = deadline - this.now();
    if (left <= 0) {
      this.refuse(id, { reason: 'timeout', message: 'no time left to acknowledge' });
      this.counters.timeouts++;
      throw new CoopError(
        'ERR_PEER_TIMEOUT',
        `${this.where}: negotiation ${id} ran out of its ${timeoutMs} ms`,
      );
    }
    const second = await this.ack(id, { aid: body.aid, port: offer.port }, left);
    if (second.type === 'refuse') return { ok: false, id, by: 'peer', ...second.body };
    if (second.body.port !== offer.port)
      throw new CoopError(
        'ERR_PEER_PROTOCOL',
        `${this.where}: confirm of negotiation ${id} names port ${second.body.port}, the offer was ${offer.port}`,
      );
    return { ok: true, id, aid: body.aid, port: offer.port, aids: offer.aids };
  }

  stats(): PeerClientStats {
    return {
      ...cloneStats(this.counters),
      connected: this.socket !== null,
      pending: this.pending.size,
      connects: this.connects,
      unreachable: this.unreachable,
      disconnects: this.disconnects,
      late: this.late,
    };
  }

  /** Fail every call in flight (ERR_PEER_CLOSED), close the connection; later calls fail too. */
  close(): void {
    this.closed = true;
    for (const [id, p] of this.pending)
      this.settle(id, p, new CoopError('ERR_PEER_CLOSED', `${this.where}: client closed`));
    this.socket?.destroy();
    this.socket = null;
  }

  private allocId(): number {
    let id = this.nextId;
    while (this.pending.has(id)) id = (id + 1) >>> 0;
    this.nextId = (id + 1) >>> 0;
    return id;
  }

  private settle(id: number, p: Pending, result: Error | AnyMessage): void {
    if (this.pending.get(id) !== p) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    p.timer = null;
    if (result instanceof Error) p.reject(result);
    else p.resolve(result);
  }

  private call<T extends MessageType>(
    type: T,
    id: number,
    body: BodyOf[T],
    expect: readonly MessageType[],
    timeoutMs: number,
  ): Promise<AnyMessage> {
    if (this.closed)
      return Promise.reject(new CoopError('ERR_PEER_CLOSED', `${this.where}: client closed`));
    if (this.pending.has(id))
      return Promise.reject(
        new CoopError('ERR_PEER_BUSY', `${this.where}: negotiation ${id} has a call in flight`),
      );
    if (this.pending.size >= this.maxPending)
      return Promise.reject(
        new CoopError('ERR_PEER_BUSY', `${this.where}: ${this.pending.size} calls in flight`),
      );
    // Encode first: a message of ours that would not validate fails at once
    // (ERR_COOP_BAD_MESSAGE), whether or not the peer is reachable.
    let out: { msg: AnyMessage; frame: Buffer };
    try {
      out = this.build(type, id, body);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<AnyMessage>((resolve, reject) => {
      const p: Pending = { expect, resolve, reject, timer: null, socket: null };
      this.pending.set(id, p);
      p.timer = setTimeout(() => {
        p.timer = null;
        if (p.socket === null) {
          this.unreachable++;
          this.settle(
            id,
            p,
            new CoopError(
              'ERR_PEER_UNREACHABLE',
              `${this.where}: not connected within ${timeoutMs} ms`,
            ),
          );
        } else {
          this.counters.timeouts++;
          this.settle(
            id,
            p,
            new CoopError(
              'ERR_PEER_TIMEOUT',
              `${this.where}: no answer to ${type} ${id} within ${timeoutMs} ms`,
            ),
          );
        }
      }, timeoutMs);
      this.connect().then(
        (socket) => {
          if (this.pending.get(id) !== p) return; // timed out or closed meanwhile
          p.socket = socket;
          if (!this.put(socket, out.msg, out.frame))
            this.settle(
              id,
              p,
              new CoopError(
                'ERR_PEER_DISCONNECTED',
                `${this.where}: connection lost while sending ${type} ${id}`,
              ),
            );
        },
        (e: CoopError) => {
          if (this.pending.get(id) === p && e.code === 'ERR_PEER_UNREACHABLE') this.unreachable++;
          this.settle(id, p, e);
        },
      );
    });
  }

  /** Build and encode a message of ours; throws ERR_COOP_* if it would not validate. */
  private build<T extends MessageType>(
    type: T,
    id: number,
    body: BodyOf[T],
  ): { msg: AnyMessage; frame: Buffer } {
    const msg = makeMessage(type, id, this.opts.name, body, this.now()) as AnyMessage;
    return { msg, frame: encode(msg, this.opts.key) };
  }

  /** Encode and write (throws like `build`); false if the connection is unusable. */
  private write<T extends MessageType>(
    socket: Socket,
    type: T,
    id: number,
    body: BodyOf[T],
  ): boolean {
    const { msg, frame } = this.build(type, id, body);
    return this.put(socket, msg, frame);
  }

  /** Write an encoded message; false if the connection is gone or its peer does not read. */
  private put(socket: Socket, msg: AnyMessage, frame: Buffer): boolean {
    if (socket.destroyed || this.socket !== socket) return false;
    if (socket.writableLength + frame.length > this.maxWriteBuffer) {
      this.counters.overflows++;
      this.event({ kind: 'overflow', remote: this.where });
      socket.destroy();
      return false;
    }
    this.replay.check(msg.nonce, msg.ts); // our own nonce: a reflected copy is a replay
    socket.write(frame);
    this.counters.sent[msg.type]++;
    if (msg.type === 'refuse') countRefuse(this.counters.refusesSent, msg.body.reason);
    return true;
  }

  private event(e: ChannelEvent): void {
    try {
      this.opts.onEvent?.(e);
    } catch {
      // a logging hook must not break the channel
    }
  }

  private connect(): Promise<Socket> {
    if (this.closed)
      return Promise.reject(new CoopError('ERR_PEER_CLOSED', `${this.where}: client closed`));
    if (this.socket) return Promise.resolve(this.socket);
    if (this.connecting) return this.connecting;
    const since = this.now() - this.failedAt;
    if (since < this.retryAfterMs)
      return Promise.reject(
        new CoopError(
          'ERR_PEER_UNREACHABLE',
          `${this.where}: unreachable ${Math.round(since)} ms ago (${this.failure}); not retrying yet`,
        ),
      );
    this.connecting = new Promise<Socket>((resolve, reject) => {
      const s = connect({ host: this.opts.host, port: this.opts.port });
      let done = false;
      const fail = (why: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        s.destroy();
        this.connecting = null;
        this.failedAt = this.now();
        this.failure = why;
        reject(new CoopError('ERR_PEER_UNREACHABLE', `${this.where}: ${why}`));
      };
      const timer = setTimeout(
        () => fail(`no connection within ${this.connectTimeoutMs} ms`),
        this.connectTimeoutMs,
      );
      s.once('error', (e: NodeJS.ErrnoException) => fail(e.code ?? e.message));
      s.once('connect', () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        s.removeAllListeners('error');
        this.connecting = null;
        if (this.closed) {
          s.destroy();
          reject(new CoopError('ERR_PEER_CLOSED', `${this.where}: client closed`));
          return;
        }
        this.attach(s);
        resolve(s);
      });
    });
    return this.connecting;
  }

  private attach(s: Socket): void {
    s.setNoDelay(true);
    this.socket = s;
    this.connects++;
    this.event({ kind: 'connected', remote: this.where });
    const reader = new FrameReader();
    let frameTimer: NodeJS.Timeout | null = null;
    const clearFrameTimer = () => {
      if (frameTimer) clearTimeout(frameTimer);
      frameTimer = null;
    };
    s.on('error', () => {});
    s.on('data', (chunk: Buffer) => {
      const r = reader.push(chunk, (frame) => {
        this.onFrame(s, frame);
        return this.socket === s;
      });
      if (r === 'too_large') {
        this.refusedFrame('too_large', 'length prefix above the maximum frame');
        this.lose(s, 'ERR_PEER_PROTOCOL', 'sent a frame larger than the maximum');
        return;
      }
      if (this.socket !== s || reader.pending === 0) clearFrameTimer();
      else if (!frameTimer)
        frameTimer = setTimeout(() => {
          frameTimer = null;
          this.refusedFrame('frame_timeout', `incomplete frame for ${this.frameTimeoutMs} ms`);
          this.lose(
            s,
            'ERR_PEER_PROTOCOL',
            `left a frame incomplete for ${this.frameTimeoutMs} ms`,
          );
        }, this.frameTimeoutMs);
    });
    s.on('close', () => {
      clearFrameTimer();
      if (this.socket === s && reader.pending > 0)
        this.refusedFrame(
          'bad_length',
          `connection closed inside a frame (${reader.pending} bytes)`,
        );
      this.lose(s, 'ERR_PEER_DISCONNECTED', 'connection lost');
    });
  }

  /** Drop connection `s` and fail the calls sent on it. Idempotent. */
  private lose(s: Socket, code: string, why: string): void {
    if (this.socket === s) {
      this.socket = null;
      this.disconnects++;
      let n = 0;
      for (const [id, p] of this.pending) {
        if (p.socket !== s) continue;
        n++;
        this.settle(id, p, new CoopError(code, `${this.where}: ${why} (call ${id} in flight)`));
      }
      this.event({ kind: 'disconnected', remote: this.where, pending: n });
    }
    s.destroy();
  }

  private refusedFrame(reason: ChannelRefusal, detail: string): void {
    this.counters.refused[reason]++;
    this.event({ kind: 'refused', reason, detail, remote: this.where });
  }

  private onFrame(s: Socket, frame: Buffer): void {
    const r = decode(frame, this.keys, this.replay, { now: this.now() });
    if (!r.ok) {
      this.refusedFrame(r.reason, r.detail);
      if (isUnauthenticated(r.reason) || r.reason === 'replayed') {
        this.lose(s, 'ERR_PEER_PROTOCOL', `sent a frame refused as ${r.reason} (${r.detail})`);
        return;
      }
      const p = r.id === undefined ? undefined : this.pending.get(r.id);
      if (p && r.id !== undefined)
        this.settle(
          r.id,
          p,
          new CoopError(
            'ERR_PEER_PROTOCOL',
            `${this.where}: reply refused as ${r.reason}: ${r.detail}`,
          ),
        );
      return;
    }
    const msg = r.msg;
    this.counters.received[msg.type]++;
    if (msg.type === 'refuse') countRefuse(this.counters.refusesReceived, msg.body.reason);
    const p = this.pending.get(msg.id);
    if (!p || p.socket !== s) {
      this.late++;
      // A late offer holds a port on the peer until its offer timer: release it now.
      if (msg.type === 'offer')
        this.write(s, 'refuse', msg.id, { reason: 'timeout', message: 'the request had given up' });
      return;
    }
    if (!p.expect.includes(msg.type)) {
      this.refusedFrame(
        'unexpected',
        `${msg.type} in answer to a call expecting ${p.expect.join('|')}`,
      );
      this.settle(
        msg.id,
        p,
        new CoopError(
          'ERR_PEER_PROTOCOL',
          `${this.where}: answered ${msg.id} with ${msg.type}, expected ${p.expect.join(' or ')}`,
        ),
      );
      return;
    }
    this.settle(msg.id, p, msg);
  }
}
