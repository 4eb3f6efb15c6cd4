/**
 * Software segmentation (src/wire/segment.ts) against the kernel's rules as the
 * independent builder states them (tcp_gso_segment: IP ID + k, seq + k*S, FIN/PSH
 * on the last segment only, CWR on the first only, complete checksums).
 */

import { describe, expect, it } from 'vitest';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import {
  SEGMENT_NOT_GSO,
  SEGMENT_TOO_LARGE,
  segmentedSize,
  segmentSuperPacket,
} from '../../src/wire/segment.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import {
  hex,
  ip4,
  randomBytes,
  type TcpSpec,
  tcp4Partial,
  tcp4Segments,
  udp4,
} from '../support/builder.js';
import { Rng } from '../support/rng.js';

function segmentAll(pkt: Uint8Array, gsoSize: number, headroom = 0) {
  const info = new PacketInfo();
  expect(checkPacket(pkt, 0, pkt.length, info)).toBe(Check.OK);
  const out = new Uint8Array(segmentedSize(info, gsoSize, headroom));
  const offs = new Uint32Array(1024);
  const lens = new Uint32Array(1024);
  const n = segmentSuperPacket(pkt, info, gsoSize, out, 0, headroom, offs, lens);
  const segs: Uint8Array[] = [];
  for (let k = 0; k < n; k++) segs.push(out.slice(offs[k]!, offs[k]! + lens[k]!));
  return { n, segs, out, offs };
}

describe('segmentSuperPacket', () => {
  it('splits a partial-checksum super-packet as the kernel does, byte for byte', () => {
    const rng = new Rng(0x5e9);
    for (let c = 0; c < 300; c++) {
      const gso = 1 + rng.int(c % 3 === 0 ? 64 : 1460);
      const payloadLen = rng.int(Math.min(20_000, gso * 45));
      const ip = { src: ip4('198.18.1.2'), dst: ip4('198.19.0.9'), ident: rng.int(0x10000) };
      const t: TcpSpec = {
        srcPort: 40000 + rng.int(1000),
        dstPort: 9000,
        seq: rng.u32(),
        ack: rng.u32(),
        flags: rng.int(256),
        window: rng.int(0x10000),
        options: randomBytes(rng, 4 * rng.int(11)),
        payload: randomBytes(rng, payloadLen),
      };
      const { n, segs } = segmentAll(tcp4Partial(ip, t), gso);
      const want = tcp4Segments(ip, t, gso);
      expect(n, `case ${c}`).toBe(want.length);
      expect(segs.map(hex), `case ${c}: gso ${gso} payload ${payloadLen}`).toEqual(want.map(hex));
      const info = new PacketInfo();
      for (const s of segs) {
        checkPacket(s, 0, s.length, info);
        expect(verifyChecksums(s, info)).toBe(Verify.OK);
      }
    }
  });

  it('puts an all-zero header of `headroom` bytes before every segment', () => {
    const t = { srcPort: 1, dstPort: 2, payload: new Uint8Array(3000).fill(7) };
    const pkt = tcp4Partial({ src: 1, dst: 2 }, t);
    const { n, out, offs } = segmentAll(pkt, 1000, 10);
    expect(n).toBe(3);
    for (let k = 0; k < n; k++) {
      expect(offs[k]! >= 10).toBe(true);
      expect([...out.subarray(offs[k]! - 10, offs[k]!)]).toEqual(new Array(10).fill(0));
    }
  });

  it('segments UDP (UDP_L4): length per segment, a computed 0 sent as 0xffff', () => {
    const payload = new Uint8Array(2500).map((_, i) => i & 0xff);
    const pkt = udp4(
      { src: ip4('198.18.1.2'), dst: ip4('198.19.0.9') },
      {
        srcPort: 5353,
        dstPort: 53,
        payload,
      },
    );
    const { n, segs } = segmentAll(pkt, 1200);
    expect(n).toBe(3);
    const info = new PacketInfo();
    segs.forEach((s, k) => {
      expect(checkPacket(s, 0, s.length, info)).toBe(Check.OK);
      expect(info.l4Len).toBe(8 + Math.min(1200, 2500 - k * 1200));
      expect(verifyChecksums(s, info)).toBe(Verify.OK);
      expect([...s.subarray(info.payloadOff)]).toEqual([
        ...payload.subarray(k * 1200, k * 1200 + info.payloadLen),
      ]);
    });
  });

  it('refuses what it cannot segment, and a destination too small', () => {
    const pkt = tcp4Partial(
      { src: 1, dst: 2 },
      { srcPort: 1, dstPort: 2, payload: new Uint8Array(100) },
    );
    const info = new PacketInfo();
    checkPacket(pkt, 0, pkt.length, info);
    const o = new Uint32Array(4);
    expect(segmentSuperPacket(pkt, info, 0, new Uint8Array(4096), 0, 0, o, o)).toBe(
      SEGMENT_NOT_GSO,
    );
    expect(segmentSuperPacket(pkt, info, 10, new Uint8Array(4096), 0, 0, o, o)).toBe(
      SEGMENT_TOO_LARGE, // 10 segments, 4 slots
    );
    expect(segmentSuperPacket(pkt, info, 50, new Uint8Array(100), 0, 0, o, o)).toBe(
      SEGMENT_TOO_LARGE,
    );
  });
});
