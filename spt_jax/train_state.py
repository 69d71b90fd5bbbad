"""Train state and orbax checkpointing with exact resume.

`TrainState` holds everything a step depends on: the step counter, parameters, optimizer
state, the base RNG key (dropout keys are derived by `fold_in(rng, step)`, so nothing
else needs saving) and the network's non-parameter state (`model_state`: the SPT memory
bank's usage statistics when dead-slot restarts are on; {} otherwise). The input position is the number of global batches consumed, which is
the step: the seqio pipeline is deterministic for a fixed seed, so resuming skips that many
batches and sees exactly the batches an uninterrupted run would have seen.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager`: periodic and final saves, keep
the newest N, restore onto the current mesh with explicit shardings. What it guarantees
(tests/test_fault_tolerance.py kills, fills and corrupts real runs to check it):

* Atomic saves, async included: orbax writes `<step>.orbax-checkpoint-tmp*` and renames it to
  `<step>` only when every array and the metadata are written, so a process killed during a
  save leaves the previous checkpoints as they were; the unfinished directory is deleted
  when the next run opens the manager (`cleanup_tmp_directories`) and is never restored.
* Pruning to the newest `keep` happens only after a save has finished, so a failed save
  (full or unwritable disk) deletes nothing.
* A checkpoint that cannot be restored (a truncated or missing array file) raises
  `CheckpointRestoreError` naming the step, the directory and the array; with
  `fallback=True` the run moves it to `<model_dir>/corrupt_checkpoints/<step>` (kept for
  inspection, never deleted) and restores the newest earlier step that reads back.
"""
from __future__ import annotations

import os
import re
import time
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


class CheckpointRestoreError(RuntimeError):
  """A checkpoint of the run's directory could not be read back."""


class CheckpointWriteError(OSError):
  """Writing a checkpoint (or the run's other files) to MODEL_DIR failed."""


# Messages of storage-write failures, as Python (OSError.errno), TensorStore (status codes in
# ValueError messages, with the OS errno) and TensorFlow (summary writers) report them.
_WRITE_FAILURE_ERRNOS = {28: 'no space left on device', 122: 'disk quota exceeded',
                         30: 'read-only file system', 13: 'permission denied',
                         1: 'operation not permitted', 27: 'file too large'}


