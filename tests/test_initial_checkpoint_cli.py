"""Pretrained starts through the command lines, against artifacts other tools wrote.

`python -m spt_jax.train` with INITIAL_CHECKPOINT_FORMAT 'hf' (a directory written by
transformers' `save_pretrained`) and 't5x' (the shared legacy T5X fixture), then
`python -m spt_jax.evaluate` on the run, and the evaluator directly on the HF directory.

What is checked, and how:
* The step-0 state of the run (`configs.SaveCheckpointConfig.save_initial = True`) holds the
  backbone exactly as the checkpoint has it. The expected arrays are read here independently of
  spt_jax.checkpoints: the HF weights with `safetensors.numpy` and a name map written out in
  this file; the T5X ones with `flax.serialization.msgpack_restore` + tensorstore, opening the
  zarr folders by the names the fixture's README gives them.
* The prompt parameters (soft prompt, memory bank) are in the run but not in the checkpoint,
  and were re-sampled from the IMPORTED embedding: every prompt / memory row is a row of the
  checkpoint's embedding table, memory keys are the mean of their value rows.
* The tasks speak the checkpoint's vocabulary: the sample mixtures are re-registered with the
  real T5 SentencePiece model through gin/runs/sample_vocabulary.gin (vocab_size 32128).
* The errors a user meets on this path name the problem and the fix.

The subprocesses run on one CPU device (XLA_FLAGS) so that the tiny batches need no
data-parallel divisibility; CLI tests are marked slow and need the shared fixtures (the T5
vocabulary is one of them), so they skip outside CI and fail in CI when it lacks them.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault('USE_TF', '0')  # transformers: do not import TensorFlow models

import numpy as np
import pytest

from spt_jax import checkpoints
from spt_jax import cli
from spt_jax import configs
from spt_jax import network
from spt_jax import runner

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)

# A small T5.1.1 (gated-GELU, untied lm_head) with T5's real vocabulary size.
HF_MODEL = dict(vocab_size=32128, d_model=8, d_kv=4, num_heads=2, d_ff=16, num_layers=1,
                num_decoder_layers=1, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                relative_attention_num_buckets=8, relative_attention_max_distance=16)
HF_GIN = {'vocab_size': 32128, 'emb_dim': 8, 'num_heads': 2, 'head_dim': 4, 'mlp_dim': 16,
          'num_encoder_layers': 1, 'num_decoder_layers': 1,
          'relative_attention_num_buckets': 8, 'relative_attention_max_distance': 16}
# The T5X fixture's model (../shared/fixtures/README.md).
T5X_GIN = {'vocab_size': 32128, 'emb_dim': 4, 'num_heads': 2, 'head_dim': 2, 'mlp_dim': 8,
           'num_encoder_layers': 2, 'num_decoder_layers': 2,
           'relative_attention_num_buckets': 4, 'relative_attention_max_distance': 8}
# Short sequences and batches: the point is the start, not the learning.
LENGTHS = {'inputs': 64, 'targets': 16}
EVAL_MIXTURE = 'spt_sample_super_glue_rte_score_eval'
PROMPT_PARAMS = ('encoder/soft_prompt/prompt', 'encoder/memory_bank/values',
                 'encoder/memory_bank/keys')
INIT_VOCAB_SIZE = 5000  # prompts.PromptConfig.init_vocab_size: rows sampled from [0, 5000)


# ------------------------------------------------------------------------------------------
# Fixtures and helpers.
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def t5_vocab(shared_fixtures):
  path = shared_fixtures / 't5_vocab' / 'sentencepiece.model'
  if not path.is_file():
    pytest.fail(f'{path} missing from the shared fixtures (see their README).')
  return path


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  """A directory written by transformers' own `save_pretrained` (random weights)."""
  transformers = pytest.importorskip('transformers')
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  config = transformers.T5Config(decoder_start_token_id=0, dropout_rate=0.0, **HF_MODEL)
  path = tmp_path_factory.mktemp('hf_t5')
  transformers.T5ForConditionalGeneration(config).save_pretrained(path)
  assert (path / 'model.safetensors').is_file()
  return path


def _model_bindings(fields):
  return [f'--gin.network.T5Config.{k}={v!r}' for k, v in fields.items()]


