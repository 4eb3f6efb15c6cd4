/** A bad argument or input from the user: exit code 2, message names the value. */
export class UsageError extends Error {
  readonly code = 'ERR_USAGE';
  readonly exitCode = 2;
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
