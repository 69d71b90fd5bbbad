r"""Method validity (issue 8): does SPT's retrieval do what the method claims?

On the embedded sample mixture (`spt_tasks/sample.py`: 9 training datasets in 4 clusters,
3 held-out datasets each built to resemble one cluster) this script trains, with the
project's own trainer (`spt_jax.train.train`, gin-configured) and evaluator
(`spt_jax.evaluate.Evaluation`):

* plain fine-tuning (`methods/finetune.gin`),
* prompt tuning (`methods/prompt_tuning.gin`) with a soft prompt as long as SPT's whole
  prefix, L_p(PT) = L_p(SPT) + k * L_m (bound here from the SPT gin config),
* SPT (`methods/spt.gin`, its defaults),

each over several seeds, on the tiny model from scratch (`runs/local.gin`) with the overlays
in `gin/validity/`. It then answers three questions:

1. Transfer: held-out accuracy by rank classification (mean over templates per dataset;
   mean ± std over seeds; per dataset and averaged).
2. Health: does SPT use its memory bank? Slot-usage entropy ÷ log M and the fraction of
   never-used slots, on fixed probe sets of training-form and held-out inputs at a few
   steps of training, the trainer's own cumulative never-used fraction over all training
   retrievals (metrics.jsonl), and the evaluator's per-dataset health at eval.
3. Structure: does retrieval follow the discrete prompt? Held-out datasets × training
   clusters overlap (histogram intersection of slot usage) and, per held-out dataset, the
   share of its retrievals that land in the slots holding half of the retrievals of the
   cluster it was built to resemble (`HELDOUT_RESEMBLES`), against chance (= that slot
   set's size / M) and against the other clusters' slot sets.

Run (full experiment; ~20 min on an idle 2-core machine, see docs/METHOD_VALIDITY.md)::

  python benchmarks/method_validity.py --output_dir=/tmp/method_validity

  # CI smoke run: 1 seed, a few steps, tiny probes / eval
  python benchmarks/method_validity.py --output_dir=/tmp/mv_quick --quick

Flags: --output_dir, --seeds (comma list), --steps (overrides TRAIN_STEPS), --methods
(comma list of finetune, prompt_tuning, spt), --quick, plus --gin_file / --gin_bindings /
--gin.NAME=VALUE overlays applied after gin/validity/ (e.g. `--gin.BATCH_SIZE=32`).

Outputs in --output_dir:
  accuracy.{json,csv,md}      held-out accuracy per method × dataset (per seed, mean, std)
  accuracy.png                the same as bars with ±std error bars
  health.{json,csv}           SPT retrieval health per seed × probe step (+ eval health)
  health_over_training.png    entropy ratio and never-used fraction over training
  structure.json              overlap matrices and resemblance shares per seed and step
  overlap_heatmap.png         held-out datasets × clusters, final step, mean over seeds
  resemblance_share.png       share in the resembled cluster's top slots vs other clusters
                              and chance (final step, mean over seeds)
  summary.md                  the figures above in one page + settings + wall times
  runs/<method>_seed<s>/      each training run (metrics.jsonl, checkpoint, eval results)

How the retrieval logs are collected: `train.train(hooks=...)` calls a hook after every
step; at the probe steps it applies `model.network.encode` with `mutable=['retrieval']` to
the probe inputs and keeps the sown slot ids. (A trainer hook that logs retrieval indices
with the task name of every training example would let the cluster usage come from the
training batches themselves; seqio mixtures do not carry the task name.)
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import gin
import jax
import numpy as np

from spt_jax import evaluate as evaluate_lib
from spt_jax import gin_configurables
from spt_jax import retrieval_analysis as ra
from spt_jax import plots
from spt_jax import runner

METHODS = ('finetune', 'prompt_tuning', 'spt')
METHOD_GIN = {m: f'methods/{m}.gin' for m in METHODS}
LOCAL_GIN = 'runs/local.gin'
BASE_GIN = 'validity/base.gin'

_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Results directory (created).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds (train.seed).')
_STEPS = flags.DEFINE_integer('steps', None, 'Training steps (default: TRAIN_STEPS of '
                              'gin/validity/base.gin).')
_METHODS = flags.DEFINE_list('methods', list(METHODS), f'Methods, any of {METHODS}.')
_QUICK = flags.DEFINE_bool('quick', False, 'CI smoke run: 1 seed, few steps, tiny probes and '
                           'eval (every output file is still written).')

_REWRITE = flags.DEFINE_bool('rewrite', False, 'Only re-write the outputs from '
                             '<output_dir>/runs.json (e.g. after an interrupted experiment).')

QUICK_STEPS = 6
QUICK_BINDINGS = (
    'method_validity.Settings.eval_num_examples = 4',
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
    eval_batch_size: global batch of the scoring calls.
    probe_train_examples_per_task: validation inputs per training task in the cluster probe.
    probe_heldout_examples_per_task: validation inputs per held-out task in its probe.
    probe_fractions: fractions of the training steps at which the probes run (0.0 means
      after the first step; 1.0 the final step).
    overlap_method: `retrieval_analysis.overlap` method ('intersection' | 'cosine').
    top_slots_mass: a cluster's most-used slots hold this share of its retrievals.
  """
  eval_mixture: str = 'spt_sample_heldout_score_eval'
  eval_num_examples: Optional[int] = 200
  eval_batch_size: int = 64
  probe_train_examples_per_task: int = 8
  probe_heldout_examples_per_task: int = 16
  probe_fractions: Sequence[float] = (0.0, 0.25, 0.5, 1.0)
  overlap_method: str = 'intersection'
  top_slots_mass: float = 0.5


