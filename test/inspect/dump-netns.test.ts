/**
 * `vpm dump` against a real daemon, with real TCP through its TUN: the CLI run the
 * way a user runs it (`ip netns exec HOST node .../main.js dump ...`), its files read
 * back by tcpdump, tshark and our own reader.
 *
 *      ns client                          ns host
 * ┌──────────────────┐        ┌───────────────────────────────────────────┐
 * │ c0 198.18.1.2/24 │══veth══│ hc 198.18.1.1/24                          │
 * │ default via      │        │ vpm up: vpm0 (TUN) 198.19.255.1           │
 * │   198.18.1.1     │        │   web 198.19.0.9:9000 → web-1 :19001      │
 * │ curl             │        │ python3 -m http.server 19001 (web-1)      │
 * └──────────────────┘        │ vpm dump ...                              │
 *                             └───────────────────────────────────────────┘
 *
 * Every client packet crosses vpm0 twice: to 198.19.0.9:9000 as the kernel hands it
 * to vpm, and to 198.19.255.1:19001 as vpm writes it back; replies the other way
 * round. All addresses are in 198.18.0.0/15 inside the lab's namespaces.
 */

import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LINKTYPE_RAW } from '../../src/pcap/format.js';
import { PcapRecord, readPcapFile } from '../../src/pcap/reader.js';
import { ipv4ToString } from '../../src/wire/address.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { type ExitInfo, NetLab, requireRoot, runCommand, waitFor } from '../support/netns.js';
import { VpmDaemon, vpmArgv, withTimeout } from '../support/vpm.js';

const VIP = '198.19.0.9';
const TUN_ADDR = '198.19.255.1';
const REAL_PORT = 19001;
const URL_BLOB = `http://${VIP}:9000/blob`;

const lab = new NetLab('dump');
let host = '';
let client = '';
let daemon: VpmDaemon | null = null;
let dir = '';

beforeAll(async () => {
  requireRoot();
  host = lab.namespace('host', { ipv6: false });
  client = lab.namespace('client', { ipv6: false });
  lab.veth(
    { ns: client, dev: 'c0', cidr: '198.18.1.2/24' },
    { ns: host, dev: 'hc', cidr: '198.18.1.1/24' },
  );
  lab.run(client, 'ip', ['route', 'add', 'default', 'via', '198.18.1.1']);
  daemon = await VpmDaemon.start(lab, host, {
    services: [{ name: 'web', address: VIP, port: 9000 }],
    applications: [{ aid: 'web-1', instances: [{ port: REAL_PORT }] }],
    default: { aid: 'web-1' },
  });
  dir = lab.tempDir();
  const www = join(dir, 'www');
  execFileSync('mkdir', ['-p', www]);
  // 300 KB: a few hundred segments each way, more than any -c below.
  writeFileSync(join(www, 'blob'), Buffer.alloc(300_000, 0x61));
  lab.spawn(host, 'python3', [
    '-m',
    'http.server',
    String(REAL_PORT),
    '--bind',
    TUN_ADDR,
    '--directory',
    www,
  ]);
  await waitFor(
    () => {
      lab.run(host, 'curl', ['-sf', '-o', '/dev/null', `http://${TUN_ADDR}:${REAL_PORT}/blob`]);
      return true;
    },
    { what: 'the instance (python3 -m http.server) to answer', timeoutMs: 15_000 },
  );
}, 60_000);

afterAll(async () => {
  await daemon?.stop().catch(() => {});
  const id = lab.id;
  await lab.cleanup();
  // Nothing of ours is left: no namespace, so no process or device either.
  expect(runCommand('ip', ['netns', 'list'])).not.toContain(id);
});

interface Done extends ExitInfo {
  stdout: string;
  stderr: string;
}

/** `vpm dump ARGS` in the host namespace, once it says it is listening. */
async function startDump(args: string[], ns = host): Promise<ChildProcess> {
  const child = lab.spawn(ns, process.execPath, [...vpmArgv(), 'dump', ...args]);
  await lab.waitForOutput(child, /listening on/, { stream: 'stderr', timeoutMs: 15_000 });
  return child;
}

async function done(child: ChildProcess, timeoutMs = 20_000): Promise<Done> {
  const exit = await withTimeout(lab.exited(child), timeoutMs, 'vpm dump to exit').catch(
    async (e) => {
      await lab.stop(child, 'SIGKILL', 1000);
      throw new Error(`${(e as Error).message}\n${lab.output(child).stderr}`);
    },
  );
  return { ...exit, ...lab.output(child) };
}

