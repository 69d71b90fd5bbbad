r"""Prints rendered examples of a registered seqio task.

  python -m spt_tasks.show sample_super_glue_rte_GPT_3_style --split validation -n 3
  python -m spt_tasks.show sample_super_glue_rte_GPT_3_style_score_eval -n 4

Shows the template (from the task's `apply_template` preprocessor), the rendered
inputs, targets and answer choices (for `_score_eval` tasks: idx and
is_correct of each row). Registries are imported by `--registry` (default
`spt_tasks.sample`; give e.g. `spt_tasks.t0` for the real ones). An unknown task name is
an error that lists the closest registered names.
"""
from __future__ import annotations

import difflib
import functools
import importlib
from typing import Optional, Sequence

from absl import app
from absl import flags

_SPLIT = flags.DEFINE_string('split', 'validation', 'Split to show.')
_NUM = flags.DEFINE_integer('n', 3, 'Number of examples (rows) to show.')
_REGISTRY = flags.DEFINE_list('registry', ['spt_tasks.sample'],
                              'Modules to import so their tasks are registered.')


def template_of(task) -> Optional[str]:
  """The promptsource template name used by a task's preprocessors, if any."""
  from spt_tasks import preprocessors  # pylint: disable=g-import-not-at-top
  for p in task.preprocessors:
    if isinstance(p, functools.partial) and p.func is preprocessors.apply_template:
      return p.keywords['template'].get_name()
  return None


def closest_names(name: str, names: Sequence[str], n: int = 8) -> list[str]:
  """Registered names closest to `name` (difflib), then those containing it."""
  close = difflib.get_close_matches(name, names, n=n, cutoff=0.4)
  contains = [c for c in sorted(names) if name.lower() in c.lower() and c not in close]
  return (close + contains)[:n]


def get_task(name: str):
  """The registered task or mixture; ValueError naming the closest names."""
  import seqio  # pylint: disable=g-import-not-at-top
  names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  if name not in names:
    close = closest_names(name, names)
    raise ValueError(f'Unknown task {name!r}. Closest registered names: {close or "none"}. '
                     '(Import the registry that defines it with --registry.)')
  return seqio.get_mixture_or_task(name)


def format_examples(name: str, split: str, num: int) -> str:
  """The text `main` prints for the first `num` examples of a task split."""
  task = get_task(name)
  template = template_of(task) if hasattr(task, 'preprocessors') else '(mixture)'
  lines = [f'task: {name}', f'template: {template}', f'split: {split}']
  ds = task.get_dataset(None, split=split, shuffle=False, use_cached=False)
  for i, ex in enumerate(ds.take(num).as_numpy_iterator()):
    def text(key):
      value = ex.get(key + '_pretokenized', ex.get(key))
      return value.decode('utf-8') if isinstance(value, bytes) else repr(value)
    lines.append(f'--- example {i}')
    if 'idx' in ex:
      lines.append(f'idx: {list(map(int, ex["idx"]))}  is_correct: {bool(ex["is_correct"])}')
    lines.append('inputs:\n' + text('inputs'))
    lines.append('targets:\n' + text('targets'))
    if 'answer_choices' in ex:
      lines.append('answer_choices: ' + ' | '.join(c.decode('utf-8') for c in ex['answer_choices']))
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError('Usage: python -m spt_tasks.show TASK [--split validation] [-n 3]')
  for module in _REGISTRY.value:
    importlib.import_module(module)
  try:
    text = format_examples(argv[1], _SPLIT.value, _NUM.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(text)


def run() -> None:
  """Console entry point (`spt-show-task`)."""
  app.run(main)


if __name__ == '__main__':
  run()
