#!/usr/bin/env bash
# Creates ./.venv, installs spt_jax's pinned dependencies (CPU) and the project itself
# (editable: `import spt_jax`, `python -m spt_jax.train` and the `spt-*` commands work from
# any directory). Idempotent: a second run with unchanged requirements installs nothing.
#
#   bash launch/setup.sh          # runtime set (train / evaluate / infer on CPU)
#   bash launch/setup.sh --dev    # + test and reference set (pytest, torch CPU, transformers)
#   bash launch/setup.sh --data   # + HF `datasets`, which T0's HF-hosted training sets need
#
# Options combine (--dev --data). Accelerators: after this, `.venv/bin/pip install -r
# requirements-tpu.txt` (TPU VMs) or `-r requirements-gpu.txt` (CUDA 12);
# launch/tpu_pod.sh and launch/gpu_slurm.sh do it for you.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
data=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --data) data=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option '$arg' (known: --dev, --data)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
reqs=(requirements.txt)
if [[ $dev == 1 ]]; then reqs+=(requirements-dev.txt); fi
if [[ $data == 1 ]]; then reqs+=(requirements-data.txt); fi

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
stamp=".venv/.spt_installed_$(cat "${reqs[@]}" pyproject.toml | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  req_args=()
  for r in "${reqs[@]}"; do req_args+=(-r "$r"); done
  "${pip[@]}" "${req_args[@]}"
  # promptsource 0.2.3 carries the real templates but declares Python < 3.10 and broken pins;
  # it needs only jinja2, pyyaml, pandas and pkg_resources (setuptools < 81) to render.
  "${pip[@]}" --no-deps --ignore-requires-python promptsource==0.2.3
  # The project itself, editable, without touching the pinned set above.
  "${pip[@]}" --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
# The embedded sample tasks, pre-rendered and tokenized once (seqio cached-task format), so
# that runs on the sample mixture (runs/local.gin: USE_CACHED_TASKS = True) start in seconds.
# Skips tasks already cached; the folder name carries a fingerprint of the sample code.
# (A first run takes a few minutes; later runs only check, in seconds.)
# TensorFlow's load-time lines (CUDA probing on a CPU host, oneDNN notice) come before its
# log level applies; they are dropped here, anything else on stderr passes.
TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python -m spt_tasks.sample --write_cache --verbosity=-1 \
  2> >(grep -v -E 'absl::InitializeLog|cudart_stub\.cc|cuda_platform\.cc|port\.cc:[0-9]+\] oneDNN' >&2)
if [[ $dev == 1 ]] && ! command -v shellcheck >/dev/null 2>&1; then
  # Used by tests/test_launch.py; the test skips with a reason where it cannot be installed.
  { apt-get update -qq && apt-get install -y -qq shellcheck; } >/dev/null 2>&1 || \
    echo "setup: shellcheck not installed (tests that need it will skip)" >&2
fi
echo "setup: .venv ready (${reqs[*]})"
