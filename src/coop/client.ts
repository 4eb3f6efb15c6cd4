/**
 * The client side of the cooperative negotiation channel: a vpm keeps one
 * PeerClient per peer it negotiates with, and asks it for a port p2 for each
 * held SYN. Framing, timeouts and refusals of bad frames are the framed
 * connection's (src/coop/framed.ts); this is what the client side decides.
 *
 * Theory of operation. One connection, opened on demand by the first call and
 * after any loss; concurrent calls share one connection attempt. Every call has
 * one deadline (timeoutMs, connecting included): if the connection is not up by
 * then it fails with ERR_PEER_UNREACHABLE, if the reply is not in by then with
 * ERR_PEER_TIMEOUT. Connecting is bounded by the calls' deadlines, not by a
 * shorter timer of its own: an attempt gives up after connectTimeoutMs (by
 * default the call timeout), and a call that still has time left then starts a
 * new one, because a slow attempt says nothing about the peer — a lost first SYN
 * is retransmitted after the kernel's initial RTO of 1 s, and a loaded host may
 * not run this event loop for as long. Only an attempt the network refuses
 * (ECONNREFUSED, EHOSTUNREACH, ...) fails the calls waiting on it at once, and
 * makes calls fail fast (ERR_PEER_UNREACHABLE) for retryAfterMs instead of
 * hammering a dead peer. Replies are matched to calls by id and must be of an
 * expected type (request -> offer|refuse, ack -> confirm|refuse). A lost
 * connection fails the calls sent on it (ERR_PEER_DISCONNECTED; ERR_PEER_PROTOCOL
 * when this side closed it because the peer broke the protocol). An offer that
 * arrives after its call gave up is answered with a refusal (`timeout`) so the
 * server releases p2 at once instead of waiting for its own timer.
 */

import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { type TLSSocket, connect as tlsConnect } from 'node:tls';
import {
  ChannelEnd,
  type ChannelOptions,
  type CloseCause,
  FramedConnection,
  type Outgoing,
  refuseText,
  type UnusableFrame,
} from './framed.js';
import {
  type AckBody,
  type AnyMessage,
  type BodyOf,
  CoopError,
  type CoopErrorCode,
  type Message,
  type MessageType,
  type RefuseBody,
  type RequestBody,
} from './protocol.js';
import { type ChannelStats, hostPort } from './stats.js';
import { clientTlsOptions } from './tls.js';

export interface PeerClientOptions extends ChannelOptions {
  /** The peer's negotiation endpoint. */
  host: string;
  port: number;
  /** The peer's name: replies must come from it. */
  peer: string;
  /** The key shared with this peer (the HMAC key; with `psk`, the same key). */
  key: Uint8Array;
  /**
   * TLS 1.3 with this pre-shared key, offered under `identity`
   * (src/coop/tls.ts). Absent: plain TCP (tests of the framing alone).
   */
  psk?: { identity: string; key: Uint8Array };
  /** Deadline of one call (request or ack), connecting included. Default 1000. */
  timeoutMs?: number;
  /**
   * Longest one connection attempt may take; calls with time left then try again.
   * Default: timeoutMs.
   */
  connectTimeoutMs?: number;
  /** After a connection attempt was refused, calls fail at once for this long. Default 100. */
  retryAfterMs?: number;
  /** Calls in flight; more fail with ERR_PEER_BUSY. Default 1024. */
  maxPending?: number;
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
  /** The TLS version of the connection up now ("TLSv1.3"), null when none or plain. */
  tls: string | null;
  /** The PSK identity offered ("<name>/<key id>"), null when plain. */
  pskIdentity: string | null;
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
  conn: FramedConnection | null;
}

export class PeerClient {
  private conn: FramedConnection | null = null;
  /** The attempt in progress: resolves with the connection, or null when it ran out of time. */
  private connecting: Promise<FramedConnection | null> | null = null;
  private failedAt = -Infinity;
  private failure = '';
  private closed = false;
  private readonly pending = new Map<number, Pending>();
  private nextId = randomBytes(4).readUInt32BE(0);
  private readonly end: ChannelEnd;
  readonly timeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly retryAfterMs: number;
  private readonly maxPending: number;
  private connects = 0;
  private unreachable = 0;
  private disconnects = 0;
  private late = 0;
  /** The TLS socket of the connection up now (getProtocol for stats). */
  private tlsSocket: TLSSocket | null = null;

