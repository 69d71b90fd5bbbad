"""Sharded retrieval (memory axis over `model`) equals single-device retrieval exactly.

Runs on the 8 fake CPU devices set up by conftest.py, with meshes (data, model) of
1x8, 2x4 and 4x2. Rules are built here with flax's rules API so the test does not
depend on partitioning.py's defaults beyond the `memory -> model` mapping.
"""
import functools
import re

import flax.linen as nn
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import network
from spt_jax import prompts
from spt_jax import retrieval

RULES = (('batch', 'data'), ('vocab', 'model'), ('embed', None), ('mlp', 'model'),
         ('heads', 'model'), ('kv', None), ('joined_kv', 'model'), ('prompt', None),
         ('memory', 'model'), ('memory_length', None), ('length', None),
         ('relpos_buckets', None))
MESH_SHAPES = [(1, 8), (2, 4), (4, 2)]
D = 16


def _mesh(shape, axis_type=AxisType.Auto):
  return jax.make_mesh(shape, ('data', 'model'), axis_types=(axis_type,) * 2)


def _keys_with_ties(num_rows, seed=0):
  """Random keys where several rows in different shards equal row 3 (exact ties)."""
  keys = np.array(jax.random.normal(jax.random.key(seed), (num_rows, D)), np.float32)
  for row in (num_rows // 2 + 3, num_rows - 1, num_rows // 8 + 1):
    keys[row] = keys[3]
  return keys


@pytest.mark.parametrize('axis_type', [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize('mesh_shape', MESH_SHAPES)
@pytest.mark.parametrize('similarity,num_rows,k', [('cosine', 64, 5), ('dot', 64, 5),
                                                   ('cosine', 8192, 2)])
def test_sharded_top_k_equals_single_device(mesh_shape, axis_type, similarity, num_rows, k):
  batch = 8
  keys = _keys_with_ties(num_rows)
  query = np.array(jax.random.normal(jax.random.key(1), (batch, D)), np.float32)
  query[:3] = keys[3]   # these rows see a 4-way exact tie at the top
  query[3] = 0.         # all scores tie (cosine: 0 everywhere)
  fn = jax.jit(retrieval.retrieve_top_k, static_argnums=(2, 3))
  want_scores, want_idx = fn(query, keys, k, similarity)

  mesh = _mesh(mesh_shape, axis_type)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    assert retrieval.memory_mesh_axes(num_rows) == ('model',)
    q = jax.device_put(query, NamedSharding(mesh, P('data')))
    kk = jax.device_put(keys, NamedSharding(mesh, P('model')))
    scores, idx = fn(q, kk, k, similarity)
    hlo = fn.lower(q, kk, k, similarity).compile().as_text()
  scores, idx = np.asarray(scores), np.asarray(idx)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(scores, want_scores, atol=1e-6, rtol=1e-6)
  tied = sorted(np.flatnonzero((keys == keys[3]).all(1)))
  assert len(tied) == 4 and list(idx[0][:4]) == tied[:k]
  # Only the P*k candidates travel: no all-gather of a [B, M]-sized score matrix.
  gathers = [l for l in hlo.splitlines() if 'all-gather(' in l or 'all-gather-start(' in l]
  assert gathers, 'expected the candidate all-gather of the two-stage top-k'
  model = mesh_shape[1]
  for line in gathers:
    shapes = re.findall(r'\[([\d,]+)\]', line.split('=')[1].split('all-gather')[0])
    for shape in shapes:
      assert int(np.prod([int(s) for s in shape.split(',')])) <= batch * model * k, line


@pytest.mark.parametrize('mesh_shape', MESH_SHAPES)
def test_sharded_gather_and_its_gradient_equal_take(mesh_shape):
  table = jax.random.normal(jax.random.key(0), (32, 3, D))
  idx = jax.random.randint(jax.random.key(1), (8, 4), 0, 32)
  cot = jax.random.normal(jax.random.key(2), (8, 4, 3, D))

  def loss(t, sharded):
    return jnp.sum(retrieval.gather_rows(t, idx, sharded=sharded) * cot)

  want, want_grad = jax.value_and_grad(loss)(table, False)
  mesh = _mesh(mesh_shape)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    t = jax.device_put(table, NamedSharding(mesh, P('model')))
    got_rows = jax.jit(lambda t: retrieval.gather_rows(t, idx, sharded=True))(t)
    got, got_grad = jax.jit(jax.value_and_grad(lambda t: loss(t, True)))(t)
  np.testing.assert_array_equal(got_rows, jnp.take(table, idx, axis=0))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Repeated rows accumulate in another order when the batch is split: float32 ulps.
  np.testing.assert_allclose(got_grad, want_grad, atol=1e-6, rtol=1e-5)


def test_gather_rows_sharded_true_without_mesh_is_a_clear_error():
  with pytest.raises(ValueError, match='needs a mesh'):
    retrieval.gather_rows(jnp.zeros((8, 2)), jnp.zeros((1,), jnp.int32), sharded=True)


def test_indivisible_memory_falls_back_to_unsharded_retrieval():
  keys = _keys_with_ties(60)  # 60 rows do not divide over model=8
  query = jax.random.normal(jax.random.key(1), (8, D))
  want = retrieval.retrieve_top_k(query, keys, 4, 'cosine')
  with jax.set_mesh(_mesh((1, 8))), nn.logical_axis_rules(RULES):
    assert retrieval.memory_mesh_axes(60) is None
    got = jax.jit(retrieval.retrieve_top_k, static_argnums=(2, 3))(query, keys, 4, 'cosine')
  np.testing.assert_array_equal(got[1], want[1])


def test_no_rules_or_no_mesh_means_unsharded():
  assert retrieval.memory_mesh_axes(64) is None
  with nn.logical_axis_rules(RULES):
    assert retrieval.memory_mesh_axes(64) is None  # no mesh set
  with jax.set_mesh(_mesh((2, 4))):
    assert retrieval.memory_mesh_axes(64) is None  # no rule for 'memory'


def _shard_variables(variables, mesh):
  """Places boxed variables by their logical axes; call outside the mesh context
  (inside it, flax's unbox applies sharding constraints eagerly)."""
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, RULES)
  return jax.device_put(nn.unbox(variables), shardings)


@pytest.mark.parametrize('mesh_shape', MESH_SHAPES)
@pytest.mark.parametrize('weighting', ['softmax', 'none'])
def test_memory_bank_forward_and_gradients_match_single_device(mesh_shape, weighting):
  cfg = prompts.PromptConfig(memory_size=64, memory_length=2, top_k=3, weighting=weighting,
                             key_loss_weight=0.1)
  batch = 8
  emb = jax.random.normal(jax.random.key(0), (batch, 6, D))
  mask = (jnp.arange(6)[None] < jnp.arange(1, batch + 1)[:, None] % 7).astype(jnp.int32)
  table = jax.random.normal(jax.random.key(1), (40, D))
  module = prompts.MemoryBank(cfg, D)
  variables = module.init(jax.random.key(2), emb, mask, table)
  variables = {'params': variables['params']}
  cot = jax.random.normal(jax.random.key(3), (batch, 6, D))

  def loss(params, emb):
    out, state = module.apply({'params': params}, emb, mask, table, mutable=['retrieval'])
    return (jnp.sum(out * cot) + state['retrieval']['key_loss'][0],
            state['retrieval']['indices'][0])

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (want, want_idx), want_grad = grad_fn(nn.unbox(variables['params']), emb)
  mesh = _mesh(mesh_shape)
  params = _shard_variables(variables, mesh)['params']
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    assert params['values'].sharding.spec == P('model', None, None)
    (got, got_idx), got_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params, jax.device_put(emb, NamedSharding(mesh, P('data'))))
  np.testing.assert_array_equal(got_idx, want_idx)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               got_grad, want_grad)


