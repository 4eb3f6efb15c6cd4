/**
 * Cooperative multiplexing in the daemon (FIG. 6/7), and local clients whose AID
 * must be looked up before their connection can be placed (FIG. 8).
 *
 * Theory of operation.
 *
 * Client side. The pipeline hands over the first packet of a flow it must not
 * place by itself — a TCP SYN or a UDP datagram to a service a peer serves, or
 * one from a local client whose AID only the owner of its socket can tell — and
 * drops it from the batch (reason `negotiating`). Here a copy is held (held.ts),
 * keyed by the protocol, the client's address and port and the service's. A
 * retransmitted SYN of a held flow is dropped the same way and not held twice;
 * a later datagram of a held UDP flow (the pipeline hands over every one until
 * the flow exists) is queued behind the first, within the bounds of HoldLimits,
 * and counted when it does not fit. Asynchronously:
 *   1. the client application's AID: the one the pipeline found (bind/connect
 *      library report, then selectors), else the executable of the socket's owner
 *      (`applications[].executables`), else the user owning the socket
 *      (`applications[].users`, only AIDs that list users explicitly: the seed's
 *      logical user);
 *   2. for a peer's service: negotiate with the peer (request → offer → the AID is
 *      checked against the offered ones → ack → confirm), within the timeout; for a
 *      local service: pick the AID's instance;
 *   3. success: the pipeline records the flow and sends the held packet on,
 *      rewritten (to VIP:p2 for a peer), then the queued datagrams in arrival
 *      order (sendHeld); failure — at any step, recording the flow included (the
 *      pipeline's injectHeld only reports why it could not) — is decided here,
 *      once: one answer to the first packet (a RST, an ICMP port unreachable,
 *      where the held copy allows one), one count (negotiationsFailed or
 *      localClientsRefused), one log line with the reason and both AIDs where
 *      there are two; the queued datagrams are dropped and counted, unanswered.
 *   The decision and what follows it run in one go, without yielding: no packet
 *   of the flow can arrive between the queue being taken and the flow existing.
 *
 * Server side. A PeerServer accepts negotiations from the configured peers. A
 * request names the service and its protocol (absent: TCP); it is answered with
 * the AIDs that have a live instance for that service and a fresh p2 from the
 * cooperative port range; an ack records the flow of that protocol (client ⇄
 * VIP:p2 on the wire, ⇄ the instance inside) before the client's first packet
 * arrives, and is confirmed. p2 goes back to its pool (after quarantine) when the
 * flow ends, or at once when the offer is abandoned. A packet opening a flow to
 * VIP:p2 that no negotiation announced (for its protocol) is dropped by the
 * pipeline (`not_negotiated`).
 */

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { InstanceSet } from '../datapath/instances.js';
import { INJECT_MALFORMED, type Pipeline } from '../datapath/pipeline.js';
import type { Rules } from '../datapath/rules.js';
import { CREATE_COLLISION, CREATE_FULL, type FlowKeyArgs, type FlowTable } from '../flow/table.js';
import { PortPool } from '../virtual/pool.js';
import { formatAddr, ipv4ToString, parseIpv4 } from '../wire/address.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../wire/ipv4.js';
import type { PacketInfo } from '../wire/parse.js';
import { PeerClient } from './client.js';
import { DEFAULT_HOLD_LIMITS, type Held, HeldFlows, type HoldLimits } from './held.js';
import { ownerExecutable, socketEntry } from './owner.js';
import { type Message, type Protocol, type RequestBody, requestProtocol } from './protocol.js';
import { ReplayCache } from './replay.js';
import {
  type AbandonReason,
  type AckAnswer,
  type Negotiation,
  type OfferAnswer,
  type PeerInfo,
  PeerServer,
} from './server.js';
import { type PskTable, pskIdentity, pskTable } from './tls.js';

export interface CooperationDeps {
  pipeline: Pipeline;
  table: FlowTable;
  rules: () => Rules;
  /** The live instances of each AID (the daemon's; static and registered). */
  instances: InstanceSet;
  log: Logger;
  /** Monotonic ms, the pipeline's clock. */
  now: () => number;
  /** The AID index the bind/connect library reported for a local client, or -1. */
  localClientAid?: (addr: number, port: number, proto: number) => number;
  /** The AID index a local client's socket belongs to by its owner's uid (applications[].users), or -1. */
  aidOfUser?: (uid: number) => number;
  /** Bounds of the held flows and their queues; DEFAULT_HOLD_LIMITS when absent. */
  holdLimits?: HoldLimits;
}

