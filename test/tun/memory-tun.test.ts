import { describe, expect, it } from 'vitest';
import { MemoryTun } from '../../src/tun/memory-tun.js';

/** A distinct packet: first byte 0x45, then i's bytes, `len` long. */
function pkt(i: number, len = 60): Uint8Array {
  const p = new Uint8Array(len).fill(0xa5);
  p[0] = 0x45;
  p[1] = i & 0xff;
  p[2] = (i >>> 8) & 0xff;
  return p;
}

function packets(n: number, len?: number): Uint8Array[] {
  return Array.from({ length: n }, (_, i) => pkt(i, len));
}

/** Collect every batch as copies, with the slot offsets seen. */
function collector(dev: MemoryTun): { batches: Uint8Array[][]; offsets: number[][] } {
  const batches: Uint8Array[][] = [];
  const offsets: number[][] = [];
  dev.start((count) => {
    const b: Uint8Array[] = [];
    const o: number[] = [];
    for (let i = 0; i < count; i++) {
      const off = dev.rx.offsets[i]!;
      o.push(off);
      b.push(new Uint8Array(dev.rx.buf.subarray(off, off + dev.rx.lengths[i]!))); // a copy
    }
    batches.push(b);
    offsets.push(o);
  });
  return { batches, offsets };
}

