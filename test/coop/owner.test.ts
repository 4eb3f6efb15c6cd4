/**
 * owner.ts against this very process's sockets: the kernel's tables in /proc are
 * the real ones (no stand-in).
 */

import { createSocket, type Socket } from 'node:dgram';
import { realpathSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { findSocketIn, ownerExecutable, socketInode, socketQuery } from '../../src/coop/owner.js';
import { parseIpv6 } from '../../src/wire/address.js';
import { ip4 } from '../support/builder.js';
import { cleanup, runCleanup } from './support.js';

afterEach(runCleanup);

async function udp(address: string): Promise<number> {
  const s: Socket = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, address, r));
  cleanup.push(() => new Promise<void>((r) => s.close(() => r())));
  return s.address().port;
}

const me = { pid: process.pid, exe: realpathSync(process.execPath) };

describe('the owner of a local socket', () => {
  it('a UDP socket bound to the address: found in /proc/net/udp', async () => {
    const port = await udp('127.0.0.1');
    expect(await ownerExecutable(ip4('127.0.0.1'), port, 'udp')).toEqual(me);
    // Not a TCP socket.
    expect(await socketInode(ip4('127.0.0.1'), port, 'tcp')).toBeNull();
  });

  it('a UDP socket of the wildcard address (a client that sends without bind): taken for any address', async () => {
    const port = await udp('0.0.0.0');
    expect(await ownerExecutable(ip4('198.19.254.1'), port, 'udp')).toEqual(me);
  });

  it('TCP as before: a socket bound to the address, and only to it', async () => {
    const server: Server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanup.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as { port: number }).port;
    expect(await ownerExecutable(ip4('127.0.0.1'), port)).toEqual(me);
    expect(await socketInode(ip4('127.0.0.2'), port)).toBeNull();
    expect(await socketInode(ip4('127.0.0.1'), port, 'udp')).toBeNull();
  });
});

/** A /proc/net/tcp6 table as the kernel prints it (little-endian host), for the pure lookups. */
const TCP6 = [
  '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
  // [2001:2:0:10::2]:50001 -> [2001:2:0:9::9]:9000, uid 1000, inode 4242
  '   0: 02000120100000000000000002000000:C351 02000120090000000000000009000000:2328 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1',
  // ::ffff:198.18.10.2:50002 (an IPv4 connection of a dual-stack socket), uid 0, inode 4343
  '   1: 0000000000000000FFFF0000020A12C6:C352 0000000000000000FFFF0000090013C6:2328 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1',
  // [::]:7070 listening, inode 4444
  '   2: 00000000000000000000000000000000:1B9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0',
].join('\n');

const LE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

describe.runIf(LE)('the tcp6 format (pure lookups on a table the kernel printed)', () => {
  const v6 = (s: string) => parseIpv6(s)!;

  it('an IPv6 address: four host-order words, looked up in tcp6 only', () => {
    const q = socketQuery(v6('2001:2:0:10::2'), 50001, 'tcp');
    expect(q.files).toEqual(['/proc/net/tcp6']);
    expect(q.exact).toEqual(['02000120100000000000000002000000:C351']);
    expect(q.wildcard).toEqual([]);
    expect(findSocketIn(TCP6, q)).toEqual({ exact: true, inode: '4242', uid: 1000 });
    // Another port, another address: nothing.
    expect(findSocketIn(TCP6, socketQuery(v6('2001:2:0:10::2'), 50002, 'tcp'))).toBeNull();
    expect(findSocketIn(TCP6, socketQuery(v6('2001:2:0:10::3'), 50001, 'tcp'))).toBeNull();
  });

  it('an IPv4 address (number or v4-mapped bigint) is found as the v4-mapped entry of a dual-stack socket', () => {
    for (const a of [ip4('198.18.10.2'), v6('::ffff:198.18.10.2')]) {
      const q = socketQuery(a, 50002, 'tcp');
      expect(q.files).toEqual(['/proc/net/tcp', '/proc/net/tcp6']);
      expect(findSocketIn(TCP6, q)).toEqual({ exact: true, inode: '4343', uid: 0 });
    }
  });

  it('UDP: the wildcard :: on the port is the fallback of an IPv6 address; TCP never takes it', () => {
    const udp6 = TCP6.replace(':1B9E 0000', ':C353 0000');
    expect(findSocketIn(udp6, socketQuery(v6('2001:2:0:10::7'), 50003, 'udp'))).toEqual({
      exact: false,
      inode: '4444',
      uid: 0,
    });
    expect(findSocketIn(udp6, socketQuery(v6('2001:2:0:10::7'), 50003, 'tcp'))).toBeNull();
  });
});

/** Is IPv6 loopback usable here (::1 on lo)? */
async function hasIpv6Loopback(): Promise<boolean> {
  const s = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(0, '::1', resolve);
    });
    return true;
  } catch {
    return false;
  } finally {
    s.close();
  }
}

describe('the owner of a local IPv6 socket (this process, the kernel tables)', async () => {
  const v6ok = await hasIpv6Loopback();

  it.runIf(v6ok)('a UDP socket bound to ::1: found in /proc/net/udp6', async () => {
    const s: Socket = createSocket('udp6');
    await new Promise<void>((r) => s.bind(0, '::1', r));
    cleanup.push(() => new Promise<void>((r) => s.close(() => r())));
    const port = s.address().port;
    expect(await ownerExecutable(parseIpv6('::1')!, port, 'udp')).toEqual(me);
    expect(await socketInode(parseIpv6('::1')!, port, 'tcp')).toBeNull();
  });

  it.runIf(v6ok)(
    'a TCP client connected from [::1]: its own socket is found, by its IPv6 address',
    async () => {
      const server: Server = createServer((c) => cleanup.push(() => c.destroy()));
      await new Promise<void>((r) => server.listen(0, '::1', r));
      cleanup.push(() => new Promise<void>((r) => server.close(() => r())));
      const sport = (server.address() as { port: number }).port;
      const c = connect({ host: '::1', port: sport });
      cleanup.push(() => c.destroy());
      await new Promise<void>((r, j) => c.once('connect', r).once('error', j));
      const inode = await socketInode(parseIpv6('::1')!, c.localPort!, 'tcp');
      expect(inode).not.toBeNull();
      expect(await ownerExecutable(parseIpv6('::1')!, c.localPort!)).toEqual(me);
      // Not by an IPv4 address with the same port.
      expect(await socketInode(ip4('127.0.0.1'), c.localPort!)).toBeNull();
    },
  );

  it.runIf(v6ok)(
    'a dual-stack client (AF_INET6 socket) connected to 127.0.0.1: found in tcp6 as ::ffff:127.0.0.1, by its IPv4 address',
    async () => {
      const server: Server = createServer((c) => cleanup.push(() => c.destroy()));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      cleanup.push(() => new Promise<void>((r) => server.close(() => r())));
      const sport = (server.address() as { port: number }).port;
      // An IPv6 socket (the v4-mapped address as host): the kernel lists it in tcp6.
      const c = connect({ host: '::ffff:127.0.0.1', port: sport, family: 6 });
      cleanup.push(() => c.destroy());
      await new Promise<void>((r, j) => c.once('connect', r).once('error', j));
      expect(c.localAddress).toBe('::ffff:127.0.0.1');
      expect(await ownerExecutable(ip4('127.0.0.1'), c.localPort!)).toEqual(me);
      expect(await ownerExecutable(parseIpv6('::ffff:127.0.0.1')!, c.localPort!)).toEqual(me);
    },
  );
});
