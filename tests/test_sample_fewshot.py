"""Tests of spt_tasks/sample_fewshot.py: the held-out datasets' few-shot training mixture."""
import seqio

from spt_tasks import sample
from spt_tasks import sample_fewshot


def test_mixture_covers_every_heldout_template_with_equal_dataset_weight():
  mixture = seqio.get_mixture_or_task(sample_fewshot.MIXTURE)
  names = {t.name for t in mixture.tasks}
  assert names == set(sample_fewshot.TASKS)
  for spec in sample.DATASETS:
    if not spec.heldout:
      continue
    tasks = sample_fewshot.TASKS_BY_DATASET[spec.name]
    # The held-out evaluation's templates, one few-shot task each.
    assert len(tasks) == len(sample.TASKS_BY_DATASET[spec.name]['score_eval'])
    rate = sum(mixture.get_rate(seqio.get_mixture_or_task(t)) for t in tasks)
    assert abs(rate - sample_fewshot.NUM_SHOTS) < 1e-6, spec.name


def test_rows_are_the_first_training_rows_and_never_validation():
  for spec in sample_fewshot.HELDOUT_DATASETS:
    rows = sample_fewshot.fewshot_examples(spec.name, sample_fewshot.NUM_SHOTS)
    assert rows == tuple(sample.raw_examples(spec.name, 'train')[:sample_fewshot.NUM_SHOTS])
    labels = {r['label'] for r in rows}
    assert len(labels) == 2, spec.name   # both classes among the shots
    key = lambda ex: repr(sorted((k, v) for k, v in ex.items() if k != 'idx'))
    validation = {key(ex) for ex in sample.raw_examples(spec.name, 'validation')}
    assert not validation & {key(r) for r in rows}, spec.name


def test_a_task_renders_and_tokenizes_its_rows():
  name = sample_fewshot.TASKS_BY_DATASET['sample_super_glue_rte'][0]
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset({'inputs': 128, 'targets': 32}, split='train', shuffle=False,
                        use_cached=False)
  rows = list(ds.as_numpy_iterator())
  assert 0 < len(rows) <= sample_fewshot.NUM_SHOTS
  assert rows[0]['inputs'].size > 0 and rows[0]['targets'][-1] == 1   # EOS on targets


def test_other_sizes_register_their_own_mixture():
  tasks = sample_fewshot.register(8)
  assert sample_fewshot.mixture_name(8) == 'spt_sample_heldout_fewshot8_train'
  assert seqio.get_mixture_or_task('spt_sample_heldout_fewshot8_train')
  assert all(n.startswith('sample_fewshot8_') for names in tasks.values() for n in names)
