/**
 * PeerServer, driven by a PeerClient and by raw sockets playing a hostile or
 * broken client side, over loopback TCP (127.0.0.1, ephemeral ports; see
 * support.ts for the topology and the scripted daemon).
 */

import { afterEach, describe, expect, it } from 'vitest';
import { encode, makeMessage } from '../../src/coop/protocol.js';
import { PeerServer } from '../../src/coop/server.js';
import type { ChannelEvent } from '../../src/coop/stats.js';
import {
  client,
  codeOf,
  expectBalanced,
  FakeDaemon,
  frame,
  HOST,
  KEY,
  peek,
  REQ,
  raw,
  runCleanup,
  seal,
  startServer,
  WRONG_KEY,
  waitFor,
} from './support.js';

afterEach(runCleanup);

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
    p.s.write(seal('vpm-a', body));
    const v2 = JSON.stringify({ v: 2, id: 10, type: 'hello' });
    p.s.write(seal('vpm-a', v2));
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
});

describe('PeerServer over IPv6', () => {
  it('a dual-stack listener on [::] serves peers over IPv4 and IPv6, and names them a.b.c.d:port and [v6]:port', async () => {
    const events: ChannelEvent[] = [];
    const { port, daemon } = await startServer({ host: '::', onEvent: (e) => events.push(e) });
    for (const host of ['127.0.0.1', '::1']) {
      const r = await client(port, { host }).negotiate(REQ);
      expect(r, host).toMatchObject({ ok: true });
    }
    expect(daemon.translations.size).toBe(2);
    const remotes = events.filter((e) => e.kind === 'connected').map((e) => e.remote);
    expect(remotes).toHaveLength(2);
    expect(remotes[0]).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(remotes[1]).toMatch(/^\[::1\]:\d+$/);
  });

  it('a request with IPv6 endpoints reaches the handler as sent', async () => {
    const { port, daemon } = await startServer({ host: '::1' });
    daemon.handler.request = async (msg) => {
      daemon.requests.push(msg);
      return { type: 'offer', body: { aids: ['web'], port: 40100 } };
    };
    const body = { client: '[2001:2:0:70::2]:40123', service: '[2001:2:0:9::9]:9000', aid: 'web' };
    const r = await client(port, { host: '::1' }).negotiate(body);
    expect(r).toMatchObject({ ok: true, port: 40100 });
    expect(daemon.requests[0]!.body).toEqual(body);
  });
});
