"""Few-shot training tasks of the embedded sample mixture's HELD-OUT datasets.

The method-validity experiment's transfer stage (paper experiment (ii) in miniature):
a run trained on the sample training clusters (`spt_tasks/sample.py`) is tuned, backbone
frozen, on a few TRAINING rows of each held-out dataset (super_glue/rte, super_glue/copa,
yelp_polarity) and then evaluated on their validation rows by rank classification
(`spt_sample_heldout_score_eval`, unchanged). Validation never repeats a training example
(`sample.raw_examples`), so the evaluation stays held-out at the example level.

Built only from `spt_tasks.sample`'s public pieces (generators via `raw_examples`, the
held-out templates via `dataset_templates`, the vocabulary), so it registers nothing in
that module and renders each row exactly as the held-out evaluation does:

* one seqio task per held-out template, e.g.
  `sample_fewshot_super_glue_rte_GPT_3_style`, over the FIRST `num_shots` training rows
  of its dataset (split 'train' only; the generators draw labels uniformly, so the first
  rows are close to balanced);
* mixture `spt_sample_heldout_fewshot_train` (`NUM_SHOTS` = 32 rows per dataset): each
  dataset weighs the same (rate `num_shots`), split evenly over its templates as T0 does,
  so every row is shown under all of its dataset's templates over time.

`register(num_shots)` registers another size (`spt_sample_heldout_fewshot<N>_train`).
"""
from __future__ import annotations

import functools
from typing import Optional

import seqio

from spt_tasks import preprocessors
from spt_tasks import sample
from spt_tasks import templates as templates_lib

NUM_SHOTS = 32
TASK_PREFIX = 'sample_fewshot_'
MIXTURE = 'spt_sample_heldout_fewshot_train'

HELDOUT_DATASETS = tuple(d for d in sample.DATASETS if d.heldout)


def mixture_name(num_shots: int) -> str:
  """`spt_sample_heldout_fewshot_train` for `NUM_SHOTS`, else `..._fewshot<N>_train`."""
  return MIXTURE if num_shots == NUM_SHOTS else f'spt_sample_heldout_fewshot{num_shots}_train'


def fewshot_examples(name: str, num_shots: int) -> tuple[dict, ...]:
  """The first `num_shots` raw training rows of a held-out sample dataset."""
  rows = sample.raw_examples(name, 'train')
  if not 0 < num_shots <= len(rows):
    raise ValueError(f'num_shots must be in [1, {len(rows)}] for {name}, got {num_shots}.')
  return tuple(rows[:num_shots])


def _dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *, name: str,
                num_shots: int):
  """seqio FunctionDataSource dataset_fn: the few-shot rows as a tf.data.Dataset."""
  del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples itself.
  if split != 'train':
    raise ValueError(f'The few-shot tasks have only a train split, got {split!r}.')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  examples = fewshot_examples(name, num_shots)
  columns = {k: [ex[k] for ex in examples] for k in examples[0]}
  return tf.data.Dataset.from_tensor_slices(columns)


def task_name(spec: sample.SampleDataset, template_name: str, num_shots: int) -> str:
  prefix = TASK_PREFIX if num_shots == NUM_SHOTS else f'sample_fewshot{num_shots}_'
  return templates_lib.task_name(spec.dataset, spec.subset, template_name, prefix=prefix)


def register(num_shots: int = NUM_SHOTS) -> dict[str, list[str]]:
  """Registers the few-shot tasks and their mixture; returns `{dataset name: [task names]}`.

  Safe to call again (tasks and mixture are replaced).
  """
  output_features = {  # As spt_tasks.sample (T0): no EOS on inputs, EOS on targets.
      'inputs': seqio.Feature(sample.SAMPLE_VOCABULARY, add_eos=False),
      'targets': seqio.Feature(sample.SAMPLE_VOCABULARY, add_eos=True)}
  tasks_by_dataset, mixture = {}, []
  for spec in HELDOUT_DATASETS:
    source = seqio.FunctionDataSource(
        functools.partial(_dataset_fn, name=spec.name, num_shots=num_shots), splits=('train',),
        num_input_examples={'train': num_shots})
    names = []
    infos = sample.dataset_templates(spec)   # the held-out evaluation's templates
    for info in infos:
      template = templates_lib.get_template(spec.dataset, spec.subset, info.name)
      name = task_name(spec, info.name, num_shots)
      render = functools.partial(preprocessors.apply_template, template=template,
                                 counter_name=name)
      seqio.TaskRegistry.remove(name)
      seqio.TaskRegistry.add(
          name, source=source,
          preprocessors=[render, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
          output_features=output_features, metric_fns=[])
      names.append(name)
    # Every dataset weighs num_shots, split evenly over its templates.
    mixture += [(n, num_shots / len(names)) for n in names]
    tasks_by_dataset[spec.name] = names
  seqio.MixtureRegistry.remove(mixture_name(num_shots))
  seqio.MixtureRegistry.add(mixture_name(num_shots), mixture)
  return tasks_by_dataset


TASKS_BY_DATASET = register(NUM_SHOTS)
TASKS = tuple(n for names in TASKS_BY_DATASET.values() for n in names)
