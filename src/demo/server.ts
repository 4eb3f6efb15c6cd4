/**
 * The demo's server program: one unmodified-style TCP server that says who it is
 * and what address the connection came from, then echoes. Two copies of it run
 * side by side, both on the same port under `vpm exec`. Usage: node server.js NAME PORT [HOST]
 * HOST defaults to "::", the IPv6 wildcard, which takes IPv4 connections too (as
 * v4-mapped addresses, shown here in their IPv4 form, as servers usually log them).
 */

import { createServer } from 'node:net';

const [name = 'instance', portArg = '0', host = '::'] = process.argv.slice(2);
const port = Number(portArg);

/** "a.b.c.d:port" (v4-mapped addresses in their IPv4 form) or "[v6]:port". */
function endpoint(addr: string | undefined, port: number | undefined): string {
  const a = (addr ?? '?').replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
  return a.includes(':') ? `[${a}]:${port}` : `${a}:${port}`;
}

const server = createServer((sock) => {
  sock.write(
    `${JSON.stringify({ instance: name, pid: process.pid, sawClient: endpoint(sock.remoteAddress, sock.remotePort), localPort: sock.localPort })}\n`,
  );
  sock.on('data', (d) => sock.write(d));
  sock.on('error', () => {});
});
server.listen(port, host, () => {
  // What the program itself sees: under vpm exec, the virtual port it asked for.
  const a = server.address();
  const seen = typeof a === 'object' && a !== null ? a.port : port;
  process.stdout.write(`${JSON.stringify({ listening: name, port: seen, pid: process.pid })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
