/**
 * The two-tenant topology of the datapath tests, and the real programs that run in
 * it: instance servers, clients and the malformed-packet injector (fixtures/).
 *
 *     ns tenant-a                            ns host                            ns tenant-b
 * ┌──────────────────┐        ┌────────────────────────────────────┐        ┌──────────────────┐
 * │ a0 198.18.1.2/24 │══veth══│ ha 198.18.1.1/24  hb 198.18.2.1/24 │══veth══│ b0 198.18.2.2/24 │
 * │ (+ extra addrs)  │        │ vpm up: vpm0 (TUN) 198.19.255.1    │        │ default via      │
 * │ default via      │        │ instances, local clients           │        │   198.18.2.1     │
 * │   198.18.1.1     │        └────────────────────────────────────┘        └──────────────────┘
 * └──────────────────┘
 *
 * IPv6 (`twoTenants(lab, { family: 6 })`, the addresses of PLAN6): the same three
 * namespaces with 2001:2:0:1::/64 on the a0–ha link and 2001:2:0:2::/64 on b0–hb
 * (the host ::1, the tenant ::2; `nodad`, so none is tentative), the tenants' default
 * route -6 via the host, the virtual service 2001:2:0:9::9 and the TUN's IPv6
 * address 2001:2:0:ff::1 (tun.address6's default). The tenants then keep IPv6 on.
 *
 * All addresses are in 198.18.0.0/15 (2001:2::/48) and live only in the lab's namespaces. The host
 * namespace keeps IPv6 on (as a real host would; vpm turns it off on its TUN, and any
 * IPv6 chatter reaching vpm would show as an "ipv6" drop in the exact counter
 * checks) and starts with ip_forward explicitly 0, so that what `vpm up` changes
 * (and must undo) is visible. The tenants have IPv6 off: less noise on their wires.
 */

import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import type { ExitInfo, NetLab } from '../support/netns.js';
import { jsonLines, waitJsonEvent, withTimeout } from '../support/vpm.js';

/** The addresses of one IP family in the two-tenant topology. */
export interface Plan {
  family: 4 | 6;
  VIP: string;
  TUN_ADDR: string;
  LOCAL_CLIENT_ADDR: string;
  HOST_A: string;
  HOST_B: string;
  CLIENT_A: string;
  CLIENT_B: string;
  /** Prefix length of the tenant links. */
  linkPrefix: number;
  /** Prefix length of one host (32, 128). */
  hostPrefix: number;
  /** `addr` with the link's net part and host part `n` (a tenant's extra addresses). */
  onLinkA: (n: number) => string;
  /** The URL form of an address: brackets for IPv6. */
  url: (addr: string) => string;
  /** ADDRESS:PORT as vpm prints it: "[v6]:port" for IPv6. */
  ep: (addr: string, port: number) => string;
}

export const PLAN4: Plan = Object.freeze({
  family: 4,
  VIP: '198.19.0.9',
  TUN_ADDR: '198.19.255.1',
  LOCAL_CLIENT_ADDR: '198.19.255.2',
  HOST_A: '198.18.1.1',
  HOST_B: '198.18.2.1',
  CLIENT_A: '198.18.1.2',
  CLIENT_B: '198.18.2.2',
  linkPrefix: 24,
  hostPrefix: 32,
  onLinkA: (n: number) => `198.18.1.${n}`,
  url: (a: string) => a,
  ep: (a: string, p: number) => `${a}:${p}`,
});

export const PLAN6: Plan = Object.freeze({
  family: 6,
  VIP: '2001:2:0:9::9',
  TUN_ADDR: '2001:2:0:ff::1',
  LOCAL_CLIENT_ADDR: '2001:2:0:ff::2',
  HOST_A: '2001:2:0:1::1',
  HOST_B: '2001:2:0:2::1',
  CLIENT_A: '2001:2:0:1::2',
  CLIENT_B: '2001:2:0:2::2',
  linkPrefix: 64,
  hostPrefix: 128,
  onLinkA: (n: number) => `2001:2:0:1::${n.toString(16)}`,
  url: (a: string) => `[${a}]`,
  ep: (a: string, p: number) => `[${a}]:${p}`,
});

export function plan(family: 4 | 6): Plan {
  return family === 6 ? PLAN6 : PLAN4;
}

export const VPORT = 9000;
export const { VIP, TUN_ADDR, LOCAL_CLIENT_ADDR, HOST_A, HOST_B, CLIENT_A, CLIENT_B } = PLAN4;

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
export const SERVER_FIXTURE = `${FIXTURES}instance-server.mjs`;
export const CLIENT_FIXTURE = `${FIXTURES}client.mjs`;
export const INJECT_FIXTURE = `${FIXTURES}inject.py`;
export const INJECT6_FIXTURE = `${FIXTURES}inject6.py`;

export interface Topology {
  host: string;
  tenantA: string;
  tenantB: string;
}

/**
 * Build the three namespaces and two veth links. `extraA` are more addresses (with
 * prefix) for tenant-a's device, e.g. to be classified by other selectors.
 */
