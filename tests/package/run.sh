#!/usr/bin/env bash
# tests/package/run.sh BUILD_DIR PKG_DIR
#
# The find_package consumer test (ctest: package.find_package_consumer).
# Installs the already-built project in BUILD_DIR into a temporary prefix,
# builds PKG_DIR/consumer against it as a separate CMake project, and runs:
#   - consumer_driver (the library API from an ordinary executable);
#   - the INSTALLED stagekit: `list`, `run` with both executors, `parity`;
# then checks that the outputs exist, are byte-identical across executors and
# have the expected content (checked-in files under consumer/expected/ and
# independent tools: tac, cksum, sha256sum).
#
# Environment: KEEP_TMP=1 keeps the temporary directory; JOBS (default 2) is
# the build parallelism; CMAKE (default cmake).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR PKG_DIR" >&2
  exit 2
fi
BUILD_DIR=$(cd "$1" && pwd)
PKG_DIR=$(cd "$2" && pwd)
CONSUMER_SRC=$PKG_DIR/consumer
CMAKE=${CMAKE:-cmake}
JOBS=${JOBS:-2}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/stagekit-pkg.XXXXXX")
cleanup() {
  local rc=$?
  if [[ ${KEEP_TMP:-0} == 1 ]]; then
    echo "package: kept $TMP"
  else
    rm -rf "$TMP"
  fi
  if [[ $rc -ne 0 ]]; then echo "package: FAILED (exit $rc)" >&2; fi
  exit $rc
}
trap cleanup EXIT

checks=0
say() { echo "package: $*"; }
ok() { checks=$((checks + 1)); echo "package: ok   $*"; }
die() { echo "package: FAIL $*" >&2; exit 1; }
# run LOG CMD...: runs CMD with its stdout in LOG and its stderr in LOG.err; on
# failure shows both and fails.
run() {
  local log=$1
  shift
  local rc=0
  "$@" >"$log" 2>"$log.err" || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "package: FAIL command exited $rc: $*" >&2
    echo "---- stdout ($log)" >&2
    tail -n 60 "$log" >&2
    echo "---- stderr" >&2
    tail -n 60 "$log.err" >&2
    echo "----" >&2
    exit 1
  fi
}
# summary_ok FILE EXECUTOR: the `stagekit run --json` summary says all 3 stages
# succeeded on EXECUTOR (jq when available, else a textual check).
summary_ok() {
  if command -v jq >/dev/null; then
    jq -e --arg ex "$2" '.status == "succeeded" and .executor == $ex and (.stages | length) == 3
                         and all(.stages[]; .state == "succeeded" and .stats.executor == $ex)' \
      "$1" >/dev/null 2>&1
  else
    grep -q '^  "status": "succeeded",$' "$1" && grep -q "^  \"executor\": \"$2\",\$" "$1" &&
      [[ $(grep -c '"state": "succeeded"' "$1") -eq 3 ]]
  fi
}
# same FILE_A FILE_B WHAT: byte-identical or fail with a diff.
same() {
  if ! cmp -s "$1" "$2"; then
    echo "package: FAIL $3: $1 and $2 differ" >&2
    cmp "$1" "$2" >&2 || true
    diff <(od -c "$1") <(od -c "$2") | head -n 20 >&2 || true
    exit 1
  fi
  ok "$3"
}

# The test runs the installed tools, never the build tree's: nothing from the
# environment may point stagekit elsewhere.
unset STAGEKIT_RUNNER STAGEKIT_STAGE_PATH LD_LIBRARY_PATH || true

cache_value() {  # cache_value VAR: a value from BUILD_DIR's CMakeCache.txt, or empty
  sed -n "s/^$1:[A-Z]*=//p" "$BUILD_DIR/CMakeCache.txt" | head -n 1
}
[[ -f $BUILD_DIR/CMakeCache.txt ]] || die "$BUILD_DIR is not a CMake build directory"

