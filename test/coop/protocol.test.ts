import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type AnyMessage,
  CoopError,
  checkMessage,
  DECODE_REASONS,
  type DecodeResult,
  decode,
  encode,
  endpointFamily,
  FrameReader,
  formatEndpoint,
  isUnauthenticated,
  MAX_FRAME,
  type Message,
  makeMessage,
  parseEndpoint,
  requestProtocol,
} from '../../src/coop/protocol.js';
import { ReplayCache } from '../../src/coop/replay.js';
import { seal } from './support.js';

const KEY = Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex');
const OTHER_KEY = Buffer.alloc(32, 0x5a);
const NOW = 1_700_000_000_000;

/** A small cache (a fresh one per decode in the loops below; the default holds 100k). */
function cache(now = NOW): ReplayCache {
  return new ReplayCache({ now: () => now, maxEntries: 64 });
}

let nonceCounter = 0;
function nonce(): string {
  return (++nonceCounter).toString(16).padStart(32, '0');
}

/** A valid message object of each type, as plain JSON values. */
function envelope(
  type: string,
  body: unknown,
  over: Record<string, unknown> = {},
): Record<string, unknown> {
  return { v: 1, type, id: 7, ts: NOW, nonce: nonce(), from: 'vpm-a', body, ...over };
}

const BODIES = {
  request: { client: '198.18.0.10:40123', service: '198.19.0.9:9000', aid: 'web' },
  offer: { aids: ['web', 'api.v2', 'A_1-x'], port: 40001 },
  ack: { aid: 'web', port: 40001 },
  refuse: { reason: 'aid_mismatch', message: 'AID db is not among web, api', aids: ['web', 'api'] },
  confirm: { port: 40001 },
} as const;

