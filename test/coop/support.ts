/**
 * Shared by the channel tests (server.test.ts, client.test.ts, framed.test.ts,
 * cooperation.test.ts): keys, a scripted server-side daemon, raw TCP peers that
 * play a hostile or broken other end, and an independent frame sealer.
 *
 *   client side "vpm-a"                         server side "vpm-b"
 *   PeerClient ---- TCP 127.0.0.1:<ephemeral> ---> PeerServer --> handler (test double:
 *   (or a raw socket playing a hostile peer)                      offers p2 from 40000 up)
 */

import { createHmac } from 'node:crypto';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { expect } from 'vitest';
import { PeerClient, type PeerClientOptions } from '../../src/coop/client.js';
import {
  type AnyMessage,
  type CoopError,
  encode,
  type Message,
  makeMessage,
  type RequestBody,
} from '../../src/coop/protocol.js';
import {
  type AbandonReason,
  type AckAnswer,
  type Negotiation,
  type OfferAnswer,
  PeerServer,
  type PeerServerOptions,
  type PeerServerStats,
} from '../../src/coop/server.js';

export const KEY = Buffer.alloc(32, 0x11);
export const WRONG_KEY = Buffer.alloc(32, 0x22);
export const HOST = '127.0.0.1';
export const SERVICE = '198.19.0.9:9000';
export const REQ: RequestBody = { client: '198.18.0.10:40123', service: SERVICE, aid: 'web' };

/** Undone after each test, last first (each test file runs `afterEach(runCleanup)`). */
export const cleanup: (() => unknown)[] = [];
export async function runCleanup(): Promise<void> {
  while (cleanup.length > 0) await cleanup.pop()!();
}

export async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

export function codeOf(p: Promise<unknown>): Promise<string> {
  return p.then(
    (v) => `resolved ${JSON.stringify(v)}`,
    (e: CoopError) => e.code ?? String(e),
  );
}

/** The server side's daemon, as a test double that records what it is told. */
export class FakeDaemon {
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

export async function startServer(
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

export function client(port: number, over: Partial<PeerClientOptions> = {}): PeerClient {
  const c = new PeerClient({ host: HOST, port, name: 'vpm-a', peer: 'vpm-b', key: KEY, ...over });
  cleanup.push(() => c.close());
  return c;
}

/** A raw TCP peer: writes whatever it is told, splits what comes back into frames by itself. */
export async function raw(
  port: number,
): Promise<{ s: Socket; frames: Buffer[]; closed: () => boolean }> {
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
export function peek(frame: Buffer): AnyMessage {
  const json = frame.subarray(5 + frame[4]!, frame.length - 32).toString('utf8');
  return JSON.parse(json) as AnyMessage;
}

export function frame<T extends AnyMessage['type']>(
  type: T,
  id: number,
  body: Message<T>['body'],
  key = KEY,
  ts = Date.now(),
) {
  return encode(makeMessage(type, id, 'vpm-a', body, ts) as AnyMessage, key);
}

/** Every offer the handler made is confirmed, abandoned, or still open: nothing leaks. */
export function expectBalanced(st: PeerServerStats, open = 0): void {
  const abandoned = Object.values(st.abandoned).reduce((a, b) => a + b, 0);
  expect(st.offered).toBe(st.confirmed + abandoned + open);
}

/** A fake server side that answers each frame it gets with `reply(message)`. */
export async function fakeServer(reply: (m: AnyMessage) => Buffer): Promise<number> {
  const fake = createServer((s) => {
    s.on('error', () => {});
    s.on('data', (d: Buffer) => s.write(reply(peek(d))));
  });
  await new Promise<void>((r) => fake.listen(0, HOST, r));
  cleanup.push(() => new Promise((r) => fake.close(r)));
  return (fake.address() as { port: number }).port;
}

/**
 * Independent frame builder (not the code under test): the layout of
 * docs/cooperative.md, written out with Buffer.concat and node:crypto, for
 * hand-written JSON.
 */
export function seal(sender: string, json: string | Buffer, key: Uint8Array = KEY): Buffer {
  const s = Buffer.from(sender, 'latin1');
  const j = typeof json === 'string' ? Buffer.from(json, 'utf8') : json;
  const head = Buffer.alloc(5);
  head.writeUInt32BE(1 + s.length + j.length + 32, 0);
  head[4] = s.length;
  const covered = Buffer.concat([head, s, j]);
  const tag = createHmac('sha256', key).update('vpm-coop\0', 'latin1').update(covered).digest();
  return Buffer.concat([covered, tag]);
}
