r"""Method validity: does SPT's retrieval do what the method claims, and does it help?

On the embedded sample mixture (`spt_tasks/sample.py`: 9 training datasets in 4 clusters,
3 held-out datasets each built to resemble one cluster) this script trains, with the
project's own trainer (`spt_jax.train.train`, gin-configured) and evaluator
(`spt_jax.evaluate.Evaluation`), on the tiny model from scratch (`runs/local.gin`) with the
overlays in `gin/validity/`:

Stage 1 (multitask training on the training clusters, paper setting (i); everything trains):

* `finetune` — plain fine-tuning (`methods/finetune.gin`);
* `prompt_tuning` — a soft prompt as long as SPT's whole prefix,
  L_p(PT) = L_p(SPT) + k * L_m (bound here from the SPT gin config);
* `spt` — `methods/spt.gin`, the default SPT;
* `spt_paper` — `methods/spt_paper.gin`, SPT as first read from the paper (no memory-bank
  remedies); until that file exists, `methods/spt.gin` stands in (marked in summary.md);
* `spt_fixed_random` — the control: `methods/spt.gin` with
  `prompts.PromptConfig.slot_assignment = 'fixed_random'` (the slots an example reads are a
  fixed random hash of its prompt and never learn); until PromptConfig has that field,
  plain SPT stands in (marked).

Stage 2 (transfer, paper experiment (ii) in miniature; `gin/validity/transfer.gin`): each
stage-1 `prompt_tuning`, `spt` and `spt_fixed_random` run's final checkpoint is restored
with INITIAL_CHECKPOINT_FORMAT = 'orbax' (trained soft prompt and memory bank kept), the
backbone is frozen (`configs.OptimizerConfig.trainable = 'prompts_only'`) and the prompts are
tuned on 32 training rows of each held-out dataset (`spt_tasks/sample_fewshot.py`), Adafactor
at 0.3 for TRANSFER_STEPS steps, then evaluated as in stage 1.

Every run is repeated over seeds (`train/configs.DatasetConfig.seed`: initialisation and data
order; a stage-2 run of seed s starts from the stage-1 run of seed s). The questions:

1. Transfer: held-out accuracy by rank classification (mean over templates per dataset;
   mean ± std over seeds; per dataset and averaged), zero-shot after stage 1 and after the
   few-shot stage 2; the SPT − PT gap with the standard error of the per-seed difference,
   and whether it exceeds two standard errors.
2. Control: does `spt` beat `spt_fixed_random` by more than two standard errors? If not,
   summary.md says that retrieval adds nothing measurable here.
3. Health over training: the trainer's cumulative never-used fraction and cumulative
   normalized slot entropy over all training retrievals (metrics.jsonl; a trainer that logs
   only `retrieval/never_used_fraction` gives the first alone), mean over seeds; plus probe
   health (entropy ÷ log M, never-used fraction on fixed probe inputs at a few steps) and
   the evaluator's health at eval.
4. Structure: held-out datasets × training clusters overlap (histogram intersection of slot
   usage) and the share of a held-out dataset's retrievals in the slots holding half of the
   retrievals of the cluster it was built to resemble (`HELDOUT_RESEMBLES`), against chance
   and the other clusters, at each probe step; whether that share moved from step 1 to the
   final step (paired over seeds, two standard errors).

Run (detached; resumable: a rerun with the same --output_dir skips finished runs)::

  setsid nohup python benchmarks/method_validity.py --output_dir=/tmp/method_validity \
    > /tmp/method_validity.log 2>&1 &

  # CI smoke run: 1 seed, a few steps, tiny probes / eval, every method and stage 2
  python benchmarks/method_validity.py --output_dir=/tmp/mv_quick --quick

Flags: --output_dir, --seeds (comma list), --steps (stage 1, overrides TRAIN_STEPS),
--transfer_steps (stage 2, overrides TRANSFER_STEPS), --methods (comma list of METHODS),
--transfer_methods (comma list of TRANSFER_METHODS; empty: no stage 2), --quick, --rewrite,
plus --gin_file / --gin_bindings / --gin.NAME=VALUE overlays applied after gin/validity/
(e.g. `--gin.BATCH_SIZE=32`).

Outputs in --output_dir (all rewritten after every finished run; summary.md says how many
of the planned runs are complete):
  accuracy.{json,csv,md}        held-out accuracy per stage × method × dataset (per seed,
                                mean, std)
  accuracy.png                  stage 1 as bars with ±std error bars
  accuracy_transfer.png         stage 2 likewise
  comparisons.json              SPT − PT and SPT − control differences with their SE
  health.{json,csv}             retrieval health: training curves, probes, eval
  health_over_training.png      cumulative never-used fraction and normalized entropy vs
                                step (metrics.jsonl), mean over seeds, per SPT method
  health_probes.png             probe entropy ratio and never-used fraction per seed
  structure.json                overlap matrices, resemblance shares and their change
  overlap_heatmap.png           held-out datasets × clusters, final step, mean over seeds
  resemblance_share.png         share in the resembled cluster's top slots vs other
                                clusters and chance (final step, mean over seeds)
  summary.md                    all of the above in one page + settings + wall times
  runs.json                     the settings and every finished run's record
  runs/<method>_seed<s>/        a stage-1 run: metrics.jsonl, checkpoint, eval results,
                                config.gin and record.json (its accuracy, health and
                                structure inputs, written when it finishes)
  runs/<method>_fewshot_seed<s>/  a stage-2 run, likewise

How the retrieval logs are collected: `train.train(hooks=...)` calls a hook after every
step; at the probe steps it applies `model.network.encode` with `mutable=['retrieval']` to
the probe inputs and keeps the sown slot ids.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional


from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import gin
import jax
import numpy as np

from spt_jax import cli
from spt_jax import configs
from spt_jax import evaluate as evaluate_lib
from spt_jax import gin_configurables
from spt_jax import logs
from spt_jax import plots
from spt_jax import prompts as prompts_lib
from spt_jax import retrieval_analysis as ra
from spt_jax import runner

METHODS = ('finetune', 'prompt_tuning', 'spt', 'spt_paper', 'spt_fixed_random')
MEMORY_METHODS = ('spt', 'spt_paper', 'spt_fixed_random')
TRANSFER_METHODS = ('prompt_tuning', 'spt', 'spt_fixed_random')
METHOD_GIN = {'finetune': 'methods/finetune.gin', 'prompt_tuning': 'methods/prompt_tuning.gin',
              'spt': 'methods/spt.gin', 'spt_paper': 'methods/spt_paper.gin',
              'spt_fixed_random': 'methods/spt.gin'}
# Stand-ins while the memory-bank work is not merged (each run says it was one).
PAPER_FALLBACK_GIN = 'methods/spt.gin'
CONTROL_FIELD = 'slot_assignment'
KEY_INIT_FIELD = 'key_init'
LOCAL_GIN = 'runs/local.gin'
BASE_GIN = 'validity/base.gin'
TRANSFER_GIN = 'validity/transfer.gin'
RECORD_JSON = 'record.json'
# Pairs whose difference summary.md tests (first minus second).
COMPARISONS = (('spt', 'prompt_tuning'), ('spt', 'spt_fixed_random'),
               ('spt_paper', 'prompt_tuning'), ('spt', 'spt_paper'))

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Results directory (created; a rerun '
                                  'with the same directory skips finished runs).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'],
                           'Training seeds (train/configs.DatasetConfig.seed).')
_STEPS = flags.DEFINE_integer('steps', None, 'Stage-1 training steps (default: TRAIN_STEPS of '
                              'gin/validity/base.gin).')
_TRANSFER_STEPS = flags.DEFINE_integer('transfer_steps', None, 'Stage-2 steps (default: '
                                       'TRANSFER_STEPS of gin/validity/transfer.gin).')
_METHODS = flags.DEFINE_list('methods', list(METHODS), f'Stage-1 methods, any of {METHODS}.')
_TRANSFER_METHODS = flags.DEFINE_list(
    'transfer_methods', list(TRANSFER_METHODS),
    f'Stage-2 methods, any of {TRANSFER_METHODS} that are also in --methods; empty: none.')
_QUICK = flags.DEFINE_bool('quick', False, 'CI smoke run: 1 seed, few steps, tiny probes and '
                           'eval (every method, stage 2 and every output file still run).')
_REWRITE = flags.DEFINE_bool('rewrite', False, 'Only re-write the outputs from the finished '
                             'runs in <output_dir>/runs/*/record.json (no training).')
_COMPILATION_CACHE = flags.DEFINE_bool(
    'compilation_cache', True, 'Persist XLA compilations in <output_dir>/jax_cache (runs of '
    'the same method over seeds compile the same step function).')

QUICK_STEPS = 6
QUICK_TRANSFER_STEPS = 2
QUICK_BINDINGS = (
    'method_validity.Settings.eval_num_examples = 4',
    'method_validity.Settings.eval_templates_per_dataset = 1',
    'method_validity.Settings.train_templates_per_dataset = 1',
    'method_validity.Settings.probe_train_examples_per_task = 1',
    'method_validity.Settings.probe_heldout_examples_per_task = 2',
    'method_validity.Settings.probe_fractions = (0.0, 1.0)',
    'train.log_every_steps = 2',
)


@gin.configurable('Settings', module='method_validity')
@dataclasses.dataclass(frozen=True)
class Settings:
  """Evaluation and probe settings of the experiment (gin: `method_validity.Settings`).

  Attributes:
    eval_mixture: seqio mixture of held-out `_score_eval` tasks (rank classification).
    eval_num_examples: rows (answer-choice rows) per template task; None: all.
    eval_templates_per_dataset: evaluate only the first N templates of each held-out
      dataset (a sub-mixture registered by the script; the smoke run uses 1); None: all.
    train_templates_per_dataset: train (stage 1 and stage 2) on only the first N templates
      of each dataset (sub-mixtures registered by the script, the tasks' rates kept). Only
      for the smoke run: building the 71-task training mixture's input pipeline dominates a
      run of a few steps on CPU. None: the whole mixtures.
    eval_batch_size: global batch of the scoring calls.
    probe_train_examples_per_task: validation inputs per training task in the cluster probe.
    probe_heldout_examples_per_task: validation inputs per held-out task in its probe.
    probe_fractions: fractions of the stage-1 steps at which the probes run (0.0 means
      after the first step; 1.0 the final step).
    overlap_method: `retrieval_analysis.overlap` method ('intersection' | 'cosine').
    top_slots_mass: a cluster's most-used slots hold this share of its retrievals.
  """
  eval_mixture: str = 'spt_sample_heldout_score_eval'
  eval_num_examples: Optional[int] = 200
  eval_templates_per_dataset: Optional[int] = None
  train_templates_per_dataset: Optional[int] = None
  eval_batch_size: int = 64
  probe_train_examples_per_task: int = 8
  probe_heldout_examples_per_task: int = 16
  probe_fractions: Sequence[float] = (0.0, 0.25, 0.5, 1.0)
  overlap_method: str = 'intersection'
  top_slots_mass: float = 0.5


# ------------------------------------------------------------------------------------------
# Gin: which files and bindings make each (stage, method).
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """The gin configuration of one (stage, method).

  Attributes:
    method: a name in METHODS.
    stage: 1 (multitask training) or 2 (few-shot prompt tuning from a stage-1 run).
    gin_files: files in order (method, local CPU overlay, validity base, method overlay,
      stage-2 overlay, user files).
    bindings: bindings after the files (quick mode, the script's own, the user's).
    stand_in: why the run is NOT the method it is named after (its file or gin field does
      not exist yet and a stand-in runs instead); None when it is.
  """
  method: str
  stage: int
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  stand_in: Optional[str] = None


def _repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gin_file_exists(name: str, search_paths: Sequence[str]) -> bool:
  """Whether `name` resolves under a search path (as `cli.parse_gin` searches them)."""
  for path in search_paths:
    for candidate in (path, os.path.join(_repo_root(), path)):
      if os.path.isfile(os.path.join(candidate, name)):
        return True
  return False


def _prompt_config_fields() -> set[str]:
  return {f.name for f in dataclasses.fields(prompts_lib.PromptConfig)}


def control_available() -> bool:
  """Whether `prompts.PromptConfig` has the control's `slot_assignment` field."""
  return CONTROL_FIELD in _prompt_config_fields()


def method_gin_files(method: str, extra_files: Sequence[str] = (), stage: int = 1,
                     search_paths: Sequence[str] = ('gin',)) -> list[str]:
  """Gin files of one (stage, method); see `resolve_method`."""
  return list(resolve_method(method, stage, search_paths=search_paths,
                             extra_files=extra_files).gin_files)


def resolve_method(method: str, stage: int = 1, *, bindings: Sequence[str] = (),
                   extra_files: Sequence[str] = (), search_paths: Sequence[str] = ('gin',),
                   initial_checkpoint: Optional[str] = None) -> MethodConfig:
  """Files and bindings of one (stage, method), with stand-ins for what does not exist yet.

  Args:
    method: a name in METHODS (stage 2: in TRANSFER_METHODS).
    stage: 1 or 2.
    bindings: bindings applied after the files (e.g. quick mode's, the prompt length).
    extra_files: the user's gin files, applied after the validity overlays.
    search_paths: gin search paths.
    initial_checkpoint: stage 2: the stage-1 run's MODEL_DIR to start from.

  Raises:
    ValueError: an unknown method, or stage 2 of a method without prompts / without a
      stage-1 checkpoint.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; --methods takes a comma list of {METHODS}.')
  if stage not in (1, 2):
    raise ValueError(f'stage must be 1 or 2, got {stage}.')
  if stage == 2 and method not in TRANSFER_METHODS:
    raise ValueError(f'Unknown transfer method {method!r}; --transfer_methods takes a comma '
                     f'list of {TRANSFER_METHODS} (fine-tuning has no prompt to tune).')
  method_file, overlay, stand_in = METHOD_GIN[method], f'validity/{method}.gin', None
  if method == 'spt_paper' and not gin_file_exists(method_file, search_paths):
    method_file = PAPER_FALLBACK_GIN
    stand_in = (f'{METHOD_GIN[method]} does not exist yet: {PAPER_FALLBACK_GIN} ran in its '
                'place, so this run is the default SPT under another name.')
  if method == 'spt_fixed_random' and not control_available():
    overlay = 'validity/spt.gin'
    stand_in = (f'prompts.PromptConfig has no {CONTROL_FIELD!r} field yet: the default SPT '
                'ran in its place, so this run is NOT the fixed-random control.')
  files = [method_file, LOCAL_GIN, BASE_GIN, overlay]
  extra_bindings = []
  if stage == 2:
    if not initial_checkpoint:
      raise ValueError(f'Stage 2 of {method} needs the stage-1 run to start from.')
    files.append(TRANSFER_GIN)
    extra_bindings.append(f"INITIAL_CHECKPOINT_PATH = '{initial_checkpoint}'")
    if KEY_INIT_FIELD in _prompt_config_fields():
      # The trainer sets data-driven keys ('queries' / 'kmeans') at step 0 of every fresh run,
      # after the orbax restore: that would overwrite the stage-1 keys with k-means of the
      # few-shot queries. Keys only ever come from init, so 'values_mean' here changes
      # nothing but that (the restored keys stay).
      extra_bindings.append(f"prompts.PromptConfig.{KEY_INIT_FIELD} = 'values_mean'")
  return MethodConfig(method=method, stage=stage, gin_files=tuple(files) + tuple(extra_files),
                      bindings=tuple(bindings) + tuple(extra_bindings), stand_in=stand_in)


def parse_config(config: MethodConfig, search_paths: Sequence[str] = ('gin',)) -> None:
  """Clears gin and parses one configuration (not finalized: MODEL_DIR comes later)."""
  gin.clear_config()
  cli.parse_gin(list(config.gin_files), list(config.bindings), search_paths,
                finalize=False)


def parse_method_gin(method: str, bindings: Sequence[str] = (), extra_files: Sequence[str] = (),
                     search_paths: Sequence[str] = ('gin',)) -> MethodConfig:
  """Clears gin and parses one stage-1 method's configuration; returns it."""
  config = resolve_method(method, 1, bindings=bindings, extra_files=extra_files,
                          search_paths=search_paths)
  parse_config(config, search_paths)
  return config


def spt_prefix_length(bindings: Sequence[str], extra_files: Sequence[str],
                      search_paths: Sequence[str]) -> int:
  """L_p + k * L_m of the default SPT configuration (what every method must match)."""
  parse_method_gin('spt', bindings, extra_files, search_paths)
  model = gin_configurables.create_model()
  if model.prompt_config is None:
    raise ValueError('The SPT gin configuration builds a model without prompts; check '
                     'methods/spt.gin and the overlays.')
  return int(model.prompt_config.prefix_length)


def check_prefix_length(method: str, prefix: int) -> None:
  """Raises unless the parsed configuration's prefix is `prefix` (equal prompt length)."""
  config = gin_configurables.create_model().prompt_config
  length = config.prefix_length if config is not None else 0
  if length != prefix:
    raise ValueError(f'{method}: total prompt length {length} != the default SPT prefix '
                     f'{prefix}; every prompt method must have the same L_p + k * L_m (check '
                     f'gin/methods/ and gin/validity/{method}.gin).')


def first_templates_mixture(mixture_name: str, tasks_by_dataset: Mapping[str, Sequence[str]],
                            per_dataset: Optional[int]) -> str:
  """`mixture_name`, or a registered sub-mixture of its first `per_dataset` tasks of each
  dataset (`tasks_by_dataset`: the registry's `{dataset: [task names in template order]}`),
  each at its rate in the full mixture. None: the full mixture."""
  if per_dataset is None:
    return mixture_name
  import seqio  # pylint: disable=g-import-not-at-top
  mixture = seqio.get_mixture_or_task(mixture_name)
  wanted = {t.name: t for t in mixture.tasks}
  tasks = []
  for names in tasks_by_dataset.values():
    tasks += [(n, mixture.get_rate(wanted[n])) for n in names if n in wanted][:per_dataset]
  if not tasks:
    raise ValueError(f'No task of {mixture_name!r} is in the given datasets.')
  name = f'{mixture_name}_first{per_dataset}'
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, tasks)
  return name


