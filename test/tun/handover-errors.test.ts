/**
 * The pure parts of src/tun/handover.ts: turning the addon's errors into
 * HandoverErrors, and what a device tells the process that adopts it. The
 * kernel and socket behaviour is in handover.test.ts.
 */

import { describe, expect, it } from 'vitest';
import { VpmError } from '../../src/base/errors.js';
import {
  HandoverError,
  type TunHandoverInfo,
  toHandoverError,
  tunHandoverInfo,
} from '../../src/tun/handover.js';
import type { KernelTun } from '../../src/tun/kernel-tun.js';

function nativeError(code: string, message: string, errno?: number, syscall?: string): Error {
  return Object.assign(new Error(message), { code, errno, syscall });
}

describe('toHandoverError', () => {
  it('turns an ERR_HANDOVER_* error of the addon into a HandoverError with errno and syscall', () => {
    const e = toHandoverError(
      nativeError(
        'ERR_HANDOVER_NO_LISTENER',
        'cannot hand over to /x: nobody listens',
        2,
        'connect',
      ),
    );
    expect(e).toBeInstanceOf(HandoverError);
    expect(e).toBeInstanceOf(VpmError);
    expect(e).toMatchObject({
      name: 'HandoverError',
      code: 'ERR_HANDOVER_NO_LISTENER',
      errno: 2,
      syscall: 'connect',
      message: 'cannot hand over to /x: nobody listens',
    });
  });

  it('leaves errno and syscall undefined when the addon gave none', () => {
    const e = toHandoverError(nativeError('ERR_HANDOVER_TIMEOUT', 'no process handed over'));
    expect(e).toMatchObject({ code: 'ERR_HANDOVER_TIMEOUT', errno: undefined, syscall: undefined });
  });

  it('passes anything else through unchanged: a RangeError, another code, a non-error', () => {
    const range = new RangeError('handoverSend: meta is 70000 bytes');
    expect(toHandoverError(range)).toBe(range);
    const tun = nativeError('ERR_TUN_ADOPT', 'cannot adopt fd 3');
    expect(toHandoverError(tun)).toBe(tun);
    expect(toHandoverError('text')).toBe('text');
    const already = new HandoverError('ERR_HANDOVER_PEER', 'refused');
    expect(toHandoverError(already)).toBe(already);
  });
});

describe('tunHandoverInfo', () => {
  it('says what adoptTun must expect: headers from the headroom, the offload mask, multi-queue', () => {
    const dev = { name: 'vpm3', headroom: 10, offload: 0x47, multiQueue: false } as KernelTun;
    expect(tunHandoverInfo(dev)).toEqual<TunHandoverInfo>({
      name: 'vpm3',
      vnetHdr: true,
      offload: 0x47,
      multiQueue: false,
    });
    const plain = { name: 'vpm4', headroom: 0, offload: 0, multiQueue: true } as KernelTun;
    expect(tunHandoverInfo(plain)).toEqual({
      name: 'vpm4',
      vnetHdr: false,
      offload: 0,
      multiQueue: true,
    });
  });
});
