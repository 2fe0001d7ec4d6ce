#!/usr/bin/env bash
# Ray executor benchmarks, all on one private local cluster started here:
#  1. dispatch overhead per no-op stage: stagekit (-j 1, stages in a row) next to
#     a plain Python @ray.remote no-op and the seed's Python run_stage pattern;
#  2. throughput: 1,000 no-op stages through `stagekit run --executor ray`;
#  3. speedup of a CPU-bound 32-stage fan-out against the in-process executor with one job;
#  4. dispatch with many stages in flight: 1,000 no-op stages -j 64, next to
#     1,000 Python tasks submitted at once;
#  5. 10,000 no-op stages -j 1000 and -j 2: the driver's peak threads and RSS;
#  6. the data plane: 8 x 128 MiB fan-in and a chain of 4 x 512 MiB, -e ray
#     --outputs final next to -e inprocess and plain Python Ray passing refs.
# Usage: bash bench/ray_bench.sh [BUILD_DIR]   (default build/bench, Release)
#        SECTIONS="4 6" bash bench/ray_bench.sh   runs only those sections
# It configures and builds what it runs (the CLI, the runner, the Ray bridge,
# the test and example stage libraries) in BUILD_DIR, from a fresh clone too;
# Ray comes from .venv (bash scripts/ray.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/bench}
stagekit=$build/bin/stagekit
bin=.venv/bin
[[ -x $bin/ray ]] || { echo "ray_bench.sh: no Ray in $bin; run bash scripts/ray.sh first" >&2; exit 1; }
echo "== configure and build ($build, Release)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSTAGEKIT_BUILD_TESTS=ON -DSTAGEKIT_BUILD_EXAMPLES=ON \
  -DSTAGEKIT_RAY=ON >/dev/null
cmake --build "$build" -j "${JOBS:-2}" --target stagekit_cli stagekit_stage_runner stagekit_ray \
  stagekit_test_stages stagekit_examples >/dev/null
for f in "$stagekit" "$build/tests/stages/libstagekit_test_stages.so" "$build/lib/libstagekit_ray.so"; do
  [[ -e $f ]] || { echo "ray_bench.sh: missing $f after the build" >&2; exit 1; }
