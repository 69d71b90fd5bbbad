"""The T5X route (gin/t5x/) run for real: T5X's own trainer and evaluator on CPU.

What runs (subprocesses from the repository root, one CPU device, gin/t5x/local.gin):
* `python -m t5x.train` for every T5X experiment file: t0_spt_large.gin, and t0_spt_xl.gin with
  the prompts_only.gin overlay (one run covers both files), 2 steps on the sample mixture with T5X's inference
  evaluation (rank-classification scores) at step 2; each must write checkpoints, train
  summaries and per-task metrics. The prompts_only run must leave every backbone parameter
  bit-identical and move the soft prompt and memory bank.
* `python -m t5x.eval` (gin/t5x/local_eval.gin) on the t0_spt_large run's checkpoint_2: its
  per-row scores equal those t5x.train's own evaluation wrote for the same step.
* `python -m spt_jax.evaluate` on the same T5X checkpoint (CHECKPOINT_FORMAT 't5x': orbax
  `checkpoint_<step>/state`, read by spt_jax.checkpoints.load_t5x) with the same rows
  (seqio.Evaluator over the same cached tasks, EVAL_NUM_EXAMPLES = 8 answer-choice rows per
  task, the same feature lengths 128 / 32): every row's log-likelihood equals T5X's within
  1e-4. T5X is the outside reference; seqio's JSONLogger writes one line per row on both sides
  (`inference_eval/<task>-<step>.jsonl` for T5X, `seqio/<task>-<step>.jsonl` for us), matched
  by the row's `idx` (example, choice) and checked to hold the same input and target text.

t5x is not on PyPI (launch/setup.sh --t5x installs it; --dev includes it): without it these
tests skip, except when the environment variable `CI` is set, where they fail (as the shared
fixtures do in conftest.py), so that a CI job that lost t5x cannot pass by skipping.

One trained model directory (the t0_spt_large run) is shared by the module; the held-out
evaluation of t5x.eval and spt_jax.evaluate uses the RTE sample score-eval mixture (8
templates), the xl and prompts_only runs evaluate on it too, the large run on the whole
sample held-out score-eval mixture. Wall time: see gin/t5x/README.md.
"""
import glob
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from spt_jax import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The gin files of every command run here (tests/test_documented_commands.py checks that each
# documented CPU command of the T5X route is one of these).
TRAIN_GIN_FILES = {
    't0_spt_large': ['gin/t5x/t0_spt_large.gin', 'gin/t5x/local.gin'],
    't0_spt_xl+prompts_only': ['gin/t5x/t0_spt_xl.gin', 'gin/t5x/prompts_only.gin',
                               'gin/t5x/local.gin'],
}
T5X_EVAL_GIN_FILES = ['gin/t5x/spt_t5_1_1_large.gin', 't5x/configs/runs/eval.gin',
                      'gin/t5x/local_eval.gin']
SPT_JAX_EVAL_GIN_FILES = ['methods/spt_paper.gin', 'runs/local.gin', 'runs/eval.gin']
FULL_EVAL_MIXTURE = 'spt_sample_heldout_score_eval'
RTE_EVAL_MIXTURE = 'spt_sample_super_glue_rte_score_eval'
LENGTHS = {'inputs': 128, 'targets': 32}   # what gin/t5x/local.gin trains and evaluates with
NUM_ROWS = 8                               # EVALUATOR_NUM_EXAMPLES of gin/t5x/local.gin
SCORE_ATOL = 1e-4
PROMPT_PREFIXES = ('encoder/soft_prompt/', 'encoder/memory_bank/')


def _ci() -> bool:
  return os.environ.get('CI', '').strip().lower() not in ('', '0', 'false', 'no')


@pytest.fixture(scope='module')
def t5x_installed():
  """t5x importable in this interpreter: else skip, or FAIL when CI is set."""
  missing = [m for m in ('t5x', 'airio', 'jestimator') if importlib.util.find_spec(m) is None]
  if missing:
    message = (f'{missing} not installed in {sys.executable}: bash launch/setup.sh --t5x '
               '(included in --dev) installs t5x and what it imports')
    if _ci():
      pytest.fail(f'{message} (CI is set, so this is an error, not a skip)', pytrace=False)
    pytest.skip(message)


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  return env


def _cli(module, args, timeout=600):
  """`python -m <module> args` from the repository root; returns (completed, seconds)."""
  start = time.time()
  out = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=timeout)
  seconds = time.time() - start
  print(f'{module}: {seconds:.0f} s')   # shown with -s / on failure
  assert out.returncode == 0, out.stderr[-6000:]
  return out, seconds


