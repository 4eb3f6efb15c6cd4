/**
 * PacketRing in one thread: geometry, the slot's contents (length, kind, the
 * virtio-net header bytes, the packet), order across wrap-around, refusals and
 * their counters, the consumer's arming (whenReadable) and close. The real
 * two-thread test is packet-ring-workers.test.ts.
 */

import { describe, expect, it } from 'vitest';
import { MAX_HEADROOM, PacketRing, SLOT_PREFIX } from '../../src/datapath/packet-ring.js';
import { VNET_HDR_LEN } from '../../src/wire/virtio.js';
import { Rng } from '../support/rng.js';

interface Got {
  len: number;
  kind: number;
  hdr: number[];
  bytes: number[];
  off: number;
}

function collect(ring: PacketRing, max = 1 << 30): Got[] {
  const out: Got[] = [];
  ring.drain((buf, off, len, kind) => {
    out.push({
      len,
      kind,
      hdr: Array.from(buf.subarray(off - ring.headroom, off)),
      bytes: Array.from(buf.subarray(off, off + len)),
      off,
    });
  }, max);
  return out;
}

/** A source buffer with `hr` header bytes then the packet at `off`, pre-filled with 0xa5. */
function source(rng: Rng, hr: number, len: number, pad = 7): { buf: Uint8Array; off: number } {
  const buf = new Uint8Array(pad + hr + len + pad).fill(0xa5);
  const body = new Uint8Array(hr + len);
  rng.fill(body);
  buf.set(body, pad);
  return { buf, off: pad + hr };
}

describe('PacketRing geometry', () => {
  it('refuses a slot count that is not a power of two, a bad packet size or headroom, naming the value', () => {
    expect(() => new PacketRing({ slots: 6 })).toThrow(/slots 6 must be a power of two/);
    expect(() => new PacketRing({ slots: 1 })).toThrow(/slots 1 /);
    expect(() => new PacketRing({ slots: 8, packetBytes: 2000 })).toThrow(
      /packetBytes 2000 must be a multiple of 32/,
    );
    expect(() => new PacketRing({ slots: 8, headroom: MAX_HEADROOM + 1 })).toThrow(
      new RegExp(`headroom ${MAX_HEADROOM + 1} must`),
    );
  });

  it('attach reads the geometry from the buffer and shares the slots and counters', () => {
    const a = new PacketRing({ slots: 8, packetBytes: 256, headroom: VNET_HDR_LEN });
    const b = PacketRing.attach(a.handles());
    expect([b.slots, b.packetBytes, b.headroom]).toEqual([8, 256, VNET_HDR_LEN]);
    const { buf, off } = source(new Rng(1), VNET_HDR_LEN, 40);
    expect(b.push(buf, off, 40, 3)).toBe(true);
    expect(a.pushed).toBe(1);
    const got = collect(a);
    expect(got).toHaveLength(1);
    expect(got[0]!.bytes).toEqual(Array.from(buf.subarray(off, off + 40)));
    expect(b.received).toBe(1);
    expect(() => PacketRing.attach({ buffer: new SharedArrayBuffer(4096) })).toThrow(
      /not a packet ring/,
    );
  });
});

