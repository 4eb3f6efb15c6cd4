/**
 * PeerClient <-> PeerServer over loopback TCP (127.0.0.1, ephemeral ports).
 *
 *   client side "vpm-a"                         server side "vpm-b"
 *   PeerClient ---- TCP 127.0.0.1:<ephemeral> ---> PeerServer --> handler (test double:
 *   (or a raw socket playing a hostile peer)                      offers p2 from 40000 up)
 */

import { createHmac } from 'node:crypto';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type AbandonReason,
  type AckAnswer,
  type Negotiation,
  type OfferAnswer,
  PeerClient,
  type PeerClientOptions,
  PeerServer,
  type PeerServerOptions,
  type PeerServerStats,
} from '../../src/coop/channel.js';
import {
  type AnyMessage,
  type CoopError,
  encode,
  type Message,
  makeMessage,
  type RequestBody,
} from '../../src/coop/protocol.js';

const KEY = Buffer.alloc(32, 0x11);
const WRONG_KEY = Buffer.alloc(32, 0x22);
const HOST = '127.0.0.1';
const SERVICE = '198.19.0.9:9000';
const REQ: RequestBody = { client: '198.18.0.10:40123', service: SERVICE, aid: 'web' };

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!();
});

async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

function codeOf(p: Promise<unknown>): Promise<string> {
  return p.then(
    (v) => `resolved ${JSON.stringify(v)}`,
    (e: CoopError) => e.code ?? String(e),
  );
}

/** The server side's daemon, as a test double that records what it is told. */
class FakeDaemon {
  nextPort = 40000;
  aids = ['web', 'api'];
  translations = new Map<number, Negotiation>();
  abandoned: [number, AbandonReason][] = [];
  requests: Message<'request'>[] = [];
  requestDelayMs = 0;
  hangRequests = false;
  declineAcks = false;
  handler = {
    request: async (msg: Message<'request'>): Promise<OfferAnswer> => {
      this.requests.push(msg);
      if (this.hangRequests) await new Promise(() => {});
      if (this.requestDelayMs) await new Promise((r) => setTimeout(r, this.requestDelayMs));
      if (msg.body.service !== SERVICE)
        return {
          type: 'refuse',
          body: { reason: 'no_service', message: `${msg.body.service} is not served here` },
        };
      return { type: 'offer', body: { aids: this.aids, port: this.nextPort++ } };
    },
    ack: (_msg: Message<'ack'>, neg: Negotiation): AckAnswer => {
      if (this.declineAcks)
        return { type: 'refuse', body: { reason: 'ports_exhausted', message: 'no' } };
      this.translations.set(neg.offer.port, neg);
      return { type: 'confirm' };
    },
    abandon: (neg: Negotiation, why: AbandonReason) => {
      this.abandoned.push([neg.offer.port, why]);
    },
  };
}

async function startServer(
  over: Partial<PeerServerOptions> = {},
  daemon = new FakeDaemon(),
): Promise<{ server: PeerServer; daemon: FakeDaemon; port: number }> {
  const server = new PeerServer({
    host: HOST,
    port: 0,
    name: 'vpm-b',
    keys: new Map([['vpm-a', KEY]]),
    handler: daemon.handler,
    ...over,
  });
  const { port } = await server.listen();
  cleanup.push(() => server.close());
  return { server, daemon, port };
}

function client(port: number, over: Partial<PeerClientOptions> = {}): PeerClient {
  const c = new PeerClient({ host: HOST, port, name: 'vpm-a', peer: 'vpm-b', key: KEY, ...over });
  cleanup.push(() => c.close());
  return c;
}

/** A raw TCP peer: writes whatever it is told, splits what comes back into frames by itself. */
async function raw(port: number): Promise<{ s: Socket; frames: Buffer[]; closed: () => boolean }> {
  const s = netConnect({ host: HOST, port });
  cleanup.push(() => s.destroy());
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  s.on('error', () => {});
  const frames: Buffer[] = [];
  let buf = Buffer.alloc(0);
  let isClosed = false;
  s.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const n = 4 + buf.readUInt32BE(0);
      frames.push(buf.subarray(0, n));
      buf = buf.subarray(n);
    }
  });
  s.on('close', () => {
    isClosed = true;
  });
  return { s, frames, closed: () => isClosed };
}

