#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (run as root): Debian packages,
# npm packages, the TypeScript build and the native addon. Safe to run again:
# each step checks whether it is needed first.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

# linux-perf: `npm run bench:wakeup` (perf trace, perf record). bind9-dnsutils (dig) and
# dnsmasq-base (the dnsmasq program, no system service): the UDP integration tests.
# patchelf: makes Jazzer.js's prebuilt fuzzer load on this glibc (`npm run fuzz`, scripts/fuzz/compat.ts).
# systemd: `systemd-analyze verify` of scripts/systemd/vpm.service (test/integration/systemd-unit.test.ts;
# it needs no systemd as PID 1). util-linux: setpriv, which that test runs the daemon under.
DEB_PKGS=(build-essential python3 libpcap-dev iproute2 iputils-ping tcpdump tshark iperf3 curl nftables ethtool procps util-linux linux-perf bind9-dnsutils dnsmasq-base patchelf systemd)

missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${missing[*]} (run as root to install them)"; exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages: only when the lock file changed since the last install.
stamp=node_modules/.vpm-install-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  say "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

say "building the native addon"
npm run --silent build:native
say "compiling TypeScript"
npm run --silent build
# vpm exec runs as the users the config allows: the CLI and its packages must be
# readable by them whatever the umask was (docs/security.md).
chmod -R a+rX dist node_modules native/build
# Jazzer.js's fuzzer addon is prebuilt for glibc 2.38: patched once per install if it does not load.
node dist/scripts/fuzz/compat.js