def _cause_chain(error: BaseException | None):
  """`error`, then the errors it was raised from or during (`__cause__` / `__context__`)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def describe_write_failure(error: BaseException, directory: str) -> str | None:
  """A short reason when `error` (or an error it was raised from) is a failed write under
  `directory` (MODEL_DIR).

  Returns None for anything else, so that only storage faults of the run's own directory
  are reported as such: the failing path must lie under `directory` (TensorStore and
  TensorFlow name it in their messages, Python in `OSError.filename`), and a status such as
  RESOURCE_EXHAUSTED counts only with a disk reason (an accelerator out of memory says
  RESOURCE_EXHAUSTED too).
  """
  directory = str(directory)   # as train() resolved it (absolute, or a gs:// URL)
  for error in _cause_chain(error):
    text = str(error)
    names = [str(f) for f in (getattr(error, 'filename', None),
                              getattr(error, 'filename2', None)) if f]
    if any(n.startswith(directory) for n in names) or directory in text:
      if isinstance(error, OSError) and error.errno in _WRITE_FAILURE_ERRNOS:
        return _WRITE_FAILURE_ERRNOS[error.errno]
      code = re.search(r"os_error_code='?(\d+)", text)
      if code and int(code.group(1)) in _WRITE_FAILURE_ERRNOS:
        return _WRITE_FAILURE_ERRNOS[int(code.group(1))]
      for reason in _WRITE_FAILURE_ERRNOS.values():
        if reason in text.lower():
          return reason
  return None


def _restore_failure_detail(error: BaseException, step_dir: epath.Path) -> str:
  """The most specific line of a restore failure, naming the file where it can.

  TensorStore names the array and the OCDBT database (a directory); when it also gives the
  size of the data file it found too short, the file of that size in `step_dir` is named.
  """
  lines = []
  for error in _cause_chain(error):  # pylint: disable=redefined-argument-from-local
    text = str(error)
    found = re.search(r'Error reading "([^"]+)"[^\n]*', text)
    if found:
      detail = found.group(0).strip()
      size = re.search(r'for value of size (\d+)', detail)
      if size:
        try:  # OCDBT data files: <item>/d/* and <item>/ocdbt.process_<i>/d/*
          files = [p for pattern in ('*/d/*', '*/ocdbt.process_*/d/*')
                   for p in step_dir.glob(pattern)
                   if p.is_file() and p.stat().length == int(size.group(1))]
        except Exception:  # pylint: disable=broad-except  # the diagnosis must not fail
          files = []
        if len(files) == 1:
          detail += f' (file {files[0]}: {size.group(1)} bytes, shorter than written)'
      return detail
    lines.append(f'{type(error).__name__}: {text.splitlines()[0] if text else ""}')
  return lines[0] if lines else 'unknown error'


class Checkpointer:
  """Orbax `CheckpointManager` for `TrainState` + JSON metadata, in `<model_dir>/checkpoints`."""

  def __init__(self, model_dir: str, save_every_steps: int | None = 1000, keep: int | None = 3,
               async_save: bool = True, subdir: str = 'checkpoints'):
    self.directory = epath.Path(model_dir) / subdir
    self.save_every_steps = save_every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,   # unfinished saves of a killed run
        save_interval_steps=1)  # We decide when to save; see `should_save`.
    self._options = options
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, item_names=(STATE_ITEM, META_ITEM),
                                 options=self._options)

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

  def restore(self, abstract_state: TrainState, step: int | None = None,
              fallback: bool = False) -> tuple[TrainState, dict[str, Any]]:
    """Restores a `TrainState` onto the shardings carried by `abstract_state`'s leaves.

    Args:
      abstract_state: `TrainState` of `ShapeDtypeStruct`s with `sharding` set (see
        `abstract_with_shardings`).
      step: which step; default the latest.
      fallback: when the latest step cannot be read back, move it aside (see the module
        docstring) and restore the newest earlier one that can (only with `step=None`);
        FileNotFoundError when none can.

    Raises:
      CheckpointRestoreError: the step cannot be read back (and no earlier step can, with
        `fallback`); the message names the step, the directory and the array.
    """
    if step is not None or not fallback:
      return self._restore_step(abstract_state, self.latest_step() if step is None else step)
    first_error = None
    while (latest := self.latest_step()) is not None:
      try:
        return self._restore_step(abstract_state, latest)
      except CheckpointRestoreError as e:
        first_error = first_error or e
        self._move_aside(latest, e)
    raise FileNotFoundError(
        f'No checkpoint in {self.directory} reads back; the unreadable ones were moved to '
        f'{self.directory.parent / "corrupt_checkpoints"}.') from first_error

  def _move_aside(self, step: int, error: CheckpointRestoreError) -> None:
    """Moves an unreadable step out of the manager's sight, kept for inspection."""
    target = self.directory.parent / 'corrupt_checkpoints' / f'{step}.{int(time.time())}'
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'spt_jax_move_aside_{step}')
    logging.warning('%s\nrestore_fallback: moved it to %s; trying the previous checkpoint.',
                    error, target)
    self._manager.close()
    self._manager = self._open()

  def _restore_step(self, abstract_state: TrainState, step: int | None
                    ) -> tuple[TrainState, dict[str, Any]]:
    if step is None:
      raise FileNotFoundError(f'No checkpoint found in {self.directory}.')
    try:
      restored = self._restore_items(abstract_state, step)
    except Exception as e:  # pylint: disable=broad-except  # orbax / TensorStore / JSON
      earlier = [s for s in self.all_steps() if s < step]
      raise CheckpointRestoreError(
          f'Checkpoint step {step} in {self.directory / str(step)} cannot be read back: '
          f'{_restore_failure_detail(e, self.directory / str(step))}. If the file is damaged '
          '(a truncated or lost write), '
          'resume from the previous checkpoint'
          + (f' (step {max(earlier)})' if earlier else ' (there is none: the run restarts '
             'from step 0)')
          + ' with --gin.configs.SaveCheckpointConfig.restore_fallback=True: it moves this step to '
          f'{self.directory.parent / "corrupt_checkpoints"} and restores the newest one that '
          'reads back. If the model or optimizer configuration changed since the save, '
          'restore with the original configuration instead.') from e
    return TrainState.from_dict(restored[STATE_ITEM]), dict(restored[META_ITEM] or {})

  def _restore_items(self, abstract_state: TrainState, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(abstract_state.as_dict()),
            META_ITEM: ocp.args.JsonRestore(),
        }))

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