def _vocab_bindings(t5_vocab):
  return ['--gin_file=runs/sample_vocabulary.gin',
          f"--gin.SAMPLE_SENTENCEPIECE_MODEL='{t5_vocab}'"]


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _cli(module, args, expect_ok=True, timeout=600):
  """Runs `python -m <module> args` from the project root; returns (completed, seconds)."""
  start = time.time()
  out = subprocess.run([sys.executable, '-m', module, '--gin_search_paths=gin', *args],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
  seconds = time.time() - start
  print(f'{module}: {seconds:.0f} s')  # shown with -s / on failure: CI keeps an eye on these
  if expect_ok:
    assert out.returncode == 0, out.stderr[-4000:]
  return out, seconds


def _train(model_dir, start_path, start_format, model_fields, t5_vocab, *extra):
  return _cli('spt_jax.train', [
      '--gin_file=methods/spt.gin', '--gin_file=runs/local.gin', *_vocab_bindings(t5_vocab),
      *_model_bindings(model_fields),
      f"--gin.INITIAL_CHECKPOINT_PATH='{start_path}'",
      f"--gin.INITIAL_CHECKPOINT_FORMAT='{start_format}'",
      f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=4',
      f'--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}',
      '--gin.configs.SaveCheckpointConfig.save_initial=True',
      '--gin.train.log_every_steps=1', *extra])


def _evaluate(checkpoint_path, checkpoint_format, model_fields, t5_vocab, *extra):
  return _cli('spt_jax.evaluate', [
      '--gin_file=methods/spt.gin', '--gin_file=runs/local.gin', '--gin_file=runs/eval.gin',
      *_vocab_bindings(t5_vocab), *_model_bindings(model_fields),
      f"--gin.eval/sample.with_vocabulary.name='{EVAL_MIXTURE}'",
      f"--gin.CHECKPOINT_PATH='{checkpoint_path}'",
      f"--gin.CHECKPOINT_FORMAT='{checkpoint_format}'",
      '--gin.EVAL_NUM_EXAMPLES=4', '--gin.EVAL_BATCH_SIZE=8',
      f'--gin.EVAL_TASK_FEATURE_LENGTHS={LENGTHS!r}', *extra])


def _run_params(model_dir, step):
  return checkpoints.flatten(checkpoints.load_orbax_params(
      pathlib.Path(model_dir) / 'checkpoints' / str(step)))


def _hf_expected(hf_dir):
  """The backbone in T5X names, read with safetensors and a name map written out here."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  tensors = load_file(str(hf_dir / 'model.safetensors'))
  attn = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'out'}
  names = {'shared.weight': ('token_embedder/embedding', False),
           'lm_head.weight': ('decoder/logits_dense/kernel', True),
           'encoder.final_layer_norm.weight': ('encoder/encoder_norm/scale', False),
           'decoder.final_layer_norm.weight': ('decoder/decoder_norm/scale', False)}
  for stack in ('encoder', 'decoder'):
    names[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = (
        f'{stack}/relpos_bias/rel_embedding', True)
  enc, dec = 'encoder.block.0.layer', 'decoder.block.0.layer'
  names[f'{enc}.0.layer_norm.weight'] = ('encoder/layers_0/pre_attention_layer_norm/scale', False)
  names[f'{enc}.1.layer_norm.weight'] = ('encoder/layers_0/pre_mlp_layer_norm/scale', False)
  names[f'{dec}.0.layer_norm.weight'] = (
      'decoder/layers_0/pre_self_attention_layer_norm/scale', False)
  names[f'{dec}.1.layer_norm.weight'] = (
      'decoder/layers_0/pre_cross_attention_layer_norm/scale', False)
  names[f'{dec}.2.layer_norm.weight'] = ('decoder/layers_0/pre_mlp_layer_norm/scale', False)
  for hf, ours in attn.items():
    names[f'{enc}.0.SelfAttention.{hf}.weight'] = (f'encoder/layers_0/attention/{ours}/kernel',
                                                   True)
    names[f'{dec}.0.SelfAttention.{hf}.weight'] = (
        f'decoder/layers_0/self_attention/{ours}/kernel', True)
    names[f'{dec}.1.EncDecAttention.{hf}.weight'] = (
        f'decoder/layers_0/encoder_decoder_attention/{ours}/kernel', True)
  for w in ('wi_0', 'wi_1', 'wo'):
    names[f'{enc}.1.DenseReluDense.{w}.weight'] = (f'encoder/layers_0/mlp/{w}/kernel', True)
    names[f'{dec}.2.DenseReluDense.{w}.weight'] = (f'decoder/layers_0/mlp/{w}/kernel', True)
  # Every saved tensor is accounted for (embed_tokens: tied copies of shared.weight).
  extra = set(tensors) - set(names) - {'encoder.embed_tokens.weight',
                                       'decoder.embed_tokens.weight'}
  assert not extra, extra
  return {ours: (tensors[hf].T if transpose else tensors[hf])
          for hf, (ours, transpose) in names.items()}


def _t5x_expected(t5x_dir):
  """The fixture's parameters via msgpack + tensorstore, opening the zarr folders by name."""
  import flax  # pylint: disable=g-import-not-at-top
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  state = flax.serialization.msgpack_restore((t5x_dir / 'checkpoint').read_bytes())
  assert state['version'] == 3
  target = state['optimizer']['target']

  def leaves(node, path):
    if isinstance(node, dict) and 'driver' in node and 'kvstore' in node:
      folder = 'target.' + '.'.join(path)  # README: sibling folders named by dotted path
      assert node['kvstore']['path'].rstrip('/').endswith(folder), node['kvstore']
      store = ts.open({'driver': node['driver'],
                       'kvstore': {'driver': 'file', 'path': str(t5x_dir / folder)}},
                      open=True).result()
      yield '/'.join(path), np.asarray(store.read().result())
    elif isinstance(node, dict):
      for k, v in node.items():
        yield from leaves(v, path + (k,))
    else:
      yield '/'.join(path), np.asarray(node)

  return dict(leaves(target, ()))


def _assert_step0_is_the_checkpoint(model_dir, expected):
  """Backbone bit-identical to `expected`; prompts fresh and drawn from its embedding."""
  step0 = _run_params(model_dir, 0)
  backbone = {k: v for k, v in step0.items() if k not in PROMPT_PARAMS}
  assert set(backbone) == set(expected)
  for name, value in expected.items():
    assert backbone[name].dtype == np.float32, name
    np.testing.assert_array_equal(backbone[name], value.astype(np.float32), err_msg=name)
  assert set(PROMPT_PARAMS) <= set(step0) and not set(PROMPT_PARAMS) & set(expected)
  table = expected['token_embedder/embedding'][:INIT_VOCAB_SIZE]
  rows = {r.tobytes(): i for i, r in enumerate(np.ascontiguousarray(table, np.float32))}
  assert len(rows) == len(table)  # random tables: a row identifies its token

  def row_ids(array):
    flat = np.ascontiguousarray(array, np.float32).reshape(-1, table.shape[1])
    missing = [i for i, r in enumerate(flat) if r.tobytes() not in rows]
    assert not missing, f'{len(missing)} prompt rows are not rows of the imported embedding'
    return [rows[r.tobytes()] for r in flat]

  prompt_ids = row_ids(step0['encoder/soft_prompt/prompt'])
  value_ids = row_ids(step0['encoder/memory_bank/values'])
  assert len(set(prompt_ids)) > 1 and len(set(value_ids)) > 1  # sampled, not one row repeated
  np.testing.assert_allclose(step0['encoder/memory_bank/keys'],
                             step0['encoder/memory_bank/values'].mean(axis=1), rtol=1e-6)
  return step0


def _assert_trained_and_evaluated(model_dir, step0, eval_out):
  steps = [json.loads(l) for l in (pathlib.Path(model_dir) / 'metrics.jsonl').open()]
  losses = {r['step']: r['loss'] for r in steps if 'loss' in r}
  assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))
  assert sorted(os.listdir(pathlib.Path(model_dir) / 'checkpoints')) == ['0', '2']
  step2 = _run_params(model_dir, 2)
  assert any(not np.array_equal(step2[k], step0[k]) for k in step0)  # 2 steps did train
  results = json.loads((pathlib.Path(model_dir) / 'eval' / 'step_2' / 'results.json')
                       .read_text())
  assert results['step'] == 2 and set(results['datasets']) == {'super_glue/rte'}
  assert 0.0 <= results['overall']['median'] <= 100.0
  assert 'Eval step 2 on spt_sample_super_glue_rte_score_eval' in eval_out.stderr


