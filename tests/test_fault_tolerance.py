"""Faults on the default (async-checkpointing) path: full disks, damaged files, NaNs, kills.

In-process tests train the tiny SPT model of tests/train_testlib.py with orbax's async
checkpointing (the default of `train.train`, what every pod run uses) and compare every
outcome with an uninterrupted run, bit for bit (`train_state.tree_equal`) on the whole
train state (parameters, optimizer state, step, RNG, memory-usage state):

* `keep_checkpoints` keeps exactly the newest N step directories and no temporary one;
* a MODEL_DIR that fills up or turns read-only mid-run (a small tmpfs, made full or
  bind-mounted read-only by a hook while a save may be in flight) stops with
  `CheckpointWriteError` naming MODEL_DIR, the step, the reason and the checkpoints kept;
  those are bit-identical to the uninterrupted run's, and the same call run again once the
  disk is writable resumes and ends bit-identical;
* a truncated array file in the latest checkpoint stops with `CheckpointRestoreError` naming
  the step, the array and the file; `restore_fallback=True` moves that step aside and
  resumes from the previous one, ending bit-identical;
* a non-finite update stops before its state is saved.

SIGKILL at seeded random moments and SIGTERM of the CLI are in tests/fault_trials.py (run
by the slow tests at the end of this file).
"""
import errno
import os
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import fault_trials
import train_testlib as tl
from spt_jax import partitioning
from spt_jax import train
from spt_jax import train_state as ts

STEPS = 20


@pytest.fixture(autouse=True, scope='module')
def _task():
  tl.register_task()


def _one_device():
  return partitioning.create_mesh(devices=jax.devices()[:1])


def _kwargs(model_dir, steps=STEPS, **overrides):
  kw = tl.reference_kwargs(model_dir, steps)   # dropout 0.1: the RNG is part of the state
  kw.update(async_checkpointing=True, save_every_steps=5, keep_checkpoints=3,
            log_every_steps=5)
  kw.update(overrides)
  return kw


def _state(model_dir, step):
  """The whole saved train state of `step` as host arrays (no target tree needed)."""
  path = os.path.join(model_dir, 'checkpoints', str(step), ts.STATE_ITEM)
  with ocp.StandardCheckpointer() as checkpointer:
    return jax.device_get(checkpointer.restore(path))


