"""Tests for spt_jax.decoding on a toy cached "language model" with known answers.

The toy model's next-token logits are a fixed random function of the whole prefix. Its
cache stores the decoder inputs seen so far; `tokens_to_logits` returns NaN logits if the
cache ever disagrees with `DecodingState.sequences`, so a wrong cache expansion or beam
reordering makes the decode fail loudly. The reference computes the same logits from the
full prefix without any cache.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import decoding

VOCAB = 5          # 0 = pad/BOS (never emitted), 1..3 ordinary, 4 = EOS.
EOS = 4
NUM_BUCKETS = 97


def _table(seed=0, scale=2.0):
  rng = np.random.RandomState(seed)
  table = rng.normal(size=(NUM_BUCKETS, VOCAB)).astype(np.float32) * scale
  table[:, 0] = -1e4  # The model never emits pad.
  return table


def _make_tokens_to_logits(table, row_offsets):
  """Cached toy model. `row_offsets[b]` shifts the hash per batch row (distinct rows)."""
  table = jnp.asarray(table)

  def tokens_to_logits(state: decoding.DecodingState):
    cache = state.cache
    idx = cache["cache_index"]
    hist = jax.lax.dynamic_update_slice_in_dim(cache["hist"], state.cur_token, idx, axis=1)
    # Rolling hash over hist[:, :idx + 1] (positions past idx are masked out).
    length = hist.shape[1]
    h = cache["offset"]
    for j in range(length):
      h = jnp.where(j <= idx, (h * 31 + hist[:, j] + 1) % NUM_BUCKETS, h)
    logits = table[h]
    # The cache must agree with the sequences decoded so far: hist[:, 1:idx+1] == seq[:, :idx].
    seq = state.sequences
    pos = jnp.arange(length - 1)
    mismatch = jnp.any(jnp.where(pos[None, :] < idx, hist[:, 1:] != seq[:, :length - 1], False),
                       axis=1)
    logits = jnp.where(mismatch[:, None], jnp.nan, logits)
    return logits, {"hist": hist, "cache_index": idx + 1, "offset": cache["offset"]}

  def init_cache(batch, length):
    return {"hist": jnp.zeros((batch, length + 1), jnp.int32),
            "cache_index": jnp.array(0, jnp.int32),
            "offset": jnp.asarray(row_offsets, jnp.int32)}

  return tokens_to_logits, init_cache


def _ref_row_table(table, offset):
  """Table view for one row: the row offset enters the hash as its initial value."""
  def logits(prefix):
    h = offset
    for t in prefix:
      h = (h * 31 + int(t) + 1) % NUM_BUCKETS
    return table[h]
  return logits


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - np.log(np.exp(x - m).sum())


def _ref_greedy(row_logits, length):
  prefix, out, lp = [0], [], 0.0
  for _ in range(length):
    ls = _log_softmax(row_logits(prefix))
    tok = int(np.argmax(ls))
    lp += ls[tok]
    out.append(tok)
    prefix.append(tok)
    if tok == EOS:
      break
  return out + [0] * (length - len(out)), lp


def _all_hypotheses(row_logits, length, alpha):
  """Every complete hypothesis (ends in EOS, or reaches `length`) with its score."""
  hyps = []
  for n in range(1, length + 1):
    for body in itertools.product(range(1, VOCAB), repeat=n):
      if EOS in body[:-1]:
        continue
      if body[-1] != EOS and n < length:
        continue
      prefix, lp = [0], 0.0
      for t in body:
        lp += _log_softmax(row_logits(prefix))[t]
        prefix.append(t)
      score = lp / ((5.0 + n) / 6.0) ** alpha
      hyps.append((score, list(body) + [0] * (length - n)))
  hyps.sort(key=lambda h: h[0])
  return hyps


OFFSETS = (3, 11, 42)


@pytest.fixture(scope="module")
def toy():
  table = _table()
  t2l, init_cache = _make_tokens_to_logits(table, OFFSETS)
  return table, t2l, init_cache


def test_greedy_with_cache_equals_stepwise_argmax(toy):
  table, t2l, init_cache = toy
  batch, length = len(OFFSETS), 6
  inputs = jnp.zeros((batch, length), jnp.int32)
  fn = jax.jit(functools.partial(decoding.temperature_sample, tokens_to_logits=t2l,
                                 eos_id=EOS, temperature=0.0))
  seqs, lps = fn(inputs, init_cache(batch, length))
  assert seqs.shape == (batch, 1, length) and lps.shape == (batch, 1)
  for b, off in enumerate(OFFSETS):
    ref_seq, ref_lp = _ref_greedy(_ref_row_table(table, off), length)
    np.testing.assert_array_equal(np.asarray(seqs[b, 0]), ref_seq)
    np.testing.assert_allclose(float(lps[b, 0]), ref_lp, rtol=1e-5, atol=1e-5)


def test_greedy_stops_at_eos_and_pads():
  # A model that says 2, 3, EOS, then (if ever asked) 1 forever.
  def t2l(state):
    i = state.cur_index
    want = jnp.array([2, 3, EOS, 1, 1, 1, 1, 1])[i]
    logits = jax.nn.one_hot(want, VOCAB) * 10.0
    return jnp.broadcast_to(logits, (state.cur_token.shape[0], VOCAB)), state.cache
  seqs, _ = jax.jit(functools.partial(decoding.temperature_sample, tokens_to_logits=t2l,
                                      eos_id=EOS))(jnp.zeros((2, 6), jnp.int32), {})
  np.testing.assert_array_equal(np.asarray(seqs[:, 0]), [[2, 3, EOS, 0, 0, 0]] * 2)


def test_greedy_forced_prompt_and_max_decode_len(toy):
  table, t2l, init_cache = toy
  batch, length = len(OFFSETS), 6
  inputs = np.zeros((batch, length), np.int32)
  inputs[:, :2] = [[1, 2], [3, 3], [2, 1]]
  seqs, _ = decoding.temperature_sample(jnp.asarray(inputs), init_cache(batch, length), t2l,
                                        eos_id=EOS, max_decode_len=4)
  for b, off in enumerate(OFFSETS):
    row_logits = _ref_row_table(table, off)
    prefix, out = [0] + list(inputs[b, :2]), list(inputs[b, :2])
    while len(out) < 4 and (len(out) == 2 or out[-1] != EOS):
      tok = int(np.argmax(row_logits(prefix)))
      out.append(tok)
      prefix.append(tok)
    out += [0] * (length - len(out))
    np.testing.assert_array_equal(np.asarray(seqs[b, 0]), out)


def test_sampling_topk1_is_greedy_and_samples_sorted(toy):
  table, t2l, init_cache = toy
  batch, length = len(OFFSETS), 5
  inputs = jnp.zeros((batch, length), jnp.int32)
  greedy, _ = decoding.temperature_sample(inputs, init_cache(batch, length), t2l, eos_id=EOS)
  top1, _ = decoding.temperature_sample(inputs, init_cache(batch, length), t2l, eos_id=EOS,
                                        decode_rng=jax.random.PRNGKey(1), num_decodes=3,
                                        temperature=0.7, topk=1)
  np.testing.assert_array_equal(np.asarray(top1), np.repeat(np.asarray(greedy), 3, axis=1))
  fn = jax.jit(functools.partial(decoding.temperature_sample, tokens_to_logits=t2l,
                                 eos_id=EOS, num_decodes=8, temperature=2.0))
  seqs, lps = fn(inputs, init_cache(batch, length), decode_rng=jax.random.PRNGKey(0))
  seqs, lps = np.asarray(seqs), np.asarray(lps)
  assert np.all(np.diff(lps, axis=1) >= 0), "samples must be sorted ascending (best last)"
  assert len({tuple(s) for s in seqs[0]}) > 1, "temperature 2 should give distinct samples"
  for b, off in enumerate(OFFSETS):
    row_logits = _ref_row_table(table, off)
    for n in range(8):
      prefix, lp = [0], 0.0
      for t in seqs[b, n]:
        if t == 0:
          break
        lp += _log_softmax(row_logits(prefix))[t]
        prefix.append(int(t))
        if t == EOS:
          break
      np.testing.assert_allclose(lps[b, n], lp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_is_exhaustive_search(toy, alpha):
  """With more beams than hypotheses, beam search must return the exact top-W list."""
  table, t2l, init_cache = toy
  batch, length, beams = len(OFFSETS), 3, 30
  fn = jax.jit(functools.partial(decoding.beam_search, tokens_to_logits=t2l, eos_id=EOS,
                                 num_decodes=beams, alpha=alpha))
  seqs, scores = fn(jnp.zeros((batch, length), jnp.int32), init_cache(batch, length))
  seqs, scores = np.asarray(seqs), np.asarray(scores)
  assert seqs.shape == (batch, beams, length)
  assert np.all(np.diff(scores, axis=1) >= 0), "beams must be sorted ascending (best last)"
  for b, off in enumerate(OFFSETS):
    hyps = _all_hypotheses(_ref_row_table(table, off), length, alpha)[-beams:]
    np.testing.assert_allclose(scores[b], [h[0] for h in hyps], rtol=1e-5, atol=1e-5)
    # Compare sequences for the best few (ties are measure-zero with a random table).
    for k in range(1, 6):
      np.testing.assert_array_equal(seqs[b, -k], hyps[-k][1])
    # No expansion after EOS.
    for s in seqs[b]:
      if EOS in s:
        assert np.all(s[list(s).index(EOS) + 1:] == 0)


def test_beam_width_one_equals_greedy():
  """Width 1 keeps second-best EOS candidates as finished hypotheses, which greedy never
  sees; with EOS either the argmax of a row or negligible, both must agree exactly."""
  table = _table(seed=3)
  eos_is_max = table[:, EOS] >= table[:, 1:EOS].max(axis=1)
  table[:, EOS] = np.where(eos_is_max, table[:, EOS], -1e4)
  t2l, init_cache = _make_tokens_to_logits(table, OFFSETS)
  batch, length = len(OFFSETS), 7
  inputs = jnp.zeros((batch, length), jnp.int32)
  g_seqs, g_lps = decoding.temperature_sample(inputs, init_cache(batch, length), t2l,
                                              eos_id=EOS)
  b_seqs, b_scores = jax.jit(functools.partial(
      decoding.beam_search, tokens_to_logits=t2l, eos_id=EOS, num_decodes=1, alpha=0.0))(
          inputs, init_cache(batch, length))
  np.testing.assert_array_equal(np.asarray(b_seqs), np.asarray(g_seqs))
  np.testing.assert_allclose(np.asarray(b_scores), np.asarray(g_lps), rtol=1e-5, atol=1e-5)


def test_beam_finds_better_path_than_greedy():
  """Greedy takes 1 (p=.6) then EOS (p=.4); beam also sees 2 (p=.4) then a sure EOS."""
  def t2l(state):
    i, tok = state.cur_index, state.cur_token[:, 0]
    flat = jnp.log(jnp.array([1e-9, 0.2, 0.2, 0.2, 0.4]))
    step0 = jnp.log(jnp.array([1e-9, 0.6, 0.4, 1e-9, 1e-9]))
    sure_eos = jnp.log(jnp.array([1e-9, 1e-9, 1e-9, 1e-9, 1.0]))
    logits = jnp.where(i == 0, step0[None], jnp.where((tok == 2)[:, None], sure_eos, flat))
    return logits, state.cache
  inputs = jnp.zeros((1, 4), jnp.int32)
  g, _ = decoding.temperature_sample(inputs, {}, t2l, eos_id=EOS)
  assert list(np.asarray(g[0, 0])) == [1, EOS, 0, 0]
  seqs, scores = decoding.beam_search(inputs, {}, t2l, eos_id=EOS, num_decodes=2, alpha=0.0)
  np.testing.assert_array_equal(np.asarray(seqs[0]), [[1, EOS, 0, 0], [2, EOS, 0, 0]])
  np.testing.assert_allclose(np.asarray(scores[0]),
                             [math.log(0.6 * 0.4), math.log(0.4)], rtol=1e-5)


def test_beam_cache_reordering_with_batch_rows(toy):
  """Narrow beams on a longer decode: the NaN guard fails if the cache is misaligned."""
  _, t2l, init_cache = toy
  batch, length = len(OFFSETS), 8
  seqs, scores = jax.jit(functools.partial(
      decoding.beam_search, tokens_to_logits=t2l, eos_id=EOS, num_decodes=3, alpha=0.6))(
          jnp.zeros((batch, length), jnp.int32), init_cache(batch, length))
  assert np.all(np.isfinite(np.asarray(scores)))
  assert np.all(np.diff(np.asarray(scores), axis=1) >= 0)


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="num_decodes"):
    decoding.temperature_sample(jnp.zeros((1, 3), jnp.int32), {}, lambda s: None, EOS,
                                num_decodes=2)
  with pytest.raises(ValueError, match="decode_rng"):
    decoding.temperature_sample(jnp.zeros((1, 3), jnp.int32), {}, lambda s: None, EOS,
                                temperature=1.0)
  with pytest.raises(ValueError, match="max_decode_len"):
    decoding.beam_search(jnp.zeros((1, 3), jnp.int32), {}, lambda s: None, EOS,
                         max_decode_len=5)
