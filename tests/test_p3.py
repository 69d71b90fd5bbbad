"""tasks.p3: reading bigscience P3's pre-rendered layout from a directory the test writes."""
import json
import os
import pathlib

import pytest

_VOCAB = pathlib.Path(os.environ.get(
    'SPT_SHARED_FIXTURES', pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'fixtures')
                     ) / 't5_vocab' / 'sentencepiece.model'
if not _VOCAB.is_file():
  pytest.skip(f'T5 vocabulary fixture not found at {_VOCAB}', allow_module_level=True)
os.environ['SPT_T5_VOCAB'] = str(_VOCAB)

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from tasks import heldout  # noqa: E402
from tasks import p3  # noqa: E402
from tasks import sources  # noqa: E402
from tasks import t0  # noqa: E402

pytestmark = pytest.mark.timeout(300)

ORDINARY = 'super_glue_cb_GPT_3_style'
SCORE_EVAL = 'super_glue_cb_GPT_3_style_score_eval'
WITH_EMPTY_SPLIT = 'adversarial_qa_dbert_generate_question'


def _feature(values, dtype):
  if dtype == 'string':
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
  if dtype == 'float32':
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _write_split(task_dir, split, features, rows):
  """One split in P3's layout: info/stats JSON + a 1-shard TFRecord (empty → {} and 0 bytes)."""
  info = {'features': features, 'num_shards': 1, 'seqio_version': '0.0.6'} if rows else {}
  (task_dir / f'info.{split}.json').write_text(json.dumps(info, sort_keys=True, indent=2) + '\n')
  (task_dir / f'stats.{split}.json').write_text(json.dumps({'examples': len(rows)}) + '\n')
  with tf.io.TFRecordWriter(str(task_dir / f'{split}.tfrecord-00000-of-00001')) as w:
    for row in rows:
      ex = tf.train.Example(features=tf.train.Features(feature={
          k: _feature(v if isinstance(v, list) else [v], features[k]['dtype'])
          for k, v in row.items()}))
      w.write(ex.SerializeToString())


VAR = [None]
ORDINARY_FEATURES = {
    'inputs': {'dtype': 'int32', 'shape': VAR}, 'targets': {'dtype': 'int32', 'shape': VAR},
    'inputs_pretokenized': {'dtype': 'string', 'shape': []},
    'targets_pretokenized': {'dtype': 'string', 'shape': []},
    'answer_choices': {'dtype': 'string', 'shape': VAR},
}
SCORE_FEATURES = {
    'idx': {'dtype': 'int32', 'shape': VAR},
    'inputs': {'dtype': 'int32', 'shape': VAR}, 'targets': {'dtype': 'int32', 'shape': VAR},
    'inputs_pretokenized': {'dtype': 'string', 'shape': []},
    'targets_pretokenized': {'dtype': 'string', 'shape': []},
    'is_correct': {'dtype': 'bool', 'shape': []}, 'weight': {'dtype': 'float32', 'shape': []},
}
CHOICES = ['True', 'False', 'Neither']


@pytest.fixture
def p3_root(tmp_path, monkeypatch):
  data = tmp_path / 'data'
  # An ordinary task with answer choices.
  d = data / ORDINARY
  d.mkdir(parents=True)
  (d / 'COMPLETED').touch()
  rows = [{'inputs': [37, 1782, 5], 'targets': [10998, 1], 'inputs_pretokenized': 'It rains.\nQ?',
           'targets_pretokenized': ' True', 'answer_choices': CHOICES},
          {'inputs': [8, 9], 'targets': [10747, 1], 'inputs_pretokenized': 'No.\nQ?',
           'targets_pretokenized': ' Neither', 'answer_choices': CHOICES}]
  _write_split(d, 'validation', ORDINARY_FEATURES, rows)
  _write_split(d, 'train', ORDINARY_FEATURES, rows[:1])
  # Its rank-classification twin: rows per choice, not in source order.
  d = data / SCORE_EVAL
  d.mkdir()
  (d / 'COMPLETED').touch()
  score_rows = []
  for example, correct in ((1, 2), (0, 0)):
    for choice in range(3):
      score_rows.append({'idx': [example, choice], 'inputs': [8, 9], 'targets': [100 + choice, 1],
                         'inputs_pretokenized': 'x', 'targets_pretokenized': CHOICES[choice],
                         'is_correct': choice == correct, 'weight': 1.0})
  _write_split(d, 'validation', SCORE_FEATURES, score_rows)
  # A task with an empty split (P3's adversarial_qa test splits are empty).
  d = data / WITH_EMPTY_SPLIT
  d.mkdir()
  (d / 'COMPLETED').touch()
  feats = {k: v for k, v in ORDINARY_FEATURES.items() if k != 'answer_choices'}
  _write_split(d, 'train', feats, [{'inputs': [5], 'targets': [6, 1], 'inputs_pretokenized': 'q',
                                    'targets_pretokenized': 'a'}])
  _write_split(d, 'test', feats, [])
  monkeypatch.setenv('SPT_P3_DIR', str(tmp_path))
  return tmp_path


def _get(name, split):
  task = seqio.get_mixture_or_task(name)
  return list(task.get_dataset(None, split=split, shuffle=False,
                               try_in_mem_cache=False).as_numpy_iterator())