def _train(model_dir, experiment, *extra):
  files = [f'--gin_file={f}' for f in TRAIN_GIN_FILES[experiment]]
  return _cli('t5x.train', [*files, f"--gin.MODEL_DIR='{model_dir}'", *extra])


def _rows(directory, step):
  """{(task, idx): (score, inputs text, targets text)} of seqio JSONLogger files."""
  rows = {}
  for path in glob.glob(os.path.join(directory, f'*-{step:06d}.jsonl')):
    task = os.path.basename(path).rsplit('-', 1)[0]
    for line in open(path):
      r = json.loads(line)
      rows[(task, tuple(r['input']['idx']))] = (
          r['score'], r['input']['inputs_pretokenized'], r['input']['targets_pretokenized'])
  return rows


def _eval_tasks(mixture):
  import seqio  # pylint: disable=g-import-not-at-top
  import spt_tasks.sample  # pylint: disable=g-import-not-at-top,unused-import
  return sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks)


def _check_trained_and_evaluated(model_dir, mixture):
  model_dir = pathlib.Path(model_dir)
  assert checkpoints.t5x_checkpoint_steps(model_dir) == [0, 2]
  assert checkpoints.detect_format(model_dir) == 't5x'
  assert glob.glob(str(model_dir / 'train' / 'events.out.tfevents.*')), 'no train summaries'
  tasks = _eval_tasks(mixture)
  assert len(tasks) >= 8
  for task in tasks:
    lines = (model_dir / 'inference_eval' / f'{task}-metrics.jsonl').read_text().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics['step'] == 2, (task, metrics)
    assert 0.0 <= metrics['accuracy'] <= 100.0, (task, metrics)
  rows = _rows(model_dir / 'inference_eval', 2)
  assert {t for t, _ in rows} == set(tasks)
  assert len(rows) == NUM_ROWS * len(tasks)
  assert all(np.isfinite(s) and s < 0 for s, _, _ in rows.values())
  return rows


@pytest.fixture(scope='module')
def large_run(t5x_installed, tmp_path_factory):
  """The t0_spt_large run (2 steps, evaluation on the whole sample held-out mixture)."""
  model_dir = tmp_path_factory.mktemp('t5x_large')
  _, seconds = _train(model_dir, 't0_spt_large')
  return model_dir, seconds


def test_t0_spt_large_trains_and_evaluates(large_run):
  model_dir, _ = large_run
  _check_trained_and_evaluated(model_dir, FULL_EVAL_MIXTURE)
  first = checkpoints.flatten(checkpoints.load_t5x(model_dir / 'checkpoint_0'))
  last = checkpoints.flatten(checkpoints.load_t5x(model_dir))   # the latest step: 2
  assert not np.array_equal(first['token_embedder/embedding'],
                            last['token_embedder/embedding'])   # full training: all move
  assert not np.array_equal(first['encoder/soft_prompt/prompt'],
                            last['encoder/soft_prompt/prompt'])
  assert last['encoder/memory_bank/values'].shape == (1024, 5, 64)   # the T5X route's SPT