# ------------------------------------------------------------------------------------------
# The command lines.
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_from_hf_then_evaluate_cli(tmp_path, hf_dir, t5_vocab):
  model_dir = tmp_path / 'run'
  out, _ = _train(model_dir, hf_dir, 'hf', HF_GIN, t5_vocab)
  assert 'Sample tasks re-registered with vocabulary' in out.stderr
  assert f'Initialised from {hf_dir} (hf)' in out.stderr
  step0 = _assert_step0_is_the_checkpoint(model_dir, _hf_expected(hf_dir))
  # The operative config records the vocabulary the run used.
  assert str(t5_vocab) in (model_dir / 'config.gin').read_text()
  eval_out, _ = _evaluate(model_dir, 'orbax', HF_GIN, t5_vocab)
  _assert_trained_and_evaluated(model_dir, step0, eval_out)


@pytest.mark.slow
def test_train_from_t5x_fixture_then_evaluate_cli(tmp_path, t5x_dir, t5_vocab):
  model_dir = tmp_path / 'run'
  out, _ = _train(model_dir, t5x_dir, 't5x', T5X_GIN, t5_vocab)
  assert f'Initialised from {t5x_dir} (t5x)' in out.stderr
  expected = _t5x_expected(t5x_dir)
  # A second path to the same arrays: our own legacy-T5X reader agrees with the one above.
  ours = checkpoints.flatten(checkpoints.load_t5x(t5x_dir))
  assert set(ours) == set(expected)
  for name in expected:
    np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)
  step0 = _assert_step0_is_the_checkpoint(model_dir, expected)
  eval_out, _ = _evaluate(model_dir, 'orbax', T5X_GIN, t5_vocab)
  _assert_trained_and_evaluated(model_dir, step0, eval_out)


