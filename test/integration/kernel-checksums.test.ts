/*
 * The kernel's own checksums against checkPacket + verifyChecksums, on real traffic.
 *
 *   ns <lab>-cli                                    ns <lab>-srv
 *   curl, UDP client                                python3 -m http.server :8080, UDP echo :9999
 *   198.18.0.1/24  veth-cli ═══════ veth ═══════ veth-srv  198.18.0.2/24
 *                                                   └── tcpdump -w cap.pcap
 *   offloads off on both ends: tx rx (checksums), tso gso gro (segmentation)
 *
 * Why the offloads must be off: with tx checksum offload on (the veth default), the
 * stack leaves TCP/UDP checksums "partial" (only the pseudo-header sum filled in),
 * for a NIC to finish, and a veth never does: it hands the skb to its peer marked
 * CHECKSUM_PARTIAL, so a capture shows unfilled checksums. Tried on this machine
 * (kernel 6.18, tcpdump 4.99.3): with the defaults, `tcpdump -r -vv` called 87 of 97
 * captured packets "incorrect", and TSO let 64 KiB super-packets through (1.27 MB
 * in 97 packets). With `ethtool -K dev tx off rx off tso off gso off gro off` on
 * both ends: 0 of 1235 incorrect, every frame at most 1514 bytes. This is the
 * well-known offload effect (smoltcp-rs/smoltcp#109, the-tcpdump-group/tcpdump#218).
 * rx off also makes the receiving kernel verify every checksum in software, so the
 * transfer itself only succeeds if the sender's checksums are right.
 */

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LINKTYPE_ETHERNET } from '../../src/pcap/format.js';
import { ipHeaderOffset, PcapError, type PcapRecord, readPcapFile } from '../../src/pcap/reader.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../../src/wire/ipv4.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import { NetLab, requireCommands, requireRoot, runCommand, waitFor } from '../support/netns.js';

const CLI_ADDR = '198.18.0.1';
const SRV_ADDR = '198.18.0.2';
const HTTP_PORT = 8080;
const UDP_PORT = 9999;
/** Odd, so the last TCP segment has an odd length (the sum pads it with a zero byte). */
const BLOB_LEN = 400_001;
/** UDP datagrams sent (each echoed), payload lengths (i * 97) % 1473: 0 to 1472, odd and even. */
const UDP_COUNT = 40;
/** Ethernet header + 1500-byte MTU: nothing larger may appear with segmentation offloads off. */
const MAX_FRAME = 1514;

const UDP_ECHO_SERVER = `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('${SRV_ADDR}', ${UDP_PORT}))
print('ready', flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
`;
const UDP_CLIENT = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for i in range(${UDP_COUNT}):
    data = bytes((i * 31 + j) & 255 for j in range((i * 97) % 1473))
    s.sendto(data, ('${SRV_ADDR}', ${UDP_PORT}))
    back, _ = s.recvfrom(65535)
    if back != data:
        sys.exit('echo %d differs' % i)
