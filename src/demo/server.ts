/**
 * The demo's server program: one unmodified-style TCP server that says who it is
 * and what address the connection came from, then echoes. Two copies of it run
 * side by side, both on the same port under `vpm exec`. Usage: node server.js NAME PORT [HOST]
 */

import { createServer } from 'node:net';

const [name = 'instance', portArg = '0', host = '0.0.0.0'] = process.argv.slice(2);
const port = Number(portArg);
const server = createServer((sock) => {
  sock.write(
    `${JSON.stringify({ instance: name, pid: process.pid, sawClient: `${sock.remoteAddress}:${sock.remotePort}`, localPort: sock.localPort })}\n`,
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
