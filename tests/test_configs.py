"""Config groups (spt_jax/configs.py, partitioning.Partitioner): what gin builds from the gin
files and macros, and that the entry points take them instead of flat settings."""
import inspect
import os

import gin
import pytest

from spt_jax import cli
from spt_jax import configs
from spt_jax import evaluate
from spt_jax import gin_configurables
from spt_jax import infer
from spt_jax import partitioning
from spt_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN = os.path.join(ROOT, 'gin')


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(files, bindings=()):
  cli.parse_gin(files, list(bindings), [GIN], finalize=False)


def _build(scope, configurable):
  with gin.config_scope(scope):
    return configurable()


@pytest.mark.parametrize('entry_point', [train.train, evaluate.evaluate])
def test_entry_points_take_at_most_15_parameters(entry_point):
  assert len(inspect.signature(entry_point).parameters) <= 15


def test_train_gin_builds_the_groups_from_the_local_run_files():
  _parse(['methods/spt.gin', 'runs/local.gin'], ["MODEL_DIR = '/tmp/x'"])
  data = _build('train', gin_configurables.DatasetConfig)
  assert (data.mixture_or_task_name, data.batch_size, data.split) == (
      'spt_sample_train_premixed', 16, 'train')
  assert data.task_feature_lengths == {'inputs': 128, 'targets': 32}
  assert data.use_cached and not data.pack and not data.autotune
  opt = gin_configurables.OptimizerConfig()
  assert (opt.optimizer, opt.learning_rate, opt.trainable) == ('adafactor', 1e-3, 'full')
  save = gin_configurables.SaveCheckpointConfig()
  assert (save.every_steps, save.keep, save.restore_fallback) == (100, 2, False)
  start = _build('train', gin_configurables.RestoreCheckpointConfig)
  assert (start.path, start.format) == (None, 'hf')
  assert gin_configurables.Partitioner().num_partitions == 1
  assert gin.query_parameter('%TRAIN_STEPS') == 300


def test_eval_gin_builds_the_eval_dataset_and_checkpoint():
  _parse(['runs/eval.gin', 'methods/spt.gin', 'runs/local.gin'],
         ["CHECKPOINT_PATH = '/tmp/run'", 'CHECKPOINT_STEP = 100'])
  data = _build('evaluate', gin_configurables.DatasetConfig)
  assert (data.mixture_or_task_name, data.split, data.batch_size, data.num_examples,
          data.seed, data.use_cached) == ('spt_sample_heldout_score_eval', 'validation', 32, 200,
                                          42, True)
  ckpt = _build('evaluate', gin_configurables.RestoreCheckpointConfig)
  assert (ckpt.path, ckpt.format, ckpt.step) == ('/tmp/run', 'orbax', 100)


def test_one_partitioner_binding_sets_the_mesh_of_train_evaluate_and_infer():
  _parse(['runs/eval.gin', 'methods/spt.gin', 'runs/local.gin', 'runs/infer.gin'],
         ["CHECKPOINT_PATH = '/tmp/run'", "OUTPUT_FILE = '/tmp/p.jsonl'",
          'partitioning.Partitioner.num_partitions = 2'])
  for configurable in ('train.train', 'evaluate.evaluate', 'infer.infer'):
    assert gin.query_parameter(f'{configurable}.partitioner').selector == (
        'partitioning.Partitioner')
  assert gin_configurables.Partitioner().num_partitions == 2


def test_entry_points_default_to_the_same_partitioner():
  for entry_point in (train.train, evaluate.evaluate, infer.infer):
    default = inspect.signature(entry_point).parameters['partitioner'].default
    assert default == partitioning.Partitioner()


def test_partitioner_uses_a_given_mesh_and_builds_one_otherwise():
  mesh = partitioning.create_mesh(num_partitions=2)
  assert partitioning.Partitioner(mesh=mesh).create_mesh() is mesh
  built = partitioning.Partitioner(num_partitions=2).create_mesh()
  assert dict(built.shape) == dict(mesh.shape)
  assert partitioning.Partitioner(parameter_partitioning_dims=2).rules == (
      partitioning.standard_logical_axis_rules(1, 2))


def test_dataset_config_names_a_bad_setting():
  with pytest.raises(ValueError, match='mixture_or_task_name is empty: set the '
                     'MIXTURE_OR_TASK_NAME'):
    configs.DatasetConfig('')
  with pytest.raises(ValueError, match="input_sharding='replicate'; expected one of "
                     r"\('shard_info', 'slice_global_batch'\)"):
    configs.DatasetConfig('t', input_sharding='replicate')
