/**
 * Data-plane counters. Every packet read from the device is written back
 * (forwarded, after translation, or answered in place), dropped with exactly one
 * reason, or — a fragment (IPv4, IPv6) that came before the first fragment of
 * its datagram — waiting for that first fragment, so at every moment between batches:
 *
 *     packetsIn === packetsOut + sum(drops) + fragmentsHeld
 *
 * (a held fragment later goes out, counted in packetsOut, or is dropped as
 * fragment_expired or fragment_no_flow). An instance's RST that refused a SYN
 * which vpm then sends to another instance (the passive health check) is
 * answered in place: the retried SYN takes its place in the batch, one packet in,
 * one out (`synRetried` counts them; no drop).
 *
 * Counters are numbers in typed arrays, bumped by index on the hot path (no
 * strings, no objects); names exist only for the control plane.
 */

import { enumNames } from '../base/enum.js';
import { Check } from '../wire/parse.js';

/**
 * Drop reasons. The first ones are the checked parser's `Check` codes, with their
 * names and numbers (`OK`, 0, is no drop: the pipeline's "forward").
 */
export const Drop = {
  ...Check,
  BAD_IP_CHECKSUM: 10,
  BAD_L4_CHECKSUM: 11,
  /** IPv6 reached the TUN of a daemon whose configuration has no IPv6 address (its flow table has no IPv6 columns). */
  IPV6: 12,
  /** An IP protocol (IPv6: upper-layer header) other than TCP, UDP and ICMP (IPv6: ICMPv6). */
  UNSUPPORTED_PROTOCOL: 13,
  /** A later fragment (IPv4, IPv6) of a datagram whose first fragment matched no flow (or whose flow is gone). */
  FRAGMENT_NO_FLOW: 14,
  /** A TCP packet other than a SYN, or a UDP datagram to no service, that belongs to no flow. */
  NO_FLOW: 15,
  /** A TCP SYN to an address/port that is no virtual service. */
  NOT_SERVICE: 16,
  /** A new flow (TCP SYN, UDP datagram) that no selector matched and no default took: answered (RST, ICMP port unreachable). */
  REFUSED_NO_SELECTOR: 17,
  /** A new flow for an AID without a live instance: answered. */
  REFUSED_NO_INSTANCE: 18,
  /** A new flow while the translation table was full: answered. */
  REFUSED_TABLE_FULL: 19,
  /** A new flow whose translated ports are already in use by another flow: answered. */
  REFUSED_COLLISION: 20,
  /** The device did not take the packet on write (queue full). */
  TX_ERROR: 21,
  /** The first packet of a flow to a cooperative service, held while the peers negotiate (re-sent, rewritten, when they agree). */
  NEGOTIATING: 22,
  /** A new flow to VIP:p2 (a cooperative port) that no negotiation announced. */
  NOT_NEGOTIATED: 23,
  /** A new flow to a virtual service address on a port that is no service: answered like a closed port (RST, ICMP port unreachable). */
  REFUSED_NO_SERVICE: 24,
  /** Virtio-net header: flag bits other than NEEDS_CSUM/DATA_VALID, or both. */
  VNET_BAD_FLAGS: 25,
  /** Virtio-net header: a gso_type vpm does not know (UFO, or ECN without TCP). */
  VNET_BAD_GSO_TYPE: 26,
  /** Virtio-net header: a super-packet that does not fit its gso_type, has gso_size 0, or no NEEDS_CSUM. */
  VNET_BAD_GSO: 27,
  /** Virtio-net header: csum_start/csum_offset are not the packet's TCP/UDP checksum field. */
  VNET_BAD_CSUM: 28,
  /** The kernel refused the packet on write (EINVAL): not delivered. */
  TX_REFUSED: 29,
  /** A first fragment (offset 0, IPv4 or IPv6) that does not hold the whole TCP/UDP header (RFC 1858's tiny fragments). */
  FRAGMENT_TOO_SHORT: 30,
  /** A fragment that came before its first fragment found the wait buffer full (limits.heldFragments, heldFragmentBytes). */
  FRAGMENT_HELD_OVERFLOW: 31,
  /** A fragment waited longer than timeouts.fragmentMs for its first fragment. */
  FRAGMENT_EXPIRED: 32,
  /** An ICMP message whose checksum is wrong. */
  ICMP_BAD_CHECKSUM: 33,
  /** An ICMP error that quotes no packet of a flow (or too little to tell). */
  ICMP_NO_FLOW: 34,
  /** An ICMP message to a virtual service address other than an error or an echo request (or a fragment of one). */
  ICMP_UNSUPPORTED: 35,
  /** An echo request to a virtual service address over the ICMP rate limit (limits.icmpPerSecond). */
  ICMP_RATE_LIMITED: 36,
  /** A fragment of the first datagram of a flow that must be held (negotiation, owner lookup): only whole datagrams are held. */
  FRAGMENT_NOT_HELD: 37,
  /** A UDP/IPv6 datagram with a checksum of 0: invalid over IPv6 (RFC 8200 §8.1), discarded as the kernel does. */
  BAD_UDP6_ZERO_CHECKSUM: 38,
  /**
   * ICMPv6 neighbour discovery and router chatter (RFC 4861 router/neighbour
   * solicitation and advertisement, redirect; inverse ND, SEND, multicast router
   * discovery): the kernel's own on a point-to-point TUN, meaningless to vpm.
   */
  ICMPV6_ND: 39,
  /** ICMPv6 multicast listener queries, reports and done (MLD, MLDv2: RFC 2710, RFC 3810). */
  ICMPV6_MLD: 40,
} as const;

