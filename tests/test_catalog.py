"""Tests of spt_tasks.catalog: task name → TaskInfo(dataset, template, cluster)."""
import pytest

from spt_jax.results import TaskInfo
from spt_tasks import catalog
from spt_tasks import sources


def test_sample_tasks_from_the_sample_table():
  from spt_tasks import sample
  rte = next(d for d in sample.DATASETS if d.name == 'sample_super_glue_rte')
  templates = sample.dataset_templates(rte)
  assert templates
  for info in templates:
    name = sample.task_name(rte, info.name)
    want = TaskInfo('super_glue/rte', info.name, sample.HELDOUT_RESEMBLES[rte.name])
    assert catalog.task_info(name) == want
    assert catalog.task_info(name + '_score_eval') == want
  # Every task of the held-out score-eval mixture is known, one dataset per sample dataset.
  infos = catalog.lookup(sample.HELDOUT_SCORE_EVAL_TASKS)
  assert {i.cluster for i in infos.values()} <= set(sample.TASK_CLUSTER.values())
  assert {i.dataset for i in infos.values()} == {
      d.dataset + (f'/{d.subset}' if d.subset else '') for d in sample.DATASETS if d.heldout}
  assert len(set(infos.values())) == len(infos)  # (dataset, template) unique


def test_t0_names_from_datasets_csv_with_real_template_names():
  assert catalog.task_info('super_glue_rte_GPT_3_style_score_eval') == TaskInfo(
      'super_glue/rte', 'GPT-3 style', 'nli')
  assert catalog.task_info('super_glue_wsc.fixed_does_the_pronoun_refer_to') == TaskInfo(
      'super_glue/wsc.fixed', 'does the pronoun refer to', 'coreference')
  # anli: T0's `anli_{template}_{round}` form.
  assert catalog.task_info('anli_GPT_3_style_r2_score_eval') == TaskInfo(
      'anli/r2', 'GPT-3 style', 'nli')
  # Longest prefix wins (glue/... vs super_glue/...).
  info = catalog.task_info('glue_mrpc_equivalent')
  assert info.dataset == 'glue/mrpc'


def test_every_heldout_row_parses_back():
  for spec in sources.specs_with_role('heldout'):
    name = spec.task_name('some template name') + '_score_eval'
    info = catalog.parse_t0_name(name)
    assert info == TaskInfo(spec.key, 'some_template_name', spec.cluster), name


def test_unknown_names_fall_back_to_their_own_dataset():
  assert catalog.parse_t0_name('my_private_task') is None
  assert catalog.task_info('my_private_task_score_eval', warn=False) == TaskInfo(
      'my_private_task', catalog.UNKNOWN_TEMPLATE, catalog.UNKNOWN_CLUSTER)


def test_ensure_registered_imports_the_registry():
  import seqio
  assert catalog.ensure_registered('spt_sample_heldout_score_eval')
  assert 'spt_sample_heldout_score_eval' in seqio.MixtureRegistry.names()


@pytest.mark.slow
def test_ensure_registered_unknown_name_is_false():
  # Imports every registry module (T0's registers hundreds of tasks): slow.
  assert not catalog.ensure_registered('no_such_mixture_xyz')
