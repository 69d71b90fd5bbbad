r"""Kills the training CLI at seeded random moments and checks that each resume is exact.

Each trial starts the CLI on tests/gin/fault_trials.gin (the default SPT recipe on the tiny
copy task; orbax's async checkpointing, a save every 4 of 40 steps), sends it a signal, then
runs the same command again to the end and compares the final train state (parameters,
optimizer state, step, RNG, memory-usage state) bit for bit with an uninterrupted run.
Two kinds of moment, alternating:

* `random_time`: a delay drawn uniformly over the uninterrupted run's training span
  (first logged step to exit), counted from the trial's first logged step;
* `during_save`: the moment a save's temporary directory appears (`*.orbax-checkpoint-tmp*`,
  the checkpoint drawn at random), plus a delay drawn from [0, 20 ms): the process dies
  while orbax is writing.

After the kill a trial records the finished step directories and the temporary ones left,
then checks that the resumed run restored the newest finished step (never a temporary one).

  python tests/fault_trials.py --trials 20 --seed 0 --signal SIGKILL --work_dir /tmp/kills

prints one line per trial and a summary (20 trials: about 10 minutes on 2 cores).
"""
import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 40
_TIMEOUT_S = 300


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([ROOT, os.path.join(ROOT, 'tests'),
                                       env.get('PYTHONPATH', '')])
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _command(model_dir):
  return [sys.executable, '-m', 'spt_jax.train',
          f'--gin_search_paths={os.path.join(ROOT, "gin")},{os.path.join(ROOT, "tests", "gin")}',
          '--gin_file=fault_trials.gin', f"--gin.MODEL_DIR='{model_dir}'"]


def _logged_steps(model_dir):
  path = os.path.join(model_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  steps = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:   # a line being written
        continue
      if record.get('step', -1) >= 1 and 'loss' in record:
        steps.append(record['step'])
  return steps


def _step_dirs(model_dir):
  directory = os.path.join(model_dir, 'checkpoints')
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return (sorted(int(n) for n in names if n.isdigit()),
          sorted(n for n in names if not n.isdigit()))


def _start(model_dir, log_path):
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  return subprocess.Popen(_command(model_dir), env=_env(), cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT), log


def _run_to_end(model_dir, log_path):
  proc, log = _start(model_dir, log_path)
  try:
    returncode = proc.wait(timeout=_TIMEOUT_S)
  finally:
    log.close()
  with open(log_path) as f:
    text = f.read()
  if returncode != 0:
    raise RuntimeError(f'training exited with {returncode}; log {log_path}:\n{text[-3000:]}')
  return text


def _wait(predicate, proc, what):
  deadline = time.time() + _TIMEOUT_S
  while not predicate():
    if proc.poll() is not None or time.time() > deadline:
      return False
    time.sleep(0.001)
  return True


def final_state(model_dir):
  """The saved train state of step TRAIN_STEPS as host arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(model_dir, 'checkpoints', str(TRAIN_STEPS), 'state')
  with ocp.StandardCheckpointer() as checkpointer:
    return jax.device_get(checkpointer.restore(path))


def reference_run(work_dir):
  """The uninterrupted run: (model_dir, training span in seconds)."""
  model_dir = os.path.join(work_dir, 'reference')
  proc, log = _start(model_dir, os.path.join(work_dir, 'reference.log'))
  _wait(lambda: _logged_steps(model_dir), proc, 'first step')
  first = time.time()
  returncode = proc.wait(timeout=_TIMEOUT_S)
  log.close()
  if returncode != 0:
    with open(os.path.join(work_dir, 'reference.log')) as f:
      raise RuntimeError(f'reference run exited with {returncode}:\n{f.read()[-3000:]}')
  return model_dir, time.time() - first


def run_trials(work_dir, trials, seed, signal_name='SIGKILL', reference=None):
  """Runs `trials` kill-and-resume trials; returns one dict per trial (see the docstring).

  `reference`: `reference_run`'s result, when several calls share one uninterrupted run.
  """
  from spt_jax import train_state  # pylint: disable=g-import-not-at-top
  os.makedirs(work_dir, exist_ok=True)
  ref_dir, span = reference or reference_run(work_dir)
  want = final_state(ref_dir)
  saves = TRAIN_STEPS // 4
  rng = np.random.RandomState(seed)
  sig = getattr(signal, signal_name)
  report = []
  for i in range(trials):
    model_dir = os.path.join(work_dir, f'trial_{i}')
    mode = 'random_time' if i % 2 == 0 else 'during_save'
    # SIGTERM is handled once training runs; sent later than the end it is a plain run.
    delay = rng.uniform(0.0, span if sig == signal.SIGKILL else 0.7 * span)
    save_index = int(rng.randint(1, saves + 1))
    save_delay = rng.uniform(0.0, 0.02)
    proc, log = _start(model_dir, os.path.join(work_dir, f'trial_{i}.log'))
    _wait(lambda: _logged_steps(model_dir), proc, 'first step')
    if mode == 'random_time':
      time.sleep(delay)
    else:
      tmp = os.path.join(model_dir, 'checkpoints', f'{4 * save_index}.orbax-checkpoint-tmp*')
      _wait(lambda: glob.glob(tmp), proc, 'save')
      time.sleep(save_delay)
    t_kill = time.time()
    if proc.poll() is None:
      proc.send_signal(sig)
    returncode = proc.wait(timeout=_TIMEOUT_S)
    log.close()
    finished, temporary = _step_dirs(model_dir)
    logged = _logged_steps(model_dir)
    text = _run_to_end(model_dir, os.path.join(work_dir, f'trial_{i}_resume.log'))
    resumed = [int(s) for s in re.findall(r'Resuming from checkpoint step (\d+)', text)]
    report.append({
        'trial': i, 'mode': mode, 'signal': signal_name,
        'moment': (f'{delay:.2f} s after step 1' if mode == 'random_time' else
                   f'save of step {4 * save_index} + {1000 * save_delay:.0f} ms'),
        'returncode': returncode, 'killed_at_step': max(logged) if logged else 0,
        'finished_steps_on_disk': finished, 'temporary_dirs': temporary,
        'resumed_from': resumed,
        'kill_to_exit_s': round(time.time() - t_kill, 1),
        'identical': train_state.tree_equal(final_state(model_dir), want),
    })
  return report


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--trials', type=int, default=20)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--signal', default='SIGKILL', choices=('SIGKILL', 'SIGTERM'))
  parser.add_argument('--work_dir', required=True)
  args = parser.parse_args()
  report = run_trials(os.path.abspath(args.work_dir), args.trials, args.seed, args.signal)
  for r in report:
    print(f"trial {r['trial']:2d} {r['mode']:11s} {r['moment']:28s} exit {r['returncode']:4d} "
          f"logged step {r['killed_at_step']:2d}  finished {r['finished_steps_on_disk']} "
          f"temporary {r['temporary_dirs']}  resumed from {r['resumed_from']}  "
          f"bit-identical {r['identical']}")
  during = sum(bool(r['temporary_dirs']) for r in report)
  print(f"{len(report)} trials ({args.signal}, seed {args.seed}): "
        f"{sum(r['identical'] for r in report)} bit-identical to the uninterrupted run; "
        f"{during} killed with a save's temporary directory on disk, none restored.")
  return 0 if all(r['identical'] for r in report) else 1


if __name__ == '__main__':
  sys.exit(main())
