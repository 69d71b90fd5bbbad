"""Tests of the trainer (spt_jax.train, runner, train_state): end to end on CPU.

In-process tests use a tiny SPT model on a copy task (tests/train_testlib.py); tests that
need a real process boundary (the README command line) run subprocesses and are marked slow.
SIGKILL and SIGTERM of the training CLI are in tests/test_fault_tolerance.py.
"""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_testlib as tl
from spt_jax import checkpoints
from spt_jax import cli
from spt_jax import optim
from spt_jax import partitioning
from spt_jax import runner
from spt_jax import train
from spt_jax import train_state as ts
from spt_jax import train_summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope='module')
def _task():
  tl.register_task()


def _one_device():
  return partitioning.create_mesh(devices=jax.devices()[:1])


def _losses(result):
  return {s: m['loss'] for s, m in result['history']}


def _final_params(model_dir, step):
  return checkpoints.load_orbax_params(os.path.join(model_dir, 'checkpoints', str(step)))


def _assert_trees_close(a, b, atol):
  fa, fb = optim.flatten_paths(a), optim.flatten_paths(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_allclose(np.asarray(fa[k]), np.asarray(fb[k]), atol=atol, rtol=0, err_msg=k)


# ------------------------------------------------------------------------------------------
def test_end_to_end_loss_falls_writes_and_resumes(tmp_path):
  model_dir = str(tmp_path / 'run')
  kw = tl.reference_kwargs(model_dir, 30, dropout_rate=0.0)
  kw.update(save_every_steps=10, log_every_steps=10)
  seen = []

  def eval_hook_factory(setup):
    assert isinstance(setup, runner.ModelSetup)

    def evaluate(params, step):
      seen.append(step)
      return {'param_norm': float(optim.global_norm(params))}
    return evaluate

  result = tl.run_train(mesh=_one_device(), eval_hook_factory=eval_hook_factory,
                       eval_every_steps=15, **kw)
  assert seen == [15, 30]
  losses = _losses(result)
  assert sorted(losses) == list(range(1, 31))
  assert np.mean([losses[s] for s in range(26, 31)]) < 0.5 * np.mean(
      [losses[s] for s in range(1, 6)])
  assert sorted(os.listdir(os.path.join(model_dir, 'checkpoints'))) == ['10', '20', '30']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(model_dir))
  records = tl.read_metrics(model_dir)
  assert sorted(records) == list(range(1, 31))
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    evals = [json.loads(line) for line in f if 'eval/param_norm' in line]
  assert [r['step'] for r in evals] == [15, 30]
  for key in ('loss', 'token_accuracy', 'learning_rate', 'grad_norm',
              'retrieval/normalized_entropy', 'retrieval/never_used_fraction'):
    assert key in records[30], key
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    perf = [json.loads(line) for line in f if 'perf/tokens_per_sec' in line]
  assert perf and all(r['perf/tokens_per_sec'] > 0 and 'perf/mfu' in r for r in perf)
  # A second invocation with more steps resumes from step 30.
  kw.update(train_steps=35)
  again = tl.run_train(mesh=_one_device(), **kw)
  assert [s for s, _ in again['history']] == [31, 32, 33, 34, 35]
  # Nothing to do once TRAIN_STEPS is reached.
  done = tl.run_train(mesh=_one_device(), **kw)
  assert done['step'] == 35 and not done['history']


def test_mesh_equivalence(tmp_path):
  """20 steps, dropout off, float32: 1 device == (4 data x 2 model) == (2 x 4)."""
  runs = {}
  for name, mesh in (('1', _one_device()),
                     ('4x2', partitioning.create_mesh(mesh_shape=(4, 2))),
                     ('2x4', partitioning.create_mesh(mesh_shape=(2, 4)))):
    kw = tl.reference_kwargs(str(tmp_path / name), 20, dropout_rate=0.0)
    kw.update(save_every_steps=0, log_every_steps=20)
    runs[name] = tl.run_train(mesh=mesh, **kw)
  ref = _losses(runs['1'])
  for name in ('4x2', '2x4'):
    got = _losses(runs[name])
    for s in range(1, 21):
      assert got[s] == pytest.approx(ref[s], rel=1e-5, abs=1e-5), (name, s)
    per_tok = {s: m['cross_ent_loss_per_token'] for s, m in runs[name]['history']}
    ref_tok = {s: m['cross_ent_loss_per_token'] for s, m in runs['1']['history']}
    for s in range(1, 21):
      assert abs(per_tok[s] - ref_tok[s]) < 1e-5, (name, s)


class _Crash(Exception):
  pass


