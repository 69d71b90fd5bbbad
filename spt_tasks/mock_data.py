"""Hand-written raw examples of every row of `datasets.csv`, and fake sources serving them.

For tests and benchmarks of the real registries without downloads (no network, no TFDS data,
no HF `datasets`): HF rows get examples in HF `datasets` schema through
`sources.inject_hf_examples`, TFDS rows get TFDS-schema examples through
`tfds.testing.mock_data(as_dataset_fn=mock_as_dataset)`. A few examples per dataset, chosen so
that every template (some branch on labels or question types) renders.

  from spt_tasks import mock_data
  with mock_data.serve(num_examples=300):     # each split: 300 examples (variants of these)
    ds = seqio.get_mixture_or_task('spt_t0_train').get_dataset(...)

`HF_EXAMPLES` (training rows read from HF), `HELDOUT_HF` (held-out rows, HF schema) and
`TFDS_EXAMPLES` (TFDS schema, keyed by TFDS builder[/config]) are plain data; `variant` makes
distinct examples from them. Expected: `tests/test_registry.py` renders every registered
template on these (`python -m pytest tests/test_registry.py -q -m "not slow"` passes).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Optional

import tensorflow as tf

from spt_tasks import sources


_CHOICES8 = {'text': ['stone', 'water', 'sunlight', 'wind', 'sand', 'ice', 'fire', 'soil'],
             'label': list('ABCDEFGH')}

HF_EXAMPLES = {
    'cosmos_qa': [{'id': 'c1', 'context': 'Tom missed the bus so he walked to work.',
                   'question': 'Why did Tom walk?', 'answer0': 'He missed the bus.',
                   'answer1': 'He likes rain.', 'answer2': 'His car broke.',
                   'answer3': 'None of the above choices.', 'label': 0}],
    'dream': [{'id': 0, 'dialogue_id': 'd1', 'dialogue': ['M: Is the shop open?', 'W: Yes, until nine.'],
               'question': 'When does the shop close?', 'choice': ['At nine.', 'At six.', 'At noon.'],
               'answer': 'At nine.'}],
    'qasc': [{'id': 'q1', 'question': 'What do plants need to grow?', 'choices': _CHOICES8,
              'answerKey': 'C', 'fact1': 'Plants need light.', 'fact2': 'Sunlight is light.',
              'combinedfact': 'Plants need sunlight to grow.',
              'formatted_question': 'What do plants need to grow? (A) stone (B) water'}],
    'quail': [{'id': 'ql1', 'context_id': 'x', 'question_id': 'y', 'domain': 'fiction',
               'metadata': {'author': 'a', 'title': 't', 'url': 'u'},
               'context': 'Anna baked bread every morning before school.',
               'question': 'What did Anna bake?', 'question_type': 'Entity_properties',
               'answers': ['bread', 'cake', 'pie', 'not enough information'],
               'correct_answer_id': 0}],
    'quarel': [{'id': 'r1', 'answer_index': 1, 'logical_forms': ['x'], 'logical_form_pretty': 'x',
                'world_literals': {'world1': ['carpet'], 'world2': ['ice']},
                'question': 'A puck slides farther on ice than on carpet. Which surface is '
                            'smoother? (A) carpet (B) ice'}],
    'quartz': [{'id': 'z1', 'question': 'If the sun is stronger, plants grow',
                'choices': {'text': ['faster', 'slower'], 'label': ['A', 'B']},
                'answerKey': 'A', 'para': 'Stronger sunlight makes plants grow faster.',
                'para_id': 'p', 'para_anno': {}, 'question_anno': {}}],
    'sciq': [{'question': 'What gas do plants take in?', 'distractor3': 'helium',
              'distractor1': 'oxygen', 'distractor2': 'neon', 'correct_answer': 'carbon dioxide',
              'support': 'Plants take in carbon dioxide during photosynthesis.'}],
    'social_i_qa': [{'context': 'Jan gave Sam a gift.', 'question': 'How would Sam feel?',
                     'answerA': 'happy', 'answerB': 'angry', 'answerC': 'bored', 'label': '1'}],
    'wiki_hop/original': [{'id': 'w1', 'question': 'country_of_citizenship marie curie',
                           'answer': 'poland', 'candidates': ['poland', 'spain', 'peru'],
                           'supports': ['Marie Curie was born in Warsaw, Poland.'],
                           'annotations': []}],
    'wiqa': [{'question_stem': 'suppose more rain falls, how will it affect more plants grow?',
              'question_para_step': ['Rain falls.', 'Soil gets wet.', 'Plants absorb water.',
                                     'Plants grow.'],
              'answer_label': 'more', 'answer_label_as_choice': 'A',
              'choices': {'text': ['more', 'less', 'no effect'], 'label': ['A', 'B', 'C']},
              'metadata_question_id': 'm', 'metadata_graph_id': 'g', 'metadata_para_id': 'p',
              'metadata_question_type': 'EXOGENOUS_EFFECT', 'metadata_path_len': 2},
             {'question_stem': 'suppose less sun, how will it affect fewer plants grow?',
              'question_para_step': ['Sun shines.', 'Plants make food.', 'Plants grow.'],
              'answer_label': 'no_effect', 'answer_label_as_choice': 'C',
              'choices': {'text': ['more', 'less', 'no effect'], 'label': ['A', 'B', 'C']},
              'metadata_question_id': 'm', 'metadata_graph_id': 'g', 'metadata_para_id': 'p',
              'metadata_question_type': 'INPARA_EFFECT', 'metadata_path_len': 2},
             {'question_stem': 'suppose no rain, how will it affect less water?',
              'question_para_step': ['Rain falls.', 'Rivers fill.'],
              'answer_label': 'less', 'answer_label_as_choice': 'B',
              'choices': {'text': ['more', 'less', 'no effect'], 'label': ['A', 'B', 'C']},
              'metadata_question_id': 'm', 'metadata_graph_id': 'g', 'metadata_para_id': 'p',
              'metadata_question_type': 'INPARA_EFFECT', 'metadata_path_len': 2}],
    'quoref': [{'id': 'f1', 'question': 'Who bought the house?', 'context': 'Ann bought the house in May.',
                'title': 'House', 'url': 'u', 'answers': {'answer_start': [0], 'text': ['Ann']}}],
    'ropes': [{'id': 'o1', 'background': 'Heat makes ice melt.',
               'situation': 'Bob left ice in the sun and Tim left ice in a freezer.',
               'question': 'Whose ice melted?', 'answers': {'text': ['Bob']}}],
    'kilt_tasks/hotpotqa': [{'id': 'k1', 'input': 'Which city is the capital of France?',
                             'meta': {}, 'output': [{'answer': 'Paris', 'meta': {'score': 0},
                                                     'provenance': []}]}],
    'wiki_qa': [{'question_id': 'Q1', 'question': 'how tall is mount everest',
                 'document_title': 'Mount Everest',
                 'answer': 'Mount Everest is 8,849 metres tall.', 'label': 1},
                {'question_id': 'Q2', 'question': 'where is paris', 'document_title': 'Paris',
                 'answer': 'Paris has many museums.', 'label': 0}],
    'amazon_polarity': [{'label': 1, 'title': 'Great kettle', 'content': 'Boils fast and looks nice.'}],
    'app_reviews': [{'package_name': 'com.example.app', 'review': 'Works well, no crashes.',
                     'date': '2020', 'star': 4}],
    'rotten_tomatoes': [{'text': 'a warm and funny film .', 'label': 1}],
    'yelp_review_full': [{'label': 3, 'text': 'Good tacos, slow service.'}],
    'ag_news': [{'text': 'Stocks rose on Monday after strong earnings.', 'label': 2}],
    'dbpedia_14': [{'label': 5, 'title': 'Oak School', 'content': 'Oak School is a school in Ohio.'}],
    'common_gen': [{'concept_set_idx': 0, 'concepts': ['dog', 'run', 'park'],
                    'target': 'A dog runs in the park.'}],
    'wiki_bio': [{'input_text': {'table': {'column_header': ['name', 'article_title', 'birth_date'],
                                           'row_number': [1, 1, 1],
                                           'content': ['ann lee', 'ann lee', '1 may 1950']},
                                 'context': 'ann lee\n'},
                  'target_text': 'ann lee (born 1 may 1950) is a painter.\n'}],
    'cnn_dailymail/3.0.0': [{'article': 'The mayor opened a new bridge on Friday.',
                             'highlights': 'Mayor opens bridge.', 'id': 'a1'}],
    'gigaword': [{'document': 'the central bank raised rates on tuesday .',
                  'summary': 'bank raises rates'}],
    'multi_news': [{'document': 'A storm hit the coast. ||||| Power was lost in many towns.',
                    'summary': 'A storm cut power along the coast.'}],
    'samsum': [{'id': 's1', 'dialogue': 'Amy: Lunch?\nBen: Sure, at noon.',
                'summary': 'Amy and Ben will have lunch at noon.'}],
    'xsum': [{'document': 'The council approved a new park in the town centre.',
              'summary': 'A new park was approved.', 'id': 'x1'}],
}

for _key in ('adversarial_qa/dbidaf', 'adversarial_qa/dbert', 'adversarial_qa/droberta'):
  HF_EXAMPLES[_key] = [{'id': 'aq', 'title': 'Rivers', 'context': 'The Nile is the longest river.',
                        'question': 'Which river is the longest?',
                        'answers': {'text': ['The Nile'], 'answer_start': [0]},
                        'metadata': {'split': 'train', 'model_in_the_loop': 'BiDAF'}}]
for _key in ('duorc/SelfRC', 'duorc/ParaphraseRC'):
  HF_EXAMPLES[_key] = [{'plot_id': 'p', 'plot': 'A sailor finds a map and sails to an island.',
                        'title': 'The Map', 'question_id': 'q', 'question': 'What does the sailor find?',
                        'answers': ['a map'], 'no_answer': False},
                       {'plot_id': 'p', 'plot': 'A sailor finds a map.', 'title': 'The Map',
                        'question_id': 'q2', 'question': 'What is his name?', 'answers': [],
                        'no_answer': True}]
# trec templates branch on coarse and fine labels: one example per branch.
HF_EXAMPLES['trec'] = [{'text': 'What is the capital of Peru ?', 'label-coarse': c, 'label-fine': f}
                       for c, f in [(0, 0), (0, 7), (0, 9), (0, 12), (1, 2), (2, 34), (3, 5),
                                    (4, 39), (5, 21)]]

# Held-out examples in HF `datasets` schema, written independently of our field
# maps; `hf_to_tfds` below is the documented inverse used to feed TFDS.
HELDOUT_HF = {
    'anli': [{'uid': 'a1', 'premise': 'The cat sat on the mat all day.',
              'hypothesis': 'The cat was on the mat.', 'label': 0, 'reason': ''},
             {'uid': 'a2', 'premise': 'The shop opens at nine.', 'hypothesis': 'The shop never opens.',
              'label': 2, 'reason': ''},
             {'uid': 'a3', 'premise': 'Sam has a red car.', 'hypothesis': 'Sam drives to work.',
              'label': 1, 'reason': ''}],
    'super_glue/cb': [{'premise': 'It was raining, she said.', 'hypothesis': 'it was raining',
                       'idx': 0, 'label': 0},
                      {'premise': 'He doubted that it would work.', 'hypothesis': 'it would work',
                       'idx': 1, 'label': 2}],
    'super_glue/rte': [{'premise': 'Paris is the capital of France.',
                        'hypothesis': 'France has a capital.', 'idx': 0, 'label': 0}],
    'super_glue/wsc.fixed': [{'text': 'Mark told Pete many lies about himself, which Pete '
                                      'included in his book. He should have been more skeptical.',
                              'span1_index': 2, 'span2_index': 14, 'span1_text': 'Pete',
                              'span2_text': 'He', 'idx': 0, 'label': 1}],
    'winogrande/winogrande_xl': [{'sentence': 'The trophy does not fit in the suitcase because '
                                              'the _ is too big.', 'option1': 'trophy',
                                  'option2': 'suitcase', 'answer': '1'}],
    'super_glue/copa': [{'premise': 'The man broke his toe.', 'choice1': 'He dropped a hammer '
                         'on his foot.', 'choice2': 'He got a hole in his sock.',
                         'question': 'cause', 'idx': 0, 'label': 0},
                        {'premise': 'I tipped the bottle.', 'choice1': 'The liquid in the bottle '
                         'froze.', 'choice2': 'The liquid in the bottle poured out.',
                         'question': 'effect', 'idx': 1, 'label': 1}],
    'hellaswag': [{'ind': 24, 'activity_label': 'Baking cookies',
                   'ctx_a': 'A woman puts a tray of dough in the oven.', 'ctx_b': 'she',
                   'ctx': 'A woman puts a tray of dough in the oven. she',
                   'endings': ['waits and takes out golden cookies.', 'swims across the lake.',
                               'paints the oven blue.', 'sings to the tray.'],
                   'source_id': 'activitynet~v_1', 'split': 'val', 'split_type': 'indomain',
                   'label': '0'}],
    'story_cloze/2016': [{'story_id': 's1', 'input_sentence_1': 'Kim wanted a dog.',
                          'input_sentence_2': 'She saved money for months.',
                          'input_sentence_3': 'She went to the shelter.',
                          'input_sentence_4': 'She met a friendly puppy.',
                          'sentence_quiz1': 'Kim adopted the puppy.',
                          'sentence_quiz2': 'Kim hated dogs.', 'answer_right_ending': 1}],
    'super_glue/wic': [{'word': 'bank', 'sentence1': 'He sat on the river bank.',
                        'sentence2': 'She robbed the bank.', 'start1': 19, 'start2': 15,
                        'end1': 23, 'end2': 19, 'idx': 0, 'label': 0}],
}
for _r in ('r1', 'r2', 'r3'):
  HELDOUT_HF[f'anli/{_r}'] = HELDOUT_HF['anli']
del HELDOUT_HF['anli']


def hf_to_tfds(builder: str, ex: dict) -> dict:
  """HF example → TFDS example (the inverse of sources.FIELD_MAPS, written out)."""
  if builder == 'anli':
    return {'uid': ex['uid'], 'context': ex['premise'], 'hypothesis': ex['hypothesis'],
            'label': ex['label']}
  if builder == 'winogrande':
    return {'sentence': ex['sentence'], 'option1': ex['option1'], 'option2': ex['option2'],
            'label': int(ex['answer']) - 1}
  if builder == 'hellaswag':
    return {'context': ex['ctx'], 'endings': ex['endings'], 'activity_label': ex['activity_label'],
            'label': int(ex['label']), 'split_type': ex['split_type'], 'source_id': ex['source_id']}
  return dict(ex)


_S = lambda i: f'sentence number {i} about a quiet town .'  # pylint: disable=unnecessary-lambda-assignment

# TFDS-schema examples of the other TFDS rows (glue, super_glue, cos_e, imdb, paws).
TFDS_EXAMPLES = {
    'cos_e': [{'id': 'c', 'question': 'Where do you keep milk?',
               'choices': ['fridge', 'oven', 'car', 'roof', 'shoe'], 'answer': 'fridge',
               'abstractive_explanation': 'Milk stays cold in a fridge.',
               'extractive_explanation': 'cold'}],
    'imdb_reviews/plain_text': [{'text': 'A moving film with great acting.', 'label': 1}],
    'paws_wiki/labeled_final_raw': [{'sentence1': _S(1), 'sentence2': _S(2), 'label': 1},
                                    {'sentence1': _S(3), 'sentence2': _S(4), 'label': 0}],
    'glue/cola': [{'sentence': 'The dog barked.', 'label': 1, 'idx': 0}],
    'glue/sst2': [{'sentence': 'a charming film', 'label': 1, 'idx': 0}],
    'glue/mrpc': [{'sentence1': _S(1), 'sentence2': _S(2), 'label': 1, 'idx': 0}],
    'glue/qqp': [{'question1': 'How do I learn Python?', 'question2': 'How can I learn Python?',
                  'label': 1, 'idx': 0}],
    'glue/stsb': [{'sentence1': _S(1), 'sentence2': _S(2), 'label': 3.2, 'idx': 0}],
    'glue/mnli': [{'premise': _S(1), 'hypothesis': _S(2), 'label': 0, 'idx': 0}],
    'glue/qnli': [{'question': 'Where is Paris?', 'sentence': 'Paris is in France.', 'label': 0,
                   'idx': 0}],
    'glue/rte': [{'sentence1': _S(1), 'sentence2': _S(2), 'label': 0, 'idx': 0}],
    'glue/wnli': [{'sentence1': _S(1), 'sentence2': _S(2), 'label': 1, 'idx': 0}],
    'super_glue/boolq': [{'question': 'is paris in france', 'passage': 'Paris is in France.',
                          'idx': 0, 'label': 1}],
    'super_glue/multirc': [{'paragraph': 'Ann has two cats and a dog.',
                            'question': 'How many cats does Ann have?', 'answer': 'Two',
                            'idx': {'paragraph': 0, 'question': 0, 'answer': 0}, 'label': 1}],
    'super_glue/record': [{'passage': 'Paris hosted the games. @highlight Rome cheered.',
                           'query': '@placeholder hosted the games.',
                           'entities': ['Paris', 'Rome'], 'answers': ['Paris'],
                           'idx': {'passage': 0, 'query': 0}}],
}
for _key, _exs in HELDOUT_HF.items():
  _spec_tfds = {'anli/r1': 'anli/r1', 'anli/r2': 'anli/r2', 'anli/r3': 'anli/r3',
                'winogrande/winogrande_xl': 'winogrande'}.get(_key, _key)
  if _key not in ('story_cloze/2016', 'hellaswag'):
    TFDS_EXAMPLES[_spec_tfds] = [hf_to_tfds(_spec_tfds.split('/')[0], e) for e in _exs]


# Free-text fields a variant may extend (never labels, answers or choices, which templates
# compare with other fields).
_TEXT_FIELDS = frozenset({
    'text', 'context', 'question', 'document', 'article', 'plot', 'passage', 'premise',
    'hypothesis', 'sentence1', 'sentence2', 'content', 'review', 'support', 'background',
    'situation', 'para', 'question1', 'question2', 'input', 'question_stem', 'title'})


def variant(example: Mapping[str, Any], i: int) -> dict[str, Any]:
  """Example `i` of a stream built from one fixture example: i == 0 is the example itself,
  later ones append ` (i)` to its top-level free-text fields (e.g. `'text': 'A film. (3)'`)."""
  out = dict(example)
  if i:
    for key, value in out.items():
      if key in _TEXT_FIELDS and isinstance(value, str):
        out[key] = f'{value} ({i})'
  return out


def expand(examples, num_examples: Optional[int]) -> list[dict[str, Any]]:
  """`num_examples` examples cycling through `examples` with `variant` (None: as given)."""
  examples = list(examples)
  if num_examples is None:
    return examples
  return [variant(examples[i % len(examples)], i // len(examples)) for i in range(num_examples)]


_NUM_EXAMPLES: list[Optional[int]] = [None]


def mock_as_dataset(self, split, **kwargs):
  """`as_dataset_fn` for `tfds.testing.mock_data`: the builder's `TFDS_EXAMPLES`."""
  del split, kwargs
  key = self.name + (f'/{self.builder_config.name}' if self.builder_config else '')
  if key not in TFDS_EXAMPLES:
    raise KeyError(f'no TFDS fixture for {key}')
  examples = expand(TFDS_EXAMPLES[key], _NUM_EXAMPLES[0])
  spec = self.info.features.get_tensor_spec()
  # cache(): seqio repeats a training split by re-iterating its source; re-entering the
  # generator each pass (~1 ms) would dominate a mixture's start-up over one-example splits.
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec).cache()


def hf_injection(num_examples: Optional[int] = None) -> dict[tuple, list[dict[str, Any]]]:
  """`sources.inject_hf_examples` data: every split of every HF row of `datasets.csv`."""
  injected = {}
  for spec in sources.load_specs().values():
    if spec.source == 'hf':
      examples = HF_EXAMPLES.get(spec.key) or HELDOUT_HF[spec.key]
      for split in spec.splits.values():
        injected[(spec.hf_name, spec.hf_subset, split)] = expand(examples, num_examples)
  return injected


@contextlib.contextmanager
def serve(num_examples: Optional[int] = None) -> Iterator[None]:
  """Serves the fixture examples to every TFDS and HF row (not StoryCloze, a CSV folder).

  Args:
    num_examples: examples per split (`expand`); None: the fixture examples as written.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  saved = _NUM_EXAMPLES[0]
  _NUM_EXAMPLES[0] = num_examples
  try:
    with tfds.testing.mock_data(as_dataset_fn=mock_as_dataset), \
         sources.inject_hf_examples(hf_injection(num_examples)):
      yield
  finally:
    _NUM_EXAMPLES[0] = saved