def _tiny_t5():
  return network.T5Config(vocab_size=64, emb_dim=D, num_heads=8, head_dim=4, mlp_dim=32,
                          num_encoder_layers=2, num_decoder_layers=1,
                          relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _batch(batch=8, enc_len=9, dec_len=4, vocab=64):
  rng = np.random.RandomState(0)
  enc = rng.randint(1, vocab, (batch, enc_len))
  for b in range(batch):
    enc[b, (b % enc_len) + 1:] = 0   # padded
  dec_target = rng.randint(1, vocab, (batch, dec_len))
  dec_target[:, -1] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), int), dec_target[:, :-1]], axis=1)
  return {k: jnp.asarray(v, jnp.int32) for k, v in
          dict(encoder_input_tokens=enc, decoder_input_tokens=dec_in,
               decoder_target_tokens=dec_target).items()}


@pytest.mark.slow
@pytest.mark.parametrize('mesh_shape', MESH_SHAPES)
def test_spt_model_output_under_mesh_equals_single_device(mesh_shape):
  pcfg = prompts.PromptConfig(soft_prompt_length=3, memory_size=32, memory_length=2, top_k=2,
                              init_vocab_size=64)
  model = network.Transformer(_tiny_t5(), prompts.PromptPrefix(pcfg))
  batch = _batch()
  variables = model.init(jax.random.key(0), **batch, enable_dropout=False)
  variables = {'params': variables['params']}

  @jax.jit
  @functools.partial(jax.value_and_grad, has_aux=True)
  def loss(params, batch):
    logits, state = model.apply({'params': params}, **batch, enable_dropout=False,
                                mutable=['retrieval'])
    indices = state['retrieval']['encoder']['memory_bank']['indices'][0]
    return jnp.mean(jax.nn.log_softmax(logits)[..., 1]), (logits, indices)

  (_, (want, want_idx)), want_grad = loss(nn.unbox(variables['params']), batch)
  mesh = _mesh(mesh_shape)
  sharded = _shard_variables(variables, mesh)['params']
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    assert sharded['encoder']['memory_bank']['keys'].sharding.spec == P('model', None)
    sharded_batch = jax.device_put(batch, NamedSharding(mesh, P('data')))
    (_, (got, got_idx)), got_grad = loss(sharded, sharded_batch)
  np.testing.assert_array_equal(got_idx, want_idx)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
               got_grad, want_grad)


def test_project_partitioning_rules_select_the_sharded_path():
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  mesh = partitioning.create_mesh(num_partitions=4)
  with partitioning.activate(mesh, partitioning.LOGICAL_AXIS_RULES):
    assert retrieval.memory_mesh_axes(64) == ('model',)
    assert retrieval.batch_spec(8, ('model',)) == P(('data',))
