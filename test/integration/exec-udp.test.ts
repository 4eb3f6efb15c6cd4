/**
 * The virtual layer for UDP, end to end: unmodified UDP servers of two AIDs
 * all bind port 9000 under `vpm exec`, get pool ports from the real daemon,
 * and answer their own tenant's datagrams through the real TUN; a TCP and a
 * UDP service share 198.19.0.9:9000, and each protocol's instances serve only
 * their own; local clients on the vpm host under `vpm exec --aid` reach the
 * server of the AID they run as (FIG. 8), whatever the selectors say, over
 * IPv4 and over IPv6 (the UDP service echo is dual-stack; a server of
 * tenant-b on "::" joins tenant-b's UDP instance, which then serves IPv6 too).
 *
 *     ns tenant-a                     ns host                                      ns tenant-b
 *  ┌──────────────┐       ┌──────────────────────────────────────────────────┐       ┌──────────────┐
 *  │ 198.18.1.2   │═veth══│ vpm up: vpm0 198.19.255.1, pool 20000-20009      │══veth═│ 198.18.2.2   │
 *  │ udp-ask.py   │       │  services web tcp + echo udp, 198.19.0.9:9000    │       │ udp.mjs ask, │
 *  │ curl         │       │  default tenant-a (the host's own addresses too) │       │ udp-ask.py,  │
 *  └──────────────┘       │ vpm exec --aid tenant-a: udp-responder.py 9000,  │       │ curl         │
 *                         │                          net-server.mjs 9000 (tcp)│       └──────────────┘
 *                         │ vpm exec --aid tenant-b: udp.mjs serve 9000,     │
 *                         │                          udp-responder.py 9000   │
 *                         │ local clients, under vpm exec and not            │
 *                         └──────────────────────────────────────────────────┘
 */

import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/control/client.js';
import { compileProbe, FIXTURES, type ProbeEvent, requirePreload } from '../exec/helpers.js';
import { type ExitInfo, NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  jsonLines,
  requireVpmBuild,
  VpmDaemon,
  vpmArgv,
  waitJsonEvent,
  withTimeout,
} from '../support/vpm.js';
import {
  CLIENT_A,
  CLIENT_B,
  LOCAL_CLIENT_ADDR,
  PLAN6,
  type Topology,
  TUN_ADDR,
  twoTenants,
  VIP,
} from './topology.js';

const RESPONDER_PY = join(FIXTURES, 'udp-responder.py');
const ASK_PY = join(FIXTURES, 'udp-ask.py');
const UDP_MJS = join(FIXTURES, 'udp.mjs');
const NET_SERVER = join(FIXTURES, 'net-server.mjs');
const POOL_LO = 20000;
const POOL_HI = 20009;
const SERVICE = `${VIP}:9000`;

interface Registered {
  aid: string;
  address: string;
  proto: string;
  vport: number;
  port: number;
  pids: number[];
  source: string;
}

interface Reply {
  event: 'reply';
  local: number;
  from: string;
  reply: { aid: string; pid: number; saw: string; data: string };
}

interface Ran {
  exit: ExitInfo;
  events: Record<string, unknown>[];
  output: string;
}

const lab = new NetLab('execudp');
let topo: Topology;
let vpm: VpmDaemon;
let probe: string;

/** `vpm exec --aid AID -s SOCKET -- argv...` in the host namespace, tracked by the lab. */
function execUnder(aid: string, argv: readonly string[]): ChildProcess {
  return lab.spawn(topo.host, process.execPath, [
    ...vpmArgv(),
    'exec',
    '--aid',
    aid,
    '-s',
    vpm.socket,
    '--',
    ...argv,
  ]);
}

/** Run a spawned program to its end (at most 30 s) and read its JSON lines. */
async function ran(child: ChildProcess): Promise<Ran> {
  const exit = await withTimeout(lab.exited(child), 30_000, 'a client to finish').catch(
    async (e: Error) => {
      await lab.stop(child, 'SIGKILL', 1000);
      throw e;
    },
  );
  const { stdout, stderr } = lab.output(child);
  return { exit, events: jsonLines(stdout), output: `${stdout}\n${stderr}` };
}

/** A client's answers, after checking it ended well. */
function replies(r: Ran, n: number): Reply[] {
  expect(r.exit, r.output).toEqual({ code: 0, signal: null });
  const got = r.events.filter((e) => e.event === 'reply') as unknown as Reply[];
  expect(got, r.output).toHaveLength(n);
  return got;
}

const registered = async (): Promise<Registered[]> =>
  ((await controlRequest(vpm.socket, 'instances')) as Registered[]).filter(
    (i) => i.source === 'registered',
  );