describe('PacketRing slots', () => {
  it('round-trips lengths (0 and up to packetBytes), kinds (any int32) and the header bytes', () => {
    const rng = new Rng(7);
    const ring = new PacketRing({ slots: 16, packetBytes: 512, headroom: VNET_HDR_LEN });
    const cases = [
      { len: 0, kind: 0 },
      { len: 1, kind: 1 },
      { len: 511, kind: -1 },
      { len: 512, kind: 0x7fffffff },
      { len: 60, kind: -0x80000000 },
    ];
    const sent = cases.map((c) => ({ ...c, ...source(rng, VNET_HDR_LEN, c.len) }));
    for (const s of sent) expect(ring.push(s.buf, s.off, s.len, s.kind)).toBe(true);
    const got = collect(ring);
    expect(got.map((g) => [g.len, g.kind])).toEqual(cases.map((c) => [c.len, c.kind]));
    got.forEach((g, i) => {
      const s = sent[i]!;
      expect(g.hdr).toEqual(Array.from(s.buf.subarray(s.off - VNET_HDR_LEN, s.off)));
      expect(g.bytes).toEqual(Array.from(s.buf.subarray(s.off, s.off + s.len)));
      expect((g.off - SLOT_PREFIX) % 32).toBe(0); // every slot starts 32-byte aligned
    });
  });

  it('with headroom 0 copies no byte before the packet (a packet at offset 0 is fine)', () => {
    const ring = new PacketRing({ slots: 4, packetBytes: 64 });
    const buf = Uint8Array.from([1, 2, 3]);
    expect(ring.push(buf, 0, 3, 9)).toBe(true);
    expect(collect(ring)).toEqual([
      { len: 3, kind: 9, hdr: [], bytes: [1, 2, 3], off: SLOT_PREFIX },
    ]);
  });

  it('keeps order across many wrap-arounds of the indexes, with interleaved push and drain', () => {
    const rng = new Rng(11);
    const ring = new PacketRing({ slots: 8, packetBytes: 128, headroom: 4 });
    let next = 0;
    let expect_ = 0;
    for (let round = 0; round < 2000; round++) {
      const k = 1 + rng.int(8);
      for (let i = 0; i < k; i++) {
        const len = 1 + rng.int(128);
        const buf = new Uint8Array(4 + len);
        for (let j = 0; j < buf.length; j++) buf[j] = (next * 31 + j) & 0xff;
        if (ring.push(buf, 4, len, next)) next++;
        else break; // full: the next packet keeps its number
      }
      ring.drain((b, off, len, kind) => {
        expect(kind).toBe(expect_);
        for (let j = -4; j < len; j++)
          if (b[off + j] !== ((kind * 31 + j + 4) & 0xff)) throw new Error(`byte ${j} of ${kind}`);
        expect_++;
      }, 1 + rng.int(8));
    }
    for (const g of collect(ring)) expect(g.kind).toBe(expect_++);
    expect(expect_).toBe(next);
    expect(next).toBeGreaterThan(8 * 100); // the indexes went round many times
    expect(ring.pushed).toBe(next);
    expect(ring.received).toBe(next);
  });

  it('refuses and counts pushes into a full ring, and takes them again once drained', () => {
    const ring = new PacketRing({ slots: 4, packetBytes: 64 });
    const buf = new Uint8Array(10);
    for (let i = 0; i < 4; i++) expect(ring.push(buf, 0, 10, i)).toBe(true);
    expect(ring.push(buf, 0, 10, 4)).toBe(false);
    expect(ring.push(buf, 0, 10, 5)).toBe(false);
    expect([ring.pushed, ring.full, ring.length]).toEqual([4, 2, 4]);
    expect(collect(ring, 1).map((g) => g.kind)).toEqual([0]);
    expect(ring.push(buf, 0, 10, 6)).toBe(true);
    expect(collect(ring).map((g) => g.kind)).toEqual([1, 2, 3, 6]);
    expect([ring.pushed, ring.full, ring.received]).toEqual([5, 2, 5]);
  });

  it('refuses and counts a packet longer than a slot (never truncated), and bad off/len as invalid', () => {
    const ring = new PacketRing({ slots: 4, packetBytes: 64, headroom: 2 });
    const buf = new Uint8Array(100);
    expect(ring.push(buf, 2, 65, 1)).toBe(false);
    expect(ring.push(buf, 2, 64, 2)).toBe(true);
    expect(ring.oversize).toBe(1);
    expect(ring.push(buf, 1, 10, 3)).toBe(false); // no room for the 2 header bytes
    expect(ring.push(buf, 2, 99, 4)).toBe(false); // past the end of buf (and oversize: invalid first)
    expect(ring.push(buf, 2, -1, 5)).toBe(false);
    expect(ring.push(buf, 2.5, 4, 6)).toBe(false);
    expect(ring.invalid).toBe(4);
    expect([ring.pushed, ring.full]).toEqual([1, 0]);
    expect(collect(ring).map((g) => [g.kind, g.len])).toEqual([[2, 64]]);
  });

  it('gives the slot back to the producer when the sink throws (that packet is lost, the ring is not stuck)', () => {
    const ring = new PacketRing({ slots: 2, packetBytes: 32 });
    const buf = new Uint8Array(4);
    ring.push(buf, 0, 4, 1);
    ring.push(buf, 0, 4, 2);
    expect(() =>
      ring.drain(() => {
        throw new Error('sink');
      }, 10),
    ).toThrow('sink');
    expect(ring.length).toBe(1);
    expect(ring.push(buf, 0, 4, 3)).toBe(true);
    expect(collect(ring).map((g) => g.kind)).toEqual([2, 3]);
  });
});

describe('PacketRing wake-up (one thread)', () => {
  it('whenReadable is null while there is something to drain, else arms; a push disarms and resolves it', async () => {
    const ring = new PacketRing({ slots: 4, packetBytes: 32 });
    const buf = new Uint8Array(4);
    ring.push(buf, 0, 4, 1);
    expect(ring.whenReadable()).toBeNull();
    expect(ring.sleeping).toBe(false);
    collect(ring);
    const w = ring.whenReadable();
    expect(w).not.toBeNull();
    expect(ring.sleeping).toBe(true);
    ring.push(buf, 0, 4, 2);
    expect(ring.sleeping).toBe(false);
    expect(ring.wakeups).toBe(1);
    await w;
    expect(collect(ring).map((g) => g.kind)).toEqual([2]);
    // A consumer that keeps up is not woken per packet: no armed consumer, no notify.
    ring.push(buf, 0, 4, 3);
    expect(ring.wakeups).toBe(1);
  });

  it('consume drains what is pushed later and ends on close', async () => {
    const ring = new PacketRing({ slots: 4, packetBytes: 32 });
    const seen: number[] = [];
    const done = ring.consume((_b, _o, _l, kind) => {
      seen.push(kind);
      if (kind === 2) ring.close();
    }, 16);
    const buf = new Uint8Array(4);
    await new Promise((r) => setImmediate(r));
    expect(ring.sleeping).toBe(true);
    ring.push(buf, 0, 4, 1);
    ring.push(buf, 0, 4, 2);
    await done;
    expect(seen).toEqual([1, 2]);
    const idle = new PacketRing({ slots: 2, packetBytes: 32 });
    const p = idle.consume(() => {}, 1);
    await new Promise((r) => setImmediate(r));
    idle.close();
    await p; // resolves: close wakes the consumer's own wait
  });
});
