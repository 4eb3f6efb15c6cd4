/**
 * Replay cache for the cooperative negotiation channel: remembers the nonces of
 * authenticated messages for as long as their timestamp would still be accepted.
 *
 * Theory of operation. A message is *fresh* when |now - ts| <= windowMs. A fresh
 * message is accepted once: its nonce goes into a Set and, in arrival order, into
 * a ring buffer of (nonce, ts). A replayed frame carries the very same ts and
 * nonce (both are under the MAC), so:
 *   - while the copy is fresh, its nonce is still in the Set -> `replayed`;
 *   - once `now - ts > windowMs` the copy is `stale` anyway, and the entry may go.
 * Expiry pops the ring's head while the head is stale: O(1) amortized, no scan,
 * no timer. Timestamps in the ring are not sorted (a peer's clock may be up to a
 * window ahead or behind), so a fresh head can hold back stale entries behind it;
 * that only keeps them longer than needed, never shorter, and the ring is bounded.
 *
 * Bounded memory: when the ring is full the oldest entry is evicted before its
 * time, and the cache raises a *floor*: from then on any ts <= the evicted ts is
 * refused as stale. A replay of an evicted nonce therefore cannot get through
 * (its ts is at most the floor); under sustained overload the price is that
 * slow-but-honest messages older than the floor are refused, which the caller
 * sees as `stale`. Only authenticated messages are recorded, so a party without
 * the key cannot fill the cache.
 */

export type ReplayVerdict = 'ok' | 'stale' | 'replayed';

export interface ReplayCacheOptions {
  /** How far a timestamp may be from now, either way, in ms. Default 30000. */
  windowMs?: number;
  /** Most nonces held at once. Default 100000. */
  maxEntries?: number;
  /** Clock, ms since the epoch. Default Date.now. */
  now?: () => number;
}

export interface ReplayStats {
  size: number;
  capacity: number;
  windowMs: number;
  /** Entries pushed out before their time because the cache was full. */
  evicted: number;
  /** Timestamps at or below this are refused (0 until the first eviction). */
  floorTs: number;
}

export class ReplayCache {
  readonly windowMs: number;
  readonly capacity: number;
  readonly now: () => number;
  private readonly seen = new Set<string>();
  private readonly nonces: (string | undefined)[];
  private readonly stamps: Float64Array;
  private head = 0;
  private count = 0;
  private floor = 0;
  private evicted = 0;

  constructor(opts: ReplayCacheOptions = {}) {
    const windowMs = opts.windowMs ?? 30_000;
    const maxEntries = opts.maxEntries ?? 100_000;
    if (!Number.isFinite(windowMs) || windowMs < 0)
      throw new RangeError(`replay windowMs must be >= 0, got ${windowMs}`);
    if (!Number.isInteger(maxEntries) || maxEntries < 1)
      throw new RangeError(`replay maxEntries must be an integer >= 1, got ${maxEntries}`);
    this.windowMs = windowMs;
    this.capacity = maxEntries;
    this.now = opts.now ?? Date.now;
    this.nonces = new Array<string | undefined>(maxEntries);
    this.stamps = new Float64Array(maxEntries);
  }

  /**
   * Check a message's (nonce, ts) and, if it is acceptable, remember it.
   * `stale` wins over `replayed`: a stale copy is refused without a lookup.
   */
  check(nonce: string, ts: number, now: number = this.now()): ReplayVerdict {
    this.expire(now);
    if (!(Math.abs(now - ts) <= this.windowMs) || ts <= this.floor) return 'stale';
    if (this.seen.has(nonce)) return 'replayed';
    if (this.count === this.capacity) {
      // Full: evicting the head raises the floor to its ts. A message at or below
      // that would be refused right after, so refuse it without evicting anything.
      if (ts <= Math.max(this.floor, this.stamps[this.head]!)) return 'stale';
      this.floor = Math.max(this.floor, this.stamps[this.head]!);
      this.evicted++;
      this.pop();
    }
    const tail = (this.head + this.count) % this.capacity;
    this.nonces[tail] = nonce;
    this.stamps[tail] = ts;
    this.count++;
    this.seen.add(nonce);
    return 'ok';
  }

  /** Whether a nonce is currently remembered (for tests and diagnostics). */
  has(nonce: string): boolean {
    return this.seen.has(nonce);
  }

  get size(): number {
    return this.count;
  }

  stats(): ReplayStats {
    return {
      size: this.count,
      capacity: this.capacity,
      windowMs: this.windowMs,
      evicted: this.evicted,
      floorTs: this.floor,
    };
  }

  private expire(now: number): void {
    while (this.count > 0 && now - this.stamps[this.head]! > this.windowMs) this.pop();
  }

  private pop(): void {
    const n = this.nonces[this.head];
    if (n !== undefined) this.seen.delete(n);
    this.nonces[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.count--;
  }
}
