"""Checkpoint discovery and restore, for every format: the one place that finds and reads one.

Formats (`FORMATS`): 'orbax' (spt_jax runs: `MODEL_DIR/checkpoints/<step>/{state,metadata}`,
written by `train_state.Checkpointer`), 'hf' (a transformers T5 folder) and 't5x' (a T5X
`checkpoint_<step>` directory, orbax or legacy msgpack, or a T5X model directory).

* Discovery: `step_dirs` (the finished `<step>` directories of a run, the one disk scan of
  them), `is_run_dir`, `step_of` (the step a directory's name states), `t5x_checkpoint_steps`,
  `detect_format` (the format a directory plainly holds) and `check_checkpoint` (a bad path or
  format setting fails before any model or data work, naming the gin macro to fix).
* Restore: `restore` places a checkpoint's parameters on a `runner.ModelSetup`'s mesh (the one
  restore path of train's initial checkpoint, evaluate and infer): it resolves the run / step,
  reads the format (`checkpoint_readers`), checks names and shapes against the model
  (`check_params_match`, `CheckpointMismatchError` naming every offending parameter), keeps the
  fresh value of parameters pretrained checkpoints lack (the SPT soft prompt and memory bank)
  and redraws sampled-vocabulary prompts from the imported embedding.

Resuming a run's full train state (optimizer, step, RNG) is `train_state.Checkpointer`'s, which
asks `step_dirs` what is on disk.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from absl import logging
import flax
import jax
import numpy as np

from spt_jax import checkpoint_readers as readers
from spt_jax import memory_health
from spt_jax import network

Params = dict[str, Any]
PathLike = str | os.PathLike

# The tree helpers and the readers every caller uses through this module.
flatten = readers.flatten
unflatten = readers.unflatten
load_hf_t5 = readers.load_hf_t5

# Parameters that pretrained checkpoints never hold: SPT's soft prompt and memory bank.
PROMPT_PARAM_REGEXES = (r'^encoder/soft_prompt/', r'^encoder/memory_bank/')


CheckpointMismatchError = readers.CheckpointMismatchError


# ----------------------------------------------------------------------------- discovery

FORMATS = ('hf', 't5x', 'orbax')
_FORMAT_HELP = ("'hf': a transformers T5 folder (config.json + model.safetensors or "
                "pytorch_model.bin); 't5x': a T5X checkpoint_<step> folder (orbax state/ as "
                "t5x.train writes it, or a legacy msgpack `checkpoint` file) or a T5X model dir "
                "(latest step); 'orbax': an spt_jax run (MODEL_DIR) or one of its "
                'checkpoints/<step> folders')
RUN_CHECKPOINTS_SUBDIR = 'checkpoints'
_T5X_STEP_DIR = re.compile(r'checkpoint_(\d+)')


def step_dirs(directory: PathLike) -> list[int]:
  """The steps of the finished `<step>` directories in a checkpoints `directory`, ascending.

  Read from disk: orbax's unfinished saves (`<step>.orbax-checkpoint-tmp-*`) do not count,
  and neither does a step whose asynchronous save is still in flight.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  directory = epath.Path(directory)
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if (
      directory.is_dir()) else []


def is_run_dir(path: PathLike) -> bool:
  """Whether `path` is an spt_jax train run directory (MODEL_DIR: it has `checkpoints/`)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return (epath.Path(path) / RUN_CHECKPOINTS_SUBDIR).is_dir()


def run_steps(run_dir: PathLike) -> list[int]:
  """The checkpointed steps of an spt_jax run directory, ascending ([] if none)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return step_dirs(epath.Path(run_dir) / RUN_CHECKPOINTS_SUBDIR)


def step_of(path: PathLike) -> int | None:
  """The step a checkpoint directory's name states (`1200`, `checkpoint_1200`), else None."""
  m = re.fullmatch(r'(?:checkpoint_)?(\d+)', pathlib.PurePath(os.fspath(path)).name)
  return int(m.group(1)) if m else None


