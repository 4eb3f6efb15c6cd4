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
 *
 * Surviving a restart (`snapshot`, `restore`). A snapshot lists the ports in
 * use and the quarantine (each port with the time it was released), in the
 * pool's `now()` clock: the daemon gives every pool a clock that is comparable
 * across its processes (CLOCK_MONOTONIC-based ms), so a quarantine restored by
 * the next daemon keeps its remaining time. `restore` rebuilds a fresh pool
 * from one: the ports in use stay in use until released (whoever owned them
 * before the restart still does), the quarantine comes back oldest first with
 * each port's time (a time ahead of `now()` — another clock, a forged file —
 * counts as released now, so no port is held longer than quarantineMs, and the
 * FIFO stays sorted for the releases that follow), the others are free, lowest
 * on top as in a fresh pool. Ports outside this pool's range (a restart with
 * another `pool.range`) are ignored and reported. `claim` and `isInUse` let the
 * registry put the snapshot's pool and its groups in agreement.
 */

import { VpmError } from '../base/errors.js';

export type PoolErrorCode =
  /** No port came back within waitTimeoutMs. */
  | 'ERR_PORTS_EXHAUSTED'
  /** acquire() after close(), or a waiter when the pool closed. */
  | 'ERR_POOL_CLOSED'
  /** release() of a port that is not in use (the caller's bug). */
  | 'ERR_POOL_RELEASE'
  /** restore() on a pool that has handed out ports already (the caller's bug). */
  | 'ERR_POOL_RESTORE';

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

/**
 * The pool's state as a restart needs it (JSON-serializable). Times are the
 * pool's `now()` clock (ms).
 */
export interface PoolSnapshot {
  lo: number;
  hi: number;
  /** Ports handed out and not released, ascending. */
  inUse: number[];
  /** Ports in quarantine, oldest first, with the time (now() clock, ms) each was released. */
  quarantine: { port: number; released: number }[];
}

/** What `restore` took from a snapshot. */
export interface PoolRestoreReport {
  inUse: number;
  quarantined: number;
  /** Quarantined ports whose time had run out: free at once. */
  expired: number;
  /** Ports of the snapshot outside this pool's range, or listed twice: ignored. */
  ignored: number[];
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

  /** Is `port` in this pool's range? */
  contains(port: number): boolean {
    return Number.isInteger(port) && port >= this.lo && port <= this.hi;
  }

  /** Is `port` handed out (in use)? */
  isInUse(port: number): boolean {
    return this.contains(port) && this.state[port - this.lo] === 1;
  }

  /** The ports in use and the quarantine, for a restart (see the module comment). */
  snapshot(): PoolSnapshot {
    const inUse: number[] = [];
    for (let i = 0; i < this.state.length; i++) if (this.state[i] === 1) inUse.push(this.lo + i);
    const quarantine: { port: number; released: number }[] = [];
    for (let k = 0; k < this.qLen; k++) {
      const j = (this.qHead + k) % this.qPort.length;
      quarantine.push({ port: this.qPort[j]!, released: this.qTime[j]! - this.quarantineMs });
    }
    return { lo: this.lo, hi: this.hi, inUse, quarantine };
  }

  /**
   * Rebuild this pool, which must be fresh (nothing handed out, nobody
   * waiting: ERR_POOL_RESTORE otherwise), from a snapshot (module comment).
   */
  restore(snap: PoolSnapshot): PoolRestoreReport {
    if (this.closed || this.freeTop !== this.size || this.waiters.length > 0) {
      throw new PoolError(
        'ERR_POOL_RESTORE',
        `port pool ${this.lo}-${this.hi} has handed out ports already: restore() needs a fresh pool`,
      );
    }
    const ignored: number[] = [];
    let inUse = 0;
    for (const port of snap.inUse) {
      if (!this.contains(port) || this.state[port - this.lo] !== 0) {
        ignored.push(port);
        continue;
      }
      this.state[port - this.lo] = 1;
      inUse++;
    }
    const t = this.now();
    const q = snap.quarantine
      .filter((e) => {
        const ok = this.contains(e.port) && this.state[e.port - this.lo] === 0;
        if (ok) this.state[e.port - this.lo] = 2;
        else ignored.push(e.port);
        return ok;
      })
      .map((e) => ({
        port: e.port,
        released: Number.isFinite(e.released) ? Math.min(e.released, t) : t,
      }))
      .sort((a, b) => a.released - b.released);
    let expired = 0;
    for (const e of q) {
      const until = e.released + this.quarantineMs;
      if (this.quarantineMs <= 0 || until <= t) {
        this.state[e.port - this.lo] = 0;
        expired++;
        continue;
      }
      this.qPort[(this.qHead + this.qLen) % this.qPort.length] = e.port;
      this.qTime[(this.qHead + this.qLen) % this.qPort.length] = until;
      this.qLen++;
    }
    // Free: every port neither in use nor in quarantine, lowest on top.
    this.freeTop = 0;
    for (let port = this.hi; port >= this.lo; port--)
      if (this.state[port - this.lo] === 0) this.free[this.freeTop++] = port;
    this.armTimer();
    return { inUse, quarantined: this.qLen, expired, ignored };
  }

  /**
   * Mark `port` in use whatever its state (free, or in quarantine: it leaves
   * it). The registry's restore: a group that survived holds its port.
   * Returns false when the port is outside the range. Control plane: O(size).
   */
  claim(port: number): boolean {
    if (!this.contains(port)) return false;
    const i = port - this.lo;
    if (this.state[i] === 0) {
      const k = this.free.subarray(0, this.freeTop).indexOf(port);
      if (k >= 0) {
        this.free.copyWithin(k, k + 1, this.freeTop);
        this.freeTop--;
      }
    } else if (this.state[i] === 2) {
      // Out of the ring, keeping the order of the others.
      let w = 0;
      const n = this.qPort.length;
      for (let k = 0; k < this.qLen; k++) {
        const j = (this.qHead + k) % n;
        if (this.qPort[j] === port) continue;
        const d = (this.qHead + w) % n;
        this.qPort[d] = this.qPort[j]!;
        this.qTime[d] = this.qTime[j]!;
        w++;
      }
      this.qLen = w;
      if (this.qTimer !== null) {
        clearTimeout(this.qTimer);
        this.qTimer = null;
      }
      this.armTimer();
    }
    this.state[i] = 1;
    return true;
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
