/**
 * Errors of the TUN layer. Each has a stable `code`; those that come from a failed
 * system call also carry `errno` and `syscall`. The native addon throws plain
 * Errors with the same fields; `toTunError` turns them into this class.
 *
 * | code | when |
 * | --- | --- |
 * | ERR_TUN_NO_DEVICE | /dev/net/tun is missing (no tun module) |
 * | ERR_TUN_PERMISSION | needs CAP_NET_ADMIN (run as root) |
 * | ERR_TUN_BUSY | the name is in use: an open single-queue TUN, another kind of device, or a multi-queue mismatch |
 * | ERR_TUN_NAME | the interface name is invalid (length, characters, pattern) |
 * | ERR_TUN_OPTION | a bad option value (batchSize, slotSize, mtu, ...) |
 * | ERR_TUN_OPEN | opening failed for another reason (errno says which) |
 * | ERR_TUN_LINK | setting MTU, queue length or link state failed |
 * | ERR_TUN_CLOSED | the device is closed |
 * | ERR_TUN_STARTED | start() on a device that is already reading |
 * | ERR_TUN_IO | reading failed for good (device deleted); reading stopped |
 * | ERR_TUN_ADOPT | adoptTun: the fd is not a TUN device as vpm opens them (the message says what differs) |
 */

import { VpmError } from '../base/errors.js';

export type TunErrorCode =
  | 'ERR_TUN_NO_DEVICE'
  | 'ERR_TUN_PERMISSION'
  | 'ERR_TUN_BUSY'
  | 'ERR_TUN_NAME'
  | 'ERR_TUN_OPTION'
  | 'ERR_TUN_OPEN'
  | 'ERR_TUN_LINK'
  | 'ERR_TUN_CLOSED'
  | 'ERR_TUN_STARTED'
  | 'ERR_TUN_IO'
  | 'ERR_TUN_ADOPT';

export class TunError extends VpmError<TunErrorCode> {
  readonly errno: number | undefined;
  readonly syscall: string | undefined;

  constructor(code: TunErrorCode, message: string, errno?: number, syscall?: string) {
    super(code, message);
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** A native ERR_TUN_* error as a TunError; anything else (TypeError, RangeError) unchanged. */
export function toTunError(e: unknown): unknown {
  if (e instanceof TunError || !(e instanceof Error)) return e;
  const { code, errno, syscall } = e as Error & {
    code?: unknown;
    errno?: unknown;
    syscall?: unknown;
  };
  if (typeof code !== 'string' || !code.startsWith('ERR_TUN_')) return e;
  return new TunError(
    code as TunErrorCode,
    e.message,
    typeof errno === 'number' ? errno : undefined,
    typeof syscall === 'string' ? syscall : undefined,
  );
}
