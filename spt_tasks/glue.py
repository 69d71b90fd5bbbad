"""GLUE, prompted: the training mixture of the GLUE → SuperGLUE experiment.

Rows of `datasets.csv` with the `glue` role (cola, sst2, mrpc, qqp, stsb, mnli,
qnli, rte, wnli; TFDS `glue/*:2.0.0`, whose fields equal HF's). Every usable
promptsource template is a task (names and features as `spt_tasks.t0`); fixed-choice
templates are evaluated on class ids with T5's GLUE metrics (accuracy; F1 for
MRPC / QQP).

Mixture `spt_glue_train`: all those tasks at T0's rates (size-proportional,
datasets over 500k capped and split over their templates; `spt_tasks.mixing`).
"""
from __future__ import annotations

import seqio

from spt_tasks import sources
from spt_tasks import t0

GLUE_TRAIN_MIXTURE = 'spt_glue_train'


def glue_specs() -> list[sources.DatasetSpec]:
  return sources.specs_with_role('glue')


def register() -> None:
  rates = t0.t0_task_rates(glue_specs())
  if GLUE_TRAIN_MIXTURE in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(GLUE_TRAIN_MIXTURE)
  seqio.MixtureRegistry.add(GLUE_TRAIN_MIXTURE, [(t, float(r)) for t, r in rates.items()])


register()
