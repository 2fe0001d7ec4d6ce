#!/usr/bin/env python3
"""Writes the benchmark tree for `stagekit ship`: about 1 GB, most of it in
folders a working_dir must not carry (.venv, build, .git, node_modules,
__pycache__, *.tmp behind a nested .gitignore), and about 75 MB that ships
(sources, data, libraries). Deterministic: the same bytes every time.

usage: make_ship_tree.py DIR [SCALE]   (SCALE 1.0 = about 1 GB)
"""
import os
import random
import sys


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def blob(rng, size, compressible):
    # Half random, half repeated text: compresses like object code and data do.
    if not compressible:
        return rng.randbytes(size)
    words = [b"stage", b"tensor", b"ray", b"float", b"return", b"const", b"0x1f", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(64) if rng.random() < 0.3 else rng.choice(words) * rng.randint(1, 8)
    return bytes(out[:size])


def main():
    root = sys.argv[1]
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    rng = random.Random(42)
    n = lambda k: max(1, int(k * scale))
    # Excluded by the defaults or by .gitignore files: about 950 MB.
    for i in range(n(15000)):
        write(f"{root}/.venv/lib/python3.11/site-packages/pkg{i % 300}/mod{i}.py", blob(rng, 30_000, True))
    for i in range(n(300)):
        write(f"{root}/build/obj/{i % 20}/unit{i}.o", blob(rng, 1_000_000, True))
    for i in range(n(2000)):
        write(f"{root}/.git/objects/{i % 256:02x}/{i:038x}", blob(rng, 50_000, False))
    for i in range(n(5000)):
        write(f"{root}/node_modules/m{i % 100}/index{i}.js", blob(rng, 10_000, True))
    # Shipped: about 75 MB.
    write(f"{root}/src/.gitignore", b"*.tmp\nscratch/\n")
    for i in range(n(3000)):
        d = f"{root}/src/module{i % 60}/part{i % 7}"
        write(f"{d}/file{i}.cc", blob(rng, 8_000, True))
        if i % 10 == 0:
            write(f"{d}/file{i}.tmp", blob(rng, 20_000, True))
            write(f"{d}/__pycache__/x{i}.pyc", blob(rng, 5_000, True))
        if i % 100 == 0:
            write(f"{d}/scratch/big{i}.bin", blob(rng, 200_000, False))
    for i in range(n(10)):
        write(f"{root}/data/chunk{i}.bin", blob(rng, 2_000_000, True))
    for i in range(n(4)):
        write(f"{root}/lib/libpart{i}.so", blob(rng, 8_000_000, True))
    write(f"{root}/pipeline.yaml", b"name: bench\nstages: []\n")


if __name__ == "__main__":
    main()
