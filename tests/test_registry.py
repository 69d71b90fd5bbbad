"""Tests of the real registries (spt_tasks.t0 / heldout / glue / super_glue / sources).

No downloads: TFDS rows read `tfds.testing.mock_data` with hand-written examples
(`as_dataset_fn`), HF rows read examples injected with
`sources.inject_hf_examples`, StoryCloze reads a CSV the test writes. The T5
vocabulary comes from the shared fixtures (SPT_T5_VOCAB; skipped if absent).

Tiers: the default tests render every registered task's template on the
fixture examples through the task's own source and field map (all tasks, fast),
and run the full seqio pipeline (`task.get_dataset`) for one template per
dataset row; `slow` tests run every task through the pipeline.
"""
import csv
import pathlib
import random
import re

import pytest

import t5_vocab_testlib

_VOCAB = t5_vocab_testlib.require_t5_vocab()  # before spt_tasks: registration reads it

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from spt_tasks import gin_configurables  # noqa: E402,F401  # registers spt_tasks.t0.*, ...
from spt_tasks import glue  # noqa: E402,F401  # registers spt_glue_train
from spt_tasks import heldout  # noqa: E402
from spt_tasks import mock_data  # noqa: E402
from spt_tasks import preprocessors  # noqa: E402
from spt_tasks import sources  # noqa: E402
from spt_tasks import super_glue  # noqa: E402,F401  # registers spt_super_glue_*
from spt_tasks import t0  # noqa: E402
from spt_tasks import templates as templates_lib  # noqa: E402

pytestmark = pytest.mark.timeout(600)

# Fixtures: HF-schema examples of every row (no downloads), in spt_tasks.mock_data, shared
# with the input-pipeline benchmark.
HF_EXAMPLES = mock_data.HF_EXAMPLES
HELDOUT_HF = mock_data.HELDOUT_HF
TFDS_EXAMPLES = mock_data.TFDS_EXAMPLES
_hf_to_tfds = mock_data.hf_to_tfds
_mock_as_dataset = mock_data.mock_as_dataset

SPECS = sources.load_specs()


def _write_story_cloze(folder: pathlib.Path) -> None:
  for split, name in sources.STORY_CLOZE_FILES.items():
    with open(folder / name, 'w', newline='') as f:
      w = csv.writer(f)
      w.writerow(['InputStoryid', 'InputSentence1', 'InputSentence2', 'InputSentence3',
                  'InputSentence4', 'RandomFifthSentenceQuiz1', 'RandomFifthSentenceQuiz2',
                  'AnswerRightEnding'])
      for ex in HELDOUT_HF['story_cloze/2016']:
        w.writerow([ex['story_id'], ex['input_sentence_1'], ex['input_sentence_2'],
                    ex['input_sentence_3'], ex['input_sentence_4'], ex['sentence_quiz1'],
                    ex['sentence_quiz2'], ex['answer_right_ending']])


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
  """All raw data of datasets.csv, from fixtures: TFDS mock, HF injection, StoryCloze CSV."""
  _write_story_cloze(tmp_path)
  monkeypatch.setenv('SPT_STORY_CLOZE_DIR', str(tmp_path))
  injected = {}
  for spec in SPECS.values():
    if spec.source == 'hf':
      for split in spec.splits.values():
        injected[(spec.hf_name, spec.hf_subset, split)] = (
            HF_EXAMPLES.get(spec.key) or HELDOUT_HF[spec.key])
  with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset), \
       sources.inject_hf_examples(injected):
    yield


def _eval_split(spec):
  return 'validation' if 'validation' in spec.splits else 'train'


def _source_examples(spec, split):
  """The raw examples of a row as `apply_template` sees them, mapped to HF schema."""
  ds = sources.make_source(spec).get_dataset(split=split, shuffle=False)
  fn = sources.example_fn(spec)
  out = []
  for ex in ds.as_numpy_iterator():
    ex = tf.nest.map_structure(preprocessors.to_python, ex)
    out.append(fn(ex) if fn else ex)
  return out


