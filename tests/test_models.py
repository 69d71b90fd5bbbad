"""Tests for spt_jax.models: loss, scoring and prediction on tiny T5s (CPU, seconds)."""
import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import decoding
from spt_jax import models
from spt_jax import network
from spt_jax import prompts

TINY = network.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                        num_encoder_layers=2, num_decoder_layers=2)
SPT = prompts.PromptConfig(soft_prompt_length=3, memory_size=8, memory_length=2, top_k=2,
                           init_vocab_size=32)
EOS = 1


def _make_batch(inputs, targets, enc_len=7, dec_len=5):
  """seqio EncDecFeatureConverter-style batch (unpacked) from lists of token lists."""
  b = len(inputs)
  enc = np.zeros((b, enc_len), np.int32)
  tgt = np.zeros((b, dec_len), np.int32)
  for i, (x, y) in enumerate(zip(inputs, targets)):
    enc[i, :len(x)] = x
    tgt[i, :len(y)] = y
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return {
      'encoder_input_tokens': jnp.asarray(enc),
      'decoder_input_tokens': jnp.asarray(dec_in),
      'decoder_target_tokens': jnp.asarray(tgt),
      'decoder_loss_weights': jnp.asarray((tgt > 0).astype(np.int32)),
  }


BATCH = dict(
    inputs=[[5, 6, 7, 8, EOS], [9, 10, EOS], [11, 12, 13, 14, 15, 16, EOS]],
    targets=[[3, 4, EOS], [20, 21, 22, 23, EOS], [17, EOS]])


def _init(net, batch, seed=0):
  init = jax.jit(functools.partial(net.init, enable_dropout=False))
  variables = init(jax.random.PRNGKey(seed), batch['encoder_input_tokens'],
                   batch['decoder_input_tokens'], batch['decoder_target_tokens'])
  return flax.core.unfreeze(nn.meta.unbox(variables['params']))


@pytest.fixture(scope='module')
def plain():
  net = network.Transformer(TINY)
  batch = _make_batch(**BATCH)
  return net, _init(net, batch), batch