  constructor(private readonly opts: PeerClientOptions) {
    this.end = new ChannelEnd(opts, new Map([[opts.peer, opts.key]]));
    this.timeoutMs = opts.timeoutMs ?? 1000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? this.timeoutMs;
    this.retryAfterMs = opts.retryAfterMs ?? 100;
    this.maxPending = opts.maxPending ?? 1024;
  }

  private get where(): string {
    return `peer ${this.opts.peer} at ${hostPort(this.opts.host, this.opts.port)}`;
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
    this.conn?.refuse(this.opts.peer, id, body);
  }

  /**
   * The whole negotiation for one held SYN: request, check the client's AID
   * against the offer, then ack (and wait for the confirm) or refuse. Everything,
   * connecting included, within `timeoutMs`. Rejects with a CoopError
   * (ERR_PEER_UNREACHABLE, ERR_PEER_TIMEOUT, ERR_PEER_DISCONNECTED,
   * ERR_PEER_PROTOCOL, ERR_PEER_BUSY, ERR_PEER_CLOSED); a refusal is a result.
   */
  async negotiate(body: RequestBody, timeoutMs = this.timeoutMs): Promise<NegotiationResult> {
    const deadline = this.end.now() + timeoutMs;
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
    const left = deadline - this.end.now();
    if (left <= 0) {
      this.refuse(id, { reason: 'timeout', message: 'no time left to acknowledge' });
      this.end.counters.timeouts++;
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
      ...this.end.stats(),
      connected: this.conn !== null,
      pending: this.pending.size,
      connects: this.connects,
      unreachable: this.unreachable,
      disconnects: this.disconnects,
      late: this.late,
      tls:
        this.conn !== null && this.tlsSocket !== null
          ? (this.tlsSocket.getProtocol() ?? null)
          : null,
      pskIdentity: this.opts.psk?.identity ?? null,
    };
  }

  /**
   * Offer another key from the next connection on (a reload, a key rollover).
   * `stillAccepted`: whether the current connection's key remains valid; if
   * not, the connection is closed (calls in flight on it fail) and the next
   * call connects with the new key.
   */
  setKey(psk: { identity: string; key: Uint8Array }, stillAccepted: boolean): void {
    const old = this.opts.psk;
    if (old === undefined) return;
    (this.opts as { psk?: typeof psk }).psk = psk;
    this.opts.key = psk.key;
    this.end.setKey(this.opts.peer, psk.key);
    if (!stillAccepted) this.conn?.close();
  }