def test_exact_resume_after_crash_in_process(tmp_path):
  """A crash (no clean-up save) after step 12, restart to 20 == uninterrupted, with dropout."""
  a = tl.run_train(mesh=_one_device(), **tl.reference_kwargs(str(tmp_path / 'a'), 20))

  def crash(step, state):
    del state
    if step == 12:
      raise _Crash()

  b_dir = str(tmp_path / 'b')
  with pytest.raises(_Crash):
    tl.run_train(mesh=_one_device(), hooks=[crash], **tl.reference_kwargs(b_dir, 20))
  assert ts.Checkpointer(b_dir).latest_step() == 10
  b = tl.run_train(mesh=_one_device(), **tl.reference_kwargs(b_dir, 20))
  assert [s for s, _ in b['history']] == list(range(11, 21))
  la, lb = _losses(a), _losses(b)
  for s in range(13, 21):
    assert la[s] == lb[s], s
  _assert_trees_close(jax.device_get(a['state'].params), jax.device_get(b['state'].params), 1e-6)


def test_sigterm_in_process_saves_current_step_and_resumes(tmp_path):
  model_dir = str(tmp_path / 'run')

  def preempt(step, state):
    del state
    if step == 7:
      os.kill(os.getpid(), signal.SIGTERM)

  r = tl.run_train(mesh=_one_device(), hooks=[preempt], **tl.reference_kwargs(model_dir, 12))
  assert r['preempted'] and r['step'] == 7
  assert ts.Checkpointer(model_dir).latest_step() == 7
  assert signal.getsignal(signal.SIGTERM) is not None  # handler restored
  again = tl.run_train(mesh=_one_device(), **tl.reference_kwargs(model_dir, 12))
  assert [s for s, _ in again['history']] == [8, 9, 10, 11, 12]


def test_microbatching_matches_full_batch(tmp_path):
  out = {}
  for n in (1, 2):
    kw = tl.reference_kwargs(str(tmp_path / f'mb{n}'), 3, dropout_rate=0.0)
    kw.update(save_every_steps=0, num_microbatches=n)
    out[n] = tl.run_train(mesh=partitioning.create_mesh(mesh_shape=(2, 1),
                                                       devices=jax.devices()[:2]), **kw)
  for s in (1, 2, 3):
    assert _losses(out[2])[s] == pytest.approx(_losses(out[1])[s], rel=1e-5)
  _assert_trees_close(jax.device_get(out[1]['state'].params),
                      jax.device_get(out[2]['state'].params), 1e-5)
  with pytest.raises(ValueError, match='num_microbatches=3 must divide'):
    tl.run_train(mesh=_one_device(), **dict(tl.reference_kwargs(str(tmp_path / 'x'), 1),
                                           num_microbatches=3))


def test_initial_checkpoint_orbax_partial_restore(tmp_path):
  """A plain-T5 run initialises an SPT run: backbone copied, prompts / memory fresh."""
  src = str(tmp_path / 'src')
  kw = tl.reference_kwargs(src, 2, dropout_rate=0.0)
  kw['model'] = tl.tiny_model(prompt_config=None)
  tl.run_train(mesh=_one_device(), **kw)
  backbone = _final_params(src, 2)
  dst = str(tmp_path / 'dst')
  kw = tl.reference_kwargs(dst, 1, dropout_rate=0.0)
  kw.update(initial_checkpoint_path=src, initial_checkpoint_format='orbax',
            learning_rate=0.0)
  r = tl.run_train(mesh=_one_device(), **kw)
  got = jax.device_get(r['state'].params)
  np.testing.assert_array_equal(got['decoder']['logits_dense']['kernel'],
                                backbone['decoder']['logits_dense']['kernel'])
  assert 'memory_bank' in got['encoder'] and 'memory_bank' not in backbone['encoder']


