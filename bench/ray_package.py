#!/usr/bin/env python3
"""Ray's own working_dir packaging of a tree, as `ray job submit` and
ray.init(runtime_env={"working_dir": ...}) do it before uploading: the
content hash (get_uri_for_directory), then the zip (create_package).
Ray is imported once, outside the timing.

usage: ray_package.py TREE OUTDIR RUNS EXCLUDE...
prints JSON: {"package": ..., "seconds": [per run]}
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ray._private.runtime_env.packaging import create_package, get_uri_for_directory


def main():
    tree, out, runs, excludes = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    times, name = [], None
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.perf_counter()
        uri = get_uri_for_directory(tree, include_gitignore=True, excludes=excludes)
        name = uri.split("://", 1)[1]
        create_package(tree, out / name, include_gitignore=True, excludes=excludes)
        times.append(time.perf_counter() - start)
    print(json.dumps({"package": name, "seconds": times, "zip_bytes": os.path.getsize(out / name)}))


if __name__ == "__main__":
    main()
