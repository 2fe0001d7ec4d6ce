#!/usr/bin/env bash
# bench/fanout_bench.sh [N_STATIC] [N_DYNAMIC]
#
# The fan-out scale targets, side by side in one run (hyperfine medians):
#   1. load, expand and validate a pipeline of N_STATIC (default 100,000) no-op
#      stages plus a collect (`run --dry-run`), written as a 100 x N/100 matrix
#      `foreach`, against the same stages written out by hand;
#   2. run it in-process with -j 8 and no cache; the scheduler's overhead per
#      stage is (run - load) / N;
#   3. dynamic fan-out: a stage writes N_DYNAMIC (default 10,000) items, one
#      no-op instance each, then a collect; against the same instances from a
#      static list. The difference is what expanding at run time costs.
# Uses the ci build (build/ci: RelWithDebInfo) and the test stages (test.noop,
# test.copy). Peak memory (GNU time's max RSS) is printed for each run.
# bench/scheduler_bench.cc (bench preset) measures the scheduler alone.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100000}
D=${2:-10000}
BIN=${STAGEKIT:-$ROOT/build/ci/bin/stagekit}
LIB=${STAGES:-$ROOT/build/ci/tests/stages/libstagekit_test_stages.so}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
rows=100
cols=$((N / rows))

python3 - "$rows" "$cols" "$D" "$LIB" <<'PY'
import json, sys
rows, cols, d, lib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
head = f"libraries: [{lib}]\nstages:\n"
with open("matrix.yaml", "w") as f:
    f.write(head)
    f.write(f"  - name: m\n    stage: test.noop\n    foreach: {{matrix: {{a: {list(range(rows))}, b: {list(range(cols))}}}}}\n")
    f.write('  - {name: all, stage: test.noop, inputs: {p: {from: "m[*]"}}}\n')
with open("by_hand.yaml", "w") as f:
    f.write(head)
    for a in range(rows):
        for b in range(cols):
            f.write(f"  - {{name: m_{a}_{b}, stage: test.noop, output: 'm/a={a},b={b}.out'}}\n")
    f.write("  - name: all\n    stage: test.noop\n    inputs:\n")
    for a in range(rows):
        for b in range(cols):
            f.write(f"      'p[a={a},b={b}]': {{from: m_{a}_{b}}}\n")
with open("items.jsonl", "w") as f:
    for i in range(d):
        f.write(json.dumps({"key": f"{i:06d}", "i": i}) + "\n")
with open("dynamic.yaml", "w") as f:
    f.write(head)
    f.write("  - {name: split, stage: test.copy, inputs: {in: items.jsonl}}\n")
    f.write('  - {name: m, stage: test.noop, foreach: {from: split}, kwargs: {i: "{i}"}}\n')
    f.write('  - {name: all, stage: test.noop, inputs: {p: {from: "m[*]"}}}\n')
with open("static_list.yaml", "w") as f:
    f.write(head)
    f.write("  - {name: split, stage: test.copy, inputs: {in: items.jsonl}}\n")
    f.write("  - name: m\n    stage: test.noop\n    foreach:\n      list:\n")
    for i in range(d):
        f.write(f"        - {{key: '{i:06d}', i: {i}}}\n")
    f.write('    kwargs: {i: "{i}"}\n')
    f.write('  - {name: all, stage: test.noop, inputs: {p: {from: "m[*]"}}}\n')
PY

echo "== peak memory (max RSS, KiB)"
for p in matrix by_hand; do
  /usr/bin/time -f "$p --dry-run: %e s, %M KiB" "$BIN" run "$p.yaml" --dry-run >/dev/null
  /usr/bin/time -f "$p run -j 8: %e s, %M KiB" "$BIN" run "$p.yaml" -q --no-cache -j 8 -o "out-$p" >/dev/null
  rm -rf "out-$p"
done

echo "== 1. load + expand + validate ($N stages + a collect)"
hyperfine -w 1 -r 3 -N "$BIN run matrix.yaml --dry-run" "$BIN run by_hand.yaml --dry-run"
echo "== 2. run in-process, -j 8, no cache"
hyperfine -r 2 -p 'rm -rf out' "$BIN run matrix.yaml -q --no-cache -j 8 -o out" \
  "$BIN run by_hand.yaml -q --no-cache -j 8 -o out"
echo "== 3. dynamic fan-out to $D items, against a static list of the same"
hyperfine -r 5 -p 'rm -rf out' "$BIN run dynamic.yaml -q --no-cache -j 8 -o out" \
  "$BIN run static_list.yaml -q --no-cache -j 8 -o out"
# 4. Optional: Snakemake's dry run of the same 10,000-job fan-out and collect,
#    beside stagekit's (SNAKEMAKE=/path/to/snakemake; pip install snakemake).
if [[ -n ${SNAKEMAKE:-} ]]; then
  python3 - "$LIB" <<'PY'
import sys
open("m10k.yaml", "w").write(
    f"libraries: [{sys.argv[1]}]\nstages:\n  - name: m\n    stage: test.noop\n"
    f"    foreach: {{matrix: {{a: {list(range(100))}, b: {list(range(100))}}}}}\n"
    "    output: 'm/a={a},b={b}.out'\n"
    '  - {name: all, stage: test.noop, inputs: {p: {from: "m[*]"}}}\n')
open("Snakefile", "w").write('''A = list(range(100))
B = list(range(100))
rule all:
    input: "all.out"
rule m:
    output: "m/a={a},b={b}.out"
    shell: "touch {output}"
rule collect:
    input: expand("m/a={a},b={b}.out", a=A, b=B)
    output: "all.out"
    shell: "touch {output}"
''')
PY
  echo "== 4. a 10,000-job fan-out and collect: Snakemake's dry run against stagekit's"
  hyperfine -r 3 -p 'rm -rf .snakemake' "$SNAKEMAKE -n -s Snakefile --cores 1 --quiet all" \
    "$BIN run m10k.yaml --dry-run"
fi
