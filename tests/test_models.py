"""Tests for spt_jax.models: loss, scoring and prediction on tiny T5s (CPU, seconds)."""
import dataclasses
import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import models
from spt_jax import network
from spt_jax import prompts

TINY = network.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                        num_encoder_layers=1, num_decoder_layers=1)
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
  net = network.Transformer(TINY, prompts.PromptPrefix(SPT))
  batch = _make_batch(**BATCH)
  return net, _init(net, batch, seed=1), batch


def test_prompt_api_of_the_model(plain, spt):
  plain_model = models.EncoderDecoderModel(plain[0])
  assert plain_model.prompt_config is None and plain_model.prefix_length == 0
  assert not plain_model.has_memory and plain_model.memory_size == 0
  assert not plain_model.tracks_usage
  assert plain_model.retrieval_metrics({'retrieval_indices': jnp.zeros((2, 2), jnp.int32)}) == {}
  model = models.EncoderDecoderModel(spt[0])
  assert model.prompt_config == SPT and model.prefix_length == SPT.prefix_length == 7
  assert model.has_memory and model.memory_size == 8 and not model.tracks_usage
  tuning = models.EncoderDecoderModel(network.Transformer(
      TINY, prompts.PromptPrefix(dataclasses.replace(SPT, memory_size=0))))
  assert tuning.prefix_length == 3 and not tuning.has_memory and tuning.memory_size == 0
  # The retrieval query is the bank's (no retrieval); [B, d] float32.
  query = model.retrieval_query(spt[1], spt[2]['encoder_input_tokens'])
  assert query.shape == (3, TINY.emb_dim) and query.dtype == jnp.float32
  with pytest.raises(ValueError, match='needs a network with a memory bank'):
    tuning.retrieval_query(plain[1], spt[2]['encoder_input_tokens'])


def test_validate_features_packing_and_length():
  cfg = prompts.PromptConfig(soft_prompt_length=10, memory_size=16, memory_length=5, top_k=2,
                             max_encoder_length=64)
  model = models.EncoderDecoderModel(network.Transformer(TINY, prompts.PromptPrefix(cfg)))
  model.validate_features({'inputs': 44, 'targets': 4}, pack=False)
  with pytest.raises(ValueError, match='pack=True cannot be used with SPT / prompt-tuning'):
    model.validate_features({'inputs': 44, 'targets': 4}, pack=True)
  with pytest.raises(ValueError, match=r'10 \+ 10 \+ 45 = 65 exceeds max_encoder_length=64'):
    model.validate_features({'inputs': 45, 'targets': 4})
  # Plain T5 (no prompt, or prompts of length 0) may pack.
  models.EncoderDecoderModel(network.Transformer(TINY)).validate_features({'inputs': 512},
                                                                          pack=True)
  zero = prompts.PromptPrefix(prompts.PromptConfig(soft_prompt_length=0, memory_size=0))
  models.EncoderDecoderModel(network.Transformer(TINY, zero)).validate_features(
      {'inputs': 512}, pack=True)


def test_packing_with_prompts_is_refused():
  config = prompts.PromptConfig(soft_prompt_length=2, memory_size=0)
  model = models.EncoderDecoderModel(network.Transformer(TINY, prompts.PromptPrefix(config)))
  tokens = jnp.ones((1, 4), jnp.int32)
  batch = dict(encoder_input_tokens=tokens, decoder_input_tokens=tokens,
               decoder_target_tokens=tokens, encoder_segment_ids=tokens,
               decoder_segment_ids=tokens)
  with pytest.raises(ValueError, match='pack=False'):
    model.loss_fn({}, batch, None)


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
  drop_net = network.Transformer(dataclasses.replace(TINY, dropout_rate=0.3))
  fn = jax.jit(models.EncoderDecoderModel(drop_net, z_loss=0.0).loss_fn)
  l0, _ = fn(params, batch, None)
  l1, _ = fn(params, batch, jax.random.PRNGKey(1))
  l2, _ = fn(params, batch, jax.random.PRNGKey(2))
  np.testing.assert_allclose(float(l0), float(full), rtol=1e-6)
  assert float(l1) != float(l0) and float(l1) != float(l2)


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

  cfg = dataclasses.replace(SPT, key_loss_weight=0.5)
  net_kl = network.Transformer(TINY, prompts.PromptPrefix(cfg))
  model_kl = models.EncoderDecoderModel(net_kl)
  loss_kl, m_kl = jax.jit(model_kl.loss_fn)(params, batch, None)
  assert float(m_kl['key_loss']) > 0.0
  # Same params and retrieval: the only difference is the key loss.
  np.testing.assert_allclose(float(loss_kl), float(loss) + float(m_kl['key_loss']), rtol=1e-5)
  np.testing.assert_allclose(float(loss_kl),
                             float(m_kl['cross_ent_loss'] + m_kl['z_loss'] + m_kl['key_loss']),
                             rtol=1e-5)
  # The key loss sends a gradient to the memory keys even with hard retrieval.
  hard = network.Transformer(
      TINY, prompts.PromptPrefix(dataclasses.replace(cfg, weighting='none')))
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


