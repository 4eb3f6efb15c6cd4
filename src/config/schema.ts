/**
 * The config file's structure, as a JSON Schema (draft 2020-12) written as a
 * TypeScript constant. This is the one description of it: the validator
 * (validator.ts, on ajv) checks files against this very object and fills in its
 * defaults, `RawConfig` below is derived from it by the type checker
 * (json-schema-to-ts's `FromSchema`), and docs/config.schema.json, the schema
 * published for editors, is this object written out (`configSchemaText()`;
 * test/config/schema.test.ts fails when the file differs, and
 * `node dist/scripts/emit-config-schema.js` rewrites it). So the schema, the
 * type the semantic checks read and the published file cannot drift apart.
 *
 * `satisfies JSONSchema` keeps the keywords well-formed; `as const` keeps every
 * literal, which is what lets `FromSchema` see the types, enums and defaults.
 */

import { join } from 'node:path';
import type { FromSchema, JSONSchema } from 'json-schema-to-ts';
import { packageRoot } from '../base/paths.js';

// Shared definitions ($defs of the config schema; the control protocol's
// request schemas use the same ones for AIDs and ports).

export const ipv4Def = {
  type: 'string',
  title: 'IPv4 address in dotted-quad form, e.g. "198.19.0.9"',
  pattern: '^[0-9]{1,3}(\\.[0-9]{1,3}){3}$',
} as const satisfies JSONSchema;

/**
 * An address of either family. The schema only checks that it looks like one
 * (a dotted quad, or something with a colon); the semantic checks parse it
 * (RFC 4291 text forms for IPv6) and explain what is wrong with one that does
 * not parse: a zone id, brackets, a prefix, a v4-mapped address.
 */
export const addressDef = {
  type: 'string',
  title: 'IPv4 address in dotted-quad form or IPv6 address, e.g. "198.19.0.9" or "2001:2::9"',
  pattern: '^([0-9]{1,3}(\\.[0-9]{1,3}){3}|[^\\s]*:[^\\s]*)$',
} as const satisfies JSONSchema;

export const ipv6Def = {
  type: 'string',
  title: 'IPv6 address, e.g. "2001:2:0:ff::1"',
  pattern: '^[^\\s]*:[^\\s]*$',
} as const satisfies JSONSchema;

export const cidrDef = {
  type: 'string',
  title: 'IPv4 or IPv6 CIDR "ADDRESS/PREFIX", e.g. "198.18.1.0/24" or "2001:2:1::/48"',
  pattern: '^([0-9]{1,3}(\\.[0-9]{1,3}){3}|[^\\s/]*:[^\\s/]*)/[0-9]{1,3}$',
} as const satisfies JSONSchema;

/** "ADDRESS:PORT" of either family; IPv6 in brackets (RFC 3986), "[2001:2::2]:7070". */
const endpointPattern = '^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[^\\s\\]]+\\]):[0-9]{1,5}$';

export const portDef = {
  type: 'integer',
  minimum: 1,
  maximum: 65535,
} as const satisfies JSONSchema;

export const nameDef = {
  type: 'string',
  title: "name of 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
  pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$',
} as const satisfies JSONSchema;

/** A local user or group: its name, or its numeric id. */
export const userDef = {
  title: 'a user or group name, or a numeric id',
  oneOf: [
    {
      type: 'string',
      pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\\$?$',
    },
    { type: 'integer', minimum: 0, maximum: 4294967294 },
  ],
} as const satisfies JSONSchema;

const hexKeyDef = {
  type: 'string',
  title: '64 to 256 hex digits',
  pattern: '^([0-9a-fA-F]{2}){32,128}$',
} as const satisfies JSONSchema;

