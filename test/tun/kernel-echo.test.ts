/**
 * A real TUN device, opened with openTun in a fixture process, echoing ICMP and UDP
 * back to real clients (ping, node dgram) in the same namespace:
 *
 *     namespace vpmt-…-tunecho-N
 *     ┌──────────────────────────────────────────────────────────────────┐
 *     │ ping / udp-client ── 198.18.10.1 ──► route 198.18.11.0/24 ──► vpm0 │
 *     │        ▲                                                    │     │
 *     │        └──── kernel ◄── write (src/dst swapped) ◄── tun-fixture echo
 *     └──────────────────────────────────────────────────────────────────┘
 *
 * The reply comes from 198.18.11.2, which "lives" behind the TUN: only the echo
 * answers for it. Every namespace, device and process is removed in afterAll.
 */

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TunStats } from '../../src/tun/device.js';
import { NetLab, requireCommands, requireRoot } from '../support/netns.js';
import { events, spawnTunFixture, UDP_CLIENT, waitEvent } from './fixture.js';

const PEER = '198.18.11.2';

/** What the echo fixture reports: the device's counters and its own. */
type EchoStats = TunStats & {
  echoed: number;
  ignored: number;
  queueFull: number;
  maxBatch: number;
};
/** What udp-client.mjs reports when done. */
type ClientResult = { received: number; duplicates: number; bad: number };