/** `vpm dump ARGS` run to completion (for the ones that fail at start). */
async function dumpFails(args: string[], ns = host): Promise<Done> {
  return done(lab.spawn(ns, process.execPath, [...vpmArgv(), 'dump', ...args]));
}

/** One curl download of the blob from the client, asynchronously. */
async function fetchBlob(extra: string[] = []): Promise<void> {
  const c = lab.spawn(client, 'curl', ['-sS', '-o', '/dev/null', ...extra, URL_BLOB]);
  const exit = await withTimeout(lab.exited(c), 30_000, 'curl');
  expect(exit.code, lab.output(c).stderr).toBe(0);
}

/** Downloads in a loop until stopped (for captures that need traffic to end). */
function keepFetching(): ChildProcess {
  return lab.spawn(client, 'bash', [
    '-c',
    `while true; do curl -s -o /dev/null ${URL_BLOB}; sleep 0.05; done`,
  ]);
}

/** The records of a pcap file as "src:port > dst:port" (every one must pass checkPacket). */
function tuplesIn(file: string): string[] {
  const r = readPcapFile(file);
  const rec = new PcapRecord();
  const info = new PacketInfo();
  const out: string[] = [];
  while (r.next(rec)) {
    expect(checkPacket(rec.data, 0, rec.caplen, info)).toBe(Check.OK);
    out.push(
      `${ipv4ToString(info.srcAddr)}:${info.srcPort} > ${ipv4ToString(info.dstAddr)}:${info.dstPort}`,
    );
  }
  return out;
}

/** TCP payload bytes of the packets in `file` sent from `src` ("addr:port"). */
function payloadFrom(file: string, src: string): number {
  const r = readPcapFile(file);
  const rec = new PcapRecord();
  const info = new PacketInfo();
  let bytes = 0;
  while (r.next(rec)) {
    expect(checkPacket(rec.data, 0, rec.caplen, info)).toBe(Check.OK);
    if (`${ipv4ToString(info.srcAddr)}:${info.srcPort}` === src) bytes += info.payloadLen;
  }
  return bytes;
}

const NO_STACK = /\n\s+at /;

/**
 * A client with two connections to the VIP, idle until SIGUSR1, then an HTTP/1.0
 * download of the blob on each; prints {"event":"ready","ports":[...]} once both
 * are connected and exits 0 when both responses have ended.
 */
const TWO_CONNECTIONS = `
const net = require('node:net');
const socks = [0, 1].map(() => net.connect(9000, '${VIP}'));
let up = 0;
let ended = 0;
for (const s of socks) {
  s.on('connect', () => {
    if (++up === 2) console.log(JSON.stringify({ event: 'ready', ports: socks.map((x) => x.localPort) }));
  });
  s.on('error', (e) => { console.log(JSON.stringify({ event: 'error', message: e.message })); process.exit(1); });
  s.on('end', () => { if (++ended === 2) process.exit(0); });
  s.resume();
}
process.on('SIGUSR1', () => { for (const s of socks) s.write('GET /blob HTTP/1.0\\r\\n\\r\\n'); });
setTimeout(() => process.exit(2), 30000);
`;

