"""Tests of spt_jax.optim: schedules, Adafactor as T5, trainable masks, frozen params."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import train_testlib as tl
from spt_jax import optim
from spt_jax import partitioning
from spt_jax import runner
from spt_jax import train
from spt_jax import train_state as ts

PARAMS = {
    'token_embedder': {'embedding': jnp.ones((8, 4))},
    'encoder': {'layers_0': {'mlp': {'wi': {'kernel': jnp.ones((4, 6))}}},
                'soft_prompt': {'prompt': jnp.ones((3, 4))},
                'memory_bank': {'keys': jnp.ones((5, 4)), 'values': jnp.ones((5, 2, 4))}},
    'decoder': {'logits_dense': {'kernel': jnp.ones((4, 8))}},
}


def _trained(mask):
  return sorted(k for k, v in optim.flatten_paths(mask).items() if v)


def test_presets_and_regex_masks():
  assert len(_trained(optim.trainable_mask(PARAMS, 'full'))) == 6
  assert _trained(optim.trainable_mask(PARAMS, 'prompts_only')) == [
      'encoder/memory_bank/keys', 'encoder/memory_bank/values', 'encoder/soft_prompt/prompt']
  assert _trained(optim.trainable_mask(PARAMS, 'memory_only')) == [
      'encoder/memory_bank/keys', 'encoder/memory_bank/values']
  assert _trained(optim.trainable_mask(PARAMS, 'soft_prompt_only')) == [
      'encoder/soft_prompt/prompt']
  assert _trained(optim.trainable_mask(PARAMS, ['decoder/.*', '.*keys'])) == [
      'decoder/logits_dense/kernel', 'encoder/memory_bank/keys']
  no_prompts = {'decoder': PARAMS['decoder']}
  with pytest.raises(ValueError, match='matches no parameter'):
    optim.trainable_mask(no_prompts, 'prompts_only')


def test_frozen_params_have_no_optimizer_state():
  for name in ('adafactor', 'adamw'):
    tx, mask = optim.create_optimizer(PARAMS, optimizer=name, trainable='prompts_only')
    state = tx.init(PARAMS)
    full_tx, _ = optim.create_optimizer(PARAMS, optimizer=name, trainable='full')
    n_state = sum(x.size for x in jax.tree.leaves(state))
    n_full = sum(x.size for x in jax.tree.leaves(full_tx.init(PARAMS)))
    n_trainable = optim.count_params(PARAMS, mask)
    # Per-parameter statistics exist only for the 3 trainable leaves (+ scalar counts).
    assert n_state < n_full
    per_param = [x.size for x in jax.tree.leaves(state) if x.size > 1]
    if name == 'adamw':
      assert sum(per_param) == 2 * n_trainable  # mu + nu of trainable params only
    else:
      assert sum(per_param) <= 3 * n_trainable


def test_schedules():
  c = optim.constant_schedule(0.5)
  assert float(c(0)) == 0.5 and float(c(1000)) == 0.5
  w = optim.constant_schedule(1.0, warmup_steps=10)
  np.testing.assert_allclose([float(w(0)), float(w(4)), float(w(20))], [0.1, 0.5, 1.0], rtol=1e-6)
  r = optim.rsqrt_schedule(1.0, warmup_steps=10_000)  # T5: 0.01 until 10k, then 1/sqrt(step)
  np.testing.assert_allclose([float(r(0)), float(r(10_000)), float(r(40_000))],
                             [0.01, 0.01, 0.005], rtol=1e-6)
  lw = optim.rsqrt_schedule(1.0, warmup_steps=100, linear_warmup=True)
  assert float(lw(0)) < float(lw(50)) < float(lw(99)) + 1e-9
  d = optim.linear_decay_schedule(1.0, decay_steps=100, end_learning_rate=0.0)
  np.testing.assert_allclose([float(d(0)), float(d(50)), float(d(100)), float(d(200))],
                             [1.0, 0.5, 0.0, 0.0], atol=1e-6)
  assert float(optim.create_schedule('rsqrt', 1.0, warmup_steps=100)(0)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match='decay_steps'):
    optim.create_schedule('linear_decay', 1.0)
  with pytest.raises(ValueError, match='Unknown schedule'):
    optim.create_schedule('cosine')


def test_adafactor_is_t5s():
  """First step: no parameter scaling, decay 0.8 => v = g^2 => |update| = lr elementwise."""
  tx = optim.adafactor(0.01)
  p = {'w': jnp.full((4, 3), 5.0)}
  g = {'w': jnp.arange(1.0, 13.0).reshape(4, 3)}
  upd, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(np.abs(np.asarray(upd['w'])), 0.01, rtol=1e-4)
  # Large matrices get factored row / column statistics, not a full second moment.
  big = {'w': jnp.ones((256, 384))}
  st = jax.tree.leaves(tx.init(big))
  assert sorted(x.shape for x in st if x.ndim == 1 and x.size > 1) == [(256,), (384,)]


def test_grad_clipping():
  p = {'w': jnp.zeros((3,))}
  tx, mask = optim.create_optimizer(p, optimizer='adamw', learning_rate=1.0, grad_clip_norm=1.0,
                                    adamw_kwargs={'b1': 0.0, 'b2': 0.0, 'eps': 0.0})
  g = {'w': jnp.array([300.0, 400.0, 0.0])}
  upd, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(upd['w'][:2]), [-1.0, -1.0], rtol=1e-5)
  assert float(optim.global_norm(g, mask)) == pytest.approx(500.0)


def test_apply_updates_keeps_frozen_bits():
  p = {'a': jnp.array([-0.0, 1.0]), 'b': jnp.array([-0.0, 2.0])}
  u = {'a': jnp.zeros(2), 'b': jnp.ones(2)}
  out = optim.apply_updates(p, u, {'a': False, 'b': True})
  assert np.signbit(np.asarray(out['a'])[0])  # -0.0 kept (p + 0.0 would give +0.0)
  np.testing.assert_array_equal(np.asarray(out['b']), [1.0, 3.0])


def test_prompts_only_five_steps_leave_backbone_bit_identical():
  tl.register_task()
  model = tl.tiny_model(dropout_rate=0.1)
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  setup = runner.ModelSetup.create(model, tl.FEATURE_LENGTHS, mesh=mesh)
  params = setup.init_params(jax.random.PRNGKey(0))
  before = jax.device_get(params)
  tx, mask = optim.create_optimizer(setup.abstract_params, learning_rate=0.1,
                                    trainable='prompts_only')
  state = ts.TrainState.create(params, tx.init(params), jax.random.PRNGKey(1))
  step = jax.jit(train.make_train_step(model, tx, mask, optim.constant_schedule(0.1)))
  data = runner.create_dataset(tl.TASK, tl.FEATURE_LENGTHS, 4, mesh, seed=0)
  with setup.activate():
    for _ in range(5):
      state, _ = step(state, next(data))
  after = jax.device_get(state.params)
  flat_b, flat_a, flat_m = (optim.flatten_paths(t) for t in (before, after, mask))
  changed = [k for k in flat_b if not np.array_equal(flat_b[k], flat_a[k])]
  assert sorted(changed) == sorted(k for k, m in flat_m.items() if m)
  for k, m in flat_m.items():
    if not m:
      assert flat_b[k].tobytes() == flat_a[k].tobytes(), k


def test_schedule_warmup_offset_and_floor():
  """warmup_offset=0 is T5X's `step / warmup_steps` (first step at rate 0, here floored)."""
  ours = optim.create_schedule('constant', 1.0, warmup_steps=10)
  t5x_style = optim.create_schedule('constant', 1.0, warmup_steps=10, warmup_offset=0.0,
                                    min_learning_rate=1e-8)
  np.testing.assert_allclose([float(ours(s)) for s in (0, 4, 9, 10)], [0.1, 0.5, 1.0, 1.0],
                             rtol=1e-6)
  np.testing.assert_allclose([float(t5x_style(s)) for s in (0, 4, 9, 10)],
                             [1e-8, 0.4, 0.9, 1.0], rtol=1e-6)
  r = optim.create_schedule('rsqrt', 1.0, warmup_steps=100, linear_warmup=True,
                            warmup_offset=0.0)
  np.testing.assert_allclose([float(r(50)), float(r(400))], [0.05, 0.05], rtol=1e-6)