/** Drop reason of each VnetCheck code (indexed by code; 0, OK, is no drop). */
export const VNET_DROP: Readonly<Uint8Array> = Uint8Array.of(
  0,
  Drop.VNET_BAD_FLAGS,
  Drop.VNET_BAD_GSO_TYPE,
  Drop.VNET_BAD_GSO,
  Drop.VNET_BAD_CSUM,
);

/** Names of the drop reasons, indexed by reason (the parser's first: they keep their names and numbers). */
export const DROP_NAMES: readonly string[] = enumNames(Drop);
export const DROP_REASONS = DROP_NAMES.length;

/**
 * Reasons for which vpm answers the packet that would have opened a flow as a
 * host answers a closed port: a TCP SYN with a RST, a UDP datagram with an ICMP
 * port unreachable (rate-limited). Indexed by reason.
 */
export const ANSWERS: Readonly<Uint8Array> = (() => {
  const t = new Uint8Array(DROP_REASONS);
  for (const r of [
    Drop.REFUSED_NO_SELECTOR,
    Drop.REFUSED_NO_INSTANCE,
    Drop.REFUSED_TABLE_FULL,
    Drop.REFUSED_COLLISION,
    Drop.REFUSED_NO_SERVICE,
  ])
    t[r] = 1;
  return t;
})();

/** Histogram buckets for batch sizes: 1, 2-3, 4-7, ..., 128+ (log2). */
export const BATCH_BUCKETS = 9;

export class Counters {
  packetsIn = 0;
  bytesIn = 0;
  packetsOut = 0;
  bytesOut = 0;
  batches = 0;
  readonly batchSizes = new Float64Array(BATCH_BUCKETS);
  readonly drops = new Float64Array(DROP_REASONS);
  flowsCreated = 0;
  flowsExpired = 0;
  rstSent = 0;
  /** Held first packets of flows (a SYN, a UDP datagram) sent on, rewritten (cooperative client side, local clients looked up). */
  heldInjected = 0;
  /**
   * Held SYNs to a peer's service answered with a RST: the negotiation failed
   * (refused, AID mismatch, timeout, peer unreachable) or its flow could not be recorded.
   */
  negotiationsFailed = 0;
  /**
   * Held SYNs of local clients whose AID was looked up (FIG. 8: the socket's
   * owner) answered with a RST: no AID, no instance, or no flow recorded.
   */
  localClientsRefused = 0;
  /** Offloads: super-packets (GSO) read and the segments they stood for. */
  superPacketsIn = 0;
  segmentsIn = 0;
  /** Super-packets written back whole, and the segments they stand for. */
  superPacketsOut = 0;
  segmentsOut = 0;
  /** Super-packets the kernel refused on write. */
  gsoRefused = 0;
  /** Super-packets vpm segmented itself (after a refusal), and the segments it wrote. */
  softwareSegmented = 0;
  softwareSegments = 0;
  /** Fragments (IPv4, IPv6) waiting for their datagram's first fragment now (a gauge). */
  fragmentsHeld = 0;
  /** Fragments that waited and went out once their first fragment came. */
  fragmentsReleased = 0;
  /** ICMP and ICMPv6 errors about a flow, translated (RFC 5508) and forwarded. */
  icmpErrorsTranslated = 0;
  /** ICMP messages that are no errors and not for a virtual address (the host's own, from the TUN address), written back unchanged. */
  icmpPassed = 0;
  /** Echo requests (ICMP, ICMPv6) to a virtual service address answered. */
  echoReplies = 0;
  /** ICMP (ICMPv6) port unreachable sent for refused UDP (UDP/IPv6) datagrams. */
  icmpUnreachableSent = 0;
  /** ICMP messages vpm did not send because of the rate limit (limits.icmpPerSecond). */
  icmpRateLimited = 0;
  /** Passive health check: RSTs by which an instance refused a SYN (it was marked down). */
  instanceRefusals = 0;
  /** Refused SYNs sent again to another instance of the AID (the RST answered in place: one packet out). */
  synRetried = 0;
  /** Refusals passed on to the client: no other instance left, or the SYN was not kept. */
  refusalsForwarded = 0;
  /** SYNs not kept for a retry: the copy pool (health.synCopies) was full, or the SYN too long. */
  synNotKept = 0;
  /** Per AID index: bytes client → server and server → client. */
  readonly aidBytesIn: Float64Array;
  readonly aidBytesOut: Float64Array;

