#!/usr/bin/env bash
# bench/cache_bench.sh: a fully cached re-run of a 1,000-stage pipeline
# (bench/make_cache_pipeline.py: 20 inputs, 50 wordcount stages each, fan-in
# and chains of 24). Runs it once to fill a fresh cache, checks that
# `run --resume` restores every stage, then times with hyperfine, as whole
# processes (loading the pipeline and the stage library included):
#   resume, outputs in place   `run --resume` over the outputs of the last run
#                              (each output is hashed and left alone)
#   resume, empty output dir   `run --resume -o NEW`: every output is copied
#                              from the cache and verified on the way
#   cp -r of the outputs       the floor for the line above: the same files
#                              created by cp (file creation dominates on a
#                              busy disk)
#   explain                    `cache explain` of every stage
# and fails when the median of a fully cached re-run (outputs in place) is not
# under 1 second.
#
# Environment: BUILD_DIR (default build/bench, Release), INPUTS (default 20,
# 50 stages each), RUNS (default 10), JOBS (build parallelism, default 2),
# RUN_JOBS (stages at once, default: one per CPU).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build/bench}
INPUTS=${INPUTS:-20}
RUNS=${RUNS:-10}
WORK=$(mktemp -d /tmp/stagekit-cachebench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target stagekit_cli stagekit_examples >/dev/null
SK=$BUILD_DIR/bin/stagekit

python3 "$ROOT/bench/make_cache_pipeline.py" "$WORK" "$INPUTS"
cd "$WORK"
stages=$(grep -c '^  - ' pipeline.yaml)
JOBS_FLAG=()
[[ -n ${RUN_JOBS:-} ]] && JOBS_FLAG=(-j "$RUN_JOBS")
RUN=("$SK" run pipeline.yaml --cache-dir "$WORK/cache" -q "${JOBS_FLAG[@]}")

start=$(date +%s.%N)
"${RUN[@]}" -o out
first=$(echo "$(date +%s.%N) - $start" | bc)
"${RUN[@]}" -o out --resume
cached=$(jq '[.stages[] | select(.cached)] | length' out/.stagekit-run.json)
echo "== $stages stages; first run (fills the cache) ${first}s; a resume restored $cached"
if [[ $cached != "$stages" ]]; then
  echo "cache_bench: a fully cached re-run ran $((stages - cached)) stage(s)" >&2
  exit 1
fi

hyperfine --warmup 2 --runs "$RUNS" --export-json "$WORK/hf.json" \
  -n "resume, outputs in place" "${RUN[*]} -o out --resume" \
  --prepare "rm -rf $WORK/fresh $WORK/copy" \
  -n "resume, empty output dir" "${RUN[*]} -o fresh --resume" \
  -n "cp -r of the outputs" "cp -r out copy" \
  -n "explain" "$SK cache explain pipeline.yaml --cache-dir $WORK/cache" >/dev/null
# hyperfine's --prepare applies to every command: restore once more to compare.
"${RUN[@]}" -o fresh --resume
diff -r -q -x .stagekit-run.json out fresh >/dev/null ||
  { echo "cache_bench: restored outputs differ from the run's" >&2; exit 1; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '== medians over %d runs, whole processes (%s, %s CPUs)\n' "$RUNS" "$(uname -m)" "$(nproc)"
fail=0
for i in 0 1 2 3; do
  name=$(jq -r ".results[$i].command" "$WORK/hf.json")
  t=$(jq -r ".results[$i].times[]" "$WORK/hf.json" | median)
  printf '  %-26s %7.3f s\n' "$name" "$t"
  if [[ $i -eq 0 ]] && (($(echo "$t >= 1" | bc))); then fail=1; fi
done
if ((fail)); then
  echo "cache_bench: a fully cached re-run of $stages stages took 1 second or more" >&2
  exit 1
fi
