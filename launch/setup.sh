#!/usr/bin/env bash
# Creates ./.venv and installs spt_jax's dependencies (CPU). Idempotent: a second run with
# unchanged requirements files installs nothing.
#
#   bash launch/setup.sh          # runtime set (train / evaluate / infer on CPU)
#   bash launch/setup.sh --dev    # + test and reference set (pytest, torch CPU, transformers)
#
# Accelerators: after this, `.venv/bin/pip install -r requirements-tpu.txt` (TPU VMs) or
# `-r requirements-gpu.txt` (CUDA 12); launch/tpu_pod.sh and launch/gpu_slurm.sh do it for you.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
if [[ "${1:-}" == "--dev" ]]; then dev=1; fi
python="${PYTHON:-python3}"
req=requirements.txt
if [[ $dev == 1 ]]; then req=requirements-dev.txt; fi

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
stamp=".venv/.spt_installed_$(cat requirements.txt "$req" | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
  # promptsource 0.2.3 carries the real templates but declares Python < 3.10 and broken pins;
  # it needs only jinja2, pyyaml, pandas and pkg_resources (setuptools < 81) to render.
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python \
    promptsource==0.2.3
  touch "$stamp"
fi
if [[ $dev == 1 ]] && ! command -v shellcheck >/dev/null 2>&1; then
  # Used by tests/test_launch.py; the test skips with a reason where it cannot be installed.
  { apt-get update -qq && apt-get install -y -qq shellcheck; } >/dev/null 2>&1 || \
    echo "setup: shellcheck not installed (tests that need it will skip)" >&2
fi
echo "setup: .venv ready ($req)"