describe('MemoryTun', () => {
  it('has the kernel device defaults: batch 64, MTU 1500, 1536-byte slots, one rx buffer', () => {
    const dev = new MemoryTun();
    expect(dev).toMatchObject({ name: 'mem0', batchSize: 64, mtu: 1500, slotSize: 1536 });
    expect(dev.rx.buf.length).toBe(64 * 1536);
    expect(dev.rx.offsets.length).toBe(64);
    expect(dev.rx.lengths.length).toBe(64);
  });

  it('delivers injected packets in batches of at most batchSize, slot i at i * slotSize', () => {
    const dev = new MemoryTun({ batchSize: 64 });
    const { batches, offsets } = collector(dev);
    const sent = packets(150);
    dev.inject(sent);
    expect(batches.map((b) => b.length)).toEqual([64, 64, 22]);
    expect(offsets[2]).toEqual(Array.from({ length: 22 }, (_, i) => i * 1536));
    expect(batches.flat()).toEqual(sent);
    expect(dev.stats()).toMatchObject({
      readPackets: 150,
      readBatches: 3,
      readFullBatches: 2,
      readEagain: 1,
    });
  });

  it('reuses one rx buffer for every batch', () => {
    const dev = new MemoryTun({ batchSize: 2 });
    const bufs = new Set<Buffer>();
    dev.start(() => bufs.add(dev.rx.buf));
    dev.inject(packets(7));
    expect(bufs.size).toBe(1);
    expect(dev.stats().readBatches).toBe(4);
  });

  it('keeps packets while stopped and delivers them on start', () => {
    const dev = new MemoryTun({ batchSize: 4 });
    dev.inject(packets(6));
    expect(dev.pending).toBe(6);
    const { batches } = collector(dev);
    expect(batches.map((b) => b.length)).toEqual([4, 2]);
    expect(dev.pending).toBe(0);
  });

  it('stop() inside onBatch leaves the rest pending; start() resumes in order', () => {
    const dev = new MemoryTun({ batchSize: 4 });
    const seen: number[] = [];
    dev.start((count) => {
      for (let i = 0; i < count; i++) seen.push(dev.rx.buf[dev.rx.offsets[i]! + 1]!);
      dev.stop();
    });
    dev.inject(packets(10));
    expect(seen).toEqual([0, 1, 2, 3]);
    expect(dev.pending).toBe(6);
    dev.start((count) => {
      for (let i = 0; i < count; i++) seen.push(dev.rx.buf[dev.rx.offsets[i]! + 1]!);
    });
    expect(seen).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('inject() from inside onBatch queues: the packets follow in a later batch', () => {
    const dev = new MemoryTun({ batchSize: 8 });
    const sizes: number[] = [];
    let once = true;
    dev.start((count) => {
      sizes.push(count);
      if (once) {
        once = false;
        dev.inject(packets(3));
        expect(sizes).toEqual([2]); // not re-entered
      }
    });
    dev.inject(packets(2));
    expect(sizes).toEqual([2, 3]);
  });

  it('an exception from onBatch propagates to inject(); the rest stays pending', () => {
    const dev = new MemoryTun({ batchSize: 2 });
    dev.start(() => {
      throw new Error('boom');
    });
    expect(() => dev.inject(packets(5))).toThrow('boom');
    expect(dev.pending).toBe(3);
  });

  it('refuses a packet that does not fit a slot (larger than any packet the MTU allows)', () => {
    const dev = new MemoryTun({ mtu: 1500 });
    expect(() => dev.inject([pkt(0, 1536)])).toThrow(RangeError);
    dev.inject([pkt(0, 1535)]);
    expect(dev.pending).toBe(1);
  });

  it('write() copies the packets it takes', () => {
    const dev = new MemoryTun();
    const buf = new Uint8Array(100).map((_, i) => i);
    expect(dev.write(buf, Uint32Array.of(10, 50), Uint32Array.of(5, 3), 2)).toBe(2);
    buf.fill(0);
    expect(dev.written).toEqual([Uint8Array.of(10, 11, 12, 13, 14), Uint8Array.of(50, 51, 52)]);
    expect(dev.stats()).toMatchObject({ writeCalls: 1, writePackets: 2, writeQueueFull: 0 });
  });

  it('write() stops at a full queue (writeCapacity) and reports how many it took', () => {
    const dev = new MemoryTun({ writeCapacity: 3 });
    const buf = new Uint8Array(64);
    const offs = Uint32Array.of(0, 8, 16, 24, 32);
    const lens = Uint32Array.of(8, 8, 8, 8, 8);
    expect(dev.write(buf, offs, lens, 5)).toBe(3);
    expect(dev.write(buf, offs, lens, 5)).toBe(0);
    expect(dev.stats()).toMatchObject({ writePackets: 3, writeQueueFull: 2, lastWriteErrno: 11 });
    dev.writeCapacity = 10; // the queue drained
    expect(dev.write(buf, offs, lens, 5)).toBe(5);
    expect(dev.written.length).toBe(8);
  });

  it('write() refuses a count or a packet outside the arrays and buffer', () => {
    const dev = new MemoryTun();
    const buf = new Uint8Array(16);
    expect(() => dev.write(buf, Uint32Array.of(0), Uint32Array.of(8), 2)).toThrow(RangeError);
    expect(() => dev.write(buf, Uint32Array.of(10), Uint32Array.of(8), 1)).toThrow(RangeError);
    expect(dev.stats().writeCalls).toBe(0);
  });

  it('echoes in place: a handler rewrites rx and writes it straight back', () => {
    const dev = new MemoryTun({ batchSize: 16 });
    const { buf, offsets, lengths } = dev.rx;
    dev.start((count) => {
      for (let i = 0; i < count; i++) buf[offsets[i]! + 3] = 0xee;
      expect(dev.write(buf, offsets, lengths, count)).toBe(count);
    });
    dev.inject(packets(20, 40));
    expect(dev.written.length).toBe(20);
    expect(dev.written.every((p, i) => p.length === 40 && p[1] === i && p[3] === 0xee)).toBe(true);
  });

  it('close() inside onBatch ends delivery; later use throws ERR_TUN_CLOSED; close is idempotent', () => {
    const dev = new MemoryTun({ batchSize: 2 });
    let calls = 0;
    dev.start(() => {
      calls++;
      dev.close();
      dev.close();
    });
    dev.inject(packets(6));
    expect(calls).toBe(1);
    expect(dev.closed).toBe(true);
    const buf = new Uint8Array(8);
    expect(() => dev.write(buf, Uint32Array.of(0), Uint32Array.of(8), 1)).toThrow(
      expect.objectContaining({ code: 'ERR_TUN_CLOSED', name: 'TunError' }),
    );
    expect(() => dev.start(() => {})).toThrow(expect.objectContaining({ code: 'ERR_TUN_CLOSED' }));
    expect(() => dev.inject(packets(1))).toThrow(
      expect.objectContaining({ code: 'ERR_TUN_CLOSED' }),
    );
    expect(dev.stats().readBatches).toBe(1);
  });

  it('start() twice throws ERR_TUN_STARTED', () => {
    const dev = new MemoryTun();
    dev.start(() => {});
    expect(() => dev.start(() => {})).toThrow(expect.objectContaining({ code: 'ERR_TUN_STARTED' }));
  });

  it('fail() stops reading and reports ERR_TUN_IO to onError, or throws without one', () => {
    const dev = new MemoryTun();
    const errors: string[] = [];
    dev.start(
      () => {},
      (e) => errors.push(`${e.code} ${e.errno} ${e.syscall}`),
    );
    dev.fail();
    expect(errors).toEqual(['ERR_TUN_IO 77 read']);
    expect(dev.started).toBe(false);
    expect(dev.stats()).toMatchObject({ readErrors: 1, lastReadErrno: 77 });
    dev.start(() => {});
    expect(() => dev.fail(5)).toThrow(expect.objectContaining({ code: 'ERR_TUN_IO', errno: 5 }));
  });

  it('refuses bad options with ERR_TUN_OPTION', () => {
    expect(() => new MemoryTun({ batchSize: 0 })).toThrow(
      expect.objectContaining({ code: 'ERR_TUN_OPTION' }),
    );
    expect(() => new MemoryTun({ mtu: 1500, slotSize: 1500 })).toThrow(/slotSize/);
  });
});
