"""Our trainer equals T5X's trainer, step for step (issue 16, item 3).

T5X is the outside reference. For each case a tiny T5.1.1 (+ SPT) model is initialised by
T5X (`t5x.utils.TrainStateInitializer.from_scratch`, the train state `t5x.train` starts
from) and trained 20 steps by T5X's real trainer (`t5x.trainer.Trainer.train`: its
`train_with_lr` step, `t5x.models.EncoderDecoderModel.loss_fn`, `t5x.adafactor.Adafactor`
as gin/t5x/spt_model.gin configures it) on batches from T5X's input pipeline
(`t5x.utils.get_dataset`). T5X writes that initial state as its checkpoint 0 (T5X's own
`OrbaxCheckpointManagerInterface`, the `checkpoint_0/state` layout `t5x.train` writes), and
`spt_jax.train.train` starts from it with `initial_checkpoint_format='t5x'`
(`spt_jax.checkpoints.load_t5x`; the soft prompt, memory values and memory keys in it are
kept, not redrawn or re-initialised from data). Ours then runs `train.train` itself (its seqio
pipeline, mesh, shardings and the jitted `make_train_step` it uses every step) with T5X's
conventions selected: `adafactor_kwargs={'multiply_by_parameter_scale': True,
'factor_rules': 't5x'}` and, where a warm-up is used, `create_schedule(warmup_offset=0.0,
min_learning_rate=1e-8)`.

Compared: every step's training loss (relative difference <= 1e-4) and every final
parameter (max abs difference <= 1e-4). Cases: SPT as gin/methods/spt_paper.gin (soft prompt
+ memory bank, our reading of the paper; spt.gin's balance loss, k-means key init and
dead-slot restarts need our trainer and are not part of it) with smaller sizes; plain
fine-tuning (no prompts) with T5X's default warm-up + rsqrt schedule; SPT with the memory
bank split over the `model` mesh axis (conftest gives every test 8 CPU devices: mesh
data 4 x model 2) and 2 microbatches per step (both trainers sum the microbatch gradients
of the summed loss; T5X slices microbatches contiguously, we take every 2nd row so each
data shard keeps its rows: the same sum). Dropout 0, float32, no packing, unshuffled task.

Needs t5x (launch/setup.sh --t5x). Without it the tests skip on a developer machine and
FAIL when the environment variable CI is set (as the `shared_fixtures` fixture).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
import pytest

from spt_jax import configs
from spt_jax import models as models_lib
from spt_jax import network
from spt_jax import optim
from spt_jax import prompts
from spt_jax import train as train_lib

STEPS = 20
BATCH_SIZE = 8
FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}
Z_LOSS = 1e-4
LOSS_RTOL = 1e-4
PARAM_ATOL = 1e-4
T5X_AXIS_RULES = [('prompt', None), ('memory', 'model'), ('memory_length', None)]

CONFIG = network.T5Config(
    vocab_size=1152, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=2,
    num_decoder_layers=2, mlp_activations=('gelu', 'linear'), dropout_rate=0.0,
    dtype='float32')
# gin/methods/spt_paper.gin with smaller sizes.
SPT_PAPER = prompts.PromptConfig(
    soft_prompt_length=4, soft_prompt_init='sampled_vocab', memory_size=32, memory_length=2,
    top_k=2, pooling='mean', similarity='cosine', weighting='softmax', temperature=0.1,
    key_loss_weight=0.0, query_stop_gradient=True, memory_init='sampled_vocab',
    init_vocab_size=1000)

CASES = {
    # name: (prompt config, num_partitions, T5X schedule factors, base rate, warm-up steps,
    #        num_microbatches)
    'spt': (SPT_PAPER, 1, 'constant', 1e-3, 0, 1),
    'finetune': (None, 1, 'constant * linear_warmup * rsqrt_decay', 0.05, 10, 1),
    # Memory bank over `model` (mesh data 4 x model 2) and 2 microbatches per step (they
    # need 2 rows per data shard), in one case to keep the file fast.
    'spt_memory_sharded': (SPT_PAPER, 2, 'constant', 1e-3, 0, 2),
}


def _ci() -> bool:
  return os.environ.get('CI', '').strip().lower() not in ('', '0', 'false', 'no')


@pytest.fixture(scope='module')
def t5x():
  """The t5x modules; a missing t5x skips here and fails under CI."""
  try:
    from t5x import adafactor, checkpoints, models, partitioning, trainer, utils  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    message = (f't5x is not installed ({e}); install it with `bash launch/setup.sh --t5x` '
               '(wheels in ../shared/wheels)')
    if _ci():
      pytest.fail(f'{message} (CI is set, so this is an error, not a skip)', pytrace=False)
    pytest.skip(message)
  return {'adafactor': adafactor, 'checkpoints': checkpoints, 'models': models,
          'partitioning': partitioning, 'trainer': trainer, 'utils': utils}


@pytest.fixture(scope='module')
def task():
  import seqio  # pylint: disable=g-import-not-at-top
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  name = sample.TRAIN_TASKS[0]
  assert seqio.get_mixture_or_task(name).output_features['inputs'].vocabulary.vocab_size <= (
      CONFIG.vocab_size)
  return name


def _t5x_factor_rules(adafactor):
  """gin/t5x/spt_model.gin's `adafactor.Adafactor.logical_factor_rules`, parsed from the file
  (so the test follows that config, not a copy of it)."""
  import gin  # pylint: disable=g-import-not-at-top
  from gin import config_parser  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(__file__), '..', 'gin', 't5x', 'spt_model.gin')
  rules = None
  with open(path) as f:
    parser = config_parser.ConfigParser(f, gin.config.ParserDelegate(skip_unknown=True))
    for statement in parser:
      if (isinstance(statement, config_parser.BindingStatement)
          and statement.selector == 'adafactor.Adafactor'):
        if statement.arg_name == 'logical_factor_rules':
          rules = statement.value
        elif statement.arg_name == 'decay_rate':
          assert statement.value == 0.8
        elif statement.arg_name == 'step_offset':
          assert statement.value == 0
  assert rules, f'no adafactor.Adafactor.logical_factor_rules in {path}'
  return {k: adafactor.factor_name_to_factordim(v) for k, v in rules.items()}


def _run_t5x(t5x, tmp_path, task_name, prompt_config, num_partitions, factors, base_lr,
             warmup, num_microbatches=1):
  """T5X's init (saved as its checkpoint 0) + `Trainer.train`, one step per call.

  Returns:
    (checkpoint_0 directory, init params, batches, losses, final params).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  from spt_jax import t5x_adapter  # pylint: disable=g-import-not-at-top
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  utils, partitioning = t5x['utils'], t5x['partitioning']
  optimizer = t5x['adafactor'].Adafactor(
      decay_rate=0.8, step_offset=0, logical_factor_rules=_t5x_factor_rules(t5x['adafactor']))
  model = t5x['models'].EncoderDecoderModel(
      module=t5x_adapter.SptT5XTransformer(config=CONFIG, prompt_config=prompt_config),
      input_vocabulary=sample.SAMPLE_VOCABULARY, output_vocabulary=sample.SAMPLE_VOCABULARY,
      optimizer_def=optimizer, z_loss=Z_LOSS, label_smoothing=0.0,
      loss_normalizing_factor=None)
  from spt_jax import partitioning as spt_partitioning  # pylint: disable=g-import-not-at-top

  class Partitioner(partitioning.PjitPartitioner):
    """T5X's partitioner on a (data, model) mesh of num_partitions: on CPU T5X's
    `default_mesh` ignores num_partitions (all devices on `model`); TPU / GPU meshes honour
    it. The devices are laid out as spt_jax's `create_mesh` lays them."""

    @property
    def mesh(self):
      return jax.sharding.Mesh(
          spt_partitioning.create_mesh(num_partitions=num_partitions).devices,
          ('data', 'model'))

  partitioner = Partitioner(
      num_partitions=num_partitions,
      logical_axis_rules=partitioning.standard_logical_axis_rules(
          additional_rules=T5X_AXIS_RULES))
  ds_config = utils.DatasetConfig(
      mixture_or_task_name=task_name, task_feature_lengths=FEATURE_LENGTHS, split='train',
      batch_size=BATCH_SIZE, shuffle=False, seed=0, use_cached=True, pack=False)
  ds = utils.get_dataset(ds_config, shard_id=0, num_shards=1,
                         feature_converter_cls=seqio.EncDecFeatureConverter)
  batches = list(ds.take(STEPS).as_numpy_iterator())
  assert len(batches) == STEPS
  shapes = {k: v.shape for k, v in batches[0].items()}
  types = {k: v.dtype for k, v in batches[0].items()}
  initializer = utils.TrainStateInitializer(optimizer, model.get_initial_variables, shapes,
                                            partitioner, types)
  state = initializer.from_scratch(jax.random.PRNGKey(17))
  init_params = jax.tree.map(np.asarray, jax.device_get(dict(state.params)))
  t5x_dir = (tmp_path / 't5x_run').absolute()
  t5x_dir.mkdir()   # as t5x.train does: the manager takes a missing directory for a file's
  manager = t5x['checkpoints'].OrbaxCheckpointManagerInterface(
      str(t5x_dir), state, partitioner)
  manager.save(state)
  manager.close()
  checkpoint_0 = t5x_dir / 'checkpoint_0'
  assert (checkpoint_0 / 'state').is_dir(), sorted(p.name for p in t5x_dir.iterdir())
  trainer = t5x['trainer'].Trainer(
      model, state, partitioner, eval_names=[], summary_dir=None,
      train_state_axes=initializer.train_state_axes, rng=jax.random.PRNGKey(3),
      learning_rate_fn=utils.create_learning_rate_scheduler(
          factors=factors, base_learning_rate=base_lr, warmup_steps=max(warmup, 1)),
      num_microbatches=num_microbatches if num_microbatches > 1 else None)
  it = iter(batches)
  losses = []
  for _ in range(STEPS):  # One step per call: T5X's summary of one step is that step's loss.
    losses.append(float(trainer.train(it, num_steps=1).result()['loss'].value))
  trainer.close()
  params = trainer.train_state.params
  if num_partitions > 1 and prompt_config is not None:
    spec = params['encoder']['memory_bank']['values'].sharding.spec
    assert spec[0] == 'model', spec  # T5X split the bank over `model` too.
  final = jax.tree.map(np.asarray, jax.device_get(dict(params)))
  return checkpoint_0, init_params, batches, losses, final