# ------------------------------------------------------------------------------- scoring
def test_score_batch_matches_pytorch_t5(tmp_path):
  """Rank-classification rows with padding; prompts off; weights from transformers' T5."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from spt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_cfg = transformers.T5Config(
      vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
      num_heads=2, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  hf = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  hf.save_pretrained(tmp_path)
  cfg, params = checkpoints.load_hf_t5(tmp_path)
  net = network.Transformer(cfg)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  # One example, three answer choices of different lengths (T5's rank-classification rows),
  # plus a second example with a shorter input.
  batch = _make_batch(
      inputs=[[5, 6, 7, 8, EOS]] * 3 + [[9, 10, EOS]],
      targets=[[3, EOS], [20, 21, 22, EOS], [17, 18, 19, 30, EOS], [4, 4, EOS]],
      enc_len=8, dec_len=6)
  model = models.EncoderDecoderModel(net)
  scores = np.asarray(jax.jit(model.score_batch)(params, batch))
  normed = np.asarray(jax.jit(functools.partial(model.score_batch, length_normalize=True))(
      params, batch))
  # The evaluator's form: each distinct input encoded once (two here), rows index them.
  distinct = dict(batch, encoder_input_tokens=batch['encoder_input_tokens'][2:])
  shared = np.asarray(jax.jit(model.score_batch)(
      params, distinct, input_index=jnp.asarray([0, 0, 0, 1], jnp.int32)))

  enc = torch.tensor(np.asarray(batch['encoder_input_tokens']), dtype=torch.long)
  tgt = np.asarray(batch['decoder_target_tokens'])
  labels = torch.tensor(np.where(tgt > 0, tgt, -100), dtype=torch.long)
  with torch.no_grad():
    out = hf(input_ids=enc, attention_mask=(enc > 0).long(), labels=labels)
  logp = torch.log_softmax(out.logits.double(), -1).numpy()
  tok = np.take_along_axis(logp, tgt[..., None], -1)[..., 0] * (tgt > 0)
  ref = tok.sum(-1)
  np.testing.assert_allclose(scores, ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(shared, ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(normed, ref / (tgt > 0).sum(-1), atol=1e-4, rtol=0)
  assert np.ptp(ref) > 0.1, 'choices should get clearly different scores'


def test_score_batch_with_spt_returns_retrieval(spt):
  net, params, batch = spt
  model = models.EncoderDecoderModel(net)
  score = jax.jit(functools.partial(model.score_batch, return_retrieval=True))
  scores, retrieval = score(params, batch)
  assert scores.shape == (3,) and np.all(np.asarray(scores) < 0)
  assert retrieval['indices'].shape == (3, SPT.top_k)
  # Inputs encoded once each (prompts and retrieval included): the rows' scores and slots.
  index = np.asarray([1, 0, 2, 1], np.int32)
  tokens = np.asarray(batch['encoder_input_tokens'])
  expanded = {k: np.asarray(v)[index] for k, v in batch.items()}
  shared, shared_retrieval = score(params, dict(expanded, encoder_input_tokens=tokens),
                                   input_index=jnp.asarray(index))
  np.testing.assert_allclose(shared, np.asarray(scores)[index], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(shared_retrieval['indices'],
                                np.asarray(retrieval['indices'])[index])
  # Consistent with the training loss: the loss's CE is the negated sum of the scores.
  loss, m = jax.jit(models.EncoderDecoderModel(net, z_loss=0.0).loss_fn)(params, batch, None)
  np.testing.assert_allclose(float(m['cross_ent_loss']), -float(np.sum(scores)), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(m['retrieval_indices']),
                                np.asarray(retrieval['indices']))


# ------------------------------------------------------------------------------- prediction
def _stepwise_greedy(net, params, enc_tokens, length, eos_id=EOS):
  """Greedy decoding by a full forward pass (no cache) for every new token."""
  apply = jax.jit(functools.partial(net.apply, enable_dropout=False))
  b = enc_tokens.shape[0]
  out = np.zeros((b, length), np.int32)
  done = np.zeros(b, bool)
  for t in range(length):
    dec_in = np.zeros((b, length), np.int32)
    dec_in[:, 1:] = out[:, :-1]
    logits = apply({'params': params}, enc_tokens, jnp.asarray(dec_in),
                   jnp.ones((b, length), jnp.int32))
    nxt = np.asarray(jnp.argmax(logits[:, t], -1))
    out[:, t] = np.where(done, 0, nxt)
    done |= nxt == eos_id
  return out


def _teacher_forced_loglik(net, params, enc_tokens, seqs):
  """Sum of log p(token) over each decoded row up to and incl. EOS, by one full forward
  pass without cache. Targets are all-valid for the masks (a tiny random model may emit
  pad id 0 mid-sequence, which decoding treats as an ordinary token)."""
  seqs = np.asarray(seqs)
  dec_in = np.zeros_like(seqs)
  dec_in[:, 1:] = seqs[:, :-1]
  logits = jax.jit(functools.partial(net.apply, enable_dropout=False))(
      {'params': params}, jnp.asarray(enc_tokens), jnp.asarray(dec_in),
      jnp.ones_like(jnp.asarray(seqs)))
  logp = _np_log_softmax(np.asarray(logits))
  tok = np.take_along_axis(logp, seqs[..., None], -1)[..., 0]
  ended_before = np.cumsum(seqs == EOS, axis=1) - (seqs == EOS)
  weights = ended_before == 0
  return (tok * weights).sum(-1), weights.sum(-1)


def _eos_friendly(params, bias=2.5):
  """Raises the EOS logit a little so random tiny models stop within a few steps."""
  params = jax.tree_util.tree_map(lambda x: x, params)
  kernel = params['decoder']['logits_dense']['kernel']
  params['decoder']['logits_dense']['kernel'] = kernel.at[:, EOS].multiply(bias)
  return params


@pytest.mark.parametrize('which', ['plain', 'spt'])
def test_greedy_with_cache_equals_stepwise_argmax(which, plain, spt):
  net, params, batch = {'plain': plain, 'spt': spt}[which]
  model = models.EncoderDecoderModel(net, eos_id=EOS)
  length = 6
  fn = jax.jit(functools.partial(model.predict_batch, decoding='greedy',
                                 max_decode_length=length, return_scores=True))
  tokens, scores = fn(params, batch)
  ref = _stepwise_greedy(net, params, batch['encoder_input_tokens'], length)
  np.testing.assert_array_equal(np.asarray(tokens), ref)
  assert tokens.shape == (3, length) and scores.shape == (3,)
  # The greedy score is the log-likelihood of the decoded tokens (up to and incl. EOS).
  rescored, _ = _teacher_forced_loglik(net, params, batch['encoder_input_tokens'], tokens)
  np.testing.assert_allclose(np.asarray(scores), rescored, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('which', ['plain', 'spt'])
def test_beam_search_scores_match_rescoring_without_cache(which, plain, spt):
  """Each returned beam's score = its full-forward log-likelihood / length penalty."""
  net, params, batch = {'plain': plain, 'spt': spt}[which]
  params = _eos_friendly(params)
  model = models.EncoderDecoderModel(net, eos_id=EOS)
  length, beams, alpha = 5, 3, 0.6
  fn = jax.jit(functools.partial(model.predict_batch_with_aux, decoding_method='beam',
                                 num_decodes=beams, alpha=alpha, max_decode_length=length,
                                 return_all_decodes=True))
  seqs, aux = fn(params, batch)
  seqs, scores = np.asarray(seqs), np.asarray(aux['scores'])
  assert seqs.shape == (3, beams, length)
  assert np.all(np.diff(scores, axis=1) >= 0), 'beams must be sorted ascending (best last)'
  assert np.any(seqs == EOS), 'the EOS-friendly model should finish some beams'
  flat = seqs.reshape(-1, length)
  enc = np.repeat(np.asarray(batch['encoder_input_tokens']), beams, axis=0)
  ll, lengths = _teacher_forced_loglik(net, params, enc, flat)
  expected = ll / ((5.0 + lengths) / 6.0) ** alpha
  np.testing.assert_allclose(scores.reshape(-1), expected, rtol=1e-4, atol=1e-4)
  # Best-only call returns the last beam.
  best = jax.jit(functools.partial(model.predict_batch, decoding='beam', num_decodes=beams,
                                   alpha=alpha, max_decode_length=length))(params, batch)
  np.testing.assert_array_equal(np.asarray(best), seqs[:, -1])
  if which == 'spt':
    np.testing.assert_array_equal(
        np.asarray(aux['retrieval_indices']),
        np.asarray(jax.jit(model.loss_fn)(params, batch, None)[1]['retrieval_indices']))


