"""Legible logs for the command-line entry points: the run's own lines, not library noise.

A CPU run of `python -m spt_jax.train` used to print hundreds of lines a user cannot act on:
gin's error-level "Path not found" for every include it tries on a search path before it
finds the file, TensorFlow's C++ warnings (`cache_dataset_ops.cc` once per partially read
dataset, CUDA / TPU probing on a machine without them), and INFO chatter of seqio (a
mixing-rate table line per task), jax, orbax and tensorstore. `quiet_libraries()` (called first thing by every entry point's `main`) drops
exactly those; warnings and errors from everything else, and the project's own INFO lines,
stay.
"""
from __future__ import annotations

import contextlib
import logging as py_logging
import os
import sys

from absl import logging

# INFO lines of these packages are internal progress (warnings and errors stay): seqio's
# per-task mixing-rate tables and "Adding task" lines, jax's backend probing ("Unable to
# initialize backend 'tpu'" on a CPU host), orbax / tensorstore / gin bookkeeping.
_CHATTY_PACKAGES = tuple(f'{os.sep}{name}{os.sep}' for name in (
    'orbax', 'tensorstore', 'gin', 'seqio', 'jax', 'absl'))
# gin's resource reader logs "Path not found" at ERROR for each search-path miss while it
# looks for an include; the include is then found elsewhere (or gin raises its own error).
_GIN_RESOURCE_READER = f'{os.sep}gin{os.sep}resource_reader.py'


class _LibraryNoiseFilter(py_logging.Filter):
  """Handler filter dropping the records described in the module docstring."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    path = record.pathname or ''
    if path.startswith(_OWN_PREFIXES):
      return True
    if path.endswith(_GIN_RESOURCE_READER):
      return False
    if f'{os.sep}orbax{os.sep}' in path and record.getMessage().startswith(
        'Metadata file does not exist'):
      return False  # restoring a checkpoint whose item has no optional metadata file
    if record.levelno < py_logging.WARNING and any(p in path for p in _CHATTY_PACKAGES):
      return False
    return True


_FILTER = _LibraryNoiseFilter()
# The project's own modules are never filtered, whatever folder the checkout sits in (a
# checkout under `.../jax/...` must not look like the jax package).
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_PREFIXES = tuple(os.path.join(_PROJECT_ROOT, d) + os.sep
                      for d in ('spt_jax', 'spt_tasks', 'benchmarks'))


@contextlib.contextmanager
def _native_stderr_silenced():
  """Points file descriptor 2 at /dev/null (what C++ libraries write to) for the block."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def quiet_libraries() -> None:
  """Silences library noise for this process (idempotent).

  Must run before TensorFlow is imported: TensorFlow's INFO/WARNING lines (level 2) are
  dropped and its load-time probing lines silenced, unless the user set
  `TF_CPP_MIN_LOG_LEVEL` (then nothing of TensorFlow's is hidden); its later errors print.
  TensorFlow is also kept off GPUs (it only runs the seqio input pipeline).
  """
  import spt_jax  # pylint: disable=g-import-not-at-top
  user_set_tf_level = spt_jax.USER_TF_CPP_MIN_LOG_LEVEL is not None
  if not user_set_tf_level:  # (some libraries set their own default on import)
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
  if not user_set_tf_level and 'tensorflow' not in sys.modules:
    # TensorFlow's C++ lines printed while it loads (oneDNN notice, CUDA stub and cuInit
    # probing on a machine without a GPU) come before its log level applies; an import
    # error still raises (and prints) as usual once stderr is back.
    with _native_stderr_silenced():
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      # TensorFlow only feeds the input pipeline: keep it off any GPU (JAX owns the
      # accelerators, as in T5X). Listing devices here also runs its CUDA probing quietly.
      tf.config.set_visible_devices([], 'GPU')
  handler = logging.get_absl_handler()
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