describe('vpm dump -w FILE', () => {
  it('captures -c packets on the daemon TUN; tcpdump and tshark see both sides of the rewrite', async () => {
    const file = join(dir, 'cap.pcap');
    // No -i: the device comes from the daemon (`stats` → tun.name).
    const dump = await startDump(['-s', daemon!.socket, '-c', '40', '-w', file]);
    await fetchBlob();
    const r = await done(dump);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/listening on vpm0, link-type RAW \(LINKTYPE 101\)/);
    expect(r.stderr).toMatch(/^40 packets captured/m);
    expect(r.stderr).not.toMatch(NO_STACK);

    const pcap = readPcapFile(file);
    expect(pcap.header.linkType).toBe(LINKTYPE_RAW);
    expect(pcap.header.snaplen).toBe(65535);
    expect(pcap.header.nanosecond).toBe(false);
    expect(tuplesIn(file)).toHaveLength(40);

    const lines = runCommand('tcpdump', ['-r', file, '-n', '-S'])
      .split('\n')
      .filter((l) => l.includes(' IP '));
    expect(lines).toHaveLength(40);
    // Each client → VIP packet, and the same packet (flags, seq, ack, length) to the
    // real port; each reply from the real port, and the same one from the VIP.
    const rest = (l: string) => l.slice(l.indexOf(':', l.indexOf(' > ')) + 1);
    const toVip = lines.filter((l) =>
      new RegExp(`198\\.18\\.1\\.2\\.\\d+ > ${VIP}\\.9000:`).test(l),
    );
    const toReal = lines.filter((l) => / 198\.18\.1\.2\.\d+ > 198\.19\.255\.1\.19001:/.test(l));
    const fromReal = lines.filter((l) => / 198\.19\.255\.1\.19001 > 198\.18\.1\.2\.\d+:/.test(l));
    const fromVip = lines.filter((l) =>
      new RegExp(` ${VIP}\\.9000 > 198\\.18\\.1\\.2\\.\\d+:`).test(l),
    );
    expect(toVip[0]).toMatch(/Flags \[S\], seq \d+/);
    expect(toReal[0]).toMatch(/Flags \[S\], seq \d+/);
    expect(rest(toReal[0]!)).toBe(rest(toVip[0]!));
    expect(fromVip.length).toBeGreaterThan(0);
    expect(rest(fromVip[0]!)).toBe(rest(fromReal[0]!));
    // A translation is only ever captured after its original (vpm reads batches, so
    // the cut at 40 may fall between them, not the other way round), and the
    // handshake and request are there on both sides.
    const vipRests = new Set(toVip.map(rest));
    const realReplyRests = new Set(fromReal.map(rest));
    for (const l of toReal) expect(vipRests, l).toContain(rest(l));
    for (const l of fromVip) expect(realReplyRests, l).toContain(rest(l));
    expect(toReal.length, lines.join('\n')).toBeGreaterThanOrEqual(3); // SYN, ACK, GET
    expect(toVip.length + toReal.length + fromReal.length + fromVip.length).toBe(40);

    const tshark = runCommand('tshark', ['-r', file, '-n'])
      .split('\n')
      .filter((l) => l.trim() !== '');
    expect(tshark).toHaveLength(40);
    expect(tshark.join('\n')).toMatch(/198\.18\.1\.2 → 198\.19\.0\.9 +TCP .*→ 9000 \[SYN\]/);
    expect(tshark.join('\n')).toMatch(/198\.18\.1\.2 → 198\.19\.255\.1 +TCP .*→ 19001 \[SYN\]/);
  });

  it('--flow ID captures only the two connections of that flow', async () => {
    // Two idle connections (two established flows); then both download at once.
    const twoClients = lab.spawn(client, process.execPath, ['-e', TWO_CONNECTIONS]);
    await lab.waitForOutput(twoClients, /"event":"ready"/, { stream: 'stdout', timeoutMs: 10_000 });
    const ports = (
      JSON.parse(lab.output(twoClients).stdout.trim().split('\n')[0]!) as { ports: number[] }
    ).ports;
    const flows = (await daemon!.flows()).filter((f) =>
      ports.some((p) => f.client === `198.18.1.2:${p}`),
    );
    expect(flows).toHaveLength(2);
    const [mine, other] = flows as [(typeof flows)[0], (typeof flows)[0]];
    const file = join(dir, 'flow.pcap');
    const dump = await startDump([
      '-s',
      daemon!.socket,
      '--flow',
      String(mine.id),
      '-c',
      '30',
      '-w',
      file,
    ]);
    process.kill(twoClients.pid!, 'SIGUSR1');
    const r = await done(dump);
    const c = await withTimeout(lab.exited(twoClients), 20_000, 'the two downloads');
    expect(c.code, lab.output(twoClients).stdout).toBe(0);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`src port ${mine.client.split(':')[1]}`);
    const allowed = new Set([
      `${mine.client} > ${mine.service}`,
      `${mine.service} > ${mine.client}`,
      `${mine.client} > ${mine.real}`,
      `${mine.real} > ${mine.client}`,
    ]);
    const seen = tuplesIn(file);
    expect(seen).toHaveLength(30);
    for (const t of seen) expect(allowed, t).toContain(t);
    // Both sides of the translation are in it; the other flow is not.
    expect(seen.some((t) => t.includes(`${VIP}:9000`))).toBe(true);
    expect(seen.some((t) => t.includes(`${TUN_ADDR}:${REAL_PORT}`))).toBe(true);
    expect(seen.join('\n')).not.toContain(other.client);
  });

  it('stops after -G seconds without traffic, and on SIGTERM, leaving valid files', async () => {
    const quiet = join(dir, 'quiet.pcap');
    const t0 = performance.now();
    const r1 = await done(await startDump(['-i', 'vpm0', '-G', '1', '-w', quiet, 'port 1']));
    const ms = performance.now() - t0;
    expect(r1.code, r1.stderr).toBe(0);
    expect(r1.stderr).toMatch(/^0 packets captured/m);
    expect(ms).toBeLessThan(10_000);
    expect(tuplesIn(quiet)).toEqual([]);
    expect(runCommand('tcpdump', ['-r', quiet, '-n'])).toBe('');

    const term = join(dir, 'term.pcap');
    const dump = await startDump(['-i', 'vpm0', '-w', term]);
    await fetchBlob();
    process.kill(dump.pid!, 'SIGTERM');
    const r2 = await done(dump);
    expect(r2.code, r2.stderr).toBe(0);
    const n = Number(/^(\d+) packets captured/m.exec(r2.stderr)?.[1]);
    expect(tuplesIn(term)).toHaveLength(n);
    // The whole 300 kB response, on both sides of the translation (however the
    // kernel cut it: with offloads the TUN carries super-packets, so the packet
    // count says little).
    expect(payloadFrom(term, `${TUN_ADDR}:${REAL_PORT}`)).toBeGreaterThanOrEqual(300_000);
    expect(payloadFrom(term, `${VIP}:9000`)).toBeGreaterThanOrEqual(300_000);
  });
});