def _run_ours(tmp_path, task_name, checkpoint_0, prompt_config, num_partitions, factors,
              base_lr, warmup, num_microbatches=1):
  """`spt_jax.train.train` from T5X's checkpoint 0; (losses, final params, result)."""
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  network_cls = network.Transformer(CONFIG, prompts.prompt_prefix(prompt_config))
  model = models_lib.EncoderDecoderModel(network_cls, z_loss=Z_LOSS, label_smoothing=0.0,
                                         loss_normalizing_factor=None)
  if factors == 'constant':
    schedule = optim.create_schedule('constant', base_lr)
  else:
    assert factors == 'constant * linear_warmup * rsqrt_decay'
    schedule = optim.create_schedule('rsqrt', base_lr, warmup_steps=warmup, linear_warmup=True,
                                     warmup_offset=0.0, min_learning_rate=1e-8)
  result = train_lib.train(
      model_dir=str(tmp_path / 'ours'),
      dataset_cfg=configs.DatasetConfig(task_name, task_feature_lengths=FEATURE_LENGTHS,
                                        batch_size=BATCH_SIZE, use_cached=True, pack=False,
                                        shuffle=False, seed=0),
      train_steps=STEPS, model=model,
      optimizer_cfg=configs.OptimizerConfig(
          optimizer='adafactor', learning_rate_schedule=schedule, trainable='full',
          adafactor_kwargs={'multiply_by_parameter_scale': True, 'factor_rules': 't5x'},
          num_microbatches=num_microbatches),
      initial_checkpoint_cfg=configs.RestoreCheckpointConfig(str(checkpoint_0), format='t5x'),
      checkpoint_cfg=configs.SaveCheckpointConfig(every_steps=0, keep=1, async_save=False),
      partitioner=partitioning.Partitioner(num_partitions=num_partitions),
      log_every_steps=STEPS)
  assert result['step'] == STEPS
  losses = [vals['loss'] for _, vals in sorted(result['history'], key=lambda x: x[0])]
  final = jax.tree.map(np.asarray, jax.device_get(result['state'].params))
  return losses, final, result


