"""Shared helpers for the trainer tests: a tiny deterministic seqio task and tiny models.

The task `spt_trainer_test_copy` is a copy task over a fixed pseudo-random word stream
(learnable in a few steps by a tiny T5), built on seqio's offline test vocabulary.
"""

import numpy as np
import seqio
import tensorflow as tf
from seqio import test_utils

from spt_jax import network
from spt_jax import prompts
from spt_jax import runner

TASK = 'spt_trainer_test_copy'
FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}
_WORDS = ('the', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'cat', 'sat')


def _examples(split, shuffle_files=False, seed=None):
  del shuffle_files, seed
  rng = np.random.RandomState(0 if split == 'train' else 1)
  inputs, targets = [], []
  for _ in range(512):
    words = [_WORDS[i] for i in rng.randint(0, len(_WORDS), size=3)]
    inputs.append('copy: ' + ' '.join(words))
    targets.append(words[0])
  return tf.data.Dataset.from_tensor_slices({'inputs': inputs, 'targets': targets})


def register_task():
  if TASK in seqio.TaskRegistry.names():
    return
  vocab = test_utils.sentencepiece_vocab()
  seqio.TaskRegistry.add(
      TASK,
      source=seqio.FunctionDataSource(_examples, splits=('train', 'validation')),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={'inputs': seqio.Feature(vocab, add_eos=True),
                       'targets': seqio.Feature(vocab, add_eos=True)})


# At import, so that a gin file can register the task with `import train_testlib`
# (tests/gin/fault_trials.gin).
register_task()

TINY = network.T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                        num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
SPT = prompts.PromptConfig(soft_prompt_length=4, memory_size=16, memory_length=2, top_k=2)
PT = prompts.PromptConfig(soft_prompt_length=4, memory_size=0)


def tiny_model(prompt_config=SPT, dropout_rate=0.0, **kw):
  import dataclasses  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(TINY, dropout_rate=dropout_rate, **kw)
  return runner.create_model(cfg, prompt_config)


def read_metrics(model_dir):
  """{step: record} from metrics.jsonl, the last record per step winning (resumes append)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  out = {}
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    for line in f:
      rec = json.loads(line)
      if rec['step'] >= 0 and 'loss' in rec:
        out[rec['step']] = rec
  return out


def main(argv):
  """Subprocess entry: `python tests/train_testlib.py MODEL_DIR STEPS [key=value ...]`.

  Trains the tiny SPT model on the copy task on one device (float32), the same as the
  in-process reference runs of tests/test_train.py.
  """
  import ast  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  register_task()
  kwargs = dict(arg.split('=', 1) for arg in argv[3:])
  kwargs = {k: ast.literal_eval(v) for k, v in kwargs.items()}
  dropout = kwargs.pop('dropout_rate', 0.1)
  distributed = kwargs.pop('distributed', False)
  if distributed:
    runner.initialize_distributed()
    mesh = partitioning.create_mesh()
  else:
    mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  run_train(**reference_kwargs(argv[1], int(argv[2]), dropout), mesh=mesh, **kwargs)


# Which config group (spt_jax/configs.py, partitioning.Partitioner) a run setting belongs
# to, and its field name there: the tests describe a run by its settings, as the gin macros do.
_GROUPS = {
    'dataset_cfg': ('DatasetConfig', {
        'mixture_or_task_name': 'mixture_or_task_name',
        'task_feature_lengths': 'task_feature_lengths', 'batch_size': 'batch_size',
        'use_cached_tasks': 'use_cached', 'pack': 'pack', 'shuffle': 'shuffle', 'seed': 'seed',
        'input_sharding': 'input_sharding', 'pipeline_autotune': 'autotune'}),
    'optimizer_cfg': ('OptimizerConfig', {
        k: k for k in ('optimizer', 'learning_rate', 'learning_rate_schedule', 'trainable',
                       'grad_clip_norm', 'adafactor_kwargs', 'num_microbatches',
                       'sum_microbatch_grads')}),
    'initial_checkpoint_cfg': ('RestoreCheckpointConfig', {
        'initial_checkpoint_path': 'path', 'initial_checkpoint_format': 'format',
        'init_prompts_from_embedding': 'reinit_prompts'}),
    'checkpoint_cfg': ('SaveCheckpointConfig', {
        'save_every_steps': 'every_steps', 'keep_checkpoints': 'keep',
        'save_initial_checkpoint': 'save_initial', 'async_checkpointing': 'async_save',
        'restore_fallback': 'restore_fallback'}),
    'partitioner': ('Partitioner', {
        k: k for k in ('num_partitions', 'mesh_shape', 'activation_partitioning_dims',
                       'parameter_partitioning_dims', 'mesh')}),
}


def train_args(**settings):
  """`train.train` keyword arguments (config groups) from flat run settings."""
  from spt_jax import configs, partitioning  # pylint: disable=g-import-not-at-top
  classes = {'DatasetConfig': configs.DatasetConfig, 'OptimizerConfig': configs.OptimizerConfig,
             'RestoreCheckpointConfig': configs.RestoreCheckpointConfig,
             'SaveCheckpointConfig': configs.SaveCheckpointConfig,
             'Partitioner': partitioning.Partitioner}
  args = {}
  for arg, (cls, fields) in _GROUPS.items():
    values = {field: settings.pop(key) for key, field in fields.items() if key in settings}
    if arg == 'initial_checkpoint_cfg':
      values.setdefault('format', 'hf')   # the INITIAL_CHECKPOINT_FORMAT default
    if values or arg == 'dataset_cfg':
      args[arg] = classes[cls](**values)
  return {**settings, **args}


def run_train(**settings):
  """`train.train` of a run given by flat settings (see `train_args`)."""
  from spt_jax import train  # pylint: disable=g-import-not-at-top
  return train.train(**train_args(**settings))


def reference_kwargs(model_dir, steps, dropout_rate=0.1):
  return dict(model_dir=model_dir, mixture_or_task_name=TASK,
              task_feature_lengths=FEATURE_LENGTHS, train_steps=steps, batch_size=8,
              model=tiny_model(dropout_rate=dropout_rate), learning_rate=1e-2,
              save_every_steps=5, log_every_steps=1, async_checkpointing=False)


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  main(sys.argv)
