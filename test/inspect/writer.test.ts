import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_RAW,
  PCAP_GLOBAL_HEADER_LEN,
  PCAP_RECORD_HEADER_LEN,
} from '../../src/pcap/format.js';
import { PcapReader, PcapRecord } from '../../src/pcap/reader.js';
import { encodePcapHeader, PcapWriter, splitTimestamp } from '../../src/pcap/writer.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { hex, icmp4, ip4, ip6, tcp4, tcp6, udp4, unhex } from '../support/builder.js';
import { runCommand } from '../support/netns.js';
import { Rng } from '../support/rng.js';

/*
 * Test vector: the first file of test/pcap/reader.test.ts, written by tcpdump
 * 4.99.3 / libpcap 1.10.3 (x86-64, little-endian headers) on a veth between two
 * namespaces: `tcpdump -i vb -n -U -c 3 -w us.pcap 'udp or tcp'` while 198.18.0.1
 * sent a UDP datagram and a TCP SYN that a closed port answered with a RST. The
 * writer, given the same frames and timestamps, must produce the same bytes.
 */
const UDP_FRAME =
  '8638675490ffaaa02c0b54c70800' +
  '4500001f00ca40004011addcc6120001c6120002' +
  '9c400009000bf3f5' +
  '76706d';
const SYN_FRAME =
  '8638675490ffaaa02c0b54c70800' +
  '4500003c0c2d40004006a267c6120001c6120002' +
  '9c4100097963c84100000000a002faf079990000020405b40402080a4f7c19df000000000103030a';
const RST_FRAME =
  'aaa02c0b54c78638675490ff0800' +
  '45000028000040004006aea8c6120002c6120001' +
  '00099c41000000007963c8425014000045b80000';
const TCPDUMP_US_PCAP =
  'd4c3b2a1 0200 0400 00000000 00000000 00000400 01000000' +
  ('1cef066b 99530d00 2d000000 2d000000' + UDP_FRAME) +
  ('1cef066b 95900d00 4a000000 4a000000' + SYN_FRAME) +
  ('1cef066b 0b910d00 36000000 36000000' + RST_FRAME);
const TS_SEC = 1795616540;
const US_FRAC = [873369, 888981, 889099];

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tempFile(name: string): string {
  const d = mkdtempSync(join(tmpdir(), 'vpm-writer-'));
  dirs.push(d);
  return join(d, name);
}

/** Everything a writer hands its sink, concatenated (copies: the views are reused). */
function collect(opts: ConstructorParameters<typeof PcapWriter>[1]): {
  w: PcapWriter;
  bytes: () => Uint8Array;
  calls: () => number;
} {
  const chunks: Uint8Array[] = [];
  const w = new PcapWriter((b) => chunks.push(b.slice()), opts);
  return {
    w,
    calls: () => chunks.length,
    bytes: () => {
      const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let p = 0;
      for (const c of chunks) {
        out.set(c, p);
        p += c.length;
      }
      return out;
    },
  };
}

/** A mixed set of raw IP packets from the independent builder, 0..1400 bytes of payload. */
function packets(rng: Rng, n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const payload = new Uint8Array(rng.int(1400));
    rng.fill(payload);
    const ip = { src: ip4('198.18.1.2'), dst: ip4('198.19.0.9') };
    switch (i % 4) {
      case 0:
        out.push(tcp4(ip, { srcPort: 40000 + i, dstPort: 9000, seq: rng.u32(), payload }));
        break;
      case 1:
        out.push(udp4(ip, { srcPort: 5353, dstPort: 53, payload }));
        break;
      case 2:
        out.push(icmp4(ip, { type: 8, rest: i, data: payload }));
        break;
      default:
        out.push(
          tcp6(
            { src: ip6('2001:db8::1'), dst: ip6('2001:db8::2') },
            { srcPort: 1, dstPort: 2, payload },
          ),
        );
    }
  }
  return out;
}

