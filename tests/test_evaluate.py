"""Tests of spt_jax.evaluate: the seqio Evaluator's score_fn / predict_fn, results, errors.

The unit tests use two tiny `_score_eval` tasks registered here (character vocabulary from
seqio's test utils, the real `score_eval_expand` preprocessor and `rank_classification`
metric) and a tiny SPT model on the 8 fake CPU devices. The end-to-end test (slow) trains the
local SPT run for a few steps with the real trainer on the sample mixture and evaluates it.
"""
import dataclasses
import functools
import json
import pathlib

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from spt_jax import checkpoints
from spt_jax import cli
from spt_jax import configs
from spt_jax import evaluate
from spt_jax import gin_configurables
from spt_jax import metrics
from spt_jax import network
from spt_jax import partitioning
from spt_jax import prompts
from spt_jax import runner
from spt_tasks import preprocessors

VOCAB = seqio.test_utils.sentencepiece_vocab()
TASKS = ('evaltest_alpha_first_score_eval', 'evaltest_alpha_second_score_eval')
MIXTURE = 'evaltest_mixture'
LENGTHS = {'inputs': 24, 'targets': 8}

_EXAMPLES = [
    ('is the sky blue', 'yes', ('yes', 'no')),
    ('is fire cold', 'no', ('yes', 'no')),
    ('pick a fruit', 'apple', ('apple', 'stone', 'wood')),
    ('one plus one', 'two', ('two', 'three')),
    ('the cat says', 'meow', ('meow', 'woof', 'moo')),
    ('water is', 'wet', ('wet', 'dry')),
    ('snow is', 'white', ('black', 'white')),
    ('birds can', 'fly', ('swim', 'fly', 'dig')),
    ('ice is', 'cold', ('hot', 'cold')),
    ('grass is', 'green', ('green', 'red')),
    ('a dog says', 'woof', ('meow', 'woof')),
]


def _dataset_fn(split, shuffle_files, seed=None, *, offset):
  del split, shuffle_files, seed
  rows = _EXAMPLES[offset:] + _EXAMPLES[:offset]
  return tf.data.Dataset.from_generator(
      lambda: ({'inputs': i, 'targets': t, 'answer_choices': list(c)} for i, t, c in rows),
      output_signature={'inputs': tf.TensorSpec([], tf.string),
                        'targets': tf.TensorSpec([], tf.string),
                        'answer_choices': tf.TensorSpec([None], tf.string)})


def _register():
  features = {'inputs': seqio.Feature(VOCAB, add_eos=False),
              'targets': seqio.Feature(VOCAB, add_eos=True)}
  for offset, name in enumerate(TASKS):
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(functools.partial(_dataset_fn, offset=offset * 3),
                                        splits=('validation',)),
        preprocessors=[functools.partial(preprocessors.score_eval_expand, counter_name=name),
                       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features=features,
        postprocess_fn=metrics.rank_classification_postprocessor,
        metric_fns=[metrics.rank_classification])
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.MixtureRegistry.add(MIXTURE, list(TASKS), default_rate=1.0)


_register()


def _model(memory_size=8):
  config = network.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                            num_encoder_layers=1, num_decoder_layers=1)
  prompt_config = prompts.PromptConfig(soft_prompt_length=2, memory_size=memory_size,
                                       memory_length=2, top_k=2, init_vocab_size=32)
  return runner.create_model(config, prompt_config)


@pytest.fixture(scope='module')
def setup_and_params():
  mesh = partitioning.create_mesh(mesh_shape=(4, 2))
  setup = runner.ModelSetup.create(_model(), LENGTHS, mesh=mesh)
  return setup, setup.init_params(jax.random.PRNGKey(3))


def _hand_rank_classification(evaluator, model, params, task):
  """Scores every row with model.score_batch (one batch, no mesh) and ranks by hand."""
  rows = [f for _, f in evaluator.cached_model_datasets[task].as_numpy_iterator()]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  scores = np.asarray(model.score_batch(jax.device_get(params), batch))
  examples = {}
  for row, ex in enumerate(evaluator.cached_task_datasets[task].as_numpy_iterator()):
    example, choice = (int(i) for i in ex['idx'])
    examples.setdefault(example, []).append((choice, scores[row], bool(ex['is_correct'])))
  correct = 0
  for choices in examples.values():
    choices.sort()
    best = max(range(len(choices)), key=lambda j: (choices[j][1], -j))
    correct += choices[best][2]
  return 100.0 * correct / len(examples), scores, len(examples)


