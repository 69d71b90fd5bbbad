"""The command line of the gin entry points: training, evaluation, inference.

`python -m spt_jax.train`, `python -m spt_jax.evaluate` and `python -m spt_jax.infer` (and
the console scripts `spt-train`, `spt-evaluate`, `spt-infer`) run `train_run`,
`evaluate_run` and `infer_run` here. What they share lives here too: the absl flags
(`--gin_file`, `--gin_bindings`, `--gin_search_paths`, `--seqio_additional_cache_dirs`,
`--compilation_cache_dir`), T5X's `--gin.NAME=VALUE` spelling (`rewrite_gin_args`), gin
parsing (`parse_gin`), `jax.distributed` initialisation and JAX's persistent compilation
cache.

This is the one module of spt_jax, with the registry `spt_jax.gin_configurables`, that
knows gin: it imports the registry, so the configurables are registered once per process
(by Python's module cache), whichever way the program was started. The library modules
(train, evaluate, infer, runner, ...) import neither.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import gin
import jax
from absl import app
from absl import flags
from absl import logging
from etils import epath

from spt_jax import gin_configurables
from spt_jax import logs
from spt_jax import results as results_lib
from spt_jax import runner

GIN_FILE = flags.DEFINE_multi_string(
    'gin_file', [], 'Gin config files (searched in --gin_search_paths).')
GIN_BINDINGS = flags.DEFINE_multi_string(
    'gin_bindings', [], 'Gin bindings; T5X-style `--gin.NAME=VALUE` also works.')
GIN_SEARCH_PATHS = flags.DEFINE_list(
    'gin_search_paths', ['gin'], 'Directories searched for gin files and their includes.')

SEQIO_CACHE_DIRS = flags.DEFINE_list(
    'seqio_additional_cache_dirs', [],
    'Directories holding seqio-cached tasks (read with USE_CACHED_TASKS = True), e.g. written '
    'by `python -m spt_tasks.cache`; as T5X\'s flag of the same name.')

COMPILATION_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', '~/.cache/spt_jax/jax_compilation',
    "JAX's persistent compilation cache: a second run of the same configuration loads its "
    "compiled programs instead of compiling them again. '' turns it off; a JAX_COMPILATION_"
    'CACHE_DIR environment variable takes precedence. Local disk or gs:// (shared by hosts).')


# ------------------------------------------------------------------------------------------
# Gin.
# ------------------------------------------------------------------------------------------
_GIN_FLAG = re.compile(r'^--gin\.([^=]+)=(.*)$', re.DOTALL)


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns T5X-style `--gin.NAME=VALUE` flags into `--gin_bindings=NAME = VALUE`."""
  out = []
  for arg in argv:
    m = _GIN_FLAG.match(arg)
    out.append(f'--gin_bindings={m.group(1)} = {m.group(2)}' if m else arg)
  return out


def _guard_gin_package_reader() -> None:
  """Makes gin's "is it a file inside a Python package?" check answer False, not crash.

  For an include such as `runs/train.gin` not found relative to the working directory, gin
  asks whether `runs` is an importable package holding the file. A plain folder of that name
  in the working directory (`runs/` is where local runs write) is a namespace package with
  no origin, and gin's check then raises TypeError instead of moving on to the next search
  path. The guarded check treats any such failure as "not there".
  """
  from gin import config as gin_config  # pylint: disable=g-import-not-at-top
  from gin import resource_reader  # pylint: disable=g-import-not-at-top
  readers = gin_config._FILE_READERS  # pylint: disable=protected-access

  def guarded(path: str) -> bool:
    try:
      return resource_reader.system_path_file_exists(path)
    except Exception:  # pylint: disable=broad-except  # a miss, whatever the reason
      return False

  guarded.spt_guarded = True
  for i, (reader, exists) in enumerate(readers):
    if exists is resource_reader.system_path_file_exists:
      readers[i] = (reader, guarded)


