/** Control socket client: one request, one response, with a timeout. */

import { connect } from 'node:net';
import type { ErrorCode } from '../base/errors.js';
import { ControlError, type ControlResponse, MAX_LINE, PROTOCOL_VERSION } from './protocol.js';

export async function controlRequest(
  socketPath: string,
  cmd: string,
  args: Record<string, unknown> = {},
  timeoutMs = 5000,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const c = connect(socketPath);
    let buf = '';
    const timer = setTimeout(() => {
      c.destroy();
      reject(
        new ControlError(
          'ERR_CONTROL_TIMEOUT',
          `no answer from ${socketPath} within ${timeoutMs} ms`,
        ),
      );
    }, timeoutMs);
    const fail = (e: Error) => {
      clearTimeout(timer);
      c.destroy();
      reject(e);
    };
    c.setEncoding('utf8');
    c.on('connect', () =>
      c.write(`${JSON.stringify({ v: PROTOCOL_VERSION, id: 1, cmd, args })}\n`),
    );
    c.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') {
        fail(
          new ControlError('ERR_NOT_RUNNING', `vpm is not running (no daemon at ${socketPath})`),
        );
      } else if (e.code === 'EACCES') {
        fail(
          new ControlError(
            'ERR_PERMISSION',
            `permission denied on ${socketPath}: this user may not connect to the control socket (control.group, applications[].users: docs/security.md)`,
          ),
        );
      } else {
        fail(new ControlError('ERR_CONTROL_IO', `${socketPath}: ${e.message}`));
      }
    });
    c.on('data', (d: string) => {
      buf += d;
      if (buf.length > 64 * MAX_LINE)
        return fail(new ControlError('ERR_CONTROL_IO', 'response too long'));
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      c.end();
      let r: ControlResponse;
      try {
        r = JSON.parse(buf.slice(0, nl)) as ControlResponse;
      } catch {
        return reject(new ControlError('ERR_CONTROL_IO', 'daemon sent invalid JSON'));
      }
      if (r.ok) resolve(r.result);
      // The daemon is vpm: its codes are ours. They pass on as it sent them (one
      // of another vpm version may be a code this one does not know).
      else reject(new ControlError(r.error.code as ErrorCode, r.error.message));
    });
  });
}
