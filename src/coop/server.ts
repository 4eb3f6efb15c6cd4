/**
 * The server side of the cooperative negotiation channel: the vpm serving a
 * cooperative virtual service runs one PeerServer, which accepts connections from
 * the client sides and answers their negotiations through the daemon's handler.
 * Framing, timeouts and refusals of bad frames are the framed connection's
 * (src/coop/framed.ts); this is what the server side decides.
 *
 * Theory of operation. Each connection has a table of open negotiations, keyed
 * by id:
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
 * A frame that authenticates but cannot be used (malformed, of another version,
 * stale) is answered with a refusal when its id is legible, so a misconfigured
 * peer learns why; a valid message of a type a server does not take (an offer,
 * a confirm) is refused `unexpected`. Either way the connection stays.
 */

import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { ChannelEnd, type ChannelOptions, FramedConnection, type UnusableFrame } from './framed.js';
import {
  type AnyMessage,
  CoopError,
  type KeyLookup,
  type Message,
  type OfferBody,
  type RefuseBody,
  type RequestBody,
} from './protocol.js';
import { type ChannelStats, hostPort, zeroes } from './stats.js';
import { type PskEntry, type PskTable, pskIdentity, serverTlsOptions } from './tls.js';

/** Who is on the other end of a server connection. */
export interface PeerInfo {
  /** The authenticated sender name of the message. */
  name: string;
  /** Remote "address:port" ("[v6]:port") of the TCP connection. */
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

export interface PeerServerOptions extends ChannelOptions {
  /** Address to listen on. */
  host: string;
  /** TCP port; 0 picks a free one (see `address()`). */
  port: number;
  /** The peers' keys by name, or one key for any peer. */
  keys: KeyLookup;
  handler: ServerHandler;
  /** How long an offer waits for its ack. Default 2000. */
  offerTimeoutMs?: number;
  /** Concurrent connections; more are closed at once. Default 64. */
  maxConnections?: number;
  /** Open negotiations per connection; more are refused `busy`. Default 256. */
  maxNegotiations?: number;
  /**
   * TLS 1.3 with these pre-shared keys (src/coop/tls.ts): each connection is
   * bound to the peer whose key it was made with. Absent: plain TCP (tests of
   * the framing alone).
   */
  psk?: PskTable;
}

export interface PeerServerStats extends ChannelStats {
  connections: number;
  open: number;
  /** Connections closed on arrival because maxConnections were open. */
  rejectedConnections: number;
  offered: number;
  confirmed: number;
  abandoned: Record<AbandonReason, number>;
  /** TLS: handshakes that failed (unknown identity, wrong key, not TLS 1.3, not TLS). */
  tlsHandshakeFailures: number;
  /** TLS: connections by the protocol version negotiated ("TLSv1.3"), and the key ids used. */
  tlsProtocols: Record<string, number>;
  tlsKeys: Record<string, number>;
}

interface NegState {
  state: 'requested' | 'offered' | 'acking';
  neg: Negotiation;
  timer: NodeJS.Timeout | null;
}

interface ServerConn {
  /** The PSK identity the connection was made with (TLS), or null. */
  identity: string | null;
  serial: number;
  framed: FramedConnection;
  negs: Map<number, NegState>;
}

export class PeerServer {
  private server: Server | null = null;
  private readonly conns = new Set<ServerConn>();
  private readonly end: ChannelEnd;
  private readonly offerTimeoutMs: number;
  private readonly maxConnections: number;
  private readonly maxNegotiations: number;
  private serial = 0;
  private closing = false;
  private connections = 0;
  private rejectedConnections = 0;
  private offered = 0;
  private confirmed = 0;
  private readonly abandoned = zeroes(ABANDON_REASONS);
  private psk: PskTable | null;
  /** The PSK entry each TLS socket's handshake used. */
  private readonly pskOf = new WeakMap<TLSSocket, PskEntry>();
  private tlsHandshakeFailures = 0;
  private readonly tlsProtocols: Record<string, number> = {};
  private readonly tlsKeys: Record<string, number> = {};

  constructor(private readonly opts: PeerServerOptions) {
    this.end = new ChannelEnd(opts, opts.keys);
    this.offerTimeoutMs = opts.offerTimeoutMs ?? 2000;
    this.maxConnections = opts.maxConnections ?? 64;
    this.maxNegotiations = opts.maxNegotiations ?? 256;
    this.psk = opts.psk ?? null;
  }