const protocolName = (proto: number): Protocol => (proto === IPPROTO_UDP ? 'udp' : 'tcp');
const protocolNumber = (p: Protocol): number => (p === 'udp' ? IPPROTO_UDP : IPPROTO_TCP);

/** Every key of every peer, by PSK identity: what the server side accepts. */
function pskTableOf(co: NonNullable<Config['cooperative']>): PskTable {
  return pskTable(
    co.peers.map((p) => ({
      name: p.name,
      keys: p.keys.map((k) => ({ id: k.id, key: hexKey(k.key) })),
    })),
  );
}

function hexKey(hex: string): Buffer {
  return Buffer.from(hex, 'hex');
}

/** The reason logged when `injectHeld` could not place a held SYN, by its result. */
function injectFailure(code: number): string {
  if (code === CREATE_FULL) return 'refused_table_full';
  if (code === CREATE_COLLISION) return 'refused_collision';
  if (code === INJECT_MALFORMED) return 'malformed_held_packet';
  return `inject_failed_${code}`;
}

export class Cooperation {
  private readonly held: HeldFlows;
  private readonly clients = new Map<number, PeerClient>();
  private server: PeerServer | null = null;
  private readonly p2Pool: PortPool | null;
  /** Server side: slot → p2 of a negotiated flow, released when the flow goes. */
  private readonly p2OfSlot = new Map<number, number>();
  /** Server side: negotiation (peer/connection/id) → slot, for an abandoned confirm. */
  private readonly slotOfNeg = new Map<string, number>();
  private readonly replay = new ReplayCache();
  private resolved = 0;
  private refused = 0;
  private readonly stopListening: () => void;

  constructor(
    private cfg: Config,
    private readonly d: CooperationDeps,
  ) {
    const co = cfg.cooperative;
    this.held = new HeldFlows(d.holdLimits ?? DEFAULT_HOLD_LIMITS);
    this.p2Pool =
      co?.listen != null
        ? new PortPool(co.portRange.lo, co.portRange.hi, cfg.timeouts.timeWaitMs, 0)
        : null;
    this.stopListening = d.table.addRemoveListener((slot) => this.flowRemoved(slot));
  }

  /** Server side: a negotiated flow's p2 goes back to its pool when the flow goes. */
  private flowRemoved(slot: number): void {
    const p2 = this.p2OfSlot.get(slot);
    if (p2 === undefined) return;
    this.p2OfSlot.delete(slot);
    try {
      this.p2Pool?.release(p2);
    } catch (e) {
      this.d.log.error(
        { event: 'internal_error', err: (e as Error).message },
        'releasing p2 failed',
      );
    }
  }

  /**
   * A reloaded configuration. Its cooperative section is kept (changing it
   * needs a restart) but for the peers' keys (a rollover, docs/security.md):
   * the server accepts the new set at once and closes connections made with a
   * key it no longer accepts; each client offers its peer's first key from its
   * next connection on, and reconnects at once if its current key is gone.
   */
  update(cfg: Config): void {
    const old = this.cfg.cooperative;
    const next = cfg.cooperative;
    let co = old;
    if (old && next) {
      const keysOf = new Map(next.peers.map((p) => [p.name, p]));
      co = {
        ...old,
        peers: old.peers.map((p) => {
          const n = keysOf.get(p.name);
          return n ? { ...p, keys: n.keys, key: n.key } : p;
        }),
      };
    }
    this.cfg = { ...cfg, cooperative: co };
    if (!co || !old) return;
    this.server?.setPsk(pskTableOf(co));
    co!.peers.forEach((p, i) => {
      const client = this.clients.get(i);
      const before = old.peers[i]?.keys[0];
      if (!client || !p.keys[0] || !before) return;
      if (before.id === p.keys[0].id && before.key === p.keys[0].key) return;
      const kept = p.keys.some((k) => k.id === before.id && k.key === before.key);
      client.setKey(
        { identity: pskIdentity(co!.name, p.keys[0].id), key: hexKey(p.keys[0].key) },
        kept,
      );
    });
  }

