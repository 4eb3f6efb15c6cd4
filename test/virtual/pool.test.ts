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