@pytest.mark.slow
def test_evaluate_cli_directly_on_hf_dir(tmp_path, hf_dir, t5_vocab):
  out_dir = tmp_path / 'eval'
  out, _ = _evaluate(hf_dir, 'hf', HF_GIN, t5_vocab, f"--gin.EVAL_OUTPUT_DIR='{out_dir}'")
  results = json.loads((out_dir / 'results.json').read_text())
  assert set(results['datasets']) == {'super_glue/rte'}
  assert results['step'] == 0  # the folder name states no step
  assert 0.0 <= results['overall']['median'] <= 100.0
  assert (out_dir / 'results.md').is_file() and (out_dir / 'config.gin').is_file()
  assert 'Parameters not in' in out.stderr  # prompts initialised, backbone imported


@pytest.mark.slow
def test_train_cli_refuses_t5_vocabulary_with_the_tiny_model(tmp_path, hf_dir, t5_vocab):
  """Forgetting the checkpoint's model config: the task vocabulary outgrows the model."""
  out, seconds = _cli('spt_jax.train', [
      '--gin_file=methods/spt.gin', '--gin_file=runs/local.gin', *_vocab_bindings(t5_vocab),
      f"--gin.INITIAL_CHECKPOINT_PATH='{hf_dir}'", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      '--gin.TRAIN_STEPS=2'], expect_ok=False)
  assert out.returncode != 0
  assert ("'targets' feature has 32100 ids but the model has vocab_size=1152" in out.stderr
          or "'inputs' feature has 32100 ids but the model has vocab_size=1152" in out.stderr)
  assert 'network.T5Config.vocab_size to at least 32100' in out.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not os.listdir(
      tmp_path / 'run' / 'checkpoints')