def _check_task_example(ex, *, score_eval, has_choices):
  assert ex['inputs'].dtype == np.int32 and ex['inputs'].ndim == 1 and ex['inputs'].size > 0
  assert ex['targets'].dtype == np.int32 and ex['targets'][-1] == 1  # EOS
  assert isinstance(ex['inputs_pretokenized'], bytes) and ex['inputs_pretokenized']
  assert isinstance(ex['targets_pretokenized'], bytes) and ex['targets_pretokenized']
  if score_eval:
    assert ex['idx'].dtype == np.int32 and ex['idx'].shape == (2,)
    assert ex['is_correct'].dtype == np.bool_ and ex['weight'].dtype == np.float32
    assert 'answer_choices' not in ex
  elif has_choices:
    assert ex['answer_choices'].dtype == object and ex['answer_choices'].size >= 2
  else:
    assert 'answer_choices' not in ex


def _get(name, split):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(None, split=split, shuffle=False, try_in_mem_cache=False)
  return list(ds.as_numpy_iterator())


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------

T0_TRAIN = {
    'multiple_choice_qa': ['cos_e/v1.11', 'cosmos_qa', 'dream', 'qasc', 'quail', 'quarel', 'quartz',
                           'sciq', 'social_i_qa', 'wiki_hop/original', 'wiqa'],
    'extractive_qa': ['adversarial_qa/dbidaf', 'adversarial_qa/dbert', 'adversarial_qa/droberta',
                      'duorc/SelfRC', 'duorc/ParaphraseRC', 'quoref', 'ropes'],
    'closed_book_qa': ['kilt_tasks/hotpotqa', 'wiki_qa'],
    'sentiment': ['amazon_polarity', 'app_reviews', 'imdb', 'rotten_tomatoes', 'yelp_review_full'],
    'topic_classification': ['ag_news', 'dbpedia_14', 'trec'],
    'structure_to_text': ['common_gen', 'wiki_bio'],
    'summarization': ['cnn_dailymail/3.0.0', 'gigaword', 'multi_news', 'samsum', 'xsum'],
    'paraphrase': ['glue/mrpc', 'glue/qqp', 'paws/labeled_final'],
}
HELDOUT = ['anli/r1', 'anli/r2', 'anli/r3', 'super_glue/cb', 'super_glue/rte',
           'super_glue/wsc.fixed', 'winogrande/winogrande_xl', 'super_glue/copa', 'hellaswag',
           'story_cloze/2016', 'super_glue/wic']


def test_table_has_t0_training_rows_heldout_glue_and_super_glue():
  train = {s.key: s.cluster for s in sources.specs_with_role('train')}
  assert train == {k: c for c, keys in T0_TRAIN.items() for k in keys}
  assert len(train) == 38
  assert sorted(s.key for s in sources.specs_with_role('heldout')) == sorted(HELDOUT)
  assert {s.subset for s in sources.specs_with_role('glue')} == {
      'cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte', 'wnli'}
  assert {s.subset for s in sources.specs_with_role('super_glue')} == {
      'boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc.fixed'}
  for spec in SPECS.values():
    templates_lib.get_dataset_templates(*spec.templates)  # templates exist
    if spec.source == 'tfds':
      assert re.fullmatch(r'[\w.]+(/[\w.]+)?:\d+\.\d+\.\d+', spec.tfds_name), spec.tfds_name
    if 'train' in spec.roles:
      assert spec.train_size and spec.train_size > 0, spec.key


def test_bad_table_rows_are_rejected(tmp_path):
  header = ('dataset,subset,cluster,roles,source,tfds_name,hf_name,hf_subset,splits,templates,'
            'train_size,default_train,notes\n')
  good = 'imdb,,sentiment,train,tfds,imdb_reviews/plain_text:1.0.0,imdb,,train=train,promptsource:imdb,1,yes,\n'
  cases = {
      'roles': good.replace(',train,tfds', ',training,tfds'),
      'needs a version': good.replace(':1.0.0', ''),
      'split mapping': good.replace('train=train', 'train'),
      'duplicate': good + good,
  }
  for i, (message, body) in enumerate(cases.items()):
    path = tmp_path / f'bad{i}.csv'
    path.write_text(header + body)
    with pytest.raises(ValueError, match=message):
      sources.load_specs(str(path))


# ---------------------------------------------------------------------------
# Every registered task.
# ---------------------------------------------------------------------------