@pytest.mark.slow  # compiles the tiny model (> 20 s on the shared 2-core machine)
def test_score_fn_through_seqio_matches_hand_rank_classification(setup_and_params, tmp_path):
  setup, params = setup_and_params
  # batch 8 with 3 rows per task left over: the last batch is padded.
  ev = evaluate.Evaluation(setup,
                           configs.DatasetConfig(MIXTURE, batch_size=8, split='validation',
                                                 seed=42),
                           output_dir=str(tmp_path), per_step_subdir=True)
  # The batches take the distinct-inputs path (two choices a row pair; 4 = B/2 inputs).
  assert ev._distinct_input_sizes == (4,)
  first = next(evaluate.batches_from_enumerated(ev.evaluator.cached_model_datasets[TASKS[0]],
                                                8))[1]
  assert evaluate.distinct_inputs(first['encoder_input_tokens'], (4,)) is not None
  flat = ev.run(params, step=7)
  assert ev.task_feature_lengths == LENGTHS
  for task in TASKS:
    expected, scores, n_examples = _hand_rank_classification(ev.evaluator, setup.model,
                                                             params, task)
    assert flat[f'{task}/accuracy'] == pytest.approx(expected, abs=1e-9)
    got = dict(ev.score_fn(ev.evaluator.cached_model_datasets[task], params))
    np.testing.assert_allclose([got[i] for i in range(len(scores))], scores, rtol=1e-5,
                               atol=1e-5)
    # Retrieval was recorded once per example (not per answer choice), k slots each.
    assert ev._retrieval[task].shape == (n_examples, 2)
    assert ev._retrieval[task].min() >= 0 and ev._retrieval[task].max() < 8
  out = tmp_path / 'step_7'
  for name in ('results.json', 'results.csv', 'results.md', 'accuracy_per_dataset.png',
               'memory_slot_usage.png'):
    assert (out / name).is_file(), name
  results = json.loads((out / 'results.json').read_text())
  assert results['step'] == 7 and results['mixture_or_task_name'] == MIXTURE
  assert sorted(t['task'] for t in results['templates']) == sorted(TASKS)
  assert set(results['retrieval']) == set(results['datasets'])
  assert flat['overall/mean'] == pytest.approx(
      np.mean([flat[f'{t}/accuracy'] for t in TASKS]))


def test_distinct_inputs_index_back_to_the_batch():
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, 50, size=(5, 6))
  rows = np.repeat(inputs, [3, 1, 2, 1, 1], axis=0)    # answer choices share an input
  rows = rows[rng.permutation(len(rows))]
  for sizes, expected in (((2, 4), None), ((4, 8), 8), ((8, 16), 8)):
    got = evaluate.distinct_inputs(rows, sizes)
    if expected is None:
      assert got is None
      continue
    unique, index = got
    assert unique.shape == (expected, 6) and index.dtype == np.int32
    np.testing.assert_array_equal(unique[index], rows)
    assert len(np.unique(unique, axis=0)) == 5         # padding repeats a real input
  assert evaluate.distinct_inputs(rows, ()) is None


def test_batches_pad_last_batch_with_real_rows():
  ds = tf.data.Dataset.from_tensor_slices(
      {'encoder_input_tokens': np.arange(1, 11, dtype=np.int32).reshape(5, 2)}).enumerate()
  out = list(evaluate.batches_from_enumerated(ds, 4))
  assert [n for _, _, n in out] == [4, 1]
  idx, feats, _ = out[1]
  assert idx.tolist() == [4]
  np.testing.assert_array_equal(feats['encoder_input_tokens'], [[9, 10]] * 4)


@pytest.mark.slow  # compiles the tiny model (> 20 s on the shared 2-core machine)
def test_predict_fn_returns_token_ids_per_row(setup_and_params):
  setup, params = setup_and_params
  ev = evaluate.Evaluation(setup,
                           configs.DatasetConfig(TASKS[0], batch_size=8, split='validation',
                                                 seed=42))
  ds = ev.evaluator.cached_model_datasets[TASKS[0]]
  got = ev.predict_fn(ds, params)
  n = sum(1 for _ in ds)
  assert sorted(i for i, _ in got) == list(range(n))
  assert all(len(t) == LENGTHS['targets'] for _, t in got)
  # Same as greedy decoding by hand on the first rows.
  rows = [f for _, f in ds.take(8).as_numpy_iterator()]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  tokens = np.asarray(setup.model.predict_batch(jax.device_get(params), batch))
  np.testing.assert_array_equal(tokens, np.asarray([t for _, t in sorted(got)[:8]]))


def test_unknown_mixture_error_names_close_matches(tmp_path):
  ckpt = tmp_path / 'ckpt'
  ckpt.mkdir()
  with pytest.raises(ValueError, match=r"Unknown task or mixture 'evaltest_mixtur'.*"
                                       r"evaltest_mixture"):
    evaluate.evaluate(dataset_cfg=configs.DatasetConfig('evaltest_mixtur', split='validation',
                                                        batch_size=32, seed=42),
                      checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(ckpt)),
                      model=_model())


