"""T5 / T5.1.1 encoder-decoder in Flax linen, with T5X's parameter tree and interface.

The module layout, parameter names, shapes and logical axis names follow T5X's
`examples/t5/network.py` + `layers.py`, so a T5X checkpoint restores into it and T5X's
own trainer can drive it. Kernels are stored 2-D as in T5X (attention
`[embed, heads * head_dim]` with axes `('embed', 'joined_kv')`) and reshaped in the
forward pass.

SPT hooks in at the encoder input through an injected prefix (as prompt-tuning's
`PromptEncoder` is given its prompt module), and this module knows no prompt type. A prefix
is a hashable value with

  length: int                                  P, positions it prepends
  __call__(embedded [B, T, d], tokens [B, T], embedding_table [V, d]) -> [B, P + T, d]
  query(embedded, tokens, embedding_table) -> [B, d]   (optional; `Transformer.prefix_query`)

The encoder calls it inside its own compact scope, so whatever modules it creates are
children of `encoder` (SPT's prompt prefix puts its parameters at
`encoder/soft_prompt/prompt` and `encoder/memory_bank/...`), and every mask that looks at
encoder positions gets `length` always-visible positions in front. Each row takes one
prefix, so packed inputs (segment ids) and a prefix do not mix: the callers refuse that
combination (`models.EncoderDecoderModel.validate_features` and its `loss_fn` / `score_batch`;
`t5x_adapter.SptT5XTransformer` under T5X's trainer). Without a
prefix (or with one of length 0 that returns its input) the computation is exactly plain
T5.

Shapes: B batch, T encoder length, P prefix length, L decoder length, d emb_dim,
H heads, D head_dim, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

_ACTIVATIONS = {
    'relu': nn.relu,
    'gelu': nn.gelu,  # tanh approximation, as T5.1.1 ("gelu_new" in HF)
    'gelu_exact': functools.partial(nn.gelu, approximate=False),
    'silu': nn.silu,
    'swish': nn.silu,
    'linear': lambda x: x,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 encoder-decoder (defaults: T5.1.1-small shapes)."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  # ('gelu', 'linear') is T5.1.1's gated-GELU; ('relu',) is T5 1.0.
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  # T5 1.0 ties the output projection to the embedding (logits scaled by 1/sqrt(d)).
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  # Compute dtype; parameters are always stored in float32.
  dtype: Any = 'float32'
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    unknown = [a for a in self.mlp_activations if a not in _ACTIVATIONS]
    if unknown:
      raise ValueError(
          f'Unsupported mlp_activations {unknown}; choose from {sorted(_ACTIVATIONS)} '
          "(T5.1.1: ('gelu', 'linear'); T5 1.0: ('relu',)).")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


# ----------------------------------------------------------------------------- layers


def _param(module: nn.Module, name: str, init: Initializer, shape, axes):
  """A float32 parameter boxed with its logical axis names (T5X `param_with_axes`)."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class LayerNorm(nn.Module):
  """T5 layer norm: RMS normalisation with a learned scale, no bias, no centring."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',))
    return y * jnp.asarray(scale, self.dtype)


class DenseGeneral(nn.Module):
  """Dense over `axis` with a 2-D kernel `[prod(in), prod(features)]`, as T5X stores it."""
  features: int | tuple[int, ...]
  axis: int | tuple[int, ...] = -1
  kernel_axes: tuple[str, ...] = ()
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = self.features if isinstance(self.features, tuple) else (self.features,)
    axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
    axis = tuple(a % inputs.ndim for a in axis)
    in_shape = tuple(inputs.shape[a] for a in axis)
    param_shape = (int(np.prod(in_shape)), int(np.prod(features)))

    def init(key, shape, dtype):
      # Initialise the 2-D `[prod(in), prod(features)]` shape, as T5X does: fan-in is then
      # prod(in) (e.g. emb for query), not emb * heads as the 3-D logical shape would give.
      return self.kernel_init(key, shape, dtype)

    kernel = _param(self, 'kernel', init, param_shape, self.kernel_axes)
    kernel = jnp.reshape(jnp.asarray(kernel, self.dtype), in_shape + features)
    inputs = jnp.asarray(inputs, self.dtype)
    contract = (axis, tuple(range(len(axis))))
    return lax.dot_general(inputs, kernel, (contract, ((), ())))


class Embed(nn.Module):
  """Token embedding table `[V, d]` with `attend` for tied output logits."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = _param(self, 'embedding', self.embedding_init,
                            (self.num_embeddings, self.features), ('vocab', 'embed'))

  def __call__(self, inputs: Array) -> Array:
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f'Embed expects integer token ids, got {inputs.dtype}.')
    output = jnp.asarray(self.embedding, self.dtype)[inputs]
    return nn.with_logical_constraint(output, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    """`query @ embedding.T`: `[..., d]` -> `[..., V]`."""
    return jnp.dot(query, jnp.asarray(self.embedding, self.dtype).T)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bucketing of `memory_position - query_position` (static, numpy)."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps) /
      np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """Per-head relative position bias `rel_embedding: [H, num_buckets]`, shared by a stack."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
    """Returns the bias `[1, H, qlen, klen]`."""
    context = np.arange(qlen, dtype=np.int32)[:, None]
    memory = np.arange(klen, dtype=np.int32)[None, :]
    buckets = relative_position_bucket(memory - context, bidirectional, self.num_buckets,
                                       self.max_distance)
    table = _param(self, 'rel_embedding',
                   nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                   (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'))
    table = jnp.asarray(table, self.dtype)
    # A one-hot contraction instead of a gather: cheap and partitioner-friendly.
    one_hot = jnp.asarray(buckets[None] == np.arange(self.num_buckets)[:, None, None], self.dtype)
    values = lax.dot_general(table, one_hot, (((1,), (0,)), ((), ())))
    return values[None]


def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable[..., Array] = jnp.multiply,
                        dtype: Any = jnp.float32) -> Array:
  """`[B, Lq]`, `[B, Lk]` -> `[B, 1, Lq, Lk]`."""
  mask = pairwise_fn(query_input[..., :, None], key_input[..., None, :])
  return mask[..., None, :, :].astype(dtype)


def make_causal_mask(x: Array, dtype: Any = jnp.float32) -> Array:
  idxs = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(idxs, idxs, jnp.greater_equal, dtype=dtype)


def combine_masks(*masks: Optional[Array], dtype: Any = jnp.float32) -> Optional[Array]:
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  mask = masks[0]
  for other in masks[1:]:
    mask = jnp.logical_and(mask, other)
  return mask.astype(dtype)


def combine_biases(*biases: Optional[Array]) -> Optional[Array]:
  biases = [b for b in biases if b is not None]
  if not biases:
    return None
  out = biases[0]
  for b in biases[1:]:
    out = out + b
  return out


class MultiHeadDotProductAttention(nn.Module):
  """T5 attention (no 1/sqrt(D) scaling in the forward pass; it is folded into the init).

  With `decode=True` it keeps an autoregressive KV cache in the `cache` collection:
  `cached_key`/`cached_value` `[B, L, H, D]` and `cache_index`.
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array] = None,
               bias: Optional[Array] = None, *, decode: bool = False,
               deterministic: bool = True) -> Array:
    depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)
    projection = functools.partial(
        DenseGeneral, axis=-1, features=(self.num_heads, self.head_dim),
        kernel_axes=('embed', 'joined_kv'), dtype=self.dtype)
    query_init = lambda *a: self.kernel_init(*a) / depth_scaling
    query = projection(kernel_init=query_init, name='query')(inputs_q)
    key = projection(kernel_init=self.kernel_init, name='key')(inputs_kv)
    value = projection(kernel_init=self.kernel_init, name='value')(inputs_kv)
    query = nn.with_logical_constraint(query, ('batch', 'length', 'heads', 'kv'))
    key = nn.with_logical_constraint(key, ('batch', 'length', 'heads', 'kv'))
    value = nn.with_logical_constraint(value, ('batch', 'length', 'heads', 'kv'))

    if decode:
      is_initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
      if is_initialized:
        batch, max_length, num_heads, head_dim = cached_key.value.shape
        if query.shape[1] != 1:
          raise ValueError('Autoregressive decoding takes one token per step; got decoder '
                           f'inputs of length {query.shape[1]}.')
        cur_index = cache_index.value
        key = lax.dynamic_update_slice(cached_key.value, key, (0, cur_index, 0, 0))
        value = lax.dynamic_update_slice(cached_value.value, value, (0, cur_index, 0, 0))
        cached_key.value = key
        cached_value.value = value
        cache_index.value = cur_index + 1
        # Attend only to positions written so far.
        visible = (jnp.arange(max_length) <= cur_index)[None, None, None, :]
        mask = combine_masks(mask, jnp.broadcast_to(visible, (batch, 1, 1, max_length)))
        if bias is not None:
          # bias: [1, H, L, L] -> the row of the current position: [1, H, 1, L].
          bias = lax.dynamic_slice_in_dim(bias, cur_index, 1, axis=-2)

    attention_bias = None
    if mask is not None:
      attention_bias = lax.select(mask > 0, jnp.zeros(mask.shape, self.dtype),
                                  jnp.full(mask.shape, -1e10, self.dtype))
    attention_bias = combine_biases(attention_bias, bias)

    # [B, H, Lq, Lk]; softmax in float32 for stability under bf16 compute.
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)
    if attention_bias is not None:
      logits = logits + attention_bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0.0:
      # One mask per (batch, head, key), shared over queries: T5X's broadcast_dropout.
      mask_shape = weights.shape[:-2] + (1,) + weights.shape[-1:]
      keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout_rate, mask_shape)
      weights = weights * keep.astype(self.dtype) / jnp.asarray(1.0 - self.dropout_rate, self.dtype)
    x = jnp.einsum('bhqk,bkhd->bqhd', weights, value)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'heads', 'kv'))
    out = DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1),
                       kernel_axes=('joined_kv', 'embed'), kernel_init=self.kernel_init,
                       dtype=self.dtype, name='out')(x)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))