def test_memory_keys_from_an_initial_checkpoint_are_kept_and_drawn_only_when_absent(tmp_path):
  """Data-driven key init (kmeans) runs for a checkpoint without memory keys (plain T5) and
  never overwrites trained keys a checkpoint holds, whatever its format (here 't5x', as a
  T5X run of this network writes them)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  kmeans = dataclasses.replace(tl.SPT, key_init='kmeans', key_init_batches=1)
  # An SPT run whose keys are trained (2 steps at a high rate), written as a legacy T5X
  # checkpoint (the layout of ../shared/fixtures' T5X checkpoint: msgpack, inline arrays).
  src = str(tmp_path / 'src')
  kw = tl.reference_kwargs(src, 2, dropout_rate=0.0)
  kw['model'] = tl.tiny_model(prompt_config=kmeans)
  tl.run_train(mesh=_one_device(), **kw)
  trained = _final_params(src, 2)
  t5x_dir = tmp_path / 't5x' / 'checkpoint_2'
  t5x_dir.mkdir(parents=True)
  state = {'version': 3, 'optimizer': {'target': jax.tree.map(np.asarray, trained),
                                       'state': {'step': np.int64(2)}}}
  (t5x_dir / 'checkpoint').write_bytes(flax.serialization.msgpack_serialize(state))
  drawn = []

  def run(name, path, fmt):
    kw = tl.reference_kwargs(str(tmp_path / name), 1, dropout_rate=0.0)
    kw.update(model=tl.tiny_model(prompt_config=kmeans), initial_checkpoint_path=path,
              initial_checkpoint_format=fmt, learning_rate=0.0)
    original = train._init_keys_from_data  # pylint: disable=protected-access

    def spy(*args, **kwargs):
      drawn.append(name)
      return original(*args, **kwargs)

    train._init_keys_from_data = spy  # pylint: disable=protected-access
    try:
      return jax.device_get(tl.run_train(mesh=_one_device(), **kw)['state'].params)
    finally:
      train._init_keys_from_data = original  # pylint: disable=protected-access

  got = run('from_t5x', str(t5x_dir), 't5x')
  assert drawn == []
  for name in ('keys', 'values'):
    np.testing.assert_array_equal(got['encoder']['memory_bank'][name],
                                  trained['encoder']['memory_bank'][name])
  np.testing.assert_array_equal(got['encoder']['soft_prompt']['prompt'],
                                trained['encoder']['soft_prompt']['prompt'])
  # A plain-T5 start has no memory bank: its keys are drawn from data.
  plain = str(tmp_path / 'plain')
  kw = tl.reference_kwargs(plain, 1, dropout_rate=0.0)
  kw['model'] = tl.tiny_model(prompt_config=None)
  tl.run_train(mesh=_one_device(), **kw)
  run('from_plain', plain, 'orbax')
  assert drawn == ['from_plain']


def test_bad_inputs(tmp_path):
  kw = tl.reference_kwargs(str(tmp_path / 'bad'), 3, dropout_rate=0.0)
  # Unknown task: the closest registered names are listed.
  with pytest.raises(ValueError, match="closest registered names: \\['spt_trainer_test_copy'"):
    tl.run_train(mesh=_one_device(), **dict(kw, mixture_or_task_name='spt_trainer_test_cpy'))
  # Batch size not divisible by the data-parallel size.
  with pytest.raises(ValueError, match='BATCH_SIZE=6 is not divisible by the data-parallel size 4'):
    tl.run_train(mesh=partitioning.create_mesh(mesh_shape=(4, 2)), **dict(kw, batch_size=6))
  # Missing initial checkpoint.
  with pytest.raises(FileNotFoundError, match='INITIAL_CHECKPOINT_PATH'):
    tl.run_train(mesh=_one_device(), **dict(kw, initial_checkpoint_path=str(tmp_path / 'nope'),
                                           initial_checkpoint_format='orbax'))
  # Initial checkpoint with mismatched shapes: the parameter is named.
  src = str(tmp_path / 'wide')
  tl.run_train(mesh=_one_device(), **dict(tl.reference_kwargs(src, 1), model=tl.tiny_model(
      mlp_dim=96)))
  with pytest.raises(checkpoints.CheckpointMismatchError, match='wi_0/kernel'):
    tl.run_train(mesh=_one_device(), **dict(kw, model_dir=str(tmp_path / 'b2'),
                                           initial_checkpoint_path=src,
                                           initial_checkpoint_format='orbax'))
  # MODEL_DIR not writable (a path below a regular file).
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(PermissionError, match='MODEL_DIR=.*not writable'):
    tl.run_train(mesh=_one_device(), **dict(kw, model_dir=str(blocker / 'run')))
  # Packing with prompts.
  with pytest.raises(ValueError, match='pack=True cannot be used'):
    tl.run_train(mesh=_one_device(), **dict(kw, model_dir=str(tmp_path / 'p'), pack=True))
  # Unknown gin binding.
  import gin  # pylint: disable=g-import-not-at-top
  with gin.unlock_config():
    gin.clear_config()
  with pytest.raises(ValueError, match='batch_sise'):
    cli.parse_gin(gin_bindings=['train.batch_sise = 3'], finalize=False)
  with gin.unlock_config():
    gin.clear_config()


def test_nan_loss_stops_naming_step_and_keeps_good_checkpoint(tmp_path):
  model_dir = str(tmp_path / 'nan')
  kw = tl.reference_kwargs(model_dir, 12, dropout_rate=0.0)
  kw['learning_rate_schedule'] = lambda step: np.float32(1e-2) * (
      1.0 + jax.numpy.where(step >= 6, jax.numpy.nan, 0.0))
  with pytest.raises(train.NonFiniteLossError, match='parameter update .* at step 7;.*last good checkpoint \\(step 5\\)'):
    tl.run_train(mesh=_one_device(), **kw)
  assert ts.Checkpointer(model_dir).all_steps() == [5]
  params = _final_params(model_dir, 5)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_gin_configs_parse_and_bind_trainer():
  import gin  # pylint: disable=g-import-not-at-top
  from spt_jax import gin_configurables  # pylint: disable=g-import-not-at-top
  for method, prompt_len, trainable in (('spt', 20, 'full'), ('prompt_tuning', 100,
                                                               'prompts_only'),
                                        ('finetune', None, 'full')):
    with gin.unlock_config():
      gin.clear_config()
    cli.parse_gin([f'methods/{method}.gin', 'runs/local.gin'],
                  ["MODEL_DIR = '/tmp/unused'"], ['gin'], finalize=False)
    assert gin.query_parameter('configs.OptimizerConfig.trainable') == trainable
    assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == 'spt_sample_train_premixed'
    model = gin_configurables.create_model()
    assert model.network.config.emb_dim == 64 and model.network.config.num_encoder_layers == 2
    pc = model.prompt_config
    assert (pc.soft_prompt_length if pc else None) == prompt_len
  for size, d in (('small', 512), ('base', 768), ('large', 1024), ('xl', 2048), ('xxl', 4096)):
    with gin.unlock_config():
      gin.clear_config()
    cli.parse_gin([f'models/t5_1_1_{size}.gin'], [], ['gin'], finalize=False)
    assert gin_configurables.create_model().network.config.emb_dim == d
  with gin.unlock_config():
    gin.clear_config()


def test_rewrite_gin_args_and_flops():
  assert cli.rewrite_gin_args(['x', "--gin.MODEL_DIR='/a=b'", '--gin_file=f']) == [
      'x', "--gin_bindings=MODEL_DIR = '/a=b'", '--gin_file=f']
  model = tl.tiny_model(prompt_config=None)
  setup = runner.ModelSetup.create(model, tl.FEATURE_LENGTHS, mesh=_one_device())
  flops = train_summaries.model_flops_per_step(model, setup.abstract_params, 8, 16, 8)
  kernels = sum(int(np.prod(v.shape)) for k, v in optim.flatten_paths(
      setup.abstract_params).items() if k.endswith('kernel'))
  # Between 6 * N * tokens(min length) and 6 * N * tokens(max length) plus attention.
  assert 6 * kernels * 8 * 8 < flops < 6 * kernels * 8 * 16 * 2


# ------------------------------------------------------------------------------------------
# Subprocess tests.
# ------------------------------------------------------------------------------------------
def _env(**extra):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([ROOT, os.path.join(ROOT, 'tests'),
                                       env.get('PYTHONPATH', '')])
  env.update(extra)
  return env


def _testlib_cmd(model_dir, steps, *extra):
  return [sys.executable, os.path.join(ROOT, 'tests', 'train_testlib.py'), model_dir,
          str(steps), *extra]


@pytest.mark.slow
def test_readme_local_spt_run_command_line(tmp_path):
  """The README's command (methods/spt.gin + runs/local.gin), shortened to 20 steps."""
  model_dir = str(tmp_path / 'local')
  cmd = [sys.executable, '-m', 'spt_jax.train', '--gin_search_paths=gin',
         '--gin_file=methods/spt.gin', '--gin_file=runs/local.gin',
         f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=20',
         '--gin.train.log_every_steps=5', '--gin.configs.SaveCheckpointConfig.every_steps=10']
  out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1500)
  assert out.returncode == 0, out.stderr[-3000:]
  records = tl.read_metrics(model_dir)
  assert sorted(records) == list(range(1, 21))
  first = np.mean([records[s]['cross_ent_loss_per_token'] for s in range(1, 6)])
  last = np.mean([records[s]['cross_ent_loss_per_token'] for s in range(16, 21)])
  assert last < first
  assert sorted(os.listdir(os.path.join(model_dir, 'checkpoints'))) == ['10', '20']
  assert os.path.exists(os.path.join(model_dir, 'config.gin'))
  assert 'step 20/20' in out.stderr