  async start(): Promise<void> {
    const co = this.cfg.cooperative;
    if (!co) return;
    co.peers.forEach((p, i) => {
      if (p.address === null) return;
      this.clients.set(
        i,
        new PeerClient({
          host: formatAddr(p.address),
          port: p.port,
          name: co.name,
          peer: p.name,
          key: hexKey(p.key),
          // TLS 1.3 with the first of the peer's keys (src/coop/tls.ts).
          psk: { identity: pskIdentity(co.name, p.keys[0]!.id), key: hexKey(p.key) },
          timeoutMs: co.timeoutMs,
          replay: this.replay,
          onEvent: (e) =>
            this.d.log.debug({ event: 'peer_channel', peer: p.name, ...e }, 'peer channel'),
        }),
      );
    });
    if (co.listen) {
      this.server = new PeerServer({
        host: formatAddr(co.listen.address),
        port: co.listen.port,
        name: co.name,
        keys: new Map(co.peers.map((p) => [p.name, hexKey(p.key)])),
        psk: pskTableOf(co),
        replay: this.replay,
        handler: {
          request: (m, peer) => this.onRequest(m, peer),
          ack: (m, neg, peer) => this.onAck(m, neg, peer),
          abandon: (neg, why, peer) => this.onAbandon(neg, why, peer),
        },
        onEvent: (e) => {
          if (e.kind === 'refused') {
            this.d.log.warn(
              {
                event: 'negotiation_message_refused',
                reason: e.reason,
                detail: e.detail,
                remote: e.remote,
              },
              'peer message refused',
            );
          }
        },
      });
      await this.server.listen();
    }
  }

  /** Server side: where the peer server listens (its real port when configured as 0), or null. */
  listenAddress(): { address: string; port: number } | null {
    if (!this.server) return null;
    const a = this.server.address();
    return { address: a.address, port: a.port };
  }

  async close(): Promise<void> {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
    await this.server?.close();
    this.server = null;
    this.stopListening();
    this.p2Pool?.close();
  }

  // ---------------------------------------------------------------- client side

  /**
   * The pipeline's `negotiate` hook: hold a copy of a new flow's first packet and
   * resolve it later; queue a later datagram of a held UDP flow; drop a
   * retransmitted SYN of a held TCP flow. Runs inside the batch: copies, counts,
   * never calls back into the pipeline, never throws.
   */
  hold(
    buf: Uint8Array,
    off: number,
    len: number,
    info: PacketInfo,
    svc: number,
    aid: number,
    local: boolean,
  ): void {
    const proto = info.protocol;
    const held = this.held;
    const h = held.get(proto, info.srcAddr, info.srcPort, info.dstAddr, info.dstPort);
    if (h !== undefined) {
      // UDP: a later datagram of the flow, sent on after the first (or dropped with it).
      // TCP: a retransmission of the SYN held; the held one answers for both.
      if (proto === IPPROTO_UDP) held.enqueue(h, buf, off, len);
      return;
    }
    if (!held.admit(len)) return; // counted (flowOverflow); the client retries, or not
    // A copy, never a view: `buf` is the device's receive buffer, which the next
    // batch overwrites while the negotiation runs. (It is a Node Buffer, whose
    // slice() is a view despite the Uint8Array type it is passed as.)
    const added = held.add(
      {
        kind: this.d.rules().services[svc]?.peer === -1 ? 'local_client' : 'negotiation',
        proto,
        srcAddr: info.srcAddr,
        srcPort: info.srcPort,
        dstAddr: info.dstAddr,
        dstPort: info.dstPort,
        svc,
        aid,
        local,
        since: this.d.now(),
      },
      buf,
      off,
      len,
    );
    // Never inside the batch: the pipeline's scratch state belongs to it until it returns.
    setImmediate(() => {
      this.resolve(added).then(
        () => this.abandonHeld(added, null),
        (e: Error) => this.abandonHeld(added, e),
      );
    });
  }