@pytest.fixture(scope='module')
def spt():
  net = network.Transformer(TINY, prompt_config=SPT)
  batch = _make_batch(**BATCH)
  return net, _init(net, batch, seed=1), batch


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ------------------------------------------------------------------------------- loss
def test_loss_matches_hand_computed_cross_entropy(plain):
  net, params, batch = plain
  logits = np.asarray(net.apply({'params': params}, batch['encoder_input_tokens'],
                                batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                                enable_dropout=False), np.float64)
  tgt = np.asarray(batch['decoder_target_tokens'])
  w = (tgt > 0).astype(np.float64)
  logp = _np_log_softmax(logits)
  nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  log_z = np.log(np.exp(logits).sum(-1))
  z = 1e-4 * log_z ** 2
  ref_ce, ref_z = (nll * w).sum(), (z * w).sum()
  acc = ((logits.argmax(-1) == tgt) * w).sum() / w.sum()

  model = models.EncoderDecoderModel(net)  # T5X default: summed loss.
  loss, m = jax.jit(model.loss_fn)(params, batch, None)
  np.testing.assert_allclose(float(loss), ref_ce + ref_z, rtol=1e-5)
  np.testing.assert_allclose(float(m['z_loss']), ref_z, rtol=1e-5)
  np.testing.assert_allclose(float(m['cross_ent_loss']), ref_ce, rtol=1e-5)
  np.testing.assert_allclose(float(m['cross_ent_loss_per_token']), ref_ce / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(m['token_accuracy']), acc, rtol=1e-6)
  assert float(m['num_tokens']) == w.sum() == 10
  assert int(m['num_examples']) == 3
  assert float(m['key_loss']) == 0.0 and 'retrieval_indices' not in m

  # Mean per real token; per-sequence average.
  model = models.EncoderDecoderModel(net, loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')
  loss, _ = jax.jit(model.loss_fn)(params, batch, None)
  np.testing.assert_allclose(float(loss), (ref_ce + ref_z) / w.sum(), rtol=1e-5)
  model = models.EncoderDecoderModel(net, loss_normalizing_factor='AVERAGE_PER_SEQUENCE')
  loss, _ = jax.jit(model.loss_fn)(params, batch, None)
  per_row = ((nll + z) * w).sum(-1) / w.sum(-1)
  np.testing.assert_allclose(float(loss), per_row.mean(), rtol=1e-5)

  # Label smoothing: T5X's smoothed targets minus their entropy.
  ls, v = 0.1, TINY.vocab_size
  soft = np.full(logits.shape, ls / (v - 1))
  np.put_along_axis(soft, tgt[..., None], 1 - ls, -1)
  const = -((1 - ls) * math.log(1 - ls) + ls * math.log(ls / (v - 1)))
  ref = (((-(soft * logp).sum(-1)) + z - const) * w).sum()
  model = models.EncoderDecoderModel(net, label_smoothing=ls)
  loss, _ = jax.jit(model.loss_fn)(params, batch, None)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_loss_weights_and_dropout(plain):
  net, params, batch = plain
  model = models.EncoderDecoderModel(net, z_loss=0.0)
  weighted = dict(batch, decoder_loss_weights=batch['decoder_loss_weights'].at[0].set(0))
  fn = jax.jit(model.loss_fn)
  full, _ = fn(params, batch, None)
  part, m = fn(params, weighted, None)
  assert float(m['num_tokens']) == 7 and int(m['num_examples']) == 2
  row0 = float(full - part)
  assert row0 > 0
  # Dropout only with an rng, and a different rng gives a different loss.
  drop_net = network.Transformer(dataclasses_replace(TINY, dropout_rate=0.3))
  fn = jax.jit(models.EncoderDecoderModel(drop_net, z_loss=0.0).loss_fn)
  l0, _ = fn(params, batch, None)
  l1, _ = fn(params, batch, jax.random.PRNGKey(1))
  l2, _ = fn(params, batch, jax.random.PRNGKey(2))
  np.testing.assert_allclose(float(l0), float(full), rtol=1e-6)
  assert float(l1) != float(l0) and float(l1) != float(l2)


def dataclasses_replace(cfg, **kw):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(cfg, **kw)


def test_spt_key_loss_and_retrieval_metrics(spt):
  net, params, batch = spt
  model = models.EncoderDecoderModel(net)
  loss, m = jax.jit(model.loss_fn)(params, batch, None)
  assert float(m['key_loss']) == 0.0
  assert m['retrieval_indices'].shape == (3, SPT.top_k)
  assert m['retrieval_indices'].dtype == jnp.int32
  assert m['retrieval_scores'].shape == (3, SPT.top_k)
  assert np.all((np.asarray(m['retrieval_indices']) >= 0)
                & (np.asarray(m['retrieval_indices']) < SPT.memory_size))

  cfg = dataclasses_replace(SPT, key_loss_weight=0.5)
  net_kl = network.Transformer(TINY, prompt_config=cfg)
  model_kl = models.EncoderDecoderModel(net_kl)
  loss_kl, m_kl = jax.jit(model_kl.loss_fn)(params, batch, None)
  assert float(m_kl['key_loss']) > 0.0
  # Same params and retrieval: the only difference is the key loss.
  np.testing.assert_allclose(float(loss_kl), float(loss) + float(m_kl['key_loss']), rtol=1e-5)
  np.testing.assert_allclose(float(loss_kl),
                             float(m_kl['cross_ent_loss'] + m_kl['z_loss'] + m_kl['key_loss']),
                             rtol=1e-5)
  # The key loss sends a gradient to the memory keys even with hard retrieval.
  hard = network.Transformer(TINY, prompt_config=dataclasses_replace(cfg, weighting='none'))
  grads = jax.jit(jax.grad(lambda p: models.EncoderDecoderModel(hard).loss_fn(
      p, batch, None)[0]))(params)
  key_grad = np.asarray(grads['encoder']['memory_bank']['keys'])
  assert np.all(np.isfinite(key_grad)) and np.abs(key_grad).sum() > 0


def test_eval_fn_is_loss_without_dropout(plain):
  net, params, batch = plain
  model = models.EncoderDecoderModel(net)
  m = jax.jit(model.eval_fn)(params, batch)
  loss, _ = jax.jit(model.loss_fn)(params, batch, None)
  np.testing.assert_allclose(float(m['loss']), float(loss), rtol=1e-6)
