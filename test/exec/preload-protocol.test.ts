/*
 * The interception library's own side of the control protocol, against a
 * stand-in control server in this test process: what it sends, how it maps
 * every kind of answer (and non-answer) to errno, that it never waits longer
 * than VPM_TIMEOUT_MS, and how it keeps its one connection per process across
 * fork(), threads and programs that close every descriptor. The program is
 * the C probe (fixtures/sockprobe.c, compiled here), run under LD_PRELOAD.
 *
 *   test process                          ns p (lo up, 198.18.0.1/32 and
 *                                                2001:2:0:7::1/128 on lo)
 *  ┌───────────────────────────┐  unix   ┌────────────────────────────────┐
 *  │ stand-in control server   │◄────────│ sockprobe + libvpm_preload.so  │
 *  │ (records, answers or not) │ socket  │ binds, connects, closes, forks │
 *  └───────────────────────────┘         └────────────────────────────────┘
 *
 * The unix socket lives in a temporary directory; only the namespace's own
 * loopback carries the probe's TCP. The end-to-end behaviour with the real
 * daemon is in virtual-layer.test.ts.
 */

import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import { Rng } from '../support/rng.js';
import { jsonLines } from '../support/vpm.js';
import {
  compileProbe,
  ev,
  grant,
  libEnv,
  PRELOAD_LIB,
  type ProbeEvent,
  refuse,
  requirePreload,
  runProbe,
  StandIn,
} from './helpers.js';

const A6 = '2001:2:0:7::1';

