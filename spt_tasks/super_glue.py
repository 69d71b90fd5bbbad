"""SuperGLUE, prompted: the fine-tuning / evaluation side of GLUE → SuperGLUE.

Rows of `datasets.csv` with the `super_glue` role (boolq, cb, copa, multirc,
record, rte, wic, wsc.fixed; TFDS `super_glue/*:1.0.2`, fields equal HF's).

Mixture per task, `spt_super_glue_{task}` (`wsc.fixed` → `wsc_fixed`): the
original-task templates of that dataset at equal rates, with `train` and
`validation` splits (test labels are hidden). Metrics are SuperGLUE's, on the
class id of the generated answer (`spt_tasks.t0.task_metrics`): accuracy (BoolQ,
COPA, RTE, WiC, WSC), accuracy + macro-F1 (CB), accuracy + F1 (MultiRC), and
SQuAD-style EM / F1 (ReCoRD).
"""
from __future__ import annotations

import seqio

from spt_tasks import sources
from spt_tasks import t0


def super_glue_specs() -> list[sources.DatasetSpec]:
  return sources.specs_with_role('super_glue')


def mixture_name(spec: sources.DatasetSpec) -> str:
  return 'spt_super_glue_' + spec.subset.replace('.', '_')


def register() -> None:
  for spec in super_glue_specs():
    names = t0.task_names(spec, original_task=True)
    if not names:
      raise ValueError(f'{spec.key} has no original-task template.')
    name = mixture_name(spec)
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, names, default_rate=1.0)


register()
