/** Run a host command (ip, sysctl) synchronously; control plane only. */

import { execFileSync } from 'node:child_process';
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
  | 'ERR_ALREADY_RUNNING';

/** Host set-up failed (the caller undoes what was done); exit code 1. */
export class HostError extends VpmError<HostErrorCode> {
  readonly exitCode = 1;
}

/** Run `cmd args`; returns stdout; throws HostError naming the command and its stderr. */
export function run(cmd: string, args: readonly string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string; code?: string };
    if (err.code === 'ENOENT')
      throw new HostError('ERR_HOST_TOOL', `${cmd} not found: install iproute2`);
    const detail = (err.stderr ?? '').trim() || err.message;
    throw new HostError('ERR_HOST_COMMAND', `${cmd} ${args.join(' ')} failed: ${detail}`);
  }
}
