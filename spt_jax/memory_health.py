"""Memory-bank health: slot-usage statistics, dead-slot restarts and data-driven init.

Everything that watches how the memory bank of `spt_jax.prompts` is used, or re-draws its
parameters outside the gradient step, is here; the bank itself (`prompts.MemoryBank`)
only sows its retrievals and declares its state. Three jobs:

* Statistics for logging: `retrieval_statistics` (one batch's slot histogram, entropy,
  used fractions; cumulative counts when fed back), `step_metrics` (what a train step
  logs under ``retrieval/``), and the cumulative usage since step 1 that the trainer keeps
  next to each checkpoint (`save_usage`, `load_usage`, `cumulative_usage_metrics`).
* Dead-slot restarts (VQ-VAE codebook style) from the non-parameter collection
  `prompts.MEMORY_STATS_COLLECTION`: `update_memory_stats` (usage EMA, query ring buffer),
  `restart_slots` (re-draw dead keys from buffered queries), their tree-level forms
  `update_all_memory_stats` / `restart_dead_slots` / `total_restarts`, and
  `track_usage_and_restart`, one train step's update.
* (Re-)initialisation from data: `keys_from_queries` / `init_keys_from_queries` (keys from
  the first training batches' queries, 'queries' or seeded spherical k-means,
  `spherical_or_euclidean_kmeans`), and `init_prompts_from_embedding` (redraw
  'sampled_vocab' prompts from a pretrained embedding after a partial restore).

All array code is global (no per-shard logic), so a sharded bank behaves exactly as a
single-device one. Banks are found in a parameter tree as its 'memory_bank' subtrees.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from absl import logging
from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spt_jax import prompts
from spt_jax import retrieval
from spt_jax import retrieval_analysis

Array = jax.Array

MEMORY_STATS_COLLECTION = prompts.MEMORY_STATS_COLLECTION
# Subdirectory of MODEL_DIR holding the cumulative slot usage of each checkpointed step.
USAGE_DIR = 'retrieval_usage'


# ----------------------------------------------------------------------------
# Statistics.


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


def step_metrics(metrics: Mapping[str, Array], memory_size: int) -> dict[str, Array]:
  """The ``retrieval/`` metrics of one train step, from `EncoderDecoderModel.loss_fn`'s metrics.

  'retrieval/entropy', 'retrieval/normalized_entropy', 'retrieval/batch_used_fraction',
  'retrieval/histogram' [M] int32 (summed by the trainer into the cumulative usage) and
  'retrieval/mean_top_score'; {} without retrievals.
  """
  if not memory_size or 'retrieval_indices' not in metrics:
    return {}
  stats = retrieval_statistics(metrics['retrieval_indices'], memory_size)
  return {'retrieval/entropy': stats['entropy'],
          'retrieval/normalized_entropy': stats['normalized_entropy'],
          'retrieval/batch_used_fraction': stats['batch_used_fraction'],
          'retrieval/histogram': stats['histogram'],
          'retrieval/mean_top_score': jnp.mean(metrics['retrieval_scores'][:, 0])}


def save_usage(model_dir: str, step: int, usage: np.ndarray, keep: set[int]) -> None:
  """Writes `<model_dir>/retrieval_usage/<step>.npy` (process 0); drops other steps'."""
  if jax.process_index() != 0:
    return
  directory = epath.Path(model_dir) / USAGE_DIR
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / f'{step}.npy.tmp'
  with tmp.open('wb') as f:
    np.save(f, usage)
  tmp.replace(directory / f'{step}.npy')   # a killed run may have written it already
  for path in directory.glob('*.npy'):
    if path.name[:-4].isdigit() and int(path.name[:-4]) not in keep:
      path.unlink()


def load_usage(model_dir: str, step: int) -> np.ndarray | None:
  """The cumulative usage `save_usage` wrote for ``step``, or None (with a warning)."""
  path = epath.Path(model_dir) / USAGE_DIR / f'{step}.npy'
  if not path.exists():
    logging.warning('No cumulative retrieval usage saved for step %d; the cumulative '
                    'retrieval metrics count from the resume step.', step)
    return None
  with path.open('rb') as f:
    return np.load(f)


