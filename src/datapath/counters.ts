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

import { CHECK_NAMES, Check } from '../wire/parse.js';

/** Drop reasons. The first ones mirror `Check` codes of the checked parser. */
export const Drop = {
  TRUNCATED: Check.TRUNCATED,
  BAD_VERSION: Check.BAD_VERSION,
  BAD_IHL: Check.BAD_IHL,
  BAD_TOTAL_LEN: Check.BAD_TOTAL_LEN,
  L4_TRUNCATED: Check.L4_TRUNCATED,
  BAD_DATA_OFFSET: Check.BAD_DATA_OFFSET,
  BAD_UDP_LEN: Check.BAD_UDP_LEN,
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
} as const;

export const DROP_NAMES: readonly string[] = [
  // The checked parser's reasons keep their names and numbers.
  ...CHECK_NAMES,
  'bad_ip_checksum',
  'bad_l4_checksum',
  'ipv6',
  'not_tcp',
  'fragment',
  'no_flow',
  'not_service',
  'refused_no_selector',
  'refused_no_instance',
  'refused_table_full',
  'refused_collision',
  'tx_error',
  'negotiating',
  'not_negotiated',
  'refused_no_service',
];
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
      batches: this.batches,
      batchSizes,
      perAid,
    };
  }
}
