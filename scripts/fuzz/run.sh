#!/usr/bin/env bash
# npm run fuzz -- [TIME] [TARGET...]: the coverage-guided fuzz targets (Jazzer.js,
# libFuzzer), one after the other, each for TIME seconds (default 60); TARGET is
# any of parse, pipeline, control, coop (default: all four). Each target starts
# from its seed corpus, test/fuzz/corpus/<target>/ (read only), and keeps what
# it finds in tmp/fuzz/corpus/<target>/ (kept between runs, not committed);
# a crash is written to tmp/fuzz/<target>-crash-*. Logs: tmp/fuzz/<target>.log.
# Exits non-zero if any target found a crash.
set -uo pipefail
cd "$(dirname "$0")/../.."

time=${1:-60}
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(parse pipeline control coop)
case $time in '' | *[!0-9]*) echo "fuzz: TIME must be whole seconds, got '$time'" >&2; exit 2 ;; esac

mkdir -p tmp/fuzz
failed=0
for t in "${targets[@]}"; do
  js=dist/scripts/fuzz/targets/$t.js
  [ -f "$js" ] || { echo "fuzz: no target '$t' ($js)" >&2; exit 2; }
  mkdir -p "tmp/fuzz/corpus/$t"
  echo "== fuzz $t: ${time}s"
  # --sync: the targets are synchronous. Instrumented: vpm's own code (src/, and
  # the target in scripts/fuzz/), not node_modules.
  npx jazzer "$js" --sync -i src -i scripts/fuzz -e node_modules \
    "tmp/fuzz/corpus/$t" "test/fuzz/corpus/$t" -- \
    -max_total_time="$time" -artifact_prefix="tmp/fuzz/$t-" -print_final_stats=1 \
    >"tmp/fuzz/$t.log" 2>&1
  rc=$?
  grep -E '^#[0-9]+ +DONE|^Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss|cov: ' "tmp/fuzz/$t.log" | grep -E 'DONE|Done|stat::' | sed 's/^/   /'
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    echo "!! fuzz $t: exit $rc, see tmp/fuzz/$t.log and tmp/fuzz/$t-crash-*"
    grep -m 20 -E 'Error|==[0-9]+==|crash-' "tmp/fuzz/$t.log" | sed 's/^/   /'
  fi
done
[ "$failed" -eq 0 ]
