r"""Gin entry point: zero-shot evaluation of a checkpoint on a seqio mixture; results tables.

Run (the local SPT run's checkpoint on the sample held-out mixture)::

  python -m spt_jax.evaluate --gin_search_paths=gin \
    --gin_file=methods/spt.gin --gin_file=runs/local.gin --gin_file=runs/eval.gin \
    --gin.CHECKPOINT_PATH="'/tmp/spt_local'" \
    --gin.EVAL_MIXTURE="'spt_sample_heldout_score_eval'"

Pass the model / method gin files the checkpoint was trained with (they configure
`runner.create_model`), then `runs/eval.gin`. Macros (gin/runs/eval.gin): CHECKPOINT_PATH,
CHECKPOINT_FORMAT ('orbax' | 'hf' | 't5x'), CHECKPOINT_STEP, EVAL_MIXTURE, EVAL_SPLIT,
EVAL_BATCH_SIZE, EVAL_TASK_FEATURE_LENGTHS (None: the longest example), EVAL_NUM_EXAMPLES,
EVAL_OUTPUT_DIR.

CHECKPOINT_PATH with 'orbax' is an spt_jax train run (its MODEL_DIR: the latest, or
CHECKPOINT_STEP, of `MODEL_DIR/checkpoints/<step>`), one step directory, or any orbax params
tree; 'hf' a transformers T5 folder; 't5x' a T5X `checkpoint_<step>` folder (prompt and
memory parameters, absent from those, are freshly initialised).

How it works: a `seqio.Evaluator` over the mixture calls `score_fn` (rank classification:
`_score_eval` tasks) and `predict_fn` (generative tasks) with each task's dataset of
unbatched `(index, features)` tuples; `Evaluation` batches them to EVAL_BATCH_SIZE (padding
the last batch with copies of a real row, dropped afterwards), shards every batch over the
mesh's `data` axis exactly as training does (`runner.ModelSetup`), and runs the jitted
`EncoderDecoderModel.score_batch` / `predict_batch`. A scoring batch whose rows hold at most
B/2 distinct inputs (an example's answer choices share its input) encodes each distinct input
once (`score_batch(input_index=...)`): same scores, a half or less of the encoder's work.
With a memory bank, the retrieved slot
ids of every example are collected while scoring (one row per example, not per answer
choice).

What it writes (process 0) in the output directory (EVAL_OUTPUT_DIR, default
`<run>/eval/step_<N>` for an orbax run): `results.json`, `results.csv`, `results.md`
(per template → per dataset median/mean/min/max → per cluster → overall, through
`spt_jax.results`), `accuracy_per_dataset.png`, for SPT `memory_slot_usage.png`, the
operative `config.gin`, and seqio's per-task JSON logs under `seqio/`.

Periodic evaluation while training: overlay `runs/periodic_eval.gin` on the training gin
files; it binds `train.eval_hook_factory = @evaluate.eval_hook_factory()`, which runs
`Evaluation.run(params, step)` every `train.eval_every_steps` steps and at the end, writing
`MODEL_DIR/eval/step_<N>/` (the trainer logs the returned scalars as `eval/...`).

The gin files of training leave train-only macros (MODEL_DIR, ...) `%gin.REQUIRED`; this
entry point parses gin without finalizing so they need no value here.
"""
from __future__ import annotations

import collections
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import jax
import numpy as np
from absl import logging
from etils import epath

from spt_jax import checkpoints
from spt_jax import configs
from spt_jax import models as models_lib
from spt_jax import partitioning
from spt_jax import paths
from spt_jax import results as results_lib
from spt_jax import runner

SEQIO_LOG_SUBDIR = 'seqio'


