/*
 * The interception library and UDP, against a stand-in control server in this
 * test process: a UDP socket that sends to a multiplexed UDP port (sendto,
 * sendmsg, sendmmsg) or connects to one is reported once, before its first
 * datagram leaves, with its local address:port, its pid and fd; its close (or
 * the loss of its port) ends the report; nothing else is reported or delayed.
 * A UDP server socket's bind of 9000 is a "udp" bind, and its close releases.
 * The programs are the C probe (fixtures/sockprobe.c) under LD_PRELOAD and a
 * UDP sink (fixtures/udp-sink.py) that prints each datagram as it arrives.
 *
 *   test process                       ns p (lo up; 198.18.0.1/32, 198.18.0.3/32 on lo)
 *  ┌─────────────────────────┐  unix  ┌─────────────────────────────────────────────┐
 *  │ stand-in control server │◄───────│ sockprobe + libvpm_preload.so               │
 *  │ (records, answers late) │ socket │   │ UDP (loopback)                           │
 *  └─────────────────────────┘        │   ▼                                          │
 *                                     │ udp-sink.py on .1:9000 .1:9100 .3:5353 .1:5353│
 *                                     └─────────────────────────────────────────────┘
 *
 * The end-to-end behaviour with the real daemon and TUN is in
 * test/integration/exec-udp.test.ts.
 */

import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import { jsonLines, waitJsonEvent } from '../support/vpm.js';
import {
  compileProbe,
  ev,
  FIXTURES,
  grant,
  libEnv,
  type ProbeEvent,
  requirePreload,
  runProbe,
  StandIn,
} from './helpers.js';

const A1 = '198.18.0.1';
const A3 = '198.18.0.3';
const PORTS = 'tcp:9000,udp:9000,udp:5353';

interface Datagram {
  to: string;
  from: string;
  data: string;
}

/** The probe's events as they come, with the UDP-specific fields. */
type UdpEvent = ProbeEvent & { sent?: number; allMs?: number; from?: string; data?: string };

const okAnswer = (req: Record<string, unknown>): string =>
  JSON.stringify({ v: 1, id: req.id, ok: true, result: { aid: 'tenant-a' } });

