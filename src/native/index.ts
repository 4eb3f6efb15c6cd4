/**
 * Loads the native addon (native/build/Release/vpm_native.node) built by
 * `npm run build:native`. Works from the TypeScript sources (tests) and from the
 * compiled dist/ tree alike (the package root comes from src/paths.ts).
 */

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';
import type { TunStats } from '../tun/device.js';

export interface NativeAddon {
  sum16(buf: Uint8Array, off: number, len: number, initial?: number): number;
  sum16Batch(
    buf: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    count: number,
    out: Uint32Array,
  ): void;

  // TUN device (native/src/tun.c; the typed wrapper is src/tun/kernel-tun.ts).
  // Errors carry a stable `code` (ERR_TUN_*), and `errno`/`syscall` when a call failed.
  /** Open /dev/net/tun (IFF_TUN | IFF_NO_PI, O_NONBLOCK | O_CLOEXEC); name may be a pattern like "vpm%d". */
  tunOpen(opts?: { name?: string; multiQueue?: boolean; vnetHdr?: boolean }): {
    readonly name: string;
    readonly multiQueue: boolean;
  };
  tunSetMtu(name: string, mtu: number): void;
  tunSetTxQueueLen(name: string, len: number): void;
  tunSetUp(name: string, up: boolean): void;
  /** Read in bursts of up to min(offsets.length, lengths.length, rxBuf.length / slotSize) packets; one onBatch per burst. */
  tunStart(
    handle: { readonly name: string },
    rxBuf: Uint8Array,
    slotSize: number,
    offsets: Uint32Array,
    lengths: Uint32Array,
    onBatch: (count: number) => void,
    onError?: (err: Error & { code: string; errno?: number; syscall?: string }) => void,
  ): void;
  tunStop(handle: { readonly name: string }): void;
  /** Returns n: packets [0, n) were written or refused one by one (stats), [n, count) not tried (queue full). */
  tunWriteBatch(
    handle: { readonly name: string },
    buf: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    count: number,
  ): number;
  tunClose(handle: { readonly name: string }): void;
  tunStats(handle: { readonly name: string }): TunStats;
}

// The package root moved to a leaf module; re-exported here for the existing importers.
export { packageRoot };

let addon: NativeAddon | null = null;

export function loadNative(): NativeAddon {
  if (addon) return addon;
  const path = join(packageRoot(), 'native', 'build', 'Release', 'vpm_native.node');
  if (!existsSync(path)) {
    throw new Error(`native addon not built: ${path} is missing (run: npm run build:native)`);
  }
  addon = createRequire(import.meta.url)(path) as NativeAddon;
  return addon;
}