  /** Fail every call in flight (ERR_PEER_CLOSED), close the connection; later calls fail too. */
  close(): void {
    this.closed = true;
    for (const [id, p] of this.pending)
      this.settle(id, p, new CoopError('ERR_PEER_CLOSED', `${this.where}: client closed`));
    const conn = this.conn;
    this.conn = null;
    conn?.close();
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
    let out: Outgoing;
    try {
      out = this.end.build(this.opts.key, type, id, body);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<AnyMessage>((resolve, reject) => {
      const p: Pending = { expect, resolve, reject, timer: null, conn: null };
      this.pending.set(id, p);
      p.timer = setTimeout(() => {
        p.timer = null;
        if (p.conn === null) {
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
          this.end.counters.timeouts++;
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
      const attempt = (): void => {
        this.connect().then(
          (conn) => {
            if (this.pending.get(id) !== p) return; // timed out or closed meanwhile
            // The attempt ran out of time, this call has not (its timer settles it): again.
            if (conn === null) return attempt();
            p.conn = conn;
            if (!conn.put(out))
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
      };
      attempt();
    });
  }

  /**
   * The connection, once up; null if this attempt ran out of connectTimeoutMs
   * (the caller may try again within its own deadline). Rejects when the attempt
   * was refused, or within retryAfterMs of that.
   */
  private connect(): Promise<FramedConnection | null> {
    if (this.closed)
      return Promise.reject(new CoopError('ERR_PEER_CLOSED', `${this.where}: client closed`));
    if (this.conn) return Promise.resolve(this.conn);
    if (this.connecting) return this.connecting;
    const since = this.end.now() - this.failedAt;
    if (since < this.retryAfterMs)
      return Promise.reject(
        new CoopError(
          'ERR_PEER_UNREACHABLE',
          `${this.where}: unreachable ${Math.round(since)} ms ago (${this.failure}); not retrying yet`,
        ),
      );
    this.connecting = new Promise<FramedConnection | null>((resolve, reject) => {
      const psk = this.opts.psk;
      const s: Socket = psk
        ? tlsConnect({
            host: this.opts.host,
            port: this.opts.port,
            ...clientTlsOptions(psk.identity, psk.key),
          })
        : connect({ host: this.opts.host, port: this.opts.port });
      let done = false;
      const end = (): void => {
        done = true;
        clearTimeout(timer);
        this.connecting = null;
      };
      const timer = setTimeout(() => {
        if (done) return;
        end();
        s.destroy();
        resolve(null); // slow, not refused: no fail-fast
      }, this.connectTimeoutMs);
      s.once('error', (e: NodeJS.ErrnoException) => {
        if (done) return;
        end();
        s.destroy();
        this.failedAt = this.end.now();
        this.failure = e.code ?? e.message;
        reject(new CoopError('ERR_PEER_UNREACHABLE', `${this.where}: ${this.failure}`));
      });
      s.once(psk ? 'secureConnect' : 'connect', () => {
        if (done) return;
        end();
        s.removeAllListeners('error');
        if (this.closed) {
          s.destroy();
          reject(new CoopError('ERR_PEER_CLOSED', `${this.where}: client closed`));
          return;
        }
        resolve(this.attach(s));
      });
    });
    return this.connecting;
  }

  private attach(s: Socket): FramedConnection {
    this.tlsSocket = this.opts.psk ? (s as TLSSocket) : null;
    const conn: FramedConnection = new FramedConnection(this.end, s, this.where, {
      message: (msg) => this.onMessage(conn, msg),
      unusable: (r) => this.onUnusable(r),
      closed: (cause) => this.lose(conn, cause),
    });
    this.conn = conn;
    this.connects++;
    this.end.event({ kind: 'connected', remote: this.where });
    return conn;
  }

  /** Connection `conn` ended: fail the calls sent on it. */
  private lose(conn: FramedConnection, cause: CloseCause): void {
    if (this.conn !== conn) return; // closed by close(): its calls are settled already
    this.conn = null;
    this.disconnects++;
    const [code, why]: [CoopErrorCode, string] =
      cause.kind === 'refused'
        ? ['ERR_PEER_PROTOCOL', cause.why]
        : ['ERR_PEER_DISCONNECTED', 'connection lost'];
    let n = 0;
    for (const [id, p] of this.pending) {
      if (p.conn !== conn) continue;
      n++;
      this.settle(id, p, new CoopError(code, `${this.where}: ${why} (call ${id} in flight)`));
    }
    this.end.event({ kind: 'disconnected', remote: this.where, pending: n });
  }

  /** An authenticated reply that was refused: fail its call. */
  private onUnusable(r: UnusableFrame): void {
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
  }

  private onMessage(conn: FramedConnection, msg: AnyMessage): void {
    const p = this.pending.get(msg.id);
    if (!p || p.conn !== conn) {
      this.late++;
      // A late offer holds a port on the peer until its offer timer: release it now.
      if (msg.type === 'offer')
        conn.refuse(this.opts.peer, msg.id, {
          reason: 'timeout',
          message: 'the request had given up',
        });
      return;
    }
    if (!p.expect.includes(msg.type)) {
      conn.refused('unexpected', `${msg.type} in answer to a call expecting ${p.expect.join('|')}`);
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
