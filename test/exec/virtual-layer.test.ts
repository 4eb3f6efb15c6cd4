/*
 * The virtual layer end to end: real programs under `vpm exec` with the real
 * daemon (`vpm up`, with a port pool) in a namespace. Each program binds 9000
 * and believes it did; the daemon gave it a real port from its pool; the
 * kernel shows that port; a local client run under `vpm exec` reaches the
 * instance of its own AID (it announced its connect).
 *
 *   ns host (IPv6 on, as a real host)
 *  ┌────────────────────────────────────────────────────────────────────────┐
 *  │ vpm up: vpm0 198.19.255.1, service web 198.19.0.9:9000,               │
 *  │         pool 20000-20009, default: refuse (no selectors)              │
 *  │ vpm exec --aid tenant-a -- sockprobe      (C: bind, getsockname, connect)│
 *  │ vpm exec --aid tenant-a -- python3 -m http.server 9000   (two copies)  │
 *  │ vpm exec --aid tenant-b -- node net-server.mjs          (binds "::")   │
 *  │ vpm exec --aid tenant-a|b -- curl http://198.19.0.9:9000/  (local)     │
 *  └────────────────────────────────────────────────────────────────────────┘
 */

import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/control/client.js';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  jsonLines,
  requireVpmBuild,
  runVpm,
  type VpmConfigFile,
  VpmDaemon,
  vpmArgv,
  waitJsonEvent,
  withTimeout,
} from '../support/vpm.js';
import { compileProbe, FIXTURES, type ProbeEvent, requirePreload } from './helpers.js';

const VIP = '198.19.0.9';
/** The TUN's IPv4 address (vpm's default tun.address): where registered instances listen. */
const VIP_TUN4 = '198.19.255.1';
const POOL_LO = 20000;
const POOL_HI = 20009;

const CONFIG: VpmConfigFile = {
  services: [{ name: 'web', address: VIP, port: 9000 }],
  applications: [
    { aid: 'tenant-a', instances: [] },
    { aid: 'tenant-b', instances: [] },
  ],
  selectors: [],
  // A local client reaches an instance only through the AID it announced.
  default: { refuse: true },
  pool: { range: `${POOL_LO}-${POOL_HI}`, quarantineMs: 500, waitTimeoutMs: 1000 },
};

interface Instance {
  aid: string;
  proto: string;
  vport: number;
  address: string;
  port: number;
  pids: number[];
  source: string;
}

/** Listening sockets in `ns` from `ss -H -l{t,u}np`: port → pids. */
function listeners(lab: NetLab, ns: string, proto: 'tcp' | 'udp'): Map<number, Set<number>> {
  const out = new Map<number, Set<number>>();
  const text = lab.run(ns, 'ss', ['-H', proto === 'tcp' ? '-ltnp' : '-lunp']);
  for (const line of text.split('\n')) {
    const cols = line.trim().split(/\s+/);
    const local = cols[3];
    if (!local) continue;
    const port = Number(local.slice(local.lastIndexOf(':') + 1));
    const pids = out.get(port) ?? new Set<number>();
    for (const m of line.matchAll(/pid=(\d+)/g)) pids.add(Number(m[1]));
    out.set(port, pids);
  }
  return out;
}

