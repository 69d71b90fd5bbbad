"""Aggregation of per-template evaluation metrics into the tables a paper shows.

Zero-shot evaluation (T0 / SPT) scores every held-out dataset under several
prompt templates; each (dataset, template) pair is one seqio task. A paper reports,
per dataset, the **median and mean over templates** (here also min, max and the
number of templates), then averages per task cluster and overall. This module
turns a seqio Evaluator's output `{task_name: {'accuracy': x, ...}}` into:

* a JSON-serialisable results dict (`aggregate`), whose layout is

  ```
  {'metric': 'accuracy',
   'templates': [{'task', 'dataset', 'template', 'cluster', 'value', 'metrics'}],
   'datasets': {dataset: {'cluster', 'median', 'mean', 'min', 'max',
                          'n_templates', 'templates': {template: value}}},
   'clusters': {cluster: {'median', 'mean', 'n_datasets', 'datasets'}},
   'overall': {'median', 'mean', 'n_datasets'},
   'skipped_tasks': [...]}
  ```

  A cluster's (and the overall) `median` / `mean` is the unweighted average over
  its datasets of their per-dataset median / mean over templates, so every dataset
  counts once however many templates it has.
* `results.json`, `results.csv`, `results.md` and PNG plots (`write_results`).

The core functions take the task → (dataset, template, cluster) mapping as an
argument (`TaskInfo`), so they need no seqio registry and are easy to test.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np

from spt_jax import plots
from spt_jax import retrieval_analysis

PathLike = Union[str, pathlib.Path]

RESULTS_JSON = 'results.json'
RESULTS_CSV = 'results.csv'
RESULTS_MD = 'results.md'
ACCURACY_PNG = 'accuracy_per_dataset.png'
SLOT_USAGE_PNG = 'memory_slot_usage.png'

CSV_COLUMNS = ('level', 'cluster', 'dataset', 'template', 'task', 'value',
               'median', 'mean', 'min', 'max', 'n')


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """Where one seqio task sits in the results table.

  Attributes:
    dataset: the dataset (e.g. 'super_glue/rte'); rows of the table.
    template: the prompt template's name; aggregated over per dataset.
    cluster: the task cluster (e.g. 'nli'); groups of rows.
  """
  dataset: str
  template: str
  cluster: str


TaskInfoLookup = Union[Mapping[str, TaskInfo],
                       Callable[[str], Optional[TaskInfo]]]


def _lookup(task_info: TaskInfoLookup, task: str) -> Optional[TaskInfo]:
  if callable(task_info) and not isinstance(task_info, Mapping):
    return task_info(task)
  return task_info.get(task)


def _to_float(value: Any) -> float:
  """Metric value as float; accepts numpy scalars and seqio/clu `Scalar`s."""
  if hasattr(value, 'value') and not isinstance(value, (int, float)):
    value = value.value
  return float(np.asarray(value))


def _json_metrics(metrics: Mapping[str, Any]) -> Dict[str, Any]:
  out = {}
  for key, value in metrics.items():
    try:
      out[key] = _to_float(value)
    except (TypeError, ValueError):
      out[key] = str(value)
  return out


def dataset_stats(values: Sequence[float]) -> Dict[str, float]:
  """Median, mean, min, max and count of one dataset's per-template values."""
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    raise ValueError('dataset_stats: no template values.')
  return {'median': float(np.median(values)), 'mean': float(values.mean()),
          'min': float(values.min()), 'max': float(values.max()),
          'n_templates': int(values.size)}


