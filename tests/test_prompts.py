"""Tests of spt_jax.prompts on one device: the bank vs NumPy, gradients, init, configs, prefix.

The top-k kernel is tested in test_retrieval.py, usage statistics and re-initialisation
in test_memory_health.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import network
from spt_jax import prompts

import prompt_testlib as ptl

D = 16
VOCAB = 64


def _table(seed=0, vocab=VOCAB, d=D):
  return ptl.random_table(seed, vocab, d)


def _inputs(batch, length=7, seed=1, d=D):
  return ptl.padded_inputs(batch, length, seed, d)


def _np_query(emb, mask, pooling):
  emb = np.asarray(emb, np.float64)
  m = np.asarray(mask, bool)[..., None]
  count = np.maximum(m.sum(1), 1)
  mean = np.where(m, emb, 0).sum(1) / count
  mx = np.where(m.any(1), np.where(m, emb, -np.inf).max(1), 0.)
  return {'mean': mean, 'max': mx, 'mean_max': 0.5 * (mean + mx)}[pooling]


_np_retrieve = ptl.np_retrieve


def _bank(cfg, batch, seed=0):
  emb, mask = _inputs(batch, seed=seed + 1)
  table = _table(seed)
  module = prompts.MemoryBank(cfg, D)
  variables = module.init(jax.random.key(seed + 2), emb, mask, table)
  return module, {'params': variables['params']}, emb, mask, table


_SIZES = [(8, 1, 3), (37, 4, 5), (256, 7, 9)]   # (M, k, batch)
# Every similarity x pooling pair, each at one size; the default pair at every size.
_BRUTE_FORCE_CASES = [
    (similarity, pooling, *_SIZES[i % 3])
    for i, (similarity, pooling) in enumerate(
        (s, p) for s in ('dot', 'cosine') for p in ('mean', 'max', 'mean_max'))
] + [('cosine', 'mean', *_SIZES[0]), ('cosine', 'mean', *_SIZES[2])]


@pytest.mark.parametrize('similarity,pooling,memory_size,top_k,batch', _BRUTE_FORCE_CASES)
def test_memory_bank_matches_numpy_brute_force(similarity, pooling, memory_size, top_k, batch):
  cfg = prompts.PromptConfig(memory_size=memory_size, memory_length=3, top_k=top_k,
                             pooling=pooling, similarity=similarity, memory_init='uniform')
  module, variables, emb, mask, table = _bank(cfg, batch, seed=memory_size)
  out, state = jax.jit(lambda v, e, m: module.apply(
      v, e, m, table, mutable=[prompts.RETRIEVAL_COLLECTION]))(variables, emb, mask)
  got = state[prompts.RETRIEVAL_COLLECTION]
  indices, scores = np.asarray(got['indices'][0]), np.asarray(got['scores'][0])
  assert indices.dtype == np.int32 and indices.shape == (batch, top_k)
  assert scores.dtype == np.float32

  params = variables['params']
  keys = np.asarray(nn.unbox(params['keys']))
  values = np.asarray(nn.unbox(params['values']))
  query = _np_query(emb, mask, pooling)
  want_scores, want_idx = _np_retrieve(query, keys, top_k, similarity)
  real = np.asarray(mask).any(1)
  np.testing.assert_array_equal(indices[real], want_idx[real])
  np.testing.assert_allclose(scores, want_scores, atol=1e-6, rtol=1e-6)
  if similarity == 'cosine':
    # The all-padding row has a zero query: all scores tie at 0 -> lowest indices.
    np.testing.assert_array_equal(indices[~real], np.tile(np.arange(top_k), ((~real).sum(), 1)))

  # Output = V[I], each retrieved prompt scaled by k * softmax(s_I / tau).
  weights = top_k * jax.nn.softmax(jnp.asarray(want_scores) / cfg.temperature, axis=-1)
  want_out = values[want_idx] * np.asarray(weights)[:, :, None, None]
  assert out.shape == (batch, top_k * 3, D)
  np.testing.assert_allclose(np.asarray(out)[real], want_out.reshape(batch, -1, D)[real],
                             atol=1e-5, rtol=1e-5)


def _grads(cfg, batch=6, seed=0):
  module, variables, emb, mask, table = _bank(cfg, batch, seed)
  cot = jax.random.normal(jax.random.key(99), (batch, cfg.top_k * cfg.memory_length, D))

  @jax.jit
  def loss(params, emb):
    out, state = module.apply({'params': params}, emb, mask, table,
                              mutable=[prompts.RETRIEVAL_COLLECTION])
    key_loss = state[prompts.RETRIEVAL_COLLECTION]['key_loss'][0]
    return jnp.sum(out * cot) + key_loss, state[prompts.RETRIEVAL_COLLECTION]['indices'][0]

  (_, indices), (g_params, g_emb) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables['params'], emb)
  return nn.unbox(g_params), np.asarray(g_emb), np.asarray(indices)


def _row_nonzero(g):
  return np.asarray(jnp.any(g.reshape(g.shape[0], -1) != 0, axis=1))


def test_hard_retrieval_gradient_reaches_only_retrieved_values_and_no_keys():
  cfg = prompts.PromptConfig(memory_size=64, memory_length=2, top_k=3, weighting='none')
  g, g_emb, indices = _grads(cfg)
  retrieved = np.zeros(64, bool)
  retrieved[indices.ravel()] = True
  np.testing.assert_array_equal(_row_nonzero(g['values']), retrieved)
  assert not np.any(np.asarray(g['keys']))
  assert not np.any(g_emb)


def test_softmax_weighting_gives_retrieved_keys_a_gradient():
  cfg = prompts.PromptConfig(memory_size=64, memory_length=2, top_k=3, weighting='softmax')
  g, g_emb, indices = _grads(cfg)
  retrieved = np.zeros(64, bool)
  retrieved[indices.ravel()] = True
  np.testing.assert_array_equal(_row_nonzero(g['values']), retrieved)
  # The all-padding last row has a zero query, so its keys get no cosine gradient.
  retrieved_by_real = np.zeros(64, bool)
  retrieved_by_real[indices[:-1].ravel()] = True
  np.testing.assert_array_equal(_row_nonzero(g['keys']), retrieved_by_real)
  assert not np.any(g_emb), 'query_stop_gradient=True must block the query gradient'


def test_query_gradient_flows_without_stop_gradient():
  cfg = prompts.PromptConfig(memory_size=64, memory_length=2, top_k=3,
                             query_stop_gradient=False)
  _, g_emb, _ = _grads(cfg)
  _, mask = _inputs(6, seed=1)
  mask = np.asarray(mask, bool)
  # Mean pooling: every real token of a row gets gradient, padding none.
  assert np.all(np.any(g_emb != 0, axis=-1)[mask])
  assert not np.any(g_emb[~mask])


def test_key_loss_is_sown_weighted_and_pulls_keys():
  cfg = prompts.PromptConfig(memory_size=32, memory_length=2, top_k=2, weighting='none',
                             key_loss_weight=0.5)
  module, variables, emb, mask, table = _bank(cfg, 5)
  _, state = module.apply(variables, emb, mask, table, mutable=[prompts.RETRIEVAL_COLLECTION])
  got = state[prompts.RETRIEVAL_COLLECTION]
  keys = np.asarray(nn.unbox(variables['params']['keys']), np.float64)
  q = _np_query(emb, mask, 'mean')
  idx = np.asarray(got['indices'][0])
  kk = keys[idx]
  cos = np.einsum('bd,bkd->bk', q, kk) / (
      np.linalg.norm(q, axis=-1)[:, None] * np.linalg.norm(kk, axis=-1) + 1e-30)
  real = np.asarray(mask).any(1)
  want = 0.5 * np.mean((1 - cos)[real])
  np.testing.assert_allclose(got['key_loss'][0], want, rtol=1e-5)
  g, _, indices = _grads(cfg, batch=5)
  retrieved = np.zeros(32, bool)
  retrieved[indices[real].ravel()] = True
  np.testing.assert_array_equal(_row_nonzero(g['keys']), retrieved)


def test_key_loss_is_zero_when_off():
  cfg = prompts.PromptConfig(memory_size=16, memory_length=2, top_k=2)
  module, variables, emb, mask, table = _bank(cfg, 3)
  _, state = module.apply(variables, emb, mask, table, mutable=[prompts.RETRIEVAL_COLLECTION])
  assert float(state[prompts.RETRIEVAL_COLLECTION]['key_loss'][0]) == 0.0


def test_sown_values_are_replaced_not_appended():
  cfg = prompts.PromptConfig(memory_size=16, memory_length=2, top_k=2)
  emb, mask = _inputs(3)
  table = _table()
  module = prompts.MemoryBank(cfg, D)
  variables = module.init(jax.random.key(0), emb, mask, table)
  _, state = module.apply(variables, emb, mask, table, mutable=[prompts.RETRIEVAL_COLLECTION])
  assert all(len(v) == 1 for v in state[prompts.RETRIEVAL_COLLECTION].values())


def test_sampled_vocab_init_and_logical_axes():
  cfg = prompts.PromptConfig(soft_prompt_length=6, memory_size=12, memory_length=3, top_k=2,
                             init_vocab_size=20)
  table = np.asarray(_table())
  emb, mask = _inputs(2)
  bank = prompts.MemoryBank(cfg, D).init(jax.random.key(0), emb, mask, table)['params']
  soft = prompts.SoftPrompt(cfg, D).init(jax.random.key(1), 2, table)['params']
  assert nn.get_partition_spec(bank) == {
      'keys': jax.sharding.PartitionSpec('memory', 'embed'),
      'values': jax.sharding.PartitionSpec('memory', 'memory_length', 'embed')}
  assert nn.get_partition_spec(soft) == {
      'prompt': jax.sharding.PartitionSpec('prompt', 'embed')}
  values = np.asarray(nn.unbox(bank['values']))
  prompt = np.asarray(nn.unbox(soft['prompt']))
  allowed = table[:20]
  for row in np.concatenate([values.reshape(-1, D), prompt]):
    assert np.any(np.all(row == allowed, axis=1)), 'rows must be embedding rows of id < 20'
  np.testing.assert_allclose(nn.unbox(bank['keys']), values.mean(1), rtol=1e-6)


def test_uniform_init_and_soft_prompt_output():
  cfg = prompts.PromptConfig(soft_prompt_length=5, soft_prompt_init='uniform',
                             soft_prompt_init_scale=0.25, memory_size=8, top_k=2,
                             memory_init='uniform', memory_init_scale=0.1)
  table = _table()
  module = prompts.SoftPrompt(cfg, D)
  params = module.init(jax.random.key(0), 3, table)['params']
  prompt = np.asarray(nn.unbox(params['prompt']))
  assert prompt.shape == (5, D) and np.abs(prompt).max() <= 0.25 and prompt.std() > 0.05
  out = module.apply({'params': params}, 3, table)
  assert out.shape == (3, 5, D) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, np.broadcast_to(prompt, (3, 5, D)))
  emb, mask = _inputs(2)
  bank = prompts.MemoryBank(cfg, D).init(jax.random.key(0), emb, mask, table)['params']
  for name in ('keys', 'values'):
    assert np.abs(np.asarray(nn.unbox(bank[name]))).max() <= 0.1


def test_disabled_prompts_create_no_parameters():
  cfg = prompts.PromptConfig(soft_prompt_length=0, memory_size=0)
  assert cfg.prefix_length == 0 and cfg.retrieved_length == 0
  table = _table()
  emb, mask = _inputs(3)
  soft = prompts.SoftPrompt(cfg, D)
  bank = prompts.MemoryBank(cfg, D)
  assert soft.init(jax.random.key(0), 3, table) == {}
  assert bank.init(jax.random.key(0), emb, mask, table) == {}
  assert soft.apply({}, 3, table).shape == (3, 0, D)
  assert bank.apply({}, emb, mask, table).shape == (3, 0, D)
  assert prompts.PromptConfig(soft_prompt_length=20, memory_size=0).prefix_length == 20
  assert prompts.PromptConfig().prefix_length == 20 + 4 * 5


@pytest.mark.parametrize('kwargs,match', [
    (dict(memory_size=4, top_k=5), 'top_k=5 exceeds memory_size=4'),
    (dict(memory_size=4, top_k=0), 'top_k=0 must be >= 1'),
    (dict(pooling='sum'), "pooling='sum'"),
    (dict(similarity='l2'), "similarity='l2'"),
    (dict(weighting='hard'), "weighting='hard'"),
    (dict(soft_prompt_init='zeros'), "soft_prompt_init='zeros'"),
    (dict(memory_init='zeros'), "memory_init='zeros'"),
    (dict(soft_prompt_length=-1), 'soft_prompt_length=-1 is negative'),
    (dict(memory_length=0), 'memory_length=0 must be >= 1'),
    (dict(temperature=0.), 'temperature=0.0 must be > 0'),
    (dict(key_loss_weight=-1.), 'key_loss_weight=-1.0'),
    (dict(max_encoder_length=30), r'prefix alone .* = 40\) exceeds max_encoder_length=30'),
])
def test_bad_static_configs_raise_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    prompts.PromptConfig(**kwargs)


def test_validate_length():
  # Packing is the model's check: test_models.test_validate_features_packing_and_length.
  cfg = prompts.PromptConfig(soft_prompt_length=10, memory_size=16, memory_length=5, top_k=2,
                             max_encoder_length=64)
  cfg.validate(max_input_length=44)
  with pytest.raises(ValueError, match=r'10 \+ 10 \+ 45 = 65 exceeds max_encoder_length=64'):
    cfg.validate(max_input_length=45)
  # No limit configured means no length check.
  prompts.PromptConfig().validate(max_input_length=100000)
  # top_k > M is also caught by validate on a config built around __post_init__.
  bad = prompts.PromptConfig(memory_size=8, top_k=2)
  object.__setattr__(bad, 'top_k', 9)
  with pytest.raises(ValueError, match='top_k=9 exceeds memory_size=8'):
    bad.validate()


def test_wrong_embedding_width_is_a_clear_error():
  cfg = prompts.PromptConfig(soft_prompt_length=2, memory_size=8, top_k=2)
  with pytest.raises(ValueError, match=r'token embedding table \[V, 16\]'):
    prompts.SoftPrompt(cfg, D).init(jax.random.key(0), 2, jnp.zeros((10, 8)))


# ----------------------------------------------------------------------------
# Wired into the network: special cases and a hand-built forward.


def _tiny_t5(vocab=VOCAB):
  return network.T5Config(vocab_size=vocab, emb_dim=D, num_heads=2, head_dim=8, mlp_dim=32,
                          num_encoder_layers=2, num_decoder_layers=1,
                          relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _t5_batch(batch=4, enc_len=7, dec_len=3):
  rng = np.random.RandomState(0)
  enc = rng.randint(1, VOCAB, (batch, enc_len))
  for b in range(batch):
    enc[b, b + 2:] = 0
  target = rng.randint(1, VOCAB, (batch, dec_len))
  dec_in = np.concatenate([np.zeros((batch, 1), int), target[:, :-1]], axis=1)
  return dict(encoder_input_tokens=jnp.asarray(enc, jnp.int32),
              decoder_input_tokens=jnp.asarray(dec_in, jnp.int32),
              decoder_target_tokens=jnp.asarray(target, jnp.int32))


@pytest.mark.slow
def test_no_prompt_config_is_plain_t5_bit_for_bit():
  batch = _t5_batch()
  plain = network.Transformer(_tiny_t5())
  zero = network.Transformer(_tiny_t5(), prompts.PromptPrefix(
      prompts.PromptConfig(soft_prompt_length=0, memory_size=0)))
  params = plain.init(jax.random.key(0), **batch, enable_dropout=False)['params']
  zero_params = zero.init(jax.random.key(0), **batch, enable_dropout=False)['params']
  assert jax.tree.structure(zero_params) == jax.tree.structure(params)
  run = lambda m: jax.jit(lambda p: m.apply({'params': p}, **batch, enable_dropout=False))
  np.testing.assert_array_equal(run(zero)(params), run(plain)(params))


def _extended_plain_forward(params, prefix_rows, batch):
  """Plain T5 whose vocabulary is extended by one id per prefix row.

  ``prefix_rows`` [B, P, d] become embedding rows V + b·P + j; the encoder input is
  those ids followed by the tokens, so the plain network concatenates the prompt
  and (ids > 0) extends the masks exactly as prompt tuning prescribes. Logits of
  the extra ids come from zero kernel columns and are dropped.
  """
  b, p, d = prefix_rows.shape
  params = nn.unbox(params)
  params = jax.tree.map(lambda x: x, params)
  params['token_embedder']['embedding'] = jnp.concatenate(
      [params['token_embedder']['embedding'], prefix_rows.reshape(b * p, d)])
  params['decoder']['logits_dense']['kernel'] = jnp.concatenate(
      [params['decoder']['logits_dense']['kernel'], jnp.zeros((d, b * p))], axis=1)
  ids = VOCAB + jnp.arange(b * p, dtype=jnp.int32).reshape(b, p)
  ext = dict(batch, encoder_input_tokens=jnp.concatenate(
      [ids, batch['encoder_input_tokens']], axis=1))
  model = network.Transformer(_tiny_t5(VOCAB + b * p))
  return model.apply({'params': params}, **ext, enable_dropout=False)[..., :VOCAB]


@pytest.mark.slow
def test_prompt_tuning_equals_hand_built_concatenation():
  batch = _t5_batch()
  cfg = prompts.PromptConfig(soft_prompt_length=4, memory_size=0)
  model = network.Transformer(_tiny_t5(), prompts.PromptPrefix(cfg))
  params = model.init(jax.random.key(0), **batch, enable_dropout=False)['params']
  got = jax.jit(lambda p: model.apply({'params': p}, **batch, enable_dropout=False))(params)
  prompt = nn.unbox(params['encoder']['soft_prompt']['prompt'])
  want = jax.jit(_extended_plain_forward)(
      params, jnp.broadcast_to(prompt, (4,) + prompt.shape), batch)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_spt_equals_hand_built_concatenation_of_soft_and_retrieved_prompts():
  batch = _t5_batch()
  cfg = prompts.PromptConfig(soft_prompt_length=3, memory_size=16, memory_length=2, top_k=2)
  model = network.Transformer(_tiny_t5(), prompts.PromptPrefix(cfg))
  params = model.init(jax.random.key(0), **batch, enable_dropout=False)['params']
  got, state = jax.jit(lambda p: model.apply(
      {'params': p}, **batch, enable_dropout=False, mutable=['retrieval']))(params)
  bank = state['retrieval']['encoder']['memory_bank']
  indices, scores = bank['indices'][0], bank['scores'][0]
  # Brute-force retrieval from the embedded discrete prompt.
  table = np.asarray(nn.unbox(params['token_embedder']['embedding']))
  tokens = np.asarray(batch['encoder_input_tokens'])
  keys = np.asarray(nn.unbox(params['encoder']['memory_bank']['keys']))
  want_scores, want_idx = _np_retrieve(_np_query(table[tokens], tokens > 0, 'mean'), keys, 2,
                                       'cosine')
  np.testing.assert_array_equal(indices, want_idx)
  values = np.asarray(nn.unbox(params['encoder']['memory_bank']['values']))
  weights = 2 * np.asarray(jax.nn.softmax(jnp.asarray(want_scores) / cfg.temperature, axis=-1))
  retrieved = (values[want_idx] * weights[:, :, None, None]).reshape(4, 4, D)
  prompt = np.asarray(nn.unbox(params['encoder']['soft_prompt']['prompt']))
  prefix = np.concatenate([np.broadcast_to(prompt, (4, 3, D)), retrieved], axis=1)
  want = jax.jit(_extended_plain_forward)(params, jnp.asarray(prefix, jnp.float32), batch)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(scores, want_scores, atol=1e-6)
