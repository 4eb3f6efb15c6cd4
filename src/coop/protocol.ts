/**
 * The cooperative negotiation protocol (FIG. 6/7): the messages two vpm daemons
 * exchange to agree on the real port p2 of one client connection, and their
 * authenticated, length-bounded frames. docs/cooperative.md is the reference.
 *
 * Frame (all integers big-endian):
 *
 *    0               1               2               3
 *   +---------------+---------------+---------------+---------------+
 *   |            length L: bytes that follow (35 .. 4092)           |
 *   +---------------+---------------+---------------+---------------+
 *   | S: sender len | sender name (S bytes, ASCII, 1..63)           ...
 *   +---------------+-----------------------------------------------+
 *   | JSON text, UTF-8 (L - 1 - S - 32 bytes)                       ...
 *   +---------------------------------------------------------------+
 *   | tag: HMAC-SHA256(key, "vpm-coop\0" | all bytes before it) (32) ...
 *   +---------------------------------------------------------------+
 *
 * The sender's name travels in clear ahead of the JSON so that the receiver can
 * pick that peer's key *before* it reads anything else: nothing in the JSON is
 * looked at until the tag is verified (a receiver that knows one peer may pass a
 * single key). The tag covers the length and the name as well, and starts with a
 * domain label, so a tag made for anything else with the same key never fits.
 *
 * JSON: {"v":1,"type":T,"id":u32,"ts":ms,"nonce":"32 hex","from":name,"body":{...}}
 * with exactly these keys, and a body of exactly the keys of its type (one is
 * optional: a request's `protocol`, absent meaning TCP). Every
 * field is validated after authentication: a peer holding the key is trusted to
 * be who it says, not to be bug-free. `from` must equal the header's sender.
 *
 * `decode` never throws, whatever the bytes; it answers with a stable reason code.
 */

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { VpmError } from '../base/errors.js';
import {
  formatEndpoint as formatAddrEndpoint,
  type IpAddr,
  isV4Mapped,
  parseEndpoint as parseAddrEndpoint,
} from '../wire/address.js';
import type { ReplayCache } from './replay.js';

export const PROTOCOL_VERSION = 1;
/** Whole frame, length prefix included. */
export const MAX_FRAME = 4096;
export const LENGTH_LEN = 4;
export const TAG_LEN = 32;
export const MAX_SENDER_LEN = 63;
/** Smallest L: the sender length byte, a 1-byte sender, 1 byte of JSON and the tag. */
export const MIN_BODY_LEN = 1 + 1 + 1 + TAG_LEN;
export const MAX_BODY_LEN = MAX_FRAME - LENGTH_LEN;
/** Shortest accepted key (the config file asks for 32-128 bytes). */
export const MIN_KEY_LEN = 32;
export const MAX_LIST = 64;
export const MAX_REFUSE_MESSAGE = 256;
export const DEFAULT_WINDOW_MS = 30_000;

const MAC_LABEL = Buffer.from('vpm-coop\0', 'latin1');

export const MESSAGE_TYPES = ['request', 'offer', 'ack', 'refuse', 'confirm'] as const;
export type MessageType = (typeof MESSAGE_TYPES)[number];