  /**
   * After `resolve`: a flow still held was neither placed nor refused — only a
   * bug gets here. Refuse it (once), so that nothing stays held for ever.
   */
  private abandonHeld(h: Held, err: Error | null): void {
    if (!h.live) return;
    this.d.log.error(
      { event: 'internal_error', err: err?.message ?? 'held flow left undecided' },
      'a held flow was not resolved',
    );
    this.refused++;
    this.held.droppedAll(this.held.take(h).length);
    this.d.pipeline.refuseHeld(h.pkt, h.kind, this.d.now());
  }

  /**
   * Send the queued datagrams of a flow just placed (slot `s`), in arrival order.
   * Returns how many went.
   */
  private release(queue: readonly Uint8Array[], s: number): number {
    let n = 0;
    for (const pkt of queue) {
      const ok = this.d.pipeline.sendHeld(pkt, s, this.d.now());
      this.held.settled(ok);
      if (ok) n++;
    }
    return n;
  }

  private async resolve(h: Held): Promise<void> {
    const rules = this.d.rules();
    const svcRule = rules.services[h.svc];
    const client = `${ipv4ToString(h.srcAddr)}:${h.srcPort}`;
    const service = `${ipv4ToString(h.dstAddr)}:${h.dstPort}`;
    const protocol = protocolName(h.proto);
    // The one place a held flow is refused: one answer to its first packet (a RST
    // or an ICMP port unreachable, where one can be built from the held copy), one
    // count, one log line with the reason; its queued datagrams are dropped and
    // counted, unanswered.
    const fail = (reason: string, extra: Record<string, unknown> = {}) => {
      if (!h.live) return;
      this.refused++;
      const dropped = this.held.take(h).length;
      this.held.droppedAll(dropped);
      const rst = this.d.pipeline.refuseHeld(h.pkt, h.kind, this.d.now());
      const line = {
        event: 'flow_refused',
        reason,
        protocol,
        client,
        service,
        rst,
        ...(dropped > 0 ? { queuedDropped: dropped } : {}),
        ...extra,
      };
      // A held copy that does not parse is vpm's own fault: make it stand out.
      if (reason === 'malformed_held_packet') this.d.log.error(line, 'connection refused');
      else this.d.log.info(line, 'connection refused');
    };
    /**
     * Record the flow and send the first packet on, then the queued ones; the
     * number of queued ones sent, or -1 (after refusing) if the flow cannot be
     * recorded. The queue is taken in the same step: nothing is queued after it.
     */
    const place = (k: FlowKeyArgs, aid: string): number => {
      if (!h.live) return -1;
      const s = this.d.pipeline.injectHeld(h.pkt, k, this.d.now());
      if (s < 0) {
        fail(injectFailure(s), { aid });
        return -1;
      }
      return this.release(this.held.take(h), s);
    };
    if (!svcRule) return fail('no_service');
    let aid = h.aid;
    let how = aid >= 0 ? 'report_or_selector' : '';
    if (aid < 0 && h.local && this.d.localClientAid) {
      // The library's report may have arrived after the SYN: ask again.
      aid = this.d.localClientAid(h.srcAddr, h.srcPort, h.proto);
      if (aid >= 0) how = 'library report';
    }
    if (aid < 0 && h.local) {
      const owner = await ownerExecutable(h.srcAddr, h.srcPort, protocol).catch(() => null);
      if (owner) {
        aid = this.cfg.applications.findIndex((a) => a.executables.includes(owner.exe));
        if (aid >= 0) how = `executable ${owner.exe} (pid ${owner.pid})`;
      }
    }
    if (aid < 0 && h.local && this.d.aidOfUser) {
      const entry = await socketEntry(h.srcAddr, h.srcPort, protocol).catch(() => null);
      if (entry) {
        aid = this.d.aidOfUser(entry.uid);
        if (aid >= 0) how = `user ${entry.uid}`;
      }
    }
    if (aid < 0) return fail('no_aid');
    const aidName = this.cfg.applications[aid]?.aid ?? `#${aid}`;
    const nat = h.local ? this.cfg.tun.localClientAddress : h.srcAddr;
    const k: FlowKeyArgs = {
      proto: h.proto,
      clientAddr: h.srcAddr,
      clientPort: h.srcPort,
      vipAddr: h.dstAddr,
      vport: h.dstPort,
      natAddr: nat,
      natPort: h.srcPort,
      realAddr: 0,
      realPort: 0,
      service: h.svc,
      aid,
      instance: 0,
    };

    if (svcRule.peer < 0) {
      // A local service: the AID's own instance (FIG. 8).
      const inst = this.d.instances.pick(aid, h.svc, this.d.now());
      if (inst < 0) return fail('refused_no_instance', { aid: aidName });
      const target = this.d.instances.get(inst)!;
      k.realAddr = target.addr;
      k.realPort = target.port;
      k.instance = inst;
      const queued = place(k, aidName);
      if (queued < 0) return;
      this.resolved++;
      this.d.log.info(
        {
          event: 'flow_created',
          protocol,
          client,
          service,
          aid: aidName,
          how,
          real: `${ipv4ToString(k.realAddr)}:${k.realPort}`,
          ...(queued > 0 ? { queuedSent: queued } : {}),
        },
        'local client placed by its AID',
      );
      return;
    }

    const peer = this.cfg.cooperative!.peers[svcRule.peer]!;
    const pc = this.clients.get(svcRule.peer);
    if (!pc) return fail('no_peer', { peer: peer.name });
    try {
      const body: RequestBody = {
        client: `${ipv4ToString(nat)}:${h.srcPort}`,
        service,
        aid: aidName,
      };
      // Only UDP says so: a TCP request stays what a peer before UDP understands.
      if (h.proto === IPPROTO_UDP) body.protocol = 'udp';
      const r = await pc.negotiate(body);
      if (!r.ok) {
        return fail(r.reason, {
          peer: peer.name,
          by: r.by,
          clientAid: aidName,
          serverAids: r.aids ?? [],
          message: r.message,
        });
      }
      k.realAddr = h.dstAddr; // the wire keeps the VIP ...
      k.realPort = r.port; // ... on the negotiated port p2
      const queued = place(k, aidName);
      if (queued < 0) return;
      this.resolved++;
      this.d.log.info(
        {
          event: 'flow_negotiated',
          side: 'client',
          peer: peer.name,
          protocol,
          client,
          service,
          aid: aidName,
          how,
          p2: r.port,
          id: r.id,
          ...(queued > 0 ? { queuedSent: queued } : {}),
        },
        'connection negotiated with peer',
      );
    } catch (e) {
      const err = e as { code?: string; message: string };
      fail(
        err.code === 'ERR_PEER_TIMEOUT'
          ? 'peer_timeout'
          : err.code === 'ERR_PEER_UNREACHABLE'
            ? 'peer_unreachable'
            : 'peer_error',
        {
          peer: peer.name,
          clientAid: aidName,
          code: err.code,
          message: err.message,
        },
      );
    }
  }

