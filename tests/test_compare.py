"""compare over fake run directories: file discovery, table, differences, CLI."""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

from spt_jax import compare
from spt_jax import results as R

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _results(values):
  """{(cluster, dataset): [template values]} -> results dict via aggregate."""
  metrics, info = {}, {}
  for (cluster, dataset), per_template in values.items():
    for i, v in enumerate(per_template):
      task = f'{dataset}_t{i}'
      metrics[task] = {'accuracy': v}
      info[task] = R.TaskInfo(dataset, f't{i}', cluster)
  return R.aggregate(metrics, info)


@pytest.fixture
def runs(tmp_path):
  spt = tmp_path / 'spt'
  R.write_results(_results({('nli', 'rte'): [50, 60, 70], ('nli', 'cb'): [40, 44],
                            ('coref', 'wsc'): [55]}), spt)
  pt = tmp_path / 'pt'
  # An older eval that must not be chosen, then the latest (natural order).
  R.write_results(_results({('nli', 'rte'): [0, 0]}), pt / 'eval' / 'step_900')
  R.write_results(_results({('nli', 'rte'): [40, 50, 90], ('coref', 'wsc'): [60]}),
                  pt / 'eval' / 'step_10000')
  return spt, pt


def test_find_results_json(runs, tmp_path):
  spt, pt = runs
  assert compare.find_results_json(spt) == spt / 'results.json'
  assert compare.find_results_json(pt) == pt / 'eval' / 'step_10000' / 'results.json'
  assert compare.find_results_json(spt / 'results.json') == spt / 'results.json'
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match='no results.json in .*empty'):
    compare.find_results_json(empty)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    compare.find_results_json(tmp_path / 'missing')


def test_compare_table(runs):
  spt, pt = runs
  table = compare.compare([R.load_results(compare.find_results_json(d))
                           for d in (spt, pt)], ['spt', 'pt'])
  rows = {r['dataset']: r for r in table['rows']}
  assert [r['dataset'] for r in table['rows']] == ['wsc', 'cb', 'rte']
  assert rows['rte']['values'] == [60.0, 50.0]
  assert rows['rte']['deltas'] == [-10.0]
  assert rows['cb']['values'] == [42.0, None] and rows['cb']['deltas'] == [None]
  assert rows['wsc']['deltas'] == [5.0]
  # Averages over the datasets every run has (rte, wsc).
  assert table['common_datasets'] == ['wsc', 'rte']
  assert table['overall']['values'] == [57.5, 55.0]
  assert table['overall']['deltas'] == [-2.5]
  assert table['clusters']['nli']['n_datasets'] == 1
  mean_table = compare.compare([R.load_results(spt / 'results.json')] * 2,
                               ['a', 'b'], stat='mean')
  assert mean_table['overall']['deltas'] == [0.0]
  with pytest.raises(ValueError, match='unknown stat'):
    compare.compare([R.load_results(spt / 'results.json')], ['a'], stat='mode')


def test_run_writes_table_and_plot(runs, tmp_path):
  spt, pt = runs
  out = tmp_path / 'cmp'
  assert compare.main([str(spt), str(pt), '--output_dir', str(out),
                       '--names', 'SPT,PT']) == 0
  md = (out / 'comparison.md').read_text()
  assert '| Cluster | Dataset | SPT | PT | Δ PT − SPT |' in md
  assert '| nli | rte | 60.00 | 50.00 | -10.00 |' in md
  assert '| nli | cb | 42.00 | — | — |' in md
  assert '| **overall** | (n=2) | 57.50 | 55.00 | -2.50 |' in md
  with (out / 'comparison.csv').open() as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['level', 'cluster', 'dataset', 'SPT', 'PT', 'delta_PT']
  assert rows[-1]['level'] == 'overall' and float(rows[-1]['delta_PT']) == -2.5
  assert (out / 'comparison.png').read_bytes()[:8] == PNG_MAGIC


def test_cli_errors(runs, tmp_path, capsys):
  spt, _ = runs
  empty = tmp_path / 'empty_run'
  empty.mkdir()
  assert compare.main([str(spt), str(empty), '--output_dir', str(tmp_path)]) == 2
  assert 'no results.json in' in capsys.readouterr().err
  assert compare.main([str(spt), '--names', 'a,b']) == 2
  assert '2 names for 1 runs' in capsys.readouterr().err


def test_python_dash_m(runs, tmp_path):
  spt, pt = runs
  out = tmp_path / 'cli'
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, '-m', 'spt_jax.compare', str(spt), str(pt),
       '--output_dir', str(out)], capture_output=True, text=True, env=env,
      cwd=ROOT, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert '| nli | rte | 60.00 | 50.00 | -10.00 |' in (out / 'comparison.md').read_text()
  assert '| Cluster | Dataset | spt | pt | Δ pt − spt |' in (
      out / 'comparison.md').read_text()
