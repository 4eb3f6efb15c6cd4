/**
 * `tun.queues`: how many TUN queues (IFF_MULTI_QUEUE), one worker thread each.
 *
 * "auto" is one queue per core Node may run on (os.availableParallelism(): the
 * CPU affinity mask, so a container's cpuset counts, not the host's cores), capped
 * at TUN_AUTO_QUEUES_MAX = 16. The cap: every queue is a worker thread with its own
 * V8 heap (tens of MiB each) and its own rx buffers (4 MiB with offloads), and the
 * workers share one flow table and one control thread, so beyond ~16 the memory
 * and the contention grow while a vpm host rarely has that many cores to spare for
 * packet work; a larger number can still be given explicitly (up to 64).
 */

import { availableParallelism } from 'node:os';

/** The most queues "auto" asks for. */
export const TUN_AUTO_QUEUES_MAX = 16;
/** The most queues the config accepts (the kernel allows 256). */
export const TUN_QUEUES_MAX = 64;

/** The number of queues `setting` means on this host (`cores` for tests). */
export function resolveTunQueues(
  setting: number | 'auto',
  cores: number = availableParallelism(),
): number {
  if (setting === 'auto') return Math.max(1, Math.min(cores, TUN_AUTO_QUEUES_MAX));
  return setting;
}
