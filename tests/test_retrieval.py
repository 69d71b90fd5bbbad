"""Tests of spt_jax.retrieval on one device: exact top-k vs NumPy, ties by lower index.

The sharded path (memory axis over a mesh) is in test_retrieval_sharded.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import retrieval

import prompt_testlib as ptl

D = 16


_np_retrieve = ptl.np_retrieve


@pytest.mark.parametrize('similarity', ['dot', 'cosine'])
def test_retrieve_top_k_ties_break_by_lower_index(similarity):
  keys = np.array(jax.random.normal(jax.random.key(3), (32, D)))
  keys[[5, 17, 30]] = keys[9]   # four identical keys
  keys[[2, 3]] = 2 * keys[9] if similarity == 'cosine' else keys[2]  # cosine-equal copies
  query = jnp.asarray(keys[[9, 9, 0]])
  scores, idx = jax.jit(retrieval.retrieve_top_k, static_argnums=(2, 3))(
      query, jnp.asarray(keys), 5, similarity)
  want_scores, want_idx = _np_retrieve(query, keys, 5, similarity)
  ref_scores, ref_idx = jax.lax.top_k(
      retrieval.similarity_scores(query, jnp.asarray(keys), similarity), 5)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=1e-6)
  if similarity == 'cosine':
    assert list(np.asarray(idx[0])) == [2, 3, 5, 9, 17]
  else:
    assert list(np.asarray(idx[0])[:4]) == [5, 9, 17, 30]


@pytest.mark.parametrize('num,k', [(4096, 4), (2048, 8), (256, 1), (300, 3)])
def test_top_k_rows_is_exact_with_ties_by_lower_index(num, k):
  rng = np.random.RandomState(num + k)
  scores = rng.randn(6, num).astype(np.float32)
  scores[1] = np.round(scores[1])          # massive ties
  scores[2] = 0.
  scores[2, rng.rand(num) < 0.5] = -0.     # -0 and +0 are equal (XLA's TopK alone differs)
  scores[3, [7, 900 % num, num - 1]] = np.inf
  scores[4, [5, 77]] = -np.inf
  scores[5] = scores[5, 0]                 # all equal
  values, idx = jax.jit(retrieval.top_k_rows, static_argnums=1)(scores, k)
  want_idx = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_array_equal(values, np.take_along_axis(scores, want_idx, axis=1))
  np.testing.assert_array_equal(idx[2], np.arange(k))
  canonical = np.where(scores == 0, np.float32(0), scores)
  np.testing.assert_array_equal(idx, jax.lax.top_k(canonical, k)[1])


def test_retrieve_top_k_large_memory_matches_numpy():
  keys = jax.random.normal(jax.random.key(0), (4096, D))
  query = jax.random.normal(jax.random.key(1), (5, D))
  scores, idx = jax.jit(retrieval.retrieve_top_k, static_argnums=(2, 3))(query, keys, 4, 'cosine')
  want_scores, want_idx = _np_retrieve(query, keys, 4, 'cosine')
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(scores, want_scores, atol=1e-6)