def cumulative_usage_metrics(usage: np.ndarray) -> dict[str, float]:
  """Health of the slot usage accumulated over every training retrieval since step 1.

  `usage` [M] counts (restored with the checkpoint on resume, see `save_usage`).
  """
  summary = retrieval_analysis.usage_summary(usage)
  return {'retrieval/never_used_fraction': summary['unused_fraction'],
          'retrieval/cumulative_never_used_fraction': summary['unused_fraction'],
          'retrieval/cumulative_normalized_entropy': summary['normalized_entropy']}


# ----------------------------------------------------------------------------
# Dead-slot restarts.


def update_memory_stats(stats: Mapping[str, Array], indices: Array, queries: Array,
                        valid: Array, config: prompts.PromptConfig) -> dict[str, Array]:
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
  share = retrieval.valid_counts(indices, valid, m) / jnp.maximum(n * k, 1).astype(jnp.float32)
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
                  config: prompts.PromptConfig, rng: Array
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


def restart_dead_slots(params: Any, model_state: Any, config: prompts.PromptConfig,
                       rng: Array) -> tuple[Any, Any, Array]:
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
                            valid: Array, config: prompts.PromptConfig) -> dict[str, Any]:
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


def track_usage_and_restart(params: Any, model_state: Any, step: Array,
                            metrics: Mapping[str, Array], config: prompts.PromptConfig,
                            rng: Array) -> tuple[Any, Any, dict[str, Array]]:
  """One train step's usage update; every ``restart_every_steps`` steps, the restarts.

  Runs after the optimizer update of step s (so ``step`` = s + 1); the restart is a
  `lax.cond`, so other steps pay nothing.

  Args:
    params: the 'params' tree after the update.
    model_state: {MEMORY_STATS_COLLECTION: tree}.
    step: the new step (int32 scalar).
    metrics: `EncoderDecoderModel.loss_fn` metrics with 'retrieval_indices',
      'retrieval_queries' and 'retrieval_valid'.
    config: the prompt configuration (``tracks_usage``).
    rng: PRNG key of the restart.

  Returns:
    (params, model_state, {'retrieval/restarted_slots': this step's restarts,
    'retrieval/restarts_total': restarts so far}).
  """
  model_state = update_all_memory_stats(
      model_state, params, metrics['retrieval_indices'], metrics['retrieval_queries'],
      metrics['retrieval_valid'], config)

  def restart(operands):
    return restart_dead_slots(*operands, config, rng)

  def keep(operands):
    return (*operands, jnp.zeros((), jnp.int32))

  due = step % config.restart_every_steps == 0
  params, model_state, restarted = jax.lax.cond(due, restart, keep, (params, model_state))
  return params, model_state, {'retrieval/restarted_slots': restarted,
                               'retrieval/restarts_total': total_restarts(model_state)}


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


# ----------------------------------------------------------------------------
# Initialisation from data.

# Noise (times the query norm) that separates keys initialised from the same query.
_KEY_INIT_NOISE = 0.01
# Lloyd iterations of the 'kmeans' key initialisation.
KMEANS_ITERATIONS = 10


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
    x, c = retrieval.normalize(x), retrieval.normalize(c)
  for _ in range(iterations):
    if spherical:
      assign = jnp.argmax(x @ c.T, axis=1)
    else:
      dist = jnp.sum(jnp.square(c), axis=1)[None, :] - 2. * (x @ c.T)
      assign = jnp.argmin(dist, axis=1)
    onehot = jax.nn.one_hot(assign, c.shape[0], dtype=jnp.float32)  # [N, C]
    sums = onehot.T @ x
    counts = jnp.sum(onehot, axis=0)[:, None]
    new = retrieval.normalize(sums) if spherical else sums / jnp.maximum(counts, 1.)
    c = jnp.where(counts > 0, new, c)
  return c


def keys_from_queries(queries: Array, prompt_config: prompts.PromptConfig, rng: Array) -> Array:
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


def init_keys_from_queries(params: Any, queries: Array, prompt_config: prompts.PromptConfig,
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
                                prompt_config: prompts.PromptConfig, rng: Array) -> Any:
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
        new = prompts.sample_vocab_rows(rng_prompt, embedding_table, _shape(old)[:1],
                                 prompt_config.init_vocab_size)
        child['prompt'] = _like(old, new)
        found.append('/'.join(path + (name, 'prompt')))
      elif (name == 'memory_bank' and 'values' in child
            and prompt_config.memory_init == 'sampled_vocab'):
        old_values = child['values']
        values = prompts.sample_vocab_rows(rng_memory, embedding_table, _shape(old_values)[:2],
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