# ------------------------------------------------------------------------------------------
# Memory health: restart state in the train state, data-driven keys, cumulative metrics.
_HEALTHY = dict(balance_loss_weight=0.01, restart_every_steps=3, usage_ema_decay=0.5,
                restart_threshold=0.9, key_init='kmeans', key_init_batches=2,
                query_buffer_size=8)


def _healthy_kwargs(model_dir, steps, dropout_rate=0.1, **prompt_overrides):
  import dataclasses  # pylint: disable=g-import-not-at-top
  pc = dataclasses.replace(tl.SPT, **{**_HEALTHY, **prompt_overrides})
  kw = tl.reference_kwargs(model_dir, steps, dropout_rate)
  kw['model'] = tl.tiny_model(prompt_config=pc, dropout_rate=dropout_rate)
  return kw


def test_memory_health_metrics_and_restart_state(tmp_path):
  model_dir = str(tmp_path / 'run')
  result = tl.run_train(mesh=_one_device(), **_healthy_kwargs(model_dir, 6))
  records = tl.read_metrics(model_dir)
  for key in ('retrieval/cumulative_never_used_fraction',
              'retrieval/cumulative_normalized_entropy', 'retrieval/balance_loss',
              'retrieval/restarted_slots', 'retrieval/restarts_total', 'balance_loss'):
    assert key in records[6], key
  assert records[1]['retrieval/restarted_slots'] == 0
  restarted = [records[s]['retrieval/restarted_slots'] for s in (3, 6)]
  assert sum(restarted) > 0
  assert records[6]['retrieval/restarts_total'] == sum(restarted)
  assert records[6]['retrieval/balance_loss'] > 0
  assert 0 <= records[6]['retrieval/cumulative_never_used_fraction'] <= 1
  stats = result['state'].model_state['memory_stats']['encoder']['memory_bank']
  assert stats['ema_usage'].shape == (16,) and int(stats['buffer_count']) == 6 * 8
  assert int(stats['restarts_total']) == sum(restarted)


