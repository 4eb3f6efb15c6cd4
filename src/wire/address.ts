/**
 * Addresses at the edges (config, CLI, logs, control and cooperative messages).
 *
 * IPv4 addresses are unsigned 32-bit numbers everywhere, as on the data plane.
 * IPv6 addresses are `bigint`s in 0..2^128-1 on the control plane, and four
 * big-endian u32 words in typed arrays on the data plane (never a bigint, a
 * string or an object per packet): `ipv6ToWords` and `ipv6FromWords` convert
 * between the two. A value's type tells its family: `typeof a === 'bigint'` is
 * IPv6 (`IpAddr`).
 *
 * Input takes every RFC 4291 (section 2.2) text form: full, compressed ("::"),
 * with an embedded dotted quad ("::ffff:198.18.0.1", "64:ff9b::198.18.0.1"),
 * upper or lower case. It refuses what is not an address: zone ids ("fe80::1%eth0"
 * names an interface, not an address), brackets (those belong to an endpoint,
 * `parseEndpoint`) and prefixes ("/64" belongs to a CIDR). ip-num, the project's
 * address library, does the grammar; the refusals come first because ip-num
 * accepts zone ids. Output is RFC 5952: lower case, no leading zeros, the longest
 * run of two or more zero groups (the first of equal ones) as "::", and the
 * dotted quad for a v4-mapped address (::ffff:0:0/96, section 5).
 */

import { IPv6, Validator } from 'ip-num';

/** An address of either family: a u32 number is IPv4, a bigint is IPv6. */
export type IpAddr = number | bigint;

export function ipv4ToString(a: number): string {
  return `${a >>> 24}.${(a >>> 16) & 0xff}.${(a >>> 8) & 0xff}.${a & 0xff}`;
}

/** Strict dotted-quad parser; returns null for anything that is not one. */
export function parseIpv4(s: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  let a = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i]!;
    if (part.length > 1 && part[0] === '0') return null; // no octal-looking octets
    const n = Number(part);
    if (n > 255) return null;
    a = a * 256 + n;
  }
  return a;
}

const IPV6_MAX = (1n << 128n) - 1n;

/** The v4-mapped prefix ::ffff:0:0/96 (RFC 4291 section 2.5.5.2): the value of ::ffff:0.0.0.0. */
export const IPV6_V4MAPPED_BASE = 0xffffn << 32n;

/** Is `a` in ::ffff:0:0/96 (an IPv4 address in IPv6 clothing)? */
export function isV4Mapped(a: bigint): boolean {
  return a >> 32n === 0xffffn;
}

/**
 * Any RFC 4291 text form of an IPv6 address, or null: no zone id, no brackets,
 * no prefix length, no surrounding spaces.
 */
export function parseIpv6(text: string): bigint | null {
  // Only hex digits, ':' and '.' (an embedded dotted quad) can be in an address.
  if (!/^[0-9a-fA-F:.]+$/.test(text) || !text.includes(':')) return null;
  // ip-num allows leading zeros in a dotted quad's octets; RFC 4291 (via the
  // dec-octet of RFC 3986) does not, and neither does parseIpv4.
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.') && parseIpv4(tail) === null) return null;
  if (!Validator.isValidIPv6String(text)[0]) return null;
  try {
    return IPv6.fromString(text).getValue();
  } catch {
    return null;
  }
}

/** RFC 5952 text form of an IPv6 address. */
export function formatIpv6(a: bigint): string {
  if (a < 0n || a > IPV6_MAX) throw new RangeError(`${a} is not an IPv6 address`);
  if (isV4Mapped(a)) return `::ffff:${ipv4ToString(Number(a & 0xffffffffn))}`;
  const words: number[] = [];
  for (let i = 7; i >= 0; i--) words.push(Number((a >> BigInt(16 * i)) & 0xffffn));
  return formatGroups(words);
}

/** Eight 16-bit groups in RFC 5952 form: the longest run (>= 2) of zero groups, the first of equals, as "::". */
function formatGroups(words: readonly number[]): string {
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: readonly number[]) => ws.map((w) => w.toString(16)).join(':');
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

/** RFC 5952 text form of a 16-byte IPv6 address at `off` (a packet's, say). */
export function ipv6ToString(b: Uint8Array, off = 0): string {
  return formatIpv6(ipv6FromBytes(b, off));
}

/** The 16 bytes at `off` as an address. Control plane only (allocates a bigint). */
export function ipv6FromBytes(b: Uint8Array, off: number): bigint {
  let a = 0n;
  for (let i = 0; i < 16; i++) a = (a << 8n) | BigInt(b[off + i]!);
  return a;
}

/** Write `a` as four big-endian u32 words at out[at..at+3] (word i = bytes 4i..4i+3 of the address). */
export function ipv6ToWords(a: bigint, out: Uint32Array, at = 0): void {
  for (let i = 0; i < 4; i++) out[at + i] = Number((a >> BigInt(96 - 32 * i)) & 0xffffffffn);
}

/** `a` as a new array of its four words (control plane: it allocates). */
export function ipv6Words(a: bigint): Uint32Array {
  const w = new Uint32Array(4);
  ipv6ToWords(a, w);
  return w;
}

/** The address held as four big-endian u32 words at w[at..at+3]. */
export function ipv6FromWords(w: Uint32Array, at = 0): bigint {
  let a = 0n;
  for (let i = 0; i < 4; i++) a = (a << 32n) | BigInt(w[at + i]!);
  return a;
}

/** Dotted quad for IPv4, RFC 5952 for IPv6. */
export function formatAddr(a: IpAddr): string {
  return typeof a === 'bigint' ? formatIpv6(a) : ipv4ToString(a);
}

/** A dotted quad (number) or an IPv6 address in any RFC 4291 form (bigint), or null. */
export function parseAddr(text: string): IpAddr | null {
  return text.includes(':') ? parseIpv6(text) : parseIpv4(text);
}

/** "a.b.c.d:port" or "[v6]:port" (RFC 3986 host syntax, as in URLs). */
export function formatEndpoint(address: IpAddr, port: number): string {
  return typeof address === 'bigint'
    ? `[${formatIpv6(address)}]:${port}`
    : `${ipv4ToString(address)}:${port}`;
}

/**
 * "a.b.c.d:port" or "[v6]:port", port 0-65535 in decimal without leading zeros,
 * or null. An IPv6 address without brackets is refused: "2001:2::1:80" could be
 * either the address 2001:2::1:80 or 2001:2::1 port 80.
 */
export function parseEndpoint(text: string): { address: IpAddr; port: number } | null {
  let hostText: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0 || text[close + 1] !== ':') return null;
    hostText = text.slice(1, close);
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return null;
    hostText = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (hostText.includes(':')) return null;
  }
  if (!/^(0|[1-9][0-9]{0,4})$/.test(portText)) return null;
  const port = Number(portText);
  if (port > 65535) return null;
  const address = text.startsWith('[') ? parseIpv6(hostText) : parseIpv4(hostText);
  return address === null ? null : { address, port };
}
