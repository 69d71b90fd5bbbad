"""Tests for spt_tasks/preprocessors.py: template rendering in tf.data and score_eval rows."""
import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from spt_tasks import preprocessors
from spt_tasks import templates

RTE = [
    {'premise': 'The cat sat on the mat.', 'hypothesis': 'A cat sat.', 'idx': 0, 'label': 0},
    {'premise': 'Rain fell all day.', 'hypothesis': 'It was dry.', 'idx': 1, 'label': 1},
    # label -1 (unlabelled test example): the template renders an empty target.
    {'premise': 'Nobody knows.', 'hypothesis': 'Someone knows.', 'idx': 2, 'label': -1},
    {'premise': 'Birds fly south.', 'hypothesis': 'Birds move.', 'idx': 3, 'label': 0},
]


def _ds(rows):
  return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in rows[0]})


def _np(ds):
  return list(ds.as_numpy_iterator())


@pytest.fixture(autouse=True)
def _reset():
  preprocessors.reset_counts()


def test_to_python():
  assert preprocessors.to_python(np.array(b'caf\xc3\xa9', dtype=object)) == 'café'
  assert preprocessors.to_python(np.int64(3)) == 3 and type(preprocessors.to_python(np.int64(3))) is int
  assert preprocessors.to_python(np.array([b'a', b'b'], dtype=object)) == ['a', 'b']
  assert preprocessors.to_python(np.array(True)) is True


def test_apply_template_matches_promptsource_and_skips_failures():
  template = templates.get_template('super_glue', 'rte', 'does it follow that')
  out = _np(preprocessors.apply_template(_ds(RTE), template, counter_name='rte_t'))
  assert len(out) == 3  # the label -1 example is skipped
  expected = [templates.render(template, ex) for ex in RTE if ex['label'] >= 0]
  for got, want in zip(out, expected):
    assert got['inputs'].decode() == want.inputs
    assert got['targets'].decode() == want.targets
    assert [c.decode() for c in got['answer_choices']] == want.answer_choices
  counts = preprocessors.get_counts('rte_t')
  assert counts['rendered'] == 3 and counts['template_failed'] == 1


def test_apply_template_without_choices_has_no_answer_choices_feature():
  template = templates.get_template('glue', 'mrpc', 'generate_paraphrase')
  rows = [{'sentence1': 'A dog ran.', 'sentence2': 'A dog sprinted.', 'label': 1, 'idx': 0},
          {'sentence1': 'A dog ran.', 'sentence2': 'A cat sat.', 'label': 0, 'idx': 1}]
  ds = preprocessors.apply_template(_ds(rows), template)
  assert set(ds.element_spec) == {'inputs', 'targets'}
  out = _np(ds)
  # The template only renders paraphrase pairs (label 1); the other is skipped.
  assert len(out) == 1 and out[0]['targets'] == b'A dog sprinted.'
  assert preprocessors.get_counts('generate_paraphrase')['template_failed'] == 1


def test_apply_template_example_fn_maps_schema():
  template = templates.get_template('super_glue', 'rte', 'GPT-3 style')
  rows = [{'context': 'A b c.', 'hypothesis': 'A b.', 'label': 0, 'idx': 0}]
  fn = lambda ex: dict(ex, premise=ex.pop('context'))
  out = _np(preprocessors.apply_template(_ds(rows), template, example_fn=fn))
  assert out[0]['inputs'].decode().startswith('A b c.') and out[0]['targets'] == b'True'


def test_apply_template_rejects_ragged():
  ds = tf.data.Dataset.from_tensor_slices({'a': tf.ragged.constant([[1], [1, 2]])})
  with pytest.raises(TypeError, match='dense'):
    preprocessors.apply_template(ds, templates.get_template('super_glue', 'rte', 'GPT-3 style'))


def test_score_eval_expand_rows():
  examples = {
      'inputs': ['q0', 'q1', 'q2', 'q3'],
      'targets': ['b', 'zzz', ' a ', 'x'],
      'answer_choices': [['a', 'b', 'c'], ['a', 'b', 'c'], ['a', 'b', 'a'], ['x', 'y', 'z']],
  }
  ds = preprocessors.score_eval_expand(tf.data.Dataset.from_tensor_slices(examples),
                                       counter_name='se')
  spec = ds.element_spec
  assert spec['idx'].dtype == tf.int32 and spec['idx'].shape == [2]
  assert spec['is_correct'].dtype == tf.bool and spec['weight'].dtype == tf.float32
  rows = _np(ds)
  # q1 (target not a choice) and q2 (target matches two choices) are dropped.
  assert [tuple(r['idx']) for r in rows] == [(0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2)]
  assert [r['targets'].decode() for r in rows] == ['a', 'b', 'c', 'x', 'y', 'z']
  assert [bool(r['is_correct']) for r in rows] == [False, True, False, True, False, False]
  assert all(r['inputs'] == (b'q0' if r['idx'][0] == 0 else b'q3') for r in rows)
  assert all(r['weight'] == 1.0 for r in rows)
  counts = preprocessors.get_counts('se')
  assert counts['score_eval_examples'] == 2 and counts['score_eval_dropped'] == 2


def test_score_eval_expand_needs_choices():
  with pytest.raises(ValueError, match='answer_choices'):
    preprocessors.score_eval_expand(tf.data.Dataset.from_tensor_slices({'inputs': ['a'],
                                                                         'targets': ['b']}))


def test_score_eval_through_seqio_task():
  """A real seqio task: render, expand, tokenize; one correct row per example."""
  template = templates.get_template('super_glue', 'rte', 'can we infer')
  vocab = seqio.test_utils.sentencepiece_vocab()
  name = 'test_preprocessors_rte_can_we_infer_score_eval'
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(lambda split, shuffle_files: _ds(RTE), splits=['validation']),
      preprocessors=[
          functools.partial(preprocessors.apply_template, template=template),
          preprocessors.score_eval_expand,
          seqio.preprocessors.tokenize, seqio.preprocessors.append_eos,
      ],
      output_features={'inputs': seqio.Feature(vocab, add_eos=False),
                       'targets': seqio.Feature(vocab, add_eos=True)})
  rows = _np(seqio.get_mixture_or_task(name).get_dataset(
      None, split='validation', shuffle=False, use_cached=False))
  seqio.TaskRegistry.remove(name)
  assert len(rows) == 6  # 3 renderable examples x 2 choices (Yes / No)
  by_example = {}
  for r in rows:
    by_example.setdefault(int(r['idx'][0]), []).append(r)
  assert sorted(by_example) == [0, 1, 2]  # indices count rendered examples
  for group in by_example.values():
    assert sum(bool(r['is_correct']) for r in group) == 1
    assert [r['targets_pretokenized'].decode() for r in group] == ['Yes', 'No']
    assert all(r['targets'][-1] == 1 for r in group)  # EOS
