/**
 * Where the package lives on disk. A leaf module (node built-ins only) so that
 * any layer can find files that ship with vpm (the native addon, docs/) without
 * depending on the layer that owns them. Works from the TypeScript sources
 * (tests) and from the compiled dist/src/ tree alike, by walking up to the
 * package root.
 */

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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
