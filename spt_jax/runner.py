"""Set-up shared by the entry points (train.py, evaluate.py, infer.py).

Everything an entry point needs before its loop: `jax.distributed` initialisation, the
device mesh and partitioning rules, model construction, parameter initialisation onto the
mesh (checkpoints: `spt_jax.checkpoints`), task look-up with helpful errors, JAX's
compilation cache and the seqio input pipeline producing host-local numpy batches. Gin
parsing and the flags are the command line's (`spt_jax.cli`); this module knows nothing of
gin.

An evaluation entry point reuses it like this::

  cli.parse_gin(gin_files, gin_bindings, gin_search_paths)   # the command line, if gin
  runner.initialize_distributed()
  setup = runner.ModelSetup.create(model, task_feature_lengths, mesh=partitioning.create_mesh())
  params = checkpoints.restore(setup, model_dir).params   # latest checkpoint of a train run
  with setup.activate():
    scores = jax.jit(model.score_batch, ...)(params, batch)
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from spt_jax import models as models_lib
from spt_jax import network as network_lib
from spt_jax import partitioning
from spt_jax import prompts as prompts_lib

# Programs that compile faster than this are not worth a cache entry (JAX's default is 1 s,
# which would leave out most of a small model's programs: dozens of 0.2-1 s compiles).
_MIN_CACHED_COMPILE_SECS = 0.2


# ------------------------------------------------------------------------------------------
# Multi-host.
# ------------------------------------------------------------------------------------------
def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           cpu_collectives: str = 'gloo') -> bool:
  """Starts `jax.distributed` when the job spans several processes; returns whether it did.

  Detection order: explicit arguments; the environment variables `JAX_COORDINATOR_ADDRESS`,
  `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (set them on every process); SLURM with more than
  one task (`SLURM_NTASKS`); a multi-worker Cloud TPU slice (`TPU_WORKER_HOSTNAMES` or
  `MEGASCALE_COORDINATOR_ADDRESS`), where jax finds the coordinator itself. A single process
  needs nothing. On CPU the collectives backend is set to `cpu_collectives` (gloo).
  """
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and env.get('JAX_NUM_PROCESSES'):
    num_processes = int(env['JAX_NUM_PROCESSES'])
  if process_id is None and env.get('JAX_PROCESS_ID'):
    process_id = int(env['JAX_PROCESS_ID'])
  kwargs = {}
  auto_detect_hint = None  # set when jax's own cluster detection is to find the job
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError('JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES / JAX_PROCESS_ID '
                       'are not: set all three on every process.')
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  elif int(env.get('SLURM_NTASKS', '1')) > 1:
    # jax's SLURM cluster detection reads the SLURM_* variables.
    auto_detect_hint = (
        f"SLURM_NTASKS={env['SLURM_NTASKS']}, but jax's SLURM detection needs all of "
        'SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID '
        '(set by srun for each task of a job step)')
  elif len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1 or env.get(
      'MEGASCALE_COORDINATOR_ADDRESS'):
    # jax's Cloud TPU detection.
    auto_detect_hint = (
        "TPU_WORKER_HOSTNAMES / MEGASCALE_COORDINATOR_ADDRESS are set, but jax's Cloud TPU "
        'detection needs a TPU VM (libtpu and TPU chips; GKE: also TPU_WORKER_ID, GCE: the '
        'metadata server)')
  else:
    return False
  if cpu_collectives and (env.get('JAX_PLATFORMS', '') in ('cpu',) or coordinator_address):
    try:
      jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Could not set CPU collectives to %s: %s', cpu_collectives, e)
  logging.info('jax.distributed.initialize(%s)', kwargs)
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:
    if auto_detect_hint is None:
      raise
    # jax found no cluster and says only e.g. 'coordinator_address should be defined.'
    raise ValueError(
        f'Multi-process job: {auto_detect_hint}; jax.distributed.initialize() found no '
        f'cluster ({e}). '
        'Set JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and '
        'JAX_PROCESS_ID on every process instead.') from e
  logging.info('Process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# ------------------------------------------------------------------------------------------
# Model.
# ------------------------------------------------------------------------------------------
def create_model(config: network_lib.T5Config | None = None,
                 prompt_config: prompts_lib.PromptConfig | None = None,
                 z_loss: float = 1e-4, label_smoothing: float = 0.0,
                 loss_normalizing_factor: float | str | None = None
                 ) -> models_lib.EncoderDecoderModel:
  """`EncoderDecoderModel` around `Transformer(config, PromptPrefix(prompt_config))`.

  gin: `runner.create_model`; `prompt_config=None` is plain T5 (no prefix).
  """
  network = network_lib.Transformer(config or network_lib.T5Config(),
                                    prefix=prompts_lib.prompt_prefix(prompt_config))
  return models_lib.EncoderDecoderModel(network, z_loss=z_loss, label_smoothing=label_smoothing,
                                        loss_normalizing_factor=loss_normalizing_factor)


def dummy_batch(task_feature_lengths: Mapping[str, int], batch_size: int = 1) -> dict[str, Any]:
  """Zero batch with the feature converter's shapes (for init / shape inference)."""
  t_in, t_out = int(task_feature_lengths['inputs']), int(task_feature_lengths['targets'])
  return {
      'encoder_input_tokens': np.ones((batch_size, t_in), np.int32),
      'decoder_input_tokens': np.ones((batch_size, t_out), np.int32),
      'decoder_target_tokens': np.ones((batch_size, t_out), np.int32),
      'decoder_loss_weights': np.ones((batch_size, t_out), np.float32),
  }


def _params_only(variables):
  return variables['params']


def check_vocabulary(mixture_or_task_name: str, vocab_size: int,
                     task_macro: str = 'MIXTURE_OR_TASK_NAME') -> None:
  """Fails when the task's vocabulary has more ids than the model's embedding has rows.

  Ids beyond the table would not fail anywhere: the embedding lookup clamps them, so a T5
  vocabulary (32,100 ids) fed to the tiny model (vocab_size 1152) trains on garbage. A task
  vocabulary that is smaller is normal (T5 pads 32,100 to 32,128).

  Raises:
    ValueError: naming both sizes and the two fixes.
  """
  task = get_mixture_or_task(mixture_or_task_name)
  for feature_name, feature in sorted(task.output_features.items()):
    size = int(feature.vocabulary.vocab_size)
    if size > vocab_size:
      raise ValueError(
          f'{task_macro}={mixture_or_task_name!r}: the vocabulary of its {feature_name!r} '
          f'feature has {size} ids but the model has vocab_size={vocab_size}, so ids >= '
          f'{vocab_size} would be silently clamped by the embedding lookup. Either set '
          f'network.T5Config.vocab_size to at least {size} (T5 vocabularies: 32128; it must '
          'match a pretrained checkpoint\'s), or use a task whose vocabulary the model was '
          'built for (the sample mixtures take another vocabulary through '
          'gin/runs/sample_vocabulary.gin).')


def _model_state_only(variables):
  """Non-parameter collections that persist across steps (sown outputs excluded)."""
  return {k: v for k, v in variables.items()
          if k in (prompts_lib.MEMORY_STATS_COLLECTION,)}


@dataclasses.dataclass
class ModelSetup:
  """A model placed on a mesh: logical specs, parameter shardings, init and import.

  Attributes:
    model: the `EncoderDecoderModel`.
    mesh: the `('data', 'model')` mesh.
    rules: logical axis rules.
    task_feature_lengths: `{'inputs': T, 'targets': L}`.
    boxed_abstract_params: `jax.eval_shape` of init, `nn.Partitioned` leaves (logical names).
    abstract_params: unboxed `ShapeDtypeStruct`s.
    param_shardings: `NamedSharding` per parameter (unboxed structure).
    abstract_model_state: unboxed `ShapeDtypeStruct`s of the non-parameter state the
      train step carries (`TrainState.model_state`; {} for most models).
    model_state_shardings: `NamedSharding`s of that state (logical axes as declared).
  """
  model: models_lib.EncoderDecoderModel
  mesh: jax.sharding.Mesh
  rules: tuple[tuple[str, str | None], ...]
  task_feature_lengths: dict[str, int]
  boxed_abstract_params: Any
  abstract_params: Any
  param_shardings: Any
  abstract_model_state: Any = dataclasses.field(default_factory=dict)
  model_state_shardings: Any = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, model: models_lib.EncoderDecoderModel, task_feature_lengths: Mapping[str, int],
             mesh: jax.sharding.Mesh | None = None,
             rules: Sequence[tuple[str, str | None]] = partitioning.LOGICAL_AXIS_RULES
             ) -> 'ModelSetup':
    mesh = mesh if mesh is not None else partitioning.create_mesh()
    rules = tuple(rules)
    model.validate_features(task_feature_lengths)
    batch = dummy_batch(task_feature_lengths)
    with partitioning.activate(mesh, rules):
      variables = jax.eval_shape(
          lambda r: model.network.init(
              r, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
              batch['decoder_target_tokens'], enable_dropout=False),
          jax.random.PRNGKey(0))
    boxed = _params_only(variables)
    boxed_state = _model_state_only(variables)
    shardings = partitioning.param_shardings(boxed, mesh, rules)
    state_shardings = (partitioning.param_shardings(boxed_state, mesh, rules)
                       if boxed_state else {})
    return cls(model=model, mesh=mesh, rules=rules,
               task_feature_lengths=dict(task_feature_lengths),
               boxed_abstract_params=boxed, abstract_params=nn.unbox(boxed),
               param_shardings=shardings, abstract_model_state=nn.unbox(boxed_state),
               model_state_shardings=state_shardings)

  def activate(self):
    """Mesh + rules context for tracing / running jitted model code."""
    return partitioning.activate(self.mesh, self.rules)

  def _init_collections(self, select, shardings, rng: jax.Array) -> Any:
    """`select(network.init(...))` on a dummy batch, created directly with `shardings`."""
    batch = dummy_batch(self.task_feature_lengths)
    net = self.model.network

    def init(r):
      return nn.unbox(select(net.init(
          r, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
          batch['decoder_target_tokens'], enable_dropout=False)))

    with self.activate():
      return jax.jit(init, out_shardings=shardings)(rng)

  def init_params(self, rng: jax.Array) -> Any:
    """Freshly initialised parameters, created directly with their shardings."""
    return self._init_collections(_params_only, self.param_shardings, rng)

  def init_model_state(self) -> Any:
    """Initial non-parameter state (`TrainState.model_state`), sharded; {} when none."""
    if not self.abstract_model_state:
      return {}
    return self._init_collections(_model_state_only, self.model_state_shardings,
                                  jax.random.PRNGKey(0))

  def retrieval_queries(self, params: Any, encoder_input_tokens: Any) -> Any:
    """[B, d] retrieval queries of a global batch of inputs (`model.retrieval_query`)."""
    with self.activate():
      return jax.jit(self.model.retrieval_query)(params, encoder_input_tokens)


# ------------------------------------------------------------------------------------------
# Data.
# ------------------------------------------------------------------------------------------
def get_mixture_or_task(name: str):
  """`seqio.get_mixture_or_task` with an error listing the closest registered names."""
  import seqio  # pylint: disable=g-import-not-at-top
  names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name not in names:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    hint = f'closest registered names: {close}' if close else (
        f'{len(names)} registered, e.g. {names[:5]}')
    raise ValueError(
        f'Unknown task or mixture {name!r} ({hint}). Check MIXTURE_OR_TASK_NAME and that its '
        'registry module is imported (an `import spt_tasks.sample` line in the gin file).')
  return seqio.get_mixture_or_task(name)


def enable_compilation_cache(directory: str) -> str | None:
  """Turns on JAX's persistent compilation cache in `directory` (see --compilation_cache_dir).

  The cache key covers the program, its shardings, the compile options, the backend and
  the JAX/XLA versions, so an entry is only reused where it is the same compilation.

  Returns:
    The directory in use, or None when the cache is off.
  """
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    directory = os.environ['JAX_COMPILATION_CACHE_DIR']
  if not directory:
    return None
  from spt_jax import paths  # pylint: disable=g-import-not-at-top
  directory = paths.resolve(os.path.expanduser(directory))
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', _MIN_CACHED_COMPILE_SECS)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def add_seqio_cache_dirs(directories: Sequence[str]) -> None:
  """Adds cache directories (`--seqio_additional_cache_dirs`) to seqio's search list."""
  if directories:
    import seqio  # pylint: disable=g-import-not-at-top
    from spt_jax import paths  # pylint: disable=g-import-not-at-top
    seqio.add_global_cache_dirs([paths.resolve(d) for d in directories])


def check_cached(mixture_or_task_name: str) -> None:
  """Raises a clear error when `use_cached=True` but some sub-task has no offline cache."""
  import seqio  # pylint: disable=g-import-not-at-top
  provider = get_mixture_or_task(mixture_or_task_name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  uncacheable = [t.name for t in tasks if not t.supports_caching]
  if uncacheable:
    raise ValueError(
        f'USE_CACHED_TASKS=True but {len(uncacheable)} of the {len(tasks)} tasks of '
        f'{mixture_or_task_name!r} cannot be read from a cache (no '
        f'seqio.CacheDatasetPlaceholder, e.g. {uncacheable[:3]}; sample tasks re-registered '
        'with another vocabulary are such tasks). Set USE_CACHED_TASKS = False.')
  missing = [t.name for t in tasks if not t.cache_dir]
  if missing:
    raise ValueError(
        f'USE_CACHED_TASKS=True but {len(missing)} of the {len(tasks)} tasks of '
        f'{mixture_or_task_name!r} have no offline cache (e.g. {missing[:3]}; searched '
        f'{seqio.utils.get_global_cache_dirs()}). Build it: for the embedded sample tasks '
        '`python -m spt_tasks.sample --write_cache` (launch/setup.sh runs it); for other '
        'tasks `python -m spt_tasks.cache --module=REGISTRY --tasks=REGEX --cache_dir=DIR`, '
        'then pass --seqio_additional_cache_dirs=DIR; or set USE_CACHED_TASKS = False to '
        'render on the fly.')


def create_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                   global_batch_size: int, mesh: jax.sharding.Mesh, split: str = 'train',
                   shuffle: bool = True, seed: int | None = 0, use_cached: bool = False,
                   pack: bool = False, num_epochs: int | None = None,
                   skip_batches: int = 0, input_sharding: str = 'shard_info',
                   model: models_lib.EncoderDecoderModel | None = None,
                   prefetch: int = 2, autotune: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Host-local numpy batches of the `EncDecFeatureConverter` output.

  Args:
    mixture_or_task_name: registered seqio task or mixture.
    task_feature_lengths: `{'inputs': T, 'targets': L}`.
    global_batch_size: rows per step over all processes.
    mesh: the mesh (checks divisibility by the data-parallel size).
    split, shuffle, seed, use_cached, num_epochs: as `seqio.get_dataset`; a fixed seed makes
      the stream deterministic, which exact resume relies on.
    pack: packing; must be False with prompts (they need one example per row).
    skip_batches: global batches already consumed (resume position).
    input_sharding: 'shard_info' — each process reads its own shard of the data
      (`seqio.ShardInfo(process_index, process_count)`), the scalable default; or
      'slice_global_batch' — each process reads the whole stream, batches it globally and
      keeps its rows, so the global batches do not depend on the number of processes.
    model: the model the batches are for (`model.validate_features` checks `pack` and the
      feature lengths against its prompts).
    prefetch: tf.data prefetch depth.
    autotune: tf.data's autotuning of buffer sizes and parallelism (on by default, as in
      T5X). Off suits a host with few cores reading a mixture of many small tasks: every
      task's autotuned prefetch starts filling at once, which on 2 cores delays the first
      batches of the 71-task sample mixture by 10-20 s (runs/local.gin turns it off).

  Yields:
    dicts of `[global_batch_size / process_count, ...]` numpy arrays.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if model is not None:
    model.validate_features(task_feature_lengths, pack)
  local_batch = partitioning.host_local_batch_size(global_batch_size, mesh)
  get_mixture_or_task(mixture_or_task_name)
  nproc, pid = jax.process_count(), jax.process_index()
  if input_sharding == 'shard_info':
    shard_info = seqio.ShardInfo(index=pid, num_shards=nproc) if nproc > 1 else None
  elif input_sharding == 'slice_global_batch':
    shard_info = None
  else:
    raise ValueError(f"input_sharding={input_sharding!r}: use 'shard_info' or "
                     "'slice_global_batch'.")
  if use_cached:
    check_cached(mixture_or_task_name)
  ds = seqio.get_dataset(
      mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
      feature_converter=seqio.EncDecFeatureConverter(pack=pack), dataset_split=split,
      use_cached=use_cached, shuffle=shuffle, num_epochs=num_epochs, shard_info=shard_info,
      seed=seed, verbose=False)
  if input_sharding == 'slice_global_batch':
    ds = ds.batch(global_batch_size, drop_remainder=True)
    ds = ds.map(lambda b: {k: v[pid * local_batch:(pid + 1) * local_batch] for k, v in b.items()})
  else:
    ds = ds.batch(local_batch, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  ds = ds.prefetch(prefetch if prefetch else tf.data.AUTOTUNE)
  if not autotune:
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = ds.with_options(options)
  return ds.as_numpy_iterator()
