/**
 * Reference twin of `sum.ts`: RFC 1071 §4.1 read literally, one byte at a time.
 * Slow on purpose and obviously correct; tests and the benchmark compare the
 * optimised routines against it. Never used on the data plane.
 */

/** Fold with end-around carry, one carry at a time. */
export function foldReference(x: number): number {
  let s = x;
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  return s;
}

/** Byte at even position = high byte of a big-endian 16-bit word; odd = low byte. */
export function sum16Reference(buf: Uint8Array, off: number, len: number, initial = 0): number {
  let s = initial;
  for (let i = 0; i < len; i++) {
    const b = buf[off + i]!;
    s += i % 2 === 0 ? b * 256 : b;
  }
  return foldReference(s);
}

export function checksumReference(buf: Uint8Array, off: number, len: number, initial = 0): number {
  return 0xffff - sum16Reference(buf, off, len, initial);
}