def aggregate(task_metrics: Mapping[str, Mapping[str, Any]],
              task_info: TaskInfoLookup,
              metric: str = 'accuracy') -> Dict[str, Any]:
  """Aggregates per-task metrics: template → dataset → cluster → overall.

  Args:
    task_metrics: `{task_name: {metric_name: value}}`, e.g. the first result of
      `seqio.Evaluator.evaluate(...)` after `.result()`.
    task_info: a mapping or a function from task name to `TaskInfo`; tasks it
      does not know (None / missing, e.g. mixture-level entries) are skipped and
      listed under `skipped_tasks`.
    metric: the metric to aggregate (each known task must report it).

  Returns:
    The results dict described in the module docstring.

  Raises:
    ValueError: if a known task lacks `metric`, two tasks claim the same
      (dataset, template), a dataset appears in two clusters, or no task is known.
  """
  templates, skipped = [], []
  seen = {}
  for task in sorted(task_metrics):
    info = _lookup(task_info, task)
    if info is None:
      skipped.append(task)
      continue
    metrics = task_metrics[task]
    if metric not in metrics:
      raise ValueError(
          f'task {task!r} reports no {metric!r} (it has {sorted(metrics)}); pass '
          'metric= one of those, or leave the task out of task_info.')
    key = (info.dataset, info.template)
    if key in seen:
      raise ValueError(
          f'tasks {seen[key]!r} and {task!r} both map to dataset '
          f'{info.dataset!r}, template {info.template!r}; template names must be '
          'unique within a dataset.')
    seen[key] = task
    templates.append({'task': task, 'dataset': info.dataset,
                      'template': info.template, 'cluster': info.cluster,
                      'value': _to_float(metrics[metric]),
                      'metrics': _json_metrics(metrics)})
  if skipped:
    logging.info('aggregate: skipped %d tasks without TaskInfo: %s', len(skipped),
                 skipped)
  if not templates:
    raise ValueError(
        f'aggregate: none of the {len(task_metrics)} tasks has a TaskInfo '
        f'(tasks: {sorted(task_metrics)[:10]}); check the task_info mapping.')

  datasets = {}
  for row in templates:
    entry = datasets.setdefault(row['dataset'],
                                {'cluster': row['cluster'], 'templates': {}})
    if entry['cluster'] != row['cluster']:
      raise ValueError(
          f'dataset {row["dataset"]!r} is in clusters {entry["cluster"]!r} and '
          f'{row["cluster"]!r}; a dataset must belong to one cluster.')
    entry['templates'][row['template']] = row['value']
  for name in sorted(datasets):
    entry = datasets[name]
    entry.update(dataset_stats(list(entry['templates'].values())))
  datasets = {name: datasets[name] for name in
              sorted(datasets, key=lambda d: (datasets[d]['cluster'], d))}

  clusters = {}
  for name, entry in datasets.items():
    clusters.setdefault(entry['cluster'], []).append(name)
  cluster_rows = {
      c: {'median': float(np.mean([datasets[d]['median'] for d in names])),
          'mean': float(np.mean([datasets[d]['mean'] for d in names])),
          'n_datasets': len(names), 'datasets': names}
      for c, names in clusters.items()}
  overall = {
      'median': float(np.mean([d['median'] for d in datasets.values()])),
      'mean': float(np.mean([d['mean'] for d in datasets.values()])),
      'n_datasets': len(datasets)}
  return {'metric': metric, 'templates': templates, 'datasets': datasets,
          'clusters': cluster_rows, 'overall': overall, 'skipped_tasks': skipped}


# ----------------------------------------------------------------------------
# Writers.
# ----------------------------------------------------------------------------


def add_chance(results: Dict[str, Any], chance_by_task: Mapping[str, float]) -> None:
  """Adds each dataset's chance level (mean over its templates' tasks that have one) to
  `results['datasets'][d]['chance']`, in place; datasets without any stay without."""
  per_dataset: Dict[str, list] = {}
  for row in results['templates']:
    if row['task'] in chance_by_task:
      per_dataset.setdefault(row['dataset'], []).append(chance_by_task[row['task']])
  for name, values in per_dataset.items():
    results['datasets'][name]['chance'] = float(np.mean(values))


def summary_table(results: Mapping[str, Any]) -> str:
  """A short plain-text table, one line per dataset (median / mean over templates, chance),
  for the end of a run's log."""
  metric = results['metric']
  width = max([len('dataset')] + [len(n) for n in results['datasets']])
  lines = [f'{"dataset":<{width}}  {"median":>7}  {"mean":>7}  {"chance":>7}  templates',
           f'{"-" * width}  -------  -------  -------  ---------']
  for name, d in results['datasets'].items():
    lines.append(f'{name:<{width}}  {d["median"]:7.2f}  {d["mean"]:7.2f}  '
                 f'{_fmt(d.get("chance")):>7}  {d["n_templates"]:9d}')
  o = results['overall']
  lines.append(f'{"overall":<{width}}  {o["median"]:7.2f}  {o["mean"]:7.2f}  '
               f'{"":>7}  ({o["n_datasets"]} datasets; {metric})')
  return '\n'.join(lines)