def _step_dirs(model_dir):
  return sorted(os.listdir(os.path.join(model_dir, 'checkpoints')))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run that keeps every checkpoint: {step: saved state}."""
  model_dir = str(tmp_path_factory.mktemp('reference') / 'run')
  tl.run_train(mesh=_one_device(), **_kwargs(model_dir, keep_checkpoints=None))
  assert _step_dirs(model_dir) == ['10', '15', '20', '5']
  return {s: _state(model_dir, s) for s in (5, 10, 15, 20)}


def test_keep_checkpoints_keeps_exactly_the_newest(tmp_path, reference):
  model_dir = str(tmp_path / 'run')
  tl.run_train(mesh=_one_device(), **_kwargs(model_dir, steps=23, keep_checkpoints=2))
  # The final step is always saved; nothing temporary is left behind.
  assert _step_dirs(model_dir) == ['20', '23']
  assert ts.tree_equal(_state(model_dir, 20), reference[20])


def _mount(args, path):
  """Runs `mount args... path`; False where this user may not mount (then: skip)."""
  out = subprocess.run(['mount', *args, path], capture_output=True, text=True, check=False)
  return out.returncode == 0


def _fill(path):
  """Writes `path/filler` until the file system is full."""
  with open(os.path.join(path, 'filler'), 'wb') as f:
    try:
      while True:
        f.write(b'\0' * (1 << 16))
        f.flush()
    except OSError as e:
      assert e.errno == errno.ENOSPC, e


@pytest.mark.parametrize('fault', ['full_disk', 'read_only'])
def test_unwritable_model_dir_mid_run_stops_clearly_and_keeps_earlier_checkpoints(
    tmp_path, reference, fault):
  """After step 11 (the async save of step 10 may still be writing) MODEL_DIR becomes full
  (a 16 MB tmpfs filled by a file) or read-only (its checkpoints/ bind-mounted read-only,
  as root would otherwise write anyway)."""
  disk = str(tmp_path / 'disk')
  os.makedirs(disk)
  if not _mount(['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs'], disk):
    pytest.skip('cannot mount here (needs root / CAP_SYS_ADMIN) to make a disk full or '
                'read-only mid-run')
  model_dir = os.path.join(disk, 'run')
  checkpoints = os.path.join(model_dir, 'checkpoints')
  mounted = [disk]
  try:
    def break_model_dir(step, state):
      del state
      if step != 11:
        return
      if fault == 'full_disk':
        _fill(disk)
      else:
        assert _mount(['--bind', checkpoints], checkpoints)
        mounted.insert(0, checkpoints)
        assert _mount(['-o', 'remount,bind,ro'], checkpoints)

    with pytest.raises(ts.CheckpointWriteError) as info:
      tl.run_train(mesh=_one_device(), hooks=[break_model_dir], **_kwargs(model_dir))
    message = str(info.value)
    kept = [int(d) for d in _step_dirs(model_dir) if d.isdigit()]
    reason = 'no space left on device' if fault == 'full_disk' else 'read-only file system'
    assert f'MODEL_DIR={model_dir} failed at step' in message and reason in message, message
    assert kept in ([5], [5, 10]), kept   # step 10's save either finished or failed
    assert f'step(s) {kept} in' in message and f'resumes from step {kept[-1]}' in message
    # What was written before is intact, bit for bit.
    for step in kept:
      assert ts.tree_equal(_state(model_dir, step), reference[step]), step
    # The fix the message names: free space / restore write access, run the same call again.
    if fault == 'full_disk':
      os.remove(os.path.join(disk, 'filler'))
    else:
      subprocess.run(['umount', checkpoints], check=True)
      mounted.remove(checkpoints)
    result = tl.run_train(mesh=_one_device(), **_kwargs(model_dir))
    assert [s for s, _ in result['history']][0] == kept[-1] + 1
    assert _step_dirs(model_dir) == ['10', '15', '20']   # the unfinished save was cleaned up
    assert ts.tree_equal(_state(model_dir, 20), reference[20])
  finally:
    for path in mounted:
      subprocess.run(['umount', '-l', path], check=False)


def test_only_failed_writes_under_model_dir_are_reported_as_such():
  """An accelerator out of memory (also RESOURCE_EXHAUSTED) or an unreadable input file is
  not a MODEL_DIR write failure: the original error must reach the user unchanged."""
  model_dir = '/tmp/spt_run'
  full = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/tmp/spt_run/checkpoints/'
                    '10.orbax-checkpoint-tmp/_sharding": Failed to write 76745 bytes: No space '
                    "left on device [os_error_code='28']")
  assert ts.describe_write_failure(full, model_dir) == 'no space left on device'
  wrapped = RuntimeError('save failed')
  wrapped.__cause__ = OSError(errno.EROFS, 'Read-only file system', '/tmp/spt_run/metrics.jsonl')
  assert ts.describe_write_failure(wrapped, model_dir) == 'read-only file system'
  oom = ValueError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.50GiB.')
  assert ts.describe_write_failure(oom, model_dir) is None
  elsewhere = OSError(errno.EACCES, 'Permission denied', '/data/p3/train.tfrecord')
  assert ts.describe_write_failure(elsewhere, model_dir) is None


def _truncate_largest_array_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
           if os.sep + 'd' + os.sep in os.path.join(root, name)]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)
  return largest


def test_corrupt_latest_checkpoint_names_step_and_file_and_falls_back(tmp_path, reference):
  model_dir = str(tmp_path / 'run')
  tl.run_train(mesh=_one_device(), **_kwargs(model_dir, steps=15))
  damaged = _truncate_largest_array_file(os.path.join(model_dir, 'checkpoints', '15'))
  with pytest.raises(ts.CheckpointRestoreError) as info:
    tl.run_train(mesh=_one_device(), **_kwargs(model_dir))
  message = str(info.value)
  assert 'Checkpoint step 15 in' in message
  assert f'(file {damaged}:' in message
  assert 'Error reading "' in message            # the array
  assert '(step 10) with --gin.configs.SaveCheckpointConfig.restore_fallback=True' in message
  # Nothing was changed by the failed attempt.
  assert _step_dirs(model_dir) == ['10', '15', '5']
  # The fix the message names.
  result = tl.run_train(mesh=_one_device(), **_kwargs(model_dir, restore_fallback=True))
  assert [s for s, _ in result['history']][0] == 11
  assert _step_dirs(model_dir) == ['10', '15', '20']
  aside = os.listdir(os.path.join(model_dir, 'corrupt_checkpoints'))
  assert len(aside) == 1 and aside[0].startswith('15.')
  assert ts.tree_equal(_state(model_dir, 15), reference[15])
  assert ts.tree_equal(_state(model_dir, 20), reference[20])


def test_non_finite_update_stops_before_its_state_is_saved(tmp_path):
  """The learning rate turns NaN at the 8th update (step 8): its loss is still finite, its
  parameters are not. Saving every step, the stop keeps step 7 and never writes step 8."""
  model_dir = str(tmp_path / 'nan')
  kw = _kwargs(model_dir, steps=12, save_every_steps=1, keep_checkpoints=2, log_every_steps=1)
  kw['learning_rate_schedule'] = lambda step: np.float32(1e-2) * (
      1.0 + jax.numpy.where(step >= 7, jax.numpy.nan, 0.0))
  with pytest.raises(train.NonFiniteLossError,
                     match=r'parameter update .* at step 8;.*last good checkpoint \(step 7\)'):
    tl.run_train(mesh=_one_device(), **kw)
  assert _step_dirs(model_dir) == ['6', '7']
  state = _state(model_dir, 7)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


# ------------------------------------------------------------------------------------------
# Real process boundaries: the CLI killed at seeded random moments (tests/fault_trials.py).
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def cli_reference(tmp_path_factory):
  """The uninterrupted CLI run both signal tests compare with."""
  return fault_trials.reference_run(str(tmp_path_factory.mktemp('cli_reference')))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, cli_reference):
  report = fault_trials.run_trials(str(tmp_path), trials=5, seed=0, signal_name='SIGKILL',
                                   reference=cli_reference)
  assert len(report) == 5
  for trial in report:
    assert trial['identical'], trial
    assert trial['resumed_from'] == trial['finished_steps_on_disk'][-1:] or (
        not trial['finished_steps_on_disk']), trial
  assert any(trial['mode'] == 'during_save' for trial in report)


@pytest.mark.slow
def test_sigterm_with_async_checkpointing_saves_exits_zero_and_resumes_exactly(
    tmp_path, cli_reference):
  report = fault_trials.run_trials(str(tmp_path), trials=2, seed=1, signal_name='SIGTERM',
                                   reference=cli_reference)
  for trial in report:
    assert trial['returncode'] == 0, trial
    assert trial['killed_at_step'] in trial['finished_steps_on_disk'], trial
    assert trial['resumed_from'] == [trial['killed_at_step']], trial
    assert not trial['temporary_dirs'], trial
    assert trial['identical'], trial
