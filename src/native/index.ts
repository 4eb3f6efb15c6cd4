/**
 * Loads the native addon (native/build/Release/vpm_native.node) built by
 * `npm run build:native`. Works from the TypeScript sources (tests) and from the
 * compiled dist/ tree alike, by walking up to the package root.
 */

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  sum16(buf: Uint8Array, off: number, len: number, initial?: number): number;
  sum16Batch(
    buf: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    count: number,
    out: Uint32Array,
  ): void;
}

/** The package root: the first ancestor whose package.json is vpm's. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if (JSON.parse(readFileSync(pj, 'utf8')).name === 'vpm') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    const up = dirname(dir);
    if (up === dir)
      throw new Error(`cannot find the vpm package root above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

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
