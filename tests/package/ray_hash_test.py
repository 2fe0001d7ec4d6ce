"""`stagekit ship` against Ray's own packaging code.

Usage: STAGEKIT_RAY_PYTHON ray_hash_test.py PATH/TO/stagekit

For a set of trees (and ship options), checks that:
  * the package name equals Ray's get_uri_for_directory() for the same tree,
    .gitignore setting and exclude patterns (the summary's "excludes");
  * the files in our zip are exactly those Ray's _zip_files() would pack;
  * Ray's unzip_package() unpacks our zip to the source bytes and exec bits.
And for a pipeline ship: Ray names the --tree output as we named the package.

Prints every mismatch, then one summary line; exits 1 on any mismatch.
"""

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ray._private.runtime_env.packaging import (
    _zip_files,
    get_uri_for_directory,
    unzip_package,
)

logging.getLogger("ray").setLevel(logging.WARNING)

REPO = Path(__file__).resolve().parents[2]
failures = []
compared = 0


def fail(label, message):
    failures.append(f"{label}: {message}")
    print(f"MISMATCH {label}: {message}", file=sys.stderr)


def write(path: Path, data=b"", mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    if mode is not None:
        path.chmod(mode)


def run_ship(stagekit, label, target, args, out, cwd=None):
    env = dict(os.environ)
    env.pop("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", None)
    cmd = [stagekit, "ship", str(target), "--json", "-o", str(out), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        fail(label, f"`{' '.join(cmd)}` exited {r.returncode}: {r.stderr.strip()}")
        return None
    return json.loads(r.stdout)


def ray_name(tree: Path, gitignore: bool, excludes):
    uri = get_uri_for_directory(str(tree), include_gitignore=gitignore, excludes=list(excludes))
    return uri.split("://", 1)[1]


def zip_files(zip_path: Path):
    with zipfile.ZipFile(zip_path) as z:
        return sorted(n for n in z.namelist() if not n.endswith("/"))


def check_unzip(label, zip_path: Path, source: Path, work: Path):
    """Ray's unzip_package on our zip gives the source's bytes and exec bits."""
    dest = work / "unzipped"
    if dest.exists():
        shutil.rmtree(dest)
    unzip_package(str(zip_path), str(dest), remove_top_level_directory=False, unlink_zip=False)
    for name in zip_files(zip_path):
        got, want = dest / name, source / name
        if not want.exists():
            fail(label, f"{name} is in the zip but not in the source")
            continue
        if got.read_bytes() != want.read_bytes():
            fail(label, f"{name}: unzipped bytes differ from the source")
        got_x = bool(got.stat().st_mode & stat.S_IXUSR)
        want_x = bool(want.stat().st_mode & stat.S_IXUSR)
        if got_x != want_x:
            fail(label, f"{name}: exec bit {got_x} after unzip, {want_x} in the source")


def compare_dir(stagekit, work: Path, label, tree: Path, args=()):
    """Ships `tree` as a folder and compares with Ray."""
    global compared
    compared += 1
    out = work / f"out-{compared}"
    summary = run_ship(stagekit, label, tree, list(args), out)
    if summary is None:
        return
    gitignore = "--no-gitignore" not in args
    want = ray_name(tree, gitignore, summary["excludes"])
    if summary["package"] != want:
        fail(label, f"package {summary['package']}, Ray names it {want}")
    zip_path = Path(summary["zip"])
    if not zip_path.is_file():
        fail(label, f"{zip_path} was not written")
        return
    ray_zip = work / f"ray-{compared}.zip"
    _zip_files(str(tree), list(summary["excludes"]), str(ray_zip), include_gitignore=gitignore)
    ours, theirs = zip_files(zip_path), zip_files(ray_zip)
    if ours != theirs:
        fail(
            label,
            f"files in our zip differ from Ray's: only ours {sorted(set(ours) - set(theirs))}, "
            f"only Ray's {sorted(set(theirs) - set(ours))}",
        )
    check_unzip(label, zip_path, tree, work)


def build_trees(base: Path):
    trees = {}

    # Plain content of every shape: nested and empty folders, zero-byte and
    # executable files, a 5 MB file, names that need care.
    t = base / "shapes"
    write(t / "README.md", "# shapes\n")
    write(t / "empty.txt", b"")
    write(t / "bin/run.sh", "#!/bin/sh\necho run\n", 0o755)
    write(t / "bin/tool", b"\x7fELF\x00\x01", 0o750)
    write(t / "a/b/c/d/deep.txt", "deep\n")
    (t / "a/empty-dir").mkdir(parents=True)
    (t / "a/b/empty-too").mkdir(parents=True)
    write(t / "data/big.bin", bytes((i * 7 + i // 251) & 0xFF for i in range(5 * 1024 * 1024)))
    write(t / "names/with space.txt", "s")
    write(t / "names/café ünï.txt", "u")
    write(t / "names/日本語/ファイル.txt", "j")
    write(t / "names/[brackets].txt", "b")
    write(t / "names/#hash.txt", "h")
    write(t / "names/!bang.txt", "!")
    write(t / "names/.hidden", "dot")
    write(t / "names/..twodots", "dots")
    write(t / "names/.dotdir/inner", "i")
    write(t / "names/a+b=c&d~e(f)", "p")
    trees["shapes"] = t

    # .gitignore with negation, nested .gitignore files anchored to their
    # folder, a .rayignore, a folder whose children are all excluded, and a
    # "build/" pattern (Ray keeps the folder, drops its children).
    t = base / "ignores"
    write(t / ".gitignore", "*.log\n!keep.log\n/top-only.txt\nbuild/\n# comment\n\n\\#literal\n")
    write(t / "a.log", "x")
    write(t / "keep.log", "k")
    write(t / "top-only.txt", "t")
    write(t / "#literal", "l")
    write(t / "sub/top-only.txt", "kept: anchored to the root")
    write(t / "sub/b.log", "x")
    write(t / "sub/.gitignore", "/local.txt\n*.tmp\n!important.tmp\n")
    write(t / "sub/local.txt", "l")
    write(t / "sub/deeper/local.txt", "kept: /local.txt is anchored to sub")
    write(t / "sub/deeper/x.tmp", "x")
    write(t / "sub/deeper/important.tmp", "i")
    write(t / "logs/1.log", "1")
    write(t / "logs/2.log", "2")
    write(t / "build/out.o", "o")
    write(t / "build/nested/more.o", "o")
    write(t / "src/build/gen.c", "g")
    write(t / "ray/.rayignore", "secret*\n")
    write(t / "ray/secret.key", "s")
    write(t / "ray/public.txt", "p")
    write(t / "ray/.gitignore", "public.txt\n")
    trees["ignores"] = t

    # The default excludes (Ray's and stagekit's), top level and nested.
    t = base / "defaults"
    write(t / "main.py", "print(1)\n")
    write(t / ".git/HEAD", "ref: refs/heads/main\n")
    write(t / ".git/objects/ab/cdef", "obj")
    write(t / ".venv/bin/python", "#!/bin/sh\n", 0o755)
    write(t / "venv/lib/x.py", "")
    write(t / "__pycache__/main.cpython-311.pyc", b"\x00")
    write(t / "pkg/__pycache__/m.pyc", b"\x00")
    write(t / "pkg/m.py", "")
    write(t / "build/out.o", "o")
    write(t / "dist/w.whl", "w")
    write(t / "x.egg-info/PKG-INFO", "p")
    write(t / "node_modules/m/index.js", "")
    write(t / ".cache/c", "")
    write(t / ".DS_Store", "")
    write(t / "CMakeFiles/f", "")
    trees["defaults"] = t

    # Links that stay inside the tree are followed, as Ray follows them.
    t = base / "links"
    write(t / "real/data.txt", "data\n")
    write(t / "real/run.sh", "#!/bin/sh\n", 0o755)
    (t / "file-link").symlink_to("real/data.txt")
    (t / "exec-link").symlink_to("real/run.sh")
    (t / "dir-link").symlink_to("real", target_is_directory=True)
    trees["links"] = t

    # Material for --exclude patterns.
    t = base / "patterns"
    write(t / "data/a.csv", "1")
    write(t / "data/keep.csv", "2")
    write(t / "reports/x.csv", "3")
    write(t / "sub/one/deep/f", "f")
    write(t / "sub/two/deep/g", "g")
    write(t / "docs/index.md", "d")
    write(t / "dir/f", "f")
    write(t / "dir/g/h", "h")
    write(t / "notes.txt", "n")
    trees["patterns"] = t

    # A .gitignore holding "*" excludes its own folder in Ray; so does a
    # .rayignore.
    t = base / "star"
    write(t / "out/.gitignore", "*\n")
    write(t / "out/result.bin", "r")
    write(t / "cache/.rayignore", "*\n")
    write(t / "cache/blob", "b")
    write(t / "partial/.gitignore", "*\n!.gitignore\n!keep\n")
    write(t / "partial/keep", "k")
    write(t / "partial/drop", "d")
    write(t / "main.txt", "m")
    trees["star"] = t

    # Nothing but folders and zero-byte files.
    t = base / "hollow"
    (t / "a/b/c").mkdir(parents=True)
    (t / "d").mkdir(parents=True)
    write(t / "e/zero", b"")
    trees["hollow"] = t

    # An empty folder: Ray names it _ray_pkg_0a62fe483960e4e9.zip.
    t = base / "empty"
    t.mkdir()
    trees["empty"] = t
    return trees


def check_pipeline(stagekit, work: Path):
    """A pipeline ship's --tree, given to Ray, gets the name of our package."""
    global compared
    extra = work / "extra"
    write(extra / "d/f.txt", "f")
    write(extra / "run.sh", "#!/bin/sh\n", 0o755)
    cases = [
        ("pipeline trivial", []),
        ("pipeline trivial --include DIR=PLACE", ["--include", f"{extra}=pkg/extra"]),
    ]
    for label, args in cases:
        compared += 1
        tree = work / f"tree-{compared}"
        out = work / f"out-{compared}"
        summary = run_ship(
            stagekit,
            label,
            REPO / "examples/trivial/pipeline.yaml",
            [*args, "--tree", str(tree)],
            out,
            cwd=str(REPO),
        )
        if summary is None:
            continue
        want = ray_name(tree, True, [])
        if summary["package"] != want:
            fail(label, f"package {summary['package']}, Ray names the --tree output {want}")
        check_unzip(label, Path(summary["zip"]), tree, work)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    stagekit = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="stagekit-ray-hash-") as tmp:
        work = Path(tmp)
        trees = build_trees(work / "trees")
        for name, tree in trees.items():
            compare_dir(stagekit, work, name, tree)
        compare_dir(stagekit, work, "ignores --no-gitignore", trees["ignores"], ["--no-gitignore"])
        compare_dir(
            stagekit, work, "ignores --no-default-excludes", trees["ignores"],
            ["--no-default-excludes"],
        )
        compare_dir(
            stagekit, work, "defaults --no-default-excludes", trees["defaults"],
            ["--no-default-excludes"],
        )
        compare_dir(
            stagekit, work, "defaults --exclude", trees["defaults"],
            ["--exclude", "*.py", "--exclude", "!main.py"],
        )
        compare_dir(
            stagekit, work, "star --no-gitignore", trees["star"], ["--no-gitignore"]
        )
        compare_dir(
            stagekit, work, "patterns --exclude (1)", trees["patterns"],
            ["--exclude", "/data", "--exclude", "docs/", "--exclude", "dir/*"],
        )
        compare_dir(
            stagekit, work, "patterns --exclude (2)", trees["patterns"],
            ["--exclude", "*.csv", "--exclude", "!keep.csv", "--exclude", "sub/**/deep"],
        )
        compare_dir(
            stagekit, work, "patterns --exclude (3)", trees["patterns"],
            ["--exclude", "**/g", "--exclude", "n?tes.*", "--exclude", "[dr]*/x.csv"],
        )
        compare_dir(
            stagekit, work, "shapes --exclude names", trees["shapes"],
            ["--exclude", "\\#hash.txt", "--exclude", "\\!bang.txt", "--exclude", "café*",
             "--exclude", "\\[brackets].txt"],
        )
        # Ray matches the root itself as "." : '.*' excludes everything.
        compare_dir(stagekit, work, "shapes --exclude '.*'", trees["shapes"], ["--exclude", ".*"])
        check_pipeline(stagekit, work)
    print(
        f"ray_hash_parity: {compared} packages compared with Ray's ({len(trees)} trees, "
        f"2 pipeline ships): {len(failures)} mismatches"
    )
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