def test_missing_checkpoint_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='CHECKPOINT_PATH=.*does not exist'):
    evaluate.evaluate(dataset_cfg=configs.DatasetConfig(MIXTURE, split='validation',
                                                        batch_size=32, seed=42),
                      checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(tmp_path / 'nope')),
                      model=_model())
  with pytest.raises(ValueError, match="CHECKPOINT_FORMAT='pt'"):
    evaluate.evaluate(dataset_cfg=configs.DatasetConfig(MIXTURE, split='validation',
                                                        batch_size=32, seed=42),
                      checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(tmp_path),
                                                                     format='pt'),
                      model=_model())


def test_run_dir_without_checkpoints_error(tmp_path, setup_and_params):
  setup, _ = setup_and_params
  (tmp_path / 'checkpoints').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no step directory'):
    checkpoints.restore(setup, str(tmp_path))


@pytest.mark.slow  # compiles the tiny model (> 20 s on the shared 2-core machine)
def test_orbax_step_dir_round_trip(tmp_path, setup_and_params):
  """A params tree saved by orbax (a step directory) evaluates like the original params."""
  import orbax.checkpoint as ocp
  setup, params = setup_and_params
  path = tmp_path / 'checkpoints' / '12'
  ocp.PyTreeCheckpointer().save(path, {'params': jax.device_get(params)})
  restored = checkpoints.restore(setup, str(path))
  assert restored.step == 12
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params),
               jax.device_get(params))
  result = evaluate.evaluate(dataset_cfg=configs.DatasetConfig(TASKS[0], batch_size=8,
                                                              task_feature_lengths=LENGTHS,
                                                              split='validation', seed=42),
                             checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(path)),
                             partitioner=partitioning.Partitioner(mesh=setup.mesh),
                             model=setup.model)
  assert result['step'] == 12
  assert result['output_dir'] == str(tmp_path / 'eval' / 'step_12')
  assert (tmp_path / 'eval' / 'step_12' / 'results.md').is_file()


# ------------------------------------------------------------------------------------------
# End to end: train the local SPT run for a few steps, evaluate, compare.
# ------------------------------------------------------------------------------------------
def _sample_or_skip():
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  if not sample.VOCAB_MODEL.is_file():
    pytest.skip(f'sample vocabulary {sample.VOCAB_MODEL} not generated yet '
                '(python -m spt_tasks.sample --write_vocab)')
  return sample