# ------------------------------------------------------------------------------------------
# Errors on this path (in process, fast).
# ------------------------------------------------------------------------------------------
def test_wrong_format_name_is_named_before_any_work(tmp_path, hf_dir):
  from spt_jax import train  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"INITIAL_CHECKPOINT_FORMAT='huggingface' is not one of "
                     r"\('hf', 't5x', 'orbax'\): 'hf': a transformers T5 folder"):
    train.train(model_dir=str(tmp_path / 'run'),
                dataset_cfg=configs.DatasetConfig('no_such_task', task_feature_lengths=LENGTHS,
                                                  batch_size=1),
                train_steps=1,
                initial_checkpoint_cfg=configs.RestoreCheckpointConfig(str(hf_dir),
                                                                       format='huggingface'))
  assert not (tmp_path / 'run').exists()  # failed before creating anything
  with pytest.raises(ValueError, match=r"CHECKPOINT_FORMAT='huggingface' is not one of"):
    checkpoints.check_checkpoint(str(hf_dir), 'huggingface', path_macro='CHECKPOINT_PATH',
                                 format_macro='CHECKPOINT_FORMAT', scratch_hint=False)


def test_resumed_run_does_not_need_its_initial_checkpoint(tmp_path):
  """A run that resumes ignores INITIAL_CHECKPOINT_PATH, so a vanished one is no error."""
  from spt_jax import train  # pylint: disable=g-import-not-at-top
  (tmp_path / 'run' / 'checkpoints' / '5').mkdir(parents=True)
  # Past the start checks: the next one (the task name) is what fails.
  with pytest.raises(ValueError, match="Unknown task or mixture 'no_such_task'"):
    train.train(model_dir=str(tmp_path / 'run'),
                dataset_cfg=configs.DatasetConfig('no_such_task', task_feature_lengths=LENGTHS,
                                                  batch_size=1),
                train_steps=1,
                initial_checkpoint_cfg=configs.RestoreCheckpointConfig(str(tmp_path / 'gone'),
                                                                       format='hf'))


def test_format_that_does_not_match_the_directory_is_named(hf_dir, t5x_dir):
  with pytest.raises(ValueError, match=r"holds a 'hf' checkpoint \(it has config.json\) but "
                     r"INITIAL_CHECKPOINT_FORMAT='t5x': set --gin.INITIAL_CHECKPOINT_FORMAT="
                     r"\"'hf'\""):
    checkpoints.check_checkpoint(str(hf_dir), 't5x')
  with pytest.raises(ValueError, match=r"holds a 't5x' checkpoint .* but "
                     r"INITIAL_CHECKPOINT_FORMAT='hf'"):
    checkpoints.check_checkpoint(str(t5x_dir), 'hf')
  # The evaluator's default is 'orbax': an HF folder passed without CHECKPOINT_FORMAT.
  with pytest.raises(ValueError, match=r"CHECKPOINT_FORMAT='orbax': set "
                     r"--gin.CHECKPOINT_FORMAT=\"'hf'\""):
    checkpoints.check_checkpoint(str(hf_dir), 'orbax', path_macro='CHECKPOINT_PATH',
                                 format_macro='CHECKPOINT_FORMAT', scratch_hint=False)
  assert checkpoints.detect_format(t5x_dir / 'checkpoint') == 't5x'
  checkpoints.check_checkpoint(str(hf_dir), 'hf')
  checkpoints.check_checkpoint(str(t5x_dir), 't5x')


def test_missing_initial_checkpoint_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"INITIAL_CHECKPOINT_PATH='.*nowhere' does not "
                     r"exist.*INITIAL_CHECKPOINT_PATH = None to train from scratch"):
    checkpoints.check_checkpoint(str(tmp_path / 'nowhere'), 'hf')


def _setup(**fields):
  config = network.T5Config(**{**T5X_GIN, **fields})
  model = runner.create_model(config)
  return runner.ModelSetup.create(model, LENGTHS)


def test_vocab_size_mismatch_with_hf_checkpoint_names_the_binding(hf_dir):
  import jax  # pylint: disable=g-import-not-at-top
  setup = _setup(**{**HF_GIN, 'vocab_size': 1152})
  params = setup.init_params(jax.random.PRNGKey(0))
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'vocab_size: model has 1152, .*config.json has 32128 -> '
                     r'network.T5Config.vocab_size = 32128'):
    checkpoints.restore(setup, str(hf_dir), 'hf', params=params, rng=jax.random.PRNGKey(1))


