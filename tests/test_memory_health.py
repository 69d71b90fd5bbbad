"""Memory-bank health: usage statistics, balance loss, dead-slot restart, data-driven key
init, prompt re-init from an embedding, learnable (ATTEMPT) query and the fixed-random
slot-assignment control (spt_jax.memory_health and the bank of spt_jax.prompts).

Numbers are checked against small NumPy references; sharded code runs on the 8 fake CPU
devices of conftest.py with (data, model) meshes 1x8 and 2x4.
"""
import dataclasses

import flax
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import memory_health
from spt_jax import network
from spt_jax import prompts
from spt_jax import retrieval

import prompt_testlib as ptl

RULES = (('batch', 'data'), ('vocab', 'model'), ('embed', None), ('mlp', 'model'),
         ('heads', 'model'), ('kv', None), ('joined_kv', 'model'), ('prompt', None),
         ('memory', 'model'), ('memory_length', None), ('length', None),
         ('relpos_buckets', None), ('query_mlp', None))
MESH_SHAPES = [(1, 8), (2, 4)]
D = 8


def _mesh(shape):
  return jax.make_mesh(shape, ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _np_balance(query, keys, indices, valid, tau, similarity):
  """NumPy reference of M·Σᵢ fᵢPᵢ (float64)."""
  q, kk = np.asarray(query, np.float64), np.asarray(keys, np.float64)
  if similarity == 'cosine':
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-6)
    kk = kk / np.linalg.norm(kk, axis=1, keepdims=True)
  s = q @ kk.T / tau
  p = np.exp(s - s.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  v = np.asarray(valid)
  m, k = kk.shape[0], indices.shape[1]
  mean_p = p[v].mean(0)
  f = np.bincount(np.asarray(indices)[v].ravel(), minlength=m) / (v.sum() * k)
  return m * np.sum(f * mean_p), f


def _np_balance_grad(query, keys, indices, valid, tau, similarity, eps=1e-4):
  """Central finite differences of the float64 reference w.r.t. the keys (f held fixed)."""
  keys = np.asarray(keys, np.float64)
  grad = np.zeros_like(keys)
  for i in np.ndindex(keys.shape):
    up, down = keys.copy(), keys.copy()
    up[i] += eps
    down[i] -= eps
    grad[i] = (_np_balance(query, up, indices, valid, tau, similarity)[0]
               - _np_balance(query, down, indices, valid, tau, similarity)[0]) / (2 * eps)
  return grad


def _case(m=16, b=8, k=3, seed=0):
  rng = np.random.RandomState(seed)
  query = rng.randn(b, D).astype(np.float32)
  keys = rng.randn(m, D).astype(np.float32)
  indices = np.stack([rng.choice(m, k, replace=False) for _ in range(b)]).astype(np.int32)
  valid = np.ones(b, bool)
  valid[2] = False
  return query, keys, indices, valid


def _loss_and_grad(query, keys, indices, valid, tau, similarity):
  fn = jax.jit(jax.value_and_grad(
      lambda kk, q: prompts.balance_loss(q, kk, indices, valid, tau, similarity)))
  return fn(keys, query)


@pytest.mark.parametrize('similarity', ['cosine', 'dot'])
def test_balance_loss_value_and_key_gradient_match_numpy(similarity):
  query, keys, indices, valid = _case()
  tau = 0.5
  value, grad = _loss_and_grad(query, keys, indices, valid, tau, similarity)
  want, f = _np_balance(query, keys, indices, valid, tau, similarity)
  assert f.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  want_grad = _np_balance_grad(query, keys, indices, valid, tau, similarity)
  np.testing.assert_allclose(np.asarray(grad), want_grad, atol=2e-5, rtol=1e-3)
  # Every key gets a gradient, retrieved or not.
  assert np.all(np.abs(np.asarray(grad)).sum(1) > 0)
  # Uniform retrieval and a uniform softmax give exactly 1.
  uniform = prompts.balance_loss(jnp.zeros((4, D)), jnp.ones((4, D)),
                                 jnp.array([[0], [1], [2], [3]]), jnp.ones(4, bool), 1., 'dot')
  assert float(uniform) == pytest.approx(1.0)


@pytest.mark.parametrize('mesh_shape', MESH_SHAPES)
@pytest.mark.parametrize('similarity', ['cosine', 'dot'])
def test_sharded_balance_loss_equals_single_device(mesh_shape, similarity):
  query, keys, indices, valid = _case(m=32, b=8, k=2, seed=1)
  want, want_grad = _loss_and_grad(query, keys, indices, valid, 0.3, similarity)
  mesh = _mesh(mesh_shape)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    assert retrieval.memory_mesh_axes(32) == ('model',)
    kk = jax.device_put(keys, NamedSharding(mesh, P('model')))
    q = jax.device_put(query, NamedSharding(mesh, P('data')))
    fn = jax.jit(jax.value_and_grad(
        lambda kk, q: prompts.balance_loss(q, kk, jnp.asarray(indices), jnp.asarray(valid),
                                           0.3, similarity), argnums=(0, 1)))
    value, (grad, grad_q) = fn(kk, q)
    hlo = fn.lower(kk, q).compile().as_text()
  np.testing.assert_allclose(float(value), float(want), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), atol=1e-5, rtol=1e-4)
  want_gq = jax.jit(jax.grad(lambda q: prompts.balance_loss(q, keys, indices, valid, 0.3,
                                                            similarity)))(query)
  np.testing.assert_allclose(np.asarray(grad_q), np.asarray(want_gq), atol=1e-5, rtol=1e-4)
  # No [B, M] score matrix is gathered.
  for line in hlo.splitlines():
    if 'all-gather(' in line or 'all-gather-start(' in line:
      assert 'f32[8,32]' not in line, line


