/** The CLI's own errors; `runCli` (program.ts) exits with their `exitCode`. */

import { VpmError } from '../base/errors.js';

/** A bad argument or input from the user: exit code 2, message names the value. */
export class UsageError extends VpmError<'ERR_USAGE'> {
  readonly exitCode = 2;
  constructor(message: string) {
    super('ERR_USAGE', message);
  }
}