/** UDP (or TCP) listening sockets in the host namespace (`ss -H -l{u,t}np`): port → pids. */
function listeners(proto: 'tcp' | 'udp'): Map<number, Set<number>> {
  const out = new Map<number, Set<number>>();
  const text = lab.run(topo.host, 'ss', ['-H', proto === 'tcp' ? '-ltnp' : '-lunp']);
  for (const line of text.split('\n')) {
    const local = line.trim().split(/\s+/)[3];
    if (!local) continue;
    const port = Number(local.slice(local.lastIndexOf(':') + 1));
    const pids = out.get(port) ?? new Set<number>();
    for (const m of line.matchAll(/pid=(\d+)/g)) pids.add(Number(m[1]));
    out.set(port, pids);
  }
  return out;
}

const servers: ChildProcess[] = [];
const pids: Record<string, number[]> = { 'tenant-a': [], 'tenant-b': [] };

beforeAll(async () => {
  requireRoot();
  requireCommands('ip', 'ss', 'python3', 'curl', 'gcc');
  requireVpmBuild();
  requirePreload();
  topo = twoTenants(lab);
  probe = compileProbe(lab.tempDir());
  vpm = await VpmDaemon.start(lab, topo.host, {
    services: [
      { name: 'web', address: VIP, port: 9000 },
      { name: 'echo', address: [VIP, PLAN6.VIP], port: 9000, protocol: 'udp' },
    ],
    applications: [{ aid: 'tenant-a' }, { aid: 'tenant-b' }],
    selectors: [
      { clients: ['198.18.1.0/24'], aid: 'tenant-a' },
      { clients: ['198.18.2.0/24'], aid: 'tenant-b' },
    ],
    // Every other client, the vpm host's own addresses included, is tenant-a's:
    // only its library's report makes a local client tenant-b's.
    default: { aid: 'tenant-a' },
    pool: { range: `${POOL_LO}-${POOL_HI}`, quarantineMs: 500, waitTimeoutMs: 1000 },
  });
}, 60_000);

afterAll(async () => {
  await vpm?.stop().catch(() => {});
  await lab.cleanup();
});