/** The JSON of a frame, read without the code under test (and without checking the tag). */
function peek(frame: Buffer): AnyMessage {
  const json = frame.subarray(5 + frame[4]!, frame.length - 32).toString('utf8');
  return JSON.parse(json) as AnyMessage;
}

function frame<T extends AnyMessage['type']>(
  type: T,
  id: number,
  body: Message<T>['body'],
  key = KEY,
  ts = Date.now(),
) {
  return encode(makeMessage(type, id, 'vpm-a', body, ts) as AnyMessage, key);
}

/** Every offer the handler made is confirmed, abandoned, or still open: nothing leaks. */
function expectBalanced(st: PeerServerStats, open = 0): void {
  const abandoned = Object.values(st.abandoned).reduce((a, b) => a + b, 0);
  expect(st.offered).toBe(st.confirmed + abandoned + open);
}

describe('a negotiation between PeerClient and PeerServer', () => {
  it('request -> offer -> ack -> confirm: both sides agree on p2', async () => {
    const { server, daemon, port } = await startServer();
    const c = client(port);
    const r = await c.negotiate(REQ);
    expect(r).toEqual({
      ok: true,
      id: expect.any(Number),
      aid: 'web',
      port: 40000,
      aids: ['web', 'api'],
    });
    expect(daemon.requests[0]!.body).toEqual(REQ);
    expect(daemon.requests[0]!.from).toBe('vpm-a');
    const neg = daemon.translations.get(40000)!;
    expect(neg).toMatchObject({
      id: r.id,
      peer: 'vpm-a',
      request: REQ,
      offer: { aids: ['web', 'api'], port: 40000 },
    });
    expect(daemon.abandoned).toEqual([]);

    const cs = c.stats();
    expect(cs).toMatchObject({ connected: true, pending: 0, connects: 1, timeouts: 0 });
    expect(cs.sent).toEqual({ request: 1, offer: 0, ack: 1, refuse: 0, confirm: 0 });
    expect(cs.received).toEqual({ request: 0, offer: 1, ack: 0, refuse: 0, confirm: 1 });
    const ss = server.stats();
    expect(ss.received).toEqual({ request: 1, offer: 0, ack: 1, refuse: 0, confirm: 0 });
    expect(ss.sent).toEqual({ request: 0, offer: 1, ack: 0, refuse: 0, confirm: 1 });
    expect(ss).toMatchObject({ connections: 1, open: 1, offered: 1, confirmed: 1 });
    expect(Object.values(ss.refused).every((n) => n === 0)).toBe(true);
    expectBalanced(ss);
  });

  it('runs many negotiations at once over one connection', async () => {
    const { server, daemon, port } = await startServer();
    const c = client(port);
    const rs = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        c.negotiate({ ...REQ, client: `198.18.0.10:${20000 + i}` }),
      ),
    );
    expect(rs.every((r) => r.ok)).toBe(true);
    expect(new Set(rs.map((r) => (r.ok ? r.port : 0))).size).toBe(200);
    expect(daemon.translations.size).toBe(200);
    expect(c.stats().connects).toBe(1);
    expect(server.stats()).toMatchObject({ offered: 200, confirmed: 200 });
  });

  it('AID mismatch: the client side refuses the offer and the server releases p2', async () => {
    const { server, daemon, port } = await startServer();
    const c = client(port);
    const r = await c.negotiate({ ...REQ, aid: 'db' });
    expect(r).toMatchObject({
      ok: false,
      by: 'self',
      reason: 'aid_mismatch',
      aids: ['web', 'api'],
    });
    await waitFor(() => daemon.abandoned.length === 1);
    expect(daemon.abandoned).toEqual([[40000, 'refused']]);
    expect(daemon.translations.size).toBe(0);
    const ss = server.stats();
    expect(ss.refusesReceived.aid_mismatch).toBe(1);
    expect(ss.abandoned.refused).toBe(1);
    expectBalanced(ss);
  });

  it('the server side refuses a request it does not serve', async () => {
    const { server, port } = await startServer();
    const c = client(port);
    const r = await c.negotiate({ ...REQ, service: '198.19.0.9:9001' });
    expect(r).toMatchObject({
      ok: false,
      by: 'peer',
      reason: 'no_service',
      message: '198.19.0.9:9001 is not served here',
    });
    expect(server.stats()).toMatchObject({
      offered: 0,
      refusesSent: expect.objectContaining({ no_service: 1 }),
    });
  });

  it('the server side may refuse the ack; the offer is then abandoned as declined', async () => {
    const daemon = new FakeDaemon();
    daemon.declineAcks = true;
    const { server, port } = await startServer({}, daemon);
    const r = await client(port).negotiate(REQ);
    expect(r).toMatchObject({ ok: false, by: 'peer', reason: 'ports_exhausted' });
    expect(daemon.abandoned).toEqual([[40000, 'declined']]);
    expectBalanced(server.stats());
  });

  it('checks every ack against its offer: port, AID, id', async () => {
    const { server, daemon, port } = await startServer();
    const c = client(port);
    const o1 = await c.request(REQ);
    expect(o1.type).toBe('offer');
    const a1 = await c.ack(o1.id, { aid: 'web', port: 41234 });
    expect(a1).toMatchObject({ type: 'refuse', body: { reason: 'port_mismatch' } });
    const o2 = await c.request(REQ);
    const a2 = await c.ack(o2.id, { aid: 'db', port: 40001 });
    expect(a2).toMatchObject({
      type: 'refuse',
      body: { reason: 'aid_mismatch', aids: ['web', 'api'] },
    });
    // The offer is gone after a failed ack, and ids never offered are unknown.
    expect(await c.ack(o2.id, { aid: 'web', port: 40001 })).toMatchObject({
      type: 'refuse',
      body: { reason: 'unknown_negotiation' },
    });
    expect(await c.ack(12345, { aid: 'web', port: 40000 })).toMatchObject({
      body: { reason: 'unknown_negotiation' },
    });
    expect(daemon.translations.size).toBe(0);
    expect(daemon.abandoned).toEqual([
      [40000, 'port_mismatch'],
      [40001, 'aid_mismatch'],
    ]);
    expectBalanced(server.stats());
  });

  it('abandons an offer that gets no ack in time; a late ack is unknown', async () => {
    const { server, daemon, port } = await startServer({ offerTimeoutMs: 100 });
    const c = client(port);
    const o = await c.request(REQ);
    await waitFor(() => daemon.abandoned.length === 1);
    expect(daemon.abandoned).toEqual([[40000, 'timeout']]);
    expect(server.stats()).toMatchObject({ timeouts: 1 });
    expect(await c.ack(o.id, { aid: 'web', port: 40000 })).toMatchObject({
      body: { reason: 'unknown_negotiation' },
    });
    expectBalanced(server.stats());
  });

  it('abandons open offers when the client side disconnects', async () => {
    const { server, daemon, port } = await startServer();
    const c = client(port);
    await c.request(REQ);
    await c.request(REQ);
    c.close();
    await waitFor(() => daemon.abandoned.length === 2);
    expect(daemon.abandoned.map(([, why]) => why)).toEqual(['disconnected', 'disconnected']);
    expectBalanced(server.stats());
  });

  it('answers a late offer with a refusal so the server releases p2 at once', async () => {
    const daemon = new FakeDaemon();
    daemon.requestDelayMs = 150;
    const { server, port } = await startServer({ offerTimeoutMs: 10_000 }, daemon);
    const c = client(port, { timeoutMs: 50 });
    expect(await codeOf(c.negotiate(REQ))).toBe('ERR_PEER_TIMEOUT');
    await waitFor(() => daemon.abandoned.length === 1);
    expect(daemon.abandoned).toEqual([[40000, 'refused']]);
    expect(c.stats()).toMatchObject({ late: 1, timeouts: 1 });
    expect(c.stats().refusesSent.timeout).toBe(1);
    expectBalanced(server.stats());
  });
});

