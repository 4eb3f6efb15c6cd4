/**
 * Fuzz target: the checked parser, `checkPacket`, on raw bytes (at offset 0 and
 * at an odd offset inside a larger buffer). It must never throw, and on Check.OK
 * every offset it reports must lie inside the packet; `checkFirstFragment` and,
 * for an ICMP error, `checkQuoted` on its quote must not throw either.
 */

import {
  Check,
  checkFirstFragment,
  checkPacket,
  checkQuoted,
  PacketInfo,
  QuotedPacket,
} from '../../../src/wire/parse.js';

const info = new PacketInfo();
const quoted = new QuotedPacket();
const big = new Uint8Array(70_000);

function fail(msg: string): never {
  throw new Error(`checkPacket: ${msg}`);
}

function inside(what: string, v: number, lo: number, hi: number): void {
  if (!(v >= lo && v <= hi)) fail(`${what} ${v} outside [${lo}, ${hi}]`);
}

/** On Check.OK: the offsets PacketInfo reports lie inside the packet. */
function checkInfo(off: number, len: number): void {
  const end = off + len;
  if (info.version !== 4 && info.version !== 6) fail(`version ${info.version}`);
  inside('ipOff', info.ipOff, off, off);
  inside('ipHeaderLen', info.ipHeaderLen, info.version === 4 ? 20 : 40, info.ipTotalLen);
  inside('ip end', info.ipOff + info.ipTotalLen, off, end);
  const ipEnd = info.ipOff + info.ipTotalLen;
  if (info.l4Off < 0) {
    if (!info.isFragment && [1, 6, 17, 58].includes(info.protocol) && info.version === 4)
      fail(`protocol ${info.protocol} not a fragment, but its L4 header is not parsed`);
    return;
  }
  if (info.isFragment) fail('a fragment with its L4 header parsed');
  inside('l4Off', info.l4Off, info.ipOff + info.ipHeaderLen, ipEnd);
  inside('l4 end', info.l4Off + info.l4Len, info.l4Off, ipEnd);
  inside('l4HeaderLen', info.l4HeaderLen, 0, info.l4Len);
  inside(
    'payloadOff',
    info.payloadOff,
    info.l4Off + info.l4HeaderLen,
    info.l4Off + info.l4HeaderLen,
  );
  inside(
    'payload end',
    info.payloadOff + info.payloadLen,
    info.payloadOff,
    info.l4Off + info.l4Len,
  );
}

function one(buf: Uint8Array, off: number, len: number): void {
  const r = checkPacket(buf, off, len, info);
  if (r !== Check.OK) return;
  checkInfo(off, len);
  if (info.isFragment && info.fragOffset === 0 && checkFirstFragment(buf, info)) {
    inside(
      'first fragment payload end',
      info.payloadOff + info.payloadLen,
      info.payloadOff,
      info.ipOff + info.ipTotalLen,
    );
  }
  // An ICMP error's quote (from its 8-byte header on).
  if (info.protocol === 1 && info.l4Off >= 0 && info.l4Len >= 8) {
    const qEnd = info.l4Off + info.l4Len;
    if (checkQuoted(buf, info.l4Off + 8, qEnd, quoted))
      inside('quoted l4', quoted.l4Off + 4, info.l4Off + 8, qEnd);
  }
}

export function fuzz(data: Buffer): void {
  one(data, 0, data.length);
  const n = Math.min(data.length, big.length - 3);
  big.set(data.subarray(0, n), 3);
  // Bytes after the packet that are not its own: a length beyond `len` must not read them.
  big.fill(0xa5, 3 + n, Math.min(big.length, 3 + n + 64));
  one(big, 3, n);
}
