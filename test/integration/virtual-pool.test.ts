/**
 * The virtual layer end to end: unmodified servers that all "bind 9000", run
 * under `vpm exec` with different AIDs, get real ports from the daemon's pool;
 * clients of each tenant reach their own copy; ports come back to the pool when
 * a program dies (even by SIGKILL) after the quarantine; an empty pool makes a
 * bind wait, then fail with EADDRINUSE.
 *
 *   tenant-a (198.18.1.2, .1.3) ──veth── host: vpm (pool 20000-20009),
 *   tenant-b (198.18.2.2, .2.3) ──veth──      2× python3 -m http.server 9000, 2× node server on 9000
 */

import type { ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot, waitFor } from '../support/netns.js';
import { jsonLines, VpmDaemon, vpmArgv, waitJsonEvent } from '../support/vpm.js';
import { type Topology, twoTenants, VIP } from './topology.js';

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

function curl(ns: string, from: string): string {
  return lab.run(ns, 'curl', [
    '-sS',
    '--max-time',
    '5',
    '--interface',
    from,
    `http://${VIP}:9000/`,
  ]);
}

async function instances(
  d: VpmDaemon,
): Promise<{ aid: string; port: number; pids: number[]; source: string }[]> {
  const r = await d.cliJson('instances');
  return r as { aid: string; port: number; pids: number[]; source: string }[];
}

beforeAll(async () => {
  requireRoot();
  topo = twoTenants(lab, { extraA: ['198.18.1.3/24'] });
  lab.run(topo.tenantB, 'ip', ['addr', 'add', '198.18.2.3/24', 'dev', 'b0']);
  vpm = await VpmDaemon.start(lab, topo.host, {
    services: [{ name: 'web', address: VIP, port: 9000 }],
    applications: [{ aid: 'py-a' }, { aid: 'py-b' }, { aid: 'node-a' }, { aid: 'node-b' }],
    selectors: [
      { clients: ['198.18.1.2/32'], aid: 'py-a' },
      { clients: ['198.18.2.2/32'], aid: 'py-b' },
      { clients: ['198.18.1.3/32'], aid: 'node-a' },
      { clients: ['198.18.2.3/32'], aid: 'node-b' },
    ],
    default: { refuse: true },
    pool: { range: '20000-20009', quarantineMs: 500, waitTimeoutMs: 3000 },
  });
}, 60_000);

afterAll(async () => {
  await vpm?.stop().catch(() => {});
  await lab.cleanup();
});

const py: Record<string, ChildProcess> = {};

describe('vpm exec: unmodified servers side by side on port 9000', () => {
  it('two python3 -m http.server 9000 and two Node servers on 9000 each serve their own tenant', async () => {
    const root = lab.tempDir();
    for (const aid of ['py-a', 'py-b']) {
      const dir = join(root, aid);
      mkdirSync(dir);
      writeFileSync(join(dir, 'index.html'), `this is ${aid}\n`);
      py[aid] = execUnder(vpm, aid, ['python3', '-u', '-m', 'http.server', '9000'], dir);
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
    expect(curl(topo.tenantA, '198.18.1.2')).toBe('this is py-a\n');
    expect(curl(topo.tenantB, '198.18.2.2')).toBe('this is py-b\n');
    expect(curl(topo.tenantA, '198.18.1.3')).toMatch(
      /^node-a \(pid \d+\) saw (::ffff:)?198\.18\.1\.3\n$/,
    );
    expect(curl(topo.tenantB, '198.18.2.3')).toMatch(
      /^node-b \(pid \d+\) saw (::ffff:)?198\.18\.2\.3\n$/,
    );
    const list = (await instances(vpm)).filter((i) => i.source === 'registered');
    expect(list.map((i) => i.aid).sort()).toEqual(['node-a', 'node-b', 'py-a', 'py-b']);
    const ports = list.map((i) => i.port);
    expect(new Set(ports).size).toBe(4);
    for (const p of ports) expect(p >= 20000 && p <= 20009).toBe(true);
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
    const again = execUnder(vpm, 'py-a', ['python3', '-u', '-m', 'http.server', '9000'], dir);
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
