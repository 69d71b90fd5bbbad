"""Tests for the embedded sample mixture (spt_tasks/sample.py) and spt_tasks/show.py."""
import collections
import importlib
import random

import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf

from spt_tasks import preprocessors
from spt_tasks import sample
from spt_tasks import show
from spt_tasks import templates

# HF `datasets` features of each imitated dataset (what promptsource expects).
HF_FIELDS = {
    'sample_rotten_tomatoes': {'text', 'label'},
    'sample_imdb': {'text', 'label'},
    'sample_amazon_polarity': {'label', 'title', 'content'},
    'sample_yelp_polarity': {'text', 'label'},
    'sample_ag_news': {'text', 'label'},
    'sample_dbpedia_14': {'label', 'title', 'content'},
    'sample_glue_mrpc': {'sentence1', 'sentence2', 'label', 'idx'},
    'sample_paws_labeled_final': {'id', 'sentence1', 'sentence2', 'label'},
    'sample_glue_qqp': {'question1', 'question2', 'label', 'idx'},
    'sample_sciq': {'question', 'distractor1', 'distractor2', 'distractor3', 'correct_answer',
                    'support'},
    'sample_super_glue_rte': {'premise', 'hypothesis', 'idx', 'label'},
    'sample_super_glue_copa': {'premise', 'choice1', 'choice2', 'question', 'idx', 'label'},
}
NUM_LABELS = {'sample_ag_news': 4, 'sample_dbpedia_14': 14}


def test_design_tables():
  assert len(sample.TASK_CLUSTER) >= 6 and len(set(sample.TASK_CLUSTER.values())) >= 3
  assert len(sample.HELDOUT_RESEMBLES) >= 2
  assert set(sample.HELDOUT_RESEMBLES.values()) <= set(sample.TASK_CLUSTER.values())
  assert set(HF_FIELDS) == set(sample.DATASETS_BY_NAME)
  for spec in sample.DATASETS:
    infos = sample.dataset_templates(spec)
    assert len(infos) >= 3, spec.name
    if spec.heldout:
      assert all(i.original_task and i.has_answer_choices for i in infos)
    else:  # all templates, as T0
      assert len(infos) == len(templates.list_templates(spec.dataset, spec.subset))
  assert sample.TRAIN_TASKS[0].startswith('sample_')
  assert 'sample_rotten_tomatoes_Reviewer_Opinion_bad_good_choices' in sample.TRAIN_TASKS
  assert sample.FEATURE_LENGTHS == {'inputs': 128, 'targets': 32}


@pytest.mark.parametrize('name', sorted(HF_FIELDS))
def test_raw_examples_schema_balance_and_determinism(name):
  train = sample.raw_examples(name, 'train')
  val = sample.raw_examples(name, 'validation')
  assert len(train) == sample.NUM_TRAIN and len(val) == sample.NUM_VALIDATION
  for ex in train[:50] + tuple(val[:50]):
    assert set(ex) == HF_FIELDS[name]
  # Validation never repeats a training example (ignoring the index field).
  strip = lambda ex: repr(sorted((k, v) for k, v in ex.items() if k not in ('idx', 'id')))
  assert not {strip(e) for e in val} & {strip(e) for e in train}
  # Labels are balanced (uniform draws) and within the HF label range.
  if name != 'sample_sciq':
    counts = collections.Counter(ex['label'] for ex in train)
    assert sorted(counts) == list(range(NUM_LABELS.get(name, 2)))
    assert min(counts.values()) > 0.6 * sample.NUM_TRAIN / len(counts)
  # Regenerating gives the same examples.
  sample._generate.cache_clear()
  assert sample.raw_examples(name, 'train') == train


def test_heldout_examples_follow_their_rules():
  facts = sample.creature_facts()
  for ex in sample.raw_examples('sample_super_glue_copa', 'validation'):
    right = (ex['choice1'], ex['choice2'])[ex['label']]
    creature = next(c for c in facts if sample._cap(c) in ex['premise'])
    assert right.startswith(sample._cap(creature))
    assert any(right.endswith(f' {a}.') for a in facts[creature].values())
  for ex in sample.raw_examples('sample_sciq', 'validation')[:100]:
    assert ex['correct_answer'] in ex['support']
    assert not any(ex[f'distractor{i}'] in ex['support'] for i in (1, 2, 3))


