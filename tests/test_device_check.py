"""benchmarks/device_check.sh in its CPU smoke form: the script the GPU check runs.

The smoke form runs every measurement of the GPU check (train-step MFU, SPT overhead,
retrieval vs matmul, scoring) on a tiny bf16 model, so a GPU session finds a script that
runs; the figures themselves are only meaningful on the accelerator.
"""
import math
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_smoke_prints_its_table():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  out = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'device_check.sh'), '--smoke'],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout
  assert 'tiny T5 (smoke), bf16 activations' in text
  rows = {line.split(' | ')[0].strip(): line.split(' | ')
          for line in text.splitlines() if line.count(' | ') >= 3}
  checks = ['train step MFU (SPT, full fine-tuning)', 'SPT overhead vs prompt tuning (prefix 40)',
            'retrieval at M=4,096 / matmul FLOP/s', 'rank-classification scoring (SPT)']
  assert set(checks) <= set(rows), sorted(rows)
  for name in checks:
    number = float(re.match(r'[+-]?[\d,.]+', rows[name][1].strip()).group(0).replace(',', ''))
    assert math.isfinite(number), (name, rows[name])
  assert float(rows[checks[3]][1].split()[0].replace(',', '')) > 0
