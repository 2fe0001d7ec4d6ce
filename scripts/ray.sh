#!/usr/bin/env bash
# Installs the pinned Ray (ray[default] + ray-cpp of the same version, from
# ray-requirements.txt) into the project-local virtual environment .venv, with
# the test-only packages of test-requirements.txt (moto's local S3 server).
# Does nothing when the pinned versions are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${STAGEKIT_VENV:-.venv}
python=${PYTHON:-python3}
want=$(sed -n 's/^ray-cpp==//p' ray-requirements.txt)
moto=$(sed -n 's/^moto\[server\]==//p' test-requirements.txt)
# STAGEKIT_RAY_ONLY=1: Ray alone (the tests' "stock node" environment, .venv-node).
requirements=(-r ray-requirements.txt -r test-requirements.txt)
check='print(m.version("ray"), m.version("ray-cpp"), m.version("moto"))'
expect="$want $want $moto"
if [[ ${STAGEKIT_RAY_ONLY:-0} == 1 ]]; then
  requirements=(-r ray-requirements.txt)
  check='print(m.version("ray"), m.version("ray-cpp"))'
  expect="$want $want"
fi
if [[ -x $venv/bin/python ]] &&
   [[ $("$venv/bin/python" -c "import importlib.metadata as m; $check" 2>/dev/null) == "$expect" ]]; then
  exit 0
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
  echo "stagekit: $python cannot create virtual environments; installing python3-venv" >&2
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv python3-pip >/dev/null
fi
echo "stagekit: installing Ray $want into $venv" >&2
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
"$venv/bin/python" -c 'import ray, os; assert os.path.exists(os.path.join(os.path.dirname(ray.__file__), "cpp", "default_worker")), "ray-cpp is missing"'
