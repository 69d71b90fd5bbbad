"""Tests of benchmarks/method_validity.py.

* A CI smoke run of the script as a command (`--quick`: 1 seed, a few steps, tiny probes and
  eval) that checks every output file and its structure, then reruns it into the same
  directory, which must train nothing (slow: five stage-1 and three stage-2 tiny runs).
* Unit tests of the script's own aggregation (mean ± std over seeds, the SE of a difference
  over seeds, curve aggregation, probe steps, the structure summary and its change, the
  control verdict, stand-ins) on hand-made run records. The statistics themselves
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


def test_difference_stats_paired_over_seeds(mv):
  # Per-seed differences 2, 4, 6: mean 4, std 2, SE 2 / sqrt(3).
  d = mv.difference_stats({0: 52.0, 1: 54.0, 2: 56.0}, {0: 50.0, 1: 50.0, 2: 50.0})
  assert d['paired'] and d['n'] == 3 and d['seeds'] == [0, 1, 2]
  assert d['difference'] == pytest.approx(4.0)
  assert d['se'] == pytest.approx(2.0 / math.sqrt(3))
  assert d['exceeds_2se']   # 4 > 2 * 1.155
  # Pairing removes the seed effect: a constant gap of 1 point has SE 0 and exceeds it,
  # although each method alone varies by 10 points over seeds.
  c = mv.difference_stats({0: 41.0, 1: 51.0, 2: 61.0}, {0: 40.0, 1: 50.0, 2: 60.0})
  assert c['difference'] == pytest.approx(1.0) and c['se'] == pytest.approx(0.0)
  assert c['exceeds_2se']
  # A tie: differences +1, -1, 0.
  t = mv.difference_stats({0: 51.0, 1: 49.0, 2: 50.0}, {0: 50.0, 1: 50.0, 2: 50.0})
  assert t['difference'] == pytest.approx(0.0) and not t['exceeds_2se']


def test_difference_stats_unpaired_and_one_seed(mv):
  # No two shared seeds: unpaired, SE = sqrt(var_a / n_a + var_b / n_b).
  d = mv.difference_stats({0: 50.0, 1: 54.0}, {2: 40.0, 3: 42.0})
  assert not d['paired']
  assert d['difference'] == pytest.approx(52.0 - 41.0)
  assert d['se'] == pytest.approx(math.sqrt(8.0 / 2 + 2.0 / 2))
  assert d['exceeds_2se']
  one = mv.difference_stats({0: 60.0}, {0: 50.0})
  assert one['difference'] == pytest.approx(10.0)
  assert one['se'] is None and one['exceeds_2se'] is None
  empty = mv.difference_stats({}, {0: 50.0})
  assert empty['difference'] is None and empty['exceeds_2se'] is None


def test_aggregate_curves_intersects_steps_and_drops_missing(mv):
  a = [(1, 0.9), (2, 0.8), (3, 0.7)]
  b = [(1, 0.7), (2, 0.6), (3, None), (4, 0.1)]   # step 3 missing, step 4 extra
  c = [(1, None), (2, None)]                        # no point: does not count
  out = mv.aggregate_curves([a, b, c])
  assert out['n'] == 2 and out['steps'] == [1, 2]
  np.testing.assert_allclose(out['mean'], [0.8, 0.7])
  np.testing.assert_allclose(out['std'], [math.sqrt(0.02)] * 2)
  single = mv.aggregate_curves([a])
  assert single['std'] is None and single['mean'] == pytest.approx([0.9, 0.8, 0.7])
  assert mv.aggregate_curves([c]) == {'steps': [], 'mean': [], 'std': None, 'n': 0}
  at = mv.curve_at(single, (0.0, 0.5, 1.0))
  assert [p['step'] for p in at] == [1, 2, 3]


def test_retrieval_curve_prefers_cumulative_keys_and_falls_back(mv):
  legacy = [{'step': -1, 'hparams': {}},
            {'step': 1, 'loss': 1.0, 'retrieval/never_used_fraction': 0.9,
             'retrieval/normalized_entropy': 0.4},
            {'step': 1, 'perf/steps_per_sec': 2.0},
            {'step': 2, 'loss': 1.0, 'retrieval/never_used_fraction': 0.8}]
  curve, source = mv.retrieval_curve(legacy)
  assert source == 'legacy'
  assert [(p['step'], p['cumulative_never_used_fraction']) for p in curve] == [(1, 0.9),
                                                                               (2, 0.8)]
  assert curve[0]['cumulative_normalized_entropy'] is None
  assert curve[0]['batch_normalized_entropy'] == pytest.approx(0.4)
  new = [{'step': 1, 'retrieval/never_used_fraction': 0.9,
          'retrieval/cumulative_never_used_fraction': 0.5,
          'retrieval/cumulative_normalized_entropy': 0.7}]
  curve, source = mv.retrieval_curve(new)
  assert source == 'cumulative'
  assert curve[0]['cumulative_never_used_fraction'] == pytest.approx(0.5)
  assert curve[0]['cumulative_normalized_entropy'] == pytest.approx(0.7)
  assert mv.retrieval_curve([{'step': 1, 'loss': 1.0}]) == ([], 'none')


def test_training_curves_and_comparisons_on_hand_made_runs(mv):
  runs = []
  for seed, (pt, spt, ctl) in enumerate(((50.0, 56.0, 55.0), (52.0, 57.0, 58.0),
                                         (48.0, 55.0, 54.0))):
    runs.append(dict(_run('prompt_tuning', seed, {'a': pt}), stage=2))
    r = dict(_run('spt', seed, {'a': spt}), stage=2)
    r['train_retrieval'] = [{'step': s, 'cumulative_never_used_fraction': 0.5 + 0.1 * seed,
                             'cumulative_normalized_entropy': None} for s in (1, 2)]
    runs.append(r)
    runs.append(dict(_run('spt_fixed_random', seed, {'a': ctl}), stage=2))
  diffs = mv.comparisons(runs)
  gap = diffs['2']['spt - prompt_tuning']['average']
  assert gap['difference'] == pytest.approx(6.0) and gap['exceeds_2se']
  tie = diffs['2']['spt - spt_fixed_random']['average']
  assert tie['difference'] == pytest.approx(1 / 3) and not tie['exceeds_2se']
  verdict = mv.control_verdict(diffs, runs, 2)
  assert 'Retrieval adds nothing measurable here' in verdict
  for r in runs:
    if r['method'] == 'spt_fixed_random':
      r['stand_in'] = 'no field yet'
  assert 'No verdict: the control did not run' in mv.control_verdict(diffs, runs, 2)
  curves = mv.training_curves(runs)
  never = curves['2']['spt']['cumulative_never_used_fraction']
  assert never['n'] == 3 and never['mean'] == pytest.approx([0.6, 0.6])
  assert curves['2']['spt']['cumulative_normalized_entropy']['n'] == 0


def test_write_outputs_of_a_partial_experiment(mv, tmp_path):
  """Hand-made records of 2 seeds, 1 run still missing: every aggregate is written, the
  summary says how many runs are complete and gives the control verdict."""
  runs = []
  for seed in (0, 1):
    for stage, method, acc in ((1, 'prompt_tuning', 50.0), (1, 'spt', 52.0 + seed),
                               (1, 'spt_fixed_random', 52.5), (2, 'spt', 55.0),
                               (2, 'spt_fixed_random', 55.0 + seed)):
      if (stage, method, seed) == (2, 'spt_fixed_random', 1):
        continue   # not finished yet
      r = dict(_run(method, seed, {'a': acc, 'b': acc}), stage=stage,
               name=mv.run_name(stage, method, seed), finished_at='now')
      if method != 'prompt_tuning':
        r['train_retrieval'] = [{'step': s, 'cumulative_never_used_fraction': 0.9 - 0.1 * s,
                                 'cumulative_normalized_entropy': 0.5 + 0.1 * s}
                                for s in (1, 2, 3)]
        r['train_retrieval_source'] = 'cumulative'
      runs.append(r)
  planned = [mv.run_name(*p) for p in mv.experiment_plan(
      ['prompt_tuning', 'spt', 'spt_fixed_random'], ['spt', 'spt_fixed_random'], [0, 1])]
  config = {'command': 'x', 'methods': ['prompt_tuning', 'spt', 'spt_fixed_random'],
            'seeds': [0, 1], 'transfer_methods': ['spt', 'spt_fixed_random'],
            'train_steps': 3, 'transfer_steps': 2, 'batch_size': 16,
            'task_feature_lengths': {'inputs': 8, 'targets': 4}, 'spt_prefix_length': 40,
            'overlap_method': 'intersection', 'top_slots_mass': 0.5, 'planned_runs': planned,
            'device': 'cpu', 'wall_seconds': 1.0}
  paths = mv.write_outputs(str(tmp_path), runs, config)
  for key in ('accuracy_json', 'accuracy_csv', 'accuracy_md', 'accuracy_png_stage1',
              'accuracy_png_stage2', 'comparisons_json', 'health_json', 'health_csv',
              'health_png', 'structure_json', 'summary_md'):
    assert os.path.getsize(paths[key]) > 0, key
  summary = pathlib.Path(paths['summary_md']).read_text()
  assert '**PARTIAL: 9 of 10 runs complete**' in summary
  assert 'spt_fixed_random_fewshot_seed1' in summary
  # Stage 1: spt − control = -0.5, +0.5 over seeds: a tie.
  assert 'Stage 1, spt − spt_fixed_random' in summary
  assert 'Retrieval adds nothing measurable here' in summary
  # Curves (never-used / entropy), both seeds alike: std 0.
  assert '| 3 | 0.600 ± 0.000 / 0.800 ± 0.000 | 0.600 ± 0.000 / 0.800 ± 0.000 |' in summary
  diffs = json.loads(pathlib.Path(paths['comparisons_json']).read_text())
  assert diffs['stage1']['spt - prompt_tuning']['average']['difference'] == pytest.approx(2.5)
  # Stage 2 has one shared seed for the control: unpaired, no SE (one control seed).
  tie2 = diffs['stage2']['spt - spt_fixed_random']['average']
  assert not tie2['paired'] and tie2['se'] is None


def test_resemblance_change_is_paired_over_seeds(mv):
  def probe(step, share):
    return {'step': step, 'resemblance': {'h': {'cluster': 'A', 'share': share}}}
  runs = [_run('spt', s, {'h': 0.5}, [probe(1, 0.30), probe(10, 0.30 + d)])
          for s, d in enumerate((0.10, 0.12, 0.08))]
  change = mv.resemblance_change(runs)
  assert change['first_step'] == 1 and change['last_step'] == 10
  c = change['datasets']['h']['change']
  assert c['difference'] == pytest.approx(0.10) and c['exceeds_2se']
  assert change['datasets']['h']['first']['mean'] == pytest.approx(0.30)


def test_experiment_plan_is_seed_major_with_stage_two_after_each_seed(mv):
  plan = mv.experiment_plan(['finetune', 'spt'], ['spt'], [0, 1])
  assert plan == [(1, 'finetune', 0), (1, 'spt', 0), (2, 'spt', 0),
                  (1, 'finetune', 1), (1, 'spt', 1), (2, 'spt', 1)]
  assert [mv.run_name(*p) for p in plan[:3]] == ['finetune_seed0', 'spt_seed0',
                                                  'spt_fewshot_seed0']


def test_stand_ins_until_the_memory_work_lands(mv):
  """spt_paper / spt_fixed_random resolve to their real config once it exists."""
  paper = mv.resolve_method('spt_paper')
  if mv.gin_file_exists('methods/spt_paper.gin', ['gin']):
    assert paper.gin_files[0] == 'methods/spt_paper.gin' and paper.stand_in is None
  else:
    assert paper.gin_files[0] == 'methods/spt.gin' and 'does not exist yet' in paper.stand_in
  control = mv.resolve_method('spt_fixed_random')
  if mv.control_available():
    assert 'validity/spt_fixed_random.gin' in control.gin_files and control.stand_in is None
  else:
    assert 'validity/spt.gin' in control.gin_files and 'NOT the fixed-random' in (
        control.stand_in)
  stage2 = mv.resolve_method('spt', 2, initial_checkpoint='/tmp/x')
  assert stage2.gin_files[-1] == 'validity/transfer.gin'
  assert "INITIAL_CHECKPOINT_PATH = '/tmp/x'" in stage2.bindings
  with pytest.raises(ValueError, match='Unknown transfer method'):
    mv.resolve_method('finetune', 2, initial_checkpoint='/tmp/x')


def test_unknown_method_is_refused(mv):
  with pytest.raises(ValueError, match='Unknown method'):
    mv.method_gin_files('lora')


def test_gin_overlays_give_equal_prompt_length(mv):
  """The prompt-tuning overlay + the script's binding equal SPT's L_p + k·L_m."""
  import gin
  from spt_jax import gin_configurables
  prefix = mv.spt_prefix_length([], [], ['gin'])
  spt = gin_configurables.create_model().prompt_config
  assert prefix == spt.soft_prompt_length + spt.top_k * spt.memory_length
  assert spt.memory_size > 0
  mv.parse_method_gin('prompt_tuning',
                      [f'prompts.PromptConfig.soft_prompt_length = {prefix}'], [], ['gin'])
  pt = gin_configurables.create_model().prompt_config
  assert pt.memory_size == 0 and pt.prefix_length == prefix
  assert gin.query_parameter('configs.OptimizerConfig.trainable') == 'full'
  mv.parse_method_gin('finetune', [], [], ['gin'])
  assert gin_configurables.create_model().prompt_config is None
  for method in ('spt_paper', 'spt_fixed_random'):
    mv.parse_method_gin(method, [], [], ['gin'])
    mv.check_prefix_length(method, prefix)   # raises if the lengths differ
  gin.clear_config()


def test_stage_two_gin_freezes_the_backbone_and_restores_the_orbax_run(mv):
  import gin
  config = mv.resolve_method('spt', 2, initial_checkpoint='/tmp/stage1_run')
  mv.parse_config(config)
  assert gin.query_parameter('configs.OptimizerConfig.trainable') == 'prompts_only'
  assert gin.query_parameter('%INITIAL_CHECKPOINT_FORMAT') == 'orbax'
  assert gin.query_parameter('%INITIAL_CHECKPOINT_PATH') == '/tmp/stage1_run'
  assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == 'spt_sample_heldout_fewshot_train'
  assert gin.query_parameter('configs.OptimizerConfig.learning_rate') == pytest.approx(0.3)
  assert int(gin.query_parameter('%TRANSFER_STEPS')) > 0
  if mv.KEY_INIT_FIELD in mv._prompt_config_fields():   # no step-0 re-init of the keys
    assert gin.query_parameter('prompts.PromptConfig.key_init') == 'values_mean'
  gin.clear_config()


# ------------------------------------------------------------------------------------------
# The CI smoke run.
# ------------------------------------------------------------------------------------------
EXPECTED_FILES = ('accuracy.json', 'accuracy.csv', 'accuracy.md', 'accuracy.png',
                  'accuracy_transfer.png', 'comparisons.json', 'health.json', 'health.csv',
                  'health_over_training.png', 'health_probes.png', 'structure.json',
                  'overlap_heatmap.png', 'resemblance_share.png', 'summary.md', 'runs.json')
HELDOUT = ('sample_super_glue_rte', 'sample_super_glue_copa', 'sample_yelp_polarity')
HELDOUT_DATASETS = ('super_glue/rte', 'super_glue/copa', 'yelp_polarity')   # catalog names
CLUSTERS = {'sentiment', 'topic_classification', 'paraphrase', 'multiple_choice_qa'}
STAGE1 = ('finetune', 'prompt_tuning', 'spt', 'spt_paper', 'spt_fixed_random')
STAGE2 = ('prompt_tuning', 'spt', 'spt_fixed_random')
MEMORY = ('spt', 'spt_paper', 'spt_fixed_random')


def _script_env():
  env = dict(os.environ)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'device_count' not in f)
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
  return env


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quick_run_writes_every_output_and_resumes(tmp_path):
  out = tmp_path / 'mv'
  cmd = [sys.executable, str(SCRIPT), f'--output_dir={out}', '--quick', '--steps=4']
  proc = subprocess.run(cmd, cwd=ROOT, env=_script_env(), capture_output=True, text=True,
                        timeout=1400)
  assert proc.returncode == 0, proc.stderr[-5000:]
  check_outputs(out, final_step=4)
  # A rerun with the same directory trains nothing and re-aggregates the same records.
  before = json.loads((out / 'runs.json').read_text())['runs']
  rerun = subprocess.run(cmd, cwd=ROOT, env=_script_env(), capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-5000:]
  assert '=== ' not in rerun.stderr   # no run started
  after = json.loads((out / 'runs.json').read_text())['runs']
  assert [r['finished_at'] for r in after] == [r['finished_at'] for r in before]
  check_outputs(out, final_step=4)


def check_outputs(out: pathlib.Path, final_step: int) -> None:
  """Every output file of a --quick run (1 seed, 5 + 3 runs) with its expected structure."""
  for name in EXPECTED_FILES:
    assert (out / name).is_file() and (out / name).stat().st_size > 0, name
  for name in EXPECTED_FILES:
    if name.endswith('.png'):
      assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name

  acc = json.loads((out / 'accuracy.json').read_text())
  assert set(acc['stage1']['mean_over_templates']) == set(STAGE1)
  assert set(acc['stage2']['mean_over_templates']) == set(STAGE2)
  for stage in ('stage1', 'stage2'):
    for method, row in acc[stage]['mean_over_templates'].items():
      assert set(row) == set(HELDOUT_DATASETS) | {'average'}, method
      for stat in row.values():
        assert stat['n'] == 1 and 0.0 <= stat['mean'] <= 100.0   # percent
  with (out / 'accuracy.csv').open() as f:
    rows = list(csv.DictReader(f))
  # (mean, median) x (5 + 3 methods) x (3 datasets + average)
  assert len(rows) == 2 * (len(STAGE1) + len(STAGE2)) * 4

  runs = json.loads((out / 'runs.json').read_text())
  assert runs['config']['spt_prefix_length'] == 40
  assert runs['config']['complete']
  assert len(runs['config']['planned_runs']) == len(STAGE1) + len(STAGE2)
  assert [(r['stage'], r['method']) for r in runs['runs']] == (
      [(1, m) for m in STAGE1] + [(2, m) for m in STAGE2])
  for r in runs['runs']:
    steps = final_step if r['stage'] == 1 else runs['config']['transfer_steps']
    assert r['final_step'] == steps, r['name']
    run_dir = out / 'runs' / r['name']
    assert (run_dir / 'metrics.jsonl').is_file() and (run_dir / 'record.json').is_file()
    assert (run_dir / 'eval' / f'step_{steps}' / 'results.json').is_file()
    assert r['wall_seconds'] > 0
    if r['stage'] == 2:
      assert any(b.startswith('INITIAL_CHECKPOINT_PATH') for b in r['bindings'])
      config_gin = (run_dir / 'config.gin').read_text()
      assert "'prompts_only'" in config_gin and "'orbax'" in config_gin

  health = json.loads((out / 'health.json').read_text())
  steps = sorted({row['step'] for row in health['probe']})
  assert steps == [1, final_step]
  assert {row['method'] for row in health['probe']} <= set(MEMORY)
  for row in health['probe']:
    assert row['memory_size'] == 1024
    for k in ('train_entropy_ratio', 'heldout_entropy_ratio'):
      assert 0.0 < row[k] <= 1.0
    for k in ('train_unused_fraction', 'heldout_unused_fraction'):
      assert 0.0 <= row[k] < 1.0
      assert 0.0 <= row[k.replace('_unused', '_uniform_unused')] < 1.0
  curves = health['training_curves']
  assert set(curves['1']) == set(MEMORY) and set(curves['2']) == {'spt', 'spt_fixed_random'}
  never = curves['1']['spt']['cumulative_never_used_fraction']
  assert never['steps'][-1] == final_step and all(0.0 <= v <= 1.0 for v in never['mean'])
  assert health['training_batches']['spt_seed0'][-1]['step'] == final_step
  assert any(k.endswith('retrieval_entropy_ratio') for k in health['eval']['spt_seed0'])

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
  change = structure['spt']['change']
  assert change['first_step'] == 1 and change['last_step'] == final_step
  assert set(change['datasets']) == set(HELDOUT)

  diffs = json.loads((out / 'comparisons.json').read_text())
  assert 'spt - prompt_tuning' in diffs['stage1'] and 'spt - prompt_tuning' in diffs['stage2']
  assert 'spt - spt_fixed_random' in diffs['stage2']

  summary = (out / 'summary.md').read_text()
  assert f'{len(STAGE1) + len(STAGE2)} of {len(STAGE1) + len(STAGE2)} runs complete' in summary
  for heading in ('Verdicts', 'Stage 1: zero-shot', 'Stage 2: held-out accuracy',
                  'Retrieval health over training', 'Retrieval health (spt',
                  'Is the structure learned? (spt', 'Retrieval structure', 'Runs'):
    assert heading in summary, heading
  assert 'spt − spt_fixed_random' in summary
