/**
 * The packet pipeline: one batch in, one batch out.
 *
 *   batch in → checked parse → checksum check → classify / lookup → rewrite
 *            (incremental checksum updates) → batch out
 *
 * Theory of operation. The device hands over `count` packets in its receive
 * buffer (offsets and lengths in typed arrays). Each packet is validated by the
 * one checked entry point, then:
 *   - a TCP SYN (without ACK) to a virtual service that matches no flow is
 *     classified: selector → AID → instance → a new flow in the translation table;
 *     if that fails, a RST is queued for the client and the SYN is dropped with
 *     the reason;
 *   - any other packet is one table lookup: a match on the client side is
 *     rewritten towards the instance (destination VIP:vport → real addr:port, and
 *     a local client's source → the local-client address), a match on the server
 *     side back towards the client (source real → VIP:vport, destination back to
 *     the client's own address);
 *   - everything else is dropped with a reason counter.
 * Rewritten packets stay where they are in the receive buffer; the output batch is
 * a second pair of offset/length arrays over the same buffer, written back to the
 * device in one call. Generated RSTs go into their own preallocated buffer and a
 * second write. Per packet nothing is allocated and nothing throws.
 *
 * Offloads. On a device with virtio-net headers (`dev.headroom` > 0) each packet's
 * header, in the bytes before it, is checked against the packet (a mismatch is a
 * counted drop) and says how its checksum stands: NEEDS_CSUM, the L4 field holds
 * a partial pseudo-header sum (rewritten by the partial rules, never verified);
 * DATA_VALID, the kernel verified it (not verified again); neither, a complete
 * checksum (verified if configured, RFC 1624 updates). A super-packet (gso_type
 * TCPV4 with gso_size) is rewritten like any packet: its headers stand for every
 * segment, so one rewrite serves ~45 segments. The header goes back with the
 * packet, hdr_len recomputed. Should the kernel refuse a super-packet on write
 * (some kernels had such bugs), that packet is segmented in software
 * (wire/segment.ts) and sent as plain packets, the device's segmentation
 * offloads are turned off so that the kernel stops making super-packets, and
 * super-packets still queued are segmented before they are written: counted,
 * reported through onDeviceEvent, never a silent drop.
 */

import { sum16 } from '../checksum/sum.js';
import { FIN_FROM_CLIENT, FIN_FROM_SERVER, isReusable, nextState } from '../flow/state.js';
import { CREATE_COLLISION, CREATE_FULL, type FlowKeyArgs, type FlowTable } from '../flow/table.js';
import { TUN_OFFLOAD_SEGMENTATION, type TunDevice } from '../tun/device.js';
import { get16le, set16le } from '../wire/bytes.js';
import { IPPROTO_TCP } from '../wire/ipv4.js';
import { Check, checkPacket, PacketInfo } from '../wire/parse.js';
import {
  setDstPortWithChecksumUpdate,
  setIpv4DstAddrWithChecksumUpdate,
  setIpv4SrcAddrWithChecksumUpdate,
  setSrcPortWithChecksumUpdate,
} from '../wire/rewrite.js';
import { SEGMENT_NOT_GSO, segmentSuperPacket } from '../wire/segment.js';
import { TCP_ACK, TCP_FIN, TCP_SYN } from '../wire/tcp.js';
import { completePartialChecksum, Verify, verifyL4Checksum } from '../wire/verify.js';
import {
  checkVnetHdr,
  headerLength,
  segmentCount,
  VirtioNetHdr,
  VNET_F_DATA_VALID,
  VNET_F_NEEDS_CSUM,
  VNET_GSO_NONE,
  VNET_OFF_FLAGS,
  VNET_OFF_GSO_SIZE,
  VNET_OFF_GSO_TYPE,
  VNET_OFF_HDR_LEN,
  VnetCheck,
} from '../wire/virtio.js';
import { type Counters, Drop, SENDS_RST, VNET_DROP } from './counters.js';
import type { InstanceSet } from './instances.js';
import { RST_LEN, writeRst } from './rst.js';
import type { Rules } from './rules.js';

/** What the pipeline needs of a device: the batched interface of src/tun. */
export type PacketDevice = Pick<
  TunDevice,
  | 'batchSize'
  | 'headroom'
  | 'offload'
  | 'lastWriteRefused'
  | 'txErrnos'
  | 'rx'
  | 'tx'
  | 'write'
  | 'writeTx'
  | 'setOffload'
