/**
 * Connection state as vpm follows it from the packets it forwards: TCP's, and
 * UDP's two (unreplied, assured).
 *
 * Theory of operation. vpm is not an endpoint: it only needs to know how long to
 * keep a translation. Both sides' packets pass through it, so it sees the three-way
 * handshake, FINs and RSTs. The states and what moves a flow between them:
 *
 *   SYN_SENT      client SYN seen (the flow was created by it)
 *     └─ server SYN+ACK ──► SYN_RECEIVED
 *   SYN_RECEIVED  └─ client ACK ──► ESTABLISHED
 *   ESTABLISHED   └─ a FIN from either side ──► FIN_WAIT
 *   FIN_WAIT      └─ the FIN of the other side ──► TIME_WAIT
 *   any state     └─ RST from either side ──► RESET
 *
 * Each state belongs to one timer class with its own idle timeout: EMBRYONIC
 * (SYN_SENT, SYN_RECEIVED), ESTABLISHED, CLOSING (FIN_WAIT) and LINGER
 * (TIME_WAIT, RESET). LINGER keeps the translation a little while after the end so
 * that retransmitted FINs, the last ACK and a stray RST still reach the right
 * endpoint. A client SYN that hits a flow in FIN_WAIT, TIME_WAIT or RESET starts a
 * new connection on the same ports: the old translation is removed and the SYN is
 * classified afresh.
 *
 * UDP has no handshake: a flow is created by its first datagram from the client
 * (UDP_UNREPLIED) and becomes UDP_ASSURED once the server has answered, as Linux
 * conntrack does (nf_conntrack_proto_udp: 30 s unreplied, 120 s once it has seen
 * traffic both ways — the stream timeout — and RFC 4787 REQ-5: a UDP mapping
 * lives at least 2 minutes). Every datagram either way refreshes the flow.
 */

import { enumNames } from '../base/enum.js';
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../wire/tcp.js';

export const FlowState = {
  FREE: 0,
  SYN_SENT: 1,
  SYN_RECEIVED: 2,
  ESTABLISHED: 3,
  FIN_WAIT: 4,
  TIME_WAIT: 5,
  RESET: 6,
  /** UDP: datagrams from the client only, so far. */
  UDP_UNREPLIED: 7,
  /** UDP: the server has answered. */
  UDP_ASSURED: 8,
} as const;
export type FlowStateCode = (typeof FlowState)[keyof typeof FlowState];

/** Names of the states, indexed by state. */
export const STATE_NAMES: readonly string[] = enumNames(FlowState);

export const TimerClass = {
  EMBRYONIC: 0,
  ESTABLISHED: 1,
  CLOSING: 2,
  LINGER: 3,
  UDP_UNREPLIED: 4,
  UDP_ASSURED: 5,
} as const;
export const TIMER_CLASSES = 6;

/** Timer class of each state, indexed by state. */
export const STATE_TIMER: Readonly<Uint8Array> = Uint8Array.of(
  TimerClass.LINGER, // FREE: unused
  TimerClass.EMBRYONIC,
  TimerClass.EMBRYONIC,
  TimerClass.ESTABLISHED,
  TimerClass.CLOSING,
  TimerClass.LINGER,
  TimerClass.LINGER,
  TimerClass.UDP_UNREPLIED,
  TimerClass.UDP_ASSURED,
);

/** Next state of a UDP flow for a datagram travelling `fromClient` (true) or from the server. */
export function nextUdpState(state: number, fromClient: boolean): number {
  return fromClient ? state : FlowState.UDP_ASSURED;
}

/** Bits of the per-flow FIN record. */
export const FIN_FROM_CLIENT = 1;
export const FIN_FROM_SERVER = 2;

/**
 * Next state for a packet with TCP `flags` travelling `fromClient` (true) or from
 * the server, given the current state and FIN bits. Returns the new state; the
 * FIN bits are updated by the caller with `finBit`.
 */
export function nextState(state: number, fins: number, flags: number, fromClient: boolean): number {
  if ((flags & TCP_RST) !== 0 || state === FlowState.RESET) return FlowState.RESET;
  if ((flags & TCP_FIN) !== 0) {
    const all = fins | (fromClient ? FIN_FROM_CLIENT : FIN_FROM_SERVER);
    return all === (FIN_FROM_CLIENT | FIN_FROM_SERVER) ? FlowState.TIME_WAIT : FlowState.FIN_WAIT;
  }
  if (state === FlowState.SYN_SENT) {
    if (!fromClient && (flags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK))
      return FlowState.SYN_RECEIVED;
    return state;
  }
  if (state === FlowState.SYN_RECEIVED) {
    if (fromClient && (flags & (TCP_SYN | TCP_ACK)) === TCP_ACK) return FlowState.ESTABLISHED;
    return state;
  }
  return state;
}

/** True when a client SYN on this flow's ports means a new connection. */
export function isReusable(state: number): boolean {
  return state === FlowState.FIN_WAIT || state === FlowState.TIME_WAIT || state === FlowState.RESET;
}
