/**
 * Data-plane counters. Every packet read from the device is either written back
 * (forwarded, after translation) or dropped with exactly one reason, so at every
 * moment between batches:
 *
 *     packetsIn === packetsOut + sum(drops)
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
  BAD_IP_CHECKSUM: 8,
  BAD_L4_CHECKSUM: 9,
  /** IPv6 reached the TUN (not multiplexed yet). */
  IPV6: 10,
  /** An IPv4 protocol other than TCP (UDP and ICMP are not multiplexed yet). */
  NOT_TCP: 11,
  /** An IPv4 fragment: vpm does not reassemble. */
  FRAGMENT: 12,
  /** A non-SYN packet that belongs to no flow. */
  NO_FLOW: 13,
  /** A SYN to an address/port that is no virtual service. */
  NOT_SERVICE: 14,
  /** A SYN that no selector matched and no default took: answered with RST. */
  REFUSED_NO_SELECTOR: 15,
  /** A SYN for an AID without a live instance: answered with RST. */
  REFUSED_NO_INSTANCE: 16,
  /** A SYN while the translation table was full: answered with RST. */
  REFUSED_TABLE_FULL: 17,
  /** A SYN whose translated ports are already in use by another flow: answered with RST. */
  REFUSED_COLLISION: 18,
  /** The device did not take the packet on write (queue full). */
  TX_ERROR: 19,
  /** A SYN to a cooperative service, held while the peers negotiate (re-sent, rewritten, when they agree). */
  NEGOTIATING: 20,
  /** A SYN to VIP:p2 (a cooperative port) that no negotiation announced. */
  NOT_NEGOTIATED: 21,
  /** A SYN to a virtual service address on a port that is no service: answered with RST, like a closed port. */
  REFUSED_NO_SERVICE: 22,
  /** Virtio-net header: flag bits other than NEEDS_CSUM/DATA_VALID, or both. */
  VNET_BAD_FLAGS: 23,
  /** Virtio-net header: a gso_type vpm does not know (UFO, or ECN without TCP). */
  VNET_BAD_GSO_TYPE: 24,
  /** Virtio-net header: a super-packet that does not fit its gso_type, has gso_size 0, or no NEEDS_CSUM. */
  VNET_BAD_GSO: 25,
  /** Virtio-net header: csum_start/csum_offset are not the packet's TCP/UDP checksum field. */
  VNET_BAD_CSUM: 26,
  /** The kernel refused the packet on write (EINVAL): not delivered. */
  TX_REFUSED: 27,
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

/** Reasons for which vpm answers the dropped SYN with a RST (indexed by reason). */
export const SENDS_RST: Readonly<Uint8Array> = (() => {
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
  /** Held SYNs sent on after a successful negotiation (cooperative client side). */
  synInjected = 0;
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
      synInjected: this.synInjected,
      negotiationsFailed: this.negotiationsFailed,
      localClientsRefused: this.localClientsRefused,
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
