#!/usr/bin/env bash
# The test command (after scripts/setup.sh): type check, lint, the layer check,
# then every vitest test. Ends with one plain line "N passed, N failed" counted
# from this run: the static checks count as one test each, the rest come from vitest's
# JSON report. Exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
check() {
  local name=$1; shift
  echo "== $name: $*"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "!! $name failed"; fi
}

check typecheck npx tsc -p tsconfig.json --noEmit
check lint npx biome check .
# The layers of src/ (docs/architecture.md): every import, type-only and dynamic too.
check layers npx depcruise src scripts test --config .dependency-cruiser.cjs

report=$(mktemp -d)/vitest.json
trap 'rm -rf "$(dirname "$report")"' EXIT
echo "== vitest"
npx vitest run --reporter=default --reporter=json --outputFile="$report" "$@"
vitest_rc=$?

if [ -s "$report" ]; then
  read -r vp vf vs < <(node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    // A test file that fails to load has no tests in it: count it as one failure.
    const broken = r.testResults.filter((f) => f.status === "failed" && f.assertionResults.length === 0).length;
    console.log(r.numPassedTests, r.numFailedTests + broken, r.numPendingTests + r.numTodoTests);
  ' "$report")
  passed=$((passed + vp))
  failed=$((failed + vf))
  if [ "$vitest_rc" -ne 0 ] && [ "$vf" -eq 0 ]; then failed=$((failed + 1)); fi
else
  echo "!! vitest wrote no report (exit $vitest_rc)"
  failed=$((failed + 1))
  vs=0
fi

# Nothing is skipped today; should a test ever be, it is said, never hidden.
[ "${vs:-0}" -gt 0 ] && echo "$vs skipped"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
