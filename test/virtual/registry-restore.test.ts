/**
 * The registry across a daemon restart (src/virtual/registry.ts: snapshot,
 * restore, sweep, onChange). The "programs" are real child processes (sleep):
 * one alive, one killed, one whose pid the state records with another start
 * time; their liveness is read from /proc as the daemon reads it. A restore
 * runs into a fresh registry, instance set and pool, as the next daemon builds
 * them, after the snapshot went through JSON (what the state file holds).
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { procStart } from '../../src/base/proc.js';
import { parseConfig } from '../../src/config/config.js';
import type { Config } from '../../src/config/types.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { formatInstances } from '../../src/view/format.js';
import { PortPool } from '../../src/virtual/pool.js';
import { Registry, type RegistrySnapshot } from '../../src/virtual/registry.js';
import { ipv6FromWords } from '../../src/wire/address.js';
import { IPPROTO_UDP } from '../../src/wire/ipv4.js';

const QUARANTINE = 60_000; // longer than any test: a quarantined port stays there

interface FileOpts {
  aids?: string[];
  range?: string;
  /** Drop the UDP service on 9000. */
  noUdp?: boolean;
}

const file = (o: FileOpts = {}) => ({
  services: [
    { name: 'web', address: ['198.19.0.9', '2001:2:0:9::9'], port: 9000 },
    { name: 'alt', address: '198.19.0.10', port: 8080 },
    ...(o.noUdp
      ? []
      : [
          {
            name: 'web-udp',
            address: ['198.19.0.9', '2001:2:0:9::9'],
            port: 9000,
            protocol: 'udp',
          },
        ]),
  ],
  applications: (o.aids ?? ['a', 'b']).map((aid) => ({ aid })),
  selectors: [],
  default: { aid: (o.aids ?? ['a'])[0] },
  pool: { range: o.range ?? '20000-20009', quarantineMs: QUARANTINE, waitTimeoutMs: 50 },
});

const pools: PortPool[] = [];

/** What a daemon builds at start: the config, its static instances, a fresh pool and registry. */
function daemon(o: FileOpts = {}) {
  const cfg: Config = parseConfig(file(o), 'test.json');
  const instances = new InstanceSet();
  instances.replaceStatic(rulesFromConfig(cfg), staticInstancesFromConfig(cfg));
  const [lo, hi] = (o.range ?? '20000-20009').split('-').map(Number) as [number, number];
  const pool = new PortPool(lo, hi, cfg.pool!.quarantineMs, cfg.pool!.waitTimeoutMs);
  pools.push(pool);
  return { cfg, instances, pool, reg: new Registry(cfg, instances, pool) };
}

const children: ChildProcess[] = [];

