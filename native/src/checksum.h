#ifndef VPM_CHECKSUM_H
#define VPM_CHECKSUM_H
#include <stddef.h>
#include <stdint.h>

/* RFC 1071 one's complement sum of len bytes at p as big-endian 16-bit words,
 * plus initial; returns the folded, uncomplemented 16-bit sum. */
uint16_t vpm_sum16(const uint8_t *p, size_t len, uint32_t initial);

#endif
