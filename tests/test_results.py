"""Aggregation on a small known table, and the files the writers produce."""

import csv
import json

import numpy as np
import pytest

from spt_jax import results as R

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

# rte: 3 templates (50, 60, 80); cb: 2 templates (30, 40); copa: 1 template (70).
TASK_METRICS = {
    'rte_t1_score_eval': {'accuracy': 50.0, 'f1': 1.0},
    'rte_t2_score_eval': {'accuracy': np.float32(80.0)},
    'rte_t3_score_eval': {'accuracy': 60.0},
    'cb_t1_score_eval': {'accuracy': 30.0},
    'cb_t2_score_eval': {'accuracy': 40.0},
    'copa_t1_score_eval': {'accuracy': 70.0},
    'spt_heldout_score_eval': {'accuracy': 99.0},   # a mixture entry: skipped
}


def task_info(name):
  if name.startswith('spt_'):
    return None
  dataset, template, _, _ = name.split('_')
  cluster = 'sentence_completion' if dataset == 'copa' else 'nli'
  return R.TaskInfo(dataset=dataset, template=template, cluster=cluster)


@pytest.fixture
def results():
  return R.aggregate(TASK_METRICS, task_info)


def test_aggregate_known_table(results):
  rte = results['datasets']['rte']
  assert rte == {'cluster': 'nli', 'templates': {'t1': 50.0, 't2': 80.0, 't3': 60.0},
                 'median': 60.0, 'mean': pytest.approx(190 / 3), 'min': 50.0,
                 'max': 80.0, 'n_templates': 3}
  cb = results['datasets']['cb']
  assert (cb['median'], cb['mean'], cb['min'], cb['max'], cb['n_templates']) == (
      35.0, 35.0, 30.0, 40.0, 2)
  # Datasets ordered by (cluster, name).
  assert list(results['datasets']) == ['cb', 'rte', 'copa']
  nli = results['clusters']['nli']
  assert nli['median'] == pytest.approx((60 + 35) / 2)
  assert nli['mean'] == pytest.approx((190 / 3 + 35) / 2)
  assert nli['n_datasets'] == 2
  assert results['clusters']['sentence_completion']['median'] == 70.0
  assert results['overall']['median'] == pytest.approx((60 + 35 + 70) / 3)
  assert results['overall']['mean'] == pytest.approx((190 / 3 + 35 + 70) / 3)
  assert results['skipped_tasks'] == ['spt_heldout_score_eval']
  json.dumps(results)


def test_aggregate_with_mapping_and_errors():
  info = {'a': R.TaskInfo('d', 't', 'c'), 'b': R.TaskInfo('d', 't', 'c')}
  with pytest.raises(ValueError, match='template names must be unique'):
    R.aggregate({'a': {'accuracy': 1}, 'b': {'accuracy': 2}}, info)
  with pytest.raises(ValueError, match="reports no 'accuracy'"):
    R.aggregate({'a': {'f1': 1}}, info)
  with pytest.raises(ValueError, match='one cluster'):
    R.aggregate({'a': {'accuracy': 1}, 'b': {'accuracy': 2}},
                {'a': R.TaskInfo('d', 't1', 'c1'), 'b': R.TaskInfo('d', 't2', 'c2')})
  with pytest.raises(ValueError, match='none of the 1 tasks'):
    R.aggregate({'x': {'accuracy': 1}}, info)
  out = R.aggregate({'a': {'f1': 10.0}}, info, metric='f1')
  assert out['datasets']['d']['median'] == 10.0


def test_writers(results, tmp_path):
  slots = {'rte': np.array([[0, 1], [1, 1]]), 'cb': np.array([[3, 3]]),
           'copa': np.array([[2, 3]])}
  paths = R.write_results(results, tmp_path / 'eval', slot_indices=slots,
                          memory_size=4, title='Test run')
  assert set(paths) == {'json', 'csv', 'md', 'accuracy_png', 'slot_usage_png'}

  loaded = R.load_results(paths['json'])
  assert loaded['datasets']['rte']['median'] == 60.0
  assert loaded['retrieval']['cb']['unused_fraction'] == 0.75
  assert loaded['retrieval']['rte']['num_retrievals'] == 4

  with paths['csv'].open() as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == R.CSV_COLUMNS
  levels = [r['level'] for r in rows]
  assert levels.count('template') == 6 and levels.count('dataset') == 3
  assert levels.count('cluster') == 2 and levels[-1] == 'overall'
  rte = next(r for r in rows if r['level'] == 'dataset' and r['dataset'] == 'rte')
  assert (float(rte['median']), float(rte['min']), int(rte['n'])) == (60.0, 50.0, 3)

  md = paths['md'].read_text()
  assert md.startswith('# Test run')
  table = [l for l in md.splitlines() if l.startswith('| nli |')]
  assert table[0] == '| nli | cb | 35.00 | 35.00 | 30.00 | 40.00 | 2 |'
  assert table[1] == '| nli | rte | 60.00 | 63.33 | 50.00 | 80.00 | 3 |'
  assert '| **overall** | **55.00** |' in md

  for key in ('accuracy_png', 'slot_usage_png'):
    assert paths[key].read_bytes()[:8] == PNG_MAGIC

  usage = R.slot_usage_by_dataset(slots, 4)
  np.testing.assert_allclose(usage['rte'], [0.25, 0.75, 0, 0])


def test_write_results_needs_memory_size(results, tmp_path):
  with pytest.raises(ValueError, match='memory_size'):
    R.write_results(results, tmp_path, slot_indices={'rte': [[0]]})


def test_load_results_rejects_other_json(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text('{"accuracy": 1}')
  with pytest.raises(ValueError, match='not a results.json'):
    R.load_results(path)


def test_chance_column_table_and_plot(results, tmp_path):
  """add_chance averages the per-task chance over a dataset's templates; results.md gains a
  Chance column, the end-of-run table shows it, and the plot still renders."""
  import copy  # pylint: disable=g-import-not-at-top
  results = copy.deepcopy(results)
  rte_tasks = [t['task'] for t in results['templates'] if t['dataset'] == 'rte']
  R.add_chance(results, {rte_tasks[0]: 50.0, rte_tasks[1]: 40.0})
  assert results['datasets']['rte']['chance'] == 45.0
  assert 'chance' not in results['datasets']['cb']
  paths = R.write_results(results, tmp_path / 'eval')
  md = paths['md'].read_text()
  assert '| Max | n | Chance |' in md
  assert '| nli | rte | 60.00 | 63.33 | 50.00 | 80.00 | 3 | 45.00 |' in md
  assert '| nli | cb | 35.00 | 35.00 | 30.00 | 40.00 | 2 | — |' in md
  table = R.summary_table(results).splitlines()
  rte = next(l for l in table if l.startswith('rte '))
  assert rte.split() == ['rte', '60.00', '63.33', '45.00', '3']
  assert table[-1].split()[:3] == ['overall', '55.00', f'{results["overall"]["mean"]:.2f}']
  assert paths['accuracy_png'].read_bytes()[:8] == PNG_MAGIC
