/**
 * Incremental checksum update (RFC 1624).
 *
 * When a 16-bit field changes from m to m', the stored checksum HC becomes
 *     HC' = ~(~HC + ~m + m')          (RFC 1624, eqn. 3)
 * in one's complement arithmetic. Eqn. 3, unlike eqn. 2 of RFC 1141, never turns a
 * correct checksum into the "negative zero" 0xffff where a full recompute would
 * give 0x0000: the folded sum stays in [1, 0xffff], just as a full recompute's.
 * A 32-bit field (an IPv4 address) is two 16-bit fields.
 *
 * These are pure functions on numbers; the caller reads and writes the field.
 */

import { fold } from './sum.js';

/** New checksum field value after a 16-bit word of the covered data went from `old` to `now`. */
export function update16(check: number, old: number, now: number): number {
  return ~fold((~check & 0xffff) + (~old & 0xffff) + (now & 0xffff)) & 0xffff;
}

/** New checksum field value after a 32-bit word (e.g. an IPv4 address) went from `old` to `now`. */
export function update32(check: number, old: number, now: number): number {
  return (
    ~fold(
      (~check & 0xffff) +
        (~(old >>> 16) & 0xffff) +
        (~old & 0xffff) +
        (now >>> 16) +
        (now & 0xffff),
    ) & 0xffff
  );
}