def _fmt(value: Optional[float], digits: int = 2) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '—'
  return f'{value:.{digits}f}'


def to_csv_rows(results: Mapping[str, Any]) -> list:
  """Flat rows (dicts over `CSV_COLUMNS`): template, dataset, cluster, overall levels."""
  rows = []
  blank = {c: '' for c in CSV_COLUMNS}
  for t in results['templates']:
    rows.append({**blank, 'level': 'template', 'cluster': t['cluster'],
                 'dataset': t['dataset'], 'template': t['template'],
                 'task': t['task'], 'value': t['value']})
  for name, d in results['datasets'].items():
    rows.append({**blank, 'level': 'dataset', 'cluster': d['cluster'],
                 'dataset': name, 'median': d['median'], 'mean': d['mean'],
                 'min': d['min'], 'max': d['max'], 'n': d['n_templates']})
  for name, c in results['clusters'].items():
    rows.append({**blank, 'level': 'cluster', 'cluster': name,
                 'median': c['median'], 'mean': c['mean'], 'n': c['n_datasets']})
  o = results['overall']
  rows.append({**blank, 'level': 'overall', 'median': o['median'],
               'mean': o['mean'], 'n': o['n_datasets']})
  return rows


def to_markdown(results: Mapping[str, Any], title: Optional[str] = None) -> str:
  """Markdown: datasets grouped by cluster, then cluster and overall averages."""
  metric = results['metric']
  # A Chance column when the evaluation knew it (rank classification: 1 / answer choices).
  chance = any('chance' in d for d in results['datasets'].values())
  lines = [f'# {title or "Results"}', '',
           f'Metric: `{metric}`, over prompt templates per dataset.', '',
           '| Cluster | Dataset | Median | Mean | Min | Max | n |' + (' Chance |' if chance else ''),
           '| --- | --- | ---: | ---: | ---: | ---: | ---: |' + (' ---: |' if chance else '')]
  for name, d in results['datasets'].items():
    lines.append(f'| {d["cluster"]} | {name} | {_fmt(d["median"])} | '
                 f'{_fmt(d["mean"])} | {_fmt(d["min"])} | {_fmt(d["max"])} | '
                 f'{d["n_templates"]} |' + (f' {_fmt(d.get("chance"))} |' if chance else ''))
  lines += ['', '## Averages over datasets', '',
            '| Cluster | Median | Mean | Datasets |', '| --- | ---: | ---: | ---: |']
  for name, c in results['clusters'].items():
    lines.append(f'| {name} | {_fmt(c["median"])} | {_fmt(c["mean"])} | '
                 f'{c["n_datasets"]} |')
  o = results['overall']
  lines.append(f'| **overall** | **{_fmt(o["median"])}** | **{_fmt(o["mean"])}** | '
               f'{o["n_datasets"]} |')
  return '\n'.join(lines) + '\n'


def plot_dataset_accuracy(results: Mapping[str, Any], path: PathLike
                         ) -> pathlib.Path:
  """PNG: per dataset, the median over templates (bar), min–max (whisker), each template (dot)."""
  plt = plots.pyplot()

  names = list(results['datasets'])
  entries = [results['datasets'][n] for n in names]
  clusters = list(dict.fromkeys(e['cluster'] for e in entries))
  colors = plt.get_cmap('tab10')
  x = np.arange(len(names))
  medians = np.array([e['median'] for e in entries])
  lower = medians - np.array([e['min'] for e in entries])
  upper = np.array([e['max'] for e in entries]) - medians
  fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.7 * len(names)), 4.5))
  bar_colors = [colors(clusters.index(e['cluster']) % 10) for e in entries]
  ax.bar(x, medians, color=bar_colors, alpha=0.7)
  ax.errorbar(x, medians, yerr=[lower, upper], fmt='none', ecolor='k', capsize=4)
  for i, e in enumerate(entries):
    values = list(e['templates'].values())
    ax.scatter(np.full(len(values), x[i]), values, s=12, color='k', zorder=3)
  handles = [plt.Rectangle((0, 0), 1, 1, color=colors(i % 10), alpha=0.7)
             for i in range(len(clusters))]
  labels = list(clusters)
  chance = [(i, e['chance']) for i, e in enumerate(entries) if e.get('chance') is not None]
  if chance:
    for i, c in chance:
      ax.hlines(c, x[i] - 0.4, x[i] + 0.4, colors='r', linestyles='--', linewidth=1.2)
    handles.append(plt.Line2D([0], [0], color='r', linestyle='--'))
    labels.append('chance')
  ax.legend(handles, labels, title='cluster', fontsize=8, loc='best',
            framealpha=0.6)
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=45, ha='right')
  ax.set_ylabel(f'{results["metric"]} (median over templates; whiskers min–max)')
  ax.set_title('Per-dataset results over prompt templates')
  fig.tight_layout()
  return plots.save_figure(fig, path)