def test_beam_width_one_equals_greedy_when_greedy_is_beam_optimal(plain):
  """Width-1 beam search keeps second-best EOS candidates as finished hypotheses, so it
  equals greedy exactly when none of them beats the greedy path (checked here via scores)."""
  net, params, batch = plain
  params = _eos_friendly(params)
  model = models.EncoderDecoderModel(net, eos_id=EOS)
  length = 5
  greedy, g_scores = jax.jit(functools.partial(
      model.predict_batch, decoding='greedy', max_decode_length=length, return_scores=True))(
          params, batch)
  beam, b_scores = jax.jit(functools.partial(
      model.predict_batch, decoding='beam', num_decodes=1, alpha=0.0,
      max_decode_length=length, return_scores=True))(params, batch)
  greedy, beam = np.asarray(greedy), np.asarray(beam)
  # Beam search never returns a worse hypothesis than greedy (alpha=0: plain log-prob).
  assert np.all(np.asarray(b_scores) >= np.asarray(g_scores) - 1e-5)
  same = np.all(greedy == beam, axis=1)
  np.testing.assert_allclose(np.asarray(b_scores)[same], np.asarray(g_scores)[same], rtol=1e-5)
  assert same.any()


def test_sampling_and_errors(plain):
  net, params, batch = plain
  model = models.EncoderDecoderModel(net, eos_id=EOS)
  fn = jax.jit(functools.partial(model.predict_batch, decoding='sample', num_decodes=2,
                                 max_decode_length=4, temperature=0.0001, return_scores=True))
  tokens, _ = fn(params, batch, decode_rng=jax.random.PRNGKey(0))
  greedy = jax.jit(functools.partial(model.predict_batch, max_decode_length=4))(params, batch)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(greedy))
  with pytest.raises(ValueError, match='decoding'):
    model.predict_batch(params, batch, decoding='nucleus')
  with pytest.raises(ValueError, match='max_decode_length'):
    model.predict_batch(params, {'encoder_input_tokens': batch['encoder_input_tokens']})
  with pytest.raises(ValueError, match='loss_normalizing_factor'):
    models.EncoderDecoderModel(net, loss_normalizing_factor='PER_TOKEN')


