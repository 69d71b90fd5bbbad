"""Loss, scoring and prediction around the network (T5X's `EncoderDecoderModel`, for SPT).

`EncoderDecoderModel` wraps a `network.Transformer` and turns seqio `EncDecFeatureConverter`
batches into what training and evaluation need. It is the one prompt-aware layer above the
network (which only receives a prefix): it knows the network's `prompts.PromptPrefix`, and
the trainer, evaluator and runner ask it, not the network, about prompts:

* `prompt_config`, `prefix_length`, `has_memory`, `memory_size`, `tracks_usage`;
* `validate_features(task_feature_lengths, pack)`: the one check of a run's feature
  lengths and packing against the prompts (packed rows cannot take a prompt each);
* `retrieval_metrics(metrics)` (what a train step logs under `retrieval/`),
  `track_usage(...)` (the memory bank's usage state and dead-slot restarts, see
  `spt_jax.memory_health`) and `retrieval_query(params, tokens)`.

What it computes:

* `loss_fn(params, batch, dropout_rng)`: T5X's weighted cross-entropy with z-loss and label
  smoothing, plus the SPT key-pull loss sown by the memory bank; metrics for logging and the
  retrieval indices for memory-usage statistics.
* `score_batch(params, batch)`: per-row sum of target-token log-likelihoods, what rank
  classification (T0 zero-shot evaluation) ranks answer choices by.
* `predict_batch(params, batch, decoding=...)`: greedy, sampling or beam-search decoding with
  the network's KV cache (`spt_jax.decoding`); the encoder (with its prompt retrieval) runs
  once and its output is repeated for every beam / sample.

Every method is a pure function of `(params, batch, ...)` with only Python scalars / strings
as extra arguments, so callers `jax.jit` them (with those arguments static) and shard them
like any other step function. Batch arrays:

  encoder_input_tokens   [B, T] int32 (0 = pad)
  decoder_input_tokens   [B, L] int32 (targets shifted right, 0 first)
  decoder_target_tokens  [B, L] int32 (0 = pad)
  decoder_loss_weights   [B, L] (optional; default `decoder_target_tokens > 0`)
  + encoder/decoder segment ids and positions when packed (plain T5 only).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from spt_jax import decoding
from spt_jax import memory_health
from spt_jax import network as network_lib
from spt_jax import prompts

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any

# The variable collection `prompts.MemoryBank` sows its retrieval outputs into.
RETRIEVAL_COLLECTION = prompts.RETRIEVAL_COLLECTION

# String values of `loss_normalizing_factor` (T5X's `SpecialLossNormalizingFactor`).
NUM_REAL_TARGET_TOKENS = 'NUM_REAL_TARGET_TOKENS'
NUM_TOTAL_TARGET_TOKENS = 'NUM_TOTAL_TARGET_TOKENS'
AVERAGE_PER_SEQUENCE = 'AVERAGE_PER_SEQUENCE'
_SPECIAL_FACTORS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE)

_DECODINGS = ('greedy', 'sample', 'beam')


# ------------------------------------------------------------------------------------
# Losses (T5X `losses.py` semantics).
# ------------------------------------------------------------------------------------
def cross_entropy_with_logits(logits: Array, targets: Array,
                              z_loss: float) -> tuple[Array, Array]:
  """Per-token cross-entropy against soft targets, plus z-loss (T5X).

  Args:
    logits: [..., V] float32.
    targets: [..., V] target distribution (one-hot or smoothed).
    z_loss: coefficient of `log(Z)^2`, which keeps the softmax normaliser near 1 (Mesh TF /
      T5X; stabilises bf16 training).

  Returns:
    `(loss [...], z_loss [...])`, where `loss` already includes the z-loss term.
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_softmax = logits - log_z[..., None]
  loss = -jnp.sum(targets * log_softmax, axis=-1)
  total_z_loss = z_loss * jnp.square(log_z)
  return loss + total_z_loss, total_z_loss