  // ---------------------------------------------------------------- server side

  private aidsFor(svc: number): string[] {
    const out: string[] = [];
    this.d.rules().aidNames.forEach((name, aid) => {
      if (this.d.instances.serving(aid, svc)) out.push(name);
    });
    return out;
  }

  private onRequest(m: Message<'request'>, peer: PeerInfo): OfferAnswer {
    const [addrText, portText] = m.body.service.split(':') as [string, string];
    const addr = parseIpv4(addrText);
    const protocol = requestProtocol(m.body);
    const svc =
      addr === null
        ? -1
        : this.d.rules().findService(addr, Number(portText), protocolNumber(protocol));
    if (svc < 0) {
      return {
        type: 'refuse',
        body: {
          reason: 'no_service',
          message: `${m.body.service} is not a ${protocol} virtual service here`,
        },
      };
    }
    const aids = this.aidsFor(svc);
    if (aids.length === 0) {
      this.d.log.info(
        {
          event: 'negotiation_refused',
          side: 'server',
          peer: peer.name,
          reason: 'no_aid',
          protocol,
          clientAid: m.body.aid,
          service: m.body.service,
        },
        'no application listens on the service',
      );
      return {
        type: 'refuse',
        body: { reason: 'no_aid', message: `no application listens on ${m.body.service}` },
      };
    }
    const p2 = this.p2Pool?.tryAcquire() ?? -1;
    if (p2 < 0) {
      return {
        type: 'refuse',
        body: { reason: 'ports_exhausted', message: 'no free port in the cooperative range' },
      };
    }
    return { type: 'offer', body: { aids, port: p2 } };
  }