def check_checkpoint(path: str | None, format: str,  # pylint: disable=redefined-builtin
                     path_macro: str = 'INITIAL_CHECKPOINT_PATH',
                     format_macro: str = 'INITIAL_CHECKPOINT_FORMAT',
                     scratch_hint: bool = True) -> None:
  """Fails fast, before any model or data work, on a bad checkpoint setting.

  Checks that the format is known, that the path is set and exists, and that the directory
  does not plainly hold another format than the one named (`detect_format`).

  Args:
    path: the checkpoint directory.
    format: 'hf' | 't5x' | 'orbax'.
    path_macro, format_macro: the gin macros the user set, named in the messages.
    scratch_hint: mention `PATH = None` (train from scratch) as the other fix.

  Raises:
    ValueError: unknown format, an empty path, or the directory holds another format.
    FileNotFoundError: the path does not exist.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  if format not in FORMATS:
    raise ValueError(f'{format_macro}={format!r} is not one of {FORMATS}: {_FORMAT_HELP}.')
  if not path:
    raise ValueError(f'{path_macro} is empty: set --gin.{path_macro}="\'/path\'" to an spt_jax '
                     'run directory (MODEL_DIR), an orbax step directory, an HF T5 folder or '
                     'a T5X checkpoint.')
  if not epath.Path(path).exists():
    raise FileNotFoundError(
        f'{path_macro}={path!r} does not exist. Point it at a checkpoint directory '
        f'({_FORMAT_HELP})' + (f' or set {path_macro} = None to train from scratch.'
                               if scratch_hint else '.'))
  detected = detect_format(path)
  if detected is not None and detected != format:
    raise ValueError(
        f'{path_macro}={path!r} holds a {detected!r} checkpoint '
        f'({FORMAT_MARKERS[detected]}) but {format_macro}={format!r}: set '
        f"--gin.{format_macro}=\"'{detected}'\".")


def _is_t5x_step_dir(path: pathlib.Path) -> bool:
  """A T5X `checkpoint_<step>` directory: legacy msgpack `checkpoint` or orbax `state/`."""
  return (path / 'checkpoint').is_file() or readers.is_t5x_orbax_state(path / 'state')


def t5x_checkpoint_steps(model_dir: PathLike) -> list[int]:
  """Steps of the complete `checkpoint_<step>` directories of a T5X model dir, ascending.

  Orbax's unfinished saves (`checkpoint_<step>.orbax-checkpoint-tmp-*`) do not count.
  """
  model_dir = pathlib.Path(model_dir)
  if not model_dir.is_dir():
    return []
  steps = []
  for child in model_dir.iterdir():
    m = _T5X_STEP_DIR.fullmatch(child.name)
    if m and child.is_dir() and _is_t5x_step_dir(child):
      steps.append(int(m.group(1)))
  return sorted(steps)


def _t5x_step_dir(path: pathlib.Path) -> pathlib.Path:
  """`path` (step dir, its `checkpoint` file or `state/`, or a model dir) -> the step dir."""
  if path.is_file():
    return path.parent
  if path.name == 'state' and readers.is_t5x_orbax_state(path):
    return path.parent
  if path.is_dir() and not _is_t5x_step_dir(path):
    steps = t5x_checkpoint_steps(path)
    if steps:
      step_dir = path / f'checkpoint_{steps[-1]}'
      logging.info('T5X model dir %s: reading its latest checkpoint, step %d.', path,
                   steps[-1])
      return step_dir
  return path


def _latest_orbax_step_dir(path: pathlib.Path) -> pathlib.Path:
  """`model_dir` or its `checkpoints/` -> the newest `<step>/` directory; else `path`."""
  for base in (path, path / RUN_CHECKPOINTS_SUBDIR):
    steps = step_dirs(base)
    if steps:
      return base / str(steps[-1])
  return path


# ----------------------------------------------------------------------------- reading


def load_t5x(path: PathLike, dtype: Any = np.float32) -> Params:
  """Loads the parameters of a T5X checkpoint (optimizer state ignored).

  Reads both layouts T5X writes into `<model_dir>/checkpoint_<step>/`:

  * orbax (what `python -m t5x.train` writes today): `state/` is an orbax PyTree checkpoint
    (OCDBT) of T5X's state dict `{'target': params, 'state': {'step', 'param_states'}}`; only
    `target` is restored (orbax partial restore), with tensorstore underneath.
  * legacy: a msgpack `checkpoint` file `{'version', 'optimizer': {'target', 'state'}}` whose
    small leaves are inline numpy arrays (flax.serialization ext types) and whose large leaves
    are tensorstore specs pointing to zarr arrays in sibling folders.

  Args:
    path: a `checkpoint_<step>` directory, its `checkpoint` file or `state/` directory, or a
      T5X model directory (its latest complete `checkpoint_<step>` is read).
    dtype: dtype of the returned floating arrays (T5X bfloat16 checkpoints become float32).

  Returns:
    Nested dict of numpy arrays (T5X parameter names).

  Raises:
    FileNotFoundError: no T5X checkpoint at `path` (the message says what was looked for).
    ValueError: a `checkpoint` file that is not msgpack, or a tree without parameters.
  """
  path = pathlib.Path(path)
  step_dir = _t5x_step_dir(path)
  if not _is_t5x_step_dir(step_dir):
    hint = ''
    if path.is_dir():
      steps = sorted(p.name for p in path.glob('checkpoint_*') if p.is_dir())
      if steps:
        hint = (f' (found {steps[:5]}, none of which holds either: an unfinished save? pass '
                'a complete checkpoint_<step> directory)')
    raise FileNotFoundError(
        f'No T5X checkpoint at {path}: expected a checkpoint_<step> directory holding an '
        'orbax state/ (what t5x.train writes) or a legacy msgpack `checkpoint` file, or a '
        f'model directory with such checkpoint_<step> directories{hint}. For spt_jax runs '
        "and other orbax trees use format 'orbax'.")
  return readers.read_t5x(step_dir, dtype)


def load_orbax_params(path: PathLike, item: str | None = None) -> Params:
  """Reads the `params` of an orbax checkpoint as host numpy arrays.

  Accepts a model directory or its `checkpoints/` directory (the newest step is used), a step
  directory of a `CheckpointManager` (with one sub-directory per item, e.g. `state/` as
  `spt_jax.train_state.Checkpointer` writes it), an item directory, or a directory written by a
  plain `PyTreeCheckpointer`/`StandardCheckpointer`. If the tree has a top-level `params` entry
  (a train state), only that subtree is read (orbax partial restore: the optimizer state is
  not loaded).

  Args:
    path: orbax checkpoint directory.
    item: item name inside a step directory; by default the first of `state`, `params`,
      `train_state`, `default` that exists, or the directory itself.
  """
  path = pathlib.Path(path).absolute()
  if not path.is_dir():
    raise FileNotFoundError(f'No orbax checkpoint directory at {path}.')
  path = _latest_orbax_step_dir(path)
  names = [item] if item else ['state', 'params', 'train_state', 'default']
  item_dir = next((path / n for n in names if (path / n).is_dir()), path)
  if item and item_dir == path:
    raise FileNotFoundError(f'Orbax checkpoint {path} has no item {item!r}; items: '
                            f'{sorted(p.name for p in path.iterdir() if p.is_dir())}.')
  return readers.restore_orbax_subtree(item_dir, 'params', required=False)


# ----------------------------------------------------------------------------- formats

# What `detect_format` looks for (also named in the errors of a wrong format setting).
FORMAT_MARKERS = {
    'hf': 'it has config.json',
    't5x': ('it has a msgpack `checkpoint` file or an orbax state/ without metadata/ (a T5X '
            'checkpoint_<step>), or checkpoint_<step>/ directories (a T5X model dir)'),
    'orbax': 'it has checkpoints/, or state/ and metadata/ as spt_jax writes them',
}


def detect_format(path: PathLike) -> str | None:
  """The format a checkpoint directory plainly holds: 'hf', 't5x', 'orbax' or None.

  Only unambiguous markers count (`FORMAT_MARKERS`); None means "cannot tell" (the loader of
  the configured format then reports what it misses), e.g. for a plain orbax PyTree
  directory.
  """
  path = pathlib.Path(path)
  if path.is_file():
    return 't5x' if path.name == 'checkpoint' else None
  if (path / 'config.json').is_file():
    return 'hf'
  if (path / 'checkpoint').is_file():
    return 't5x'
  if (path / 'checkpoints').is_dir() or ((path / 'state').is_dir()
                                         and (path / 'metadata').is_dir()):
    return 'orbax'
  if path.name == 'state' and readers.is_t5x_orbax_state(path) and path.parent.name.startswith(
      'checkpoint_'):
    return 't5x'
  if readers.is_t5x_orbax_state(path / 'state') or t5x_checkpoint_steps(path):
    return 't5x'
  return None


# ----------------------------------------------------------------------------- matching


def check_params_match(expected: Mapping[str, Any], found: Mapping[str, Any],
                       keep_init: Sequence[str] = ()) -> list[str]:
  """Checks that `found` has exactly the names and shapes of `expected`.

  Args:
    expected: the tree the model wants (arrays, `jax.ShapeDtypeStruct`s or boxed
      `nn.Partitioned` leaves), e.g. `variables['params']` or `jax.eval_shape(...)`.
    found: the tree read from a checkpoint.
    keep_init: regexes over '/'-joined paths of expected parameters that may be absent from
      the checkpoint (they keep their initial value), e.g. `PROMPT_PARAM_REGEXES`.

  Returns:
    The sorted paths that are absent from `found` but allowed by `keep_init`.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected or wrongly shaped parameter
      with its expected and found shape.
  """
  if 'params' in expected and len(expected) <= 3 and not any(
      k in expected for k in ('encoder', 'decoder', 'token_embedder')):
    raise ValueError("`expected` looks like a variables dict {'params': ...}; pass "
                     "variables['params'].")
  exp, got = flatten(expected), flatten(found)
  patterns = [re.compile(p) for p in keep_init]
  kept, problems = [], []
  for name in sorted(exp):
    if name not in got:
      if any(p.search(name) for p in patterns):
        kept.append(name)
      else:
        problems.append(f'{name}: missing from checkpoint (expected shape '
                        f'{readers.leaf_shape(exp[name])})')
    elif readers.leaf_shape(exp[name]) != readers.leaf_shape(got[name]):
      problems.append(f'{name}: expected shape {readers.leaf_shape(exp[name])}, found shape '
                      f'{readers.leaf_shape(got[name])}')
  for name in sorted(set(got) - set(exp)):
    problems.append(f'{name}: unexpected parameter in checkpoint (found shape '
                    f'{readers.leaf_shape(got[name])}; the model has no such parameter)')
  if problems:
    raise CheckpointMismatchError(
        f'Checkpoint does not match the model ({len(problems)} problem(s)); check that the '
        'model config (sizes, mlp_activations, logits_via_embedding) is the one the '
        'checkpoint was trained with:\n  ' + '\n  '.join(problems)
        + _embedding_hint(exp, got))
  return kept


def _embedding_hint(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str:
  """The gin fix for the commonest mismatch: vocabulary size or width of the embedding."""
  name = 'token_embedder/embedding'
  if name not in expected or name not in found:
    return ''
  (v_exp, d_exp) = readers.leaf_shape(expected[name])
  (v_got, d_got) = readers.leaf_shape(found[name])
  fixes = []
  if v_exp != v_got:
    fixes.append(f'network.T5Config.vocab_size = {v_got}  (the model has {v_exp}; the task '
                 "must then use the checkpoint's vocabulary)")
  if d_exp != d_got:
    fixes.append(f'network.T5Config.emb_dim = {d_got}  (the model has {d_exp})')
  if not fixes:
    return ''
  return '\nFrom the embedding table, the checkpoint wants:\n  ' + '\n  '.join(fixes)


# Fields that change what a checkpoint computes (not only its shapes); dropout and compute
# dtype are training choices and may differ from the checkpoint's.
_ARCH_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                'num_encoder_layers', 'num_decoder_layers', 'mlp_activations',
                'logits_via_embedding', 'relative_attention_num_buckets',
                'relative_attention_max_distance', 'layer_norm_epsilon')


def check_config_match(expected: network.T5Config, found: network.T5Config,
                       source: str = 'checkpoint') -> None:
  """Raises `CheckpointMismatchError` naming each architecture field that differs.

  Shapes alone cannot tell gated-GELU from gated-SiLU, or max_distance 128 from 64; this
  catches a model config that would run the checkpoint's weights with the wrong function.
  """
  diffs = [f'{f}: model has {getattr(expected, f)!r}, {source} has {getattr(found, f)!r} '
           f'-> network.T5Config.{f} = {getattr(found, f)!r}'
           for f in _ARCH_FIELDS if getattr(expected, f) != getattr(found, f)]
  if diffs:
    hint = ("\n(vocab_size: the task must then use the checkpoint's vocabulary.)"
            if expected.vocab_size != found.vocab_size else '')
    raise CheckpointMismatchError(
        f'Model config does not match the {source} config; set these fields in the model '
        'config (gin bindings, e.g. --gin.network.T5Config.emb_dim=512) to the '
        'checkpoint\'s values:\n  ' + '\n  '.join(diffs) + hint)


def restore_params(path: PathLike, format: str, expected_params: Mapping[str, Any],  # pylint: disable=redefined-builtin
                   keep_init: Sequence[str] = PROMPT_PARAM_REGEXES,
                   shardings: Any = None,
                   config: network.T5Config | None = None,
                   return_kept: bool = False) -> Params | tuple[Params, list[str]]:
  """Loads a checkpoint and fits it to the model's parameter tree.

  Args:
    path: checkpoint directory.
    format: 'hf' (transformers T5 dir), 't5x' (T5X checkpoint_<step> or model dir, orbax or
      legacy layout) or 'orbax'.
    expected_params: the model's params tree (values, ShapeDtypeStructs or boxed leaves).
    keep_init: regexes of parameters that may be missing from the checkpoint and keep the value
      in `expected_params` (default: SPT soft prompt and memory bank).
    shardings: optional tree of `jax.sharding.Sharding` like `expected_params` (unboxed); each
      restored leaf is placed with it.
    config: the model's `T5Config`; with format 'hf' it is checked against the checkpoint's
      config.json (activation, bias buckets, epsilon, ...), which shapes cannot reveal.
    return_kept: also return the sorted paths that kept their initial value.

  Returns:
    A tree shaped like `expected_params` (boxes kept, dtypes of `expected_params`) with the
    checkpoint's values, and the initial value for kept parameters; with `return_kept`,
    `(tree, kept_paths)`.

  Raises:
    ValueError: unknown format, or a kept parameter has no initial value (ShapeDtypeStruct).
    CheckpointMismatchError: names or shapes differ (see `check_params_match`).
  """
  if format == 'hf':
    hf_config, found = load_hf_t5(path)
    if config is not None:
      check_config_match(config, hf_config, source=f'{path}/config.json')
  elif format == 't5x':
    found = load_t5x(path)
  elif format == 'orbax':
    found = load_orbax_params(path)
  else:
    raise ValueError(f"Unknown checkpoint format {format!r}: use 'hf', 't5x' or 'orbax'.")
  kept = set(check_params_match(expected_params, found, keep_init))
  if kept:
    logging.info('Parameters not in %s keep their initial value: %s', path, sorted(kept))
  got = flatten(found)
  exp = flatten(expected_params)
  flat_shardings = flatten(shardings) if shardings is not None else {}
  out = {}
  for name, leaf in exp.items():
    init = readers.unbox(leaf)
    if name in kept:
      if isinstance(init, jax.ShapeDtypeStruct):
        raise ValueError(f'{name} is not in checkpoint {path} and must keep its initial value, '
                         'but expected_params holds only its shape: pass initialised params.')
      value = init
    else:
      value = np.asarray(got.pop(name), dtype=init.dtype)
    if name in flat_shardings:
      value = jax.device_put(value, flat_shardings[name])
    out[name] = leaf.replace_boxed(value) if isinstance(
        leaf, flax.core.meta.AxisMetadata) else value
  if return_kept:
    return unflatten(out), sorted(kept)
  return unflatten(out)


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `restore` read.

  Attributes:
    params: the parameters, placed with the setup's `param_shardings`.
    step: the checkpoint's step (0 when neither the run nor the directory name states one).
    kept: sorted paths the checkpoint did not hold; they keep their fresh (or redrawn) value.
  """
  params: Any
  step: int
  kept: tuple[str, ...] = ()