# ------------------------------------------------------------------------------- sharded
@pytest.mark.slow
def test_sharded_loss_score_predict_match_single_device():
  """On a (data 4, model 2) mesh with the memory bank split over `model` (two-stage top-k),
  loss, scores and greedy / beam predictions equal the unsharded ones."""
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  if len(jax.devices()) < 8:
    pytest.skip('needs 8 (fake) devices; tests/conftest.py sets them')
  net = network.Transformer(TINY, prompts.PromptPrefix(SPT))
  batch = _make_batch(inputs=BATCH['inputs'] + [[4, 4, 4, EOS]],
                      targets=BATCH['targets'] + [[6, 7, EOS]])
  params = _eos_friendly(_init(net, batch, seed=2))
  model = models.EncoderDecoderModel(net, eos_id=EOS)
  fns = {
      'loss': lambda p, b: model.loss_fn(p, b, None),
      'score': functools.partial(model.score_batch, return_retrieval=True),
      'greedy': functools.partial(model.predict_batch, max_decode_length=5, return_scores=True),
      'beam': functools.partial(model.predict_batch, decoding='beam', num_decodes=2,
                                max_decode_length=5, return_scores=True),
  }
  expected = {k: jax.jit(f)(params, batch) for k, f in fns.items()}

  mesh = partitioning.create_mesh(mesh_shape=(4, 2))
  init = functools.partial(net.init, enable_dropout=False)
  with partitioning.activate(mesh):
    boxed = jax.eval_shape(lambda r: init(r, batch['encoder_input_tokens'],
                                          batch['decoder_input_tokens'],
                                          batch['decoder_target_tokens'])['params'],
                           jax.random.PRNGKey(0))
  shardings = partitioning.param_shardings(boxed, mesh)
  assert 'model' in str(shardings['encoder']['memory_bank']['keys'].spec)
  sharded_params = jax.device_put(params, shardings)
  sharded_batch = jax.device_put(batch, partitioning.batch_sharding(mesh))
  with partitioning.activate(mesh):
    for name, f in fns.items():
      got = jax.jit(f, in_shardings=(shardings, partitioning.batch_sharding(mesh)))(
          sharded_params, sharded_batch)
      want = expected[name]
      for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        if jnp.issubdtype(w.dtype, jnp.integer):
          np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)
        else:
          np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4,
                                     err_msg=name)