describe('pcap writer', () => {
  it('writes byte for byte what tcpdump wrote for the same frames', () => {
    const c = collect({ linkType: LINKTYPE_ETHERNET, snaplen: 262144, littleEndian: true });
    [UDP_FRAME, SYN_FRAME, RST_FRAME].forEach((f, i) => {
      c.w.write(unhex(f), TS_SEC, US_FRAC[i]!);
    });
    c.w.flush();
    expect(hex(c.bytes())).toBe(hex(unhex(TCPDUMP_US_PCAP)));
    expect(c.w.packets).toBe(3);
    expect(c.w.bytesFlushed).toBe(unhex(TCPDUMP_US_PCAP).length);
  });

  it('encodes the global header in either byte order, read back the same', () => {
    for (const le of [true, false]) {
      const h = encodePcapHeader(LINKTYPE_RAW, 65535, le);
      expect(h.length).toBe(PCAP_GLOBAL_HEADER_LEN);
      const r = new PcapReader(h);
      expect(r.header).toEqual({
        littleEndian: le,
        nanosecond: false,
        versionMajor: 2,
        versionMinor: 4,
        snaplen: 65535,
        linkType: LINKTYPE_RAW,
      });
    }
    expect(hex(encodePcapHeader(LINKTYPE_RAW, 65535, false))).toBe(
      'a1b2c3d4000200040000000000000000' + '0000ffff' + '00000065',
    );
  });

  it('round-trips 200 builder packets through the reader (both byte orders, small chunks)', () => {
    const rng = new Rng(0x5eed1);
    const pkts = packets(rng, 200);
    for (const le of [true, false]) {
      const c = collect({ linkType: LINKTYPE_RAW, chunkSize: 3000, littleEndian: le });
      const stamps = pkts.map((_, i) => ({ sec: 1_800_000_000 + i, usec: rng.int(1_000_000) }));
      pkts.forEach((p, i) => {
        c.w.write(p, stamps[i]!.sec, stamps[i]!.usec);
      });
      c.w.flush();
      expect(c.calls()).toBeGreaterThan(10); // the chunk really was flushed as it filled
      const reader = new PcapReader(c.bytes(), 'round trip');
      expect(reader.header.linkType).toBe(LINKTYPE_RAW);
      expect(reader.header.snaplen).toBe(65535);
      const rec = new PcapRecord();
      const info = new PacketInfo();
      let i = 0;
      while (reader.next(rec)) {
        expect(hex(rec.data)).toBe(hex(pkts[i]!));
        expect(rec.tsSec).toBe(stamps[i]!.sec);
        expect(rec.tsNsec).toBe(stamps[i]!.usec * 1000);
        expect(rec.origlen).toBe(pkts[i]!.length);
        expect(checkPacket(rec.data, 0, rec.caplen, info)).toBe(Check.OK);
        i++;
      }
      expect(i).toBe(200);
    }
  });

  it('cuts packets at the snapshot length and keeps the original length', () => {
    const c = collect({ linkType: LINKTYPE_RAW, snaplen: 60 });
    const big = new Uint8Array(1500).fill(0xa5);
    c.w.write(big, 1, 2);
    c.w.write(big.subarray(0, 40), 1, 3, 1500); // already cut by the capture
    c.w.flush();
    const recs = [...new PcapReader(c.bytes())];
    expect(recs.map((r) => [r.caplen, r.origlen])).toEqual([
      [60, 1500],
      [40, 1500],
    ]);
  });

  it('sends a record larger than the chunk by itself, in order', () => {
    const c = collect({ linkType: LINKTYPE_RAW, chunkSize: 100 });
    const small = new Uint8Array(20).fill(1);
    const large = new Uint8Array(500).fill(2);
    c.w.write(small, 1, 0);
    c.w.write(large, 2, 0);
    c.w.write(small, 3, 0);
    c.w.flush();
    const recs = [...new PcapReader(c.bytes())];
    expect(recs.map((r) => [r.tsSec, r.caplen])).toEqual([
      [1, 20],
      [2, 500],
      [3, 20],
    ]);
  });

  it('flushes only when asked: the header first, then what was written since', () => {
    const c = collect({ linkType: LINKTYPE_RAW });
    expect(c.calls()).toBe(0);
    expect(c.w.pending).toBe(PCAP_GLOBAL_HEADER_LEN);
    c.w.flush();
    c.w.flush(); // nothing new: no empty write
    expect(c.calls()).toBe(1);
    c.w.write(new Uint8Array(10), 0, 0);
    expect(c.w.pending).toBe(PCAP_RECORD_HEADER_LEN + 10);
    c.w.flush();
    expect(c.calls()).toBe(2);
    expect(c.bytes().length).toBe(PCAP_GLOBAL_HEADER_LEN + PCAP_RECORD_HEADER_LEN + 10);
  });

  it('refuses a snapshot length or link type a pcap file cannot hold', () => {
    expect(() => new PcapWriter(() => {}, { linkType: LINKTYPE_RAW, snaplen: 0 })).toThrow(
      /snaplen 0/,
    );
    expect(() => new PcapWriter(() => {}, { linkType: LINKTYPE_RAW, snaplen: 262145 })).toThrow(
      /snaplen/,
    );
    expect(() => new PcapWriter(() => {}, { linkType: -1 })).toThrow(/link type -1/);
  });

  it('splits wall-clock milliseconds into seconds and microseconds', () => {
    expect(splitTimestamp(1_795_616_540_873.369)).toEqual({ sec: 1795616540, usec: 873369 });
    expect(splitTimestamp(1999.9996)).toEqual({ sec: 2, usec: 0 }); // rounds up, never 1e6
    expect(splitTimestamp(0)).toEqual({ sec: 0, usec: 0 });
    const c = collect({ linkType: LINKTYPE_RAW });
    c.w.writeAt(new Uint8Array([0x45]), 1500.25);
    c.w.flush();
    const [r] = [...new PcapReader(c.bytes())];
    expect([r!.tsSec, r!.tsNsec]).toEqual([1, 500250000]);
  });

  it('writes files that tcpdump -r reads, packet for packet', () => {
    const rng = new Rng(7);
    const pkts = packets(rng, 12);
    const file = tempFile('w.pcap');
    const chunks: Uint8Array[] = [];
    const w = new PcapWriter((b) => chunks.push(b.slice()), { linkType: LINKTYPE_RAW });
    pkts.forEach((p, i) => {
      w.write(p, 1_800_000_000 + i, 250_000);
    });
    w.flush();
    writeFileSync(file, Buffer.concat(chunks));
    const out = runCommand('tcpdump', ['-r', file, '-n', '-tt', '-v'])
      .split('\n')
      .filter((l) => /^\d+\.\d{6} /.test(l));
    expect(out).toHaveLength(12);
    expect(out[0]).toMatch(/^1800000000\.250000 IP .*proto TCP/);
    expect(out[1]).toMatch(/^1800000001\.250000 IP .*proto UDP/);
    expect(out[2]).toMatch(/^1800000002\.250000 IP .*proto ICMP/);
    expect(out[3]).toMatch(/^1800000003\.250000 IP6 /);
    // tcpdump checks what it can: no packet is reported short or bad.
    expect(out.join('\n')).not.toMatch(/truncated|bad-len|\[\|/);
  });
});
