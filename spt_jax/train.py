r"""Gin entry point: sharded training with orbax checkpoints, exact resume and preemption safety.

Run (the README's local SPT run; a few hundred steps on CPU)::

  python -m spt_jax.train --gin_search_paths=gin \
    --gin_file=methods/spt.gin --gin_file=runs/local.gin --gin.MODEL_DIR="'/tmp/spt_local'"

T5X-style macros (see gin/runs/train.gin): MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS,
TRAIN_STEPS, BATCH_SIZE, MODEL_DIR, INITIAL_CHECKPOINT_PATH (+ INITIAL_CHECKPOINT_FORMAT:
hf | t5x | orbax), USE_CACHED_TASKS.

What a run writes in MODEL_DIR: `checkpoints/<step>/` (orbax: train state + JSON metadata),
TensorBoard event files and `metrics.jsonl` (one JSON object per step / summary, process 0
only), `config.gin` (the operative gin config), for SPT `retrieval_usage/<step>.npy` (the
cumulative slot-usage counts behind the `retrieval/cumulative_*` metrics, kept with each
checkpoint so a resumed run continues them).

Guarantees, with the default async checkpointing (tests/test_train.py and
tests/test_fault_tolerance.py, which kills, fills and corrupts real runs):
* Exact resume: the state (params, optimizer state, step, RNG, memory-usage state) is
  checkpointed and the input position is the step (deterministic seqio stream, `skip(step)`
  on restart), so a run killed at any moment (SIGKILL, during a save included) and started
  again with the same command ends bit-identical to an uninterrupted one; a save that did
  not finish is never restored.
* SIGTERM (preemption): the current step is checkpointed, the save is waited for and
  `train` returns normally (exit 0).
* A full or unwritable MODEL_DIR stops the run with `CheckpointWriteError` naming the step,
  the reason and the checkpoints kept (a failed save deletes none).
* A checkpoint that cannot be read back stops the run with `CheckpointRestoreError` naming
  the step and the file; `configs.SaveCheckpointConfig.restore_fallback = True` resumes from
  the previous one.
* A non-finite loss or parameter update stops the run with an error naming the step; it is
  detected before that step's save, so the last checkpoint on disk is a good one.
"""
from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from spt_jax import checkpoints
from spt_jax import configs
from spt_jax import memory_health
from spt_jax import models as models_lib
from spt_jax import optim
from spt_jax import partitioning
from spt_jax import paths
from spt_jax import runner
from spt_jax import train_state as train_state_lib
from spt_jax import train_summaries

PartitionSpec = jax.sharding.PartitionSpec

# Metrics of `loss_fn` that are sums over the batch (summed over microbatches).
_SUM_METRICS = ('loss', 'cross_ent_loss', 'z_loss', 'correct_tokens', 'num_tokens',
                'num_examples')

class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


