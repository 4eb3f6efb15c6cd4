/**
 * Run a host command (ip) without blocking: the daemon's event loop, which also
 * reads the TUN device, keeps moving packets while the command runs. Control
 * plane only.
 */

import { execFile } from 'node:child_process';
import { VpmError } from '../base/errors.js';

export type HostErrorCode =
  | 'ERR_HOST_TOOL'
  | 'ERR_HOST_COMMAND'
  | 'ERR_HOST_SYSCTL'
  /** The journal (state file) is unreadable. */
  | 'ERR_HOST_STATE'
  /** Undoing a dead daemon's journal failed. */
  | 'ERR_HOST_STALE'
  /** A live daemon owns the journal of this TUN and state directory. */
  | 'ERR_ALREADY_RUNNING'
  /** A network device of the TUN's name exists that no vpm journal names. */
  | 'ERR_TUN_EXISTS';

/** Host set-up failed (the caller undoes what was done); exit code 1. */
export class HostError extends VpmError<HostErrorCode> {
  readonly exitCode = 1;
}

/**
 * Run `cmd args`; resolves to its stdout; rejects with a HostError naming the
 * command and its stderr.
 */
export function run(cmd: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { encoding: 'utf8' }, (e, stdout, stderr) => {
      if (!e) return resolve(stdout);
      const err = e as { message: string; code?: string | number | null };
      if (err.code === 'ENOENT')
        return reject(new HostError('ERR_HOST_TOOL', `${cmd} not found: install iproute2`));
      const detail = stderr.trim() || err.message;
      reject(new HostError('ERR_HOST_COMMAND', `${cmd} ${args.join(' ')} failed: ${detail}`));
    });
    // Nothing to read: the command gets an empty stdin, as before.
    child.stdin?.end();
  });
}