def _flat(tree):
  return optim.flatten_paths(tree)


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_trainer_matches_t5x_step_for_step(case, t5x, task, tmp_path):
  prompt_config, num_partitions, factors, base_lr, warmup, microbatches = CASES[case]
  t0 = time.time()
  checkpoint_0, init_params, t5x_batches, t5x_losses, t5x_final = _run_t5x(
      t5x, tmp_path, task, prompt_config, num_partitions, factors, base_lr, warmup,
      microbatches)
  t1 = time.time()
  # Our pipeline yields T5X's batches (same task, feature converter, order).
  from spt_jax import partitioning, runner  # pylint: disable=g-import-not-at-top
  ours_data = runner.create_dataset(task, FEATURE_LENGTHS, BATCH_SIZE,
                                    partitioning.create_mesh(num_partitions=num_partitions),
                                    shuffle=False, seed=0, use_cached=True)
  for i, expected in enumerate(t5x_batches):
    got = next(ours_data)
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k], err_msg=f'batch {i} {k}')
  ours_losses, ours_final, result = _run_ours(tmp_path, task, checkpoint_0, prompt_config,
                                              num_partitions, factors, base_lr, warmup,
                                              microbatches)
  t2 = time.time()
  if num_partitions > 1:
    mesh_shape = dict(jax.tree.leaves(result['state'].params)[0].sharding.mesh.shape)
    assert mesh_shape == {'data': 8 // num_partitions, 'model': num_partitions}
    values = result['state'].params['encoder']['memory_bank']['values']
    assert values.sharding.spec[0] == 'model', values.sharding.spec

  t5x_losses, ours_losses = np.asarray(t5x_losses), np.asarray(ours_losses)
  assert len(ours_losses) == STEPS
  rel = np.abs(ours_losses - t5x_losses) / np.abs(t5x_losses)
  flat_t5x, flat_ours, flat_init = _flat(t5x_final), _flat(ours_final), _flat(init_params)
  assert sorted(flat_t5x) == sorted(flat_ours)
  diffs = {k: float(np.max(np.abs(flat_ours[k] - flat_t5x[k]))) for k in flat_t5x}
  moved = {k: float(np.max(np.abs(flat_t5x[k] - flat_init[k]))) for k in flat_t5x}
  worst = max(diffs, key=diffs.get)
  print(f'\n[{case}] T5X {t1 - t0:.1f}s, ours {t2 - t1:.1f}s; losses {t5x_losses[0]:.4f} -> '
        f'{t5x_losses[-1]:.4f}; worst per-step relative loss difference {rel.max():.3e} '
        f'(step {int(rel.argmax())}); worst final param max-abs difference '
        f'{diffs[worst]:.3e} ({worst}); smallest param movement {min(moved.values()):.3e}')
  # The comparison means something: training lowered the loss and moved every parameter by
  # well over the tolerance and by far more than the two trainers differ.
  assert t5x_losses[-1] < 0.9 * t5x_losses[0]
  for k in flat_t5x:
    assert moved[k] > 5 * PARAM_ATOL and moved[k] > 100 * diffs[k], (k, moved[k], diffs[k])
  np.testing.assert_array_less(rel, LOSS_RTOL, err_msg=f'per-step loss: ours {ours_losses} '
                               f'vs T5X {t5x_losses}')
  assert diffs[worst] <= PARAM_ATOL, (worst, diffs[worst])


# ------------------------------------------------------------------------------------------
# The selectable conventions, one by one, against T5X's own functions (fast).
# ------------------------------------------------------------------------------------------
# Shapes / logical axes covering each of T5X's factorisation paths: size heuristic factored
# (both dims >= 128) and not, rank 3 factored by rule whatever its size (SPT memory values),
# a 'batch' (scanned layers) axis, unfactored vectors and relpos tables.
_OPT_PARAMS = {
    'token_embedder/embedding': ((160, 128), ('vocab', 'embed')),
    'encoder/memory_bank/values': ((8, 3, 16), ('memory', 'memory_length', 'embed')),
    'encoder/memory_bank/keys': ((8, 16), ('memory', 'embed')),
    'encoder/soft_prompt/prompt': ((4, 16), ('prompt', 'embed')),
    'encoder/layers/mlp/wi/kernel': ((2, 16, 24), ('layers', 'embed', 'mlp')),
    'encoder/relpos_bias/rel_embedding': ((2, 32), ('heads', 'relpos_buckets')),
    'encoder/encoder_norm/scale': ((16,), ('embed',)),
}


def _nested(flat):
  out = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def _run_adafactors(t5x, ours_kwargs, lr_fn, steps=6):
  """(T5X's Adafactor params, ours) after `steps` updates with the same random gradients."""
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = _nested({k: np.asarray(rng.normal(size=s) * 0.3, np.float32)
                    for k, (s, _) in _OPT_PARAMS.items()})
  grads = [_nested({k: np.asarray(rng.normal(size=s), np.float32)
                    for k, (s, _) in _OPT_PARAMS.items()}) for _ in range(steps)]
  axes = _nested({k: a for k, (_, a) in _OPT_PARAMS.items()})
  adafactor = t5x['adafactor']
  opt = adafactor.Adafactor(decay_rate=0.8, step_offset=0, logical_factor_rules={
      k: adafactor.factor_name_to_factordim(v) for k, v in optim.T5X_LOGICAL_FACTOR_RULES.items()})
  opt.set_param_axes(jax.tree.map(lambda a: jax.sharding.PartitionSpec(*a), axes,
                                  is_leaf=lambda x: isinstance(x, tuple)))
  t5x_params, t5x_state = params, opt.init_state(params)
  for i, g in enumerate(grads):
    hp = opt.hyper_params.replace(learning_rate=lr_fn(i))
    t5x_params, t5x_state = opt.apply_gradient(hp, t5x_params, t5x_state, g)
  tx = optim.adafactor(lr_fn, **ours_kwargs, param_axes=axes, params=params)
  ours, state = params, tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, ours)
    ours = optax.apply_updates(ours, updates)
  return params, _flat(t5x_params), _flat(ours)


