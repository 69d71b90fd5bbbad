"""T0's held-out evaluation: rank classification on 11 unseen datasets.

Datasets (rows of `datasets.csv` with the `heldout` role): NLI (anli r1/r2/r3,
super_glue/cb, super_glue/rte), coreference (super_glue/wsc.fixed,
winogrande/winogrande_xl), sentence completion (super_glue/copa, hellaswag,
story_cloze/2016) and word sense (super_glue/wic). Every usable template gets a
task and, if it has answer choices, a `_score_eval` twin (see `spt_tasks.t0`).

Which templates are scored, as T0 did (t-zero `d4_eval_mixture`): only those
whose promptsource `original_task` flag is true, i.e. that ask the dataset's own
question with the dataset's own answers. Excluded from scoring, with the reason:

* `original_task: false` templates: they pose another task on the same data,
  so their accuracy is not the dataset's accuracy. With promptsource 0.2.3 these
  are winogrande_xl 'True or False'; hellaswag 'Appropriate continuation - Yes
  or No', 'Open-ended completion', 'Open-ended start', 'Reversed appropriate
  continuation - Yes or No', 'Topic of the context', 'Topic without the ending
  answer', 'how_ends'; story_cloze 'Generate Ending'. Their tasks are still
  registered (for inspection or training).
* templates without answer choices — nothing to rank.
* templates T0 marked broken (`templates.T0_TASK_BLACKLIST`) or without a
  '|||' separator — not registered at all.

`excluded_templates()` lists the exclusions per dataset (spt_tasks/README.md shows
the table). Mixtures: `spt_heldout_score_eval` (all) and one per dataset,
`spt_heldout_{dataset}_score_eval`, e.g. `spt_heldout_anli_r1_score_eval`,
`spt_heldout_super_glue_wsc_fixed_score_eval`. Evaluate on `validation` (T0
used validation; test labels are hidden).
"""
from __future__ import annotations

import re

import seqio

from spt_tasks import sources
from spt_tasks import t0

HELDOUT_MIXTURE = 'spt_heldout_score_eval'


def dataset_slug(spec: sources.DatasetSpec) -> str:
  """'super_glue/wsc.fixed' → 'super_glue_wsc_fixed' (for mixture names)."""
  return re.sub(r'[^A-Za-z0-9]+', '_', spec.key).strip('_')


def mixture_name(spec: sources.DatasetSpec) -> str:
  return f'spt_heldout_{dataset_slug(spec)}_score_eval'


def heldout_specs() -> list[sources.DatasetSpec]:
  return sources.specs_with_role('heldout')


def scored_tasks(spec: sources.DatasetSpec) -> list[str]:
  """`_score_eval` tasks of the original-task templates with answer choices."""
  return t0.task_names(spec, original_task=True, score_eval=True)


def excluded_templates(spec: sources.DatasetSpec) -> dict[str, str]:
  """{template name: reason} of the registered templates not scored on `spec`."""
  out = {}
  for info in t0.register_dataset_tasks(spec):
    if not info.original_task:
      out[info.name] = 'original_task is false (another task on the same data)'
    elif not info.has_answer_choices:
      out[info.name] = 'no answer choices to rank'
  return out


def _add_mixture(name: str, task_names: list[str]) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, task_names, default_rate=1.0)


def register() -> None:
  """Registers held-out tasks, one mixture per dataset and `spt_heldout_score_eval`."""
  everything = []
  for spec in heldout_specs():
    names = scored_tasks(spec)
    if not names:
      raise ValueError(f'Held-out dataset {spec.key} has no original-task template with '
                       'answer choices; it cannot be scored by rank classification.')
    _add_mixture(mixture_name(spec), names)
    everything.extend(names)
  _add_mixture(HELDOUT_MIXTURE, everything)


register()