def test_t0_spt_xl_prompts_only_trains_only_the_prompts_in_a_relative_model_dir(
    t5x_installed, tmp_path):
  # A relative MODEL_DIR (orbax refuses those; local.gin makes it absolute).
  relative = os.path.relpath(tmp_path / 'xl', ROOT)
  assert not os.path.isabs(relative)
  _train(relative, 't0_spt_xl+prompts_only',
         f"--gin.infer_eval/utils.DatasetConfig.mixture_or_task_name='{RTE_EVAL_MIXTURE}'")
  model_dir = tmp_path / 'xl'
  _check_trained_and_evaluated(model_dir, RTE_EVAL_MIXTURE)
  first = checkpoints.flatten(checkpoints.load_t5x(model_dir / 'checkpoint_0'))
  last = checkpoints.flatten(checkpoints.load_t5x(model_dir / 'checkpoint_2'))
  prompt_names = [n for n in first if n.startswith(PROMPT_PREFIXES)]
  assert sorted(prompt_names) == ['encoder/memory_bank/keys', 'encoder/memory_bank/values',
                                  'encoder/soft_prompt/prompt']
  moved = [n for n in prompt_names if not np.array_equal(first[n], last[n])]
  assert moved == prompt_names, f'prompt parameters that did not train: {moved}'
  changed = [n for n in first if n not in prompt_names and not np.array_equal(first[n], last[n])]
  assert not changed, f'backbone parameters changed under prompts_only: {changed}'


@pytest.fixture(scope='module')
def t5x_eval(large_run):
  """`python -m t5x.eval` on the large run's checkpoint_2 (RTE sample score-eval tasks)."""
  model_dir, _ = large_run
  out_dir = model_dir / 't5x_eval'
  _, seconds = _cli('t5x.eval', [
      *[f'--gin_file={f}' for f in T5X_EVAL_GIN_FILES],
      f"--gin.MIXTURE_OR_TASK_NAME='{RTE_EVAL_MIXTURE}'",
      f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_2'}'",
      f"--gin.EVAL_OUTPUT_DIR='{out_dir}'"])
  return out_dir, seconds


def test_t5x_eval_runs_on_the_t5x_checkpoint(large_run, t5x_eval):
  model_dir, _ = large_run
  out_dir, _ = t5x_eval
  tasks = _eval_tasks(RTE_EVAL_MIXTURE)
  for task in tasks:
    metrics = json.loads((out_dir / 'inference_eval' / f'{task}-metrics.jsonl')
                         .read_text().splitlines()[-1])
    assert metrics['step'] == 2 and 0.0 <= metrics['accuracy'] <= 100.0, (task, metrics)
  rows = _rows(out_dir / 'inference_eval', 2)
  assert len(rows) == NUM_ROWS * len(tasks)
  # The same parameters and rows as t5x.train's own evaluation at step 2: the same scores.
  during_training = _rows(model_dir / 'inference_eval', 2)
  for key, (score, inputs, targets) in rows.items():
    assert during_training[key] == (score, inputs, targets), key


def test_spt_jax_evaluate_reads_the_t5x_checkpoint_and_scores_as_t5x(large_run, t5x_eval):
  model_dir, _ = large_run
  reference = _rows(t5x_eval[0] / 'inference_eval', 2)
  out_dir = model_dir / 'spt_jax_eval'
  out, _ = _cli('spt_jax.evaluate', [
      '--gin_search_paths=gin', *[f'--gin_file={f}' for f in SPT_JAX_EVAL_GIN_FILES],
      f"--gin.CHECKPOINT_PATH='{model_dir / 'checkpoint_2'}'",
      "--gin.CHECKPOINT_FORMAT='t5x'", f"--gin.EVAL_MIXTURE='{RTE_EVAL_MIXTURE}'",
      f'--gin.EVAL_NUM_EXAMPLES={NUM_ROWS}', '--gin.EVAL_BATCH_SIZE=8',
      f'--gin.EVAL_TASK_FEATURE_LENGTHS={LENGTHS!r}', f"--gin.EVAL_OUTPUT_DIR='{out_dir}'"])
  assert 'T5X orbax checkpoint' in out.stderr, out.stderr[-3000:]
  assert (out_dir / 'results.md').is_file()
  ours = _rows(out_dir / 'seqio', 2)
  assert set(ours) == set(reference)
  diffs = []
  for key, (score, inputs, targets) in reference.items():
    assert ours[key][1:] == (inputs, targets), key    # the same row
    diffs.append(abs(ours[key][0] - score))
  print(f'spt_jax.evaluate vs t5x.eval: {len(diffs)} rows, max |score diff| '
        f'{max(diffs):.3g}, mean {np.mean(diffs):.3g}')
  assert max(diffs) <= SCORE_ATOL, max(diffs)