>;

/** Room for the segments of one super-packet on the software path (128 segments of 1448 bytes fit). */
const SEGMENT_SCRATCH = 256 * 1024;
const MAX_SEGMENTS = 1024;
/** The largest held SYN: one IPv4 packet. */
const MAX_HELD = 65535;
const EINVAL = 22;

export interface PipelineOptions {
  /** The live instances of each AID (the daemon's; static and registered). */
  instances: InstanceSet;
  /** Verify TCP checksums of every packet (a full sum); the IPv4 header checksum is always verified. */
  verifyL4Checksum: boolean;
  /** Address local clients are translated to (routed to the TUN, never assigned). */
  localClientAddr: number;
  /**
   * The AID index a local client at addr:port announced (bind/connect library), or
   * -1; consulted for SYNs from this host's own addresses before the selectors.
   */
  localClientAid?: (addr: number, port: number) => number;
  /**
   * Cooperative client side: a SYN to a service a peer serves. The callee copies
   * the packet (it is only valid during this call; `buf` is the device's receive
   * buffer) and negotiates; later it calls `injectHeld`, and `refuseHeld` if
   * that fails or the negotiation does. `aid` is the AID known so far (-1: none
   * yet). Must not throw.
   */
  negotiate?: (
    buf: Uint8Array,
    off: number,
    len: number,
    info: PacketInfo,
    svc: number,
    aid: number,
    local: boolean,
  ) => void;
  /**
   * Hold (through `negotiate`) a local client's SYN whose AID neither the library
   * nor a selector gave, so that the owner of its socket can be looked up.
   */
  holdUnknownLocal?: boolean;
  /**
   * The device refused a super-packet (errno): vpm segments in software from now
   * on and has turned the device's segmentation offloads off. Control plane
   * (logs); must not throw.
   */
  onDeviceEvent?: (event: 'gso_refused', errno: number) => void;
  /** Called when a flow is created or refused (control plane: logs). Must not throw. */
  onFlowEvent?: (
    event: 'created' | 'refused',
    slot: number,
    reason: number,
    info: PacketInfo,
  ) => void;
}

/** `injectHeld`: the held copy is no whole TCP segment (CREATE_* are the table's results). */
export const INJECT_MALFORMED = -3;

/**
 * Why a SYN was held: a negotiation with the peer serving its service, or a
 * local client whose AID only its socket's owner can tell (FIG. 8).
 */
export type HeldKind = 'negotiation' | 'local_client';

export class Pipeline {
  rules: Rules;
  /** Addresses of this host: a SYN from one of them comes from a local client. */
  localAddrs: Set<number>;
  private readonly info = new PacketInfo();
  private readonly key: FlowKeyArgs = {
    proto: 0,
    clientAddr: 0,
    clientPort: 0,
    vipAddr: 0,
    vport: 0,
    natAddr: 0,
    natPort: 0,
    realAddr: 0,
    realPort: 0,
    service: 0,
    aid: 0,
    instance: 0,
  };
  /** The device's tx arrays: the output batch, over the receive buffer (writeTx). */
  private readonly txOffsets: Uint32Array;
  private readonly txLengths: Uint32Array;
  private readonly rstBuf: Uint8Array;
  private readonly rstOffsets: Uint32Array;
  private readonly rstLengths: Uint32Array;
  private readonly oneOffsets = new Uint32Array(1);
  private readonly oneLengths = new Uint32Array(1);
  /** Virtio-net header bytes before each packet on the device (0: none). */
  private readonly hr: number;
  /** Of the packet being handled: its checksum is partial (NEEDS_CSUM). */
  private partial = false;
  /** The kernel refused a super-packet: segment every one in software from now on. */
  private gsoOff = false;
  private readonly vnet = new VirtioNetHdr();
  private readonly segInfo = new PacketInfo();
  private readonly segBuf: Uint8Array;
  private readonly segOffsets = new Uint32Array(MAX_SEGMENTS);
  /** A held SYN on its way out, behind its header room (injectHeld). */
  private readonly heldBuf: Uint8Array;
  private readonly segLengths = new Uint32Array(MAX_SEGMENTS);

