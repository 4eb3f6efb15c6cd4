/*
 * RFC 1071 sum in C: the physical reference the benchmark compares the
 * TypeScript routine against. Sums 32-bit native-endian words into a 64-bit
 * accumulator (no carry is lost for any length below 2^32 words), folds, and
 * swaps to big-endian order on little-endian hosts (RFC 1071 §2(B)).
 * Unaligned head and odd tail are handled bytewise at their parity.
 */
#include "checksum.h"
#include <string.h>

static inline uint16_t fold64(uint64_t s) {
  s = (s & 0xffffffffu) + (s >> 32);
  s = (s & 0xffffffffu) + (s >> 32);
  s = (s & 0xffffu) + (s >> 16);
  s = (s & 0xffffu) + (s >> 16);
  s = (s & 0xffffu) + (s >> 16);
  return (uint16_t)s;
}

static inline uint16_t swap16(uint16_t x) { return (uint16_t)((x << 8) | (x >> 8)); }

uint16_t vpm_sum16(const uint8_t *p, size_t len, uint32_t initial) {
  uint64_t s = initial;
  size_t i = 0;
  /* Head: bytes before 4-byte alignment, as big-endian positions. */
  size_t head = (4 - ((uintptr_t)p & 3)) & 3;
  if (head > len) head = len;
  for (; i < head; i++) s += (i & 1) ? p[i] : (uint32_t)p[i] << 8;

  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  size_t words = (len - head) / 4;
  const uint8_t *q = p + head;
  size_t w = 0;
  for (; w + 4 <= words; w += 4) {
    uint32_t x0, x1, x2, x3;
    memcpy(&x0, q + 4 * w, 4);
    memcpy(&x1, q + 4 * w + 4, 4);
    memcpy(&x2, q + 4 * w + 8, 4);
    memcpy(&x3, q + 4 * w + 12, 4);
    a0 += x0;
    a1 += x1;
    a2 += x2;
    a3 += x3;
  }
  for (; w < words; w++) {
    uint32_t x;
    memcpy(&x, q + 4 * w, 4);
    a0 += x;
  }
  uint16_t body = fold64(a0 + a1 + a2 + a3);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  body = swap16(body); /* native LE sum -> big-endian sum from the body's start */
#endif
  if (head & 1) body = swap16(body); /* body starts at an odd position of the data */
  s += body;

  for (i = head + words * 4; i < len; i++) s += (i & 1) ? p[i] : (uint32_t)p[i] << 8;
  return fold64(s);
}
