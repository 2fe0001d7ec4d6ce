#!/usr/bin/env bash
# The HTML run report in a real browser: runs a small pipeline twice (the
# second run restores most stages from the cache, runs the rest, and one stage
# fails with an error message full of HTML), writes the report, then loads it
# in headless Chromium: the DOM must hold the expected table rows and SVG
# bars, and the screenshot must show them (check_report.py).
#
# Usage: chromium_test.sh STAGEKIT_CLI TEST_STAGES_LIB [KEEP_DIR]
# KEEP_DIR, when given, receives the report, the trace, the DOM and the PNG.
set -euo pipefail
cli=$(realpath "$1")
stages=$(realpath "$2")
keep=${3:+$(realpath -m "$3")}
here=$(cd "$(dirname "$0")" && pwd)

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
  echo "FAIL: chromium is not installed; \`bash scripts/deps.sh\` installs it (Debian package chromium)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# 6 copies, 6 checksums of them, then a stage that throws and one after it.
python3 - <<'EOF'
lines = ["name: report-demo", "job: {name: report-demo, seed: 7}", "stages:"]
for k in range(1, 7):
    with open(f"in_{k}.txt", "w") as f:
        f.write("".join(f"line {i} of input {k}\n" for i in range(2000 * k)))
    lines += [f"  - name: copy_{k}", "    stage: test.copy", f"    inputs: {{in: in_{k}.txt}}",
              f"    output: copy/{k}.txt"]
for k in range(1, 7):
    lines += [f"  - name: sum_{k}", "    stage: test.checksum", f"    inputs: {{in: {{from: copy_{k}}}}}",
              f"    output: sum/{k}.txt"]
lines += ["  - name: bad", "    stage: test.throws", "    inputs: {in: {from: sum_6}}",
          "    output: bad.txt",
          "    kwargs: {message: \"<script>document.title='pwned'</script> & <b>friends</b>\"}"]
lines += ["  - name: after", "    stage: test.copy", "    inputs: {in: {from: bad}}",
          "    output: after.txt"]
open("pipeline.yaml", "w").write("\n".join(lines) + "\n")
EOF

export STAGEKIT_COST_LOG=$work/cost.jsonl
# First run: stores every output that succeeds; `bad` fails (exit 1).
rc=0
"$cli" run pipeline.yaml --stages "$stages" -j1 -o out1 --cache-dir cache -q || rc=$?
[[ $rc -eq 1 ]] || { echo "FAIL: the first run exited $rc, expected 1 (stage 'bad' fails)" >&2; exit 1; }
# Second run: input 6 changed, so copy_6 and sum_6 run again and the rest are cache hits.
echo "changed" >>in_6.txt
rc=0
"$cli" run pipeline.yaml --stages "$stages" -j1 -o out2 --cache-dir cache --resume -q \
  --report report.html --trace trace.json || rc=$?
[[ $rc -eq 1 ]] || { echo "FAIL: the second run exited $rc, expected 1" >&2; exit 1; }
[[ -s report.html ]] || { echo "FAIL: no report.html" >&2; exit 1; }

chrome=(timeout 60 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars
  --user-data-dir="$work/profile" --window-size=1280,1600)
"${chrome[@]}" --dump-dom "file://$work/report.html" >dom.html 2>chromium-dom.log ||
  { cat chromium-dom.log >&2; echo "FAIL: chromium --dump-dom failed" >&2; exit 1; }
"${chrome[@]}" --screenshot="$work/report.png" "file://$work/report.html" >chromium-shot.log 2>&1 ||
  { cat chromium-shot.log >&2; echo "FAIL: chromium --screenshot failed" >&2; exit 1; }

status=0
python3 "$here/check_report.py" dom.html report.png trace.json || status=$?
if [[ -n $keep ]]; then
  mkdir -p "$keep"
  cp report.html trace.json dom.html report.png "$keep/"
fi
exit $status