  constructor(maxAids: number) {
    this.aidBytesIn = new Float64Array(maxAids);
    this.aidBytesOut = new Float64Array(maxAids);
  }

  dropTotal(): number {
    let n = 0;
    for (let i = 0; i < DROP_REASONS; i++) n += this.drops[i]!;
    return n;
  }

  recordBatch(n: number): void {
    this.batches++;
    let b = 0;
    while (b < BATCH_BUCKETS - 1 && n >= 2 << b) b++;
    this.batchSizes[b]! += 1;
  }

  /** Plain object for the control plane (`vpm stats --json`). */
  snapshot(aidNames: readonly string[]): Record<string, unknown> {
    const drops: Record<string, number> = {};
    for (let i = 1; i < DROP_REASONS; i++) drops[DROP_NAMES[i]!] = this.drops[i]!;
    const refused =
      this.drops[Drop.REFUSED_NO_SELECTOR]! +
      this.drops[Drop.REFUSED_NO_INSTANCE]! +
      this.drops[Drop.REFUSED_TABLE_FULL]! +
      this.drops[Drop.REFUSED_COLLISION]! +
      this.drops[Drop.REFUSED_NO_SERVICE]!;
    const batchSizes: Record<string, number> = {};
    for (let b = 0; b < BATCH_BUCKETS; b++) {
      const lo = 1 << b;
      const label =
        b === BATCH_BUCKETS - 1
          ? `${lo}+`
          : lo === (2 << b) - 1
            ? `${lo}`
            : `${lo}-${(2 << b) - 1}`;
      batchSizes[label] = this.batchSizes[b]!;
    }
    const perAid: Record<string, { bytesIn: number; bytesOut: number }> = {};
    aidNames.forEach((name, i) => {
      perAid[name] = { bytesIn: this.aidBytesIn[i]!, bytesOut: this.aidBytesOut[i]! };
    });
    return {
      packetsIn: this.packetsIn,
      packetsOut: this.packetsOut,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      dropsTotal: this.dropTotal(),
      drops,
      flowsCreated: this.flowsCreated,
      flowsExpired: this.flowsExpired,
      flowsRefused: refused,
      rstSent: this.rstSent,
      heldInjected: this.heldInjected,
      negotiationsFailed: this.negotiationsFailed,
      localClientsRefused: this.localClientsRefused,
      fragmentsHeld: this.fragmentsHeld,
      fragmentsReleased: this.fragmentsReleased,
      health: {
        instanceRefusals: this.instanceRefusals,
        synRetried: this.synRetried,
        refusalsForwarded: this.refusalsForwarded,
        synNotKept: this.synNotKept,
      },
      icmp: {
        errorsTranslated: this.icmpErrorsTranslated,
        passed: this.icmpPassed,
        echoReplies: this.echoReplies,
        unreachableSent: this.icmpUnreachableSent,
        rateLimited: this.icmpRateLimited,
      },
      offload: {
        superPacketsIn: this.superPacketsIn,
        segmentsIn: this.segmentsIn,
        superPacketsOut: this.superPacketsOut,
        segmentsOut: this.segmentsOut,
        gsoRefused: this.gsoRefused,
        softwareSegmented: this.softwareSegmented,
        softwareSegments: this.softwareSegments,
      },
      batches: this.batches,
      batchSizes,
      perAid,
    };
  }
}
