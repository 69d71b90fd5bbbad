"""Optimizers, learning-rate schedules and trainable-parameter masks (optax).

What trains is declared by regular expressions over '/'-joined parameter paths
(big_vision style), e.g. `encoder/soft_prompt/prompt` or
`encoder/layers_0/attention/query/kernel`. Frozen parameters go through
`optax.set_to_zero()` inside `optax.multi_transform`, so they get **no** optimizer state
(the masked inner optimizer only sees the trainable leaves) and the trainer leaves them
bit-identical (see `apply_updates`).

Presets (`TRAINABLE_PRESETS`): `full` (everything: backbone + prompts + memory; the paper's
multitask setting), `prompts_only` (soft prompt + memory bank, frozen backbone),
`memory_only`, `soft_prompt_only`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]

TRAINABLE_PRESETS: dict[str, tuple[str, ...]] = {
    'full': ('.*',),
    'prompts_only': (r'(.*/)?soft_prompt/.*', r'(.*/)?memory_bank/.*'),
    'memory_only': (r'(.*/)?memory_bank/.*',),
    'soft_prompt_only': (r'(.*/)?soft_prompt/.*',),
}

TRAINABLE_LABEL = 'trainable'
FROZEN_LABEL = 'frozen'


# ------------------------------------------------------------------------------------------
# Schedules.
# ------------------------------------------------------------------------------------------
def constant_schedule(learning_rate: float, warmup_steps: int = 0) -> Schedule:
  """`learning_rate` after an optional linear warm-up from 0 over `warmup_steps`."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / warmup_steps) if warmup_steps > 0 else 1.0
    return jnp.asarray(learning_rate, jnp.float32) * warm
  return schedule


def rsqrt_schedule(learning_rate: float = 1.0, warmup_steps: int = 10_000,
                   linear_warmup: bool = False) -> Schedule:
  """T5's inverse-square-root decay: `lr / sqrt(max(step, warmup_steps))`.

  With `linear_warmup=False` (T5's own recipe) the rate is constant at
  `lr / sqrt(warmup_steps)` during warm-up; with `True` it ramps linearly from 0 to that.
  """
  if warmup_steps <= 0:
    raise ValueError(f'rsqrt_schedule needs warmup_steps > 0, got {warmup_steps}.')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = learning_rate * jax.lax.rsqrt(jnp.maximum(step, float(warmup_steps)))
    if linear_warmup:
      lr = lr * jnp.minimum(1.0, (step + 1.0) / warmup_steps)
    return lr
  return schedule


def linear_decay_schedule(learning_rate: float, decay_steps: int, end_learning_rate: float = 0.0,
                          warmup_steps: int = 0) -> Schedule:
  """Linear warm-up over `warmup_steps`, then linear decay to `end_learning_rate` at `decay_steps`."""
  if decay_steps <= warmup_steps:
    raise ValueError(f'linear_decay_schedule: decay_steps={decay_steps} must exceed '
                     f'warmup_steps={warmup_steps}.')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
    lr = learning_rate + (end_learning_rate - learning_rate) * frac
    if warmup_steps > 0:
      lr = lr * jnp.minimum(1.0, (step + 1.0) / warmup_steps)
    return lr
  return schedule


def create_schedule(name: str = 'constant', learning_rate: float = 1e-3, warmup_steps: int = 0,
                    decay_steps: int | None = None, end_learning_rate: float = 0.0,
                    linear_warmup: bool = False) -> Schedule:
  """Schedule by name: `constant`, `rsqrt` or `linear_decay` (gin: `optim.create_schedule`)."""
  if name == 'constant':
    return constant_schedule(learning_rate, warmup_steps)
  if name == 'rsqrt':
    return rsqrt_schedule(learning_rate, warmup_steps or 10_000, linear_warmup)
  if name == 'linear_decay':
    if decay_steps is None:
      raise ValueError('linear_decay schedule needs decay_steps (usually TRAIN_STEPS).')
    return linear_decay_schedule(learning_rate, decay_steps, end_learning_rate, warmup_steps)
  raise ValueError(f"Unknown schedule {name!r}; use 'constant', 'rsqrt' or 'linear_decay'.")


# ------------------------------------------------------------------------------------------
# Optimizers.
# ------------------------------------------------------------------------------------------
def adafactor(learning_rate: float | Schedule, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, factored: bool = True,
              min_dim_size_to_factor: int = 128,
              multiply_by_parameter_scale: bool = False) -> optax.GradientTransformation:
  """Adafactor as in T5 / T0: decay 0.8, factored second moments, no parameter scaling,
  update clipping at RMS 1.0, no momentum."""
  return optax.adafactor(
      learning_rate=learning_rate, decay_rate=decay_rate,
      clipping_threshold=clipping_threshold, factored=factored,
      min_dim_size_to_factor=min_dim_size_to_factor,
      multiply_by_parameter_scale=multiply_by_parameter_scale, momentum=None)


