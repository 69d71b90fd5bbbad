"""Train state and orbax checkpointing with exact resume.

`TrainState` holds everything a step depends on: the step counter, parameters, optimizer
state, the base RNG key (dropout keys are derived by `fold_in(rng, step)`, so nothing
else needs saving) and the network's non-parameter state (`model_state`: the SPT memory
bank's usage statistics when dead-slot restarts are on; {} otherwise). The input position is the number of global batches consumed, which is
the step: the seqio pipeline is deterministic for a fixed seed, so resuming skips that many
batches and sees exactly the batches an uninterrupted run would have seen.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager`: periodic and final saves, keep
the newest N, atomic (orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it to
`<step>` only when complete, so a killed save never shadows the last good checkpoint),
restore onto the current mesh with explicit shardings.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

STATE_ITEM = 'state'
META_ITEM = 'metadata'


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes.

  Attributes:
    step: int32 scalar, number of optimizer steps taken (= global batches consumed).
    params: parameter tree (unboxed arrays, float32 masters).
    opt_state: optax state (frozen parameters have none).
    rng: uint32[2] base PRNG key; step `s` uses `fold_in(rng, s)`.
    model_state: non-parameter flax collections the step reads and updates
      ({collection: tree}); {} for models without any. Checkpointed only when
      non-empty, so checkpoints of such models keep their old layout.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any = flax.struct.field(default_factory=dict)

  @classmethod
  def create(cls, params: Any, opt_state: Any, rng: jax.Array,
             model_state: Any = None) -> 'TrainState':
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng,
               model_state=model_state or {})

  def as_dict(self) -> dict[str, Any]:
    d = {'step': self.step, 'params': self.params, 'opt_state': self.opt_state,
         'rng': self.rng}
    if self.model_state:
      d['model_state'] = self.model_state
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'TrainState':
    return cls(step=d['step'], params=d['params'], opt_state=d['opt_state'], rng=d['rng'],
               model_state=d.get('model_state') or {})


def abstract_with_shardings(abstract_tree: Any, sharding_tree: Any) -> Any:
  """`ShapeDtypeStruct`s carrying the target shardings (what orbax restores onto)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree,
      sharding_tree)


def check_writable(directory: str) -> epath.Path:
  """Creates `directory` and probes that it is writable; raises a clear error otherwise."""
  path = epath.Path(directory)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_probe_{jax.process_index()}_{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    raise PermissionError(
        f'MODEL_DIR={directory!r} is not writable ({type(e).__name__}: {e}). Pass a '
        'directory you can create and write, e.g. --gin.MODEL_DIR="\'/tmp/spt_run\'".') from e
  return path


class Checkpointer:
  """Orbax `CheckpointManager` for `TrainState` + JSON metadata, in `<model_dir>/checkpoints`."""

  def __init__(self, model_dir: str, save_every_steps: int | None = 1000, keep: int | None = 3,
               async_save: bool = True, subdir: str = 'checkpoints'):
    self.directory = epath.Path(model_dir) / subdir
    self.save_every_steps = save_every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        save_interval_steps=1)  # We decide when to save; see `should_save`.
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=(STATE_ITEM, META_ITEM), options=options)

  @property
  def manager(self) -> ocp.CheckpointManager:
    return self._manager

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return self._manager.all_steps()

  def should_save(self, step: int) -> bool:
    return bool(self.save_every_steps) and step % self.save_every_steps == 0

  def save(self, state: TrainState, metadata: dict[str, Any] | None = None) -> bool:
    """Saves `state` at `int(state.step)` unless a checkpoint of that step exists."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    meta = dict(metadata or {})
    meta.setdefault('step', step)
    meta.setdefault('input_batches_consumed', step)
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state.as_dict()),
            META_ITEM: ocp.args.JsonSave(meta),
        }),
        force=True)
    if saved:
      logging.info('Checkpoint of step %d requested in %s', step, self.directory)
    return saved

  def restore(self, abstract_state: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restores a `TrainState` onto the shardings carried by `abstract_state`'s leaves.

    Args:
      abstract_state: `TrainState` of `ShapeDtypeStruct`s with `sharding` set (see
        `abstract_with_shardings`).
      step: which step; default the latest.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint found in {self.directory}.')
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract_state.as_dict()),
            META_ITEM: ocp.args.JsonRestore(),
        }))
    return TrainState.from_dict(restored[STATE_ITEM]), dict(restored[META_ITEM] or {})

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def tree_equal(a: Any, b: Any) -> bool:
  """True when every leaf of `a` and `b` is bit-identical (host comparison)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.atleast_1d(np.asarray(x)).view(np.uint8),
                     np.atleast_1d(np.asarray(y)).view(np.uint8))
      for x, y in zip(la, lb))
