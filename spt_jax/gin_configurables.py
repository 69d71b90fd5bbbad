"""Gin registration of library classes and functions.

The library modules (network, prompts, models, optim, partitioning) know nothing of gin;
this module registers them under short module names used by the gin files:

  network.T5Config, prompts.PromptConfig, runner.create_model, optim.create_schedule,
  optim.adafactor / optim.adamw, partitioning.standard_logical_axis_rules,
  runner.initialize_distributed, train (the trainer; `train.train_steps = ...`), and the config
  groups configs.DatasetConfig / OptimizerConfig / RestoreCheckpointConfig /
  SaveCheckpointConfig and partitioning.Partitioner.

Import it (`runner.parse_gin` does) before parsing gin files. Registering twice in one
process is avoided by importing this module once (Python's module cache).
"""
import gin

from spt_jax import configs
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

