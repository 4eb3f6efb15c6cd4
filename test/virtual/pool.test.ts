import { afterEach, describe, expect, it, vi } from 'vitest';
import { PoolError, PortPool } from '../../src/virtual/pool.js';

describe('PortPool', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('hands out every port once, lowest first, and refuses what is not in use', () => {
    const p = new PortPool(20000, 20003, 0, 0);
    expect([p.tryAcquire(), p.tryAcquire(), p.tryAcquire(), p.tryAcquire()]).toEqual([
      20000, 20001, 20002, 20003,
    ]);
    expect(p.tryAcquire()).toBe(-1);
    expect(p.stats()).toMatchObject({ size: 4, free: 0, inUse: 4, quarantined: 0 });
    p.release(20002);
    expect(() => p.release(20002)).toThrow(/20002 is not in use/);
    expect(() => p.release(19999)).toThrow(PoolError);
    expect(p.tryAcquire()).toBe(20002);
  });

  it('keeps a released port in quarantine for quarantineMs', () => {
    vi.useFakeTimers();
    let now = 0;
    const p = new PortPool(1000, 1001, 500, 0, () => now);
    const a = p.tryAcquire();
    p.tryAcquire();
    p.release(a);
    expect(p.stats()).toMatchObject({ free: 0, quarantined: 1 });
    now = 499;
    vi.advanceTimersByTime(499);
    expect(p.tryAcquire()).toBe(-1);
    now = 500;
    vi.advanceTimersByTime(1);
    expect(p.stats()).toMatchObject({ free: 1, quarantined: 0 });
    expect(p.tryAcquire()).toBe(a);
  });

  it('queues requests when empty: served in order when a port returns, failed after waitTimeoutMs', async () => {
    vi.useFakeTimers();
    let now = 0;
    const p = new PortPool(1000, 1000, 100, 1000, () => now);
    expect(await p.acquire()).toBe(1000);
    const first = p.acquire();
    const second = p.acquire();
    const secondResult = second.then(
      (v) => ({ ok: true as const, v }),
      (e: PoolError) => ({ ok: false as const, code: e.code, message: e.message }),
    );
    expect(p.stats().waiting).toBe(2);
    p.release(1000);
    now = 100;
    vi.advanceTimersByTime(100);
    expect(await first).toBe(1000);
    now = 1000;
    vi.advanceTimersByTime(900);
    const r = await secondResult;
    expect(r).toMatchObject({ ok: false, code: 'ERR_PORTS_EXHAUSTED' });
    expect(r.ok ? '' : r.message).toMatch(/no free port in 1000-1000 within 1000 ms/);
    expect(p.stats().waiting).toBe(0);
  });

  it('fails waiters on close', async () => {
    const p = new PortPool(1, 1, 0, 10_000);
    p.tryAcquire();
    const w = p.acquire();
    p.close();
    await expect(w).rejects.toMatchObject({ code: 'ERR_POOL_CLOSED' });
  });

  it('rejects an impossible range', () => {
    expect(() => new PortPool(0, 10, 0, 0)).toThrow(/1 <= lo <= hi <= 65535/);
    expect(() => new PortPool(10, 9, 0, 0)).toThrow(/10-9/);
  });
});

