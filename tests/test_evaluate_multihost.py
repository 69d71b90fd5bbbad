"""Multi-process evaluation: two `jax.distributed` processes give one process's results.

The evaluation set-up of tests/test_evaluate.py (two tiny `_score_eval` tasks, rank
classification, a tiny SPT model) is evaluated from one orbax checkpoint by
`evaluate.evaluate` (the function the CLI's gin binds) twice: in this process on a (4, 1)
mesh of 4 CPU devices, and by two processes (localhost, gloo CPU collectives, 2 fake CPU
devices each, the same (4, 1) mesh over the 4 global devices), as tests/test_train_multihost.py
runs the trainer. Each process iterates the whole eval set and feeds its half of every
global batch (`partitioning.process_rows`); scores come back replicated, and only process 0
writes the results directory (process 1 is given a directory of its own to show that).

Measured here: the same metrics and results.json, and per-row scores (25 rows per task)
bit-identical to the single process's (max |difference| 0; the test allows 1e-5).
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import test_evaluate as te
from test_distributed_env import results_of
from spt_jax import configs
from spt_jax import evaluate
from spt_jax import partitioning
from spt_jax import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH_SHAPE = (4, 1)
BATCH_SIZE = 8  # 2 rows per device; the last batch of each task is padded

# One of the two processes: `python -c _CHILD CHECKPOINT OUTPUT_DIR`.
_CHILD = r"""
import json, sys
from spt_jax import configs, evaluate, partitioning, runner
assert runner.initialize_distributed()
import jax
import test_evaluate as te
from test_distributed_env import results_of
out = evaluate.evaluate(
    dataset_cfg=configs.DatasetConfig(te.MIXTURE, batch_size=%d, task_feature_lengths=te.LENGTHS,
                                      split='validation', seed=42),
    checkpoint_cfg=configs.RestoreCheckpointConfig(path=sys.argv[1]), output_dir=sys.argv[2],
    model=te._model(),
    partitioner=partitioning.Partitioner(mesh=partitioning.create_mesh(mesh_shape=%r)))
print('RESULT ' + json.dumps(dict(process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  metrics=out['metrics'], step=out['step'])))
""" % (BATCH_SIZE, MESH_SHAPE)


def _scored_rows(seqio_dir: pathlib.Path) -> dict[str, list[dict]]:
  """Rows of seqio's JSONLogger inference files (`<task>-<step>.jsonl`: input, target, score)."""
  return {p.name: [json.loads(line) for line in p.read_text().splitlines()]
          for p in sorted(seqio_dir.glob('*.jsonl')) if not p.name.endswith('-metrics.jsonl')}


def _assert_json_close(got, want, where='results.json'):
  """Same structure, keys and strings; numbers within 1e-6 relative (float32 sums)."""
  if isinstance(want, dict):
    assert isinstance(got, dict) and got.keys() == want.keys(), where
    for k in want:
      _assert_json_close(got[k], want[k], f'{where}/{k}')
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_json_close(g, w, f'{where}[{i}]')
  elif isinstance(want, (int, float)) and not isinstance(want, bool):
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9), where
  else:
    assert got == want, where


@pytest.mark.slow  # compiles the tiny model in three processes
def test_two_processes_write_the_one_process_results(tmp_path):
  mesh = partitioning.create_mesh(mesh_shape=MESH_SHAPE, devices=jax.devices()[:4])
  setup = runner.ModelSetup.create(te._model(), te.LENGTHS, mesh=mesh)
  params = setup.init_params(jax.random.PRNGKey(3))
  checkpoint = tmp_path / 'checkpoints' / '5'
  ocp.PyTreeCheckpointer().save(checkpoint, {'params': jax.device_get(params)})
  one = evaluate.evaluate(dataset_cfg=configs.DatasetConfig(te.MIXTURE, batch_size=BATCH_SIZE,
                                                           task_feature_lengths=te.LENGTHS,
                                                           split='validation', seed=42),
                          checkpoint_cfg=configs.RestoreCheckpointConfig(path=str(checkpoint)),
                          partitioner=partitioning.Partitioner(mesh=mesh),
                          output_dir=str(tmp_path / 'one'), model=setup.model)

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  two_dir = tmp_path / 'two'
  # Process 1 is given its own output directory: it must write nothing there (in real use
  # both get the same one, where two writers would race).
  out_dirs = [two_dir, tmp_path / 'two_process_1']
  procs = []
  for pid in range(2):
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests'),
                                           env.get('PYTHONPATH', '')]),
               XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
               JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, '-c', _CHILD, str(checkpoint), str(out_dirs[pid])], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = results_of(procs, timeout=600)

  assert [(r['process_index'], r['process_count']) for r in results] == [(0, 2), (1, 2)]
  # Every process returns the same, full metrics: those of the single process.
  for r in results:
    assert r['step'] == one['step'] == 5
    assert r['metrics'].keys() == one['metrics'].keys()
    for k, v in one['metrics'].items():
      assert r['metrics'][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
  want = json.loads((tmp_path / 'one' / 'results.json').read_text())
  got = json.loads((two_dir / 'results.json').read_text())
  _assert_json_close(got, want)
  # Per-row scores (seqio's inference logs, written by process 0 only) within float32
  # tolerance: the mesh is the same, only the rows' path to the devices differs.
  want_rows, got_rows = _scored_rows(tmp_path / 'one' / 'seqio'), _scored_rows(two_dir / 'seqio')
  assert len(want_rows) == len(te.TASKS) and want_rows.keys() == got_rows.keys()
  for name, rows in want_rows.items():
    assert [(r['input'], r['target']) for r in got_rows[name]] == [
        (r['input'], r['target']) for r in rows], name
    got_s, want_s = (np.asarray([r['score'] for r in x]) for x in (got_rows[name], rows))
    print(f'{name}: {len(want_s)} rows, max |score diff| two vs one process '
          f'{np.max(np.abs(got_s - want_s)):.3g}')
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5, err_msg=name)
  assert not out_dirs[1].exists() or not any(out_dirs[1].rglob('*'))
  # Process 0 wrote everything single-process evaluation writes, nothing more.
  listing = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob('*'))
  assert listing(two_dir) == listing(tmp_path / 'one')