done
# Outputs on tmpfs: on ext4, creating files right after many deletions costs
# milliseconds (the inode allocator scans recently deleted inodes), which would
# swamp the per-stage numbers; see bench/run.sh. The workers scratch there too
# (TMPDIR of the cluster).
shm=$( [[ -d /dev/shm && -w /dev/shm ]] && echo /dev/shm || echo /tmp)
work=$(mktemp -d "$shm/skbench-XXXXXX")
head_sid=""
cleanup() {
  if [[ -n $head_sid ]]; then
    # Stop exactly our head: every process of its session.
    for sig in TERM KILL; do
      pids=$(ps -eo pid=,sid= | awk -v s="$head_sid" '$2==s {print $1}')
      [[ -n $pids ]] && kill -$sig $pids 2>/dev/null || true
      sleep 2
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port() { "$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_BACKEND_LOG_LEVEL=error
TMPDIR=$work setsid "$bin/ray" start --head --temp-dir="$work/ray" --port="$(port)" --num-cpus=2 --include-dashboard=false \
  --disable-usage-stats --min-worker-port=0 --max-worker-port=0 --node-manager-port="$(port)" \
  --object-manager-port="$(port)" --metrics-export-port="$(port)" --dashboard-agent-listen-port="$(port)" \
  --dashboard-agent-grpc-port="$(port)" --runtime-env-agent-port="$(port)" --ray-client-server-port="$(port)" \
  >"$work/head.log" 2>&1 &
head_sid=$!
wait $head_sid || { cat "$work/head.log"; exit 1; }
address=$(cat "$work/ray/ray_current_cluster")
echo "cluster: $address (2 CPUs)"

sections=" ${SECTIONS:-1 2 3 4 5 6} "
want() { [[ $sections == *" $1 "* ]]; }
noop_pipeline() {  # N FILE
  { echo "libraries: [$PWD/$build/tests/stages/libstagekit_test_stages.so]"; echo "stages:"
    for ((i = 0; i < $1; i++)); do echo "  - {name: n$i, stage: test.noop}"; done; } >"$2"
}
wall() { "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)["wall_s"])'; }

if want 1; then
echo "== 1. dispatch overhead per no-op stage (sequential)"
# The slope between 100 and 300 stages in a row (-j 1): what one more stage
# costs, without the one-off start of the job's C++ workers (the Python
# baselines warm their worker up before timing, too).
noop_pipeline 100 "$work/noop100.yaml"
noop_pipeline 300 "$work/noop300.yaml"
median_wall() {  # PIPELINE
  for r in 1 2 3 4 5; do
    $stagekit run "$1" -e ray --address "$address" -j 1 --json --out "$work/o$r" | wall
  done | sort -g | sed -n 3p
}
t100=$(median_wall "$work/noop100.yaml")
t300=$(median_wall "$work/noop300.yaml")
awk -v a="$t100" -v b="$t300" 'BEGIN {printf "stagekit ray executor: %.3f ms/stage (100 stages %.3f s, 300 stages %.3f s, medians of 5)\n", (b-a)/200*1000, a, b}'
"$bin/python" bench/ray_baselines.py "$address" 200 5 |
  "$bin/python" -c 'import json,sys; d=json.load(sys.stdin); print("plain Python @ray.remote: %.3f ms/call\nseed run_stage pattern:   %.3f ms/call" % (d["plain_python_task_s"]*1000, d["seed_run_stage_s"]*1000))'

fi
if want 2; then
echo "== 2. throughput: 1,000 no-op stages"
noop_pipeline 1000 "$work/noop1000.yaml"
for r in 1 2 3; do
  $stagekit run "$work/noop1000.yaml" -e ray --address "$address" --json --out "$work/t$r" | wall
done | sort -g | sed -n 2p | awk '{printf "1000 stages in %.2f s: %.0f stages/s (median of 3)\n", $1, 1000/$1}'

# 40M samples take about 0.2 s, 200M about 1 s on these machines.
fi
if want 3; then
for samples in 40000000 200000000; do
echo "== 3. CPU-bound fan-out, 32 stages of $samples samples: in-process -j 1 vs ray"
{ echo "libraries: [$PWD/$build/lib/stagekit/stages/libstagekit_examples.so]"; echo "job: {seed: 1}"; echo "stages:"
  for ((i = 0; i < 32; i++)); do echo "  - {name: s$i, stage: montecarlo.sample, kwargs: {samples: $samples}}"; done; } >"$work/fan.yaml"
inproc=$(for r in 1 2 3; do $stagekit run "$work/fan.yaml" -j 1 --json --out "$work/f-in$r" | wall; done | sort -g | sed -n 2p)
ray=$(for r in 1 2 3; do $stagekit run "$work/fan.yaml" -e ray --address "$address" --json --out "$work/f-ray$r" | wall; done | sort -g | sed -n 2p)
cmp -s "$work/f-in1/s0.out" "$work/f-ray1/s0.out" && echo "outputs identical"
awk -v a="$inproc" -v b="$ray" 'BEGIN {printf "in-process -j 1: %.2f s, ray: %.2f s, speedup %.2fx (medians of 3)\n", a, b, a/b}'
done

fi
if want 4; then
echo "== 4. dispatch with many in flight: 1,000 no-op stages -j 64"
noop_pipeline 1000 "$work/noop1000.yaml"
for r in 1 2 3; do
  $stagekit run "$work/noop1000.yaml" -e ray --address "$address" -j 64 --json --out "$work/j$r" | wall
done | sort -g | sed -n 2p | awk '{printf "stagekit -j 64: %.3f ms/stage (1000 in %.2f s, median of 3)\n", $1, $1}'
"$bin/python" bench/ray_dataplane.py "$address" batch 1000 3 |
  "$bin/python" -c 'import json,sys; print("plain Python, 1000 tasks submitted at once: %.3f ms/task" % (json.load(sys.stdin)["per_task_s"]*1000))'

fi
if want 5; then
echo "== 5. 10,000 no-op stages: driver threads and peak RSS"
noop_pipeline 10000 "$work/noop10000.yaml"
for j in 1000 2; do
  /usr/bin/time -f "%M" -o "$work/rss" $stagekit run "$work/noop10000.yaml" -e ray --address "$address" -j $j --json --out "$work/k$j" >"$work/k$j.json" &
  sleep 1
  pid=$(pgrep -n -f "noop10000.yaml -e ray --address $address -j $j" || true)
  peak=0
  while kill -0 "$pid" 2>/dev/null; do
    t=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    (( t > peak )) && peak=$t
    sleep 0.2
  done
  wait
  awk -v j=$j -v p=$peak -v rss="$(cat "$work/rss")" -v w="$("$bin/python" -c 'import json; print(json.load(open("'"$work/k$j.json"'"))["wall_s"])')" \
    'BEGIN {printf "-j %-5s %.1f s, peak driver threads %d, peak RSS %.0f MiB\n", j, w, p, rss/1024}'
done

fi
if want 6; then
echo "== 6. the data plane: -e ray --outputs final vs -e inprocess vs plain Python Ray"
{ echo "libraries: [$PWD/$build/tests/stages/libstagekit_test_stages.so]"; echo "stages:"
  for ((i = 0; i < 8; i++)); do echo "  - {name: g$i, stage: test.fill, kwargs: {bytes: 134217728, seed: $i}}"; done
  echo "  - name: reduce"; echo "    stage: test.sizes"; echo "    inputs:"
  for ((i = 0; i < 8; i++)); do echo "      i$i: {from: g$i}"; done; } >"$work/fanin.yaml"
{ echo "libraries: [$PWD/$build/tests/stages/libstagekit_test_stages.so]"; echo "stages:"
  echo "  - {name: c0, stage: test.fill, kwargs: {bytes: 536870912, seed: 1}}"
  for i in 1 2 3; do echo "  - {name: c$i, stage: test.copy, inputs: {in: {from: c$((i-1))}}}"; done; } >"$work/chain.yaml"
for shape in fanin chain; do
  inproc=$(for r in 1 2 3; do $stagekit run "$work/$shape.yaml" -j 2 --json --out "$work/$shape-in" | wall; rm -rf "$work/$shape-in"; done | sort -g | sed -n 2p)
  ray=$(for r in 1 2 3; do $stagekit run "$work/$shape.yaml" -e ray --address "$address" -j 2 --outputs final --json --out "$work/$shape-ray" | wall; rm -rf "$work/$shape-ray"; done | sort -g | sed -n 2p)
  if [[ $shape == fanin ]]; then args="fanin 8 128 3"; else args="chain 4 512 3"; fi
  py=$("$bin/python" bench/ray_dataplane.py "$address" $args | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)["wall_s"])')
  awk -v s=$shape -v a="$inproc" -v b="$ray" -v c="$py" \
    'BEGIN {printf "%-6s inprocess -j 2 %.2f s, ray --outputs final %.2f s (%.2fx), plain Python Ray %.2f s (medians of 3)\n", s, a, b, b/a, c}'
done
fi
