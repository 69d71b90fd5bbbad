"""T0's mixing rates: proportional to size, datasets over 500k examples capped.

T0 (Sanh et al. 2022, sec. 5; bigscience t-zero `seqio_tasks/tasks.py`) samples
each training task (one per dataset x template) in proportion to its number of
examples, "treating any dataset with over 500'000 examples as having 500'000 /
num_templates examples". In code, for a dataset with `train_size` examples and
`num_templates` templates, every one of its template tasks gets the rate

    train_size                          if train_size <= 500_000
    500_000 // num_templates            otherwise

So an uncapped dataset contributes `train_size` per template (each template task
holds the whole dataset, rendered once), and a capped one contributes 500k in
total, split evenly over its templates. `split_uncapped=True` gives the other
reading ("min(size, cap) split evenly over the templates" for every dataset).

Sizes come from `datasets.csv` (`train_size`: P3's training-split sizes, the
largest over the dataset's templates, i.e. before template-specific filtering;
GLUE's published sizes for GLUE rows).
"""
from __future__ import annotations

from typing import Mapping, Optional

MAX_EXAMPLES_PER_DATASET = 500_000


def t0_template_rate(train_size: int, num_templates: int,
                     cap: int = MAX_EXAMPLES_PER_DATASET,
                     split_uncapped: bool = False) -> int:
  """The mixing rate of one (dataset, template) task under T0's rule.

  Args:
    train_size: training examples of the dataset (>= 0).
    num_templates: number of templates (tasks) of the dataset in the mixture (> 0).
    cap: the per-dataset cap (T0: 500,000).
    split_uncapped: also divide uncapped datasets by `num_templates`.

  Returns:
    The rate (an example count) for each of the dataset's template tasks.

  Raises:
    ValueError: negative size, or no templates.
  """
  if train_size < 0:
    raise ValueError(f'train_size must be >= 0, got {train_size}.')
  if num_templates <= 0:
    raise ValueError(f'num_templates must be > 0, got {num_templates}.')
  if train_size > cap:
    return cap // num_templates
  return train_size // num_templates if split_uncapped else train_size


def t0_rates(dataset_sizes: Mapping[str, int],
             dataset_templates: Mapping[str, list[str]],
             cap: int = MAX_EXAMPLES_PER_DATASET,
             split_uncapped: bool = False) -> dict[str, int]:
  """Rates of every task: {task_name: rate}.

  Args:
    dataset_sizes: dataset key -> training examples.
    dataset_templates: dataset key -> its task names in the mixture.
    cap, split_uncapped: see `t0_template_rate`.

  Raises:
    ValueError: a dataset without a size, or a task listed under two datasets.
  """
  rates: dict[str, int] = {}
  for key, tasks in dataset_templates.items():
    if not tasks:
      continue
    if key not in dataset_sizes or dataset_sizes[key] is None:
      raise ValueError(f'No training size for dataset {key!r}: fill its train_size '
                       'column in spt_tasks/datasets.csv.')
    rate = t0_template_rate(dataset_sizes[key], len(tasks), cap, split_uncapped)
    for task in tasks:
      if task in rates:
        raise ValueError(f'Task {task!r} listed under two datasets.')
      rates[task] = rate
  return rates


def rate_fn(rates: Mapping[str, int], default: Optional[float] = None):
  """A seqio `default_rate` callable looking a task's rate up by name."""
  def fn(task) -> float:
    if task.name in rates:
      return float(rates[task.name])
    if default is None:
      raise KeyError(f'No mixing rate for task {task.name!r}.')
    return float(default)
  return fn
