"""Tests of spt_jax.network: T5X tree and axes, KV-cache decoding, packing, mesh sharding, errors.

Numerical parity with transformers is in test_network_parity.py.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import checkpoint_readers
from spt_jax import checkpoints
from spt_jax import network
from spt_jax import partitioning

# Generous: the shared 2-core machine can be very busy; this only catches hangs.
pytestmark = pytest.mark.timeout(600)

GATED = network.T5Config(
    vocab_size=64, emb_dim=8, num_heads=4, head_dim=4, mlp_dim=16, num_encoder_layers=2,
    num_decoder_layers=3, mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
    relative_attention_num_buckets=8, relative_attention_max_distance=16)
TIED_RELU = dataclasses.replace(GATED, mlp_activations=('relu',), logits_via_embedding=True,
                                num_decoder_layers=2)


def _init(config, batch=2, enc_len=6, dec_len=5, abstract=False):
  model = network.Transformer(config)
  init = lambda: model.init(jax.random.PRNGKey(0), np.ones((batch, enc_len), np.int32),
                            np.ones((batch, dec_len), np.int32),
                            np.ones((batch, dec_len), np.int32), enable_dropout=False)
  variables = jax.eval_shape(init) if abstract else jax.jit(init)()
  return model, variables['params']


def _rows(rng, n, length, lengths):
  tokens = rng.randint(2, 64, size=(n, length)).astype(np.int32)
  for row, k in enumerate(lengths):
    tokens[row, k - 1] = 1
    tokens[row, k:] = 0
  return tokens


def _shift_right(targets):
  return np.concatenate([np.zeros((targets.shape[0], 1), targets.dtype), targets[:, :-1]], 1)


# ----------------------------------------------------------------------------- tree and axes


@pytest.mark.parametrize('config', [GATED, TIED_RELU], ids=['gated', 'tied_relu'])
def test_param_tree_and_logical_axes_are_t5x(config):
  _, params = _init(config, abstract=True)
  flat = checkpoints.flatten(params)
  shapes = {k: tuple(v.unbox().shape) for k, v in flat.items()}
  assert shapes == checkpoint_readers.t5x_param_shapes(config)
  assert all(v.unbox().dtype == jnp.float32 for v in flat.values())
  axes = {k: tuple(v.names) for k, v in flat.items()}
  # T5X's logical axis names for each kind of parameter.
  expected = {
      'token_embedder/embedding': ('vocab', 'embed'),
      'encoder/relpos_bias/rel_embedding': ('heads', 'relpos_buckets'),
      'encoder/layers_0/attention/query/kernel': ('embed', 'joined_kv'),
      'encoder/layers_0/attention/out/kernel': ('joined_kv', 'embed'),
      'encoder/layers_1/pre_mlp_layer_norm/scale': ('embed',),
      'decoder/layers_1/encoder_decoder_attention/value/kernel': ('embed', 'joined_kv'),
      'decoder/layers_0/mlp/wo/kernel': ('mlp', 'embed'),
      'decoder/decoder_norm/scale': ('embed',),
  }
  expected['decoder/layers_0/mlp/' + ('wi' if len(config.mlp_activations) == 1 else 'wi_1')
           + '/kernel'] = ('embed', 'mlp')
  if not config.logits_via_embedding:
    expected['decoder/logits_dense/kernel'] = ('embed', 'vocab')
  for name, names in expected.items():
    assert axes[name] == names, name


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize('config', [GATED, TIED_RELU], ids=['gated', 'tied_relu'])
def test_incremental_decoding_matches_full_forward(config):
  max_len = 6
  model, params = _init(config)
  params = nn.unbox(params)
  rng = np.random.RandomState(1)
  enc = _rows(rng, 2, 7, (7, 3))
  tgt = rng.randint(2, 64, size=(2, max_len)).astype(np.int32)  # no padding: every step used
  dec_in = _shift_right(tgt)

  full = jax.jit(lambda p: model.apply({'params': p}, enc, dec_in, tgt,
                                       enable_dropout=False))(params)
  encoded = model.apply({'params': params}, enc, enable_dropout=False,
                        method=network.Transformer.encode)
  # T5X's recipe: a decode=True pass on full-length dummies creates the cache.
  _, variables = model.apply({'params': params}, np.ones_like(enc), np.ones_like(tgt),
                             np.ones_like(tgt), decode=True, enable_dropout=False,
                             mutable=['cache'])
  cache = variables['cache']

  @jax.jit
  def step(cache, token):
    logits, new_vars = model.apply(
        {'params': params, 'cache': cache}, encoded, enc, token, token, enable_dropout=False,
        decode=True, max_decode_length=max_len, mutable=['cache'],
        method=network.Transformer.decode)
    return logits, new_vars['cache']

  for i in range(max_len):
    logits, cache = step(cache, dec_in[:, i:i + 1])
    np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, i]), atol=1e-5,
                               rtol=1e-5, err_msg=f'step {i}')


def test_decode_step_with_several_tokens_is_an_error():
  model, params = _init(GATED, abstract=True)
  params = nn.unbox(params)
  enc = np.ones((2, 6), np.int32)
  tgt = np.ones((2, 5), np.int32)

  def two_token_step(params):
    # Shapes only (eval_shape): the error is raised while tracing.
    _, variables = model.apply({'params': params}, enc, tgt, tgt, decode=True,
                               enable_dropout=False, mutable=['cache'])
    encoded = model.apply({'params': params}, enc, enable_dropout=False,
                          method=network.Transformer.encode)
    return model.apply({'params': params, 'cache': variables['cache']}, encoded, enc,
                       tgt[:, :2], tgt[:, :2], enable_dropout=False, decode=True,
                       max_decode_length=5, mutable=['cache'],
                       method=network.Transformer.decode)

  with pytest.raises(ValueError, match='one token per step'):
    jax.eval_shape(two_token_step, params)


# ----------------------------------------------------------------------------- packing


def test_packed_equals_separate():
  model, params = _init(GATED)
  params = nn.unbox(params)
  rng = np.random.RandomState(2)
  # Two examples: inputs of length 4 and 3, targets of length 3 and 2 (EOS-terminated).
  enc_a, enc_b = _rows(rng, 1, 4, (4,))[0], _rows(rng, 1, 3, (3,))[0]
  tgt_a, tgt_b = _rows(rng, 1, 3, (3,))[0], _rows(rng, 1, 2, (2,))[0]
  pad = lambda x, n: np.pad(x, (0, n - len(x)))
  packed_enc = pad(np.concatenate([enc_a, enc_b]), 9)[None]
  enc_seg = pad(np.array([1] * 4 + [2] * 3), 9)[None]
  packed_tgt = pad(np.concatenate([tgt_a, tgt_b]), 6)[None]
  dec_seg = pad(np.array([1] * 3 + [2] * 2), 6)[None]
  # The feature converter restarts the shifted decoder input at each segment.
  packed_dec_in = pad(np.concatenate([_shift_right(tgt_a[None])[0],
                                      _shift_right(tgt_b[None])[0]]), 6)[None]

  apply = jax.jit(lambda *a, **k: model.apply({'params': params}, *a, enable_dropout=False,
                                              **k))
  packed = np.asarray(apply(packed_enc, packed_dec_in, packed_tgt,
                            encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg))
  # Separately: one padded batch of the two examples (padding does not change real positions).
  sep_enc = np.stack([enc_a, pad(enc_b, 4)])
  sep_tgt = np.stack([tgt_a, pad(tgt_b, 3)])
  separate = np.asarray(apply(sep_enc, _shift_right(sep_tgt), sep_tgt))
  np.testing.assert_allclose(packed[0, :3], separate[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[0, 3:5], separate[1, :2], atol=1e-5, rtol=1e-5)
  # Without segment ids the second example would see the first: the test can fail.
  leaky = np.asarray(apply(packed_enc, packed_dec_in, packed_tgt))
  assert np.abs(leaky[0, 3:5] - separate[1, :2]).max() > 1e-4


# ----------------------------------------------------------------------------- mesh


def test_sharded_forward_equals_single_device():
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices (tests/conftest.py sets 8 fake CPU devices)')
  model = network.Transformer(GATED)
  rng = np.random.RandomState(3)
  enc = _rows(rng, 4, 8, (8, 5, 3, 1))
  tgt = _rows(rng, 4, 5, (5, 4, 2, 1))
  dec_in = _shift_right(tgt)
  init_fn = lambda: model.init(jax.random.PRNGKey(0), enc, dec_in, tgt,
                               enable_dropout=False)['params']
  boxed = init_fn()
  params = nn.unbox(boxed)

  def forward(p, enc, dec_in, tgt):
    return model.apply({'params': p}, enc, dec_in, tgt, enable_dropout=False)

  single = np.asarray(jax.jit(forward)(params, enc, dec_in, tgt))

  mesh = partitioning.create_mesh(mesh_shape=(2, 4))
  shardings = partitioning.param_shardings(jax.eval_shape(init_fn), mesh)
  sharded_params = jax.device_put(params, shardings)
  # The model axis really splits something (e.g. mlp kernels over 4 devices).
  wi = sharded_params['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert wi.addressable_shards[0].data.shape == (8, 4)
  batch = partitioning.shard_batch({'enc': enc, 'dec_in': dec_in, 'tgt': tgt}, mesh)
  with partitioning.activate(mesh):
    out = jax.jit(forward)(sharded_params, batch['enc'], batch['dec_in'], batch['tgt'])
  np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- errors


def test_unsupported_activation_is_named():
  with pytest.raises(ValueError, match=r"Unsupported mlp_activations \['tanh'\]"):
    network.T5Config(mlp_activations=('tanh', 'linear'))


def test_prefix_must_have_length_and_call():
  # The model refuses packing with a prefix (test_models.test_packing_with_prompts_is_refused).
  with pytest.raises(TypeError, match='takes an object with `length` and `__call__`'):
    network.Transformer(GATED, prefix=(2,)).init(
        jax.random.PRNGKey(0), *(np.ones((1, 4), np.int32),) * 3, enable_dropout=False)


def test_init_scales_match_t5x():
  """T5X initialises 2-D kernels: fan-in of query/key/value is emb, not emb * heads."""
  config = dataclasses.replace(GATED, emb_dim=256, num_heads=8, head_dim=32, mlp_dim=256,
                               vocab_size=128, num_encoder_layers=1, num_decoder_layers=1)
  model = network.Transformer(config)
  tokens = np.ones((1, 4), np.int32)
  params = nn.unbox(jax.jit(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                                enable_dropout=False))()['params'])
  layer = params['encoder']['layers_0']
  emb, joined = config.emb_dim, config.num_heads * config.head_dim
  expected = {
      # T5 folds 1/sqrt(head_dim) into the query init instead of scaling logits.
      'attention/query/kernel': 1 / np.sqrt(emb) / np.sqrt(config.head_dim),
      'attention/key/kernel': 1 / np.sqrt(emb),
      'attention/value/kernel': 1 / np.sqrt(emb),
      'attention/out/kernel': 1 / np.sqrt(joined),
  }
  flat = checkpoints.flatten(layer)
  for name, std in expected.items():
    assert abs(float(flat[name].std()) / std - 1) < 0.05, (name, float(flat[name].std()), std)
  # Truncated normal (T5X's DenseGeneral default) has std 1/sqrt(fan_in) too.
  assert abs(float(flat['mlp/wi_0/kernel'].std()) * np.sqrt(emb) - 1) < 0.05
  assert abs(float(flat['mlp/wo/kernel'].std()) * np.sqrt(config.mlp_dim) - 1) < 0.05
