"""The T5 SentencePiece vocabulary, tokenising through one shared TF function.

seqio's `SentencePieceVocabulary.encode_tf` builds a new `tf_text.SentencepieceTokenizer`
each time it is traced, and each tokenizer embeds the whole serialised model (~0.8 MB for
T5's) as a constant of the traced graph. Every task of a mixture traces its own tokenize
map, so the T0 training mixture (313 tasks, two tokenised features each) put ~600 copies
of the model into its tf.data graph; building, optimising and instantiating that graph
was the largest part of its start-up (measured in `benchmarks/input_pipeline.py
--t0_mixture`).

`SentencePieceVocabulary` here is seqio's, except that `encode_tf` calls one
`tf.function` per vocabulary object: it is traced once per input signature, and every
map that tokenises refers to that one function (and one copy of the model). The ids are
those of seqio's (same tokenizer op, same model; `tests/test_vocabularies.py` compares
the two on rendered T0 examples). It pickles, compares equal and prints like seqio's, so
gin, seqio's feature checks and T5X see no difference.
"""
from __future__ import annotations

from typing import Any

import seqio
import tensorflow as tf


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """`seqio.SentencePieceVocabulary` whose `encode_tf` is one shared `tf.function`."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._encode_tf_fn = None

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Token ids of a string tensor: `[]` → int32 `[n]`; `[b]` → ragged int32 `[b, None]`."""
    if self._encode_tf_fn is None:
      # The tokenizer is created inside the function, so its model constant lives in the
      # function's graph (a tokenizer created eagerly and captured would be a resource
      # tf.data cannot carry across graphs).
      self._encode_tf_fn = tf.function(lambda x: self.tf_tokenizer.tokenize(x),
                                       autograph=False)
    return self._encode_tf_fn(s)

  def __getstate__(self) -> dict[str, Any]:
    # seqio's __getstate__ drops the loaded model; the traced function goes too (it
    # cannot be pickled, and seqio's __eq__ compares states).
    state = super().__getstate__()
    state.pop('_encode_tf_fn', None)
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    super().__setstate__(state)
    self._encode_tf_fn = None
