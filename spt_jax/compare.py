r"""Side-by-side comparison of several evaluated runs (e.g. SPT vs PT vs fine-tuning).

Usage:

  python -m spt_jax.compare RUN_DIR [RUN_DIR ...] [--output_dir D] \
      [--names spt,pt,ft] [--stat median|mean]

Each RUN_DIR's `results.json` (written by `spt_jax.results.write_results`) is
found by this rule:

1. if RUN_DIR is itself a `.json` file, that file;
2. else `RUN_DIR/results.json` if it exists;
3. else every `RUN_DIR/eval/**/results.json` (any depth); if several exist (one
   per evaluated checkpoint, e.g. `eval/step_900/`, `eval/step_10000/`), the one
   whose path relative to RUN_DIR sorts last in *natural* order (digit runs
   compared as numbers, so step_10000 is after step_900), i.e. the latest step.
   The chosen file is logged.

A directory with none of these is an error that names the paths looked at.

Writes to `--output_dir` (default `./comparison`): `comparison.md` and
`comparison.csv` — one row per dataset (grouped by cluster) with each run's
per-dataset `--stat` over templates (default: median) and, for every run after
the first, its difference from the first run; then per-cluster and overall
averages taken over the datasets that *every* run has — and `comparison.png`,
grouped bars (one group per dataset, one bar per run).
"""

from __future__ import annotations

import csv
import math
import pathlib
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from absl import app
from absl import flags
from absl import logging
import numpy as np

from spt_jax import plots
from spt_jax import results as results_lib

PathLike = Union[str, pathlib.Path]

COMPARISON_MD = 'comparison.md'
COMPARISON_CSV = 'comparison.csv'
COMPARISON_PNG = 'comparison.png'

# The command line's flags, in their own FlagValues: importing this module (tests, the
# evaluation code) defines no process-wide flag, so it cannot collide with another program's
# `--output_dir`.
_FLAG_VALUES = flags.FlagValues()
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'comparison',
                                  'Where comparison.{md,csv,png} go.',
                                  flag_values=_FLAG_VALUES)
_NAMES = flags.DEFINE_list('names', None,
                           'Comma-separated run names (default: directory names).',
                           flag_values=_FLAG_VALUES)
_STAT = flags.DEFINE_enum('stat', 'median', ['median', 'mean', 'min', 'max'],
                          'Per-dataset statistic over templates.', flag_values=_FLAG_VALUES)
_PROGRAM = 'python -m spt_jax.compare'
_HELP = ('-h', '-?', '--help', '--helpshort', '--helpfull')


def _natural_key(path: pathlib.Path) -> list:
  return [(0, int(part), '') if part.isdigit() else (1, 0, part)
          for part in re.split(r'(\d+)', path.as_posix())]


def find_results_json(run_dir: PathLike) -> pathlib.Path:
  """The results.json of one run, by the rule in the module docstring.

  Raises:
    FileNotFoundError: if the run has no results.json; the message names the
      paths searched and how to produce one.
  """
  run_dir = pathlib.Path(run_dir)
  if run_dir.is_file() and run_dir.suffix == '.json':
    return run_dir
  if not run_dir.exists():
    raise FileNotFoundError(f'{run_dir} does not exist; pass a run directory '
                            'or a results.json file.')
  direct = run_dir / results_lib.RESULTS_JSON
  if direct.is_file():
    return direct
  candidates = sorted((run_dir / 'eval').glob(f'**/{results_lib.RESULTS_JSON}'),
                      key=lambda p: _natural_key(p.relative_to(run_dir)))
  if not candidates:
    raise FileNotFoundError(
        f'no results.json in {run_dir}: looked for {direct} and '
        f'{run_dir / "eval" / "**" / results_lib.RESULTS_JSON}. Evaluate the run '
        'first (python -m spt_jax.evaluate ...), or pass the results.json path.')
  if len(candidates) > 1:
    logging.info('%s has %d results.json files; using the latest %s (natural '
                 'path order)', run_dir, len(candidates), candidates[-1])
  return candidates[-1]


def default_names(run_dirs: Sequence[PathLike]) -> List[str]:
  """Run names from directory names, made unique with a suffix where repeated."""
  names = []
  for run_dir in run_dirs:
    path = pathlib.Path(run_dir).resolve()
    name = path.parent.name if path.suffix == '.json' else path.name
    names.append(name or str(run_dir))
  counts = {}
  unique = []
  for name in names:
    counts[name] = counts.get(name, 0) + 1
    unique.append(name if names.count(name) == 1 else f'{name}#{counts[name]}')
  return unique


