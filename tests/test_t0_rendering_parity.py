"""The T0 pipeline's rendered and tokenized examples equal promptsource's and seqio's own.

An outside reference for the on-the-fly T0 path (`spt_tasks.templates.render` with its
compile caches, `preprocessors.apply_template`, seqio tokenization): for a few hundred
examples of several T0 training tasks — templates that draw random choices when compiled
(sciq) or when rendered (quoref), with hyphenated fields (trec), a TFDS row (imdb), fixed
answer choices (ag_news) — the task's `get_dataset` output must equal promptsource's
`Template.apply` / `get_answer_choices_list` (seeded as documented: crc32 of the template
name, NUL, `repr(sorted(example.items()))`) tokenized by `seqio.SentencePieceVocabulary`
with the real T5 vocabulary, EOS appended to targets; examples promptsource does not render
into two non-empty parts are dropped, as T0 does.

  CI=1 SPT_SHARED_FIXTURES=../shared/fixtures .venv/bin/python -m pytest \
      tests/test_t0_rendering_parity.py -q
"""
import os
import random
import zlib

import pytest

from spt_tasks import mock_data

NUM_EXAMPLES = 60
TASKS = [  # (dataset key, promptsource template)
    ('sciq', 'Multiple Choice'),                          # `| choice` folded at compile time
    ('quoref', 'Answer Test'),                            # `| choice` drawn at render time
    ('common_gen', 'random task template prompt'),
    ('dbpedia_14', 'given_a_choice_of_categories '),
    ('trec', 'what_category_best_describe'),              # `label-coarse`, `label-fine`
    ('imdb', 'Movie Expressed Sentiment'),                # TFDS source (mock_data)
    ('ag_news', 'classify_question_first'),               # fixed answer choices
]


@pytest.fixture(scope='module')
def vocab_path(shared_fixtures):
  path = shared_fixtures / 't5_vocab' / 'sentencepiece.model'
  os.environ['SPT_T5_VOCAB'] = str(path)  # read when spt_tasks.t0 registers its tasks
  return path


def _raw_examples(spec):
  base = (mock_data.TFDS_EXAMPLES[spec.tfds_name.split(':')[0]] if spec.source == 'tfds'
          else mock_data.HF_EXAMPLES[spec.key])
  return mock_data.expand(base, NUM_EXAMPLES)


def _promptsource_reference(template, raw, vocab):
  """[(inputs ids, targets ids, inputs text, targets text, choices)] from promptsource."""
  from promptsource import templates as ps  # pylint: disable=g-import-not-at-top
  assert isinstance(template, ps.Template)
  out = []
  for ex in raw:
    ex = {k.replace('-', '_'): v for k, v in ex.items()}
    seed = zlib.crc32((template.get_name() + '\x00' + repr(sorted(ex.items()))).encode('utf-8'))
    state = random.getstate()
    try:
      random.seed(seed)
      parts = template.apply(ex)
      random.seed(seed)
      choices = template.get_answer_choices_list(ex)
    except Exception:  # pylint: disable=broad-except  # promptsource cannot render it: dropped
      continue
    finally:
      random.setstate(state)
    if len(parts) != 2 or not parts[0] or not parts[1]:
      continue
    out.append((list(vocab.encode(parts[0])), list(vocab.encode(parts[1])) + [1], parts[0],
                parts[1], choices))
  return out


@pytest.mark.parametrize('key,template_name', TASKS)
def test_pipeline_equals_promptsource_and_seqio(vocab_path, key, template_name):
  import seqio  # pylint: disable=g-import-not-at-top
  from spt_tasks import sources  # pylint: disable=g-import-not-at-top
  from spt_tasks import t0  # pylint: disable=g-import-not-at-top
  from spt_tasks import templates  # pylint: disable=g-import-not-at-top
  spec = sources.get_spec(key)
  assert template_name in {i.name for i in t0.usable_templates(spec)}
  vocab = seqio.SentencePieceVocabulary(str(vocab_path), extra_ids=100)
  template = templates.get_dataset_templates(*spec.templates)[template_name]
  expected = _promptsource_reference(template, _raw_examples(spec), vocab)
  assert len(expected) >= NUM_EXAMPLES // 2, 'too few renderable examples to compare'
  with mock_data.serve(num_examples=NUM_EXAMPLES):
    task = seqio.get_mixture_or_task(spec.task_name(template_name))
    got = list(task.get_dataset(None, split='train', shuffle=False,
                                try_in_mem_cache=False).as_numpy_iterator())
  assert len(got) == len(expected)
  for i, (ex, (inputs, targets, inputs_text, targets_text, choices)) in enumerate(
      zip(got, expected)):
    assert ex['inputs'].tolist() == inputs, i
    assert ex['targets'].tolist() == targets, i
    assert ex['inputs_pretokenized'].decode('utf-8') == inputs_text, i
    assert ex['targets_pretokenized'].decode('utf-8') == targets_text, i
    if choices is None:
      assert 'answer_choices' not in ex
    else:
      assert [c.decode('utf-8') for c in ex['answer_choices']] == choices, i
  if key == 'sciq':  # the compile-time draws really vary between examples
    assert len({e[2] for e in expected}) > 1