describe('vpm dump -w - (to a pipe)', () => {
  it('pipes into tcpdump -r -', async () => {
    const cmd = [process.execPath, ...vpmArgv(), 'dump', '-i', 'vpm0', '-c', '20', '-w', '-']
      .map((a) => `'${a}'`)
      .join(' ');
    const sh = lab.spawn(host, 'bash', [
      '-c',
      `${cmd} | tcpdump -r - -n -S; echo "pipestatus=\${PIPESTATUS[*]}"`,
    ]);
    await lab.waitForOutput(sh, /listening on vpm0/, { stream: 'stderr', timeoutMs: 15_000 });
    await fetchBlob();
    const r = await done(sh);
    expect(r.stdout, r.stderr).toContain('pipestatus=0 0');
    const lines = r.stdout.split('\n').filter((l) => l.includes(' IP '));
    expect(lines).toHaveLength(20);
    // (A late packet of an earlier test's connection may come first: look for the SYN.)
    expect(lines.join('\n')).toMatch(
      new RegExp(`198\\.18\\.1\\.2\\.\\d+ > ${VIP}\\.9000: Flags \\[S\\]`),
    );
    expect(r.stderr).toMatch(/reading from file -, link-type RAW/);
  });

  it('exits 0 when the reader goes away (EPIPE)', async () => {
    const cmd = [process.execPath, ...vpmArgv(), 'dump', '-i', 'vpm0', '-w', '-']
      .map((a) => `'${a}'`)
      .join(' ');
    const traffic = keepFetching();
    try {
      const sh = lab.spawn(host, 'bash', [
        '-c',
        `${cmd} | head -c 300 >/dev/null; echo "pipestatus=\${PIPESTATUS[*]}"`,
      ]);
      const r = await done(sh);
      expect(r.stdout, r.stderr).toContain('pipestatus=0 0');
      expect(r.stderr).toMatch(/packets captured; the reader of stdout went away/);
      expect(r.stderr).not.toMatch(NO_STACK);
    } finally {
      await lab.stop(traffic);
    }
  });
});

