import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_IPV4,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_LINUX_SLL2,
  LINKTYPE_RAW,
} from '../../src/pcap/format.js';
import {
  ipHeaderOffset,
  PcapError,
  PcapReader,
  PcapRecord,
  readPcapFile,
} from '../../src/pcap/reader.js';
import { fromHex, toHex } from '../../src/wire/bytes.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../../src/wire/ipv4.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';

/*
 * Test vectors: written by tcpdump 4.99.3 / libpcap 1.10.3 (x86-64, so little-endian
 * headers) on the receiving end of a veth pair between two network namespaces,
 * checksum offload off on both ends, while 198.18.0.1 sent one UDP datagram
 * ("vpm", port 40000 -> 9) and then a TCP SYN (port 40001 -> 9), which the closed
 * port answered with a RST:
 *   tcpdump -i vb -n -U -c 3 -w us.pcap 'udp or tcp'
 *   tcpdump -i vb -n -U -c 3 -w ns.pcap --time-stamp-precision=nano 'udp or tcp'
 *   tcpdump -i any -y LINUX_SLL  ... -w sll.pcap    (first record kept here)
 *   tcpdump -i any -y LINUX_SLL2 ... -w sll2.pcap   (first record kept here)
 *   editcap -F pcap -C 14 -T rawip  us.pcap raw.pcap   (Ethernet header chopped off)
 *   editcap -F pcap -C 14 -T rawip4 us.pcap ipv4.pcap
 * `tcpdump -r us.pcap -tt -vv` prints 1795616540.873369 / .888981 / .889099, lengths
 * 45 / 74 / 54, "[udp sum ok]" and "cksum ... (correct)" for both TCP segments.
 * Each file is spelled below as global header + (record header + data)...
 */

/** The three frames, as captured (Ethernet). */
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
const FRAMES = [UDP_FRAME, SYN_FRAME, RST_FRAME];

const US_PCAP = fromHex(
  'd4c3b2a1 0200 0400 00000000 00000000 00000400 01000000' +
    ('1cef066b 99530d00 2d000000 2d000000' + UDP_FRAME) +
    ('1cef066b 95900d00 4a000000 4a000000' + SYN_FRAME) +
    ('1cef066b 0b910d00 36000000 36000000' + RST_FRAME),
);
const NS_PCAP = fromHex(
  '4d3cb2a1 0200 0400 00000000 00000000 00000400 01000000' +
    ('1cef066b aa8e0e34 2d000000 2d000000' + UDP_FRAME) +
    ('1cef066b 25d0fc34 4a000000 4a000000' + SYN_FRAME) +
    ('1cef066b d094fe34 36000000 36000000' + RST_FRAME),
);
/** The UDP datagram's IP packet, the same in every link type. */
const UDP_IP = UDP_FRAME.slice(28);
const SLL_PCAP = fromHex(
  'd4c3b2a1 0200 0400 00000000 00000000 00000400 71000000' +
    '1cef066b 99530d00 2f000000 2f000000' +
    ('0000 0001 0006 aaa02c0b54c70000 0800' + UDP_IP),
);
const SLL2_PCAP = fromHex(
  'd4c3b2a1 0200 0400 00000000 00000000 00000400 14010000' +
    '1cef066b 99530d00 33000000 33000000' +
    ('0800 0000 00000002 0001 00 06 aaa02c0b54c70000' + UDP_IP),
);
const RAW_PCAP = fromHex(
  'd4c3b2a1 0200 0400 00000000 00000000 00000400 65000000' +
    // editcap keeps the original length (45) while it chops 14 bytes off the data.
    ('1cef066b 99530d00 1f000000 2d000000' + UDP_IP),
);
const IPV4_PCAP = fromHex(
  'd4c3b2a1 0200 0400 00000000 00000000 00000400 e4000000' +
    ('1cef066b 99530d00 1f000000 2d000000' + UDP_IP),
);
/** The start of the pcapng file editcap writes by default. */
const PCAPNG_START = fromHex('0a0d0d0a 6c000000 4d3c2b1a 0100 0000 ffffffffffffffff');

const TS_SEC = 1795616540;
const US_FRAC = [873369, 888981, 889099];
const NS_FRAC = [873369258, 888983589, 889099472];

/**
 * An independent pcap writer for the tests (DataView, either byte order), so that
 * big-endian files and damaged headers can be made without the code under test.
 */
