#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan+UBSan) and runs each
# for SECONDS (default 10) from its seed corpus in tests/fuzz/corpus. New
# inputs go to a scratch corpus, never into the repository; a crash, leak,
# sanitizer report or timeout fails the script and leaves the input that
# caused it in build/fuzz/findings/ (turn it into a regression test).
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
#   CI runs each target for a few seconds; run each for 10 minutes or more
#   before a release: bash scripts/fuzz.sh 600
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(stage_request pipeline frame ignore cluster_spec cost_log)
command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing: apt-get install clang" >&2; exit 2; }
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$(nproc)"
findings=build/fuzz/findings
mkdir -p "$findings"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  echo "== fuzz: $t for ${seconds}s"
  # -timeout: one input taking 10 s is a finding; -rss_limit_mb: so is 2 GiB.
  if ! build/fuzz/bin/${t}_fuzz -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$findings/$t-" "$work/$t" "tests/fuzz/corpus/$t" \
      >"$work/$t.log" 2>&1; then
    tail -n 40 "$work/$t.log" >&2
    echo "fuzz: FAIL $t: the input is in $findings" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$work/$t.log" | tr '\n' ' '
  echo
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no findings"
