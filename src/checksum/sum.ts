/**
 * The Internet checksum (RFC 1071), optimised.
 *
 * Theory of operation. The one's complement sum of 16-bit words does not depend on
 * byte order (RFC 1071 §2(B)): summing the data as little-endian words and swapping
 * the bytes of the folded result gives the big-endian sum. So the bulk of the
 * buffer is read as aligned little-endian 32-bit words through one cached
 * Uint32Array over the Buffer's ArrayBuffer, into four independent accumulators
 * (no carries are lost: a double holds 2^53, so each accumulator may take 2^21
 * words before a fold; we fold every CHUNK_WORDS). A 32-bit word hi·2^16+lo is
 * congruent to hi+lo mod 0xffff, which is all the one's complement sum needs.
 *
 * Bytes before the first 4-byte-aligned address ("head") and after the last whole
 * word ("tail") are summed one by one at their position relative to the start of
 * the data. When the head has an odd length, every body byte sits at the opposite
 * parity from the one it has inside the body, which is one more byte swap of the
 * body's sum; two swaps cancel, so the body's LE sum is used unswapped then.
 *
 * Nothing here allocates per call: the Uint32Array view is rebuilt only when a
 * different ArrayBuffer comes in (the data plane uses one batch buffer). The
 * accumulators are doubles (a Uint32 element does not fit a small integer), which
 * V8 adds without overflow checks; ~0.3 ns a word on the benchmark machine.
 *
 * The slow, obviously correct twin is `sum.reference.ts`; tests compare the two.
 */

/** Fold any non-negative integer below 2^53 to 16 bits with end-around carry. */
export function fold(x: number): number {
  // 2^32 ≡ 2^16 ≡ 1 (mod 0xffff), so the high and low parts may simply be added.
  // `x >>> 0` is x mod 2^32 for any integer below 2^53; this avoids the float `%`
  // (a C call in V8), which used to cost ~15 ns per call.
  if (x > 0xffffffff) {
    const lo = x >>> 0;
    x = (lo & 0xffff) + (lo >>> 16) + (x - lo) / 0x100000000; // < 2^22
  }
  x = (x & 0xffff) + (x >>> 16); // <= 0x1fffe
  // A value in [0x10000, 0x1fffe] has low part <= 0xfffe, so this is <= 0xffff;
  // it is 0 only for x = 0, as in a one's complement adder.
  return (x & 0xffff) + (x >>> 16);
}

/** Swap the two bytes of a 16-bit value. */
export function swap16(x: number): number {
  return ((x & 0xff) << 8) | (x >>> 8);
}

let cachedView: Uint8Array | null = null;
let cachedBuffer: ArrayBufferLike | null = null;
let cachedWords: Uint32Array = new Uint32Array(0);

/**
 * The Uint32Array over `buf`'s whole ArrayBuffer. The `.buffer` getter is a call
 * V8 does not inline (~12 ns), so the last view seen is remembered too: a view's
 * buffer never changes, and the data plane passes the same batch buffer each time.
 */
function wordsOf(buf: Uint8Array): Uint32Array {
  if (buf === cachedView) return cachedWords;
  const ab = buf.buffer;
  if (ab !== cachedBuffer) {
    cachedWords = new Uint32Array(ab, 0, ab.byteLength >>> 2);
    cachedBuffer = ab;
  }
  cachedView = buf;
  return cachedWords;
}

/** Below this length a plain 16-bit loop beats setting up the word loop. */
const SHORT_LEN = 32;
/** Words summed between folds: 4 accumulators × 2^19 words each stay below 2^51. */
const CHUNK_WORDS = 1 << 21;

/**
 * One's complement sum (RFC 1071) of `len` bytes of `buf` from `off`, read as
 * big-endian 16-bit words (an odd last byte is padded with zero), added to
 * `initial` (for example a pseudo-header sum). Returns the folded, uncomplemented
 * 16-bit sum; the caller complements it where it writes a checksum field.
 * The caller guarantees that `off` and `len` lie within `buf`.
 *
 * Kept small on purpose so that V8 inlines it into the caller: short data (IP
 * headers, pseudo-headers) is summed right here, and only longer data pays for a
 * call into the word loop (measured: 20 B in ~7 ns instead of ~13 ns).
 */
export function sum16(buf: Uint8Array, off: number, len: number, initial = 0): number {
  if (len >= SHORT_LEN) return sumWords(buf, off, len, initial);
  let s = initial;
  const end = off + (len & ~1);
  for (let i = off; i < end; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
  if (len & 1) s += buf[off + len - 1]! << 8;
  return fold(s);
}

/** `sum16` for `len` >= SHORT_LEN: the aligned 32-bit word loop. */
function sumWords(buf: Uint8Array, off: number, len: number, initial: number): number {
  const abs = buf.byteOffset + off;
  const head = (4 - (abs & 3)) & 3;
  let s = initial;
  // Head bytes, at their parity relative to the start of the data.
  for (let i = 0; i < head; i++) s += (i & 1) === 0 ? buf[off + i]! << 8 : buf[off + i]!;

  const bodyBytes = len - head;
  const nWords = bodyBytes >>> 2;
  const words = wordsOf(buf);
  let w = (abs + head) >>> 2;
  const wEnd = w + nWords;
  let le = 0;
  while (w < wEnd) {
    const stop = wEnd - w > CHUNK_WORDS ? w + CHUNK_WORDS : wEnd;
    let a0 = 0;
    let a1 = 0;
    let a2 = 0;
    let a3 = 0;
    // 16 words a round into four independent accumulators: the adds of one
    // round do not wait on each other (measured ~5% over 8 words a round).
    const stop16 = stop - 15;
    for (; w < stop16; w += 16) {
      a0 += words[w]! + words[w + 4]! + (words[w + 8]! + words[w + 12]!);
      a1 += words[w + 1]! + words[w + 5]! + (words[w + 9]! + words[w + 13]!);
      a2 += words[w + 2]! + words[w + 6]! + (words[w + 10]! + words[w + 14]!);
      a3 += words[w + 3]! + words[w + 7]! + (words[w + 11]! + words[w + 15]!);
    }
    for (; w < stop; w++) a0 += words[w]!;
    le = fold(le + a0 + a1 + a2 + a3);
  }
  // The LE sum of the body, seen big-endian from the body's start, is swap16(le);
  // an odd head shifts the body by one byte, which swaps it back.
  s += (head & 1) === 0 ? swap16(le) : le;

  // Tail bytes, at their parity relative to the start of the data.
  for (let i = head + (nWords << 2); i < len; i++) {
    s += (i & 1) === 0 ? buf[off + i]! << 8 : buf[off + i]!;
  }
  return fold(s);
}

/** The checksum field value for the data: the complement of its sum. */
export function checksum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  return ~sum16(buf, off, len, initial) & 0xffff;
}