interface BuildRecord {
  tsSec: number;
  tsFrac: number;
  data: Uint8Array;
  origlen?: number;
}
function buildPcap(o: {
  littleEndian: boolean;
  nanosecond: boolean;
  linkType: number;
  snaplen?: number;
  records: BuildRecord[];
}): Uint8Array {
  const size = o.records.reduce((n, r) => n + 16 + r.data.length, 24);
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  const le = o.littleEndian;
  dv.setUint32(0, o.nanosecond ? 0xa1b23c4d : 0xa1b2c3d4, le);
  dv.setUint16(4, 2, le);
  dv.setUint16(6, 4, le);
  dv.setUint32(16, o.snaplen ?? 262144, le);
  dv.setUint32(20, o.linkType, le);
  let p = 24;
  for (const r of o.records) {
    dv.setUint32(p, r.tsSec, le);
    dv.setUint32(p + 4, r.tsFrac, le);
    dv.setUint32(p + 8, r.data.length, le);
    dv.setUint32(p + 12, r.origlen ?? r.data.length, le);
    out.set(r.data, p + 16);
    p += 16 + r.data.length;
  }
  return out;
}

function readAll(buf: Uint8Array): PcapRecord[] {
  return [...new PcapReader(buf)];
}

function expectPcapError(fn: () => unknown, code: string, message?: RegExp): PcapError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(PcapError);
    const err = e as PcapError;
    expect(err.code).toBe(code);
    if (message) expect(err.message).toMatch(message);
    return err;
  }
  throw new Error(`expected a PcapError ${code}, nothing was thrown`);
}

describe('PcapReader on files tcpdump wrote', () => {
  it('reads a little-endian microsecond Ethernet capture', () => {
    const r = new PcapReader(US_PCAP);
    expect(r.header).toEqual({
      littleEndian: true,
      nanosecond: false,
      versionMajor: 2,
      versionMinor: 4,
      snaplen: 262144,
      linkType: LINKTYPE_ETHERNET,
    });
    const recs = [...r];
    expect(recs.map((x) => [x.index, x.tsSec, x.tsNsec, x.caplen, x.origlen])).toEqual([
      [0, TS_SEC, US_FRAC[0]! * 1000, 45, 45],
      [1, TS_SEC, US_FRAC[1]! * 1000, 74, 74],
      [2, TS_SEC, US_FRAC[2]! * 1000, 54, 54],
    ]);
    expect(recs.map((x) => toHex(x.data))).toEqual(FRAMES);
    expect(recs.map((x) => x.offset)).toEqual([24, 24 + 16 + 45, 24 + 16 + 45 + 16 + 74]);
  });

  it('hands out data as views into the file buffer, not copies', () => {
    const file = US_PCAP.slice();
    const [first] = readAll(file);
    expect(first!.data.buffer).toBe(file.buffer);
    expect(first!.data.byteOffset).toBe(file.byteOffset + 24 + 16);
    first!.data[0] = 0xee;
    expect(file[24 + 16]).toBe(0xee);
  });

  it('reads a nanosecond capture', () => {
    const r = new PcapReader(NS_PCAP);
    expect(r.header.nanosecond).toBe(true);
    expect(r.header.littleEndian).toBe(true);
    const recs = [...r];
    expect(recs.map((x) => x.tsNsec)).toEqual(NS_FRAC);
    expect(recs.map((x) => toHex(x.data))).toEqual(FRAMES);
  });

  it('gives packets that checkPacket and verifyChecksums accept (captured with offloads off)', () => {
    const info = new PacketInfo();
    const protocols: number[] = [];
    for (const rec of readAll(US_PCAP)) {
      const off = ipHeaderOffset(LINKTYPE_ETHERNET, rec.data);
      expect(off).toBe(14);
      expect(checkPacket(rec.data, off, rec.data.length - off, info)).toBe(Check.OK);
      expect(verifyChecksums(rec.data, info)).toBe(Verify.OK);
      protocols.push(info.protocol);
    }
    expect(protocols).toEqual([IPPROTO_UDP, IPPROTO_TCP, IPPROTO_TCP]);
  });

  it('finds the IP header in LINUX_SLL, LINUX_SLL2, RAW and IPV4 captures of the same datagram', () => {
    const cases: [Uint8Array, number, number][] = [
      [SLL_PCAP, LINKTYPE_LINUX_SLL, 16],
      [SLL2_PCAP, LINKTYPE_LINUX_SLL2, 20],
      [RAW_PCAP, LINKTYPE_RAW, 0],
      [IPV4_PCAP, LINKTYPE_IPV4, 0],
    ];
    for (const [file, linkType, ipOff] of cases) {
      const r = new PcapReader(file);
      expect(r.header.linkType).toBe(linkType);
      const [rec, ...rest] = [...r];
      expect(rest).toEqual([]);
      expect(ipHeaderOffset(linkType, rec!.data)).toBe(ipOff);
      expect(toHex(rec!.data, ipOff)).toBe(UDP_IP);
    }
    const [raw] = readAll(RAW_PCAP);
    expect([raw!.caplen, raw!.origlen]).toEqual([31, 45]);
  });
});

