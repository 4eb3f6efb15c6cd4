/** The benchmarks' one error of their own, shared by `npm run bench` and `npm run bench:e2e`. */

import { VpmError } from '../../src/base/errors.js';

/** A bad command line: the message names the bad argument; exit status 2. */
export class UsageError extends VpmError<'ERR_BENCH_USAGE'> {
  constructor(message: string) {
    super('ERR_BENCH_USAGE', message);
  }
}