describe('kernel TUN: echo through a real device', () => {
  let lab: NetLab;
  let n = 0;

  beforeAll(() => {
    requireRoot();
    requireCommands('ip', 'ping', 'setpriv');
    lab = new NetLab('tunecho');
  });
  afterAll(async () => {
    await lab?.cleanup();
  });

  /** A namespace with a started (or paused) echo in it. */
  async function echoIn(arg: { batchSize?: number; paused?: boolean } = {}): Promise<{
    ns: string;
    echo: ChildProcess;
    ready: Record<string, unknown>;
  }> {
    const ns = lab.namespace(`e${n++}`, { ipv6: false });
    const echo = spawnTunFixture(lab, ns, 'echo', arg, { stdin: 'pipe' });
    const ready = await waitEvent(lab, echo, 'ready');
    return { ns, echo, ready };
  }

  async function stats(lab: NetLab, echo: ChildProcess, nth: number): Promise<EchoStats> {
    echo.stdin!.write('stats\n');
    return (await waitEvent(lab, echo, 'stats', 10_000, nth)) as unknown as EchoStats;
  }

  function udpClient(
    ns: string,
    count: number,
    size = 64,
    port = 7000,
  ): Promise<Record<string, number>> {
    const client = lab.spawn(ns, process.execPath, [
      UDP_CLIENT,
      JSON.stringify({ count, size, dst: PEER, port }),
    ]);
    return waitEvent(lab, client, 'done', 30_000) as unknown as Promise<ClientResult>;
  }

  it('answers ping: 20 ICMP echo requests, 20 replies with valid checksums', async () => {
    const { ns, echo, ready } = await echoIn();
    expect(ready.name).toMatch(/^vpm\d+$/);
    expect(ready).toMatchObject({ batchSize: 64, slotSize: 1536, mtu: 1500 });
    const out = lab.run(ns, 'ping', ['-c', '20', '-i', '0.02', '-W', '2', PEER], {
      timeoutMs: 20_000,
    });
    expect(out).toMatch(/20 packets transmitted, 20 received, 0% packet loss/);
    expect(out).not.toMatch(/bad checksum|DUP/i); // ping checks the reply's ICMP checksum
    const s = await stats(lab, echo, 1);
    expect(s.echoed).toBe(20);
    expect(s.readErrors).toBe(0);
    expect(s.writePackets).toBe(20);
    echo.stdin!.write('quit\n');
    expect(await lab.exited(echo)).toEqual({ code: 0, signal: null });
  });

  it('echoes UDP datagrams of several sizes with their payload intact', async () => {
    const { ns, echo } = await echoIn();
    for (const size of [8, 100, 1000, 1472]) {
      const r = await udpClient(ns, 100, size, 7000 + size);
      expect(r, `size ${size}`).toMatchObject({ received: 100, duplicates: 0, bad: 0 });
    }
    const s = await stats(lab, echo, 1);
    expect(s.echoed).toBe(400);
    expect(s.readTruncated).toBe(0);
    expect(s.writeQueueFull + s.writeErrors).toBe(0);
  });

  it('reads a queue of 2000 datagrams in full batches of 64 once started', async () => {
    // Stopped: the datagrams wait in the TUN's queue (txqueuelen 10000, not the
    // kernel's 500). Started: each poll takes a whole batch.
    const { ns, echo } = await echoIn({ paused: true });
    const client = lab.spawn(ns, process.execPath, [
      UDP_CLIENT,
      JSON.stringify({ count: 2000, size: 64, dst: PEER, port: 7001 }),
    ]);
    await waitEvent(lab, client, 'sent', 20_000);
    const before = await stats(lab, echo, 1);
    expect(before.readPackets).toBe(0);
    echo.stdin!.write('start\n');
    const done = await waitEvent(lab, client, 'done', 30_000);
    const s = await stats(lab, echo, 2);
    expect(s.echoed).toBe(2000);
    expect(s.readPackets).toBe(s.echoed + s.ignored);
    expect(s.maxBatch).toBe(64);
    expect(s.readFullBatches).toBeGreaterThanOrEqual(31); // 31 × 64 = 1984
    expect(s.readBatches).toBeLessThanOrEqual(33);
    // The client's socket buffer (rmem_max) may drop some of 2000 back-to-back
    // replies; those that arrive must be intact.
    expect(done.bad).toBe(0);
    expect(done.received).toBeGreaterThan(0);
  });

  it('batches under a live burst: fewer onBatch calls than packets', async () => {
    const { ns, echo } = await echoIn();
    const done = await udpClient(ns, 2000, 64, 7002);
    const s = await stats(lab, echo, 1);
    expect(s.echoed).toBe(2000);
    expect(s.readPackets).toBe(s.echoed + s.ignored);
    // One JS call per burst: on average more than one packet per call.
    expect(s.readBatches).toBeLessThan(s.readPackets);
    expect(s.readPackets / s.readBatches).toBeGreaterThan(1);
    expect(done.bad).toBe(0);
    console.log(
      `live burst: ${s.readPackets} packets in ${s.readBatches} batches (mean ${(s.readPackets / s.readBatches).toFixed(1)}, ${s.readFullBatches} full), ${done.received} replies received`,
    );
  });

  it('open errors and misuse: busy, bad names, not a TUN, closed, started; vnetHdr offloads', async () => {
    const ns = lab.namespace(`e${n++}`);
    const child = spawnTunFixture(lab, ns, 'errors');
    const r = (await waitEvent(lab, child, 'report')) as Record<string, Record<string, unknown>>;
    expect(r.sameNameTwice).toMatchObject({
      ok: false,
      code: 'ERR_TUN_BUSY',
      errno: 16,
      isTunError: true,
    });
    expect(r.sameNameTwice!.message).toMatch(/vpmbusy0.*in use/);
    expect(r.sameNameMultiQueue).toMatchObject({ ok: false, code: 'ERR_TUN_BUSY' });
    expect(r.notATun).toMatchObject({ ok: false, code: 'ERR_TUN_BUSY' });
    for (const k of ['slash', 'tooLong', 'twoPatterns', 'dotdot']) {
      expect(r[k], k).toMatchObject({ ok: false, code: 'ERR_TUN_NAME', isTunError: true });
    }
    // vnetHdr: 10-byte headers, a whole super-packet per slot, and the offloads the
    // kernel accepted (at least CSUM|TSO4|TSO6; USO4|USO6 since Linux 6.2), which the
    // device then advertises; a plain device has its mask set to 0 explicitly.
    expect(r.vnetHdr).toMatchObject({
      ok: true,
      value: {
        headroom: 10,
        slotSize: 65600,
        tso: true,
        txCsum: true,
        plainHeadroom: 0,
        plainOffload: 0,
        plainTso: false,
      },
    });
    const offload = (r.vnetHdr!.value as { offload: number }).offload;
    expect(offload & 0x07).toBe(0x07);
    expect(r.multiQueue).toEqual({ names: ['vpmmq0', 'vpmmq0'], flags: [true, true] });
    expect(r.singleOnMultiQueue).toMatchObject({ ok: false, code: 'ERR_TUN_BUSY' });
    // Kernel-chosen name, MTU, txqueuelen and link state as asked.
    expect(r.auto!.name).toMatch(/^vpm\d+$/);
    expect(r.auto).toMatchObject({ slotSize: 1408, mtu: 1400, txqlen: 4321 });
    expect(r.auto!.flags).toContain('UP');
    expect(r.down!.flags).not.toContain('UP');
    // write: the kernel refuses a packet (EINVAL), counted; the next one is written.
    expect(r.writeBadThenGood).toEqual({ ok: true, value: 2 });
    expect(r.writeStats).toMatchObject({
      writeCalls: 1,
      writePackets: 1,
      writeErrors: 1,
      lastWriteErrno: 22,
    });
    expect(r.writeOutOfBounds).toMatchObject({ ok: false, name: 'RangeError' });
    expect(r.writeCountTooLarge).toMatchObject({ ok: false, name: 'RangeError' });
    expect(r.startTwice).toMatchObject({ ok: false, code: 'ERR_TUN_STARTED' });
    expect(r.writeAfterClose).toMatchObject({ ok: false, code: 'ERR_TUN_CLOSED' });
    expect(r.startAfterClose).toMatchObject({ ok: false, code: 'ERR_TUN_CLOSED' });
    expect(r.statsAfterClose).toEqual({ ok: true, value: 1 });
    expect(r.reopenAfterClose).toEqual({ ok: true, value: 'vpmbusy0' });
    // Open devices that were never started hold the event loop open not at all.
    expect(await lab.exited(child)).toEqual({ code: 0, signal: null });
  });

  it('refuses an unprivileged user with ERR_TUN_PERMISSION', async () => {
    const ns = lab.namespace(`e${n++}`);
    const child = spawnTunFixture(lab, ns, 'permission', undefined, { asUser: 65534 });
    const e = await waitEvent(lab, child, 'error');
    expect(e).toMatchObject({ code: 'ERR_TUN_PERMISSION', name: 'TunError' });
    expect(e.message).toMatch(/needs CAP_NET_ADMIN \(run as root\)/);
    expect([1, 13]).toContain(e.errno); // EPERM from TUNSETIFF, or EACCES from open
    expect(events(lab, child).some((x) => x.event === 'opened')).toBe(false);
    expect(await lab.exited(child)).toEqual({ code: 0, signal: null });
  });
});