def compute_weighted_cross_entropy(
    logits: Array, targets: Array, weights: Optional[Array] = None,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: Optional[float] = None) -> tuple[Array, Array, Array]:
  """T5X's `compute_weighted_cross_entropy`: summed, weighted, optionally normalised.

  Label smoothing puts `1 - label_smoothing` on the target and spreads the rest evenly;
  the entropy of that distribution is subtracted so a perfect model scores 0.

  Args:
    logits: [B, L, V] float32.
    targets: [B, L] int token ids.
    weights: [B, L] per-token weights (None = all ones).
    label_smoothing: in [0, 1).
    z_loss: z-loss coefficient.
    loss_normalizing_factor: divide the sums by this (None = plain sums, as T5X).

  Returns:
    `(loss, z_loss, weight_sum)` scalars; `loss` includes the z-loss.
  """
  if logits.ndim != targets.ndim + 1:
    raise ValueError(f'logits {logits.shape} must have one more axis than targets '
                     f'{targets.shape}.')
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(
      confidence * np.log(confidence) +
      (vocab_size - 1) * low_confidence * np.log(low_confidence + 1e-20))
  soft_targets = jax.nn.one_hot(targets, vocab_size, dtype=logits.dtype)
  if label_smoothing:
    soft_targets = soft_targets * (confidence - low_confidence) + low_confidence
  total_loss, total_z_loss = cross_entropy_with_logits(logits, soft_targets, z_loss=z_loss)
  total_loss = total_loss - normalizing_constant
  if weights is None:
    weight_sum = jnp.asarray(np.prod(targets.shape), jnp.float32)
  else:
    weights = weights.astype(jnp.float32)
    total_loss = total_loss * weights
    total_z_loss = total_z_loss * weights
    weight_sum = jnp.sum(weights)
  if loss_normalizing_factor is not None:
    total_loss = total_loss / loss_normalizing_factor
    total_z_loss = total_z_loss / loss_normalizing_factor
  return jnp.sum(total_loss), jnp.sum(total_z_loss), weight_sum


def _normalizing_factor_and_weights(
    loss_normalizing_factor: Union[None, float, str], weights: Array
) -> tuple[Optional[Array], Array]:
  """Resolves T5X's special normalising factors against this batch's weights."""
  if loss_normalizing_factor is None:
    return None, weights
  if not isinstance(loss_normalizing_factor, str):
    return jnp.asarray(loss_normalizing_factor, jnp.float32), weights
  if loss_normalizing_factor == NUM_REAL_TARGET_TOKENS:
    return jnp.maximum(jnp.sum(weights), 1e-8), weights
  if loss_normalizing_factor == NUM_TOTAL_TARGET_TOKENS:
    return jnp.asarray(np.prod(weights.shape), jnp.float32), weights
  # AVERAGE_PER_SEQUENCE: each row's tokens share weight 1, then average over rows.
  row_sums = jnp.sum(weights, axis=-1, keepdims=True)
  per_sequence = jnp.where(row_sums > 0, weights / jnp.maximum(row_sums, 1e-8), 0.0)
  num_rows = jnp.maximum(jnp.sum((row_sums[:, 0] > 0).astype(jnp.float32)), 1.0)
  return num_rows, per_sequence


def _retrieval_outputs(collection: Mapping[str, Any]) -> dict[str, Array]:
  """Flattens the sown `'retrieval'` collection ({'indices', 'scores', 'key_loss', ...}).

  Sown values are tuples (flax `sow`); the last entry is the latest call's value.
  """
  out = {}
  for path, value in traverse_util.flatten_dict(dict(collection)).items():
    if isinstance(value, (tuple, list)):
      value = value[-1]
    out[path[-1]] = value
  return out


def check_unpacked(prefix_length: int, pack: bool) -> None:
  """Raises ValueError when packed rows (``pack``) would take a prefix of ``prefix_length``."""
  if pack and prefix_length:
    raise ValueError(
        f'pack=True cannot be used with SPT / prompt-tuning prompts (prefix_length='
        f'{prefix_length}): each row must hold one example so its prompt is prepended once. '
        'Run with pack=False (--gin.train/configs.DatasetConfig.pack=False; under T5X, '
        'train/utils.DatasetConfig.pack = False), or '
        'set soft_prompt_length=0 and memory_size=0 for plain fine-tuning.')