  /**
   * Replace the accepted keys (a reload, a key rollover); the connections made
   * with a key no longer accepted are closed (their peer reconnects with a key
   * that is, or fails).
   */
  setPsk(psk: PskTable): void {
    this.psk = psk;
    for (const c of [...this.conns])
      if (c.identity !== null && !psk.has(c.identity)) c.framed.close();
  }

  async listen(): Promise<AddressInfo> {
    if (this.server) throw new CoopError('ERR_PEER_LISTENING', 'PeerServer is already listening');
    this.closing = false;
    const server = this.psk
      ? createTlsServer(
          serverTlsOptions((socket, identity) => {
            const e = this.psk?.get(identity);
            if (!e) return null;
            this.pskOf.set(socket, e);
            return e.key;
          }),
          (s) => this.accept(s),
        )
      : createServer((s) => this.accept(s));
    if (this.psk) {
      server.on('tlsClientError', (e: Error, s: TLSSocket) => {
        this.tlsHandshakeFailures++;
        this.end.counters.refused.tls++;
        this.end.event({
          kind: 'refused',
          reason: 'tls',
          detail: e.message,
          remote: hostPort(s.remoteAddress, s.remotePort),
        });
        s.destroy();
      });
    }
    await new Promise<void>((resolve, reject) => {
      const fail = (e: NodeJS.ErrnoException) =>
        reject(
          new CoopError(
            'ERR_PEER_LISTEN',
            `cannot listen for peers on ${hostPort(this.opts.host, this.opts.port)}: ${e.code ?? e.message}`,
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
      ...this.end.stats(),
      connections: this.connections,
      open: this.conns.size,
      rejectedConnections: this.rejectedConnections,
      offered: this.offered,
      confirmed: this.confirmed,
      abandoned: { ...this.abandoned },
      tlsHandshakeFailures: this.tlsHandshakeFailures,
      tlsProtocols: { ...this.tlsProtocols },
      tlsKeys: { ...this.tlsKeys },
    };
  }

  /** Stop listening, close every connection, abandon open offers (`closed`). */
  async close(): Promise<void> {
    this.closing = true;
    const s = this.server;
    this.server = null;
    for (const c of [...this.conns]) c.framed.close();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    const remote = hostPort(socket.remoteAddress, socket.remotePort);
    if (this.closing || this.conns.size >= this.maxConnections) {
      socket.on('error', () => {});
      this.rejectedConnections++;
      socket.destroy();
      return;
    }
    let keys: KeyLookup = this.opts.keys;
    let identity: string | null = null;
    if (this.psk) {
      const tlsSocket = socket as TLSSocket;
      const e = this.pskOf.get(tlsSocket);
      const proto = tlsSocket.getProtocol?.() ?? 'none';
      if (!e) {
        socket.destroy(); // cannot happen: the handshake needed the key
        return;
      }
      identity = pskIdentity(e.peer, e.id);
      keys = new Map([[e.peer, e.key]]);
      this.tlsProtocols[proto] = (this.tlsProtocols[proto] ?? 0) + 1;
      this.tlsKeys[identity] = (this.tlsKeys[identity] ?? 0) + 1;
    }
    // The handlers run on the socket's events, never before `c` is assigned.
    const c: ServerConn = {
      identity,
      serial: ++this.serial,
      negs: new Map(),
      framed: new FramedConnection(
        this.end,
        socket,
        remote,
        {
          message: (msg) => this.onMessage(c, msg),
          unusable: (r) => this.onUnusable(c, r),
          closed: () => this.onClose(c),
        },
        keys,
      ),
    };
    this.conns.add(c);
    this.connections++;
    this.end.event({ kind: 'connected', remote });
  }

  private onClose(c: ServerConn): void {
    this.conns.delete(c);
    let open = 0;
    for (const [id, st] of c.negs) {
      // `requested` and `acking` negotiations settle when their handler returns.
      if (st.state !== 'offered') continue;
      open++;
      c.negs.delete(id);
      this.abandon(c, st, this.gone());
    }
    this.end.event({ kind: 'disconnected', remote: c.framed.remote, pending: open });
  }

  /** The abandon reason for a connection that went away. */
  private gone(): AbandonReason {
    return this.closing ? 'closed' : 'disconnected';
  }

  private info(c: ServerConn, name: string): PeerInfo {
    return { name, remote: c.framed.remote, connection: c.serial };
  }

  private abandon(c: ServerConn, st: NegState, why: AbandonReason): void {
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
    this.abandoned[why]++;
    if (why === 'timeout') this.end.counters.timeouts++;
    try {
      this.opts.handler.abandon?.(st.neg, why, this.info(c, st.neg.peer));
    } catch {
      // the daemon's problem; the channel keeps going
    }
  }

  /** End open negotiation `st` with a refusal: abandon its offer (`why`) and tell the peer. */
  private decline(c: ServerConn, st: NegState, why: AbandonReason, body: RefuseBody): void {
    if (c.negs.get(st.neg.id) === st) c.negs.delete(st.neg.id);
    this.abandon(c, st, why);
    c.framed.refuse(st.neg.peer, st.neg.id, body);
  }

  /** Authenticated but unusable: tell the peer why (it holds the key), if its id is legible. */
  private onUnusable(c: ServerConn, r: UnusableFrame): void {
    if (r.id !== undefined && r.sender !== undefined)
      c.framed.refuse(r.sender, r.id, { reason: r.reason, message: r.detail });
  }

  private onMessage(c: ServerConn, msg: AnyMessage): void {
    switch (msg.type) {
      case 'request':
        void this.onRequest(c, msg);
        return;
      case 'ack':
        void this.onAck(c, msg);
        return;
      case 'refuse':
        this.onClientRefuse(c, msg);
        return;
      case 'offer':
      case 'confirm':
        c.framed.refused(
          'unexpected',
          `a ${msg.type} from ${msg.from} (server side accepts request, ack, refuse)`,
        );
        c.framed.refuse(msg.from, msg.id, {
          reason: 'unexpected',
          message: `a server does not accept ${msg.type}`,
        });
        return;
    }
  }

  private async onRequest(c: ServerConn, msg: Message<'request'>): Promise<void> {
    const { id, from } = msg;
    if (c.negs.has(id)) {
      c.framed.refuse(from, id, {
        reason: 'duplicate_id',
        message: `negotiation ${id} is already open on this connection`,
      });
      return;
    }
    if (c.negs.size >= this.maxNegotiations) {
      c.framed.refuse(from, id, {
        reason: 'busy',
        message: `${c.negs.size} negotiations open on this connection`,
      });
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
      c.framed.refuse(from, id, answer.body);
      return;
    }
    st.neg.offer = answer.body;
    this.offered++;
    if (!c.framed.alive) {
      c.negs.delete(id);
      this.abandon(c, st, this.gone());
      return;
    }
    st.state = 'offered';
    st.neg.offeredAt = this.end.now();
    let sent: boolean;
    try {
      sent = c.framed.send(from, 'offer', id, answer.body);
    } catch (e) {
      this.decline(c, st, 'unsent', {
        reason: 'internal',
        message: `cannot send the offer: ${(e as Error).message}`,
      });
      return;
    }
    if (!sent) {
      // The connection went away on the write; onClose may already have abandoned it.
      if (c.negs.get(id) === st) {
        c.negs.delete(id);
        this.abandon(c, st, this.gone());
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
      c.framed.refuse(from, id, {
        reason: 'unknown_negotiation',
        message: `no open offer ${id} for ${from} on this connection`,
      });
      return;
    }
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
    const offer = st.neg.offer;
    if (msg.body.port !== offer.port) {
      this.decline(c, st, 'port_mismatch', {
        reason: 'port_mismatch',
        message: `ack names port ${msg.body.port}, the offer was ${offer.port}`,
      });
      return;
    }
    if (!offer.aids.includes(msg.body.aid)) {
      this.decline(c, st, 'aid_mismatch', {
        reason: 'aid_mismatch',
        message: `AID ${msg.body.aid} was not offered`,
        aids: offer.aids,
      });
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
    if (answer.type === 'refuse') {
      this.decline(c, st, 'declined', answer.body);
      return;
    }
    c.negs.delete(id);
    // The commit point: the confirm goes out, or the offer is abandoned.
    if (c.framed.send(from, 'confirm', id, { port: offer.port })) this.confirmed++;
    else this.abandon(c, st, this.gone());
  }

  private onClientRefuse(c: ServerConn, msg: Message<'refuse'>): void {
    const st = c.negs.get(msg.id);
    // A refusal for anything but an open offer to this peer changes nothing (and gets no answer).
    if (st?.state !== 'offered' || st.neg.peer !== msg.from) return;
    c.negs.delete(msg.id);
    this.abandon(c, st, 'refused');
  }
}
