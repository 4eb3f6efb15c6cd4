/**
 * Handing a live TUN device from one process to another (src/tun/handover.ts,
 * native/src/handover.c, tunAdopt in native/src/tun_napi.c), on the real kernel:
 *
 *     namespace vpmt-…-handover-N
 *     ┌──────────────────────────────────────────────────────────────────────┐
 *     │ udp burst / ping ── 198.18.10.1 ──► route 198.18.11.0/24 ──► vpmX     │
 *     │                                                       │              │
 *     │  sender (openTun, reads) ── fd over handover.sock ──► receiver        │
 *     │  exits                                                 adoptTun, reads│
 *     └──────────────────────────────────────────────────────────────────────┘
 *
 * The sender reads a first burst, stops, hands its fd over and exits; a second
 * burst is sent while nobody reads; the receiver adopts the fd and must read
 * exactly that second burst (queued by the kernel, none lost), and answer ping
 * through the adopted device. Then the refusals of tunAdopt, with TUNs made by
 * openTun and by a small Python program (test/tun/fixtures/tun-maker.py) for the
 * kinds openTun never makes, and the socket protocol's errors with a hand-made
 * client (test/tun/fixtures/handover-raw.py) and with processes of another uid.
 * Everything runs inside namespaces and temporary directories the labs remove.
 */

import type { ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNative } from '../../src/native/index.js';
import {
  closeFd,
  HANDOVER_MAX_META,
  HandoverError,
  listenForHandover,
  sendHandover,
} from '../../src/tun/handover.js';
import { NetLab, requireCommands, requireRoot } from '../support/netns.js';
import {
  events,
  type FixtureEvent,
  type FixtureOptions,
  fixtureEnv,
  HANDOVER_FIXTURE,
  LOADER,
  spawnTunFixture,
  waitEvent,
} from './fixture.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
const TUN_MAKER = `${FIXTURES}tun-maker.py`;
const RAW_CLIENT = `${FIXTURES}handover-raw.py`;
const NOBODY = 65534;
const ENOTTY = 25;
const EBADF = 9;
const EBADFD = 77;
const EEXIST = 17;
const ENOENT = 2;
const EACCES = 13;
const ECONNREFUSED = 111;
const ENAMETOOLONG = 36;

/** Numbered UDP datagrams ("vpm-seq:N", port 9) to 198.18.11.2, one after the other. */
const BURST = `
const s = require('node:dgram').createSocket('udp4');
const [from, count] = process.argv.slice(1).map(Number);
let i = 0;
const next = () => {
  if (i === count) return s.close();
  s.send('vpm-seq:' + (from + i++), 9, '198.18.11.2', (e) => { if (e) throw e; next(); });
};
next();
`;

const range = (from: number, to: number): number[] =>
  Array.from({ length: to - from }, (_, i) => from + i);
const sorted = (xs: unknown): number[] => [...(xs as number[])].sort((a, b) => a - b);

function fixture(
  lab: NetLab,
  ns: string,
  role: string,
  arg: unknown,
  opts: FixtureOptions = {},
): ChildProcess {
  return spawnTunFixture(lab, ns, role, arg, { ...opts, script: HANDOVER_FIXTURE });
}

/** The error `fn` throws (the test fails if it returns). */
function thrown(fn: () => unknown): Error & { code?: string; errno?: number; syscall?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error, and none was thrown');
}