/** The transport protocols a negotiation can be for (`request.body.protocol`). */
export const PROTOCOLS = ['tcp', 'udp'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/** Client side -> server side: a client application wants this virtual service. */
export interface RequestBody {
  /**
   * The client's address and source port as the server side will see them on the
   * wire: "a.b.c.d:port", or "[v6]:port" (RFC 5952) for an IPv6 client.
   */
  client: string;
  /** The cooperative virtual service, "VIP:vport" or "[VIP6]:vport"; of the client's family. */
  service: string;
  /** The client application's AID. */
  aid: string;
  /**
   * The service's transport protocol. Optional: a request without it is for TCP
   * (what a peer of the version before UDP sends). vpm sends it for UDP only, so
   * that its TCP requests stay readable by such a peer (which refuses an unknown
   * field, and could not serve UDP anyway).
   */
  protocol?: Protocol;
}

/** The protocol a request is for: its `protocol`, TCP when absent. */
export function requestProtocol(b: RequestBody): Protocol {
  return b.protocol ?? 'tcp';
}
/** Server side -> client side: the AIDs listening on the service, and p2. */
export interface OfferBody {
  aids: string[];
  port: number;
}
/** Client side -> server side: its AID is among the offered ones; p2 accepted. */
export interface AckBody {
  aid: string;
  port: number;
}
/** Either side: no. `reason` is a code (REFUSE_REASONS lists the known ones). */
export interface RefuseBody {
  reason: string;
  message: string;
  aids?: string[];
}
/** Server side -> client side: the translation to p2 is recorded. */
export interface ConfirmBody {
  port: number;
}

export interface BodyOf {
  request: RequestBody;
  offer: OfferBody;
  ack: AckBody;
  refuse: RefuseBody;
  confirm: ConfirmBody;
}

export interface Message<T extends MessageType = MessageType> {
  v: typeof PROTOCOL_VERSION;
  type: T;
  /** Negotiation id (u32), chosen by the client side; every message of one negotiation carries it. */
  id: number;
  /** Sender's clock, ms since the epoch. */
  ts: number;
  /** 16 random bytes, 32 lowercase hex digits; never reused. */
  nonce: string;
  /** Sender's name; equals the frame header's sender. */
  from: string;
  body: BodyOf[T];
}

/** Any one message, narrowed by `type`. */
export type AnyMessage = { [T in MessageType]: Message<T> }[MessageType];

/**
 * Refusal reasons used by vpm itself. The wire accepts any code matching
 * REFUSE_REASON_RE, so a newer peer may send one not listed here.
 */
export const REFUSE_REASONS = [
  'aid_mismatch',
  'no_aid',
  'no_service',
  'ports_exhausted',
  'port_mismatch',
  'unknown_negotiation',
  'duplicate_id',
  'busy',
  'timeout',
  'unexpected',
  'bad_json',
  'bad_version',
  'bad_field',
  'stale',
  'internal',
  // The client's and the service's families differ, or the service (or every AID
  // offering it) has no address of the client's family here.
  'family_mismatch',
] as const;
export type RefuseReason = (typeof REFUSE_REASONS)[number];

/** Why `decode` refused a frame. The first four are found before authentication. */
export const DECODE_REASONS = [
  'bad_length',
  'too_large',
  'unknown_peer',
  'bad_mac',
  'bad_json',
  'bad_version',
  'bad_field',
  'stale',
  'replayed',
] as const;
export type DecodeReason = (typeof DECODE_REASONS)[number];

/** Reasons found before the tag was verified: the sender is not known to hold the key. */
export function isUnauthenticated(r: DecodeReason): boolean {
  return r === 'bad_length' || r === 'too_large' || r === 'unknown_peer' || r === 'bad_mac';
}

export type DecodeResult =
  | { ok: true; msg: AnyMessage }
  | {
      ok: false;
      reason: DecodeReason;
      /** For bad_field: the JSON path of the offending field, e.g. "body.port". */
      field?: string;
      /** Human-readable, names the bad value (for logs; may quote peer input, escaped). */
      detail: string;
      /** Authenticated failures: the message's id and sender, when they could be read. */
      id?: number;
      sender?: string;
    };

export type CoopErrorCode =
  // A call to a peer (PeerClient): docs/cooperative.md
  | 'ERR_PEER_UNREACHABLE'
  | 'ERR_PEER_TIMEOUT'
  | 'ERR_PEER_DISCONNECTED'
  | 'ERR_PEER_PROTOCOL'
  | 'ERR_PEER_BUSY'
  | 'ERR_PEER_CLOSED'
  // The peer server (PeerServer): cannot listen; listen twice; close before listen
  | 'ERR_PEER_LISTEN'
  | 'ERR_PEER_LISTENING'
  | 'ERR_PEER_NOT_LISTENING'
  // Building a frame of ours: a short key; a message that would not validate; too large
  | 'ERR_COOP_KEY'
  | 'ERR_COOP_BAD_MESSAGE'
  | 'ERR_COOP_TOO_LARGE';

/** Control-plane errors of the cooperative channel; `code` is stable (docs/errors.md). */
export class CoopError extends VpmError<CoopErrorCode> {}

/** One key for any sender, or a key per peer name. */
export type KeyLookup = Uint8Array | ReadonlyMap<string, Uint8Array>;

// ---------------------------------------------------------------------------
// Field grammar

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const NONCE_RE = /^[0-9a-f]{32}$/;
export const REFUSE_REASON_RE = /^[a-z][a-z0-9_]{0,31}$/;
// Printable text only: a refusal message ends up in logs and on terminals.
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const MESSAGE_RE = /^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]*$/;

