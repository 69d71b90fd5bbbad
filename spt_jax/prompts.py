"""SPT prompts: a shared soft prompt and a memory bank of prompts retrieved per example.

Over the project's 600-line guide on purpose (~750 lines): `PromptConfig` (28 documented,
validated fields) and the modules that read them (`SoftPrompt`, `QueryProjection`,
`MemoryBank` with its balance loss, and `PromptPrefix`, which joins them to the encoder
input) are one unit; the top-k kernel (`spt_jax.retrieval`) and the usage statistics and
re-initialisation (`spt_jax.memory_health`) are already apart.

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
   queries (`memory_health.update_memory_stats`, `memory_health.restart_slots`).
7. Data-driven key initialisation from the first training batches' queries
   ('queries' or seeded spherical k-means; `memory_health.init_keys_from_queries`).
8. ATTEMPT's learnable query ``LayerNorm(W_up·SiLU(W_down·q))`` (`QueryProjection`).
9. A control, ``slot_assignment='fixed_random'``: slots are a frozen pseudo-random
   hash of the discrete prompt and only the retrieved values train.

The memory table is declared with logical axes (``memory``, ``embed``) /
(``memory``, ``memory_length``, ``embed``); retrieval (exact top-k, two-stage and
shard-local when the ``memory`` axis is split over the mesh) is `spt_jax.retrieval`.
Usage statistics, dead-slot restarts and data-driven (re-)initialisation of the bank
are `spt_jax.memory_health`.

How the prompts join the network: `PromptPrefix(config)` is the prefix object
`network.Transformer(config, prefix)` receives. The encoder calls it inside its own
compact scope with the embedded tokens, so the parameters live at
``encoder/soft_prompt/prompt`` and ``encoder/memory_bank/{keys,values,...}``, and it
returns ``[soft prompt ; retrieved memory prompts ; embedded tokens]``. The network
knows only the prefix's ``length`` (positions its masks keep visible).

This module knows nothing of seqio, gin or mesh axis names (those live in
``partitioning``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from spt_jax import retrieval

Array = jax.Array

# Variable collection that `MemoryBank` sows retrieval outputs into. Apply the
# network with ``mutable=[RETRIEVAL_COLLECTION]`` to read them.
RETRIEVAL_COLLECTION = 'retrieval'

_POOLINGS = ('mean', 'max', 'mean_max')
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
      trainer at step 0 (`memory_health.init_keys_from_queries`).
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
    choice('similarity', retrieval.SIMILARITIES)
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


def sample_vocab_rows(rng: Array, embedding_table: Array, shape: tuple[int, ...],
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
      return sample_vocab_rows(rng, embedding_table, shape[:-1], vocab_limit)
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
# Query.


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



def balance_loss(query: Array, keys: Array, indices: Array, valid: Array,
                 temperature: float, similarity: str = 'cosine') -> Array:
  """Switch-Transformer load balancing over all M slots: M·Σᵢ fᵢ·Pᵢ (unweighted).

  fᵢ is the share of this batch's retrievals (valid examples only, k per example,
  so Σf = 1) that went to slot i, without gradient; Pᵢ is the mean over valid
  examples of softmax(s / τ) over all M slots, s the retrieval similarity. P is
  differentiable w.r.t. every key (and the query unless it is stopped), so
  unretrieved keys are pulled towards queries while over-used ones are pushed
  away. Uniform use gives 1.

  When the bank is row-sharded (`retrieval.memory_mesh_axes`), each shard scores its own
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
  axes = retrieval.memory_mesh_axes(num_rows)
  if axes is None:
    p = jax.nn.softmax(retrieval.similarity_scores(query, keys, similarity) / temperature,
                       axis=-1)
    mean_p = jnp.sum(p * validf[:, None], axis=0)
    counts = lax.stop_gradient(retrieval.valid_counts(indices, valid, num_rows))
    n = jnp.maximum(jnp.sum(validf), 1.)
    return num_rows * jnp.sum(counts * mean_p) / (n * n * k)

  batch = retrieval.batch_spec(query.shape[0], axes)
  batch_axes = tuple(a for entry in batch for a in ((entry,) if isinstance(entry, str)
                                                    else tuple(entry or ())))

  def local(q, keys_local, idx, v):
    rows = keys_local.shape[0]
    s = retrieval.similarity_scores(q, keys_local, similarity) / temperature  # [b, M/P]
    shift = lax.pmax(lax.stop_gradient(jnp.max(s, axis=1)), axes)  # [b]
    total = lax.psum(jnp.sum(jnp.exp(s - shift[:, None]), axis=1), axes)
    p = jnp.exp(s - (shift + jnp.log(total))[:, None])
    vf = v.astype(jnp.float32)
    mean_p = jnp.sum(p * vf[:, None], axis=0)                      # [M/P]
    counts = lax.stop_gradient(
        retrieval.valid_counts(idx, v, rows, lax.axis_index(axes) * rows))
    n = jnp.sum(vf)
    if batch_axes:  # f and P are means over the whole batch: sum the [M/P] parts first.
      counts, mean_p, n = (lax.psum(x, batch_axes) for x in (counts, mean_p, n))
    partial = lax.psum(jnp.sum(counts * mean_p), axes)
    return num_rows * partial / (jnp.square(jnp.maximum(n, 1.)) * k)

  return jax.shard_map(
      local, in_specs=(batch, PartitionSpec(axes), batch, batch), out_specs=PartitionSpec())(
          retrieval.as_spec(query, batch), retrieval.as_spec(keys, PartitionSpec(axes)),
          retrieval.as_spec(indices, batch), retrieval.as_spec(valid, batch))


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
  `memory_health.update_memory_stats` and `memory_health.restart_dead_slots`):

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
    a real token), which the trainer feeds to `memory_health.update_memory_stats`.

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
    scores, indices = retrieval.retrieve_top_k(query, keys, k, cfg.similarity)
    retrieved = retrieval.gather_rows(values, indices)  # [B, k, L_m, d]

    key_loss = jnp.zeros((), jnp.float32)
    if cfg.weighting == 'softmax' or cfg.key_loss_weight > 0:
      picked_keys = retrieval.gather_rows(keys, indices)  # [B, k, d]
      if cfg.weighting == 'softmax':
        # Same similarity as retrieval, recomputed on the k picked keys only, so
        # the gradient reaches exactly those keys (and the query, if not stopped).
        q, kk = ((retrieval.normalize(query), retrieval.normalize(picked_keys))
                 if cfg.similarity == 'cosine' else (query, picked_keys))
        picked_scores = jnp.einsum('bd,bkd->bk', q, kk)
        weights = k * jax.nn.softmax(picked_scores / cfg.temperature, axis=-1)
        retrieved = retrieved * weights[:, :, None, None]
      if cfg.key_loss_weight > 0:
        cos = jnp.einsum('bd,bkd->bk', retrieval.normalize(query),
                         retrieval.normalize(picked_keys))
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
# The encoder prefix: how the prompts join the encoder input.


