"""Autoregressive decoding over a KV cache: temperature sampling (greedy) and beam search.

The functions here know nothing about the network. Like T5X's `decoding.py` they drive a
`tokens_to_logits(decoding_state) -> (logits, new_cache)` function one token at a time
inside a `lax.while_loop`, so a whole decode is one jitted computation:

* `temperature_sample`: greedy when `temperature == 0`, otherwise sampling from
  `softmax(logits / temperature)`, optionally restricted to the `topk` best tokens.
* `beam_search`: T5X-style beam search with the GNMT length penalty
  `((5 + length) / 6) ** alpha`; beams that emit EOS are moved to a finished set and are
  never expanded again; the cache is reordered with the surviving beams.

Conventions (shared with T5X):

* `inputs` `[B, L]` is the decoder prompt in *output* coordinates: position `i` holds a
  token that is forced at output position `i` when it is non-zero, and `0` (pad) where the
  decoder is free to choose. For ordinary prediction it is all zeros and only its shape
  (the maximum decode length `L`) matters.
* The decoder start token (BOS) is id 0, the T5 pad id, exactly like T5X/seqio's
  `EncDecFeatureConverter` shifted targets.
* The cache passed in holds the batch `B` (from `init(..., decode=True)` on dummy inputs of
  batch `B`); the functions expand it to `B * num_decodes` themselves. Every cache leaf
  with at least one dimension is treated as batch-major (`[B, ...]`) and is expanded /
  reordered along axis 0; 0-d leaves (the scalar `cache_index` of T5X-style attention) are
  left alone because every row decodes in lockstep.
* Outputs are `(sequences [B, num_decodes, L], scores [B, num_decodes])` sorted by score in
  **ascending** order, i.e. the best decode is the *last* one (`sequences[:, -1]`), as in
  T5X. Positions after EOS (and after the last decoding step) hold 0.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import flax
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# Large finite negative number: -inf would give NaN in `-inf - -inf` and in softmax.
NEG_INF = np.array(-1.0e7, dtype=np.float32)

PyTree = Any


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at each step (flattened over beams / samples).

  Attributes:
    cur_index: int32 scalar, the output position being predicted; the decoder input
      is the token at position `cur_index - 1` (BOS for `cur_index == 0`).
    sequences: [B * n, L] int32 tokens decoded so far (0 at undecoded positions).
    cur_token: [B * n, 1] int32, the decoder input token for this step.
    cache: the flattened (`[B * n, ...]` leaves) cache pytree.
  """
  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cur_token: jnp.ndarray
  cache: PyTree


TokensToLogits = Callable[[DecodingState], Tuple[jnp.ndarray, PyTree]]


# ------------------------------------------------------------------------------------
# Batch / beam helpers.
# ------------------------------------------------------------------------------------
def cache_map(fn: Callable[[jnp.ndarray], jnp.ndarray], cache: PyTree) -> PyTree:
  """Applies `fn` to every batch-major cache leaf; 0-d leaves (cache indices) pass through."""
  return jax.tree_util.tree_map(lambda x: fn(x) if jnp.ndim(x) > 0 else x, cache)


def add_beam_dim(x: jnp.ndarray, beam_size: int) -> jnp.ndarray:
  """[B, ...] -> [B, beam_size, ...] by repetition."""
  x = jnp.expand_dims(x, axis=1)
  return jnp.repeat(x, beam_size, axis=1)


