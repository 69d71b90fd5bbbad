"""SPT prompts: a shared soft prompt and a memory bank of prompts retrieved per example.

Semi-Parametric Prompt Tuning (SPT, arXiv 2212.10929) prepends two things to the
embedded encoder input of T5:

* a soft prompt ``P: [L_p, d]`` shared by all examples (prompt tuning, Lester et al.);
* ``k`` memory prompts ``V[I]: [k, L_m, d]`` retrieved from a memory bank of ``M``
  prompts, keyed by the example's discrete prompt (its ``inputs`` tokens).

The paper publishes no equations; every choice below is a field of `PromptConfig`
with the default that docs/ARCHITECTURE.md and the project's DESIGN.md name (our
reading of the paper):

1. ``q = pool(E(x), mask)`` with ``pool`` in ``mean | max | mean_max`` over non-pad
   tokens (``mean_max`` = ``(mean + max) / 2`` so the key size stays ``d``), under
   ``stop_gradient`` by default.
2. ``s = q Kᵀ`` (``dot``) or ``q̂ K̂ᵀ`` (``cosine``) in one matmul, ``I = top_k(s)``.
3. ``R = V[I]``, scaled per retrieved prompt by ``k·softmax(s_I / τ)`` (``softmax``,
   which gives the keys a gradient) or not at all (``none``).
4. Optional key-pull loss ``λ·mean(1 − cos(q, K_I))``.

Read as written, only the k retrieved keys get a gradient and the query is
stop-gradient, so an unretrieved key never moves and slot usage stays where
initialisation put it. Remedies, each a `PromptConfig` field that is off by
default (all off is bit-identical to the computation above):

5. A Switch-Transformer load-balancing loss ``α·M·Σᵢ fᵢPᵢ`` over all M slots
   (`balance_loss`), which gives every key a gradient.
6. Dead-slot restarts (VQ-VAE codebook style): an EMA of each slot's share of
   retrievals and a ring buffer of recent queries live in the non-parameter
   collection `MEMORY_STATS_COLLECTION`; every ``restart_every_steps`` the trainer
   re-draws the keys of slots below ``restart_threshold / M`` from buffered
   queries (`update_memory_stats`, `restart_slots`).
7. Data-driven key initialisation from the first training batches' queries
   ('queries' or seeded spherical k-means; `init_keys_from_queries`).
8. ATTEMPT's learnable query ``LayerNorm(W_up·SiLU(W_down·q))`` (`QueryProjection`).
9. A control, ``slot_assignment='fixed_random'``: slots are a frozen pseudo-random
   hash of the discrete prompt and only the retrieved values train.

The memory table is declared with logical axes (``memory``, ``embed``) /
(``memory``, ``memory_length``, ``embed``). When the active flax logical axis rules
map ``memory`` to a mesh axis of size ``P > 1`` of the current mesh (set with
``jax.set_mesh``), retrieval runs as a two-stage top-k inside ``jax.shard_map``:
each shard scores its ``M / P`` rows and takes a local top-k, the ``P·k``
candidates (scores and global indices) are gathered, and the global top-k is
taken from them. The full ``[B, M]`` score matrix is never gathered, and the
result equals single-device ``lax.top_k`` exactly (ties break by lower index).
Retrieved rows of a sharded table are read with a shard-local masked gather and a
``psum`` of the ``[B, k, ...]`` result.

This module knows nothing of seqio, gin or mesh axis names (those live in
``partitioning``); it finds the mesh axis of ``memory`` through flax's rules API.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from absl import logging
import flax
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from spt_jax import retrieval_analysis

Array = jax.Array

# Variable collection that `MemoryBank` sows retrieval outputs into. Apply the
# network with ``mutable=[RETRIEVAL_COLLECTION]`` to read them.
RETRIEVAL_COLLECTION = 'retrieval'

_POOLINGS = ('mean', 'max', 'mean_max')
_SIMILARITIES = ('cosine', 'dot')
_WEIGHTINGS = ('softmax', 'none')
_INITS = ('sampled_vocab', 'uniform')
_KEY_INITS = ('values_mean', 'queries', 'kmeans')
_QUERY_PROJECTIONS = ('none', 'attempt')
_SLOT_ASSIGNMENTS = ('learned', 'fixed_random')
# Non-parameter collection holding the memory bank's usage statistics (see
# `MemoryBank`); the trainer carries it in `TrainState.model_state`.
MEMORY_STATS_COLLECTION = 'memory_stats'
# Fixed PRNG seeds of the 'fixed_random' slot assignment (token embedding, keys).
_FIXED_EMBED_SEED = 0
_FIXED_KEYS_SEED = 1
# Norm floor for cosine similarity; an all-padding query becomes the zero vector.
_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """What is prepended to the encoder input. Defaults are our reading of SPT.

  ``memory_size=0`` is prompt tuning (Lester et al.); ``soft_prompt_length=0`` and
  ``memory_size=0`` is plain T5, bit for bit. Static consistency is checked when
  the config is built; `validate` adds the checks that need the run's input length
  and packing setting.

  Attributes:
    soft_prompt_length: L_p, tokens of the shared soft prompt (0 allowed).
    soft_prompt_init: 'sampled_vocab' (rows of the token embedding table) or
      'uniform' (U[-scale, scale]).
    soft_prompt_init_scale: scale of the uniform init.
    memory_size: M, number of memory prompts (0 disables retrieval).
    memory_length: L_m, tokens per memory prompt.
    top_k: k, memory prompts retrieved per example.
    pooling: query pooling of the embedded discrete prompt over non-pad tokens:
      'mean', 'max' or 'mean_max' ((mean + max) / 2).
    similarity: 'cosine' or 'dot'.
    weighting: 'softmax' (scale retrieved prompt j by k·softmax(s_I/τ)_j; keys
      get a gradient) or 'none' (hard retrieval; keys get no gradient unless the
      key loss is on).
    temperature: τ of the softmax weighting (0.1 suits cosine scores in [-1, 1]).
    key_loss_weight: λ of the key-pull loss λ·mean(1 − cos(q, K_I)) (0 = off).
    query_stop_gradient: stop the gradient from retrieval into the token embedder.
    memory_init: 'sampled_vocab' (values = sampled embedding rows, keys = mean of
      their value rows) or 'uniform' (both U[-scale, scale]).
    memory_init_scale: scale of the uniform memory init.
    init_vocab_size: 'sampled_vocab' draws token ids from [0, min(V, this)); in
      T5's SentencePiece vocabulary low ids are the frequent pieces, so 5000
      follows Lester et al.'s "5,000 most common tokens".
    max_encoder_length: optional limit on L_p + k·L_m + input length (positions
      the encoder sees); `validate` raises when a run's input length exceeds it.
    balance_loss_weight: α of the Switch-Transformer load-balancing loss
      α·M·Σᵢ fᵢPᵢ over all M slots (fᵢ: share of the batch's retrievals that hit
      slot i; Pᵢ: batch mean of softmax(s/τ) over all M slots). Unlike the
      softmax weighting it gives every key a gradient (0 = off).
    usage_ema_decay: decay of the per-slot EMA of the retrieval share that the
      dead-slot restart reads.
    restart_every_steps: every this many train steps, keys of dead slots are
      re-drawn from recently buffered queries (VQ-VAE codebook restart; 0 = off).
    restart_threshold: a slot is dead when its EMA share is below
      ``restart_threshold / M`` (i.e. relative to uniform use).
    restart_noise: std of the Gaussian noise added to a restarted key, times the
      norm of the query it is drawn from.
    restart_copy_values: also copy the values of the most-used live slots into
      the restarted slots (default: restarted slots keep their values).
    query_buffer_size: ring buffer of recent training queries restarts draw from.
    key_init: 'values_mean' (keys = mean of their value rows, at init),
      'queries' (keys = a seeded sample of the first training batches' queries +
      small noise) or 'kmeans' (a few seeded Lloyd iterations on those queries;
      spherical under cosine similarity). The data-driven ones are applied by the
      trainer at step 0 (`init_keys_from_queries`).
    key_init_batches: training batches whose queries 'queries' / 'kmeans' use.
    query_projection: 'none' or 'attempt' (ATTEMPT's learnable query
      LayerNorm(W_up·SiLU(W_down·pool(E[x])))); it trains even under
      query_stop_gradient, which stops only the gradient into the embedder.
    query_projection_dim: r, the bottleneck width of the 'attempt' projection.
    slot_assignment: 'learned' (retrieval by the learned keys) or 'fixed_random'
      (a control: slots are a frozen pseudo-random hash of the discrete prompt:
      mean of a fixed random token embedding scored against fixed random keys;
      only the retrieved values train).
  """
  soft_prompt_length: int = 20
  soft_prompt_init: str = 'sampled_vocab'
  soft_prompt_init_scale: float = 0.5
  memory_size: int = 1024
  memory_length: int = 5
  top_k: int = 4
  pooling: str = 'mean'
  similarity: str = 'cosine'
  weighting: str = 'softmax'
  temperature: float = 0.1
  key_loss_weight: float = 0.0
  query_stop_gradient: bool = True
  memory_init: str = 'sampled_vocab'
  memory_init_scale: float = 0.5
  init_vocab_size: int = 5000
  max_encoder_length: int | None = None
  balance_loss_weight: float = 0.0
  usage_ema_decay: float = 0.99
  restart_every_steps: int = 0
  restart_threshold: float = 0.05
  restart_noise: float = 0.01
  restart_copy_values: bool = False
  query_buffer_size: int = 256
  key_init: str = 'values_mean'
  key_init_batches: int = 4
  query_projection: str = 'none'
  query_projection_dim: int = 100
  slot_assignment: str = 'learned'

  def __post_init__(self):
    self._check_static()

  @property
  def retrieved_length(self) -> int:
    """k·L_m: positions taken by retrieved memory prompts (0 when M = 0)."""
    return self.top_k * self.memory_length if self.memory_size > 0 else 0

  @property
  def tracks_usage(self) -> bool:
    """Whether the bank keeps `MEMORY_STATS_COLLECTION` state (dead-slot restart on)."""
    return self.memory_size > 0 and self.restart_every_steps > 0

  @property
  def prefix_length(self) -> int:
    """L_p + k·L_m: positions prepended to the embedded encoder input."""
    return self.soft_prompt_length + self.retrieved_length

  def _check_static(self):
    """Checks that need nothing but the config itself."""
    def choice(name, allowed):
      value = getattr(self, name)
      if value not in allowed:
        raise ValueError(
            f'PromptConfig.{name}={value!r} is not one of {allowed}; set one of those.')
    choice('soft_prompt_init', _INITS)
    choice('memory_init', _INITS)
    choice('pooling', _POOLINGS)
    choice('similarity', _SIMILARITIES)
    choice('weighting', _WEIGHTINGS)
    choice('key_init', _KEY_INITS)
    choice('query_projection', _QUERY_PROJECTIONS)
    choice('slot_assignment', _SLOT_ASSIGNMENTS)
    for name in ('soft_prompt_length', 'memory_size'):
      if getattr(self, name) < 0:
        raise ValueError(f'PromptConfig.{name}={getattr(self, name)} is negative; '
                         'use 0 to disable it.')
    if self.init_vocab_size < 1:
      raise ValueError(f'PromptConfig.init_vocab_size={self.init_vocab_size} must be >= 1.')
    if self.memory_size > 0:
      if self.top_k < 1:
        raise ValueError(f'PromptConfig.top_k={self.top_k} must be >= 1 when '
                         f'memory_size={self.memory_size} > 0 (or set memory_size=0).')
      if self.top_k > self.memory_size:
        raise ValueError(
            f'PromptConfig.top_k={self.top_k} exceeds memory_size={self.memory_size}: '
            'cannot retrieve more memory prompts than the bank holds; lower top_k '
            'or raise memory_size.')
      if self.memory_length < 1:
        raise ValueError(f'PromptConfig.memory_length={self.memory_length} must be >= 1 '
                         'when memory_size > 0 (or set memory_size=0).')
      if self.temperature <= 0:
        raise ValueError(f'PromptConfig.temperature={self.temperature} must be > 0.')
      if self.key_loss_weight < 0:
        raise ValueError(f'PromptConfig.key_loss_weight={self.key_loss_weight} must be >= 0.')
      if self.balance_loss_weight < 0:
        raise ValueError(
            f'PromptConfig.balance_loss_weight={self.balance_loss_weight} must be >= 0.')
      if not 0. <= self.usage_ema_decay < 1.:
        raise ValueError(f'PromptConfig.usage_ema_decay={self.usage_ema_decay} must be in '
                         '[0, 1).')
      if self.restart_every_steps < 0:
        raise ValueError(f'PromptConfig.restart_every_steps={self.restart_every_steps} is '
                         'negative; use 0 to disable dead-slot restarts.')
      if self.restart_threshold < 0 or self.restart_noise < 0:
        raise ValueError('PromptConfig.restart_threshold and restart_noise must be >= 0; got '
                         f'{self.restart_threshold} and {self.restart_noise}.')
      if self.query_buffer_size < 1:
        raise ValueError(f'PromptConfig.query_buffer_size={self.query_buffer_size} must be '
                         '>= 1.')
      if self.key_init_batches < 1:
        raise ValueError(f'PromptConfig.key_init_batches={self.key_init_batches} must be >= 1.')
      if self.query_projection_dim < 1:
        raise ValueError(
            f'PromptConfig.query_projection_dim={self.query_projection_dim} must be >= 1.')
      if self.slot_assignment == 'fixed_random':
        learned = {name: getattr(self, name) for name, off in (
            ('key_loss_weight', 0.), ('balance_loss_weight', 0.), ('restart_every_steps', 0),
            ('key_init', 'values_mean'), ('query_projection', 'none'))
                   if getattr(self, name) != off}
        if learned:
          raise ValueError(
              f"PromptConfig.slot_assignment='fixed_random' has no learned keys or query, so "
              f'{learned} cannot apply; turn those off or use slot_assignment=\'learned\'.')
    if self.max_encoder_length is not None and self.prefix_length > self.max_encoder_length:
      raise ValueError(
          f'The prompt prefix alone (L_p + k·L_m = {self.soft_prompt_length} + '
          f'{self.retrieved_length} = {self.prefix_length}) exceeds max_encoder_length='
          f'{self.max_encoder_length}; shorten the prompts or raise max_encoder_length.')

  def validate(self, max_input_length: int | None = None, pack: bool = False) -> None:
    """Raises ValueError for a configuration that cannot run as asked.

    Args:
      max_input_length: the encoder input feature length of the run (``inputs``
        tokens, before the prompt prefix).
      pack: whether the run packs several examples into one sequence.
    """
    self._check_static()
    if pack and self.prefix_length > 0:
      raise ValueError(
          f'Packing is not supported with prompts (prefix_length={self.prefix_length}): '
          'each packed segment would need its own soft/memory prompt. Run with '
          'pack=False (prompted examples are short), or set soft_prompt_length=0 '
          'and memory_size=0 for plain fine-tuning.')
    if max_input_length is not None:
      if max_input_length < 1:
        raise ValueError(f'max_input_length={max_input_length} must be >= 1.')
      if (self.max_encoder_length is not None
          and self.prefix_length + max_input_length > self.max_encoder_length):
        raise ValueError(
            f'Encoder length L_p + k·L_m + input length = {self.soft_prompt_length} + '
            f'{self.retrieved_length} + {max_input_length} = '
            f'{self.prefix_length + max_input_length} exceeds max_encoder_length='
            f'{self.max_encoder_length}; shorten the inputs feature length, the soft '
            'prompt, memory_length or top_k, or raise max_encoder_length.')


# ----------------------------------------------------------------------------
# Initialisers.


def _sample_vocab_rows(rng: Array, embedding_table: Array, shape: tuple[int, ...],
                       vocab_limit: int) -> Array:
  """Rows of ``embedding_table`` at uniformly drawn ids; returns ``shape + (d,)``."""
  vocab = min(int(embedding_table.shape[0]), vocab_limit)
  ids = jax.random.randint(rng, shape, 0, vocab)
  return jnp.take(jnp.asarray(embedding_table, jnp.float32), ids, axis=0)


def _uniform(rng: Array, shape: tuple[int, ...], scale: float) -> Array:
  return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)


def _prompt_rows_init(init_kind: str, scale: float, embedding_table: Array,
                      vocab_limit: int):
  """Initializer of prompt rows `[..., d]`: sampled vocabulary embeddings or uniform(scale)."""
  def init(rng, shape, dtype=jnp.float32):
    del dtype
    if init_kind == 'sampled_vocab':
      return _sample_vocab_rows(rng, embedding_table, shape[:-1], vocab_limit)
    return _uniform(rng, shape, scale)
  return init


def _memory_keys_init(config: PromptConfig, values: Array):
  def init(rng, shape, dtype=jnp.float32):
    del dtype
    if config.memory_init == 'sampled_vocab':
      return jnp.mean(values, axis=1)
    return _uniform(rng, shape, config.memory_init_scale)
  return init


# ----------------------------------------------------------------------------
# Query, similarity and (sharded) retrieval.


def pool_query(embedded: Array, input_mask: Array, pooling: str) -> Array:
  """Pools the embedded discrete prompt over its non-pad tokens.

  Args:
    embedded: [B, T, d] token embeddings.
    input_mask: [B, T], nonzero for real tokens.
    pooling: 'mean', 'max' or 'mean_max' ((mean + max) / 2).

  Returns:
    [B, d] float32 query; all-padding rows give the zero vector.
  """
  x = embedded.astype(jnp.float32)
  mask = (input_mask > 0)[..., None]
  any_token = jnp.any(mask, axis=1)  # [B, 1]
  mean = jnp.sum(jnp.where(mask, x, 0.), axis=1) / jnp.maximum(
      jnp.sum(mask, axis=1), 1).astype(jnp.float32)
  if pooling == 'mean':
    return mean
  mx = jnp.where(any_token, jnp.max(jnp.where(mask, x, -jnp.inf), axis=1), 0.)
  if pooling == 'max':
    return mx
  if pooling == 'mean_max':
    return 0.5 * (mean + mx)
  raise ValueError(f'Unknown pooling {pooling!r}; use one of {_POOLINGS}.')


def _normalize(x: Array) -> Array:
  """Unit L2 norm along the last axis (zero stays zero)."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(sq, _NORM_EPS))


