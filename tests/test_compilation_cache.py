"""The persistent compilation cache the entry points turn on (runner.enable_compilation_cache).

A second process compiling the same program must load it from the cache (JAX's own
monitoring event says so) instead of compiling again; '' turns the cache off, and JAX's
JAX_COMPILATION_CACHE_DIR environment variable takes precedence over the flag.
"""
import os
import pathlib
import subprocess
import sys


from spt_jax import runner

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Compiles in well over the 0.2 s threshold (a chain of 40 matmuls and its gradient).
_PROGRAM = r'''
import sys
import jax, jax.numpy as jnp
from jax import monitoring
from spt_jax import runner
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
print('DIR', runner.enable_compilation_cache(sys.argv[1]))
def f(x):
  for i in range(40):
    x = jnp.tanh(x @ x.T + i) * jnp.cos(x)
  return x.sum()
jax.block_until_ready(jax.jit(jax.grad(f))(jnp.ones((32, 32))))
print('HITS', events.count('/jax/compilation_cache/cache_hits'))
'''


def _run(cache_dir, env_dir=None):
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  if env_dir is not None:
    env['JAX_COMPILATION_CACHE_DIR'] = str(env_dir)
  out = subprocess.run([sys.executable, '-c', _PROGRAM, str(cache_dir)], env=env,
                       capture_output=True, text=True, timeout=300, check=True).stdout
  lines = dict(line.split(' ', 1) for line in out.splitlines() if ' ' in line)
  return lines['DIR'], int(lines['HITS'])


def test_second_process_loads_the_compiled_program(tmp_path):
  cache = tmp_path / 'cache'
  used, hits = _run(cache)
  assert used == str(cache) and hits == 0
  assert any(cache.iterdir()), 'nothing written to the cache'
  used, hits = _run(cache)
  assert hits >= 1


def test_environment_variable_takes_precedence(tmp_path):
  used, _ = _run(tmp_path / 'flag', env_dir=tmp_path / 'env')
  assert used == str(tmp_path / 'env')
  assert any((tmp_path / 'env').iterdir()) and not (tmp_path / 'flag').exists()


def test_empty_directory_turns_the_cache_off(monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  assert runner.enable_compilation_cache('') is None


def test_relative_and_home_paths_are_resolved(monkeypatch, tmp_path):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.chdir(tmp_path)
  seen = {}
  monkeypatch.setattr(runner.jax.config, 'update', lambda k, v: seen.__setitem__(k, v))
  assert runner.enable_compilation_cache('~/c') == str(tmp_path / 'c')
  assert runner.enable_compilation_cache('rel') == str(tmp_path / 'rel')
  assert seen['jax_compilation_cache_dir'] == str(tmp_path / 'rel')
