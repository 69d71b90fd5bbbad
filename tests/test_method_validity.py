"""Tests of benchmarks/method_validity.py (issue 8).

* A CI smoke run of the script as a command (`--quick`: 1 seed, a few steps, tiny probes and
  eval) that checks every output file and its structure (slow: three tiny training runs).
* Unit tests of the script's own aggregation (mean ± std over seeds, probe steps, the
  structure summary) on hand-made run records. The statistics themselves
  (`spt_jax.retrieval_analysis`) are tested in tests/test_retrieval_analysis.py.
"""
import csv
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'benchmarks' / 'method_validity.py'


def _load_script():
  spec = importlib.util.spec_from_file_location('method_validity_under_test', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module   # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def mv():
  return _load_script()


# ------------------------------------------------------------------------------------------
# Unit tests of the aggregation.
# ------------------------------------------------------------------------------------------
def test_mean_std_sample_std(mv):
  s = mv.mean_std([0.5, 0.7, 0.9])
  assert s['mean'] == pytest.approx(0.7)
  assert s['std'] == pytest.approx(0.2)   # ddof 1: sqrt((0.04 + 0 + 0.04) / 2)
  assert s['n'] == 3
  one = mv.mean_std([0.6])
  assert one['mean'] == pytest.approx(0.6) and one['std'] is None


def test_probe_steps(mv):
  assert mv.probe_steps(800, (0.0, 0.25, 0.5, 1.0)) == [1, 200, 400, 800]
  assert mv.probe_steps(3, (0.0, 0.1, 1.0)) == [1, 3]


def _run(method, seed, accs, probes=()):
  return {'method': method, 'seed': seed,
          'datasets': {d: {'mean': a, 'median': a - 0.01, 'templates': {'t': a}}
                       for d, a in accs.items()},
          'probes': list(probes), 'train_retrieval': [], 'eval_health': {},
          'final_train_loss': 1.0, 'final_token_accuracy': 0.5, 'wall_seconds': 1.0,
          'eval_seconds': 0.1}


def test_accuracy_table_average_is_mean_of_seed_averages(mv):
  runs = [_run('pt', 0, {'a': 50.0, 'b': 70.0}), _run('pt', 1, {'a': 60.0, 'b': 80.0}),
          _run('spt', 0, {'a': 90.0, 'b': 50.0})]
  table = mv.accuracy_table(runs)
  assert table['pt']['a']['mean'] == pytest.approx(55.0)
  assert table['pt']['average']['values'] == pytest.approx([60.0, 70.0])
  assert table['pt']['average']['std'] == pytest.approx(math.sqrt(50.0))
  assert table['spt']['average']['mean'] == pytest.approx(70.0)
  assert table['spt']['average']['std'] is None
  md = mv.accuracy_markdown(table, 'x')
  assert '| pt | 55.0 ± 7.1 | 75.0 ± 7.1 | 65.0 ± 7.1 |' in md
  assert '| spt | 90.0 | 50.0 | 70.0 |' in md


def test_structure_summary_on_hand_made_logs(mv):
  """Two seeds whose held-out task retrieves exactly the slots of its resembled cluster."""
  from spt_jax import retrieval_analysis as ra
  settings = mv.Settings(top_slots_mass=0.5)
  m = 8
  # Cluster A uses slots 0-1, cluster B slots 4-5; held-out 'h' (resembles A) slots 0-1.
  train_idx = np.array([[0, 1], [0, 1], [4, 5], [4, 5]])
  train_labels = ['A', 'A', 'B', 'B']
  held_idx = np.array([[0, 1], [1, 0]])
  stats = ra.summarize(train_idx, train_labels, held_idx, ['h', 'h'], m,
                       resembles={'h': 'A'}, mass=settings.top_slots_mass)
  probes = []
  for seed in (0, 1):
    p = dict(stats, step=10)
    probes.append(p)
  runs = [_run('spt', s, {'h': 0.5}, [probes[s]]) for s in (0, 1)]
  out = mv.structure_summary(runs)
  final = out['spt']['per_step']['10']
  assert final['overlap']['rows'] == ['h'] and final['overlap']['cols'] == ['A', 'B']
  np.testing.assert_allclose(final['overlap']['mean'], [[1.0, 0.0]])
  r = final['resemblance']['h']
  assert r['cluster'] == 'A'
  # A's top slots at 50% mass: {0} alone (slots 0 and 1 hold 50% each, lower id first);
  # half of h's retrievals are slot 0.
  assert r['share']['mean'] == pytest.approx(0.5)
  assert r['other_clusters_max_share']['mean'] == pytest.approx(0.0)
  assert r['chance']['mean'] == pytest.approx(1 / m)   # one slot of M
  assert r['resembled_is_highest'] == [True, True]
  assert final['train_health']['unused_fraction']['mean'] == pytest.approx(4 / 8)
  assert final['train_health']['entropy_ratio']['mean'] == pytest.approx(
      math.log(4) / math.log(8))


def test_uniform_reference(mv):
  ref = mv.uniform_reference(1024 * 20, 1024)
  assert ref['unused_fraction'] == pytest.approx(math.exp(-20), rel=1e-2)
  assert 0.99 < ref['entropy_ratio'] < 1.0
  few = mv.uniform_reference(100, 1024)
  assert few['unused_fraction'] > 0.9 and few['entropy_ratio'] < 0.7


def test_unknown_method_is_refused(mv):
  with pytest.raises(ValueError, match='Unknown method'):
    mv.method_gin_files('lora')


def test_gin_overlays_give_equal_prompt_length(mv):
  """The prompt-tuning overlay + the script's binding equal SPT's L_p + k·L_m."""
  import gin
  from spt_jax import gin_configurables
  prefix = mv.spt_prefix_length([], [], ['gin'])
  spt = gin_configurables.create_model().network.prompt_config
  assert prefix == spt.soft_prompt_length + spt.top_k * spt.memory_length
  assert spt.memory_size > 0
  mv.parse_method_gin('prompt_tuning',
                      [f'prompts.PromptConfig.soft_prompt_length = {prefix}'], [], ['gin'])
  pt = gin_configurables.create_model().network.prompt_config
  assert pt.memory_size == 0 and pt.prefix_length == prefix
  assert gin.query_parameter('train.trainable') == 'full'
  mv.parse_method_gin('finetune', [], [], ['gin'])
  assert gin_configurables.create_model().network.prompt_config is None
  gin.clear_config()


# ------------------------------------------------------------------------------------------
# The CI smoke run.
# ------------------------------------------------------------------------------------------
EXPECTED_FILES = ('accuracy.json', 'accuracy.csv', 'accuracy.md', 'accuracy.png',
                  'health.json', 'health.csv', 'health_over_training.png', 'structure.json',
                  'overlap_heatmap.png', 'resemblance_share.png', 'summary.md', 'runs.json')
HELDOUT = ('sample_super_glue_rte', 'sample_super_glue_copa', 'sample_yelp_polarity')
HELDOUT_DATASETS = ('super_glue/rte', 'super_glue/copa', 'yelp_polarity')   # catalog names
CLUSTERS = {'sentiment', 'topic_classification', 'paraphrase', 'multiple_choice_qa'}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quick_run_writes_every_output(tmp_path):
  out = tmp_path / 'mv'
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'device_count' not in f)
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), f'--output_dir={out}', '--quick', '--steps=4'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400)
  assert proc.returncode == 0, proc.stderr[-5000:]
  check_outputs(out, final_step=4)


