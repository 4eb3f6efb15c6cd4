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
 *
 * Partial checksums. A packet whose checksum the kernel will finish (Linux
 * CHECKSUM_PARTIAL; virtio-net NEEDS_CSUM on a TUN with offloads) carries in its
 * L4 checksum field not a checksum but the folded, *uncomplemented* sum S of the
 * pseudo-header alone. Whoever sends it on sums [csum_start, end) — the L4 header
 * with S in it, and the payload — and stores the complement. Hence, for a rewrite:
 *  - a port lies inside [csum_start, end): the final sum will see the new one, so
 *    the field is left alone;
 *  - an address is only in the pseudo-header, i.e. only in S: S has to follow it,
 *        S' = S + ~m + m'              (one's complement; no complement of S)
 *    which is Linux's inet_proto_csum_replace4(sum, skb, from, to, pseudohdr=true)
 *    on a CHECKSUM_PARTIAL skb (`~csum_fold(csum_add(csum_sub(csum_unfold(*sum),
 *    from), to))`) and gVisor's rewritePacket on a partial packet;
 *  - the IPv4 header checksum is always a complete one: update16/update32.
 * The same holds for a UDP partial sum, which is never 0 (no "no checksum" case).
 *
 * A 128-bit field (an IPv6 address) is eight 16-bit fields: `delta32` gives the
 * unfolded ~m + m' of each 32-bit word, the four are added (at most 2^20, no
 * precision lost) and applied once with `updateDelta` / `updatePartialDelta`:
 * one's complement addition is associative, so this equals eight update16 steps.
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

/** New partial (pseudo-header) sum after a 16-bit word of the pseudo-header went from `old` to `now`. */
export function updatePartial16(sum: number, old: number, now: number): number {
  return fold((sum & 0xffff) + (~old & 0xffff) + (now & 0xffff));
}

/** New partial (pseudo-header) sum after a 32-bit word (an IPv4 address) went from `old` to `now`. */
export function updatePartial32(sum: number, old: number, now: number): number {
  return fold(
    (sum & 0xffff) + (~(old >>> 16) & 0xffff) + (~old & 0xffff) + (now >>> 16) + (now & 0xffff),
  );
}

/** ~old + now of a 32-bit word, in 16-bit halves, unfolded (< 2^18): sum several, then apply one `updateDelta`. */
export function delta32(old: number, now: number): number {
  return (~old >>> 16) + (~old & 0xffff) + (now >>> 16) + (now & 0xffff);
}

/** New checksum field value after covered words changed by the summed `delta32`s `d` (RFC 1624 eqn. 3). */
export function updateDelta(check: number, d: number): number {
  return ~fold((~check & 0xffff) + d) & 0xffff;
}

/** New partial (pseudo-header) sum after pseudo-header words changed by the summed `delta32`s `d`. */
export function updatePartialDelta(sum: number, d: number): number {
  return fold((sum & 0xffff) + d);
}
