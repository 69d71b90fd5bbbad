"""promptsource templates: listing, T0 task naming and deterministic rendering.

This module is the one place that touches promptsource. The registries
(`spt_tasks/t0.py`, `spt_tasks/heldout.py`, `spt_tasks/glue.py`, `spt_tasks/super_glue.py`,
`spt_tasks/sample.py`) build seqio tasks on top of it:

  >>> from spt_tasks import templates
  >>> infos = templates.list_templates('super_glue', 'rte')
  >>> infos[0].task_name
  'super_glue_rte_GPT_3_style'
  >>> t = templates.get_template('super_glue', 'rte', 'GPT-3 style')
  >>> r = templates.render(t, {'premise': 'A man sleeps.', 'hypothesis': 'A man rests.',
  ...                          'idx': 0, 'label': 0})
  >>> r.targets, r.answer_choices
  ('True', ['True', 'False'])

Templates are read from the installed `promptsource==0.2.3` package (YAML under
`promptsource/templates/<dataset>[/<subset>]/templates.yaml`), which the set-up
script installs with `pip install --no-deps --ignore-requires-python
promptsource==0.2.3` (its declared dependencies are broken; we need only jinja2,
pyyaml, pandas and `pkg_resources` from setuptools < 81).

Rendering follows T0 (bigscience t-zero `apply_template`): hyphens in field names
become underscores, `Template.apply` gives `[inputs, targets]`, and an example
whose template output does not split into exactly two non-empty parts is unusable.
Some templates draw random choices with promptsource's `| choice` filter (e.g.
sciq shuffles the listed options); `render` seeds Python's `random` from the
example's content so the same example always renders the same way, and restores
the global random state afterwards.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
import random
import re
import warnings
import zlib
from typing import Any, Mapping, Optional, Sequence

# T0 (bigscience t-zero, `TASK_BLACKLIST`) left these tasks out of training and
# evaluation: they tokenize to more than 1024 tokens, or their cached files were
# broken. Names are T0 task names (see `task_name`). Most name templates that
# promptsource has renamed since (hotpot_qa, tab_fact, ...); in 0.2.3 only the
# wiki_hop and ecthr_cases entries still match a template.
T0_TASK_BLACKLIST = frozenset({
    'hotpot_qa_distractor_Generate_Explanations',
    'hotpot_qa_fullwiki_Generate_Explanations',
    'hotpot_qa_distractor_Generate_Answer_and_Explanations',
    'hotpot_qa_fullwiki_Generate_Answer_and_Explanations',
    'hotpot_qa_fullwiki_Generate_Answer',
    'hotpot_qa_distractor_Generate_Answer',
    'hotpot_qa_distractor_Generate_Title_2',
    'hotpot_qa_fullwiki_Generate_Title_2',
    'hotpot_qa_fullwiki_Generate_Title_1',
    'hotpot_qa_distractor_Generate_Title_1',
    'hotpot_qa_distractor_Generate_Question',
    'hotpot_qa_fullwiki_Generate_Question',
    'tab_fact_tab_fact_tab_fact_3',
    'tab_fact_tab_fact_tab_fact_2',
    'tab_fact_tab_fact_tab_fact_1',
    'tab_fact_tab_fact_tab_fact_7',
    'tab_fact_tab_fact_tab_fact_4',
    'tab_fact_tab_fact_tab_fact_5',
    'tab_fact_tab_fact_tab_fact_6',
    'wiki_hop_masked_Choose_Best_Object_Candidate',
    'wiki_hop_masked_Indirect_Question_about_Birthplace_Citizenship_Place_of_Death',
    'narrativeqa_Template_05',
    'ecthr_cases_alleged_violation_prediction_silver_rationales',
    'gigaword_summarize_',
})

# promptsource's separator between the prompt and the target.
SEPARATOR = '|||'

_TASK_NAME_INVALID = re.compile(r'[^A-Za-z0-9_.]+')
# promptsource's `choice` filter (random.choice) or any other mention of `random`.
_DRAWS_RANDOM = re.compile(r'\bchoice\b|\brandom\b')


class TemplateError(ValueError):
  """A template could not be rendered into (inputs, targets) for an example."""


@dataclasses.dataclass(frozen=True)
class Rendered:
  """One example rendered through a template.

  Attributes:
    inputs: the prompt text (stripped), e.g. 'Is this review positive? ...'.
    targets: the answer text (stripped), e.g. 'Yes'.
    answer_choices: the rendered answer choices (stripped), or None when the
      template defines no `answer_choices` expression (open-ended generation).
  """
  inputs: str
  targets: str
  answer_choices: Optional[list[str]]


@dataclasses.dataclass(frozen=True)
class TemplateInfo:
  """What a registry needs to know about one promptsource template.

  Attributes:
    dataset: HF dataset name, e.g. 'super_glue'.
    subset: HF config name or None, e.g. 'rte'.
    name: promptsource template name, e.g. 'GPT-3 style'.
    task_name: T0 task name, e.g. 'super_glue_rte_GPT_3_style'.
    original_task: promptsource metadata: the prompt asks for the dataset's
      original task (T0 evaluates held-out datasets on these only).
    choices_in_prompt: promptsource metadata: the choices appear in the input.
    metrics: promptsource metadata metric names (may be empty).
    has_answer_choices: the template defines answer choices (so it can be
      evaluated by rank classification, i.e. get a `_score_eval` twin).
    fixed_answer_choices: the choices when they do not depend on the example
      (e.g. ['Yes', 'No']), else None. Gives `num_classes` for metrics.
    broken: T0 left it out (`T0_TASK_BLACKLIST`) or its jinja has no '|||'
      separator, so it cannot give (inputs, targets).
  """
  dataset: str
  subset: Optional[str]
  name: str
  task_name: str
  original_task: bool
  choices_in_prompt: bool
  metrics: tuple[str, ...]
  has_answer_choices: bool
  fixed_answer_choices: Optional[tuple[str, ...]]
  broken: bool


def task_name(dataset: str, subset: Optional[str], template_name: str,
              prefix: str = '') -> str:
  """T0 / P3 task name `{prefix}{dataset}[_{subset}]_{template}`.

  Runs of characters outside `[A-Za-z0-9_.]` become one `_` (the same result as
  t-zero's `re.sub(r"[^\\w\\d\\._]+", "_", ...)` on every promptsource 0.2.3
  template name), so names match the P3 folder names, e.g.
  `task_name('super_glue', 'rte', 'GPT-3 style') == 'super_glue_rte_GPT_3_style'`.

  Args:
    dataset: HF dataset name.
    subset: HF config name, or None.
    template_name: promptsource template name.
    prefix: prepended verbatim (not cleaned), e.g. 'sample_'.

  Returns:
    The task name.
  """
  full = dataset + (f'_{subset}_' if subset else '_') + template_name
  return prefix + _TASK_NAME_INVALID.sub('_', full)


@functools.lru_cache(maxsize=None)
def _import_promptsource_templates():
  """Imports `promptsource.templates`, with an actionable error if missing."""
  try:
    with warnings.catch_warnings():
      # promptsource imports pkg_resources, which warns that it is deprecated.
      warnings.simplefilter('ignore')
      from promptsource import templates as ps_templates  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'promptsource is needed for prompted tasks but could not be imported '
        f'({e}). Install it with `pip install --no-deps --ignore-requires-python '
        'promptsource==0.2.3` plus jinja2, pyyaml, pandas and "setuptools<81" '
        '(see launch/setup.sh).') from e
  return ps_templates


@functools.lru_cache(maxsize=None)
def get_dataset_templates(dataset: str, subset: Optional[str] = None):
  """The promptsource `DatasetTemplates` of (dataset, subset), cached.

  Raises:
    ValueError: promptsource has no templates for (dataset, subset); the message
      lists the subsets that do exist for `dataset`.
  """
  ps = _import_promptsource_templates()
  folder = os.path.join(ps.TEMPLATES_FOLDER_PATH, dataset, *([subset] if subset else []))
  if not os.path.isfile(os.path.join(folder, 'templates.yaml')):
    base = os.path.join(ps.TEMPLATES_FOLDER_PATH, dataset)
    known = sorted(os.listdir(base)) if os.path.isdir(base) else []
    raise ValueError(
        f'promptsource has no templates for dataset={dataset!r} subset={subset!r} '
        f'(looked for {folder}/templates.yaml). Entries under {dataset!r}: '
        f'{known or "none (unknown dataset)"}.')
  return ps.DatasetTemplates(dataset, subset)


def get_template(dataset: str, subset: Optional[str], name: str):
  """The promptsource `Template` named `name` of (dataset, subset).

  Raises:
    ValueError: no such template; the message lists the template names.
  """
  dataset_templates = get_dataset_templates(dataset, subset)
  if name not in dataset_templates.all_template_names:
    raise ValueError(
        f'No template {name!r} for dataset={dataset!r} subset={subset!r}; '
        f'templates: {dataset_templates.all_template_names}.')
  return dataset_templates[name]


def is_broken(template, dataset: str, subset: Optional[str]) -> bool:
  """True if T0 left this template out or its jinja has no '|||' at all.

  A separator may legitimately appear once per `{% if %}` branch (quora, turk,
  mdd, ...), so only its total absence is a static sign of a broken template;
  per-example failures are found by `render`.
  """
  if task_name(dataset, subset, template.get_name()) in T0_TASK_BLACKLIST:
    return True
  return SEPARATOR not in template.jinja


def template_info(dataset: str, subset: Optional[str], name: str) -> TemplateInfo:
  """`TemplateInfo` of one template (see the class for the fields)."""
  template = get_template(dataset, subset, name)
  fixed = template.get_fixed_answer_choices_list()
  metadata = template.metadata
  return TemplateInfo(
      dataset=dataset,
      subset=subset,
      name=name,
      task_name=task_name(dataset, subset, name),
      original_task=bool(metadata.original_task),
      choices_in_prompt=bool(metadata.choices_in_prompt),
      metrics=tuple(metadata.metrics or ()),
      has_answer_choices=template.get_answer_choices_expr() is not None,
      fixed_answer_choices=tuple(fixed) if fixed is not None else None,
      broken=is_broken(template, dataset, subset),
  )


def list_templates(dataset: str,
                   subset: Optional[str] = None,
                   *,
                   original_task: Optional[bool] = None,
                   include_broken: bool = False,
                   require_answer_choices: bool = False) -> list[TemplateInfo]:
  """The templates of (dataset, subset), sorted by name, filtered.

  Args:
    dataset: HF dataset name.
    subset: HF config name or None.
    original_task: if set, keep only templates whose `metadata.original_task`
      equals it (T0 used `original_task=True` templates for held-out eval).
    include_broken: keep templates flagged `broken` (see `TemplateInfo`).
    require_answer_choices: keep only templates usable for rank classification.

  Returns:
    A list of `TemplateInfo`, sorted by template name (promptsource's order).
  """
  names = get_dataset_templates(dataset, subset).all_template_names
  infos = [template_info(dataset, subset, n) for n in names]
  return [
      info for info in infos
      if (original_task is None or info.original_task == original_task) and
      (include_broken or not info.broken) and
      (info.has_answer_choices or not require_answer_choices)
  ]


def remove_hyphens(example: Mapping[str, Any]) -> dict[str, Any]:
  """Field names with '-' renamed to '_' (as promptsource.utils.removeHyphen)."""
  return {key.replace('-', '_'): value for key, value in example.items()}


def example_seed(template, example: Mapping[str, Any]) -> int:
  """A stable 32-bit seed from the template name and the example's content."""
  text = template.get_name() + '\x00' + repr(sorted(example.items()))
  return zlib.crc32(text.encode('utf-8'))


def _seeded(seed: int, fn, *args):
  """Calls fn(*args) with Python's `random` seeded, restoring its state."""
  state = random.getstate()
  random.seed(seed)
  try:
    return fn(*args)
  finally:
    random.setstate(state)


@functools.lru_cache(maxsize=4096)
def _compile_cached(jinja: str):
  return _import_promptsource_templates().env.from_string(jinja)


@functools.lru_cache(maxsize=4096)
def _parsed(jinja: str):
  """jinja's syntax tree of `jinja` (parsing draws no random numbers)."""
  return _import_promptsource_templates().env.parse(jinja)


@functools.lru_cache(maxsize=16384)
def _from_python_source(source: str):
  """The jinja Template of generated Python `source`, as `Environment.from_string` builds it."""
  env = _import_promptsource_templates().env
  code = env._compile(source, '<template>')  # pylint: disable=protected-access
  return env.template_class.from_code(env, code, env.make_globals(None), None)


def _generate(jinja: str) -> str:
  """The Python source jinja generates for `jinja` (what `from_string` compiles).

  Code generation folds constant expressions, so `['a', 'b'] | choice` on a literal list draws
  from `random` here, in the same order as in `from_string`. The optimizer rewrites the tree
  in place, so each call works on a copy of the cached parse (the environment is shared).
  """
  env = _import_promptsource_templates().env
  tree = copy.deepcopy(_parsed(jinja), {id(env): env})
  return env.compile(tree, raw=True)


@functools.lru_cache(maxsize=4096)
def _draws_when_compiled(jinja: str) -> bool:
  """Whether compiling `jinja` consumes random numbers (a constant-folded `| choice`).

  Folding depends on the syntax tree only, so a compilation that draws nothing never does;
  such a template draws (if at all) when rendered and can be compiled once. Python's random
  state is restored afterwards.
  """
  state = random.getstate()
  try:
    random.seed(0)
    before = random.getstate()
    _generate(jinja)
    return random.getstate() != before
  finally:
    random.setstate(state)


def _compile(jinja: str):
  """promptsource's jinja environment compiling `jinja`, as `env.from_string(jinja)`.

  Compiling is most of the cost of `Template.apply` (which recompiles on every call), so it
  is cached. Templates that mention `choice` (the filter) or `random` may draw random numbers
  at compile time: jinja folds `[...] | choice` on a constant list while generating code, so
  those draws must happen per example (under the example's seed) to vary as in promptsource.
  For them, a template whose compilation draws nothing (`_draws_when_compiled`: the draw
  happens at render time, e.g. `answer_choices | choice`) is compiled once too; one that does
  draw regenerates its Python source per example (the draws, in promptsource's order) from a
  cached parse, and the source's compilation is cached (few distinct draws, few sources).
  The test is for the word `choice` or `random`, not a substring: nearly every template
  mentions `answer_choices`.
  """
  if _DRAWS_RANDOM.search(jinja) and _draws_when_compiled(jinja):
    return _from_python_source(_generate(jinja))
  return _compile_cached(jinja)


@functools.lru_cache(maxsize=4096)
def _truncating(jinja: str) -> str:
  """`Template.apply`'s truncate=True rewrite: each `}}` gets `| string | truncate(N)`."""
  ps = _import_promptsource_templates()
  return jinja.replace('}}', f' | string | truncate({ps.TEXT_VAR_LENGTH}) }}}}')


def _answer_choices(template, example):
  """`Template.get_answer_choices_list` with a cached compiled template."""
  jinja = template.get_answer_choices_expr()
  if jinja is None:
    return None
  rendered = _compile(jinja).render(**template._escape_pipe(example))  # pylint: disable=protected-access
  return [template._unescape_pipe(c.strip()) for c in rendered.split(SEPARATOR)]  # pylint: disable=protected-access


def _apply_with_choices(template, example):
  """(`Template.apply(example)` (truncate=True), the answer choices it rendered).

  Same steps as promptsource 0.2.3: each `}}` gets `| string | truncate(N)`, '|||' inside
  field values is protected, `answer_choices` is added, the output is split at '|||' and each
  part stripped. The answer choices are the first thing rendered (nothing draws random numbers
  before), so under a fresh seed they equal `get_answer_choices_list(example)` under that
  seed. `test_templates.py` checks equality with `Template.apply`.
  """
  jinja = _truncating(template.jinja)
  protected = template._escape_pipe(example)  # pylint: disable=protected-access
  if 'answer_choices' in protected:
    raise ValueError("Example contains the restricted key 'answer_choices'.")
  choices = _answer_choices(template, example)
  protected['answer_choices'] = choices
  rendered = _compile(jinja).render(**protected)
  parts = [template._unescape_pipe(part).strip() for part in rendered.split(SEPARATOR)]  # pylint: disable=protected-access
  return parts, choices


def _apply(template, example):
  """`Template.apply(example)` (truncate=True) with cached compiled templates."""
  return _apply_with_choices(template, example)[0]


def render(template, example: Mapping[str, Any], seed: Optional[int] = None) -> Rendered:
  """Renders one example (HF `datasets` schema, Python values) through a template.

  Args:
    template: a promptsource `Template`.
    example: field name -> Python value (str, int, float, bool, list, dict), as
      HF `datasets` yields it; hyphens in field names are allowed.
    seed: seed for the template's `| choice` draws; default `example_seed`, so
      the result depends only on the template and the example.

  Returns:
    `Rendered(inputs, targets, answer_choices)`; inputs/targets equal
    `template.apply(example)` and answer_choices equals
    `template.get_answer_choices_list(example)` under the same seed.

  Raises:
    TemplateError: jinja failed, the output did not split into exactly
      (inputs, targets), or either part is empty (T0 drops such examples).
  """
  example = remove_hyphens(example)
  if seed is None:
    seed = example_seed(template, example)
  try:
    # One seeded pass: the choices rendered first inside it are those a separate seeded
    # `get_answer_choices_list` call gives (see `_apply_with_choices`).
    parts, choices = _seeded(seed, _apply_with_choices, template, example)
  except Exception as e:  # pylint: disable=broad-except  # jinja raises many types.
    raise TemplateError(
        f'template {template.get_name()!r} failed to render: {type(e).__name__}: {e}') from e
  if len(parts) != 2:
    raise TemplateError(
        f'template {template.get_name()!r} rendered {len(parts)} parts separated by '
        f"'{SEPARATOR}', expected 2 (inputs, targets).")
  inputs, targets = parts
  if not inputs or not targets:
    raise TemplateError(
        f'template {template.get_name()!r} rendered an empty '
        f'{"inputs" if not inputs else "targets"} (T0 drops such examples).')
  return Rendered(inputs=inputs, targets=targets, answer_choices=choices)


def render_all(template, examples: Sequence[Mapping[str, Any]]) -> list[Rendered]:
  """`render` over a list, raising on the first failure (for tests and tools)."""
  return [render(template, ex) for ex in examples]
