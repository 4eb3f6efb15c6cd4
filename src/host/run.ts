/** Run a host command (ip, sysctl) synchronously; control plane only. */

import { execFileSync } from 'node:child_process';

export class HostError extends Error {
  readonly code: string;
  readonly exitCode = 1;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'HostError';
    this.code = code;
  }
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