describe('TUN handover: a live device from one process to another', () => {
  let lab: NetLab;
  let n = 0;

  beforeAll(() => {
    requireRoot();
    requireCommands('ip', 'ping', 'python3');
    lab = new NetLab('handover');
  });
  afterAll(async () => {
    await lab?.cleanup();
  });

  function linkExists(ns: string, name: string): boolean {
    try {
      lab.run(ns, 'ip', ['link', 'show', 'dev', name]);
      return true;
    } catch {
      return false;
    }
  }

  it.each([false, true])(
    'vnetHdr %s: the receiver reads what was queued while nobody read, after the sender exited, and answers ping',
    async (vnetHdr) => {
      const ns = lab.namespace(`h${n++}`, { ipv6: false });
      const path = join(lab.tempDir(), 'handover.sock');
      const sender = fixture(lab, ns, 'sender', { path, vnetHdr, expect: 10 }, { stdin: 'pipe' });
      const ready = await waitEvent(lab, sender, 'ready');
      expect(ready).toMatchObject({ vnetHdr, multiQueue: false, headroom: vnetHdr ? 10 : 0 });
      const name = ready.name as string;

      lab.run(ns, process.execPath, ['-e', BURST, '0', '10']);
      const before = await waitEvent(lab, sender, 'seen');
      expect(sorted(before.seqs)).toEqual(range(0, 10));

      const receiver = fixture(
        lab,
        ns,
        'receiver',
        { path, timeoutMs: 30_000, expect: 20 },
        { stdin: 'pipe' },
      );
      await waitEvent(lab, receiver, 'listening');
      sender.stdin!.write('handover\n');
      await waitEvent(lab, sender, 'sent');
      expect(await lab.exited(sender)).toEqual({ code: 0, signal: null });

      const received = await waitEvent(lab, receiver, 'received');
      expect(received).toMatchObject({
        cloexec: true,
        iff: name, // the fd is attached to the sender's device
        meta: {
          tun: { name, vnetHdr, multiQueue: false, offload: ready.offload },
          from: sender.pid,
          seqs: 10,
        },
      });
      // The device outlived the process that opened it: the fd in the receiver keeps it.
      expect(linkExists(ns, name)).toBe(true);

      // Nobody reads now: the kernel queues these on the device.
      lab.run(ns, process.execPath, ['-e', BURST, '10', '20']);
      receiver.stdin!.write('adopt\n');
      const adopted = await waitEvent(lab, receiver, 'adopted');
      expect(adopted).toEqual({
        event: 'adopted',
        name,
        headroom: vnetHdr ? 10 : 0,
        offload: ready.offload,
      });
      const after = await waitEvent(lab, receiver, 'seen');
      // Exactly the second burst: none lost, none read twice, none of the first.
      expect(sorted(after.seqs)).toEqual(range(10, 30));

      // And the adopted device writes: the receiver answers ping for 198.18.11.2.
      const ping = lab.run(ns, 'ping', ['-n', '-c', '3', '-i', '0.2', '-W', '5', '198.18.11.2']);
      expect(ping).toMatch(/3 packets transmitted, 3 received/);
      receiver.stdin!.write('stats\n');
      expect(await waitEvent(lab, receiver, 'stats')).toMatchObject({
        seqs: 20,
        echoed: 3,
        writeErrors: 0,
      });

      receiver.stdin!.write('quit\n');
      expect(await lab.exited(receiver)).toEqual({ code: 0, signal: null });
      // Its last fd closed with the receiver: the device is gone (it is not persistent).
      expect(linkExists(ns, name)).toBe(false);
    },
  );

  it('refuses to adopt what is not a TUN as openTun opens it (ERR_TUN_ADOPT), and leaves the fd usable', async () => {
    const ns = lab.namespace(`r${n++}`, { ipv6: false });
    const child = fixture(lab, ns, 'refusals', { dir: lab.tempDir() });
    const report = (await waitEvent(lab, child, 'report')) as Record<string, FixtureEvent>;
    const notTun = {
      ok: false,
      name: 'TunError',
      code: 'ERR_TUN_ADOPT',
      syscall: 'ioctl(TUNGETIFF)',
    };
    expect(report.pipe).toMatchObject({ ...notTun, errno: ENOTTY });
    expect(report.pipe!.message).toMatch(
      /^cannot adopt fd \d+ as a TUN device: fd \d+ is a pipe or FIFO, not a TUN device$/,
    );
    expect(report.devNull).toMatchObject({ ...notTun, errno: ENOTTY });
    expect(report.devNull!.message).toMatch(/is character device 1:3, not a TUN device/);
    expect(report.socket).toMatchObject({ ...notTun, errno: ENOTTY });
    expect(report.socket!.message).toMatch(/is a socket, not a TUN device/);
    expect(report.unattached).toMatchObject({ ...notTun, errno: EBADFD });
    expect(report.unattached!.message).toMatch(/is \/dev\/net\/tun but attached to no device/);
    expect(report.notOpen).toMatchObject({ ...notTun, errno: EBADF });
    expect(report.notOpen!.message).toMatch(/fd 987 is not open/);

    const differs = { ok: false, name: 'TunError', code: 'ERR_TUN_ADOPT' };
    expect(report.vnetExpected).toMatchObject(differs);
    expect(report.vnetExpected!.message).toMatch(
      /: vpmho0 has no virtio-net headers \(IFF_VNET_HDR\) but vnetHdr is true$/,
    );
    expect(report.vnetUnexpected!.message).toMatch(
      /: vpmho1 has virtio-net headers \(IFF_VNET_HDR\) but vnetHdr is false$/,
    );
    expect(report.multiQueueUnexpected!.message).toMatch(
      /: vpmho2 is multi-queue \(IFF_MULTI_QUEUE\) but multiQueue is false$/,
    );
    expect(report.multiQueueExpected!.message).toMatch(
      /: vpmho0 is single-queue \(IFF_MULTI_QUEUE\) but multiQueue is true$/,
    );
    expect(report.offloadWithoutVnet).toMatchObject({ ok: false, code: 'ERR_TUN_OPTION' });
    // The device refused so often is untouched: still attached, still its opener's.
    expect(report.after).toMatchObject({ plain: 'vpmho0', fdinfo: { iff: 'vpmho0' } });
    expect(await lab.exited(child)).toEqual({ code: 0, signal: null });
  });

  it.each([
    ['plain', null],
    ['vnet', null],
    ['pi', /: vpmmk0 prepends packet information \(opened without IFF_NO_PI\)$/],
    ['tap', /: vpmmk0 is a TAP device \(IFF_TAP\), not a TUN$/],
    ['napi', /: vpmmk0 has flags vpm never sets: IFF_NAPI$/],
    ['detached', /: fd \d+ is a detached queue of vpmmk0 \(TUNSETQUEUE IFF_DETACH_QUEUE\)$/],
    ['hdr12', /: vpmmk0 has 12-byte virtio-net headers \(TUNSETVNETHDRSZ\), vpm uses 10$/],
    ['notle', /: vpmmk0 has virtio-net headers that are not little-endian/],
    ['otherns', /: vpmmk0 is in another network namespace than this process$/],
  ] as const)('a TUN made by another program, %s: %s', async (kind, refusal) => {
    const ns = lab.namespace(`m${n++}`, { ipv6: false });
    const extra =
      kind === 'otherns' ? [`/run/netns/${lab.namespace(`o${n++}`, { ipv6: false })}`] : [];
    const child = lab.spawn(
      ns,
      'python3',
      [TUN_MAKER, kind, process.execPath, LOADER, HANDOVER_FIXTURE, ...extra],
      { env: fixtureEnv() },
    );
    const exit = await lab.exited(child);
    const out = events(lab, child);
    expect(exit, lab.output(child).stderr).toEqual({ code: 0, signal: null });
    if (refusal === null) {
      expect(out).toEqual([
        {
          event: 'adopted',
          name: 'vpmmk0',
          headroom: kind === 'vnet' ? 10 : 0,
          cloexec: true,
          iff: 'vpmmk0',
        },
      ]);
    } else {
      expect(out).toHaveLength(1);
      expect(out[0]).toMatchObject({ event: 'refused', code: 'ERR_TUN_ADOPT', name: 'TunError' });
      expect(out[0]!.message).toMatch(refusal);
    }
  });
});

