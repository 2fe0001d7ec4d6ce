#!/usr/bin/env bash
# bench/ship_bench.sh: `stagekit ship` against Ray's own Python packaging of the
# same tree (about 1 GB, mostly .venv/build/.git/node_modules that must not
# ship; bench/make_ship_tree.py writes it). Checks first that both give the
# same package name, then times, in one run:
#   ray      get_uri_for_directory + create_package (Ray imported beforehand,
#            not timed; RUNS runs in one process)
#   stagekit `stagekit ship TREE` (whole process, hyperfine): the default
#            (stored, as Ray's zip is), --level 1 and --level 6 (deflate)
# and prints the medians and the ratios.
#
# Environment: BUILD_DIR (default build/bench), TREE (default
# /tmp/stagekit-ship-tree, written once and reused), SCALE (default 1.0),
# RUNS (default 5), JOBS (build parallelism, default 2).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build/bench}
TREE=${TREE:-/tmp/stagekit-ship-tree}
SCALE=${SCALE:-1.0}
RUNS=${RUNS:-5}
PY=$ROOT/.venv/bin/python
WORK=$(mktemp -d /tmp/stagekit-shipbench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DSTAGEKIT_BUILD_BENCH=ON >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" --target stagekit_cli >/dev/null
SK=$BUILD_DIR/bin/stagekit

if [[ ! -f $TREE/pipeline.yaml ]]; then
  echo "== writing the tree $TREE (scale $SCALE)"
  "$PY" "$ROOT/bench/make_ship_tree.py" "$TREE" "$SCALE"
fi
echo "== tree: $(du -sh "$TREE" | cut -f1) in $(find "$TREE" -type f | wc -l) files"

# The exclude patterns stagekit uses by default, handed to Ray as its excludes.
mapfile -t EXCLUDES < <("$SK" ship "$TREE" -o "$WORK/probe" --json | jq -r '.excludes[]')
ours=$("$SK" ship "$TREE" -o "$WORK/probe" --json | jq -r .package)
ray_json=$("$PY" "$ROOT/bench/ray_package.py" "$TREE" "$WORK/ray" "$RUNS" "${EXCLUDES[@]}")
theirs=$(jq -r .package <<<"$ray_json")
echo "== package: stagekit $ours, Ray $theirs"
if [[ $ours != "$theirs" ]]; then
  echo "ship_bench: the package names differ" >&2
  exit 1
fi

hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/hf.json" \
  --prepare "rm -rf $WORK/sk0 $WORK/sk1 $WORK/sk6" \
  -n "stagekit ship" "$SK ship $TREE -o $WORK/sk0" \
  -n "stagekit ship --level 1" "$SK ship $TREE -o $WORK/sk1 --level 1" \
  -n "stagekit ship --level 6" "$SK ship $TREE -o $WORK/sk6 --level 6" >/dev/null
for l in 0 1 6; do "$SK" ship "$TREE" -o "$WORK/sk$l" --level $l >/dev/null 2>&1; done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ray_med=$(jq -r '.seconds[]' <<<"$ray_json" | median)
ray_zip=$(jq -r .zip_bytes <<<"$ray_json")
printf '== medians over %d runs (Ray in one process, imported beforehand; stagekit as whole processes)\n' "$RUNS"
printf '  %-26s %8.3f s              zip %s bytes\n' "Ray (Python, stored)" "$ray_med" "$ray_zip"
i=0
for l in 0 1 6; do
  t=$(jq -r ".results[$i].times[]" "$WORK/hf.json" | median)
  label="stagekit ship"; [[ $l != 0 ]] && label="stagekit ship --level $l"
  printf '  %-26s %8.3f s  %5.2fx    zip %s bytes\n' "$label" "$t" "$(echo "$ray_med / $t" | bc -l)" \
    "$(stat -c %s "$WORK/sk$l/$ours")"
  i=$((i + 1))
done