def flatten_beam_dim(x: jnp.ndarray) -> jnp.ndarray:
  """[B, W, ...] -> [B * W, ...] (batch-major)."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def unflatten_beam_dim(x: jnp.ndarray, batch_size: int, beam_size: int) -> jnp.ndarray:
  """[B * W, ...] -> [B, W, ...]."""
  return x.reshape((batch_size, beam_size) + x.shape[1:])


def flat_batch_beam_expand(x: jnp.ndarray, beam_size: int) -> jnp.ndarray:
  """[B, ...] -> [B * beam_size, ...]: each row repeated `beam_size` times, consecutively.

  Used by callers to expand the encoder output and the raw encoder tokens so they line up
  with the flattened beams that `tokens_to_logits` receives.
  """
  return flatten_beam_dim(add_beam_dim(x, beam_size))


def gather_beams(x: jnp.ndarray, beam_indices: jnp.ndarray) -> jnp.ndarray:
  """Picks beams per batch row: x [B, W_old, ...], beam_indices [B, W_new] -> [B, W_new, ...]."""
  return jax.vmap(lambda xb, ib: jnp.take(xb, ib, axis=0))(x, beam_indices)


def gather_flat_beams(x: jnp.ndarray, beam_indices: jnp.ndarray) -> jnp.ndarray:
  """Like `gather_beams` for a flattened leaf: x [B * W_old, ...] -> [B * W_new, ...].

  The gather runs over the flattened beam dimension (`b * W_old + beam`), which is how the
  KV cache is reordered after each beam-search step.
  """
  batch_size, new_beams = beam_indices.shape
  old_beams = x.shape[0] // batch_size
  flat_idx = (jnp.arange(batch_size)[:, None] * old_beams + beam_indices).reshape(-1)
  return jnp.take(x, flat_idx, axis=0)


def brevity_penalty(alpha: float, length: jnp.ndarray) -> jnp.ndarray:
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def _check_inputs(inputs: jnp.ndarray, max_decode_len: Optional[int]) -> int:
  if inputs.ndim != 2:
    raise ValueError(
        f"decoding `inputs` must be [batch, max_decode_len] decoder-prompt tokens (zeros "
        f"for no prompt), got shape {inputs.shape}.")
  length = inputs.shape[1]
  if max_decode_len is None:
    return length
  if not 0 < max_decode_len <= length:
    raise ValueError(
        f"max_decode_len={max_decode_len} must be in [1, inputs.shape[1]={length}]; "
        "pass `inputs` at least as long as the longest decode.")
  return int(max_decode_len)


# ------------------------------------------------------------------------------------
# Temperature sampling / greedy decoding.
# ------------------------------------------------------------------------------------
def temperature_sample(
    inputs: jnp.ndarray,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    decode_rng: Optional[jax.Array] = None,
    num_decodes: int = 1,
    temperature: float = 0.0,
    topk: int = 0,
    max_decode_len: Optional[int] = None,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Samples (or greedily decodes) `num_decodes` continuations per row with a KV cache.

  Args:
    inputs: [B, L] int32 decoder prompt (non-zero tokens are forced, see module doc).
    cache: cache pytree for batch B (expanded here to B * num_decodes).
    tokens_to_logits: `DecodingState -> (logits [B * n, V] float32, new_cache)`.
    eos_id: end-of-sequence id; a row stops (and pads with 0) after emitting it.
    decode_rng: PRNG key, required when `temperature > 0`.
    num_decodes: independent samples per row (must be 1 for greedy).
    temperature: 0 = greedy argmax; > 0 samples from softmax(logits / temperature).
    topk: if > 0, sample only among the `topk` most likely tokens.
    max_decode_len: optional cap on the number of decoded positions (<= L).

  Returns:
    `(sequences [B, num_decodes, L] int32, log_probs [B, num_decodes] float32)`, sorted by
    log-probability ascending (best last). `log_probs` is the sum over decoded (not forced)
    tokens, EOS included, of log softmax(logits) (temperature-free).
  """
  max_steps = _check_inputs(inputs, max_decode_len)
  greedy = temperature == 0.0
  if greedy and num_decodes != 1:
    raise ValueError(
        f"greedy decoding (temperature=0) gives {num_decodes} identical decodes; use "
        "num_decodes=1, a temperature > 0, or beam_search.")
  if not greedy and decode_rng is None:
    raise ValueError("temperature > 0 samples tokens: pass `decode_rng`.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  batch_size, length = inputs.shape
  n = batch_size * num_decodes
  inputs = flat_batch_beam_expand(inputs.astype(jnp.int32), num_decodes)
  cache = cache_map(lambda x: flat_batch_beam_expand(x, num_decodes), cache)
  # Buffer with a leading BOS (0): buffer[:, i] is the decoder input at step i.
  buffer = jnp.concatenate([jnp.zeros((n, 1), jnp.int32), inputs], axis=1)
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)  # Unused in greedy mode; keeps the carry typed.

  def cond_fn(state):
    i, _, ended, _, _, _ = state
    return jnp.logical_and(i < max_steps, jnp.logical_not(jnp.all(ended)))

  def body_fn(state):
    i, buf, ended, log_prob, cache, rng = state
    cur_token = lax.dynamic_slice_in_dim(buf, i, 1, axis=1)
    logits, new_cache = tokens_to_logits(
        DecodingState(cur_index=i, sequences=buf[:, 1:], cur_token=cur_token, cache=cache))
    logits = logits.astype(jnp.float32)
    log_softmax = jax.nn.log_softmax(logits, axis=-1)
    rng, step_rng = jax.random.split(rng)
    if greedy:
      sampled = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      scaled = logits / temperature
      if topk:
        kth = lax.top_k(scaled, topk)[0][:, -1:]
        scaled = jnp.where(scaled < kth, NEG_INF, scaled)
      sampled = jax.random.categorical(step_rng, scaled, axis=-1).astype(jnp.int32)
    forced = lax.dynamic_slice_in_dim(buf, i + 1, 1, axis=1)[:, 0]
    is_forced = forced != 0
    token = jnp.where(is_forced, forced, sampled)
    token = jnp.where(ended, 0, token)
    token_logp = jnp.take_along_axis(log_softmax, sampled[:, None], axis=-1)[:, 0]
    log_prob = log_prob + jnp.where(jnp.logical_or(ended, is_forced), 0.0, token_logp)
    buf = lax.dynamic_update_slice_in_dim(buf, token[:, None], i + 1, axis=1)
    ended = jnp.logical_or(ended, jnp.logical_and(token == eos_id, jnp.logical_not(is_forced)))
    return i + 1, buf, ended, log_prob, new_cache, rng

  init = (jnp.array(0, jnp.int32), buffer, jnp.zeros((n,), bool),
          jnp.zeros((n,), jnp.float32), cache, decode_rng)
  _, buffer, _, log_prob, _, _ = lax.while_loop(cond_fn, body_fn, init)
  # Clear positions past the decoding cap that still hold (unused) prompt tokens.
  sequences = jnp.where(jnp.arange(length)[None, :] < max_steps, buffer[:, 1:], 0)
  sequences = unflatten_beam_dim(sequences, batch_size, num_decodes)
  log_prob = unflatten_beam_dim(log_prob, batch_size, num_decodes)
  order = jnp.argsort(log_prob, axis=1)
  return gather_beams(sequences, order), jnp.take_along_axis(log_prob, order, axis=1)


