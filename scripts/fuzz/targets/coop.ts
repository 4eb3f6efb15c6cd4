/**
 * Fuzz target: the cooperative negotiation protocol's frame decoding
 * (src/coop/protocol.ts: `FrameReader`, `decode`, `checkMessage`).
 *
 * The first input byte picks the mode:
 *   - even: the rest is a TCP byte stream (the unauthenticated path): split
 *     into chunks (chunk sizes from the first byte), framed by a FrameReader, each
 *     frame decoded with the peers' keys;
 *   - odd: the rest is a message's JSON, sealed here with a valid frame and tag
 *     from the peer "peer-a" (so the fuzzer reaches what comes after the HMAC:
 *     UTF-8, JSON, fields, freshness, replay). Any timestamp is fresh.
 * A crash: an exception (decode promises never to throw; its internal catch is
 * counted as one too), a message accepted twice (the second must be `replayed`),
 * or one accepted that `encode` refuses or that does not survive encode → decode.
 */

import { createHmac } from 'node:crypto';
import { decode, encode, FrameReader } from '../../../src/coop/protocol.js';
import { ReplayCache } from '../../../src/coop/replay.js';

export const KEY = Buffer.from(
  '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f',
  'hex',
);
export const SENDER = 'peer-a';
const KEYS = new Map([
  [SENDER, KEY],
  ['peer-b', Buffer.alloc(32, 0x5a)],
]);
/** |now - ts| <= window for every ts a message may carry (a safe integer >= 0). */
const NOW = 2 ** 52;
const WINDOW = 2 ** 52;

function fail(msg: string): never {
  throw new Error(`coop: ${msg}`);
}

/** A frame around `json` from `sender`, with its tag (as test/coop/support.ts `seal`). */
export function seal(sender: string, json: Uint8Array, key: Uint8Array = KEY): Buffer {
  const s = Buffer.from(sender, 'latin1');
  const head = Buffer.alloc(5);
  head.writeUInt32BE(1 + s.length + json.length + 32, 0);
  head[4] = s.length;
  const covered = Buffer.concat([head, s, json]);
  const tag = createHmac('sha256', key).update('vpm-coop\0', 'latin1').update(covered).digest();
  return Buffer.concat([covered, tag]);
}

const replay = () => new ReplayCache({ windowMs: WINDOW, now: () => NOW, maxEntries: 64 });

function one(frame: Uint8Array, cache: ReplayCache): void {
  const r = decode(frame, KEYS, cache, { now: NOW });
  if (!r.ok) {
    if (r.detail.startsWith('internal decode error')) fail(r.detail);
    return;
  }
  const again = decode(frame, KEYS, cache, { now: NOW });
  if (again.ok || again.reason !== 'replayed')
    fail(`a frame accepted twice (second: ${again.ok ? 'ok' : again.reason})`);
  let out: Buffer;
  try {
    out = encode(r.msg, KEYS.get(r.msg.from)!);
  } catch (e) {
    // A message that came in may be too large to go out only if it was near the limit.
    if ((e as { code?: string }).code === 'ERR_COOP_TOO_LARGE') return;
    fail(`decode accepted what encode refuses: ${(e as Error).message}`);
  }
  const back = decode(out, KEYS, replay(), { now: NOW });
  if (!back.ok) fail(`encode → decode refused: ${back.reason} ${back.detail}`);
  if (canonical(back.msg) !== canonical(r.msg))
    fail(
      `encode → decode changed the message: ${JSON.stringify(r.msg)} → ${JSON.stringify(back.msg)}`,
    );
}

/** The message with its keys in the order encode writes them. */
function canonical(m: {
  v: unknown;
  type: unknown;
  id: unknown;
  ts: unknown;
  nonce: unknown;
  from: unknown;
  body: unknown;
}): string {
  return JSON.stringify({
    v: m.v,
    type: m.type,
    id: m.id,
    ts: m.ts,
    nonce: m.nonce,
    from: m.from,
    body: m.body,
  });
}

export function fuzz(data: Buffer): void {
  if (data.length === 0) return;
  const mode = data[0]!;
  const rest = data.subarray(1);
  const cache = replay();
  if (mode & 1) {
    // The body between the sender and the tag: at least one byte.
    if (rest.length === 0 || rest.length > 4000) return;
    one(seal(SENDER, rest), cache);
    return;
  }
  const reader = new FrameReader();
  const chunk = 1 + (mode >> 1) * 4;
  for (let off = 0; off < rest.length; off += chunk) {
    const r = reader.push(rest.subarray(off, off + chunk), (frame) => {
      one(frame, cache);
      return true;
    });
    if (r === 'too_large') reader.reset();
  }
}
