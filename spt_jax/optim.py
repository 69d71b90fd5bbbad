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

Adafactor is optax's with T5 / T0's settings by default; T5X's conventions (parameter-scale
multiplication, factorisation by logical axis names) and T5X's learning-rate step counting
are selectable (`adafactor`, `create_schedule`), and with them a step of `spt_jax.train`
equals T5X's (tests/test_t5x_equivalence.py, gin/t5x/README.md "Trainer equivalence").
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
def _warmup(step: jax.Array, warmup_steps: int, warmup_offset: float) -> jax.Array:
  """Linear warm-up factor `min(1, (step + warmup_offset) / warmup_steps)` (see `create_schedule`)."""
  return jnp.minimum(1.0, (step + warmup_offset) / warmup_steps)


def constant_schedule(learning_rate: float, warmup_steps: int = 0,
                      warmup_offset: float = 1.0) -> Schedule:
  """`learning_rate` after an optional linear warm-up from 0 over `warmup_steps`."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = _warmup(step, warmup_steps, warmup_offset) if warmup_steps > 0 else 1.0
    return jnp.asarray(learning_rate, jnp.float32) * warm
  return schedule


def rsqrt_schedule(learning_rate: float = 1.0, warmup_steps: int = 10_000,
                   linear_warmup: bool = False, warmup_offset: float = 1.0) -> Schedule:
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
      lr = lr * _warmup(step, warmup_steps, warmup_offset)
    return lr
  return schedule


def linear_decay_schedule(learning_rate: float, decay_steps: int, end_learning_rate: float = 0.0,
                          warmup_steps: int = 0, warmup_offset: float = 1.0) -> Schedule:
  """Linear warm-up over `warmup_steps`, then linear decay to `end_learning_rate` at `decay_steps`."""
  if decay_steps <= warmup_steps:
    raise ValueError(f'linear_decay_schedule: decay_steps={decay_steps} must exceed '
                     f'warmup_steps={warmup_steps}.')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
    lr = learning_rate + (end_learning_rate - learning_rate) * frac
    if warmup_steps > 0:
      lr = lr * _warmup(step, warmup_steps, warmup_offset)
    return lr
  return schedule


def create_schedule(name: str = 'constant', learning_rate: float = 1e-3, warmup_steps: int = 0,
                    decay_steps: int | None = None, end_learning_rate: float = 0.0,
                    linear_warmup: bool = False, warmup_offset: float = 1.0,
                    min_learning_rate: float = 0.0) -> Schedule:
  """Schedule by name: `constant`, `rsqrt` or `linear_decay` (gin: `optim.create_schedule`).

  Steps are counted from 0 (the rate of the first update is `schedule(0)`), as T5X's trainer
  and optax count them. Two conventions differ from T5X's `utils.create_learning_rate_scheduler`
  and are selectable:

  * `warmup_offset`: the warm-up factor is `min(1, (step + warmup_offset) / warmup_steps)`.
    Default 1.0 (spt_jax's convention so far): the first update already trains, at
    `1 / warmup_steps` of the rate, and the full rate is reached at step `warmup_steps - 1`.
    0.0 is T5X's `linear_warmup` factor (`step / warmup_steps`: the first update has rate 0,
    the full rate is reached at step `warmup_steps`).
  * `min_learning_rate`: the rate is floored at this value. Default 0.0 (no floor); T5X floors
    every schedule at its `min_learning_rate` = 1e-8, which only shows where the rate is 0
    (T5X's first warm-up step).

  `rsqrt` with `linear_warmup=True, warmup_offset=0.0, min_learning_rate=1e-8` is T5X's
  'constant * linear_warmup * rsqrt_decay' (its default factors) with `base_learning_rate =
  learning_rate`; `constant` with the same two settings is 'constant * linear_warmup'.
  """
  if name == 'constant':
    schedule = constant_schedule(learning_rate, warmup_steps, warmup_offset)
  elif name == 'rsqrt':
    schedule = rsqrt_schedule(learning_rate, warmup_steps or 10_000, linear_warmup,
                              warmup_offset)
  elif name == 'linear_decay':
    if decay_steps is None:
      raise ValueError('linear_decay schedule needs decay_steps (usually TRAIN_STEPS).')
    schedule = linear_decay_schedule(learning_rate, decay_steps, end_learning_rate,
                                     warmup_steps, warmup_offset)
  else:
    raise ValueError(f"Unknown schedule {name!r}; use 'constant', 'rsqrt' or 'linear_decay'.")
  if not min_learning_rate:
    return schedule
  return lambda step: jnp.maximum(schedule(step), jnp.float32(min_learning_rate))


# ------------------------------------------------------------------------------------------
# Optimizers.
# ------------------------------------------------------------------------------------------
# Logical-axis factor rules of T5X's Adafactor (`t5x.adafactor.standard_logical_factor_rules`)
# plus SPT's axes, exactly as gin/t5x/spt_model.gin configures T5X for this network:
# `mlp_activations` is 'none' there (T5X's standard says 'column'; spt_jax's network has no
# parameter with that axis), the soft prompt is unfactored and the memory values [M, L_m, d]
# are factored like an embedding table of M * L_m rows.
T5X_LOGICAL_FACTOR_RULES: dict[str, str] = {
    'vocab': 'column', 'embed': 'row', 'mlp': 'column', 'heads': 'column', 'kv': 'column',
    'joined_kv': 'column', 'relpos_buckets': 'none', 'layers': 'batch', 'stack': 'batch',
    'q_wi_fused': 'column', 'o_wo_fused': 'column', 'multiquery_heads': 'column',
    'kv_fused': 'column', 'layer_norm_scale': 'none', 'mlp_activations': 'none',
    'prompt': 'none', 'memory': 'column', 'memory_length': 'column',
}
FACTOR_RULE_PRESETS = {'t5x': T5X_LOGICAL_FACTOR_RULES}
_FACTOR_DIMS = ('row', 'column', 'batch', 'none')


def logical_axes(boxed_params: Any) -> Any:
  """Tree like the unboxed params: each leaf's logical axis names (tuple), None if unnamed."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return jax.tree.map(
      lambda x: tuple(x.names) if isinstance(x, nn.LogicallyPartitioned) else None,
      boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


class _FactorSpec:
  """How one parameter's second moment is kept (T5X `Adafactor._parse_rule`).

  averaging_dims: dims the clipping RMS and the parameter scale average over (all but
    'batch' dims). factored: None (full second moment) or (row_dims, col_dims).
  """

  def __init__(self, averaging_dims: tuple[int, ...],
               factored: tuple[tuple[int, ...], tuple[int, ...]] | None):
    self.averaging_dims = averaging_dims
    self.factored = factored

  def __repr__(self):
    return f'_FactorSpec(averaging_dims={self.averaging_dims}, factored={self.factored})'


def _heuristic_factored(shape: Sequence[int], min_dim_size_to_factor: int):
  """Adafactor's size heuristic (T5X `_factored_dims`, optax `_factored_dims`)."""
  if len(shape) < 2:
    return None
  sorted_dims = np.argsort(shape)
  if shape[sorted_dims[-2]] < min_dim_size_to_factor:
    return None
  return (int(sorted_dims[-2]),), (int(sorted_dims[-1]),)


def _factor_spec(path: str, shape: Sequence[int], axes: Sequence[str] | None,
                 rules: Mapping[str, str], factored: bool,
                 min_dim_size_to_factor: int) -> _FactorSpec:
  """T5X's rule for one parameter (`set_param_axes` + `_parse_rule`, fallback to heuristics)."""
  ndim = len(shape)
  all_dims = tuple(range(ndim))
  if not factored:
    return _FactorSpec(all_dims, None)
  if axes is None or len(axes) != ndim:
    raise ValueError(f'Adafactor factor_rules need the logical axis names of every parameter; '
                     f'{path} {tuple(shape)} has {axes}.')
  missing = [a for a in axes if a not in rules]
  if missing:
    raise ValueError(f'Adafactor factor_rules have no entry for logical axis {missing} of '
                     f'{path}; add it (one of {_FACTOR_DIMS}).')
  dims = tuple('column' if rules[a] == 'col' else
               ('none' if rules[a] in (None, 'unfactorized') else rules[a]) for a in axes)
  if 'row' in dims and 'column' in dims and 'none' in dims:
    raise ValueError(f'Incomplete Adafactor factor rule {dims} for {path} axes {tuple(axes)}.')
  if 'row' not in dims or 'column' not in dims:
    dims = tuple('none' if d in ('row', 'column') else d for d in dims)
  batch = tuple(i for i, d in enumerate(dims) if d == 'batch')
  if ndim <= 2 and not batch:  # T5X ignores the rule and uses the size heuristic.
    return _FactorSpec(all_dims, _heuristic_factored(shape, min_dim_size_to_factor))
  rows = tuple(i for i, d in enumerate(dims) if d == 'row')
  cols = tuple(i for i, d in enumerate(dims) if d == 'column')
  averaging = tuple(i for i in all_dims if i not in batch)
  return _FactorSpec(averaging, (rows, cols) if rows or cols else None)


class _Stats(NamedTuple):
  update: Any
  v_row: Any
  v_col: Any
  v: Any


class FactoredByRulesState(NamedTuple):
  """State of `adafactor_by_rules`: step count and per-parameter statistics trees
  (`v_row` / `v_col` for factored parameters, `v` otherwise; [1] placeholders elsewhere)."""
  count: jax.Array
  v_row: Any
  v_col: Any
  v: Any


def adafactor_by_rules(learning_rate: float | Schedule, specs: Mapping[str, _FactorSpec],
                       decay_rate: float = 0.8, step_offset: int = 0,
                       clipping_threshold: float | None = 1.0,
                       multiply_by_parameter_scale: bool = True, epsilon1: float = 1e-30,
                       epsilon2: float = 1e-3) -> optax.GradientTransformation:
  """T5X's Adafactor update (`t5x.adafactor.Adafactor.apply_param_gradient`, no momentum, no
  weight decay) as one optax transformation, with a factorisation per parameter path.

  `specs` maps '/'-joined parameter paths to `_FactorSpec`s (see `adafactor`); it is looked
  up by path, so the transformation also runs inside `optax.multi_transform` (whose masked
  trees keep the paths of the leaves they hold).
  """
  def lr_at(count):
    return learning_rate(count) if callable(learning_rate) else learning_rate

  def spec_of(path):
    name = param_path(path)
    if name not in specs:
      raise KeyError(f'No Adafactor factor spec for parameter {name}.')
    return specs[name]

  def init_fn(params):
    def init(path, p):
      spec, one = spec_of(path), jnp.zeros((1,), jnp.float32)
      if spec.factored is None:
        return _Stats(None, one, one, jnp.zeros(p.shape, jnp.float32))
      rows, cols = spec.factored
      return _Stats(None, jnp.zeros(tuple(np.delete(p.shape, cols)), jnp.float32),
                    jnp.zeros(tuple(np.delete(p.shape, rows)), jnp.float32), one)
    out = jax.tree_util.tree_map_with_path(init, params)
    pick = lambda name: jax.tree.map(  # noqa: E731
        lambda o: getattr(o, name), out, is_leaf=lambda x: isinstance(x, _Stats))
    return FactoredByRulesState(count=jnp.zeros([], jnp.int32), v_row=pick('v_row'),
                                v_col=pick('v_col'), v=pick('v'))

  def update_fn(grads, state, params=None):
    if params is None:
      raise ValueError('adafactor_by_rules needs params (update(grads, state, params)).')
    step = state.count
    t = jnp.asarray(step - step_offset, jnp.float32) + 1.0
    decay = 1.0 - t ** (-decay_rate)
    mixing = 1.0 - decay
    lr = lr_at(step)

    def update(path, grad, v_row, v_col, v, param):
      spec = spec_of(path)
      grad = grad.astype(jnp.float32)
      update_scale = lr
      if multiply_by_parameter_scale:
        scale = jnp.sqrt(jnp.mean(param * param, axis=spec.averaging_dims, keepdims=True))
        update_scale = update_scale * jnp.maximum(scale, epsilon2)
      grad_sqr = grad * grad + epsilon1
      if spec.factored is not None:
        d1, d0 = spec.factored
        v_row = decay * v_row + mixing * jnp.mean(grad_sqr, axis=d0)
        v_col = decay * v_col + mixing * jnp.mean(grad_sqr, axis=d1)
        reduced_d1 = tuple(d - len([e for e in d0 if e < d]) for d in d1)
        row_col_mean = jnp.mean(v_row, axis=reduced_d1, keepdims=True)
        row_factor = (v_row / row_col_mean) ** -0.5
        col_factor = v_col ** -0.5
        y = grad * jnp.expand_dims(row_factor, axis=d0) * jnp.expand_dims(col_factor, axis=d1)
      else:
        v = decay * v + mixing * grad_sqr
        y = grad * v ** -0.5
      if clipping_threshold is not None:
        y = y / jnp.maximum(
            1.0, jnp.sqrt(jnp.mean(y * y, axis=spec.averaging_dims, keepdims=True))
            / clipping_threshold)
      return _Stats((-(update_scale * y)).astype(param.dtype), v_row, v_col, v)

    out = jax.tree_util.tree_map_with_path(update, grads, state.v_row, state.v_col, state.v,
                                           params)
    pick = lambda name: jax.tree.map(  # noqa: E731
        lambda o: getattr(o, name), out, is_leaf=lambda x: isinstance(x, _Stats))
    return pick('update'), FactoredByRulesState(
        count=optax.safe_increment(step), v_row=pick('v_row'), v_col=pick('v_col'), v=pick('v'))

  return optax.GradientTransformation(init_fn, update_fn)


def adafactor(learning_rate: float | Schedule, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, factored: bool = True,
              min_dim_size_to_factor: int = 128,
              multiply_by_parameter_scale: bool = False,
              factor_rules: str | Mapping[str, str] | None = None,
              param_axes: Any = None, params: Any = None) -> optax.GradientTransformation:
  """Adafactor as in T5 / T0: decay 0.8, factored second moments, update clipping at RMS 1.0,
  no momentum; by default no parameter scaling and optax's factorisation heuristic.

  Two settings select T5X's conventions (`t5x.adafactor.Adafactor` as gin/t5x/spt_model.gin
  configures it); the defaults keep what spt_jax has always trained with:

  * `multiply_by_parameter_scale`: default False (T0 / the T5 fine-tuning recipe: the update
    is the absolute step size). True scales each update by the parameter's RMS (floored at
    1e-3) — T5X's Adafactor default, which T5X runs of this project use.
  * `factor_rules`: default None — optax's `adafactor`: a parameter's second moment is
    factored over its two largest dimensions when both are >= `min_dim_size_to_factor`,
    whatever its rank. 't5x' (`T5X_LOGICAL_FACTOR_RULES`) or a `{logical axis: 'row' |
    'column' | 'batch' | 'none'}` mapping — T5X's rules: parameters of rank <= 2 use the same
    heuristic, higher-rank ones (SPT's memory values [M, L_m, d]) are factored by their
    logical axes whatever their size, 'batch' dims are excluded from the clipping RMS and
    the parameter scale. Needs `param_axes` and `params` (trees of axis-name tuples and of
    (abstract) arrays; `create_optimizer` passes them). With this setting the whole update is
    `adafactor_by_rules`, a transcription of T5X's `apply_param_gradient`.

  With `multiply_by_parameter_scale=True, factor_rules='t5x'` and a schedule as T5X's
  (`create_schedule(..., warmup_offset=0.0, min_learning_rate=1e-8)`), a step equals T5X's
  (tests/test_t5x_equivalence.py).
  """
  if factor_rules is None:
    return optax.adafactor(
        learning_rate=learning_rate, decay_rate=decay_rate,
        clipping_threshold=clipping_threshold, factored=factored,
        min_dim_size_to_factor=min_dim_size_to_factor,
        multiply_by_parameter_scale=multiply_by_parameter_scale, momentum=None)
  if isinstance(factor_rules, str):
    if factor_rules not in FACTOR_RULE_PRESETS:
      raise ValueError(f'factor_rules={factor_rules!r}: use None (optax heuristic), one of '
                       f'{sorted(FACTOR_RULE_PRESETS)} or a {{axis: row|column|batch|none}} dict.')
    factor_rules = FACTOR_RULE_PRESETS[factor_rules]
  rules = {k: (str(v).lower() if v is not None else 'none') for k, v in factor_rules.items()}
  bad = {k: v for k, v in rules.items()
         if v not in _FACTOR_DIMS + ('col', 'unfactorized')}
  if bad:
    raise ValueError(f'factor_rules values must be one of {_FACTOR_DIMS}; got {bad}.')
  if param_axes is None or params is None:
    raise ValueError('adafactor(factor_rules=...) needs param_axes and params (the logical axis '
                     'names and shapes of the parameters); create_optimizer passes them.')
  axes_by_path = {param_path(p): a for p, a in jax.tree_util.tree_flatten_with_path(
      param_axes, is_leaf=lambda x: x is None or isinstance(x, tuple))[0]}
  specs = {}
  for path, leaf in flatten_paths(params).items():
    specs[path] = _factor_spec(path, tuple(leaf.shape), axes_by_path.get(path), rules, factored,
                               min_dim_size_to_factor)
  return adafactor_by_rules(learning_rate, specs, decay_rate=decay_rate,
                            clipping_threshold=clipping_threshold,
                            multiply_by_parameter_scale=multiply_by_parameter_scale)


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
    param_axes: Any = None,
) -> tuple[optax.GradientTransformation, Any]:
  """Builds the optimizer over the trainable subset of `params`.

  Args:
    params: (abstract) parameter tree, unboxed; only its structure and paths are used.
    optimizer: `adafactor` (T5 settings) or `adamw`.
    learning_rate: float or schedule (step → lr).
    trainable: preset name or regexes; see `trainable_mask`.
    grad_clip_norm: clip trainable gradients to this global norm (None: no clipping).
    adafactor_kwargs / adamw_kwargs: overrides for `adafactor()` / `adamw()` (e.g. T5X's
      conventions: `{'multiply_by_parameter_scale': True, 'factor_rules': 't5x'}`).
    param_axes: logical axis names of the parameters (`logical_axes(boxed_params)`); needed
      by Adafactor's `factor_rules`.

  Returns:
    `(tx, mask)`: the transformation (frozen leaves → `set_to_zero`, no state) and the
    boolean trainable mask.
  """
  mask = trainable_mask(params, trainable)
  if optimizer == 'adafactor':
    kwargs = dict(adafactor_kwargs or {})
    if kwargs.get('factor_rules') is not None:
      kwargs.setdefault('param_axes', param_axes)
      kwargs.setdefault('params', params)
    base = adafactor(learning_rate, **kwargs)
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
