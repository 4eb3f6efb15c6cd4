/**
 * The virtual layer end to end, on a dual-stack daemon (the service web has
 * an IPv4 and an IPv6 address): unmodified servers that all "bind 9000", run
 * under `vpm exec` with different AIDs, get real ports from the daemon's pool;
 * clients of each tenant reach their own copy over either family (the servers
 * bind "::", dual-stack); binds of the IPv6 TUN address, of "::" with
 * IPV6_V6ONLY and of a v4-mapped address serve only their family; a local
 * client on the host under `vpm exec --aid` reaches its AID over IPv6 (FIG. 8);
 * ports come back to the pool when a program dies (even by SIGKILL) after the
 * quarantine; an empty pool makes a bind wait, then fail with EADDRINUSE.
 *
 *   tenant-a (198.18.1.2, .3, .11, .12; 2001:2:0:1::2, ::3, ::10, ::11, ::12) ──veth── host: vpm (pool 20000-20009),
 *   tenant-b (198.18.2.2, .3; 2001:2:0:2::2, ::3)                             ──veth──   2× python3 -m http.server 9000 --bind ::,
 *                                                                                      2× node server on 9000, 3× node IPv6 binds
 */

import type { ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot, waitFor } from '../support/netns.js';
import { jsonLines, runVpm, VpmDaemon, vpmArgv, waitJsonEvent } from '../support/vpm.js';
import { PLAN4, PLAN6, type Topology, twoTenants, VIP } from './topology.js';

const NAMED = fileURLToPath(new URL('./fixtures/named-server.mjs', import.meta.url));
const lab = new NetLab('vpool');
let topo: Topology;
let vpm: VpmDaemon;

/** `vpm exec --aid AID -s SOCKET -- cmd...` in the host namespace. */
function execUnder(d: VpmDaemon, aid: string, cmd: string[], cwd?: string): ChildProcess {
  return lab.spawn(
    topo.host,
    process.execPath,
    [...vpmArgv(), 'exec', '--aid', aid, '-s', d.socket, '--', ...cmd],
    { cwd },
  );
}

async function waitOutput(p: ChildProcess, re: RegExp, what: string, ms = 15_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const o = lab.output(p);
    const text = o.stdout + o.stderr;
    if (re.test(text)) return text;
    if (p.exitCode !== null || p.signalCode !== null) throw new Error(`${what} exited: ${text}`);
    if (Date.now() > deadline) throw new Error(`${what}: no ${re} within ${ms} ms: ${text}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const esc = (t: string) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** GET / of the service from `from` (an address of `ns`), over the family of `from`. */
function curl(ns: string, from: string): string {
  const vip = from.includes(':') ? `[${PLAN6.VIP}]` : VIP;
  return lab.run(ns, 'curl', [
    '-sS',
    '--max-time',
    '5',
    '--interface',
    from,
    `http://${vip}:9000/`,
  ]);
}

interface Row {
  aid: string;
  address: string;
  port: number;
  pids: number[];
  source: string;
}

async function instances(d: VpmDaemon): Promise<Row[]> {
  return (await d.cliJson('instances')) as Row[];
}

/** Each AID's clients: one address of each family (tenant-a's on a0, tenant-b's on b0). */
const CLIENTS: Record<string, [string, string]> = {
  'py-a': [PLAN4.CLIENT_A, PLAN6.CLIENT_A],
  'py-b': [PLAN4.CLIENT_B, PLAN6.CLIENT_B],
  'node-a': ['198.18.1.3', '2001:2:0:1::3'],
  'node-b': ['198.18.2.3', '2001:2:0:2::3'],
  'v6-tun': ['198.18.1.10', '2001:2:0:1::10'],
  v6only: ['198.18.1.11', '2001:2:0:1::11'],
  mapped: ['198.18.1.12', '2001:2:0:1::12'],
};

