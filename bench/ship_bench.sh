#!/usr/bin/env bash
# bench/ship_bench.sh: `stagekit ship` against Ray's own Python packaging of the
# same tree (about 1 GB, mostly .venv/build/.git/node_modules that must not
# ship; bench/make_ship_tree.py writes it). Checks first that both give the
# same package name, then times, in one run:
#   ray      get_uri_for_directory + create_package (Ray imported beforehand,
#            not timed; RUNS runs in one process)
#   stagekit `stagekit ship TREE` (whole process, hyperfine), at its default
#            deflate level 1 and at level 6 (zlib's default, which Ray uses)
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
  --prepare "rm -rf $WORK/sk" \
  -n "stagekit ship (level 1)" "$SK ship $TREE -o $WORK/sk" \
  -n "stagekit ship --level 6" "$SK ship $TREE -o $WORK/sk --level 6" >/dev/null

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ray_med=$(jq -r '.seconds[]' <<<"$ray_json" | median)
sk1=$(jq -r '.results[0].times[]' "$WORK/hf.json" | median)
sk6=$(jq -r '.results[1].times[]' "$WORK/hf.json" | median)
ray_zip=$(jq -r .zip_bytes <<<"$ray_json")
sk_zip=$(stat -c %s "$WORK/sk/$ours")
printf '== medians over %d runs\n' "$RUNS"
printf '  Ray (Python)             %8.3f s   zip %s bytes\n' "$ray_med" "$ray_zip"
printf '  stagekit ship --level 6  %8.3f s   %.1fx faster\n' "$sk6" "$(echo "$ray_med / $sk6" | bc -l)"
printf '  stagekit ship (level 1)  %8.3f s   %.1fx faster   zip %s bytes\n' "$sk1" \
  "$(echo "$ray_med / $sk1" | bc -l)" "$sk_zip"