describe('vpm exec: UDP servers of two AIDs on port 9000', () => {
  it('each binds 9000 and sees 9000; the daemon gives each AID a UDP pool port of its own, and the TCP server another', async () => {
    const start = async (aid: string, argv: string[]): Promise<Record<string, unknown>> => {
      const p = execUnder(aid, argv);
      servers.push(p);
      const ev = await waitJsonEvent(lab, p, 'listening', 15_000);
      pids[aid]!.push(Number(ev.pid));
      return ev;
    };
    // tenant-a: a Python UDP server and a Node TCP server, both on 9000.
    const pyA = await start('tenant-a', ['python3', '-u', RESPONDER_PY, 'tenant-a', '9000']);
    const tcpA = execUnder('tenant-a', [process.execPath, NET_SERVER, 'tenant-a tcp', '9000']);
    servers.push(tcpA);
    const tcpListening = await waitJsonEvent(lab, tcpA, 'listening', 15_000);
    // tenant-b: a Node dgram server and a second copy in Python, both on 9000.
    const nodeB = await start('tenant-b', [process.execPath, UDP_MJS, 'serve', 'tenant-b', '9000']);
    const pyB = await start('tenant-b', ['python3', '-u', RESPONDER_PY, 'tenant-b', '9000']);
    // The programs' own view (getsockname): port 9000.
    expect(pyA).toMatchObject({ address: '0.0.0.0', port: 9000 });
    expect(nodeB).toMatchObject({ port: 9000 });
    expect(pyB).toMatchObject({ address: '0.0.0.0', port: 9000 });
    expect(tcpListening).toMatchObject({ port: 9000 });

    // The daemon's view: tenant-a has a TCP and a UDP instance of 9000 on two
    // ports; tenant-b one UDP instance, shared by its two programs.
    const regs = await registered();
    // The IPv4 rows (the TCP server binds "::": its instance serves IPv6 too).
    const pick = (aid: string, proto: string) =>
      regs.filter(
        (i) => i.aid === aid && i.proto === proto && i.vport === 9000 && i.address === TUN_ADDR,
      );
    expect(pick('tenant-a', 'udp')).toHaveLength(1);
    expect(pick('tenant-a', 'tcp')).toHaveLength(1);
    expect(pick('tenant-b', 'udp')).toHaveLength(1);
    expect(pick('tenant-b', 'tcp')).toHaveLength(0);
    const udpA = pick('tenant-a', 'udp')[0]!;
    const udpB = pick('tenant-b', 'udp')[0]!;
    const tcpPort = pick('tenant-a', 'tcp')[0]!.port;
    expect(udpA.pids).toEqual(pids['tenant-a']);
    expect(udpB.pids).toEqual([...pids['tenant-b']!].sort((x, y) => x - y));
    const ports = [udpA.port, udpB.port, tcpPort];
    expect(new Set(ports).size).toBe(3);
    for (const p of ports) expect(p >= POOL_LO && p <= POOL_HI, `port ${p}`).toBe(true);

    // The kernel's view: the programs are on the pool ports, nobody on 9000;
    // tenant-b's two programs share theirs (SO_REUSEPORT).
    const udp = listeners('udp');
    expect(udp.get(udpA.port)).toEqual(new Set(pids['tenant-a']));
    expect(udp.get(udpB.port)).toEqual(new Set(pids['tenant-b']));
    expect(udp.has(9000)).toBe(false);
    expect(listeners('tcp').get(tcpPort)?.has(Number(tcpListening.pid))).toBe(true);
  });

  it("each tenant's datagrams reach its own AID's server, which sees the client's real address; replies come from 198.19.0.9:9000 only", async () => {
    const [a, b, b2] = await Promise.all([
      ran(lab.spawn(topo.tenantA, 'python3', ['-u', ASK_PY, VIP, '9000', '3'])),
      ran(lab.spawn(topo.tenantB, process.execPath, [UDP_MJS, 'ask', VIP, '9000', '3'])),
      ran(lab.spawn(topo.tenantB, 'python3', ['-u', ASK_PY, VIP, '9000', '2', 'connect'])),
    ]);
    for (const r of replies(a, 3)) {
      expect(r.from).toBe(SERVICE);
      expect(r.reply).toMatchObject({ aid: 'tenant-a', saw: `${CLIENT_A}:${r.local}` });
      expect(pids['tenant-a']).toContain(r.reply.pid);
    }
    for (const r of [...replies(b, 3), ...replies(b2, 2)]) {
      expect(r.from).toBe(SERVICE);
      expect(r.reply).toMatchObject({ aid: 'tenant-b', saw: `${CLIENT_B}:${r.local}` });
      expect(pids['tenant-b']).toContain(r.reply.pid);
    }
    // One UDP flow per client socket, each with its AID and that AID's pool port.
    const regs = await registered();
    const portOf = (aid: string) => regs.find((i) => i.aid === aid && i.proto === 'udp')!.port;
    const flows = await vpm.flows();
    for (const [r, client, aid] of [
      [a, CLIENT_A, 'tenant-a'],
      [b, CLIENT_B, 'tenant-b'],
      [b2, CLIENT_B, 'tenant-b'],
    ] as const) {
      const local = (r.events.find((e) => e.event === 'reply') as unknown as Reply).local;
      const f = flows.filter((x) => x.client === `${client}:${local}`);
      expect(f, JSON.stringify(flows)).toHaveLength(1);
      expect(f[0]).toMatchObject({
        serviceName: 'echo',
        aid,
        real: `${TUN_ADDR}:${portOf(aid)}`,
      });
    }
  });

  it("TCP 9000 goes to tenant-a's TCP server; tenant-b, with UDP instances only, has no TCP one", async () => {
    const curl = (ns: string) =>
      ran(lab.spawn(ns, 'curl', ['-sS', '--max-time', '5', `http://${SERVICE}/`]));
    const before = await vpm.stats();
    const a = await curl(topo.tenantA);
    expect(a.exit.code, a.output).toBe(0);
    expect(a.output).toContain('tenant-a tcp\n');
    const b = await curl(topo.tenantB);
    expect(b.exit.code).toBe(7); // curl: failed to connect
    expect(b.output).toMatch(/Connection refused|Failed to connect/);
    const after = await vpm.stats();
    expect(
      (after.drops.refused_no_instance ?? 0) - (before.drops.refused_no_instance ?? 0),
    ).toBeGreaterThanOrEqual(1);
  });
});

