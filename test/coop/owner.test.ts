/**
 * owner.ts against this very process's sockets: the kernel's tables in /proc are
 * the real ones (no stand-in).
 */

import { createSocket, type Socket } from 'node:dgram';
import { realpathSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ownerExecutable, socketInode } from '../../src/coop/owner.js';
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