export interface Endpoint {
  /** IPv4: an unsigned 32-bit number; IPv6: a bigint (src/wire/address.ts). */
  address: IpAddr;
  port: number;
}

/**
 * Strict endpoint: "a.b.c.d:port" (no leading zeros) or "[v6]:port" with the
 * address in its RFC 5952 form (lower case, "::" for the longest zero run, no
 * zone id), port 1-65535 without leading zeros; null otherwise. One endpoint has
 * one spelling, so two peers never disagree about which client a text names.
 * A v4-mapped IPv6 address (::ffff:a.b.c.d) is refused: such a client is an
 * IPv4 one, and travels in the IPv4 form.
 */
export function parseEndpoint(s: string): Endpoint | null {
  if (typeof s !== 'string' || s.length > 64) return null;
  const e = parseAddrEndpoint(s);
  if (e === null || e.port < 1) return null;
  if (typeof e.address === 'bigint' && isV4Mapped(e.address)) return null;
  return formatAddrEndpoint(e.address, e.port) === s ? e : null;
}

/** "a.b.c.d:port" or "[v6]:port" (RFC 5952). */
export function formatEndpoint(address: IpAddr, port: number): string {
  return formatAddrEndpoint(address, port);
}

/** The family (4, 6) of an endpoint text that parseEndpoint accepts. */
export function endpointFamily(s: string): 4 | 6 {
  return s.startsWith('[') ? 6 : 4;
}

export function isPort(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 1 && x <= 65535;
}

export function isU32(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= 0xffff_ffff;
}

