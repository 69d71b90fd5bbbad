"""T0's registry: one seqio task per (dataset, template), and the training mixture.

This mirrors bigscience t-zero `t0/seqio_tasks/tasks.py` (`add_task`):

* For every row of `spt_tasks/datasets.csv` and every usable promptsource template of
  it, a task named like T0 / P3, `{dataset}_{subset}_{template}` with runs of
  characters outside `[A-Za-z0-9_.]` turned into `_` (anli: `anli_{template}_r1`).
  Features: `inputs` (no EOS), `targets` (+ EOS), and `answer_choices` (strings)
  when the template has choices. The raw data comes from `spt_tasks.sources`; the
  template is applied by `spt_tasks.preprocessors.apply_template` (an example the
  template cannot render is skipped and counted, never fatal).
* For every template with answer choices, a `{task}_score_eval` twin: one row
  per choice (`idx` = [example, choice], `is_correct`, `weight`), scored by
  `spt_jax.metrics.rank_classification`.
* Templates T0 left out (`templates.T0_TASK_BLACKLIST`: too long, or broken
  cached files) and templates whose jinja has no '|||' separator are not
  registered. With promptsource 0.2.3 no row of the table has one (T0's
  `gigaword_summarize_` no longer exists there). Every other template is
  registered and trained on, whatever its `original_task` flag (as T0).

Mixture `spt_t0_train`: the rows of `datasets.csv` marked `default_train=yes`
(T0's 38 (dataset, subset) training rows in 8 clusters), every registered template
of each, at T0's rates (`spt_tasks.mixing`). The paper's own list ("31 tasks from 8
domains") is not public; edit the `default_train` column, or choose in gin:

    import spt_tasks.gin_configurables   # registers spt_tasks.t0.*
    spt_tasks.t0.train_datasets.exclude = ['gigaword', 'wiki_bio']
    train/configs.DatasetConfig.mixture_or_task_name = @spt_tasks.t0.t0_train_mixture()

Registration reads only promptsource's YAML files: no TFDS, network or
vocabulary access at import.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

from absl import logging
import seqio

from spt_jax import metrics as metrics_lib
from spt_tasks import mixing
from spt_tasks import preprocessors
from spt_tasks import sources
from spt_tasks import templates as templates_lib

T0_TRAIN_MIXTURE = 'spt_t0_train'
SCORE_EVAL_SUFFIX = '_score_eval'

# (dataset key) -> list of TemplateInfo whose tasks are registered.
_REGISTERED: dict[str, list[templates_lib.TemplateInfo]] = {}


# ----------------------------------------------------------------------------
# Postprocessing and metrics (T0's choices, SuperGLUE's metrics).
# ----------------------------------------------------------------------------


def class_id_postprocessor(choices: Sequence[str]) -> Callable[..., int]:
  """Text → index of the fixed answer choice (T0's `maybe_get_class_id_postprocessor`).

  A generation that is none of the choices maps to -1 (counted wrong by the
  metrics) instead of raising as T0 did.
  """
  choices = tuple(choices)

  def postprocess_fn(output_or_target: Any, example=None, is_target: bool = False) -> int:
    del example, is_target
    if isinstance(output_or_target, bytes):
      output_or_target = output_or_target.decode('utf-8')
    text = str(output_or_target).strip()
    return choices.index(text) if text in choices else -1

  return postprocess_fn


def strip_postprocessor(output: Any, example=None, is_target: bool = False) -> str:
  del example, is_target
  if isinstance(output, bytes):
    output = output.decode('utf-8')
  return str(output).strip()


# promptsource metadata metric name -> metric on stripped strings.
_TEXT_METRICS = {
    'Accuracy': metrics_lib.accuracy,
    'ROUGE': metrics_lib.rouge,
    'Squad': metrics_lib.exact_match_and_f1,
}

# SuperGLUE metrics (as T5): on class ids for fixed-choice templates.
_SUPER_GLUE_CLASS_METRICS = {
    'boolq': [metrics_lib.accuracy],
    'cb': [metrics_lib.accuracy, metrics_lib.mean_multiclass_f1(num_classes=3)],
    'copa': [metrics_lib.accuracy],
    'multirc': [metrics_lib.accuracy, metrics_lib.f1_binary],
    'rte': [metrics_lib.accuracy],
    'wic': [metrics_lib.accuracy],
    'wsc.fixed': [metrics_lib.accuracy],
}
# GLUE metrics (as T5) on class ids; stsb (regression) gets none.
_GLUE_CLASS_METRICS = {
    'cola': [metrics_lib.accuracy],
    'sst2': [metrics_lib.accuracy],
    'mrpc': [metrics_lib.accuracy, metrics_lib.f1_binary],
    'qqp': [metrics_lib.accuracy, metrics_lib.f1_binary],
    'mnli': [metrics_lib.accuracy],
    'qnli': [metrics_lib.accuracy],
    'rte': [metrics_lib.accuracy],
    'wnli': [metrics_lib.accuracy],
}


def task_metrics(spec: sources.DatasetSpec, info: templates_lib.TemplateInfo
                ) -> tuple[list[Callable[..., Any]], Callable[..., Any]]:
  """(metric_fns, postprocess_fn) of an ordinary (generative) task.

  Fixed-choice templates are scored on class ids (the index of the choice, which
  is the label for promptsource's `answer_choices[label]` targets): GLUE and
  SuperGLUE get T5's metrics (CB macro-F1, MRPC/QQP/MultiRC F1), other datasets
  accuracy. ReCoRD gets SQuAD EM/F1 on text. Other templates get the metrics
  their promptsource metadata names (Accuracy, ROUGE, Squad) on stripped text.
  """
  fixed = info.fixed_answer_choices
  if spec.dataset == 'super_glue' and spec.subset == 'record':
    return [metrics_lib.exact_match_and_f1], strip_postprocessor
  if fixed:
    table = {'super_glue': _SUPER_GLUE_CLASS_METRICS, 'glue': _GLUE_CLASS_METRICS}.get(spec.dataset)
    metric_fns = (table or {}).get(spec.subset, [metrics_lib.accuracy])
    return list(metric_fns), class_id_postprocessor(fixed)
  if spec.dataset in ('glue', 'super_glue') and spec.subset != 'stsb':
    return [metrics_lib.accuracy], strip_postprocessor
  metric_fns = [_TEXT_METRICS[m] for m in info.metrics if m in _TEXT_METRICS]
  return metric_fns, strip_postprocessor


# ----------------------------------------------------------------------------
# Task registration.
# ----------------------------------------------------------------------------


def _add_task(name: str, **kwargs) -> None:
  """TaskRegistry.add, replacing a task of the same name (re-import, tests)."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **kwargs)


def usable_templates(spec: sources.DatasetSpec) -> list[templates_lib.TemplateInfo]:
  """Templates of a dataset row that get tasks: all but T0's broken ones."""
  return templates_lib.list_templates(*spec.templates, include_broken=False)


def add_template_tasks(spec: sources.DatasetSpec, info: templates_lib.TemplateInfo,
                       source: Optional[seqio.DataSource] = None) -> str:
  """Registers the task of (dataset row, template) and its `_score_eval` twin.

  Returns:
    The task name (the twin is `name + '_score_eval'` when the template has
    answer choices).
  """
  name = spec.task_name(info.name)
  source = source or sources.make_source(spec)
  template = templates_lib.get_template(*spec.templates, info.name)
  render = functools.partial(preprocessors.apply_template, template=template,
                             example_fn=sources.example_fn(spec), counter_name=name)
  features = sources.output_features()
  metric_fns, postprocess_fn = task_metrics(spec, info)
  _add_task(
      name,
      source=source,
      preprocessors=[render, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=features,
      metric_fns=metric_fns,
      postprocess_fn=postprocess_fn)
  if info.has_answer_choices:
    fixed = info.fixed_answer_choices
    _add_task(
        name + SCORE_EVAL_SUFFIX,
        source=source,
        preprocessors=[
            render,
            functools.partial(preprocessors.score_eval_expand,
                              counter_name=name + SCORE_EVAL_SUFFIX),
            seqio.preprocessors.tokenize, seqio.preprocessors.append_eos
        ],
        output_features=features,
        metric_fns=[functools.partial(metrics_lib.rank_classification,
                                      num_classes=len(fixed) if fixed else None)],
        postprocess_fn=metrics_lib.rank_classification_postprocessor)
  return name


def register_dataset_tasks(spec: sources.DatasetSpec) -> list[templates_lib.TemplateInfo]:
  """Registers every usable template task of a dataset row, once; returns the templates."""
  if spec.key not in _REGISTERED:
    source = sources.make_source(spec)
    infos = usable_templates(spec)
    for info in infos:
      add_template_tasks(spec, info, source)
    _REGISTERED[spec.key] = infos
    logging.debug('Registered %d template tasks of %s.', len(infos), spec.key)
  return _REGISTERED[spec.key]


def task_names(spec: sources.DatasetSpec, *, original_task: Optional[bool] = None,
               score_eval: bool = False) -> list[str]:
  """Registered task names of a dataset row (registering them if needed).

  Args:
    spec: the dataset row.
    original_task: keep only templates with this promptsource flag.
    score_eval: the `_score_eval` twins (templates with answer choices only).
  """
  names = []
  for info in register_dataset_tasks(spec):
    if original_task is not None and info.original_task != original_task:
      continue
    if score_eval:
      if info.has_answer_choices:
        names.append(spec.task_name(info.name) + SCORE_EVAL_SUFFIX)
    else:
      names.append(spec.task_name(info.name))
  return names


# ----------------------------------------------------------------------------
# The training mixture.
# ----------------------------------------------------------------------------


def _check_keys(keys: Sequence[str], allowed: Sequence[str], what: str) -> None:
  for key in keys:
    if key not in allowed:
      known = sources.load_specs()
      if key in known:
        raise ValueError(f'{what}: dataset {key!r} has no "train" role in datasets.csv '
                         f'(roles {known[key].roles}); add it there to train on it.')
      raise ValueError(f'{what}: ' + sources.unknown_dataset_message(key, allowed))


def train_datasets(include: Optional[Sequence[str]] = None,
                   exclude: Sequence[str] = ()) -> list[sources.DatasetSpec]:
  """The training rows of the T0 mixture.

  Args:
    include: dataset keys ('dataset/subset', e.g. 'duorc/SelfRC') to train on;
      default: the rows marked `default_train=yes` in datasets.csv. Any row with
      the 'train' role may be listed.
    exclude: keys removed from the selection.

  Raises:
    ValueError: an unknown key (the message lists close matches) or a key
      without the 'train' role.
  """
  candidates = {s.key: s for s in sources.specs_with_role('train')}
  if include is None:
    selected = [s for s in candidates.values() if s.default_train]
  else:
    _check_keys(list(include), list(candidates), 'train_datasets.include')
    selected = [candidates[k] for k in include]
  _check_keys(list(exclude), list(candidates), 'train_datasets.exclude')
  return [s for s in selected if s.key not in set(exclude)]


def t0_task_rates(specs: Sequence[sources.DatasetSpec],
                  cap: int = mixing.MAX_EXAMPLES_PER_DATASET,
                  split_uncapped: bool = False) -> dict[str, int]:
  """{task name: T0 rate} over every registered template task of the rows."""
  return mixing.t0_rates({s.key: s.train_size for s in specs},
                         {s.key: task_names(s) for s in specs}, cap, split_uncapped)


def t0_train_mixture(name: str = T0_TRAIN_MIXTURE,
                     specs: Optional[Sequence[sources.DatasetSpec]] = None,
                     cap: int = mixing.MAX_EXAMPLES_PER_DATASET,
                     split_uncapped: bool = False) -> str:
  """Registers (or re-registers) the T0 training mixture; returns its name.

  Args:
    name: mixture name.
    specs: training rows; default `train_datasets()` (gin include/exclude).
    cap, split_uncapped: see `spt_tasks.mixing.t0_template_rate`.
  """
  specs = train_datasets() if specs is None else specs
  rates = t0_task_rates(specs, cap, split_uncapped)
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(t, float(r)) for t, r in rates.items()])
  return name


def register() -> None:
  """Registers every training row's tasks and the default `spt_t0_train` mixture."""
  for spec in sources.specs_with_role('train'):
    register_dataset_tasks(spec)
  t0_train_mixture()


register()
