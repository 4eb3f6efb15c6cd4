import { describe, expect, it } from 'vitest';
import { ReplayCache } from '../../src/coop/replay.js';

const T0 = 1_700_000_000_000;
const n = (i: number) => i.toString(16).padStart(32, '0');

describe('ReplayCache', () => {
  it('accepts a nonce once and refuses it again within the window', () => {
    const c = new ReplayCache({ now: () => T0 });
    expect(c.check(n(1), T0)).toBe('ok');
    expect(c.check(n(1), T0)).toBe('replayed');
    expect(c.check(n(2), T0)).toBe('ok');
    expect(c.size).toBe(2);
  });

  it('refuses timestamps more than windowMs away, either way; the edge is inside', () => {
    const c = new ReplayCache({ windowMs: 30_000, now: () => T0 });
    expect(c.check(n(1), T0 - 30_001)).toBe('stale');
    expect(c.check(n(2), T0 + 30_001)).toBe('stale');
    expect(c.check(n(3), T0 - 30_000)).toBe('ok');
    expect(c.check(n(4), T0 + 30_000)).toBe('ok');
    expect(c.check(n(5), Number.NaN)).toBe('stale');
    expect(c.size).toBe(2); // stale ones are not recorded
  });

  it('forgets a nonce once its timestamp is stale: the copy is then refused as stale', () => {
    let now = T0;
    const c = new ReplayCache({ windowMs: 1000, now: () => now });
    expect(c.check(n(1), T0)).toBe('ok');
    now = T0 + 1000;
    expect(c.check(n(1), T0)).toBe('replayed');
    now = T0 + 1001;
    expect(c.check(n(1), T0)).toBe('stale');
    expect(c.has(n(1))).toBe(false);
    expect(c.size).toBe(0);
  });

  it('remembers a future-dated nonce until its own timestamp is stale, not the arrival time', () => {
    let now = T0;
    const c = new ReplayCache({ windowMs: 1000, now: () => now });
    expect(c.check(n(1), T0 + 900)).toBe('ok');
    now = T0 + 1500; // arrival + 1500 > window, but ts is only 600 ms old
    expect(c.check(n(1), T0 + 900)).toBe('replayed');
    now = T0 + 1901;
    expect(c.check(n(1), T0 + 900)).toBe('stale');
  });

  it('expires out of order timestamps without losing any that are still fresh', () => {
    let now = T0;
    const c = new ReplayCache({ windowMs: 1000, now: () => now });
    c.check(n(1), T0 + 800); // head, fresh for longest
    c.check(n(2), T0 - 900); // behind it, stale soon
    now = T0 + 200;
    // n(2) is stale now; it may still be held (behind a fresh head) but is refused as stale.
    expect(c.check(n(2), T0 - 900)).toBe('stale');
    expect(c.check(n(1), T0 + 800)).toBe('replayed');
    now = T0 + 1801;
    c.check(n(3), now);
    expect(c.size).toBe(1);
  });

  it('stays bounded: when full it evicts the oldest and raises a floor so the evicted cannot replay', () => {
    const c = new ReplayCache({ windowMs: 30_000, maxEntries: 3, now: () => T0 });
    expect(c.check(n(1), T0 - 10)).toBe('ok');
    expect(c.check(n(2), T0 - 5)).toBe('ok');
    expect(c.check(n(3), T0 - 1)).toBe('ok');
    expect(c.check(n(4), T0)).toBe('ok'); // evicts n(1), floor = T0 - 10
    expect(c.size).toBe(3);
    expect(c.stats()).toMatchObject({ size: 3, capacity: 3, evicted: 1, floorTs: T0 - 10 });
    expect(c.has(n(1))).toBe(false);
    expect(c.check(n(1), T0 - 10)).toBe('stale'); // its replay
    expect(c.check(n(9), T0 - 20)).toBe('stale'); // older than the floor
    // Full, and the new one is not newer than the head: refused without evicting.
    expect(c.check(n(10), T0 - 5)).toBe('stale');
    expect(c.stats().evicted).toBe(1);
    expect(c.check(n(2), T0 - 5)).toBe('replayed');
  });

  it('holds 100k entries by default and handles long streams in amortized O(1)', () => {
    let now = T0;
    const c = new ReplayCache({ now: () => now });
    expect(c.stats().capacity).toBe(100_000);
    const start = performance.now();
    // 1000 messages a second: expiry keeps the last 30 s (30001 entries), no eviction.
    let ok = 0;
    for (let i = 0; i < 300_000; i++) {
      now = T0 + i;
      if (c.check(n(i), now) === 'ok') ok++;
    }
    expect(ok).toBe(300_000);
    expect(c.stats()).toMatchObject({ size: 30_001, evicted: 0 });
    // A burst faster than the cache: it stays at capacity, evicting the oldest.
    const d = new ReplayCache({ now: () => T0 });
    const ts = (i: number) => T0 - 25_000 + Math.floor(i / 10); // 10 per ms, all fresh
    let okd = 0;
    for (let i = 0; i < 250_000; i++) if (d.check(n(i), ts(i)) === 'ok') okd++;
    expect(okd).toBe(250_000);
    expect(d.stats()).toMatchObject({ size: 100_000, evicted: 150_000, floorTs: ts(149_999) });
    expect(d.check(n(0), ts(0))).toBe('stale');
    expect(d.check(n(149_999), ts(149_999))).toBe('stale');
    expect(d.check(n(150_000), ts(150_000))).toBe('replayed');
    expect(d.check(n(249_999), ts(249_999))).toBe('replayed');
    expect(performance.now() - start).toBeLessThan(5000);
  });

  it('rejects nonsense options', () => {
    expect(() => new ReplayCache({ maxEntries: 0 })).toThrow(RangeError);
    expect(() => new ReplayCache({ windowMs: -1 })).toThrow(RangeError);
  });
});