def adamw(learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay."""
  return optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)


# ------------------------------------------------------------------------------------------
# Trainable masks.
# ------------------------------------------------------------------------------------------
def param_path(path: tuple[Any, ...]) -> str:
  """'/'-joined name of a pytree path, e.g. `encoder/soft_prompt/prompt`."""
  parts = []
  for p in path:
    if isinstance(p, jax.tree_util.DictKey):
      parts.append(str(p.key))
    elif isinstance(p, jax.tree_util.GetAttrKey):
      parts.append(str(p.name))
    elif isinstance(p, jax.tree_util.SequenceKey):
      parts.append(str(p.idx))
    else:
      parts.append(str(p))
  return '/'.join(parts)


def flatten_paths(params: Any) -> dict[str, Any]:
  """`{'/'-joined path: leaf}` for every leaf of `params`."""
  return {param_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def resolve_trainable(trainable: str | Sequence[str]) -> tuple[str, ...]:
  """A preset name or a list of regexes → regexes (each must fully match a path)."""
  if isinstance(trainable, str):
    if trainable in TRAINABLE_PRESETS:
      return TRAINABLE_PRESETS[trainable]
    try:
      re.compile(trainable)
    except re.error as e:
      raise ValueError(f'trainable={trainable!r} is neither a preset '
                       f'({sorted(TRAINABLE_PRESETS)}) nor a valid regex: {e}') from e
    return (trainable,)
  return tuple(trainable)


def trainable_mask(params: Any, trainable: str | Sequence[str] = 'full') -> Any:
  """Tree of bools like `params`: True where a regex of `trainable` fully matches the path.

  Raises:
    ValueError: if nothing matches (e.g. `prompts_only` on a model without prompts).
  """
  patterns = [re.compile(p) for p in resolve_trainable(trainable)]
  mask = jax.tree_util.tree_map_with_path(
      lambda path, _: any(p.fullmatch(param_path(path)) for p in patterns), params)
  if not any(jax.tree_util.tree_leaves(mask)):
    names = list(flatten_paths(params))[:8]
    raise ValueError(
        f'trainable={trainable!r} matches no parameter (patterns fully match "/"-joined '
        f'paths such as {names}). Use a preset {sorted(TRAINABLE_PRESETS)} that fits the model '
        '(prompts_only needs a soft prompt or memory bank) or fix the regexes.')
  return mask


def create_optimizer(
    params: Any,
    optimizer: str = 'adafactor',
    learning_rate: float | Schedule = 1e-3,
    trainable: str | Sequence[str] = 'full',
    grad_clip_norm: float | None = None,
    adafactor_kwargs: dict[str, Any] | None = None,
    adamw_kwargs: dict[str, Any] | None = None,
) -> tuple[optax.GradientTransformation, Any]:
  """Builds the optimizer over the trainable subset of `params`.

  Args:
    params: (abstract) parameter tree, unboxed; only its structure and paths are used.
    optimizer: `adafactor` (T5 settings) or `adamw`.
    learning_rate: float or schedule (step → lr).
    trainable: preset name or regexes; see `trainable_mask`.
    grad_clip_norm: clip trainable gradients to this global norm (None: no clipping).
    adafactor_kwargs / adamw_kwargs: overrides for `adafactor()` / `adamw()`.

  Returns:
    `(tx, mask)`: the transformation (frozen leaves → `set_to_zero`, no state) and the
    boolean trainable mask.
  """
  mask = trainable_mask(params, trainable)
  if optimizer == 'adafactor':
    base = adafactor(learning_rate, **(adafactor_kwargs or {}))
  elif optimizer == 'adamw':
    base = adamw(learning_rate, **(adamw_kwargs or {}))
  else:
    raise ValueError(f"Unknown optimizer {optimizer!r}; use 'adafactor' or 'adamw'.")
  chain = [base] if grad_clip_norm is None else [optax.clip_by_global_norm(grad_clip_norm), base]
  labels = jax.tree.map(lambda m: TRAINABLE_LABEL if m else FROZEN_LABEL, mask)
  tx = optax.multi_transform(
      {TRAINABLE_LABEL: optax.chain(*chain), FROZEN_LABEL: optax.set_to_zero()}, labels)
  return tx, mask


def apply_updates(params: Any, updates: Any, mask: Any) -> Any:
  """`params + updates` on trainable leaves; frozen leaves are returned untouched (bit-identical,
  even `-0.0`, which `p + 0.0` would turn into `+0.0`)."""
  return jax.tree.map(
      lambda p, u, m: (p + u.astype(p.dtype)) if m else p, params, updates, mask)


def global_norm(tree: Any, mask: Any | None = None) -> jax.Array:
  """L2 norm over the leaves of `tree` (only where `mask` is True, if given)."""
  leaves = jax.tree.leaves(tree) if mask is None else [
      x for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(mask)) if m]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def count_params(tree: Any, mask: Any | None = None) -> int:
  """Number of scalars in `tree` (only masked-True leaves if `mask` given)."""
  leaves = jax.tree.leaves(tree)
  flags = jax.tree.leaves(mask) if mask is not None else [True] * len(leaves)
  return int(sum(int(x.size) for x, m in zip(leaves, flags) if m))
