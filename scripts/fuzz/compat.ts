/**
 * Makes Jazzer.js's native fuzzer load on an older glibc (Debian 12: glibc 2.36,
 * GCC 12's libstdc++). The prebuilt addon of @jazzer.js/fuzzer 4.0.0
 * (prebuilds/fuzzer-linux-x64.node; the package ships no sources to build
 * from) was linked against glibc 2.38 and GCC 13's libstdc++, and needs three
 * symbols only those have: `__isoc23_strtol` and `__isoc23_strtoul` (C23
 * strtol/strtoul, which also read "0b" prefixes) and
 * `std::ios_base_library_init()` (a link-time anchor for iostreams).
 *
 * If the addon loads as shipped, nothing is done. Otherwise, once per install
 * (scripts/setup.sh runs this after `npm ci`), in the installed copy:
 *   1. a small shim library (libjazzer-compat.so, next to the addon) defines
 *      the three symbols over the old ones (strtol, strtoul, a static
 *      std::ios_base::Init);
 *   2. patchelf drops those symbols' version requirements, adds the shim as
 *      NEEDED and sets RUNPATH to $ORIGIN;
 *   3. the version references GLIBC_2.38 and GLIBCXX_3.4.32 are marked weak
 *      (VER_FLG_WEAK in .gnu.version_r), so the loader does not refuse the file
 *      for versions no symbol asks for any more.
 * Then it checks that the addon loads. The original is kept as *.orig. A
 * failure is reported and leaves the exit status 0: it breaks `npm run fuzz`
 * (which then says the addon does not load), never the set-up or `npm test`.
 */

import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const SHIM = `// Written by scripts/fuzz/compat.ts: glibc 2.38 / GCC 13 symbols for an older system.
#include <cstdlib>
#include <ios>
extern "C" long __isoc23_strtol(const char *s, char **end, int base) { return strtol(s, end, base); }
extern "C" unsigned long __isoc23_strtoul(const char *s, char **end, int base) { return strtoul(s, end, base); }
namespace std { void ios_base_library_init() { static ios_base::Init init; } }
static std::ios_base::Init vpm_ios_init;
`;
const SYMBOLS = ['__isoc23_strtol', '__isoc23_strtoul', '_ZSt21ios_base_library_initv'];
const WEAK_VERSIONS = new Set(['GLIBC_2.38', 'GLIBCXX_3.4.32']);
const SHT_GNU_VERNEED = 0x6ffffffe;
const VER_FLG_WEAK = 0x2;

function loads(file: string): string | null {
  try {
    execFileSync(process.execPath, ['-e', `require(${JSON.stringify(file)})`], { stdio: 'pipe' });
    return null;
  } catch (e) {
    return (
      String((e as { stderr?: Buffer }).stderr ?? e)
        .split('\n')
        .find((l) => l.startsWith('Error')) ?? 'does not load'
    );
  }
}

/** Sets VER_FLG_WEAK on the version references named in WEAK_VERSIONS (ELF64 little-endian). */
function weakenVersions(file: string): number {
  const b = readFileSync(file);
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1)
    throw new Error(`${file}: not ELF64 LE`);
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  const sh = (i: number) => {
    const o = shoff + i * shentsize;
    return {
      type: b.readUInt32LE(o + 4),
      offset: Number(b.readBigUInt64LE(o + 0x18)),
      link: b.readUInt32LE(o + 0x28),
      info: b.readUInt32LE(o + 0x2c),
    };
  };
  let changed = 0;
  for (let i = 0; i < shnum; i++) {
    const s = sh(i);
    if (s.type !== SHT_GNU_VERNEED) continue;
    const strtab = sh(s.link).offset;
    const str = (at: number) => {
      let e = strtab + at;
      while (b[e] !== 0) e++;
      return b.toString('latin1', strtab + at, e);
    };
    let vn = s.offset;
    for (let n = 0; n < s.info; n++) {
      const cnt = b.readUInt16LE(vn + 2);
      let aux = vn + b.readUInt32LE(vn + 8);
      for (let k = 0; k < cnt; k++) {
        if (WEAK_VERSIONS.has(str(b.readUInt32LE(aux + 8)))) {
          b.writeUInt16LE(b.readUInt16LE(aux + 4) | VER_FLG_WEAK, aux + 4);
          changed++;
        }
        aux += b.readUInt32LE(aux + 12);
      }
      vn += b.readUInt32LE(vn + 12);
    }
  }
  writeFileSync(file, b);
  return changed;
}

function main(): void {
  if (process.platform !== 'linux' || process.arch !== 'x64') return;
  let pkg: string;
  try {
    pkg = dirname(require.resolve('@jazzer.js/fuzzer/package.json'));
  } catch {
    return; // not installed (npm ci --omit=dev)
  }
  const addon = join(pkg, 'prebuilds', 'fuzzer-linux-x64.node');
  const why = loads(addon);
  if (why === null) return;
  console.error(`[fuzz] ${addon}: ${why}; patching it for this system's glibc/libstdc++`);
  const orig = `${addon}.orig`;
  if (!existsSync(orig)) copyFileSync(addon, orig);
  copyFileSync(orig, addon);
  const dir = dirname(addon);
  writeFileSync(join(dir, 'jazzer-compat.cc'), SHIM);
  execFileSync('g++', [
    '-O2',
    '-shared',
    '-fPIC',
    '-o',
    join(dir, 'libjazzer-compat.so'),
    join(dir, 'jazzer-compat.cc'),
  ]);
  // One change per patchelf call: 0.14 mixes up its string table when given several.
  for (const s of SYMBOLS) execFileSync('patchelf', ['--clear-symbol-version', s, addon]);
  execFileSync('patchelf', ['--add-needed', 'libjazzer-compat.so', addon]);
  execFileSync('patchelf', ['--set-rpath', '$ORIGIN', addon]);
  weakenVersions(addon);
  const still = loads(addon);
  if (still !== null) throw new Error(`${addon} still does not load: ${still}`);
  console.error('[fuzz] the Jazzer.js fuzzer addon loads now');
}

try {
  main();
} catch (e) {
  console.error(
    `[fuzz] WARNING: could not make the Jazzer.js fuzzer addon load (npm run fuzz will not work): ${(e as Error).message}`,
  );
}