def _orbax_step_dir(path: str, step: int | None) -> tuple[str, int]:
  """An orbax run directory (+ step) or step directory -> (step directory, step)."""
  if not is_run_dir(path):   # a step directory (or a plain orbax tree): its name's step
    return path, step_of(path) or 0
  steps = run_steps(path)
  if not steps:
    raise FileNotFoundError(f'{path}/{RUN_CHECKPOINTS_SUBDIR} holds no step directory: train '
                            'first, or point CHECKPOINT_PATH at a checkpoint.')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f'CHECKPOINT_STEP={step} is not in {path}/{RUN_CHECKPOINTS_SUBDIR} '
                            f'(steps: {steps}).')
  logging.info('Restoring step %d of run %s', step, path)
  return os.path.join(path, RUN_CHECKPOINTS_SUBDIR, str(step)), step


def restore(setup: Any, path: str, format: str = 'orbax', *,  # pylint: disable=redefined-builtin
            step: int | None = None, params: Any = None, rng: jax.Array | None = None,
            reinit_prompts: bool = True) -> Restored:
  """A checkpoint's parameters fitted to a model and placed on its mesh: the one restore path.

  Train (its initial checkpoint), evaluate and infer all read checkpoints through it.

  Args:
    setup: a `runner.ModelSetup` (the model, its abstract parameters and their shardings).
    path: an spt_jax run directory (MODEL_DIR) or one of its `checkpoints/<step>` directories
      ('orbax'), a transformers T5 folder ('hf'), a T5X `checkpoint_<step>` or model directory
      ('t5x').
    format: one of `FORMATS`.
    step: with an orbax run directory, which checkpoint (None: the latest).
    params: freshly initialised parameters: the checkpoint is restored over them, and those
      it lacks (the SPT soft prompt and memory bank of a pretrained T5, or of a run of a
      plain T5) keep their value. None: an 'orbax' checkpoint must hold every parameter of
      the model; for 'hf' / 't5x' fresh parameters are drawn from `rng`.
    rng: the key of the redrawn prompts (with `params`), or of the fresh parameters and the
      redrawn prompts (without); default `PRNGKey(0)`.
    reinit_prompts: after an 'hf' / 't5x' import, redraw the `sampled_vocab` prompts / memory
      the checkpoint lacks from the *pretrained* embedding
      (`memory_health.init_prompts_from_embedding`); prompt parameters the checkpoint holds (a T5X
      run of this network, gin/t5x/) keep its values.

  Raises:
    FileNotFoundError: no checkpoint there (or not that step).
    ValueError: unknown format, or the directory holds another format.
    CheckpointMismatchError: a parameter is missing or its shape differs, or (format 'hf')
      the model config differs from config.json (the message names it).
  """
  path = os.fspath(path)
  if format not in FORMATS:
    raise ValueError(f"Unknown checkpoint format {format!r}: use one of {FORMATS}.")
  if format == 'orbax':
    path, step = _orbax_step_dir(path, step)
  else:
    step = step_of(path) or 0
  rng = jax.random.PRNGKey(0) if rng is None else rng
  if params is None and format == 'orbax':
    found = load_orbax_params(path)
    check_params_match(setup.abstract_params, found)
    placed = jax.tree.map(lambda a, s: jax.device_put(np.asarray(a), s), found,
                          setup.param_shardings)
    return Restored(params=placed, step=int(step))
  if params is None:
    init_rng, rng = jax.random.split(rng)
    params = setup.init_params(init_rng)
  # The model config goes along so that an 'hf' import also checks what shapes cannot
  # show (activation, relative-position buckets, epsilon) against config.json.
  restored, kept = restore_params(path, format, params, shardings=setup.param_shardings,
                                  config=setup.model.network.config, return_kept=True)
  prompt_config = setup.model.prompt_config
  if (reinit_prompts and format != 'orbax' and prompt_config is not None
      and prompt_config.prefix_length and kept):
    # Only prompt parameters the checkpoint lacks are redrawn: a T5X checkpoint of this
    # very network (gin/t5x/) carries trained soft prompt and memory, which are kept.
    from_checkpoint = {
        name: leaf for name, leaf in flatten(restored).items()
        if name not in kept and any(re.search(p, name) for p in PROMPT_PARAM_REGEXES)}
    restored = memory_health.init_prompts_from_embedding(
        restored, restored['token_embedder']['embedding'], prompt_config, rng)
    if from_checkpoint:
      logging.info('Prompt parameters kept from %s: %s', path, sorted(from_checkpoint))
      flat = flatten(restored)
      flat.update(from_checkpoint)
      restored = unflatten(flat)
  restored = jax.tree.map(jax.device_put, restored, setup.param_shardings)
  return Restored(params=restored, step=int(step), kept=tuple(kept))


def iter_params(tree: Mapping[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
  """(path, shape) of every leaf, sorted; handy for logging a loaded tree."""
  for name, leaf in sorted(flatten(tree).items()):
    yield name, readers.leaf_shape(leaf)


__all__: Iterable[str] = (
    'CheckpointMismatchError', 'FORMATS', 'FORMAT_MARKERS', 'PROMPT_PARAM_REGEXES', 'Restored',
    'check_checkpoint', 'check_config_match', 'check_params_match', 'detect_format',
    'is_run_dir', 'iter_params', 'load_hf_t5', 'load_orbax_params', 'load_t5x', 'restore',
    'restore_params', 'run_steps', 'step_dirs', 'step_of', 't5x_checkpoint_steps')
