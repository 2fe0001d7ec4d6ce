#!/usr/bin/env bash
# Quick start, part one: install what is missing, build stagekit and its
# examples, run the word-count pipeline (then again from the cache, with a
# report), audit the determinism examples, and prove with the parity gate that
# every example gives byte-identical outputs in-process, in a subprocess and
# on a private local Ray cluster (warm workers included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/ray.sh   # the pinned Ray in .venv, for the third executor
jobs=$(nproc)
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs"
stagekit=build/release/bin/stagekit

echo "== stagekit run examples/wordcount/pipeline.yaml (16 map stages + reduce)"
$stagekit run examples/wordcount/pipeline.yaml --out stagekit-out/wordcount
echo "== top words:"
head -n 5 stagekit-out/wordcount/top_words.tsv
echo "== the same again with --resume: every stage is restored from the cache, none runs"
$stagekit run examples/wordcount/pipeline.yaml --out stagekit-out/wordcount --resume \
  --report stagekit-out/wordcount.html --trace stagekit-out/wordcount.trace.json
echo "   report: stagekit-out/wordcount.html, trace (Perfetto): stagekit-out/wordcount.trace.json"
echo "== stagekit audit examples/audit/pipeline.yaml (seven stages with classic bugs: exit 17 expected)"
rc=0
$stagekit audit examples/audit/pipeline.yaml || rc=$?
if [[ $rc -ne 17 ]]; then
  echo "the audit should have flagged the buggy examples (exit 17), but exited $rc" >&2
  exit 1
fi
for example in trivial wordcount montecarlo warm fanout dynamic; do
  echo "== stagekit parity examples/$example/pipeline.yaml"
  $stagekit parity "examples/$example/pipeline.yaml" --quiet --out "stagekit-out/parity/$example"
done
echo "== pi estimate:"
cat stagekit-out/parity/montecarlo/subprocess/pi.json
