"""spt_tasks.vocabularies and the fast T0 input path give seqio's bytes.

`vocabularies.SentencePieceVocabulary` (one shared tokenize function) is checked against
`seqio.SentencePieceVocabulary` (the outside reference) on a few hundred rendered T0
examples; and whole T0 task pipelines as registered now (our vocabulary; injected HF rows
read through `from_tensor_slices`) are checked example by example against the same tasks
built the way they were before (seqio's vocabulary; HF rows read through the
`from_generator` path that real HF `datasets` splits take, from a stand-in `datasets`
module). Needs the real T5 vocabulary from the shared fixtures (skipped if absent).
"""
import copy
import pickle
import sys
import types

import pytest

import t5_vocab_testlib

_VOCAB = t5_vocab_testlib.require_t5_vocab()  # before spt_tasks: registration reads it

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from spt_tasks import mock_data  # noqa: E402
from spt_tasks import sources  # noqa: E402
from spt_tasks import t0  # noqa: E402
from spt_tasks import vocabularies  # noqa: E402

pytestmark = pytest.mark.timeout(600)

_EXAMPLES_PER_SPLIT = 70  # > sources._HF_CHUNK: the generator path yields several chunks
_LENGTHS = {'inputs': 256, 'targets': 64}


def _hf_train_tasks(n_datasets=5):
  """One registered T0 training task per HF-sourced dataset row, for `n_datasets` rows."""
  out = []
  for spec in sources.specs_with_role('train'):
    if spec.source != 'hf' or not spec.default_train:
      continue
    infos = t0.register_dataset_tasks(spec)
    out.append((spec, seqio.get_mixture_or_task(spec.task_name(infos[0].name))))
    if len(out) == n_datasets:
      break
  assert len(out) == n_datasets, out
  return out


def _rendered_strings():
  """`inputs` / `targets` strings of several T0 tasks, as `apply_template` renders them."""
  texts = []
  with mock_data.serve(num_examples=_EXAMPLES_PER_SPLIT):
    for _, task in _hf_train_tasks():
      ds = task.preprocessors[0](task.source.get_dataset('train', shuffle=False))
      for ex in ds.as_numpy_iterator():
        texts += [ex['inputs'], ex['targets']]
  return texts


def test_encode_tf_gives_seqio_ids_on_rendered_t0_examples():
  ours = vocabularies.SentencePieceVocabulary(str(_VOCAB), extra_ids=100)
  ref = seqio.SentencePieceVocabulary(str(_VOCAB), extra_ids=100)
  texts = _rendered_strings()
  assert len(texts) >= 300 and len(set(texts)) >= 100  # a few hundred, not one repeated
  texts += ['', 'sentinels <extra_id_0> and <extra_id_99>', 'é ü ß 中文 \t\n  spaces ']

  def tokenized(vocab):
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(texts)).map(vocab.encode_tf)
    return [a.tolist() for a in ds.as_numpy_iterator()]

  ids = tokenized(ours)
  assert ids == tokenized(ref)
  assert ids == [ref.encode(t.decode('utf-8') if isinstance(t, bytes) else t) for t in texts]
  # batched input: a ragged result, as seqio's
  batch = tf.constant(texts[:8])
  assert ours.encode_tf(batch).to_list() == ref.encode_tf(batch).to_list()
  # under jit-like tracing of a caller, too
  traced = tf.function(lambda s: ours.encode_tf(s))
  assert traced(tf.constant(texts[0])).numpy().tolist() == ids[0]


def test_pickles_copies_and_compares_like_seqio():
  ours = vocabularies.SentencePieceVocabulary(str(_VOCAB), extra_ids=100)
  ref = seqio.SentencePieceVocabulary(str(_VOCAB), extra_ids=100)
  ours.encode_tf(tf.constant('traced once'))  # the shared function exists now
  assert ours == ref and ref == ours and str(ours) == str(ref)
  assert ours != vocabularies.SentencePieceVocabulary(str(_VOCAB), extra_ids=10)
  for clone in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours)):
    assert isinstance(clone, vocabularies.SentencePieceVocabulary) and clone == ref
    assert clone.encode_tf(tf.constant('a b')).numpy().tolist() == ref.encode('a b')
  assert sources.get_vocabulary() == ref
  assert isinstance(sources.get_vocabulary(), vocabularies.SentencePieceVocabulary)


def _examples(ds):
  return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def test_t0_tasks_give_the_examples_they_gave_before(monkeypatch):
  """Registered T0 tasks now vs the same tasks with seqio's vocabulary and generator source."""
  ref_vocab = seqio.SentencePieceVocabulary(str(_VOCAB), extra_ids=100)
  injected = mock_data.hf_injection(_EXAMPLES_PER_SPLIT)
  pairs = _hf_train_tasks()

  def read(task):
    return _examples(task.get_dataset(_LENGTHS, split='train', shuffle=True, seed=5,
                                      num_epochs=2, try_in_mem_cache=False))

  with sources.inject_hf_examples(injected):
    now = [read(task) for _, task in pairs]

  fake = types.ModuleType('datasets')
  fake.load_dataset = lambda name, subset, split: list(injected[(name, subset, split)])
  monkeypatch.setitem(sys.modules, 'datasets', fake)
  before = []
  for spec, task in pairs:
    features = {k: seqio.Feature(ref_vocab, add_eos=f.add_eos, dtype=f.dtype)
                for k, f in task.output_features.items()}
    old = seqio.Task(task.name + '_before', source=sources.make_source(spec),
                     preprocessors=task.preprocessors, output_features=features)
    before.append(read(old))

  assert sum(len(x) for x in now) >= 500
  for (_, task), a, b in zip(pairs, now, before):
    assert len(a) == 2 * _EXAMPLES_PER_SPLIT, task.name
    assert a == b, task.name