describe('libvpm_preload against a stand-in control server', () => {
  let lab: NetLab;
  let ns: string;
  let dir: string;
  let probe: string;
  let standIn: StandIn | null = null;
  let sockN = 0;

  beforeAll(() => {
    requireRoot();
    requireCommands('ip', 'gcc');
    requirePreload();
    lab = new NetLab('preloadproto');
    ns = lab.namespace('p');
    lab.run(ns, 'ip', ['addr', 'add', '198.18.0.1/32', 'dev', 'lo']);
    lab.run(ns, 'ip', ['-6', 'addr', 'add', `${A6}/128`, 'dev', 'lo', 'nodad']);
    dir = lab.tempDir();
    probe = compileProbe(dir);
  });

  afterEach(async () => {
    await standIn?.close();
    standIn = null;
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  const serve = async (answer: Parameters<typeof StandIn.start>[1]): Promise<StandIn> => {
    standIn = await StandIn.start(join(dir, `ctl${++sockN}.sock`), answer);
    return standIn;
  };

  it('no daemon: a multiplexed bind fails at once with EADDRNOTAVAIL and says why; other binds work', async () => {
    const sock = join(dir, 'nobody-here.sock');
    const run = await runProbe(lab, ns, probe, libEnv(sock, 'tenant-a', 'tcp:9000'), [
      'bind:tcp4:0.0.0.0:9000',
      'bind:tcp4:0.0.0.0:9100',
      'bind:udp4:0.0.0.0:9000',
    ]);
    const b = ev(run, 1);
    expect(b).toMatchObject({ ok: false, errno: 'EADDRNOTAVAIL' });
    expect(b.ms).toBeLessThan(200);
    expect(run.stderr).toContain(`vpm: vpm is not running (no daemon at ${sock})`);
    expect(run.stderr).toContain('bind of tcp 0.0.0.0:9000 fails with EADDRNOTAVAIL');
    // Not multiplexed (another port; UDP when only tcp:9000 is): the kernel's own bind.
    expect(ev(run, 2)).toMatchObject({ ok: true, port: 9100, reuseport: 0, errnoKept: true });
    expect(ev(run, 3)).toMatchObject({ ok: true, port: 9000, reuseport: 0, errnoKept: true });
    expect(run.exit.code).toBe(0);
  });

  it('a daemon that accepts but never answers: the bind fails after VPM_TIMEOUT_MS, not later', async () => {
    const s = await serve(() => null);
    const run = await runProbe(
      lab,
      ns,
      probe,
      libEnv(s.path, 'tenant-a', 'tcp:9000', { VPM_TIMEOUT_MS: '600' }),
      ['bind:tcp4:0.0.0.0:9000', 'bind:tcp4:0.0.0.0:9000'],
    );
    for (const i of [1, 2]) {
      const b = ev(run, i);
      expect(b).toMatchObject({ ok: false, errno: 'EADDRNOTAVAIL', port: 0 });
      expect(b.ms).toBeGreaterThanOrEqual(590);
      expect(b.ms).toBeLessThan(1500);
    }
    expect(run.stderr).toContain(`vpm: the vpm daemon at ${s.path} did not answer within 600 ms`);
    // Both on the one connection: a timeout abandons the request, not the connection.
    expect(s.cmd('bind').map((r) => r.conn)).toEqual([1, 1]);
    expect(s.opened).toBe(1);
  });

  it('malformed answers: EADDRNOTAVAIL with a message, and the connection still works after them', async () => {
    const garbage = [
      () => 'hello there',
      (r: Record<string, unknown>) => `{"v":1,"id":${r.id},"ok":true}`,
      (r: Record<string, unknown>) => `{"v":1,"id":${r.id},"ok":true,"result":{"port":70000}}`,
      (r: Record<string, unknown>) => `{"v":1,"id":${r.id},"ok":true,"result":{"port":20001}`,
      () => `${'['.repeat(100)}${']'.repeat(100)}`,
      (r: Record<string, unknown>) => `{"v":1,"id":${r.id},"ok":"yes"}`,
      (r: Record<string, unknown>) =>
        `{"v":1,"id":${r.id},"ok":false,"error":{"message":"no code"}}`,
      (r: Record<string, unknown>) => `{"v":1,"id":${r.id},"ok":true,"result":{"port":2e4}}`,
    ];
    const s = await serve((req, n) =>
      n <= garbage.length ? garbage[n - 1]!(req) : grant(req, 20001),
    );
    const ops = [...garbage.map(() => 'bind:tcp4:0.0.0.0:9000'), 'bind:tcp4:0.0.0.0:9000'];
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', 'tcp:9000'), ops);
    for (let i = 1; i <= garbage.length; i++) {
      expect(ev(run, i), `answer ${i}`).toMatchObject({ ok: false, errno: 'EADDRNOTAVAIL' });
      expect(ev(run, i).ms).toBeLessThan(500);
    }
    const lines = run.stderr.split('\n').filter((l) => l.startsWith('vpm: malformed answer'));
    expect(lines).toHaveLength(garbage.length);
    expect(lines[0]).toContain('not JSON: "hello there"');
    expect(ev(run, garbage.length + 1)).toMatchObject({ ok: true, port: 9000, reuseport: 1 });
    expect(s.opened).toBe(1);
  });

  it('survives 60 randomly mutated answers (seeded): every bind succeeds or fails with EADDRNOTAVAIL', async () => {
    const rng = new Rng(0x5eed);
    const alphabet = '{}[]":,0123456789-+.eEtrufalsn \\/ubv\u00e9\u2014x';
    const mutate = (line: string): string => {
      const c = [...line];
      for (let k = 1 + rng.int(4); k > 0; k--) {
        const at = rng.int(c.length + 1);
        const ch = alphabet[rng.int(alphabet.length)]!;
        const op = rng.int(4);
        if (op === 0) c.splice(at, 1);
        else if (op === 1) c.splice(at, 0, ch);
        else if (op === 2) c[Math.min(at, c.length - 1)] = ch;
        else c.length = at;
      }
      return c.join('');
    };
    const sent: string[] = [];
    const s = await serve((req) => {
      const line = mutate(grant(req, 20001));
      sent.push(line);
      return line;
    });
    const ops = Array.from({ length: 60 }, () => 'bind:tcp4:0.0.0.0:9000');
    const run = await runProbe(
      lab,
      ns,
      probe,
      libEnv(s.path, 'tenant-a', 'tcp:9000', { VPM_TIMEOUT_MS: '150' }),
      ops,
    );
    expect(run.exit, run.stderr).toEqual({ code: 0, signal: null });
    for (let i = 1; i <= ops.length; i++) {
      const b = ev(run, i);
      if (b.ok) expect(b.port, sent[i - 1]).toBe(9000);
      else expect(b.errno, sent[i - 1]).toBe('EADDRNOTAVAIL');
    }
    expect(run.events.at(-1)?.event).toBe('done');
    // Both kinds happened (this seed): the mutations are neither all harmless nor all fatal.
    const ok = run.events.filter((e) => e.event === 'bind' && e.ok).length;
    expect(ok).toBeGreaterThan(0);
    expect(ok).toBeLessThan(ops.length);
  });

  it("the daemon's refusals: ERR_PORTS_EXHAUSTED is EADDRINUSE, the others EADDRNOTAVAIL, with its message", async () => {
    const codes = [
      ['ERR_PORTS_EXHAUSTED', 'EADDRINUSE'],
      ['ERR_UNKNOWN_AID', 'EADDRNOTAVAIL'],
      ['ERR_NOT_MULTIPLEXED', 'EADDRNOTAVAIL'],
      ['ERR_BIND_ADDRESS', 'EADDRNOTAVAIL'],
      ['ERR_NO_POOL', 'EADDRNOTAVAIL'],
      ['ERR_SOMETHING_NEW', 'EADDRNOTAVAIL'],
    ] as const;
    const s = await serve((req, n) =>
      refuse(req, codes[n - 1]![0], `refusal ${n} \u2014 "quoted"\nsecond line \ud83d\ude00`),
    );
    const run = await runProbe(
      lab,
      ns,
      probe,
      libEnv(s.path, 'tenant-a', 'tcp:9000'),
      codes.map(() => 'bind:tcp4:0.0.0.0:9000'),
    );
    codes.forEach(([code, errno], k) => {
      expect(ev(run, k + 1), code).toMatchObject({ ok: false, errno });
      // The daemon's message, unescaped (UTF-8, one line), then what it means here.
      expect(run.stderr).toContain(
        `vpm: refusal ${k + 1} \u2014 "quoted" second line \ud83d\ude00 (${code}); bind of tcp 0.0.0.0:9000 fails with ${errno}`,
      );
    });
  });

  it('sends bind, release and connect as documented; getsockname shows the virtual port', async () => {
    let port = 20000;
    const s = await serve((req) =>
      req.cmd === 'bind'
        ? grant(req, ++port)
        : JSON.stringify({ v: 1, id: req.id, ok: true, result: { aid: 'x' } }),
    );
    const aid = 'ten"ant\\ \u00e9';
    const run = await runProbe(lab, ns, probe, libEnv(s.path, aid, 'tcp:9000,udp:5353'), [
      'bind:tcp4:0.0.0.0:9000', // 1: granted 20001
      'bind:tcp6:[::]:9000', // 2: granted 20002
      'bind:tcp6:[::ffff:198.18.0.1]:9000', // 3: granted 20003, sent as 198.18.0.1
      'bind:tcp4:198.18.7.7:9000', // 4: granted 20004, the real bind fails: released
      'bind:udp4:0.0.0.0:5353', // 5: granted 20005
      'bind:tcp4:0.0.0.0:9100', // 6: not multiplexed
      'connect:tcp4:198.18.0.1:9100', // 7: reported after connect, one-way
      'connect:tcp4:198.18.0.1:9000', // 8: announced before connect, answered
      'name:1',
      'close:1', // 10: release 20001
      'close:2', // 11: release 20002
    ]);
    expect(run.exit.code).toBe(0);
    const pid = ev(run, 1).pid;
    for (const [i, addr] of [
      [1, '0.0.0.0'],
      [2, '::'],
      [3, '::ffff:198.18.0.1'],
    ] as const)
      expect(ev(run, i)).toMatchObject({
        ok: true,
        port: 9000,
        addr,
        reuseport: 1,
        errnoKept: true,
      });
    expect(ev(run, 4)).toMatchObject({ ok: false, errno: 'EADDRNOTAVAIL' });
    expect(ev(run, 5)).toMatchObject({ ok: true, port: 5353, reuseport: 1 });
    expect(ev(run, 6)).toMatchObject({ ok: true, port: 9100, reuseport: 0 });
    expect(ev(run, 7)).toMatchObject({ ok: true });
    expect(ev(run, 8)).toMatchObject({ ok: false, errno: 'ECONNREFUSED' }); // nothing on real 9000
    expect(ev(run, 9)).toMatchObject({ ok: true, port: 9000 });

    const binds = s.cmd('bind').map((r) => r.req);
    expect(binds).toEqual([
      {
        v: 1,
        id: 1,
        cmd: 'bind',
        args: { aid, proto: 'tcp', vport: 9000, addr: '0.0.0.0', pid, fd: ev(run, 1).fd },
      },
      {
        v: 1,
        id: 2,
        cmd: 'bind',
        args: { aid, proto: 'tcp', vport: 9000, addr: '::', pid, fd: ev(run, 2).fd },
      },
      {
        v: 1,
        id: 3,
        cmd: 'bind',
        args: { aid, proto: 'tcp', vport: 9000, addr: '198.18.0.1', pid, fd: ev(run, 3).fd },
      },
      {
        v: 1,
        id: 4,
        cmd: 'bind',
        args: { aid, proto: 'tcp', vport: 9000, addr: '198.18.7.7', pid, fd: ev(run, 4).fd },
      },
      {
        v: 1,
        id: 6,
        cmd: 'bind',
        args: { aid, proto: 'udp', vport: 5353, addr: '0.0.0.0', pid, fd: ev(run, 5).fd },
      },
    ]);
    const releases = s.cmd('release').map((r) => r.req);
    expect(releases).toEqual([
      {
        v: 1,
        id: 5,
        cmd: 'release',
        oneway: true,
        args: { aid, proto: 'tcp', vport: 9000, port: 20004, pid, fd: ev(run, 4).fd },
      },
      {
        v: 1,
        id: expect.any(Number),
        cmd: 'release',
        oneway: true,
        args: { aid, proto: 'tcp', vport: 9000, port: 20001, pid, fd: ev(run, 1).fd },
      },
      {
        v: 1,
        id: expect.any(Number),
        cmd: 'release',
        oneway: true,
        args: { aid, proto: 'tcp', vport: 9000, port: 20002, pid, fd: ev(run, 2).fd },
      },
    ]);
    const connects = s.cmd('connect').map((r) => r.req);
    expect(connects).toEqual([
      {
        v: 1,
        id: expect.any(Number),
        cmd: 'connect',
        oneway: true,
        args: {
          aid,
          proto: 'tcp',
          local: `198.18.0.1:${ev(run, 7).port}`,
          remote: '198.18.0.1:9100',
          pid,
        },
      },
      {
        // Before the SYN: the socket got its port first, its address is not chosen yet.
        v: 1,
        id: expect.any(Number),
        cmd: 'connect',
        args: {
          aid,
          proto: 'tcp',
          local: `0.0.0.0:${ev(run, 8).port}`,
          remote: '198.18.0.1:9000',
          pid,
        },
      },
    ]);
    // Every line on one connection, which stays open until the process ends.
    expect(new Set(s.requests.map((r) => r.conn))).toEqual(new Set([1]));
    expect(s.opened).toBe(1);
  });

  it('IPv6: "::" with IPV6_V6ONLY says v6only, an IPv6 address goes as it is, getsockname shows 9000; connects report their IPv6 local address', async () => {
    let port = 20100;
    const s = await serve((req) =>
      req.cmd === 'bind'
        ? grant(req, ++port)
        : JSON.stringify({ v: 1, id: req.id, ok: true, result: { aid: 'x' } }),
    );
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'x', 'tcp:9000,udp:9000'), [
      'bind:tcp6o:[::]:9000', // 1: v6only, granted 20101
      `bind:tcp6:[${A6}]:9000`, // 2: an IPv6 address, granted 20102
      'name:1', // 3
      'name:2', // 4
      `bind:tcp6:[${A6}]:9100`, // 5: not multiplexed, untouched
      `connect:tcp6:[${A6}]:9100`, // 6: reported after connect, one-way
      `connect:tcp6:[${A6}]:9000`, // 7: announced before connect (nothing on real 9000)
      'connect:tcp6:[::ffff:198.18.0.1]:9000', // 8: v4-mapped: the remote as IPv4
      `connect:udp6:[${A6}]:9000`, // 9: UDP connect, reported with the chosen address
    ]);
    expect(run.exit.code).toBe(0);
    const pid = ev(run, 1).pid;
    expect(ev(run, 1)).toMatchObject({ ok: true, port: 9000, addr: '::', reuseport: 1 });
    expect(ev(run, 2)).toMatchObject({ ok: true, port: 9000, addr: A6, reuseport: 1 });
    expect(ev(run, 3)).toMatchObject({ ok: true, port: 9000 });
    expect(ev(run, 4)).toMatchObject({ ok: true, port: 9000 });
    expect(ev(run, 5)).toMatchObject({ ok: true, port: 9100, reuseport: 0 });
    expect(ev(run, 6)).toMatchObject({ ok: true });
    expect(ev(run, 7)).toMatchObject({ ok: false, errno: 'ECONNREFUSED' });
    expect(ev(run, 9)).toMatchObject({ ok: true });

    expect(s.cmd('bind').map((r) => r.req.args)).toEqual([
      { aid: 'x', proto: 'tcp', vport: 9000, addr: '::', v6only: true, pid, fd: ev(run, 1).fd },
      { aid: 'x', proto: 'tcp', vport: 9000, addr: A6, pid, fd: ev(run, 2).fd },
    ]);
    expect(s.cmd('connect').map((r) => [r.req.oneway, r.req.args])).toEqual([
      [
        true,
        {
          aid: 'x',
          proto: 'tcp',
          local: `[${A6}]:${ev(run, 6).port}`,
          remote: `[${A6}]:9100`,
          pid,
        },
      ],
      // Before the SYN: the wildcard of the socket's family, the address not chosen yet.
      [
        undefined,
        { aid: 'x', proto: 'tcp', local: `[::]:${ev(run, 7).port}`, remote: `[${A6}]:9000`, pid },
      ],
      [
        undefined,
        {
          aid: 'x',
          proto: 'tcp',
          local: `[::]:${ev(run, 8).port}`,
          remote: '198.18.0.1:9000',
          pid,
        },
      ],
      [
        undefined,
        {
          aid: 'x',
          proto: 'udp',
          local: `[${A6}]:${ev(run, 9).port}`,
          remote: `[${A6}]:9000`,
          pid,
          fd: ev(run, 9).fd,
        },
      ],
    ]);
  });

  it('a late answer to a timed-out bind is skipped by its id, and the port it granted is released', async () => {
    const s = await serve(
      (req, n) =>
        new Promise((resolve) => {
          if (n === 1) setTimeout(() => resolve(grant(req, 20007)), 500);
          else resolve(grant(req, 20008));
        }),
    );
    const run = await runProbe(
      lab,
      ns,
      probe,
      libEnv(s.path, 'tenant-a', 'tcp:9000', { VPM_TIMEOUT_MS: '300' }),
      ['bind:tcp4:0.0.0.0:9000', 'sleep:400', 'bind:tcp4:0.0.0.0:9000', 'name:3'],
    );
    expect(ev(run, 1)).toMatchObject({ ok: false, errno: 'EADDRNOTAVAIL' });
    expect(ev(run, 3)).toMatchObject({ ok: true, port: 9000 });
    const releases = s.cmd('release').map((r) => r.req.args);
    expect(releases).toEqual([
      {
        aid: 'tenant-a',
        proto: 'tcp',
        vport: 9000,
        port: 20007,
        pid: ev(run, 1).pid,
        fd: ev(run, 1).fd,
      },
    ]);
    expect(s.opened).toBe(1);
  });

  it('fork: the child asks on its own connection, the inherited one stays open; close-all spares it', async () => {
    let port = 20010;
    const s = await serve((req) => grant(req, ++port));
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', 'tcp:9000'), [
      'bind:tcp4:0.0.0.0:9000', // 1: parent, connection 1
      'fork',
      'name:1', // 3: the inherited socket still says 9000 in the child
      'bind:tcp4:0.0.0.0:9000', // 4: the child's own bind, connection 2
      'close:1', // 5: closing the inherited copy releases nothing
      'closeall', // 6: the inherited control connection survives this too
      'endfork',
      'name:1', // 8: the parent's socket is unchanged
      'closeall', // 9: the parent's control connection survives
      'bind:tcp4:0.0.0.0:9000', // 10: still on connection 1
    ]);
    expect(run.exit.code).toBe(0);
    const parent = ev(run, 1).pid;
    const child = ev(run, 3).pid;
    expect(child).not.toBe(parent);
    expect(ev(run, 3)).toMatchObject({ ok: true, port: 9000 });
    expect(ev(run, 4)).toMatchObject({ ok: true, port: 9000 });
    expect(ev(run, 2, 'forked')).toMatchObject({ status: 0 });
    expect(ev(run, 8)).toMatchObject({ ok: true, port: 9000 });
    expect(ev(run, 10)).toMatchObject({ ok: true, port: 9000 });
    const binds = s.cmd('bind');
    expect(binds.map((b) => [b.conn, (b.req.args as { pid: number }).pid])).toEqual([
      [1, parent],
      [2, child],
      [1, parent],
    ]);
    // The inherited socket's registration (20011) is the parent's: the child's
    // close of it released nothing; its close-all released only its own port.
    const released = s
      .cmd('release')
      .map((r) => [(r.req.args as { pid: number }).pid, (r.req.args as { port: number }).port]);
    expect(released).toEqual([
      [child, 20012],
      [parent, 20011],
    ]);
    // The child's connection closed with the child; the parent's only at its exit.
    expect(s.opened).toBe(2);
  });

  it('16 threads binding at once share the one connection, each gets its own answer', async () => {
    const s = await serve((req) => grant(req, 20100 + Number(req.id)));
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', 'tcp:9000'), [
      'threads:16:tcp4:0.0.0.0:9000',
    ]);
    const binds = run.events.filter((e) => e.event === 'bind');
    expect(binds).toHaveLength(16);
    for (const b of binds) expect(b).toMatchObject({ ok: true, port: 9000 });
    const reqs = s.cmd('bind');
    expect(reqs).toHaveLength(16);
    expect(new Set(reqs.map((r) => r.req.id)).size).toBe(16);
    expect(new Set(reqs.map((r) => r.conn))).toEqual(new Set([1]));
    expect(new Set(reqs.map((r) => (r.req.args as { fd: number }).fd))).toEqual(
      new Set(binds.map((b) => b.fd)),
    );
  });

  describe('a daemon that restarts (its next one recovers the registrations)', () => {
    /** Grants ports from 20001 up and answers connect reports, as the daemon. */
    const daemonLike = () => {
      let port = 20000;
      return (req: Record<string, unknown>) =>
        req.cmd === 'bind'
          ? grant(req, ++port)
          : JSON.stringify({ v: 1, id: req.id, ok: true, result: { aid: 'tenant-a' } });
    };

    /** The probe with `ops`, its stdin a pipe: each `wait` goes on at a line from us. */
    const start = (path: string, ops: string[]) => {
      const child = lab.spawn(ns, probe, ops, {
        env: libEnv(path, 'tenant-a', 'tcp:9000,udp:5353', { VPM_DEBUG: '1' }),
        stdin: 'pipe',
      });
      const events = () => jsonLines(lab.output(child).stdout) as unknown as ProbeEvent[];
      const at = async (i: number): Promise<ProbeEvent> => {
        await waitFor(() => events().some((e) => e.i === i), {
          what: `the probe's event ${i}\n${lab.output(child).stderr}`,
          timeoutMs: 15_000,
        });
        return events().find((e) => e.i === i)!;
      };
      return { child, at, go: () => child.stdin!.write('\n') };
    };

    const argsOf = (r: { req: Record<string, unknown> }) => r.req.args as Record<string, unknown>;

    it('a close after the restart releases on a new connection: the bound port and the UDP report', async () => {
      const path = join(dir, `ctl${++sockN}.sock`);
      const first = await StandIn.start(path, daemonLike());
      const p = start(path, [
        'bind:tcp4:0.0.0.0:9000', // 1: port 20001, on connection 1
        'udp4', // 2
        'sendon:2:198.18.0.1:5353:1', // 3: reported as a UDP client first
        'wait', // 4
        'close:1', // 5: the daemon is another one now
        'close:2', // 6
        'wait', // 7
      ]);
      const bound = await p.at(1);
      const udp = await p.at(2);
      await p.at(4);
      expect(first.requests.map((r) => [r.conn, r.req.cmd])).toEqual([
        [1, 'bind'],
        [1, 'connect'],
      ]);
      // kill -9 of the daemon: its end of the connection closes; a new daemon
      // listens on the same path. The idle program notices nothing.
      await first.close();
      const second = await StandIn.start(path, daemonLike());
      standIn = second;
      expect(second.opened).toBe(0);
      p.go();
      await p.at(7);
      await waitFor(() => second.cmd('release').length === 2, {
        what: 'two releases at the new daemon',
      });
      const pid = bound.pid;
      expect(second.requests.map((r) => [r.conn, r.req.cmd, r.req.oneway])).toEqual([
        [1, 'release', true],
        [1, 'release', true],
      ]);
      expect(argsOf(second.requests[0]!)).toEqual({
        aid: 'tenant-a',
        proto: 'tcp',
        vport: 9000,
        port: 20001,
        pid,
        fd: bound.fd,
      });
      expect(argsOf(second.requests[1]!)).toEqual({
        aid: 'tenant-a',
        proto: 'udp',
        pid,
        fd: udp.fd,
      });
      expect(lab.output(p.child).stderr).toContain(
        'control connection closed by the daemon: release again on a new one',
      );
      p.go(); // past the last wait: the probe exits
      expect((await lab.exited(p.child)).code).toBe(0);
    });

    it('a close while no daemon is there is kept, and goes first on the next connection', async () => {
      const path = join(dir, `ctl${++sockN}.sock`);
      const first = await StandIn.start(path, daemonLike());
      const p = start(path, [
        'bind:tcp4:0.0.0.0:9000', // 1: port 20001
        'wait', // 2
        'close:1', // 3: no daemon at all
        'wait', // 4
        'bind:tcp4:0.0.0.0:9000', // 5: the new daemon: the kept release goes before this bind
        'wait', // 6
      ]);
      const bound = await p.at(1);
      await p.at(2);
      await first.close();
      p.go();
      await p.at(4);
      expect(lab.output(p.child).stderr).toContain(
        'no daemon: release kept for the next connection',
      );
      const second = await StandIn.start(path, daemonLike());
      standIn = second;
      p.go();
      expect(await p.at(5)).toMatchObject({ ok: true, port: 9000 });
      await p.at(6);
      expect(second.requests.map((r) => [r.conn, r.req.cmd])).toEqual([
        [1, 'release'],
        [1, 'bind'],
      ]);
      expect(argsOf(second.requests[0]!)).toMatchObject({
        port: 20001,
        pid: bound.pid,
        fd: bound.fd,
      });
      p.go(); // past the last wait: the probe exits
      expect((await lab.exited(p.child)).code).toBe(0);
    });
  });

  it('without VPM_SOCKET and VPM_AID the library intercepts nothing', async () => {
    const run = await runProbe(
      lab,
      ns,
      probe,
      { ...process.env, LD_PRELOAD: PRELOAD_LIB, VPM_PORTS: 'tcp:9000' },
      ['bind:tcp4:0.0.0.0:9000', 'name:1'],
    );
    expect(ev(run, 1)).toMatchObject({ ok: true, port: 9000, reuseport: 0 });
    expect(run.stderr).toBe('');
  });
});