def test_exact_resume_with_memory_restart_state(tmp_path):
  """Crash after step 7 (checkpoint at 5), resume to 11 == uninterrupted, restarts on."""
  a = tl.run_train(mesh=_one_device(), **_healthy_kwargs(str(tmp_path / 'a'), 11))

  def crash(step, state):
    del state
    if step == 7:
      raise _Crash()

  b_dir = str(tmp_path / 'b')
  with pytest.raises(_Crash):
    tl.run_train(mesh=_one_device(), hooks=[crash], **_healthy_kwargs(b_dir, 11))
  b = tl.run_train(mesh=_one_device(), **_healthy_kwargs(b_dir, 11))
  assert [s for s, _ in b['history']] == list(range(6, 12))
  la, lb = _losses(a), _losses(b)
  for s in range(6, 12):
    assert la[s] == lb[s], s
  assert ts.tree_equal(jax.device_get(a['state'].params), jax.device_get(b['state'].params))
  assert ts.tree_equal(jax.device_get(a['state'].model_state),
                       jax.device_get(b['state'].model_state))
  ra, rb = tl.read_metrics(str(tmp_path / 'a')), tl.read_metrics(b_dir)
  for key in ('retrieval/restarted_slots', 'retrieval/restarts_total',
              'retrieval/cumulative_never_used_fraction',
              'retrieval/cumulative_normalized_entropy'):
    assert [ra[s][key] for s in (6, 9, 11)] == [rb[s][key] for s in (6, 9, 11)], key


def test_memory_usage_composes_with_microbatching(tmp_path):
  """Usage stats of a step cover all its microbatches: 2 microbatches == 1 batch."""
  out = {}
  for n in (1, 2):
    # The balance loss is not additive over microbatches (a product of batch means): off.
    kw = _healthy_kwargs(str(tmp_path / f'mb{n}'), 3, dropout_rate=0.0, key_init='queries',
                         balance_loss_weight=0.)
    kw.update(save_every_steps=0, num_microbatches=n)
    out[n] = tl.run_train(mesh=partitioning.create_mesh(mesh_shape=(2, 1),
                                                       devices=jax.devices()[:2]), **kw)
  sa = jax.device_get(out[1]['state'].model_state)['memory_stats']['encoder']['memory_bank']
  sb = jax.device_get(out[2]['state'].model_state)['memory_stats']['encoder']['memory_bank']
  np.testing.assert_allclose(sa['ema_usage'], sb['ema_usage'], atol=1e-6)
  assert int(sa['buffer_count']) == int(sb['buffer_count']) == 3 * 8
  assert int(sa['restarts_total']) == int(sb['restarts_total'])
  for s in (1, 2, 3):
    assert _losses(out[2])[s] == pytest.approx(_losses(out[1])[s], rel=1e-5)
