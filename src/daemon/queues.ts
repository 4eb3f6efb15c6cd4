/**
 * The daemon and `tun.queues`. The multi-queue groundwork exists
 * (src/tun/queues.ts: openTunQueues, queue fds adopted in worker threads), but this
 * daemon still runs its one pipeline on one TUN queue in the main thread, with a
 * flow table that cannot be shared between threads. Rather than run one queue
 * silently when more were asked for, `vpm up` refuses a config whose tun.queues
 * resolves above 1 (ERR_CONFIG_INVALID, at the path tun.queues).
 */

import { ConfigError } from '../config/errors.js';
import type { Config } from '../config/types.js';

/** The most TUN queues this daemon runs. */
export const DAEMON_MAX_QUEUES = 1;

/** Throws ConfigError ERR_CONFIG_INVALID when `cfg` asks for more queues than the daemon runs. */
export function refuseUnsupportedQueues(cfg: Config): void {
  const { queues, queuesSetting } = cfg.tun;
  if (queues <= DAEMON_MAX_QUEUES) return;
  const asked =
    queuesSetting === 'auto' ? `"auto" (${queues} queues on this host)` : String(queuesSetting);
  throw new ConfigError('ERR_CONFIG_INVALID', cfg.source, [
    {
      path: 'tun.queues',
      value: queuesSetting,
      message: `${asked} is more than this vpm runs: one worker per TUN queue is not supported by the daemon yet, so it runs 1 queue; set tun.queues to 1 (or leave it out)`,
    },
  ]);
}
