"""Adapter that runs spt_jax's network under T5X's own trainer (`python -m t5x.train`).

T5X's `FlaxOptimTrainState` and `PjitPartitioner` read each parameter's logical axes from a
separate `params_axes` collection (what `flax.linen.partitioning.param_with_axes` emits) and
expect raw arrays in `params`. spt_jax's `network.Transformer` instead boxes its parameters
with flax's newer metadata API (`nn.with_logical_partitioning`), so `init` returns
`nn.LogicallyPartitioned` leaves and no `params_axes`.

`SptT5XTransformer` is `network.Transformer` with its prefix given as a `prompt_config`
(gin: `t5x_adapter.SptT5XTransformer.prompt_config = @prompts.PromptConfig()`, turned into
`prompts.PromptPrefix`); same `encode` / `decode` / `__call__`, same parameter tree, so
checkpoints move between the two trainers. It refuses packed batches (segment ids) when it
has prompts, as spt_jax's model does (T5X's trainer calls the module directly), and `init`
returns T5X's layout:

  params       raw arrays, e.g. params/encoder/memory_bank/values           [M, L_m, d]
  params_axes  AxisMetadata, e.g. params_axes/encoder/memory_bank/values_axes
               names=('memory', 'memory_length', 'embed')

and drops the `retrieval` collection that `MemoryBank` sows (T5X would otherwise carry it as
a mutable collection; it is only statistics). T5X applies the module with `params` only, so
`sow` is a no-op there and the optional key-pull loss cannot reach T5X's loss: a config with
`key_loss_weight > 0` is refused with an error rather than silently ignored.

`match_any(regexes)` gives T5X's `MultiOptimizer` / flax `ModelParamTraversal` a filter over
'/'-joined parameter paths (used by prompts_only.gin to train only the soft prompt and the
memory bank).

`absolute_path(path)` resolves a (possibly relative) MODEL_DIR against the working directory:
orbax, which T5X checkpoints with, refuses relative paths, and fails only in a background
thread at the first save (gin/t5x/local.gin binds `train.model_dir` through it).

`task_vocabulary(mixture_or_task_name)` is the vocabulary of a registered seqio task or
mixture, so that the model's vocabulary is the task's by construction (T5X's
`verify_matching_vocabs` compares the SentencePiece file path as well as its contents).

The T5X gin files (gin/t5x/) import it as `from spt_jax import t5x_adapter`. It needs flax
and spt_jax, not t5x, so it imports (and is tested) without t5x installed.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import flax
import flax.linen as nn
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning

from spt_jax import models
from spt_jax import network
from spt_jax import prompts

AXES_SUFFIX = '_axes'


def to_t5x_variables(variables: Mapping[str, Any]) -> flax.core.FrozenDict:
  """Boxed flax variables -> T5X layout (raw `params` + `params_axes`).

  Args:
    variables: output of `network.Transformer.init`: collection -> nested dict whose
      `params` leaves are `nn.LogicallyPartitioned` boxes.

  Returns:
    A FrozenDict with `params` unboxed, `params_axes` holding one
    `flax.linen.partitioning.AxisMetadata` per parameter (key `<name>_axes`), the other
    collections unboxed, and the `retrieval` statistics collection removed.

  Raises:
    ValueError: a parameter carries no logical axis names (T5X could not partition it).
  """
  variables = dict(flax.core.unfreeze(variables))
  variables.pop(prompts.RETRIEVAL_COLLECTION, None)
  out = {}
  for collection, tree in variables.items():
    if collection.endswith(AXES_SUFFIX):
      out[collection] = tree
      continue
    flat = traverse_util.flatten_dict(tree)
    if collection == 'params':
      axes = {}
      for path, leaf in flat.items():
        if not isinstance(leaf, nn.LogicallyPartitioned):
          raise ValueError(
              f"Parameter {'/'.join(path)} has no logical axis names; T5X needs them for "
              'every parameter. Declare it with nn.with_logical_partitioning in spt_jax.')
        axes[path[:-1] + (path[-1] + AXES_SUFFIX,)] = flax_partitioning.AxisMetadata(
            names=tuple(leaf.names))
      out['params_axes'] = traverse_util.unflatten_dict(axes)
    out[collection] = traverse_util.unflatten_dict(
        {path: leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf
         for path, leaf in flat.items()})
  return flax.core.freeze(out)


class SptT5XTransformer(network.Transformer):
  """`network.Transformer` whose `init` emits T5X's `params` + `params_axes` layout.

  Attributes:
    prompt_config: the prompts (None: plain T5); sets `prefix` to `PromptPrefix(it)`.
  """
  prompt_config: Optional[prompts.PromptConfig] = None

  def __post_init__(self):
    if self.prompt_config is not None and self.prefix is None:
      object.__setattr__(self, 'prefix', prompts.PromptPrefix(self.prompt_config))
    super().__post_init__()

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
             enable_dropout=True):
    models.check_unpacked(self.prefix_length, encoder_segment_ids is not None)
    return super().encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout=enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
             enable_dropout=True, decode=False, max_decode_length=None):
    models.check_unpacked(self.prefix_length, encoder_segment_ids is not None)
    return super().decode(encoded, encoder_input_tokens, decoder_input_tokens,
                          decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                          decoder_positions, enable_dropout=enable_dropout, decode=decode,
                          max_decode_length=max_decode_length)

  def _check_t5x_compatible(self):
    if self.prompt_config is not None and self.prompt_config.key_loss_weight:
      raise ValueError(
          f'PromptConfig.key_loss_weight={self.prompt_config.key_loss_weight} has no effect '
          "under T5X's trainer (its loss does not read the sown key loss). Set "
          'prompts.PromptConfig.key_loss_weight = 0.0, or train with python -m spt_jax.train.')

  def init(self, rngs, *args, **kwargs):  # pylint: disable=arguments-differ
    self._check_t5x_compatible()
    return to_t5x_variables(super().init(rngs, *args, **kwargs))


def match_any(regexes: Sequence[str]) -> Callable[[str, Any], bool]:
  """Filter for `flax.traverse_util.ModelParamTraversal`: path matches any regex.

  Paths look like '/encoder/memory_bank/values' (flax's traversal puts a leading '/').
  """
  compiled = [re.compile(r) for r in regexes]
  if not compiled:
    raise ValueError('match_any needs at least one regex, e.g. [".*/soft_prompt/.*"].')

  def filter_fn(path: str, value: Any) -> bool:
    del value
    return any(r.fullmatch(path) for r in compiled)

  return filter_fn


def absolute_path(path: str) -> str:
  """`path` made absolute against the working directory; URLs (gs://...) unchanged.

  Raises:
    ValueError: `path` is empty or not a string (an unset MODEL_DIR, for instance).
  """
  if not isinstance(path, str) or not path:
    raise ValueError(f'absolute_path needs a non-empty directory path, got {path!r}: set '
                     "--gin.MODEL_DIR=\"'/tmp/spt_t5x_local'\" (relative paths are fine).")
  if '://' in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def task_vocabulary(mixture_or_task_name: str, feature: str = 'targets') -> Any:
  """The `feature` vocabulary of a registered seqio task or mixture.

  Raises:
    ValueError: the name is not registered (its registry module not imported), or it has no
      such output feature.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  try:
    task = seqio.get_mixture_or_task(mixture_or_task_name)
  except ValueError as e:
    raise ValueError(
        f'task_vocabulary: {mixture_or_task_name!r} is not a registered seqio task or mixture; '
        'import its registry in the gin file first (e.g. `import spt_tasks.sample`).') from e
  features = task.output_features
  if feature not in features:
    raise ValueError(f'task_vocabulary: {mixture_or_task_name!r} has output features '
                     f'{sorted(features)}, not {feature!r}.')
  return features[feature].vocabulary