describe('TUN handover: the socket, its messages and who may take part', () => {
  let lab: NetLab;
  let ns: string;
  let dir: string;
  let k = 0;

  beforeAll(() => {
    requireRoot();
    requireCommands('ip', 'python3', 'setpriv');
    lab = new NetLab('hosock');
    ns = lab.namespace('s', { ipv6: false });
    dir = lab.tempDir();
  });
  afterAll(async () => {
    await lab?.cleanup();
  });

  const sock = (): string => join(dir, `h${k++}.sock`);

  /** A socket file at `path` that nobody listens on any more. */
  function staleSocket(path: string): void {
    closeFd(loadNative().handoverListen(path));
  }

  it('listens with mode 0600 and replaces a stale socket, never a file that is not a socket', () => {
    const path = sock();
    const l = listenForHandover(path);
    const st = statSync(path);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    l.close();
    expect(() => statSync(path)).toThrow(/ENOENT/);
    l.close(); // idempotent

    // A stale socket refuses connections; the one that replaces it takes them (and never acknowledges).
    staleSocket(path);
    expect(thrown(() => sendHandover(path, 0, {}))).toMatchObject({
      code: 'ERR_HANDOVER_NO_LISTENER',
    });
    const again = listenForHandover(path);
    expect(thrown(() => sendHandover(path, 0, {}, 100))).toMatchObject({
      code: 'ERR_HANDOVER_TIMEOUT',
    });
    again.close();

    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'keep me');
    const e = thrown(() => listenForHandover(file));
    expect(e).toBeInstanceOf(HandoverError);
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_IO', errno: EEXIST });
    expect(e.message).toMatch(/exists and is not a socket \(not removed\)/);
    expect(readFileSync(file, 'utf8')).toBe('keep me');

    const long = thrown(() => listenForHandover(join(dir, 'x'.repeat(120))));
    expect(long).toMatchObject({ code: 'ERR_HANDOVER_IO', errno: ENAMETOOLONG });
    expect(long.message).toMatch(/a unix socket path has 1 to 107/);
  });

  it('a receive with nobody sending times out: ERR_HANDOVER_TIMEOUT', () => {
    const path = sock();
    const l = listenForHandover(path);
    const e = thrown(() => l.receive(150));
    expect(e).toBeInstanceOf(HandoverError);
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_TIMEOUT', name: 'HandoverError' });
    expect(e.message).toBe(`no process handed over on ${path} within 150 ms`);
    l.close();
    expect(thrown(() => l.receive(150))).toMatchObject({
      code: 'ERR_HANDOVER_IO',
      message: `handover listener on ${path} is closed`,
    });
  });

  it('a send to a path nobody listens on fails: ERR_HANDOVER_NO_LISTENER (no file, a stale socket)', () => {
    const none = sock();
    const e1 = thrown(() => sendHandover(none, 0, {}));
    expect(e1).toMatchObject({
      code: 'ERR_HANDOVER_NO_LISTENER',
      errno: ENOENT,
      syscall: 'connect',
    });
    expect(e1.message).toMatch(`cannot hand over to ${none}: nobody listens there`);
    const stale = sock();
    staleSocket(stale);
    const e2 = thrown(() => sendHandover(stale, 0, {}));
    expect(e2).toMatchObject({ code: 'ERR_HANDOVER_NO_LISTENER', errno: ECONNREFUSED });
  });

  it('a sender without an acknowledgement gives up: ERR_HANDOVER_TIMEOUT', () => {
    const path = sock();
    const l = listenForHandover(path); // listening, but never accepting
    const e = thrown(() => sendHandover(path, 0, { waiting: true }, 200));
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_TIMEOUT' });
    expect(e.message).toMatch(
      /no acknowledgement within 200 ms; the receiver may or may not have taken the fd/,
    );
    l.close();
  });

  it('refuses meta above 64 KiB before connecting (a RangeError: the caller is wrong)', () => {
    const e = thrown(() => sendHandover(sock(), 0, 'x'.repeat(HANDOVER_MAX_META)));
    expect(e).toBeInstanceOf(RangeError);
    expect(e.message).toMatch(/meta is 65538 bytes of UTF-8, at most 65536/);
  });

  it('carries an open file and up to 64 KiB of meta from another process; the fd is close-on-exec', async () => {
    const path = sock();
    const file = join(dir, 'payload.txt');
    writeFileSync(file, 'hello handover');
    // 9 bytes of UTF-8 per repeat (2 + 3 + 4), near the limit: the receiver reads it in pieces.
    const meta = { text: 'ü€𝄞'.repeat(7000), n: 42 };
    expect(Buffer.byteLength(JSON.stringify(meta))).toBeGreaterThan(60_000);
    const l = listenForHandover(path);
    const child = fixture(lab, ns, 'send', { path, file, meta });
    const got = l.receive(30_000); // blocks until the child, started above, has sent
    l.close();
    try {
      expect(got.meta).toEqual(meta);
      const buf = Buffer.alloc(64);
      expect(buf.toString('utf8', 0, readSync(got.fd, buf, 0, 64, 0))).toBe('hello handover');
      const flags = Number.parseInt(
        /^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${got.fd}`, 'utf8'))![1]!,
        8,
      );
      expect(flags & 0o2000000).not.toBe(0); // O_CLOEXEC
    } finally {
      closeFd(got.fd);
    }
    expect(await waitEvent(lab, child, 'sent')).toEqual({ event: 'sent' });
    expect(await lab.exited(child)).toEqual({ code: 0, signal: null });
    const e = thrown(() => closeFd(got.fd));
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_IO', errno: EBADF, syscall: 'close' });
  });

  it.each([
    ['close', /the sender closed the connection after 0 of the 12 bytes of the header$/],
    ['short', /the sender closed the connection after 3 of the 16 bytes of the payload$/],
    ['nofd', /: 0 file descriptors, expected exactly one$/],
    ['twofds', /: 2 file descriptors, expected exactly one$/],
    ['magic', /: not a vpm handover \(magic 58504d48\)$/],
    ['version', /: version 2 flags 000000, this vpm speaks version 1$/],
    ['toolong', /: a payload of 65537 bytes, more than 65536$/],
    ['utf8', /: the payload is not UTF-8 text$/],
  ] as const)(
    'refuses a message that is not a vpm handover (%s): ERR_HANDOVER_PROTOCOL, no acknowledgement',
    async (mode, why) => {
      const path = sock();
      const l = listenForHandover(path);
      const client = lab.spawn(ns, 'python3', [RAW_CLIENT, path, mode]);
      const e = thrown(() => l.receive(30_000));
      l.close();
      expect(e).toMatchObject({ code: 'ERR_HANDOVER_PROTOCOL', name: 'HandoverError' });
      expect(e.message).toMatch(why);
      expect(await waitEvent(lab, client, 'done')).toEqual({
        event: 'done',
        ack: null,
        closed: true,
      });
    },
  );

  it('a hand-made message that is right is taken and acknowledged; one that is not JSON is acknowledged, then refused', async () => {
    const okPath = sock();
    const l = listenForHandover(okPath);
    const ok = lab.spawn(ns, 'python3', [RAW_CLIENT, okPath, 'ok']);
    const got = l.receive(30_000);
    l.close();
    closeFd(got.fd);
    expect(got.meta).toEqual({ hand: 'made' });
    expect(await waitEvent(lab, ok, 'done')).toEqual({ event: 'done', ack: '06', closed: false });

    const badPath = sock();
    const l2 = listenForHandover(badPath);
    const bad = lab.spawn(ns, 'python3', [RAW_CLIENT, badPath, 'notjson']);
    const e = thrown(() => l2.receive(30_000));
    l2.close();
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_PROTOCOL' });
    expect(e.message).toMatch(/the payload is not JSON .*; the fd received is closed/);
    expect(await waitEvent(lab, bad, 'done')).toEqual({ event: 'done', ack: '06', closed: false });
  });

  /** A directory other users can reach (the lab's are 0700). */
  function openDir(mode: number): string {
    const d = join(dir, `pub${k++}`);
    mkdirSync(d);
    chmodSync(dir, 0o711);
    chmodSync(d, mode);
    return d;
  }

  it('refuses a sender of another uid (ERR_HANDOVER_PEER), and that sender learns it was refused', async () => {
    const path = join(openDir(0o755), 'h.sock');
    const l = listenForHandover(path);
    chmodSync(path, 0o666); // only so that nobody can connect at all: the check after connect is the one under test
    const child = fixture(lab, ns, 'send', { path, meta: { from: 'nobody' } }, { asUser: NOBODY });
    const e = thrown(() => l.receive(30_000));
    l.close();
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_PEER', name: 'HandoverError' });
    expect(e.message).toMatch(
      new RegExp(
        `^refused a handover on ${path} from pid \\d+ \\(uid ${NOBODY}\\): only root or uid 0 may hand over$`,
      ),
    );
    const err = await waitEvent(lab, child, 'error');
    expect(err).toMatchObject({ code: 'ERR_HANDOVER_PROTOCOL' });
    expect(err.message).toMatch(/: it refused the handover \(see its log\)$/);
  });

  it('with the socket at mode 0600, a process of another uid cannot even connect', async () => {
    const path = join(openDir(0o755), 'h.sock');
    const l = listenForHandover(path);
    const child = fixture(lab, ns, 'send', { path, meta: {} }, { asUser: NOBODY });
    const err = await waitEvent(lab, child, 'error');
    l.close();
    expect(err).toMatchObject({ code: 'ERR_HANDOVER_IO', errno: EACCES, syscall: 'connect' });
  });

  it('a sender refuses a listener of another uid (ERR_HANDOVER_PEER) and sends it nothing', async () => {
    const path = join(openDir(0o777), 'h.sock');
    const child = fixture(lab, ns, 'listen', { path, timeoutMs: 30_000 }, { asUser: NOBODY });
    expect(await waitEvent(lab, child, 'listening')).toMatchObject({ uid: NOBODY });
    const e = thrown(() => sendHandover(path, 0, { secret: true }));
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_PEER' });
    expect(e.message).toMatch(
      new RegExp(
        `^not handing over to ${path}: it is listened on by pid \\d+ \\(uid ${NOBODY}\\), not by root or uid 0$`,
      ),
    );
    const err = await waitEvent(lab, child, 'error');
    expect(err.message).toMatch(
      /the sender closed the connection after 0 of the 12 bytes of the header$/,
    );
  });
});