def test_every_task_is_registered_with_t0_names_and_score_eval_twins():
  names = set(seqio.TaskRegistry.names())
  total = 0
  for spec in SPECS.values():
    infos = t0.register_dataset_tasks(spec)
    assert infos, spec.key
    for info in infos:
      assert not info.broken
      name = spec.task_name(info.name)
      expected = (f'anli_{re.sub(r"[^A-Za-z0-9_.]+", "_", info.name)}_{spec.subset}'
                  if spec.is_anli else
                  re.sub(r'[^A-Za-z0-9_.]+', '_', f'{spec.dataset}_{spec.subset + "_" if spec.subset else ""}{info.name}'))
      assert name == expected
      assert name in names
      assert (name + '_score_eval' in names) == info.has_answer_choices
      task = seqio.get_mixture_or_task(name)
      assert set(task.output_features) == {'inputs', 'targets'}
      assert not task.output_features['inputs'].add_eos and task.output_features['targets'].add_eos
      assert list(task.splits) == list(spec.splits)
      total += 1
  assert 'gigaword_summarize_' not in names  # T0 blacklist
  assert total > 500  # 523 with promptsource 0.2.3 (+ 370 _score_eval twins)


def test_every_task_renders_its_fixture_examples(fake_data):
  """All tasks (not a sample): source → field map → template gives typed text."""
  del fake_data
  failures = []
  for spec in SPECS.values():
    examples = _source_examples(spec, _eval_split(spec))
    assert examples, spec.key
    for info in t0.register_dataset_tasks(spec):
      template = templates_lib.get_template(*spec.templates, info.name)
      rendered = []
      for ex in examples:
        try:
          rendered.append(templates_lib.render(template, ex))
        except templates_lib.TemplateError:
          pass
      if not rendered:
        failures.append(spec.task_name(info.name))
        continue
      for r in rendered:
        assert isinstance(r.inputs, str) and r.inputs and isinstance(r.targets, str) and r.targets
        if info.has_answer_choices:
          assert all(isinstance(c, str) for c in r.answer_choices)
        else:
          assert r.answer_choices is None
  assert not failures, f'templates that render none of their fixture examples: {failures}'


PIPELINE_SMOKE = ['anli/r1', 'hellaswag', 'winogrande/winogrande_xl', 'story_cloze/2016',
                  'super_glue/record', 'cosmos_qa', 'kilt_tasks/hotpotqa', 'trec', 'paws/labeled_final']


def _pipeline_check(spec, infos):
  split = _eval_split(spec)
  for info in infos:
    name = spec.task_name(info.name)
    rows = _get(name, split)
    assert rows, name
    for ex in rows:
      _check_task_example(ex, score_eval=False, has_choices=info.has_answer_choices)
    if info.has_answer_choices:
      for ex in _get(name + '_score_eval', split):
        _check_task_example(ex, score_eval=True, has_choices=True)


@pytest.mark.parametrize('key', PIPELINE_SMOKE)
def test_pipeline_one_template_per_source_kind(key, fake_data):
  del fake_data
  spec = SPECS[key]
  infos = t0.register_dataset_tasks(spec)
  with_choices = [i for i in infos if i.has_answer_choices]
  _pipeline_check(spec, (with_choices or infos)[:1])


@pytest.mark.slow
@pytest.mark.parametrize('key', list(SPECS))
def test_pipeline_every_task(key, fake_data):
  """Every registered task through seqio's `task.get_dataset` (slow: ~1-2 s a task)."""
  del fake_data
  spec = SPECS[key]
  _pipeline_check(spec, t0.register_dataset_tasks(spec))


# ---------------------------------------------------------------------------
# Held-out rendering equals promptsource's own.
# ---------------------------------------------------------------------------


def _promptsource_render(template, hf_example):
  """promptsource's Template.apply / get_answer_choices_list, seeded like spt_tasks.templates."""
  example = templates_lib.remove_hyphens(hf_example)
  seed = templates_lib.example_seed(template, example)
  random.seed(seed)
  inputs, targets = template.apply(example)
  random.seed(seed)
  choices = template.get_answer_choices_list(example)
  return inputs, targets, choices


def test_heldout_field_maps_give_the_hf_examples(fake_data):
  del fake_data
  for key in HELDOUT:
    spec = SPECS[key]
    assert _source_examples(spec, 'validation') == HELDOUT_HF[key], key


def _heldout_parity(spec, infos):
  hf_examples = HELDOUT_HF[spec.key]
  for info in infos:
    template = templates_lib.get_template(*spec.templates, info.name)
    expected = []
    for ex in hf_examples:
      try:
        expected.append(_promptsource_render(template, ex))
      except Exception:  # pylint: disable=broad-except
        continue
    expected = [e for e in expected if e[0] and e[1]]
    rows = _get(spec.task_name(info.name), 'validation')
    got = [(r['inputs_pretokenized'].decode(), r['targets_pretokenized'].decode(),
            [c.decode() for c in r['answer_choices']] if 'answer_choices' in r else None)
           for r in rows]
    assert got == expected, (spec.key, info.name)


