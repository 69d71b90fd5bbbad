"""benchmarks/eval_vs_torch.py: its documented smoke form runs, agrees with torch, and its
checks reject disagreeing scores / tokens.

The smoke command is read from the script's docstring (the line ending in `# a smoke run`,
with its continuation), so the documented form is the one tested. Wall time on the shared
2-core machine (load ~2.5): 18 s for the subprocess (jax / torch / transformers imports, two small
compiles), ~3 s to import the script here for the check-function tests; --rtol 0 makes the same
run exit 1 (its f32 scores differ from torch's by ~2e-5).
"""
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'eval_vs_torch.py'
FINAL = re.compile(r'^ratios ours/torch: score=(\d+\.\d+) decode=(\d+\.\d+)$')


def _smoke_argv():
  doc = SCRIPT.read_text().split('"""')[1]
  lines = doc.splitlines()
  end = next(i for i, l in enumerate(lines) if l.rstrip().endswith('# a smoke run'))
  start = end
  while not lines[start].strip().startswith('.venv/bin/python'):
    start -= 1
  text = ' '.join(l.split('  #')[0].strip().rstrip('\\') for l in lines[start:end + 1])
  argv = shlex.split(text)
  assert argv[:2] == ['.venv/bin/python', 'benchmarks/eval_vs_torch.py'], argv
  return argv[2:]


@pytest.fixture(scope='module')
def script():
  # As `python benchmarks/eval_vs_torch.py` does, the script's folder is on sys.path (for its
  # sibling torch_reference.py).
  sys.path.insert(0, str(SCRIPT.parent))
  try:
    spec = importlib.util.spec_from_file_location('eval_vs_torch', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(SCRIPT.parent))
  return module


def test_smoke_form_runs_and_agrees_with_torch():
  argv = _smoke_argv()
  assert '--require_decode_match' in argv and '--layers' in argv, argv
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  env.pop('XLA_FLAGS', None)  # one CPU device, as the documented command runs
  result = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  out = result.stdout
  assert result.returncode == 0, out + result.stderr
  lines = out.strip().splitlines()
  match = FINAL.match(lines[-1])
  assert match, lines[-1]
  assert all(float(r) > 0 for r in match.groups()), lines[-1]
  assert 'correctness: passed' in lines, out
  assert re.search(r'^scores: .*: agree$', out, re.M), out
  assert re.search(r'^greedy tokens: 1\.0000 of 32 agree, 1\.000 of rows entirely', out,
                   re.M), out
  assert re.search(r'^score median over 2: ', out, re.M), out
  assert len(re.findall(r'^(warm-up|step) \d+: ', out, re.M)) == 3, out


def test_score_check_tolerance(script):
  theirs = np.array([-10.0, -200.0, -0.5], np.float32)
  assert script.compare_scores(theirs * (1 + 5e-4), theirs, 3, 1e-3)[0]
  ok, message = script.compare_scores(theirs + np.array([0, 0.5, 0]), theirs, 3, 1e-3)
  assert not ok and 'DISAGREE' in message, message
  assert not script.compare_scores(np.array([np.nan, -200.0, -0.5]), theirs, 3, 1e-3)[0]
  assert not script.compare_scores(theirs[:2], theirs[:2], 3, 1e-3)[0]  # wrong batch


def test_token_check(script):
  theirs = np.arange(1, 13).reshape(3, 4)
  ours = theirs.copy()
  ours[1, 2] = 99
  ok, message = script.compare_tokens(ours, theirs, (3, 4), require_match=False)
  assert ok and '0.9167 of 12 agree, 0.667 of rows entirely' in message, message
  assert not script.compare_tokens(ours, theirs, (3, 4), require_match=True)[0]
  assert script.compare_tokens(theirs, theirs, (3, 4), require_match=True)[0]
  # A side that stopped early (fewer tokens) is unequal work: always a failure.
  assert not script.compare_tokens(ours[:, :3], theirs[:, :3], (3, 4), require_match=False)[0]
