/**
 * PeerClient against a PeerServer, a silent server, nothing at all, and fake
 * servers that answer wrongly, over loopback TCP (see support.ts).
 */

import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type CoopError, encode, makeMessage } from '../../src/coop/protocol.js';
import {
  cleanup,
  client,
  codeOf,
  FakeDaemon,
  fakeServer,
  HOST,
  KEY,
  REQ,
  runCleanup,
  startServer,
  WRONG_KEY,
  waitFor,
} from './support.js';

afterEach(runCleanup);

/** Keep the event loop from running for `ms` (a loaded host). */
function stall(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // busy
  }
}

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

  it('a connection slower than connectTimeoutMs would allow by default still serves calls within their own deadline', async () => {
    const { port } = await startServer();
    const c = client(port, { timeoutMs: 3000, retryAfterMs: 10_000 });
    const r = c.negotiate(REQ);
    // A busy host: the daemon's event loop does not run for longer than 1 s, the
    // initial TCP retransmission timeout (a lost first SYN) takes about as long.
    stall(1100);
    expect(await r).toMatchObject({ ok: true, port: 40000 });
    // And a call right after it is not failed fast for a "failure" that was none.
    expect(await c.negotiate(REQ)).toMatchObject({ ok: true, port: 40001 });
    expect(c.stats()).toMatchObject({ connects: 1, unreachable: 0 });
  });

  it("an attempt that runs out of connectTimeoutMs is retried within the call's deadline, not failed fast", async () => {
    const { port } = await startServer();
    const c = client(port, { timeoutMs: 3000, connectTimeoutMs: 200, retryAfterMs: 10_000 });
    const first = c.negotiate(REQ);
    stall(300); // the first attempt's timer is due before its connection is seen
    const second = c.negotiate(REQ);
    expect(await first).toMatchObject({ ok: true });
    expect(await second).toMatchObject({ ok: true });
    expect(c.stats()).toMatchObject({ connects: 1, unreachable: 0 });
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