def _scores(query: Array, keys: Array, similarity: str) -> Array:
  """[B, d] x [M, d] -> [B, M] float32 similarity, one matmul.

  Cosine normalises the keys on CPU, where XLA fuses that into the matmul's
  operand, and elsewhere scales the raw scores by 1/|K_m| instead, so no
  normalised [M, d] copy of the keys is written (for M = 1M, d = 512 that copy
  is as much memory traffic as the matmul's own; measured on an H100: retrieval
  3.3 ms -> 2.5 ms). The two forms differ in the last float32 bit only; a
  computation uses one of them everywhere, sharded or not.
  """
  if similarity == 'dot':
    return jnp.einsum('bd,md->bm', query, keys, preferred_element_type=jnp.float32)
  if similarity != 'cosine':
    raise ValueError(f'Unknown similarity {similarity!r}; use one of {_SIMILARITIES}.')
  query = _normalize(query)

  def normalized_keys(query, keys):
    return jnp.einsum('bd,md->bm', query, _normalize(keys), preferred_element_type=jnp.float32)

  def scaled_scores(query, keys):
    inv_norm = lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(keys), axis=-1), _NORM_EPS))
    raw = jnp.einsum('bd,md->bm', query, keys, preferred_element_type=jnp.float32)
    return raw * inv_norm[None, :]

  return lax.platform_dependent(query, keys, cpu=normalized_keys, default=scaled_scores)