export function twoTenants(
  lab: NetLab,
  opts: { extraA?: string[]; family?: 4 | 6 } = {},
): Topology {
  const p = plan(opts.family ?? 4);
  const v6 = p.family === 6;
  // IPv6 stays on in the host namespace, as on a real host: vpm must keep it off its
  // TUN unless the configuration has IPv6.
  const host = lab.namespace('host');
  const tenantA = lab.namespace('a', { ipv6: v6 });
  const tenantB = lab.namespace('b', { ipv6: v6 });
  const ip = v6 ? ['-6'] : [];
  const nodad = v6 ? ['nodad'] : [];
  lab.veth({ ns: tenantA, dev: 'a0' }, { ns: host, dev: 'ha' });
  lab.veth({ ns: tenantB, dev: 'b0' }, { ns: host, dev: 'hb' });
  for (const [ns, dev, addr] of [
    [tenantA, 'a0', p.CLIENT_A],
    [host, 'ha', p.HOST_A],
    [tenantB, 'b0', p.CLIENT_B],
    [host, 'hb', p.HOST_B],
  ] as const)
    lab.run(ns, 'ip', [...ip, 'addr', 'add', `${addr}/${p.linkPrefix}`, 'dev', dev, ...nodad]);
  for (const cidr of opts.extraA ?? [])
    lab.run(tenantA, 'ip', [...ip, 'addr', 'add', cidr, 'dev', 'a0', ...nodad]);
  lab.run(tenantA, 'ip', [...ip, 'route', 'add', 'default', 'via', p.HOST_A]);
  lab.run(tenantB, 'ip', [...ip, 'route', 'add', 'default', 'via', p.HOST_B]);
  lab.run(host, 'sysctl', ['-qw', 'net.ipv4.ip_forward=0']);
  if (v6) lab.run(host, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=0']);
  return { host, tenantA, tenantB };
}

/**
 * Start an instance server (fixtures/instance-server.mjs) in `ns` and wait until it
 * listens. `host` defaults to the TUN address, which exists only while vpm is up.
 */
export async function startInstance(
  lab: NetLab,
  ns: string,
  name: string,
  port: number,
  host = TUN_ADDR,
): Promise<ChildProcess> {
  const child = lab.spawn(ns, process.execPath, [
    SERVER_FIXTURE,
    JSON.stringify({ name, host, port }),
  ]);
  await waitJsonEvent(lab, child, 'ready', 10_000);
  return child;
}

export interface ClientArgs {
  mode: 'hello' | 'xfer' | 'many';
  host?: string;
  port?: number;
  localAddress?: string;
  /** Bind the client's socket to this source port (count 1 only). */
  localPort?: number;
  up?: number;
  down?: number;
  paceMs?: number;
  count?: number;
  /** The client gives up (event "timeout") after this long. Default 20000. */
  timeoutMs?: number;
}

/** The client's last event ("done", "error" or "timeout"), with how it exited. */
export type ClientResult = Record<string, unknown> & {
  event: 'done' | 'error' | 'timeout';
  exit: ExitInfo;
  /** Everything it printed, for failure messages. */
  output: string;
};

/** Start fixtures/client.mjs in `ns` (host and port default to VIP:9000). */
export function spawnClient(lab: NetLab, ns: string, args: ClientArgs): ChildProcess {
  return lab.spawn(ns, process.execPath, [
    CLIENT_FIXTURE,
    JSON.stringify({ host: VIP, port: VPORT, ...args }),
  ]);
}

/** Wait for a spawned client to exit (at most `timeoutMs`) and return its last event. */
export async function clientResult(
  lab: NetLab,
  child: ChildProcess,
  timeoutMs = 30_000,
): Promise<ClientResult> {
  const exit = await withTimeout(lab.exited(child), timeoutMs, 'the client to finish').catch(
    async (e: Error) => {
      await lab.stop(child, 'SIGKILL', 1000);
      throw new Error(`${e.message}\n${lab.output(child).stdout}\n${lab.output(child).stderr}`);
    },
  );
  const { stdout, stderr } = lab.output(child);
  const last = jsonLines(stdout)
    .filter((e) => e.event === 'done' || e.event === 'error' || e.event === 'timeout')
    .pop();
  const output = `--- client stdout ---\n${stdout}\n--- client stderr ---\n${stderr}`;
  if (!last)
    throw new Error(`the client printed no final event (exit ${JSON.stringify(exit)})\n${output}`);
  return { ...(last as ClientResult), exit, output };
}

/**
 * An `xfer` client's result: done, the server got exactly `up` bytes, and each
 * side received byte for byte what the other sent (sha256 both ways).
 */
export function expectIntact(r: ClientResult, up: number): void {
  expect(r.event, r.output).toBe('done');
  const t = r.trailer as Record<string, unknown>;
  expect(t.recvBytes, r.output).toBe(up);
  expect(t.recvSha, r.output).toBe(r.sentSha);
  expect(r.recvSha, r.output).toBe(t.sentSha);
}

/** Run a client to completion. */
export function runClient(
  lab: NetLab,
  ns: string,
  args: ClientArgs,
  timeoutMs = 30_000,
): Promise<ClientResult> {
  return clientResult(lab, spawnClient(lab, ns, args), timeoutMs);
}

/**
 * Inject `count` malformed packets of every class of fixtures/inject.py (inject6.py
 * for an IPv6 `src`) towards `dst`:9000; returns what it sent.
 */
export async function injectMalformed(
  lab: NetLab,
  ns: string,
  src: string,
  count: number,
  dst = VIP,
): Promise<Record<string, number>> {
  const out = lab.run(
    ns,
    'python3',
    [
      src.includes(':') ? INJECT6_FIXTURE : INJECT_FIXTURE,
      JSON.stringify({ src, dst, dport: VPORT, count }),
    ],
    { timeoutMs: 15_000 },
  );
  const sent = jsonLines(out).find((e) => e.event === 'sent');
  if (!sent) throw new Error(`inject.py printed no "sent" event:\n${out}`);
  return sent.sent as Record<string, number>;
}