def test_adafactor_t5x_conventions_equal_t5x_adafactor(t5x):
  # optim's 't5x' preset is what gin/t5x/spt_model.gin gives T5X.
  adafactor = t5x['adafactor']
  assert {k: adafactor.factor_name_to_factordim(v)
          for k, v in optim.T5X_LOGICAL_FACTOR_RULES.items()} == _t5x_factor_rules(adafactor)
  lr_fn = t5x['utils'].create_learning_rate_scheduler(
      factors='constant * linear_warmup * rsqrt_decay', base_learning_rate=0.1, warmup_steps=3)
  init, ref, ours = _run_adafactors(
      t5x, {'multiply_by_parameter_scale': True, 'factor_rules': 't5x'}, lr_fn)
  init = _flat(init)
  for k in ref:
    moved = np.max(np.abs(ref[k] - init[k]))
    assert moved > 1e-3, k
    np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=1e-6 * max(1.0, moved), err_msg=k)


def test_adafactor_defaults_are_not_t5xs(t5x):
  """Without the T5X settings the updates differ (so the trainer test can fail): no
  parameter scale differs everywhere; the size heuristic alone (parameter scale on) differs
  on the rank-3 memory values and on the scanned-layers kernel."""
  lr_fn = lambda step: 0.01  # noqa: E731
  _, ref, ours = _run_adafactors(t5x, {}, lr_fn)
  assert all(np.max(np.abs(ours[k] - ref[k])) > 1e-4 for k in ref)
  _, ref, ours = _run_adafactors(t5x, {'multiply_by_parameter_scale': True}, lr_fn)
  differ = sorted(k for k in ref if np.max(np.abs(ours[k] - ref[k])) > 1e-5)
  assert differ == ['encoder/layers/mlp/wi/kernel', 'encoder/memory_bank/values'], differ


@pytest.mark.parametrize('factors,name,kwargs', [
    ('constant', 'constant', {}),
    ('constant * linear_warmup', 'constant', {'warmup_steps': 10}),
    ('constant * rsqrt_decay', 'rsqrt', {'warmup_steps': 10}),
    ('constant * linear_warmup * rsqrt_decay', 'rsqrt', {'warmup_steps': 10,
                                                         'linear_warmup': True}),
])
def test_schedules_t5x_conventions_equal_t5x_scheduler(t5x, factors, name, kwargs):
  ref = t5x['utils'].create_learning_rate_scheduler(
      factors=factors, base_learning_rate=0.05, warmup_steps=kwargs.get('warmup_steps', 1))
  ours = optim.create_schedule(name, 0.05, warmup_offset=0.0, min_learning_rate=1e-8, **kwargs)
  steps = np.arange(40)
  np.testing.assert_allclose([float(ours(s)) for s in steps], [float(ref(s)) for s in steps],
                             rtol=1e-6, atol=0)
  if 'linear_warmup' in factors:  # spt_jax's default warm-up counts the current step.
    default = optim.create_schedule(name, 0.05, **kwargs)
    assert float(default(0)) > 0 and abs(float(default(0)) - float(ref(0))) > 1e-4