function isName(x: unknown): x is string {
  return typeof x === 'string' && NAME_RE.test(x);
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Quote a peer's value for a message: JSON, cut to 40 characters. */
function show(x: unknown): string {
  let s: string;
  try {
    s = JSON.stringify(x) ?? String(x);
  } catch {
    s = String(x);
  }
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

interface FieldError {
  field: string;
  detail: string;
}

const bad = (field: string, detail: string): FieldError => ({ field, detail });

/** Exactly these keys (optional ones may be missing); an unknown key is an error. */
function checkKeys(
  o: Record<string, unknown>,
  at: string,
  required: readonly string[],
  optional: readonly string[] = [],
): FieldError | null {
  for (const k of required)
    if (!Object.hasOwn(o, k)) return bad(`${at}${k}`, `missing field "${at}${k}"`);
  for (const k of Object.keys(o))
    if (!required.includes(k) && !optional.includes(k))
      return bad(`${at}${k}`.slice(0, 64), `unknown field ${show(at + k)}`);
  return null;
}

function checkAidList(x: unknown, at: string, min: number): FieldError | null {
  if (!Array.isArray(x)) return bad(at, `${at} must be an array of AIDs, got ${show(x)}`);
  if (x.length < min || x.length > MAX_LIST)
    return bad(at, `${at} must have ${min}-${MAX_LIST} entries, has ${x.length}`);
  const seen = new Set<string>();
  for (let i = 0; i < x.length; i++) {
    const a: unknown = x[i];
    if (!isName(a)) return bad(`${at}[${i}]`, `${at}[${i}] is not a valid AID: ${show(a)}`);
    if (seen.has(a)) return bad(`${at}[${i}]`, `${at}[${i}] repeats AID ${show(a)}`);
    seen.add(a);
  }
  return null;
}

function checkPortField(o: Record<string, unknown>, at: string): FieldError | null {
  return isPort(o.port)
    ? null
    : bad(`${at}port`, `${at}port must be an integer 1-65535, got ${show(o.port)}`);
}

function checkBody(type: MessageType, b: Record<string, unknown>): FieldError | null {
  const at = 'body.';
  switch (type) {
    case 'request': {
      const k = checkKeys(b, at, ['client', 'service', 'aid'], ['protocol']);
      if (k) return k;
      for (const f of ['client', 'service'] as const) {
        const v = b[f];
        if (typeof v !== 'string' || parseEndpoint(v) === null)
          return bad(
            `${at}${f}`,
            `${at}${f} must be "a.b.c.d:port" or "[IPv6]:port" (RFC 5952), got ${show(v)}`,
          );
      }
      if (!isName(b.aid)) return bad(`${at}aid`, `${at}aid is not a valid AID: ${show(b.aid)}`);
      if (b.protocol !== undefined && !(PROTOCOLS as readonly unknown[]).includes(b.protocol))
        return bad(
          `${at}protocol`,
          `${at}protocol must be "tcp" or "udp" (or absent: TCP), got ${show(b.protocol)}`,
        );
      return null;
    }
    case 'offer':
      return (
        checkKeys(b, at, ['aids', 'port']) ??
        checkAidList(b.aids, `${at}aids`, 1) ??
        checkPortField(b, at)
      );
    case 'ack': {
      const k = checkKeys(b, at, ['aid', 'port']);
      if (k) return k;
      if (!isName(b.aid)) return bad(`${at}aid`, `${at}aid is not a valid AID: ${show(b.aid)}`);
      return checkPortField(b, at);
    }
    case 'refuse': {
      const k = checkKeys(b, at, ['reason', 'message'], ['aids']);
      if (k) return k;
      if (typeof b.reason !== 'string' || !REFUSE_REASON_RE.test(b.reason))
        return bad(
          `${at}reason`,
          `${at}reason must be a code like "aid_mismatch", got ${show(b.reason)}`,
        );
      if (
        typeof b.message !== 'string' ||
        b.message.length > MAX_REFUSE_MESSAGE ||
        !MESSAGE_RE.test(b.message)
      )
        return bad(
          `${at}message`,
          `${at}message must be printable text of at most ${MAX_REFUSE_MESSAGE} characters, got ${show(b.message)}`,
        );
      return b.aids === undefined ? null : checkAidList(b.aids, `${at}aids`, 0);
    }
    case 'confirm':
      return checkKeys(b, at, ['port']) ?? checkPortField(b, at);
  }
}

type Checked =
  | { ok: true; msg: AnyMessage }
  | {
      ok: false;
      reason: 'bad_json' | 'bad_version' | 'bad_field';
      field?: string;
      detail: string;
      id?: number;
    };

/** Validate a parsed message object. Shared by `encode` (our own bugs) and `decode` (theirs). */
export function checkMessage(x: unknown): Checked {
  if (!isPlainObject(x))
    return { ok: false, reason: 'bad_json', detail: 'the message is not a JSON object' };
  const id = isU32(x.id) ? x.id : undefined;
  const fail = (e: FieldError): Checked => ({
    ok: false,
    reason: 'bad_field',
    ...e,
    ...(id === undefined ? {} : { id }),
  });
  if (x.v !== PROTOCOL_VERSION)
    return {
      ok: false,
      reason: 'bad_version',
      field: 'v',
      detail: `protocol version ${show(x.v)} not supported (want ${PROTOCOL_VERSION})`,
      ...(id === undefined ? {} : { id }),
    };
  const k = checkKeys(x, '', ['v', 'type', 'id', 'ts', 'nonce', 'from', 'body']);
  if (k) return fail(k);
  if (typeof x.type !== 'string' || !(MESSAGE_TYPES as readonly string[]).includes(x.type))
    return fail(bad('type', `unknown message type ${show(x.type)}`));
  if (id === undefined)
    return fail(bad('id', `id must be an integer 0-4294967295, got ${show(x.id)}`));
  if (typeof x.ts !== 'number' || !Number.isSafeInteger(x.ts) || x.ts < 0)
    return fail(bad('ts', `ts must be ms since the epoch, got ${show(x.ts)}`));
  if (typeof x.nonce !== 'string' || !NONCE_RE.test(x.nonce))
    return fail(bad('nonce', `nonce must be 32 lowercase hex digits, got ${show(x.nonce)}`));
  if (!isName(x.from)) return fail(bad('from', `from is not a valid peer name: ${show(x.from)}`));
  if (!isPlainObject(x.body))
    return fail(bad('body', `body must be an object, got ${show(x.body)}`));
  const b = checkBody(x.type as MessageType, x.body);
  if (b) return fail(b);
  return { ok: true, msg: x as unknown as AnyMessage };
}

// ---------------------------------------------------------------------------
// Building, encoding, decoding

export function newNonce(): string {
  return randomBytes(16).toString('hex');
}

/** A complete message with a fresh nonce and the current time. */
export function makeMessage<T extends MessageType>(
  type: T,
  id: number,
  from: string,
  body: BodyOf[T],
  now: number = Date.now(),
): Message<T> {
  return { v: PROTOCOL_VERSION, type, id, ts: now, nonce: newNonce(), from, body };
}

/** Throws ERR_COOP_KEY unless `key` is a byte string of at least MIN_KEY_LEN bytes. */
export function checkKey(key: Uint8Array, who = 'key'): void {
  if (!(key instanceof Uint8Array) || key.length < MIN_KEY_LEN)
    throw new CoopError(
      'ERR_COOP_KEY',
      `${who} must be at least ${MIN_KEY_LEN} bytes, got ${key instanceof Uint8Array ? key.length : typeof key}`,
    );
}

function tag(key: Uint8Array, covered: Uint8Array): Buffer {
  return createHmac('sha256', key).update(MAC_LABEL).update(covered).digest();
}

/**
 * Encode one message into a frame. Throws CoopError: ERR_COOP_BAD_MESSAGE if the
 * message would not pass the receiver's validation (a bug on our side is not sent),
 * ERR_COOP_TOO_LARGE if it does not fit in MAX_FRAME, ERR_COOP_KEY for a short key.
 */
export function encode(msg: AnyMessage, key: Uint8Array): Buffer {
  checkKey(key);
  const c = checkMessage(msg);
  if (!c.ok)
    throw new CoopError('ERR_COOP_BAD_MESSAGE', `refusing to send an invalid message: ${c.detail}`);
  // Serialize in the documented key order, from the validated fields only.
  const json = Buffer.from(
    JSON.stringify({
      v: msg.v,
      type: msg.type,
      id: msg.id,
      ts: msg.ts,
      nonce: msg.nonce,
      from: msg.from,
      body: msg.body,
    }),
    'utf8',
  );
  const sender = Buffer.from(msg.from, 'latin1');
  const total = LENGTH_LEN + 1 + sender.length + json.length + TAG_LEN;
  if (total > MAX_FRAME)
    throw new CoopError(
      'ERR_COOP_TOO_LARGE',
      `a ${msg.type} message of ${total} bytes does not fit in a frame of ${MAX_FRAME} (too many or too long AIDs?)`,
    );
  const frame = Buffer.allocUnsafe(total);
  frame.writeUInt32BE(total - LENGTH_LEN, 0);
  frame[LENGTH_LEN] = sender.length;
  sender.copy(frame, LENGTH_LEN + 1);
  json.copy(frame, LENGTH_LEN + 1 + sender.length);
  tag(key, frame.subarray(0, total - TAG_LEN)).copy(frame, total - TAG_LEN);
  return frame;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export interface DecodeOptions {
  /** Clock for the staleness check. Default: the replay cache's clock. */
  now?: number;
}

/**
 * Decode and verify one complete frame (length prefix included). Never throws.
 *
 * Order: length -> sender's key -> tag -> JSON -> version -> fields -> freshness
 * and replay. Nothing of the JSON is read before the tag is verified; the nonce
 * is recorded only for a message that passed everything else.
 */
export function decode(
  frame: Uint8Array,
  keys: KeyLookup,
  replay: ReplayCache,
  opts: DecodeOptions = {},
): DecodeResult {
  try {
    return decodeUnsafe(frame, keys, replay, opts);
  } catch (e) {
    // Not reachable by any input we know of; the promise is "never throws".
    return {
      ok: false,
      reason: 'bad_json',
      detail: `internal decode error: ${(e as Error).message}`,
    };
  }
}

function decodeUnsafe(
  frame: Uint8Array,
  keys: KeyLookup,
  replay: ReplayCache,
  opts: DecodeOptions,
): DecodeResult {
  if (frame.length < LENGTH_LEN)
    return {
      ok: false,
      reason: 'bad_length',
      detail: `frame of ${frame.length} bytes has no length prefix`,
    };
  const buf = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  const len = buf.readUInt32BE(0);
  if (len > MAX_BODY_LEN)
    return {
      ok: false,
      reason: 'too_large',
      detail: `frame length ${len} exceeds ${MAX_BODY_LEN}`,
    };
  if (len < MIN_BODY_LEN)
    return {
      ok: false,
      reason: 'bad_length',
      detail: `frame length ${len} is below ${MIN_BODY_LEN}`,
    };
  if (buf.length !== LENGTH_LEN + len)
    return {
      ok: false,
      reason: 'bad_length',
      detail: `frame length ${len} but ${buf.length - LENGTH_LEN} bytes follow the prefix`,
    };
  const senderLen = buf[LENGTH_LEN]!;
  const jsonStart = LENGTH_LEN + 1 + senderLen;
  const tagStart = buf.length - TAG_LEN;
  if (senderLen < 1 || senderLen > MAX_SENDER_LEN || tagStart - jsonStart < 1)
    return {
      ok: false,
      reason: 'bad_length',
      detail: `sender length ${senderLen} does not fit the frame`,
    };
  const sender = buf.toString('latin1', LENGTH_LEN + 1, jsonStart);
  if (!NAME_RE.test(sender))
    return {
      ok: false,
      reason: 'unknown_peer',
      detail: `sender ${show(sender)} is not a peer name`,
    };
  const key = keys instanceof Uint8Array ? keys : keys.get(sender);
  if (key === undefined)
    return { ok: false, reason: 'unknown_peer', detail: `no key for sender ${show(sender)}` };
  const want = tag(key, buf.subarray(0, tagStart));
  if (!timingSafeEqual(want, buf.subarray(tagStart)))
    return {
      ok: false,
      reason: 'bad_mac',
      detail: `tag does not verify for sender ${show(sender)}`,
    };

  // Authenticated from here on: the sender holds the key. Still not trusted.
  let parsed: unknown;
  try {
    parsed = JSON.parse(utf8.decode(buf.subarray(jsonStart, tagStart)));
  } catch {
    return { ok: false, reason: 'bad_json', detail: 'message is not valid UTF-8 JSON', sender };
  }
  const c = checkMessage(parsed);
  if (!c.ok) return { ...c, sender };
  const msg = c.msg;
  if (msg.from !== sender)
    return {
      ok: false,
      reason: 'bad_field',
      field: 'from',
      detail: `from ${show(msg.from)} differs from the frame's sender ${show(sender)}`,
      id: msg.id,
      sender,
    };
  const now = opts.now ?? replay.now();
  const verdict = replay.check(msg.nonce, msg.ts, now);
  if (verdict === 'stale')
    return {
      ok: false,
      reason: 'stale',
      detail: `ts ${msg.ts} is ${now - msg.ts} ms from now (window ${replay.windowMs} ms)`,
      id: msg.id,
      sender,
    };
  if (verdict === 'replayed')
    return {
      ok: false,
      reason: 'replayed',
      detail: `nonce ${msg.nonce} seen before`,
      id: msg.id,
      sender,
    };
  return { ok: true, msg };
}

// ---------------------------------------------------------------------------
// Stream framing

/**
 * Splits a TCP byte stream into frames, holding at most one frame (MAX_FRAME
 * bytes). A length prefix above the maximum is reported as soon as its 4 bytes
 * are in, before any of the body is buffered.
 */
export class FrameReader {
  private readonly buf = Buffer.alloc(MAX_FRAME);
  private have = 0;

  /** Bytes of an incomplete frame held. */
  get pending(): number {
    return this.have;
  }

  /**
   * Feed bytes; `onFrame` gets each complete frame (a copy) and returns false to
   * stop. Returns 'too_large' if a length prefix exceeds the maximum (the stream
   * cannot be resynchronised: close it), otherwise 'ok'.
   */
  push(chunk: Uint8Array, onFrame: (frame: Buffer) => boolean): 'ok' | 'too_large' {
    let off = 0;
    while (off < chunk.length) {
      const need = this.have < LENGTH_LEN ? LENGTH_LEN : LENGTH_LEN + this.buf.readUInt32BE(0);
      const n = Math.min(need - this.have, chunk.length - off);
      this.buf.set(chunk.subarray(off, off + n), this.have);
      this.have += n;
      off += n;
      if (this.have === LENGTH_LEN && this.buf.readUInt32BE(0) > MAX_BODY_LEN) {
        this.have = 0;
        return 'too_large';
      }
      if (this.have >= LENGTH_LEN && this.have === LENGTH_LEN + this.buf.readUInt32BE(0)) {
        const frame = Buffer.from(this.buf.subarray(0, this.have));
        this.have = 0;
        if (!onFrame(frame)) return 'ok';
      }
    }
    return 'ok';
  }

  reset(): void {
    this.have = 0;
  }
}