def compare(runs: Sequence[Mapping[str, Any]], names: Sequence[str],
            stat: str = 'median') -> Dict[str, Any]:
  """Builds the comparison table of several results dicts.

  Args:
    runs: results dicts (`spt_jax.results.aggregate` / `load_results`).
    names: one name per run; the first run is the reference for differences.
    stat: per-dataset statistic over templates: 'median', 'mean', 'min', 'max'.

  Returns:
    `{'metric', 'stat', 'names', 'rows': [{'cluster', 'dataset', 'values':
    [per run or None], 'deltas': [per run after the first, or None]}],
    'clusters': {cluster: {'values', 'deltas', 'n_datasets'}}, 'overall': {...},
    'common_datasets': [...]}`.

  Raises:
    ValueError: on mismatched names, an unknown stat, or runs with different
      metrics.
  """
  if len(runs) != len(names):
    raise ValueError(f'{len(runs)} runs but {len(names)} names; give one name '
                     'per run.')
  if not runs:
    raise ValueError('compare: no runs given.')
  if stat not in ('median', 'mean', 'min', 'max'):
    raise ValueError(f"unknown stat {stat!r}; use 'median', 'mean', 'min' or "
                     "'max'.")
  metrics = {r['metric'] for r in runs}
  if len(metrics) > 1:
    raise ValueError(f'the runs report different metrics {sorted(metrics)}; '
                     'aggregate them with the same metric before comparing.')

  clusters = {}
  for run in runs:
    for dataset, entry in run['datasets'].items():
      clusters.setdefault(dataset, entry['cluster'])
  datasets = sorted(clusters, key=lambda d: (clusters[d], d))

  def delta(values):
    ref = values[0]
    return [None if v is None or ref is None else v - ref for v in values[1:]]

  rows = []
  for dataset in datasets:
    values = [run['datasets'][dataset][stat] if dataset in run['datasets']
              else None for run in runs]
    rows.append({'cluster': clusters[dataset], 'dataset': dataset,
                 'values': values, 'deltas': delta(values)})

  common = [r['dataset'] for r in rows if all(v is not None for v in r['values'])]
  if len(common) < len(rows):
    logging.warning('compare: %d datasets are missing from some runs; averages '
                    'use the %d datasets every run has.', len(rows) - len(common),
                    len(common))

  def average(selected):
    if not selected:
      return {'values': [None] * len(runs), 'deltas': [None] * (len(runs) - 1),
              'n_datasets': 0}
    values = [float(np.mean([r['values'][i] for r in selected]))
              for i in range(len(runs))]
    return {'values': values, 'deltas': delta(values), 'n_datasets': len(selected)}

  common_rows = [r for r in rows if r['dataset'] in common]
  cluster_table = {}
  for cluster in dict.fromkeys(r['cluster'] for r in rows):
    cluster_table[cluster] = average(
        [r for r in common_rows if r['cluster'] == cluster])
  return {'metric': runs[0]['metric'], 'stat': stat, 'names': list(names),
          'rows': rows, 'clusters': cluster_table,
          'overall': average(common_rows), 'common_datasets': common}


def _fmt(value: Optional[float], signed: bool = False) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '—'
  return f'{value:+.2f}' if signed else f'{value:.2f}'


def to_markdown(table: Mapping[str, Any]) -> str:
  """The comparison as markdown (datasets, then cluster and overall averages)."""
  names = table['names']
  header = (['Cluster', 'Dataset'] + names +
            [f'Δ {n} − {names[0]}' for n in names[1:]])
  sep = ['---', '---'] + ['---:'] * (len(header) - 2)

  def line(cells):
    return '| ' + ' | '.join(cells) + ' |'

  lines = ['# Run comparison', '',
           f'Metric `{table["metric"]}`, per-dataset {table["stat"]} over prompt '
           f'templates; Δ = difference from `{names[0]}`.', '',
           line(header), line(sep)]
  for r in table['rows']:
    lines.append(line([r['cluster'], r['dataset']] +
                      [_fmt(v) for v in r['values']] +
                      [_fmt(d, signed=True) for d in r['deltas']]))
  lines += ['', f'Averages over the {len(table["common_datasets"])} datasets that '
            'every run has:', '', line(header), line(sep)]
  for cluster, c in table['clusters'].items():
    lines.append(line([cluster, f'(n={c["n_datasets"]})'] +
                      [_fmt(v) for v in c['values']] +
                      [_fmt(d, signed=True) for d in c['deltas']]))
  o = table['overall']
  lines.append(line(['**overall**', f'(n={o["n_datasets"]})'] +
                    [_fmt(v) for v in o['values']] +
                    [_fmt(d, signed=True) for d in o['deltas']]))
  return '\n'.join(lines) + '\n'


def to_csv_rows(table: Mapping[str, Any]) -> List[Dict[str, Any]]:
  """Rows with `level, cluster, dataset, <run>..., delta_<run>...` columns."""
  names = table['names']

  def row(level, cluster, dataset, values, deltas):
    out = {'level': level, 'cluster': cluster, 'dataset': dataset}
    out.update({n: '' if v is None else v for n, v in zip(names, values)})
    out.update({f'delta_{n}': '' if d is None else d
                for n, d in zip(names[1:], deltas)})
    return out

  rows = [row('dataset', r['cluster'], r['dataset'], r['values'], r['deltas'])
          for r in table['rows']]
  rows += [row('cluster', c, '', v['values'], v['deltas'])
           for c, v in table['clusters'].items()]
  rows.append(row('overall', '', '', table['overall']['values'],
                  table['overall']['deltas']))
  return rows