print('echoed', ${UDP_COUNT})
`;

interface Capture {
  linkType: number;
  /** Every record (data are views into the file buffer). */
  records: PcapRecord[];
  /** Records holding an IPv4 TCP or UDP packet, with the IP header offset. */
  packets: { rec: PcapRecord; ipOff: number; protocol: number }[];
  tcp: number;
  udp: number;
  /** Records that are not IPv4 TCP/UDP (ARP, say). */
  other: number;
}

function parseCapture(path: string): Capture {
  const reader = readPcapFile(path);
  const info = new PacketInfo();
  const cap: Capture = {
    linkType: reader.header.linkType,
    records: [...reader],
    packets: [],
    tcp: 0,
    udp: 0,
    other: 0,
  };
  for (const rec of cap.records) {
    const ipOff = ipHeaderOffset(cap.linkType, rec.data);
    if (ipOff < 0 || rec.data[ipOff]! >>> 4 !== 4) {
      cap.other++;
      continue;
    }
    const check = checkPacket(rec.data, ipOff, rec.data.length - ipOff, info);
    if (check !== Check.OK || (info.protocol !== IPPROTO_TCP && info.protocol !== IPPROTO_UDP)) {
      cap.other++; // a refused packet is caught by the acceptance test below
      continue;
    }
    cap.packets.push({ rec, ipOff, protocol: info.protocol });
    if (info.protocol === IPPROTO_TCP) cap.tcp++;
    else cap.udp++;
  }
  return cap;
}

/** How many UDP datagrams a capture file holds so far (0 while it is mid-write). */
function udpRecordsSoFar(path: string): number {
  try {
    return parseCapture(path).udp;
  } catch (e) {
    if (e instanceof PcapError) return 0;
    throw e;
  }
}

/**
 * The bits to flip in one accepted packet, as [byte offset, mask]. Every byte a
 * checksum covers is a candidate: the Internet checksum detects any single-bit
 * error in a range it sums, because the flip moves the one's complement sum by
 * ±2^k, never a multiple of 0xffff (RFC 1071). The exceptions are flips that
 * change which range is summed, or what the checksum field means; those are left
 * out, each for its reason:
 *   - IPv4 byte 0: a flip that makes the version 6 or the IHL 7 or 13 parses as a
 *     different header over a different range. Only the flips that checkPacket must
 *     refuse (version 0, 5, 12; IHL below 5) are kept.
 *   - UDP length: clearing a bit shortens the summed range. Setting one makes the
 *     field exceed the IP payload, which checkPacket must refuse; those are kept.
 *   - UDP checksum: a flip that leaves 0x0000 means "no checksum" (RFC 768).
 * The payload is sampled (first, last and six bytes between), not exhausted.
 */
function flipPositions(buf: Uint8Array, info: PacketInfo): [number, number][] {
  const out: [number, number][] = [];
  const ipOff = info.ipOff;
  for (let bit = 0; bit < 8; bit++) {
    const b = buf[ipOff]! ^ (1 << bit);
    const version = b >>> 4;
    if ((version !== 4 && version !== 6) || (b & 0x0f) < 5) out.push([ipOff, 1 << bit]);
  }
  for (let i = ipOff + 1; i < ipOff + info.ipHeaderLen; i++) {
    for (let bit = 0; bit < 8; bit++) out.push([i, 1 << bit]);
  }
  const l4 = info.l4Off;
  for (let i = l4; i < l4 + info.l4HeaderLen; i++) {
    for (let bit = 0; bit < 8; bit++) {
      const mask = 1 << bit;
      if (info.protocol === IPPROTO_UDP) {
        const field = i - l4;
        if ((field === 4 || field === 5) && (buf[i]! & mask) !== 0) continue;
        if (field === 6 || field === 7) {
          const other = buf[field === 6 ? i + 1 : i - 1]!;
          if ((buf[i]! ^ mask) === 0 && other === 0) continue;
        }
      }
      out.push([i, mask]);
    }
  }
  const n = info.payloadLen;
  if (n > 0) {
    const picks = new Set([0, n - 1]);
    for (let k = 1; k <= 6; k++) picks.add(Math.floor((k * (n - 1)) / 7));
    let k = 0;
    for (const p of picks) out.push([info.payloadOff + p, 1 << ((k++ * 3) % 8)]);
  }
  return out;
}

describe('kernel TCP and UDP checksums, captured on a veth pair', () => {
  let lab: NetLab | undefined;
  let pcapPath = '';
  let cap: Capture;
  let tcpdumpStats = '';
  let offloads: Map<string, boolean>[] = [];

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'ethtool', 'tcpdump', 'python3', 'curl', 'ss');
    const net = new NetLab('cksum');
    lab = net;
    // The pcap file, the served blob and the download; removed with the lab.
    const dir = net.tempDir();
    pcapPath = join(dir, 'cap.pcap');
    const cli = net.namespace('cli', { ipv6: false });
    const srv = net.namespace('srv', { ipv6: false });
    net.veth(
      { ns: cli, dev: 'veth-cli', cidr: `${CLI_ADDR}/24` },
      { ns: srv, dev: 'veth-srv', cidr: `${SRV_ADDR}/24` },
      { offloads: false },
    );
    offloads = [net.features(cli, 'veth-cli'), net.features(srv, 'veth-srv')];

    const blob = randomBytes(BLOB_LEN);
    writeFileSync(join(dir, 'blob.bin'), blob);

    // -Z root: Debian's tcpdump otherwise drops to user "tcpdump", who cannot
    // write into our 0700 temporary directory. --immediate-mode: hand each packet
    // over at once, so none waits in a ring block when tcpdump is stopped.
    const tcpdump = net.spawn(srv, 'tcpdump', [
      '-i',
      'veth-srv',
      '-n',
      '-U',
      '--immediate-mode',
      '-Z',
      'root',
      '-w',
      pcapPath,
    ]);
    await net.waitForOutput(tcpdump, /listening on veth-srv/, { stream: 'stderr' });

    net.spawn(srv, 'python3', [
      '-m',
      'http.server',
      String(HTTP_PORT),
      '--bind',
      SRV_ADDR,
      '--directory',
      dir,
    ]);
    const echo = net.spawn(srv, 'python3', ['-u', '-c', UDP_ECHO_SERVER]);
    await net.waitForOutput(echo, /ready/, { stream: 'stdout' });
    await waitFor(
      () => net.run(srv, 'ss', ['-Hltn', `sport = :${HTTP_PORT}`]).includes(`:${HTTP_PORT}`),
      { what: `python3 http.server listening on ${SRV_ADDR}:${HTTP_PORT}` },
    );

    // TCP: a download through the kernel on both sides.
    const got = join(dir, 'got.bin');
    net.run(cli, 'curl', [
      '-sS',
      '--fail',
      '--max-time',
      '10',
      '-o',
      got,
      `http://${SRV_ADDR}:${HTTP_PORT}/blob.bin`,
    ]);
    const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
    expect(sha(readFileSync(got)), 'downloaded file').toBe(sha(blob));

    // UDP: datagrams of many lengths, each echoed; the client exits non-zero on loss.
    expect(net.run(cli, 'python3', ['-c', UDP_CLIENT])).toContain(`echoed ${UDP_COUNT}`);

    // The last echo is the last packet of the run: once it is in the file, stop.
    await waitFor(() => udpRecordsSoFar(pcapPath) >= 2 * UDP_COUNT, {
      what: `${2 * UDP_COUNT} UDP datagrams in ${pcapPath}`,
    });
    const exit = await net.stop(tcpdump, 'SIGINT');
    tcpdumpStats = net.output(tcpdump).stderr;
    expect(exit.code, `tcpdump exit, stderr:\n${tcpdumpStats}`).toBe(0);
    cap = parseCapture(pcapPath);
  }, 30_000);

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('runs with checksum and segmentation offloads off on both veth ends', () => {
    for (const f of offloads) {
      expect({
        rx: f.get('rx-checksumming'),
        tx: f.get('tx-checksumming'),
        tso: f.get('tcp-segmentation-offload'),
        gso: f.get('generic-segmentation-offload'),
        gro: f.get('generic-receive-offload'),
      }).toEqual({ rx: false, tx: false, tso: false, gso: false, gro: false });
    }
  });

  it('captured every packet, whole and wire-sized', () => {
    expect(tcpdumpStats).toMatch(/\b0 packets dropped by kernel/);
    expect(cap.linkType).toBe(LINKTYPE_ETHERNET);
    for (const rec of cap.records) {
      expect(rec.caplen, `record ${rec.index}`).toBe(rec.origlen);
      expect(rec.caplen, `record ${rec.index}`).toBeLessThanOrEqual(MAX_FRAME);
    }
    console.log(
      `kernel-checksums: ${cap.records.length} records: ${cap.tcp} TCP, ${cap.udp} UDP, ${cap.other} other`,
    );
    expect(cap.tcp).toBeGreaterThanOrEqual(100);
    expect(cap.udp).toBe(2 * UDP_COUNT);
  });

  it('accepts every IPv4 TCP and UDP packet the kernel sent (checkPacket + verifyChecksums)', () => {
    const info = new PacketInfo();
    const refused: string[] = [];
    for (const { rec, ipOff } of cap.packets) {
      const check = checkPacket(rec.data, ipOff, rec.data.length - ipOff, info);
      const verify = check === Check.OK ? verifyChecksums(rec.data, info) : -1;
      if (check !== Check.OK || verify !== Verify.OK) {
        refused.push(`record ${rec.index}: check ${check}, verify ${verify}`);
      }
    }
    expect(refused).toEqual([]);
    expect(cap.packets.length).toBe(cap.tcp + cap.udp);
  });

  it('rejects every one-bit error in the IP header, the L4 header and the payload', () => {
    const info = new PacketInfo();
    const flipped = new PacketInfo();
    const missed: string[] = [];
    const stages = { parse: 0, ipChecksum: 0, l4Checksum: 0 };
    let flips = 0;
    for (const { rec, ipOff } of cap.packets) {
      const buf = rec.data;
      const len = buf.length - ipOff;
      expect(checkPacket(buf, ipOff, len, info)).toBe(Check.OK);
      for (const [pos, mask] of flipPositions(buf, info)) {
        buf[pos]! ^= mask;
        const check = checkPacket(buf, ipOff, len, flipped);
        const verify = check === Check.OK ? verifyChecksums(buf, flipped) : -1;
        buf[pos]! ^= mask;
        flips++;
        if (check !== Check.OK) stages.parse++;
        else if (verify === Verify.BAD_IP_CHECKSUM) stages.ipChecksum++;
        else if (verify === Verify.BAD_L4_CHECKSUM) stages.l4Checksum++;
        else if (missed.length < 20) {
          missed.push(`record ${rec.index} (${info.protocol}): byte ${pos - ipOff} mask ${mask}`);
        }
      }
      // Restored: the packet is whole again.
      expect(checkPacket(buf, ipOff, len, info)).toBe(Check.OK);
      expect(verifyChecksums(buf, info)).toBe(Verify.OK);
    }
    console.log(`kernel-checksums: ${flips} one-bit flips rejected by ${JSON.stringify(stages)}`);
    expect(missed).toEqual([]);
    expect(stages.parse).toBeGreaterThan(0);
    expect(stages.ipChecksum).toBeGreaterThan(0);
    expect(stages.l4Checksum).toBeGreaterThan(0);
    expect(flips).toBeGreaterThan(400 * cap.tcp);
  });

  it('agrees with tcpdump -r -vv: no incorrect checksum, one ok per TCP segment and UDP datagram', () => {
    const text = runCommand('tcpdump', ['-r', pcapPath, '-n', '-vv']);
    expect(text.match(/\(incorrect/g) ?? []).toEqual([]);
    expect(text.match(/bad (udp )?cksum/g) ?? []).toEqual([]);
    expect(text.match(/cksum 0x[0-9a-f]{4} \(correct\)/g)?.length).toBe(cap.tcp);
    expect(text.match(/\[udp sum ok\]/g)?.length).toBe(cap.udp);
  });
});
