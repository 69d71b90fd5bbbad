#!/usr/bin/env bash
# One GPU, one run (<= 8 minutes): T5.1.1-large bf16 train-step MFU, SPT overhead, retrieval at
# M = 1M vs matmul and scoring throughput, printed as one table (benchmarks/device_check.py).
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/device_check.sh --smoke    # anywhere: the same code, tiny model, CPU
#
# The GPU machine needs jax with CUDA, flax, optax, orbax-checkpoint, etils and gin-config;
# none of the data stack (seqio, TensorFlow) is imported. Packages it lacks can be put as
# wheels in .whl/ (pip download --no-deps ... -d .whl gin-config==0.5.0): they are installed
# into /tmp/site first. Exit status: that of the Python script; 124 past 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if [ "${1:-}" = "--smoke" ]; then export JAX_PLATFORMS=cpu; fi
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
exec timeout 480 "$py" benchmarks/device_check.py "$@"