  constructor(
    private readonly dev: PacketDevice,
    private readonly table: FlowTable,
    rules: Rules,
    private readonly counters: Counters,
    private readonly opts: PipelineOptions,
    localAddrs: Set<number> = new Set(),
  ) {
    this.rules = rules;
    this.localAddrs = localAddrs;
    const n = dev.batchSize;
    this.hr = dev.headroom;
    this.txOffsets = dev.tx.offsets;
    this.txLengths = dev.tx.lengths;
    // Each RST behind an all-zero virtio-net header (when the device has them): a
    // plain packet with a complete checksum. Nothing else writes those bytes.
    this.rstBuf = new Uint8Array(n * (this.hr + RST_LEN));
    this.rstOffsets = new Uint32Array(n);
    this.rstLengths = new Uint32Array(n);
    this.segBuf = new Uint8Array(this.hr > 0 ? SEGMENT_SCRATCH : 0);
    this.heldBuf = new Uint8Array(this.hr + MAX_HELD);
  }

  /** True once a refused super-packet turned segmentation over to vpm. */
  get segmentingInSoftware(): boolean {
    return this.gsoOff;
  }

  /** Process the `count` packets now in the device's receive buffer. */
  processBatch(count: number, now: number): void {
    const { buf, offsets, lengths } = this.dev.rx;
    const c = this.counters;
    const hr = this.hr;
    c.recordBatch(count);
    let out = 0;
    let rsts = 0;
    let outBytes = 0;
    for (let i = 0; i < count; i++) {
      const off = offsets[i]!;
      const len = lengths[i]!;
      c.packetsIn++;
      c.bytesIn += len;
      const r = this.handle(buf, off, len, now);
      if (r === 0) {
        if (hr > 0 && buf[off - hr + VNET_OFF_GSO_TYPE] !== VNET_GSO_NONE) {
          if (this.gsoOff) {
            // The kernel refused a super-packet before: segment this one here.
            if (this.sendSegmented(buf, off)) {
              c.packetsOut++;
              c.bytesOut += this.info.ipTotalLen;
            }
            continue;
          }
          c.superPacketsOut++;
          c.segmentsOut += segmentCount(this.info, this.vnet.attach(buf, off - hr).gsoSize());
        }
        this.txOffsets[out] = off;
        this.txLengths[out] = this.info.ipTotalLen;
        outBytes += this.info.ipTotalLen;
        out++;
      } else {
        c.drops[r]! += 1;
        if (SENDS_RST[r] === 1) {
          const at = rsts * (hr + RST_LEN) + hr;
          this.rstOffsets[rsts] = at;
          this.rstLengths[rsts] = writeRst(buf, this.info, this.rstBuf, at);
          rsts++;
        }
      }
    }
    if (out > 0) {
      const dev = this.dev;
      const written = dev.writeTx(out);
      let taken = written;
      if (dev.lastWriteRefused > 0) taken -= this.rescueRefused(buf, written);
      c.packetsOut += taken;
      if (written < out) {
        c.drops[Drop.TX_ERROR]! += out - written;
        // Bytes of the packets not taken are not counted as out.
        for (let i = written; i < out; i++) outBytes -= this.txLengths[i]!;
      }
      c.bytesOut += outBytes;
    }
    if (rsts > 0) {
      c.rstSent += this.dev.write(this.rstBuf, this.rstOffsets, this.rstLengths, rsts);
    }
  }

  /**
   * Packets of the last write the kernel refused (their errno in txErrnos): a
   * super-packet is segmented and sent as plain packets, and segmentation goes
   * over to vpm; any other refused packet is a drop. Returns how many of the
   * `written` were not delivered after all. The rare path: it may take its time.
   */
  private rescueRefused(buf: Uint8Array, written: number): number {
    const dev = this.dev;
    const c = this.counters;
    const hr = this.hr;
    let lost = 0;
    for (let i = 0; i < written; i++) {
      const errno = dev.txErrnos[i]!;
      if (errno === 0) continue;
      const off = this.txOffsets[i]!;
      if (hr > 0 && buf[off - hr + VNET_OFF_GSO_TYPE] !== VNET_GSO_NONE) {
        c.gsoRefused++;
        c.superPacketsOut--;
        if (!this.gsoOff) {
          this.gsoOff = true;
          // Stop the kernel from making super-packets; those queued are segmented here.
          try {
            dev.setOffload(dev.offload & ~TUN_OFFLOAD_SEGMENTATION);
          } catch {
            // the device may be going away; segmenting here still works
          }
          this.opts.onDeviceEvent?.('gso_refused', errno);
        }
        if (this.sendSegmented(buf, off)) continue;
      } else {
        c.drops[errno === EINVAL ? Drop.TX_REFUSED : Drop.TX_ERROR]! += 1;
      }
      lost++;
      c.bytesOut -= this.txLengths[i]!;
    }
    return lost;
  }

