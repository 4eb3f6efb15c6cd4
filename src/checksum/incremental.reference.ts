/**
 * Reference twin of `incremental.ts`: RFC 1624 eqn. 3 spelled out with an explicit
 * one's complement adder, one 16-bit operand at a time.
 */

/** One's complement addition of two 16-bit values (end-around carry). */
export function onesAdd(a: number, b: number): number {
  const s = a + b;
  return s > 0xffff ? s - 0xffff : s;
}

function not16(x: number): number {
  return 0xffff - (x & 0xffff);
}

export function update16Reference(check: number, old: number, now: number): number {
  return not16(onesAdd(onesAdd(not16(check), not16(old)), now & 0xffff));
}

export function update32Reference(check: number, old: number, now: number): number {
  const hiOld = Math.floor(old / 0x10000) & 0xffff;
  const hiNew = Math.floor(now / 0x10000) & 0xffff;
  return update16Reference(update16Reference(check, hiOld, hiNew), old & 0xffff, now & 0xffff);
}

/** Twin of updatePartial32: S + ~old + new with the explicit adder, one 16-bit operand at a time. */
export function updatePartial32Reference(sum: number, old: number, now: number): number {
  const hiOld = Math.floor(old / 0x10000) & 0xffff;
  const hiNew = Math.floor(now / 0x10000) & 0xffff;
  let s = onesAdd(sum & 0xffff, not16(hiOld));
  s = onesAdd(s, not16(old & 0xffff));
  s = onesAdd(s, hiNew);
  return onesAdd(s, now & 0xffff);
}
