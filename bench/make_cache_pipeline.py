#!/usr/bin/env python3
"""Writes the benchmark pipeline for the stage cache: INPUTS text files and a
pipeline of 50 wordcount stages per input (1,000 stages for 20 inputs), fan-in
and chains both:

  m_II_KK  wordcount.map over the input, min_length KK (24 per input)
  r_II     wordcount.reduce over the 24 maps of the input
  c_II_KK  wordcount.map over the previous stage's output: a chain of 24
  t_II     wordcount.reduce over the chain's last stage

Deterministic: the same bytes every time.

usage: make_cache_pipeline.py DIR [INPUTS]   (INPUTS default 20)
"""
import os
import random
import sys

MAPS = 24
CHAIN = 24


def main():
    out = sys.argv[1]
    inputs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    os.makedirs(os.path.join(out, "inputs"), exist_ok=True)
    rng = random.Random(6)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))
             for _ in range(2000)]
    lines = ["name: cachebench", "libraries: [stagekit_examples]", "job: {name: cachebench, seed: 6}",
             "stages:"]
    for i in range(inputs):
        text = " ".join(rng.choice(vocab) for _ in range(1500)) + "\n"
        with open(os.path.join(out, "inputs", f"in_{i:02d}.txt"), "w") as f:
            f.write(text)
        maps = []
        for k in range(MAPS):
            name = f"m_{i:02d}_{k:02d}"
            maps.append(name)
            lines.append(f"  - {{name: {name}, stage: wordcount.map, "
                         f"inputs: {{text: inputs/in_{i:02d}.txt}}, kwargs: {{min_length: {k + 1}}}}}")
        parts = ", ".join(f"p{k:02d}: {{from: {m}}}" for k, m in enumerate(maps))
        lines.append(f"  - {{name: r_{i:02d}, stage: wordcount.reduce, inputs: {{{parts}}}}}")
        prev = maps[0]
        for k in range(CHAIN):
            name = f"c_{i:02d}_{k:02d}"
            lines.append(f"  - {{name: {name}, stage: wordcount.map, inputs: {{text: {{from: {prev}}}}}}}")
            prev = name
        lines.append(f"  - {{name: t_{i:02d}, stage: wordcount.reduce, inputs: {{last: {{from: {prev}}}}}}}")
    with open(os.path.join(out, "pipeline.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{inputs * (MAPS + 1 + CHAIN + 1)} stages over {inputs} inputs in {out}")


if __name__ == "__main__":
    main()