describe('vpm dump as text', () => {
  it('prints one line per packet', async () => {
    const dump = await startDump(['-i', 'vpm0', '-c', '6']);
    await fetchBlob();
    const r = await done(dump);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(6);
    for (const l of lines)
      expect(l).toMatch(/^\d\d:\d\d:\d\d\.\d{6} TCP \S+ > \S+ \[[FSRP.UEW]+\] seq \d+/);
    // The new connection's SYN as sent, then as vpm wrote it.
    const i = lines.findIndex((l) => l.includes(`> ${VIP}:9000 [S] seq`));
    expect(i, r.stdout).toBeGreaterThanOrEqual(0);
    expect(lines[i]).toMatch(
      new RegExp(`^\\S+ TCP 198\\.18\\.1\\.2:(\\d+) > ${VIP}:9000 \\[S\\] seq (\\d+) len 0$`),
    );
    const [, port, seq] = /:(\d+) > .* seq (\d+)/.exec(lines[i]!)!;
    expect(lines[i + 1]).toMatch(
      new RegExp(
        `^\\S+ TCP 198\\.18\\.1\\.2:${port} > 198\\.19\\.255\\.1:19001 \\[S\\] seq ${seq} len 0$`,
      ),
    );
  });

  it('--pairs shows each packet before and after translation on one line', async () => {
    const dump = await startDump(['-s', daemon!.socket, '--pairs', '-c', '12']);
    await fetchBlob();
    const r = await done(dump);
    expect(r.code, r.stderr).toBe(0);
    const out = r.stdout;
    const port = /198\.18\.1\.2:(\d+) > 198\.19\.0\.9:9000 {2}⇄/.exec(out)?.[1];
    expect(port, out).toBeDefined();
    const c = `198\\.18\\.1\\.2:${port}`;
    expect(out).toMatch(
      new RegExp(
        `${c} > 198\\.19\\.0\\.9:9000 {2}⇄ {2}${c} > 198\\.19\\.255\\.1:19001 {2}\\[S\\] seq \\d+ len 0`,
      ),
    );
    expect(out).toMatch(
      new RegExp(
        `198\\.19\\.255\\.1:19001 > ${c} {2}⇄ {2}198\\.19\\.0\\.9:9000 > ${c} {2}\\[S\\.\\] seq \\d+ ack \\d+ len 0`,
      ),
    );
    // 12 packets (and, after -c, the partners of the last ones): all paired.
    expect(r.stderr).toMatch(/^12 packets captured.* \((\d+) pairs, 0 unpaired\)/m);
  });
});

describe('vpm dump errors', () => {
  it("a bad filter exits 2 with libpcap's message and writes no file", async () => {
    const file = join(dir, 'never.pcap');
    const r = await dumpFails(['-i', 'vpm0', '-c', '1', '-w', file, 'tcp', 'port']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      'vpm: bad capture filter "tcp port": can\'t parse filter expression: syntax error',
    );
    expect(r.stderr).not.toMatch(NO_STACK);
    expect(existsSync(file)).toBe(false);
  });

  it('a missing interface exits 1, named', async () => {
    const r = await dumpFails(['-i', 'nope0', '-c', '1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vpm: no such device nope0 \(/m);
    // Where no vpm runs, the default device is missing, with the hint.
    const r2 = await dumpFails(['-s', join(dir, 'no.sock'), '-c', '1'], client);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toContain('vpm: no such device vpm0 (is vpm running? use -i)');
    expect(r2.stderr).not.toMatch(NO_STACK);
  });

  it('bad option values exit 2, naming the value', async () => {
    for (const [args, msg] of [
      [['-c', '0'], '-c: "0" is not a positive integer'],
      [['-c', '2x'], '-c: "2x" is not a positive integer'],
      [['-G', 'soon'], '-G: "soon" is not a number of seconds'],
      [['--flow', 'x1'], '--flow: "x1" is not a flow id'],
      [['--pairs', '-w', 'f'], '--pairs prints text; it cannot be combined with -w'],
    ] as const) {
      const r = await dumpFails(['-i', 'vpm0', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain(msg);
    }
    const r = await dumpFails(['-s', daemon!.socket, '--flow', '999999', '-c', '1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--flow: no flow 999999');
  });

  it('-c with the path of an existing file (the config, as in the other commands) exits 2 with a hint', async () => {
    const cfg = join(dir, 'vpm.json');
    writeFileSync(cfg, '{}\n');
    const r = await dumpFails(['-c', cfg]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `vpm: -c: "${cfg}" is a file, but -c is a packet count here, as in tcpdump; for the config file use --config ${cfg}\n`,
    );
    // A path that names no file is just a bad count.
    const n = await dumpFails(['-i', 'vpm0', '-c', join(dir, 'none.json')]);
    expect(n.code).toBe(2);
    expect(n.stderr).toContain('is not a positive integer');
  });

  it('without permission to capture, exits 1 naming the device', async () => {
    const child = lab.spawn(host, 'setpriv', [
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      process.execPath,
      ...vpmArgv(),
      'dump',
      '-i',
      'vpm0',
      '-c',
      '1',
    ]);
    const r = await done(child);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(
      /^vpm: cannot capture on vpm0: .*not permitted.*needs root or CAP_NET_RAW/m,
    );
    expect(r.stderr).not.toMatch(NO_STACK);
  });
});
