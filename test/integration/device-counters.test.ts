/**
 * The TUN device's own counters in `vpm stats` (issue 15, item 2): packets the
 * kernel drops because vpm has not read its TUN queue never reach vpm's
 * pipeline counters; they are counted only in the device's tx_dropped, which
 * `vpm stats` now reports beside vpm's own.
 *
 *      ns client                          ns host
 * ┌──────────────────┐        ┌───────────────────────────────────────────┐
 * │ c0 198.18.1.2/24 │══veth══│ hc 198.18.1.1/24                          │
 * │ a UDP flood to   │        │ vpm up: vpm0 (TUN, txqueuelen 64)         │
 * │ 198.19.0.9:9000  │        │   sink 198.19.0.9 udp/9000 → :19001       │
 * └──────────────────┘        │ a UDP sink on 198.19.255.1:19001          │
 *                             └───────────────────────────────────────────┘
 *
 * The daemon is stopped (SIGSTOP, by its pid) while the client sends more
 * datagrams than the TUN queue holds, then continued: the kernel has dropped
 * the rest (tx_dropped > 0), and what it handed over is what vpm read.
 */

import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot, runCommand, waitFor } from '../support/netns.js';
import { runVpm, VpmDaemon, type VpmStats } from '../support/vpm.js';

const VIP = '198.19.0.9';
const TUN_ADDR = '198.19.255.1';
const REAL_PORT = 19001;
const QUEUE = 64;
const SENT = 3000;

interface Device {
  name: string;
  txPackets: number;
  txDropped: number;
  rxPackets: number;
  rxDropped: number;
}

const lab = new NetLab('devctr');
let host = '';
let client = '';
let daemon: VpmDaemon | null = null;

beforeAll(async () => {
  requireRoot();
  // IPv6 on (as on a real host): the metrics listen on [::1]; vpm keeps it off its TUN.
  host = lab.namespace('host');
  client = lab.namespace('client', { ipv6: false });
  lab.veth(
    { ns: client, dev: 'c0', cidr: '198.18.1.2/24' },
    { ns: host, dev: 'hc', cidr: '198.18.1.1/24' },
  );
  lab.run(client, 'ip', ['route', 'add', 'default', 'via', '198.18.1.1']);
  daemon = await VpmDaemon.start(lab, host, {
    tun: { txQueueLen: QUEUE },
    // On IPv6 loopback: metrics.listen takes [::1]:PORT.
    metrics: { listen: '[::1]:9464' },
    services: [{ name: 'sink', address: VIP, port: 9000, protocol: 'udp' }],
    applications: [{ aid: 'sink-1', instances: [{ port: REAL_PORT }] }],
    default: { aid: 'sink-1' },
  });
  // The instance: reads and discards (nothing goes back into the TUN).
  const sink = lab.spawn(host, 'python3', [
    '-u',
    '-c',
    `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('${TUN_ADDR}', ${REAL_PORT}))
print('ready', flush=True)
while True:
    s.recv(65536)`,
  ]);
  await lab.waitForOutput(sink, /ready/, { timeoutMs: 15_000 });
}, 60_000);

afterAll(async () => {
  // Never leave the daemon stopped: SIGCONT before stopping it (by its pid).
  if (daemon?.alive) process.kill(daemon.pid, 'SIGCONT');
  await daemon?.stop().catch(() => {});
  const id = lab.id;
  await lab.cleanup();
  expect(runCommand('ip', ['netns', 'list'])).not.toContain(id);
});

/** The process state letter in /proc/PID/stat ("T": stopped). */
function procState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!;
}

const device = (s: VpmStats) => s.device as Device;

describe('vpm stats: the TUN device counters', () => {
  it('a flood that overflows the TUN queue: the device drops appear in vpm stats, and the rest adds up', async () => {
    const d = daemon!;
    const before = await d.stats();
    expect(device(before)).toMatchObject({ name: 'vpm0' });

    process.kill(d.pid, 'SIGSTOP');
    try {
      await waitFor(() => procState(d.pid) === 'T', { what: 'the daemon to stop' });
      // More datagrams than the TUN's queue holds, as fast as one socket sends them.
      lab.run(client, 'python3', [
        '-c',
        `import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(${SENT}):
    s.sendto(b'x' * 32, ('${VIP}', 9000))`,
      ]);
    } finally {
      process.kill(d.pid, 'SIGCONT');
    }

    // vpm reads what the queue held; then the device's count of what it handed
    // over and vpm's count of what it read agree.
    let after = before;
    await waitFor(
      async () => {
        after = await d.stats();
        return after.packetsIn > before.packetsIn && device(after).txPackets === after.packetsIn;
      },
      { what: 'vpm to read the TUN queue', timeoutMs: 15_000 },
    );
    const dev = device(after);
    const read = dev.txPackets - device(before).txPackets;
    const dropped = dev.txDropped - device(before).txDropped;
    expect(dropped).toBeGreaterThan(0);
    // Each datagram went one of the two ways (or was lost before the TUN, which no
    // counter here sees): read by vpm, or dropped by the full queue.
    expect(read + dropped).toBeLessThanOrEqual(SENT);
    expect(read).toBeGreaterThan(0);
    // vpm's own accounting covers what it read, not what the kernel dropped.
    expect(after.packetsIn - before.packetsIn).toBe(read);
    expect(after.packetsIn).toBe(after.packetsOut + after.dropsTotal + after.fragmentsHeld);

    // The same figures through the CLI, as a sentence and as JSON.
    const human = await runVpm(lab, host, ['stats', '-s', d.socket]);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(
      /^device {2}vpm0 \(the kernel's counters\): handed to vpm \d+, not read by vpm \(TUN queue full\) (\d+); written by vpm \d+, dropped \d+$/m,
    );
    const shown = Number(/not read by vpm \(TUN queue full\) (\d+)/.exec(human.stdout)![1]);
    expect(shown).toBeGreaterThanOrEqual(dev.txDropped);
    const json = (await d.cliJson('stats')) as VpmStats;
    expect(device(json).txDropped).toBeGreaterThanOrEqual(dev.txDropped);

    // And in the metrics, read at scrape time.
    const text = lab.run(host, 'curl', ['-sf', '-g', 'http://[::1]:9464/metrics']);
    const metric = (name: string, dir: string) =>
      Number(new RegExp(`^${name}\\{direction="${dir}"\\} (\\d+)$`, 'm').exec(text)?.[1]);
    expect(metric('vpm_device_dropped_total', 'tx')).toBeGreaterThanOrEqual(dev.txDropped);
    expect(metric('vpm_device_packets_total', 'tx')).toBeGreaterThanOrEqual(dev.txPackets);
    expect(metric('vpm_device_packets_total', 'rx')).toBeGreaterThanOrEqual(dev.rxPackets);
    expect(text).toMatch(/^# TYPE vpm_device_fifo_errors_total counter$/m);
  }, 60_000);
});
