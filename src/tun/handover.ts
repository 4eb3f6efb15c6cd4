/**
 * Handing the TUN device's open file from one vpm process to another, so that a
 * restart or an upgrade never closes it (native/src/handover.c has the protocol).
 *
 * Why an fd and not a name: a single-queue TUN refuses a second attach with
 * EBUSY while it is open, and one that is not persistent is deleted when its last
 * fd closes. Passed with SCM_RIGHTS, the same open file moves to the new process;
 * the kernel holds it while in flight, so the device stays attached through the
 * old process's exit, and what the kernel routes to it meanwhile waits in its
 * queue (up to its txqueuelen) for the next reader.
 *
 * The sequence, one handover:
 *
 *     new process                              old process
 *     listener = listenForHandover(path)
 *     listener.receive(timeoutMs)  ◄─────────  dev.stop()
 *       (blocks: nothing served yet)           sendHandover(path, dev.fd(), meta)
 *       ack ─────────────────────────────────► returns: the fd has arrived
 *     listener.close()                         dev.close(); exit
 *     adoptTun(fd, { ...tunOptions,
 *       ...tunHandoverInfo fields of meta })
 *     dev.start(...)
 *
 * `meta` is any JSON value (at most 64 KiB encoded); `tunHandoverInfo(dev)` gives
 * the part adoptTun needs. Both sides check that the other is root or of their
 * own uid, and the socket is mode 0600. Each call is bounded by its timeout; a
 * sender that times out waiting for the acknowledgement cannot tell whether the
 * receiver took the fd (see native/src/handover.c).
 *
 * | code | when |
 * | --- | --- |
 * | ERR_HANDOVER_TIMEOUT | nobody sent, or the message or its acknowledgement did not come, in time |
 * | ERR_HANDOVER_NO_LISTENER | nothing listens at the path |
 * | ERR_HANDOVER_PEER | the other end is neither root nor of our uid |
 * | ERR_HANDOVER_PROTOCOL | not a vpm handover, not exactly one fd, bad JSON, closed early, or refused |
 * | ERR_HANDOVER_IO | a system call failed (errno, syscall) |
 */

import { lstatSync, unlinkSync } from 'node:fs';
import { VpmError } from '../base/errors.js';
import { loadNative } from '../native/index.js';
import type { KernelTun } from './kernel-tun.js';

export type HandoverErrorCode =
  | 'ERR_HANDOVER_TIMEOUT'
  | 'ERR_HANDOVER_NO_LISTENER'
  | 'ERR_HANDOVER_PEER'
  | 'ERR_HANDOVER_PROTOCOL'
  | 'ERR_HANDOVER_IO';

export class HandoverError extends VpmError<HandoverErrorCode> {
  readonly errno: number | undefined;
  readonly syscall: string | undefined;

  constructor(code: HandoverErrorCode, message: string, errno?: number, syscall?: string) {
    super(code, message);
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** A native ERR_HANDOVER_* error as a HandoverError; anything else (TypeError, RangeError) unchanged. */
export function toHandoverError(e: unknown): unknown {
  if (e instanceof HandoverError || !(e instanceof Error)) return e;
  const { code, errno, syscall } = e as Error & {
    code?: unknown;
    errno?: unknown;
    syscall?: unknown;
  };
  if (typeof code !== 'string' || !code.startsWith('ERR_HANDOVER_')) return e;
  return new HandoverError(
    code as HandoverErrorCode,
    e.message,
    typeof errno === 'number' ? errno : undefined,
    typeof syscall === 'string' ? syscall : undefined,
  );
}

/** The most bytes of encoded meta one handover carries (native/src/handover.h). */
export const HANDOVER_MAX_META = 65536;
export const HANDOVER_DEFAULT_TIMEOUT_MS = 5000;

/** What adoptTun needs to know of the device, as the sending process had it. */
export interface TunHandoverInfo {
  name: string;
  vnetHdr: boolean;
  offload: number;
  multiQueue: boolean;
}

export function tunHandoverInfo(dev: KernelTun): TunHandoverInfo {
  return {
    name: dev.name,
    vnetHdr: dev.headroom > 0,
    offload: dev.offload,
    multiQueue: dev.multiQueue,
  };
}

/** What one handover brought: the fd (close-on-exec, now this process's) and the meta. */
export interface ReceivedHandover {
  fd: number;
  meta: unknown;
}

/** The receiving end: a unix socket listening at `path` (see listenForHandover). */
export class HandoverListener {
  readonly path: string;
  readonly fd: number;
  #closed = false;
  readonly #ino: number;
  readonly #dev: number;

  constructor(path: string, fd: number) {
    this.path = path;
    this.fd = fd;
    const st = lstatSync(path);
    this.#ino = st.ino;
    this.#dev = st.dev;
  }

  /**
   * Wait (blocking this thread) up to `timeoutMs` for one sender, take its fd and
   * meta, acknowledge. A payload that is not JSON is refused (ERR_HANDOVER_PROTOCOL)
   * after the acknowledgement: the fd is closed.
   */
  receive(timeoutMs: number): ReceivedHandover {
    if (this.#closed)
      throw new HandoverError('ERR_HANDOVER_IO', `handover listener on ${this.path} is closed`);
    const native = loadNative();
    let got: { fd: number; meta: string };
    try {
      got = native.handoverReceive(this.fd, timeoutMs);
    } catch (e) {
      throw toHandoverError(e);
    }
    try {
      return { fd: got.fd, meta: JSON.parse(got.meta) as unknown };
    } catch (e) {
      native.closeFd(got.fd);
      throw new HandoverError(
        'ERR_HANDOVER_PROTOCOL',
        `handover on ${this.path}: the payload is not JSON (${(e as Error).message}); the fd received is closed`,
      );
    }
  }

  /** Close the socket and remove its file, unless another socket has taken the path since. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    loadNative().closeFd(this.fd);
    try {
      const st = lstatSync(this.path);
      if (st.ino === this.#ino && st.dev === this.#dev) unlinkSync(this.path);
    } catch {
      // gone already
    }
  }
}

/** Listen for a handover at `path` (mode 0600; a stale socket file there is removed first). */
export function listenForHandover(path: string): HandoverListener {
  const native = loadNative();
  let fd: number;
  try {
    fd = native.handoverListen(path);
  } catch (e) {
    throw toHandoverError(e);
  }
  try {
    return new HandoverListener(path, fd);
  } catch (e) {
    native.closeFd(fd);
    throw e;
  }
}

/**
 * Hand `fd` and `meta` (any JSON value) to the process listening at `path`;
 * returns once it has acknowledged, within `timeoutMs`. This process's fd stays
 * open: close it (the device's `close()`) once done.
 */
export function sendHandover(
  path: string,
  fd: number,
  meta: unknown,
  timeoutMs = HANDOVER_DEFAULT_TIMEOUT_MS,
): void {
  const text = JSON.stringify(meta);
  if (text === undefined) throw new TypeError('sendHandover: meta must be a JSON value');
  try {
    loadNative().handoverSend(path, fd, text, timeoutMs);
  } catch (e) {
    throw toHandoverError(e);
  }
}

/** close(2) of an fd received and not adopted. ERR_HANDOVER_IO when it is not open. */
export function closeFd(fd: number): void {
  try {
    loadNative().closeFd(fd);
  } catch (e) {
    throw toHandoverError(e);
  }
}