describe('PcapReader on built files', () => {
  const records = FRAMES.map((f, i) => ({ tsSec: TS_SEC, tsFrac: US_FRAC[i]!, data: fromHex(f) }));

  it('reads big-endian files, microseconds and nanoseconds, like little-endian ones', () => {
    for (const nanosecond of [false, true]) {
      const recs = records.map((r, i) => ({ ...r, tsFrac: nanosecond ? NS_FRAC[i]! : r.tsFrac }));
      const be = buildPcap({ littleEndian: false, nanosecond, linkType: 1, records: recs });
      expect(toHex(be, 0, 4)).toBe(nanosecond ? 'a1b23c4d' : 'a1b2c3d4');
      const r = new PcapReader(be);
      expect(r.header).toMatchObject({
        littleEndian: false,
        nanosecond,
        snaplen: 262144,
        linkType: 1,
      });
      const got = [...r];
      expect(got.map((x) => toHex(x.data))).toEqual(FRAMES);
      expect(got.map((x) => x.tsNsec)).toEqual(nanosecond ? NS_FRAC : US_FRAC.map((u) => u * 1000));
      expect(got.map((x) => x.origlen)).toEqual([45, 74, 54]);
    }
    // The builder agrees with tcpdump byte for byte in tcpdump's byte order.
    const le = buildPcap({ littleEndian: true, nanosecond: false, linkType: 1, records });
    expect(toHex(le)).toBe(toHex(US_PCAP));
  });

  it('refills one caller-owned record with next() and returns false at the end', () => {
    const r = new PcapReader(US_PCAP);
    const rec = new PcapRecord();
    const seen: number[] = [];
    while (r.next(rec)) seen.push(rec.caplen);
    expect(seen).toEqual([45, 74, 54]);
    expect(r.next(rec)).toBe(false);
    expect([...r]).toEqual([]);
  });

  it('reads a file that sits at an odd offset inside a larger buffer', () => {
    const big = new Uint8Array(US_PCAP.length + 10);
    big.set(US_PCAP, 3);
    const recs = readAll(big.subarray(3, 3 + US_PCAP.length));
    expect(recs.map((x) => toHex(x.data))).toEqual(FRAMES);
  });

  it('reads an empty capture (header only) as no records', () => {
    expect(readAll(US_PCAP.subarray(0, 24))).toEqual([]);
  });

  it('masks the FCS bits out of the link type field', () => {
    const f = buildPcap({ littleEndian: true, nanosecond: false, linkType: 0x24000001, records });
    expect(new PcapReader(f).header.linkType).toBe(LINKTYPE_ETHERNET);
  });
});

