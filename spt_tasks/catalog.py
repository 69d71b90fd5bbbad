"""Task name → where it sits in a results table: `TaskInfo(dataset, template, cluster)`.

Evaluation reports per template, then aggregates over the templates of one dataset and over
the datasets of one cluster (`spt_jax.results.aggregate`). A seqio task name alone does not
say which part of `super_glue_rte_GPT_3_style_score_eval` is the dataset and which the
template, so this module asks the registries' own tables, in this order:

1. The embedded sample registry (`spt_tasks.sample`: `DATASETS`, `dataset_templates`,
   `task_name`) for names starting with its prefix `sample_`. Its clusters are the sample's
   own: a held-out sample dataset is labelled with the ONE training cluster it was built to
   resemble (`sample.HELDOUT_RESEMBLES`), which is what the memory-retrieval analysis groups by.
2. The real dataset table (`spt_tasks/datasets.csv` via `spt_tasks.sources.load_specs`): the row
   whose T0 task-name prefix (`{dataset}_{subset}_`, anli: `anli_..._{round}`) is the longest
   prefix of the name gives dataset key and cluster; the promptsource template whose T0 name
   matches gives the template's real name (with spaces), else the rest of the name is used.
3. Otherwise the name itself is the dataset (one template, `default`) in cluster `other`,
   with a warning, so an unknown task still shows up in the table.

`_score_eval` twins map to the same (dataset, template) as their plain task. Nothing here
imports `spt_tasks.t0` (its import registers every T0 task, tens of seconds); promptsource is read
only for the datasets that are looked up.

`ensure_registered(name)` imports the registry module that defines a mixture or task, so the
entry points accept any registered name without an `import` line in the gin file.
"""
from __future__ import annotations

import functools
import importlib
import re
import sys
from typing import Iterable, Optional

from absl import logging

from spt_jax.results import TaskInfo

SCORE_EVAL_SUFFIX = '_score_eval'
SAMPLE_PREFIX = 'sample_'
UNKNOWN_CLUSTER = 'other'
UNKNOWN_TEMPLATE = 'default'

# Name prefix → registry module defining it (first match wins; checked in order).
_REGISTRY_BY_PREFIX = (
    ('spt_sample_', 'spt_tasks.sample'),
    (SAMPLE_PREFIX, 'spt_tasks.sample'),
    ('spt_heldout', 'spt_tasks.heldout'),
    ('spt_super_glue', 'spt_tasks.super_glue'),
    ('spt_glue', 'spt_tasks.glue'),
    ('spt_t0', 'spt_tasks.t0'),
    ('spt_p3', 'spt_tasks.p3'),
    ('p3_', 'spt_tasks.p3'),
)
# Tried in this order when the prefix says nothing (a bare T0 task name, say).
_ALL_REGISTRIES = ('spt_tasks.sample', 'spt_tasks.heldout', 'spt_tasks.t0', 'spt_tasks.glue',
                   'spt_tasks.super_glue', 'spt_tasks.p3')

_INVALID = re.compile(r'[^A-Za-z0-9_.]+')


def _clean(text: str) -> str:
  """T0's task-name cleaning (`spt_tasks.templates.task_name`) without importing promptsource."""
  return _INVALID.sub('_', text)


def _registered(name: str) -> bool:
  import seqio  # pylint: disable=g-import-not-at-top
  return name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()


def ensure_registered(mixture_or_task_name: str) -> bool:
  """Imports the registry module(s) that may define `mixture_or_task_name`.

  A name with a known prefix (`spt_sample_…`, `sample_…` → spt_tasks.sample, `spt_heldout…` →
  spt_tasks.heldout, `spt_p3…`, `p3_…` → spt_tasks.p3, ...) imports that module only; any other
  name (a bare T0 task name, say) imports every registry module in turn until it is found
  (importing spt_tasks.t0 registers every T0 task: tens of seconds). A module that fails to
  import is logged and skipped (the caller's "unknown task" error then lists close names).

  Returns:
    Whether the name is registered afterwards.
  """
  if _registered(mixture_or_task_name):
    return True
  first = [m for p, m in _REGISTRY_BY_PREFIX if mixture_or_task_name.startswith(p)]
  for module in dict.fromkeys(first or _ALL_REGISTRIES):
    if module in sys.modules:
      continue
    try:
      importlib.import_module(module)
    except Exception as e:  # pylint: disable=broad-except  # a broken registry must not hide others
      logging.warning('Could not import registry %s while looking for %r: %s', module,
                      mixture_or_task_name, e)
      continue
    if _registered(mixture_or_task_name):
      return True
  return False