# ------------------------------------------------------------------------------------------
# Gin.
# ------------------------------------------------------------------------------------------
def method_gin_files(method: str, extra_files: Sequence[str] = ()) -> list[str]:
  """Gin files of one method: method, local CPU overlay, validity base + method overlay."""
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; --methods takes a comma list of {METHODS}.')
  return [METHOD_GIN[method], LOCAL_GIN, BASE_GIN, f'validity/{method}.gin', *extra_files]


def parse_method_gin(method: str, bindings: Sequence[str] = (), extra_files: Sequence[str] = (),
                     search_paths: Sequence[str] = ('gin',)) -> None:
  """Clears gin and parses one method's configuration (not finalized: MODEL_DIR comes later)."""
  gin.clear_config()
  runner.parse_gin(method_gin_files(method, extra_files), list(bindings), search_paths,
                   finalize=False)


def spt_prefix_length(bindings: Sequence[str], extra_files: Sequence[str],
                      search_paths: Sequence[str]) -> int:
  """L_p + k * L_m of the SPT gin configuration (what prompt tuning must match)."""
  parse_method_gin('spt', bindings, extra_files, search_paths)
  model = gin_configurables.create_model()
  if model.network.prompt_config is None:
    raise ValueError('The SPT gin configuration builds a model without prompts; check '
                     'methods/spt.gin and the overlays.')
  return int(model.network.prompt_config.prefix_length)


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


