/**
 * The cooperative channel's encryption: TLS 1.3 (Node's `tls`, OpenSSL) with
 * pre-shared keys, no certificates (docs/security.md says why).
 *
 * Theory of operation. Each pair of peers already shares keys (`peers[].keys`,
 * each with an id). The client side offers one as a TLS PSK under the identity
 * "<its cooperative.name>/<key id>" (`pskCallback`); the server side looks the
 * identity up among the keys it accepts — every key of every peer, so two
 * during a rollover — and the handshake succeeds only if both hold the same key
 * bytes under that identity (the PSK binder proves it; a wrong key or unknown
 * identity fails the handshake, counted). OpenSSL runs TLS 1.3 PSK with an
 * (EC)DHE exchange (psk_dhe_ke), so a key that leaks later does not decrypt
 * recorded traffic. The identity travels in clear text in the ClientHello: a
 * host on the path learns the client's name and the key id, never the key,
 * the AIDs, the addresses or the ports negotiated inside.
 *
 * Inside the channel every frame keeps its HMAC (protocol.ts), keyed with the
 * connection's PSK, and its `from` must be the peer that PSK belongs to: a peer
 * cannot speak for another over its own connection.
 */

import type { ConnectionOptions, TLSSocket, TlsOptions } from 'node:tls';

/** TLS 1.3 only; the SHA-256 suites (OpenSSL's PSK callback in TLS 1.3 uses a SHA-256 PSK hash). */
export const TLS_VERSION = 'TLSv1.3';
const SUITES = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';

/** One accepted key: whose it is, its id and its bytes. */
export interface PskEntry {
  peer: string;
  id: string;
  key: Uint8Array;
}

/** The identity of `name`'s key `id` in the handshake. */
export function pskIdentity(name: string, id: string): string {
  return `${name}/${id}`;
}

/** The keys a server accepts, by identity. */
export type PskTable = ReadonlyMap<string, PskEntry>;

export function pskTable(
  peers: readonly { name: string; keys: readonly { id: string; key: Uint8Array }[] }[],
): PskTable {
  const t = new Map<string, PskEntry>();
  for (const p of peers)
    for (const k of p.keys)
      t.set(pskIdentity(p.name, k.id), { peer: p.name, id: k.id, key: k.key });
  return t;
}

/** `lookup` is called once per handshake with the socket and the identity the client offered. */
export function serverTlsOptions(
  lookup: (socket: TLSSocket, identity: string) => Uint8Array | null,
): TlsOptions {
  return {
    minVersion: TLS_VERSION,
    maxVersion: TLS_VERSION,
    ciphers: SUITES,
    pskCallback: (socket, identity) => {
      const k = lookup(socket, identity);
      return k === null ? null : Buffer.from(k);
    },
  };
}

export function clientTlsOptions(identity: string, key: Uint8Array): ConnectionOptions {
  return {
    minVersion: TLS_VERSION,
    maxVersion: TLS_VERSION,
    ciphers: SUITES,
    // No certificate: the PSK authenticates the server (only it can finish the handshake).
    checkServerIdentity: () => undefined,
    pskCallback: () => ({ psk: Buffer.from(key), identity }),
  };
}