# ------------------------------------------------------------------------------------------
# MemoryBank wiring.
def _bank_inputs(b=4, t=6, v=50, seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(1, v, size=(b, t)).astype(np.int32)
  tokens[1, 3:] = 0
  tokens[3] = 0  # an all-padding row
  table = jnp.asarray(rng.randn(v, D).astype(np.float32))
  return tokens, table


def _apply_bank(cfg, tokens, table, variables=None, mutable=(prompts.RETRIEVAL_COLLECTION,)):
  bank = prompts.MemoryBank(cfg, D)
  emb = jnp.take(table, tokens, axis=0)
  if variables is None:
    variables = bank.init(jax.random.PRNGKey(0), emb, tokens > 0, table, tokens=tokens)
  out, state = bank.apply(variables, emb, tokens > 0, table, tokens=tokens, mutable=mutable)
  return variables, out, state


def test_bank_sows_weighted_balance_loss():
  tokens, table = _bank_inputs()
  cfg = prompts.PromptConfig(memory_size=16, memory_length=2, top_k=2,
                             balance_loss_weight=0.25, temperature=0.5)
  variables, _, state = _apply_bank(cfg, tokens, table)
  sown = state[prompts.RETRIEVAL_COLLECTION]
  emb = jnp.take(table, tokens, axis=0)
  query = prompts.pool_query(emb, tokens > 0, 'mean')
  want = 0.25 * prompts.balance_loss(query, nn.unbox(variables['params']['keys']),
                                     sown['indices'][0], jnp.any(tokens > 0, 1), 0.5)
  np.testing.assert_allclose(float(sown['balance_loss'][0]), float(want), rtol=1e-6)
  off = dataclasses.replace(cfg, balance_loss_weight=0.)
  _, _, state_off = _apply_bank(off, tokens, table)
  assert 'balance_loss' not in state_off[prompts.RETRIEVAL_COLLECTION]


def test_attempt_query_projection_trains_under_query_stop_gradient():
  tokens, table = _bank_inputs()
  cfg = prompts.PromptConfig(memory_size=16, memory_length=2, top_k=2,
                             query_projection='attempt', query_projection_dim=5)
  bank = prompts.MemoryBank(cfg, D)
  variables = bank.init(jax.random.PRNGKey(0), jnp.take(table, tokens, axis=0), tokens > 0,
                        table)
  proj = variables['params']['query_projection']
  assert nn.unbox(proj['down']).shape == (D, 5) and proj['down'].names == ('embed', 'query_mlp')
  assert proj['up'].names == ('query_mlp', 'embed')

  def loss(params, table):
    out, _ = bank.apply({'params': params}, jnp.take(table, tokens, axis=0), tokens > 0, table,
                        mutable=[prompts.RETRIEVAL_COLLECTION])
    return jnp.sum(out ** 2)

  params = nn.unbox(variables['params'])
  g_params, g_table = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, table)
  assert float(jnp.abs(g_params['query_projection']['down']).sum()) > 0
  assert float(jnp.abs(g_params['query_projection']['scale']).sum()) > 0
  assert float(jnp.abs(g_table).sum()) == 0.  # the embedder gets nothing (stop_gradient)


