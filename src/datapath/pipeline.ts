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
 * The passive health check (TCP, docs/architecture.md "How an instance is
 * chosen"): the SYN that opens a flow to an AID with several instances is
 * copied (syn-copies.ts) until its instance answers; a RST from the instance
 * that acknowledges it (nothing listens there) marks the instance down, and the
 * copy, translated for another instance of the AID, takes the RST's place in the
 * batch (the flow's server side re-pointed). Only when no instance is left does
 * the RST go on to the client.
 * Rewritten packets stay where they are in the receive buffer; the output batch is
 * a second pair of offset/length arrays over the same buffer, written back to the
 * device in one call. Generated RSTs and ICMP errors go into their own preallocated
 * buffers and a second and third write; held fragments released by their first
 * fragment are written from their wait buffer. Per packet nothing is allocated
 * and nothing throws.
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
 *
 * IPv6. With a flow table that has IPv6 columns (the configuration has an
 * IPv6 address), IPv6 packets take the same stages as IPv4 ones, each in its
 * own small branch after the one `version` compare (the IPv4 path stays first
 * and unchanged but for that compare): TCP and UDP classified and translated
 * through the IPv6 pseudo-header (a UDP checksum of 0 is invalid and dropped),
 * RSTs and ICMPv6 port unreachables for refused flows, fragments by their
 * fragment header, ICMPv6 errors about a flow translated, echo requests to an
 * IPv6 VIP answered, neighbour discovery and MLD (the kernel's chatter on the
 * TUN) dropped by reason, TSO6 super-packets passed through. A client of one
 * family reaches only instances with an address of that family. Without IPv6
 * columns every IPv6 packet is one drop, `ipv6`.
 */

import { update16 } from '../checksum/incremental.js';
import { pseudoHeader6 } from '../checksum/pseudo.js';
import { sum16 } from '../checksum/sum.js';
import {
  FIN_FROM_CLIENT,
  FIN_FROM_SERVER,
  FlowState,
  isReusable,
  nextState,
  nextUdpState,
} from '../flow/state.js';
import { CREATE_COLLISION, CREATE_FULL, type FlowKeyArgs, type FlowTable } from '../flow/table.js';
import { TUN_OFFLOAD_SEGMENTATION, type TunDevice } from '../tun/device.js';
import { get16, get16le, get32, set16, set16le, set32 } from '../wire/bytes.js';
import {
  ICMP_DEST_UNREACHABLE,
  ICMP_ECHO_REPLY,
  ICMP_ECHO_REQUEST,
  ICMP_HEADER_LEN,
  ICMP_OFF_CHECKSUM,
  ICMP_PORT_UNREACHABLE,
  ICMP6_DEST_UNREACHABLE,
  ICMP6_ECHO_REPLY,
  ICMP6_ECHO_REQUEST,
  ICMP6_PORT_UNREACHABLE,
  isIcmp6Error,
  isIcmp6Mld,
  isIcmp6NeighbourDiscovery,
  isIcmpError,
} from '../wire/icmp.js';
import {
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_OFF_CHECKSUM,
  IPV4_OFF_DST,
  IPV4_OFF_IDENT,
  IPV4_OFF_SRC,
  IPV4_OFF_TTL,
} from '../wire/ipv4.js';
import { IPV6_OFF_DST, IPV6_OFF_HOP_LIMIT, IPV6_OFF_SRC } from '../wire/ipv6.js';
import {
  Check,
  checkFirstFragment,
  checkPacket,
  checkQuoted,
  checkQuoted6,
  PacketInfo,
  QuotedPacket,
} from '../wire/parse.js';
import {
  setDstPortWithChecksumUpdate,
  setIpv4DstAddrWithChecksumUpdate,
  setIpv4SrcAddrWithChecksumUpdate,
  setIpv6DstAddrWithChecksumUpdate,
  setIpv6SrcAddrWithChecksumUpdate,
  setSrcPortWithChecksumUpdate,
} from '../wire/rewrite.js';
import { SEGMENT_NOT_GSO, segmentSuperPacket } from '../wire/segment.js';
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../wire/tcp.js';
import { UDP_OFF_CHECKSUM } from '../wire/udp.js';
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
import { ANSWERS, type Counters, Drop, VNET_DROP } from './counters.js';
import { FRAG_NO_FLOW, FragmentTable, HeldFragments } from './fragments.js';
import { is6, same6, translateIcmp6Error, translateIcmpError } from './icmp-errors.js';
import { ICMP_OUT_MAX, TokenBucket, writeIcmp6Error, writeIcmpError } from './icmp-out.js';
import type { InstanceSet } from './instances.js';
import { RST_MAX, writeRst } from './rst.js';
import type { Rules } from './rules.js';
import { MAX_TRIES, SYN_COPY_MAX, SynCopies } from './syn-copies.js';

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
  | 'slotSize'
>;

/** Room for the segments of one super-packet on the software path (128 segments of 1448 bytes fit). */
const SEGMENT_SCRATCH = 256 * 1024;
const MAX_SEGMENTS = 1024;
/** The largest held packet: one IPv4 packet, an IPv6 one of up to 64 KiB payload. */
const MAX_HELD = 65535 + 40;
const EINVAL = 22;
/** `handle`: the packet (a fragment before its first) waits in the fragment buffer. */
const HELD = -1;

/** Limits of the fragment and ICMP stages (config `limits`, `timeouts`). */
export interface PipelineLimits {
  /** IPv4 fragments that may wait for their first fragment, and their bytes. */
  heldFragments: number;
  heldFragmentBytes: number;
  /** How long a fragment waits; how long a first fragment's translation serves the later ones. */
  fragmentMs: number;
  /** ICMP messages vpm sends per second (port unreachable, echo replies). */
  icmpPerSecond: number;
}

export const DEFAULT_PIPELINE_LIMITS: Readonly<PipelineLimits> = Object.freeze({
  heldFragments: 256,
  heldFragmentBytes: 1 << 20,
  fragmentMs: 5000,
  icmpPerSecond: 1000,
});

/** The passive health check of instances (config `health`). */
export interface HealthLimits {
  /** How long an instance that refused a SYN (RST) gets no new connections; 0: no check, no retry. */
  downMs: number;
  /** SYN copies kept for a retry on another instance (fixed at start-up). */
  synCopies: number;
}

export const DEFAULT_HEALTH: Readonly<HealthLimits> = Object.freeze({
  downMs: 10_000,
  synCopies: 1024,
});

export interface PipelineOptions {
  /** The live instances of each AID (the daemon's; static and registered). */
  instances: InstanceSet;
  /** Verify TCP/UDP checksums of every packet (a full sum); the IPv4 header checksum is always verified. */
  verifyL4Checksum: boolean;
  /** Fragment and ICMP limits; DEFAULT_PIPELINE_LIMITS when absent. */
  limits?: PipelineLimits;
  /** Address local clients are translated to (routed to the TUN, never assigned). */
  localClientAddr: number;
  /**
   * IPv6: the address (4 words) local IPv6 clients are translated to; null or
   * absent: none (an IPv6 local client then keeps its own address).
   */
  localClientAddr6?: Uint32Array | null;
  /**
   * The AID index a local client at addr:port of IP protocol `proto` announced
   * (bind/connect library), or -1; consulted for the first packet of a flow (a
   * SYN, a datagram) from this host's own addresses before the selectors.
   */
  localClientAid?: (addr: number, port: number, proto: number) => number;
  /**
   * `localClientAid` for an IPv6 local client: its address as 4 words (`addr`,
   * valid only during the call), port and protocol; the AID index or -1.
   */
  localClientAid6?: (addr: Uint32Array, port: number, proto: number) => number;
  /**
   * Cooperative client side: the first packet of a flow (a TCP SYN, a UDP
   * datagram; `info.protocol` says which) to a service a peer serves. The callee
   * copies the packet (it is only valid during this call; `buf` is the device's
   * receive buffer) and negotiates; later it calls `injectHeld`, and
   * `refuseHeld` if that fails or the negotiation does. `aid` is the AID known so
   * far (-1: none yet). Must not throw.
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
  /** The passive health check; DEFAULT_HEALTH when absent. */
  health?: HealthLimits;
  /**
   * Instance `instance` (its index) was marked down (it refused a SYN) or up again
   * (it accepted one while marked down). Control plane (logs); must not throw.
   */
  onInstanceEvent?: (event: 'down' | 'up', instance: number) => void;
  /**
   * Called when a flow is created or refused (control plane: logs), with the
   * packet's buffer (an IPv6 packet's addresses are at info.srcOff/dstOff in it).
   * Must not throw.
   */
  onFlowEvent?: (
    event: 'created' | 'refused',
    slot: number,
    reason: number,
    info: PacketInfo,
    buf: Uint8Array,
  ) => void;
}

/** `injectHeld`: the held copy is no whole, unfragmented TCP segment or UDP datagram (CREATE_* are the table's results). */
export const INJECT_MALFORMED = -3;

/**
 * Why a SYN was held: a negotiation with the peer serving its service, or a
 * local client whose AID only its socket's owner can tell (FIG. 8).
 */
export type HeldKind = 'negotiation' | 'local_client';

export class Pipeline {
  rules: Rules;
  /** Addresses of this host: a flow opened from one of them comes from a local client. */
  localAddrs: Set<number>;
  /** This host's IPv6 addresses, 4 words each, the first `localAddrs6Count` of them (set by the daemon). */
  localAddrs6: Uint32Array = new Uint32Array(0);
  localAddrs6Count = 0;
  /** The flow table has IPv6 columns: IPv6 is translated (otherwise dropped as `ipv6`). */
  private readonly v6: boolean;
  /** IPv6 local-client address (4 words), or null. */
  private readonly localClient6: Uint32Array | null;
  /** A datagram's IPv6 fragment key (source, destination words), taken before it is rewritten. */
  private readonly fragKey6 = new Uint32Array(8);
  /** The source words of a local IPv6 client, for localClientAid6. */
  private readonly client6 = new Uint32Array(4);
  private readonly info = new PacketInfo();
  private readonly quoted = new QuotedPacket();
  private readonly key: FlowKeyArgs = {
    family: 4,
    addr6: new Uint32Array(16),
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
  /** ICMP errors vpm answers with (port unreachable), one slot per packet of a batch. */
  private readonly icmpBuf: Uint8Array;
  private readonly icmpOffsets: Uint32Array;
  private readonly icmpLengths: Uint32Array;
  private readonly oneOffsets = new Uint32Array(1);
  private readonly oneLengths = new Uint32Array(1);
  /** Virtio-net header bytes before each packet on the device (0: none). */
  private readonly hr: number;
  /** Of the packet being handled: its checksum is partial (NEEDS_CSUM). */
  private partial = false;
  /** Of the packet being handled: its L4 checksum is complete (neither NEEDS_CSUM nor DATA_VALID). */
  private complete = true;
  /** The flow side the last transport-stage packet was translated for. */
  private lastHandle = -1;
  /** The kernel refused a super-packet: segment every one in software from now on. */
  private gsoOff = false;
  private readonly vnet = new VirtioNetHdr();
  private readonly segInfo = new PacketInfo();
  private readonly segBuf: Uint8Array;
  private readonly segOffsets = new Uint32Array(MAX_SEGMENTS);
  /** A held packet on its way out, behind its header room (injectHeld). */
  private readonly heldBuf: Uint8Array;
  private readonly segLengths = new Uint32Array(MAX_SEGMENTS);
  /** rescueRefused's copy of a batch write's errnos. */
  private readonly batchErrnos: Int32Array;
  /** Which flow each fragmented datagram belongs to, and the fragments waiting for their first. */
  private readonly fragments: FragmentTable;
  private readonly held: HeldFragments;
  private fragmentMs: number;
  /** Everything vpm sends of ICMP is rate-limited together. */
  private readonly icmpBucket: TokenBucket;
  /** health.downMs (0: the passive health check is off). */
  private downMs: number;
  /** SYNs kept until their instance answers (health.synCopies). */
  private readonly synCopies: SynCopies;

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
    this.v6 = table.ipv6;
    this.localClient6 = opts.localClientAddr6 ? Uint32Array.from(opts.localClientAddr6) : null;
    this.fragments = new FragmentTable(table.ipv6);
    const n = dev.batchSize;
    this.hr = dev.headroom;
    this.txOffsets = dev.tx.offsets;
    this.txLengths = dev.tx.lengths;
    // Each RST and ICMP error behind an all-zero virtio-net header (when the device
    // has them): a plain packet with a complete checksum. Nothing else writes those bytes.
    this.rstBuf = new Uint8Array(n * (this.hr + RST_MAX));
    this.rstOffsets = new Uint32Array(n);
    this.rstLengths = new Uint32Array(n);
    this.icmpBuf = new Uint8Array(n * (this.hr + ICMP_OUT_MAX));
    this.icmpOffsets = new Uint32Array(n);
    this.icmpLengths = new Uint32Array(n);
    this.segBuf = new Uint8Array(this.hr > 0 ? SEGMENT_SCRATCH : 0);
    this.heldBuf = new Uint8Array(this.hr + MAX_HELD);
    this.batchErrnos = new Int32Array(n);
    const lim = opts.limits ?? DEFAULT_PIPELINE_LIMITS;
    this.held = new HeldFragments(lim.heldFragments, lim.heldFragmentBytes, this.hr);
    this.fragmentMs = lim.fragmentMs;
    this.icmpBucket = new TokenBucket(lim.icmpPerSecond);
    const health = opts.health ?? DEFAULT_HEALTH;
    this.downMs = health.downMs;
    // At most one copy per flow: more would never be used.
    this.synCopies = new SynCopies(Math.min(health.synCopies, table.capacity), table.capacity);
    const copies = this.synCopies;
    table.addRemoveListener((slot) => copies.release(slot));
  }

  /** SYN copies held now (a gauge, for `vpm stats`). */
  get synCopiesInUse(): number {
    return this.synCopies.inUse;
  }

  /** New health.downMs (config reload): applies to the next refusal. */
  setHealth(downMs: number): void {
    this.downMs = downMs;
  }

  /** True once a refused super-packet turned segmentation over to vpm. */
  get segmentingInSoftware(): boolean {
    return this.gsoOff;
  }

  /**
   * New limits (config reload): the fragment timeout and the ICMP rate take
   * effect at once; the wait buffer's size is fixed at start-up.
   */
  setLimits(lim: PipelineLimits): void {
    this.fragmentMs = lim.fragmentMs;
    this.icmpBucket.setRate(lim.icmpPerSecond);
  }

  /** Drop the fragments that waited too long for their first fragment (the daemon's timer). */
  expireFragments(now: number): void {
    if (this.held.count === 0) return;
    const n = this.held.expire(now);
    this.counters.drops[Drop.FRAGMENT_EXPIRED]! += n;
    this.counters.fragmentsHeld = this.held.count;
  }

  /** Process the `count` packets now in the device's receive buffer. */
  processBatch(count: number, now: number): void {
    const { buf, offsets, lengths } = this.dev.rx;
    const c = this.counters;
    const hr = this.hr;
    c.recordBatch(count);
    let out = 0;
    let rsts = 0;
    let icmps = 0;
    let outBytes = 0;
    for (let i = 0; i < count; i++) {
      const off = offsets[i]!;
      const len = lengths[i]!;
      c.packetsIn++;
      c.bytesIn += len;
      const r = this.handle(buf, off, len, now);
      if (r === HELD) continue;
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
        if (ANSWERS[r] === 1) {
          const info = this.info;
          if (info.protocol === IPPROTO_TCP) {
            const at = rsts * (hr + RST_MAX) + hr;
            this.rstOffsets[rsts] = at;
            this.rstLengths[rsts] = writeRst(buf, info, this.rstBuf, at);
            rsts++;
          } else if (this.icmpBucket.take(now)) {
            // The quote shows the datagram as the client sent it: a complete checksum.
            if (this.partial) completePartialChecksum(buf, info);
            const at = icmps * (hr + ICMP_OUT_MAX) + hr;
            this.icmpOffsets[icmps] = at;
            this.icmpLengths[icmps] = this.writeUnreachable(buf, info, this.icmpBuf, at);
            icmps++;
          } else {
            c.icmpRateLimited++;
          }
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
    if (icmps > 0) {
      c.icmpUnreachableSent += this.dev.write(
        this.icmpBuf,
        this.icmpOffsets,
        this.icmpLengths,
        icmps,
      );
    }
  }
  /** The port unreachable (ICMP or ICMPv6, by the datagram's family) answering `info` at out[at]; its length. */
  private writeUnreachable(buf: Uint8Array, info: PacketInfo, out: Uint8Array, at: number): number {
    if (info.version === 6)
      return writeIcmp6Error(buf, info, ICMP6_DEST_UNREACHABLE, ICMP6_PORT_UNREACHABLE, out, at);
    return writeIcmpError(buf, info, ICMP_DEST_UNREACHABLE, ICMP_PORT_UNREACHABLE, out, at);
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
    // The batch's errnos, before sendSegmented's writes refill the device's.
    const errnos = this.batchErrnos;
    errnos.set(dev.txErrnos.subarray(0, written));
    let lost = 0;
    for (let i = 0; i < written; i++) {
      const errno = errnos[i]!;
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

  /** 0 = forward (rewritten in place), HELD (a fragment waits), otherwise a Drop reason. */
  private handle(buf: Uint8Array, off: number, len: number, now: number): number {
    const info = this.info;
    const chk = checkPacket(buf, off, len, info);
    if (chk !== Check.OK) return chk;
    if (info.version !== 4) return this.handle6(buf, off, info, now);
    if (sum16(buf, off, info.ipHeaderLen) !== 0xffff) return Drop.BAD_IP_CHECKSUM;
    const proto = info.protocol;
    if (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP && proto !== IPPROTO_ICMP)
      return Drop.UNSUPPORTED_PROTOCOL;
    const v = this.offloadHeader(buf, off, info);
    if (v !== 0) return v;
    if (info.isFragment) return this.fragment(buf, off, info, now);
    if (proto === IPPROTO_ICMP) return this.icmp(buf, off, info, now);
    if (this.complete && this.opts.verifyL4Checksum && verifyL4Checksum(buf, info) !== Verify.OK)
      return Drop.BAD_L4_CHECKSUM;
    return this.transport(buf, off, info, now);
  }

  /** `handle` for an IPv6 packet `checkPacket` accepted. */
  private handle6(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    if (!this.v6) return Drop.IPV6;
    const proto = info.protocol;
    // A later fragment's next header is whatever its fragment header says: its
    // datagram's record decides (fragment6).
    const later = info.isFragment && info.fragOffset !== 0;
    if (!later && proto !== IPPROTO_TCP && proto !== IPPROTO_UDP && proto !== IPPROTO_ICMPV6)
      return Drop.UNSUPPORTED_PROTOCOL;
    const v = this.offloadHeader(buf, off, info);
    if (v !== 0) return v;
    if (info.isFragment) return this.fragment6(buf, off, info, now);
    if (proto === IPPROTO_ICMPV6) return this.icmp6(buf, off, info, now);
    if (proto === IPPROTO_UDP && isZeroUdpChecksum(buf, info)) return Drop.BAD_UDP6_ZERO_CHECKSUM;
    if (this.complete && this.opts.verifyL4Checksum && verifyL4Checksum(buf, info) !== Verify.OK)
      return Drop.BAD_L4_CHECKSUM;
    return this.transport(buf, off, info, now);
  }

  /**
   * The virtio-net header stage (a device with offloads): check the header against
   * the packet, note how its checksum stands (`partial`, `complete`), count
   * super-packets, and put vpm's own hdr_len in. Returns 0 or a drop reason.
   */
  private offloadHeader(buf: Uint8Array, off: number, info: PacketInfo): number {
    this.partial = false;
    this.complete = true;
    const hr = this.hr;
    if (hr === 0) return 0;
    const h = off - hr;
    const v = checkVnetHdr(buf, h, info);
    if (v !== VnetCheck.OK) return VNET_DROP[v]!;
    const f = buf[h + VNET_OFF_FLAGS]!;
    this.partial = (f & VNET_F_NEEDS_CSUM) !== 0;
    // A partial checksum cannot be verified; a DATA_VALID one the kernel has verified.
    this.complete = (f & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)) === 0;
    if (buf[h + VNET_OFF_GSO_TYPE] !== VNET_GSO_NONE) {
      this.counters.superPacketsIn++;
      this.counters.segmentsIn += segmentCount(info, get16le(buf, h + VNET_OFF_GSO_SIZE));
    }
    // hdr_len is a hint of the kernel's that is never trusted: vpm's own goes back.
    set16le(buf, h + VNET_OFF_HDR_LEN, headerLength(info));
    return 0;
  }

  /**
   * The transport stage (TCP, UDP, and the first fragment of either): find the
   * flow, or open one, and translate. Returns 0 or a drop reason; the flow side
   * used is left in `lastHandle`.
   */
  private transport(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const t = this.table;
    const proto = info.protocol;
    const tcp = proto === IPPROTO_TCP;
    const isSyn = tcp && (info.tcpFlags & (TCP_SYN | TCP_ACK)) === TCP_SYN;
    const v4 = info.version === 4;
    let h = v4
      ? t.lookup(info.srcAddr, info.srcPort, info.dstAddr, info.dstPort, proto)
      : t.lookup6(buf, info.srcOff, info.srcPort, info.dstOff, info.dstPort, proto);
    if (h >= 0 && isSyn && (h & 1) === 0 && isReusable(t.state[h >> 1]!)) {
      // A new connection on the ports of one that is closing: start afresh.
      t.remove(h >> 1);
      h = -1;
    }
    if (h < 0) {
      if (tcp && !isSyn) return Drop.NO_FLOW;
      const r = v4 ? this.classify(buf, off, info, now) : this.classify6(buf, off, info, now);
      if (r < 0) return -r;
      h = r * 2;
      if (tcp && this.downMs > 0 && !info.isFragment) this.keepSyn(buf, off, info, r);
    } else if (tcp && (h & 1) === 1 && t.state[h >> 1] === FlowState.SYN_SENT) {
      // The instance's answer to the SYN: the passive health check's two events.
      const f = info.tcpFlags;
      if ((f & TCP_RST) !== 0) {
        if (!info.isFragment && this.refusedByInstance(buf, off, info, h >> 1, now)) return 0;
        this.synCopies.release(h >> 1); // the RST goes on: the SYN is answered
      } else if ((f & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK)) {
        this.acceptedByInstance(h >> 1);
      }
    }
    this.lastHandle = h;
    this.translate(buf, off, info, h, now);
    return 0;
  }

  /**
   * Rewrite a packet of flow side `h` — towards the instance for side 0 (client →
   * server; or, cooperative client side, towards VIP:p2), back towards the client
   * for side 1 — and advance the flow. A later fragment (`l4Off` -1) gets the
   * address rewrite only and refreshes the flow without changing its state.
   */
  private translate(buf: Uint8Array, off: number, info: PacketInfo, h: number, now: number): void {
    const t = this.table;
    const s = h >> 1;
    const l4 = info.l4Off;
    const proto = info.protocol;
    const p = this.partial;
    const len = info.ipTotalLen;
    const fromClient = (h & 1) === 0;
    if (info.version !== 4) {
      this.translateAddrs6(buf, off, l4, proto, s, fromClient, p);
    } else if (fromClient) {
      if (t.natAddr[s] !== t.clientAddr[s])
        setIpv4SrcAddrWithChecksumUpdate(buf, off, l4, proto, t.natAddr[s]!, p);
      if (t.realAddr[s] !== t.vipAddr[s])
        setIpv4DstAddrWithChecksumUpdate(buf, off, l4, proto, t.realAddr[s]!, p);
    } else {
      if (t.realAddr[s] !== t.vipAddr[s])
        setIpv4SrcAddrWithChecksumUpdate(buf, off, l4, proto, t.vipAddr[s]!, p);
      if (t.natAddr[s] !== t.clientAddr[s])
        setIpv4DstAddrWithChecksumUpdate(buf, off, l4, proto, t.clientAddr[s]!, p);
    }
    if (fromClient) {
      if (l4 >= 0) {
        if (t.natPort[s] !== t.clientPort[s])
          setSrcPortWithChecksumUpdate(buf, l4, proto, t.natPort[s]!, p);
        setDstPortWithChecksumUpdate(buf, l4, proto, t.realPort[s]!, p);
      }
      t.pktsIn[s]! += 1;
      t.bytesIn[s]! += len;
      this.counters.aidBytesIn[t.aid[s]!]! += len;
    } else {
      if (l4 >= 0) {
        setSrcPortWithChecksumUpdate(buf, l4, proto, t.vport[s]!, p);
        if (t.natPort[s] !== t.clientPort[s])
          setDstPortWithChecksumUpdate(buf, l4, proto, t.clientPort[s]!, p);
      }
      t.pktsOut[s]! += 1;
      t.bytesOut[s]! += len;
      this.counters.aidBytesOut[t.aid[s]!]! += len;
    }
    const state = t.state[s]!;
    if (l4 < 0) {
      t.touch(s, state, now);
    } else if (proto === IPPROTO_TCP) {
      const flags = info.tcpFlags;
      if (flags & TCP_FIN) t.fins[s]! |= fromClient ? FIN_FROM_CLIENT : FIN_FROM_SERVER;
      t.touch(s, nextState(state, t.fins[s]!, flags, fromClient), now);
    } else {
      t.touch(s, nextUdpState(state, fromClient), now);
    }
  }

  /**
   * The address rewrites of `translate` for an IPv6 flow `s` (its addr6 words:
   * client +0, VIP +4, nat +8, real +12), with the L4 checksum through the IPv6
   * pseudo-header.
   */
  private translateAddrs6(
    buf: Uint8Array,
    off: number,
    l4: number,
    proto: number,
    s: number,
    fromClient: boolean,
    p: boolean,
  ): void {
    const a = this.table.addr6;
    const c = s * 16;
    if (fromClient) {
      if (!same6(a, c + 8, c)) setIpv6SrcAddrWithChecksumUpdate(buf, off, l4, proto, a, c + 8, p);
      if (!same6(a, c + 12, c + 4))
        setIpv6DstAddrWithChecksumUpdate(buf, off, l4, proto, a, c + 12, p);
    } else {
      if (!same6(a, c + 12, c + 4))
        setIpv6SrcAddrWithChecksumUpdate(buf, off, l4, proto, a, c + 4, p);
      if (!same6(a, c + 8, c)) setIpv6DstAddrWithChecksumUpdate(buf, off, l4, proto, a, c, p);
    }
  }

  /**
   * The fragment stage. A first fragment holding the whole L4 header goes through
   * the transport stage and records its datagram's flow side; it releases the
   * fragments of its datagram that came before it (or drops them, if it matched
   * no flow). A later fragment follows its datagram's record, or waits for the
   * first fragment.
   */
  private fragment(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const proto = info.protocol;
    if (proto === IPPROTO_ICMP) return Drop.ICMP_UNSUPPORTED;
    const c = this.counters;
    const src = info.srcAddr;
    const dst = info.dstAddr;
    const id = get16(buf, off + IPV4_OFF_IDENT);
    if (info.fragOffset === 0) {
      if (!checkFirstFragment(buf, info)) return Drop.FRAGMENT_TOO_SHORT;
      const r = this.transport(buf, off, info, now);
      const h = r === 0 ? this.lastHandle : FRAG_NO_FLOW;
      const t = this.table;
      const flowId = h >= 0 ? t.id[h >> 1]! : 0;
      this.fragments.record(src, dst, proto, id, h, flowId, now, this.fragmentMs);
      if (this.held.count > 0) this.release(src, dst, proto, id, h, now);
      return r;
    }
    const h = this.fragments.lookup(src, dst, proto, id, now, this.table.id, this.table.state);
    if (h >= 0) {
      this.translate(buf, off, info, h, now);
      return 0;
    }
    if (h === FRAG_NO_FLOW) return Drop.FRAGMENT_NO_FLOW;
    // Its first fragment has not come (yet): wait for it.
    this.expireFragments(now);
    if (!this.held.add(buf, off, info.ipTotalLen, src, dst, proto, id, now + this.fragmentMs))
      return Drop.FRAGMENT_HELD_OVERFLOW;
    c.fragmentsHeld = this.held.count;
    return HELD;
  }

  /**
   * The first fragment of datagram (src, dst, proto, id) came: send the fragments
   * of it that waited, translated for flow side `h`, or drop them (FRAG_NO_FLOW).
   */
  private release(
    src: number,
    dst: number,
    proto: number,
    id: number,
    h: number,
    now: number,
  ): void {
    this.releaseTaken(this.held.take(src, dst, proto, id), h, now);
  }

  /**
   * Send the `n` held fragments `take`/`take6` just returned, translated for
   * flow side `h`, or drop them (FRAG_NO_FLOW).
   */
  private releaseTaken(n: number, h: number, now: number): void {
    const held = this.held;
    const c = this.counters;
    c.fragmentsHeld = held.count;
    if (n === 0) return;
    if (h < 0) {
      c.drops[Drop.FRAGMENT_NO_FLOW]! += n;
      return;
    }
    const arena = held.arena;
    const info = this.segInfo;
    const partial = this.partial;
    this.partial = false; // a later fragment carries no L4 checksum
    for (let i = 0; i < n; i++) {
      const o = held.outOffsets[i]!;
      checkPacket(arena, o, held.outLengths[i]!, info); // accepted when it was held
      this.translate(arena, o, info, h, now);
    }
    this.partial = partial;
    const dev = this.dev;
    const written = dev.write(arena, held.outOffsets, held.outLengths, n);
    // As for the batch: refused on write (EINVAL) is tx_refused, not taken is tx_error.
    let taken = 0;
    for (let i = 0; i < written; i++) {
      const errno = dev.txErrnos[i]!;
      if (errno === 0) {
        taken++;
        c.bytesOut += held.outLengths[i]!;
      } else {
        c.drops[errno === EINVAL ? Drop.TX_REFUSED : Drop.TX_ERROR]! += 1;
      }
    }
    c.fragmentsReleased += taken;
    c.packetsOut += taken;
    c.drops[Drop.TX_ERROR]! += n - written;
  }

  /**
   * The fragment stage for IPv6 (fragment header): as `fragment`, the datagram
   * keyed by its source and destination (taken before the first fragment is
   * rewritten) and the header's 32-bit identification.
   */
  private fragment6(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const proto = info.protocol;
    if (proto === IPPROTO_ICMPV6) return Drop.ICMP_UNSUPPORTED;
    const c = this.counters;
    const key = this.fragKey6;
    const so = info.srcOff;
    const d = info.dstOff;
    for (let i = 0; i < 4; i++) {
      key[i] = get32(buf, so + 4 * i);
      key[4 + i] = get32(buf, d + 4 * i);
    }
    const id = info.fragId;
    if (info.fragOffset === 0) {
      if (!checkFirstFragment(buf, info)) return Drop.FRAGMENT_TOO_SHORT;
      if (proto === IPPROTO_UDP && isZeroUdpChecksum(buf, info)) return Drop.BAD_UDP6_ZERO_CHECKSUM;
      const r = this.transport(buf, off, info, now);
      const h = r === 0 ? this.lastHandle : FRAG_NO_FLOW;
      const flowId = h >= 0 ? this.table.id[h >> 1]! : 0;
      this.fragments.record6(key, id, h, flowId, now, this.fragmentMs);
      if (this.held.count > 0) this.releaseTaken(this.held.take6(key, id), h, now);
      return r;
    }
    const h = this.fragments.lookup6(key, id, now, this.table.id, this.table.state);
    if (h >= 0) {
      this.translate(buf, off, info, h, now);
      return 0;
    }
    if (h === FRAG_NO_FLOW) return Drop.FRAGMENT_NO_FLOW;
    this.expireFragments(now);
    if (!this.held.add6(buf, off, info.ipTotalLen, key, id, now + this.fragmentMs))
      return Drop.FRAGMENT_HELD_OVERFLOW;
    c.fragmentsHeld = this.held.count;
    return HELD;
  }

  /**
   * The ICMP stage. The message's checksum is verified first (ICMP is never
   * offloaded). An error quoting a flow's packet is translated, an error about no
   * flow dropped; an echo request to a virtual service address is answered in
   * place; another message for a virtual address (or the local-client address) is
   * dropped; any other message (the host's own, steered through the TUN by the
   * ICMP reply rule: an echo reply from the TUN address, say) goes on unchanged.
   */
  private icmp(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const m = info.l4Off;
    const end = off + info.ipTotalLen;
    if (sum16(buf, m, end - m) !== 0xffff) return Drop.ICMP_BAD_CHECKSUM;
    const type = buf[m]!;
    const dst = info.dstAddr;
    const rules = this.rules;
    const ours = rules.isVip(dst) || dst === this.opts.localClientAddr;
    if (isIcmpError(type)) {
      const q = this.quoted;
      if (checkQuoted(buf, m + ICMP_HEADER_LEN, end, q)) {
        const t = this.table;
        const h = t.lookup(q.dstAddr, q.dstPort, q.srcAddr, q.srcPort, q.protocol);
        if (h >= 0 && translateIcmpError(buf, info, q, t, h)) {
          this.counters.icmpErrorsTranslated++;
          return 0;
        }
      }
      // About no flow (one that expired, say): unknown to the receiver, and passed on
      // as it is it would show the receiver an instance's address and port.
      return Drop.ICMP_NO_FLOW;
    }
    if (ours) {
      if (type !== ICMP_ECHO_REQUEST || !rules.isVip(dst)) return Drop.ICMP_UNSUPPORTED;
      if (!this.icmpBucket.take(now)) return Drop.ICMP_RATE_LIMITED;
      this.echoReply(buf, off, m);
      this.counters.echoReplies++;
      return 0;
    }
    this.counters.icmpPassed++;
    return 0;
  }

  /**
   * Turn the echo request at buf[off] (ICMP message at `m`) into its reply, in
   * place: addresses swapped (which leaves the header checksum as it is), TTL 64,
   * type echo reply; both checksums updated incrementally.
   */
  private echoReply(buf: Uint8Array, off: number, m: number): void {
    const a = get32(buf, off + IPV4_OFF_SRC);
    set32(buf, off + IPV4_OFF_SRC, get32(buf, off + IPV4_OFF_DST));
    set32(buf, off + IPV4_OFF_DST, a);
    const ttlProto = get16(buf, off + IPV4_OFF_TTL);
    const nextTtlProto = (64 << 8) | (ttlProto & 0xff);
    set16(buf, off + IPV4_OFF_TTL, nextTtlProto);
    const ipc = off + IPV4_OFF_CHECKSUM;
    set16(buf, ipc, update16(get16(buf, ipc), ttlProto, nextTtlProto));
    const typeCode = get16(buf, m);
    const replyTypeCode = (ICMP_ECHO_REPLY << 8) | (typeCode & 0xff);
    set16(buf, m, replyTypeCode);
    const ic = m + ICMP_OFF_CHECKSUM;
    set16(buf, ic, update16(get16(buf, ic), typeCode, replyTypeCode));
  }

  /**
   * The ICMPv6 stage (RFC 4443). Neighbour discovery and MLD — the kernel's own
   * chatter on the TUN: router solicitations, listener reports — are dropped by
   * reason before anything else (counted, never logged one by one). Then as
   * `icmp`: the checksum (with its pseudo-header) verified, an error (destination
   * unreachable, packet too big, time exceeded, parameter problem) quoting a
   * flow's packet translated, an echo request to an IPv6 VIP answered in place,
   * anything else for a VIP or the local-client address dropped, the rest passed.
   */
  private icmp6(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const m = info.l4Off;
    const end = off + info.ipTotalLen;
    const type = buf[m]!;
    if (isIcmp6NeighbourDiscovery(type)) return Drop.ICMPV6_ND;
    if (isIcmp6Mld(type)) return Drop.ICMPV6_MLD;
    const pseudo = pseudoHeader6(buf, info.srcOff, info.dstOff, IPPROTO_ICMPV6, end - m);
    if (sum16(buf, m, end - m, pseudo) !== 0xffff) return Drop.ICMP_BAD_CHECKSUM;
    if (isIcmp6Error(type)) {
      const q = this.quoted;
      if (checkQuoted6(buf, m + ICMP_HEADER_LEN, end, q)) {
        const t = this.table;
        const h = t.lookup6(buf, q.dstOff, q.dstPort, q.srcOff, q.srcPort, q.protocol);
        if (h >= 0 && translateIcmp6Error(buf, info, q, t, h)) {
          this.counters.icmpErrorsTranslated++;
          return 0;
        }
      }
      return Drop.ICMP_NO_FLOW;
    }
    const rules = this.rules;
    const vip = rules.isVip6(buf, info.dstOff);
    const lc = this.localClient6;
    if (vip || (lc !== null && is6(buf, info.dstOff, lc, 0))) {
      if (type !== ICMP6_ECHO_REQUEST || !vip) return Drop.ICMP_UNSUPPORTED;
      if (!this.icmpBucket.take(now)) return Drop.ICMP_RATE_LIMITED;
      this.echoReply6(buf, off, m);
      this.counters.echoReplies++;
      return 0;
    }
    this.counters.icmpPassed++;
    return 0;
  }

  /**
   * The ICMPv6 echo request at buf[off] (message at `m`) becomes its reply in
   * place: addresses swapped (the pseudo-header sum stays), hop limit 64, type
   * echo reply, the checksum updated incrementally.
   */
  private echoReply6(buf: Uint8Array, off: number, m: number): void {
    const a = off + IPV6_OFF_SRC;
    const b = off + IPV6_OFF_DST;
    for (let i = 0; i < 16; i++) {
      const x = buf[a + i]!;
      buf[a + i] = buf[b + i]!;
      buf[b + i] = x;
    }
    buf[off + IPV6_OFF_HOP_LIMIT] = 64;
    const typeCode = get16(buf, m);
    const replyTypeCode = (ICMP6_ECHO_REPLY << 8) | (typeCode & 0xff);
    set16(buf, m, replyTypeCode);
    const ic = m + ICMP_OFF_CHECKSUM;
    set16(buf, ic, update16(get16(buf, ic), typeCode, replyTypeCode));
  }

  /**
   * Record a flow agreed by negotiation (cooperative server side: before its
   * first packet arrives). Returns the slot, CREATE_FULL or CREATE_COLLISION.
   */
  createFlow(k: FlowKeyArgs, now: number): number {
    const s = this.table.create(k, now);
    if (s >= 0) this.counters.flowsCreated++;
    return s;
  }

  /**
   * A held packet (see `negotiate`: a TCP SYN or a UDP datagram) that is allowed
   * through: record the flow `k` and send the packet on, rewritten (towards
   * VIP:p2 for a peer's service, to the instance for a local client placed by its
   * looked-up AID). `pkt` is the holder's own copy, from offset 0. Returns the
   * slot, or CREATE_FULL, CREATE_COLLISION or INJECT_MALFORMED. It never answers
   * the client: on failure the holder decides, and calls `refuseHeld` once.
   * Further packets of the same flow that the holder queued go with `sendHeld`.
   */
  injectHeld(pkt: Uint8Array, k: FlowKeyArgs, now: number): number {
    if (!this.loadHeld(pkt) || this.info.version !== (k.family ?? 4)) return INJECT_MALFORMED;
    const s = this.createFlow(k, now);
    if (s < 0) return s;
    this.sendLoaded(s, now);
    return s;
  }

  /**
   * A further packet of a flow `injectHeld` recorded (`slot`), queued by the
   * holder while the flow was negotiated: rewritten and sent like the first.
   * Returns whether it was sent (false: malformed, or the flow is gone).
   */
  sendHeld(pkt: Uint8Array, slot: number, now: number): boolean {
    if (!this.table.isLive(slot) || !this.loadHeld(pkt)) return false;
    const i = this.info;
    const t = this.table;
    if (
      i.version !== t.family[slot] ||
      i.protocol !== t.proto[slot] ||
      i.srcPort !== t.clientPort[slot] ||
      i.dstPort !== t.vport[slot]
    )
      return false;
    if (i.version === 4) {
      if (i.srcAddr !== t.clientAddr[slot] || i.dstAddr !== t.vipAddr[slot]) return false;
    } else {
      const held = this.heldBuf;
      if (!is6(held, i.srcOff, t.addr6, slot * 16) || !is6(held, i.dstOff, t.addr6, slot * 16 + 4))
        return false;
    }
    return this.sendLoaded(slot, now) === 1;
  }

  /** Copy a holder's packet behind an all-zero virtio-net header and parse it into `info`. */
  private loadHeld(pkt: Uint8Array): boolean {
    const hr = this.hr;
    if (pkt.length > this.heldBuf.length - hr) return false;
    this.heldBuf.fill(0, 0, hr);
    this.heldBuf.set(pkt, hr);
    const held = this.heldBuf.subarray(0, hr + pkt.length);
    return checkPacket(held, hr, pkt.length, this.info) === Check.OK && this.isTransport();
  }

  /** Translate the loaded held packet for flow `s` (client side) and write it. */
  private sendLoaded(s: number, now: number): number {
    this.partial = false; // the holder's copy has a complete checksum (see hold)
    this.translate(this.heldBuf, this.hr, this.info, s * 2, now);
    this.oneOffsets[0] = this.hr;
    this.oneLengths[0] = this.info.ipTotalLen;
    const n = this.dev.write(this.heldBuf, this.oneOffsets, this.oneLengths, 1);
    this.counters.heldInjected += n;
    return n;
  }

  /**
   * A held packet that will not go through: count it (`negotiationsFailed` for a
   * peer's service, `localClientsRefused` for a local client held for an owner
   * lookup) and answer the client as a closed port does — a RST for a SYN, an
   * ICMP port unreachable (rate-limited) for a UDP datagram — if one can be built
   * from `pkt`. Returns whether the answer was written. The holder calls it once
   * per held flow.
   */
  refuseHeld(pkt: Uint8Array, kind: HeldKind, now = performance.now()): boolean {
    const info = this.info;
    if (kind === 'negotiation') this.counters.negotiationsFailed++;
    else this.counters.localClientsRefused++;
    if (checkPacket(pkt, 0, pkt.length, info) !== Check.OK || !this.isTransport()) return false;
    this.oneOffsets[0] = this.hr;
    if (info.protocol === IPPROTO_TCP) {
      this.oneLengths[0] = writeRst(pkt, info, this.rstBuf, this.hr);
      const sent = this.dev.write(this.rstBuf, this.oneOffsets, this.oneLengths, 1);
      this.counters.rstSent += sent;
      return sent === 1;
    }
    if (!this.icmpBucket.take(now)) {
      this.counters.icmpRateLimited++;
      return false;
    }
    this.oneLengths[0] = this.writeUnreachable(pkt, info, this.icmpBuf, this.hr);
    const sent = this.dev.write(this.icmpBuf, this.oneOffsets, this.oneLengths, 1);
    this.counters.icmpUnreachableSent += sent;
    return sent === 1;
  }

  /** After checkPacket into `this.info`: true for a whole, unfragmented TCP segment or UDP datagram. */
  private isTransport(): boolean {
    const info = this.info;
    return (
      (info.protocol === IPPROTO_TCP || info.protocol === IPPROTO_UDP) &&
      !info.isFragment &&
      info.l4Off >= 0
    );
  }

  /**
   * Hand a flow's first packet to the holder (`negotiate`). A held packet outlives
   * the batch and its virtio-net header: a partial checksum is completed here (the
   * packet leaves the batch anyway), so the holder keeps a plain packet.
   */
  private hold(
    buf: Uint8Array,
    off: number,
    info: PacketInfo,
    svc: number,
    aid: number,
    local: boolean,
  ): void {
    const hr = this.hr;
    if (hr > 0 && buf[off - hr + VNET_OFF_GSO_TYPE] !== VNET_GSO_NONE) {
      // A super-packet (a UDP_SEGMENT sender's burst) stands for several datagrams:
      // the holder gets each, as the wire would carry them, with complete checksums.
      const gsoSize = get16le(buf, off - hr + VNET_OFF_GSO_SIZE);
      const n = segmentSuperPacket(
        buf,
        info,
        gsoSize,
        this.segBuf,
        0,
        0,
        this.segOffsets,
        this.segLengths,
      );
      const seg = this.segInfo;
      for (let k = 0; k < n; k++) {
        const o = this.segOffsets[k]!;
        const l = this.segLengths[k]!;
        if (checkPacket(this.segBuf, o, l, seg) === Check.OK)
          this.opts.negotiate!(this.segBuf, o, l, seg, svc, aid, local);
      }
      return;
    }
    if (this.partial) completePartialChecksum(buf, info);
    this.opts.negotiate!(buf, off, info.ipTotalLen, info, svc, aid, local);
  }

  /** A new flow (TCP SYN, UDP datagram): returns the new slot, or -(drop reason). */
  private classify(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const rules = this.rules;
    const proto = info.protocol;
    const svc = rules.findService(info.dstAddr, info.dstPort, proto);
    if (svc < 0) {
      if (rules.isCoopPort(info.dstAddr, info.dstPort)) return -Drop.NOT_NEGOTIATED;
      // A closed port of a virtual service address answers like a closed port of a host.
      if (rules.isVip(info.dstAddr)) return this.refused(Drop.REFUSED_NO_SERVICE, info, buf);
      return proto === IPPROTO_TCP ? -Drop.NOT_SERVICE : -Drop.NO_FLOW;
    }
    const local = this.localAddrs.has(info.srcAddr);
    let aid =
      local && this.opts.localClientAid
        ? this.opts.localClientAid(info.srcAddr, info.srcPort, proto)
        : -1;
    if (aid < 0) aid = rules.selectAid(svc, info.srcAddr, info.srcPort);
    // Served by a peer: hold the packet while the two daemons negotiate (FIG. 6/7).
    // A local client nobody vouched for: its socket's owner may tell (FIG. 8).
    const peer = rules.services[svc]!.peer >= 0;
    if (this.opts.negotiate && (peer || (aid < 0 && local && this.opts.holdUnknownLocal))) {
      // A held packet must be whole: a fragment is dropped unanswered, and the
      // client's next datagram finds the flow negotiated (or is held itself).
      if (info.isFragment) return -Drop.FRAGMENT_NOT_HELD;
      this.hold(buf, off, info, svc, aid, local);
      return -Drop.NEGOTIATING;
    }
    if (peer) return this.refused(Drop.REFUSED_NO_INSTANCE, info, buf);
    if (aid < 0) return this.refused(Drop.REFUSED_NO_SELECTOR, info, buf);
    const instances = this.opts.instances;
    const inst = instances.pick(aid, svc, now);
    if (inst < 0) return this.refused(Drop.REFUSED_NO_INSTANCE, info, buf);
    const target = instances.get(inst)!;
    const k = this.key;
    k.family = 4;
    k.proto = proto;
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
    if (s === CREATE_FULL) return this.refused(Drop.REFUSED_TABLE_FULL, info, buf);
    if (s === CREATE_COLLISION) return this.refused(Drop.REFUSED_COLLISION, info, buf);
    this.counters.flowsCreated++;
    this.opts.onFlowEvent?.('created', s, 0, info, buf);
    return s;
  }

  /** `classify` for IPv6: the same steps, with the IPv6 rules, instances and addresses. */
  private classify6(buf: Uint8Array, off: number, info: PacketInfo, now: number): number {
    const rules = this.rules;
    const proto = info.protocol;
    const svc = rules.findService6(buf, info.dstOff, info.dstPort, proto);
    if (svc < 0) {
      if (rules.isCoopPort6(buf, info.dstOff, info.dstPort)) return -Drop.NOT_NEGOTIATED;
      if (rules.isVip6(buf, info.dstOff)) return this.refused(Drop.REFUSED_NO_SERVICE, info, buf);
      return proto === IPPROTO_TCP ? -Drop.NOT_SERVICE : -Drop.NO_FLOW;
    }
    const local = this.isLocal6(buf, info.srcOff);
    let aid = -1;
    if (local && this.opts.localClientAid6) {
      const w = this.client6;
      for (let i = 0; i < 4; i++) w[i] = get32(buf, info.srcOff + 4 * i);
      aid = this.opts.localClientAid6(w, info.srcPort, proto);
    }
    if (aid < 0) aid = rules.selectAid6(svc, buf, info.srcOff, info.srcPort);
    const peer = rules.services[svc]!.peer >= 0;
    if (this.opts.negotiate && (peer || (aid < 0 && local && this.opts.holdUnknownLocal))) {
      if (info.isFragment) return -Drop.FRAGMENT_NOT_HELD;
      this.hold(buf, off, info, svc, aid, local);
      return -Drop.NEGOTIATING;
    }
    if (peer) return this.refused(Drop.REFUSED_NO_INSTANCE, info, buf);
    if (aid < 0) return this.refused(Drop.REFUSED_NO_SELECTOR, info, buf);
    const instances = this.opts.instances;
    const inst = instances.pick(aid, svc, now, 6);
    if (inst < 0) return this.refused(Drop.REFUSED_NO_INSTANCE, info, buf);
    const real = instances.get(inst)!.addr6!;
    const k = this.key;
    const w = k.addr6!;
    const so = info.srcOff;
    const d = info.dstOff;
    const lc = local ? this.localClient6 : null;
    for (let i = 0; i < 4; i++) {
      const client = get32(buf, so + 4 * i);
      w[i] = client;
      w[4 + i] = get32(buf, d + 4 * i);
      w[8 + i] = lc !== null ? lc[i]! : client;
      w[12 + i] = real[i]!;
    }
    k.family = 6;
    k.proto = proto;
    k.clientAddr = 0;
    k.clientPort = info.srcPort;
    k.vipAddr = 0;
    k.vport = info.dstPort;
    k.natAddr = 0;
    k.natPort = info.srcPort;
    k.realAddr = 0;
    k.realPort = instances.get(inst)!.port;
    k.service = svc;
    k.aid = aid;
    k.instance = inst;
    const s = this.table.create(k, now);
    if (s === CREATE_FULL) return this.refused(Drop.REFUSED_TABLE_FULL, info, buf);
    if (s === CREATE_COLLISION) return this.refused(Drop.REFUSED_COLLISION, info, buf);
    this.counters.flowsCreated++;
    this.opts.onFlowEvent?.('created', s, 0, info, buf);
    return s;
  }

  /** Is the IPv6 address at buf[off] one of this host's (localAddrs6)? */
  private isLocal6(buf: Uint8Array, off: number): boolean {
    const n = this.localAddrs6Count;
    if (n === 0) return false;
    const a = this.localAddrs6;
    for (let i = 0; i < n && 4 * i + 4 <= a.length; i++) if (is6(buf, off, a, 4 * i)) return true;
    return false;
  }

  /**
   * Keep a copy of the SYN that just opened flow `s` (not translated yet), for a
   * retry on another instance should this one refuse it. Only when the AID has
   * another instance; a full pool is counted (synNotKept), the SYN goes on.
   */
  private keepSyn(buf: Uint8Array, off: number, info: PacketInfo, s: number): void {
    const t = this.table;
    if (this.opts.instances.of(t.aid[s]!).length < 2) return;
    const hr = this.hr;
    const copies = this.synCopies;
    const len = info.ipTotalLen;
    const k =
      hr > 0 && buf[off - hr + VNET_OFF_GSO_TYPE] !== VNET_GSO_NONE
        ? -1
        : copies.take(s, buf, off, len, t.instance[s]!);
    if (k < 0) {
      this.counters.synNotKept++;
      return;
    }
    if (this.partial) {
      // The copy must stand alone (it may go out behind an all-zero header).
      const ci = this.segInfo;
      if (checkPacket(copies.buf, k * SYN_COPY_MAX, len, ci) === Check.OK)
        completePartialChecksum(copies.buf, ci);
    }
  }

  /** Is flow `s` pointed at the instance its `instance` column names (not at a peer)? */
  private instanceOf(s: number): number {
    const t = this.table;
    const idx = t.instance[s]!;
    const inst = this.opts.instances.get(idx);
    if (inst === undefined || inst.port !== t.realPort[s]) return -1;
    if (t.family[s] === 6)
      return inst.addr6 && same6From(inst.addr6, t.addr6, s * 16 + 12) ? idx : -1;
    return inst.addr === t.realAddr[s] ? idx : -1;
  }

  /** The instance of flow `s` answered its SYN with a SYN+ACK: it is up. */
  private acceptedByInstance(s: number): void {
    this.synCopies.release(s);
    const idx = this.instanceOf(s);
    if (idx >= 0 && this.opts.instances.markUp(idx)) this.opts.onInstanceEvent?.('up', idx);
  }

  /**
   * A RST from the instance of flow `s` (in SYN_SENT) at buf[off]: the instance
   * refused the SYN (nothing listens). Mark it down and, if the SYN was kept and
   * another instance of the AID is left, re-point the flow at that one and put
   * the SYN, translated for it, where the RST was: true, the packet goes out (the
   * RST was answered in place, so it counts as one packet out). False: the RST
   * goes on to the client as any packet of the flow.
   */
  private refusedByInstance(
    buf: Uint8Array,
    off: number,
    info: PacketInfo,
    s: number,
    now: number,
  ): boolean {
    if (this.downMs <= 0 || (info.tcpFlags & TCP_ACK) === 0) return false;
    const idx = this.instanceOf(s);
    if (idx < 0) return false;
    const copies = this.synCopies;
    const c = this.counters;
    const k = copies.of(s);
    if (k >= 0) {
      // A RST that acknowledges the kept SYN, and only that one, is a refusal.
      const at = k * SYN_COPY_MAX;
      const tcpAt =
        copies.buf[at]! >>> 4 === 6
          ? this.keptTcpOffset(copies.buf, at, copies.lengths[k]!)
          : at + ((copies.buf[at]! & 15) << 2);
      const seq = get32(copies.buf, tcpAt + 4);
      if (get32(buf, info.l4Off + 8) !== (seq + 1) >>> 0) return false;
    }
    const instances = this.opts.instances;
    c.instanceRefusals++;
    if (instances.markDown(idx, now + this.downMs, now)) this.opts.onInstanceEvent?.('down', idx);
    if (k < 0) {
      c.refusalsForwarded++;
      return false;
    }
    const t = this.table;
    const len = copies.lengths[k]!;
    const next =
      copies.triedCount[k]! >= MAX_TRIES
        ? -1
        : instances.pickRetry(
            t.aid[s]!,
            t.service[s]!,
            now,
            copies.tried,
            k * MAX_TRIES,
            copies.triedCount[k]!,
            t.family[s]!,
          );
    const target = next >= 0 ? instances.get(next) : undefined;
    if (
      target === undefined ||
      len > this.dev.slotSize - this.hr ||
      !t.repoint(s, target.addr, target.port, next, target.addr6 ?? null)
    ) {
      copies.release(s);
      c.refusalsForwarded++;
      return false;
    }
    copies.addTried(k, next);
    // The kept SYN replaces the RST in the batch, behind an all-zero header.
    const hr = this.hr;
    if (hr > 0) buf.fill(0, off - hr, off);
    const from = k * SYN_COPY_MAX;
    const cb = copies.buf;
    for (let i = 0; i < len; i++) buf[off + i] = cb[from + i]!;
    if (checkPacket(buf, off, len, info) !== Check.OK) return false; // kept whole: cannot happen
    this.partial = false;
    this.complete = true;
    this.translate(buf, off, info, s * 2, now);
    this.lastHandle = s * 2;
    c.synRetried++;
    return true;
  }

  /** The TCP header's offset in a kept IPv6 SYN at buf[at] (kept whole: it parses). */
  private keptTcpOffset(buf: Uint8Array, at: number, len: number): number {
    const ci = this.segInfo;
    return checkPacket(buf, at, len, ci) === Check.OK && ci.l4Off >= 0 ? ci.l4Off : at;
  }

  private refused(reason: number, info: PacketInfo, buf: Uint8Array): number {
    this.opts.onFlowEvent?.('refused', -1, reason, info, buf);
    return -reason;
  }
}

/** A UDP checksum field of 0 (over IPv6: invalid). */
function isZeroUdpChecksum(buf: Uint8Array, info: PacketInfo): boolean {
  const at = info.l4Off + UDP_OFF_CHECKSUM;
  return buf[at] === 0 && buf[at + 1] === 0;
}

/** Are the 4 words a[0..3] the words b[at..at+3]? */
function same6From(a: Uint32Array, b: Uint32Array, at: number): boolean {
  return a[0] === b[at] && a[1] === b[at + 1] && a[2] === b[at + 2] && a[3] === b[at + 3];
}