# ---- 1. install ------------------------------------------------------------
PREFIX=$TMP/prefix
say "installing $BUILD_DIR into $PREFIX"
run "$TMP/install.log" "$CMAKE" --install "$BUILD_DIR" --prefix "$PREFIX"
STAGEKIT=$PREFIX/bin/stagekit
[[ -x $STAGEKIT ]] || die "no executable bin/stagekit in the install tree"
[[ -x $PREFIX/bin/stagekit-stage ]] || die "no lean stage runner bin/stagekit-stage in the install tree"
config=$(find "$PREFIX" -name stagekitConfig.cmake -path '*/cmake/stagekit/*' | head -n 1)
[[ -n $config ]] || die "no stagekitConfig.cmake in the install tree"
libstagekit=$(find "$PREFIX" -name 'libstagekit.so.*' -type f | head -n 1)
[[ -n $libstagekit ]] || die "no libstagekit.so.* in the install tree"
for f in "$PREFIX"/include/stagekit/{stage,invoke,executor,pipeline,status,c_api,version}.h \
         "$(dirname "$config")"/{stagekitConfigVersion.cmake,StagekitHelpers.cmake,stagekitTargets.cmake}; do
  [[ -f $f ]] || die "missing from the install tree: ${f#"$PREFIX"/}"
done
libdir=$(dirname "$libstagekit")
ok "install tree: bin/stagekit, ${libdir#"$PREFIX"/}/$(basename "$libstagekit"), headers, ${config#"$PREFIX"/}"

# The installed binary must find the installed library through its RUNPATH
# ($ORIGIN/../<libdir>), not the build tree's.
if command -v readelf >/dev/null; then
  runpath=$(readelf -d "$STAGEKIT" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\].*/\2/p')
  say "bin/stagekit RUNPATH: ${runpath:-<none>}"
  [[ $runpath != *"$BUILD_DIR"* ]] || die "bin/stagekit's RUNPATH still names the build tree: $runpath"
fi
resolved=$(ldd "$STAGEKIT" | sed -n 's/^[[:space:]]*libstagekit\.so[^ ]* => \([^ ]*\).*/\1/p')
[[ -n $resolved && $resolved != "not" ]] || { ldd "$STAGEKIT" >&2; die "bin/stagekit cannot find libstagekit"; }
[[ $(realpath "$resolved") == "$(realpath "$libstagekit")" ]] ||
  die "bin/stagekit loads $resolved instead of the installed $libstagekit"
ok "installed bin/stagekit resolves libstagekit to the prefix (${resolved#"$PREFIX"/})"

version=$("$STAGEKIT" --version)
pkg_version=$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")/\1/p' "$(dirname "$config")/stagekitConfigVersion.cmake")
[[ $version == "$pkg_version" ]] || die "stagekit --version says '$version', the package says '$pkg_version'"
ok "stagekit --version = $version = package version"