class MlpBlock(nn.Module):
  """T5 MLP: gated (`wi_0`, `wi_1`, ...) when several activations are given, else `wi`."""
  intermediate_dim: int
  activations: Sequence[str]
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    hidden = []
    for idx, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{idx}'
      x = DenseGeneral(self.intermediate_dim, kernel_axes=('embed', 'mlp'),
                       kernel_init=self.kernel_init, dtype=self.dtype, name=name)(inputs)
      hidden.append(_ACTIVATIONS[act](x))
    x = functools.reduce(lambda a, b: a * b, hidden)
    x = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))
    out = DenseGeneral(inputs.shape[-1], kernel_axes=('mlp', 'embed'),
                       kernel_init=self.kernel_init, dtype=self.dtype, name='wo')(x)
    return nn.with_logical_constraint(out, ('batch', 'length', 'embed'))


# ----------------------------------------------------------------------------- stacks


class EncoderLayer(nn.Module):
  config: T5Config
  relative_embedding: nn.Module

  @nn.compact
  def __call__(self, inputs: Array, encoder_mask: Optional[Array], deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    length = inputs.shape[-2]
    bias = self.relative_embedding(length, length, True)
    x = LayerNorm(cfg.layer_norm_epsilon, dtype, name='pre_attention_layer_norm')(inputs)
    x = MultiHeadDotProductAttention(cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate,
                                     name='attention')(
                                         x, x, encoder_mask, bias, deterministic=deterministic)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = x + inputs
    y = LayerNorm(cfg.layer_norm_epsilon, dtype, name='pre_mlp_layer_norm')(x)
    y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, name='mlp')(
        y, deterministic=deterministic)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    return nn.with_logical_constraint(y + x, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
  config: T5Config
  relative_embedding: nn.Module

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, decoder_mask: Optional[Array],
               encoder_decoder_mask: Optional[Array], deterministic: bool, decode: bool,
               max_decode_length: Optional[int]) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    if decode and inputs.shape[-2] == 1 and not max_decode_length:
      # A one-token step needs the full relative-position table to pick its row from.
      raise ValueError('Incremental decoding (decode=True) needs max_decode_length: the length '
                       'the KV cache was initialised with.')
    length = max_decode_length if decode and max_decode_length else inputs.shape[-2]
    bias = self.relative_embedding(length, length, False)

    x = LayerNorm(cfg.layer_norm_epsilon, dtype, name='pre_self_attention_layer_norm')(inputs)
    x = MultiHeadDotProductAttention(cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate,
                                     name='self_attention')(
                                         x, x, decoder_mask, bias, decode=decode,
                                         deterministic=deterministic)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = x + inputs

    y = LayerNorm(cfg.layer_norm_epsilon, dtype, name='pre_cross_attention_layer_norm')(x)
    y = MultiHeadDotProductAttention(cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate,
                                     name='encoder_decoder_attention')(
                                         y, encoded, encoder_decoder_mask,
                                         deterministic=deterministic)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    y = y + x

    z = LayerNorm(cfg.layer_norm_epsilon, dtype, name='pre_mlp_layer_norm')(y)
    z = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, name='mlp')(
        z, deterministic=deterministic)
    z = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(z, deterministic=deterministic)
    return nn.with_logical_constraint(z + y, ('batch', 'length', 'embed'))


