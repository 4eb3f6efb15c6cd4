/**
 * The three namespaces of the cooperative suites (cooperative.test.ts,
 * cooperative-udp.test.ts), for either family: a client host and a server host,
 * each running its vpm, and a router between them.
 *
 *   ns client                          ns router                        ns server
 * ┌──────────────────────────┐      ┌──────────────────┐      ┌───────────────────────────────┐
 * │ c0 198.18.10.2/24        │═veth═│ r0 198.18.10.1   │      │ s0 198.18.20.2/24             │
 * │ vpm (client side)        │      │ r1 198.18.20.1   │═veth═│ vpm (server side), listens    │
 * │  TUN 198.19.254.1        │      │ VIP → server     │      │  198.18.20.2:7070 for peers   │
 * │  local clients → .254.2  │      │ .254.0/24 → cli. │      │  TUN 198.19.255.1, instances  │
 * └──────────────────────────┘      └──────────────────┘      └───────────────────────────────┘
 *
 * IPv6 (COOP_PLANS[6]): the same namespaces with IPv6 on, c0 2001:2:0:10::2/64 –
 * r0 2001:2:0:10::1, r1 2001:2:0:20::1/64 – s0 2001:2:0:20::2 (`nodad`: none is
 * tentative), default routes -6 via the router, which forwards
 * (net.ipv6.conf.all.forwarding=1 inside its namespace) and routes the VIP
 * 2001:2:0:9::9 to the server host and the client host's local-client network
 * 2001:2:0:fe::/64 back to it. The peers negotiate over IPv6 ([2001:2:0:20::2]:7070);
 * the client host's TUN has 2001:2:0:fe::1 (local clients → 2001:2:0:fe::2), the
 * server host's 2001:2:0:ff::1, where the instances listen. Over IPv4 the
 * namespaces have IPv6 off (no router solicitations in the captures). Every
 * address is in 198.18.0.0/15 or 2001:2::/48 and lives only in the lab's namespaces.
 */

import type { NetLab } from '../support/netns.js';
import type { VpmConfigFile } from '../support/vpm.js';

/** The addresses of one family. */
export interface CoopPlan {
  family: 4 | 6;
  VIP: string;
  /** The client link (client c0, router r0) and the server link (router r1, server s0). */
  C0: string;
  R0: string;
  R1: string;
  S0: string;
  linkPrefix: number;
  hostPrefix: number;
  /** The client host's TUN address and local-client address, and their network (routed back by the router). */
  CLIENT_TUN: string;
  CLIENT_LC: string;
  CLIENT_NET: string;
  /** The server host's TUN address (the instances listen there). */
  SERVER_TUN: string;
  /** ADDRESS:PORT as vpm prints it: "[v6]:port" for IPv6. */
  ep: (a: string, p: number) => string;
  /** An address in a URL: brackets for IPv6. */
  url: (a: string) => string;
}

export const COOP_PLANS: Readonly<Record<4 | 6, CoopPlan>> = Object.freeze({
  4: {
    family: 4,
    VIP: '198.19.0.9',
    C0: '198.18.10.2',
    R0: '198.18.10.1',
    R1: '198.18.20.1',
    S0: '198.18.20.2',
    linkPrefix: 24,
    hostPrefix: 32,
    CLIENT_TUN: '198.19.254.1',
    CLIENT_LC: '198.19.254.2',
    CLIENT_NET: '198.19.254.0/24',
    SERVER_TUN: '198.19.255.1',
    ep: (a: string, p: number) => `${a}:${p}`,
    url: (a: string) => a,
  },
  6: {
    family: 6,
    VIP: '2001:2:0:9::9',
    C0: '2001:2:0:10::2',
    R0: '2001:2:0:10::1',
    R1: '2001:2:0:20::1',
    S0: '2001:2:0:20::2',
    linkPrefix: 64,
    hostPrefix: 128,
    CLIENT_TUN: '2001:2:0:fe::1',
    CLIENT_LC: '2001:2:0:fe::2',
    CLIENT_NET: '2001:2:0:fe::/64',
    SERVER_TUN: '2001:2:0:ff::1',
    ep: (a: string, p: number) => `[${a}]:${p}`,
    url: (a: string) => `[${a}]`,
  },
});

/**
 * The `tun` section of either host for the plan's family: the IPv4 addresses
 * always (198.19.254.x on the client host, 198.19.255.x on the server host), the
 * IPv6 ones too over IPv6.
 */
export function coopTun(P: CoopPlan, side: 'client' | 'server'): VpmConfigFile {
  const v4 = side === 'client' ? '198.19.254' : '198.19.255';
  const v6 =
    side === 'client'
      ? { address6: P.CLIENT_TUN, localClientAddress6: P.CLIENT_LC }
      : { address6: P.SERVER_TUN, localClientAddress6: '2001:2:0:ff::2' };
  return {
    name: 'vpm0',
    address: `${v4}.1`,
    localClientAddress: `${v4}.2`,
    ...(P.family === 6 ? v6 : {}),
  };
}

/** Build the three namespaces, links, addresses and routes of the plan; the router forwards. */
export function coopNamespaces(
  lab: NetLab,
  P: CoopPlan,
): { client: string; router: string; server: string } {
  const v6 = P.family === 6;
  const client = lab.namespace('client', { ipv6: v6 });
  const router = lab.namespace('router', { ipv6: v6 });
  const server = lab.namespace('server', { ipv6: v6 });
  const ip = v6 ? ['-6'] : [];
  const nodad = v6 ? ['nodad'] : [];
  lab.veth({ ns: client, dev: 'c0' }, { ns: router, dev: 'r0' });
  lab.veth({ ns: router, dev: 'r1' }, { ns: server, dev: 's0' });
  for (const [ns, dev, addr] of [
    [client, 'c0', P.C0],
    [router, 'r0', P.R0],
    [router, 'r1', P.R1],
    [server, 's0', P.S0],
  ] as const)
    lab.run(ns, 'ip', [...ip, 'addr', 'add', `${addr}/${P.linkPrefix}`, 'dev', dev, ...nodad]);
  lab.run(client, 'ip', [...ip, 'route', 'add', 'default', 'via', P.R0]);
  lab.run(server, 'ip', [...ip, 'route', 'add', 'default', 'via', P.R1]);
  lab.run(router, 'ip', [...ip, 'route', 'add', `${P.VIP}/${P.hostPrefix}`, 'via', P.S0]);
  lab.run(router, 'ip', [...ip, 'route', 'add', P.CLIENT_NET, 'via', P.C0]);
  const forward = v6 ? 'net.ipv6.conf.all.forwarding=1' : 'net.ipv4.ip_forward=1';
  lab.run(router, 'sysctl', ['-qw', forward]);
  return { client, router, server };
}

/** `t` with the regular expression characters escaped. */
export function escapeRe(t: string): string {
  return t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