# ------------------------------------------------------------------------------------------
# Batching the Evaluator's datasets.
# ------------------------------------------------------------------------------------------
def batches_from_enumerated(ds, batch_size: int) -> Any:
  """Yields `(indices [n], features {k: [batch_size, ...]}, n)` from `(index, features)` tuples.

  Batched by tf.data (the Evaluator's features are padded to fixed lengths), not row by row
  in Python. The last batch is padded to `batch_size` with copies of its first row (real
  tokens, so no all-padding row reaches the memory-bank pooling); `n` is its number of real
  rows.
  """
  for index, features in ds.batch(batch_size).as_numpy_iterator():
    n = len(index)
    if n < batch_size:
      fill = np.zeros(batch_size - n, np.int64)
      features = {k: np.concatenate([v, v[fill]]) for k, v in features.items()}
    yield np.asarray(index, np.int64), features, n


def distinct_inputs(tokens: np.ndarray, sizes: Sequence[int]
                    ) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """A batch's distinct encoder inputs: `(inputs [S, T], index [B] int32)`, `inputs[index]`
  equal to `tokens` [B, T].

  S is the smallest of `sizes` that holds them (padded with copies of the first, real
  tokens); None when none does.
  """
  if not sizes:
    return None
  unique, index = np.unique(tokens, axis=0, return_inverse=True)
  for size in sorted(sizes):
    if len(unique) <= size:
      pad = np.repeat(unique[:1], size - len(unique), axis=0)
      return np.concatenate([unique, pad]), index.reshape(-1).astype(np.int32)
  return None


def _divides_mesh(rows: int, mesh: jax.sharding.Mesh) -> bool:
  try:
    partitioning.host_local_batch_size(rows, mesh)
  except ValueError:
    return False
  return True


def _example_ids(task_dataset, batch_size: int = 1024) -> Optional[np.ndarray]:
  """Example id of every row of a `_score_eval` task (`idx[0]`), or None without `idx`."""
  if 'idx' not in task_dataset.element_spec:
    return None
  ids = [np.asarray(idx).reshape(len(idx), -1)[:, 0] for idx in
         task_dataset.map(lambda ex: ex['idx']).batch(batch_size).as_numpy_iterator()]
  return np.concatenate(ids).astype(np.int64) if ids else np.zeros([0], np.int64)


# ------------------------------------------------------------------------------------------
# Evaluation.
# ------------------------------------------------------------------------------------------
def feature_lengths_of(evaluator) -> dict[str, int]:
  """`{'inputs': T, 'targets': L}` the Evaluator pads to (its model feature shapes)."""
  shapes = evaluator.model_feature_shapes
  return {'inputs': int(shapes['encoder_input_tokens'][0]),
          'targets': int(shapes['decoder_target_tokens'][0])}