def test_adafactor_factor_rules():
  """factor_rules='t5x': rank-3 memory values factored by their axes whatever their size (the
  optax heuristic keeps a full second moment for them); missing axes names are errors."""
  params = {'memory_bank': {'values': jnp.ones((5, 2, 4))}, 'w': jnp.ones((4, 6))}
  axes = {'memory_bank': {'values': ('memory', 'memory_length', 'embed')}, 'w': ('embed', 'mlp')}
  tx = optim.adafactor(0.01, factor_rules='t5x', param_axes=axes, params=params)
  state = tx.init(params)
  assert state.v_row['memory_bank']['values'].shape == (4,)
  assert state.v_col['memory_bank']['values'].shape == (5, 2)
  assert state.v['w'].shape == (4, 6)  # rank 2: the size heuristic (dims < 128: unfactored)
  heuristic = [x.shape for x in jax.tree.leaves(optim.adafactor(0.01).init(params))]
  assert (5, 2, 4) in heuristic
  with pytest.raises(ValueError, match='needs param_axes'):
    optim.adafactor(0.01, factor_rules='t5x')
  with pytest.raises(ValueError, match='no entry for logical axis'):
    optim.adafactor(0.01, factor_rules={'embed': 'row'}, param_axes=axes, params=params)
  # Inside create_optimizer (multi_transform with a frozen part) the update runs.
  tx, mask = optim.create_optimizer(params, trainable=['memory_bank/.*'], param_axes=axes,
                                    adafactor_kwargs={'factor_rules': 't5x',
                                                      'multiply_by_parameter_scale': True})
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates['memory_bank']['values']).max()) > 0
  assert float(jnp.abs(updates['w']).max()) == 0
