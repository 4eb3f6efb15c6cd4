/**
 * The port pool: real ports for instances that register at run time.
 *
 * Theory of operation. Every port of the range is in exactly one of three
 * places:
 *   free        a stack; `acquire` pops in O(1);
 *   in use      handed out, until `release`;
 *   quarantine  a FIFO of (port, time released); as the quarantine time is the
 *               same for every port, the head is always the next to come back.
 *               One timer, set for the head, moves ports back to `free`.
 * A port stays in quarantine so that late packets of the old instance's
 * connections (and the kernel's TIME_WAIT on its side) never reach a new one.
 * When the pool is empty, `acquire` queues the request (FIFO) for up to
 * `waitTimeoutMs`; a port coming back from quarantine goes to the oldest waiter;
 * a waiter whose time runs out fails with ERR_PORTS_EXHAUSTED.
 */

import { VpmError } from '../base/errors.js';

export type PoolErrorCode =
  /** No port came back within waitTimeoutMs. */
  | 'ERR_PORTS_EXHAUSTED'
  /** acquire() after close(), or a waiter when the pool closed. */
  | 'ERR_POOL_CLOSED'
  /** release() of a port that is not in use (the caller's bug). */
  | 'ERR_POOL_RELEASE';

export class PoolError extends VpmError<PoolErrorCode> {}

interface Waiter {
  resolve: (port: number) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  done: boolean;
}

export interface PoolStats {
  lo: number;
  hi: number;
  size: number;
  free: number;
  inUse: number;
  quarantined: number;
  waiting: number;
}

export class PortPool {
  readonly lo: number;
  readonly hi: number;
  private readonly free: Int32Array;
  private freeTop = 0;
  private readonly state: Uint8Array; // per port offset: 0 free, 1 in use, 2 quarantined
  private readonly qPort: Int32Array;
  private readonly qTime: Float64Array;
  private qHead = 0;
  private qLen = 0;
  private qTimer: NodeJS.Timeout | null = null;
  private readonly waiters: Waiter[] = [];
  private closed = false;

  constructor(
    lo: number,
    hi: number,
    readonly quarantineMs: number,
    readonly waitTimeoutMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 1 || hi > 65535 || lo > hi) {
      throw new RangeError(`port pool range ${lo}-${hi} must satisfy 1 <= lo <= hi <= 65535`);
    }
    this.lo = lo;
    this.hi = hi;
    const n = hi - lo + 1;
    this.free = new Int32Array(n);
    this.state = new Uint8Array(n);
    this.qPort = new Int32Array(n);
    this.qTime = new Float64Array(n);
    // Lowest port on top, so a fresh pool hands out lo, lo+1, ...
    for (let i = 0; i < n; i++) this.free[i] = hi - i;
    this.freeTop = n;
  }

  get size(): number {
    return this.hi - this.lo + 1;
  }

  /** A free port now, or -1. */
  tryAcquire(): number {
    if (this.freeTop === 0) return -1;
    const p = this.free[--this.freeTop]!;
    this.state[p - this.lo] = 1;
    return p;
  }

  /** A free port, waiting up to waitTimeoutMs for one to come back from quarantine. */
  acquire(): Promise<number> {
    if (this.closed)
      return Promise.reject(new PoolError('ERR_POOL_CLOSED', 'the port pool is shut down'));
    const p = this.tryAcquire();
    if (p >= 0) return Promise.resolve(p);
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        done: false,
        timer: setTimeout(() => {
          w.done = true;
          const i = this.waiters.indexOf(w);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(
            new PoolError(
              'ERR_PORTS_EXHAUSTED',
              `no free port in ${this.lo}-${this.hi} within ${this.waitTimeoutMs} ms (${this.stats().inUse} in use, ${this.qLen} in quarantine)`,
            ),
          );
        }, this.waitTimeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /**
   * Take `port` itself out of the free ports (a previous daemon's flow holds
   * it: the cooperative p2 of a flow taken over). False, changing nothing, when
   * it is not free. O(size): control plane, at start-up.
   */
  claim(port: number): boolean {
    const i = port - this.lo;
    if (i < 0 || port > this.hi || this.state[i] !== 0) return false;
    for (let k = 0; k < this.freeTop; k++) {
      if (this.free[k] !== port) continue;
      this.free[k] = this.free[--this.freeTop]!;
      this.state[i] = 1;
      return true;
    }
    return false;
  }

  /** Give a port back; it returns to use after the quarantine. Releasing a port not in use is an error. */
  release(port: number): void {
    const i = port - this.lo;
    if (i < 0 || port > this.hi || this.state[i] !== 1) {
      throw new PoolError(
        'ERR_POOL_RELEASE',
        `port ${port} is not in use in pool ${this.lo}-${this.hi}`,
      );
    }
    if (this.quarantineMs <= 0) {
      this.state[i] = 0;
      this.giveBack(port);
      return;
    }
    this.state[i] = 2;
    const tail = (this.qHead + this.qLen) % this.qPort.length;
    this.qPort[tail] = port;
    this.qTime[tail] = this.now() + this.quarantineMs;
    this.qLen++;
    if (this.qLen === 1) this.armTimer();
  }

  private giveBack(port: number): void {
    // The oldest waiter gets it directly.
    while (this.waiters.length > 0) {
      const w = this.waiters.shift()!;
      if (w.done) continue;
      w.done = true;
      clearTimeout(w.timer);
      this.state[port - this.lo] = 1;
      w.resolve(port);
      return;
    }
    this.free[this.freeTop++] = port;
  }

  private armTimer(): void {
    if (this.qTimer !== null || this.qLen === 0 || this.closed) return;
    const delay = Math.max(0, this.qTime[this.qHead]! - this.now());
    this.qTimer = setTimeout(() => {
      this.qTimer = null;
      this.drainQuarantine();
    }, delay);
    this.qTimer.unref?.();
  }

  private drainQuarantine(): void {
    const t = this.now();
    while (this.qLen > 0 && this.qTime[this.qHead]! <= t) {
      const port = this.qPort[this.qHead]!;
      this.qHead = (this.qHead + 1) % this.qPort.length;
      this.qLen--;
      this.state[port - this.lo] = 0;
      this.giveBack(port);
    }
    this.armTimer();
  }

  stats(): PoolStats {
    return {
      lo: this.lo,
      hi: this.hi,
      size: this.size,
      free: this.freeTop,
      inUse: this.size - this.freeTop - this.qLen,
      quarantined: this.qLen,
      waiting: this.waiters.filter((w) => !w.done).length,
    };
  }

  /** Fail every waiter and stop the timer (daemon shutdown). */
  close(): void {
    this.closed = true;
    if (this.qTimer) clearTimeout(this.qTimer);
    this.qTimer = null;
    for (const w of this.waiters.splice(0)) {
      if (w.done) continue;
      w.done = true;
      clearTimeout(w.timer);
      w.reject(new PoolError('ERR_POOL_CLOSED', 'the port pool is shut down'));
    }
  }
}
