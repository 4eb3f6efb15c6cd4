/** The CLI's own errors; `runCli` (program.ts) exits with their `exitCode`. */

import { VpmError } from '../base/errors.js';

/** A bad argument or input from the user: exit code 2, message names the value. */
export class UsageError extends VpmError<'ERR_USAGE'> {
  readonly exitCode = 2;
  constructor(message: string) {
    super('ERR_USAGE', message);
  }
}

export type CliErrorCode =
  /** The command needs root (CAP_NET_ADMIN). */
  | 'ERR_PERMISSION'
  /** `vpm down`: the daemon got SIGTERM but is still running after --timeout. */
  | 'ERR_STOP_TIMEOUT';

/** A command that cannot do its work (not the user's input): exit code 1. */
export class CliError extends VpmError<CliErrorCode> {
  readonly exitCode = 1;
}