# ------------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------------
@flax.struct.dataclass
class BeamState:
  """Beam-search loop carry. W = beam size, L = max decode length.

  Attributes:
    cur_index: int32 scalar, the output position predicted next.
    live_logprobs: [B, W] sum of log-probs of each live beam (NEG_INF for empty beams).
    finished_scores: [B, W] length-penalised scores of finished beams (NEG_INF if empty).
    live_seqs: [B, W, L + 1] live tokens with a leading BOS (0).
    finished_seqs: [B, W, L + 1] finished tokens with a leading BOS.
    finished_flags: [B, W] whether each finished slot holds a real hypothesis.
    cache: cache pytree with [B * W, ...] leaves, aligned with the live beams.
  """
  cur_index: jnp.ndarray
  live_logprobs: jnp.ndarray
  finished_scores: jnp.ndarray
  live_seqs: jnp.ndarray
  finished_seqs: jnp.ndarray
  finished_flags: jnp.ndarray
  cache: PyTree


def beam_search(
    inputs: jnp.ndarray,
    cache: PyTree,
    tokens_to_logits: TokensToLogits,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 0.6,
    max_decode_len: Optional[int] = None,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search with a KV cache and the GNMT length penalty.

  At each step every live beam is extended by every token; of the `2W` best candidates
  (by summed log-prob) those ending in EOS join the finished set with score
  `logprob / ((5 + len) / 6) ** alpha` (len counts EOS) and the best `W` others stay
  live; the cache is gathered with them. Finished beams are never expanded again. The
  loop stops early once no live beam can beat the worst finished one. At the end, live
  beams that reached the length cap without EOS compete with the finished ones, scored
  with the same penalty at their length.

  Args:
    inputs: [B, L] int32 decoder prompt (non-zero tokens are forced; zeros otherwise).
    cache: cache pytree for batch B (expanded here to B * num_decodes).
    tokens_to_logits: `DecodingState -> (logits [B * W, V] float32, new_cache)`.
    eos_id: end-of-sequence id.
    num_decodes: beam width W (also the number of returned decodes).
    alpha: length-penalty exponent (0 = plain summed log-prob).
    max_decode_len: optional cap on decoded positions (<= L).

  Returns:
    `(sequences [B, W, L] int32, scores [B, W] float32)` sorted by score ascending (best
    last, `sequences[:, -1]`), T5X's convention. Positions after EOS hold 0.
  """
  max_steps = _check_inputs(inputs, max_decode_len)
  if num_decodes < 1:
    raise ValueError(f"num_decodes (beam width) must be >= 1, got {num_decodes}.")
  batch_size, length = inputs.shape
  beams = num_decodes
  inputs = inputs.astype(jnp.int32)
  seqs0 = jnp.concatenate([jnp.zeros((batch_size, 1), jnp.int32), inputs], axis=1)
  seqs0 = add_beam_dim(seqs0, beams)  # [B, W, L + 1]
  # Only beam 0 is alive at the start so the first expansion gives W distinct beams.
  live0 = jnp.tile(jnp.array([0.0] + [float(NEG_INF)] * (beams - 1), jnp.float32),
                   (batch_size, 1))
  state = BeamState(
      cur_index=jnp.array(0, jnp.int32),
      live_logprobs=live0,
      finished_scores=jnp.full((batch_size, beams), NEG_INF, jnp.float32),
      live_seqs=seqs0,
      finished_seqs=jnp.zeros_like(seqs0),
      finished_flags=jnp.zeros((batch_size, beams), bool),
      cache=cache_map(lambda x: flat_batch_beam_expand(x, beams), cache))
  max_penalty = jnp.maximum(brevity_penalty(alpha, max_steps), brevity_penalty(alpha, 1))

  def cond_fn(state: BeamState):
    not_at_end = state.cur_index < max_steps
    # Log-probs only decrease with more tokens, so a live beam's best attainable score is
    # bounded by its current log-prob over the largest penalty.
    best_live = jnp.max(state.live_logprobs, axis=1) / max_penalty
    worst_finished = jnp.min(
        jnp.where(state.finished_flags, state.finished_scores, NEG_INF), axis=1)
    done = jnp.all(jnp.logical_or(worst_finished >= best_live, best_live <= NEG_INF / 2))
    return jnp.logical_and(not_at_end, jnp.logical_not(done))

  def body_fn(state: BeamState) -> BeamState:
    i = state.cur_index
    flat_seqs = flatten_beam_dim(state.live_seqs)
    cur_token = lax.dynamic_slice_in_dim(flat_seqs, i, 1, axis=1)
    logits, new_cache = tokens_to_logits(
        DecodingState(cur_index=i, sequences=flat_seqs[:, 1:], cur_token=cur_token,
                      cache=state.cache))
    vocab_size = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_probs = unflatten_beam_dim(log_probs, batch_size, beams)  # [B, W, V]
    # Forced (prompt) tokens: only the forced token is allowed.
    forced = lax.dynamic_slice_in_dim(state.live_seqs, i + 1, 1, axis=2)  # [B, W, 1]
    forced_lp = jnp.where(jnp.arange(vocab_size)[None, None, :] == forced, 0.0, NEG_INF)
    log_probs = jnp.where(forced > 0, forced_lp, log_probs)
    candidates = state.live_logprobs[:, :, None] + log_probs
    candidates = jnp.where(state.live_logprobs[:, :, None] <= NEG_INF / 2, NEG_INF, candidates)
    flat_candidates = candidates.reshape(batch_size, beams * vocab_size)
    num_candidates = min(2 * beams, beams * vocab_size)
    top_logprobs, top_idx = lax.top_k(flat_candidates, num_candidates)  # [B, 2W]
    top_beam = top_idx // vocab_size
    top_token = (top_idx % vocab_size).astype(jnp.int32)
    top_seqs = gather_beams(state.live_seqs, top_beam)  # [B, 2W, L + 1]
    top_seqs = lax.dynamic_update_slice_in_dim(top_seqs, top_token[:, :, None], i + 1, axis=2)
    is_forced = jnp.take_along_axis(forced[:, :, 0], top_beam, axis=1) > 0
    is_eos = jnp.logical_and(top_token == eos_id, jnp.logical_not(is_forced))
    is_eos = jnp.logical_and(is_eos, top_logprobs > NEG_INF / 2)

    # Live set: best W candidates that did not end.
    alive_logprobs = jnp.where(is_eos, NEG_INF, top_logprobs)
    new_live_logprobs, alive_pos = lax.top_k(alive_logprobs, beams)
    new_live_seqs = gather_beams(top_seqs, alive_pos)
    source_beam = jnp.take_along_axis(top_beam, alive_pos, axis=1)  # [B, W]
    new_cache = cache_map(lambda x: gather_flat_beams(x, source_beam), new_cache)

    # Finished set: merge the newly finished candidates, keep the best W.
    new_scores = jnp.where(is_eos, top_logprobs / brevity_penalty(alpha, i + 1), NEG_INF)
    all_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    all_flags = jnp.concatenate([state.finished_flags, is_eos], axis=1)
    all_seqs = jnp.concatenate([state.finished_seqs, top_seqs], axis=1)
    all_scores = jnp.where(all_flags, all_scores, NEG_INF)
    finished_scores, fin_pos = lax.top_k(all_scores, beams)
    return BeamState(
        cur_index=i + 1,
        live_logprobs=new_live_logprobs,
        finished_scores=finished_scores,
        live_seqs=new_live_seqs,
        finished_seqs=gather_beams(all_seqs, fin_pos),
        finished_flags=jnp.take_along_axis(all_flags, fin_pos, axis=1),
        cache=new_cache)

  final = lax.while_loop(cond_fn, body_fn, state)
  # Live beams that ran to the length cap compete with finished ones at their length.
  live_valid = final.live_logprobs > NEG_INF / 2
  live_scores = jnp.where(
      live_valid, final.live_logprobs / brevity_penalty(alpha, final.cur_index), NEG_INF)
  # A live beam can only be complete if the loop ran out of steps (not an early stop).
  live_valid = jnp.logical_and(live_valid, final.cur_index >= max_steps)
  live_scores = jnp.where(live_valid, live_scores, NEG_INF)
  all_scores = jnp.concatenate(
      [jnp.where(final.finished_flags, final.finished_scores, NEG_INF), live_scores], axis=1)
  all_seqs = jnp.concatenate([final.finished_seqs, final.live_seqs], axis=1)
  # top_k keeps the lower index first among ties, so finished beams win ties.
  scores, pos = lax.top_k(all_scores, beams)
  seqs = gather_beams(all_seqs, pos)[:, :, 1:]
  seqs = jnp.where(jnp.arange(length)[None, None, :] < max_steps, seqs, 0)
  # Ascending order: best last.
  return jnp.flip(seqs, axis=1), jnp.flip(scores, axis=1)
