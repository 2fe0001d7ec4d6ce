#!/usr/bin/env bash
# Quick start, part two: install what is missing (Debian packages, the pinned
# Ray in .venv), then build and run every test: the CI build (warnings are
# errors) with unit, integration, package and real-Ray tests (local clusters
# the tests start and stop themselves), the unit and integration tests under
# ASan+UBSan, the unit tests under TSan, and each fuzz target for a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/ray.sh   # the pinned Ray in .venv: the ci build and its Ray tests need it
# The same Ray at another path: the "stock node" of the portable-package tests,
# where .venv is hidden and stagekit must find this one.
STAGEKIT_VENV=.venv-node STAGEKIT_RAY_ONLY=1 bash scripts/ray.sh
jobs=$(nproc)
# Runs under test leave cost records: keep them out of the user's own log.
export STAGEKIT_COST_LOG=${STAGEKIT_COST_LOG:-$PWD/build/test-cost.jsonl}
# ... and what they store out of the user's stage cache.
export STAGEKIT_CACHE_DIR=${STAGEKIT_CACHE_DIR:-$PWD/build/test-cache}
bash scripts/lint.sh

for preset in ci asan tsan; do
  echo "== configure and build: $preset"
  cmake --preset "$preset" >/dev/null
  if [[ $preset == tsan ]]; then
    cmake --build --preset "$preset" -j "$jobs" --target stagekit_unit_tests stagekit_cli stagekit_test_stages stagekit_dup_stages \
      stagekit_whole_archive_stages stagekit_plain_link_stages stagekit_ship_tests stagekit_cluster_tests \
      stagekit_watchdog_tests stagekit_report_tests
  else
    cmake --build --preset "$preset" -j "$jobs"
  fi
done
for preset in asan tsan ci; do
  echo "== ctest: $preset"
  ctest --preset "$preset" -j "$jobs"
done
# The libFuzzer targets, a few seconds each from their seed corpora (a
# regression check; long campaigns: bash scripts/fuzz.sh 600).
bash scripts/fuzz.sh "${STAGEKIT_FUZZ_SECONDS:-5}"