# The exact top-k below chunks rows of at least this many scores.
_TOP_K_MIN_ROW = 256


def _top_k_chunk(num: int, k: int) -> int | None:
  """Chunk width for `top_k_rows`, or None for a single lax.top_k.

  XLA's TopK costs ~c per element it scans, so per row the two top-k stages scan
  M/c block maxima and k·c candidates: c ≈ sqrt(M / k) minimises M/c + k·c. A
  power of two in [8, 1024] that divides M is used.
  """
  if num < _TOP_K_MIN_ROW:
    return None
  chunk = 2 ** int(round(math.log2(max(math.sqrt(num / k), 1.))))
  chunk = min(max(chunk, 8), 1024)
  while chunk >= 8:
    if num % chunk == 0 and num // chunk >= k:
      return chunk
    chunk //= 2
  return None


def _plus_zero(x: Array) -> Array:
  """Maps -0.0 to +0.0 so that XLA's TopK (which orders -0 below +0) sees them equal."""
  return jnp.where(x == 0, jnp.zeros((), x.dtype), x)


def _sort_small(ids: Array) -> Array:
  """Ascending sort of the last axis of distinct small-k int rows, with elementwise
  ops on [B, k, k] (cheaper than an XLA sort for k of a few)."""
  rank = jnp.sum(ids[..., None, :] < ids[..., :, None], axis=-1)      # [B, k]
  onehot = rank[..., :, None] == jnp.arange(ids.shape[-1])            # [B, k(src), k(dst)]
  return jnp.sum(jnp.where(onehot, ids[..., :, None], 0), axis=-2).astype(ids.dtype)


