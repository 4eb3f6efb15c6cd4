/**
 * The network `npm run bench:e2e` measures in, and the two vpm daemons inside it.
 *
 *   client namespace                      host namespace
 *  ┌────────────────────────────────┐  veth  ┌─────────────────────────────────────────────────────┐
 *  │ vc0 198.18.1.2  (direct)       ├────────┤ vh0 198.18.1.1                                      │
 *  │     198.18.1.3  (DNAT)         │        │ server listens on 0.0.0.0:19001                     │
 *  │     198.18.1.4  (vpm, off)     │        │ nft: from .3 to 198.19.0.9:9000 → dnat .1.1:19001   │
 *  │     198.18.1.5  (vpm)          │        │ vpm up (offloads off): 198.19.0.10/32 → vpm1        │
 *  │ 198.19.0.9/32, .10/32 via .1.1 │        │                        → 198.19.254.1:19001         │
 *  └────────────────────────────────┘        │ vpm up (offloads auto): 198.19.0.9/32 → vpm0        │
 *                                             │                        → 198.19.255.1:19001         │
 *                                             └─────────────────────────────────────────────────────┘
 *
 * One server process, one client namespace; the client's source address picks the
 * path. Kernel direct: from .2 to the host's real address and real port. nftables
 * DNAT: from .3 to the virtual service, rewritten in prerouting. vpm: from .5 to
 * the same virtual service, which the daemon with offloads routes into its TUN
 * (vpm0) and rewrites to its instance (the TUN's address, port 19001); replies
 * from that address and port are steered back into the TUN by its policy rule.
 * vpm with offloads off: from .4 to a second virtual service, 198.19.0.10:9000,
 * which a second daemon on a second TUN (vpm1, its own address, route table and
 * rule priority) rewrites to 198.19.254.1:19001. Both daemons run for the whole
 * run, so the paths interleave without restarts; an idle daemon costs nothing
 * (it sleeps in epoll). DNAT needs connection tracking, which would then apply
 * to every packet of the host namespace; a `notrack` rule at raw priority keeps
 * it to the DNAT client's packets, so that the direct and vpm paths run as on a
 * host without nftables (one cheap rule evaluation aside).
 *
 * UDP: each daemon also has a UDP service on its VIP:9000 (a TCP and a UDP service
 * share address and port), served by an instance of its own on a port of its own
 * (19011 for vpm, 19012 for vpm with offloads off), and the direct and DNAT paths
 * go to a third port, 19100, where no daemon is. They cannot share one port as TCP
 * does: vpm steers every UDP datagram the host sends from an instance port into
 * its TUN (`iif lo ipproto udp sport P`: a wildcard-bound server's source address
 * is only chosen by that very lookup), whatever its source address, so a shared
 * port would take the direct path's replies, and the other daemon's, into one TUN.
 * One server process (udpbench.c) listens on all three ports.
 *
 * IPv6 (`--family 6`): the same four paths over IPv6, for TCP. The client has
 * 2001:2:0:1::2 (direct), ::3 (DNAT), ::4 (vpm, off) and ::5 (vpm) on vc0, the host
 * 2001:2:0:1::1 on vh0; the virtual services get IPv6 addresses too (each daemon's
 * "web" service has one address per family: 2001:2:0:9::9 for vpm, 2001:2:0:9::10
 * for vpm with offloads off), and nftables DNAT runs in a `table ip6` of its own
 * with the same notrack rules. The servers listen on the IPv6 wildcard, which takes
 * both families. Addresses are added with `nodad`, so none is tentative when the
 * run starts.
 *
 * Every address is in 198.18.0.0/15 or 2001:2::/48 and lives only in these
 * namespaces; every sysctl and nft rule is set inside them.
 */

import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Lab, type Proc, run, runWithInput } from './lab.js';
import type { PathId, VpmPathId } from './model.js';

