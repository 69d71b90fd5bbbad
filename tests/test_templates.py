"""Tests for spt_tasks/templates.py: naming, listing, flags and rendering vs promptsource."""
import random

import pytest

from spt_tasks import templates

RTE_EXAMPLE = {'premise': 'The cat sat on the mat.', 'hypothesis': 'A cat sat.',
               'idx': 3, 'label': 0}
SCIQ_EXAMPLE = {'question': 'What is ice made of?', 'distractor1': 'iron',
                'distractor2': 'sand', 'distractor3': 'wood', 'correct_answer': 'water',
                'support': 'Ice is frozen water.'}


@pytest.mark.parametrize('dataset,subset,name,expected', [
    ('super_glue', 'rte', 'GPT-3 style', 'super_glue_rte_GPT_3_style'),
    ('rotten_tomatoes', None, 'Reviewer Opinion bad good choices',
     'rotten_tomatoes_Reviewer_Opinion_bad_good_choices'),
    ('super_glue', 'copa', '…As a result, C1 or C2?', 'super_glue_copa__As_a_result_C1_or_C2_'),
    ('super_glue', 'cb', 'claim true/false/inconclusive',
     'super_glue_cb_claim_true_false_inconclusive'),
    ('super_glue', 'wsc.fixed', 'p is/are r', 'super_glue_wsc.fixed_p_is_are_r'),
])
def test_task_name_matches_t0(dataset, subset, name, expected):
  assert templates.task_name(dataset, subset, name) == expected
  assert templates.task_name(dataset, subset, name, prefix='sample_') == 'sample_' + expected


def test_list_templates_and_flags():
  infos = templates.list_templates('super_glue', 'rte')
  assert [i.name for i in infos] == sorted(i.name for i in infos)
  assert len(infos) == 10
  gpt3 = infos[0]
  assert gpt3.name == 'GPT-3 style' and gpt3.original_task
  assert gpt3.fixed_answer_choices == ('True', 'False') and gpt3.has_answer_choices
  assert not gpt3.broken
  # mrpc has two generation templates that are not the original task.
  mrpc = templates.list_templates('glue', 'mrpc')
  non_original = {i.name for i in mrpc if not i.original_task}
  assert non_original == {'generate_paraphrase', 'generate_sentence'}
  assert {i.name for i in templates.list_templates('glue', 'mrpc', original_task=True)} == (
      {i.name for i in mrpc} - non_original)
  assert all(i.has_answer_choices for i in
             templates.list_templates('glue', 'mrpc', require_answer_choices=True))
  # sciq choices depend on the example.
  assert templates.template_info('sciq', None, 'Multiple Choice').fixed_answer_choices is None


def test_t0_blacklist_flags_broken():
  # Most of T0's list names templates renamed since; these two still exist.
  infos = templates.list_templates('wiki_hop', 'masked', include_broken=True)
  broken = {i.task_name for i in infos if i.broken}
  assert broken == {'wiki_hop_masked_Choose_Best_Object_Candidate',
                    'wiki_hop_masked_Indirect_Question_about_Birthplace_Citizenship_Place_of_Death'}
  assert not {i.task_name for i in templates.list_templates('wiki_hop', 'masked')} & broken


def test_unknown_dataset_and_template_errors_are_helpful():
  with pytest.raises(ValueError, match='Entries under'):
    templates.get_dataset_templates('super_glue', 'no_such_subset')
  with pytest.raises(ValueError, match='GPT-3 style'):
    templates.get_template('super_glue', 'rte', 'no such template')


@pytest.mark.parametrize('dataset,subset,example', [
    ('super_glue', 'rte', RTE_EXAMPLE),
    ('sciq', None, SCIQ_EXAMPLE),
])
def test_render_equals_promptsource(dataset, subset, example):
  for info in templates.list_templates(dataset, subset):
    template = templates.get_template(dataset, subset, info.name)
    seed = templates.example_seed(template, example)
    rendered = templates.render(template, example)
    random.seed(seed)
    expected = template.apply(example)
    random.seed(seed)
    expected_choices = template.get_answer_choices_list(example)
    assert [rendered.inputs, rendered.targets] == expected
    assert rendered.answer_choices == expected_choices
    assert rendered.targets in rendered.answer_choices


def test_render_is_deterministic_and_keeps_global_random_state():
  template = templates.get_template('sciq', None, 'Multiple Choice')
  random.seed(123)
  before = random.getstate()
  first = templates.render(template, SCIQ_EXAMPLE)
  assert random.getstate() == before
  for _ in range(5):
    assert templates.render(template, SCIQ_EXAMPLE) == first
  # The choice order in the prompt does vary between examples.
  orders = set()
  for i in range(20):
    ex = dict(SCIQ_EXAMPLE, question=f'Question number {i}?')
    inputs = templates.render(template, ex).inputs
    orders.add(tuple(sorted(['iron', 'sand', 'wood', 'water'], key=inputs.index)))
  assert len(orders) > 1


def test_render_hyphenated_fields_and_failures():
  template = templates.get_template('super_glue', 'rte', 'GPT-3 style')
  with pytest.raises(templates.TemplateError):
    templates.render(template, {'premise': 'x', 'hypothesis': 'y', 'label': -1, 'idx': 0})
  with pytest.raises(templates.TemplateError):
    templates.render(template, {'hypothesis': 'y', 'label': 0, 'idx': 0, 'premise': None,
                                'answer_choices': 'forbidden key'})
  # Hyphens become underscores as in promptsource.utils.removeHyphen.
  mrpc = templates.get_template('glue', 'mrpc', 'paraphrase')
  rendered = templates.render(mrpc, {'sentence1': 'A b.', 'sentence2': 'C d.', 'label': 1,
                                     'idx': 0})
  assert rendered.targets == 'yes'
  assert templates.remove_hyphens({'a-b': 1, 'c': 2}) == {'a_b': 1, 'c': 2}


def test_render_equals_promptsource_on_every_sample_template():
  """Byte-identity with promptsource's own `Template.apply` over 306 renderings (102 sample
  templates x 3 examples), so the compile cache (`_compile`: only `choice` / `random`
  templates are recompiled per example) changes no output."""
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  checked = 0
  for spec in sample.DATASETS:
    for info in sample.dataset_templates(spec):
      template = templates.get_template(spec.dataset, spec.subset, info.name)
      for example in sample.raw_examples(spec.name, 'train')[:3]:
        example = dict(example)
        seed = templates.example_seed(template, example)
        random.seed(seed)
        expected = template.apply(example)
        try:
          rendered = templates.render(template, example, seed=seed)
        except templates.TemplateError:
          assert len(expected) != 2 or not all(expected)  # promptsource fails the same way
          continue
        assert [rendered.inputs, rendered.targets] == expected, (spec.name, info.name)
        checked += 1
  assert checked >= 250
