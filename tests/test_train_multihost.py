"""Multi-host training on CPU: two processes with jax.distributed (gloo) match one process.

Each process gets 2 fake CPU devices (4 global); the global batch is split across the
processes ('slice_global_batch' input sharding, so the global batches equal the
single-process run's). Checkpoints are written jointly by both processes (orbax).
"""
import os
import socket
import subprocess

import jax
import pytest

import train_testlib as tl
from spt_jax import partitioning
from test_train import _assert_trees_close, _env, _final_params, _losses, _testlib_cmd


@pytest.fixture(autouse=True, scope='module')
def _task():
  tl.register_task()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  """jax.distributed on localhost (gloo): 2 processes x 2 devices == 1 process x 4 devices."""
  ref = tl.run_train(
      mesh=partitioning.create_mesh(mesh_shape=(4, 1), devices=jax.devices()[:4]),
      **dict(tl.reference_kwargs(str(tmp_path / 'one'), 10, dropout_rate=0.0),
             input_sharding='slice_global_batch'))
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  model_dir = str(tmp_path / 'two')
  procs = []
  for pid in range(2):
    env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
               JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        _testlib_cmd(model_dir, 10, 'distributed=True', 'dropout_rate=0.0',
                     "input_sharding='slice_global_batch'"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  got = {s: r['loss'] for s, r in tl.read_metrics(model_dir).items()}
  want = _losses(ref)
  assert sorted(got) == list(range(1, 11))
  for s in range(1, 11):
    assert got[s] == pytest.approx(want[s], rel=1e-5), s
  _assert_trees_close(jax.device_get(ref['state'].params), _final_params(model_dir, 10), 1e-5)
