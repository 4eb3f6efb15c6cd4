import { describe, expect, it } from 'vitest';
import { copyOf, fromHex, get16, get32, set16, set32, toHex } from '../../src/wire/bytes.js';
import { hex, unhex } from '../support/builder.js';
import { Rng } from '../support/rng.js';

describe('get16 / get32 (big-endian reads)', () => {
  const b = unhex('0102a5ff80007fff');

  it('reads network byte order at any offset', () => {
    expect(get16(b, 0)).toBe(0x0102);
    expect(get16(b, 1)).toBe(0x02a5);
    expect(get16(b, 3)).toBe(0xff80);
    expect(get32(b, 0)).toBe(0x0102a5ff);
    expect(get32(b, 3)).toBe(0xff80007f);
  });

  it('returns unsigned values (no sign from bit 31)', () => {
    expect(get32(unhex('ffffffff'), 0)).toBe(0xffffffff);
    expect(get32(unhex('80000000'), 0)).toBe(0x80000000);
  });
});

describe('set16 / set32', () => {
  it('write network byte order and touch only their bytes', () => {
    const b = new Uint8Array(8).fill(0xa5);
    set16(b, 1, 0xbeef);
    expect(hex(b)).toBe('a5beefa5a5a5a5a5');
    set32(b, 4, 0xdeadbeef);
    expect(hex(b)).toBe('a5beefa5deadbeef');
  });

  it('keep the low 16 / 32 bits of larger or negative values', () => {
    const b = new Uint8Array(4);
    set16(b, 0, 0x12345);
    expect(hex(b.subarray(0, 2))).toBe('2345');
    set32(b, 0, -1);
    expect(hex(b)).toBe('ffffffff');
  });

  it('round-trip with the getters on seeded random values', () => {
    const rng = new Rng(16);
    const b = new Uint8Array(16);
    for (let i = 0; i < 2000; i++) {
      const at = rng.int(12);
      const v16 = rng.int(0x10000);
      const v32 = rng.u32();
      set16(b, at, v16);
      expect(get16(b, at)).toBe(v16);
      set32(b, at, v32);
      expect(get32(b, at)).toBe(v32);
    }
  });
});

describe('fromHex / toHex', () => {
  it('parse hex with any whitespace, either case', () => {
    expect(Array.from(fromHex('45 00\n00 3C\tAb'))).toEqual([0x45, 0x00, 0x00, 0x3c, 0xab]);
    expect(fromHex('').length).toBe(0);
  });

  it('refuse odd lengths and non-hex characters', () => {
    expect(() => fromHex('abc')).toThrow(/not a hex string/);
    expect(() => fromHex('0x12')).toThrow(/not a hex string/);
    expect(() => fromHex('zz')).toThrow(/not a hex string/);
  });

  it('toHex prints lowercase, two digits a byte, over a window', () => {
    const b = unhex('000a0bff10');
    expect(toHex(b)).toBe('000a0bff10');
    expect(toHex(b, 1, 3)).toBe('0a0bff');
    expect(toHex(b, 5)).toBe('');
  });

  it('round-trip random bytes and agree with the builder', () => {
    const rng = new Rng(0x4e4);
    for (let i = 0; i < 200; i++) {
      const b = new Uint8Array(rng.int(64));
      rng.fill(b);
      expect(toHex(b)).toBe(hex(b));
      expect(fromHex(toHex(b))).toEqual(b);
    }
  });
});

describe('copyOf', () => {
  it('copies a Node Buffer, whose own slice() would be a view of the same memory', () => {
    const b = Buffer.from([1, 2, 3, 4]);
    const c = copyOf(b, 1, 3);
    b[1] = 9;
    expect([...c]).toEqual([2, 3]);
    expect(c).toBeInstanceOf(Uint8Array);
  });
});