class Encoder(nn.Module):
  """Embeds tokens, prepends the prefix (if any) and runs the encoder stack."""
  config: T5Config
  shared_embedding: nn.Module
  prefix: Optional[Any] = None

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, encoder_mask: Optional[Array],
               deterministic: bool, return_query: bool = False) -> Array:
    """`[B, T]` tokens, `[B, 1, P+T, P+T]` mask -> `[B, P+T, d]`.

    With `return_query`, returns the prefix's per-input query `[B, d]` instead
    (`prefix.query` of the embedded tokens; no encoder stack).
    """
    cfg = self.config
    x = self.shared_embedding(encoder_input_tokens.astype('int32'))
    table = self.shared_embedding.embedding
    if return_query:
      if getattr(self.prefix, 'query', None) is None:
        raise ValueError(f'prefix_query needs a prefix with a query; this encoder has '
                         f'prefix {self.prefix!r}.')
      return self.prefix.query(x, encoder_input_tokens, table)
    dtype = cfg.compute_dtype
    rel_emb = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                     cfg.relative_attention_max_distance, cfg.num_heads,
                                     dtype, name='relpos_bias')
    if self.prefix is not None:
      x = self.prefix(x, encoder_input_tokens, table)
    x = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = x.astype(dtype)
    for lyr in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, rel_emb, name=f'layers_{lyr}')(x, encoder_mask, deterministic)
    x = LayerNorm(cfg.layer_norm_epsilon, dtype, name='encoder_norm')(x)
    return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array,
               decoder_positions: Optional[Array] = None, decoder_mask: Optional[Array] = None,
               encoder_decoder_mask: Optional[Array] = None, deterministic: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Returns float32 logits `[B, L, V]`."""
    cfg = self.config
    dtype = cfg.compute_dtype
    rel_emb = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                     cfg.relative_attention_max_distance, cfg.num_heads,
                                     dtype, name='relpos_bias')
    y = self.shared_embedding(decoder_input_tokens.astype('int32'))
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    y = y.astype(dtype)
    for lyr in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, rel_emb, name=f'layers_{lyr}')(
          y, encoded, decoder_mask, encoder_decoder_mask, deterministic, decode,
          max_decode_length)
    y = LayerNorm(cfg.layer_norm_epsilon, dtype, name='decoder_norm')(y)
    y = nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(dtype)
    else:
      logits = DenseGeneral(cfg.vocab_size, kernel_axes=('embed', 'vocab'), dtype=dtype,
                            name='logits_dense')(y)
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    return logits.astype(jnp.float32)


class Transformer(nn.Module):
  """T5 encoder-decoder with T5X's module interface; optional prefix on the encoder input.

  Attributes:
    config: the T5 hyperparameters.
    prefix: None (plain T5) or a prefix object (see the module docstring), e.g. SPT's
      prompt prefix.
  """
  config: T5Config
  prefix: Optional[Any] = None

  def setup(self):
    cfg = self.config
    if self.prefix is not None and not (callable(self.prefix) and hasattr(self.prefix, 'length')):
      raise TypeError(f'Transformer(prefix=...) takes an object with `length` and `__call__` '
                      f'(see the network module docstring); got {type(self.prefix).__name__}.')
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.compute_dtype,
                                name='token_embedder')
    self.encoder = Encoder(cfg, self.token_embedder, self.prefix, name='encoder')
    self.decoder = Decoder(cfg, self.token_embedder, name='decoder')

  @property
  def prefix_length(self) -> int:
    """P, the prefix positions in front of the encoded tokens (0 without a prefix)."""
    return 0 if self.prefix is None else int(self.prefix.length)

  def encoder_valid_positions(self, encoder_input_tokens: Array) -> Array:
    """`[B, T]` tokens -> `[B, P + T]` bool: prefix positions are always visible."""
    valid = encoder_input_tokens > 0
    if self.prefix_length:
      prefix = jnp.ones((valid.shape[0], self.prefix_length), dtype=bool)
      valid = jnp.concatenate([prefix, valid], axis=1)
    return valid

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             encoder_positions: Optional[Array] = None, enable_dropout: bool = True) -> Array:
    """`[B, T]` -> `[B, P + T, d]`. Positions are implicit (relative bias over the index)."""
    del encoder_positions
    cfg = self.config
    valid = self.encoder_valid_positions(encoder_input_tokens)
    encoder_mask = make_attention_mask(valid, valid, dtype=cfg.compute_dtype)
    if encoder_segment_ids is not None:
      encoder_mask = combine_masks(
          encoder_mask,
          make_attention_mask(encoder_segment_ids, encoder_segment_ids, jnp.equal,
                              dtype=cfg.compute_dtype),
          dtype=cfg.compute_dtype)
    return self.encoder(encoder_input_tokens, encoder_mask, deterministic=not enable_dropout)

  def prefix_query(self, encoder_input_tokens: Array) -> Array:
    """`[B, T]` tokens -> `[B, d]`: the prefix's query of each input (`prefix.query`).

    For SPT's prefix, the float32 query its memory bank retrieves with (used by the
    trainer's data-driven key initialisation).
    """
    return self.encoder(encoder_input_tokens, None, deterministic=True, return_query=True)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Decoder logits `[B, L, V]` (float32) given `encoded` `[B, P + T, d]`."""
    cfg = self.config
    dtype = cfg.compute_dtype
    encoder_valid = self.encoder_valid_positions(encoder_input_tokens)
    if decode:
      # The KV cache enforces causality; only cross-attention needs a mask.
      decoder_mask = None
      encoder_decoder_mask = make_attention_mask(
          jnp.ones_like(decoder_target_tokens) > 0, encoder_valid, dtype=dtype)
    else:
      decoder_mask = combine_masks(
          make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=dtype),
          make_causal_mask(decoder_target_tokens, dtype=dtype),
          dtype=dtype)
      if decoder_segment_ids is not None:
        decoder_mask = combine_masks(
            decoder_mask,
            make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal, dtype=dtype),
            dtype=dtype)
      encoder_decoder_mask = make_attention_mask(decoder_target_tokens > 0, encoder_valid,
                                                 dtype=dtype)
    if encoder_segment_ids is not None and decoder_segment_ids is not None:
      encoder_decoder_mask = combine_masks(
          encoder_decoder_mask,
          make_attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=dtype),
          dtype=dtype)
    return self.decoder(encoded, decoder_input_tokens, decoder_positions, decoder_mask,
                        encoder_decoder_mask, deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                       decoder_positions, enable_dropout=enable_dropout, decode=decode,
                       max_decode_length=max_decode_length)