export const HOST_ADDR = '198.18.1.1';
export const HOST_ADDR6 = '2001:2:0:1::1';
export const VIP = '198.19.0.9';
export const VIP6 = '2001:2:0:9::9';
export const VPORT = 9000;
export const TUN_ADDR = '198.19.255.1';
export const REAL_PORT = 19001;
/** The UDP server's port for the direct and DNAT paths (no daemon's instance port). */
export const UDP_DIRECT_PORT = 19100;

/** What tells the two daemons apart. */
interface DaemonSpec {
  offloads: 'auto' | 'off';
  tun: string;
  vip: string;
  tunAddr: string;
  localClientAddr: string;
  vip6: string;
  tunAddr6: string;
  localClientAddr6: string;
  table: number;
  /** Its UDP service's instance port. */
  udpPort: number;
}

export const DAEMONS: Readonly<Record<VpmPathId, DaemonSpec>> = {
  vpm: {
    offloads: 'auto',
    tun: 'vpm0',
    vip: VIP,
    tunAddr: TUN_ADDR,
    localClientAddr: '198.19.255.2',
    vip6: VIP6,
    tunAddr6: '2001:2:0:ff::1',
    localClientAddr6: '2001:2:0:ff::2',
    table: 100,
    udpPort: 19011,
  },
  vpmOff: {
    offloads: 'off',
    tun: 'vpm1',
    vip: '198.19.0.10',
    tunAddr: '198.19.254.1',
    localClientAddr: '198.19.254.2',
    vip6: '2001:2:0:9::10',
    tunAddr6: '2001:2:0:fe::1',
    localClientAddr6: '2001:2:0:fe::2',
    table: 101,
    udpPort: 19012,
  },
};

/** Where each path's client connects from and to. */
export interface Target {
  src: string;
  dst: string;
  port: number;
}

export const TARGETS: Readonly<Record<PathId, Target>> = {
  direct: { src: '198.18.1.2', dst: HOST_ADDR, port: REAL_PORT },
  dnat: { src: '198.18.1.3', dst: VIP, port: VPORT },
  vpmOff: { src: '198.18.1.4', dst: DAEMONS.vpmOff.vip, port: VPORT },
  vpm: { src: '198.18.1.5', dst: VIP, port: VPORT },
};

/** Where each path's client connects from and to over IPv6 (TCP). */
export const TARGETS6: Readonly<Record<PathId, Target>> = {
  direct: { src: '2001:2:0:1::2', dst: HOST_ADDR6, port: REAL_PORT },
  dnat: { src: '2001:2:0:1::3', dst: VIP6, port: VPORT },
  vpmOff: { src: '2001:2:0:1::4', dst: DAEMONS.vpmOff.vip6, port: VPORT },
  vpm: { src: '2001:2:0:1::5', dst: VIP6, port: VPORT },
};

/** Where each path's UDP client sends from and to (the same sources and VIPs as TCP). */
export const UDP_TARGETS: Readonly<Record<PathId, Target>> = {
  direct: { src: TARGETS.direct.src, dst: HOST_ADDR, port: UDP_DIRECT_PORT },
  dnat: TARGETS.dnat,
  vpmOff: TARGETS.vpmOff,
  vpm: TARGETS.vpm,
};

/** The ports the UDP server listens on: the direct/DNAT one and each daemon's instance. */
export const UDP_SERVER_PORTS: readonly number[] = [
  UDP_DIRECT_PORT,
  ...Object.values(DAEMONS).map((d) => d.udpPort),
];

export interface Topology {
  client: string;
  host: string;
}