def test_fixed_random_slots_are_a_frozen_hash_of_the_prompt():
  v = 50
  tokens, table = _bank_inputs(v=v)
  tokens[2] = tokens[0]
  cfg = prompts.PromptConfig(memory_size=32, memory_length=2, top_k=3,
                             slot_assignment='fixed_random')
  variables, _, state = _apply_bank(cfg, tokens, table)
  assert set(variables['params']) == {'values'}
  idx = np.asarray(state[prompts.RETRIEVAL_COLLECTION]['indices'][0])
  np.testing.assert_array_equal(idx[0], idx[2])
  # Independent of the (trained) token embedding and of the parameters.
  other = jnp.asarray(np.random.RandomState(9).randn(v, D).astype(np.float32))
  _, _, state2 = _apply_bank(cfg, tokens, other)
  np.testing.assert_array_equal(state2[prompts.RETRIEVAL_COLLECTION]['indices'][0], idx)
  # The reference hash: mean of normal(fold_in(key(0), t)) rows scored against key(1) keys.
  base = jax.random.PRNGKey(0)
  rows = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(base, int(t)), (D,)))
                   for t in tokens[0] if t > 0])
  q = rows.mean(0)
  keys = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (32, D)))
  s = (keys / np.linalg.norm(keys, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
  np.testing.assert_array_equal(idx[0], np.argsort(-s, kind='stable')[:3])
  with pytest.raises(ValueError, match='fixed_random'):
    prompts.PromptConfig(slot_assignment='fixed_random', balance_loss_weight=0.1)


# ------------------------------------------------------------------------------------------
# Usage statistics and dead-slot restart.
def _stats(m, size, ema=None, count=0, buffer=None):
  return {'ema_usage': jnp.full((m,), 1. / m) if ema is None else jnp.asarray(ema, jnp.float32),
          'query_buffer': (jnp.zeros((size, D)) if buffer is None
                           else jnp.asarray(buffer, jnp.float32)),
          'buffer_count': jnp.asarray(count, jnp.int32),
          'restarts_total': jnp.zeros((), jnp.int32)}


def test_update_memory_stats_ema_and_ring_buffer():
  m, size = 8, 4
  cfg = prompts.PromptConfig(memory_size=m, top_k=2, restart_every_steps=5,
                             usage_ema_decay=0.9, query_buffer_size=size)
  indices = jnp.array([[0, 1], [1, 2], [7, 6]], jnp.int32)
  valid = jnp.array([True, True, False])
  queries = jnp.arange(3 * D, dtype=jnp.float32).reshape(3, D)
  out = jax.jit(memory_health.update_memory_stats, static_argnums=4)(
      _stats(m, size, count=3), indices, queries, valid, cfg)
  share = np.array([1, 2, 1, 0, 0, 0, 0, 0]) / 4
  np.testing.assert_allclose(out['ema_usage'], 0.9 / m + 0.1 * share, rtol=1e-6)
  assert int(out['buffer_count']) == 5
  buf = np.asarray(out['query_buffer'])
  np.testing.assert_array_equal(buf[3], queries[0])
  np.testing.assert_array_equal(buf[0], queries[1])  # wraps around
  np.testing.assert_array_equal(buf[1:3], 0.)
  # More valid queries than the buffer holds: the last `size` are kept, in ring order.
  many = jnp.arange(6 * D, dtype=jnp.float32).reshape(6, D)
  out = memory_health.update_memory_stats(_stats(m, size), jnp.zeros((6, 2), jnp.int32), many,
                                    jnp.ones(6, bool), cfg)
  np.testing.assert_array_equal(np.asarray(out['query_buffer'])[[2, 3, 0, 1]], many[2:])


def _restart_case(m=16, size=6, seed=0):
  rng = np.random.RandomState(seed)
  keys = rng.randn(m, D).astype(np.float32)
  values = rng.randn(m, 2, D).astype(np.float32)
  ema = np.full(m, 1. / m, np.float32)
  dead = np.array([1, 4, 5, 11, 15])
  ema[dead] = 0.001 / m
  ema[0] = 3. / m  # the most used live slot
  ema[2] = 2. / m
  buffer = rng.randn(size, D).astype(np.float32)
  return keys, values, _stats(m, size, ema=ema, count=4, buffer=buffer), dead


@pytest.mark.parametrize('copy_values', [False, True])
def test_restart_redraws_exactly_the_dead_slots(copy_values):
  keys, values, stats, dead = _restart_case()
  m = keys.shape[0]
  cfg = prompts.PromptConfig(memory_size=m, top_k=2, restart_every_steps=1,
                             restart_threshold=0.05, restart_noise=0.01,
                             restart_copy_values=copy_values, query_buffer_size=6)
  fn = jax.jit(memory_health.restart_slots, static_argnums=3)
  new_keys, new_values, new_stats, num = fn(keys, values, stats, cfg, jax.random.PRNGKey(3))
  assert int(num) == len(dead) and int(new_stats['restarts_total']) == len(dead)
  live = np.setdiff1d(np.arange(m), dead)
  np.testing.assert_array_equal(np.asarray(new_keys)[live], keys[live])
  np.testing.assert_array_equal(np.asarray(new_stats['ema_usage'])[live],
                                np.asarray(stats['ema_usage'])[live])
  np.testing.assert_allclose(np.asarray(new_stats['ema_usage'])[dead], 1. / m)
  buffer = np.asarray(stats['query_buffer'])[:4]  # only the 4 filled rows are drawn from
  for r, slot in enumerate(dead):
    dist = np.linalg.norm(buffer - np.asarray(new_keys)[slot], axis=1)
    src = int(np.argmin(dist))
    assert dist[src] < 0.05 * np.linalg.norm(buffer[src]), slot
    assert dist[src] > 0  # noise separates it from the query
  # The first four dead slots draw four distinct buffered queries.
  srcs = [int(np.argmin(np.linalg.norm(buffer - np.asarray(new_keys)[s], axis=1)))
          for s in dead[:4]]
  assert len(set(srcs)) == 4
  if copy_values:
    by_use = [0, 2] + [i for i in live if i not in (0, 2)]
    for r, slot in enumerate(dead):
      np.testing.assert_array_equal(np.asarray(new_values)[slot], values[by_use[r]])
  else:
    np.testing.assert_array_equal(np.asarray(new_values), values)
  np.testing.assert_array_equal(np.asarray(new_values)[live], values[live])
  # Nothing restarts before a query was buffered.
  empty = dict(stats, buffer_count=jnp.zeros((), jnp.int32))
  _, _, _, none = fn(keys, values, empty, cfg, jax.random.PRNGKey(3))
  assert int(none) == 0


@pytest.mark.parametrize('mesh_shape', MESH_SHAPES)
def test_sharded_restart_equals_single_device(mesh_shape):
  keys, values, stats, dead = _restart_case(m=32, seed=2)
  cfg = prompts.PromptConfig(memory_size=32, top_k=2, restart_every_steps=1,
                             restart_copy_values=True, query_buffer_size=6)
  fn = jax.jit(memory_health.restart_slots, static_argnums=3)
  want = fn(keys, values, stats, cfg, jax.random.PRNGKey(5))
  mesh = _mesh(mesh_shape)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    kk = jax.device_put(keys, NamedSharding(mesh, P('model')))
    vv = jax.device_put(values, NamedSharding(mesh, P('model')))
    ss = dict(stats, ema_usage=jax.device_put(stats['ema_usage'], NamedSharding(mesh, P('model'))))
    got = fn(kk, vv, ss, cfg, jax.random.PRNGKey(5))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------
# Data-driven key initialisation.
def _np_kmeans(points, centroids, iterations, spherical):
  x, c = np.asarray(points, np.float64), np.asarray(centroids, np.float64)
  if spherical:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
  for _ in range(iterations):
    if spherical:
      assign = np.argmax(x @ c.T, axis=1)
    else:
      assign = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    for j in range(c.shape[0]):
      members = x[assign == j]
      if len(members):
        s = members.sum(0)
        c[j] = s / np.linalg.norm(s) if spherical else members.mean(0)
  return c


@pytest.mark.parametrize('similarity', ['cosine', 'dot'])
def test_kmeans_key_init_matches_numpy_and_is_seeded(similarity):
  rng = np.random.RandomState(0)
  centers = rng.randn(4, D) * 3
  points = (centers[rng.randint(0, 4, 40)] + 0.3 * rng.randn(40, D)).astype(np.float32)
  cfg = prompts.PromptConfig(memory_size=6, top_k=2, key_init='kmeans', similarity=similarity)
  fn = jax.jit(memory_health.keys_from_queries, static_argnums=1)
  keys = fn(jnp.asarray(points), cfg, jax.random.PRNGKey(7))
  np.testing.assert_array_equal(keys, fn(jnp.asarray(points), cfg, jax.random.PRNGKey(7)))
  assert not np.array_equal(keys, fn(jnp.asarray(points), cfg, jax.random.PRNGKey(8)))
  # Same initial centroids as the function draws, then the NumPy Lloyd iterations.
  init = jax.jit(memory_health.keys_from_queries, static_argnums=1)(
      jnp.asarray(points), dataclasses.replace(cfg, key_init='queries'), jax.random.PRNGKey(7))
  want = _np_kmeans(points, np.asarray(init), memory_health.KMEANS_ITERATIONS,
                    spherical=similarity == 'cosine')
  np.testing.assert_allclose(np.asarray(keys), want, atol=1e-5)


def test_query_key_init_samples_queries_and_replaces_only_keys():
  rng = np.random.RandomState(1)
  queries = rng.randn(5, D).astype(np.float32)
  cfg = prompts.PromptConfig(memory_size=12, top_k=2, key_init='queries')
  params = {'encoder': {'memory_bank': {'keys': jnp.zeros((12, D)),
                                        'values': jnp.ones((12, 2, D))}},
            'other': {'w': jnp.ones(3)}}
  out = memory_health.init_keys_from_queries(params, jnp.asarray(queries), cfg,
                                             jax.random.PRNGKey(0))
  keys = np.asarray(out['encoder']['memory_bank']['keys'])
  np.testing.assert_array_equal(out['encoder']['memory_bank']['values'], 1.)
  np.testing.assert_array_equal(out['other']['w'], 1.)
  # Each key is a query + noise of 1% of its norm; all 5 queries are used before repeats.
  nearest = [int(np.argmin(np.linalg.norm(queries - k_, axis=1))) for k_ in keys]
  assert sorted(nearest[:5]) == list(range(5))
  for k_, j in zip(keys, nearest):
    assert 0 < np.linalg.norm(k_ - queries[j]) < 0.05 * np.linalg.norm(queries[j])


def test_network_retrieval_query_is_the_bank_query():
  cfg = network.T5Config(vocab_size=64, emb_dim=D, num_heads=2, head_dim=4, mlp_dim=16,
                         num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.)
  pc = prompts.PromptConfig(soft_prompt_length=2, memory_size=8, memory_length=2, top_k=2,
                            pooling='max', query_projection='attempt', query_projection_dim=3)
  net = network.Transformer(cfg, prompts.PromptPrefix(pc))
  tokens = jnp.array([[5, 6, 7, 0], [9, 0, 0, 0]], jnp.int32)
  variables = net.init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False)
  q = net.apply(variables, tokens, method=net.prefix_query)
  params = nn.unbox(variables['params'])
  emb = jnp.take(params['token_embedder']['embedding'], tokens, axis=0)
  pooled = prompts.pool_query(emb, tokens > 0, 'max')
  want = prompts.QueryProjection(D, 3).apply(
      {'params': params['encoder']['memory_bank']['query_projection']}, pooled)
  np.testing.assert_allclose(np.asarray(q), np.asarray(want), rtol=1e-6)


def test_defaults_add_no_state_no_outputs_and_no_parameters():
  """Every remedy at its off value: the bank's variables and outputs are as before."""
  tokens, table = _bank_inputs()
  cfg = prompts.PromptConfig(memory_size=16, memory_length=2, top_k=2)
  assert not cfg.tracks_usage
  variables, _, state = _apply_bank(cfg, tokens, table)
  assert set(variables) == {'params', prompts.RETRIEVAL_COLLECTION}
  assert set(variables['params']) == {'keys', 'values'}
  assert set(state[prompts.RETRIEVAL_COLLECTION]) == {'indices', 'scores', 'key_loss'}
  on = dataclasses.replace(cfg, restart_every_steps=10, query_buffer_size=3)
  variables, _, state = _apply_bank(on, tokens, table)
  stats = nn.unbox(variables[prompts.MEMORY_STATS_COLLECTION])
  np.testing.assert_array_equal(stats['ema_usage'], np.full(16, 1 / 16, np.float32))
  assert stats['query_buffer'].shape == (3, D) and int(stats['buffer_count']) == 0
  assert variables[prompts.MEMORY_STATS_COLLECTION]['ema_usage'].names == ('memory',)
  np.testing.assert_array_equal(state[prompts.RETRIEVAL_COLLECTION]['valid'][0],
                                [True, True, True, False])


def test_spt_gin_is_healthy_and_spt_paper_gin_is_the_paper_reading():
  import gin  # pylint: disable=g-import-not-at-top
  from spt_jax import cli  # pylint: disable=g-import-not-at-top
  from spt_jax import gin_configurables  # pylint: disable=g-import-not-at-top
  configs = {}
  for method in ('spt', 'spt_paper'):
    with gin.unlock_config():
      gin.clear_config()
    cli.parse_gin([f'methods/{method}.gin', 'runs/local.gin'],
                  ["MODEL_DIR = '/tmp/unused'"], ['gin'], finalize=False)
    configs[method] = gin_configurables.create_model().prompt_config
  with gin.unlock_config():
    gin.clear_config()
  paper, healthy = configs['spt_paper'], configs['spt']
  off = prompts.PromptConfig()
  for name in ('balance_loss_weight', 'restart_every_steps', 'key_init', 'query_projection',
               'slot_assignment'):
    assert getattr(paper, name) == getattr(off, name), name
  assert dataclasses.replace(healthy, balance_loss_weight=0., restart_every_steps=0,
                             key_init='values_mean', key_init_batches=4,
                             usage_ema_decay=0.99) == paper
  assert healthy.balance_loss_weight > 0 and healthy.restart_every_steps > 0
  assert healthy.key_init == 'kmeans'


# ----------------------------------------------------------------------------
# Usage statistics and prompt re-initialisation.


def _table(seed=0, vocab=64, d=D):
  return ptl.random_table(seed, vocab, d)


def _inputs(batch, length=7, seed=1, d=D):
  return ptl.padded_inputs(batch, length, seed, d)


def test_retrieval_statistics_match_numpy():
  indices = jnp.array([[0, 3], [3, 5], [0, 3]])
  stats = jax.jit(memory_health.retrieval_statistics, static_argnums=1)(indices, 8)
  hist = np.bincount(np.asarray(indices).ravel(), minlength=8)
  np.testing.assert_array_equal(stats['histogram'], hist)
  p = hist[hist > 0] / hist.sum()
  np.testing.assert_allclose(stats['entropy'], -(p * np.log(p)).sum(), rtol=1e-6)
  np.testing.assert_allclose(stats['normalized_entropy'], -(p * np.log(p)).sum() / np.log(8),
                             rtol=1e-6)
  assert float(stats['batch_used_fraction']) == 3 / 8
  assert float(stats['never_used_fraction']) == 5 / 8
  stats2 = memory_health.retrieval_statistics(jnp.array([[1, 7]]), 8, usage_so_far=stats['usage'])
  np.testing.assert_array_equal(stats2['usage'], hist + np.eye(8, dtype=int)[[1, 7]].sum(0))
  assert float(stats2['never_used_fraction']) == 3 / 8
  assert float(stats2['batch_used_fraction']) == 2 / 8


def test_init_prompts_from_embedding_resamples_and_keeps_structure():
  cfg = prompts.PromptConfig(soft_prompt_length=4, memory_size=8, memory_length=2, top_k=2,
                             init_vocab_size=10)
  table = _table()
  emb, mask = _inputs(2)
  bank = prompts.MemoryBank(cfg, D).init(jax.random.key(0), emb, mask, table)['params']
  soft = prompts.SoftPrompt(cfg, D).init(jax.random.key(1), 2, table)['params']
  params = {'encoder': {'soft_prompt': soft, 'memory_bank': bank,
                        'layers_0': {'w': jnp.ones(3)}}}
  new_table = np.asarray(_table(seed=7))
  for tree in (params, flax.core.freeze(params)):
    new = memory_health.init_prompts_from_embedding(tree, new_table, cfg, jax.random.key(3))
    assert type(new) is type(tree)
    assert isinstance(new['encoder']['memory_bank']['values'], nn.Partitioned)
    assert nn.get_partition_spec(new) == nn.get_partition_spec(tree)
    np.testing.assert_array_equal(new['encoder']['layers_0']['w'], np.ones(3))
    values = np.asarray(nn.unbox(new['encoder']['memory_bank']['values']))
    prompt = np.asarray(nn.unbox(new['encoder']['soft_prompt']['prompt']))
    for row in np.concatenate([values.reshape(-1, D), prompt]):
      assert np.any(np.all(row == new_table[:10], axis=1))
    np.testing.assert_allclose(nn.unbox(new['encoder']['memory_bank']['keys']),
                               values.mean(1), rtol=1e-6)
  # The input tree is not modified.
  np.testing.assert_array_equal(nn.unbox(params['encoder']['soft_prompt']['prompt']),
                                nn.unbox(soft['prompt']))
  # Uniform inits are left alone.
  uniform = prompts.PromptConfig(soft_prompt_length=4, soft_prompt_init='uniform',
                                 memory_size=8, memory_length=2, top_k=2, memory_init='uniform')
  same = memory_health.init_prompts_from_embedding(params, new_table, uniform, jax.random.key(3))
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(same), nn.unbox(params))
