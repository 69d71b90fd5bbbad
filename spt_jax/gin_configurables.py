"""Gin registration of spt_jax's classes and functions: the package's one gin registry.

The library modules know nothing of gin; this module registers them (with
`gin.external_configurable`, which leaves the library's own objects untouched) under the
short module names the gin files use:

  network.T5Config, prompts.PromptConfig, runner.create_model, runner.initialize_distributed,
  optim.create_schedule, partitioning.standard_logical_axis_rules, train (the trainer;
  `train.train_steps = ...`), evaluate (`evaluate.output_dir = ...`),
  evaluate.eval_hook_factory (periodic evaluation while training), infer, and the config
  groups configs.DatasetConfig / OptimizerConfig / RestoreCheckpointConfig /
  SaveCheckpointConfig and partitioning.Partitioner (spt_jax/configs.py).

Only the command line (`spt_jax.cli`, which parses the gin files) and gin files' `import`
lines import it, so it is imported once per process and registers each name once (Python's
module cache), also when an entry point runs as `python -m spt_jax.evaluate`. The
configurables of the seqio registries (`sample.with_vocabulary`, `spt_tasks.t0.*`, ...) are
registered by `spt_tasks.gin_configurables`.
"""
import gin

from spt_jax import configs
from spt_jax import evaluate as evaluate_lib
from spt_jax import infer as infer_lib
from spt_jax import network
from spt_jax import optim
from spt_jax import partitioning
from spt_jax import prompts
from spt_jax import runner
from spt_jax import train as train_lib

T5Config = gin.external_configurable(network.T5Config, module='network')
PromptConfig = gin.external_configurable(prompts.PromptConfig, module='prompts')
create_model = gin.external_configurable(runner.create_model, module='runner')
initialize_distributed = gin.external_configurable(runner.initialize_distributed,
                                                   module='runner')
create_schedule = gin.external_configurable(optim.create_schedule, module='optim')
standard_logical_axis_rules = gin.external_configurable(
    partitioning.standard_logical_axis_rules, module='partitioning')
train = gin.external_configurable(train_lib.train, name='train', module='train')
# Config groups (spt_jax/configs.py); a scope says whose they are: train/, evaluate/, infer/.
DatasetConfig = gin.external_configurable(configs.DatasetConfig, module='configs')
RestoreCheckpointConfig = gin.external_configurable(configs.RestoreCheckpointConfig,
                                                    module='configs')
SaveCheckpointConfig = gin.external_configurable(configs.SaveCheckpointConfig, module='configs')
OptimizerConfig = gin.external_configurable(configs.OptimizerConfig, module='configs')
Partitioner = gin.external_configurable(partitioning.Partitioner, module='partitioning')

evaluate = gin.external_configurable(evaluate_lib.evaluate, name='evaluate', module='evaluate')
eval_hook_factory = gin.external_configurable(evaluate_lib.eval_hook_factory,
                                              name='eval_hook_factory', module='evaluate')
infer = gin.external_configurable(infer_lib.infer, name='infer', module='infer')