def retrieval_embedding(embedded: Array, tokens: Array, embedding_table: Array) -> Array:
  """The float32 `[B, T, d]` token embeddings the memory bank pools its query from.

  `embedded` (`[B, T, d]`, the `Embed` output) is in the compute dtype. Under bfloat16
  activations its rows are the float32 table rows rounded to 8 significant bits, and a query
  pooled from them changes the retrieved top-k set of some rows although
  `retrieval.retrieve_top_k` scores in float32 (random SPT network, d=64, M=1024, k=4: 29 of
  4096 rows; their new prompts take the largest bf16-vs-float32 logit difference from 1 % to
  15 % of the largest logit; see tests/test_bf16.py). So the query is pooled from the
  float32 rows of `embedding_table` (`[V, d]`) at `tokens` (`[B, T]`) instead: retrieval
  (query, scores, top-k) is then float32 whatever the activation dtype, as T5X keeps its
  precision-sensitive ops (softmax, layer norm, loss) in float32. With float32 activations
  `embedded` is already those rows and is returned unchanged (bit-identical to before).
  """
  if embedded.dtype == jnp.float32:
    return embedded
  return jnp.take(jnp.asarray(embedding_table, jnp.float32), tokens.astype(jnp.int32), axis=0)


@dataclasses.dataclass(frozen=True)
class PromptPrefix:
  """SPT's prompts as the prefix `network.Transformer(config, prefix)` prepends.

  A hashable value (it is a field of the flax modules). The encoder calls it inside its
  own compact scope, so `SoftPrompt` and `MemoryBank` are created as children of the
  encoder: their parameters live at ``encoder/soft_prompt/prompt`` and
  ``encoder/memory_bank/{keys,values,...}``, the tree T5X checkpoints, orbax runs and
  the T5X route share. A config with ``prefix_length == 0`` adds nothing (plain T5,
  bit for bit).

  Attributes:
    config: the prompt configuration.
  """
  config: PromptConfig

  @property
  def length(self) -> int:
    """P = L_p + k·L_m, the positions prepended to the embedded encoder input."""
    return self.config.prefix_length

  def __call__(self, embedded: Array, tokens: Array, embedding_table: Array) -> Array:
    """`[B, T, d]` -> `[B, P + T, d]`: `[soft prompt ; retrieved memory ; embedded tokens]`.

    Args:
      embedded: [B, T, d] embedded encoder input (compute dtype).
      tokens: [B, T] its token ids (0 = pad).
      embedding_table: [V, d] the float32 token embedding table.
    """
    cfg = self.config
    if cfg.prefix_length == 0:
      return embedded
    parts = []
    batch, emb_dim = embedded.shape[0], embedded.shape[-1]
    if cfg.soft_prompt_length > 0:
      parts.append(SoftPrompt(cfg, emb_dim, name='soft_prompt')(batch, embedding_table))
    if cfg.memory_size > 0:
      parts.append(MemoryBank(cfg, emb_dim, name='memory_bank')(
          retrieval_embedding(embedded, tokens, embedding_table), tokens > 0, embedding_table,
          tokens=tokens))
    parts = [p.astype(embedded.dtype) for p in parts]
    out = jnp.concatenate(parts + [embedded], axis=1)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))

  def query(self, embedded: Array, tokens: Array, embedding_table: Array) -> Array:
    """`[B, T, d]` -> `[B, d]` float32: the memory bank's retrieval query of each input.

    The same embedding, pooling and query projection as retrieval (all-padding rows give
    the zero vector), without retrieving or sowing; what the data-driven key
    initialisation clusters.
    """
    if self.config.memory_size == 0:
      raise ValueError('retrieval_query needs a network with a memory bank '
                       '(prompt_config.memory_size > 0).')
    return MemoryBank(self.config, embedded.shape[-1], name='memory_bank')(
        retrieval_embedding(embedded, tokens, embedding_table), tokens > 0, embedding_table,
        tokens=tokens, return_query=True)


def prompt_prefix(config: PromptConfig | None) -> PromptPrefix | None:
  """The network prefix of ``config``; None (plain T5, no prefix) for None."""
  return None if config is None else PromptPrefix(config)