# ------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------
class EncoderDecoderModel:
  """Training loss, rank-classification scores and decoding for a `Transformer`.

  Attributes:
    network: the flax module (`network.Transformer`, optionally with a
      `prompts.PromptPrefix`).
    z_loss: z-loss coefficient (T5X default 1e-4).
    label_smoothing: label smoothing of the training targets.
    loss_normalizing_factor: None (T5X: the loss is the *sum* over weighted target
      tokens), a number to divide that sum by, or one of 'NUM_REAL_TARGET_TOKENS' (mean per
      real target token), 'NUM_TOTAL_TARGET_TOKENS', 'AVERAGE_PER_SEQUENCE'.
    eos_id: end-of-sequence id of the output vocabulary (1 for T5's SentencePiece).
  """

  def __init__(self, network: network_lib.Transformer, z_loss: float = 1e-4,
               label_smoothing: float = 0.0,
               loss_normalizing_factor: Union[None, float, str] = None, eos_id: int = 1):
    if isinstance(loss_normalizing_factor, str) and (
        loss_normalizing_factor not in _SPECIAL_FACTORS):
      raise ValueError(f'loss_normalizing_factor={loss_normalizing_factor!r} is not one of '
                       f'{_SPECIAL_FACTORS}; pass one of those, a number, or None (sum).')
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f'label_smoothing={label_smoothing} must be in [0, 1).')
    self.network = network
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalizing_factor = loss_normalizing_factor
    self.eos_id = eos_id

  # --------------------------------------------------------------------- properties
  @property
  def prompt_config(self) -> Optional[prompts.PromptConfig]:
    """The prompts prepended to the encoder input (None: plain T5, no prefix)."""
    prefix = self.network.prefix
    return prefix.config if isinstance(prefix, prompts.PromptPrefix) else None

  @property
  def prefix_length(self) -> int:
    """P = L_p + k·L_m, prompt positions in front of the encoded tokens (0 without)."""
    return self.network.prefix_length

  @property
  def has_memory(self) -> bool:
    """Whether the network retrieves memory prompts (and sows retrieval outputs)."""
    cfg = self.prompt_config
    return cfg is not None and cfg.memory_size > 0

  @property
  def memory_size(self) -> int:
    """M, the memory bank's slots (0 without memory)."""
    return self.prompt_config.memory_size if self.has_memory else 0

  @property
  def tracks_usage(self) -> bool:
    """Whether the bank keeps usage state (dead-slot restarts; see `track_usage`)."""
    return self.has_memory and self.prompt_config.tracks_usage

  def validate_features(self, task_feature_lengths: Optional[Mapping[str, int]] = None,
                        pack: bool = False) -> None:
    """Raises ValueError for feature lengths or packing the prompts cannot run with.

    Args:
      task_feature_lengths: `{'inputs': T, ...}` of the run (None: no length check);
        `PromptConfig.max_encoder_length` bounds P + T.
      pack: whether the run packs several examples into one row (refused with prompts).
    """
    check_unpacked(self.prefix_length, pack)
    cfg = self.prompt_config
    if cfg is not None:
      max_input_length = (None if task_feature_lengths is None
                          else int(task_feature_lengths['inputs']))
      cfg.validate(max_input_length=max_input_length)

  # --------------------------------------------------------------------- memory
  def retrieval_metrics(self, metrics: Mapping[str, Array]) -> dict[str, Array]:
    """The `retrieval/` metrics of a train step from `loss_fn`'s metrics ({} w/o memory)."""
    return memory_health.step_metrics(metrics, self.memory_size)

  def track_usage(self, params: Params, model_state: Any, step: Array,
                  metrics: Mapping[str, Array], rng: Array
                  ) -> tuple[Params, Any, dict[str, Array]]:
    """Updates the bank's usage state after step `step` and restarts dead slots when due.

    Returns `(params, model_state, metrics)`; see `memory_health.track_usage_and_restart`.
    Only for `tracks_usage` models.
    """
    return memory_health.track_usage_and_restart(params, model_state, step, metrics,
                                                 self.prompt_config, rng)

  def retrieval_query(self, params: Params, encoder_input_tokens: Array) -> Array:
    """`[B, T]` tokens -> `[B, d]` float32: the memory bank's retrieval query of each input."""
    return self.network.apply({'params': params}, encoder_input_tokens,
                              method=self.network.prefix_query)

  # --------------------------------------------------------------------- forward
  def _packing_kwargs(self, batch: Batch) -> dict[str, Array]:
    names = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
             'decoder_positions')
    check_unpacked(self.prefix_length, 'encoder_segment_ids' in batch)
    return {k: batch[k] for k in names if k in batch}

  def _compute_logits(self, params: Params, batch: Batch,
                      dropout_rng: Optional[Array] = None,
                      model_state: Optional[Mapping[str, Any]] = None
                      ) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced logits [B, L, V] float32 and the retrieval outputs ({} w/o memory).

    `model_state`: non-parameter collections (e.g. the memory bank's usage stats),
    read only; None or {} for none.
    """
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    args = (batch['encoder_input_tokens'], batch['decoder_input_tokens'],
            batch['decoder_target_tokens'])
    kwargs = dict(self._packing_kwargs(batch), enable_dropout=rngs is not None)
    variables = {'params': params, **(model_state or {})}
    if not self.has_memory:
      return self.network.apply(variables, *args, rngs=rngs, **kwargs), {}
    logits, state = self.network.apply(variables, *args, rngs=rngs,
                                       mutable=[RETRIEVAL_COLLECTION], **kwargs)
    return logits, _retrieval_outputs(state[RETRIEVAL_COLLECTION])

  def _encode(self, params: Params, encoder_input_tokens: Array
              ) -> tuple[Array, dict[str, Array]]:
    """Encoder output [B, P + T, d] (prompt prefix included) and retrieval outputs."""
    kwargs = dict(enable_dropout=False, method=self.network.encode)
    if not self.has_memory:
      return self.network.apply({'params': params}, encoder_input_tokens, **kwargs), {}
    encoded, state = self.network.apply({'params': params}, encoder_input_tokens,
                                        mutable=[RETRIEVAL_COLLECTION], **kwargs)
    return encoded, _retrieval_outputs(state[RETRIEVAL_COLLECTION])

  # --------------------------------------------------------------------- training
  def loss_fn(self, params: Params, batch: Batch, dropout_rng: Optional[Array],
              model_state: Optional[Mapping[str, Any]] = None
              ) -> tuple[Array, dict[str, Array]]:
    """Training loss and metrics (dropout on iff `dropout_rng` is given).

    `model_state` holds the network's non-parameter collections (the memory bank's
    usage stats when dead-slot restarts are on), read only; the trainer updates them
    from the returned retrieval outputs.

    Returns:
      `(loss, metrics)`. `loss` = weighted cross-entropy (incl. z-loss, normalised as
      `loss_normalizing_factor` says) + the SPT key loss and balance loss (batch means,
      already scaled by `key_loss_weight` / `balance_loss_weight`). `metrics` (all arrays;
      sums are over this batch):
        loss, cross_ent_loss (without z-loss), z_loss, key_loss, balance_loss (when on),
        cross_ent_loss_per_token (unnormalised CE sum / num_tokens, for logging),
        correct_tokens, num_tokens (weighted sums: token accuracy = their ratio),
        token_accuracy, num_examples (rows with a target);
        with memory also retrieval_indices [B, k] int32, retrieval_scores [B, k]; with
        usage tracking retrieval_queries [B, d] and retrieval_valid [B].
    """
    logits, retrieval = self._compute_logits(params, batch, dropout_rng, model_state)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = targets > 0
    weights = weights.astype(jnp.float32)
    factor, loss_weights = _normalizing_factor_and_weights(self.loss_normalizing_factor,
                                                           weights)
    loss, z_loss, _ = compute_weighted_cross_entropy(
        logits, targets, weights=loss_weights, label_smoothing=self.label_smoothing,
        z_loss=self.z_loss, loss_normalizing_factor=factor)
    key_loss = retrieval.get('key_loss', jnp.zeros((), jnp.float32))
    total = loss + key_loss
    if 'balance_loss' in retrieval:
      total = total + retrieval['balance_loss']

    num_tokens = jnp.sum(weights)
    token_nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                     targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    correct_tokens = jnp.sum(correct * weights)
    metrics = {
        'loss': total,
        'cross_ent_loss': loss - z_loss,
        'z_loss': z_loss,
        'key_loss': key_loss,
        'cross_ent_loss_per_token': jnp.sum(token_nll * weights) / jnp.maximum(num_tokens, 1.0),
        'correct_tokens': correct_tokens,
        'num_tokens': num_tokens,
        'token_accuracy': correct_tokens / jnp.maximum(num_tokens, 1.0),
        'num_examples': jnp.sum(jnp.any(weights > 0, axis=-1).astype(jnp.int32)),
    }
    if 'balance_loss' in retrieval:
      metrics['balance_loss'] = retrieval['balance_loss']
    for name in ('indices', 'scores', 'queries', 'valid'):
      if name in retrieval:
        metrics[f'retrieval_{name}'] = retrieval[name]
    return total, metrics

  def eval_fn(self, params: Params, batch: Batch) -> dict[str, Array]:
    """Loss metrics without dropout (the trainer's periodic evaluation)."""
    return self.loss_fn(params, batch, dropout_rng=None)[1]

  # --------------------------------------------------------------------- scoring
  def score_batch(self, params: Params, batch: Batch, length_normalize: bool = False,
                  return_retrieval: bool = False, input_index: Optional[Array] = None):
    """Log-likelihood of each row's target tokens (rank classification's score).

    T5X semantics: the sum over target positions of `log p(target | prefix)` times
    `decoder_loss_weights` (default: non-pad targets), no dropout, no z-loss.

    Args:
      params: the 'params' tree.
      batch: seqio EncDec batch (see module doc).
      length_normalize: divide each row's sum by its (weighted) number of target tokens.
      return_retrieval: also return the retrieval outputs (for slot-usage statistics).
      input_index: None, or [B] int32 when `batch['encoder_input_tokens']` holds U distinct
        inputs [U, T] (U <= B) and row b's input is its row `input_index[b]`: each input is
        encoded (prompts and retrieval included) once, however many rows share it, as the
        answer choices of one rank-classification example do. Rows are scored exactly as
        in the expanded batch. Unpacked batches only.

    Returns:
      scores [B] float32; with `return_retrieval`, `(scores, retrieval)` where retrieval
      holds 'indices' [B, k] int32 and 'scores' [B, k] ({} when the network has no memory).
    """
    if input_index is None:
      logits, retrieval = self._compute_logits(params, batch, dropout_rng=None)
    else:
      if self._packing_kwargs(batch):
        raise ValueError('score_batch(input_index=...) takes unpacked batches (no segment ids '
                         'or positions).')
      encoded, retrieval = self._encode(params, batch['encoder_input_tokens'])
      logits = self.network.apply(
          {'params': params}, encoded[input_index], batch['encoder_input_tokens'][input_index],
          batch['decoder_input_tokens'], batch['decoder_target_tokens'], enable_dropout=False,
          method=self.network.decode)
      retrieval = {k: v[input_index] for k, v in retrieval.items() if k in ('indices', 'scores')}
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = targets > 0
    weights = weights.astype(jnp.float32)
    token_scores = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                       targets[..., None], axis=-1)[..., 0] * weights
    scores = jnp.sum(token_scores, axis=-1)
    if length_normalize:
      scores = scores / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    if not return_retrieval:
      return scores
    return scores, {k: v for k, v in retrieval.items() if k in ('indices', 'scores')}

  # --------------------------------------------------------------------- prediction
  def _init_cache(self, params: Params, encoded: Array, encoder_input_tokens: Array,
                  decode_length: int) -> Any:
    """Zero KV cache for batch B and `decode_length` positions (T5X: init with decode=True).

    Only the cache's shapes come from this call; the attention outputs are discarded.
    """
    batch = encoder_input_tokens.shape[0]
    dummy = jnp.ones((batch, decode_length), jnp.int32)
    _, state = self.network.apply(
        {'params': params}, encoded, encoder_input_tokens, dummy, dummy,
        enable_dropout=False, decode=True, max_decode_length=decode_length,
        mutable=['cache'], method=self.network.decode)
    return state['cache']

  def predict_batch_with_aux(
      self, params: Params, batch: Batch, decoding_method: str = 'greedy',
      num_decodes: int = 1, alpha: float = 0.6, max_decode_length: Optional[int] = None,
      temperature: float = 1.0, topk: int = 0, decode_rng: Optional[Array] = None,
      return_all_decodes: bool = False) -> tuple[Array, dict[str, Array]]:
    """Decodes with the KV cache; see `predict_batch`. Returns `(tokens, aux)`.

    aux: 'scores' ([B] or [B, n] with `return_all_decodes`: beam = length-penalised
    log-prob, greedy/sample = summed log-prob) and, with memory, 'retrieval_indices' [B, k].
    """
    if decoding_method not in _DECODINGS:
      raise ValueError(f'decoding={decoding_method!r} is not one of {_DECODINGS}.')
    encoder_input_tokens = batch['encoder_input_tokens']
    if max_decode_length is None:
      if 'decoder_input_tokens' not in batch:
        raise ValueError('predict_batch needs the decode length: pass max_decode_length or '
                         "a batch with 'decoder_input_tokens' [B, L].")
      max_decode_length = batch['decoder_input_tokens'].shape[1]
    length = int(max_decode_length)
    batch_size = encoder_input_tokens.shape[0]
    if decoding_method == 'greedy':
      num_decodes = 1

    encoded, retrieval = self._encode(params, encoder_input_tokens)
    cache = self._init_cache(params, encoded, encoder_input_tokens, length)
    encoded = decoding.flat_batch_beam_expand(encoded, num_decodes)
    raw_inputs = decoding.flat_batch_beam_expand(encoder_input_tokens, num_decodes)

    def tokens_to_logits(state: decoding.DecodingState):
      logits, new_vars = self.network.apply(
          {'params': params, 'cache': state.cache}, encoded, raw_inputs, state.cur_token,
          state.cur_token, enable_dropout=False, decode=True, max_decode_length=length,
          mutable=['cache'], method=self.network.decode)
      return logits[:, 0, :], new_vars['cache']

    prompt = jnp.zeros((batch_size, length), jnp.int32)
    if decoding_method == 'beam':
      seqs, scores = decoding.beam_search(prompt, cache, tokens_to_logits, self.eos_id,
                                          num_decodes=num_decodes, alpha=alpha)
    else:
      seqs, scores = decoding.temperature_sample(
          prompt, cache, tokens_to_logits, self.eos_id, decode_rng=decode_rng,
          num_decodes=num_decodes,
          temperature=0.0 if decoding_method == 'greedy' else temperature, topk=topk)
    if not return_all_decodes:
      seqs, scores = seqs[:, -1], scores[:, -1]
    aux = {'scores': scores}
    if 'indices' in retrieval:
      aux['retrieval_indices'] = retrieval['indices']
    return seqs, aux

  def predict_batch(self, params: Params, batch: Batch, decoding: str = 'greedy',
                    num_decodes: int = 4, alpha: float = 0.6,
                    max_decode_length: Optional[int] = None, return_scores: bool = False,
                    **kwargs):
    """Predicted target tokens [B, L] (best decode; 0 after EOS).

    Args:
      params: the 'params' tree.
      batch: needs 'encoder_input_tokens'; 'decoder_input_tokens' gives L unless
        `max_decode_length` is passed.
      decoding: 'greedy', 'beam' (width `num_decodes`, length penalty `alpha`) or 'sample'
        (`temperature`, `topk`, `decode_rng` in kwargs; best of `num_decodes`).
      num_decodes: beam width / number of samples (ignored by greedy).
      alpha: beam-search length-penalty exponent.
      max_decode_length: L, the number of decoded positions.
      return_scores: also return the best decode's score [B].
      **kwargs: passed to `predict_batch_with_aux` (temperature, topk, decode_rng,
        return_all_decodes).

    Returns:
      tokens [B, L] int32, or `(tokens, scores [B])` with `return_scores`.
    """
    seqs, aux = self.predict_batch_with_aux(
        params, batch, decoding_method=decoding, num_decodes=num_decodes, alpha=alpha,
        max_decode_length=max_decode_length, **kwargs)
    return (seqs, aux['scores']) if return_scores else seqs
