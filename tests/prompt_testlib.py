"""Shared helpers of the prompt / retrieval / memory-health tests: random tables and padded
inputs, and a NumPy reference of exact top-k retrieval."""
import jax
import jax.numpy as jnp
import numpy as np


def random_table(seed=0, vocab=64, d=16):
  """A `[vocab, d]` float32 embedding table."""
  return jax.random.normal(jax.random.key(seed), (vocab, d), jnp.float32)


def padded_inputs(batch, length=7, seed=1, d=16):
  """Embedded tokens [B, T, d] and a padded mask (row b has b % T + 1 tokens; last row none)."""
  emb = jax.random.normal(jax.random.key(seed), (batch, length, d), jnp.float32)
  lengths = np.array([(b % length) + 1 for b in range(batch)])
  if batch > 2:
    lengths[-1] = 0  # an all-padding row (e.g. eval batch padding)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return emb, jnp.asarray(mask)


def np_retrieve(query, keys, k, similarity):
  """NumPy float64 top-k: `(scores [B, k], indices [B, k])`, lower index first among equals."""
  q, kk = np.asarray(query, np.float64), np.asarray(keys, np.float64)
  if similarity == 'cosine':
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-6)
    kk = kk / np.linalg.norm(kk, axis=-1, keepdims=True)
  s = q @ kk.T
  # Descending score, lower index first among equals (stable sort of -s).
  idx = np.argsort(-s, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(s, idx, axis=1), idx