  /**
   * Segment the (already rewritten) super-packet at buf[off] in software and
   * write the segments. True when all were taken (the caller counts one packet
   * out); false, with the drop counted, when it cannot be segmented or the
   * segments are not all taken.
   */
  private sendSegmented(buf: Uint8Array, off: number): boolean {
    const c = this.counters;
    const info = this.segInfo;
    const hr = this.hr;
    const gsoSize = this.vnet.attach(buf, off - hr).gsoSize();
    let n = SEGMENT_NOT_GSO;
    if (checkPacket(buf, off, buf.length - off, info) === Check.OK) {
      n = segmentSuperPacket(
        buf,
        info,
        gsoSize,
        this.segBuf,
        0,
        hr,
        this.segOffsets,
        this.segLengths,
      );
    }
    if (n < 0) {
      c.drops[Drop.TX_ERROR]! += 1;
      return false;
    }
    const written = this.dev.write(this.segBuf, this.segOffsets, this.segLengths, n);
    const taken = written - this.dev.lastWriteRefused;
    c.softwareSegmented++;
    c.softwareSegments += taken;
    if (taken < n) {
      c.drops[Drop.TX_ERROR]! += 1;
      return false;
    }
    return true;
  }

  /** 0 = forward (rewritten in place), otherwise a Drop reason. */
  private handle(buf: Uint8Array, off: number, len: number, now: number): number {
    const info = this.info;
    const chk = checkPacket(buf, off, len, info);
    if (chk !== Check.OK) return chk;
    if (info.version !== 4) return Drop.IPV6;
    if (sum16(buf, off, info.ipHeaderLen) !== 0xffff) return Drop.BAD_IP_CHECKSUM;
    if (info.protocol !== IPPROTO_TCP) return Drop.NOT_TCP;
    if (info.isFragment) return Drop.FRAGMENT;
    let complete = true;
    this.partial = false;
    const hr = this.hr;
    if (hr > 0) {
      const h = off - hr;
      const v = checkVnetHdr(buf, h, info);
      if (v !== VnetCheck.OK) return VNET_DROP[v]!;
      const f = buf[h + VNET_OFF_FLAGS]!;
      this.partial = (f & VNET_F_NEEDS_CSUM) !== 0;
      // A partial checksum cannot be verified; a DATA_VALID one the kernel has verified.
      complete = (f & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)) === 0;
      if (buf[h + VNET_OFF_GSO_TYPE] !== VNET_GSO_NONE) {
        this.counters.superPacketsIn++;
        this.counters.segmentsIn += segmentCount(info, get16le(buf, h + VNET_OFF_GSO_SIZE));
      }
      // hdr_len is a hint of the kernel's that is never trusted: vpm's own goes back.
      set16le(buf, h + VNET_OFF_HDR_LEN, headerLength(info));
    }
    if (complete && this.opts.verifyL4Checksum && verifyL4Checksum(buf, info) !== Verify.OK)
      return Drop.BAD_L4_CHECKSUM;

    const t = this.table;
    const flags = info.tcpFlags;
    const isSyn = (flags & (TCP_SYN | TCP_ACK)) === TCP_SYN;
    let h = t.lookup(info.srcAddr, info.srcPort, info.dstAddr, info.dstPort, IPPROTO_TCP);
    if (h >= 0 && isSyn && (h & 1) === 0 && isReusable(t.state[h >> 1]!)) {
      // A new connection on the ports of one that is closing: start afresh.
      t.remove(h >> 1);
      h = -1;
    }
    if (h < 0) {
      if (!isSyn) return Drop.NO_FLOW;
      const r = this.classify(buf, off, info, now);
      if (r < 0) return -r;
      h = r * 2;
    }

