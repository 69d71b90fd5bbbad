"""The real T5 vocabulary (shared fixtures) for test modules that import the T0 registries.

`require_t5_vocab()` runs at the top of such a module, before it imports `spt_tasks`: the
registries read env `SPT_T5_VOCAB` when they are imported (seqio loads the file lazily).
Where the shared fixtures are absent (a user's clone) the whole module is skipped.
"""
import os
import pathlib

import pytest

T5_VOCAB = pathlib.Path(os.environ.get(
    'SPT_SHARED_FIXTURES', pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'fixtures')
                       ) / 't5_vocab' / 'sentencepiece.model'


def require_t5_vocab() -> pathlib.Path:
  """Skips the calling module without the fixture; else sets `SPT_T5_VOCAB` and returns it."""
  if not T5_VOCAB.is_file():
    pytest.skip(f'T5 vocabulary fixture not found at {T5_VOCAB}', allow_module_level=True)
  os.environ['SPT_T5_VOCAB'] = str(T5_VOCAB)
  return T5_VOCAB
