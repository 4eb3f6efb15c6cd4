/*
 * The cooperative channel's TLS options (src/coop/tls.ts) with Node's real TLS
 * stack over loopback: TLS 1.3 with the pre-shared key, an ephemeral (EC)DHE
 * exchange on top of it (psk_dhe_ke: a key that leaks later does not decrypt
 * recorded traffic, docs/security.md), and no handshake with a wrong key or an
 * identity the server does not know.
 */

import { connect, createServer, type Server, type TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { clientTlsOptions, pskIdentity, pskTable, serverTlsOptions } from '../../src/coop/tls.js';

const KEY = new Uint8Array(32).fill(7);
const OTHER = new Uint8Array(32).fill(9);

let server: Server | null = null;
afterEach(() => {
  server?.close();
  server = null;
});

/** A server accepting peer "client" with key id "k1"; resolves with its port. */
function listen(): Promise<number> {
  const table = pskTable([{ name: 'client', keys: [{ id: 'k1', key: KEY }] }]);
  server = createServer(
    serverTlsOptions((_s, identity) => table.get(identity)?.key ?? null),
    (s) => s.end('hello'),
  );
  server.on('tlsClientError', () => {});
  return new Promise((resolve) =>
    server!.listen(0, '127.0.0.1', () => resolve((server!.address() as { port: number }).port)),
  );
}

/** Connect with `identity` and `key`: the protocol, the ephemeral key info and what came, or the error. */
function dial(
  port: number,
  identity: string,
  key: Uint8Array,
): Promise<
  { protocol: string | null; ephemeral: object | null; data: string } | { error: string }
> {
  return new Promise((resolve) => {
    const c: TLSSocket = connect({ host: '127.0.0.1', port, ...clientTlsOptions(identity, key) });
    let data = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      data += d;
    });
    c.on('end', () =>
      resolve({ protocol: c.getProtocol(), ephemeral: c.getEphemeralKeyInfo(), data }),
    );
    c.on('error', (e) => resolve({ error: e.message }));
  });
}

describe('the cooperative channel over real TLS', () => {
  it('is TLS 1.3 with the pre-shared key and an ephemeral X25519 (or other ECDHE) exchange', async () => {
    const port = await listen();
    const r = await dial(port, pskIdentity('client', 'k1'), KEY);
    expect(r).toMatchObject({ protocol: 'TLSv1.3', data: 'hello' });
    // Non-empty only when the key exchange was ephemeral (Node's tls docs).
    const eph = (r as { ephemeral: { type?: string; name?: string } }).ephemeral;
    expect(eph.type).toBe('ECDH');
    expect(typeof eph.name).toBe('string');
  });

  it('has no handshake with the wrong key or an unknown identity', async () => {
    const port = await listen();
    expect(await dial(port, pskIdentity('client', 'k1'), OTHER)).toHaveProperty('error');
    expect(await dial(port, pskIdentity('client', 'k2'), KEY)).toHaveProperty('error');
    expect(await dial(port, pskIdentity('stranger', 'k1'), KEY)).toHaveProperty('error');
  });
});
