/**
 * Counters and events of the cooperative channel, common to both ends
 * (PeerServer, PeerClient): what a framed connection counts for its end, and the
 * names those counters are reported under (`vpm stats`, docs/cooperative.md).
 */

import { DECODE_REASONS, MESSAGE_TYPES, type MessageType, REFUSE_REASONS } from './protocol.js';

/**
 * Why a frame or a connection was refused by the channel (decode reasons plus
 * three; `tls`: a TLS handshake that failed — unknown PSK identity, wrong key,
 * not TLS 1.3).
 */
export const CHANNEL_REFUSALS = [...DECODE_REASONS, 'frame_timeout', 'unexpected', 'tls'] as const;
export type ChannelRefusal = (typeof CHANNEL_REFUSALS)[number];

export type ChannelEvent =
  | { kind: 'refused'; reason: ChannelRefusal; detail: string; remote: string }
  | { kind: 'connected'; remote: string }
  | { kind: 'disconnected'; remote: string; pending: number }
  | { kind: 'overflow'; remote: string };

/** A counter per name, all zero. */
export function zeroes<K extends string>(keys: readonly K[]): Record<K, number> {
  const o = {} as Record<K, number>;
  for (const k of keys) o[k] = 0;
  return o;
}

/** Refusal reasons counted by name; any other code the peer invents counts as `other`. */
const COUNTED_REFUSE_REASONS = [...REFUSE_REASONS, 'other'] as const;
type CountedRefuseReason = (typeof COUNTED_REFUSE_REASONS)[number];

export function countRefuse(into: Record<CountedRefuseReason, number>, reason: string): void {
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

export function newChannelStats(): ChannelStats {
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

export function cloneStats(s: ChannelStats): ChannelStats {
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

/**
 * "address:port" of a socket's other end for logs and events: "[v6]:port" for
 * IPv6, and the IPv4 form for the v4-mapped address a dual-stack listener
 * reports for an IPv4 peer (::ffff:a.b.c.d).
 */
export function hostPort(address: string | undefined, port: number | undefined): string {
  let a = address ?? '?';
  if (/^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(a)) a = a.slice(7);
  return `${a.includes(':') ? `[${a}]` : a}:${port ?? 0}`;
}
