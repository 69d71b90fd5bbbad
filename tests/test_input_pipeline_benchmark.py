"""`benchmarks/input_pipeline.py --quick` runs and prints its table and goal-ratio line.

Checks the output's form and that every measured rate is positive and finite, not that the
goals are met (that is the benchmark's own report; README's "Measured figures" has the
numbers). Needs the shared T5 vocabulary (the T0 and P3 pipelines use it).

  CI=1 SPT_SHARED_FIXTURES=../shared/fixtures .venv/bin/python -m pytest \
      tests/test_input_pipeline_benchmark.py -q -m slow      # ~3 min on 2 cores
"""
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMBER = r'([0-9]+(?:\.[0-9]+)?|nan|inf)'
PIPELINES = ('sample', 't0', 'p3', 'cached')


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_benchmark_prints_positive_finite_rates(shared_fixtures):
  vocab = shared_fixtures / 't5_vocab' / 'sentencepiece.model'
  env = dict(os.environ, SPT_T5_VOCAB=str(vocab), PYTHONPATH=str(ROOT))
  env.pop('XLA_FLAGS', None)  # conftest's 8 fake devices: the benchmark times one device
  proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'input_pipeline.py'), '--quick'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  last = re.fullmatch(r'goal ratios: sample=(\S+) t0=(\S+) p3=(\S+) cached=(\S+)', lines[-1])
  assert last, f'last line is not the goal-ratio line: {lines[-1]!r}'
  for name, value in zip(PIPELINES, last.groups()):
    ratio = float(value)
    assert math.isfinite(ratio) and ratio > 0, (name, value)
  # One table row per pipeline: start-up s, examples/s, per core, delivered/s, CPU ms/ex.
  for name in PIPELINES:
    row = [l for l in lines if l.startswith(f'{name} ')]
    assert len(row) == 1, (name, lines)
    numbers = [float(x) for x in re.findall(NUMBER, row[0].split(None, 1)[1])[:5]]
    assert len(numbers) == 5 and all(math.isfinite(x) and x > 0 for x in numbers), row[0]
  step = [l for l in lines if l.startswith('tiny SPT train step')]
  assert len(step) == 1 and re.search(r'-> ([0-9.]+) examples/s', step[0]), lines
  assert float(re.search(r'-> ([0-9.]+) examples/s', step[0]).group(1)) > 0
