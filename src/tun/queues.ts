/**
 * A multi-queue TUN device (IFF_MULTI_QUEUE): `openTunQueues(name, n, opts)`
 * opens n queues of one device, each a KernelTun of its own fd.
 *
 * Theory of operation (what drivers/net/tun.c does, and why the code is so)
 * ------------------------------------------------------------------------
 * - The first TUNSETIFF of a name creates the device, or attaches to an existing
 *   (persistent) one; every later one attaches another queue (tun_attach), up to
 *   MAX_TAP_QUEUES (256; the 257th open fails with E2BIG). Every queue must ask for
 *   IFF_MULTI_QUEUE exactly as the device has it (otherwise EINVAL: ERR_TUN_BUSY).
 * - The device's features (IFF_VNET_HDR, IFF_NO_PI, ...) are taken from the flags
 *   of the attach that finds no other queue attached (a new or a persistent device
 *   with none); an attach to a device with queues already attached ignores its own
 *   flags. The virtio-net header size and byte order (TUNSETVNETHDRSZ, TUNSETVNETLE)
 *   and the offload mask (TUNSETOFFLOAD) are device-wide too. A queue opened with
 *   other flags than the device's would therefore misread every packet: all queues
 *   here are opened with the same options, and queues 2..n ask for exactly the
 *   offload mask queue 1 settled for (`offload`), which is checked.
 * - Queue selection (tun_select_queue → tun_automq_select_queue, without a
 *   steering eBPF program): the kernel hashes each packet it transmits into the
 *   TUN with the symmetric flow hash (__skb_get_hash_symmetric: addresses, ports,
 *   protocol; both directions of a flow hash alike) and looks it up in the
 *   device's flow table; a hit gives the queue that flow was last *written* from
 *   (tun_get_user → tun_flow_update records the writing queue when more than one
 *   is attached), a miss gives reciprocal_scale(hash, numqueues). Entries age out
 *   after 3 s without a write (TUN_FLOW_EXPIRE) and the table holds at most 4096
 *   flows (MAX_TAP_FLOWS). So flows spread over the queues by hash, a flow follows
 *   the queue that writes its replies, and a packet written on any queue is
 *   delivered whatever queue its flow is read from.
 * - Persistence: TUNSETPERSIST is device-wide. With `persist`, closing every queue
 *   leaves the device (addresses, routes; carrier off); re-attaching needs only
 *   TUNSETIFF with the same name and IFF_MULTI_QUEUE (and the right to: owner,
 *   group or CAP_NET_ADMIN): the first re-attach sets the features again, the
 *   others add queues. `existed` (queue 1's) says the device was there.
 * - Failure: if queue k cannot be opened, queues 1..k-1 are closed before the
 *   error is thrown; a device this call created persistent is made non-persistent
 *   first, so that the last close deletes it (a device that existed is left).
 *
 * Queue fds and worker threads: fds are process-wide, a KernelTun belongs to the
 * thread (env) that made it. The main thread may open all queues here and hand
 * each queue's fd to a worker with `detach()`; the worker makes it a device of its
 * own with `adoptTun(fd, { multiQueue: true, vnetHdr, offload })` and polls it on
 * its own event loop.
 */

import type { OpenTunOptions } from './device.js';
import { TunError } from './errors.js';
import { type KernelTun, openTun } from './kernel-tun.js';

/** The kernel's MAX_TAP_QUEUES: queues one TUN device can have. */
export const TUN_MAX_QUEUES = 256;

/** Options of `openTunQueues`: `openTun`'s, without the name and multiQueue (given). */
export type OpenTunQueuesOptions = Omit<OpenTunOptions, 'name' | 'multiQueue'>;

/**
 * Open `n` queues (1..256) of the multi-queue TUN `name` (a name, or a pattern
 * with one %d: queue 1's kernel name is used for the others). Queue 1 creates the
 * device or attaches to an existing one; queues 2..n attach. Returns them in
 * order; on any failure closes those opened and throws (a TunError).
 */
export function openTunQueues(
  name: string,
  n: number,
  opts: OpenTunQueuesOptions = {},
): KernelTun[] {
  if (!Number.isInteger(n) || n < 1 || n > TUN_MAX_QUEUES) {
    throw new TunError(
      'ERR_TUN_OPTION',
      `openTunQueues: the number of queues must be an integer 1..${TUN_MAX_QUEUES}, got ${String(n)}`,
    );
  }
  const queues: KernelTun[] = [];
  try {
    const first = openTun({ ...opts, name, multiQueue: true });
    queues.push(first);
    for (let i = 1; i < n; i++) {
      const q = openTun({ ...opts, name: first.name, multiQueue: true, offload: first.offload });
      queues.push(q);
      if (q.offload !== first.offload || q.headroom !== first.headroom) {
        throw new TunError(
          'ERR_TUN_OPEN',
          `openTunQueues: queue ${i + 1} of ${first.name} has offloads 0x${q.offload.toString(16)} ` +
            `and ${q.headroom}-byte headers, queue 1 0x${first.offload.toString(16)} and ${first.headroom}`,
        );
      }
    }
    return queues;
  } catch (e) {
    const first = queues[0];
    if (first && opts.persist && !first.existed) {
      try {
        first.setPersist(false);
      } catch {
        // closing below still detaches every queue; the device then stays
      }
    }
    for (const q of queues) q.close();
    throw e;
  }
}