@pytest.mark.parametrize('name', sorted(HF_FIELDS))
def test_rendering_equals_promptsource(name):
  spec = sample.DATASETS_BY_NAME[name]
  for info in sample.dataset_templates(spec):
    template = templates.get_template(spec.dataset, spec.subset, info.name)
    rendered = 0
    for ex in sample.raw_examples(name, 'validation')[:6]:
      seed = templates.example_seed(template, ex)
      random.seed(seed)
      expected = template.apply(ex)
      random.seed(seed)
      expected_choices = template.get_answer_choices_list(ex)
      try:
        got = templates.render(template, ex)
      except templates.TemplateError:
        # Only templates conditioned on the example (copa cause/effect, mrpc and
        # paws generation of positive pairs only) may skip an example.
        assert len(expected) != 2 or not all(expected), (name, info.name)
        continue
      rendered += 1
      assert [got.inputs, got.targets] == expected
      assert got.answer_choices == expected_choices
      if got.answer_choices is not None and info.original_task:
        assert got.targets in got.answer_choices
    assert rendered, (name, info.name)


def test_vocabulary_covers_sample_text():
  assert sample.VOCAB_MODEL.is_file(), 'run `python -m spt_tasks.sample --write_vocab`'
  sp = spm.SentencePieceProcessor(model_file=str(sample.VOCAB_MODEL))
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert 500 <= sp.get_piece_size() <= sample.VOCAB_PIECES
  assert sample.SAMPLE_VOCABULARY.vocab_size == sp.get_piece_size() + sample.EXTRA_IDS
  # Rendered text of every template encodes without unk and fits the lengths.
  texts = list(sample.rendered_texts('validation', max_examples=20))
  assert len(texts) > 3000
  chars = set()
  for text in texts:
    ids = sp.encode(text)
    assert sp.unk_id() not in ids, text
    assert len(ids) < sample.FEATURE_LENGTHS['inputs']
    chars.update(text)
  # Every character of every string field of every raw example (all that a
  # template can copy into the text beyond its own literals, checked above).
  for spec in sample.DATASETS:
    for split in sample.SPLITS:
      for ex in sample.raw_examples(spec.name, split):
        chars.update(''.join(v for v in ex.values() if isinstance(v, str)))
  chars -= set('\n\t\r')
  assert not [c for c in sorted(chars) if sp.unk_id() in sp.encode(c)]


@pytest.mark.slow
def test_write_vocab_is_deterministic(tmp_path):
  path = sample.write_vocab(tmp_path / 'sp.model')
  assert path.read_bytes() == sample.VOCAB_MODEL.read_bytes()


def test_mixture_rates():
  mixture = seqio.get_mixture_or_task(sample.TRAIN_MIXTURE)
  names = {t.name for t in mixture.tasks}
  assert names == set(sample.TRAIN_TASKS)
  per_dataset = collections.defaultdict(float)
  for spec in sample.DATASETS:
    if spec.heldout:
      continue
    rates = [mixture.get_rate(seqio.get_mixture_or_task(n))
             for n in sample.TASKS_BY_DATASET[spec.name]['plain']]
    assert len(set(rates)) == 1  # split evenly over templates
    per_dataset[spec.name] = sum(rates)
  assert all(v == pytest.approx(sample.NUM_TRAIN) for v in per_dataset.values())
  score = seqio.get_mixture_or_task(sample.HELDOUT_SCORE_EVAL_MIXTURE)
  assert {t.name for t in score.tasks} == set(sample.HELDOUT_SCORE_EVAL_TASKS)
  assert all(n.endswith('_score_eval') for n in sample.HELDOUT_SCORE_EVAL_TASKS)
  for spec in sample.DATASETS:
    if spec.heldout:
      one = seqio.get_mixture_or_task(f'spt_{spec.name}_score_eval')
      assert {t.name for t in one.tasks} == set(sample.TASKS_BY_DATASET[spec.name]['score_eval'])
  plain = seqio.get_mixture_or_task(sample.HELDOUT_MIXTURE)
  assert {t.name for t in plain.tasks} == set(sample.HELDOUT_TASKS)


def test_registration_is_idempotent():
  before = set(seqio.TaskRegistry.names())
  importlib.reload(sample)
  importlib.reload(sample)
  assert set(seqio.TaskRegistry.names()) == before


def _check_plain(ex, with_choices):
  assert ex['inputs'].dtype == np.int32 and ex['targets'].dtype == np.int32
  assert ex['inputs'][-1] != 1 and ex['targets'][-1] == 1  # EOS on targets only
  assert ex['inputs_pretokenized'] and ex['targets_pretokenized']
  if with_choices:
    assert ex['targets_pretokenized'].decode() in [c.decode() for c in ex['answer_choices']]