def run_one(method: str, seed: int, run_dir: str, settings: Settings, evaluator,
            probes: Optional[tuple[Probe, Probe]], train_steps: int) -> dict[str, Any]:
  """Trains one (method, seed) with the gin-configured trainer; evaluates; probes retrieval.

  gin must hold this method's configuration (`parse_method_gin`).
  """
  captured: dict[str, Any] = {}
  probe_log: list[dict[str, Any]] = []
  eval_metrics: dict[str, float] = {}
  steps_to_probe = set(probe_steps(train_steps, settings.probe_fractions))

  def eval_factory(setup: runner.ModelSetup):
    captured['setup'] = setup
    captured['evaluation'] = evaluate_lib.Evaluation(
        setup, settings.eval_mixture, batch_size=settings.eval_batch_size,
        output_dir=os.path.join(run_dir, 'eval'), per_step_subdir=True,
        title=f'{method}, seed {seed}: held-out sample tasks', evaluator=evaluator)
    model = setup.model
    if model.has_memory and probes is not None:
      captured['probe'] = RetrievalProbe(setup)
      captured['memory_size'] = model.network.prompt_config.memory_size

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
    train_idx = fn(state.params, train_probe.tokens)
    held_idx = fn(state.params, held_probe.tokens)
    stats = probe_statistics(train_idx, train_probe.labels, held_idx, held_probe.labels,
                             captured['memory_size'], settings)
    stats['step'] = int(step)
    probe_log.append(stats)
    logging.info('%s seed %d step %d probe: train entropy ratio %.3f unused %.3f | held-out '
                 'entropy ratio %.3f', method, seed, step, stats['train']['entropy_ratio'],
                 stats['train']['unused_fraction'], stats['eval']['entropy_ratio'])

  t0 = time.time()
  result = gin_configurables.train(
      model_dir=run_dir, seed=seed, train_steps=train_steps, hooks=[probe_hook],
      eval_hook_factory=eval_factory, eval_every_steps=0)
  wall = time.time() - t0
  if 'eval_step' not in captured:
    raise RuntimeError(f'{method} seed {seed}: the trainer ended at step {result["step"]} '
                       'without the final evaluation (preempted?); rerun the script.')
  eval_dir = captured['evaluation'].results_dir(captured['eval_step'])
  from spt_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  results = results_lib.load_results(os.path.join(eval_dir, results_lib.RESULTS_JSON))
  training = [r for r in _read_jsonl(os.path.join(run_dir, 'metrics.jsonl'))
              if r.get('step', -1) >= 0 and 'loss' in r]
  train_retrieval = [
      {'step': r['step'],
       'batch_normalized_entropy': r.get('retrieval/normalized_entropy'),
       'cumulative_never_used_fraction': r.get('retrieval/never_used_fraction')}
      for r in training if 'retrieval/never_used_fraction' in r]
  eval_health = {k: v for k, v in eval_metrics.items() if '/retrieval_' in k}
  final_loss = training[-1]['loss'] if training else float('nan')
  return {
      'method': method, 'seed': seed, 'run_dir': run_dir, 'wall_seconds': wall,
      'eval_seconds': captured.get('eval_seconds'), 'final_step': int(result['step']),
      'final_train_loss': final_loss,
      'final_token_accuracy': training[-1].get('token_accuracy') if training else None,
      'datasets': {d: {'mean': e['mean'], 'median': e['median'],
                       'templates': e['templates']} for d, e in results['datasets'].items()},
      'overall': results['overall'],
      'memory_size': captured.get('memory_size'),
      'probes': probe_log,
      'train_retrieval': train_retrieval,
      'eval_health': eval_health,
  }


# ------------------------------------------------------------------------------------------
# Aggregation and writing.
# ------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> dict[str, Any]:
  """`{'mean', 'std', 'n', 'values'}`; std is the sample std (ddof 1), None for n < 2."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  return {'mean': float(v.mean()) if v.size else None,
          'std': float(v.std(ddof=1)) if v.size > 1 else None,
          'n': int(v.size), 'values': v.tolist()}


def accuracy_table(runs: Sequence[Mapping[str, Any]], key: str = 'mean') -> dict[str, Any]:
  """`{method: {dataset | 'average': mean_std over seeds}}` of per-dataset accuracy.

  `key` 'mean' / 'median': the per-dataset statistic over templates. 'average' is the
  unweighted mean over datasets of each seed, then mean ± std over seeds.
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
      row = {'method': r['method'], 'seed': r['seed'], 'step': p['step'],
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
  """Overlap and resemblance per probe step, mean ± std over seeds (memory runs only)."""
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
                   'per_seed': {str(r['seed']): r['probes'] for r in mruns}}
  return out