def experiment_mixtures(settings: Settings) -> dict[str, str]:
  """The stage-1 / stage-2 training and the evaluation mixtures of these settings.

  Returns:
    `{'train': ..., 'transfer': ..., 'eval': ...}`; the full mixtures unless
    `train_templates_per_dataset` / `eval_templates_per_dataset` ask for sub-mixtures.
  """
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  from spt_tasks import sample_fewshot  # pylint: disable=g-import-not-at-top
  plain = {d: v['plain'] for d, v in sample.TASKS_BY_DATASET.items()}
  score = {d: v['score_eval'] for d, v in sample.TASKS_BY_DATASET.items()}
  return {
      'train': first_templates_mixture(sample.TRAIN_MIXTURE, plain,
                                       settings.train_templates_per_dataset),
      'transfer': first_templates_mixture(sample_fewshot.MIXTURE,
                                          sample_fewshot.TASKS_BY_DATASET,
                                          settings.train_templates_per_dataset),
      'eval': first_templates_mixture(settings.eval_mixture, score,
                                      settings.eval_templates_per_dataset),
  }


# ------------------------------------------------------------------------------------------
# Probe sets: tokenized inputs with labels.
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Probe:
  """Encoder inputs `[N, T]` int32 and one label per row."""
  tokens: np.ndarray
  labels: list


def _task_inputs(task_name: str, n: int, length: int) -> np.ndarray:
  """First `n` validation `inputs` of a seqio task, padded / truncated to `length`."""
  import seqio  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset({'inputs': length, 'targets': 64}, split='validation', shuffle=False,
                        seed=0, use_cached=False, trim_output_features=True)
  rows = []
  for ex in ds.take(n).as_numpy_iterator():
    x = np.asarray(ex['inputs'], np.int32)[:length]
    rows.append(np.pad(x, (0, length - x.size)))
  return np.stack(rows) if rows else np.zeros((0, length), np.int32)