describe('vpm exec with the real daemon: programs bind 9000 and get pool ports', () => {
  let lab: NetLab;
  let ns: string;
  let dir: string;
  let probe: string;
  let vpm: VpmDaemon;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'ss', 'gcc', 'curl', 'python3');
    requireVpmBuild();
    requirePreload();
    lab = new NetLab('vlayer');
    ns = lab.namespace('host');
    dir = lab.tempDir();
    probe = compileProbe(dir);
    vpm = await VpmDaemon.start(lab, ns, CONFIG);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  const instances = async (): Promise<Instance[]> =>
    ((await controlRequest(vpm.socket, 'instances')) as Instance[]).filter(
      (i) => i.source === 'registered',
    );

  /** `vpm exec --aid AID -s SOCKET [extra] -- argv...`, tracked by the lab. */
  const exec = (
    aid: string,
    argv: readonly string[],
    extra: readonly string[] = [],
  ): ChildProcess =>
    lab.spawn(ns, process.execPath, [
      ...vpmArgv(),
      'exec',
      '--aid',
      aid,
      '-s',
      vpm.socket,
      ...extra,
      '--',
      ...argv,
    ]);

  /** A local client under `vpm exec --aid AID`: curl's body, or its failure. */
  const curlAs = async (aid: string): Promise<{ code: number | null; body: string }> => {
    const r = await runVpm(lab, ns, [
      'exec',
      '--aid',
      aid,
      '-s',
      vpm.socket,
      '--',
      'curl',
      '-sS',
      '-m',
      '5',
      `http://${VIP}:9000/`,
    ]);
    return { code: r.code, body: r.stdout + r.stderr };
  };

  it('a C program: bind 9000 gets a pool port, getsockname says 9000, connect is announced; other ports untouched', async () => {
    const child = exec(
      'tenant-a',
      [
        probe,
        'bind:tcp4:0.0.0.0:9000', // 1
        'name:1', // 2
        'bind:tcp4:0.0.0.0:9100', // 3: not a multiplexed port
        'bind:udp4:0.0.0.0:5353', // 4: UDP, not multiplexed
        `connect:tcp4:${VIP}:9000`, // 5: a local client of the service, as tenant-a
        'wait',
      ],
      ['--debug'],
    );
    await waitJsonEvent(lab, child, 'waiting', 15_000);
    const events = jsonLines(lab.output(child).stdout) as unknown as ProbeEvent[];
    const at = (i: number) => events.find((e) => e.i === i)!;
    const pid = at(1).pid;

    // The program's own view.
    expect(at(1)).toMatchObject({ ok: true, port: 9000, addr: '0.0.0.0', reuseport: 1 });
    expect(at(2)).toMatchObject({ ok: true, port: 9000 });

    // The daemon's view: a registered instance of tenant-a on a pool port, this pid.
    const mine = (await instances()).filter((i) => i.pids.includes(pid));
    expect(mine).toHaveLength(1);
    const real = mine[0]!.port;
    expect(mine[0]).toMatchObject({ aid: 'tenant-a', proto: 'tcp', vport: 9000 });
    expect(real).toBeGreaterThanOrEqual(POOL_LO);
    expect(real).toBeLessThanOrEqual(POOL_HI);
    // The library's trace names the same port.
    expect(lab.output(child).stderr).toContain(
      `bind fd ${at(1).fd} tcp 0.0.0.0:9000 -> real port ${real}`,
    );

    // The kernel's view: the program listens on the real port, not on 9000.
    const tcp = listeners(lab, ns, 'tcp');
    expect(tcp.get(real)?.has(pid)).toBe(true);
    expect(tcp.get(9000)?.has(pid) ?? false).toBe(false);
    // Untouched: the other TCP port and the UDP socket are bound as asked.
    expect(at(3)).toMatchObject({ ok: true, port: 9100, reuseport: 0 });
    expect(tcp.get(9100)?.has(pid)).toBe(true);
    expect(at(4)).toMatchObject({ ok: true, port: 5353, reuseport: 0 });
    expect(listeners(lab, ns, 'udp').get(5353)?.has(pid)).toBe(true);

    // The connect was announced as tenant-a: with no selector and default
    // "refuse", only that sends it to tenant-a's instance — the probe itself.
    expect(at(5)).toMatchObject({ ok: true });
    const flows = await vpm.flows();
    const flow = flows.find((f) => f.client.endsWith(`:${at(5).port}`));
    expect(flow, JSON.stringify(flows)).toMatchObject({
      aid: 'tenant-a',
      real: `198.19.255.1:${real}`,
    });

    // SIGTERM to vpm exec reaches the program; its registration ends with it.
    process.kill(child.pid!, 'SIGTERM');
    const exit = await withTimeout(lab.exited(child), 10_000, 'vpm exec to end');
    expect(exit).toEqual({ code: null, signal: 'SIGTERM' });
    await waitFor(async () => (await instances()).every((i) => !i.pids.includes(pid)), {
      what: 'the registration to end with the program',
    });
  });

  it('python3 -m http.server and a Node.js net server both "listen on 9000"; local clients reach their own AID', async () => {
    const www = lab.tempDir();
    const pyA = exec('tenant-a', [
      'python3',
      '-u',
      '-m',
      'http.server',
      '9000',
      '--directory',
      www,
    ]);
    // A second copy of tenant-a, on "::" (IPv6 any, dual-stack): the same real port (AID grouping).
    const pyA2 = exec('tenant-a', [
      'python3',
      '-u',
      '-m',
      'http.server',
      '9000',
      '--bind',
      '::',
      '--directory',
      www,
    ]);
    const nodeB = exec('tenant-b', [
      process.execPath,
      join(FIXTURES, 'net-server.mjs'),
      'tenant-b',
      '9000',
    ]);

    // Their own view: "Serving HTTP on <addr> port 9000", server.address().port 9000.
    const serving = /Serving HTTP on (\S+) port (\d+)/;
    await lab.waitForOutput(pyA, serving, { stream: 'stdout', timeoutMs: 15_000 });
    await lab.waitForOutput(pyA2, serving, { stream: 'stdout', timeoutMs: 15_000 });
    const [, addrA, portA] = serving.exec(lab.output(pyA).stdout)!;
    const [, addrA2, portA2] = serving.exec(lab.output(pyA2).stdout)!;
    // Debian's python3 picks 0.0.0.0 or :: by getaddrinfo(None); either goes through vpm.
    expect(['0.0.0.0', '::']).toContain(addrA);
    expect(portA).toBe('9000');
    expect(addrA2).toBe('::');
    expect(portA2).toBe('9000');
    const listening = await waitJsonEvent(lab, nodeB, 'listening', 15_000);
    expect(listening).toMatchObject({ address: '::', family: 'IPv6', port: 9000 });

    // The daemon's and the kernel's view: one pool port per AID; both pythons share theirs.
    const regs = await instances();
    const a = regs.filter((i) => i.aid === 'tenant-a' && i.vport === 9000);
    const b = regs.filter((i) => i.aid === 'tenant-b' && i.vport === 9000);
    expect(a).toHaveLength(1);
    expect(b).toHaveLength(1);
    expect(a[0]!.pids).toHaveLength(2);
    expect(a[0]!.port).not.toBe(b[0]!.port);
    const tcp = listeners(lab, ns, 'tcp');
    expect(tcp.get(a[0]!.port)?.size).toBe(2);
    expect(tcp.get(b[0]!.port)?.has(Number(listening.pid))).toBe(true);
    expect(tcp.has(9000)).toBe(false);

    // Local clients under vpm exec reach the instance of their own AID.
    const viaA = await curlAs('tenant-a');
    expect(viaA.code).toBe(0);
    expect(viaA.body).toContain('Directory listing');
    const viaB = await curlAs('tenant-b');
    expect(viaB).toEqual({ code: 0, body: 'tenant-b\n' });

    for (const c of [pyA, pyA2, nodeB]) await lab.stop(c, 'SIGTERM', 5000);
    await waitFor(async () => (await instances()).length === 0, {
      what: 'every registration to end',
    });
  });
});