def _check_score_rows(rows):
  groups = collections.defaultdict(list)
  for r in rows:
    assert r['idx'].dtype == np.int32 and r['idx'].shape == (2,)
    assert r['is_correct'].dtype == np.bool_ and r['weight'] == np.float32(1.0)
    groups[int(r['idx'][0])].append(r)
  for group in groups.values():
    assert [int(r['idx'][1]) for r in group] == list(range(len(group)))
    assert sum(bool(r['is_correct']) for r in group) == 1
    assert len({r['inputs_pretokenized'] for r in group}) == 1


def _tasks_to_check(all_tasks):
  if all_tasks:
    return list(sample.TRAIN_TASKS) + list(sample.HELDOUT_TASKS), list(
        sample.HELDOUT_SCORE_EVAL_TASKS)
  # One template per dataset (the first) in the fast test.
  plain = [sample.TASKS_BY_DATASET[d.name]['plain'][0] for d in sample.DATASETS]
  score = [sample.TASKS_BY_DATASET[d.name]['score_eval'][0] for d in sample.DATASETS if d.heldout]
  return plain, score


@pytest.mark.parametrize('all_tasks', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_tasks_yield_typed_examples(all_tasks):
  plain, score = _tasks_to_check(all_tasks)
  # Non-original-task templates may target text outside their choices (imdb's
  # 'Negation template ...' answers 'negative review.').
  original = {sample.task_name(d, i.name) for d in sample.DATASETS
              for i in sample.dataset_templates(d) if i.original_task}
  for name in plain:
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sample.FEATURE_LENGTHS, split='validation', shuffle=False,
                          use_cached=False)
    with_choices = 'answer_choices' in ds.element_spec and name in original
    assert ds.element_spec['inputs'].dtype == tf.int32
    for ex in ds.take(2).as_numpy_iterator():
      _check_plain(ex, with_choices)
  for name in score:
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sample.FEATURE_LENGTHS, split='validation', shuffle=False, use_cached=False)
    assert set(ds.element_spec) >= {'idx', 'inputs', 'targets', 'is_correct', 'weight'}
    assert 'answer_choices' not in ds.element_spec
    _check_score_rows(list(ds.take(12).as_numpy_iterator()))


def test_score_eval_task_counts_and_metric():
  """Full rte score-eval task: one group per example; the metric runs on it."""
  from spt_jax import metrics  # pylint: disable=g-import-not-at-top
  name = 'sample_super_glue_rte_GPT_3_style_score_eval'
  rows = list(seqio.get_mixture_or_task(name).get_dataset(
      sample.FEATURE_LENGTHS, split='validation', shuffle=False).as_numpy_iterator())
  assert len(rows) == 2 * sample.NUM_VALIDATION
  _check_score_rows(rows)
  task = seqio.get_mixture_or_task(name)
  targets = [task.postprocess_fn(None, example=r, is_target=True) for r in rows]
  # Scores that prefer the correct choice give 100 %; reversed, 0 %.
  perfect = [float(r['is_correct']) for r in rows]
  metric = task.score_metric_fns[0]
  assert metric(targets, perfect)['accuracy'] == 100.0
  assert metric(targets, [1 - s for s in perfect])['accuracy'] == 0.0
  assert metrics.rank_classification(targets, perfect, num_classes=2)['accuracy'] == 100.0


def test_conditional_templates_count_skips():
  """copa's cause-only template skips effect examples and counts them."""
  preprocessors.reset_counts()
  name = 'sample_super_glue_copa__why_C1_or_C2'
  assert name in sample.HELDOUT_TASKS
  rows = list(seqio.get_mixture_or_task(name).get_dataset(
      None, split='validation', shuffle=False, use_cached=False).as_numpy_iterator())
  causes = sum(ex['question'] == 'cause' for ex in sample.raw_examples(
      'sample_super_glue_copa', 'validation'))
  assert len(rows) == causes
  counts = preprocessors.get_counts(name)
  assert counts['rendered'] == causes
  assert counts['template_failed'] == sample.NUM_VALIDATION - causes


def test_show_formats_and_suggests():
  text = show.format_examples('sample_super_glue_rte_GPT_3_style_score_eval', 'validation', 2)
  assert 'template: GPT-3 style' in text and 'is_correct' in text and 'True or False?' in text
  text = show.format_examples('sample_rotten_tomatoes_Reviewer_Opinion_bad_good_choices',
                              'train', 1)
  assert 'answer_choices: bad | good' in text
  with pytest.raises(ValueError, match='sample_super_glue_rte_GPT_3_style'):
    show.get_task('sample_super_glue_rte_GPT3')
