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
 *
 * IPv6. Everything above holds for IPv6 flows too, family by family: the
 * pipeline hands over IPv6 first packets as it does IPv4 ones; a held IPv6 flow
 * is known by its 128-bit addresses; the request carries "[v6]:port" endpoints;
 * the server side records an IPv6 flow (the table's addr6 words) towards an
 * instance with an IPv6 address; p2 lives on the service's IPv6 VIP. vpm never
 * translates between the families: a request whose client and service are of
 * different families, for a service that has no address of the client's family
 * on the server side, or whose AIDs serve it over the other family only, is
 * refused `family_mismatch` (counted on both sides, like every refusal).
 */

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { InstanceSet } from '../datapath/instances.js';
import { INJECT_MALFORMED, type Pipeline } from '../datapath/pipeline.js';
import type { Rules } from '../datapath/rules.js';
import { FLOW_NEGOTIATED, FLOW_PEER } from '../flow/layout.js';
import { CREATE_COLLISION, CREATE_FULL, type FlowKeyArgs, type FlowTable } from '../flow/table.js';
import { PortPool } from '../virtual/pool.js';
import {
  formatAddr,
  formatEndpoint,
  type IpAddr,
  ipv6FromWords,
  ipv6ToWords,
} from '../wire/address.js';
import { get32 } from '../wire/bytes.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../wire/ipv4.js';
import type { PacketInfo } from '../wire/parse.js';
import { PeerClient } from './client.js';
import { DEFAULT_HOLD_LIMITS, type Held, HeldFlows, type HoldLimits } from './held.js';
import { ownerExecutable, socketEntry } from './owner.js';
import {
  MAX_REFUSE_MESSAGE,
  type Message,
  type Protocol,
  parseEndpoint,
  type RefuseBody,
  type RequestBody,
  requestProtocol,
} from './protocol.js';
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
  /** `localClientAid` for an IPv6 local client: its address as 4 words (valid during the call). */
  localClientAid6?: (addr: Uint32Array, port: number, proto: number) => number;
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

/** "IPv4" / "IPv6", for messages. */
const familyName = (f: 4 | 6): string => `IPv${f}`;

/** The family of an address of either kind. */
const familyOf = (a: IpAddr): 4 | 6 => (typeof a === 'bigint' ? 6 : 4);

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
  /** Client side: held flows refused, by reason. */
  private readonly refusedReasons: Record<string, number> = {};
  /** Server side: requests and acks this side refused, by reason. */
  private readonly serverRefused: Record<string, number> = {};
  /** Server side: an IPv6 service address as bytes, for Rules.findService6. */
  private readonly addr6Bytes = new Uint8Array(16);
  private readonly stopListening: () => void;

  constructor(
    private cfg: Config,
    private readonly d: CooperationDeps,
  ) {
    const co = cfg.cooperative;
    this.held = new HeldFlows(d.holdLimits ?? DEFAULT_HOLD_LIMITS);
    this.p2Pool =
      co?.listen != null
        ? new PortPool(co.portRange.lo, co.portRange.hi, cfg.timeouts.timeWaitMs, 0, d.now)
        : null;
    this.stopListening = d.table.addRemoveListener((slot) => this.flowRemoved(slot));
  }

  /**
   * After a start over a previous daemon's state: the server side's negotiated
   * flows taken over (FLOW_NEGOTIATED: their virtual port is their p2) hold
   * their p2 again, which goes back to the pool when the flow goes, as it
   * would have. Returns how many. Control plane (start-up).
   */
  adoptFlows(): number {
    const t = this.d.table;
    let n = 0;
    t.forEach((s) => {
      if ((t.flags[s]! & FLOW_NEGOTIATED) === 0 || !this.p2Pool) return;
      if (this.p2Pool.claim(t.vport[s]!)) {
        this.p2OfSlot.set(s, t.vport[s]!);
        n++;
      }
    });
    return n;
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
    const v6 = info.version === 6;
    const h = v6
      ? held.get6(proto, buf, info.srcOff, info.srcPort, info.dstOff, info.dstPort)
      : held.get(proto, info.srcAddr, info.srcPort, info.dstAddr, info.dstPort);
    if (h !== undefined) {
      // UDP: a later datagram of the flow, sent on after the first (or dropped with it).
      // TCP: a retransmission of the SYN held; the held one answers for both.
      if (proto === IPPROTO_UDP) held.enqueue(h, buf, off, len);
      return;
    }
    if (!held.admit(len)) return; // counted (flowOverflow); the client retries, or not
    let addr6: Uint32Array | null = null;
    if (v6) {
      // Kept with the copy (allocated only for a flow that is held).
      addr6 = new Uint32Array(8);
      for (let i = 0; i < 4; i++) {
        addr6[i] = get32(buf, info.srcOff + 4 * i);
        addr6[4 + i] = get32(buf, info.dstOff + 4 * i);
      }
    }
    // A copy, never a view: `buf` is the device's receive buffer, which the next
    // batch overwrites while the negotiation runs. (It is a Node Buffer, whose
    // slice() is a view despite the Uint8Array type it is passed as.)
    const added = held.add(
      {
        kind: this.d.rules().services[svc]?.peer === -1 ? 'local_client' : 'negotiation',
        proto,
        family: v6 ? 6 : 4,
        addr6,
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
    this.refusedReasons.internal = (this.refusedReasons.internal ?? 0) + 1;
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
    const v6 = h.family === 6;
    const srcIp: IpAddr = v6 ? ipv6FromWords(h.addr6!, 0) : h.srcAddr;
    const dstIp: IpAddr = v6 ? ipv6FromWords(h.addr6!, 4) : h.dstAddr;
    const client = formatEndpoint(srcIp, h.srcPort);
    const service = formatEndpoint(dstIp, h.dstPort);
    const protocol = protocolName(h.proto);
    // The one place a held flow is refused: one answer to its first packet (a RST
    // or an ICMP port unreachable, where one can be built from the held copy), one
    // count, one log line with the reason; its queued datagrams are dropped and
    // counted, unanswered.
    const fail = (reason: string, extra: Record<string, unknown> = {}) => {
      if (!h.live) return;
      this.refused++;
      this.refusedReasons[reason] = (this.refusedReasons[reason] ?? 0) + 1;
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
    if (aid < 0 && h.local) {
      // The library's report may have arrived after the SYN: ask again.
      if (!v6 && this.d.localClientAid) aid = this.d.localClientAid(h.srcAddr, h.srcPort, h.proto);
      if (v6 && this.d.localClientAid6)
        aid = this.d.localClientAid6(h.addr6!.subarray(0, 4), h.srcPort, h.proto);
      if (aid >= 0) how = 'library report';
    }
    if (aid < 0 && h.local) {
      // /proc/net/{tcp,udp}[6]: an IPv6 client's socket is in the IPv6 table.
      const owner = await ownerExecutable(srcIp, h.srcPort, protocol).catch(() => null);
      if (owner) {
        aid = this.cfg.applications.findIndex((a) => a.executables.includes(owner.exe));
        if (aid >= 0) how = `executable ${owner.exe} (pid ${owner.pid})`;
      }
    }
    if (aid < 0 && h.local && this.d.aidOfUser) {
      const entry = await socketEntry(srcIp, h.srcPort, protocol).catch(() => null);
      if (entry) {
        aid = this.d.aidOfUser(entry.uid);
        if (aid >= 0) how = `user ${entry.uid}`;
      }
    }
    if (aid < 0) return fail('no_aid');
    const aidName = this.cfg.applications[aid]?.aid ?? `#${aid}`;
    const nat: IpAddr = h.local
      ? v6
        ? this.cfg.tun.localClientAddress6
        : this.cfg.tun.localClientAddress
      : srcIp;
    const k: FlowKeyArgs = {
      family: h.family,
      proto: h.proto,
      clientAddr: v6 ? 0 : h.srcAddr,
      clientPort: h.srcPort,
      vipAddr: v6 ? 0 : h.dstAddr,
      vport: h.dstPort,
      natAddr: v6 ? 0 : (nat as number),
      natPort: h.srcPort,
      realAddr: 0,
      realPort: 0,
      service: h.svc,
      aid,
      instance: 0,
    };
    // IPv6: the four addresses as words (client, VIP, nat, real), the table's layout.
    const w6 = v6 ? new Uint32Array(16) : null;
    if (w6) {
      w6.set(h.addr6!.subarray(0, 8), 0);
      ipv6ToWords(nat as bigint, w6, 8);
      k.addr6 = w6;
    }

    if (svcRule.peer < 0) {
      // A local service: the AID's own instance (FIG. 8), of the client's family.
      const inst = this.d.instances.pick(aid, h.svc, this.d.now(), h.family);
      if (inst < 0) return fail('refused_no_instance', { aid: aidName });
      const target = this.d.instances.get(inst)!;
      if (w6) w6.set(target.addr6!.subarray(0, 4), 12);
      else k.realAddr = target.addr;
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
          real: formatEndpoint(w6 ? ipv6FromWords(w6, 12) : k.realAddr, k.realPort),
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
        client: formatEndpoint(nat, h.srcPort),
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
      // The wire keeps the VIP ...
      if (w6) w6.set(h.addr6!.subarray(4, 8), 12);
      else k.realAddr = h.dstAddr;
      k.realPort = r.port; // ... on the negotiated port p2
      k.flags = FLOW_PEER; // a next daemon finds no local instance for it, and keeps it
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

  /** The AIDs with a live instance for `svc` of `family`. */
  private aidsFor(svc: number, family: 4 | 6): string[] {
    const out: string[] = [];
    this.d.rules().aidNames.forEach((name, aid) => {
      if (this.d.instances.serving(aid, svc, family)) out.push(name);
    });
    return out;
  }

  /** The service at address:port of `proto` (either family), or -1. */
  private findService(address: IpAddr, port: number, proto: number): number {
    const rules = this.d.rules();
    if (typeof address === 'number') return rules.findService(address, port, proto);
    const b = this.addr6Bytes;
    for (let i = 0; i < 16; i++) b[i] = Number((address >> BigInt(120 - 8 * i)) & 0xffn);
    return rules.findService6(b, 0, port, proto);
  }

  /** A refusal this side sends (counted by reason); the message cut to what the protocol allows. */
  private refuse(reason: string, message: string): { type: 'refuse'; body: RefuseBody } {
    this.serverRefused[reason] = (this.serverRefused[reason] ?? 0) + 1;
    const text =
      message.length > MAX_REFUSE_MESSAGE
        ? `${message.slice(0, MAX_REFUSE_MESSAGE - 3)}...`
        : message;
    return { type: 'refuse', body: { reason, message: text } };
  }

  /**
   * Why a request of `family` for port/proto found no service: a service on that
   * port and protocol without an address of that family (family_mismatch), or
   * none at all (no_service).
   */
  private missingService(
    family: 4 | 6,
    service: string,
    port: number,
    proto: number,
    protocol: Protocol,
  ): { type: 'refuse'; body: RefuseBody } {
    const other = this.d
      .rules()
      .services.find(
        (s) =>
          s.port === port &&
          s.proto === proto &&
          s.peer < 0 &&
          (family === 6 ? s.addr6 == null : s.addr === -1),
      );
    if (other)
      return this.refuse(
        'family_mismatch',
        `${service} is not a ${protocol} virtual service here: ${other.name} (${protocol} port ${port}) has no ${familyName(family)} address here`,
      );
    return this.refuse('no_service', `${service} is not a ${protocol} virtual service here`);
  }

  private onRequest(m: Message<'request'>, peer: PeerInfo): OfferAnswer {
    // Both endpoints were validated (protocol.ts) before the handler is called.
    const svcEp = parseEndpoint(m.body.service)!;
    const cliEp = parseEndpoint(m.body.client)!;
    const family = familyOf(svcEp.address);
    const protocol = requestProtocol(m.body);
    const proto = protocolNumber(protocol);
    const refused = (answer: { type: 'refuse'; body: RefuseBody }) => {
      if (answer.body.reason !== 'no_service' && answer.body.reason !== 'ports_exhausted')
        this.d.log.info(
          {
            event: 'negotiation_refused',
            side: 'server',
            peer: peer.name,
            reason: answer.body.reason,
            protocol,
            clientAid: m.body.aid,
            client: m.body.client,
            service: m.body.service,
            message: answer.body.message,
          },
          answer.body.reason === 'no_aid'
            ? 'no application listens on the service'
            : 'negotiation refused',
        );
      return answer;
    };
    if (familyOf(cliEp.address) !== family)
      return refused(
        this.refuse(
          'family_mismatch',
          `client ${m.body.client} is ${familyName(familyOf(cliEp.address))}, service ${m.body.service} ${familyName(family)}: vpm does not translate between the families`,
        ),
      );
    const svc = this.findService(svcEp.address, svcEp.port, proto);
    if (svc < 0)
      return refused(this.missingService(family, m.body.service, svcEp.port, proto, protocol));
    const aids = this.aidsFor(svc, family);
    if (aids.length === 0) {
      const otherFamily = family === 6 ? 4 : 6;
      const others = this.aidsFor(svc, otherFamily);
      return refused(
        others.length > 0
          ? this.refuse(
              'family_mismatch',
              `no application serves ${m.body.service} over ${familyName(family)} here (${others.join(', ')} only over ${familyName(otherFamily)})`,
            )
          : this.refuse('no_aid', `no application listens on ${m.body.service}`),
      );
    }
    const p2 = this.p2Pool?.tryAcquire() ?? -1;
    if (p2 < 0) return this.refuse('ports_exhausted', 'no free port in the cooperative range');
    return { type: 'offer', body: { aids, port: p2 } };
  }

  private onAck(m: Message<'ack'>, neg: Negotiation, peer: PeerInfo): AckAnswer {
    const rules = this.d.rules();
    const svcEp = parseEndpoint(neg.request.service)!;
    const cliEp = parseEndpoint(neg.request.client)!;
    const family = familyOf(svcEp.address);
    const protocol = requestProtocol(neg.request);
    const proto = protocolNumber(protocol);
    // The service of the request's protocol: its instances, and the flow's protocol,
    // which every lookup of the flow (the client's packets to VIP:p2, the replies) matches.
    const svc = this.findService(svcEp.address, svcEp.port, proto);
    const aid = rules.aidNames.indexOf(m.body.aid);
    const inst =
      svc >= 0 && aid >= 0 && familyOf(cliEp.address) === family
        ? this.d.instances.pick(aid, svc, this.d.now(), family)
        : -1;
    if (inst < 0)
      return this.refuse(
        'no_aid',
        `${m.body.aid} has no live ${familyName(family)} instance for ${neg.request.service} any more`,
      );
    const target = this.d.instances.get(inst)!;
    const k: FlowKeyArgs = {
      family,
      proto,
      clientAddr: 0,
      clientPort: cliEp.port,
      vipAddr: 0,
      vport: neg.offer.port,
      natAddr: 0,
      natPort: cliEp.port,
      realAddr: 0,
      realPort: target.port,
      service: svc,
      aid,
      instance: inst,
      flags: FLOW_NEGOTIATED, // its vport is p2: a next daemon gives p2 back to the pool with it
    };
    let real: string;
    if (family === 6) {
      // client, VIP, nat (the client: the server side does not translate it), real.
      const w = new Uint32Array(16);
      ipv6ToWords(cliEp.address as bigint, w, 0);
      ipv6ToWords(svcEp.address as bigint, w, 4);
      ipv6ToWords(cliEp.address as bigint, w, 8);
      w.set(target.addr6!.subarray(0, 4), 12);
      k.addr6 = w;
      real = formatEndpoint(ipv6FromWords(w, 12), target.port);
    } else {
      k.clientAddr = cliEp.address as number;
      k.vipAddr = svcEp.address as number;
      k.natAddr = cliEp.address as number;
      k.realAddr = target.addr;
      real = formatEndpoint(target.addr, target.port);
    }
    const s = this.d.pipeline.createFlow(k, this.d.now());
    if (s < 0)
      return this.refuse(
        'busy',
        s === CREATE_FULL
          ? 'the translation table is full'
          : `a flow of ${neg.request.client} to ${real} already exists`,
      );
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
        real,
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
      refusedReasons: { ...this.refusedReasons },
      serverRefused: { ...this.serverRefused },
      p2: this.p2Pool?.stats() ?? null,
      server: this.server?.stats() ?? null,
      peers,
    };
  }
}