# ---- 2. configure and build the consumer out of tree -------------------------
CONSUMER_BUILD=$TMP/consumer-build
cmake_args=(-S "$CONSUMER_SRC" -B "$CONSUMER_BUILD" -DCMAKE_PREFIX_PATH="$PREFIX"
            -DCMAKE_BUILD_TYPE=Release -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
# Build with the project's compiler; a sanitizer build's library needs the same
# runtime in everything linked against it.
cxx=$(cache_value CMAKE_CXX_COMPILER)
if [[ -n $cxx ]]; then cmake_args+=(-DCMAKE_CXX_COMPILER="$cxx"); fi
if gen=$(cache_value CMAKE_GENERATOR) && [[ -n $gen ]]; then cmake_args+=(-G "$gen"); fi
sanitize=$(cache_value STAGEKIT_SANITIZE)
if [[ -n $sanitize ]]; then
  say "the project is built with -fsanitize=$sanitize; the consumer is too"
  cmake_args+=(-DCMAKE_CXX_FLAGS="-fsanitize=$sanitize -fno-omit-frame-pointer"
               -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=$sanitize"
               -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=$sanitize")
fi
say "configuring $CONSUMER_SRC against $PREFIX"
run "$TMP/consumer-configure.log" "$CMAKE" "${cmake_args[@]}"
found_dir=$(sed -n 's/^stagekit_DIR:PATH=//p' "$CONSUMER_BUILD/CMakeCache.txt")
[[ $(realpath "$found_dir") == "$(realpath "$(dirname "$config")")" ]] ||
  die "find_package(stagekit) found '$found_dir', not the installed package $(dirname "$config")"
ok "find_package(stagekit 0.1 CONFIG) found ${found_dir#"$PREFIX"/}"
run "$TMP/consumer-build.log" "$CMAKE" --build "$CONSUMER_BUILD" -j "$JOBS"
STAGE_DIR=$CONSUMER_BUILD/lib/stagekit/stages
LIB=$STAGE_DIR/libconsumer_stages.so
DRIVER=$CONSUMER_BUILD/consumer_driver
[[ -f $LIB ]] || die "stagekit_add_stage_library(consumer_stages) did not produce $LIB"
[[ -x $DRIVER ]] || die "no $DRIVER"
ok "built the consumer: lib/stagekit/stages/libconsumer_stages.so and consumer_driver"

# ---- 3. the library API from an executable --------------------------------------
say "running consumer_driver"
if ! "$DRIVER" "$TMP/driver" "$LIB" >"$TMP/driver.log" 2>&1; then
  cat "$TMP/driver.log" >&2
  die "consumer_driver failed"
fi
sed 's/^/  /' "$TMP/driver.log"
read -r _ _ digest digest_file < <(grep '^driver: digest ' "$TMP/driver.log") ||
  die "consumer_driver printed no digest line"
[[ $digest == "sha256:$(sha256sum "$digest_file" | cut -d' ' -f1)" ]] ||
  die "RunStats.output_digest $digest is not the sha256 of $digest_file"
ok "consumer_driver: all checks passed; its RunStats digest matches sha256sum"
read -r _ _ runner < <(grep '^driver: runner ' "$TMP/driver.log") || die "consumer_driver printed no runner line"
[[ $runner == /* && $(realpath "$runner") == "$(realpath "$PREFIX/bin/stagekit-stage")" ]] ||
  die "SubprocessExecutor's default runner in a library user is '$runner', not the installed" \
      "$PREFIX/bin/stagekit-stage (it looks for <dir of libstagekit>/../bin/stagekit-stage)"
ok "SubprocessExecutor's default runner is the installed lean bin/stagekit-stage"

# ---- 4. the installed CLI ----------------------------------------------------
cd "$TMP"  # nothing may land in the source tree
PIPELINE=$CONSUMER_SRC/pipeline.yaml

run "$TMP/list.log" "$STAGEKIT" list --stages "$LIB"
for s in consumer.reverse_lines consumer.checksum; do
  grep -Eq "^$s[[:space:]]+libconsumer_stages\.so " "$TMP/list.log" ||
    { cat "$TMP/list.log" >&2; die "stagekit list --stages $LIB does not show $s"; }
done
ok "stagekit list --stages libconsumer_stages.so shows consumer.reverse_lines and consumer.checksum"
run "$TMP/list-pipeline.log" "$STAGEKIT" list "$PIPELINE" --stage-path "$STAGE_DIR"
grep -q '^consumer.checksum ' "$TMP/list-pipeline.log" ||
  { cat "$TMP/list-pipeline.log" >&2; die "stagekit list PIPELINE --stage-path does not resolve consumer_stages"; }
ok "stagekit list pipeline.yaml --stage-path resolves 'consumer_stages'"

outputs=(reversed.txt reversed.cksum input.cksum)
for ex in inprocess subprocess; do
  run "$TMP/run-$ex.log" "$STAGEKIT" run "$PIPELINE" --executor "$ex" --stage-path "$STAGE_DIR" \
    --out "$TMP/out/$ex" -j 2 --json
  summary_ok "$TMP/run-$ex.log" "$ex" ||
    { cat "$TMP/run-$ex.log" >&2; die "stagekit run --executor $ex: the summary does not say 3 stages succeeded on $ex"; }
  for o in "${outputs[@]}"; do
    [[ -f $TMP/out/$ex/$o ]] || die "stagekit run --executor $ex wrote no $o"
  done
  [[ -f $TMP/out/$ex/.stagekit-run.json ]] || die "stagekit run --executor $ex wrote no .stagekit-run.json"
  ok "stagekit run --executor $ex: 3 stages succeeded, outputs ${outputs[*]}"
done
for o in "${outputs[@]}"; do
  same "$TMP/out/inprocess/$o" "$TMP/out/subprocess/$o" "$o is byte-identical across inprocess and subprocess"
done

# The executors are named: without --executors, parity adds `ray` when the
# build found Ray, and this test must not depend on a Ray cluster.
run "$TMP/parity.log" "$STAGEKIT" parity "$PIPELINE" --executors inprocess,subprocess \
  --stage-path "$STAGE_DIR" --out "$TMP/out/parity" -j 2
grep -q '^3 outputs, 3 identical across inprocess, subprocess$' "$TMP/parity.log" ||
  { cat "$TMP/parity.log" >&2; die "stagekit parity did not report 3 identical outputs"; }
for o in "${outputs[@]}"; do
  same "$TMP/out/inprocess/$o" "$TMP/out/parity/subprocess/$o" "parity's subprocess $o equals the run's"
done
ok "stagekit parity: 3 outputs, 3 identical across inprocess, subprocess"

# The installed examples run from the prefix with no --stage-path: the binary
# finds its own stage directory (<prefix>/<libdir>/stagekit/stages).
examples=$PREFIX/share/stagekit/examples/trivial/pipeline.yaml
if [[ -f $examples ]]; then
  run "$TMP/examples.log" "$STAGEKIT" run "$examples" --executor subprocess --out "$TMP/out/examples" -q
  [[ -s $TMP/out/examples/trivial.json ]] || die "the installed trivial example wrote no trivial.json"
  ok "installed share/stagekit/examples/trivial runs with the installed binary and its stage directory"
else
  say "skipped the installed examples (not installed: STAGEKIT_BUILD_EXAMPLES=OFF)"
fi

# ---- 5. expected content -------------------------------------------------------
for o in "${outputs[@]}"; do
  same "$TMP/out/inprocess/$o" "$CONSUMER_SRC/expected/$o" "$o matches consumer/expected/$o"
done
tac "$CONSUMER_SRC/input.txt" >"$TMP/tac.txt"
same "$TMP/out/inprocess/reversed.txt" "$TMP/tac.txt" "reversed.txt equals tac input.txt"
cksum <"$CONSUMER_SRC/input.txt" >"$TMP/input.cksum"
same "$TMP/out/inprocess/input.cksum" "$TMP/input.cksum" "input.cksum equals cksum < input.txt"
cksum <"$TMP/out/inprocess/reversed.txt" >"$TMP/reversed.cksum"
same "$TMP/out/inprocess/reversed.cksum" "$TMP/reversed.cksum" "reversed.cksum equals cksum < reversed.txt"

# ---- 6. a shipped package on a "stock node" -----------------------------------
# The installed stagekit ships the consumer's pipeline; the package runs in a
# mount namespace where the install prefix, the build tree and the build's
# .venv are empty folders and libyaml-cpp, libzip, libcurl and (but for Ray's
# Python) zlib are empty files, with -e subprocess and, in a build with Ray,
# -e ray with the Ray of .venv-node. The loader's trace shows what came from
# where.
if [[ $(id -u) -ne 0 ]] || ! command -v unshare >/dev/null; then
  die "the stock-node check needs root and unshare (mount namespaces), as CI runs"
fi
run "$TMP/ship.log" "$STAGEKIT" ship "$PIPELINE" --stage-path "$STAGE_DIR" -o "$TMP/zip" --tree "$TMP/shipped"
manifest=$(ls "$TMP"/zip/*.manifest.json)
for lib in libz.so.1 libyaml-cpp.so.0.7 libnettle.so.8; do
  jq -e --arg l "$lib" '.bundled | any(.soname == $l)' "$manifest" >/dev/null ||
    die "the manifest does not list $lib as bundled: $(jq -c .bundled "$manifest")"
done
jq -e '.bundled[] | select(.soname == "libz.so.1") | .needed_by | index("libconsumer_stages.so")' "$manifest" >/dev/null ||
  die "the manifest does not say libconsumer_stages.so needed libz.so.1"
ok "ship bundles the user's stage library's zlib (needed by libconsumer_stages.so) and stagekit's own libraries"
hide=""
zlib=""
for l in libyaml-cpp.so.0.7 libzip.so.4 libcurl.so.4 libz.so.1; do
  f=$(ldd "$STAGEKIT" "$LIB" | sed -n "s/^[[:space:]]*$l => \([^ ]*\).*/\1/p" | head -n 1)
  [[ -n $f ]] || die "ldd does not resolve $l here"
  if [[ $l == libz.so.1 ]]; then zlib=$(realpath "$f"); else hide+=" $(realpath "$f")"; fi
done
mkdir -p "$TMP/ld"
stock=(unshare --mount --propagation private /bin/sh -c '
  set -e; for f in $HIDE; do mount --bind /dev/null "$f"; done
  for d in $EMPTY; do mount -t tmpfs stock-node "$d"; done
  export PATH="$NODE_PATH"; unset STAGEKIT_RAY_BIN_DIR RAY_ADDRESS
  cd "$PKG"; exec env LD_DEBUG=libs LD_DEBUG_OUTPUT="$TRACE" "$@"' stock-node)
source_dir=$(cd "$PKG_DIR/../.." && pwd)
empty="$PREFIX $BUILD_DIR $CONSUMER_BUILD"
[[ -d $source_dir/.venv ]] && empty+=" $source_dir/.venv"
# The libraries a stagekit program (the driver, a stage runner, a Ray worker:
# what follows its "transferring control" in the loader's trace, and what was
# loaded for it just before) initialised, from one trace file.
stagekit_loads() {
  awk '/transferring control:/ { keep = ($NF ~ /\/(stagekit|stagekit-stage|default_worker)$/);
                                  if (keep) printf "%s", pending; pending = ""; next }
       /calling init:/ { sub(/.*calling init: /, ""); if (keep) print; else pending = pending $0 "\n" }' "$1"
}
executors=(subprocess)
if [[ -f $libdir/libstagekit_ray.so ]]; then
  [[ -x $source_dir/.venv-node/bin/ray ]] ||
    die "no Ray in $source_dir/.venv-node for the stock node: run STAGEKIT_VENV=.venv-node STAGEKIT_RAY_ONLY=1 bash scripts/ray.sh"
  executors+=(ray)
fi
for ex in "${executors[@]}"; do
  rm -rf "$TMP/ld" && mkdir -p "$TMP/ld"
  # zlib is hidden too, except from Ray's Python, which needs it (every real node has it).
  hidden=$hide
  [[ $ex == ray ]] || hidden+=" $zlib"
  HIDE=$hidden EMPTY=$empty PKG=$TMP/shipped TRACE=$TMP/ld/trace NODE_PATH=$source_dir/.venv-node/bin:/usr/bin:/bin \
    run "$TMP/stock-$ex.log" "${stock[@]}" \
    sh .stagekit/bin/stagekit-launch run pipeline.yaml -e "$ex" --out "$TMP/out/stock-$ex" -q --no-cache
  for o in "${outputs[@]}"; do
    same "$TMP/out/stock-$ex/$o" "$TMP/out/inprocess/$o" "the shipped package's $o on a stock node (-e $ex) equals the install's"
  done
  # Every library a stagekit program loaded outside the allowlist came from the package.
  n=0
  for t in $(grep -l 'calling init: .*libstagekit\.so' "$TMP"/ld/trace.*); do
    n=$((n + 1))
    outside=$(stagekit_loads "$t" | grep -v "^$TMP/shipped/" |
              grep -Ev '/(libc|libm|libdl|librt|libpthread|libresolv|libstdc\+\+|libgcc_s|ld-linux-x86-64|libray_api)\.so[^/]*$' |
              grep -v '/\.stagekit-tmp\.[^/]*/libstagekit_ray\.so$' || true)
    [[ -z $outside ]] || die "a stagekit program (-e $ex) loaded from outside the package: $outside"
  done
  ((n >= 2)) || die "the loader's trace (-e $ex) shows $n stagekit processes, not the driver and its stage runners or workers"
  for lib in libz.so.1 libnettle.so.8 libyaml-cpp.so.0.7 libconsumer_stages.so libstagekit.so.0; do
    grep -qh "calling init: $TMP/shipped/.*/$lib\$" "$TMP"/ld/trace.* || die "$lib was not loaded from the package (-e $ex)"
  done
  ok "on a stock node (-e $ex) the package ran, $n stagekit processes loading every library beyond glibc and libstdc++ from itself"
done

say "PASSED: $checks checks"
