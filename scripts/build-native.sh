#!/usr/bin/env bash
# Build the native addon (native/build/Release/vpm_native.node) with node-gyp
# against the installed Node's headers. Says clearly what is missing.
set -euo pipefail
cd "$(dirname "$0")/../native"

fail() { printf 'build-native: %s\n' "$*" >&2; exit 1; }
command -v cc >/dev/null || command -v gcc >/dev/null || fail "no C compiler found: install build-essential (apt-get install build-essential)"
command -v make >/dev/null || fail "make not found: install build-essential"
command -v python3 >/dev/null || fail "python3 not found (node-gyp needs it): apt-get install python3"
nodedir=$(npm config get nodedir 2>/dev/null || true)
hdr=""
for d in "$nodedir/include/node" "/usr/include/node" "/usr/local/include/node" "$HOME/.cache/node-gyp/$(node -p process.versions.node)/include/node"; do
  [ -f "$d/node_api.h" ] && hdr="$d" && break
done
[ -n "$hdr" ] || fail "Node's headers (node_api.h) not found; install the headers matching $(node --version) or set npm's nodedir"

gyp=$(command -v node-gyp || true)
if [ -z "$gyp" ]; then
  npmdir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  for c in "$npmdir/node_modules/node-gyp/bin/node-gyp.js" "$npmdir/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js" /usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js; do
    [ -f "$c" ] && gyp="node $c" && break
  done
fi
[ -n "$gyp" ] || fail "node-gyp not found (it ships with npm)"

# Rebuild only when a source is newer than the addon (src/preload is not part of it).
out=build/Release/vpm_native.node
if [ ! -f "$out" ] || [ -n "$(find binding.gyp src -path src/preload -prune -o -newer "$out" -print -quit)" ]; then
  $gyp rebuild --nodedir="${hdr%/include/node}" --loglevel=error >/tmp/vpm-native-build.log 2>&1 || { cat /tmp/vpm-native-build.log >&2; fail "compilation failed (log above)"; }
  [ -f "$out" ] || fail "node-gyp finished but $out is missing"
fi

# The interception library for `vpm exec` (LD_PRELOAD; native/src/preload/).
# After the addon: `node-gyp rebuild` empties build/. Rebuilt when missing or
# when a source is newer.
lib=build/libvpm_preload.so
if [ ! -f "$lib" ] || [ -n "$(find src/preload -newer "$lib" -print -quit)" ]; then
  command -v gcc >/dev/null || fail "gcc not found (needed for $lib): install build-essential (apt-get install build-essential)"
  mkdir -p build
  gcc -O2 -fPIC -shared -Wall -Wextra -o "$lib.tmp" src/preload/*.c -ldl -lpthread || { rm -f "$lib.tmp"; fail "compiling the interception library failed (errors above)"; }
  mv -f "$lib.tmp" "$lib"
fi
# Programs of other users load it (vpm exec as nobody, a server that drops to its
# own user): readable and reachable whatever the umask was (docs/security.md).
chmod 0755 . build
chmod 0755 "$lib"