describe('the server keeps serving whatever a peer sends', () => {
  it('closes on a forged, a replayed, a truncated, an oversized and an unknown-sender frame; counts each', async () => {
    const { server, daemon, port } = await startServer({ frameTimeoutMs: 100 });

    // Forged: made with a key the server does not have for vpm-a.
    const forged = await raw(port);
    forged.s.write(frame('request', 1, REQ, WRONG_KEY));
    await waitFor(forged.closed);
    expect(forged.frames).toEqual([]);

    // Replayed: a genuine request, answered once; the same bytes again, on a new connection.
    const genuine = frame('request', 2, REQ);
    const first = await raw(port);
    first.s.write(genuine);
    await waitFor(() => first.frames.length === 1);
    expect(peek(first.frames[0]!)).toMatchObject({ type: 'offer', id: 2, from: 'vpm-b' });
    const replay = await raw(port);
    replay.s.write(genuine);
    await waitFor(replay.closed);
    expect(replay.frames).toEqual([]);

    // Truncated, then silence: times out. Truncated, then FIN: counted on close.
    const stalled = await raw(port);
    stalled.s.write(genuine.subarray(0, 20));
    await waitFor(stalled.closed);
    const cut = await raw(port);
    cut.s.end(genuine.subarray(0, genuine.length - 1));
    await waitFor(cut.closed);

    // Oversized length prefix: closed before anything else is read.
    const big = await raw(port);
    big.s.write(Buffer.from([0x7f, 0xff, 0xff, 0xff, 1, 2, 3]));
    await waitFor(big.closed);

    // A sender the server has no key for.
    const stranger = await raw(port);
    stranger.s.write(encode(makeMessage('request', 3, 'vpm-z', REQ), KEY));
    await waitFor(stranger.closed);

    // Plain garbage.
    const junk = await raw(port);
    junk.s.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await waitFor(junk.closed);

    await waitFor(() => server.stats().open === 1);
    const st = server.stats();
    expect(st.refused).toMatchObject({
      bad_mac: 1,
      replayed: 1,
      frame_timeout: 1,
      bad_length: 1,
      too_large: 2, // the oversized prefix, and "GET " read as a length
      unknown_peer: 1,
    });
    expect(daemon.requests.length).toBe(1);

    // Still serving.
    const r = await client(port).negotiate(REQ);
    expect(r).toMatchObject({ ok: true, port: 40001 });
  });

  it('refuses a frame reflected back at it (its own nonce)', async () => {
    const { server, port } = await startServer({ keys: KEY }); // one key for any name
    const p = await raw(port);
    p.s.write(frame('request', 7, REQ));
    await waitFor(() => p.frames.length === 1);
    p.s.write(p.frames[0]!);
    await waitFor(p.closed);
    expect(server.stats().refused.replayed).toBe(1);
  });

  it('answers an authenticated but invalid message with a refusal and keeps the connection', async () => {
    const { server, daemon, port } = await startServer();
    const p = await raw(port);
    const body = JSON.stringify({
      v: 1,
      type: 'request',
      id: 9,
      ts: Date.now(),
      nonce: 'ab'.repeat(16),
      from: 'vpm-a',
      body: { ...REQ, client: '198.18.0.300:1' },
    });
    p.s.write(sealRaw('vpm-a', body));
    const v2 = JSON.stringify({ v: 2, id: 10, type: 'hello' });
    p.s.write(sealRaw('vpm-a', v2));
    p.s.write(frame('request', 11, REQ, KEY, Date.now() - 31_000));
    p.s.write(frame('offer', 12, { aids: ['x'], port: 1 }));
    p.s.write(frame('request', 13, REQ));
    await waitFor(() => p.frames.length === 5);
    const got = p.frames
      .map(peek)
      .map((m) => [m.id, m.type, m.type === 'refuse' ? m.body.reason : '']);
    expect(got).toEqual([
      [9, 'refuse', 'bad_field'],
      [10, 'refuse', 'bad_version'],
      [11, 'refuse', 'stale'],
      [12, 'refuse', 'unexpected'],
      [13, 'offer', ''],
    ]);
    expect(p.closed()).toBe(false);
    expect(server.stats().refused).toMatchObject({
      bad_field: 1,
      bad_version: 1,
      stale: 1,
      unexpected: 1,
    });
    expect(daemon.requests.map((m) => m.id)).toEqual([13]);
  });

  it('refuses a second request with an open id, and too many open negotiations', async () => {
    const daemon = new FakeDaemon();
    daemon.hangRequests = true;
    const { port } = await startServer({ maxNegotiations: 2 }, daemon);
    const p = await raw(port);
    p.s.write(frame('request', 1, REQ));
    p.s.write(frame('request', 1, REQ));
    p.s.write(frame('request', 2, REQ));
    p.s.write(frame('request', 3, REQ));
    await waitFor(() => p.frames.length === 2);
    expect(p.frames.map(peek).map((m) => [m.id, m.type === 'refuse' && m.body.reason])).toEqual([
      [1, 'duplicate_id'],
      [3, 'busy'],
    ]);
  });

  it('closes connections beyond maxConnections', async () => {
    const { server, port } = await startServer({ maxConnections: 1 });
    await raw(port);
    const second = await raw(port);
    await waitFor(second.closed);
    expect(server.stats()).toMatchObject({ open: 1, rejectedConnections: 1 });
  });
});

