#!/usr/bin/env bash
# bench/run.sh [BENCHMARK ARGS...]
#
# Builds the dispatch benchmarks in a Release tree (build/bench, with the same
# cache settings as the `bench` preset; only the benchmark and what it runs are
# built), runs them with 5 repetitions (aggregates only) and prints the medians
# that matter:
#   in-process overhead = median(BM_InProcessDispatch) - median(BM_PlainCall)
#   subprocess ratio    = median(BM_SubprocessDispatch) / median(BM_SpawnFloor), and
#                         the same over BM_SpawnCxxFloor (a no-op C++ program)
# and then, with hyperfine, `stagekit stage bench.noop` (request on stdin)
# against /bin/true and `stagekit --version`.
#
# Environment:
#   BUILD_DIR       build tree (default: <repo>/build/bench)
#   JOBS            build parallelism (default: 2)
#   BENCH_TMPDIR    where the stages write their outputs (default: /dev/shm when
#                   writable, else /tmp). On ext4 the inode allocator's
#                   recently_deleted() scan makes file creation cost depend on
#                   how many files were deleted just before, which swamps the
#                   microsecond-level numbers; tmpfs does not.
#   REPETITIONS     default 5
#   NO_HYPERFINE=1  skip the hyperfine part
# Extra arguments go to the benchmark binary (e.g. --benchmark_filter=Spawn).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build/bench}
JOBS=${JOBS:-2}
REPETITIONS=${REPETITIONS:-5}
if [[ -z ${BENCH_TMPDIR:-} ]]; then
  if [[ -d /dev/shm && -w /dev/shm ]]; then BENCH_TMPDIR=/dev/shm; else BENCH_TMPDIR=/tmp; fi
fi

echo "== configure and build ($BUILD_DIR, Release)"
set -x
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSTAGEKIT_BUILD_BENCH=ON \
  -DSTAGEKIT_BUILD_TESTS=ON -DSTAGEKIT_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target stagekit_dispatch_bench
{ set +x; } 2>/dev/null

BENCH=$BUILD_DIR/bin/stagekit_dispatch_bench
CLI=$BUILD_DIR/bin/stagekit
LIB=$BUILD_DIR/bench/stages/libstagekit_bench_stages.so
for f in "$BENCH" "$CLI" "$LIB"; do
  [[ -e $f ]] || { echo "bench/run.sh: missing $f after the build" >&2; exit 1; }
done

fstype=$(df -T "$BENCH_TMPDIR" 2>/dev/null | awk 'NR == 2 {print $2}')
echo
echo "== dispatch benchmarks (outputs in $BENCH_TMPDIR, ${fstype:-unknown} file system; $(nproc) CPUs)"
RESULTS=$BUILD_DIR/dispatch_bench.json
set -x
TMPDIR=$BENCH_TMPDIR "$BENCH" --benchmark_repetitions="$REPETITIONS" \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$RESULTS" --benchmark_out_format=json "$@"
{ set +x; } 2>/dev/null

# Medians in microseconds per iteration (and per stage for the pipelines).
if command -v jq >/dev/null; then
  median_us() {  # median_us RUN_NAME_PREFIX [per_stage]
    jq -r --arg name "$1" --arg field "${2:-real_time}" '
      [.benchmarks[] | select(.aggregate_name == "median" and (.run_name | startswith($name)))][0]
      | if . == null then "nan"
        elif $field == "per_stage" then (.per_stage * 1e6)
        else .real_time * ({"ns": 0.001, "us": 1, "ms": 1000, "s": 1e6}[.time_unit]) end' "$RESULTS"
  }
  plain=$(median_us BM_PlainCall)
  inproc=$(median_us BM_InProcessDispatch)
  spawn=$(median_us BM_SpawnFloor)
  cxx=$(median_us BM_SpawnCxxFloor)
  runner=$(median_us BM_SpawnRunner)
  sub=$(median_us BM_SubprocessDispatch)
  pipe1=$(median_us BM_PipelineThroughput/stages:1000/jobs:1 per_stage)
  pipe2=$(median_us BM_PipelineThroughput/stages:1000/jobs:2 per_stage)
  echo
  echo "== medians of $REPETITIONS repetitions (wall time)"
  awk -v plain="$plain" -v inproc="$inproc" -v spawn="$spawn" -v cxx="$cxx" -v runner="$runner" -v subp="$sub" \
      -v pipe1="$pipe1" -v pipe2="$pipe2" 'BEGIN {
    printf "  BM_PlainCall                      %10.2f us\n", plain
    printf "  BM_InProcessDispatch              %10.2f us   overhead over the plain call: %.2f us (x%.2f)\n", inproc, inproc - plain, inproc / plain
    printf "  BM_SpawnFloor (/bin/true)         %10.1f us\n", spawn
    printf "  BM_SpawnCxxFloor (no-op C++)      %10.1f us   x%.2f the spawn floor\n", cxx, cxx / spawn
    printf "  BM_SpawnRunner (stagekit --version)%9.1f us   x%.2f the spawn floor\n", runner, runner / spawn
    printf "  BM_SubprocessDispatch             %10.1f us   x%.2f the spawn floor, +%.1f us over it; x%.2f the C++ floor\n", subp, subp / spawn, subp - spawn, subp / cxx
    printf "  BM_PipelineThroughput 1000 jobs=1 %10.2f us/stage (%.0f stages/s)\n", pipe1, 1e6 / pipe1
    printf "  BM_PipelineThroughput 1000 jobs=2 %10.2f us/stage (%.0f stages/s)\n", pipe2, 1e6 / pipe2
  }'
  echo "  (raw results: $RESULTS)"
else
  echo "(jq not found: read the medians from the table above or $RESULTS)"
fi

# ---- hyperfine: the runner as a command -------------------------------------
if [[ ${NO_HYPERFINE:-0} == 1 ]]; then exit 0; fi
if ! command -v hyperfine >/dev/null; then
  echo "(hyperfine not found: skipped the command-level comparison)"
  exit 0
fi
HF_DIR=$(mktemp -d "$BENCH_TMPDIR/stagekit-hyperfine.XXXXXX")
trap 'rm -rf "$HF_DIR"' EXIT
# The request `stagekit stage` reads on stdin, as SubprocessExecutor sends it.
printf '{"executor":"subprocess","instance":"bench.noop","job":{"name":"bench","params":{},"seed":1},"kwargs":{},"output":"%s/noop.out","stage":"bench.noop"}\n' \
  "$HF_DIR" >"$HF_DIR/request.json"
STAGE_CMD="$CLI stage bench.noop --stages $LIB < $HF_DIR/request.json > /dev/null"
# Fail here, not inside hyperfine, when the wrapper does not work.
sh -c "$STAGE_CMD" && [[ -f $HF_DIR/noop.out ]] ||
  { echo "bench/run.sh: '$STAGE_CMD' failed" >&2; exit 1; }
echo
echo "== hyperfine (commands through sh; hyperfine subtracts the shell's own start-up)"
set -x
hyperfine --warmup 20 --min-runs 300 --export-json "$BUILD_DIR/hyperfine.json" \
  --export-markdown "$BUILD_DIR/hyperfine.md" \
  -n /bin/true /bin/true \
  -n 'stagekit --version' "$CLI --version > /dev/null" \
  -n 'stagekit stage bench.noop' "$STAGE_CMD"
