/**
 * The demo's client: connect to HOST:PORT, read the server's greeting line, and
 * report it together with what the client itself sees of the connection.
 * Usage: node client.js HOST PORT. Prints one JSON line; exit 1 on failure.
 */

import { connect } from 'node:net';

const [host = '127.0.0.1', portArg = '9000'] = process.argv.slice(2);

/** "a.b.c.d:port" or "[v6]:port". */
const endpoint = (a: string | undefined, p: number | undefined) =>
  a?.includes(':') ? `[${a}]:${p}` : `${a}:${p}`;
const sock = connect({ host, port: Number(portArg), timeout: 5000 });
let buf = '';
sock.setEncoding('utf8');
sock.on('data', (d: string) => {
  buf += d;
  const nl = buf.indexOf('\n');
  if (nl < 0) return;
  const greeting = JSON.parse(buf.slice(0, nl));
  process.stdout.write(
    `${JSON.stringify({ ok: true, greeting, clientSaw: { local: endpoint(sock.localAddress, sock.localPort), remote: endpoint(sock.remoteAddress, sock.remotePort) } })}\n`,
  );
  sock.end();
});
sock.on('timeout', () => {
  process.stdout.write(`${JSON.stringify({ ok: false, error: 'timeout' })}\n`);
  process.exit(1);
});
sock.on('error', (e: NodeJS.ErrnoException) => {
  process.stdout.write(`${JSON.stringify({ ok: false, error: e.code ?? e.message })}\n`);
  process.exit(1);
});