def _sample_model(sample, memory_size):
  vocab = int(sample.SAMPLE_VOCABULARY.vocab_size)
  config = network.T5Config(vocab_size=-(-vocab // 64) * 64, emb_dim=32, num_heads=2,
                            head_dim=16, mlp_dim=64, num_encoder_layers=1,
                            num_decoder_layers=1)
  prompt_config = prompts.PromptConfig(soft_prompt_length=4, memory_size=memory_size,
                                       memory_length=2, top_k=2, init_vocab_size=vocab)
  return runner.create_model(config, prompt_config)


@pytest.mark.slow
def test_end_to_end_train_evaluate_compare(tmp_path):
  """Local SPT run (trainer, tiny model, sample mixture) → periodic + standalone eval → compare.

  The trainer's eval hook evaluates the final step into `<run>/eval/step_3`; `evaluate`
  then restores the saved checkpoint and must reproduce those numbers exactly (same data,
  same parameters) in its own directory; `compare` tables the two directories.
  """
  sample = _sample_or_skip()
  from spt_jax import compare  # pylint: disable=g-import-not-at-top
  from spt_jax import train  # pylint: disable=g-import-not-at-top
  lengths = dict(sample.FEATURE_LENGTHS)
  model_dir = tmp_path / 'spt'
  model = _sample_model(sample, memory_size=16)
  eval_data = configs.DatasetConfig(sample.HELDOUT_SCORE_EVAL_MIXTURE, batch_size=16,
                                    num_examples=6, split='validation', seed=42)
  hook = evaluate.eval_hook_factory(eval_data, model_dir=str(model_dir))
  result = train.train(
      model_dir=str(model_dir),
      dataset_cfg=configs.DatasetConfig(sample.TRAIN_MIXTURE, task_feature_lengths=lengths,
                                        batch_size=8),
      train_steps=3, model=model,
      optimizer_cfg=configs.OptimizerConfig(trainable='prompts_only'),
      checkpoint_cfg=configs.SaveCheckpointConfig(every_steps=3, async_save=False),
      log_every_steps=1, eval_hook_factory=hook)
  assert result['step'] == 3
  hook_dir = model_dir / 'eval' / 'step_3'
  logged = [json.loads(l) for l in (model_dir / 'metrics.jsonl').read_text().splitlines()]
  assert any('eval/overall/median' in r for r in logged)

  out = evaluate.evaluate(
      dataset_cfg=dataclasses.replace(eval_data, task_feature_lengths=lengths),
      checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(model_dir)), model=model,
      output_dir=str(tmp_path / 'standalone'))
  assert out['step'] == 3
  eval_dir = pathlib.Path(out['output_dir'])
  results = json.loads((eval_dir / 'results.json').read_text())
  from_hook = json.loads((hook_dir / 'results.json').read_text())
  assert results['datasets'] == from_hook['datasets']
  assert results['retrieval'] == from_hook['retrieval']

  heldout = {d.dataset + (f'/{d.subset}' if d.subset else '')
             for d in sample.DATASETS if d.heldout}
  assert set(results['datasets']) == heldout
  for d in results['datasets'].values():
    assert d['n_templates'] >= 1 and 0.0 <= d['min'] <= d['median'] <= d['max'] <= 100.0
  assert set(results['clusters']) == {d.cluster for d in sample.DATASETS if d.heldout}
  assert set(results['retrieval']) == heldout
  md = (eval_dir / 'results.md').read_text()
  assert '| Cluster | Dataset | Median | Mean | Min | Max | n |' in md
  assert all(f'| {d} |' in md for d in heldout)
  csv_levels = {line.split(',')[0] for line in
                (eval_dir / 'results.csv').read_text().splitlines()[1:]}
  assert csv_levels == {'template', 'dataset', 'cluster', 'overall'}
  assert (eval_dir / 'accuracy_per_dataset.png').stat().st_size > 1000
  assert (eval_dir / 'memory_slot_usage.png').stat().st_size > 1000

  cmp_dir = tmp_path / 'comparison'
  assert compare.main([str(model_dir), str(eval_dir), '--output_dir', str(cmp_dir),
                       '--names', 'periodic,standalone']) == 0
  table = (cmp_dir / 'comparison.md').read_text()
  assert 'periodic' in table and 'standalone' in table
  assert all(d in table for d in heldout)
  assert (cmp_dir / 'comparison.csv').is_file() and (cmp_dir / 'comparison.png').is_file()

def test_eval_gin_binds_the_entry_point():
  """runs/eval.gin after the training gin files parses and binds evaluate.evaluate."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    cli.parse_gin(['methods/spt.gin', 'runs/local.gin', 'runs/eval.gin'],
                  ["CHECKPOINT_PATH = '/tmp/run'",
                      "EVAL_MIXTURE = 'spt_sample_heldout_score_eval'",
                      'EVAL_BATCH_SIZE = 16'], ['gin'], finalize=False)
    assert gin.query_parameter('evaluate/configs.RestoreCheckpointConfig.path') is not None
    # The model comes from the training gin files (SPT prompt config included).
    assert gin.query_parameter('evaluate.evaluate.model').selector == 'runner.create_model'
    assert gin.query_parameter('runner.create_model.prompt_config') is not None
    assert gin.query_parameter('%EVAL_MIXTURE') == 'spt_sample_heldout_score_eval'
    assert gin.query_parameter('%EVAL_BATCH_SIZE') == 16
    assert gin.query_parameter('%CHECKPOINT_FORMAT') == 'orbax'
    cli.parse_gin(['runs/infer.gin'], ["OUTPUT_FILE = '/tmp/p.jsonl'"], ['gin'],
                  finalize=False)
    assert gin.query_parameter('%DECODING') == 'greedy'
    assert gin.query_parameter('infer.infer.model').selector == 'runner.create_model'
  finally:
    gin.clear_config()


def test_periodic_eval_gin_wires_the_trainer_hook(tmp_path):
  """runs/periodic_eval.gin binds train.eval_hook_factory to an Evaluation factory."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    cli.parse_gin(['methods/spt.gin', 'runs/local.gin', 'runs/periodic_eval.gin'],
                  [f"MODEL_DIR = '{tmp_path}'", 'EVAL_EVERY_STEPS = 7',
                      f"EVAL_MIXTURE = '{MIXTURE}'"], ['gin'], finalize=False)
    assert gin.query_parameter('%EVAL_EVERY_STEPS') == 7
    assert gin.query_parameter('train.eval_hook_factory') is not None
    with gin.config_scope(None):
      factory = gin_configurables.eval_hook_factory()
    assert callable(factory)
    assert gin.query_parameter('%EVAL_BATCH_SIZE') == 32
  finally:
    gin.clear_config()