def build_probes(settings: Settings, input_length: int) -> tuple[Probe, Probe]:
  """(training-form probe labelled by cluster, held-out probe labelled by dataset)."""
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  train_tokens, train_labels, held_tokens, held_labels = [], [], [], []
  for spec in sample.DATASETS:
    names = sample.TASKS_BY_DATASET[spec.name]['plain']
    n = (settings.probe_heldout_examples_per_task if spec.heldout
         else settings.probe_train_examples_per_task)
    for name in names:
      x = _task_inputs(name, n, input_length)
      if spec.heldout:
        held_tokens.append(x)
        held_labels += [spec.name] * len(x)
      else:
        train_tokens.append(x)
        train_labels += [sample.TASK_CLUSTER[spec.name]] * len(x)
  return (Probe(np.concatenate(train_tokens), train_labels),
          Probe(np.concatenate(held_tokens), held_labels))


class RetrievalProbe:
  """Slot ids `[N, k]` retrieved for a probe's inputs with given parameters (jitted)."""

  def __init__(self, setup: runner.ModelSetup, batch_size: int = 64):
    self.setup = setup
    self.batch_size = batch_size
    network = setup.model.network

    def indices(params, tokens):
      _, state = network.apply({'params': params}, tokens, enable_dropout=False,
                               method=network.encode, mutable=['retrieval'])
      return state['retrieval']['encoder']['memory_bank']['indices'][0]

    self._fn = jax.jit(indices)

  def __call__(self, params: Any, tokens: np.ndarray) -> np.ndarray:
    out = []
    b = self.batch_size
    with self.setup.activate():
      for start in range(0, len(tokens), b):
        chunk = tokens[start:start + b]
        n = len(chunk)
        if n < b:  # Pad with copies of a real row (no all-padding query).
          chunk = np.concatenate([chunk, np.repeat(chunk[:1], b - n, axis=0)])
        out.append(np.asarray(self._fn(params, chunk))[:n])
    return np.concatenate(out)


def probe_statistics(train_idx: np.ndarray, train_labels: Sequence[str],
                     held_idx: np.ndarray, held_labels: Sequence[str], memory_size: int,
                     settings: Settings) -> dict[str, Any]:
  """Health and structure statistics of one probe (`retrieval_analysis.summarize`)."""
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  return ra.summarize(train_idx, list(train_labels), held_idx, list(held_labels), memory_size,
                      resembles=sample.HELDOUT_RESEMBLES, method=settings.overlap_method,
                      mass=settings.top_slots_mass)


def probe_steps(train_steps: int, fractions: Sequence[float]) -> list[int]:
  """Probe steps: `max(1, round(f * train_steps))`, unique, ascending."""
  return sorted({min(train_steps, max(1, int(round(f * train_steps)))) for f in fractions})


# ------------------------------------------------------------------------------------------
# One training run.
# ------------------------------------------------------------------------------------------
def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


CUMULATIVE_NEVER_USED = 'retrieval/cumulative_never_used_fraction'
CUMULATIVE_ENTROPY = 'retrieval/cumulative_normalized_entropy'
LEGACY_NEVER_USED = 'retrieval/never_used_fraction'   # cumulative too, in today's trainer