beforeAll(async () => {
  requireRoot();
  // The IPv6 topology, and the IPv4 one's addresses and routes on the same links: dual-stack.
  topo = twoTenants(lab, { family: 6 });
  for (const [ns, dev, addr] of [
    [topo.tenantA, 'a0', PLAN4.CLIENT_A],
    [topo.host, 'ha', PLAN4.HOST_A],
    [topo.tenantB, 'b0', PLAN4.CLIENT_B],
    [topo.host, 'hb', PLAN4.HOST_B],
  ] as const)
    lab.run(ns, 'ip', ['addr', 'add', `${addr}/24`, 'dev', dev]);
  lab.run(topo.tenantA, 'ip', ['route', 'add', 'default', 'via', PLAN4.HOST_A]);
  lab.run(topo.tenantB, 'ip', ['route', 'add', 'default', 'via', PLAN4.HOST_B]);
  for (const [aid, [a4, a6]] of Object.entries(CLIENTS)) {
    if (aid === 'py-a' || aid === 'py-b') continue;
    const [ns, dev] = a4.startsWith('198.18.1.') ? [topo.tenantA, 'a0'] : [topo.tenantB, 'b0'];
    lab.run(ns, 'ip', ['addr', 'add', `${a4}/24`, 'dev', dev]);
    lab.run(ns, 'ip', ['-6', 'addr', 'add', `${a6}/64`, 'dev', dev, 'nodad']);
  }
  vpm = await VpmDaemon.start(lab, topo.host, {
    services: [{ name: 'web', address: [VIP, PLAN6.VIP], port: 9000 }],
    applications: Object.keys(CLIENTS).map((aid) => ({ aid })),
    selectors: Object.entries(CLIENTS).map(([aid, [a4, a6]]) => ({
      clients: [`${a4}/32`, `${a6}/128`],
      aid,
    })),
    default: { refuse: true },
    pool: { range: '20000-20009', quarantineMs: 500, waitTimeoutMs: 3000 },
  });
}, 60_000);

afterAll(async () => {
  await vpm?.stop().catch(() => {});
  await lab.cleanup();
});

const py: Record<string, ChildProcess> = {};
/** python3's http.server on "::" (dual-stack: Python's DualStackServer clears IPV6_V6ONLY). */
const PY_SERVER = ['python3', '-u', '-m', 'http.server', '9000', '--bind', '::'];