describe('PcapReader on truncated and damaged files', () => {
  it('gives ERR_PCAP_TRUNCATED, never a crash, for every cut of a file', () => {
    const boundaries = [24, 24 + 16 + 45, 24 + 16 + 45 + 16 + 74];
    for (let cut = 0; cut < US_PCAP.length; cut++) {
      const file = US_PCAP.slice(0, cut);
      const delivered: PcapRecord[] = [];
      let error: unknown = null;
      try {
        for (const rec of new PcapReader(file, 'cut.pcap')) delivered.push(rec);
      } catch (e) {
        error = e;
      }
      const complete = boundaries.filter((b, i) => i > 0 && b <= cut).length;
      expect(delivered.length, `cut at ${cut}`).toBe(complete);
      expect(delivered.map((rec) => toHex(rec.data))).toEqual(FRAMES.slice(0, complete));
      if (boundaries.includes(cut)) {
        expect(error, `cut at ${cut}`).toBeNull();
      } else {
        expect(error, `cut at ${cut}`).toBeInstanceOf(PcapError);
        expect((error as PcapError).code).toBe('ERR_PCAP_TRUNCATED');
        expect((error as PcapError).message).toMatch(/^cut\.pcap: /);
      }
    }
  });

  it('says where and what is missing', () => {
    expectPcapError(
      () => new PcapReader(US_PCAP.subarray(0, 10), 'x.pcap'),
      'ERR_PCAP_TRUNCATED',
      /^x\.pcap: the pcap global header needs 24 bytes, the file has 10$/,
    );
    expectPcapError(
      () => readAll(US_PCAP.subarray(0, 24 + 16 + 10)),
      'ERR_PCAP_TRUNCATED',
      /record 0 at byte 24: the header announces 45 bytes of packet data, only 10 remain/,
    );
    expectPcapError(
      () => readAll(US_PCAP.subarray(0, 24 + 16 + 45 + 5)),
      'ERR_PCAP_TRUNCATED',
      /record 1 at byte 85: the record header needs 16 bytes, only 5 remain/,
    );
  });

  it('refuses a file that is not pcap, a pcapng file and an unknown version', () => {
    expectPcapError(
      () => new PcapReader(fromHex('7f454c46'.padEnd(48, '0'))),
      'ERR_PCAP_BAD_MAGIC',
      /not a pcap file \(first bytes 7f454c46/,
    );
    expectPcapError(
      () => new PcapReader(PCAPNG_START),
      'ERR_PCAP_PCAPNG',
      /pcapng.*editcap -F pcap/,
    );
    expectPcapError(() => new PcapReader(PCAPNG_START.subarray(0, 4)), 'ERR_PCAP_PCAPNG');
    const v1 = US_PCAP.slice();
    v1[4] = 1;
    expectPcapError(() => new PcapReader(v1), 'ERR_PCAP_BAD_VERSION', /version 1\.4/);
  });

  it('refuses a captured length no pcap writer produces instead of reading on', () => {
    const f = US_PCAP.slice();
    new DataView(f.buffer).setUint32(24 + 8, 0xffffffff, true);
    expectPcapError(() => readAll(f), 'ERR_PCAP_BAD_RECORD', /captured length 4294967295/);
  });
});

describe('readPcapFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vpm-pcap-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads a file and names it in errors', () => {
    const good = join(dir, 'good.pcap');
    writeFileSync(good, US_PCAP);
    expect([...readPcapFile(good)].map((x) => toHex(x.data))).toEqual(FRAMES);
    const cut = join(dir, 'cut.pcap');
    writeFileSync(cut, US_PCAP.subarray(0, 30));
    expectPcapError(
      () => [...readPcapFile(cut)],
      'ERR_PCAP_TRUNCATED',
      new RegExp(`^${cut}: record 0`),
    );
  });
});

describe('ipHeaderOffset', () => {
  const ip4 = fromHex(UDP_IP);
  const eth = (typeHex: string, tail: Uint8Array = ip4) =>
    Uint8Array.from([...fromHex(`8638675490ffaaa02c0b54c7${typeHex}`), ...tail]);

  it('skips 802.1Q and 802.1ad tags in Ethernet frames', () => {
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, eth('0800'))).toBe(14);
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, eth('8100 0064 0800'))).toBe(18);
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, eth('88a8 00c8 8100 0064 0800'))).toBe(22);
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, eth('86dd', new Uint8Array(40)))).toBe(14);
  });

  it('is -1 for other payloads, frames too short to tell and unknown link types', () => {
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, eth('0806'))).toBe(-1); // ARP
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, eth('0800', new Uint8Array(0)))).toBe(-1);
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, eth('8100 0064', new Uint8Array(0)))).toBe(-1);
    expect(ipHeaderOffset(LINKTYPE_ETHERNET, new Uint8Array(13))).toBe(-1);
    expect(ipHeaderOffset(LINKTYPE_LINUX_SLL, new Uint8Array(16))).toBe(-1);
    const sllArp = new Uint8Array(40);
    sllArp[14] = 0x08;
    sllArp[15] = 0x06;
    expect(ipHeaderOffset(LINKTYPE_LINUX_SLL, sllArp)).toBe(-1);
    expect(ipHeaderOffset(LINKTYPE_LINUX_SLL2, new Uint8Array(20))).toBe(-1);
    expect(ipHeaderOffset(LINKTYPE_RAW, new Uint8Array(0))).toBe(-1);
    expect(ipHeaderOffset(LINKTYPE_RAW, Uint8Array.of(0x00, 0x00))).toBe(-1);
    expect(ipHeaderOffset(LINKTYPE_RAW, Uint8Array.of(0x60, 0x00))).toBe(0);
    expect(ipHeaderOffset(LINKTYPE_IPV4, new Uint8Array(0))).toBe(-1);
    expect(ipHeaderOffset(147, ip4)).toBe(-1); // LINKTYPE_USER0
  });
});
