/**
 * The daemon's clock: CLOCK_MONOTONIC in milliseconds.
 *
 * performance.now() counts from the process's own start (its time origin), so
 * a time stored by one daemon means nothing to the next one. The flow table's
 * times (created, last seen), the pools' quarantine times and every deadline
 * compared with them are therefore taken from `monoNow()`: performance.now()
 * plus a constant offset, computed once, that makes it CLOCK_MONOTONIC (the
 * clock libuv's hrtime reads on Linux, process.hrtime). The same instant reads
 * the same in every process on the host, so a daemon reads its predecessor's
 * times as they were (src/state/flow-file.ts). The clock stops during system
 * suspend, as flow timeouts should; it restarts at boot, when the TUN and the
 * state files are gone too.
 */

import { performance } from 'node:perf_hooks';

/** CLOCK_MONOTONIC (ms) minus performance.now() (ms): constant for the process's life. */
const OFFSET = Number(process.hrtime.bigint()) / 1e6 - performance.now();

/** CLOCK_MONOTONIC now, in ms (fractional). */
export function monoNow(): number {
  return performance.now() + OFFSET;
}