export const configSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'urn:vpm:config',
  title: 'vpm configuration',
  description:
    'The one configuration file of the vpm daemon (virtual port multiplexer). Validated once at start-up; see docs/configuration.md. Every field not marked required has a default.',
  type: 'object',
  additionalProperties: false,
  required: ['services', 'applications'],
  properties: {
    $schema: {
      description: 'Optional reference to this schema, for editors. Ignored by vpm.',
      type: 'string',
    },
    tun: {
      description: 'The TUN device vpm reads and writes packets through, and its address.',
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        name: {
          description:
            "Interface name of the TUN device (at most 15 characters; no '/', ':' or spaces).",
          type: 'string',
          title:
            "Linux interface name of 1 to 15 letters, digits, '.', '_' or '-' (not '.' or '..')",
          pattern: '^(?!\\.\\.?$)[A-Za-z0-9._-]{1,15}$',
          default: 'vpm0',
        },
        address: {
          description:
            'Address assigned to the TUN device. Instances listen on it unless they name another address.',
          $ref: '#/$defs/ipv4',
          default: '198.19.255.1',
        },
        localClientAddress: {
          description:
            'Address that clients on the vpm host itself are translated to (FIG. 8). It is routed to the TUN device and never assigned to any interface.',
          $ref: '#/$defs/ipv4',
          default: '198.19.255.2',
        },
        address6: {
          description:
            'IPv6 address assigned to the TUN device (as a /128) when the config uses IPv6: instances without an address of their own listen on it for IPv6 clients. Giving it turns IPv6 on, as does any IPv6 address elsewhere in the file.',
          $ref: '#/$defs/ipv6',
          default: '2001:2:0:ff::1',
        },
        localClientAddress6: {
          description:
            'IPv6 address that IPv6 clients on the vpm host itself are translated to (FIG. 8). Routed to the TUN device, never assigned. Giving it turns IPv6 on.',
          $ref: '#/$defs/ipv6',
          default: '2001:2:0:ff::2',
        },
        mtu: {
          description: 'MTU of the TUN device in bytes.',
          type: 'integer',
          minimum: 576,
          maximum: 65535,
          default: 1500,
        },
        txQueueLen: {
          description:
            'Transmit queue length of the TUN device, in packets. The kernel default (500) overflows under bulk load.',
          type: 'integer',
          minimum: 1,
          maximum: 1000000,
          default: 10000,
        },
        batchSize: {
          description:
            'Packets moved across the native boundary per read or write call. Fixed for the life of the device.',
          type: 'integer',
          minimum: 1,
          maximum: 1024,
          default: 64,
        },
        queues: {
          description:
            'Queues of the TUN device (IFF_MULTI_QUEUE), one worker thread each: an integer 1 to 64, or "auto" for one per available core (os.availableParallelism()) capped at 16. The default stays 1 until a benchmark decides it. Not supported by this daemon yet: vpm up refuses a value above 1 (and "auto" where it resolves above 1).',
          title: 'an integer 1 to 64, or "auto"',
          oneOf: [
            { title: 'an integer 1 to 64', type: 'integer', minimum: 1, maximum: 64 },
            { title: '"auto"', const: 'auto' },
          ],
          default: 1,
        },
        routeTable: {
          description:
            'Policy routing table whose default route points at the TUN device; instance replies are steered into it by source port. Not 0, 253 (default), 254 (main) or 255 (local).',
          type: 'integer',
          minimum: 1,
          maximum: 4294967295,
          default: 100,
        },
        rulePriority: {
          description:
            "Priority (preference) of the 'ip rule' entries vpm adds. Must sort before the main table's rule (32766).",
          type: 'integer',
          minimum: 1,
          maximum: 32765,
          default: 100,
        },
        offloads: {
          description:
            'Kernel offloads on the TUN. "auto": open it with virtio-net headers (IFF_VNET_HDR) and take the offloads the kernel accepts (checksum offload, TCP segmentation TSO4/TSO6, UDP segmentation USO4/USO6): the kernel then hands over and takes back super-packets of up to 64 KiB, one read and one rewrite for ~45 segments. "off": no headers, every packet at most the MTU (a switch for kernels with offload bugs).',
          enum: ['auto', 'off'],
          default: 'auto',
        },
        verifyChecksums: {
          description:
            'Verify the L4 checksum (TCP, UDP, ICMP) of every packet that carries a complete one and drop a bad one (counted as bad_l4_checksum). Packets whose checksum the kernel leaves partial (offloads) or has verified already are not summed again. Costs a full sum per such packet (about 0.1-0.2 us at 1500 bytes); with false, a bad checksum is forwarded as it is (the incremental rewrite keeps it bad) and the receiving host drops it.',
          type: 'boolean',
          default: true,
        },
        verifyTcpChecksum: {
          description:
            'Deprecated: the old name of verifyChecksums (which also covers UDP and ICMP). Still accepted, with a warning; giving both with different values is an error.',
          type: 'boolean',
          deprecated: true,
        },
      },
    },
    services: {
      description:
        'Virtual services: the address, protocol and port that clients connect to. The address (VIP) is routed to the TUN device, never assigned.',
      type: 'array',
      minItems: 1,
      maxItems: 4096,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'address', 'port'],
        properties: {
          name: {
            description: 'Unique name of the service, used by selectors and in logs.',
            $ref: '#/$defs/name',
          },
          address: {
            description:
              'The virtual service address (VIP): one address of either family, or an array of two, one IPv4 and one IPv6 (a dual-stack service: one service, one name, both families). Clients of a family reach only instances with an address of that family.',
            type: ['string', 'array'],
            title:
              'IPv4 address in dotted-quad form or IPv6 address, or an array of one of each, e.g. "198.19.0.9", "2001:2::9" or ["198.19.0.9", "2001:2::9"]',
            pattern: addressDef.pattern,
            minItems: 1,
            maxItems: 2,
            items: { $ref: '#/$defs/address' },
          },
          port: {
            description: 'The virtual port clients use.',
            $ref: '#/$defs/port',
          },
          protocol: {
            description:
              'Transport protocol. A TCP and a UDP service may share address and port: they are two services.',
            type: 'string',
            enum: ['tcp', 'udp'],
            default: 'tcp',
          },
          peer: {
            description:
              "Cooperative mode, client side: the name of the peer (in cooperative.peers) whose vpm serves this service. A local client's connection to it is negotiated with that peer (FIG. 6/7). Absent: served here.",
            $ref: '#/$defs/name',
          },
        },
      },
    },
    applications: {
      description:
        'Applications by AID, each with the instances (real ports on this host) that serve it.',
      type: 'array',
      minItems: 1,
      maxItems: 65535,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['aid'],
        properties: {
          aid: {
            description: 'Application id, unique network-wide.',
            $ref: '#/$defs/name',
          },
          executables: {
            description:
              "Absolute paths of programs that belong to this AID: a local client connection whose socket is owned by one of them gets this AID when neither the bind/connect library nor a selector says otherwise (the seed's configurator maps pathnames to AIDs).",
            type: 'array',
            maxItems: 64,
            default: [],
            items: {
              type: 'string',
              pattern: '^/',
              maxLength: 4096,
            },
          },
          users: {
            description:
              "Local users (names or numeric uids) whose programs may register instances of this AID under vpm exec and report its client connections; a local client connection whose socket one of them owns gets this AID when neither the bind/connect library, a selector nor executables say otherwise (the seed's logical user). Root may always. Absent: root only.",
            type: 'array',
            maxItems: 1024,
            items: { $ref: '#/$defs/user' },
          },
          instances: {
            description:
              'Where the application really listens on this host. May be empty: the application has no live instance (yet).',
            type: 'array',
            maxItems: 1024,
            default: [],
            items: {
              type: 'object',
              additionalProperties: false,
              required: ['port'],
              properties: {
                address: {
                  description:
                    'Local address the instance listens on, of either family; it then serves clients of that family only. Absent: the TUN addresses, tun.address for IPv4 clients and (when the config uses IPv6) tun.address6 for IPv6 ones.',
                  $ref: '#/$defs/address',
                },
                port: {
                  description:
                    'The real port the instance listens on. Unique across all instances and outside pool.range.',
                  $ref: '#/$defs/port',
                },
                service: {
                  description:
                    'Name of the one service this instance serves. Absent: every service.',
                  $ref: '#/$defs/name',
                },
              },
            },
          },
        },
      },
    },
    selectors: {
      description:
        'Rules that assign a new connection to an AID, evaluated in order on its first packet (SYN); the first match wins. Every condition given must hold; an absent condition matches anything.',
      type: 'array',
      maxItems: 65535,
      default: [],
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['aid'],
        properties: {
          service: {
            description: 'Name of the service the connection is for. Absent: any service.',
            $ref: '#/$defs/name',
          },
          clients: {
            description:
              'Client source address ranges, IPv4 or IPv6 CIDRs in canonical form (no host bits set; IPv6 in RFC 5952 form). An IPv4 client matches the IPv4 ones, an IPv6 client the IPv6 ones: a selector listing only IPv4 ranges never matches an IPv6 client. Absent: any client of either family.',
            type: 'array',
            minItems: 1,
            maxItems: 4096,
            uniqueItems: true,
            items: {
              $ref: '#/$defs/cidr',
            },
          },
          clientPorts: {
            description:
              'Client source port range "lo-hi" (inclusive) or a single port "p". Absent: any port.',
            type: 'string',
            title: 'port range "lo-hi" or single port "p", e.g. "1024-65535"',
            pattern: '^[0-9]{1,5}(-[0-9]{1,5})?$',
          },
          aid: {
            description:
              'The application a matching connection goes to. Must name an entry of applications.',
            $ref: '#/$defs/name',
          },
        },
      },
    },
    default: {
      description:
        'What happens to a new connection no selector matches: {"aid": A} sends it to application A, {"refuse": true} answers it with a TCP RST.',
      default: {
        refuse: true,
      },
      oneOf: [
        {
          title: '{"aid": AID}',
          type: 'object',
          additionalProperties: false,
          required: ['aid'],
          properties: {
            aid: {
              description: 'The application unmatched connections go to.',
              $ref: '#/$defs/name',
            },
          },
        },
        {
          title: '{"refuse": true}',
          type: 'object',
          additionalProperties: false,
          required: ['refuse'],
          properties: {
            refuse: {
              description: 'Answer unmatched connections with a RST.',
              const: true,
            },
          },
        },
      ],
    },
    pool: {
      description:
        'The port pool for instances that register at run time (programs run with `vpm exec`). null: no pool, only the static instances of applications.',
      type: ['object', 'null'],
      default: null,
      additionalProperties: false,
      required: ['range'],
      properties: {
        range: {
          description:
            'Real ports handed out to registering instances, "lo-hi" inclusive. Must not contain a service port or a static instance port.',
          type: 'string',
          title: 'port range "lo-hi", e.g. "20000-20999"',
          pattern: '^[0-9]{1,5}-[0-9]{1,5}$',
        },
        quarantineMs: {
          description:
            'How long a released port stays out of use before it is handed out again (late packets of old connections must not reach a new instance).',
          type: 'integer',
          minimum: 0,
          maximum: 600000,
          default: 2000,
        },
        waitTimeoutMs: {
          description:
            "How long a request waits in the queue when the pool is empty before it fails (the program's bind fails with EADDRINUSE).",
          type: 'integer',
          minimum: 0,
          maximum: 600000,
          default: 5000,
        },
      },
    },
    cooperative: {
      description:
        'Cooperative multiplexing with other vpm daemons (FIG. 6/7): the peers, their shared keys, and, on a server side, where peers negotiate and the port range for negotiated connections. null: off.',
      type: ['object', 'null'],
      default: null,
      additionalProperties: false,
      required: ['peers'],
      properties: {
        listen: {
          description:
            'Server side: "ADDRESS:PORT" (IPv6: "[ADDRESS]:PORT") where this daemon accepts negotiations from its peers (TCP). null: this daemon serves no peer.',
          type: ['string', 'null'],
          title: '"ADDRESS:PORT" or "[IPv6]:PORT", e.g. "198.18.0.2:7070" or "[2001:2::2]:7070"',
          pattern: endpointPattern,
          default: null,
        },
        portRange: {
          description:
            'Server side: the ports p2 handed out for negotiated connections, "lo-hi"; on the wire a negotiated connection travels on VIP:p2. Must not contain a service port.',
          type: 'string',
          title: 'port range "lo-hi", e.g. "40000-40999"',
          pattern: '^[0-9]{1,5}-[0-9]{1,5}$',
          default: '40000-40999',
        },
        timeoutMs: {
          description:
            "How long a negotiation may take before the client's connection is refused (RST).",
          type: 'integer',
          minimum: 10,
          maximum: 60000,
          default: 1000,
        },
        peers: {
          description:
            'The other vpm daemons, each with the shared key that authenticates their messages (HMAC-SHA256).',
          type: 'array',
          minItems: 1,
          maxItems: 1024,
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['name'],
            properties: {
              name: {
                description: "The peer's name, as it names itself in its messages.",
                $ref: '#/$defs/name',
              },
              address: {
                description:
                  "Client side: the address of the peer's negotiation endpoint (its cooperative.listen), of either family. Absent: this peer only connects to us.",
                $ref: '#/$defs/address',
              },
              port: {
                description: "Client side: the port of the peer's negotiation endpoint.",
                $ref: '#/$defs/port',
                default: 7070,
              },
              keys: {
                description:
                  'The pre-shared keys of this peer, each with an id (TLS 1.3 PSK identity "<client name>/<id>"; see docs/security.md). The first is the one this daemon uses when it connects to the peer; all are accepted from it. Two during a key rollover. Exactly one of keys and key.',
                type: 'array',
                minItems: 1,
                maxItems: 8,
                items: {
                  type: 'object',
                  additionalProperties: false,
                  required: ['id', 'key'],
                  properties: {
                    id: {
                      description: 'The key id, sent in clear text in the TLS handshake.',
                      $ref: '#/$defs/name',
                    },
                    key: {
                      description:
                        'The key, 32 to 128 bytes as hex (64 to 256 hex digits). Both peers configure the same key under the same id.',
                      ...hexKeyDef,
                    },
                  },
                },
              },
              key: {
                description:
                  'Deprecated: one shared key, 32 to 128 bytes as hex; the same as keys: [{"id": "default", "key": ...}].',
                ...hexKeyDef,
              },
            },
          },
        },
        name: {
          description: "This daemon's own name in its messages to peers.",
          $ref: '#/$defs/name',
          default: 'vpm',
        },
      },
    },
    limits: {
      description: 'Capacity limits.',
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        maxFlows: {
          description:
            'Capacity of the translation table (connections tracked at once). A new connection beyond it is refused.',
          type: 'integer',
          minimum: 1,
          maximum: 4194304,
          default: 65536,
        },
        embryonicFlows: {
          description:
            'Most embryonic flows at once: TCP connections whose handshake has not completed and UDP flows the server has not answered. A new flow beyond it, or one that finds the table full, takes the place of the embryonic flow seen last longest ago (counted: embryonicEvicted); established flows are never evicted. At most limits.maxFlows. null: a quarter of limits.maxFlows (at least 1). Read at start-up.',
          type: ['integer', 'null'],
          minimum: 1,
          maximum: 4194304,
          default: null,
        },
        heldFragments: {
          description:
            'IPv4 fragments that arrive before the first fragment of their datagram (which carries the ports) wait for it; at most this many at once. More are dropped (fragment_held_overflow).',
          type: 'integer',
          minimum: 0,
          maximum: 65536,
          default: 256,
        },
        heldFragmentBytes: {
          description: 'The bytes those waiting fragments may take, at most.',
          type: 'integer',
          minimum: 0,
          maximum: 268435456,
          default: 1048576,
        },
        icmpPerSecond: {
          description:
            'ICMP messages vpm itself sends (port unreachable for a UDP service nobody serves, echo replies from a virtual service address), per second, with a burst of a twentieth of it (as Linux net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst). More are not sent and are counted (icmpRateLimited).',
          type: 'integer',
          minimum: 1,
          maximum: 1000000,
          default: 1000,
        },
      },
    },
    health: {
      description:
        'Passive health check of instances (TCP): an instance that answers a SYN with a RST (nothing listens) is marked down, the SYN is sent to another instance of the application, and new connections skip it for a while.',
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        downMs: {
          description:
            'How long an instance that refused a connection gets no new connections (milliseconds; every refusal starts it again, a connection it accepts ends it). 0: no health check and no retry. Applied on reload.',
          type: 'integer',
          minimum: 0,
          maximum: 3600000,
          default: 10000,
        },
        synCopies: {
          description:
            'SYNs kept at once, each until its instance answers, so that a refused one can be sent to another instance (120 bytes each). A SYN that finds them all in use is not retried. Read at start-up only.',
          type: 'integer',
          minimum: 0,
          maximum: 1048576,
          default: 1024,
        },
      },
    },
    timeouts: {
      description:
        'Flow timers, in milliseconds. A flow idle for longer than the timer of its state is removed.',
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        embryonicMs: {
          description:
            'A connection whose handshake has not completed (SYN seen, not yet established).',
          type: 'integer',
          minimum: 100,
          maximum: 600000,
          default: 10000,
        },
        establishedIdleMs: {
          description: 'An established connection with no packets in either direction.',
          type: 'integer',
          minimum: 1000,
          maximum: 604800000,
          default: 3600000,
        },
        closingMs: {
          description: 'A connection after the first FIN, until both sides have closed.',
          type: 'integer',
          minimum: 100,
          maximum: 3600000,
          default: 60000,
        },
        timeWaitMs: {
          description: 'A connection after both FINs (or a RST), before its entry is reused.',
          type: 'integer',
          minimum: 0,
          maximum: 600000,
          default: 10000,
        },
        udpUnrepliedMs: {
          description:
            'A UDP flow that has seen datagrams from the client only (Linux conntrack: 30 s). Refreshed by every datagram.',
          type: 'integer',
          minimum: 100,
          maximum: 604800000,
          default: 30000,
        },
        udpAssuredMs: {
          description:
            'A UDP flow the server has answered (Linux conntrack: 120 s; RFC 4787 REQ-5 wants at least 120000: check-config warns below). Refreshed by every datagram either way.',
          type: 'integer',
          minimum: 100,
          maximum: 604800000,
          default: 120000,
        },
        fragmentMs: {
          description:
            "How long an IPv4 fragment waits for the first fragment of its datagram, and how long the first fragment's translation serves the later ones.",
          type: 'integer',
          minimum: 100,
          maximum: 60000,
          default: 5000,
        },
      },
    },
    control: {
      description:
        'The unix control socket used by the CLI and the bind library, and who may use it (docs/security.md).',
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        group: {
          description:
            'Group (name or gid) owning the control socket, mode 0660: its members can connect; what each caller may do is decided per request by its uid (applications[].users, monitorGroup; root: everything). Absent: the socket is root-only (0600), or, when applications[].users or monitorGroup grant something to non-root users, connectable by every local user (0666) and decided per request.',
          $ref: '#/$defs/user',
        },
        monitorGroup: {
          description:
            'Group (name or gid) whose members may use the read-only requests (flows, stats, instances, services, ping), but neither register nor reload. Absent: none.',
          $ref: '#/$defs/user',
        },
        socket: {
          description:
            'Absolute path of the control socket. Default: /run/vpm/<tun.name>.sock in the initial network namespace, /run/vpm/netns/<ip netns name>/<tun.name>.sock (or /run/vpm/netns/net-<inode>/<tun.name>.sock) in another.',
          type: 'string',
          title: 'absolute path of at most 107 bytes',
          pattern: '^/',
          maxLength: 107,
        },
      },
    },
    metrics: {
      description: 'Prometheus metrics endpoint.',
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        listen: {
          description:
            '"ADDRESS:PORT" to serve /metrics on; ADDRESS must be a loopback address (127.0.0.0/8, or ::1 as "[::1]:PORT"). null: no metrics endpoint.',
          type: ['string', 'null'],
          title: 'loopback "ADDRESS:PORT", e.g. "127.0.0.1:9464" or "[::1]:9464"',
          pattern: endpointPattern,
          default: null,
        },
      },
    },
    log: {
      description: 'Logging (pino, JSON lines on stdout).',
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        level: {
          description: 'Lowest level logged.',
          type: 'string',
          enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
          default: 'info',
        },
      },
    },
  },
  $defs: {
    ipv4: ipv4Def,
    ipv6: ipv6Def,
    address: addressDef,
    cidr: cidrDef,
    port: portDef,
    name: nameDef,
    user: userDef,
  },
} as const;

/**
 * A config file that passed the schema, with the schema's defaults filled in:
 * what the semantic checks (semantic.ts) read. Derived, never written by hand.
 */
export type RawConfig = FromSchema<typeof configSchema>;

/** docs/config.schema.json as it must read: the schema above, written out. */
export function configSchemaText(): string {
  return `${JSON.stringify(configSchema, null, 2)}\n`;
}

/** Where the published schema lives (docs/config.schema.json in the package). */
export function configSchemaPath(): string {
  return join(packageRoot(), 'docs', 'config.schema.json');
}