describe('PeerClient failures', () => {
  it('a peer that never answers: ERR_PEER_TIMEOUT within the timeout', async () => {
    const silent: Server = createServer((s) => {
      s.on('error', () => {});
      s.resume(); // reads and discards everything, answers nothing
    });
    await new Promise<void>((r) => silent.listen(0, HOST, r));
    cleanup.push(() => new Promise((r) => silent.close(r)));
    const port = (silent.address() as { port: number }).port;
    const c = client(port, { timeoutMs: 200 });
    const t0 = Date.now();
    expect(await codeOf(c.negotiate(REQ))).toBe('ERR_PEER_TIMEOUT');
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(190);
    expect(took).toBeLessThan(600);
    expect(c.stats()).toMatchObject({ timeouts: 1, pending: 0, connected: true });
    // Default timeout is 1000 ms.
    const d = client(port);
    expect(d.timeoutMs).toBe(1000);
    const t1 = Date.now();
    expect(await codeOf(d.request(REQ))).toBe('ERR_PEER_TIMEOUT');
    expect(Date.now() - t1).toBeLessThan(1500);
  });

  it('nothing listening: ERR_PEER_UNREACHABLE at once, and fast again while backing off', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, HOST, r));
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const c = client(port, { timeoutMs: 5000, retryAfterMs: 10_000 });
    const t0 = Date.now();
    expect(await codeOf(c.negotiate(REQ))).toBe('ERR_PEER_UNREACHABLE');
    expect(await codeOf(c.request(REQ))).toBe('ERR_PEER_UNREACHABLE');
    expect(Date.now() - t0).toBeLessThan(500);
    expect(c.stats()).toMatchObject({ unreachable: 2, connects: 0, pending: 0 });
  });

  it('the server stops: calls in flight fail; when it is back, the next call reconnects', async () => {
    const daemon = new FakeDaemon();
    daemon.hangRequests = true;
    const { server, port } = await startServer({}, daemon);
    const c = client(port, { retryAfterMs: 50 });
    const inFlight = [codeOf(c.request(REQ)), codeOf(c.request(REQ))];
    await waitFor(() => daemon.requests.length === 2);
    await server.close();
    expect(await Promise.all(inFlight)).toEqual(['ERR_PEER_DISCONNECTED', 'ERR_PEER_DISCONNECTED']);
    expect(c.stats()).toMatchObject({ connected: false, disconnects: 1, pending: 0 });
    expect(await codeOf(c.request(REQ))).toBe('ERR_PEER_UNREACHABLE');

    const { port: again } = await startServer({ port });
    expect(again).toBe(port);
    await new Promise((r) => setTimeout(r, 60)); // past retryAfterMs
    const r = await c.negotiate(REQ);
    expect(r).toMatchObject({ ok: true, port: 40000 });
    expect(c.stats()).toMatchObject({ connects: 2, connected: true });
  });

  it('a server that does not know our name drops us: the call fails, the server counts it', async () => {
    const { server, port } = await startServer({ keys: new Map([['someone-else', KEY]]) });
    const c = client(port);
    expect(await codeOf(c.request(REQ))).toBe('ERR_PEER_DISCONNECTED');
    expect(server.stats().refused.unknown_peer).toBe(1);
  });

  it('a client with the wrong key is dropped; a reply made with the wrong key is refused by the client', async () => {
    const { server, port } = await startServer();
    expect(await codeOf(client(port, { key: WRONG_KEY }).request(REQ))).toBe(
      'ERR_PEER_DISCONNECTED',
    );
    expect(server.stats().refused.bad_mac).toBe(1);

    const fake = await fakeServer((m) =>
      encode(makeMessage('offer', m.id, 'vpm-b', { aids: ['web'], port: 1 }), WRONG_KEY),
    );
    const c = client(fake);
    expect(await codeOf(c.request(REQ))).toBe('ERR_PEER_PROTOCOL');
    expect(c.stats()).toMatchObject({ connected: false, disconnects: 1 });
    expect(c.stats().refused.bad_mac).toBe(1);
  });

  it('a client whose clock is 31 s off: the server refuses stale, the client cannot read the answer either', async () => {
    const { server, port } = await startServer();
    const c = client(port, { now: () => Date.now() - 31_000 });
    const err = await c.request(REQ).catch((e: CoopError) => e);
    expect(err).toMatchObject({
      code: 'ERR_PEER_PROTOCOL',
      message: expect.stringMatching(/stale/),
    });
    expect(server.stats().refused.stale).toBe(1);
    expect(c.stats().refused.stale).toBe(1);
  });

  it('an invalid message of ours fails at once with ERR_COOP_BAD_MESSAGE, reachable or not', async () => {
    const c = client(1, { timeoutMs: 5000 }); // nothing is ever contacted
    expect(await codeOf(c.request({ ...REQ, aid: 'not an AID' }))).toBe('ERR_COOP_BAD_MESSAGE');
    expect(await codeOf(c.ack(1, { aid: 'web', port: 0 }))).toBe('ERR_COOP_BAD_MESSAGE');
    expect(c.stats()).toMatchObject({ unreachable: 0, pending: 0, connects: 0 });
  });

  it('a port in use: listen fails with ERR_PEER_LISTEN naming it', async () => {
    const { port } = await startServer();
    const second = new PeerServer({
      host: HOST,
      port,
      name: 'x',
      keys: KEY,
      handler: new FakeDaemon().handler,
    });
    await expect(second.listen()).rejects.toMatchObject({
      code: 'ERR_PEER_LISTEN',
      message: expect.stringContaining(`127.0.0.1:${port}: EADDRINUSE`),
    });
  });

  it('close() fails calls in flight and later calls with ERR_PEER_CLOSED', async () => {
    const daemon = new FakeDaemon();
    daemon.hangRequests = true;
    const { port } = await startServer({}, daemon);
    const c = client(port);
    const p = codeOf(c.request(REQ));
    await waitFor(() => daemon.requests.length === 1);
    c.close();
    expect(await p).toBe('ERR_PEER_CLOSED');
    expect(await codeOf(c.negotiate(REQ))).toBe('ERR_PEER_CLOSED');
  });

  it('a reply of the wrong type fails the call with ERR_PEER_PROTOCOL', async () => {
    const fake = await fakeServer((m) =>
      encode(makeMessage('confirm', m.id, 'vpm-b', { port: 1 }), KEY),
    );
    const c = client(fake);
    expect(await codeOf(c.request(REQ))).toBe('ERR_PEER_PROTOCOL');
    expect(c.stats().refused.unexpected).toBe(1);
    expect(c.stats().connected).toBe(true); // authenticated, only wrong: the connection stays
  });
});

/** A fake server side that answers each frame it gets with `reply(message)`. */
async function fakeServer(reply: (m: AnyMessage) => Buffer): Promise<number> {
  const fake = createServer((s) => {
    s.on('error', () => {});
    s.on('data', (d: Buffer) => s.write(reply(peek(d))));
  });
  await new Promise<void>((r) => fake.listen(0, HOST, r));
  cleanup.push(() => new Promise((r) => fake.close(r)));
  return (fake.address() as { port: number }).port;
}

/** Independent sealer for hand-written JSON (see protocol.test.ts). */
function sealRaw(sender: string, json: string, key: Uint8Array = KEY): Buffer {
  const s = Buffer.from(sender, 'latin1');
  const j = Buffer.from(json, 'utf8');
  const head = Buffer.alloc(5);
  head.writeUInt32BE(1 + s.length + j.length + 32, 0);
  head[4] = s.length;
  const covered = Buffer.concat([head, s, j]);
  const tag = createHmac('sha256', key).update('vpm-coop\0', 'latin1').update(covered).digest();
  return Buffer.concat([covered, tag]);
}