function nftRuleset(): string {
  const d = TARGETS.dnat.src;
  const d6 = TARGETS6.dnat.src;
  return `table ip vpm_bench {
  chain raw_prerouting {
    type filter hook prerouting priority raw; policy accept;
    ip saddr != ${d} notrack
  }
  chain raw_output {
    type filter hook output priority raw; policy accept;
    ip daddr != ${d} notrack
  }
  chain nat_prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip saddr ${d} ip daddr ${VIP} tcp dport ${VPORT} dnat to ${HOST_ADDR}:${REAL_PORT}
    ip saddr ${d} ip daddr ${VIP} udp dport ${VPORT} dnat to ${HOST_ADDR}:${UDP_DIRECT_PORT}
  }
}
table ip6 vpm_bench6 {
  chain raw_prerouting {
    type filter hook prerouting priority raw; policy accept;
    ip6 saddr != ${d6} notrack
  }
  chain raw_output {
    type filter hook output priority raw; policy accept;
    ip6 daddr != ${d6} notrack
  }
  chain nat_prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip6 saddr ${d6} ip6 daddr ${VIP6} tcp dport ${VPORT} dnat to [${HOST_ADDR6}]:${REAL_PORT}
  }
}
`;
}

/** Build the two namespaces, the veth link, addresses, routes, sysctls and nft rules. */
export function buildTopology(lab: Lab): Topology {
  const client = lab.namespace('client');
  const host = lab.namespace('host');
  lab.veth({ ns: client, dev: 'vc0' }, { ns: host, dev: 'vh0' });
  for (const t of Object.values(TARGETS))
    run('ip', ['-n', client, 'addr', 'add', `${t.src}/24`, 'dev', 'vc0']);
  run('ip', ['-n', host, 'addr', 'add', `${HOST_ADDR}/24`, 'dev', 'vh0']);
  for (const t of Object.values(TARGETS6))
    run('ip', ['-n', client, '-6', 'addr', 'add', `${t.src}/64`, 'dev', 'vc0', 'nodad']);
  run('ip', ['-n', host, '-6', 'addr', 'add', `${HOST_ADDR6}/64`, 'dev', 'vh0', 'nodad']);
  for (const d of Object.values(DAEMONS)) {
    run('ip', ['-n', client, 'route', 'add', `${d.vip}/32`, 'via', HOST_ADDR]);
    run('ip', ['-n', client, '-6', 'route', 'add', `${d.vip6}/128`, 'via', HOST_ADDR6]);
  }
  // Connections per second: ~60k ports, and TIME_WAIT ports reused after 1 s
  // (the client closes first, so TIME_WAIT is on its side).
  lab.sysctl(client, 'net.ipv4.ip_local_port_range', '1024 65535');
  lab.sysctl(client, 'net.ipv4.tcp_tw_reuse', '1');
  runWithInput('ip', ['netns', 'exec', host, 'nft', '-f', '-'], nftRuleset());
  return { client, host };
}

export { nftRuleset };

/**
 * A daemon's configuration: docs/examples/two-tenants.json with the socket in
 * `dir`, and the TUN, addresses, route table and offloads of `path`'s daemon; and
 * a UDP service on the same VIP and port as the TCP one, served by tenant-a on the
 * daemon's own UDP port (the TCP instance serves the TCP service only).
 */
export function vpmConfig(dir: string, path: VpmPathId): Record<string, unknown> {
  const d = DAEMONS[path];
  return {
    tun: {
      name: d.tun,
      address: d.tunAddr,
      localClientAddress: d.localClientAddr,
      address6: d.tunAddr6,
      localClientAddress6: d.localClientAddr6,
      mtu: 1500,
      txQueueLen: 10000,
      batchSize: 64,
      routeTable: d.table,
      rulePriority: d.table,
      offloads: d.offloads,
    },
    services: [
      { name: 'web', address: [d.vip, d.vip6], port: VPORT, protocol: 'tcp' },
      { name: 'dgram', address: d.vip, port: VPORT, protocol: 'udp' },
    ],
    applications: [
      {
        aid: 'tenant-a',
        instances: [
          { port: REAL_PORT, service: 'web' },
          { port: d.udpPort, service: 'dgram' },
        ],
      },
      { aid: 'tenant-b', instances: [{ address: d.tunAddr, port: REAL_PORT + 1 }] },
    ],
    selectors: [
      {
        service: 'web',
        clients: ['198.18.1.0/24'],
        clientPorts: '1024-65535',
        aid: 'tenant-a',
      },
      { clients: ['198.18.2.0/24', '198.18.3.7/32'], aid: 'tenant-b' },
    ],
    default: { aid: 'tenant-a' },
    // Twice the example's 65,536: the connection test reuses up to ~64k client
    // ports, and closed flows stay for timeWaitMs.
    limits: { maxFlows: 131072 },
    timeouts: {
      embryonicMs: 10000,
      establishedIdleMs: 3600000,
      closingMs: 60000,
      timeWaitMs: 10000,
    },
    control: { socket: join(dir, `${d.tun}.sock`) },
    metrics: { listen: null },
    log: { level: 'info' },
  };
}