def create_seqio_evaluator(mixture_or_task_name: str, *, split: str = 'validation',
                           task_feature_lengths: Optional[Mapping[str, int]] = None,
                           num_examples: Optional[int] = None, use_cached: bool = False,
                           seed: int = 42, log_dir: Optional[str] = None):
  """`seqio.Evaluator` over a registered mixture / task (registry imported if needed).

  Args:
    mixture_or_task_name: e.g. 'spt_heldout_score_eval'.
    split: eval split ('validation': T0 evaluated on it; test labels are hidden).
    task_feature_lengths: pad / truncate to these; None: the longest example of the mixture.
    num_examples: the first N rows of each task (seqio counts after preprocessing, so for a
      `_score_eval` task these are answer-choice rows: use a multiple of the number of
      choices, or a partial example is scored on fewer choices); None: all (T0's setting).
    use_cached, seed: as `seqio.Evaluator`.
    log_dir: where seqio's JSONLogger writes (created); None: no seqio logging.

  Raises:
    ValueError: unknown name (the message lists close registered names) or a mixture with no
      task that has the split and metrics.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  from spt_tasks import catalog  # pylint: disable=g-import-not-at-top
  catalog.ensure_registered(mixture_or_task_name)
  runner.get_mixture_or_task(mixture_or_task_name)
  loggers = ()
  if log_dir is not None and jax.process_index() == 0:
    epath.Path(log_dir).mkdir(parents=True, exist_ok=True)
    loggers = (seqio.JSONLogger,)
  # No length check: seqio trims every task to `sequence_length` (or measures it from the
  # data) before the converter, so it can only pass; it costs two tf.data maps per task.
  evaluator = seqio.Evaluator(
      mixture_or_task_name=mixture_or_task_name,
      feature_converter=seqio.EncDecFeatureConverter(pack=False, apply_length_check=False),
      eval_split=split,
      use_cached=use_cached, seed=seed,
      sequence_length=dict(task_feature_lengths) if task_feature_lengths else None,
      num_examples=num_examples, logger_cls=loggers, log_dir=log_dir if loggers else None)
  if not evaluator.eval_tasks:
    raise ValueError(
        f'{mixture_or_task_name!r} has no task with a {split!r} split and metric functions; '
        'check EVAL_SPLIT and that the mixture holds evaluation tasks (e.g. *_score_eval).')
  return evaluator


class Evaluation:
  """A checkpoint-independent evaluation of one mixture: `run(params, step) -> metrics`.

  Built once (the seqio Evaluator caches the tokenized eval sets and the jitted functions are
  compiled on the first run); every `run` scores / decodes all tasks with the given
  parameters, aggregates with `spt_jax.results` and writes the result files.

  Attributes:
    setup: the model on its mesh (`runner.ModelSetup`); params passed to `run` must have its
      `param_shardings` structure.
    evaluator: the `seqio.Evaluator`.
    batch_size: global rows per model call (divisible by the mesh's data-parallel size).
    task_feature_lengths: `{'inputs': T, 'targets': L}` of every batch.
  """

  def __init__(self, setup: runner.ModelSetup, dataset_cfg: configs.DatasetConfig, *,
               length_normalize: bool = False, decoding: str = 'greedy',
               num_decodes: int = 4, alpha: float = 0.6, metric: str = 'accuracy',
               output_dir: Optional[str] = None, per_step_subdir: bool = True,
               title: Optional[str] = None, evaluator=None):
    """See the class docstring.

    Args:
      setup: the model on its mesh.
      dataset_cfg: the eval data (`configs.DatasetConfig`: mixture, split, global batch size
        of the model calls, feature lengths, num_examples, cached tasks, seed; see
        `create_seqio_evaluator`). Feature lengths None: `setup.task_feature_lengths` (the
        training lengths).
      length_normalize: rank by mean instead of summed target log-likelihood.
      decoding, num_decodes, alpha: `EncoderDecoderModel.predict_batch` for generative tasks.
      metric: the per-task metric aggregated over templates / datasets.
      output_dir: where results go; None: nothing is written (metrics are still returned).
      per_step_subdir: write each run to `<output_dir>/step_<step>` (periodic evaluation),
        else to `output_dir` itself.
      title: heading of results.md (default: mixture and step).
      evaluator: an existing `seqio.Evaluator` for this mixture (its lengths then win).
    """
    self.setup = setup
    self.mixture_or_task_name = mixture_or_task_name = dataset_cfg.mixture_or_task_name
    self.batch_size = int(dataset_cfg.batch_size)
    partitioning.host_local_batch_size(self.batch_size, setup.mesh)  # divisibility check
    self.length_normalize = bool(length_normalize)
    self.decoding, self.num_decodes, self.alpha = decoding, int(num_decodes), float(alpha)
    self.metric = metric
    self.output_dir = os.fspath(output_dir) if output_dir else None
    self.per_step_subdir = per_step_subdir
    self.title = title
    if evaluator is None:
      evaluator = create_seqio_evaluator(
          mixture_or_task_name, split=dataset_cfg.split,
          task_feature_lengths=dataset_cfg.task_feature_lengths or setup.task_feature_lengths,
          num_examples=dataset_cfg.num_examples, use_cached=dataset_cfg.use_cached,
          seed=dataset_cfg.seed,
          log_dir=(os.path.join(self.output_dir, SEQIO_LOG_SUBDIR) if self.output_dir
                   else None))
    self.evaluator = evaluator
    self.task_feature_lengths = feature_lengths_of(evaluator)
    self._task_by_dataset_id = {id(ds): name
                                for name, ds in evaluator.cached_model_datasets.items()}
    self._example_ids: dict[str, Optional[np.ndarray]] = {}
    self._retrieval: dict[str, np.ndarray] = {}
    model = setup.model
    self.memory_size = model.memory_size

    rep = partitioning.replicated(setup.mesh)
    batch_sharding = partitioning.batch_sharding(setup.mesh)
    length_normalize = self.length_normalize

    def score(params, batch):
      scores, retrieval = model.score_batch(params, batch, length_normalize=length_normalize,
                                            return_retrieval=True)
      return scores, retrieval.get('indices')

    def predict(params, batch):
      return model.predict_batch(params, batch, decoding=decoding, num_decodes=num_decodes,
                                 alpha=alpha, max_decode_length=batch[
                                     'decoder_input_tokens'].shape[1])

    def score_distinct_inputs(params, rows, inputs):
      rows = dict(rows)
      index = rows.pop('input_index')
      scores, retrieval = model.score_batch(
          params, dict(rows, encoder_input_tokens=inputs['encoder_input_tokens']),
          length_normalize=length_normalize, return_retrieval=True, input_index=index)
      return scores, retrieval.get('indices')

    self._score = jax.jit(score, in_shardings=(setup.param_shardings, batch_sharding),
                          out_shardings=rep)
    self._score_distinct_inputs = jax.jit(
        score_distinct_inputs,
        in_shardings=(setup.param_shardings, batch_sharding, batch_sharding), out_shardings=rep)
    # How many distinct inputs a batch may be encoded as (B/4, B/2; each a jit shape): the
    # rows of rank classification repeat their example's input once per answer choice.
    self._distinct_input_sizes = tuple(
        s for s in (self.batch_size // 4, self.batch_size // 2)
        if s and _divides_mesh(s, setup.mesh))
    self._predict = jax.jit(predict, in_shardings=(setup.param_shardings, batch_sharding),
                            out_shardings=rep)

  # ---------------------------------------------------------------------- model fns
  def _model_batches(self, ds):
    for idx, feats, n in batches_from_enumerated(ds, self.batch_size):
      yield idx, self._shard(feats, self.batch_size), n

  def _shard(self, features: Mapping[str, np.ndarray], size: int) -> dict[str, jax.Array]:
    """A global batch of `size` rows (every process holds all of them) on the mesh."""
    local = partitioning.process_rows(features, size, self.setup.mesh)
    return partitioning.shard_batch(local, self.setup.mesh, size)

  def score_fn(self, ds, params) -> list[tuple[int, float]]:
    """seqio score_fn: `(index, log-likelihood)` per row; records retrieved slot ids.

    A batch whose rows hold at most B/2 distinct inputs (rank classification: an example's
    answer choices share its input) encodes each input once (`score_batch(input_index=)`).
    """
    task = self._task_by_dataset_id.get(id(ds))
    out, slots = [], []
    with self.setup.activate():
      for idx, feats, n in batches_from_enumerated(ds, self.batch_size):
        shared = distinct_inputs(feats['encoder_input_tokens'], self._distinct_input_sizes)
        if shared is None:
          scores, indices = self._score(params, self._shard(feats, self.batch_size))
        else:
          inputs, index = shared
          rows = {k: v for k, v in feats.items() if k != 'encoder_input_tokens'}
          rows['input_index'] = index
          scores, indices = self._score_distinct_inputs(
              params, self._shard(rows, self.batch_size),
              self._shard({'encoder_input_tokens': inputs}, len(inputs)))
        scores = np.asarray(scores)[:n]
        out.extend(zip(idx.tolist(), scores.tolist()))
        if indices is not None:
          slots.append(np.asarray(indices)[:n])
    if task is not None and slots:
      slots = np.concatenate(slots)
      ids = self._example_ids_of(task)
      if ids is not None and len(ids) == len(slots):
        # One row per example (choices repeat the same inputs, hence the same retrieval).
        _, first = np.unique(ids, return_index=True)
        slots = slots[np.sort(first)]
      self._retrieval[task] = slots
    return out

  def predict_fn(self, ds, params) -> list[tuple[int, list[int]]]:
    """seqio predict_fn: `(index, token ids)` per row, decoded as configured."""
    out = []
    with self.setup.activate():
      for idx, batch, n in self._model_batches(ds):
        tokens = np.asarray(self._predict(params, batch))[:n]
        out.extend((i, t.tolist()) for i, t in zip(idx.tolist(), tokens))
    return out

  def _example_ids_of(self, task: str) -> Optional[np.ndarray]:
    if task not in self._example_ids:
      self._example_ids[task] = _example_ids(self.evaluator.cached_task_datasets[task])
    return self._example_ids[task]

  # ---------------------------------------------------------------------- run
  def results_dir(self, step: int) -> Optional[str]:
    if self.output_dir is None:
      return None
    if self.per_step_subdir:
      return os.path.join(self.output_dir, f'step_{int(step)}')
    return self.output_dir

  def run(self, params: Any, step: int = 0) -> dict[str, float]:
    """Evaluates `params` on every task; writes the results; returns flat scalar metrics.

    Returns:
      `{'<task>/<metric>': v, ...}` for every task metric, plus for the aggregated metric
      `'<dataset>/median'`, `'<dataset>/mean'`, `'<cluster>/cluster_median'`,
      `'overall/median'`, `'overall/mean'` (and retrieval health with a memory bank).
    """
    from spt_tasks import catalog  # pylint: disable=g-import-not-at-top
    self._retrieval = {}
    future, _ = self.evaluator.evaluate(
        compute_metrics=True, step=int(step),
        predict_fn=functools.partial(self.predict_fn, params=params),
        score_fn=functools.partial(self.score_fn, params=params))
    task_metrics = future.result()
    flat = {}
    for task, values in task_metrics.items():
      for k, v in values.items():
        try:
          flat[f'{task}/{k}'] = results_lib._to_float(v)  # pylint: disable=protected-access
        except (TypeError, ValueError):
          continue
    scored = {t: m for t, m in task_metrics.items() if self.metric in m}
    if len(scored) < len(task_metrics):
      logging.warning('Tasks without %r are left out of the aggregate: %s', self.metric,
                      sorted(set(task_metrics) - set(scored)))
    if not scored:
      logging.warning('No task reports %r; nothing to aggregate (metrics: %s).', self.metric,
                      sorted(flat))
      self._write_raw(task_metrics, step)
      return flat
    infos = catalog.lookup(scored)
    results = results_lib.aggregate(scored, infos, metric=self.metric)
    results_lib.add_chance(results, self._chance_by_task(scored))
    results['mixture_or_task_name'] = self.mixture_or_task_name
    results['step'] = int(step)
    for name, d in results['datasets'].items():
      flat[f'{name}/median'] = d['median']
      flat[f'{name}/mean'] = d['mean']
    for name, c in results['clusters'].items():
      flat[f'{name}/cluster_median'] = c['median']
    flat['overall/median'] = results['overall']['median']
    flat['overall/mean'] = results['overall']['mean']

    slot_indices = None
    if self.memory_size and self._retrieval:
      slot_indices = {}
      for task, idx in sorted(self._retrieval.items()):
        if task in infos:
          slot_indices.setdefault(infos[task].dataset, []).append(idx)
      slot_indices = {d: np.concatenate(v) for d, v in slot_indices.items()}
      from spt_jax import retrieval_analysis  # pylint: disable=g-import-not-at-top
      for d, idx in slot_indices.items():
        for k, v in retrieval_analysis.health(idx, self.memory_size).items():
          if np.ndim(v) == 0:
            flat[f'{d}/retrieval_{k}'] = float(v)
    out_dir = self.results_dir(step)
    if out_dir is not None and jax.process_index() == 0:
      title = self.title or f'{self.mixture_or_task_name} — step {int(step)}'
      results_lib.write_results(results, out_dir, slot_indices=slot_indices,
                                memory_size=self.memory_size or None, title=title)
    logging.info('Eval step %d on %s: overall median %.4f, mean %.4f over %d datasets',
                 int(step), self.mixture_or_task_name, results['overall']['median'],
                 results['overall']['mean'], results['overall']['n_datasets'])
    return flat

  def _chance_by_task(self, tasks) -> dict[str, float]:
    """Chance accuracy (percent) of each rank-classification task: the mean over its
    examples of 1 / number of answer choices, from the evaluator's postprocessed targets
    (`((example, choice), is_correct, weight, length)` rows); other tasks are left out."""
    cached = getattr(self.evaluator, '_cached_targets', {})  # seqio keeps them per task
    chance = {}
    for task in tasks:
      rows = cached.get(task) or []
      if not rows or not all(isinstance(r, tuple) and len(r) == 4 for r in rows):
        continue
      choices = collections.Counter(int(r[0][0]) for r in rows)
      chance[task] = 100.0 * float(np.mean([1.0 / n for n in choices.values()]))
    return chance

  def _write_raw(self, task_metrics, step):
    out_dir = self.results_dir(step)
    if out_dir is None or jax.process_index() != 0:
      return
    path = epath.Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    raw = {t: results_lib._json_metrics(m) for t, m in task_metrics.items()}  # pylint: disable=protected-access
    (path / 'task_metrics.json').write_text(json.dumps(raw, indent=2))


def eval_hook_factory(dataset_cfg: configs.DatasetConfig, model_dir: Optional[str] = None,
                      **evaluation_kwargs) -> Callable[[runner.ModelSetup],
                                                       Callable[[Any, int], dict[str, float]]]:
  """`train.eval_hook_factory` for periodic evaluation during training.

  Args:
    dataset_cfg: the eval data (e.g. mixture 'spt_sample_heldout_score_eval'; feature
      lengths None: the training ones).
    model_dir: the train run's MODEL_DIR; results go to `<model_dir>/eval/step_<N>`
      (None: metrics are only returned to the trainer, which logs them as `eval/...`).
    **evaluation_kwargs: further `Evaluation` arguments (length_normalize, metric, ...).

  Returns:
    `factory(setup) -> Evaluation(setup, ...).run`.
  """
  def factory(setup: runner.ModelSetup) -> Callable[[Any, int], dict[str, float]]:
    output_dir = os.path.join(paths.resolve(model_dir), 'eval') if model_dir else None
    evaluation = Evaluation(setup, dataset_cfg, output_dir=output_dir,
                            per_step_subdir=True, **evaluation_kwargs)
    return evaluation.run
  return factory


# ------------------------------------------------------------------------------------------
# The entry point.
# ------------------------------------------------------------------------------------------
def evaluate(
    *,
    dataset_cfg: configs.DatasetConfig,
    checkpoint_cfg: configs.RestoreCheckpointConfig,
    output_dir: Optional[str] = None,
    model: Optional[models_lib.EncoderDecoderModel] = None,
    partitioner: partitioning.Partitioner = partitioning.Partitioner(),
    length_normalize: bool = False,
    decoding: str = 'greedy',
    num_decodes: int = 4,
    alpha: float = 0.6,
    metric: str = 'accuracy',
) -> dict[str, Any]:
  """Evaluates one checkpoint on a mixture and writes the results (see the module docstring).

  Args:
    dataset_cfg: the eval data (`configs.DatasetConfig`: mixture, split, global batch size,
      feature lengths (None: the longest example), num_examples, cached tasks, seed); the
      mixture's registry is imported if needed.
    checkpoint_cfg: the checkpoint (`configs.RestoreCheckpointConfig`: path, format, step,
      `init_seed` for prompt / memory parameters an 'hf' / 't5x' checkpoint lacks).
    output_dir: results directory; default `<run>/eval/step_<N>` for an orbax run directory or
      `<run>/eval/step_<N>` beside an orbax `checkpoints/<N>` directory; required otherwise.
    model: the model; runs/eval.gin binds `@runner.create_model()` (configured by the same
      model / method gin files as training). None: `runner.create_model()` defaults.
    partitioner: the device mesh (`partitioning.Partitioner`).
    length_normalize, decoding, num_decodes, alpha, metric: see `Evaluation`.

  Returns:
    `{'metrics': flat metrics, 'output_dir': str, 'step': int}`.

  Raises:
    FileNotFoundError: no checkpoint at the path.
    ValueError: unknown mixture / format, or no output directory for an 'hf' / 't5x' path.
  """
  mixture_or_task_name = dataset_cfg.mixture_or_task_name
  checkpoint_format, checkpoint_step = checkpoint_cfg.format, checkpoint_cfg.step
  from spt_tasks import catalog  # pylint: disable=g-import-not-at-top
  checkpoint_path = paths.resolve(checkpoint_cfg.path)
  output_dir = paths.resolve(output_dir)
  checkpoints.check_checkpoint(checkpoint_path, checkpoint_format, path_macro='CHECKPOINT_PATH',
                               format_macro='CHECKPOINT_FORMAT', scratch_hint=False)
  catalog.ensure_registered(mixture_or_task_name)
  runner.get_mixture_or_task(mixture_or_task_name)
  checkpoint_path = os.fspath(checkpoint_path)

  step = checkpoint_step
  if checkpoint_format == 'orbax' and checkpoints.is_run_dir(checkpoint_path):
    steps = checkpoints.run_steps(checkpoint_path)
    if step is None and steps:
      step = steps[-1]
    run_dir = checkpoint_path
  else:
    step = checkpoints.step_of(checkpoint_path) if step is None else step
    parent = epath.Path(checkpoint_path).parent
    run_dir = os.fspath(parent.parent) if (
        checkpoint_format == 'orbax' and parent.name == 'checkpoints') else None
  if output_dir is None:
    if run_dir is None:
      raise ValueError(
          f'EVAL_OUTPUT_DIR is not set and {checkpoint_path!r} is not in an spt_jax run '
          'directory; set --gin.EVAL_OUTPUT_DIR="\'/path/to/results\'".')
    output_dir = os.path.join(run_dir, 'eval', f'step_{step if step is not None else 0}')
  output_dir = os.fspath(output_dir)

  mesh = partitioner.create_mesh()
  model = model or runner.create_model()
  runner.check_vocabulary(mixture_or_task_name, model.network.config.vocab_size,
                          task_macro='EVAL_MIXTURE')
  evaluator = create_seqio_evaluator(
      mixture_or_task_name, split=dataset_cfg.split,
      task_feature_lengths=dataset_cfg.task_feature_lengths,
      num_examples=dataset_cfg.num_examples, use_cached=dataset_cfg.use_cached,
      seed=dataset_cfg.seed, log_dir=os.path.join(output_dir, SEQIO_LOG_SUBDIR))
  lengths = feature_lengths_of(evaluator)
  logging.info('Evaluating %s (%s split) with feature lengths %s, batch %d on mesh %s',
               mixture_or_task_name, dataset_cfg.split, lengths, dataset_cfg.batch_size,
               dict(mesh.shape))
  setup = runner.ModelSetup.create(model, lengths, mesh=mesh, rules=partitioner.rules)
  restored = checkpoints.restore(setup, checkpoint_path, checkpoint_format, step=checkpoint_step,
                                 rng=jax.random.PRNGKey(checkpoint_cfg.init_seed))
  params = restored.params
  step = restored.step if step is None else step
  evaluation = Evaluation(setup, dataset_cfg, length_normalize=length_normalize, decoding=decoding,
                          num_decodes=num_decodes, alpha=alpha, metric=metric,
                          output_dir=output_dir, per_step_subdir=False, evaluator=evaluator)
  metrics = evaluation.run(params, step)
  evaluator.close()
  logging.info('Results in %s', output_dir)
  return {'metrics': metrics, 'output_dir': output_dir, 'step': int(step)}


# `python -m spt_jax.evaluate` runs this file as `__main__`; the command line is spt_jax.cli
# (which imports the package module spt_jax.evaluate, the copy its gin registry sees).
if __name__ == '__main__':
  from spt_jax import cli  # pylint: disable=g-import-not-at-top
  cli.evaluate_run()