def test_ordinary_task_with_answer_choices(p3_root):
  del p3_root
  rows = _get('p3_' + ORDINARY, 'validation')
  assert len(rows) == 2
  assert rows[0]['inputs'].dtype == np.int32 and rows[0]['inputs'].tolist() == [37, 1782, 5]
  assert rows[0]['targets'].tolist() == [10998, 1]  # EOS already stored; not added twice
  assert rows[1]['targets_pretokenized'] == b' Neither'
  assert [c.decode() for c in rows[0]['answer_choices']] == CHOICES


def test_score_eval_task_types_and_grouping(p3_root):
  del p3_root
  rows = _get('p3_' + SCORE_EVAL, 'validation')
  assert len(rows) == 6
  for r in rows:
    assert r['idx'].dtype == np.int32 and r['idx'].shape == (2,)
    assert r['is_correct'].dtype == np.bool_ and r['weight'].dtype == np.float32
  by_example = {}
  for r in rows:
    by_example.setdefault(int(r['idx'][0]), []).append(bool(r['is_correct']))
  assert {k: sum(v) for k, v in by_example.items()} == {0: 1, 1: 1}
  task = seqio.get_mixture_or_task('p3_' + SCORE_EVAL)
  targets = [task.postprocess_fn(None, example=r, is_target=True) for r in rows]
  scores = [0.0, -1.0, -2.0, -1.0, -2.0, -3.0]  # argmax choice 0: example 1 wrong, 0 right
  metrics = task.metric_fns[0](targets, scores)
  assert metrics['accuracy'] == pytest.approx(50.0)


def test_empty_split_yields_nothing_with_the_task_features(p3_root):
  task_dir = str(p3_root / 'data' / WITH_EMPTY_SPLIT)
  ds = p3.read_p3_split(task_dir, 'test')
  assert ds.element_spec['inputs'].dtype == tf.int32
  assert list(ds.as_numpy_iterator()) == []
  assert _get('p3_' + WITH_EMPTY_SPLIT, 'test') == []
  assert len(_get('p3_' + WITH_EMPTY_SPLIT, 'train')) == 1


def test_registration_and_mixtures_need_no_data(monkeypatch):
  monkeypatch.delenv('SPT_P3_DIR', raising=False)
  sizes = p3.load_split_sizes()
  assert len(sizes) == 660 and sum(t.endswith('_score_eval') for t in sizes) == 116
  task = seqio.get_mixture_or_task('p3_' + ORDINARY)
  assert task.num_input_examples('validation') == 56
  # The P3 training mixture mirrors spt_t0_train's tasks and rates.
  ours = seqio.get_mixture_or_task('spt_t0_train')
  ours_rates = {t.name: ours.get_rate(t) for t in ours.tasks}
  mixture = seqio.get_mixture_or_task(p3.P3_T0_TRAIN_MIXTURE)
  p3_rates = {t.name[len(p3.PREFIX):]: mixture.get_rate(t) for t in mixture.tasks}
  # Same names: every one of our 313 training tasks has its P3 folder.
  assert set(p3_rates) == set(ours_rates)
  assert all(p3_rates[t] == ours_rates[t] for t in p3_rates
             if sources.get_spec(_spec_key(t)).train_size <= 500_000)
  held = {t.name for t in seqio.get_mixture_or_task(p3.P3_HELDOUT_MIXTURE).tasks}
  assert 'p3_' + SCORE_EVAL in held
  assert not any('story_cloze' in t for t in held)  # not in P3
  ours_held = {t.name for t in seqio.get_mixture_or_task(heldout.HELDOUT_MIXTURE).tasks}
  assert {t[len(p3.PREFIX):] for t in held} <= ours_held


def _spec_key(task_name):
  for spec in sources.specs_with_role('train'):
    if task_name in t0.task_names(spec):
      return spec.key
  raise KeyError(task_name)


def test_missing_directory_errors(monkeypatch, tmp_path):
  monkeypatch.delenv('SPT_P3_DIR', raising=False)
  with pytest.raises(FileNotFoundError, match='set env SPT_P3_DIR'):
    _get('p3_' + ORDINARY, 'validation')
  monkeypatch.setenv('SPT_P3_DIR', str(tmp_path / 'nope'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    p3.p3_dir()
  monkeypatch.setenv('SPT_P3_DIR', str(tmp_path))
  with pytest.raises(FileNotFoundError, match=f'P3 task {ORDINARY!r} not found'):
    _get('p3_' + ORDINARY, 'validation')


def test_missing_split_lists_the_splits(p3_root):
  with pytest.raises(FileNotFoundError, match=r"no split 'validation'.*\['test', 'train'\]"):
    p3.read_p3_split(str(p3_root / 'data' / WITH_EMPTY_SPLIT), 'validation')


def test_bad_feature_spec():
  with pytest.raises(ValueError, match='unsupported dtype'):
    p3.parse_spec({'x': {'dtype': 'complex64', 'shape': []}})
  with pytest.raises(ValueError, match='is not'):
    p3.parse_spec({'x': {'dtype': 'int32', 'shape': [None, None]}})