export interface Vpm {
  path: VpmPathId;
  proc: Proc;
  socket: string;
  config: Record<string, unknown>;
}

/**
 * Start `vpm up` for `path` in the host namespace and wait for its "ready" log
 * line. `nodeArgs` go to node before the script (e.g. --perf-basic-prof).
 */
export async function startVpm(
  lab: Lab,
  topo: Topology,
  root: string,
  path: VpmPathId,
  nodeArgs: readonly string[] = [],
): Promise<Vpm> {
  const config = vpmConfig(lab.dir, path);
  const file = join(lab.dir, `${DAEMONS[path].tun}.json`);
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
  const proc = lab.spawn(topo.host, process.execPath, [
    ...nodeArgs,
    join(root, 'dist/src/cli/main.js'),
    'up',
    '-c',
    file,
  ]);
  try {
    await lab.until(
      () => /"event":"ready"/.test(proc.stdout) || proc.exit !== null,
      'vpm to be ready',
      20_000,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}: ${lab.describe(proc)}`);
  }
  if (proc.exit !== null)
    throw new Error(`vpm up exited before it was ready: ${lab.describe(proc)}`);
  return { path, proc, socket: (config.control as { socket: string }).socket, config };
}

/** Packets the kernel dropped on their way into a TUN (its tx_dropped), inside `ns`. */
export function tunTxDropped(lab: Lab, ns: string, dev: string): number {
  return Number(lab.run(ns, 'cat', [`/sys/class/net/${dev}/statistics/tx_dropped`]).trim());
}

/** `vpm stats --json` over the control socket (a unix socket: reachable from any namespace). */
export function vpmStats(root: string, socket: string): Record<string, unknown> {
  const out = run(process.execPath, [
    join(root, 'dist/src/cli/main.js'),
    'stats',
    '--json',
    '-s',
    socket,
  ]);
  return JSON.parse(out) as Record<string, unknown>;
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system, all threads) a process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start at ") ".
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** Pin every thread of a process to `cpus` (a taskset list, e.g. "0" or "0-1"). */
export function pin(pid: number, cpus: string): void {
  run('taskset', ['-a', '-p', '-c', cpus, String(pid)]);
}

/** The CPUs this process may run on, as a taskset list ("0-1"). */
export function allowedCpus(): string {
  const m = /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m?.[1] ?? '0';
}

/** Compile the request/response helper (tcpbench.c) into the lab's directory; return its path. */
export function buildTcpbench(lab: Lab, root: string): { bin: string; cc: string } {
  return buildHelper(lab, root, 'tcpbench');
}

/** Compile the UDP helper (udpbench.c) into the lab's directory; return its path. */
export function buildUdpbench(lab: Lab, root: string): { bin: string; cc: string } {
  return buildHelper(lab, root, 'udpbench');
}

function buildHelper(lab: Lab, root: string, name: string): { bin: string; cc: string } {
  const src = join(root, `scripts/bench/e2e/${name}.c`);
  const bin = join(lab.dir, name);
  const cc = commandOnPath('cc') ? 'cc' : 'gcc';
  run(cc, ['-O2', '-Wall', '-o', bin, src], 60_000);
  const version = run(cc, ['--version']).split('\n')[0]?.trim() ?? cc;
  return { bin, cc: version };
}

export function commandOnPath(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
