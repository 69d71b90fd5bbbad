"""spt_tasks.p3: P3's layout from a directory the test writes, registration with and without
it, and P3's size table (shared data, via a fixture) against our task names and train sizes.
"""
import json
import os
import pathlib

import pytest

import t5_vocab_testlib

_VOCAB = t5_vocab_testlib.require_t5_vocab()  # before spt_tasks: registration reads it

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from spt_tasks import heldout  # noqa: E402
from spt_tasks import p3  # noqa: E402
from spt_tasks import sources  # noqa: E402
from spt_tasks import t0  # noqa: E402

# The registration importing spt_tasks.p3 made (by name, unless SPT_P3_DIR was set).
_IMPORT_DATA_DIR = p3.configured_data_dir()
SHARED_DATA = pathlib.Path(os.environ.get(
    'SPT_SHARED_DATA', pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'))

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


@pytest.fixture
def restore_registration():
  """Puts back the registration the import made, after a test re-registers."""
  yield
  p3.register(_IMPORT_DATA_DIR)


def test_registration_from_a_p3_directory(p3_root, restore_registration):
  del restore_registration
  # An interrupted download: stats but no COMPLETED marker; it must be ignored.
  half = p3_root / 'data' / 'super_glue_cb_can_we_infer'
  half.mkdir()
  (half / 'stats.validation.json').write_text('{"examples": 56}\n')
  assert p3.configured_data_dir() == str(p3_root / 'data')
  names = p3.register(p3.configured_data_dir())
  assert names == sorted(p3.PREFIX + t for t in (ORDINARY, SCORE_EVAL, WITH_EMPTY_SPLIT))
  registered = set(seqio.TaskRegistry.names())
  assert not any(n.startswith('p3_story_cloze') for n in registered)  # by-name tasks dropped
  assert 'p3_super_glue_cb_can_we_infer' not in registered
  task = seqio.get_mixture_or_task(p3.PREFIX + ORDINARY)
  assert sorted(task.splits) == ['train', 'validation']
  assert task.num_input_examples('validation') == 2 and task.num_input_examples('train') == 1
  empty = seqio.get_mixture_or_task(p3.PREFIX + WITH_EMPTY_SPLIT)
  assert empty.num_input_examples('test') == 0
  assert len(_get(p3.PREFIX + ORDINARY, 'validation')) == 2
  # Mixtures hold what the directory has: one training template (a dataset with one
  # template present gets the uncapped size as its rate), one scored held-out task.
  mixture = seqio.get_mixture_or_task(p3.P3_T0_TRAIN_MIXTURE)
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == {p3.PREFIX + WITH_EMPTY_SPLIT:
                   float(sources.get_spec('adversarial_qa/dbert').train_size)}
  held = seqio.get_mixture_or_task(p3.P3_HELDOUT_MIXTURE)
  assert [t.name for t in held.tasks] == [p3.PREFIX + SCORE_EVAL]


def test_a_directory_without_completed_tasks_falls_back_to_names(tmp_path,
                                                                 restore_registration):
  del restore_registration
  (tmp_path / 'data' / ORDINARY).mkdir(parents=True)  # no COMPLETED
  names = p3.register(str(tmp_path / 'data'))
  assert p3.PREFIX + 'story_cloze_2016_Answer_Given_options' in names
  assert seqio.get_mixture_or_task(p3.PREFIX + ORDINARY).num_input_examples('train') is None


def test_configured_data_dir(monkeypatch, tmp_path):
  monkeypatch.delenv('SPT_P3_DIR', raising=False)
  assert p3.configured_data_dir() is None
  monkeypatch.setenv('SPT_P3_DIR', str(tmp_path / 'nope'))
  assert p3.configured_data_dir() is None  # logged, not raised: the import must not fail
  monkeypatch.setenv('SPT_P3_DIR', str(tmp_path))  # a root without data/ is the data folder
  assert p3.configured_data_dir() == str(tmp_path)


def test_registration_by_name_needs_no_disk(p3_root, monkeypatch, restore_registration):
  del restore_registration

  def no_disk(*args, **kwargs):
    raise AssertionError(f'P3 registration by name touched the disk: {args}')

  with monkeypatch.context() as m:
    for fn in ('glob', 'GFile', 'isdir', 'exists', 'listdir'):
      m.setattr(tf.io.gfile, fn, no_disk)
    names = set(p3.register(None))
  train_names = {n for s in sources.specs_with_role('train') for n in t0.task_names(s)}
  held_names = {n for s in heldout.heldout_specs()
                for n in t0.task_names(s) + t0.task_names(s, score_eval=True)}
  assert names == {p3.PREFIX + n for n in train_names | held_names}
  assert not any(n.endswith(p3.SCORE_EVAL_SUFFIX) for n in train_names)
  task = seqio.get_mixture_or_task(p3.PREFIX + ORDINARY)
  assert task.num_input_examples('validation') is None
  wiki_bio = seqio.get_mixture_or_task('p3_wiki_bio_who')
  assert 'val' in wiki_bio.splits  # P3 names wiki_bio's validation split as HF does
  # The P3 training mixture is spt_t0_train's twin: same tasks, same rates.
  ours = seqio.get_mixture_or_task('spt_t0_train')
  ours_rates = {t.name: ours.get_rate(t) for t in ours.tasks}
  mixture = seqio.get_mixture_or_task(p3.P3_T0_TRAIN_MIXTURE)
  p3_rates = {t.name[len(p3.PREFIX):]: mixture.get_rate(t) for t in mixture.tasks}
  assert p3_rates == ours_rates
  # The held-out mixture: ours without StoryCloze, which P3 lacks.
  held = {t.name for t in seqio.get_mixture_or_task(p3.P3_HELDOUT_MIXTURE).tasks}
  ours_held = {t.name for t in seqio.get_mixture_or_task(heldout.HELDOUT_MIXTURE).tasks}
  assert {p3.PREFIX + t for t in ours_held if not t.startswith('story_cloze')} == held
  assert any(t.startswith('story_cloze') for t in ours_held)
  # Data still comes from the directory configured when reading.
  assert len(_get(p3.PREFIX + ORDINARY, 'validation')) == 2
  story = 'story_cloze_2016_Answer_Given_options_score_eval'
  with pytest.raises(FileNotFoundError, match=f'no folder .*{story}.*does not contain StoryCloze'):
    _get(p3.PREFIX + story, 'validation')


def test_catalog_resolves_p3_names():
  from spt_tasks import catalog  # pylint: disable=g-import-not-at-top
  name = p3.PREFIX + ORDINARY
  modules = [m for prefix, m in catalog._REGISTRY_BY_PREFIX if name.startswith(prefix)]
  assert modules == ['spt_tasks.p3']
  assert catalog.ensure_registered(name)


def _read_split_sizes(path):
  """P3's examples-per-split table: {task: {split: examples}} (lines `task|{json}`)."""
  sizes = {}
  for line in path.read_text(encoding='utf-8').splitlines():
    task, sep, blob = line.strip().partition('|')
    if sep and not task.startswith('Data('):
      sizes[task] = {k: int(v) for k, v in json.loads(blob).items()}
  return sizes


@pytest.fixture(scope='module')
def p3_split_sizes():
  """P3's published split sizes from the shared data (never copied into the repo)."""
  path = SHARED_DATA / 'p3' / 'split_sizes.csv'
  if not path.is_file():
    pytest.skip(f'P3 split-size table not found at {path} (set SPT_SHARED_DATA)')
  return _read_split_sizes(path)


def test_our_names_and_train_sizes_agree_with_p3s_table(p3_split_sizes):
  sizes = p3_split_sizes
  assert len(sizes) == 660 and sum(t.endswith(p3.SCORE_EVAL_SUFFIX) for t in sizes) == 116
  # Every template task of every training row has its P3 folder (313 names).
  train_specs = sources.specs_with_role('train')
  train_names = [n for s in train_specs for n in t0.task_names(s)]
  assert len(train_names) == 313
  assert [n for n in train_names if n not in sizes] == []
  # Every scored held-out task but StoryCloze's is in P3; StoryCloze is absent entirely.
  for spec in heldout.heldout_specs():
    scored = heldout.scored_tasks(spec)
    missing = [n for n in scored if n not in sizes]
    if spec.dataset == 'story_cloze':
      assert not any(t.startswith('story_cloze') for t in sizes)
      assert missing == scored
    else:
      assert missing == [], spec.key
  # datasets.csv train_size: the largest P3 train split over the row's (ordinary) tasks.
  for spec in train_specs + heldout.heldout_specs():
    have = [sizes[n].get('train', 0) for n in t0.task_names(spec) if n in sizes]
    if have:
      assert spec.train_size == max(have), spec.key


def test_missing_directory_errors(monkeypatch, tmp_path):
  monkeypatch.delenv('SPT_P3_DIR', raising=False)
  with pytest.raises(FileNotFoundError, match='set env SPT_P3_DIR'):
    _get('p3_' + ORDINARY, 'validation')
  monkeypatch.setenv('SPT_P3_DIR', str(tmp_path / 'nope'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    p3.p3_dir()
  monkeypatch.setenv('SPT_P3_DIR', str(tmp_path))
  with pytest.raises(FileNotFoundError, match=f'P3 task {ORDINARY!r} not found.*git lfs'):
    _get('p3_' + ORDINARY, 'validation')


def test_missing_split_lists_the_splits(p3_root):
  with pytest.raises(FileNotFoundError, match=r"no split 'validation'.*\['test', 'train'\]"):
    p3.read_p3_split(str(p3_root / 'data' / WITH_EMPTY_SPLIT), 'validation')


def test_bad_feature_spec():
  with pytest.raises(ValueError, match='unsupported dtype'):
    p3.parse_spec({'x': {'dtype': 'complex64', 'shape': []}})
  with pytest.raises(ValueError, match='is not'):
    p3.parse_spec({'x': {'dtype': 'int32', 'shape': [None, None]}})