def check_outputs(out: pathlib.Path, final_step: int) -> None:
  """Every output file of a --quick run (1 seed, 3 methods) with its expected structure."""
  for name in EXPECTED_FILES:
    assert (out / name).is_file() and (out / name).stat().st_size > 0, name
  for name in ('accuracy.png', 'health_over_training.png', 'overlap_heatmap.png',
               'resemblance_share.png'):
    assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name

  acc = json.loads((out / 'accuracy.json').read_text())
  assert set(acc['mean_over_templates']) == {'finetune', 'prompt_tuning', 'spt'}
  for method, row in acc['mean_over_templates'].items():
    assert set(row) == set(HELDOUT_DATASETS) | {'average'}, method
    for stat in row.values():
      assert stat['n'] == 1 and 0.0 <= stat['mean'] <= 100.0   # percent
  with (out / 'accuracy.csv').open() as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 3 * 4   # (mean, median) x methods x (3 datasets + average)

  runs = json.loads((out / 'runs.json').read_text())
  assert runs['config']['spt_prefix_length'] == 40
  assert runs['config']['complete']
  assert [r['final_step'] for r in runs['runs']] == [final_step] * 3
  for r in runs['runs']:
    assert (pathlib.Path(r['run_dir']) / 'metrics.jsonl').is_file()
    assert (pathlib.Path(r['run_dir']) / 'eval' / f'step_{final_step}' / 'results.json').is_file()

  health = json.loads((out / 'health.json').read_text())
  steps = sorted({row['step'] for row in health['probe']})
  assert steps == [1, final_step]
  for row in health['probe']:
    assert row['method'] == 'spt' and row['memory_size'] == 1024
    for k in ('train_entropy_ratio', 'heldout_entropy_ratio'):
      assert 0.0 < row[k] <= 1.0
    for k in ('train_unused_fraction', 'heldout_unused_fraction'):
      assert 0.0 <= row[k] < 1.0
      assert 0.0 <= row[k.replace('_unused', '_uniform_unused')] < 1.0
  assert health['training_batches']['spt/seed0'][-1]['step'] == final_step
  assert any(k.endswith('retrieval_entropy_ratio') for k in health['eval']['spt/seed0'])

  structure = json.loads((out / 'structure.json').read_text())
  final = structure['spt']['per_step'][str(final_step)]
  assert final['overlap']['rows'] == list(HELDOUT)
  assert set(final['overlap']['cols']) == CLUSTERS
  matrix = np.asarray(final['overlap']['mean'])
  assert matrix.shape == (3, 4) and (matrix >= 0).all() and (matrix <= 1).all()
  for task, cluster in zip(HELDOUT, ('paraphrase', 'multiple_choice_qa', 'sentiment')):
    entry = final['resemblance'][task]
    assert entry['cluster'] == cluster
    assert 0.0 <= entry['share']['mean'] <= 1.0
    assert 0.0 < entry['chance']['mean'] <= 1.0

  summary = (out / 'summary.md').read_text()
  for heading in ('Held-out accuracy', 'Retrieval health', 'Retrieval structure', 'Runs'):
    assert heading in summary