describe('PortPool snapshot and restore (a daemon restart)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** Every port tryAcquire hands out until the pool is empty. */
  const drain = (p: PortPool): number[] => {
    const out: number[] = [];
    for (let x = p.tryAcquire(); x >= 0; x = p.tryAcquire()) out.push(x);
    return out;
  };

  it('records the ports in use and the quarantine with its release times, in the pool clock', () => {
    vi.useFakeTimers();
    let now = 1000;
    const p = new PortPool(20000, 20004, 500, 0, () => now);
    drain(p); // 20000..20004 in use
    p.release(20003);
    now = 1100;
    p.release(20001);
    expect(p.snapshot()).toEqual({
      lo: 20000,
      hi: 20004,
      inUse: [20000, 20002, 20004],
      quarantine: [
        { port: 20003, released: 1000 },
        { port: 20001, released: 1100 },
      ],
    });
    // JSON and back is the same snapshot (what the state file does).
    expect(JSON.parse(JSON.stringify(p.snapshot()))).toEqual(p.snapshot());
    p.close();
  });

  it('keeps restored ports in use until released, and hands out only the others', () => {
    const a = new PortPool(20000, 20004, 0, 0);
    drain(a);
    a.release(20001);
    a.release(20003);
    const b = new PortPool(20000, 20004, 0, 0);
    expect(b.restore(a.snapshot())).toEqual({ inUse: 3, quarantined: 0, expired: 0, ignored: [] });
    expect(b.isInUse(20000) && b.isInUse(20002) && b.isInUse(20004)).toBe(true);
    expect(b.stats()).toMatchObject({ free: 2, inUse: 3, quarantined: 0 });
    // Lowest first, as a fresh pool; never a port that is in use.
    expect(drain(b)).toEqual([20001, 20003]);
    b.release(20002);
    expect(drain(b)).toEqual([20002]);
    expect(() => b.release(20002 + 100)).toThrow(PoolError);
  });

  it('gives a restored quarantine its remaining time, and a waiter its port only then', async () => {
    vi.useFakeTimers();
    // The old daemon: port 20001 released at t=1000 with a 500 ms quarantine.
    let now = 1000;
    const a = new PortPool(20000, 20001, 500, 10_000, () => now);
    drain(a);
    a.release(20001);
    const snap = a.snapshot();
    a.close();
    // The new daemon starts at t=1200 of the same clock: 300 ms of quarantine left.
    now = 1200;
    const b = new PortPool(20000, 20001, 500, 10_000, () => now);
    expect(b.restore(snap)).toMatchObject({ inUse: 1, quarantined: 1, expired: 0 });
    expect(b.tryAcquire()).toBe(-1);
    let got = 0;
    const w = b.acquire().then((port) => {
      got = port;
    });
    expect(b.stats().waiting).toBe(1);
    now = 1499;
    await vi.advanceTimersByTimeAsync(299);
    expect(got).toBe(0);
    expect(b.stats()).toMatchObject({ quarantined: 1, waiting: 1 });
    now = 1500;
    await vi.advanceTimersByTimeAsync(1);
    await w;
    expect(got).toBe(20001);
    expect(b.stats()).toMatchObject({ inUse: 2, quarantined: 0, free: 0, waiting: 0 });
    b.close();
  });

  it('frees a quarantine whose time ran out, and counts a future release time as now', () => {
    vi.useFakeTimers();
    let now = 5000;
    const b = new PortPool(1000, 1003, 500, 0, () => now);
    const r = b.restore({
      lo: 1000,
      hi: 1003,
      inUse: [],
      quarantine: [
        { port: 1002, released: 9_999_999 }, // another clock: back at most quarantineMs from now
        { port: 1001, released: 4000 }, // ran out at 4500
      ],
    });
    expect(r).toEqual({ inUse: 0, quarantined: 1, expired: 1, ignored: [] });
    expect(b.snapshot().quarantine).toEqual([{ port: 1002, released: 5000 }]);
    expect(drain(b)).toEqual([1000, 1001, 1003]);
    now = 5500;
    vi.advanceTimersByTime(500);
    expect(drain(b)).toEqual([1002]);
    b.close();
  });

  it('ignores ports outside its range or listed twice, and restores only a fresh pool', () => {
    const b = new PortPool(1000, 1001, 100, 0);
    const r = b.restore({
      lo: 900,
      hi: 1100,
      inUse: [999, 1000, 1000, 1100],
      quarantine: [{ port: 1000, released: 0 }],
    });
    expect(r).toMatchObject({ inUse: 1, ignored: [999, 1000, 1100, 1000] });
    expect(b.isInUse(1000)).toBe(true);
    expect(() => b.restore({ lo: 1000, hi: 1001, inUse: [], quarantine: [] })).toThrow(
      expect.objectContaining({ code: 'ERR_POOL_RESTORE' }),
    );
    b.close();
  });

  it('claim takes a free or quarantined port into use; its old quarantine time frees nothing', () => {
    vi.useFakeTimers();
    let now = 0;
    const p = new PortPool(1000, 1003, 100, 0, () => now);
    p.restore({
      lo: 1000,
      hi: 1003,
      inUse: [],
      quarantine: [
        { port: 1001, released: 0 },
        { port: 1002, released: 0 },
      ],
    });
    expect(p.claim(1002)).toBe(true);
    expect(p.claim(1003)).toBe(true);
    expect(p.claim(999)).toBe(false);
    expect(p.snapshot()).toMatchObject({
      inUse: [1002, 1003],
      quarantine: [{ port: 1001, released: 0 }],
    });
    now = 100;
    vi.advanceTimersByTime(100);
    // 1001 came back from quarantine: on top of the free ones, as after any quarantine.
    expect(drain(p)).toEqual([1001, 1000]);
    expect(p.isInUse(1002)).toBe(true);
    p.release(1002);
    expect(p.stats()).toMatchObject({ inUse: 3, quarantined: 1 });
    p.close();
  });
});