afterEach(() => {
  for (const p of pools.splice(0)) p.close();
  for (const c of children.splice(0))
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** A running program: a sleep child. */
function program(): ChildProcess & { pid: number } {
  const c = spawn('sleep', ['60'], { stdio: 'ignore' });
  children.push(c);
  if (c.pid === undefined) throw new Error('sleep did not start');
  return c as ChildProcess & { pid: number };
}

async function kill(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
  c.kill('SIGKILL');
  await gone;
}

const bind = (
  aid: string,
  pid: number,
  fd: number,
  o: { proto?: 'tcp' | 'udp'; vport?: number; addr?: string; v6only?: boolean } = {},
) => ({
  aid,
  proto: o.proto ?? 'tcp',
  vport: o.vport ?? 9000,
  addr: o.addr ?? '0.0.0.0',
  ...(o.v6only ? { v6only: true } : {}),
  pid,
  fd,
});

/** What the state file would give back. */
const viaJson = (s: RegistrySnapshot): RegistrySnapshot => JSON.parse(JSON.stringify(s));

/** The registered instances, as comparable rows. */
const registered = (set: InstanceSet) =>
  set
    .all()
    .filter((i) => i.source === 'registered')
    .map((i) => ({
      index: i.index,
      aid: i.aid,
      addr: i.addr,
      addr6: i.addr6 ? ipv6FromWords(i.addr6) : null,
      port: i.port,
      vport: i.vport,
      proto: i.proto,
    }));

describe('Registry snapshot and restore', () => {
  it('round trip: a living program keeps its port and instance, a dead one is dropped and its port quarantined', async () => {
    const alive = program();
    const dead = program();
    const old = daemon();
    const c1 = new Socket();
    const c2 = new Socket();
    // a: "::" dual-stack TCP; a: UDP 0.0.0.0; b: TCP, by the program that will die.
    const pa = (await old.reg.bind(c1, bind('a', alive.pid, 3, { addr: '::' }))).port;
    const pu = (await old.reg.bind(c1, bind('a', alive.pid, 4, { proto: 'udp' }))).port;
    const pb = (await old.reg.bind(c2, bind('b', dead.pid, 3))).port;
    old.reg.connectReport(
      { aid: 'a', proto: 'udp', local: '198.19.255.1:40001', pid: alive.pid, fd: 7 },
      c1,
    );
    old.reg.connectReport(
      { aid: 'b', proto: 'udp', local: '[::]:40002', pid: dead.pid, fd: 8 },
      c2,
    );
    const before = registered(old.instances);
    expect(before).toHaveLength(3);
    const snap = viaJson(old.reg.snapshot());
    expect(snap.groups.map((g) => [g.aid, g.proto, g.key, g.port])).toEqual([
      ['a', 'tcp', 'tun', pa],
      ['a', 'udp', 'tun', pu],
      ['b', 'tcp', 'tun', pb],
    ]);
    expect(snap.groups[0]!.registrations).toEqual([
      {
        id: 1,
        pid: alive.pid,
        hostPid: alive.pid,
        start: procStart(alive.pid),
        fd: 3,
        v4: true,
        v6: true,
        since: expect.any(Number),
      },
    ]);
    expect(snap.pool!.inUse).toEqual([pa, pu, pb].sort((x, y) => x - y));

    // The daemon dies (kill -9), and so does one program.
    await kill(dead);
    const next = daemon();
    const r = next.reg.restore(snap);

    expect(r.groups).toEqual([
      {
        aid: 'a',
        proto: 'tcp',
        vport: 9000,
        key: 'tun',
        port: pa,
        instance: before[0]!.index,
        previousInstance: before[0]!.index,
        registrations: 1,
        outsidePool: false,
      },
      expect.objectContaining({ aid: 'a', proto: 'udp', port: pu, registrations: 1 }),
    ]);
    expect(r.droppedGroups).toEqual([
      {
        aid: 'b',
        proto: 'tcp',
        vport: 9000,
        key: 'tun',
        port: pb,
        reason: 'process_gone',
        held: false,
        registrations: 0,
      },
    ]);
    expect(r.droppedRegistrations).toEqual([
      {
        aid: 'b',
        proto: 'tcp',
        vport: 9000,
        port: pb,
        pid: dead.pid,
        fd: 3,
        reason: 'process_gone',
      },
    ]);
    expect(r.released).toEqual([pb]);
    expect(r.udpReports).toEqual({
      restored: 1,
      dropped: [{ aid: 'b', local: '0.0.0.0:40002', pid: dead.pid, fd: 8, reason: 'process_gone' }],
    });

    // The instance set has a's instances again, as they were: index, addresses, port, protocol.
    expect(registered(next.instances)).toEqual(before.filter((i) => i.port !== pb));
    expect(next.instances.pick(0, 0, 0, 6)).toBe(before[0]!.index); // web over IPv6
    // The pool: a's ports in use, b's in quarantine; a new bind gets neither.
    expect(next.pool.isInUse(pa) && next.pool.isInUse(pu)).toBe(true);
    expect(next.pool.snapshot().quarantine.map((q) => q.port)).toEqual([pb]);
    const fresh = (await next.reg.bind(new Socket(), bind('b', alive.pid, 9))).port;
    expect([pa, pu, pb]).not.toContain(fresh);
    // The UDP report of the living program still names its AID.
    expect(next.reg.localClientAid(next.cfg.tun.address, 40001, IPPROTO_UDP)).toBe(0);
    expect(next.reg.localClientAid(0, 40002, IPPROTO_UDP)).toBe(-1);
    // `vpm instances` shows the recovered registrations.
    expect(next.reg.instances().filter((i) => i.port === pa)).toMatchObject([
      { address: '198.19.255.1', pids: [alive.pid], registrations: 1, recovered: 1 },
      { address: expect.stringContaining(':'), pids: [alive.pid], registrations: 1, recovered: 1 },
    ]);
    expect(formatInstances(next.reg.instances())).toMatch(
      new RegExp(
        `a +tcp/9000 +198\\.19\\.255\\.1:${pa} +${alive.pid} +vpm exec \\(1, 1 recovered\\)`,
      ),
    );
    // A bind on a connection is not a recovered one.
    expect(next.reg.instances().find((i) => i.port === fresh)).not.toHaveProperty('recovered');
  });

  it('drops a registration whose pid is now another process (its start time differs)', async () => {
    const p = program();
    const old = daemon();
    const { port } = await old.reg.bind(new Socket(), bind('a', p.pid, 3));
    const snap = viaJson(old.reg.snapshot());
    // The state says the pid belonged to a process started at another time: pid reuse.
    snap.groups[0]!.registrations[0]!.start = String(Number(procStart(p.pid)) - 1);
    const next = daemon();
    const r = next.reg.restore(snap);
    expect(r.groups).toEqual([]);
    expect(r.droppedRegistrations).toMatchObject([{ pid: p.pid, reason: 'process_gone' }]);
    expect(registered(next.instances)).toEqual([]);
    expect(next.pool.snapshot()).toMatchObject({ inUse: [], quarantine: [{ port }] });
    // A state without a start time cannot be checked either.
    snap.groups[0]!.registrations[0]!.start = null;
    const third = daemon();
    expect(third.reg.restore(snap).droppedRegistrations).toMatchObject([
      { reason: 'process_gone' },
    ]);
  });

  it('sweep ends recovered registrations and UDP reports whose process exited', async () => {
    const p = program();
    const q = program();
    const old = daemon();
    const c = new Socket();
    const { port } = await old.reg.bind(c, bind('a', p.pid, 3));
    await old.reg.bind(new Socket(), bind('a', q.pid, 3));
    old.reg.connectReport(
      { aid: 'a', proto: 'udp', local: '198.19.255.1:40001', pid: p.pid, fd: 5 },
      c,
    );
    const next = daemon();
    next.reg.restore(viaJson(old.reg.snapshot()));
    expect(next.reg.sweep()).toBe(0);
    await kill(p);
    // p's registration and report end; q still holds the group.
    expect(next.reg.sweep()).toBe(2);
    expect(next.reg.localClientAid(next.cfg.tun.address, 40001, IPPROTO_UDP)).toBe(-1);
    expect(next.reg.instances().find((i) => i.port === port)).toMatchObject({ pids: [q.pid] });
    await kill(q);
    expect(next.reg.sweep()).toBe(1);
    expect(registered(next.instances)).toEqual([]);
    expect(next.pool.snapshot().quarantine.map((x) => x.port)).toEqual([port]);
    expect(next.reg.sweep()).toBe(0);
  });

  it('ends a recovered registration at its release on a new connection, only for its own process', async () => {
    const p = program();
    const other = program();
    const old = daemon();
    const { port } = await old.reg.bind(new Socket(), bind('a', p.pid, 3));
    old.reg.connectReport(
      { aid: 'a', proto: 'udp', local: '198.19.255.1:40001', pid: p.pid, fd: 6 },
      new Socket(),
    );
    const snap = viaJson(old.reg.snapshot());
    // The daemon knows who is at the other end of each connection (SO_PEERCRED).
    const peers = new Map<Socket, number>();
    const next = daemon();
    const reg = new Registry(next.cfg, next.instances, next.pool, {
      peerPid: (c) => peers.get(c) ?? 0,
    });
    reg.restore(snap);
    // Another process claiming p's pid and fd (root may claim any pid) releases nothing.
    const intruder = new Socket();
    peers.set(intruder, other.pid);
    expect(reg.release(intruder, { pid: p.pid, fd: 3, port })).toEqual({ released: 0, reports: 0 });
    // The program's own new connection: its release and its UDP socket's.
    const mine = new Socket();
    peers.set(mine, p.pid);
    expect(reg.release(mine, { pid: p.pid, fd: 3, port: port + 1 })).toEqual({
      released: 0,
      reports: 0,
    });
    expect(reg.release(mine, { pid: p.pid, fd: 3, port })).toEqual({ released: 1, reports: 0 });
    expect(reg.release(mine, { pid: p.pid, fd: 6 })).toEqual({ released: 0, reports: 1 });
    expect(registered(next.instances)).toEqual([]);
    expect(next.pool.snapshot().quarantine.map((x) => x.port)).toEqual([port]);
    expect(reg.snapshot()).toMatchObject({ groups: [], udpReports: [] });
  });

  it('lets a new bind of the same program join its recovered group', async () => {
    const p = program();
    const old = daemon();
    const { port } = await old.reg.bind(new Socket(), bind('a', p.pid, 3));
    const next = daemon();
    next.reg.restore(viaJson(old.reg.snapshot()));
    const c = new Socket();
    expect(await next.reg.bind(c, bind('a', p.pid, 4, { addr: '::' }))).toEqual({ port });
    const rows = next.reg.instances().filter((i) => i.port === port);
    expect(rows[0]).toMatchObject({ pids: [p.pid], registrations: 2, recovered: 1 });
    // What docs/inspection.md quotes.
    expect(formatInstances(rows)).toContain('vpm exec (2, 1 recovered)');
    // The new one joined the same instance, which serves IPv6 now too (same index).
    expect(registered(next.instances)).toHaveLength(1);
    expect(registered(next.instances)[0]!.addr6).toBe(next.cfg.tun.address6);
    // Its connection closing ends only the new registration.
    expect(next.reg.connClosed(c)).toBe(1);
    expect(next.reg.instances().find((i) => i.port === port)).toMatchObject({
      registrations: 1,
      recovered: 1,
    });
    // The next snapshot has the ids going on from the old daemon's.
    const ids = next.reg.snapshot().groups[0]!.registrations.map((r) => r.id);
    expect(ids).toEqual([1]);
    expect(next.reg.snapshot().nextId).toBeGreaterThan(2);
  });

  it('into a config without the AID or the service: no instance, the port held while the program lives', async () => {
    const p = program();
    const old = daemon({ aids: ['a', 'b'] });
    const pb = (await old.reg.bind(new Socket(), bind('b', p.pid, 3))).port;
    const pu = (await old.reg.bind(new Socket(), bind('a', p.pid, 4, { proto: 'udp' }))).port;
    const pa = (await old.reg.bind(new Socket(), bind('a', p.pid, 5))).port;
    const snap = viaJson(old.reg.snapshot());
    const next = daemon({ aids: ['a'], noUdp: true });
    const r = next.reg.restore(snap);
    expect(r.groups.map((g) => g.port)).toEqual([pa]);
    expect(r.droppedGroups).toEqual([
      expect.objectContaining({
        aid: 'b',
        port: pb,
        reason: 'aid_gone',
        held: true,
        registrations: 1,
      }),
      expect.objectContaining({ aid: 'a', port: pu, reason: 'service_gone', held: true }),
    ]);
    expect(r.droppedRegistrations).toEqual([]);
    expect(r.released).toEqual([]);
    expect(registered(next.instances).map((i) => i.port)).toEqual([pa]);
    // Never handed out while the program may still listen there.
    expect(next.pool.isInUse(pb) && next.pool.isInUse(pu)).toBe(true);
    // The held groups are in the next snapshot too (a second restart holds them).
    expect(next.reg.snapshot().groups.map((g) => [g.aid, g.port])).toEqual([
      ['b', pb],
      ['a', pu],
      ['a', pa],
    ]);
    // The program's release ends a held group too; the others end when it exits.
    expect(next.reg.release(new Socket(), { pid: p.pid, fd: 4 })).toEqual({
      released: 1,
      reports: 0,
    });
    await kill(p);
    expect(next.reg.sweep()).toBe(2);
    expect(next.pool.snapshot()).toMatchObject({ inUse: [] });
    expect(
      next.pool
        .snapshot()
        .quarantine.map((x) => x.port)
        .sort(),
    ).toEqual([pa, pb, pu].sort());
  });

  it('keeps a group whose port is outside a new pool range, and never gives that port to the pool', async () => {
    const p = program();
    const old = daemon({ range: '20000-20009' });
    const { port } = await old.reg.bind(new Socket(), bind('a', p.pid, 3));
    const next = daemon({ range: '30000-30001' });
    const r = next.reg.restore(viaJson(old.reg.snapshot()));
    expect(r.groups).toMatchObject([{ port, outsidePool: true }]);
    expect(r.pool).toMatchObject({ inUse: 0, ignored: [port] });
    expect(next.pool.stats()).toMatchObject({ inUse: 0, free: 2 });
    expect(next.reg.release(new Socket(), { pid: p.pid, fd: 3 })).toEqual({
      released: 1,
      reports: 0,
    });
    expect(next.pool.stats()).toMatchObject({ inUse: 0, free: 2, quarantined: 0 });
  });

  it('trusts no port twice: a second group on a held port is a conflict; an in-use port nobody holds goes to quarantine', async () => {
    const p = program();
    const old = daemon();
    const { port } = await old.reg.bind(new Socket(), bind('a', p.pid, 3));
    const snap = viaJson(old.reg.snapshot());
    // A damaged state: b claims a's port, and the pool has an in-use port no group holds.
    snap.groups.push({ ...snap.groups[0]!, aid: 'b' });
    snap.pool!.inUse.push(20009);
    const next = daemon();
    const r = next.reg.restore(snap);
    expect(r.groups.map((g) => [g.aid, g.port])).toEqual([['a', port]]);
    expect(r.droppedGroups).toMatchObject([{ aid: 'b', port, reason: 'conflict', held: false }]);
    expect(r.droppedRegistrations).toMatchObject([{ aid: 'b', reason: 'conflict' }]);
    expect(r.released).toEqual([20009]);
    expect(next.pool.isInUse(port)).toBe(true);
    expect(next.pool.snapshot().quarantine.map((x) => x.port)).toEqual([20009]);
    // A group's port the state's pool had free is taken back into use.
    const again = viaJson(old.reg.snapshot());
    again.pool!.inUse = [];
    const third = daemon();
    third.reg.restore(again);
    expect(third.pool.isInUse(port)).toBe(true);
    // Only a fresh registry restores.
    expect(() => third.reg.restore(again)).toThrow(/fresh registry/);
  });

  it('serves only the families this config has: a "::" group into a config without IPv6 serves IPv4', async () => {
    const p = program();
    const old = daemon();
    const { port } = await old.reg.bind(new Socket(), bind('a', p.pid, 3, { addr: '::' }));
    const v6only = (
      await old.reg.bind(new Socket(), bind('b', p.pid, 4, { addr: '::', v6only: true }))
    ).port;
    const snap = viaJson(old.reg.snapshot());
    // The same services with IPv4 addresses only: tun.ipv6 off.
    const f = file();
    const cfg4 = parseConfig(
      { ...f, services: f.services.map((s) => ({ ...s, address: '198.19.0.9' })) },
      'test.json',
    );
    expect(cfg4.tun.ipv6).toBe(false);
    const instances = new InstanceSet();
    instances.replaceStatic(rulesFromConfig(cfg4), staticInstancesFromConfig(cfg4));
    const pool = new PortPool(20000, 20009, QUARANTINE, 50);
    pools.push(pool);
    const reg = new Registry(cfg4, instances, pool);
    const r = reg.restore(snap);
    // Both groups are back; b's serves no family here (no instance) but holds its port.
    expect(r.groups.map((g) => [g.aid, g.port, g.instance >= 0])).toEqual([
      ['a', port, true],
      ['b', v6only, false],
    ]);
    expect(registered(instances)).toMatchObject([{ port, addr: cfg4.tun.address, addr6: null }]);
    expect(pool.isInUse(v6only)).toBe(true);
    // The state keeps the sockets' families, for a later restart with IPv6 again.
    expect(reg.snapshot().groups[1]!.registrations[0]).toMatchObject({ v4: false, v6: true });
  });
});

describe('Registry process identity', () => {
  it("records the connection's peer (SO_PEERCRED) as the process, whatever pid the request claims", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vpm-reg-'));
    const path = join(dir, 'ctl.sock');
    const server = createServer();
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve) => server.listen(path, resolve));
    const client = createConnection(path);
    try {
      const conn = await accepted;
      const d = daemon();
      // A program in another pid namespace reports its own getpid(): 7 here.
      await d.reg.bind(conn, bind('a', 7, 3));
      const r = d.reg.snapshot().groups[0]!.registrations[0]!;
      expect(r).toMatchObject({ pid: 7, hostPid: process.pid, start: procStart(process.pid) });
      // Its process is this one: a restore keeps it, and its release by pid 7 ends it.
      const next = daemon();
      expect(next.reg.restore(viaJson(d.reg.snapshot())).groups).toHaveLength(1);
      expect(next.reg.release(conn, { pid: 7, fd: 3 })).toEqual({ released: 1, reports: 0 });
    } finally {
      client.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Registry change hook (onChange)', () => {
  it('runs with the port in the snapshot before bind resolves, also after a wait for the pool', async () => {
    const p = program();
    const d = daemon({ range: '20000-20000' });
    let resolved = false;
    const seen: { resolved: boolean; ports: number[] }[] = [];
    d.reg.onChange(() => {
      seen.push({ resolved, ports: d.reg.snapshot().groups.map((g) => g.port) });
    });
    const first = d.reg.bind(new Socket(), bind('a', p.pid, 3)).then((r) => {
      resolved = true;
      return r;
    });
    const { port } = await first;
    expect(seen).toEqual([{ resolved: false, ports: [port] }]);

    // The pool is empty: b's bind waits until a's port is released (quarantine 0 here).
    const cfg = parseConfig(
      { ...file(), pool: { range: '20000-20000', quarantineMs: 0, waitTimeoutMs: 5000 } },
      'test.json',
    );
    const instances = new InstanceSet();
    instances.replaceStatic(rulesFromConfig(cfg), staticInstancesFromConfig(cfg));
    const pool = new PortPool(20000, 20000, 0, 5000);
    pools.push(pool);
    const reg = new Registry(cfg, instances, pool);
    const log: string[] = [];
    reg.onChange(() =>
      log.push(`change ${reg.snapshot().groups.map((g) => `${g.aid}:${g.port}`)}`),
    );
    const ca = new Socket();
    await reg.bind(ca, bind('a', p.pid, 3));
    log.length = 0;
    const waiting = reg.bind(new Socket(), bind('b', p.pid, 4)).then((r) => {
      log.push(`resolved ${r.port}`);
    });
    expect(pool.stats().waiting).toBe(1);
    expect(reg.connClosed(ca)).toBe(1);
    await waiting;
    expect(log).toEqual(['change ', 'change b:20000', 'resolved 20000']);
  });

  it('runs after a release, a UDP report, a sweep and a restore; not for a TCP report; survives a hook that throws', async () => {
    const p = program();
    const d = daemon();
    let n = 0;
    d.reg.onChange(() => {
      throw new Error('disk full');
    });
    const kinds: string[] = [];
    const off = d.reg.onChange((what) => {
      n++;
      kinds.push(what);
    });
    const c = new Socket();
    const { port } = await d.reg.bind(c, bind('a', p.pid, 3));
    expect(n).toBe(1);
    d.reg.connectReport({ aid: 'a', proto: 'tcp', local: '198.19.255.1:40000', pid: p.pid }, c);
    expect(n).toBe(1);
    d.reg.connectReport(
      { aid: 'a', proto: 'udp', local: '198.19.255.1:40000', pid: p.pid, fd: 9 },
      c,
    );
    expect(n).toBe(2);
    expect(d.reg.release(c, { pid: p.pid, fd: 3, port })).toEqual({ released: 1, reports: 0 });
    expect(n).toBe(3);
    expect(d.reg.release(c, { pid: p.pid, fd: 3, port })).toEqual({ released: 0, reports: 0 });
    expect(n).toBe(3);
    expect(d.reg.sweep()).toBe(0);
    expect(n).toBe(3);
    // What each change touched: held ports (written before the answer) or UDP reports alone.
    expect(kinds).toEqual(['ports', 'reports', 'ports']);
    d.reg.connectReport(
      { aid: 'a', proto: 'udp', local: '198.19.255.1:40001', pid: p.pid, fd: 10 },
      c,
    );
    expect(d.reg.release(c, { pid: p.pid, fd: 10 })).toEqual({ released: 0, reports: 1 });
    expect(kinds.slice(3)).toEqual(['reports', 'reports']);
    n -= 2;
    const next = daemon();
    let m = 0;
    next.reg.onChange(() => m++);
    next.reg.restore(viaJson(d.reg.snapshot()));
    expect(m).toBe(1);
    off();
    expect(d.reg.connClosed(c)).toBe(0); // the UDP report ended: no hook left to count it
    expect(n).toBe(3);
  });
});
