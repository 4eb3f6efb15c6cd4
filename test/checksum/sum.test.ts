import { describe, expect, it } from 'vitest';
import { checksum, fold, sum16 } from '../../src/checksum/sum.js';
import { checksumReference, sum16Reference } from '../../src/checksum/sum.reference.js';
import { loadNative } from '../../src/native/index.js';
import { fromHex } from '../../src/wire/bytes.js';
import { Rng } from '../support/rng.js';

describe('sum16', () => {
  it('matches the RFC 1071 §3 worked example', () => {
    // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
    const b = fromHex('0001f203f4f5f6f7');
    expect(sum16(b, 0, 8)).toBe(0xddf2);
    expect(sum16Reference(b, 0, 8)).toBe(0xddf2);
  });

  it('gives the IPv4 header checksum of a known header', () => {
    // IPv4 header from the Wikipedia "Internet checksum" article: checksum b861.
    const b = fromHex('450000730000400040110000c0a80001c0a800c7');
    expect(checksum(b, 0, 20)).toBe(0xb861);
  });

  it('is 0 for empty data and folds its initial value', () => {
    const b = new Uint8Array(4);
    expect(sum16(b, 0, 0)).toBe(0);
    expect(sum16(b, 0, 0, 0x1ffff)).toBe(1);
    expect(fold(0x2fffd)).toBe(0xffff); // fffd + 2
    expect(fold(0x3fffd)).toBe(0x0001); // fffd + 3 = 1_0000 -> 0001
  });

  it('equals the reference twin on 100,000 seeded random buffers (lengths 0-2000 and 65535, offsets 0-7)', () => {
    const rng = new Rng(0x5eed_1071);
    // One big ArrayBuffer, sliced at varying byte offsets so the alignment of the
    // start varies as well as the offset argument.
    const backing = new Uint8Array(65535 + 64);
    rng.fill(backing);
    let cases = 0;
    for (let i = 0; i < 100_000; i++) {
      const len = i % 1000 === 999 ? 65535 : rng.int(2001);
      const shift = rng.int(8);
      const off = rng.int(8);
      const view = backing.subarray(shift, shift + off + len);
      if (i % 97 === 0) rng.fill(backing.subarray(0, 4096));
      const initial = rng.int(4) === 0 ? rng.int(0x20000) : 0;
      const a = sum16(view, off, len, initial);
      const b = sum16Reference(view, off, len, initial);
      if (a !== b)
        expect({ len, shift, off, initial, a }).toEqual({ len, shift, off, initial, a: b });
      cases++;
    }
    expect(cases).toBe(100_000);
  });

  it('handles all-0xff data (maximum carries) like the twin', () => {
    const b = new Uint8Array(65536 + 8).fill(0xff);
    for (const len of [1, 2, 3, 31, 32, 33, 1500, 65535, 65536]) {
      for (const off of [0, 1, 2, 3]) {
        expect(sum16(b, off, len)).toBe(sum16Reference(b, off, len));
        expect(checksum(b, off, len)).toBe(checksumReference(b, off, len));
      }
    }
  });

  it('native C sum (single and batched) equals the twin', () => {
    const native = loadNative();
    const rng = new Rng(42);
    const buf = new Uint8Array(70000);
    rng.fill(buf);
    const offsets = new Uint32Array(64);
    const lengths = new Uint32Array(64);
    const out = new Uint32Array(64);
    for (let round = 0; round < 200; round++) {
      for (let i = 0; i < 64; i++) {
        offsets[i] = rng.int(8) + rng.int(1000);
        lengths[i] = i === 0 ? 65535 : rng.int(2001);
      }
      native.sum16Batch(buf, offsets, lengths, 64, out);
      for (let i = 0; i < 64; i++) {
        const want = sum16Reference(buf, offsets[i]!, lengths[i]!);
        expect(out[i]).toBe(want);
        expect(native.sum16(buf, offsets[i]!, lengths[i]!)).toBe(want);
      }
    }
  });

  it('native addon refuses bad arguments with a clear error', () => {
    const native = loadNative();
    expect(() => native.sum16(new Uint8Array(4), 2, 8)).toThrow(/beyond buffer/);
    expect(() => native.sum16('x' as unknown as Uint8Array, 0, 0)).toThrow(/buf must be/);
  });
});
