/**
 * FramedConnection on its own, over a loopback TCP pair: what either end of the
 * channel gets from it (framing, the incomplete-frame timer, decoding and
 * refusals, write-buffer overflow, close handling), with nothing of the server
 * or client roles on top.
 *
 *   end "vpm-a": FramedConnection ── TCP 127.0.0.1:<ephemeral> ── end "vpm-b": FramedConnection
 *                                                                  (or a raw socket writing bytes)
 */

import { createServer, connect as netConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ChannelEnd,
  type ChannelOptions,
  type CloseCause,
  FramedConnection,
  type UnusableFrame,
} from '../../src/coop/framed.js';
import type { AnyMessage } from '../../src/coop/protocol.js';
import { cleanup, frame, HOST, KEY, REQ, runCleanup, WRONG_KEY, waitFor } from './support.js';

afterEach(runCleanup);

/** Two connected sockets. */
async function socketPair(): Promise<[Socket, Socket]> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, HOST, r));
  const port = (srv.address() as { port: number }).port;
  const accepted = new Promise<Socket>((r) => srv.once('connection', r));
  const a = netConnect({ host: HOST, port });
  await new Promise<void>((r) => a.once('connect', r));
  const b = await accepted;
  srv.close();
  cleanup.push(() => {
    a.destroy();
    b.destroy();
  });
  return [a, b];
}

/** A framed end over `socket` that records what its handler is told. */
function framed(socket: Socket, name: string, over: Partial<ChannelOptions> = {}) {
  const end = new ChannelEnd(
    { name, ...over },
    new Map([[name === 'vpm-a' ? 'vpm-b' : 'vpm-a', KEY]]),
  );
  const got: AnyMessage[] = [];
  const unusable: UnusableFrame[] = [];
  const closed: CloseCause[] = [];
  const conn = new FramedConnection(end, socket, `test ${name}`, {
    message: (m) => got.push(m),
    unusable: (r) => unusable.push(r),
    closed: (c) => closed.push(c),
  });
  return { end, conn, got, unusable, closed };
}

describe('FramedConnection', () => {
  it('carries messages both ways over any connected socket, and counts them on its end', async () => {
    const [sa, sb] = await socketPair();
    const a = framed(sa, 'vpm-a');
    const b = framed(sb, 'vpm-b');
    expect(a.conn.send('vpm-b', 'request', 1, REQ)).toBe(true);
    await waitFor(() => b.got.length === 1);
    expect(b.got[0]).toMatchObject({ type: 'request', id: 1, from: 'vpm-a', body: REQ });
    expect(b.conn.refuse('vpm-a', 1, { reason: 'no_aid', message: 'no\u0000one\nhere' })).toBe(
      true,
    );
    await waitFor(() => a.got.length === 1);
    // The refusal's text is made printable before it goes out.
    expect(a.got[0]).toMatchObject({
      type: 'refuse',
      body: { reason: 'no_aid', message: 'no one here' },
    });
    expect(a.end.stats()).toMatchObject({
      sent: { request: 1 },
      received: { refuse: 1 },
      refusesReceived: { no_aid: 1 },
    });
    expect(b.end.stats()).toMatchObject({ received: { request: 1 }, refusesSent: { no_aid: 1 } });
    expect([a.closed, b.closed]).toEqual([[], []]);
  });

  it('closes a connection whose frame stays incomplete, even while bytes trickle in', async () => {
    const [sa, sb] = await socketPair();
    const b = framed(sb, 'vpm-b', { frameTimeoutMs: 150 });
    const f = frame('request', 1, REQ);
    const t0 = Date.now();
    let i = 0;
    const drip = setInterval(() => {
      if (i < f.length - 1 && !sa.destroyed) sa.write(f.subarray(i, ++i));
    }, 20);
    cleanup.push(() => clearInterval(drip));
    await waitFor(() => b.closed.length === 1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    expect(b.closed).toEqual([
      { kind: 'refused', reason: 'frame_timeout', why: 'left a frame incomplete for 150 ms' },
    ]);
    expect(b.end.stats().refused.frame_timeout).toBe(1);
    expect(b.got).toEqual([]);
  });

  it('closes at once on a frame that does not authenticate; keeps an authenticated one it cannot use', async () => {
    const [sa, sb] = await socketPair();
    const b = framed(sb, 'vpm-b');
    sa.write(frame('request', 1, REQ, KEY, Date.now() - 60_000)); // stale, but with the key
    await waitFor(() => b.unusable.length === 1);
    expect(b.unusable[0]).toMatchObject({ reason: 'stale', id: 1, sender: 'vpm-a' });
    expect(b.conn.alive).toBe(true);
    sa.write(frame('request', 2, REQ, WRONG_KEY));
    await waitFor(() => b.closed.length === 1);
    expect(b.closed[0]).toMatchObject({ kind: 'refused', reason: 'bad_mac' });
    expect(b.end.stats().refused).toMatchObject({ stale: 1, bad_mac: 1 });
    await waitFor(() => sa.destroyed || sa.readableEnded);
  });

  it('a length prefix above the maximum closes it before anything else is read', async () => {
    const [sa, sb] = await socketPair();
    const b = framed(sb, 'vpm-b');
    sa.write(Buffer.from([0x00, 0x01, 0x00, 0x00, 1, 2, 3]));
    await waitFor(() => b.closed.length === 1);
    expect(b.closed[0]).toMatchObject({ kind: 'refused', reason: 'too_large' });
    expect(b.end.stats().refused.too_large).toBe(1);
  });

  it('a stream that ends inside a frame is bad_length; the owner is told once, as lost', async () => {
    const [sa, sb] = await socketPair();
    const b = framed(sb, 'vpm-b');
    const f = frame('request', 1, REQ);
    sa.end(f.subarray(0, f.length - 1));
    await waitFor(() => b.closed.length === 1);
    expect(b.closed).toEqual([{ kind: 'lost' }]);
    expect(b.end.stats().refused.bad_length).toBe(1);
    b.conn.close(); // after the end: nothing more
    expect(b.closed).toHaveLength(1);
  });

  it('closed by its owner: no refusal counted for a partial frame, and nothing is written after', async () => {
    const [sa, sb] = await socketPair();
    const b = framed(sb, 'vpm-b');
    sa.write(frame('request', 1, REQ).subarray(0, 10));
    await new Promise((r) => setTimeout(r, 30));
    b.conn.close();
    expect(b.closed).toEqual([{ kind: 'closed' }]);
    expect(b.conn.alive).toBe(false);
    expect(b.conn.send('vpm-a', 'confirm', 1, { port: 1 })).toBe(false);
    await new Promise((r) => setTimeout(r, 30));
    expect(b.end.stats().refused.bad_length).toBe(0);
    expect(b.end.stats().sent.confirm).toBe(0);
    expect(b.closed).toHaveLength(1);
  });

  it('more than maxWriteBuffer queued for the peer: closed as overflow, the message not sent', async () => {
    const [, sb] = await socketPair();
    const b = framed(sb, 'vpm-b', { maxWriteBuffer: 64 });
    expect(b.conn.send('vpm-a', 'offer', 1, { aids: ['web', 'api'], port: 40000 })).toBe(false);
    expect(b.closed).toEqual([{ kind: 'overflow' }]);
    expect(b.end.stats()).toMatchObject({ overflows: 1, sent: { offer: 0 } });
  });
});
