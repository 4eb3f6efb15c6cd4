import { describe, expect, it } from 'vitest';
import { loadNative } from '../../src/native/index.js';
import { defaultSlotSize, resolveTunOptions, TUN_DEFAULTS } from '../../src/tun/device.js';
import { TunError, toTunError } from '../../src/tun/errors.js';

describe('openTun options', () => {
  it('defaults: vpm%d, batch 64, MTU 1500, 1536-byte slots, txqueuelen 10000, up', () => {
    expect(resolveTunOptions()).toEqual({
      name: 'vpm%d',
      multiQueue: false,
      batchSize: 64,
      mtu: 1500,
      slotSize: 1536,
      txQueueLen: 10_000,
      up: true,
      vnetHdr: false,
      offload: 0x6f,
      persist: false,
    });
    expect(Object.isFrozen(resolveTunOptions())).toBe(true);
    expect(Object.isFrozen(TUN_DEFAULTS)).toBe(true);
  });

  it('a default slot is larger than the MTU and a multiple of 64', () => {
    for (const [mtu, slot] of [
      [68, 128],
      [1280, 1344],
      [1500, 1536],
      [1535, 1536],
      [1536, 1600],
      [9000, 9024],
      [65535, 65536],
    ] as const) {
      expect(defaultSlotSize(mtu), `mtu ${mtu}`).toBe(slot);
    }
  });

  it('with vnetHdr a default slot holds a whole super-packet and its header', () => {
    expect(defaultSlotSize(1500, true)).toBe(65600);
    expect(resolveTunOptions({ vnetHdr: true }).slotSize).toBe(65600);
    expect(() => resolveTunOptions({ vnetHdr: true, slotSize: 65545 })).toThrow(
      /slotSize must be an integer 65546\.\./,
    );
    expect(() => resolveTunOptions({ offload: 256 })).toThrow(
      /offload must be an integer 0\.\.255/,
    );
  });

  it('derives the slot from the MTU unless given', () => {
    expect(resolveTunOptions({ mtu: 9000 }).slotSize).toBe(9024);
    expect(resolveTunOptions({ mtu: 1500, slotSize: 2048 }).slotSize).toBe(2048);
  });

  it.each([
    [{ batchSize: 0 }, /batchSize must be an integer 1\.\.4096, got 0/],
    [{ batchSize: 4097 }, /batchSize/],
    [{ batchSize: 1.5 }, /batchSize/],
    [{ mtu: 67 }, /mtu must be an integer 68\.\.65535, got 67/],
    [{ mtu: 65536 }, /mtu/],
    [{ mtu: 1500, slotSize: 1500 }, /slotSize must be an integer 1501\.\./],
    [{ batchSize: 4096, slotSize: 1 << 20 }, /slotSize/],
    [{ txQueueLen: 0 }, /txQueueLen/],
    [{ txQueueLen: Number.NaN }, /txQueueLen/],
  ])('refuses %j with ERR_TUN_OPTION', (opts, message) => {
    let err: unknown;
    try {
      resolveTunOptions(opts);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TunError);
    expect(err).toMatchObject({ code: 'ERR_TUN_OPTION' });
    expect((err as Error).message).toMatch(message);
  });
});

describe('toTunError', () => {
  it('turns a native ERR_TUN_* error into a TunError with errno and syscall', () => {
    const native = Object.assign(new Error('cannot open'), {
      code: 'ERR_TUN_BUSY',
      errno: 16,
      syscall: 'ioctl(TUNSETIFF)',
    });
    const e = toTunError(native);
    expect(e).toBeInstanceOf(TunError);
    expect(e).toMatchObject({
      code: 'ERR_TUN_BUSY',
      errno: 16,
      syscall: 'ioctl(TUNSETIFF)',
      message: 'cannot open',
    });
  });

  it('leaves other errors alone', () => {
    const t = new TypeError('x');
    expect(toTunError(t)).toBe(t);
    const other = Object.assign(new Error('y'), { code: 'ENOENT' });
    expect(toTunError(other)).toBe(other);
    expect(toTunError('text')).toBe('text');
  });
});

describe('native TUN entry points: argument checks (no device is opened)', () => {
  const native = loadNative();

  it('refuses anything but a tunOpen handle', () => {
    for (const fn of [native.tunStop, native.tunClose, native.tunStats] as const) {
      expect(() => fn({ name: 'vpm0' })).toThrow(TypeError);
      expect(() => (fn as (h?: unknown) => void)()).toThrow(/handle returned by tunOpen/);
    }
    const rx = Buffer.alloc(1536);
    const a = new Uint32Array(1);
    expect(() => native.tunStart({ name: 'x' }, () => {})).toThrow(TypeError);
    expect(() => native.tunBuffers({ name: 'x' }, 1536, 1)).toThrow(TypeError);
    expect(() => native.tunWriteTx({ name: 'x' }, 1)).toThrow(TypeError);
    expect(() => native.tunWriteBatch({ name: 'x' }, rx, a, a, 1)).toThrow(TypeError);
  });

  it('checks link-setting arguments before any ioctl', () => {
    expect(() => native.tunSetMtu('', 1500)).toThrow(
      expect.objectContaining({ code: 'ERR_TUN_NAME' }),
    );
    expect(() => native.tunSetMtu('x'.repeat(16), 1500)).toThrow(
      expect.objectContaining({ code: 'ERR_TUN_NAME' }),
    );
    expect(() => native.tunSetMtu('vpm0', 70_000)).toThrow(RangeError);
    expect(() => native.tunSetTxQueueLen('vpm0', -1)).toThrow(RangeError);
    expect(() => (native.tunSetUp as (n: string, u: unknown) => void)('vpm0', 1)).toThrow(
      TypeError,
    );
  });
});
