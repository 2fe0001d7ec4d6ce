#!/usr/bin/env bash
# Quick start, part one: install what is missing, build stagekit and its
# examples, run the word-count pipeline, and prove with the parity gate that
# every example gives byte-identical outputs in-process, in a subprocess and
# on a private local Ray cluster.
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
for example in trivial wordcount montecarlo; do
  echo "== stagekit parity examples/$example/pipeline.yaml"
  $stagekit parity "examples/$example/pipeline.yaml" --quiet --out "stagekit-out/parity/$example"
done
echo "== pi estimate:"
cat stagekit-out/parity/montecarlo/subprocess/pi.json