function fail(r: DecodeResult): Extract<DecodeResult, { ok: false }> {
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.msg)}`);
  return r;
}

describe('encode/decode', () => {
  it('round-trips every message type', () => {
    const replay = cache();
    for (const [type, body] of Object.entries(BODIES)) {
      const msg = makeMessage(
        type as keyof typeof BODIES,
        42,
        'vpm-a',
        structuredClone(body) as never,
        NOW,
      );
      const frame = encode(msg as AnyMessage, KEY);
      expect(frame.length).toBeLessThanOrEqual(MAX_FRAME);
      const r = decode(frame, KEY, replay);
      expect(r).toEqual({ ok: true, msg });
    }
    // refuse without the optional aids
    const bare = makeMessage('refuse', 1, 'vpm-b', { reason: 'no_service', message: '' }, NOW);
    expect(decode(encode(bare, KEY), KEY, replay)).toEqual({ ok: true, msg: bare });
  });

  it("a request's protocol: optional, tcp or udp; absent means TCP (a peer before UDP)", () => {
    const replay = cache();
    for (const protocol of ['udp', 'tcp'] as const) {
      const msg = makeMessage('request', 5, 'vpm-a', { ...BODIES.request, protocol }, NOW);
      const r = decode(encode(msg, KEY), KEY, replay);
      expect(r).toEqual({ ok: true, msg });
      expect(requestProtocol((r as { msg: Message<'request'> }).msg.body)).toBe(protocol);
    }
    // What a peer of the version before UDP sends, written out by hand: no protocol key.
    const old = seal(
      'vpm-a',
      `{"v":1,"type":"request","id":6,"ts":${NOW},"nonce":"${nonce()}","from":"vpm-a","body":{"client":"198.18.0.10:40123","service":"198.19.0.9:9000","aid":"web"}}`,
      KEY,
    );
    const r = decode(old, KEY, replay);
    expect(r.ok).toBe(true);
    expect(requestProtocol((r as { msg: Message<'request'> }).msg.body)).toBe('tcp');
    // The sender refuses an invalid one before it goes out.
    const bad = makeMessage('request', 7, 'vpm-a', {
      ...BODIES.request,
      protocol: 'sctp' as 'udp',
    });
    expect(() => encode(bad, KEY)).toThrow(/body\.protocol must be "tcp" or "udp"/);
  });

  it('matches an independently computed frame (tag from openssl dgst -sha256 -mac HMAC)', () => {
    // key 00..1f; tag computed with:
    //   { printf 'vpm-coop\0'; printf '\x00\x00\x00\xa8\x05vpm-b'; printf '%s' "$JSON"; } |
    //   openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f
    const json =
      '{"v":1,"type":"confirm","id":7,"ts":1700000000000,"nonce":"000102030405060708090a0b0c0d0e0f","from":"vpm-b","body":{"port":40001}}';
    const msg: Message<'confirm'> = {
      v: 1,
      type: 'confirm',
      id: 7,
      ts: NOW,
      nonce: '000102030405060708090a0b0c0d0e0f',
      from: 'vpm-b',
      body: { port: 40001 },
    };
    const frame = encode(msg, KEY);
    expect(frame.subarray(0, 10).toString('hex')).toBe(
      `000000a805${Buffer.from('vpm-b').toString('hex')}`,
    );
    expect(frame.subarray(10, 10 + json.length).toString('utf8')).toBe(json);
    expect(frame.subarray(frame.length - 32).toString('hex')).toBe(
      '5c0992e5df8295a86edd427aeea0934ec95a7d6e315650e44744ff4ee47120bb',
    );
    expect(frame).toEqual(seal('vpm-b', json, KEY));
  });

  it('refuses a frame made with another key: bad_mac', () => {
    const frame = encode(makeMessage('confirm', 1, 'vpm-a', { port: 1 }, NOW), OTHER_KEY);
    expect(fail(decode(frame, KEY, cache())).reason).toBe('bad_mac');
  });

  it('picks the key by the sender name; an unknown sender is unknown_peer', () => {
    const keys = new Map([
      ['vpm-a', KEY],
      ['vpm-b', OTHER_KEY],
    ]);
    const replay = cache();
    const fromA = encode(makeMessage('confirm', 1, 'vpm-a', { port: 1 }, NOW), KEY);
    const fromB = encode(makeMessage('confirm', 1, 'vpm-b', { port: 1 }, NOW), OTHER_KEY);
    expect(decode(fromA, keys, replay).ok).toBe(true);
    expect(decode(fromB, keys, replay).ok).toBe(true);
    // B's name with A's key: the tag does not verify under B's key.
    const forged = encode(makeMessage('confirm', 1, 'vpm-b', { port: 1 }, NOW), KEY);
    expect(fail(decode(forged, keys, replay)).reason).toBe('bad_mac');
    const stranger = encode(makeMessage('confirm', 1, 'vpm-c', { port: 1 }, NOW), KEY);
    expect(fail(decode(stranger, keys, replay))).toMatchObject({ reason: 'unknown_peer' });
  });

  it('refuses a flipped bit anywhere in the frame, before trusting anything', () => {
    const frame = encode(makeMessage('request', 9, 'vpm-a', { ...BODIES.request }, NOW), KEY);
    const seen = new Set<string>();
    for (let bit = 0; bit < frame.length * 8; bit++) {
      const f = Buffer.from(frame);
      f[bit >> 3]! ^= 1 << (bit & 7);
      const r = fail(decode(f, KEY, cache()));
      expect(isUnauthenticated(r.reason), `bit ${bit}: ${r.reason}`).toBe(true);
      const byte = bit >> 3;
      if (byte >= 4) {
        // Not in the length prefix: the length still matches, so it is the name or the tag.
        expect(['bad_mac', 'unknown_peer', 'bad_length']).toContain(r.reason);
      }
      if (byte >= 10) expect(r.reason, `bit ${bit}`).toBe('bad_mac'); // JSON and tag
      seen.add(r.reason);
    }
    expect(seen).toEqual(new Set(['too_large', 'bad_length', 'unknown_peer', 'bad_mac']));
  });

  it('refuses a replayed frame, and a frame 31 s in the past or future', () => {
    const replay = cache();
    const frame = encode(makeMessage('ack', 3, 'vpm-a', { aid: 'web', port: 40001 }, NOW), KEY);
    expect(decode(frame, KEY, replay).ok).toBe(true);
    expect(fail(decode(frame, KEY, replay))).toMatchObject({
      reason: 'replayed',
      id: 3,
      sender: 'vpm-a',
    });

    for (const skew of [-31_000, 31_000]) {
      const f = encode(makeMessage('confirm', 4, 'vpm-a', { port: 2 }, NOW + skew), KEY);
      expect(fail(decode(f, KEY, replay))).toMatchObject({ reason: 'stale', id: 4 });
    }
    // The window's edge itself is inside.
    for (const skew of [-30_000, 30_000]) {
      const f = encode(makeMessage('confirm', 5, 'vpm-a', { port: 2 }, NOW + skew), KEY);
      expect(decode(f, KEY, replay).ok).toBe(true);
    }
    // After the window the replay is stale rather than replayed (and the nonce is forgotten).
    expect(fail(decode(frame, KEY, replay, { now: NOW + 30_001 })).reason).toBe('stale');
  });

  it('refuses truncated, padded and oversized frames without throwing', () => {
    const frame = encode(
      makeMessage('offer', 1, 'vpm-a', { ...BODIES.offer, aids: [...BODIES.offer.aids] }, NOW),
      KEY,
    );
    for (let n = 0; n < frame.length; n++) {
      const r = fail(decode(frame.subarray(0, n), KEY, cache()));
      expect(r.reason, `prefix of ${n} bytes`).toBe('bad_length');
    }
    expect(fail(decode(Buffer.concat([frame, Buffer.from([0])]), KEY, cache())).reason).toBe(
      'bad_length',
    );
    const huge = Buffer.alloc(8);
    huge.writeUInt32BE(0xffffffff, 0);
    expect(fail(decode(huge, KEY, cache())).reason).toBe('too_large');
    const justOver = Buffer.alloc(MAX_FRAME + 1);
    justOver.writeUInt32BE(MAX_FRAME - 3, 0);
    expect(fail(decode(justOver, KEY, cache())).reason).toBe('too_large');
    // Length prefix too small for a sender, a JSON text and a tag.
    const tiny = Buffer.alloc(4 + 34);
    tiny.writeUInt32BE(34, 0);
    expect(fail(decode(tiny, KEY, cache())).reason).toBe('bad_length');
    // Sender length 0 or larger than the frame.
    for (const s of [0, 64, 200]) {
      const f = Buffer.from(frame);
      f[4] = s;
      expect(fail(decode(f, KEY, cache())).reason).toBe('bad_length');
    }
  });

  it('accepts the largest frame and the limits of every length', () => {
    // 64 AIDs of 55 characters and the longest sender name: 4016 bytes.
    const aids = Array.from(
      { length: 64 },
      (_, i) => `${String(i).padStart(2, '0')}${'a'.repeat(53)}`,
    );
    const from = 'x'.repeat(63);
    const msg = makeMessage('offer', 0xffff_ffff, from, { aids, port: 65535 }, NOW);
    const frame = encode(msg, KEY);
    expect(frame.length).toBeLessThanOrEqual(MAX_FRAME);
    expect(decode(frame, KEY, cache())).toEqual({ ok: true, msg });
    // 64 AIDs of 63 characters do not fit: refused at the sender.
    const long = Array.from(
      { length: 64 },
      (_, i) => `${String(i).padStart(2, '0')}${'a'.repeat(61)}`,
    );
    expect(() => encode(makeMessage('offer', 1, from, { aids: long, port: 1 }, NOW), KEY)).toThrow(
      expect.objectContaining({ code: 'ERR_COOP_TOO_LARGE' }),
    );
  });
});

describe('validation after authentication (the peer has the key and sends junk)', () => {
  const cases: [string, string | Buffer, string, string?][] = [
    ['not JSON', '{"v":1,', 'bad_json'],
    ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'bad_json'],
    ['an array', '[1,2,3]', 'bad_json'],
    ['a string', '"hello"', 'bad_json'],
    ['null', 'null', 'bad_json'],
    ['no version', JSON.stringify({ type: 'confirm' }), 'bad_version', 'v'],
    ['version 2', JSON.stringify(envelope('confirm', { port: 1 }, { v: 2 })), 'bad_version', 'v'],
    [
      'version "1"',
      JSON.stringify(envelope('confirm', { port: 1 }, { v: '1' })),
      'bad_version',
      'v',
    ],
  ];
  const field = (
    name: string,
    over: Record<string, unknown>,
    where: string,
    type = 'confirm',
    body: unknown = { port: 1 },
  ) => cases.push([name, JSON.stringify(envelope(type, body, over)), 'bad_field', where]);
  field('unknown top-level key', { extra: 1 }, 'extra');
  field('__proto__ key', {}, '__proto__');
  cases[cases.length - 1]![1] = JSON.stringify(envelope('confirm', { port: 1 })).replace(
    '{"v":1',
    '{"v":1,"__proto__":{"x":1}',
  );
  field('unknown type', { type: 'hello' }, 'type');
  field('id -1', { id: -1 }, 'id');
  field('id 2^32', { id: 2 ** 32 }, 'id');
  field('id 1.5', { id: 1.5 }, 'id');
  field('id "7"', { id: '7' }, 'id');
  field('ts as string', { ts: String(NOW) }, 'ts');
  field('ts fractional', { ts: NOW + 0.5 }, 'ts');
  field('nonce in capitals', { nonce: 'A'.repeat(32) }, 'nonce');
  field('nonce too short', { nonce: 'a'.repeat(31) }, 'nonce');
  field('from differs from the sender', { from: 'vpm-z' }, 'from');
  field('from invalid', { from: '-x' }, 'from');
  field('missing body', { body: undefined }, 'body');
  field('body is an array', { body: [] }, 'body');
  field('confirm port 0', {}, 'body.port', 'confirm', { port: 0 });
  field('confirm port 65536', {}, 'body.port', 'confirm', { port: 65536 });
  field('confirm port "80"', {}, 'body.port', 'confirm', { port: '80' });
  field('confirm port 1.5', {}, 'body.port', 'confirm', { port: 1.5 });
  field('confirm extra key', {}, 'body.extra', 'confirm', { port: 1, extra: true });
  const req = BODIES.request;
  field('request client not dotted quad', {}, 'body.client', 'request', {
    ...req,
    client: '198.18.0:80',
  });
  field('request client octal-looking', {}, 'body.client', 'request', {
    ...req,
    client: '198.018.0.1:80',
  });
  field('request client octet 256', {}, 'body.client', 'request', {
    ...req,
    client: '198.256.0.1:80',
  });
  field('request client port 0', {}, 'body.client', 'request', { ...req, client: '198.18.0.1:0' });
  field('request client port 65536', {}, 'body.client', 'request', {
    ...req,
    client: '198.18.0.1:65536',
  });
  field('request client port 080', {}, 'body.client', 'request', {
    ...req,
    client: '198.18.0.1:080',
  });
  field('request client without port', {}, 'body.client', 'request', {
    ...req,
    client: '198.18.0.1',
  });
  // IPv6: brackets, RFC 5952 only (one spelling per endpoint), no zone, no v4-mapped.
  for (const [what, client] of [
    ['without brackets', '2001:2::1:80'],
    ['in capitals', '[2001:2::A]:80'],
    ['uncompressed', '[2001:2:0:0:0:0:0:1]:80'],
    ['with leading zeros', '[2001:0002::1]:80'],
    ['with a zone id', '[fe80::1%eth0]:80'],
    ['v4-mapped', '[::ffff:198.18.0.1]:80'],
    ['v4-mapped in hex', '[::ffff:c612:1]:80'],
    ['port 0', '[2001:2::1]:0'],
    ['port 65536', '[2001:2::1]:65536'],
    ['without port', '[2001:2::1]'],
    ['with a prefix', '[2001:2::1/64]:80'],
    ['with spaces', '[ 2001:2::1]:80'],
    ['not shortening the longest zero run', '[2001:2::1:0:0:0:1]:80'],
    ['bracketed IPv4', '[198.18.0.1]:80'],
  ] as const)
    field(`request client IPv6 ${what}`, {}, 'body.client', 'request', { ...req, client });
  field('request service IPv6 not canonical', {}, 'body.service', 'request', {
    ...req,
    service: '[2001:2:0:9:0::9]:9000',
  });
  field('request service a number', {}, 'body.service', 'request', {
    ...req,
    service: 3_323_068_425,
  });
  field('request aid empty', {}, 'body.aid', 'request', { ...req, aid: '' });
  field('request aid starts with a dot', {}, 'body.aid', 'request', { ...req, aid: '.web' });
  field('request aid 64 characters', {}, 'body.aid', 'request', { ...req, aid: 'a'.repeat(64) });
  field('request aid with a space', {}, 'body.aid', 'request', { ...req, aid: 'we b' });
  field('request missing aid', {}, 'body.aid', 'request', {
    client: req.client,
    service: req.service,
  });
  field('request protocol "sctp"', {}, 'body.protocol', 'request', { ...req, protocol: 'sctp' });
  field('request protocol in capitals', {}, 'body.protocol', 'request', {
    ...req,
    protocol: 'UDP',
  });
  field('request protocol as a number', {}, 'body.protocol', 'request', { ...req, protocol: 17 });
  field('request protocol null', {}, 'body.protocol', 'request', { ...req, protocol: null });
  field('offer no AIDs', {}, 'body.aids', 'offer', { aids: [], port: 1 });
  field('offer 65 AIDs', {}, 'body.aids', 'offer', {
    aids: Array.from({ length: 65 }, (_, i) => `a${i}`),
    port: 1,
  });
  field('offer repeated AID', {}, 'body.aids[1]', 'offer', { aids: ['a', 'a'], port: 1 });
  field('offer AID not a string', {}, 'body.aids[0]', 'offer', { aids: [1], port: 1 });
  field('offer aids an object', {}, 'body.aids', 'offer', { aids: { 0: 'a' }, port: 1 });
  field('ack port missing', {}, 'body.port', 'ack', { aid: 'web' });
  field('refuse reason in capitals', {}, 'body.reason', 'refuse', { reason: 'NO', message: '' });
  field('refuse message with a newline', {}, 'body.message', 'refuse', {
    reason: 'no',
    message: 'a\nb',
  });
  field('refuse message with an escape', {}, 'body.message', 'refuse', {
    reason: 'no',
    message: '\u001b[31m',
  });
  field('refuse message too long', {}, 'body.message', 'refuse', {
    reason: 'no',
    message: 'm'.repeat(257),
  });
  field('refuse aids with a bad AID', {}, 'body.aids[0]', 'refuse', {
    reason: 'no',
    message: '',
    aids: ['*'],
  });

  it.each(cases)('%s -> %s', (_name, json, reason, where) => {
    const r = fail(decode(seal('vpm-a', json, KEY), KEY, cache()));
    expect(r.reason).toBe(reason);
    if (where !== undefined) expect(r.field).toBe(where);
    expect(r.sender).toBe('vpm-a');
    expect(typeof r.detail).toBe('string');
  });

  it('does not record the nonce of a refused message', () => {
    const replay = cache();
    const e = envelope('confirm', { port: 0 });
    expect(fail(decode(seal('vpm-a', JSON.stringify(e), KEY), KEY, replay)).reason).toBe(
      'bad_field',
    );
    expect(replay.has(e.nonce as string)).toBe(false);
  });

  it('accepts the documented grammar at its edges', () => {
    const ok = [
      envelope('request', {
        client: '0.0.0.0:1',
        service: '255.255.255.255:65535',
        aid: `Z${'a'.repeat(62)}`,
      }),
      envelope('offer', { aids: Array.from({ length: 64 }, (_, i) => `a${i}`), port: 65535 }),
      envelope('refuse', { reason: `a${'_'.repeat(31)}`, message: 'é'.repeat(256), aids: [] }),
      envelope('ack', { aid: '9', port: 1 }, { id: 0, ts: NOW }),
    ];
    const replay = cache();
    for (const e of ok)
      expect(decode(seal('vpm-a', JSON.stringify(e), KEY), KEY, replay).ok).toBe(true);
  });
});

describe('encode refuses what the receiver would refuse', () => {
  it('throws ERR_COOP_BAD_MESSAGE for an invalid message and ERR_COOP_KEY for a short key', () => {
    const bad = makeMessage('ack', 1, 'vpm-a', { aid: 'no spaces', port: 1 }, NOW);
    expect(() => encode(bad, KEY)).toThrow(CoopError);
    expect(() => encode(bad, KEY)).toThrow(
      expect.objectContaining({
        code: 'ERR_COOP_BAD_MESSAGE',
        message: expect.stringMatching(/body\.aid/),
      }),
    );
    const good = makeMessage('confirm', 1, 'vpm-a', { port: 1 }, NOW);
    expect(() => encode(good, Buffer.alloc(31))).toThrow(
      expect.objectContaining({ code: 'ERR_COOP_KEY' }),
    );
    // Extra properties never reach the wire: they are refused, not silently dropped.
    const extra = { ...good, body: { port: 1, secret: 'x' } } as unknown as AnyMessage;
    expect(() => encode(extra, KEY)).toThrow(
      expect.objectContaining({ code: 'ERR_COOP_BAD_MESSAGE' }),
    );
  });

  it('makes a fresh 128-bit nonce per message', () => {
    const a = makeMessage('confirm', 1, 'x', { port: 1 });
    const b = makeMessage('confirm', 1, 'x', { port: 1 });
    expect(a.nonce).toMatch(/^[0-9a-f]{32}$/);
    expect(a.nonce).not.toBe(b.nonce);
  });
});

describe('endpoints', () => {
  it('parses and formats "a.b.c.d:port" strictly', () => {
    expect(parseEndpoint('198.19.0.9:9000')).toEqual({ address: 0xc6130009, port: 9000 });
    expect(formatEndpoint(0xc6130009, 9000)).toBe('198.19.0.9:9000');
    for (const s of [
      '198.19.0.9',
      '198.19.0.9:',
      ':80',
      '198.19.0.9:0',
      '198.19.0.9:65536',
      '198.19.0.09:80',
      '1.2.3.4:+80',
      '::1:80',
    ])
      expect(parseEndpoint(s), s).toBeNull();
  });

  it('parses and formats "[v6]:port" (RFC 5952) strictly', () => {
    const vip6 = 0x2001_0002_0000_0009_0000_0000_0000_0009n;
    expect(parseEndpoint('[2001:2:0:9::9]:9000')).toEqual({ address: vip6, port: 9000 });
    expect(formatEndpoint(vip6, 9000)).toBe('[2001:2:0:9::9]:9000');
    expect(endpointFamily('[2001:2:0:9::9]:9000')).toBe(6);
    expect(endpointFamily('198.19.0.9:9000')).toBe(4);
    expect(parseEndpoint('[::1]:1')).toEqual({ address: 1n, port: 1 });
    // Two zero runs of equal length: the first is "::".
    expect(parseEndpoint('[2001:2::1:0:0:1]:65535')).toEqual({
      address: 0x2001_0002_0000_0000_0001_0000_0000_0001n,
      port: 65535,
    });
    // Every other spelling of the same endpoint, and what is no endpoint.
    for (const s of [
      '2001:2:0:9::9:9000',
      '[2001:2:0:9::9]',
      '[2001:2:0:9::9]:',
      '[2001:2:0:9::9]9000',
      '[2001:2:0:9::9]:09000',
      '[2001:2:0:9::9]:0',
      '[2001:2:0:9:0:0:0:9]:9000',
      '[2001:2:0:9::09]:9000',
      '[2001:2:0:9::9%1]:9000',
      '[::ffff:198.19.0.9]:9000',
      '[[2001:2:0:9::9]]:9000',
      '[]:9000',
    ])
      expect(parseEndpoint(s), s).toBeNull();
  });

  it('a round trip of any IPv6 address and port gives the same text and value', () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }),
        fc.integer({ min: 1, max: 65535 }),
        (a, port) => {
          const text = formatEndpoint(a, port);
          const back = parseEndpoint(text);
          // v4-mapped addresses are refused: such a client travels in the IPv4 form.
          if (a >> 32n === 0xffffn) return back === null;
          return back !== null && back.address === a && back.port === port;
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('a request with IPv6 endpoints encodes and decodes; so does a mixed one (the server side refuses it, not the wire)', () => {
    for (const body of [
      { client: '[2001:2:0:10::2]:50001', service: '[2001:2:0:9::9]:9000', aid: 'a1' },
      {
        client: '[2001:2:0:10::2]:50001',
        service: '198.19.0.9:9000',
        aid: 'a1',
        protocol: 'udp' as const,
      },
    ]) {
      const msg = makeMessage('request', 7, 'vpm-a', body, NOW);
      expect(decode(encode(msg, KEY), KEY, cache())).toEqual({ ok: true, msg });
    }
  });
});

describe('robustness (fast-check)', () => {
  it('never throws on random bytes, and never accepts them', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        const r = decode(bytes, KEY, cache());
        return !r.ok && (DECODE_REASONS as readonly string[]).includes(r.reason);
      }),
      { numRuns: 2000 },
    );
  });

  it('never throws on random bytes behind a consistent length prefix and sender', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 34, maxLength: 600 }), fc.boolean(), (body, named) => {
        const f = Buffer.alloc(4 + 1 + 5 + body.length);
        f.writeUInt32BE(1 + 5 + body.length, 0);
        f[4] = 5;
        f.write(named ? 'vpm-a' : '\u0000\u00ff..', 5, 'latin1');
        f.set(body, 10);
        const r = decode(f, KEY, cache());
        return !r.ok && isUnauthenticated(r.reason);
      }),
      { numRuns: 1000 },
    );
  });

  it('never throws on any JSON value under a valid tag, and accepts only what validates', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const r = decode(seal('vpm-a', JSON.stringify(v) ?? 'null', KEY), KEY, cache());
        return r.ok ? checkMessage(v).ok : !isUnauthenticated(r.reason);
      }),
      { numRuns: 1000 },
    );
  });

  it('never throws on mutated valid messages under a valid tag', () => {
    const base = envelope('request', { ...BODIES.request });
    const keys = [
      'v',
      'type',
      'id',
      'ts',
      'nonce',
      'from',
      'body',
      'body.client',
      'body.service',
      'body.aid',
      'x',
    ];
    fc.assert(
      fc.property(fc.constantFrom(...keys), fc.anything(), (k, value) => {
        const e = structuredClone(base) as Record<string, unknown> & {
          body: Record<string, unknown>;
        };
        if (k.startsWith('body.')) e.body[k.slice(5)] = value;
        else e[k] = value;
        let text: string | undefined;
        try {
          text = JSON.stringify(e);
        } catch {
          return true; // BigInt and friends: not JSON, nothing to send
        }
        const r = decode(seal('vpm-a', text ?? 'null', KEY), KEY, cache());
        return r.ok || !isUnauthenticated(r.reason);
      }),
      { numRuns: 1000 },
    );
  });

  it('never accepts a valid frame with any byte changed', () => {
    const frame = encode(
      makeMessage('offer', 5, 'vpm-a', { aids: ['a', 'b'], port: 4000 }, NOW),
      KEY,
    );
    fc.assert(
      fc.property(fc.nat(frame.length - 1), fc.integer({ min: 1, max: 255 }), (i, x) => {
        const f = Buffer.from(frame);
        f[i]! ^= x;
        return !decode(f, KEY, cache()).ok;
      }),
      { numRuns: 2000 },
    );
  });
});

describe('FrameReader', () => {
  const frames = [1, 2, 3].map((i) =>
    encode(makeMessage('confirm', i, 'vpm-a', { port: 1000 + i }, NOW), KEY),
  );
  const stream = Buffer.concat(frames);

  it('splits a stream cut at every position into the same frames', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const r = new FrameReader();
      const got: Buffer[] = [];
      for (const part of [stream.subarray(0, cut), stream.subarray(cut)])
        expect(
          r.push(part, (f) => {
            got.push(f);
            return true;
          }),
        ).toBe('ok');
      expect(got).toEqual(frames);
      expect(r.pending).toBe(0);
    }
  });

  it('takes a byte at a time, and reports what is pending', () => {
    const r = new FrameReader();
    const got: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) {
      r.push(stream.subarray(i, i + 1), (f) => {
        got.push(f);
        return true;
      });
      if (i === 1) expect(r.pending).toBe(2);
    }
    expect(got).toEqual(frames);
  });

  it('stops when the callback says so', () => {
    const r = new FrameReader();
    let n = 0;
    r.push(stream, () => ++n < 2);
    expect(n).toBe(2);
  });

  it('reports an oversized length as soon as the prefix is in', () => {
    const r = new FrameReader();
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32BE(MAX_FRAME - 3, 0);
    expect(r.push(prefix.subarray(0, 3), () => true)).toBe('ok');
    expect(r.push(prefix.subarray(3), () => true)).toBe('too_large');
    const ok = Buffer.alloc(4);
    ok.writeUInt32BE(MAX_FRAME - 4, 0);
    expect(new FrameReader().push(ok, () => true)).toBe('ok');
  });
});