def parse_gin(gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
              gin_search_paths: Sequence[str] = ('gin',), finalize: bool = True) -> None:
  """Parses gin files and bindings (the library's configurables are registered: see above).

  Search paths are tried relative to the working directory and to the repository root, so
  `--gin_search_paths=gin` works from anywhere inside a checkout.

  Raises:
    ValueError: for an unknown configurable or parameter, naming it (gin's own message) and
      the fix.
  """
  _guard_gin_package_reader()
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for path in gin_search_paths:
    for candidate in (path, os.path.join(repo_root, path)):
      if os.path.isdir(candidate):
        gin.add_config_file_search_path(os.path.abspath(candidate))
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings),
                                        finalize_config=finalize)
  except (ValueError, KeyError) as e:
    raise ValueError(
        f'Gin configuration error: {e}\nCheck the spelling of the binding (gin lists '
        'configurables as module.name.parameter, e.g. train.train_steps, or a MACRO such as '
        'BATCH_SIZE) and that its module is registered by spt_jax/gin_configurables.py or '
        'spt_tasks/gin_configurables.py, or imported by an `import` line of the gin file.'
    ) from e


def _set_up(argv: Sequence[str], finalize: bool) -> None:
  """Flags, logging, compilation cache, gin, seqio cache dirs and `jax.distributed`."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logs.quiet_libraries()
  runner.enable_compilation_cache(COMPILATION_CACHE_DIR.value)
  parse_gin(GIN_FILE.value, GIN_BINDINGS.value, GIN_SEARCH_PATHS.value, finalize=finalize)
  runner.add_seqio_cache_dirs(SEQIO_CACHE_DIRS.value)
  gin_configurables.initialize_distributed()


# ------------------------------------------------------------------------------------------
# The entry points.
# ------------------------------------------------------------------------------------------
def train_main(argv: Sequence[str]) -> None:
  """`python -m spt_jax.train`: the gin-configured `train.train`."""
  _set_up(argv, finalize=True)
  result = gin_configurables.train()
  if jax.process_index() == 0:
    epath.Path(result['model_dir'], 'config.gin').write_text(gin.operative_config_str())
  logging.info('Done: step %d. Checkpoints: %s/checkpoints  Summaries: %s', result['step'],
               result['model_dir'], result['model_dir'])


def evaluate_main(argv: Sequence[str]) -> None:
  """`python -m spt_jax.evaluate`: the gin-configured `evaluate.evaluate`."""
  # Not finalized: the training gin files passed for the model config leave train-only
  # macros (MODEL_DIR, ...) %gin.REQUIRED, which evaluation never reads; this entry point's
  # own required values are still checked when it is called.
  _set_up(argv, finalize=False)
  result = gin_configurables.evaluate()
  if jax.process_index() == 0:
    out = epath.Path(result['output_dir'])
    out.mkdir(parents=True, exist_ok=True)
    (out / 'config.gin').write_text(gin.operative_config_str())
    results_json = out / results_lib.RESULTS_JSON
    if results_json.exists():
      table = results_lib.summary_table(results_lib.load_results(results_json))
      logging.info('Held-out results (step %d):\n%s', result['step'], table)
  logging.info('Done: step %d. Results: %s/results.md', result['step'], result['output_dir'])


def infer_main(argv: Sequence[str]) -> None:
  """`python -m spt_jax.infer`: the gin-configured `infer.infer`."""
  # Not finalized, as evaluation (see evaluate_main).
  _set_up(argv, finalize=False)
  result = gin_configurables.infer()
  logging.info('Done: %d predictions in %s', result['num_predictions'], result['output_file'])


def _run(main) -> None:
  app.run(main, argv=rewrite_gin_args(sys.argv))


def train_run() -> None:
  """Console entry point `spt-train`: rewrites `--gin.X=Y` flags, then `app.run`."""
  _run(train_main)


def evaluate_run() -> None:
  """Console entry point `spt-evaluate`: rewrites `--gin.X=Y` flags, then `app.run`."""
  _run(evaluate_main)


def infer_run() -> None:
  """Console entry point `spt-infer`: rewrites `--gin.X=Y` flags, then `app.run`."""
  _run(infer_main)