def test_heldout_templates_match_promptsource_python(fake_data):
  """Every held-out template: our source + map + render == promptsource on the HF example."""
  del fake_data
  for key in HELDOUT:
    spec = SPECS[key]
    ours = _source_examples(spec, 'validation')
    for info in t0.register_dataset_tasks(spec):
      template = templates_lib.get_template(*spec.templates, info.name)
      for mine, hf in zip(ours, HELDOUT_HF[key]):
        try:
          expected = _promptsource_render(template, hf)
        except Exception:  # pylint: disable=broad-except
          expected = None
        try:
          r = templates_lib.render(template, mine)
          got = (r.inputs, r.targets, r.answer_choices)
        except templates_lib.TemplateError:
          got = None
        if expected is not None and (not expected[0] or not expected[1]):
          expected = None  # promptsource rendered an empty side: T0 drops the example
        assert got == (tuple(expected) if expected else None), (key, info.name)


@pytest.mark.parametrize('key', HELDOUT)
def test_heldout_pipeline_matches_promptsource_first_template(key, fake_data):
  del fake_data
  spec = SPECS[key]
  _heldout_parity(spec, heldout_infos(spec)[:1])


def heldout_infos(spec):
  return [i for i in t0.register_dataset_tasks(spec) if i.original_task and i.has_answer_choices]


@pytest.mark.slow
@pytest.mark.parametrize('key', HELDOUT)
def test_heldout_pipeline_matches_promptsource_every_template(key, fake_data):
  del fake_data
  spec = SPECS[key]
  _heldout_parity(spec, t0.register_dataset_tasks(spec))


def test_hellaswag_reads_hf_because_tfds_lacks_ctx_parts():
  """TFDS hellaswag has no ctx_a/ctx_b; an original-task template prints them."""
  spec = SPECS['hellaswag']
  assert spec.source == 'hf'
  uses_parts = {i.name: i.original_task for i in t0.register_dataset_tasks(spec)
                if re.search(r'ctx_[ab]', templates_lib.get_template(*spec.templates, i.name).jinja)}
  assert uses_parts == {'Appropriate continuation - Yes or No': False,
                        'Reversed appropriate continuation - Yes or No': False,
                        'complete_first_then': True}
  # The TFDS map (for source=tfds rows) is exact when ctx_b is empty (WikiHow).
  hf = dict(HELDOUT_HF['hellaswag'][0], ctx_a='Mix the dough.', ctx_b='', ctx='Mix the dough.',
            ind=0, split='')
  tfds_ex = {'context': hf['ctx'], 'endings': hf['endings'], 'activity_label': hf['activity_label'],
             'label': 0, 'split_type': hf['split_type'], 'source_id': hf['source_id']}
  assert sources.FIELD_MAPS['hellaswag'](tfds_ex) == hf
  unlabeled = sources.FIELD_MAPS['hellaswag'](dict(tfds_ex, label=-1))
  assert unlabeled['label'] == ''


def test_tfds_field_maps_invert_the_documented_differences():
  for key in ('anli/r1', 'winogrande/winogrande_xl'):
    builder = SPECS[key].tfds_name.split(':')[0].split('/')[0]
    for hf in HELDOUT_HF[key]:
      assert sources.FIELD_MAPS[builder](_hf_to_tfds(builder, hf)) == hf
  assert sources.FIELD_MAPS['winogrande']({'sentence': 's', 'option1': 'a', 'option2': 'b',
                                           'label': -1})['answer'] == ''


def test_score_eval_rows_one_per_choice_one_correct(fake_data):
  del fake_data
  spec = SPECS['super_glue/cb']
  info = heldout_infos(spec)[0]
  rows = _get(spec.task_name(info.name) + '_score_eval', 'validation')
  by_example = {}
  for r in rows:
    by_example.setdefault(int(r['idx'][0]), []).append(r)
  assert len(by_example) == len(HELDOUT_HF['super_glue/cb'])
  for ex_rows in by_example.values():
    assert [int(r['idx'][1]) for r in ex_rows] == [0, 1, 2]
    assert sum(bool(r['is_correct']) for r in ex_rows) == 1
    assert len({r['inputs_pretokenized'] for r in ex_rows}) == 1
    assert all(r['weight'] == 1.0 for r in ex_rows)