def test_vocab_size_mismatch_with_t5x_checkpoint_names_the_binding(t5x_dir):
  import jax  # pylint: disable=g-import-not-at-top
  setup = _setup(vocab_size=1152)
  params = setup.init_params(jax.random.PRNGKey(0))
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'(?s)token_embedder/embedding: expected shape \(1152, 4\), found '
                     r'shape \(32128, 4\).*network.T5Config.vocab_size = 32128'):
    checkpoints.restore(setup, str(t5x_dir), 't5x', params=params, rng=jax.random.PRNGKey(1))


def test_task_vocabulary_larger_than_the_model_is_refused(t5_vocab):
  import seqio  # pylint: disable=g-import-not-at-top
  name = 'initial_checkpoint_cli_t5_vocab_task'
  vocab = seqio.SentencePieceVocabulary(str(t5_vocab), extra_ids=100)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(lambda split, shuffle_files: None,
                                            splits=('train',)),
      preprocessors=[], output_features={'inputs': seqio.Feature(vocab),
                                         'targets': seqio.Feature(vocab)})
  try:
    with pytest.raises(ValueError, match=r"MIXTURE_OR_TASK_NAME='initial_checkpoint_cli_t5_"
                       r"vocab_task': the vocabulary of its 'inputs' feature has 32100 ids but "
                       r'the model has vocab_size=1152.*network.T5Config.vocab_size to at '
                       r'least 32100'):
      runner.check_vocabulary(name, 1152)
    runner.check_vocabulary(name, 32128)  # T5's padded size is fine
  finally:
    seqio.TaskRegistry.remove(name)


def test_sample_vocabulary_errors():
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match=r"SentencePiece model '/nowhere/spiece.model' "
                     r'not found .*SAMPLE_SENTENCEPIECE_MODEL'):
    sample.with_vocabulary('spt_sample_train', '/nowhere/spiece.model')
  with pytest.raises(ValueError, match=r"name='glue_mrpc' is not a sample task or mixture"):
    sample.with_vocabulary('glue_mrpc', '/nowhere/spiece.model')
  assert sample.current_vocabulary() == sample.SAMPLE_VOCABULARY  # nothing re-registered
  # The shipped vocabulary again: a no-op that returns the name.
  assert sample.with_vocabulary('spt_sample_train') == 'spt_sample_train'


def test_sample_vocabulary_gin_file_binds_both_entry_points(t5_vocab):
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    cli.parse_gin(['methods/spt.gin', 'runs/local.gin', 'runs/eval.gin',
                      'runs/sample_vocabulary.gin'],
                  [f"SAMPLE_SENTENCEPIECE_MODEL = '{t5_vocab}'"], finalize=False)
    assert gin.query_parameter('%SAMPLE_SENTENCEPIECE_MODEL') == str(t5_vocab)
    assert gin.query_parameter('%MIXTURE_OR_TASK_NAME').selector == 'sample.with_vocabulary'
    assert gin.query_parameter('%EVAL_MIXTURE').scoped_selector == (
        'eval/sample.with_vocabulary')
    assert gin.query_parameter('eval/sample.with_vocabulary.name') == (
        'spt_sample_heldout_score_eval')
  finally:
    gin.clear_config()


# ------------------------------------------------------------------------------------------
# conftest: the shared fixtures are required in CI.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('ci, rc, says', [('true', 1, 'CI is set, so this is an error'),
                                          ('', 0, '1 skipped')])
def test_shared_fixtures_fail_in_ci_and_skip_elsewhere(tmp_path, ci, rc, says):
  (tmp_path / 'test_uses_fixtures.py').write_text(
      'def test_it(shared_fixtures):\n  assert shared_fixtures.is_dir()\n')
  (tmp_path / 'pytest.ini').write_text('[pytest]\n')
  env = dict(os.environ, CI=ci, SPT_SHARED_FIXTURES=str(tmp_path / 'absent'),
             PYTHONPATH=str(ROOT / 'tests'))
  out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'conftest',
                        '-p', 'no:cacheprovider', 'test_uses_fixtures.py'], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == rc, out.stdout + out.stderr
  assert says in out.stdout, out.stdout
  assert 'shared fixtures not found at' in out.stdout