describe('local clients on the vpm host (FIG. 8)', () => {
  /** A client on the host, under `vpm exec --aid AID` or (aid null) not. */
  const local = (aid: string | null, argv: string[]): Promise<Ran> =>
    ran(aid === null ? lab.spawn(topo.host, argv[0]!, argv.slice(1)) : execUnder(aid, argv));

  it("a UDP client under vpm exec --aid tenant-b reaches tenant-b's server, though the default says tenant-a", async () => {
    const [py, node, conn] = await Promise.all([
      local('tenant-b', ['python3', '-u', ASK_PY, VIP, '9000', '2']),
      local('tenant-b', [process.execPath, UDP_MJS, 'ask', VIP, '9000', '2']),
      local('tenant-b', ['python3', '-u', ASK_PY, VIP, '9000', '2', 'connect']),
    ]);
    for (const r of [...replies(py, 2), ...replies(node, 2), ...replies(conn, 2)]) {
      expect(r.from).toBe(SERVICE);
      // The server sees the local-client address, with the client's own port.
      expect(r.reply).toMatchObject({ aid: 'tenant-b', saw: `${LOCAL_CLIENT_ADDR}:${r.local}` });
      expect(pids['tenant-b']).toContain(r.reply.pid);
    }
    // The C probe: sendmmsg() from a socket it never bound, then recvfrom().
    const p = await local('tenant-b', [
      probe,
      'udp4',
      `sendmmsg:1:${VIP}:9000:2`,
      'recv:1:5000',
      'recv:1:5000',
    ]);
    expect(p.exit, p.output).toEqual({ code: 0, signal: null });
    const got = p.events.filter((e) => e.event === 'recv') as unknown as (ProbeEvent & {
      from: string;
      data: string;
    })[];
    expect(got.map((e) => [e.ok, e.from])).toEqual([
      [true, SERVICE],
      [true, SERVICE],
    ]);
    // (The probe prints the answer with its quotes masked.)
    for (const e of got) expect(e.data).toMatch(/^\{\?aid\?:\?tenant-b\?,/);
  });

  it('over IPv6: a UDP client under vpm exec --aid tenant-b reaches the server of tenant-b bound to "::"; without vpm exec, tenant-a has no IPv6 instance', async () => {
    const dual = execUnder('tenant-b', ['python3', '-u', RESPONDER_PY, 'tenant-b', '9000', '::']);
    try {
      const ev = await waitJsonEvent(lab, dual, 'listening', 15_000);
      expect(ev).toMatchObject({ address: '::', port: 9000 });
      // It joined tenant-b's UDP instance, which serves IPv6 now.
      const b6 = (await registered()).filter(
        (i) => i.aid === 'tenant-b' && i.proto === 'udp' && i.address === PLAN6.TUN_ADDR,
      );
      expect(b6.map((i) => i.pids)).toEqual([[Number(ev.pid)]]);
      const service6 = `[${PLAN6.VIP}]:9000`;
      const [py, conn] = await Promise.all([
        local('tenant-b', ['python3', '-u', ASK_PY, PLAN6.VIP, '9000', '2']),
        local('tenant-b', ['python3', '-u', ASK_PY, PLAN6.VIP, '9000', '2', 'connect']),
      ]);
      for (const r of [...replies(py, 2), ...replies(conn, 2)]) {
        expect(r.from).toBe(service6);
        // The server sees the IPv6 local-client address, with the client's own port.
        expect(r.reply).toMatchObject({
          aid: 'tenant-b',
          pid: Number(ev.pid),
          saw: `[${PLAN6.LOCAL_CLIENT_ADDR}]:${r.local}`,
        });
      }
      // Not under vpm exec: the default, tenant-a, whose UDP server bound 0.0.0.0.
      const plain = await local(null, ['python3', '-u', ASK_PY, PLAN6.VIP, '9000', '1', 'connect']);
      expect(plain.exit.code, plain.output).toBe(1);
      expect(plain.events.at(-1)).toMatchObject({
        event: 'error',
        message: expect.stringMatching(/refused/),
      });
    } finally {
      await lab.stop(dual, 'SIGTERM', 5000);
    }
  });

  it('the same client without vpm exec goes where the default sends it (tenant-a); under --aid tenant-a, to tenant-a', async () => {
    const [plain, asA] = await Promise.all([
      local(null, ['python3', '-u', ASK_PY, VIP, '9000', '2']),
      local('tenant-a', ['python3', '-u', ASK_PY, VIP, '9000', '2']),
    ]);
    for (const r of [...replies(plain, 2), ...replies(asA, 2)]) {
      expect(r.from).toBe(SERVICE);
      expect(r.reply).toMatchObject({ aid: 'tenant-a', saw: `${LOCAL_CLIENT_ADDR}:${r.local}` });
    }
  });
});

describe('the end of the servers', () => {
  it('their pool ports go back when they exit; datagrams then find no instance', async () => {
    for (const s of servers) await lab.stop(s, 'SIGTERM', 5000);
    await waitFor(async () => (await registered()).length === 0, {
      what: 'every registration to end with its program',
    });
    const st = (await vpm.stats()) as unknown as { pool: { inUse: number } };
    expect(st.pool.inUse).toBe(0);
    const before = await vpm.stats();
    const r = await ran(
      lab.spawn(topo.tenantA, 'python3', ['-u', ASK_PY, VIP, '9000', '1', 'connect']),
    );
    // vpm answers with ICMP port unreachable: the connected client's recv() fails at once.
    expect(r.exit.code).toBe(1);
    expect(r.events.at(-1)).toMatchObject({
      event: 'error',
      message: expect.stringMatching(/refused/),
    });
    const after = await vpm.stats();
    expect(after.drops.refused_no_instance! - (before.drops.refused_no_instance ?? 0)).toBe(1);
  });
});