def retrieval_curve(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
  """Per-step retrieval health over all training retrievals so far, from metrics.jsonl rows.

  Prefers the trainer's `retrieval/cumulative_*` keys; a trainer that logs only
  `retrieval/never_used_fraction` (also cumulative) gives the never-used curve alone and
  entropy None. Rows of one step (the trainer writes scalars and perf rows separately) are
  merged.

  Returns:
    (`[{'step', 'cumulative_never_used_fraction', 'cumulative_normalized_entropy',
    'batch_normalized_entropy'}]` in step order, the source: 'cumulative' | 'legacy' |
    'none').
  """
  by_step: dict[int, dict[str, Any]] = {}
  for r in rows:
    if r.get('step', -1) >= 0:
      by_step.setdefault(int(r['step']), {}).update(r)
  has_cumulative = any(CUMULATIVE_NEVER_USED in r or CUMULATIVE_ENTROPY in r
                       for r in by_step.values())
  never_key = CUMULATIVE_NEVER_USED if has_cumulative else LEGACY_NEVER_USED
  curve = []
  for step in sorted(by_step):
    r = by_step[step]
    never, entropy = r.get(never_key), r.get(CUMULATIVE_ENTROPY)
    if never is None and entropy is None:
      continue
    curve.append({'step': step, 'cumulative_never_used_fraction': never,
                  'cumulative_normalized_entropy': entropy,
                  'batch_normalized_entropy': r.get('retrieval/normalized_entropy')})
  source = 'cumulative' if has_cumulative else ('legacy' if curve else 'none')
  return curve, source


def _is_cached(mixture_or_task_name: str) -> bool:
  """Whether every task of the mixture can be read from the seqio cache (the pre-rendered
  sample tasks can; eval then runs no template rendering)."""
  try:
    runner.check_cached(mixture_or_task_name)
  except ValueError:
    return False
  return True


def run_one(config: MethodConfig, seed: int, run_dir: str, settings: Settings, evaluator,
            eval_mixture: str, probes: Optional[tuple[Probe, Probe]],
            train_steps: int) -> dict[str, Any]:
  """Trains one (stage, method, seed) with the gin-configured trainer; evaluates; probes.

  gin must hold this configuration (`parse_config`). Returns the run's record (also written
  to `<run_dir>/record.json` by the caller).
  """
  method, stage = config.method, config.stage
  captured: dict[str, Any] = {}
  probe_log: list[dict[str, Any]] = []
  eval_metrics: dict[str, float] = {}
  steps_to_probe = set(probe_steps(train_steps, settings.probe_fractions))
  title = f'{method}, seed {seed}' + (', few-shot stage 2' if stage == 2 else '')

  def eval_factory(setup: runner.ModelSetup):
    captured['setup'] = setup
    captured['evaluation'] = evaluate_lib.Evaluation(
        setup, configs.DatasetConfig(eval_mixture, batch_size=settings.eval_batch_size,
                                     split='validation', seed=42),
        output_dir=os.path.join(run_dir, 'eval'), per_step_subdir=True,
        title=f'{title}: held-out sample tasks', evaluator=evaluator)
    model = setup.model
    if model.has_memory:
      captured['memory_size'] = model.memory_size
      if probes is not None:
        captured['probe'] = RetrievalProbe(setup)

    def run_eval(params, step):
      t = time.time()
      metrics = captured['evaluation'].run(params, step)
      captured['eval_seconds'] = time.time() - t
      eval_metrics.update(metrics)
      captured['eval_step'] = int(step)
      return metrics

    return run_eval

  def probe_hook(step: int, state) -> None:
    if 'probe' not in captured or step not in steps_to_probe:
      return
    train_probe, held_probe = probes
    fn = captured['probe']
    try:
      train_idx = fn(state.params, train_probe.tokens)
      held_idx = fn(state.params, held_probe.tokens)
    except (KeyError, TypeError) as e:  # A network that sows no slot ids (e.g. a new mode).
      logging.warning('%s seed %d: retrieval probe failed (%r); no probes for this run.',
                      method, seed, e)
      captured.pop('probe')
      return
    stats = probe_statistics(train_idx, train_probe.labels, held_idx, held_probe.labels,
                             captured['memory_size'], settings)
    stats['step'] = int(step)
    probe_log.append(stats)
    logging.info('%s seed %d step %d probe: train entropy ratio %.3f unused %.3f | held-out '
                 'entropy ratio %.3f', method, seed, step, stats['train']['entropy_ratio'],
                 stats['train']['unused_fraction'], stats['eval']['entropy_ratio'])

  t0 = time.time()
  # The gin-built training data with this run's seed (it also seeds initialisation).
  with gin.config_scope('train'):
    dataset_cfg = dataclasses.replace(gin_configurables.DatasetConfig(), seed=seed)
  result = gin_configurables.train(
      model_dir=run_dir, dataset_cfg=dataset_cfg, train_steps=train_steps, hooks=[probe_hook],
      eval_hook_factory=eval_factory, eval_every_steps=0)
  wall = time.time() - t0
  if 'eval_step' not in captured:
    raise RuntimeError(f'{method} seed {seed} stage {stage}: the trainer ended at step '
                       f'{result["step"]} without the final evaluation (preempted?); rerun '
                       'the script (the unfinished run is started afresh).')
  eval_dir = captured['evaluation'].results_dir(captured['eval_step'])
  from spt_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  results = results_lib.load_results(os.path.join(eval_dir, results_lib.RESULTS_JSON))
  rows = _read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
  training = [r for r in rows if r.get('step', -1) >= 0 and 'loss' in r]
  curve, curve_source = retrieval_curve(rows) if captured.get('memory_size') else ([], 'none')
  eval_health = {k: v for k, v in eval_metrics.items() if '/retrieval_' in k}
  final_loss = training[-1]['loss'] if training else float('nan')
  return {
      'name': run_name(stage, method, seed), 'method': method, 'stage': stage, 'seed': seed,
      'run_dir': run_dir, 'train_steps': train_steps, 'stand_in': config.stand_in,
      'gin_files': list(config.gin_files), 'bindings': list(config.bindings),
      'wall_seconds': wall, 'eval_seconds': captured.get('eval_seconds'),
      'finished_at': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
      'final_step': int(result['step']), 'final_train_loss': final_loss,
      'final_token_accuracy': training[-1].get('token_accuracy') if training else None,
      'datasets': {d: {'mean': e['mean'], 'median': e['median'],
                       'templates': e['templates']} for d, e in results['datasets'].items()},
      'overall': results['overall'],
      'memory_size': captured.get('memory_size'),
      'probes': probe_log,
      'train_retrieval': curve, 'train_retrieval_source': curve_source,
      'eval_health': eval_health,
  }


def run_name(stage: int, method: str, seed: int) -> str:
  """Directory name of a run under `<output_dir>/runs/`."""
  return f'{method}_seed{seed}' if stage == 1 else f'{method}_fewshot_seed{seed}'


def load_record(run_dir: str) -> Optional[dict[str, Any]]:
  """A finished run's record (`record.json`), or None if the run did not finish."""
  path = os.path.join(run_dir, RECORD_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_record(run_dir: str, record: Mapping[str, Any]) -> str:
  """Writes `record.json` atomically: its presence means the run finished."""
  path = os.path.join(run_dir, RECORD_JSON)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)
  return path


# ------------------------------------------------------------------------------------------
# Statistics over seeds.
# ------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> dict[str, Any]:
  """`{'mean', 'std', 'n', 'values'}`; std is the sample std (ddof 1), None for n < 2."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  return {'mean': float(v.mean()) if v.size else None,
          'std': float(v.std(ddof=1)) if v.size > 1 else None,
          'n': int(v.size), 'values': v.tolist()}


def difference_stats(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
  """`a − b` over seeds with its standard error, and whether it exceeds two of them.

  Paired when at least two seeds are in both (a seed fixes initialisation and data order
  for both methods, and a stage-2 run starts from the stage-1 run of its seed): the
  difference is the mean of the per-seed differences d_s and SE = std(d, ddof 1) / sqrt(n).
  Otherwise unpaired: difference of the means, SE = sqrt(var_a / n_a + var_b / n_b) (None if
  either side has fewer than two seeds).

  Args:
    a, b: `{seed: value}`.

  Returns:
    `{'difference', 'se', 'n', 'paired', 'seeds', 'mean_a', 'mean_b', 'exceeds_2se'}`;
    `exceeds_2se` is `|difference| > 2 SE` (None without an SE).
  """
  a = {int(k): float(v) for k, v in a.items() if v is not None}
  b = {int(k): float(v) for k, v in b.items() if v is not None}
  common = sorted(set(a) & set(b))
  out = {'mean_a': float(np.mean(list(a.values()))) if a else None,
         'mean_b': float(np.mean(list(b.values()))) if b else None}
  if len(common) >= 2:
    d = np.asarray([a[s] - b[s] for s in common])
    diff, se, n, paired, seeds = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), (
        d.size), True, common
  else:
    va, vb = np.asarray(list(a.values())), np.asarray(list(b.values()))
    diff = float(va.mean() - vb.mean()) if va.size and vb.size else None
    se = (float(math.sqrt(va.var(ddof=1) / va.size + vb.var(ddof=1) / vb.size))
          if va.size > 1 and vb.size > 1 else None)
    n, paired, seeds = min(va.size, vb.size), False, sorted(set(a) | set(b))
  exceeds = None if se is None or diff is None else bool(abs(diff) > 2.0 * se)
  out.update(difference=diff, se=se, n=int(n), paired=paired, seeds=seeds, exceeds_2se=exceeds)
  return out


def aggregate_curves(curves: Sequence[Sequence[tuple[int, Optional[float]]]]) -> dict[str, Any]:
  """Mean ± std over runs of `(step, value)` curves, on the steps every run has.

  Points with value None are dropped first; a run left with no point does not count.
  Steps are intersected rather than interpolated: the trainer logs every step, so runs of
  one configuration share their steps and the intersection is the whole curve.

  Returns:
    `{'steps': [S], 'mean': [S], 'std': [S] or None (one run), 'n': runs}`.
  """
  maps = [{int(s): float(v) for s, v in c if v is not None} for c in curves]
  maps = [m for m in maps if m]
  if not maps:
    return {'steps': [], 'mean': [], 'std': None, 'n': 0}
  steps = sorted(set.intersection(*(set(m) for m in maps)))
  values = np.asarray([[m[s] for s in steps] for m in maps], np.float64).reshape(len(maps), -1)
  return {'steps': steps, 'mean': values.mean(0).tolist(),
          'std': values.std(0, ddof=1).tolist() if len(maps) > 1 else None, 'n': len(maps)}


def curve_at(curve: Mapping[str, Any], fractions: Sequence[float]) -> list[dict[str, Any]]:
  """Points of an aggregated curve nearest to fractions of its step range (unique, ordered)."""
  steps = curve['steps']
  if not steps:
    return []
  span = steps[-1] - steps[0]
  picked = sorted({int(np.argmin([abs(s - steps[0] - f * span) for s in steps]))
                   for f in fractions})
  return [{'step': steps[i], 'mean': curve['mean'][i],
           'std': curve['std'][i] if curve['std'] else None} for i in picked]


HEALTH_CURVES = (('cumulative_never_used_fraction', 'never-used fraction'),
                 ('cumulative_normalized_entropy', 'normalized entropy'))


def training_curves(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """`{stage: {method: {curve key: aggregate_curves, 'source': [...]}}}` of memory runs."""
  out: dict[str, Any] = {}
  for r in runs:
    if not r.get('train_retrieval'):
      continue
    out.setdefault(str(r['stage']), {}).setdefault(r['method'], []).append(r)
  for stage, by_method in out.items():
    for method, mruns in by_method.items():
      entry = {key: aggregate_curves([[(p['step'], p[key]) for p in m['train_retrieval']]
                                      for m in mruns]) for key, _ in HEALTH_CURVES}
      entry['source'] = sorted({m.get('train_retrieval_source', 'legacy') for m in mruns})
      entry['seeds'] = [m['seed'] for m in mruns]
      by_method[method] = entry
  return out


def seed_values(runs: Sequence[Mapping[str, Any]], stage: int, method: str,
                column: str, key: str = 'mean') -> dict[int, float]:
  """`{seed: accuracy}` of one (stage, method) for a dataset or 'average' (over datasets)."""
  out = {}
  for r in runs:
    if r['stage'] == stage and r['method'] == method:
      if column == 'average':
        out[int(r['seed'])] = float(np.mean([e[key] for e in r['datasets'].values()]))
      elif column in r['datasets']:
        out[int(r['seed'])] = float(r['datasets'][column][key])
  return out


def comparisons(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """`{stage: {'a - b': {dataset | 'average': difference_stats}}}` for COMPARISONS present."""
  out: dict[str, Any] = {}
  for stage in (1, 2):
    sruns = [r for r in runs if r['stage'] == stage]
    present = {r['method'] for r in sruns}
    if not sruns:
      continue
    columns = list(sruns[0]['datasets']) + ['average']
    for a, b in COMPARISONS:
      if a in present and b in present:
        out.setdefault(str(stage), {})[f'{a} - {b}'] = {
            c: difference_stats(seed_values(runs, stage, a, c), seed_values(runs, stage, b, c))
            for c in columns}
  return out


def accuracy_table(runs: Sequence[Mapping[str, Any]], key: str = 'mean') -> dict[str, Any]:
  """`{method: {dataset | 'average': mean_std over seeds}}` of per-dataset accuracy.

  `key` 'mean' / 'median': the per-dataset statistic over templates. 'average' is the
  unweighted mean over datasets of each seed, then mean ± std over seeds. Pass the runs of
  one stage.
  """
  table: dict[str, Any] = {}
  for method in dict.fromkeys(r['method'] for r in runs):
    mruns = [r for r in runs if r['method'] == method]
    datasets = list(mruns[0]['datasets'])
    row = {d: mean_std([r['datasets'][d][key] for r in mruns]) for d in datasets}
    row['average'] = mean_std([float(np.mean([r['datasets'][d][key] for d in datasets]))
                               for r in mruns])
    table[method] = row
  return table


def _fmt(stat: Mapping[str, Any], digits: int = 3) -> str:
  """'mean ± std' ('mean' alone for one seed)."""
  if stat['mean'] is None:
    return 'n/a'
  if stat['std'] is None:
    return f'{stat["mean"]:.{digits}f}'
  return f'{stat["mean"]:.{digits}f} ± {stat["std"]:.{digits}f}'


def _fmt_diff(d: Mapping[str, Any], digits: int = 1) -> str:
  """'+x.x ± se (> 2 SE)' for a `difference_stats` entry."""
  if d['difference'] is None:
    return 'n/a'
  if d['se'] is None:
    return f'{d["difference"]:+.{digits}f} (no SE: one seed)'
  verdict = '**> 2 SE**' if d['exceeds_2se'] else 'within 2 SE'
  return f'{d["difference"]:+.{digits}f} ± {d["se"]:.{digits}f} ({verdict})'


def accuracy_markdown(table: Mapping[str, Any], title: str) -> str:
  columns = [c for c in next(iter(table.values())) if c != 'average'] + ['average']
  lines = [f'### {title}', '', '| method | ' + ' | '.join(columns) + ' |',
           '| --- ' * (len(columns) + 1) + '|']
  for method, row in table.items():
    lines.append(f'| {method} | ' + ' | '.join(_fmt(row[c], 1) for c in columns) + ' |')
  return '\n'.join(lines) + '\n'


def uniform_reference(num_retrievals: int, memory_size: int, draws: int = 20,
                      seed: int = 0) -> dict[str, float]:
  """Health of a uniform retriever with the same number of retrievals (the ceiling).

  With N retrievals over M slots even a perfectly uniform retriever leaves about
  `(1 - 1/M)^N` of the slots unused and has an entropy ratio below 1 when N is not >> M,
  so the measured values are read against these. Entropy: mean over `draws` multinomial
  samples (fixed seed).
  """
  rng = np.random.default_rng(seed)
  ratios = [ra.normalized_entropy(np.bincount(rng.integers(0, memory_size, num_retrievals),
                                              minlength=memory_size)) for _ in range(draws)]
  return {'entropy_ratio': float(np.mean(ratios)),
          'unused_fraction': float((1.0 - 1.0 / memory_size) ** num_retrievals)}


def health_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One CSV row per (SPT run, probe step): probe health of training-form and held-out inputs,
  with the uniform-retriever reference for the same number of retrievals."""
  rows = []
  for r in runs:
    for p in r['probes']:
      row = {'method': r['method'], 'stage': r['stage'], 'seed': r['seed'], 'step': p['step'],
             'memory_size': p['memory_size']}
      for name, key in (('train', 'train'), ('heldout', 'eval')):
        h = p[key]
        ref = uniform_reference(int(h['num_retrievals']), int(p['memory_size']))
        row.update({f'{name}_num_retrievals': h['num_retrievals'],
                    f'{name}_entropy_ratio': h['entropy_ratio'],
                    f'{name}_unused_fraction': h['unused_fraction'],
                    f'{name}_top_slot_share': h['top_slot_share'],
                    f'{name}_uniform_entropy_ratio': ref['entropy_ratio'],
                    f'{name}_uniform_unused_fraction': ref['unused_fraction']})
      rows.append(row)
  return rows


def structure_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Overlap and resemblance per probe step, mean ± std over seeds (runs with probes)."""
  mem = [r for r in runs if r['probes']]
  out: dict[str, Any] = {}
  for method in dict.fromkeys(r['method'] for r in mem):
    mruns = [r for r in mem if r['method'] == method]
    steps = [p['step'] for p in mruns[0]['probes']]
    per_step = {}
    for i, step in enumerate(steps):
      probes = [r['probes'][i] for r in mruns if len(r['probes']) > i]
      rows, cols = probes[0]['overlap']['rows'], probes[0]['overlap']['cols']
      matrices = np.stack([np.asarray(p['overlap']['matrix']) for p in probes])
      resemblance = {}
      for task in probes[0]['resemblance']:
        entries = [p['resemblance'][task] for p in probes]
        resemblance[task] = {
            'cluster': entries[0]['cluster'],
            'share': mean_std([e['share'] for e in entries]),
            'chance': mean_std([e['chance'] for e in entries]),
            'num_slots': mean_std([e['num_slots'] for e in entries]),
            'other_clusters_max_share': mean_std([e['other_clusters_max_share']
                                                  for e in entries]),
            'shares': {c: mean_std([e['shares'][c] for e in entries])
                       for c in entries[0]['shares']},
            'resembled_is_highest': [bool(e['share'] >= e['other_clusters_max_share'])
                                     for e in entries],
        }
      per_step[str(step)] = {
          'overlap': {'rows': rows, 'cols': cols, 'mean': matrices.mean(0).tolist(),
                      'std': (matrices.std(0, ddof=1).tolist() if len(probes) > 1 else None)},
          'resemblance': resemblance,
          'train_health': {k: mean_std([p['train'][k] for p in probes])
                           for k in ('entropy_ratio', 'unused_fraction', 'top_slot_share')},
          'heldout_health': {k: mean_std([p['eval'][k] for p in probes])
                             for k in ('entropy_ratio', 'unused_fraction', 'top_slot_share')},
      }
    out[method] = {'steps': steps, 'per_step': per_step,
                   'per_seed': {str(r['seed']): r['probes'] for r in mruns},
                   'change': resemblance_change(mruns)}
  return out


def resemblance_change(mruns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Per held-out dataset: resemblance share at the first vs the last probe step over seeds.

  Returns:
    `{'first_step', 'last_step', 'datasets': {task: {'cluster', 'first', 'last' (mean_std),
    'change' (difference_stats last − first, paired over seeds)}}}`; empty without probes.
  """
  mruns = [r for r in mruns if len(r['probes']) >= 2]
  if not mruns:
    return {}
  first_step, last_step = mruns[0]['probes'][0]['step'], mruns[0]['probes'][-1]['step']
  datasets = {}
  for task, e in mruns[0]['probes'][0]['resemblance'].items():
    first = {int(r['seed']): r['probes'][0]['resemblance'][task]['share'] for r in mruns}
    last = {int(r['seed']): r['probes'][-1]['resemblance'][task]['share'] for r in mruns}
    datasets[task] = {'cluster': e['cluster'], 'first': mean_std(list(first.values())),
                      'last': mean_std(list(last.values())),
                      'change': difference_stats(last, first)}
  return {'first_step': first_step, 'last_step': last_step, 'datasets': datasets}


def _write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  with open(path, 'w', newline='') as f:
    fields = list(dict.fromkeys(k for row in rows for k in row)) if rows else ['method']
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


# ------------------------------------------------------------------------------------------
# Plots.
# ------------------------------------------------------------------------------------------
def plot_accuracy(table: Mapping[str, Any], path: str, title: str) -> None:
  plt = plots.pyplot()
  methods = list(table)
  columns = [c for c in next(iter(table.values())) if c != 'average'] + ['average']
  width = 0.8 / len(methods)
  fig, ax = plt.subplots(figsize=(2 + 1.8 * len(columns), 4))
  for i, m in enumerate(methods):
    means = [table[m][c]['mean'] for c in columns]
    stds = [table[m][c]['std'] or 0.0 for c in columns]
    ax.bar(np.arange(len(columns)) + i * width, means, width, yerr=stds, capsize=3, label=m)
  ax.axhline(50.0, color='gray', lw=0.8, ls='--', label='chance (2 choices)')
  ax.set_xticks(np.arange(len(columns)) + width * (len(methods) - 1) / 2)
  ax.set_xticklabels([c.replace('sample_', '') for c in columns], rotation=20, ha='right')
  ax.set_ylabel('accuracy % (mean over templates)')
  ax.set_ylim(0, 100)
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save_figure(fig, path)


def plot_training_curves(curves: Mapping[str, Any], path: str) -> None:
  """Cumulative never-used fraction and normalized entropy vs step, one row per stage."""
  plt = plots.pyplot()
  stages = sorted(curves)
  fig, axes = plt.subplots(len(stages), 2, figsize=(11, 3.8 * len(stages)), squeeze=False)
  colors = {m: f'C{i}' for i, m in enumerate(METHODS)}   # one colour per method in both rows
  for row, stage in zip(axes, stages):
    for ax, (key, label) in zip(row, HEALTH_CURVES):
      for method, entry in curves[stage].items():
        c = entry[key]
        if not c['steps']:
          continue
        ax.plot(c['steps'], c['mean'], color=colors.get(method), label=f'{method} (n={c["n"]})')
        if c['std']:
          lo = np.asarray(c['mean']) - np.asarray(c['std'])
          hi = np.asarray(c['mean']) + np.asarray(c['std'])
          ax.fill_between(c['steps'], lo, hi, color=colors.get(method), alpha=0.2)
      name = 'stage 1 (multitask)' if stage == '1' else 'stage 2 (few-shot)'
      ax.set_title(f'{name}: cumulative {label}\n(all training retrievals so far; mean ± std '
                   'over seeds)', fontsize=9)
      ax.set_xlabel('training step')
      ax.set_ylim(0, 1.02)
      if ax.lines:
        ax.legend(fontsize=7, loc='upper right')
      else:
        ax.text(0.5, 0.5, 'not logged by this trainer', ha='center', va='center',
                transform=ax.transAxes)
  fig.tight_layout()
  plots.save_figure(fig, path)


def plot_probe_health(runs: Sequence[Mapping[str, Any]], path: str) -> None:
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for r in runs:
    if not r['probes']:
      continue
    steps = [p['step'] for p in r['probes']]
    for ax, key in zip(axes, ('entropy_ratio', 'unused_fraction')):
      ax.plot(steps, [p['train'][key] for p in r['probes']], 'o-',
              label=f'{r["method"]} s{r["seed"]} train-form probe')
      ax.plot(steps, [p['eval'][key] for p in r['probes']], 's--',
              label=f'{r["method"]} s{r["seed"]} held-out probe')
  axes[0].set_title('probe slot-usage entropy ÷ log M')
  axes[1].set_title('probe fraction of never-used slots')
  for ax in axes:
    ax.set_xlabel('training step')
    ax.set_ylim(0, 1.02)
  axes[1].legend(fontsize=6)
  fig.tight_layout()
  plots.save_figure(fig, path)


def plot_resemblance(structure: Mapping[str, Any], method: str, path: str) -> None:
  plt = plots.pyplot()
  final = structure[method]['per_step'][str(structure[method]['steps'][-1])]
  tasks = list(final['resemblance'])
  fig, ax = plt.subplots(figsize=(2 + 2.2 * max(len(tasks), 1), 4))
  width = 0.27
  x = np.arange(len(tasks))
  res = [final['resemblance'][t] for t in tasks]
  ax.bar(x - width, [e['share']['mean'] for e in res], width,
         yerr=[e['share']['std'] or 0 for e in res], capsize=3, label='resembled cluster')
  ax.bar(x, [e['other_clusters_max_share']['mean'] for e in res], width,
         yerr=[e['other_clusters_max_share']['std'] or 0 for e in res], capsize=3,
         label='best other cluster')
  ax.bar(x + width, [e['chance']['mean'] for e in res], width, label='chance (slots / M)')
  ax.set_xticks(x)
  ax.set_xticklabels([f'{t.replace("sample_", "")}\n→ {e["cluster"]}' for t, e in zip(tasks, res)],
                     fontsize=8)
  ax.set_ylabel("share of the held-out task's retrievals")
  ax.set_ylim(0, 1)
  ax.set_title(f'{method}: retrievals in a cluster\'s top slots (step '
               f'{structure[method]["steps"][-1]}, mean ± std over seeds)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save_figure(fig, path)


# ------------------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------------------
STAGE_TITLES = {1: 'Stage 1: zero-shot held-out accuracy after multitask training',
                2: 'Stage 2: held-out accuracy after few-shot prompt tuning (backbone frozen)'}


def _preferred(methods: Sequence[str]) -> Optional[str]:
  """The method the single-method figures show: spt if present, else the first."""
  methods = list(methods)
  return 'spt' if 'spt' in methods else (methods[0] if methods else None)


def write_outputs(output_dir: str, runs: Sequence[Mapping[str, Any]],
                  config: Mapping[str, Any]) -> dict[str, str]:
  """Writes every result file (see the module docstring); returns `{name: path}`."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {}
  by_stage = {s: [r for r in runs if r['stage'] == s] for s in (1, 2)}
  tables = {s: {'mean_over_templates': accuracy_table(sr, 'mean'),
                'median_over_templates': accuracy_table(sr, 'median')}
            for s, sr in by_stage.items() if sr}
  per_run = [{'stage': r['stage'], 'method': r['method'], 'seed': r['seed'],
              **{d: r['datasets'][d]['mean'] for d in r['datasets']},
              'average': float(np.mean([r['datasets'][d]['mean'] for d in r['datasets']])),
              'final_train_loss': r['final_train_loss'], 'wall_seconds': r['wall_seconds'],
              'stand_in': r.get('stand_in')}
             for r in runs]
  paths['accuracy_json'] = os.path.join(output_dir, 'accuracy.json')
  with open(paths['accuracy_json'], 'w') as f:
    json.dump({'metric': 'accuracy (rank classification), percent',
               **{f'stage{s}': t for s, t in tables.items()},
               'per_run': per_run,
               'per_template': {f'{r["name"]}': {d: e['templates']
                                                 for d, e in r['datasets'].items()}
                                for r in runs}}, f, indent=2)
  rows = []
  for s, t in tables.items():
    for stat, table in t.items():
      for method, row in table.items():
        for col, st in row.items():
          rows.append({'stage': s, 'statistic': stat, 'method': method, 'dataset': col,
                       'mean': st['mean'], 'std': st['std'], 'n_seeds': st['n'],
                       'per_seed': ' '.join(f'{v:.4f}' for v in st['values'])})
  paths['accuracy_csv'] = os.path.join(output_dir, 'accuracy.csv')
  _write_csv(paths['accuracy_csv'], rows)
  acc_md = ''
  for s, t in tables.items():
    acc_md += (accuracy_markdown(t['mean_over_templates'], f'{STAGE_TITLES[s]} (%, mean over '
                                 'templates; mean ± std over seeds)') + '\n' +
               accuracy_markdown(t['median_over_templates'],
                                 f'Stage {s}, median over templates') + '\n')
  paths['accuracy_md'] = os.path.join(output_dir, 'accuracy.md')
  with open(paths['accuracy_md'], 'w') as f:
    f.write(acc_md)
  for s, name in ((1, 'accuracy.png'), (2, 'accuracy_transfer.png')):
    if s in tables:
      paths[f'accuracy_png_stage{s}'] = os.path.join(output_dir, name)
      plot_accuracy(tables[s]['mean_over_templates'], paths[f'accuracy_png_stage{s}'],
                    f'{STAGE_TITLES[s]}\n(mean ± std over seeds)')

  diffs = comparisons(runs)
  paths['comparisons_json'] = os.path.join(output_dir, 'comparisons.json')
  with open(paths['comparisons_json'], 'w') as f:
    json.dump({'note': 'a - b in accuracy points; SE of the per-seed difference (paired over '
                       'seeds) or unpaired when fewer than two seeds are shared',
               **{f'stage{s}': d for s, d in diffs.items()}}, f, indent=2)

  structure = structure_summary(by_stage[1])
  curves = training_curves(runs)
  hrows = health_rows(runs)
  paths['health_csv'] = os.path.join(output_dir, 'health.csv')
  _write_csv(paths['health_csv'], hrows)
  paths['health_json'] = os.path.join(output_dir, 'health.json')
  with open(paths['health_json'], 'w') as f:
    json.dump({'training_curves': curves,
               'probe': hrows,
               'summary': {m: {'steps': s['steps'],
                               'train_health': {st: s['per_step'][st]['train_health']
                                                for st in s['per_step']},
                               'heldout_health': {st: s['per_step'][st]['heldout_health']
                                                  for st in s['per_step']}}
                           for m, s in structure.items()},
               'training_batches': {r['name']: r['train_retrieval']
                                    for r in runs if r['train_retrieval']},
               'eval': {r['name']: r['eval_health'] for r in runs if r['eval_health']}},
              f, indent=2)
  paths['structure_json'] = os.path.join(output_dir, 'structure.json')
  with open(paths['structure_json'], 'w') as f:
    json.dump(structure, f, indent=2)
  if curves:
    paths['health_png'] = os.path.join(output_dir, 'health_over_training.png')
    plot_training_curves(curves, paths['health_png'])
  if structure:
    paths['health_probes_png'] = os.path.join(output_dir, 'health_probes.png')
    plot_probe_health(by_stage[1], paths['health_probes_png'])
    method = _preferred(structure)
    final_step = structure[method]['steps'][-1]
    final = structure[method]['per_step'][str(final_step)]
    paths['overlap_png'] = os.path.join(output_dir, 'overlap_heatmap.png')
    ra.plot_heatmap(np.asarray(final['overlap']['mean']), final['overlap']['rows'],
                    final['overlap']['cols'], paths['overlap_png'],
                    title=f'{method}: slot overlap ({config["overlap_method"]}), step '
                    f'{final_step}', xlabel='training cluster',
                    ylabel='held-out dataset', colorbar_label='overlap', vmin=0.0, vmax=1.0)
    paths['resemblance_png'] = os.path.join(output_dir, 'resemblance_share.png')
    plot_resemblance(structure, method, paths['resemblance_png'])
  paths['summary_md'] = os.path.join(output_dir, 'summary.md')
  with open(paths['summary_md'], 'w') as f:
    f.write(summary_markdown(runs, acc_md, structure, curves, diffs, config))
  return paths


def control_verdict(diffs: Mapping[str, Any], runs: Sequence[Mapping[str, Any]],
                    stage: int) -> Optional[str]:
  """One sentence on `spt` vs `spt_fixed_random` (average held-out accuracy) in a stage."""
  entry = diffs.get(str(stage), {}).get('spt - spt_fixed_random')
  if entry is None:
    return None
  stand_ins = {r.get('stand_in') for r in runs
               if r['method'] == 'spt_fixed_random' and r.get('stand_in')}
  d = entry['average']
  head = f'Stage {stage}, spt − spt_fixed_random (average held-out accuracy): {_fmt_diff(d)}. '
  if stand_ins:
    return head + ('**No verdict: the control did not run** — ' + ' '.join(sorted(stand_ins)))
  if d['exceeds_2se'] is None:
    return head + 'No verdict: one seed gives no standard error.'
  if not d['exceeds_2se']:
    return head + ('**Retrieval adds nothing measurable here: the default SPT ties the '
                   'fixed-random control (within two standard errors).**')
  if d['difference'] > 0:
    return head + 'The default SPT beats the fixed-random control by more than two SE.'
  return head + ('**The default SPT is worse than the fixed-random control** by more than '
                 'two SE: what retrieval learns hurts here.')


def summary_markdown(runs, acc_md: str, structure: Mapping[str, Any],
                     curves: Mapping[str, Any], diffs: Mapping[str, Any],
                     config: Mapping[str, Any]) -> str:
  planned = config.get('planned_runs', [])
  done = {r['name'] for r in runs}
  n_done, n_planned = len([p for p in planned if p in done]), len(planned)
  if n_done >= n_planned:
    status = f'**{n_done} of {n_planned} runs complete.**'
  else:
    missing = [p for p in planned if p not in done]
    status = (f'**PARTIAL: {n_done} of {n_planned} runs complete** when this was written '
              f'({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}); still to run: '
              f'{", ".join(missing)}.')
  run_seconds = sum(float(r['wall_seconds']) for r in runs)
  lines = ['# Method validity on the sample mixture', '', status, '',
           f'Command: `{config["command"]}`', '',
           f'Stage 1: methods {config["methods"]}, {config["train_steps"]} steps of batch '
           f'{config["batch_size"]} on `{config.get("train_mixture")}`. Stage 2: '
           f'{config.get("transfer_methods") or "none"}, {config.get("transfer_steps")} '
           f'steps on `{config.get("transfer_mixture")}` from each stage-1 run\'s final '
           'checkpoint (orbax: trained prompts and memory kept), backbone frozen, Adafactor '
           f'at {config.get("transfer_learning_rate")}. Seeds {config["seeds"]}; feature '
           f'lengths {config["task_feature_lengths"]}; eval `{config.get("eval_mixture")}`; '
           f'every prompt is L_p + k·L_m = {config["spt_prefix_length"]} positions long.', '',
           f'Wall time: {run_seconds:.0f} s in the {len(runs)} finished runs (training + '
           f'eval); this invocation {config["wall_seconds"]:.0f} s and all invocations into '
           f'this directory {config.get("total_wall_seconds", config["wall_seconds"]):.0f} s '
           f'including set-up, on {config["device"]}.']
  if n_done < n_planned and runs:
    per_stage = {s: [float(r['wall_seconds']) for r in runs if r['stage'] == s] for s in (1, 2)}
    left = [p for p in planned if p not in done]
    est = sum(np.mean(per_stage[2 if '_fewshot_' in p else 1] or per_stage[1] or [0])
              for p in left)
    lines += ['', f'Estimated time still needed at the mean wall time of the finished runs: '
              f'{est / 60:.0f} min.']
  stand_ins = sorted({f'{r["method"]}: {r["stand_in"]}' for r in runs if r.get('stand_in')})
  if stand_ins:
    lines += ['', '**Stand-ins (these runs are not the method they are named after):**', '']
    lines += [f'* {s}' for s in stand_ins]

  lines += ['', '## Verdicts', '']
  for stage in (1, 2):
    for pair, label in (('spt - prompt_tuning', 'SPT − prompt tuning'),
                        ('spt_paper - prompt_tuning', 'paper SPT − prompt tuning'),
                        ('spt - spt_paper', 'default SPT − paper SPT')):
      d = diffs.get(str(stage), {}).get(pair)
      if d is not None:
        lines.append(f'* Stage {stage}, {label} (average held-out accuracy, points): '
                     f'{_fmt_diff(d["average"])}.')
    v = control_verdict(diffs, runs, stage)
    if v:
      lines.append(f'* {v}')
  if not any(diffs.values()):
    lines.append('* No comparison yet (a method pair needs finished runs of both).')
  lines += ['', 'Differences are a − b in accuracy points with the standard error of the '
            'per-seed difference (paired over seeds; a stage-2 run of seed s starts from the '
            'stage-1 run of seed s); "> 2 SE" means |difference| exceeds two standard errors. '
            'With three seeds this is a weak test: a gap within 2 SE is "not shown", not '
            '"absent".', '', acc_md]
  for stage in (1, 2):
    stage_diffs = diffs.get(str(stage), {})
    if not stage_diffs:
      continue
    columns = list(next(iter(stage_diffs.values())))
    lines += [f'### Stage {stage}: differences (points, ± SE of the difference)', '',
              '| a − b | ' + ' | '.join(columns) + ' |', '| --- ' * (len(columns) + 1) + '|']
    for pair, row in stage_diffs.items():
      lines.append(f'| {pair} | ' + ' | '.join(_fmt_diff(row[c]) for c in columns) + ' |')
    lines.append('')

  lines += ['### Runs', '', '| stage | method | seed | final train loss | token acc | '
            'held-out avg | wall s | eval s | finished |',
            '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in runs:
    avg = np.mean([r['datasets'][d]['mean'] for d in r['datasets']])
    lines.append(f'| {r["stage"]} | {r["method"]}{" (stand-in)" if r.get("stand_in") else ""} '
                 f'| {r["seed"]} | {r["final_train_loss"]:.3f} | '
                 f'{(r["final_token_accuracy"] or float("nan")):.3f} | {avg:.1f} | '
                 f'{r["wall_seconds"]:.0f} | {(r["eval_seconds"] or float("nan")):.0f} | '
                 f'{r.get("finished_at", "")} |')

  lines += ['', '## Retrieval health over training', '',
            'Over ALL training retrievals up to each step (the trainer\'s metrics.jsonl), mean '
            '± std over seeds; health_over_training.png has the whole curves.', '']
  fractions = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
  for stage, by_method in sorted(curves.items()):
    methods = list(by_method)
    lines += [f'#### Stage {stage}: never-used fraction / normalized entropy, cumulative', '',
              '| step | ' + ' | '.join(methods) + ' |', '| --- ' * (len(methods) + 1) + '|']
    # Rows: the steps of the first method's curve nearest to the fractions (runs of one
    # stage share their steps).
    first = by_method[methods[0]]
    rows = curve_at(first['cumulative_never_used_fraction'], fractions) or curve_at(
        first['cumulative_normalized_entropy'], fractions)
    for row in rows:
      cells = []
      for method in methods:
        pair = []
        for key, _ in HEALTH_CURVES:
          c = by_method[method][key]
          i = c['steps'].index(row['step']) if row['step'] in c['steps'] else None
          pair.append('—' if i is None else _fmt(
              {'mean': c['mean'][i], 'std': c['std'][i] if c['std'] else None}))
        cells.append(' / '.join(pair))
      lines.append(f'| {row["step"]} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Seeds and source per method: ' + '; '.join(
        f'{m} {e["seeds"]} ({", ".join(e["source"])}' +
        (', entropy not logged by this trainer)' if not e['cumulative_normalized_entropy']['n']
         else ')') for m, e in by_method.items()) + '.', '']

  for method, s in structure.items():
    lines += ['', f'### Retrieval health ({method}; probes, mean ± std over seeds)', '',
              'In brackets: a uniform retriever with the same number of retrievals (N) over '
              'the same M slots.', '',
              '| step | train-form entropy ÷ log M | train-form unused | held-out entropy ÷ '
              'log M | held-out unused | top slot share (train-form) |',
              '| --- | --- | --- | --- | --- | --- |']
    first = next(r for r in runs if r['method'] == method and r['probes'])['probes'][0]
    m_slots = int(first['memory_size'])
    ref_t = uniform_reference(int(first['train']['num_retrievals']), m_slots)
    ref_h = uniform_reference(int(first['eval']['num_retrievals']), m_slots)
    for st in map(str, s['steps']):
      th, hh = s['per_step'][st]['train_health'], s['per_step'][st]['heldout_health']
      lines.append(f'| {st} | {_fmt(th["entropy_ratio"])} [{ref_t["entropy_ratio"]:.3f}] | '
                   f'{_fmt(th["unused_fraction"])} [{ref_t["unused_fraction"]:.3f}] | '
                   f'{_fmt(hh["entropy_ratio"])} [{ref_h["entropy_ratio"]:.3f}] | '
                   f'{_fmt(hh["unused_fraction"])} [{ref_h["unused_fraction"]:.3f}] | '
                   f'{_fmt(th["top_slot_share"])} |')
    lines += ['', f'Probe sizes: N = {first["train"]["num_retrievals"]} training-form and '
              f'{first["eval"]["num_retrievals"]} held-out retrievals, M = {m_slots}.']
    evh = {}
    for r in runs:
      if r['method'] == method and r['stage'] == 1:
        for k, v in r['eval_health'].items():
          evh.setdefault(k, []).append(v)
    if evh:
      lines += ['', 'At eval (evaluator, all scored held-out examples): ' + '; '.join(
          f'{k} {_fmt(mean_std(v))}' for k, v in sorted(evh.items())
          if k.endswith(('entropy_ratio', 'unused_fraction'))) + '.']

    change = s.get('change') or {}
    if change:
      lines += ['', f'### Is the structure learned? ({method}: resemblance share at step '
                f'{change["first_step"]} vs step {change["last_step"]})', '',
                '| held-out dataset | resembles | share at first step | share at last step '
                '| change (± SE, paired over seeds) | moved? |',
                '| --- | --- | --- | --- | --- | --- |']
      for task, e in change['datasets'].items():
        c = e['change']
        if c['exceeds_2se'] is None:
          moved = 'undetermined (one seed)'
        else:
          moved = (('**yes**, up' if c['difference'] > 0 else '**yes**, down')
                   if c['exceeds_2se'] else 'no (within 2 SE)')
        lines.append(f'| {task} | {e["cluster"]} | {_fmt(e["first"])} | {_fmt(e["last"])} | '
                     f'{_fmt_diff(c, 3)} | {moved} |')

    lines += ['', f'### Retrieval structure ({method})', '',
              f'Share of each held-out dataset\'s retrievals in the slots holding '
              f'{config["top_slots_mass"]:.0%} of the retrievals of a training cluster '
              '(mean ± std over seeds).', '',
              '| step | held-out dataset | resembles | share there | best other cluster '
              '| chance | resembled is highest (per seed) |',
              '| --- | --- | --- | --- | --- | --- | --- |']
    for st in map(str, s['steps']):
      for task, e in s['per_step'][st]['resemblance'].items():
        lines.append(f'| {st} | {task} | {e["cluster"]} | {_fmt(e["share"])} | '
                     f'{_fmt(e["other_clusters_max_share"])} | {_fmt(e["chance"])} | '
                     f'{e["resembled_is_highest"]} |')
    final = s['per_step'][str(s['steps'][-1])]['overlap']
    lines += ['', f'Overlap ({config["overlap_method"]}) at step {s["steps"][-1]}, rows '
              'held-out datasets, columns training clusters (mean over seeds):', '',
              '| | ' + ' | '.join(final['cols']) + ' |',
              '| --- ' * (len(final['cols']) + 1) + '|']
    for row, vals in zip(final['rows'], final['mean']):
      lines.append(f'| {row} | ' + ' | '.join(f'{v:.3f}' for v in vals) + ' |')
  lines += ['', 'Files: accuracy.{json,csv,md,png}, accuracy_transfer.png, comparisons.json, '
            'health.{json,csv}, health_over_training.png, health_probes.png, structure.json, '
            'overlap_heatmap.png, resemblance_share.png, runs.json, '
            'runs/<method>_seed<s>/ and runs/<method>_fewshot_seed<s>/ (record.json each).',
            '']
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------
# The experiment.
# ------------------------------------------------------------------------------------------
def enable_compilation_cache(path: str) -> None:
  """Persists XLA compilations (the seeds of one method compile the same step function)."""
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def experiment_plan(methods: Sequence[str], transfer_methods: Sequence[str],
                    seeds: Sequence[int]) -> list[tuple[int, str, int]]:
  """`(stage, method, seed)` in run order: seed-major, each seed's stage 1 then its stage 2,
  so a partial experiment still compares every method on the seeds it finished."""
  plan = []
  for seed in seeds:
    plan += [(1, m, int(seed)) for m in methods]
    plan += [(2, m, int(seed)) for m in transfer_methods]
  return plan


def run_experiment(output_dir: str, methods: Sequence[str] = METHODS,
                   seeds: Sequence[int] = (0, 1, 2), steps: Optional[int] = None,
                   transfer_steps: Optional[int] = None,
                   transfer_methods: Sequence[str] = TRANSFER_METHODS,
                   quick: bool = False, gin_files: Sequence[str] = (),
                   gin_bindings: Sequence[str] = (), gin_search_paths: Sequence[str] = ('gin',),
                   command: str = '', compilation_cache: bool = True) -> dict[str, Any]:
  """Trains and evaluates every planned run not finished yet; writes the outputs after each.

  A run is finished when `runs/<name>/record.json` exists; those are loaded, not retrained
  (unless they were a stand-in that now has its real configuration, which retrains it and
  the stage-2 run that starts from it). An unfinished run directory is removed and the run
  starts afresh (the trainer would otherwise resume its last checkpoint without the probes
  of the earlier steps).
  """
  t_start = time.time()
  methods = list(methods)
  for m in methods:
    if m not in METHODS:
      raise ValueError(f'Unknown method {m!r}; --methods takes a comma list of {METHODS}.')
  transfer_methods = [m for m in transfer_methods if m]
  for m in transfer_methods:
    if m not in TRANSFER_METHODS:
      raise ValueError(f'Unknown transfer method {m!r}; --transfer_methods takes a comma list '
                       f'of {TRANSFER_METHODS}.')
    if m not in methods:
      raise ValueError(f'Stage 2 of {m!r} starts from its stage-1 run: add it to --methods '
                       'or drop it from --transfer_methods.')
  bindings = list(gin_bindings)
  if quick:
    seeds = list(seeds)[:1]
    steps = steps or QUICK_STEPS
    transfer_steps = transfer_steps or QUICK_TRANSFER_STEPS
    bindings = list(QUICK_BINDINGS) + bindings
  os.makedirs(output_dir, exist_ok=True)
  if compilation_cache:
    enable_compilation_cache(os.path.join(output_dir, 'jax_cache'))

  prefix = spt_prefix_length(bindings, gin_files, gin_search_paths)
  pt_bindings = [f'prompts.PromptConfig.soft_prompt_length = {prefix}']

  # Settings and lengths are method-independent: read them once from the SPT configuration.
  settings = Settings()
  lengths = dict(gin.query_parameter('%TASK_FEATURE_LENGTHS'))
  train_steps = int(steps or gin.query_parameter('%TRAIN_STEPS'))
  batch_size = int(gin.query_parameter('%BATCH_SIZE'))
  mixtures = experiment_mixtures(settings)
  eval_mixture = mixtures['eval']
  stage_bindings = {1: [], 2: []}
  if settings.train_templates_per_dataset is not None:  # Smoke run: smaller pipelines.
    stage_bindings = {1: [f"MIXTURE_OR_TASK_NAME = '{mixtures['train']}'"],
                      2: [f"MIXTURE_OR_TASK_NAME = '{mixtures['transfer']}'"]}
  transfer_mixture = transfer_lr = None
  if transfer_methods:
    parse_config(resolve_method(transfer_methods[0], 2, bindings=bindings + stage_bindings[2],
                                extra_files=gin_files, search_paths=gin_search_paths,
                                initial_checkpoint='(stage 1)'), gin_search_paths)
    transfer_steps = int(transfer_steps or gin.query_parameter('%TRANSFER_STEPS'))
    transfer_mixture = gin.query_parameter('%MIXTURE_OR_TASK_NAME')
    transfer_lr = gin.query_parameter('configs.OptimizerConfig.learning_rate')
  logging.info('Settings %s; lengths %s; %d steps of batch %d; transfer %s steps %s; SPT '
               'prefix %d; eval %s', settings, lengths, train_steps, batch_size,
               transfer_methods, transfer_steps, prefix, eval_mixture)

  plan = experiment_plan(methods, transfer_methods, seeds)
  names = [run_name(*p) for p in plan]
  config = {'command': command, 'methods': methods, 'seeds': [int(s) for s in seeds],
            'transfer_methods': transfer_methods, 'train_steps': train_steps,
            'transfer_steps': transfer_steps, 'transfer_mixture': transfer_mixture,
            'transfer_learning_rate': transfer_lr, 'batch_size': batch_size,
            'train_mixture': mixtures['train'],
            'task_feature_lengths': lengths, 'spt_prefix_length': prefix,
            'eval_mixture': eval_mixture, 'overlap_method': settings.overlap_method,
            'top_slots_mass': settings.top_slots_mass,
            'settings': dataclasses.asdict(settings), 'planned_runs': names,
            'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
            'wall_seconds': 0.0, 'complete': False}

  # Wall time of earlier invocations into this directory (a resumed experiment's total).
  earlier_seconds = 0.0
  if os.path.exists(os.path.join(output_dir, 'runs.json')):
    with open(os.path.join(output_dir, 'runs.json')) as f:
      earlier = json.load(f)['config']
    earlier_seconds = float(earlier.get('total_wall_seconds', earlier.get('wall_seconds', 0.0)))

  # Finished runs are kept; stand-ins whose real configuration now exists are redone.
  records: dict[str, dict[str, Any]] = {}
  redo: set[str] = set()
  for (stage, method, seed), name in zip(plan, names):
    record = load_record(os.path.join(output_dir, 'runs', name))
    if record is None:
      continue
    expected = train_steps if stage == 1 else transfer_steps
    if int(record['train_steps']) != expected:
      raise ValueError(f'{name} in {output_dir} finished with {record["train_steps"]} steps, '
                       f'this invocation asks for {expected}; use a fresh --output_dir (or the '
                       'same --steps / --transfer_steps).')
    now = resolve_method(method, stage, search_paths=gin_search_paths,
                         initial_checkpoint='(stage 1)')
    if (record.get('stand_in') and not now.stand_in) or (
        stage == 2 and run_name(1, method, seed) in redo):
      logging.warning('%s was a stand-in (or starts from one) and will be redone.', name)
      redo.add(name)
      continue
    records[name] = record
  if records:
    logging.info('Finished runs kept: %s', sorted(records))

  evaluator = None
  probes = None

  def ordered() -> list[dict[str, Any]]:
    return [records[n] for n in names if n in records]

  def write(final: bool) -> dict[str, str]:
    config['wall_seconds'] = time.time() - t_start
    config['total_wall_seconds'] = earlier_seconds + config['wall_seconds']
    config['complete'] = all(n in records for n in names)
    write_runs_json(output_dir, config, ordered())
    if final:
      return write_outputs(output_dir, ordered(), config)
    try:  # Interim outputs must not stop the experiment (--rewrite redoes them).
      return write_outputs(output_dir, ordered(), config)
    except Exception:  # pylint: disable=broad-except
      logging.exception('Interim outputs failed; runs.json is written, continuing.')
      return {}

  if records:
    write(final=False)
  for (stage, method, seed), name in zip(plan, names):
    if name in records:
      continue
    if evaluator is None:  # Built only when something is left to run.
      evaluator = evaluate_lib.create_seqio_evaluator(
          eval_mixture, task_feature_lengths=lengths, num_examples=settings.eval_num_examples,
          use_cached=_is_cached(eval_mixture))
      if any(m in MEMORY_METHODS for m in methods):
        probes = build_probes(settings, lengths['inputs'])
    run_dir = os.path.join(output_dir, 'runs', name)
    extra = pt_bindings if method == 'prompt_tuning' else []
    start_from = None
    if stage == 2:
      start_from = os.path.join(output_dir, 'runs', run_name(1, method, seed))
      if run_name(1, method, seed) not in records:
        raise RuntimeError(f'{name} needs the finished stage-1 run {start_from}.')
    cfg = resolve_method(method, stage, bindings=bindings + extra + stage_bindings[stage],
                         extra_files=gin_files, search_paths=gin_search_paths,
                         initial_checkpoint=start_from)
    parse_config(cfg, gin_search_paths)
    if method != 'finetune':
      check_prefix_length(method, prefix)
    if cfg.stand_in:
      logging.warning('%s is a STAND-IN: %s', name, cfg.stand_in)
    if os.path.exists(run_dir):
      logging.warning('%s holds an unfinished run (no %s); removing it to start afresh.',
                      run_dir, RECORD_JSON)
      shutil.rmtree(run_dir)
    logging.info('=== %s (stage %d, %s, seed %d) -> %s', name, stage, method, seed, run_dir)
    record = run_one(cfg, seed, run_dir, settings, evaluator, eval_mixture,
                     probes if (stage == 1 and method in MEMORY_METHODS) else None,
                     train_steps if stage == 1 else transfer_steps)
    with open(os.path.join(run_dir, 'config.gin'), 'w') as f:
      f.write(gin.config_str())
    write_record(run_dir, record)
    records[name] = record
    logging.info('%s: %.0f s, held-out %s; %d of %d runs complete', name,
                 record['wall_seconds'],
                 {d: round(e['mean'], 4) for d, e in record['datasets'].items()},
                 len(records), len(names))
    # Outputs after every run: an interrupted experiment keeps what it measured.
    write(final=all(n in records for n in names))
  paths = write(final=True)
  if evaluator is not None:
    evaluator.close()
  logging.info('Done in %.0f s; results in %s', config['wall_seconds'], output_dir)
  return {'paths': paths, 'runs': ordered(), 'config': config}


def write_runs_json(output_dir: str, config: Mapping[str, Any],
                    runs: Sequence[Mapping[str, Any]]) -> str:
  """`runs.json`: the settings and every finished run's record (all outputs derive from it)."""
  path = os.path.join(output_dir, 'runs.json')
  with open(path + '.tmp', 'w') as f:
    json.dump({'config': config, 'runs': list(runs)}, f, indent=2)
  os.replace(path + '.tmp', path)
  return path


def rewrite_outputs(output_dir: str) -> dict[str, str]:
  """Re-writes every output file from `<output_dir>/runs.json` and the runs' record.json
  files (a record newer than runs.json, e.g. of a run that finished as the job was killed,
  is included)."""
  with open(os.path.join(output_dir, 'runs.json')) as f:
    data = json.load(f)
  config = data['config']
  records = {r['name']: r for r in data['runs']}
  for name in config.get('planned_runs', []):
    record = load_record(os.path.join(output_dir, 'runs', name))
    if record is not None:
      records[name] = record
  order = config.get('planned_runs') or list(records)
  runs = [records[n] for n in order if n in records]
  config['complete'] = all(n in records for n in order)
  return write_outputs(output_dir, runs, config)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _OUTPUT_DIR.value:
    raise app.UsageError('--output_dir is required.')
  logs.quiet_libraries()
  if _REWRITE.value:
    rewrite_outputs(_OUTPUT_DIR.value)
    return
  run_experiment(_OUTPUT_DIR.value, methods=_METHODS.value,
                 seeds=[int(s) for s in _SEEDS.value], steps=_STEPS.value,
                 transfer_steps=_TRANSFER_STEPS.value,
                 transfer_methods=_TRANSFER_METHODS.value, quick=_QUICK.value,
                 gin_files=cli.GIN_FILE.value, gin_bindings=cli.GIN_BINDINGS.value,
                 gin_search_paths=cli.GIN_SEARCH_PATHS.value,
                 command=' '.join(['python benchmarks/method_validity.py'] + sys.argv[1:]),
                 compilation_cache=_COMPILATION_CACHE.value)


if __name__ == '__main__':
  app.run(main, argv=cli.rewrite_gin_args(sys.argv))