def plot_comparison(table: Mapping[str, Any], path: PathLike) -> pathlib.Path:
  """PNG: grouped bars, one group per dataset (+ overall), one bar per run."""
  plt = plots.pyplot()

  names = table['names']
  labels = [r['dataset'] for r in table['rows']] + ['overall']
  values = np.array([[np.nan if v is None else v for v in r['values']]
                     for r in table['rows']] +
                    [[np.nan if v is None else v
                      for v in table['overall']['values']]], dtype=np.float64)
  n_groups, n_runs = values.shape
  width = 0.8 / n_runs
  x = np.arange(n_groups)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.35 * n_groups * n_runs), 4.5))
  for i, name in enumerate(names):
    ax.bar(x - 0.4 + width * (i + 0.5), values[:, i], width, label=name)
  ax.set_xticks(x)
  ax.set_xticklabels(labels, rotation=45, ha='right')
  ax.set_ylabel(f'{table["metric"]} ({table["stat"]} over templates)')
  ax.set_title('Run comparison')
  ax.legend(fontsize=8, loc='best', framealpha=0.6)
  fig.tight_layout()
  return plots.save_figure(fig, path)


def write_comparison(table: Mapping[str, Any], output_dir: PathLike
                    ) -> Dict[str, pathlib.Path]:
  """Writes comparison.md, comparison.csv and comparison.png into `output_dir`."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  paths = {'md': output_dir / COMPARISON_MD, 'csv': output_dir / COMPARISON_CSV}
  paths['md'].write_text(to_markdown(table))
  rows = to_csv_rows(table)
  with paths['csv'].open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  paths['png'] = plot_comparison(table, output_dir / COMPARISON_PNG)
  return paths


def run(run_dirs: Sequence[PathLike], output_dir: PathLike = 'comparison',
        names: Optional[Sequence[str]] = None,
        stat: str = 'median') -> Dict[str, pathlib.Path]:
  """Finds, loads and compares the runs; writes the table and plot."""
  if not run_dirs:
    raise ValueError('give at least one RUN_DIR.')
  names = list(names) if names else default_names(run_dirs)
  if len(names) != len(run_dirs):
    raise ValueError(f'--names has {len(names)} names for {len(run_dirs)} runs; '
                     'give one comma-separated name per RUN_DIR.')
  paths = [find_results_json(d) for d in run_dirs]
  for name, path in zip(names, paths):
    logging.info('compare: %s <- %s', name, path)
  table = compare([results_lib.load_results(p) for p in paths], names, stat)
  return write_comparison(table, output_dir)


def _compare_main(argv: Sequence[str]) -> int:
  """`argv`: the program name, then the RUN_DIRs (absl has parsed the flags)."""
  run_dirs = list(argv[1:])
  if not run_dirs:
    sys.stderr.write('error: at least one RUN_DIR is required (the first is the reference '
                     'for differences); see --help.\n')
    return 2
  logging.set_verbosity(logging.INFO)
  try:
    paths = run(run_dirs, _OUTPUT_DIR.value, _NAMES.value or None, _STAT.value)
  except (FileNotFoundError, ValueError) as e:
    sys.stderr.write(f'error: {e}\n')
    return 2
  sys.stdout.write(''.join(f'{p}\n' for p in paths.values()))  # the command's output
  return 0


def _parse_flags(argv: Sequence[str], known_only: bool = False) -> list[str]:
  """compare's flags (and --help); returns the program name and the rest (the RUN_DIRs, and
  with `known_only` the flags that are not compare's).

  Raises:
    flags.Error: an unknown flag or a bad value.
  """
  if any(arg in _HELP for arg in argv[1:]):
    sys.stdout.write(f'{__doc__}\nflags:\n{_FLAG_VALUES.get_help()}\n')
    sys.exit(0)
  _FLAG_VALUES.unparse_flags()  # each call starts from the defaults
  return _FLAG_VALUES(list(argv), known_only=known_only)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command line `argv` (without the program name; default `sys.argv[1:]`).

  Returns the exit status: 0, or 2 for a usage or input error (written to stderr).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    rest = _parse_flags([_PROGRAM, *argv])
  except flags.Error as e:
    sys.stderr.write(f'error: {e}\n')
    return 2
  return _compare_main(rest)


def _app_flags_parser(argv: Sequence[str]) -> list[str]:
  try:
    rest = _parse_flags(argv, known_only=True)
    # What is left of the flags is absl's own (--verbosity, --logtostderr, ...) or unknown.
    return flags.FLAGS([argv[0], *rest[1:]])
  except flags.Error as e:
    sys.stderr.write(f'error: {e}\n')
    sys.exit(2)


def cli() -> None:
  """Console entry point (`spt-compare`), `python -m spt_jax.compare`: `absl.app.run`."""
  app.run(_compare_main, flags_parser=_app_flags_parser)


if __name__ == '__main__':
  cli()