# ------------------------------------------------------------------------------------------
# The train step.
# ------------------------------------------------------------------------------------------
def _split_microbatches(x: jax.Array, n: int) -> jax.Array:
  """`[B, ...]` → `[n, B/n, ...]` taking every n-th row, so each device keeps its own rows."""
  b = x.shape[0]
  y = jnp.swapaxes(x.reshape((b // n, n) + x.shape[1:]), 0, 1)
  return jax.lax.with_sharding_constraint(
      y, PartitionSpec(None, partitioning.DATA_AXIS))


def _combine_metrics(stacked: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-microbatch metrics `[n, ...]` → one step's metrics."""
  out = {}
  for k, v in stacked.items():
    if k.startswith('retrieval_'):
      out[k] = v.reshape((-1,) + v.shape[2:])
    elif k in _SUM_METRICS:
      out[k] = jnp.sum(v, axis=0)
    else:
      out[k] = jnp.mean(v, axis=0)
  if 'correct_tokens' in out and 'num_tokens' in out:
    out['token_accuracy'] = out['correct_tokens'] / jnp.maximum(out['num_tokens'], 1.0)
  return out


def make_train_step(model: models_lib.EncoderDecoderModel, tx, mask: Any,
                    schedule: optim.Schedule, num_microbatches: int = 1,
                    sum_microbatch_grads: bool | None = None) -> Callable:
  """`(state, batch) -> (state, metrics)`; pure, to be jitted with explicit shardings.

  Dropout key of step s: `fold_in(state.rng, s)` (+ `fold_in(·, i)` for microbatch i), so a
  resumed run draws the same masks. Microbatch gradients are summed when the model's loss is
  a sum (T5X: `loss_normalizing_factor=None`) and averaged when it is normalised, so that
  both equal the full-batch gradient.
  """
  if sum_microbatch_grads is None:
    sum_microbatch_grads = model.loss_normalizing_factor is None

  def grads_and_metrics(params, batch, rng, model_state):
    grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(params, batch, rng, model_state)
    return grads, metrics

  def step_fn(state: train_state_lib.TrainState, batch: Mapping[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    if num_microbatches <= 1:
      grads, metrics = grads_and_metrics(state.params, batch, rng, state.model_state)
    else:
      mbs = jax.tree.map(lambda x: _split_microbatches(x, num_microbatches), batch)

      def body(acc, xs):
        i, mb = xs
        g, m = grads_and_metrics(state.params, mb, jax.random.fold_in(rng, i),
                                 state.model_state)
        return jax.tree.map(jnp.add, acc, g), m

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      grads, stacked = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), mbs))
      if not sum_microbatch_grads:
        grads = jax.tree.map(lambda g: g / num_microbatches, grads)
      metrics = _combine_metrics(stacked)

    grad_norm = optim.global_norm(grads, mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optim.apply_updates(state.params, updates, mask)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)

    out = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
    out['grad_norm'] = grad_norm
    # The applied update's norm: a non-finite one (e.g. from the learning rate) makes the new
    # parameters non-finite while this step's loss is still finite; `_check_finite` stops
    # on it before the state is saved.
    out['update_norm'] = optim.global_norm(updates, mask)
    out['learning_rate'] = schedule(state.step)
    if 'balance_loss' in metrics:
      out['retrieval/balance_loss'] = metrics['balance_loss']
    if model.tracks_usage:
      # The memory bank's usage stats; every `restart_every_steps` steps, dead-slot restarts.
      params, model_state, usage = model.track_usage(
          new_state.params, new_state.model_state, new_state.step, metrics,
          jax.random.fold_in(rng, _RESTART_RNG_SALT))
      new_state = new_state.replace(params=params, model_state=model_state)
      out.update(usage)
    out.update(model.retrieval_metrics(metrics))
    return new_state, out

  return step_fn


# Folded into a step's key for the dead-slot restart (clear of microbatch indices).
_RESTART_RNG_SALT = 0x5E57A27


# ------------------------------------------------------------------------------------------
# Preemption.
# ------------------------------------------------------------------------------------------
class _PreemptionWatcher:
  """SIGTERM → save at the current step and stop (single process: a signal flag; several
  processes: jax's preemption sync point, so all processes stop at the same step)."""

  def __init__(self):
    self._flag = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: will checkpoint at the end of the current step.')
    self._flag = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except Exception:  # pylint: disable=broad-except  # no preemption service
        return False
    return self._flag

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------------------------
# train().
# ------------------------------------------------------------------------------------------
def _init_keys_from_data(setup: runner.ModelSetup, state: train_state_lib.TrainState,
                         data: Any, batch_size: int, mesh: jax.sharding.Mesh, rng: jax.Array
                         ) -> tuple[train_state_lib.TrainState, Any]:
  """Data-driven memory keys at step 0 (`PromptConfig.key_init` 'queries' / 'kmeans').

  Peeks at the first `key_init_batches` training batches, computes their retrieval
  queries with the model (`EncoderDecoderModel.retrieval_query`), drops empty inputs and
  sets the keys with `memory_health.init_keys_from_queries`. The peeked batches are put
  back in front of the stream, so training sees exactly the batches it would have seen. The
  optimizer state is left as is (its initial value does not depend on the parameters).
  Returns `(state, data)` unchanged for other configs.
  """
  cfg = setup.model.prompt_config
  if (cfg is None or cfg.memory_size == 0 or cfg.key_init == 'values_mean'
      or cfg.slot_assignment != 'learned'):
    return state, data
  peeked, queries = [], []
  for _ in range(cfg.key_init_batches):
    local = next(data)
    peeked.append(local)
    tokens = partitioning.shard_batch(local, mesh, batch_size)['encoder_input_tokens']
    q = multihost_gather(setup.retrieval_queries(state.params, tokens))
    valid = multihost_gather(jnp.any(tokens > 0, axis=1))
    queries.append(q[valid])
  queries = np.concatenate(queries, axis=0)
  logging.info("Memory keys initialised by key_init='%s' from %d queries of %d batches.",
               cfg.key_init, queries.shape[0], cfg.key_init_batches)
  with setup.activate():
    params = jax.jit(memory_health.init_keys_from_queries, static_argnums=2,
                     out_shardings=setup.param_shardings)(
                         state.params, jnp.asarray(queries), cfg, rng)
  return state.replace(params=params), itertools.chain(peeked, data)


def multihost_gather(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-process) global array on every host, as numpy."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _check_finite(window: Sequence[tuple[int, dict[str, float]]], ckpt, model_dir: str) -> None:
  """Stops on a non-finite loss or update, before the state of that step is saved.

  A finite loss with a non-finite update (`update_norm`) means the step's new parameters are
  not finite: the step is reported and nothing of it is checkpointed.
  """
  for step, values in window:
    for name in ('loss', 'update_norm'):
      value = values.get(name)
      if value is not None and not math.isfinite(value):
        ckpt.wait()
        last = ckpt.latest_step()
        what = 'loss' if name == 'loss' else 'parameter update (the new parameters)'
        raise NonFiniteLossError(
            f'Non-finite {what} ({value}) at step {step}; training stopped. The last good '
            f'checkpoint (step {last}) in {model_dir}/checkpoints is kept. Lower the learning '
            'rate, enable gradient clipping (configs.OptimizerConfig.grad_clip_norm) or check '
            'the input data.')


def _write_failure(error: BaseException, reason: str, model_dir: str, step: int,
                   ckpt: train_state_lib.Checkpointer) -> train_state_lib.CheckpointWriteError:
  """The error a full or unwritable MODEL_DIR gives: what failed, what is kept, the fix."""
  directory = ckpt.directory
  kept = checkpoints.step_dirs(directory)
  first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  if kept:
    then = (f'The checkpoints written before are intact: step(s) {kept} in {directory}. '
            f'Free space (or restore write access) and run the same command again: it '
            f'resumes from step {kept[-1]}.')
  else:
    then = ('No checkpoint had been written yet. Free space (or restore write access) and '
            'run the same command again.')
  return train_state_lib.CheckpointWriteError(
      f'Writing to MODEL_DIR={model_dir} failed at step {step} ({reason}: {first_line}). '
      + then)


def _close_quietly(*closers: Callable[[], None]) -> None:
  """Closes after a failure; a second error while closing is logged, not raised over it."""
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('While stopping after the error above, %s also failed: %s',
                      getattr(close, '__qualname__', close), str(e).splitlines()[0][:300])


def _has_checkpoint(model_dir: str) -> bool:
  """Whether `model_dir/checkpoints` holds a finished step (the run will resume from it)."""
  return bool(checkpoints.run_steps(model_dir))


def train(
    *,
    model_dir: str,
    dataset_cfg: configs.DatasetConfig,
    train_steps: int,
    model: models_lib.EncoderDecoderModel | None = None,
    optimizer_cfg: configs.OptimizerConfig = configs.OptimizerConfig(),
    initial_checkpoint_cfg: configs.RestoreCheckpointConfig | None = None,
    checkpoint_cfg: configs.SaveCheckpointConfig = configs.SaveCheckpointConfig(),
    partitioner: partitioning.Partitioner = partitioning.Partitioner(),
    log_every_steps: int = 100,
    peak_flops_per_device: float | None = None,
    eval_hook_factory: Callable[[runner.ModelSetup], Callable[[Any, int], Mapping[str, float]]]
    | None = None,
    eval_every_steps: int = 0,
    hooks: Sequence[Callable[[int, train_state_lib.TrainState], None]] = (),
) -> dict[str, Any]:
  """Trains (or resumes) a model on a seqio mixture; see the module docstring.

  Args:
    model_dir: where checkpoints, summaries and metrics.jsonl go (created; must be writable).
    dataset_cfg: the training data (`configs.DatasetConfig`: mixture, feature lengths, global
      batch size, split, shuffle, seed, cached tasks, packing, input sharding, autotune); its
      `seed` also seeds initialisation and dropout.
    train_steps: total number of steps (a resumed run continues up to it).
    model: the `EncoderDecoderModel`; default `runner.create_model()` (gin-configured).
    optimizer_cfg: optimizer, learning rate (schedule), trainable parameters, clipping and
      microbatching (`configs.OptimizerConfig`).
    initial_checkpoint_cfg: pretrained checkpoint a fresh run starts from (partial: prompts
      stay new; `configs.RestoreCheckpointConfig`, format 'hf' | 't5x' | 'orbax'); None or
      a None path: from scratch. A resumed run ignores it.
    checkpoint_cfg: checkpoint interval, how many are kept, the step-0 save, asynchronous
      writes and the damaged-checkpoint fallback (`configs.SaveCheckpointConfig`).
    partitioner: the mesh and logical axis rules (`partitioning.Partitioner`).
    log_every_steps: summary / console interval; every step's scalars are written at it.
    peak_flops_per_device: for MFU; default from the device kind.
    eval_hook_factory: called once with the `ModelSetup`; returns `f(params, step) -> {name:
      value}` run every `eval_every_steps` steps and at the end (e.g. from evaluate.py).
    hooks: callables `(step, state)` run after every step (tests, custom actions).

  Returns:
    `{'state': final TrainState, 'step': int, 'history': [(step, {metric: float})],
      'preempted': bool, 'model_dir': str}`.
  """
  data_cfg, opt_cfg, save_cfg = dataset_cfg, optimizer_cfg, checkpoint_cfg
  mixture_or_task_name = data_cfg.mixture_or_task_name
  task_feature_lengths = data_cfg.task_feature_lengths
  batch_size, seed = data_cfg.batch_size, data_cfg.seed
  init_cfg = initial_checkpoint_cfg or configs.RestoreCheckpointConfig()
  initial_checkpoint_path = paths.resolve(init_cfg.path)
  initial_checkpoint_format = init_cfg.format
  model_dir = paths.resolve(model_dir)
  if initial_checkpoint_path and not _has_checkpoint(model_dir):
    # Only a fresh run reads it (a resumed one ignores it): fail before any work.
    checkpoints.check_checkpoint(initial_checkpoint_path, initial_checkpoint_format)
  train_state_lib.check_writable(model_dir)
  runner.get_mixture_or_task(mixture_or_task_name)
  mesh = partitioner.create_mesh()
  rules = partitioner.rules
  local_batch = partitioning.host_local_batch_size(batch_size, mesh)
  dp = partitioning.data_parallel_size(mesh)
  num_microbatches = opt_cfg.num_microbatches
  if num_microbatches > 1 and (batch_size // dp) % num_microbatches:
    raise ValueError(
        f'num_microbatches={num_microbatches} must divide the per-data-shard batch '
        f'{batch_size // dp} (BATCH_SIZE={batch_size} / data-parallel size {dp}).')
  if model is None:
    model = runner.create_model()
  runner.check_vocabulary(mixture_or_task_name, model.network.config.vocab_size)
  model.validate_features(task_feature_lengths, data_cfg.pack)

  setup = runner.ModelSetup.create(model, task_feature_lengths, mesh=mesh, rules=rules)
  schedule = opt_cfg.learning_rate_schedule or optim.constant_schedule(opt_cfg.learning_rate)
  trainable = opt_cfg.trainable
  tx, mask = optim.create_optimizer(setup.abstract_params, optimizer=opt_cfg.optimizer,
                                    learning_rate=schedule, trainable=trainable,
                                    grad_clip_norm=opt_cfg.grad_clip_norm,
                                    adafactor_kwargs=dict(opt_cfg.adafactor_kwargs or {}),
                                    param_axes=optim.logical_axes(setup.boxed_abstract_params))
  abstract_opt = jax.eval_shape(tx.init, setup.abstract_params)
  opt_shardings = partitioning.opt_state_shardings(abstract_opt, setup.abstract_params,
                                                   setup.param_shardings, mesh)
  rep = partitioning.replicated(mesh)
  state_shardings = train_state_lib.TrainState(step=rep, params=setup.param_shardings,
                                               opt_state=opt_shardings, rng=rep,
                                               model_state=setup.model_state_shardings)
  n_params = optim.count_params(setup.abstract_params)
  n_train = optim.count_params(setup.abstract_params, mask)
  logging.info('Mesh %s; %d parameters, %d trainable (%s).', dict(mesh.shape), n_params,
               n_train, trainable)

  ckpt = train_state_lib.Checkpointer(model_dir, save_every_steps=save_cfg.every_steps,
                                      keep=save_cfg.keep, async_save=save_cfg.async_save)
  latest = ckpt.latest_step()
  keys_from_checkpoint = False   # memory keys imported from INITIAL_CHECKPOINT_PATH
  if latest is not None:
    abstract_state = train_state_lib.TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=setup.abstract_params,
        opt_state=abstract_opt, rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
        model_state=setup.abstract_model_state)
    try:
      state, meta = ckpt.restore(
          train_state_lib.abstract_with_shardings(abstract_state, state_shardings),
          fallback=save_cfg.restore_fallback)
      latest = int(jax.device_get(state.step))
      logging.info('Resuming from checkpoint step %d in %s (%s)', latest, ckpt.directory, meta)
    except FileNotFoundError as e:  # restore_fallback found no readable step
      logging.warning('%s Starting from step 0.', e)
      latest = None
  if latest is None:
    init_rng, prompt_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = setup.init_params(init_rng)
    if initial_checkpoint_path:
      restored = checkpoints.restore(setup, initial_checkpoint_path, initial_checkpoint_format,
                                     step=init_cfg.step, params=params, rng=prompt_rng,
                                     reinit_prompts=init_cfg.reinit_prompts)
      params = restored.params
      keys_from_checkpoint = not any(name.endswith('memory_bank/keys')
                                     for name in restored.kept)
      logging.info('Initialised from %s (%s).', initial_checkpoint_path,
                   initial_checkpoint_format)
    with setup.activate():
      opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = train_state_lib.TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=params,
        opt_state=opt_state, rng=jax.device_put(train_rng, rep),
        model_state=setup.init_model_state())
  start_step = int(jax.device_get(state.step))
  result = {'state': state, 'step': start_step, 'history': [], 'preempted': False,
            'model_dir': model_dir}
  if save_cfg.save_initial and latest is None:
    # Step 0, before the first (buffer-donating) train step; like the periodic saves below,
    # this relies on orbax having copied the arrays to host when `save` returns.
    ckpt.save(state, {'mixture_or_task_name': mixture_or_task_name, 'batch_size': batch_size,
                      'seed': seed, 'initial_checkpoint_path': initial_checkpoint_path,
                      'initial_checkpoint_format': initial_checkpoint_format})
  if start_step >= train_steps:
    logging.info('Checkpoint step %d >= TRAIN_STEPS=%d: nothing to do.', start_step, train_steps)
    ckpt.close()
    return result

  data = runner.create_dataset(
      mixture_or_task_name, task_feature_lengths, batch_size, mesh, split='train',
      shuffle=data_cfg.shuffle, seed=seed, use_cached=data_cfg.use_cached, pack=data_cfg.pack,
      skip_batches=start_step, input_sharding=data_cfg.input_sharding,
      autotune=data_cfg.autotune, model=model)
  # A fresh run draws data-driven keys, unless its initial checkpoint holds trained memory
  # keys, which it keeps: an spt_jax SPT run ('orbax', e.g. SuperGLUE from the GLUE run's
  # prompts) or a T5X run of this network ('t5x', gin/t5x/). Pretrained T5 has none.
  if latest is None and not keys_from_checkpoint:
    state, data = _init_keys_from_data(setup, state, data, batch_size, mesh,
                                       jax.random.fold_in(prompt_rng, 1))

  step_fn = make_train_step(model, tx, mask, schedule, num_microbatches,
                            sum_microbatch_grads=opt_cfg.sum_microbatch_grads)
  batch_sharding = partitioning.batch_sharding(mesh)
  p_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,))

  eval_fn = eval_hook_factory(setup) if eval_hook_factory is not None else None
  writers = train_summaries.Writers(model_dir)
  if start_step == 0:
    writers.hparams({'mixture_or_task_name': mixture_or_task_name, 'batch_size': batch_size,
                     'train_steps': train_steps, 'trainable': trainable,
                     'optimizer': opt_cfg.optimizer, 'mesh': dict(mesh.shape),
                     'num_params': n_params,
                     'num_trainable_params': n_train, **dict(task_feature_lengths)})
  t_in, t_out = int(task_feature_lengths['inputs']), int(task_feature_lengths['targets'])
  tokens_per_step = batch_size * (t_in + t_out)
  flops_per_step = train_summaries.model_flops_per_step(model, setup.abstract_params,
                                                        batch_size, t_in, t_out)
  peak = (peak_flops_per_device or train_summaries.peak_flops()) * mesh.size
  # Cumulative slot usage since step 1, saved next to each checkpoint so a resumed run
  # continues the count (a run resumed from a checkpoint without it starts again at 0).
  usage = (memory_health.load_usage(model_dir, start_step)
           if start_step and model.memory_size else None)

  def write_window(window, seconds, steps):
    nonlocal usage
    for s, values in window:
      hist = values.pop('retrieval/histogram', None)
      if hist is not None:
        usage = hist.astype(np.int64) if usage is None else usage + hist
        values.update(memory_health.cumulative_usage_metrics(usage))
      writers.scalars(s, values)
    if steps and seconds > 0:
      last_step, last = window[-1]
      rate = {'perf/steps_per_sec': steps / seconds,
              'perf/seqs_per_sec': steps * batch_size / seconds,
              'perf/tokens_per_sec': steps * tokens_per_step / seconds,
              'perf/mfu': steps * flops_per_step / seconds / peak}
      writers.scalars(last_step, rate)
      eta = (train_steps - last_step) / (steps / seconds)
      logging.info('step %d/%d  loss %.4f  acc %.3f  %.0f tokens/s  MFU %.2f%%  ETA %s',
                   last_step, train_steps, last.get('loss', float('nan')),
                   last.get('token_accuracy', float('nan')), rate['perf/tokens_per_sec'],
                   100 * rate['perf/mfu'], time.strftime('%H:%M:%S', time.gmtime(eta)))
    writers.flush()

  watcher = _PreemptionWatcher()
  pending: list[tuple[int, Any]] = []
  history: list[tuple[int, dict[str, float]]] = []
  window_start, window_steps = None, 0
  step = start_step
  try:
    with setup.activate():
      while step < train_steps:
        local = next(data)
        batch = partitioning.shard_batch(local, mesh, batch_size)
        state, metrics = p_step(state, batch)
        step += 1
        pending.append((step, metrics))
        if window_start is None:  # Exclude compilation from throughput.
          jax.block_until_ready(state.step)
          window_start, window_steps = time.time(), 0
        else:
          window_steps += 1
        for hook in hooks:
          hook(step, state)
        preempted = watcher.reached(step)
        final = step == train_steps
        flush = (step % max(log_every_steps, 1) == 0 or final or preempted
                 or ckpt.should_save(step))
        if flush:
          fetched = [(s, {k: (np.asarray(v) if np.ndim(v) else float(v))
                          for k, v in jax.device_get(m).items()}) for s, m in pending]
          pending = []
          _check_finite(fetched, ckpt, model_dir)
          history.extend((s, {k: v for k, v in vals.items() if not isinstance(v, np.ndarray)})
                         for s, vals in fetched)
          now = time.time()
          write_window(fetched, now - window_start, window_steps)
          window_start, window_steps = now, 0
        paused = time.time()  # Saving / evaluating is excluded from the throughput window.
        if ckpt.should_save(step) or final or preempted:
          if usage is not None:
            memory_health.save_usage(model_dir, step, usage, keep=set(ckpt.all_steps()) | {step})
          ckpt.save(state, {'mixture_or_task_name': mixture_or_task_name,
                            'batch_size': batch_size, 'seed': seed})
        if eval_fn is not None and ((eval_every_steps and step % eval_every_steps == 0)
                                    or final):
          results = eval_fn(state.params, step)
          writers.scalars(step, {f'eval/{k}': v for k, v in results.items()})
          writers.flush()
        if window_start is not None:
          window_start += time.time() - paused
        if preempted:
          ckpt.wait()
          logging.warning('Preempted: checkpoint of step %d saved in %s; exiting cleanly.',
                          step, ckpt.directory)
          result['preempted'] = True
          break
    # An async save's error surfaces when it is waited for: inside the try, like the others.
    ckpt.wait()
    writers.close()
    ckpt.close()
  except BaseException as e:
    _close_quietly(writers.close, ckpt.close)
    reason = (train_state_lib.describe_write_failure(e, model_dir)
              if isinstance(e, Exception) else None)
    if reason is None:
      raise
    raise _write_failure(e, reason, model_dir, step, ckpt) from e
  finally:
    watcher.close()
  result.update(state=state, step=step, history=history)
  logging.info('Training stopped at step %d; checkpoints in %s, summaries and metrics.jsonl in %s',
               step, ckpt.directory, model_dir)
  return result


# `python -m spt_jax.train` runs this file as `__main__`; the command line is spt_jax.cli
# (which imports the package module spt_jax.train, the copy its gin registry sees).
if __name__ == '__main__':
  from spt_jax import cli  # pylint: disable=g-import-not-at-top
  cli.train_run()