def _write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  with open(path, 'w', newline='') as f:
    fields = list(rows[0]) if rows else ['method']
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def plot_accuracy(table: Mapping[str, Any], path: str) -> None:
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
  ax.set_title('Held-out rank-classification accuracy (mean ± std over seeds)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save_figure(fig, path)


def plot_health(runs: Sequence[Mapping[str, Any]], path: str) -> None:
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
    if r['train_retrieval']:
      tr = r['train_retrieval']
      axes[1].plot([x['step'] for x in tr], [x['cumulative_never_used_fraction'] for x in tr],
                   ':', label=f'{r["method"]} s{r["seed"]} all training batches (cumulative)')
  axes[0].set_title('slot-usage entropy ÷ log M')
  axes[1].set_title('fraction of never-used slots')
  for ax in axes:
    ax.set_xlabel('training step')
    ax.set_ylim(0, 1.02)
  axes[1].legend(fontsize=6)
  fig.tight_layout()
  plots.save_figure(fig, path)


def plot_resemblance(structure: Mapping[str, Any], path: str) -> None:
  plt = plots.pyplot()
  method = next(iter(structure))
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


def write_outputs(output_dir: str, runs: Sequence[Mapping[str, Any]],
                  config: Mapping[str, Any]) -> dict[str, str]:
  """Writes every result file (see the module docstring); returns `{name: path}`."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {}
  acc_mean = accuracy_table(runs, 'mean')
  acc_median = accuracy_table(runs, 'median')
  per_run = [{'method': r['method'], 'seed': r['seed'],
              **{d: r['datasets'][d]['mean'] for d in r['datasets']},
              'average': float(np.mean([r['datasets'][d]['mean'] for d in r['datasets']])),
              'final_train_loss': r['final_train_loss'], 'wall_seconds': r['wall_seconds']}
             for r in runs]
  paths['accuracy_json'] = os.path.join(output_dir, 'accuracy.json')
  with open(paths['accuracy_json'], 'w') as f:
    json.dump({'metric': 'accuracy (rank classification)',
               'mean_over_templates': acc_mean, 'median_over_templates': acc_median,
               'per_run': per_run,
               'per_template': {f'{r["method"]}/seed{r["seed"]}':
                                {d: e['templates'] for d, e in r['datasets'].items()}
                                for r in runs}}, f, indent=2)
  rows = []
  for stat, table in (('mean_over_templates', acc_mean), ('median_over_templates', acc_median)):
    for method, row in table.items():
      for col, s in row.items():
        rows.append({'statistic': stat, 'method': method, 'dataset': col, 'mean': s['mean'],
                     'std': s['std'], 'n_seeds': s['n'],
                     'per_seed': ' '.join(f'{v:.4f}' for v in s['values'])})
  paths['accuracy_csv'] = os.path.join(output_dir, 'accuracy.csv')
  _write_csv(paths['accuracy_csv'], rows)
  acc_md = (accuracy_markdown(acc_mean, 'Held-out accuracy, mean over templates (mean ± std '
                              'over seeds)') + '\n' +
            accuracy_markdown(acc_median, 'Held-out accuracy, median over templates'))
  paths['accuracy_md'] = os.path.join(output_dir, 'accuracy.md')
  with open(paths['accuracy_md'], 'w') as f:
    f.write(acc_md)
  paths['accuracy_png'] = os.path.join(output_dir, 'accuracy.png')
  plot_accuracy(acc_mean, paths['accuracy_png'])

  structure = structure_summary(runs)
  hrows = health_rows(runs)
  paths['health_csv'] = os.path.join(output_dir, 'health.csv')
  _write_csv(paths['health_csv'], hrows)
  paths['health_json'] = os.path.join(output_dir, 'health.json')
  with open(paths['health_json'], 'w') as f:
    json.dump({'probe': hrows,
               'summary': {m: {'steps': s['steps'],
                               'train_health': {st: s['per_step'][st]['train_health']
                                                for st in s['per_step']},
                               'heldout_health': {st: s['per_step'][st]['heldout_health']
                                                  for st in s['per_step']}}
                           for m, s in structure.items()},
               'training_batches': {f'{r["method"]}/seed{r["seed"]}': r['train_retrieval']
                                    for r in runs if r['train_retrieval']},
               'eval': {f'{r["method"]}/seed{r["seed"]}': r['eval_health']
                        for r in runs if r['eval_health']}}, f, indent=2)
  paths['structure_json'] = os.path.join(output_dir, 'structure.json')
  with open(paths['structure_json'], 'w') as f:
    json.dump(structure, f, indent=2)
  if structure:
    paths['health_png'] = os.path.join(output_dir, 'health_over_training.png')
    plot_health(runs, paths['health_png'])
    method = next(iter(structure))
    final = structure[method]['per_step'][str(structure[method]['steps'][-1])]
    paths['overlap_png'] = os.path.join(output_dir, 'overlap_heatmap.png')
    ra.plot_heatmap(np.asarray(final['overlap']['mean']), final['overlap']['rows'],
                    final['overlap']['cols'], paths['overlap_png'],
                    title=f'{method}: slot overlap ({config["overlap_method"]}), step '
                    f'{structure[method]["steps"][-1]}', xlabel='training cluster',
                    ylabel='held-out dataset', colorbar_label='overlap', vmin=0.0, vmax=1.0)
    paths['resemblance_png'] = os.path.join(output_dir, 'resemblance_share.png')
    plot_resemblance(structure, paths['resemblance_png'])
  paths['summary_md'] = os.path.join(output_dir, 'summary.md')
  with open(paths['summary_md'], 'w') as f:
    f.write(summary_markdown(runs, acc_md, structure, config))
  return paths


def summary_markdown(runs, acc_md: str, structure: Mapping[str, Any],
                     config: Mapping[str, Any]) -> str:
  status = ('' if config.get('complete', True) else
            f'**PARTIAL: {len(runs)} of {len(config["methods"]) * len(config["seeds"])} runs '
            'finished when this was written.**')
  lines = ['# Method validity on the sample mixture (issue 8)', '', status, '',
           f'Command: `{config["command"]}`', '',
           f'Methods {config["methods"]}, seeds {config["seeds"]}, {config["train_steps"]} '
           f'steps of batch {config["batch_size"]}, feature lengths '
           f'{config["task_feature_lengths"]}; SPT prefix L_p + k·L_m = '
           f'{config["spt_prefix_length"]} = prompt tuning\'s L_p. Total wall time '
           f'{config["wall_seconds"]:.0f} s on {config["device"]}.', '', acc_md, '',
           '### Runs', '', '| method | seed | final train loss | token acc | held-out avg '
           '| wall s | eval s |', '| --- | --- | --- | --- | --- | --- | --- |']
  for r in runs:
    avg = np.mean([r['datasets'][d]['mean'] for d in r['datasets']])
    lines.append(f'| {r["method"]} | {r["seed"]} | {r["final_train_loss"]:.3f} | '
                 f'{(r["final_token_accuracy"] or float("nan")):.3f} | {avg:.1f} | '
                 f'{r["wall_seconds"]:.0f} | {(r["eval_seconds"] or float("nan")):.0f} |')
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
    mem_runs = [r for r in runs if r['method'] == method]
    cum = [r['train_retrieval'][-1]['cumulative_never_used_fraction'] for r in mem_runs
           if r['train_retrieval']]
    if cum:
      lines += ['', f'Never-used fraction over ALL training retrievals at the last step '
                f'(trainer, metrics.jsonl): {_fmt(mean_std(cum))}.']
    evh = {}
    for r in mem_runs:
      for k, v in r['eval_health'].items():
        evh.setdefault(k, []).append(v)
    if evh:
      lines += ['', 'At eval (evaluator, all scored held-out examples): ' + '; '.join(
          f'{k} {_fmt(mean_std(v))}' for k, v in sorted(evh.items())
          if k.endswith(('entropy_ratio', 'unused_fraction'))) + '.']
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
  lines += ['', 'Files: accuracy.{json,csv,md,png}, health.{json,csv}, '
            'health_over_training.png, structure.json, overlap_heatmap.png, '
            'resemblance_share.png, runs/<method>_seed<s>/.', '']
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------
# The experiment.
# ------------------------------------------------------------------------------------------
def run_experiment(output_dir: str, methods: Sequence[str] = METHODS,
                   seeds: Sequence[int] = (0, 1, 2), steps: Optional[int] = None,
                   quick: bool = False, gin_files: Sequence[str] = (),
                   gin_bindings: Sequence[str] = (), gin_search_paths: Sequence[str] = ('gin',),
                   command: str = '') -> dict[str, Any]:
  """Trains and evaluates every (method, seed); writes the outputs; returns paths and runs."""
  t_start = time.time()
  for m in methods:
    if m not in METHODS:
      raise ValueError(f'Unknown method {m!r}; --methods takes a comma list of {METHODS}.')
  bindings = list(gin_bindings)
  if quick:
    seeds = list(seeds)[:1]
    steps = steps or QUICK_STEPS
    bindings = list(QUICK_BINDINGS) + bindings
  os.makedirs(output_dir, exist_ok=True)

  prefix = spt_prefix_length(bindings, gin_files, gin_search_paths)
  pt_bindings = [f'prompts.PromptConfig.soft_prompt_length = {prefix}']

  # Settings and lengths are method-independent: read them once from the SPT configuration.
  settings = Settings()
  lengths = dict(gin.query_parameter('%TASK_FEATURE_LENGTHS'))
  train_steps = int(steps or gin.query_parameter('%TRAIN_STEPS'))
  batch_size = int(gin.query_parameter('%BATCH_SIZE'))
  logging.info('Settings %s; lengths %s; %d steps of batch %d; SPT prefix %d', settings,
               lengths, train_steps, batch_size, prefix)

  evaluator = evaluate_lib.create_seqio_evaluator(
      settings.eval_mixture, task_feature_lengths=lengths,
      num_examples=settings.eval_num_examples)
  probes = build_probes(settings, lengths['inputs']) if 'spt' in methods else None

  runs = []
  config = {'command': command, 'methods': list(methods), 'seeds': [int(s) for s in seeds],
            'train_steps': train_steps, 'batch_size': batch_size,
            'task_feature_lengths': lengths, 'spt_prefix_length': prefix,
            'overlap_method': settings.overlap_method,
            'top_slots_mass': settings.top_slots_mass,
            'settings': dataclasses.asdict(settings),
            'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
            'wall_seconds': 0.0}
  paths = {}
  # Seed-major: every method of seed 0 first, so a partial run still compares the methods.
  for seed in seeds:
    for method in methods:
      extra = pt_bindings if method == 'prompt_tuning' else []
      parse_method_gin(method, bindings + extra, gin_files, gin_search_paths)
      if method == 'prompt_tuning':
        pl = gin_configurables.create_model().network.prompt_config.prefix_length
        if pl != prefix:
          raise ValueError(f'prompt tuning prompt length {pl} != SPT prefix {prefix}; check '
                           'gin/validity/prompt_tuning.gin and the bindings.')
      run_dir = os.path.join(output_dir, 'runs', f'{method}_seed{seed}')
      if os.path.exists(os.path.join(run_dir, 'checkpoints')):
        raise FileExistsError(f'{run_dir} already holds a run; use a fresh --output_dir (the '
                              'trainer would resume it instead of training anew).')
      logging.info('=== %s seed %d -> %s', method, seed, run_dir)
      record = run_one(method, int(seed), run_dir, settings, evaluator,
                       probes if method == 'spt' else None, train_steps)
      with open(os.path.join(run_dir, 'config.gin'), 'w') as f:
        f.write(gin.config_str())
      runs.append(record)
      logging.info('%s seed %d: %.0f s, held-out %s', method, seed, record['wall_seconds'],
                   {d: round(e['mean'], 4) for d, e in record['datasets'].items()})
      # Outputs after every run: an interrupted experiment keeps what it measured.
      config['wall_seconds'] = time.time() - t_start
      config['complete'] = len(runs) == len(seeds) * len(methods)
      write_runs_json(output_dir, config, runs)
      if len(runs) < len(seeds) * len(methods):
        try:  # Interim outputs must not stop the experiment (--rewrite redoes them).
          write_outputs(output_dir, runs, config)
        except Exception:  # pylint: disable=broad-except
          logging.exception('Interim outputs failed; runs.json is written, continuing.')
  paths = write_outputs(output_dir, runs, config)
  evaluator.close()
  logging.info('Done in %.0f s; results in %s', config['wall_seconds'], output_dir)
  return {'paths': paths, 'runs': runs, 'config': config}


def write_runs_json(output_dir: str, config: Mapping[str, Any],
                    runs: Sequence[Mapping[str, Any]]) -> str:
  """`runs.json`: the settings and every run record (all outputs derive from it)."""
  path = os.path.join(output_dir, 'runs.json')
  with open(path + '.tmp', 'w') as f:
    json.dump({'config': config, 'runs': list(runs)}, f, indent=2)
  os.replace(path + '.tmp', path)
  return path


def rewrite_outputs(output_dir: str) -> dict[str, str]:
  """Re-writes every output file from `<output_dir>/runs.json` (no training)."""
  with open(os.path.join(output_dir, 'runs.json')) as f:
    data = json.load(f)
  return write_outputs(output_dir, data['runs'], data['config'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _OUTPUT_DIR.value:
    raise app.UsageError('--output_dir is required.')
  if _REWRITE.value:
    rewrite_outputs(_OUTPUT_DIR.value)
    return
  run_experiment(_OUTPUT_DIR.value, methods=_METHODS.value,
                 seeds=[int(s) for s in _SEEDS.value], steps=_STEPS.value, quick=_QUICK.value,
                 gin_files=runner.GIN_FILE.value, gin_bindings=runner.GIN_BINDINGS.value,
                 gin_search_paths=runner.GIN_SEARCH_PATHS.value,
                 command=' '.join(['python benchmarks/method_validity.py'] + sys.argv[1:]))


if __name__ == '__main__':
  app.run(main, argv=runner.rewrite_gin_args(sys.argv))
