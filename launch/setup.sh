#!/usr/bin/env bash
# Creates ./.venv, installs spt_jax's pinned dependencies (CPU) and the project itself
# (editable: `import spt_jax`, `python -m spt_jax.train` and the `spt-*` commands work from
# any directory). Idempotent: a second run with unchanged requirements installs nothing.
#
#   bash launch/setup.sh          # runtime set (train / evaluate / infer on CPU)
#   bash launch/setup.sh --dev    # + test and reference set (pytest, torch CPU, transformers)
#   bash launch/setup.sh --data   # + HF `datasets`, which T0's HF-hosted training sets need
#   bash launch/setup.sh --t5x    # + t5x (the T5X route, gin/t5x/); --dev includes it
#
# Options combine (--dev --data). t5x, airio and jestimator are not on the package index: they
# come from the wheel folder $SPT_T5X_WHEELS, else ../shared/wheels when it exists, else GitHub
# at the pinned commits below (each with --no-deps: their own requirements point at git URLs;
# their index dependencies are pinned in requirements-t5x.txt).
# Accelerators: after this, `.venv/bin/pip install -r requirements-tpu.txt` (TPU VMs) or
# `-r requirements-gpu.txt` (CUDA 12); launch/tpu_pod.sh and launch/gpu_slurm.sh do it for you.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
data=0
t5x=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1; t5x=1 ;;
    --data) data=1 ;;
    --t5x) t5x=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option '$arg' (known: --dev, --data, --t5x)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
reqs=(requirements.txt)
if [[ $dev == 1 ]]; then reqs+=(requirements-dev.txt); fi
if [[ $data == 1 ]]; then reqs+=(requirements-data.txt); fi
if [[ $t5x == 1 ]]; then reqs+=(requirements-t5x.txt); fi
# The T5X route's packages that are not on the index, at the commits the project is tested with.
t5x_github=(
  "t5x @ git+https://github.com/google-research/t5x@cc342d419ec3e3e9c4bf1df33c82330cafdc1e16"
  "airio @ git+https://github.com/google/airio@69897df7d9a427b947a9f7bb4164c7782b43e601"
  "jestimator @ git+https://github.com/google-research/jestimator@326824a477feef6d92e6f44175000907a72899ca"
)
t5x_wheels="${SPT_T5X_WHEELS:-}"
if [[ $t5x == 1 && -z $t5x_wheels && -d ../shared/wheels ]]; then t5x_wheels=../shared/wheels; fi

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
t5x_source=""
if [[ $t5x == 1 ]]; then
  if [[ -n $t5x_wheels ]]; then
    shopt -s nullglob
    t5x_source=("$t5x_wheels"/{t5x,airio,jestimator}-*.whl)
    shopt -u nullglob
    if [[ ${#t5x_source[@]} != 3 ]]; then
      echo "setup: $t5x_wheels must hold one wheel each of t5x, airio and jestimator" \
           "(found: ${t5x_source[*]:-none}); point SPT_T5X_WHEELS at such a folder, or unset it" >&2
      exit 2
    fi
  else
    t5x_source=("${t5x_github[@]}")
  fi
fi
stamp=".venv/.spt_installed_$( { cat "${reqs[@]}" pyproject.toml; echo "${t5x_source[*]}"; } \
  | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  req_args=()
  for r in "${reqs[@]}"; do req_args+=(-r "$r"); done
  "${pip[@]}" "${req_args[@]}"
  # promptsource 0.2.3 carries the real templates but declares Python < 3.10 and broken pins;
  # it needs only jinja2, pyyaml, pandas and pkg_resources (setuptools < 81) to render.
  "${pip[@]}" --no-deps --ignore-requires-python promptsource==0.2.3
  if [[ $t5x == 1 ]]; then
    # `pip check` then names three declared requirements that do not matter here: t5x's
    # tensorflow-cpu (the pinned tensorflow is the same library), airio's tfds-nightly
    # (tensorflow-datasets is pinned) and airio's grain==0.2.12 (t5x runs with grain 0.2.18).
    "${pip[@]}" --no-deps "${t5x_source[@]}"
  fi
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
