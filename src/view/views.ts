/**
 * What the daemon reports over its control socket (docs/control-protocol.md), as
 * plain records: one definition for the daemon that builds them and for the CLI,
 * the demo and `vpm dump` that read them.
 */

/** One flow of `vpm flows` (the control request `flows`). */
export interface FlowView {
  id: number;
  protocol: 'tcp' | 'udp';
  client: string;
  service: string;
  serviceName: string;
  aid: string;
  real: string;
  nat: string | null;
  state: string;
  ageMs: number;
  idleMs: number;
  packetsIn: number;
  bytesIn: number;
  packetsOut: number;
  bytesOut: number;
}

/** One instance of `vpm instances` (the control request `instances`). */
export interface InstanceView {
  aid: string;
  proto: string;
  vport: number;
  address: string;
  port: number;
  pids: number[];
  registrations: number;
  /**
   * Of those, registrations recovered from a previous daemon's state after a
   * restart: no control connection; each ends at its program's release or when
   * its process is gone. Absent: none.
   */
  recovered?: number;
  since: string;
  source: 'static' | 'registered';
  /** The passive health check's view of it (absent: not known to the data plane). */
  health?: InstanceHealthView;
}

/** An instance's health (`vpm instances`). */
export interface InstanceHealthView {
  state: 'up' | 'down';
  /** When it gets new connections again (ISO time), null while up. */
  downUntil: string | null;
  /** Milliseconds until then, 0 while up. */
  downForMs: number;
  /** SYNs it answered with a RST (nothing listening) since it came. */
  refusals: number;
}

/** One virtual service (the control request `services`). */
export interface ServiceView {
  name: string;
  /** Its IPv4 address, or its IPv6 one when it has no IPv4 address. */
  address: string;
  /** Every address of the service, IPv4 first (RFC 5952 for IPv6). */
  addresses?: string[];
  port: number;
  protocol: string;
}
