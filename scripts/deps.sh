#!/usr/bin/env bash
# Installs the Debian packages stagekit needs to build, test and run its
# examples, if any are missing. Safe to run again: installs nothing when all
# are present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git clang-format
  nlohmann-json3-dev libyaml-cpp-dev libcli11-dev nettle-dev   # library dependencies
  libpcre2-dev libzip-dev libcurl4-openssl-dev patchelf        # ship and submit
  awscli                                                        # artifact sync
  libgtest-dev libgmock-dev libbenchmark-dev hyperfine jq       # tests and benchmarks
  fortunes                                                      # the word-count example's corpus
  chromium                                                      # the HTML report's browser test
  faketime libfaketime                                          # the audit's clock perturbation
  clang libclang-rt-14-dev                                      # libFuzzer targets (scripts/fuzz.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "stagekit: installing Debian packages: ${missing[*]}" >&2
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "stagekit: run as root or install sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