  private onAck(m: Message<'ack'>, neg: Negotiation, peer: PeerInfo): AckAnswer {
    const rules = this.d.rules();
    const [sAddr, sPort] = neg.request.service.split(':') as [string, string];
    const [cAddr, cPort] = neg.request.client.split(':') as [string, string];
    const vip = parseIpv4(sAddr)!;
    const protocol = requestProtocol(neg.request);
    const proto = protocolNumber(protocol);
    // The service of the request's protocol: its instances, and the flow's protocol,
    // which every lookup of the flow (the client's packets to VIP:p2, the replies) matches.
    const svc = rules.findService(vip, Number(sPort), proto);
    const aid = rules.aidNames.indexOf(m.body.aid);
    const inst = svc >= 0 && aid >= 0 ? this.d.instances.pick(aid, svc, this.d.now()) : -1;
    if (inst < 0) {
      return {
        type: 'refuse',
        body: {
          reason: 'no_aid',
          message: `${m.body.aid} has no live instance for ${neg.request.service} any more`,
        },
      };
    }
    const target = this.d.instances.get(inst)!;
    const client = parseIpv4(cAddr)!;
    const s = this.d.pipeline.createFlow(
      {
        proto,
        clientAddr: client,
        clientPort: Number(cPort),
        vipAddr: vip,
        vport: neg.offer.port,
        natAddr: client,
        natPort: Number(cPort),
        realAddr: target.addr,
        realPort: target.port,
        service: svc,
        aid,
        instance: inst,
      },
      this.d.now(),
    );
    if (s < 0) {
      const message =
        s === CREATE_FULL
          ? 'the translation table is full'
          : `a flow of ${neg.request.client} to ${ipv4ToString(target.addr)}:${target.port} already exists`;
      return { type: 'refuse', body: { reason: 'busy', message } };
    }
    this.p2OfSlot.set(s, neg.offer.port);
    this.slotOfNeg.set(`${peer.connection}/${neg.id}`, s);
    // The confirm is written right after this returns, or abandon() removes the flow.
    setImmediate(() => this.slotOfNeg.delete(`${peer.connection}/${neg.id}`));
    this.d.log.info(
      {
        event: 'flow_negotiated',
        side: 'server',
        peer: peer.name,
        protocol,
        client: neg.request.client,
        service: neg.request.service,
        aid: m.body.aid,
        p2: neg.offer.port,
        real: `${ipv4ToString(target.addr)}:${target.port}`,
        id: neg.id,
      },
      'connection negotiated with peer',
    );
    return { type: 'confirm' };
  }

  private onAbandon(neg: Negotiation, why: AbandonReason, peer: PeerInfo): void {
    const s = this.slotOfNeg.get(`${peer.connection}/${neg.id}`);
    if (s !== undefined) {
      this.slotOfNeg.delete(`${peer.connection}/${neg.id}`);
      this.d.table.remove(s); // releases p2 through flowRemoved
    } else {
      this.p2Pool?.release(neg.offer.port);
    }
    this.d.log.info(
      {
        event: 'negotiation_refused',
        side: 'server',
        peer: peer.name,
        reason: why,
        protocol: requestProtocol(neg.request),
        clientAid: neg.request.aid,
        serverAids: neg.offer.aids,
        client: neg.request.client,
        service: neg.request.service,
        id: neg.id,
      },
      why === 'refused' || why === 'aid_mismatch'
        ? 'peer refused the offer (AID mismatch)'
        : 'offer abandoned',
    );
  }

  stats(): Record<string, unknown> {
    const peers: Record<string, unknown> = {};
    for (const [i, c] of this.clients) peers[this.cfg.cooperative!.peers[i]!.name] = c.stats();
    const h = this.held.stats();
    return {
      held: h.flows,
      heldBytes: h.bytes,
      heldOverflow: h.flowOverflow,
      queue: h.queue,
      resolved: this.resolved,
      refused: this.refused,
      p2: this.p2Pool?.stats() ?? null,
      server: this.server?.stats() ?? null,
      peers,
    };
  }
}