# ---------------------------------------------------------------------------
# Mixtures.
# ---------------------------------------------------------------------------


def test_t0_train_mixture_rates_follow_t0_rule():
  mixture = seqio.get_mixture_or_task('spt_t0_train')
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  expected = {}
  for spec in sources.specs_with_role('train'):
    names = t0.task_names(spec)
    n = len(names)
    for name in names:
      expected[name] = (500_000 // n) if spec.train_size > 500_000 else spec.train_size
  assert rates == expected
  # Capped datasets contribute at most 500k in total: gigaword (3.8M examples, 9 templates).
  giga = [r for name, r in rates.items() if name.startswith('gigaword_')]
  assert len(giga) == 9 and sum(giga) <= 500_000 and giga[0] == 500_000 // 9
  assert rates['glue_mrpc_equivalent'] == 3668


def test_train_datasets_include_exclude_and_close_matches():
  keys = [s.key for s in t0.train_datasets(exclude=['gigaword', 'wiki_bio'])]
  assert len(keys) == 36 and 'gigaword' not in keys
  assert [s.key for s in t0.train_datasets(include=['imdb', 'duorc/SelfRC'])] == ['imdb', 'duorc/SelfRC']
  with pytest.raises(ValueError, match=r"Unknown dataset 'duorc/selfrc'.*duorc/SelfRC"):
    t0.train_datasets(include=['duorc/selfrc'])
  with pytest.raises(ValueError, match=r"Unknown dataset 'imbd'.*'imdb'"):
    t0.train_datasets(exclude=['imbd'])
  with pytest.raises(ValueError, match='no "train" role'):
    t0.train_datasets(include=['super_glue/cb'])
  name = t0.t0_train_mixture(name='spt_t0_train_test', specs=t0.train_datasets(include=['imdb']))
  mixture = seqio.get_mixture_or_task(name)
  assert {t.name for t in mixture.tasks} == set(t0.task_names(SPECS['imdb']))
  assert {mixture.get_rate(t) for t in mixture.tasks} == {25000.0}


def test_gin_include_list_with_unknown_dataset_names_close_matches():
  import gin  # pylint: disable=g-import-not-at-top
  with gin.unlock_config():
    gin.parse_config("spt_tasks.t0.train_datasets.include = ['cosmos_qa', 'socail_i_qa']")
  try:
    with pytest.raises(ValueError, match=r"Unknown dataset 'socail_i_qa'.*social_i_qa"):
      t0.t0_train_mixture(name='spt_t0_train_gin_test')
  finally:
    gin.clear_config()


def test_heldout_mixtures_hold_original_task_score_eval_tasks():
  everything = seqio.get_mixture_or_task('spt_heldout_score_eval')
  assert len(everything.tasks) == sum(len(heldout.scored_tasks(SPECS[k])) for k in HELDOUT)
  for key in HELDOUT:
    spec = SPECS[key]
    mixture = seqio.get_mixture_or_task(heldout.mixture_name(spec))
    expected = {spec.task_name(i.name) + '_score_eval' for i in heldout_infos(spec)}
    assert {t.name for t in mixture.tasks} == expected
    for t in mixture.tasks:
      assert t.postprocess_fn is not None and t.metric_fns
  assert heldout.mixture_name(SPECS['super_glue/wsc.fixed']) == 'spt_heldout_super_glue_wsc_fixed_score_eval'
  assert set(heldout.excluded_templates(SPECS['story_cloze/2016'])) == {'Generate Ending'}
  counts = {k: len(heldout.scored_tasks(SPECS[k])) for k in HELDOUT}
  assert counts == {'anli/r1': 15, 'anli/r2': 15, 'anli/r3': 15, 'super_glue/cb': 15,
                    'super_glue/rte': 10, 'super_glue/wsc.fixed': 10,
                    'winogrande/winogrande_xl': 5, 'super_glue/copa': 12, 'hellaswag': 4,
                    'story_cloze/2016': 5, 'super_glue/wic': 10}


def test_glue_and_super_glue_mixtures():
  mixture = seqio.get_mixture_or_task('spt_glue_train')
  assert {t.name.split('_')[1] for t in mixture.tasks} == {
      'cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte', 'wnli'}
  mnli = [mixture.get_rate(t) for t in mixture.tasks if t.name.startswith('glue_mnli_')]
  assert set(mnli) == {392702.0}
  for sub in ('boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc_fixed'):
    m = seqio.get_mixture_or_task(f'spt_super_glue_{sub}')
    assert m.tasks and all({'train', 'validation'} <= set(t.splits) for t in m.tasks)
  cb = seqio.get_mixture_or_task('super_glue_cb_GPT_3_style')
  keys = set()
  for fn in cb.metric_fns:
    keys |= set(fn([0, 1, 2, 0], [0, 1, 1, 0]))
  assert keys == {'accuracy', 'mean_3class_f1'}
  # Generated text → class id through the fixed answer choices (unknown → -1).
  # GPT-3 style: True ||| False ||| Neither.
  assert cb.postprocess_fn(' Neither ') == 2 and cb.postprocess_fn('banana') == -1
  record = seqio.get_mixture_or_task(templates_lib.list_templates('super_glue', 'record')[0].task_name)
  assert set(record.metric_fns[0](['Paris'], ['paris'])) == {'em', 'f1'}


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_missing_tfds_data_names_dataset_and_command(tmp_path):
  with pytest.raises(sources.DataNotFoundError,
                     match=r"'super_glue/rte:1.0.2'.*tfds build super_glue/rte --data_dir="):
    with tfds_data_dir(tmp_path):
      _get('super_glue_rte_GPT_3_style', 'validation')


class tfds_data_dir:  # pylint: disable=invalid-name
  """Points spt_tasks.sources at an empty TFDS data dir (via its gin-configurable)."""

  def __init__(self, path):
    self._path = str(path)

  def __enter__(self):
    import gin  # pylint: disable=g-import-not-at-top
    self._scope = gin.unlock_config()
    self._scope.__enter__()
    gin.bind_parameter('spt_tasks.sources.tfds_settings.data_dir', self._path)

  def __exit__(self, *exc):
    import gin  # pylint: disable=g-import-not-at-top
    gin.clear_config()
    self._scope.__exit__(*exc)


def test_missing_story_cloze_says_how_to_get_it(monkeypatch, tmp_path):
  monkeypatch.setenv('SPT_STORY_CLOZE_DIR', str(tmp_path))
  with pytest.raises(sources.DataNotFoundError, match=r'manual .*rocstories.*SPT_STORY_CLOZE_DIR'):
    _get('story_cloze_2016_Answer_Given_options', 'validation')


def test_hf_source_without_datasets_says_pip_install(monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__

  def no_datasets(name, *args, **kwargs):
    if name == 'datasets':
      raise ImportError('No module named datasets')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_datasets)
  with pytest.raises(ImportError, match=r'pip install datasets.*network'):
    sources._import_hf_datasets()  # pylint: disable=protected-access
  # and through a task, when its dataset is requested
  with pytest.raises(ImportError, match='pip install datasets'):
    _get('cosmos_qa_context_answer_to_question', 'validation')


def test_template_failure_is_counted_and_skipped():
  """An example a template cannot render is skipped with a count, not fatal."""
  preprocessors.reset_counts()
  spec = SPECS['cosmos_qa']
  good = HF_EXAMPLES['cosmos_qa'][0]
  bad = dict(good, label=7)  # answer_choices[7] does not exist
  with sources.inject_hf_examples({('cosmos_qa', None, 'validation'): [bad, good]}):
    info = [i for i in t0.register_dataset_tasks(spec) if i.has_answer_choices][0]
    name = spec.task_name(info.name)
    rows = _get(name, 'validation')
  assert len(rows) == 1
  assert preprocessors.get_counts(name)['template_failed'] == 1


def test_get_spec_unknown_lists_close_matches():
  with pytest.raises(ValueError, match=r"Did you mean \['super_glue/copa'"):
    sources.get_spec('super_glue/cope')


def test_vocabulary_is_lazy_and_configurable(monkeypatch):
  monkeypatch.delenv('SPT_T5_VOCAB')
  vocab = sources.get_vocabulary()
  assert vocab.sentencepiece_model_file == sources.DEFAULT_T5_VOCAB  # not loaded: no network
  monkeypatch.setenv('SPT_T5_VOCAB', str(_VOCAB))
  assert sources.get_vocabulary().vocab_size == 32100