describe('vpm exec over IPv6 with the real daemon (a dual-stack service)', () => {
  const VIP6 = '2001:2:0:9::9';
  const TUN6 = '2001:2:0:ff::1';
  let lab: NetLab;
  let ns: string;
  let probe: string;
  let vpm: VpmDaemon;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'ss', 'gcc');
    requireVpmBuild();
    requirePreload();
    lab = new NetLab('vlayer6');
    ns = lab.namespace('host');
    probe = compileProbe(lab.tempDir());
    vpm = await VpmDaemon.start(lab, ns, {
      ...CONFIG,
      services: [{ name: 'web', address: [VIP, VIP6], port: 9000 }],
    });
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  const rows = async (aid: string): Promise<Instance[]> =>
    ((await controlRequest(vpm.socket, 'instances')) as Instance[]).filter(
      (i) => i.source === 'registered' && i.aid === aid,
    );

  const run = async (aid: string, ops: readonly string[]) => {
    const child = lab.spawn(ns, process.execPath, [
      ...vpmArgv(),
      'exec',
      '--aid',
      aid,
      '-s',
      vpm.socket,
      '--debug',
      '--',
      probe,
      ...ops,
      'wait',
    ]);
    await waitJsonEvent(lab, child, 'waiting', 15_000);
    const events = jsonLines(lab.output(child).stdout) as unknown as ProbeEvent[];
    return { child, at: (i: number) => events.find((e) => e.i === i)! };
  };

  it('"::" serves both families, "::" with IPV6_V6ONLY IPv6 only; getsockname says 9000; connects over IPv6 are announced and reach their own AID (FIG. 8)', async () => {
    const a = await run('tenant-a', [
      'bind:tcp6:[::]:9000', // 1: dual-stack
      'name:1', // 2
      `connect:tcp6:[${VIP6}]:9000`, // 3: a local client as tenant-a, over IPv6
      `connect:tcp4:${VIP}:9000`, // 4: and over IPv4
    ]);
    const b = await run('tenant-b', [
      'bind:tcp6o:[::]:9000', // 1: IPv6 only
      'name:1', // 2
      `connect:tcp6:[${VIP6}]:9000`, // 3: reaches tenant-b's instance
      `connect:tcp4:${VIP}:9000`, // 4: tenant-b has no IPv4 instance: refused
    ]);
    for (const p of [a, b]) {
      expect(p.at(1)).toMatchObject({ ok: true, port: 9000, addr: '::', reuseport: 1 });
      expect(p.at(2)).toMatchObject({ ok: true, port: 9000 });
    }
    const ra = await rows('tenant-a');
    const rb = await rows('tenant-b');
    expect(ra.map((i) => i.address)).toEqual([VIP_TUN4, TUN6]);
    expect(rb.map((i) => i.address)).toEqual([TUN6]);
    // Each row has its instance's health, the IPv6 ones too (found by their IPv6 address).
    for (const r of [...ra, ...rb])
      expect(r).toMatchObject({ health: { state: 'up', refusals: 0 } });
    const realA = ra[0]!.port;
    const realB = rb[0]!.port;
    expect(ra[1]!.port).toBe(realA);
    expect(realB).not.toBe(realA);
    expect(lab.output(a.child).stderr).toContain(
      `bind fd ${a.at(1).fd} tcp [::]:9000 -> real port ${realA}`,
    );
    // The kernel's view: each program listens on its real port, not on 9000.
    const tcp = listeners(lab, ns, 'tcp');
    expect(tcp.get(realA)?.has(a.at(1).pid)).toBe(true);
    expect(tcp.get(realB)?.has(b.at(1).pid)).toBe(true);
    expect(tcp.has(9000)).toBe(false);

    // With no selector and default "refuse", only the announced AID sends a
    // connection to an instance: each probe's connects reached its own socket.
    expect(a.at(3)).toMatchObject({ ok: true });
    expect(a.at(4)).toMatchObject({ ok: true });
    expect(b.at(3)).toMatchObject({ ok: true });
    expect(b.at(4)).toMatchObject({ ok: false, errno: 'ECONNREFUSED' });
    const flows = await vpm.flows();
    const flow = (port: number | undefined) => flows.find((f) => f.client.endsWith(`]:${port}`));
    expect(flow(a.at(3).port), JSON.stringify(flows)).toMatchObject({
      aid: 'tenant-a',
      real: `[${TUN6}]:${realA}`,
    });
    expect(flow(b.at(3).port), JSON.stringify(flows)).toMatchObject({
      aid: 'tenant-b',
      real: `[${TUN6}]:${realB}`,
    });
    expect(
      flows.find((f) => f.client.endsWith(`:${a.at(4).port}`) && !f.client.startsWith('[')),
    ).toMatchObject({ aid: 'tenant-a', real: `${VIP_TUN4}:${realA}` });

    for (const p of [a, b]) await lab.stop(p.child, 'SIGTERM', 5000);
    await waitFor(
      async () => (await rows('tenant-a')).length + (await rows('tenant-b')).length === 0,
      {
        what: 'the registrations to end',
      },
    );
  });
});