describe('libvpm_preload: UDP clients against a stand-in control server', () => {
  let lab: NetLab;
  let ns: string;
  let dir: string;
  let probe: string;
  let sink: ChildProcess;
  let standIn: StandIn | null = null;
  let sockN = 0;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'gcc', 'python3');
    requirePreload();
    lab = new NetLab('preloadudp');
    ns = lab.namespace('p');
    lab.run(ns, 'ip', ['addr', 'add', `${A1}/32`, 'dev', 'lo']);
    lab.run(ns, 'ip', ['addr', 'add', `${A3}/32`, 'dev', 'lo']);
    dir = lab.tempDir();
    probe = compileProbe(dir);
    sink = lab.spawn(ns, 'python3', [
      '-u',
      join(FIXTURES, 'udp-sink.py'),
      JSON.stringify([`${A1}:9000`, `${A1}:9100`, `${A3}:5353`, `${A1}:5353`]),
    ]);
    await waitJsonEvent(lab, sink, 'ready', 10_000);
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

  /** Datagrams the sink printed so far. */
  const received = (): Datagram[] =>
    jsonLines(lab.output(sink).stdout).filter(
      (e) => e.event === 'datagram',
    ) as unknown as Datagram[];

  /** Datagrams that arrived after the first `skip`, from port `port`. */
  const fromPort = (skip: number, port: number): Datagram[] =>
    received()
      .slice(skip)
      .filter((d) => d.from.endsWith(`:${port}`));

  it('the first datagram of a socket waits for the report, which names its local port; 49 more ask nothing', async () => {
    const before = received().length;
    /** What the sink had received from the probe when the report came, and 300 ms later. */
    const seenAtReport: number[] = [];
    const s = await serve(async (req) => {
      if (req.cmd !== 'connect') return null;
      seenAtReport.push(received().length - before);
      await new Promise((r) => setTimeout(r, 300));
      seenAtReport.push(received().length - before);
      return okAnswer(req);
    });
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', PORTS), [
      `sendto:udp4:${A1}:9000:50`, // 1: an unbound socket, 50 sendto()s to a multiplexed port
      `sendon:1:${A1}:9100:1`, // 2: not multiplexed: nothing to report
      `sendon:1:${A3}:5353:3`, // 3: another multiplexed destination: the socket is known
    ]);
    expect(run.exit, run.stderr).toEqual({ code: 0, signal: null });
    const send = ev(run, 1) as UdpEvent;
    expect(send).toMatchObject({ ok: true, sent: 50, addr: '0.0.0.0' });
    // The datagram left only after the answer: the sink had nothing of it when
    // the report came, nor 300 ms later; the first sendto() took those 300 ms.
    expect(seenAtReport).toEqual([0, 0]);
    expect(send.ms).toBeGreaterThanOrEqual(295);
    await waitFor(() => fromPort(before, send.port!).length === 54, {
      what: 'the 54 datagrams at the sink',
    });
    const got = fromPort(before, send.port!);
    expect(got.filter((d) => d.to === `${A1}:9000`).map((d) => d.data)).toEqual(
      Array.from({ length: 50 }, (_, k) => `probe ${k}`),
    );
    expect(got.filter((d) => d.to === `${A1}:9100`)).toHaveLength(1);
    expect(got.filter((d) => d.to === `${A3}:5353`)).toHaveLength(3);
    // One report for the socket, with the port its datagrams came from.
    expect(s.cmd('connect').map((r) => r.req)).toEqual([
      {
        v: 1,
        id: 1,
        cmd: 'connect',
        args: {
          aid: 'tenant-a',
          proto: 'udp',
          local: `0.0.0.0:${send.port}`,
          remote: `${A1}:9000`,
          pid: send.pid,
          fd: send.fd,
        },
      },
    ]);
    expect(s.requests).toHaveLength(1);
  });

  it('sendmsg, sendmmsg and connect report once per socket; close ends the report; other ports are left alone', async () => {
    const s = await serve((req) => okAnswer(req));
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', PORTS), [
      'udp4', // 1
      `sendmsg:1:${A1}:9000`, // 2: reported (unbound: wildcard, port chosen first)
      `sendmmsg:1:${A3}:5353:4`, // 3: the same socket: not again
      'udp4', // 4
      `sendmmsg:4:${A1}:5353:3`, // 5: reported
      `connect:udp4:${A1}:9000`, // 6: reported after connect(), with the address it chose
      'send:6', // 7: nothing more
      `connect:udp4:${A1}:9100`, // 8: not multiplexed
      'send:8', // 9
      `sendto:udp4:${A1}:9100:3`, // 10: not multiplexed
      'close:1', // 11: ends socket 1's report
      'close:6', // 12: ends socket 6's report
      'close:8', // 13: never reported: nothing
    ]);
    expect(run.exit, run.stderr).toEqual({ code: 0, signal: null });
    const pid = ev(run, 1).pid;
    for (const i of [2, 3, 5, 6, 7, 9, 10])
      expect(ev(run, i), `argument ${i}`).toMatchObject({ ok: true });
    expect(ev(run, 3) as UdpEvent).toMatchObject({ sent: 4 });
    expect(ev(run, 5) as UdpEvent).toMatchObject({ sent: 3 });
    const p1 = ev(run, 2).port!;
    const p4 = ev(run, 5).port!;
    const p6 = ev(run, 6).port!;
    expect(ev(run, 6)).toMatchObject({ addr: A1 });
    const args = (fd: number, local: string, remote: string) => ({
      aid: 'tenant-a',
      proto: 'udp',
      local,
      remote,
      pid,
      fd,
    });
    expect(s.cmd('connect').map((r) => [r.req.oneway, r.req.args])).toEqual([
      [undefined, args(ev(run, 1).fd!, `0.0.0.0:${p1}`, `${A1}:9000`)],
      [undefined, args(ev(run, 4).fd!, `0.0.0.0:${p4}`, `${A1}:5353`)],
      [undefined, args(ev(run, 6).fd!, `${A1}:${p6}`, `${A1}:9000`)],
    ]);
    expect(s.cmd('release').map((r) => [r.req.oneway, r.req.args])).toEqual([
      [true, { aid: 'tenant-a', proto: 'udp', pid, fd: ev(run, 1).fd }],
      [true, { aid: 'tenant-a', proto: 'udp', pid, fd: ev(run, 6).fd }],
    ]);
    expect(s.cmd('bind')).toEqual([]);
    // Every datagram arrived from the port that was reported for its socket.
    // The sink reads its sockets in the order the kernel reports them ready,
    // not the order they were sent: wait for both sockets' datagrams.
    const from6 = () => received().filter((d) => d.from === `${A1}:${p6}` && d.data === 'probe');
    await waitFor(
      () => received().filter((d) => d.from.endsWith(`:${p4}`)).length === 3 && from6().length > 0,
      { what: "socket 4's and socket 6's datagrams" },
    );
    expect(from6()).toHaveLength(1);
  });

  it('a socket that loses its port (connect AF_UNSPEC) or its descriptor (closed behind our back) is reported anew', async () => {
    const s = await serve((req) => okAnswer(req));
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', PORTS), [
      `connect:udp4:${A1}:9000`, // 1: reported with its connected address
      'disconnect:1', // 2: the kernel takes its port back: the report ends
      `sendon:1:${A1}:9000:2`, // 3: a new port, reported again
      'rawclose:1', // 4: closed without close()
      'udp4', // 5: the same number, a new socket: the stale report ends
      `sendon:5:${A1}:9000:1`, // 6: reported
    ]);
    expect(run.exit, run.stderr).toEqual({ code: 0, signal: null });
    const pid = ev(run, 1).pid;
    const fd = ev(run, 1).fd!;
    expect(ev(run, 2)).toMatchObject({ ok: true, port: 0 });
    expect(ev(run, 5).fd).toBe(fd);
    const ports = [ev(run, 1).port, ev(run, 3).port, ev(run, 6).port];
    expect(s.cmd('connect').map((r) => (r.req.args as { local: string }).local)).toEqual([
      `${A1}:${ports[0]}`,
      `0.0.0.0:${ports[1]}`,
      `0.0.0.0:${ports[2]}`,
    ]);
    // In order on the one connection: each release before the report that follows it.
    expect(s.requests.map((r) => r.req.cmd)).toEqual([
      'connect',
      'release',
      'connect',
      'release',
      'connect',
    ]);
    for (const r of s.cmd('release'))
      expect(r.req.args).toEqual({ aid: 'tenant-a', proto: 'udp', pid, fd });
  });

  it('fork: the child sends on an inherited socket without asking, and its close of it ends nothing', async () => {
    const s = await serve((req) => okAnswer(req));
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', PORTS), [
      `sendto:udp4:${A1}:9000:1`, // 1: the parent reports its socket (connection 1)
      'fork',
      `sendon:1:${A1}:9000:2`, // 3: the child, on the inherited socket: known already
      `sendto:udp4:${A1}:5353:1`, // 4: the child's own socket: reported on its own connection
      'close:1', // 5: the inherited socket's report is the parent's: it stays
      'endfork',
      `sendon:1:${A1}:9000:1`, // 7: the parent: still known
      'close:1', // 8: the parent's close ends it
    ]);
    expect(run.exit, run.stderr).toEqual({ code: 0, signal: null });
    const parent = ev(run, 1).pid;
    const child = ev(run, 3).pid;
    expect(child).not.toBe(parent);
    const who = (r: { conn: number; req: Record<string, unknown> }) => [
      r.conn,
      r.req.cmd,
      (r.req.args as { pid: number }).pid,
    ];
    expect(s.requests.map(who)).toEqual([
      [1, 'connect', parent],
      [2, 'connect', child],
      [1, 'release', parent],
    ]);
  });

  it('a UDP server socket: bind 9000 is a udp bind (SO_REUSEPORT, getsockname 9000); its close releases the port, and its client report with it', async () => {
    const s = await serve((req) => (req.cmd === 'bind' ? grant(req, 20031) : okAnswer(req)));
    const run = await runProbe(lab, ns, probe, libEnv(s.path, 'tenant-a', PORTS), [
      'bind:udp4:0.0.0.0:9000', // 1: granted 20031
      'name:1', // 2: 9000
      `sendon:1:${A3}:5353:2`, // 3: the server is also a client of a UDP service: reported
      'close:1', // 4: one release, with the port: it ends the registration and the report
      'bind:udp4:0.0.0.0:9200', // 5: not multiplexed
    ]);
    expect(run.exit, run.stderr).toEqual({ code: 0, signal: null });
    const pid = ev(run, 1).pid;
    const fd = ev(run, 1).fd!;
    expect(ev(run, 1)).toMatchObject({ ok: true, port: 9000, reuseport: 1 });
    expect(ev(run, 2)).toMatchObject({ ok: true, port: 9000 });
    expect(ev(run, 3)).toMatchObject({ ok: true, port: 9000 }); // getsockname, still
    expect(ev(run, 5)).toMatchObject({ ok: true, port: 9200, reuseport: 0 });
    // The datagrams left from the real port.
    await waitFor(() => received().some((d) => d.from === `${A3}:20031`), {
      what: 'the datagrams from port 20031',
    });
    expect(s.requests.map((r) => [r.req.cmd, r.req.oneway ?? false, r.req.args])).toEqual([
      ['bind', false, { aid: 'tenant-a', proto: 'udp', vport: 9000, addr: '0.0.0.0', pid, fd }],
      [
        'connect',
        false,
        {
          aid: 'tenant-a',
          proto: 'udp',
          local: '0.0.0.0:20031',
          remote: `${A3}:5353`,
          pid,
          fd,
        },
      ],
      ['release', true, { aid: 'tenant-a', proto: 'udp', vport: 9000, port: 20031, pid, fd }],
    ]);
  });

  it('no daemon, or one that never answers: datagrams still go; a silent daemon delays only the first', async () => {
    const before = received().length;
    const nobody = join(dir, 'nobody.sock');
    const dead = await runProbe(lab, ns, probe, libEnv(nobody, 'tenant-a', PORTS), [
      `sendto:udp4:${A1}:9000:20`,
    ]);
    expect(dead.exit.code).toBe(0);
    expect(ev(dead, 1) as UdpEvent).toMatchObject({ ok: true, sent: 20 });
    expect(ev(dead, 1).ms).toBeLessThan(200);
    await waitFor(() => fromPort(before, ev(dead, 1).port!).length === 20, {
      what: 'the datagrams sent without a daemon',
    });

    const s = await serve(() => null);
    const silent = await runProbe(
      lab,
      ns,
      probe,
      libEnv(s.path, 'tenant-a', PORTS, { VPM_TIMEOUT_MS: '300' }),
      [`sendto:udp4:${A1}:9000:20`],
    );
    const send = ev(silent, 1) as UdpEvent;
    expect(send).toMatchObject({ ok: true, sent: 20 });
    expect(send.ms).toBeGreaterThanOrEqual(295);
    // The daemon took the line: the socket counts as reported, the loop asks no more.
    expect(s.cmd('connect')).toHaveLength(1);
    await waitFor(() => fromPort(before, send.port!).length === 20, {
      what: 'the datagrams sent past a silent daemon',
    });
  });
});