# ----------------------------------------------------------------------------
# Sample registry.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _sample_table() -> dict[str, TaskInfo]:
  """{plain task name: TaskInfo} of every sample task (imports spt_tasks.sample)."""
  sample = importlib.import_module('spt_tasks.sample')
  table = {}
  for spec in sample.DATASETS:
    key = spec.dataset + (f'/{spec.subset}' if spec.subset else '')
    for info in sample.dataset_templates(spec):
      table[sample.task_name(spec, info.name)] = TaskInfo(key, info.name, spec.cluster)
  return table


# ----------------------------------------------------------------------------
# The real dataset table (datasets.csv).
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _dataset_prefixes() -> tuple[tuple[str, str, object], ...]:
  """((prefix, suffix, spec), ...) for every datasets.csv row, longest prefix first."""
  from spt_tasks import sources  # pylint: disable=g-import-not-at-top
  rows = []
  for spec in sources.load_specs().values():
    if spec.is_anli:
      rows.append(('anli_', f'_{spec.subset}', spec))
    else:
      rows.append((_clean(spec.dataset + (f'_{spec.subset}_' if spec.subset else '_')), '',
                   spec))
  rows.sort(key=lambda r: (-len(r[0]) - len(r[1]), r[0]))
  return tuple(rows)


@functools.lru_cache(maxsize=None)
def _template_names(dataset: str, subset: Optional[str]) -> dict[str, str]:
  """{cleaned template name: promptsource name} of (dataset, subset); {} if unavailable."""
  try:
    from spt_tasks import templates  # pylint: disable=g-import-not-at-top
    names = templates.get_dataset_templates(dataset, subset).all_template_names
  except Exception as e:  # pylint: disable=broad-except  # promptsource missing / no folder
    logging.info('No promptsource templates for %s/%s (%s); using cleaned names.', dataset,
                 subset, e)
    return {}
  return {_clean(n): n for n in names}


def parse_t0_name(name: str) -> Optional[TaskInfo]:
  """TaskInfo of a T0-style task name from the datasets.csv rows, or None if no row fits.

  `name` may carry the `_score_eval` suffix. The template is promptsource's real name when
  the cleaned name matches one of the dataset's templates, else the cleaned remainder.
  """
  base = name[:-len(SCORE_EVAL_SUFFIX)] if name.endswith(SCORE_EVAL_SUFFIX) else name
  for prefix, suffix, spec in _dataset_prefixes():
    if not base.startswith(prefix) or (suffix and not base.endswith(suffix)):
      continue
    rest = base[len(prefix):len(base) - len(suffix)] if suffix else base[len(prefix):]
    if not rest:
      continue
    template = _template_names(*spec.templates).get(rest, rest)
    return TaskInfo(spec.key, template, spec.cluster)
  return None


# ----------------------------------------------------------------------------
# Public look-up.
# ----------------------------------------------------------------------------


def task_info(name: str, warn: bool = True) -> TaskInfo:
  """Where task `name` goes in the results table (see the module docstring for the rules).

  Args:
    name: a seqio task name, with or without `_score_eval`.
    warn: log a warning when the name falls through to the `other` cluster.

  Returns:
    `TaskInfo(dataset, template, cluster)`.
  """
  base = name[:-len(SCORE_EVAL_SUFFIX)] if name.endswith(SCORE_EVAL_SUFFIX) else name
  if base.startswith(SAMPLE_PREFIX):
    try:
      found = _sample_table().get(base)
    except Exception as e:  # pylint: disable=broad-except  # sample registry unavailable
      logging.warning('spt_tasks.sample could not be loaded to look up %r: %s', name, e)
      found = None
    if found is not None:
      return found
  found = parse_t0_name(name)
  if found is not None:
    return found
  if warn:
    logging.warning('Task %r is in no registry table and matches no datasets.csv row; it is '
                    'reported as its own dataset in cluster %r.', name, UNKNOWN_CLUSTER)
  return TaskInfo(base, UNKNOWN_TEMPLATE, UNKNOWN_CLUSTER)


def lookup(names: Iterable[str]) -> dict[str, TaskInfo]:
  """`{name: task_info(name)}` for several task names (e.g. an Evaluator's tasks)."""
  return {n: task_info(n) for n in names}