def top_k_rows(scores: Array, k: int) -> tuple[Array, Array]:
  """Exact top-k of each row of [B, M] scores; fast for large M.

  Order: descending value, equal values (-0.0 == +0.0) by lower index, i.e. the
  order of NumPy's stable ``argsort(-scores)`` and of `lax.top_k` on NaN-free,
  -0-free input. XLA's CPU TopK costs several ns per element and a max-reduction
  ~10x less, so for large M each row is cut into chunks (`_top_k_chunk`), the k
  chunks with the largest maxima are chosen (lower chunk first among equal
  maxima), and `lax.top_k` runs over their k·chunk scores in ascending index
  order. That is exact, ties included: an element outside the chosen chunks is
  preceded in this order by the maxima of k chosen chunks. Scores must be NaN-free.

  Returns:
    (values [B, k], indices [B, k] int32).
  """
  batch, num = scores.shape
  chunk = _top_k_chunk(num, k)
  if chunk is None:
    return lax.top_k(_plus_zero(scores), k)
  blocks = scores.reshape(batch, num // chunk, chunk)
  _, block_ids = lax.top_k(_plus_zero(jnp.max(blocks, axis=2)), k)    # [B, k]
  block_ids = _sort_small(block_ids)                                   # ascending
  candidates = jnp.take_along_axis(blocks, block_ids[:, :, None], axis=1)
  values, pos = lax.top_k(_plus_zero(candidates.reshape(batch, k * chunk)), k)
  ids = (block_ids[:, :, None] * chunk
         + jnp.arange(chunk, dtype=block_ids.dtype)).reshape(batch, k * chunk)
  return values, jnp.take_along_axis(ids, pos, axis=1)


def _mesh_axes_of(logical_name: str) -> tuple[str, ...] | None:
  """Mesh axes (of size > 1 together) a logical axis maps to now, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return None
  spec = nn.logical_to_mesh_axes((logical_name,))
  entry = spec[0] if spec is not None and len(spec) else None
  if entry is None or entry is PartitionSpec.UNCONSTRAINED:
    return None
  axes = (entry,) if isinstance(entry, str) else tuple(entry)
  if any(a not in mesh.shape for a in axes):
    return None
  if math.prod(mesh.shape[a] for a in axes) <= 1:
    return None
  return axes


def _axes_size(axes: tuple[str, ...]) -> int:
  mesh = jax.sharding.get_abstract_mesh()
  return math.prod(mesh.shape[a] for a in axes)


def memory_mesh_axes(num_rows: int) -> tuple[str, ...] | None:
  """Mesh axes the logical ``memory`` axis is split over, or None if unsplit.

  Uses the flax logical axis rules active at trace time (``nn.logical_axis_rules``)
  and the mesh set with ``jax.set_mesh``. Returns None when no mesh or no rule is
  active, the axes have total size 1, or ``num_rows`` does not divide evenly (then
  retrieval runs as plain single-program code and XLA partitions it).
  """
  axes = _mesh_axes_of('memory')
  if axes is None:
    return None
  size = _axes_size(axes)
  if num_rows % size:
    logging.warning(
        'Memory bank of %d rows does not divide over mesh axes %s (size %d); '
        'retrieval falls back to unsharded code.', num_rows, axes, size)
    return None
  return axes


def _batch_spec(batch_size: int, memory_axes: tuple[str, ...]) -> PartitionSpec:
  """Spec of a [B, ...] activation inside the retrieval shard_map.

  The batch stays split as the ``batch`` rule says (so each data shard retrieves
  for its own rows only) unless that would reuse a memory axis or not divide.
  """
  axes = _mesh_axes_of('batch')
  if (axes is None or set(axes) & set(memory_axes) or batch_size % _axes_size(axes)):
    return PartitionSpec()
  return PartitionSpec(axes)


def _as_spec(x: Array, spec: PartitionSpec) -> Array:
  """Reshards ``x`` to ``spec`` where the mesh has Explicit axes (shard_map requires
  in_specs to match their sharding types); on Auto meshes shard_map reshards itself."""
  mesh = jax.sharding.get_abstract_mesh()
  if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return jax.sharding.reshard(x, spec)
  return x


def _sharded_top_k(query: Array, keys: Array, k: int, similarity: str,
                   axes: tuple[str, ...]) -> tuple[Array, Array]:
  """Two-stage top-k over keys split along rows on ``axes`` (no gradient)."""

  def local(q, keys_local):
    rows = keys_local.shape[0]
    local_k = min(k, rows)
    scores, idx = top_k_rows(_scores(q, keys_local, similarity), local_k)
    idx = idx + lax.axis_index(axes) * rows
    # [B, P * local_k], ordered by shard then local rank: among equal scores the
    # lower global index comes first, so the second top_k breaks ties as the
    # unsharded one does.
    scores = lax.all_gather(scores, axes, axis=1, tiled=True)
    idx = lax.all_gather(idx, axes, axis=1, tiled=True)
    top_scores, pos = lax.top_k(scores, k)
    return top_scores, jnp.take_along_axis(idx, pos, axis=1)

  # All mesh axes manual: the batch split is explicit, so XLA cannot choose to
  # gather shard-local [B, M/P] scores over the batch axis. Outputs replicated
  # over the memory axes come from all_gather, which needs check_vma=False;
  # nothing here is differentiated (inputs are stop_gradient'ed by the caller).
  batch = _batch_spec(query.shape[0], axes)
  return jax.shard_map(
      local, in_specs=(batch, PartitionSpec(axes)), out_specs=(batch, batch),
      check_vma=False)(_as_spec(query, batch), _as_spec(keys, PartitionSpec(axes)))


def retrieve_top_k(query: Array, keys: Array, k: int,
                   similarity: str = 'cosine') -> tuple[Array, Array]:
  """Top-k memory rows for each query; exact, two-stage when keys are sharded.

  The result carries no gradient (inputs are stop_gradient'ed); `MemoryBank`
  recomputes differentiable scores from the k gathered keys, which also keeps the
  backward pass free of a dense [B, M] matmul.

  Args:
    query: [B, d] float.
    keys: [M, d] float.
    k: rows to retrieve, 1 <= k <= M.
    similarity: 'cosine' or 'dot'.

  Returns:
    (scores [B, k] float32, indices [B, k] int32), scores descending; equal scores
    are ordered by lower index, as `lax.top_k` does, sharded or not.
  """
  num_rows = keys.shape[0]
  if not 1 <= k <= num_rows:
    raise ValueError(f'top_k={k} must be in [1, memory_size={num_rows}].')
  query = lax.stop_gradient(query.astype(jnp.float32))
  keys = lax.stop_gradient(keys.astype(jnp.float32))
  axes = memory_mesh_axes(num_rows)
  if axes is None:
    scores, indices = top_k_rows(_scores(query, keys, similarity), k)
  else:
    scores, indices = _sharded_top_k(query, keys, k, similarity, axes)
  return scores, indices.astype(jnp.int32)


def gather_rows(table: Array, indices: Array, sharded: bool | None = None) -> Array:
  """``table[indices]`` along axis 0, differentiable, for a row-sharded table.

  When the logical ``memory`` axis is split over mesh axes (see
  `memory_mesh_axes`), each shard gathers the rows it holds (others masked to
  zero) and a ``psum`` combines the [*indices.shape, ...] results, so only the
  retrieved rows travel; the gradient scatters back into the owning shard.

  Args:
    table: [M, ...] array whose rows are the logical ``memory`` axis.
    indices: int array of row ids in [0, M).
    sharded: None = decide from the active mesh and rules; False forces a plain
      ``jnp.take`` (XLA partitions it); True requires a split ``memory`` axis.

  Returns:
    [*indices.shape, *table.shape[1:]].
  """
  axes = memory_mesh_axes(table.shape[0]) if sharded is not False else None
  if sharded and axes is None:
    raise ValueError('gather_rows(sharded=True) needs a mesh (jax.set_mesh) and logical '
                     'axis rules mapping "memory" to a mesh axis that divides the table.')
  if axes is None:
    return jnp.take(table, indices, axis=0)

  def local(table_local, idx):
    rows = table_local.shape[0]
    local_idx = idx - lax.axis_index(axes) * rows
    here = (local_idx >= 0) & (local_idx < rows)
    got = jnp.take(table_local, jnp.clip(local_idx, 0, rows - 1), axis=0)
    here = here.reshape(here.shape + (1,) * (got.ndim - here.ndim))
    return lax.psum(jnp.where(here, got, jnp.zeros((), got.dtype)), axes)

  batch = _batch_spec(indices.shape[0], axes) if indices.ndim else PartitionSpec()
  return jax.shard_map(
      local, in_specs=(PartitionSpec(axes), batch), out_specs=batch)(
          _as_spec(table, PartitionSpec(axes)), _as_spec(indices, batch))


def _valid_counts(indices: Array, valid: Array, num_rows: int, offset: Array | int = 0
                  ) -> Array:
  """[num_rows] float32: retrievals of rows [offset, offset + num_rows) by valid examples."""
  local = indices - offset
  here = (local >= 0) & (local < num_rows) & valid[:, None]
  return jnp.zeros((num_rows,), jnp.float32).at[jnp.clip(local, 0, num_rows - 1)].add(
      here.astype(jnp.float32))


def balance_loss(query: Array, keys: Array, indices: Array, valid: Array,
                 temperature: float, similarity: str = 'cosine') -> Array:
  """Switch-Transformer load balancing over all M slots: M·Σᵢ fᵢ·Pᵢ (unweighted).

  fᵢ is the share of this batch's retrievals (valid examples only, k per example,
  so Σf = 1) that went to slot i, without gradient; Pᵢ is the mean over valid
  examples of softmax(s / τ) over all M slots, s the retrieval similarity. P is
  differentiable w.r.t. every key (and the query unless it is stopped), so
  unretrieved keys are pulled towards queries while over-used ones are pushed
  away. Uniform use gives 1.

  When the bank is row-sharded (`memory_mesh_axes`), each shard scores its own
  M/P keys inside `jax.shard_map`; the softmax normaliser comes from a pmax and
  psum of per-shard partial sums, the shard's [M/P] parts of f and P are summed
  over the batch shards and the Σ fᵢPᵢ partial sums are psum'ed, so no [B, M]
  array is ever gathered.

  Args:
    query: [B, d] retrieval queries.
    keys: [M, d] memory keys.
    indices: [B, k] int retrieved slots.
    valid: [B] bool, examples with at least one real token.
    temperature: τ.
    similarity: 'cosine' or 'dot'.

  Returns:
    float32 scalar.
  """
  num_rows, k = keys.shape[0], indices.shape[1]
  query, keys = query.astype(jnp.float32), keys.astype(jnp.float32)
  validf = valid.astype(jnp.float32)
  axes = memory_mesh_axes(num_rows)
  if axes is None:
    p = jax.nn.softmax(_scores(query, keys, similarity) / temperature, axis=-1)
    mean_p = jnp.sum(p * validf[:, None], axis=0)
    counts = lax.stop_gradient(_valid_counts(indices, valid, num_rows))
    n = jnp.maximum(jnp.sum(validf), 1.)
    return num_rows * jnp.sum(counts * mean_p) / (n * n * k)

  batch = _batch_spec(query.shape[0], axes)
  batch_axes = tuple(a for entry in batch for a in ((entry,) if isinstance(entry, str)
                                                    else tuple(entry or ())))

  def local(q, keys_local, idx, v):
    rows = keys_local.shape[0]
    s = _scores(q, keys_local, similarity) / temperature           # [b, M/P]
    shift = lax.pmax(lax.stop_gradient(jnp.max(s, axis=1)), axes)  # [b]
    total = lax.psum(jnp.sum(jnp.exp(s - shift[:, None]), axis=1), axes)
    p = jnp.exp(s - (shift + jnp.log(total))[:, None])
    vf = v.astype(jnp.float32)
    mean_p = jnp.sum(p * vf[:, None], axis=0)                      # [M/P]
    counts = lax.stop_gradient(
        _valid_counts(idx, v, rows, lax.axis_index(axes) * rows))
    n = jnp.sum(vf)
    if batch_axes:  # f and P are means over the whole batch: sum the [M/P] parts first.
      counts, mean_p, n = (lax.psum(x, batch_axes) for x in (counts, mean_p, n))
    partial = lax.psum(jnp.sum(counts * mean_p), axes)
    return num_rows * partial / (jnp.square(jnp.maximum(n, 1.)) * k)

  return jax.shard_map(
      local, in_specs=(batch, PartitionSpec(axes), batch, batch), out_specs=PartitionSpec())(
          _as_spec(query, batch), _as_spec(keys, PartitionSpec(axes)),
          _as_spec(indices, batch), _as_spec(valid, batch))


# ----------------------------------------------------------------------------
# Modules.


class SoftPrompt(nn.Module):
  """Shared soft prompt P: [L_p, d] (Lester et al.).

  Attributes:
    config: the prompt configuration.
    emb_dim: d, the model width.
  """
  config: PromptConfig
  emb_dim: int

  @nn.compact
  def __call__(self, batch_size: int, embedding_table: Array) -> Array:
    """Returns the soft prompt for every example.

    Args:
      batch_size: B.
      embedding_table: [V, d] token embedding table; 'sampled_vocab' init copies
        rows of it (at init only).

    Returns:
      [B, L_p, d] float32 (L_p may be 0; then no parameter is created).
    """
    length = self.config.soft_prompt_length
    if length == 0:
      return jnp.zeros((batch_size, 0, self.emb_dim), jnp.float32)
    _check_table(embedding_table, self.emb_dim, 'SoftPrompt')
    prompt = self.param(
        'prompt',
        nn.with_logical_partitioning(
            _prompt_rows_init(self.config.soft_prompt_init, self.config.soft_prompt_init_scale,
                              embedding_table, self.config.init_vocab_size),
            ('prompt', 'embed')),
        (length, self.emb_dim), jnp.float32)
    prompt = jnp.broadcast_to(prompt[None], (batch_size, length, self.emb_dim))
    return nn.with_logical_constraint(prompt, ('batch', 'length', 'embed'))


class QueryProjection(nn.Module):
  """ATTEMPT's learnable query: LayerNorm(W_up·SiLU(W_down·q)), [B, d] -> [B, d].

  Attributes:
    emb_dim: d.
    hidden_dim: r, the bottleneck width.
  """
  emb_dim: int
  hidden_dim: int

  @nn.compact
  def __call__(self, pooled: Array) -> Array:
    d, r = self.emb_dim, self.hidden_dim
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
    down = self.param('down', nn.with_logical_partitioning(init, ('embed', 'query_mlp')),
                      (d, r), jnp.float32)
    up = self.param('up', nn.with_logical_partitioning(init, ('query_mlp', 'embed')),
                    (r, d), jnp.float32)
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (d,), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      (d,), jnp.float32)
    h = jnp.einsum('bd,dr->br', pooled.astype(jnp.float32), down)
    y = jnp.einsum('br,rd->bd', jax.nn.silu(h), up)
    mean = jnp.mean(y, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(y - mean), axis=-1, keepdims=True)
    return (y - mean) * lax.rsqrt(var + 1e-6) * scale + bias


def _fixed_random_query(tokens: Array, input_mask: Array, emb_dim: int) -> Array:
  """Mean over non-pad tokens of a fixed random embedding of the token ids: [B, d].

  Row ``t`` of the fixed embedding is ``normal(fold_in(PRNGKey(0), t), [d])``: the
  same for every run and never trained, and only the B·T rows in use are drawn
  (no [V, d] table is materialised).
  """
  base = jax.random.PRNGKey(_FIXED_EMBED_SEED)
  flat = jnp.ravel(tokens).astype(jnp.uint32)
  rows = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(base, t), (emb_dim,)))(flat)
  return pool_query(rows.reshape(tokens.shape + (emb_dim,)), input_mask, 'mean')


def fixed_random_keys(memory_size: int, emb_dim: int) -> Array:
  """The frozen keys [M, d] of ``slot_assignment='fixed_random'`` (seeded, no gradient)."""
  keys = jax.random.normal(jax.random.PRNGKey(_FIXED_KEYS_SEED), (memory_size, emb_dim))
  return nn.with_logical_constraint(keys, ('memory', 'embed'))


class MemoryBank(nn.Module):
  """Memory of M prompts of L_m tokens, k retrieved per example by its discrete prompt.

  With ``restart_every_steps > 0`` the bank also owns `MEMORY_STATS_COLLECTION`
  (non-parameter state the trainer carries across steps and checkpoints; see
  `update_memory_stats` and `restart_dead_slots`):

    'ema_usage'     [M] float32, EMA of each slot's share of retrievals (logical
                    axis ``memory``; starts uniform, 1/M);
    'query_buffer'  [query_buffer_size, d] float32, ring buffer of recent queries;
    'buffer_count'  int32 scalar, queries pushed so far (position = count % size);
    'restarts_total' int32 scalar, slots restarted so far.

  Attributes:
    config: the prompt configuration.
    emb_dim: d, the model width.
  """
  config: PromptConfig
  emb_dim: int

  @nn.compact
  def __call__(self, embedded: Array, input_mask: Array, embedding_table: Array,
               tokens: Array | None = None, return_query: bool = False) -> Array:
    """Retrieves and weights the memory prompts of each example.

    Sows into `RETRIEVAL_COLLECTION` (when memory_size > 0): 'indices' [B, k]
    int32, 'scores' [B, k] float32 (retrieval similarities, descending),
    'key_loss' scalar (already multiplied by key_loss_weight; 0 when off), with
    balance_loss_weight > 0 'balance_loss' scalar (already multiplied by the
    weight), and when usage is tracked 'queries' [B, d] and 'valid' [B] (rows with
    a real token), which the trainer feeds to `update_memory_stats`.

    Args:
      embedded: [B, T, d] token embeddings of the discrete prompt.
      input_mask: [B, T], nonzero for real tokens.
      embedding_table: [V, d] token embedding table (init only).
      tokens: [B, T] token ids; needed by slot_assignment='fixed_random'.
      return_query: return the retrieval query [B, d] instead (no retrieval, no
        sowing); what the trainer's data-driven key init clusters.

    Returns:
      [B, k·L_m, d] float32 retrieved prompts, prompt j of example b at positions
      [j·L_m, (j+1)·L_m); [B, 0, d] when memory_size == 0 (no parameters).
    """
    cfg = self.config
    batch = embedded.shape[0]
    if cfg.memory_size == 0:
      return jnp.zeros((batch, 0, self.emb_dim), jnp.float32)
    _check_table(embedding_table, self.emb_dim, 'MemoryBank')
    if embedded.shape[-1] != self.emb_dim or input_mask.shape != embedded.shape[:2]:
      raise ValueError(f'MemoryBank expects embedded [B, T, {self.emb_dim}] and input_mask '
                       f'[B, T]; got {embedded.shape} and {input_mask.shape}.')
    k, length, d = cfg.top_k, cfg.memory_length, self.emb_dim
    fixed = cfg.slot_assignment == 'fixed_random'
    values = self.param(
        'values',
        nn.with_logical_partitioning(
            _prompt_rows_init(cfg.memory_init, cfg.memory_init_scale, embedding_table,
                              cfg.init_vocab_size),
            ('memory', 'memory_length', 'embed')),
        (cfg.memory_size, length, d), jnp.float32)
    if fixed:
      if tokens is None:
        raise ValueError("slot_assignment='fixed_random' needs the token ids: call "
                         'MemoryBank with tokens=[B, T].')
      keys = lax.stop_gradient(fixed_random_keys(cfg.memory_size, d))
    else:
      keys = self.param(
          'keys',
          nn.with_logical_partitioning(_memory_keys_init(cfg, values), ('memory', 'embed')),
          (cfg.memory_size, d), jnp.float32)
    if cfg.tracks_usage and (self.is_initializing()
                             or self.has_variable(MEMORY_STATS_COLLECTION, 'ema_usage')):
      self._declare_stats()

    valid = jnp.any(input_mask > 0, axis=1)  # [B]
    if fixed:
      query = _fixed_random_query(tokens, input_mask, d)
    else:
      query = pool_query(embedded, input_mask, cfg.pooling)  # [B, d]
      if cfg.query_stop_gradient:
        query = lax.stop_gradient(query)
      if cfg.query_projection == 'attempt':
        query = QueryProjection(d, cfg.query_projection_dim, name='query_projection')(query)
    if return_query:
      return query
    scores, indices = retrieve_top_k(query, keys, k, cfg.similarity)
    retrieved = gather_rows(values, indices)  # [B, k, L_m, d]

    key_loss = jnp.zeros((), jnp.float32)
    if cfg.weighting == 'softmax' or cfg.key_loss_weight > 0:
      picked_keys = gather_rows(keys, indices)  # [B, k, d]
      if cfg.weighting == 'softmax':
        # Same similarity as retrieval, recomputed on the k picked keys only, so
        # the gradient reaches exactly those keys (and the query, if not stopped).
        q, kk = ((_normalize(query), _normalize(picked_keys))
                 if cfg.similarity == 'cosine' else (query, picked_keys))
        picked_scores = jnp.einsum('bd,bkd->bk', q, kk)
        weights = k * jax.nn.softmax(picked_scores / cfg.temperature, axis=-1)
        retrieved = retrieved * weights[:, :, None, None]
      if cfg.key_loss_weight > 0:
        cos = jnp.einsum('bd,bkd->bk', _normalize(query), _normalize(picked_keys))
        # Mean over examples with at least one real token (padding rows excluded).
        valid_k = valid.astype(jnp.float32)[:, None]
        key_loss = cfg.key_loss_weight * jnp.sum((1. - cos) * valid_k) / jnp.maximum(
            jnp.sum(valid_k) * k, 1.)

    # Each value is a 1-tuple holding this call's result: a 'retrieval' collection
    # passed back in (e.g. straight from `init`) is replaced, not appended to.
    sown = [('indices', indices), ('scores', scores), ('key_loss', key_loss)]
    if cfg.balance_loss_weight > 0:
      sown.append(('balance_loss', cfg.balance_loss_weight * balance_loss(
          query, keys, indices, valid, cfg.temperature, cfg.similarity)))
    if cfg.tracks_usage:
      sown += [('queries', lax.stop_gradient(query)), ('valid', valid)]
    for name, value in sown:
      self.sow(RETRIEVAL_COLLECTION, name, value, reduce_fn=_keep_latest)
    retrieved = retrieved.reshape(batch, k * length, d)
    return nn.with_logical_constraint(retrieved, ('batch', 'length', 'embed'))

  def _declare_stats(self):
    cfg = self.config
    m = cfg.memory_size

    def stat(name, init, shape, dtype, axes):
      self.variable(MEMORY_STATS_COLLECTION, name,
                    nn.with_logical_partitioning(lambda: jnp.full(shape, init, dtype), axes))

    stat('ema_usage', 1. / m, (m,), jnp.float32, ('memory',))
    stat('query_buffer', 0., (cfg.query_buffer_size, self.emb_dim), jnp.float32,
         (None, 'embed'))
    stat('buffer_count', 0, (), jnp.int32, ())
    stat('restarts_total', 0, (), jnp.int32, ())


def _keep_latest(previous, value):
  del previous
  return (value,)


def _check_table(embedding_table: Array, emb_dim: int, who: str):
  if embedding_table.ndim != 2 or embedding_table.shape[1] != emb_dim:
    raise ValueError(f'{who} needs the token embedding table [V, {emb_dim}]; got shape '
                     f'{tuple(embedding_table.shape)}.')


# ----------------------------------------------------------------------------
# Statistics and re-initialisation.


def retrieval_statistics(indices: Array, memory_size: int,
                         usage_so_far: Array | None = None) -> dict[str, Array]:
  """Usage of memory slots, for logging.

  Args:
    indices: [B, k] (or any shape) int retrieved slot ids of one batch.
    memory_size: M.
    usage_so_far: [M] cumulative retrieval counts before this batch, or None.

  Returns:
    dict with 'histogram' [M] int32 (this batch's counts), 'usage' [M] int32
    (cumulative counts incl. this batch: feed back as `usage_so_far`), 'entropy'
    (nats, of this batch's slot distribution), 'normalized_entropy' (entropy /
    log M, 1 = uniform), 'batch_used_fraction' (slots hit in this batch) and
    'never_used_fraction' (slots never retrieved so far).
  """
  if memory_size < 1:
    raise ValueError(f'retrieval_statistics needs memory_size >= 1, got {memory_size}.')
  flat = jnp.ravel(indices).astype(jnp.int32)
  histogram = jnp.zeros((memory_size,), jnp.int32).at[flat].add(1)
  usage = histogram if usage_so_far is None else usage_so_far.astype(jnp.int32) + histogram
  batch = retrieval_analysis.usage_summary(histogram, xp=jnp)
  entropy = batch['entropy']
  return {
      'histogram': histogram,
      'usage': usage,
      'entropy': entropy,
      'normalized_entropy': entropy / math.log(memory_size) if memory_size > 1 else entropy,
      'batch_used_fraction': batch['used_fraction'],
      'never_used_fraction': retrieval_analysis.usage_summary(usage, xp=jnp)['unused_fraction'],
  }


# Noise (times the query norm) that separates keys initialised from the same query.
_KEY_INIT_NOISE = 0.01
# Lloyd iterations of the 'kmeans' key initialisation.
KMEANS_ITERATIONS = 10


def update_memory_stats(stats: Mapping[str, Array], indices: Array, queries: Array,
                        valid: Array, config: PromptConfig) -> dict[str, Array]:
  """One train step's update of the bank's `MEMORY_STATS_COLLECTION` state.

  Called once per step with every retrieval of the step (all microbatches
  concatenated), so the EMA decays once per step whatever the microbatching.

  Args:
    stats: {'ema_usage' [M], 'query_buffer' [S, d], 'buffer_count' (), 'restarts_total' ()}.
    indices: [N, k] int slots retrieved this step.
    queries: [N, d] their retrieval queries.
    valid: [N] bool, examples with a real token (others are ignored).
    config: the prompt configuration (usage_ema_decay, memory_size).

  Returns:
    The updated stats: ema ← decay·ema + (1 − decay)·f with f this step's usage
    share (unchanged when no example is valid); the last ≤ S valid queries
    pushed into the ring buffer.
  """
  m, k = config.memory_size, indices.shape[1]
  n = jnp.sum(valid.astype(jnp.int32))
  share = _valid_counts(indices, valid, m) / jnp.maximum(n * k, 1).astype(jnp.float32)
  decay = config.usage_ema_decay
  ema = stats['ema_usage']
  ema = jnp.where(n > 0, decay * ema + (1. - decay) * share, ema)

  buffer, count = stats['query_buffer'], stats['buffer_count']
  size = buffer.shape[0]
  rank = jnp.cumsum(valid.astype(jnp.int32)) - 1               # among valid rows
  keep = valid & (rank >= n - size)                            # distinct slots only
  pos = jnp.where(keep, (count + rank) % size, size)           # size = dropped
  buffer = buffer.at[pos].set(queries.astype(buffer.dtype), mode='drop')
  return dict(stats, ema_usage=ema, query_buffer=buffer, buffer_count=count + n)


def restart_slots(keys: Array, values: Array, stats: Mapping[str, Array],
                  config: PromptConfig, rng: Array
                  ) -> tuple[Array, Array, dict[str, Array], Array]:
  """Re-draws the keys of dead slots from buffered queries (VQ-VAE codebook restart).

  A slot is dead when its EMA share is below ``restart_threshold / M``. Dead slot
  number r (in index order) gets the buffered query ``order[r mod n]``, ``order``
  a seeded random permutation of the n filled buffer rows, plus Gaussian noise ×
  restart_noise × that query's norm; with restart_copy_values its values are
  copied from the r-th most used live slot (cyclically). Its EMA is reset to
  the uniform share 1/M. Nothing else changes. Written as global array code
  (no per-shard logic), so a sharded bank restarts exactly as a single device.

  Args:
    keys: [M, d].
    values: [M, L_m, d].
    stats: the bank's memory stats (see `update_memory_stats`).
    config: the prompt configuration.
    rng: PRNG key.

  Returns:
    (keys, values, stats, number of restarted slots int32); nothing restarts
    before a query has been buffered.
  """
  m = config.memory_size
  ema, buffer = stats['ema_usage'], stats['query_buffer']
  size = buffer.shape[0]
  filled = jnp.minimum(stats['buffer_count'], size)
  dead = (ema < config.restart_threshold / m) & (filled > 0)
  rank = jnp.cumsum(dead.astype(jnp.int32)) - 1
  rng_order, rng_noise = jax.random.split(rng)
  u = jnp.where(jnp.arange(size) < filled, jax.random.uniform(rng_order, (size,)), 2.)
  order = jnp.argsort(u)
  src = jnp.take(order, rank % jnp.maximum(filled, 1), axis=0)
  drawn = jnp.take(buffer, src, axis=0)                          # [M, d]
  norm = jnp.sqrt(jnp.sum(jnp.square(drawn), axis=-1, keepdims=True))
  noise = jax.random.normal(rng_noise, keys.shape, jnp.float32)
  new_keys = drawn + config.restart_noise * norm * noise
  keys = jnp.where(dead[:, None], new_keys.astype(keys.dtype), keys)
  if config.restart_copy_values:
    live = ~dead
    num_live = jnp.sum(live.astype(jnp.int32))
    by_use = jnp.argsort(jnp.where(live, -ema, jnp.inf), stable=True)
    src_v = jnp.take(by_use, rank % jnp.maximum(num_live, 1), axis=0)
    copy = dead & (num_live > 0)
    values = jnp.where(copy[:, None, None], jnp.take(values, src_v, axis=0), values)
  num = jnp.sum(dead.astype(jnp.int32))
  stats = dict(stats, ema_usage=jnp.where(dead, 1. / m, ema),
               restarts_total=stats['restarts_total'] + num)
  return keys, values, stats, num


def restart_dead_slots(params: Any, model_state: Any, config: PromptConfig, rng: Array
                       ) -> tuple[Any, Any, Array]:
  """`restart_slots` on every memory bank of a parameter tree (jit-friendly).

  Args:
    params: the 'params' tree (unboxed); banks are the 'memory_bank' subtrees.
    model_state: {MEMORY_STATS_COLLECTION: tree with the same 'memory_bank' paths}.
    config: the prompt configuration.
    rng: PRNG key.

  Returns:
    (params, model_state, number of restarted slots).
  """
  params = _copy_dicts(params)
  model_state = _copy_dicts(model_state)
  stats_tree = model_state[MEMORY_STATS_COLLECTION]
  total = jnp.zeros((), jnp.int32)
  for i, path in enumerate(_bank_paths(params)):
    bank, stats_parent = _at(params, path), _at(stats_tree, path[:-1])
    keys, values, stats, num = restart_slots(
        bank['keys'], bank['values'], stats_parent[path[-1]], config,
        jax.random.fold_in(rng, i))
    bank['keys'], bank['values'] = keys, values
    stats_parent[path[-1]] = stats
    total = total + num
  return params, model_state, total


def update_all_memory_stats(model_state: Any, params: Any, indices: Array, queries: Array,
                            valid: Array, config: PromptConfig) -> dict[str, Any]:
  """`update_memory_stats` on every memory bank's stats in ``model_state``.

  Args:
    model_state: {MEMORY_STATS_COLLECTION: tree}, banks at the 'memory_bank' paths
      of ``params``.
    params: the 'params' tree (only its structure is read).
    indices, queries, valid: this step's retrievals (see `update_memory_stats`).
    config: the prompt configuration.

  Returns:
    A new model_state.
  """
  model_state = _copy_dicts(model_state)
  stats_tree = model_state[MEMORY_STATS_COLLECTION]
  for path in _bank_paths(params):
    parent = _at(stats_tree, path[:-1])
    parent[path[-1]] = update_memory_stats(parent[path[-1]], indices, queries, valid, config)
  return model_state


def total_restarts(model_state: Any) -> Array:
  """Slots restarted so far, summed over the banks of ``model_state`` (int32)."""
  totals = [v for path, v in flax.traverse_util.flatten_dict(
      _copy_dicts(model_state.get(MEMORY_STATS_COLLECTION, {}))).items()
            if path[-1] == 'restarts_total']
  return sum(totals, jnp.zeros((), jnp.int32))


def _bank_paths(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  """Paths of the 'memory_bank' subtrees (those holding 'keys') of a params tree."""
  found = []
  for name, child in tree.items():
    if isinstance(child, Mapping):
      if name == 'memory_bank' and 'keys' in child:
        found.append(path + (name,))
      else:
        found.extend(_bank_paths(child, path + (name,)))
  return found


def _at(tree, path):
  for name in path:
    tree = tree[name]
  return tree


def spherical_or_euclidean_kmeans(points: Array, centroids: Array, iterations: int,
                                  spherical: bool) -> Array:
  """Lloyd's k-means from given initial centroids; deterministic.

  Args:
    points: [N, d] float32.
    centroids: [C, d] initial centroids.
    iterations: Lloyd iterations.
    spherical: cosine k-means (points and centroids on the unit sphere, assignment
      by largest dot product, centroid = normalised sum) instead of Euclidean
      (smallest squared distance, centroid = mean).

  Returns:
    [C, d] centroids; a centroid that gets no point keeps its previous value.
    Ties in the assignment go to the lower centroid index.
  """
  x = points.astype(jnp.float32)
  c = centroids.astype(jnp.float32)
  if spherical:
    x, c = _normalize(x), _normalize(c)
  for _ in range(iterations):
    if spherical:
      assign = jnp.argmax(x @ c.T, axis=1)
    else:
      dist = jnp.sum(jnp.square(c), axis=1)[None, :] - 2. * (x @ c.T)
      assign = jnp.argmin(dist, axis=1)
    onehot = jax.nn.one_hot(assign, c.shape[0], dtype=jnp.float32)  # [N, C]
    sums = onehot.T @ x
    counts = jnp.sum(onehot, axis=0)[:, None]
    new = _normalize(sums) if spherical else sums / jnp.maximum(counts, 1.)
    c = jnp.where(counts > 0, new, c)
  return c


def keys_from_queries(queries: Array, prompt_config: PromptConfig, rng: Array) -> Array:
  """[M, d] keys from [N, d] queries by ``prompt_config.key_init`` ('queries' | 'kmeans').

  'queries': slot i gets query ``perm[i mod N]`` (perm a seeded permutation of the
  N queries, so all are used before any repeats) + Gaussian noise × 0.01 × its
  norm. 'kmeans': those noisy samples are the initial centroids of
  `KMEANS_ITERATIONS` Lloyd iterations (spherical when similarity='cosine').
  """
  cfg = prompt_config
  n = queries.shape[0]
  if n < 1:
    raise ValueError('Data-driven key init needs at least one query from a non-empty '
                     'input; raise key_init_batches or check the training inputs.')
  rng_perm, rng_noise = jax.random.split(rng)
  perm = jax.random.permutation(rng_perm, n)
  picked = jnp.take(queries.astype(jnp.float32), perm[jnp.arange(cfg.memory_size) % n], axis=0)
  norm = jnp.sqrt(jnp.sum(jnp.square(picked), axis=-1, keepdims=True))
  picked = picked + _KEY_INIT_NOISE * norm * jax.random.normal(rng_noise, picked.shape)
  if cfg.key_init == 'queries':
    return picked
  if cfg.key_init == 'kmeans':
    return spherical_or_euclidean_kmeans(queries, picked, KMEANS_ITERATIONS,
                                         spherical=cfg.similarity == 'cosine')
  raise ValueError(f"keys_from_queries needs key_init 'queries' or 'kmeans', got "
                   f'{cfg.key_init!r}.')


def init_keys_from_queries(params: Any, queries: Array, prompt_config: PromptConfig,
                           rng: Array) -> Any:
  """Replaces the memory keys of ``params`` by `keys_from_queries` (data-driven init).

  Args:
    params: the 'params' tree; banks are its 'memory_bank' subtrees.
    queries: [N, d] retrieval queries of real (non-empty) training examples.
    prompt_config: the config (key_init, similarity, memory_size).
    rng: PRNG key (same key, same keys).

  Returns:
    The tree with new keys, each in the dtype and sharding of the old one.
  """
  tree = _copy_dicts(params)
  for i, path in enumerate(_bank_paths(tree)):
    bank = _at(tree, path)
    keys = keys_from_queries(queries, prompt_config, jax.random.fold_in(rng, i))
    bank['keys'] = _like(bank['keys'], keys)
  return tree


def init_prompts_from_embedding(params: Mapping[str, Any], embedding_table: Array,
                                prompt_config: PromptConfig, rng: Array) -> Any:
  """Re-samples 'sampled_vocab' prompt/memory params from a (pretrained) embedding.

  After a partial checkpoint restore (backbone from T5, prompts new) the prompt
  parameters were initialised from the random embedding of `init`; this redraws
  `soft_prompt/prompt` and `memory_bank/values` (and keys = mean of value rows)
  from ``embedding_table``, as at init. Parameters whose init is 'uniform' are
  left alone. Boxed (nn.Partitioned) leaves stay boxed and sharded arrays keep
  their sharding.

  Args:
    params: the 'params' tree (or a variables dict holding it); the prompt
      modules are found wherever a 'soft_prompt' / 'memory_bank' subtree is.
    embedding_table: [V, d] the token embedding to sample from.
    prompt_config: the config the params were built with.
    rng: PRNG key.

  Returns:
    A tree of the same structure (dict or FrozenDict) with new prompt params.
  """
  frozen = isinstance(params, flax.core.FrozenDict)
  tree = flax.core.unfreeze(params) if frozen else _copy_dicts(params)
  rng_prompt, rng_memory = jax.random.split(rng)
  found = []

  def visit(node, path):
    if not isinstance(node, dict):
      return
    for name, child in node.items():
      if not isinstance(child, dict):
        continue
      if (name == 'soft_prompt' and 'prompt' in child
          and prompt_config.soft_prompt_init == 'sampled_vocab'):
        old = child['prompt']
        new = _sample_vocab_rows(rng_prompt, embedding_table, _shape(old)[:1],
                                 prompt_config.init_vocab_size)
        child['prompt'] = _like(old, new)
        found.append('/'.join(path + (name, 'prompt')))
      elif (name == 'memory_bank' and 'values' in child
            and prompt_config.memory_init == 'sampled_vocab'):
        old_values = child['values']
        values = _sample_vocab_rows(rng_memory, embedding_table, _shape(old_values)[:2],
                                    prompt_config.init_vocab_size)
        child['values'] = _like(old_values, values)
        if 'keys' in child:
          child['keys'] = _like(child['keys'], jnp.mean(values, axis=1))
        found.append('/'.join(path + (name, 'values')))
      else:
        visit(child, path + (name,))

  visit(tree, ())
  logging.info('init_prompts_from_embedding re-sampled: %s', found or 'nothing')
  return flax.core.freeze(tree) if frozen else tree


def _copy_dicts(node):
  if isinstance(node, Mapping):
    return {k: _copy_dicts(v) for k, v in node.items()}
  return node


def _shape(leaf) -> tuple[int, ...]:
  value = leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf
  return tuple(value.shape)


def _like(old, new: Array):
  """``new`` in the container, dtype and sharding of ``old``."""
  if isinstance(old, nn.meta.AxisMetadata):
    return old.replace_boxed(_like(old.unbox(), new))
  new = jnp.asarray(new, old.dtype)
  if isinstance(old, jax.Array) and not isinstance(old, jax.core.Tracer):
    new = jax.device_put(new, old.sharding)
  return new