def slot_usage_by_dataset(slot_indices: Mapping[str, Any], memory_size: int
                         ) -> Dict[str, np.ndarray]:
  """`{dataset: retrieved slot ids (any shape)}` → `{dataset: [M] normalised histogram}`."""
  return {name: retrieval_analysis.usage_distribution(
      retrieval_analysis.slot_usage(idx, memory_size))
          for name, idx in slot_indices.items()}


def plot_slot_usage(slot_indices: Mapping[str, Any], memory_size: int,
                    path: PathLike) -> pathlib.Path:
  """PNG heatmap: rows = held-out datasets, columns = the M memory slots.

  Each row is that dataset's normalised histogram of retrieved slots (sums to 1),
  so one sees which memory prompts each dataset retrieves.
  """
  usage = slot_usage_by_dataset(slot_indices, memory_size)
  names = list(usage)
  matrix = np.stack([usage[n] for n in names]) if names else np.zeros((0, memory_size))
  return retrieval_analysis.plot_heatmap(
      matrix, names, None, path, title='Memory-slot usage by dataset',
      xlabel=f'memory slot (M = {memory_size})', ylabel='dataset',
      colorbar_label='share of retrievals', annotate=False, vmin=0.0)


def write_results(results: Mapping[str, Any], output_dir: PathLike,
                  slot_indices: Optional[Mapping[str, Any]] = None,
                  memory_size: Optional[int] = None,
                  title: Optional[str] = None) -> Dict[str, pathlib.Path]:
  """Writes results.json, results.csv, results.md and the PNG plots.

  Args:
    results: output of `aggregate`.
    output_dir: directory (created if missing).
    slot_indices: for SPT, `{dataset: retrieved slot ids}`; adds the slot-usage
      heatmap and per-dataset retrieval health to results.json.
    memory_size: M, required with `slot_indices`.
    title: heading of results.md.

  Returns:
    `{'json', 'csv', 'md', 'accuracy_png'[, 'slot_usage_png']}` → paths.
  """
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  payload = dict(results)
  paths = {}
  if slot_indices is not None:
    if not memory_size:
      raise ValueError('write_results: slot_indices given without memory_size; '
                       'pass the memory bank size M of the run.')
    payload['retrieval'] = {
        name: retrieval_analysis.health(idx, memory_size)
        for name, idx in slot_indices.items()}
    paths['slot_usage_png'] = plot_slot_usage(slot_indices, memory_size,
                                              output_dir / SLOT_USAGE_PNG)
  paths['json'] = output_dir / RESULTS_JSON
  paths['json'].write_text(json.dumps(payload, indent=2, sort_keys=False))
  paths['csv'] = output_dir / RESULTS_CSV
  with paths['csv'].open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(to_csv_rows(results))
  paths['md'] = output_dir / RESULTS_MD
  paths['md'].write_text(to_markdown(results, title))
  paths['accuracy_png'] = plot_dataset_accuracy(results, output_dir / ACCURACY_PNG)
  logging.info('Wrote results to %s: %s', output_dir,
               sorted(p.name for p in paths.values()))
  return paths


def load_results(path: PathLike) -> Dict[str, Any]:
  """Reads a results.json written by `write_results`."""
  path = pathlib.Path(path)
  results = json.loads(path.read_text())
  for key in ('metric', 'datasets', 'clusters', 'overall'):
    if key not in results:
      raise ValueError(f'{path} is not a results.json written by '
                       f'spt_jax.results.write_results (no {key!r} key).')
  return results