describe('vpm exec: unmodified servers side by side on port 9000', () => {
  it('two python3 -m http.server 9000 and two Node servers on 9000 each serve their own tenant, over IPv4 and IPv6', async () => {
    const root = lab.tempDir();
    for (const aid of ['py-a', 'py-b']) {
      const dir = join(root, aid);
      mkdirSync(dir);
      writeFileSync(join(dir, 'index.html'), `this is ${aid}\n`);
      py[aid] = execUnder(vpm, aid, PY_SERVER, dir);
    }
    const nodes = ['node-a', 'node-b'].map((aid) =>
      execUnder(vpm, aid, [process.execPath, NAMED, aid, '9000']),
    );
    // Each program's own view of its socket: port 9000.
    for (const aid of ['py-a', 'py-b']) {
      const text = await waitOutput(py[aid]!, /Serving HTTP on .* port 9000/, aid);
      expect(text).toMatch(/port 9000 \(http:/);
    }
    for (const n of nodes) {
      const ev = await waitJsonEvent(lab, n, 'listening', 15_000);
      expect(ev.port).toBe(9000);
    }
    // Each server bound "::" (dual-stack): one registration serves both families.
    for (const family of [0, 1]) {
      const [a, b] = [CLIENTS['py-a']![family]!, CLIENTS['py-b']![family]!];
      expect(curl(topo.tenantA, a)).toBe('this is py-a\n');
      expect(curl(topo.tenantB, b)).toBe('this is py-b\n');
      for (const [ns, aid] of [
        [topo.tenantA, 'node-a'],
        [topo.tenantB, 'node-b'],
      ] as const) {
        const from = CLIENTS[aid]![family]!;
        const seen = family === 0 ? `::ffff:${from}` : from;
        expect(curl(ns, from)).toMatch(new RegExp(`^${aid} \\(pid \\d+\\) saw ${esc(seen)}\n$`));
      }
    }
    const list = (await instances(vpm)).filter((i) => i.source === 'registered');
    // One row per family of each AID's one instance, on the TUN's address of that family.
    expect(list.map((i) => `${i.aid} ${i.address}`).sort()).toEqual(
      ['node-a', 'node-b', 'py-a', 'py-b'].flatMap((aid) => [
        `${aid} ${PLAN4.TUN_ADDR}`,
        `${aid} ${PLAN6.TUN_ADDR}`,
      ]),
    );
    const ports = [...new Set(list.map((i) => i.port))];
    expect(ports).toHaveLength(4);
    for (const p of ports) expect(p >= 20000 && p <= 20009).toBe(true);
  }, 60_000);

  it('binds of the IPv6 TUN address, of "::" with IPV6_V6ONLY and of a v4-mapped address serve only their family; each program sees port 9000', async () => {
    const servers = [
      ['v6-tun', PLAN6.TUN_ADDR, ''],
      ['v6only', '::', 'v6only'],
      ['mapped', `::ffff:${PLAN4.TUN_ADDR}`, ''],
    ] as const;
    const procs = servers.map(([aid, host, opt]) =>
      execUnder(vpm, aid, [process.execPath, NAMED, aid, '9000', host, ...(opt ? [opt] : [])]),
    );
    for (const [k, [, host]] of servers.entries()) {
      const ev = await waitJsonEvent(lab, procs[k]!, 'listening', 15_000);
      expect(ev).toMatchObject({ port: 9000, address: host, family: 'IPv6' });
    }
    const rows = (await instances(vpm))
      .filter((i) => i.source === 'registered' && servers.some(([aid]) => aid === i.aid))
      .map((i) => `${i.aid} ${i.address}`)
      .sort();
    expect(rows).toEqual([
      `mapped ${PLAN4.TUN_ADDR}`,
      `v6-tun ${PLAN6.TUN_ADDR}`,
      `v6only ${PLAN6.TUN_ADDR}`,
    ]);
    const refused = /Connection refused|Failed to connect/;
    const [t4, t6] = CLIENTS['v6-tun']!;
    expect(curl(topo.tenantA, t6)).toMatch(new RegExp(`^v6-tun \\(pid \\d+\\) saw ${esc(t6)}\n$`));
    expect(() => curl(topo.tenantA, t4)).toThrow(refused);
    const [o4, o6] = CLIENTS.v6only!;
    expect(curl(topo.tenantA, o6)).toMatch(new RegExp(`^v6only \\(pid \\d+\\) saw ${esc(o6)}\n$`));
    expect(() => curl(topo.tenantA, o4)).toThrow(refused);
    const [m4, m6] = CLIENTS.mapped!;
    expect(curl(topo.tenantA, m4)).toMatch(
      new RegExp(`^mapped \\(pid \\d+\\) saw ${esc(`::ffff:${m4}`)}\n$`),
    );
    expect(() => curl(topo.tenantA, m6)).toThrow(refused);
    for (const p of procs) await lab.stop(p, 'SIGTERM', 5000);
  }, 60_000);

  it('a local client on the vpm host under vpm exec --aid node-b reaches node-b over IPv6 (FIG. 8); without vpm exec it is refused', async () => {
    const url = `http://[${PLAN6.VIP}]:9000/`;
    const r = await runVpm(lab, topo.host, [
      'exec',
      '--aid',
      'node-b',
      '-s',
      vpm.socket,
      '--',
      'curl',
      '-sS',
      '-m',
      '5',
      url,
    ]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^node-b \(pid \d+\) saw 2001:2:0:ff::2\n$/);
    // No selector matches the host's own addresses, and the default refuses.
    expect(() => lab.run(topo.host, 'curl', ['-sS', '-m', '5', url])).toThrow(
      /Connection refused|Failed to connect/,
    );
  }, 60_000);

  it('kill -9 of an instance: its port returns to the pool after the quarantine; the next instance serves', async () => {
    const before = (await instances(vpm)).find((i) => i.aid === 'py-a')!;
    const pid = before.pids[0]!;
    process.kill(pid, 'SIGKILL');
    let st = (await vpm.stats()) as unknown as {
      pool: { quarantined: number; free: number; inUse: number };
    };
    for (let i = 0; i < 40 && st.pool.quarantined === 0; i++) {
      await new Promise((r) => setTimeout(r, 25));
      st = (await vpm.stats()) as unknown as typeof st;
    }
    expect(st.pool.quarantined).toBe(1);
    expect((await instances(vpm)).some((i) => i.aid === 'py-a')).toBe(false);
    // No instance of py-a now: its clients are refused.
    expect(() => curl(topo.tenantA, '198.18.1.2')).toThrow(/Connection refused|Failed to connect/);
    await new Promise((r) => setTimeout(r, 700));
    st = (await vpm.stats()) as unknown as typeof st;
    expect(st.pool.quarantined).toBe(0);
    const dir = lab.tempDir();
    writeFileSync(join(dir, 'index.html'), 'this is py-a, second life\n');
    const again = execUnder(vpm, 'py-a', PY_SERVER, dir);
    await waitOutput(again, /Serving HTTP on .* port 9000/, 'py-a again');
    expect(curl(topo.tenantA, '198.18.1.2')).toBe('this is py-a, second life\n');
  }, 60_000);
});

describe('an empty pool', () => {
  it('pool of 2 ports, 3 instances: the third waits and gets the port released within the timeout; a fourth fails with EADDRINUSE', async () => {
    const small = await VpmDaemon.start(lab, topo.host, {
      tun: {
        name: 'vpm1',
        address: '198.19.254.1',
        localClientAddress: '198.19.254.2',
        routeTable: 110,
        rulePriority: 110,
      },
      services: [{ name: 'alt', address: '198.19.0.10', port: 9100 }],
      applications: [{ aid: 'x' }, { aid: 'y' }, { aid: 'z' }, { aid: 'w' }],
      default: { refuse: true },
      pool: { range: '21000-21001', quarantineMs: 200, waitTimeoutMs: 3000 },
    });
    try {
      const x = execUnder(small, 'x', [process.execPath, NAMED, 'x', '9100']);
      const y = execUnder(small, 'y', [process.execPath, NAMED, 'y', '9100']);
      await waitJsonEvent(lab, x, 'listening', 15_000);
      await waitJsonEvent(lab, y, 'listening', 15_000);
      const z = execUnder(small, 'z', [process.execPath, NAMED, 'z', '9100']);
      await new Promise((r) => setTimeout(r, 800));
      expect(jsonLines(lab.output(z).stdout)).toEqual([]); // still waiting for a port
      await lab.stop(x, 'SIGTERM', 5000);
      const ev = await waitJsonEvent(lab, z, 'listening', 5000);
      expect(ev.port).toBe(9100);
      const t0 = Date.now();
      const w = execUnder(small, 'w', [process.execPath, NAMED, 'w', '9100']);
      const err = await waitJsonEvent(lab, w, 'error', 10_000);
      expect(err.code).toBe('EADDRINUSE');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(2500);
      // The library's line on stderr and the daemon's log line are written beside the
      // answer, not before it: wait for each to arrive rather than read at once.
      await lab.waitForOutput(w, /vpm: .*no free port in 21000-21001 within 3000 ms/, {
        stream: 'stderr',
        timeoutMs: 5000,
      });
      await waitFor(
        () =>
          small
            .logs()
            .some((l) => l.event === 'instance_bind_failed' && l.code === 'ERR_PORTS_EXHAUSTED'),
        { what: 'the daemon to log instance_bind_failed', timeoutMs: 5000 },
      );
    } finally {
      await small.stop().catch(() => {});
    }
  }, 60_000);
});
