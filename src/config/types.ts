/**
 * The resolved configuration: what the rest of vpm reads, one deeply frozen
 * object with numeric forms ready for the data plane (IPv4 addresses as u32,
 * IPv6 addresses as bigint — the data plane's four words are made from them by
 * daemon/rules-from-config.ts —, CIDRs as base/mask, port ranges as lo/hi, AIDs
 * and services by index). Defaults are
 * those of the schema (schema.ts), written here beside each field; load.ts
 * produces it, summary.ts shows it.
 */

import type { IpAddr } from '../wire/address.js';
import type { RawConfig } from './schema.js';

/** The schema's log levels (pino's). */
export type LogLevel = RawConfig['log']['level'];

/** An IPv4 network: `(addr & mask) >>> 0 === base`. */
export interface Cidr {
  /** Network address, u32, host bits zero. */
  readonly base: number;
  /** Netmask, u32 (0 for /0, 0xffffffff for /32). */
  readonly mask: number;
  /** Prefix length, 0-32. */
  readonly prefix: number;
}

/** An IPv6 network: the address's top `prefix` bits equal `base`'s. */
export interface Cidr6 {
  /** Network address, host bits zero. */
  readonly base: bigint;
  /** Prefix length, 0-128. */
  readonly prefix: number;
}

/** Inclusive port range; a single port has lo === hi. */
export interface PortRange {
  readonly lo: number;
  readonly hi: number;
}

export interface TunConfig {
  /** Interface name. Default "vpm0". */
  readonly name: string;
  /** Address assigned to the TUN device (u32); instances listen here by default. Default 198.19.255.1. */
  readonly address: number;
  /** Address local clients are translated to (u32); routed to the TUN, never assigned. Default 198.19.255.2. */
  readonly localClientAddress: number;
  /** IPv6 address of the TUN device (a /128), used when `ipv6`. Default 2001:2:0:ff::1. */
  readonly address6: bigint;
  /** IPv6 address local IPv6 clients are translated to, used when `ipv6`. Default 2001:2:0:ff::2. */
  readonly localClientAddress6: bigint;
  /**
   * Resolved, not in the file: true iff the file has an IPv6 address anywhere
   * (services, instances, selector clients, cooperative listen or peers, or
   * tun.address6 / tun.localClientAddress6 given explicitly). Read at start-up
   * only: a reload that would change it is refused.
   */
  readonly ipv6: boolean;
  /** Default 1500. */
  readonly mtu: number;
  /** Transmit queue length in packets. Default 10000. */
  readonly txQueueLen: number;
  /** Packets per native read/write call. Default 64. */
  readonly batchSize: number;
  /** `tun.queues` as the file gives it: 1..64 or "auto". Default 1. */
  readonly queuesSetting: number | 'auto';
  /**
   * Resolved, not in the file: the TUN queues (one worker each) to run, `queuesSetting`
   * or, for "auto", os.availableParallelism() capped at 16 (TUN_AUTO_QUEUES_MAX).
   * The daemon runs one queue only so far: `vpm up` refuses more (src/daemon/queues.ts).
   */
  readonly queues: number;
  /** Policy routing table for instance replies. Default 100. */
  readonly routeTable: number;
  /** Priority of vpm's `ip rule` entries. Default 100. */
  readonly rulePriority: number;
  /** Virtio-net headers and the kernel's offloads ("auto"), or none ("off"). Default "auto". */
  readonly offloads: 'auto' | 'off';
  /** Verify every complete L4 checksum (drop bad ones). Default true (also set by the deprecated verifyTcpChecksum). */
  readonly verifyChecksums: boolean;
}

export interface ServiceConfig {
  /** Position in `services`. */
  readonly index: number;
  readonly name: string;
  /** The IPv4 virtual service address (VIP), u32, or null (an IPv6-only service). */
  readonly address: number | null;
  /** The IPv6 VIP, or null (an IPv4-only service). At least one of the two is set. */
  readonly address6: bigint | null;
  readonly port: number;
  /** Default "tcp". */
  readonly protocol: 'tcp' | 'udp';
  /** Cooperative client side: index into cooperative.peers of the peer serving it, or null. */
  readonly peer: number | null;
}

/**
 * Without an address in the file an instance serves both families (address is
 * tun.address, address6 is tun.address6 when tun.ipv6, else null); with one it
 * serves that family only (the other is null).
 */
export interface InstanceConfig {
  /** Local IPv4 address the instance listens on, u32, or null (IPv6 only). */
  readonly address: number | null;
  /** Local IPv6 address it listens on, or null (IPv4 only). */
  readonly address6: bigint | null;
  /** The real port. */
  readonly port: number;
  /** Index into `services` of the one service it serves, or null for every service. */
  readonly serviceIndex: number | null;
}

/** The port pool for instances registered at run time (`vpm exec`). */
export interface PoolConfig {
  readonly range: PortRange;
  /** A released port stays out of use this long. Default 2000. */
  readonly quarantineMs: number;
  /** A request waits this long for a free port before it fails. Default 5000. */
  readonly waitTimeoutMs: number;
}