    if ((h & 1) === 0) this.forward(buf, off, info, h >> 1, now);
    else this.reverse(buf, off, info, h >> 1, now);
    return 0;
  }

  /** Client → server: towards the instance (or, cooperative client side, towards VIP:p2). */
  private forward(buf: Uint8Array, off: number, info: PacketInfo, s: number, now: number): void {
    const t = this.table;
    const l4 = info.l4Off;
    const flags = info.tcpFlags;
    const p = this.partial;
    if (t.natAddr[s] !== t.clientAddr[s])
      setIpv4SrcAddrWithChecksumUpdate(buf, off, l4, IPPROTO_TCP, t.natAddr[s]!, p);
    if (t.natPort[s] !== t.clientPort[s])
      setSrcPortWithChecksumUpdate(buf, l4, IPPROTO_TCP, t.natPort[s]!, p);
    if (t.realAddr[s] !== t.vipAddr[s])
      setIpv4DstAddrWithChecksumUpdate(buf, off, l4, IPPROTO_TCP, t.realAddr[s]!, p);
    setDstPortWithChecksumUpdate(buf, l4, IPPROTO_TCP, t.realPort[s]!, p);
    t.pktsIn[s]! += 1;
    t.bytesIn[s]! += info.ipTotalLen;
    this.counters.aidBytesIn[t.aid[s]!]! += info.ipTotalLen;
    if (flags & TCP_FIN) t.fins[s]! |= FIN_FROM_CLIENT;
    t.touch(s, nextState(t.state[s]!, t.fins[s]!, flags, true), now);
  }

  /** Server → client: back to VIP:vport and the client's own address. */
  private reverse(buf: Uint8Array, off: number, info: PacketInfo, s: number, now: number): void {
    const t = this.table;
    const l4 = info.l4Off;
    const flags = info.tcpFlags;
    const p = this.partial;
    if (t.realAddr[s] !== t.vipAddr[s])
      setIpv4SrcAddrWithChecksumUpdate(buf, off, l4, IPPROTO_TCP, t.vipAddr[s]!, p);
    setSrcPortWithChecksumUpdate(buf, l4, IPPROTO_TCP, t.vport[s]!, p);
    if (t.natAddr[s] !== t.clientAddr[s])
      setIpv4DstAddrWithChecksumUpdate(buf, off, l4, IPPROTO_TCP, t.clientAddr[s]!, p);
    if (t.natPort[s] !== t.clientPort[s])
      setDstPortWithChecksumUpdate(buf, l4, IPPROTO_TCP, t.clientPort[s]!, p);
    t.pktsOut[s]! += 1;
    t.bytesOut[s]! += info.ipTotalLen;
    this.counters.aidBytesOut[t.aid[s]!]! += info.ipTotalLen;
    if (flags & TCP_FIN) t.fins[s]! |= FIN_FROM_SERVER;
    t.touch(s, nextState(t.state[s]!, t.fins[s]!, flags, false), now);
  }

  /**
   * Record a flow agreed by negotiation (cooperative server side: before its SYN
   * arrives). Returns the slot, CREATE_FULL or CREATE_COLLISION.
   */
  createFlow(k: FlowKeyArgs, now: number): number {
    const s = this.table.create(k, now);
    if (s >= 0) this.counters.flowsCreated++;
    return s;
  }

  /**
   * A held SYN (see `negotiate`) that is allowed through: record the flow `k`
   * and send the SYN on, rewritten (towards VIP:p2 for a peer's service, to the
   * instance for a local client placed by its looked-up AID). `pkt` is the
   * holder's own copy of the SYN, from offset 0. Returns the slot, or
   * CREATE_FULL, CREATE_COLLISION or INJECT_MALFORMED. It never answers the
   * client: on failure the holder decides, and calls `refuseHeld` once.
   */
  injectHeld(pkt: Uint8Array, k: FlowKeyArgs, now: number): number {
    const info = this.info;
    const hr = this.hr;
    // Behind an all-zero virtio-net header (when the device has them): a plain packet.
    if (pkt.length > this.heldBuf.length - hr) return INJECT_MALFORMED;
    this.heldBuf.fill(0, 0, hr);
    this.heldBuf.set(pkt, hr);
    const held = this.heldBuf.subarray(0, hr + pkt.length);
    if (checkPacket(held, hr, pkt.length, info) !== Check.OK || !this.isTcpSegment())
      return INJECT_MALFORMED;
    const s = this.createFlow(k, now);
    if (s < 0) return s;
    this.partial = false; // the holder's copy has a complete checksum (see hold)
    this.forward(held, hr, info, s, now);
    this.oneOffsets[0] = hr;
    this.oneLengths[0] = info.ipTotalLen;
    this.counters.synInjected += this.dev.write(held, this.oneOffsets, this.oneLengths, 1);
    return s;
  }

  /**
   * A held SYN that will not go through: count it (`negotiationsFailed` for a
   * peer's service, `localClientsRefused` for a local client held for an owner
   * lookup) and answer the client with a RST, if one can be built from `pkt`.
   * Returns whether the RST was written. The holder calls it once per held SYN.
   */
  refuseHeld(pkt: Uint8Array, kind: HeldKind): boolean {
    const info = this.info;
    if (kind === 'negotiation') this.counters.negotiationsFailed++;
    else this.counters.localClientsRefused++;
    if (checkPacket(pkt, 0, pkt.length, info) !== Check.OK || !this.isTcpSegment()) return false;
    this.oneOffsets[0] = this.hr;
    this.oneLengths[0] = writeRst(pkt, info, this.rstBuf, this.hr);
    const sent = this.dev.write(this.rstBuf, this.oneOffsets, this.oneLengths, 1);
    this.counters.rstSent += sent;
    return sent === 1;
  }

  /** After checkPacket into `this.info`: true for a whole, unfragmented TCP segment. */
  private isTcpSegment(): boolean {
    const info = this.info;
    return info.protocol === IPPROTO_TCP && !info.isFragment && info.l4Off >= 0;
  }

  /**
   * Hand a SYN to the holder (`negotiate`). A held SYN outlives the batch and its
   * virtio-net header: a partial checksum is completed here (the packet leaves
   * the batch anyway), so the holder keeps a plain packet.
   */
  private hold(
    buf: Uint8Array,
    off: number,
    info: PacketInfo,
    svc: number,
    aid: number,
    local: boolean,
  ): void {
    if (this.partial) completePartialChecksum(buf, info);
    this.opts.negotiate!(buf, off, info.ipTotalLen, info, svc, aid, local);
  }

  /** New connection: returns the new slot, or -(drop reason). */
  private classify(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const rules = this.rules;
    const svc = rules.findService(info.dstAddr, info.dstPort, IPPROTO_TCP);
    if (svc < 0) {
      if (rules.isCoopPort(info.dstAddr, info.dstPort)) return -Drop.NOT_NEGOTIATED;
      // A closed port of a virtual service address answers like a closed port of a host.
      if (rules.isVip(info.dstAddr)) return this.refused(Drop.REFUSED_NO_SERVICE, info);
      return -Drop.NOT_SERVICE;
    }
    const local = this.localAddrs.has(info.srcAddr);
    let aid =
      local && this.opts.localClientAid ? this.opts.localClientAid(info.srcAddr, info.srcPort) : -1;
    if (aid < 0) aid = rules.selectAid(svc, info.srcAddr, info.srcPort);
    if (rules.services[svc]!.peer >= 0) {
      // Served by a peer: hold the SYN while the two daemons negotiate (FIG. 6/7).
      if (!this.opts.negotiate) return this.refused(Drop.REFUSED_NO_INSTANCE, info);
      this.hold(buf, off, info, svc, aid, local);
      return -Drop.NEGOTIATING;
    }
    if (aid < 0 && local && this.opts.holdUnknownLocal && this.opts.negotiate) {
      // A local client nobody vouched for: its socket's owner may tell (FIG. 8).
      this.hold(buf, off, info, svc, -1, true);
      return -Drop.NEGOTIATING;
    }
    if (aid < 0) return this.refused(Drop.REFUSED_NO_SELECTOR, info);
    const instances = this.opts.instances;
    const inst = instances.pick(aid, svc);
    if (inst < 0) return this.refused(Drop.REFUSED_NO_INSTANCE, info);
    const target = instances.get(inst)!;
    const k = this.key;
    k.proto = IPPROTO_TCP;
    k.clientAddr = info.srcAddr;
    k.clientPort = info.srcPort;
    k.vipAddr = info.dstAddr;
    k.vport = info.dstPort;
    k.natAddr = local ? this.opts.localClientAddr : info.srcAddr;
    k.natPort = info.srcPort;
    k.realAddr = target.addr;
    k.realPort = target.port;
    k.service = svc;
    k.aid = aid;
    k.instance = inst;
    const s = this.table.create(k, now);
    if (s === CREATE_FULL) return this.refused(Drop.REFUSED_TABLE_FULL, info);
    if (s === CREATE_COLLISION) return this.refused(Drop.REFUSED_COLLISION, info);
    this.counters.flowsCreated++;
    this.opts.onFlowEvent?.('created', s, 0, info);
    return s;
  }

  private refused(reason: number, info: PacketInfo): number {
    this.opts.onFlowEvent?.('refused', -1, reason, info);
    return -reason;
  }
}
