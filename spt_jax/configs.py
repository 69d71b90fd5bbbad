"""Config groups of the entry points, built by gin and shared by train, evaluate and infer.

As T5X's `utils.DatasetConfig` / `RestoreCheckpointConfig` / `SaveCheckpointConfig`, each
group is one frozen dataclass that gin builds once from the T5X-style macros
(gin/runs/train.gin, eval.gin, infer.gin) and the entry points receive whole, so that a
setting has one name wherever it is used:

  train(dataset_cfg=DatasetConfig, optimizer_cfg=OptimizerConfig,
        initial_checkpoint_cfg=RestoreCheckpointConfig, checkpoint_cfg=SaveCheckpointConfig,
        partitioner=partitioning.Partitioner, ...)
  evaluate(dataset_cfg=DatasetConfig, checkpoint_cfg=RestoreCheckpointConfig,
           partitioner=partitioning.Partitioner, ...)
  infer(checkpoint_cfg=RestoreCheckpointConfig, partitioner=partitioning.Partitioner, ...)

A gin scope says whose dataset or checkpoint a group is, as in T5X: `train/configs.DatasetConfig`
(training data), `evaluate/configs.DatasetConfig` (evaluation data),
`train/configs.RestoreCheckpointConfig` (the pretrained start), `evaluate/` and `infer/`
(the checkpoint to read). The partitioner and the optimizer are unscoped: one binding
(`partitioning.Partitioner.num_partitions = 2`) applies to training and evaluation alike.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

INPUT_SHARDINGS = ('shard_info', 'slice_global_batch')


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """The seqio data an entry point reads.

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture.
    task_feature_lengths: `{'inputs': T, 'targets': L}`; None (evaluation only) means the
      longest example of the mixture.
    batch_size: global batch size (a multiple of the data-parallel size).
    split: dataset split.
    shuffle: shuffle the examples (training).
    seed: seqio's shuffle / mixing seed; a training run also seeds initialisation and dropout
      with it.
    use_cached: read seqio-cached tasks (`seqio.CacheDatasetPlaceholder` filled by a cache job).
    pack: pack several examples per row (training; not with prompts, see
      `EncoderDecoderModel.validate_features`).
    num_examples: evaluation / inference: the first N rows of each task (None: all).
    input_sharding: training on several hosts: 'shard_info' (each host reads its own shard of
      the stream) or 'slice_global_batch' (each host reads the whole stream and keeps its
      rows of every global batch); see `runner.create_dataset`.
    autotune: let tf.data tune the pipeline's parallelism (`runner.create_dataset`).
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int] | None = None
  batch_size: int = 128
  split: str = 'train'
  shuffle: bool = True
  seed: int = 0
  use_cached: bool = False
  pack: bool = False
  num_examples: int | None = None
  input_sharding: str = 'shard_info'
  autotune: bool = True

  def __post_init__(self):
    if not self.mixture_or_task_name:
      raise ValueError('DatasetConfig.mixture_or_task_name is empty: set the MIXTURE_OR_TASK_NAME '
                       '(training) or EVAL_MIXTURE (evaluation) macro.')
    if self.input_sharding not in INPUT_SHARDINGS:
      raise ValueError(f'DatasetConfig.input_sharding={self.input_sharding!r}; expected one of '
                       f'{INPUT_SHARDINGS}.')


@dataclasses.dataclass(frozen=True)
class RestoreCheckpointConfig:
  """A checkpoint to read: the pretrained start of a training run, or the one evaluated.

  Attributes:
    path: an spt_jax run directory (MODEL_DIR) or one of its `checkpoints/<step>`
      directories ('orbax'), a transformers T5 folder ('hf'), a T5X `checkpoint_<step>`
      directory or T5X model directory ('t5x'). None: no checkpoint (training from scratch).
    format: 'orbax' | 'hf' | 't5x' (`checkpoints.FORMATS`).
    step: with a run directory, which checkpoint (None: the latest).
    reinit_prompts: after an 'hf' / 't5x' import, redraw the sampled-vocabulary prompts and
      memory the checkpoint lacks from its pretrained embedding.
    init_seed: seeds the prompt / memory parameters a checkpoint lacks when nothing else
      seeds them (evaluation and inference of an 'hf' / 't5x' checkpoint).
  """
  path: str | None = None
  format: str = 'orbax'
  step: int | None = None
  reinit_prompts: bool = True
  init_seed: int = 0


@dataclasses.dataclass(frozen=True)
class SaveCheckpointConfig:
  """When a training run writes checkpoints, how many it keeps, and how it resumes.

  Attributes:
    every_steps: periodic checkpoint interval (the final step is always saved).
    keep: how many checkpoints to keep (None: all).
    save_initial: also save the state before the first step, as step 0 (a fresh run only):
      the initialised or imported parameters, e.g. to evaluate the starting point. Counts
      towards `keep`.
    async_save: orbax writes in a background thread (saves stay atomic; see train_state.py).
    restore_fallback: when the latest checkpoint cannot be read back (a damaged file), move it
      to MODEL_DIR/corrupt_checkpoints and resume from the newest earlier one that can. Off
      by default: the run stops with an error naming the step and the file.
  """
  every_steps: int = 1000
  keep: int | None = 3
  save_initial: bool = False
  async_save: bool = True
  restore_fallback: bool = False


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer of a training run and which parameters it trains.

  Attributes:
    optimizer: 'adafactor' (T5) or 'adamw'.
    learning_rate: constant rate when `learning_rate_schedule` is None.
    learning_rate_schedule: step -> rate (`optim.create_schedule`).
    trainable: preset (`full`, `prompts_only`, `memory_only`, `soft_prompt_only`) or regexes.
    grad_clip_norm: global-norm clipping of the trainable gradients (None: off).
    adafactor_kwargs: settings of `optim.adafactor` (None: T5 / T0's); T5X's Adafactor is
      `{'multiply_by_parameter_scale': True, 'factor_rules': 't5x'}`.
    num_microbatches: gradient accumulation over this many microbatches per step.
    sum_microbatch_grads: how microbatch gradients combine (`train.make_train_step`). None:
      summed when the loss is a sum and averaged when it is normalised, so that both equal
      the full-batch gradient; True: always summed, as T5X's trainer does.
  """
  optimizer: str = 'adafactor'
  learning_rate: float = 1e-3
  learning_rate_schedule: Callable[[Any], Any] | None = None
  trainable: str | Sequence[str] = 'full'
  grad_clip_norm: float | None = None
  adafactor_kwargs: Mapping[str, Any] | None = None
  num_microbatches: int = 1
  sum_microbatch_grads: bool | None = None