export interface ApplicationConfig {
  /** Position in `applications`: the AID's number on the data plane. */
  readonly index: number;
  readonly aid: string;
  /** Empty: no live instance. Default []. */
  readonly instances: readonly InstanceConfig[];
  /** Programs (absolute paths) whose local client connections belong to this AID. Default []. */
  readonly executables: readonly string[];
  /**
   * Local users (names or uids, as written) who may register instances of this
   * AID and report its client connections, and whose local client connections
   * belong to it; null (absent): root only. Resolved to uids by src/control/access.ts.
   */
  readonly users: readonly (string | number)[] | null;
}

export interface PeerConfig {
  readonly name: string;
  /** Address of the peer's negotiation endpoint (either family), or null if it only connects to us. */
  readonly address: IpAddr | null;
  readonly port: number;
  /** The first of `keys`' keys, hex (the one this daemon offers). */
  readonly key: string;
  /** The pre-shared keys by id, lower-case hex; the first is offered, all are accepted. */
  readonly keys: readonly PeerKey[];
}

/** One pre-shared key of a peer (`peers[].keys`; the deprecated `key` is id "default"). */
export interface PeerKey {
  readonly id: string;
  readonly key: string;
}

/** Cooperative multiplexing (FIG. 6/7). */
export interface CooperativeConfig {
  /** This daemon's name towards its peers. Default "vpm". */
  readonly name: string;
  /** Where peers negotiate with us, or null. Default null. */
  readonly listen: { readonly address: IpAddr; readonly port: number } | null;
  /** Ports p2 for negotiated connections. Default 40000-40999. */
  readonly portRange: PortRange;
  /** Negotiation timeout. Default 1000. */
  readonly timeoutMs: number;
  readonly peers: readonly PeerConfig[];
}

export interface SelectorConfig {
  /** Position in `selectors` (evaluation order). */
  readonly index: number;
  /** Service name, or null for any service. */
  readonly service: string | null;
  /** Index into `services`, or null for any service. */
  readonly serviceIndex: number | null;
  /**
   * IPv4 client networks, or null for any client. With `clients` in the file
   * both lists are set (either may be empty): a v4 client must be in one of
   * `clients`, a v6 client in one of `clients6`. Without it both are null.
   */
  readonly clients: readonly Cidr[] | null;
  /** IPv6 client networks, or null for any client (see `clients`). */
  readonly clients6: readonly Cidr6[] | null;
  /** Client source ports, or null for any port. */
  readonly clientPorts: PortRange | null;
  readonly aid: string;
  /** Index into `applications`. */
  readonly aidIndex: number;
}

/** What to do when no selector matches. Default: refuse. */
export type DefaultConfig =
  | { readonly refuse: true }
  | { readonly refuse: false; readonly aid: string; readonly aidIndex: number };

export interface Config {
  /** The file this came from, as given (for messages and reload). */
  readonly source: string;
  /** Deprecated fields the file used, one sentence each (check-config warns, `vpm up` logs them). */
  readonly deprecated: readonly string[];
  readonly tun: TunConfig;
  readonly services: readonly ServiceConfig[];
  readonly applications: readonly ApplicationConfig[];
  /** In evaluation order; the first match wins. Default []. */
  readonly selectors: readonly SelectorConfig[];
  readonly default: DefaultConfig;
  /** Default null: no pool, only static instances. */
  readonly pool: PoolConfig | null;
  /** Default null: no cooperative multiplexing. */
  readonly cooperative: CooperativeConfig | null;
  readonly limits: {
    /** Translation table capacity. Default 65536. */
    readonly maxFlows: number;
    /** Most embryonic flows (TCP handshake not complete, UDP unreplied) at once. Default (null in the file): maxFlows / 4, at least 1. */
    readonly embryonicFlows: number;
    /** IPv4 fragments waiting for their first fragment. Default 256. */
    readonly heldFragments: number;
    /** Bytes of those. Default 1048576. */
    readonly heldFragmentBytes: number;
    /** ICMP messages vpm sends per second (burst: a twentieth). Default 1000. */
    readonly icmpPerSecond: number;
  };
  readonly health: {
    /** How long an instance that refused a SYN gets no new connections; 0: no check. Default 10000. */
    readonly downMs: number;
    /** SYN copies kept for a retry on another instance. Default 1024. */
    readonly synCopies: number;
  };
  readonly timeouts: {
    /** Handshake not complete. Default 10000. */
    readonly embryonicMs: number;
    /** Established and idle. Default 3600000. */
    readonly establishedIdleMs: number;
    /** After the first FIN. Default 60000. */
    readonly closingMs: number;
    /** After both FINs or a RST. Default 10000. */
    readonly timeWaitMs: number;
    /** UDP, client datagrams only so far. Default 30000. */
    readonly udpUnrepliedMs: number;
    /** UDP, the server has answered. Default 120000. */
    readonly udpAssuredMs: number;
    /** A fragment waiting for its first fragment; a first fragment's translation. Default 5000. */
    readonly fragmentMs: number;
  };
  readonly control: {
    /** Control socket path. Default per network namespace (base/netns.ts defaultControlSocket). */
    readonly socket: string;
    /** Group owning the socket (name or gid, as written), or null (default). */
    readonly group: string | number | null;
    /** Group allowed the read-only requests (name or gid, as written), or null (default). */
    readonly monitorGroup: string | number | null;
  };
  readonly metrics: {
    /** Loopback address (127.0.0.0/8 or ::1) and port of /metrics, or null (default) for none. */
    readonly listen: { readonly address: IpAddr; readonly port: number } | null;
  };
  readonly log: {
    /** Default "info". */
    readonly level: LogLevel;
  };
}
