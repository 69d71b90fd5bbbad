"""Tests of the launchers in launch/: dry-run output, argument errors, and real runs against
stand-in `gcloud` / `sbatch` / `srun` / python executables.

The stand-ins make the non-dry-run code paths run for real on this machine: the TPU launcher's
remote commands execute in per-worker home directories, the SLURM script is executed with an
`srun` that starts one local process per task with SLURM's environment, and those processes
bring up `jax.distributed` through jax's own SLURM detection (as spt_jax.train does).

Run as a module (`python -m tests.test_launch`), this file is the probe that the SLURM test
starts in each task.
"""
import functools
import os
import pathlib
import random
import re
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch'
SCRIPTS = ('local.sh', 'tpu_pod.sh', 'gpu_slurm.sh')


def run(script, *args, cwd=None, env=None, timeout=60, root=ROOT):
  """Runs `bash <root>/launch/<script> args...`; returns the CompletedProcess (text)."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run(['bash', str(root / 'launch' / script), *args], cwd=cwd or root,
                        env=full_env, capture_output=True, text=True, timeout=timeout)


def lines_with(text, needle):
  return [line for line in text.splitlines() if needle in line]


def write_executable(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def fake_repo(tmp_path, scripts=SCRIPTS, gin_files=('methods/spt.gin', 'runs/local.gin')):
  """A throw-away git repo holding copies of the launchers and (empty) gin files."""
  repo = tmp_path / 'repo'
  (repo / 'launch').mkdir(parents=True)
  for s in (*scripts, 'lib.sh'):  # lib.sh: the helpers every launcher sources
    shutil.copy(LAUNCH / s, repo / 'launch' / s)
  for g in gin_files:
    (repo / 'gin' / g).parent.mkdir(parents=True, exist_ok=True)
    (repo / 'gin' / g).write_text('# test gin file\n')
  (repo / '.gitignore').write_text('.venv/\n/runs/\n')
  subprocess.run(['git', 'init', '-q'], cwd=repo, check=True)
  return repo


# ------------------------------------------------------------------------------ shellcheck


def test_shellcheck_passes_on_all_launch_scripts():
  shellcheck = shutil.which('shellcheck')
  if shellcheck is None:
    pytest.skip('shellcheck is not installed (bash launch/setup.sh --dev installs it with apt)')
  scripts = sorted(str(p) for p in LAUNCH.glob('*.sh'))
  assert len(scripts) >= 3
  result = subprocess.run([shellcheck, '--severity=style', *scripts], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_and_unknown_argument(script):
  result = run(script, '-h')
  assert result.returncode == 0
  assert result.stdout.startswith('Usage: bash launch/' + script)
  result = run(script, '--no_such_option')
  assert result.returncode == 2
  assert "unknown argument '--no_such_option'" in result.stderr
  result = run(script, '--gin.TRAIN_STEPS')
  assert result.returncode == 2
  assert 'write it as --gin.KEY=VALUE' in result.stderr


# ------------------------------------------------------------------------------ local.sh


def test_local_dry_run_default_is_spt_local_run():
  result = run('local.sh', '--dry-run')
  assert result.returncode == 0, result.stderr
  cmds = [l for l in result.stdout.splitlines() if not l.startswith('#')]
  assert cmds[0] == 'bash launch/setup.sh'
  assert cmds[1] == ('.venv/bin/python -m spt_jax.train --gin_file=methods/spt.gin '
                     '--gin_file=runs/local.gin --gin_search_paths=gin '
                     '"--gin.MODEL_DIR=\'runs/local_spt\'"')
  evaluate = cmds[2]
  # runs/eval.gin first: the method file and runs/local.gin (last) override its EVAL_* defaults.
  assert evaluate.startswith('.venv/bin/python -m spt_jax.evaluate --gin_file=runs/eval.gin '
                             '--gin_file=methods/spt.gin --gin_file=runs/local.gin '
                             '--gin_search_paths=gin')
  assert '"--gin.MODEL_DIR=\'runs/local_spt\'"' in evaluate
  # The final checkpoint is resolved after training: a placeholder, or the real one where the
  # default run dir already holds a run (CI runs README command 1 before the tests).
  assert re.search(r'"--gin\.CHECKPOINT_PATH=\'runs/local_spt/checkpoints/(<final step>|\d+)\'"',
                   evaluate), evaluate
  assert '"--gin.EVAL_MIXTURE=\'spt_sample_heldout_score_eval\'"' in evaluate
  assert '"--gin.EVAL_OUTPUT_DIR=\'runs/local_spt/eval\'"' in evaluate
  assert len(cmds) == 3


def test_local_dry_run_overrides_and_passes_bindings_to_both(tmp_path):
  model_dir = tmp_path / 'my run'
  ckpts = model_dir / 'checkpoints'
  for name in ('5', '20', '100.orbax-checkpoint-tmp-123', 'not_a_step'):
    (ckpts / name).mkdir(parents=True)
  result = run('local.sh', '--dry-run', '--skip_setup', '--gin_file',
               'experiments/t0_spt_large.gin', f'--model_dir={model_dir}',
               '--gin.TRAIN_STEPS=7', "--gin.PromptConfig.memory_size=64",
               '--eval_mixture', 'other_eval')
  assert result.returncode == 0, result.stderr
  cmds = [l for l in result.stdout.splitlines() if not l.startswith('#')]
  assert len(cmds) == 2
  train, evaluate = cmds
  for cmd in (train, evaluate):
    # runs/local.gin comes after the chosen file so it shrinks it to CPU.
    assert '--gin_file=experiments/t0_spt_large.gin --gin_file=runs/local.gin' in cmd
    assert cmd.endswith('--gin.TRAIN_STEPS=7 --gin.PromptConfig.memory_size=64')
  assert f'"--gin.MODEL_DIR=\'{model_dir}\'"' in train
  # The highest whole-number step directory, not orbax's temporary ones.
  assert f'"--gin.CHECKPOINT_PATH=\'{ckpts}/20\'"' in evaluate
  assert '"--gin.EVAL_MIXTURE=\'other_eval\'"' in evaluate


def test_local_errors_name_the_problem(tmp_path):
  result = run('local.sh', '--model_dir')
  assert result.returncode == 2 and '--model_dir needs a value' in result.stderr
  repo = fake_repo(tmp_path, scripts=('local.sh',), gin_files=('runs/local.gin',))
  result = run('local.sh', '--skip_setup', root=repo)
  assert result.returncode == 2
  assert 'gin file(s) not found as given or under gin/: methods/spt.gin' in result.stderr


def test_local_real_run_trains_then_evaluates_the_final_checkpoint(tmp_path):
  """Runs local.sh for real with a stand-in interpreter that records its calls."""
  repo = fake_repo(tmp_path, scripts=('local.sh',))
  calls = tmp_path / 'calls.txt'
  fake_python = write_executable(tmp_path / 'bin' / 'python', f"""
      #!/usr/bin/env bash
      # Stand-in for .venv/bin/python: records argv; train writes checkpoints, evaluate results.
      printf '%s\\n' "$*" >> {calls}
      model_dir="" ckpt="" out=""
      for a in "$@"; do
        case "$a" in
          --gin.MODEL_DIR=*) model_dir="${{a#*=}}"; model_dir="${{model_dir//\\'/}}" ;;
          --gin.CHECKPOINT_PATH=*) ckpt="${{a#*=}}" ;;
          --gin.EVAL_OUTPUT_DIR=*) out="${{a#*=}}"; out="${{out//\\'/}}" ;;
        esac
      done
      if [[ "$2" == spt_jax.train ]]; then
        mkdir -p "$model_dir/checkpoints/10" "$model_dir/checkpoints/30" "$model_dir/checkpoints/200.orbax-checkpoint-tmp-9"
      else
        mkdir -p "$out" && echo "ckpt $ckpt" > "$out/results.md"
      fi
      """)
  result = run('local.sh', '--skip_setup', f'--python={fake_python}', '--gin.TRAIN_STEPS=30',
               root=repo, cwd=tmp_path)
  assert result.returncode == 0, result.stdout + result.stderr
  recorded = calls.read_text().splitlines()
  assert len(recorded) == 2
  assert recorded[0].startswith('-m spt_jax.train --gin_file=methods/spt.gin')
  assert recorded[1].startswith('-m spt_jax.evaluate')
  assert "--gin.CHECKPOINT_PATH='runs/local_spt/checkpoints/30'" in recorded[1]
  assert (repo / 'runs/local_spt/eval/results.md').read_text().strip() == (
      "ckpt 'runs/local_spt/checkpoints/30'")
  assert 'checkpoint: runs/local_spt/checkpoints/30' in result.stdout
  assert 'results:    runs/local_spt/eval/results.md' in result.stdout
  # Each command is echoed before it runs.
  assert lines_with(result.stderr, '+ ') and 'spt_jax.train' in result.stderr


def test_local_real_run_fails_clearly_without_a_checkpoint(tmp_path):
  repo = fake_repo(tmp_path, scripts=('local.sh',))
  fake_python = write_executable(tmp_path / 'bin' / 'python', '#!/usr/bin/env bash\nexit 0\n')
  result = run('local.sh', '--skip_setup', f'--python={fake_python}', root=repo)
  assert result.returncode == 2
  assert 'left no checkpoint under runs/local_spt' in result.stderr


# ------------------------------------------------------------------------------ tpu_pod.sh

TPU_ARGS = ('--tpu', 'spt-v4', '--zone', 'us-central2-b', '--gin_file',
            'experiments/t0_spt_large.gin', '--model_dir', 'gs://bkt/spt/run1')


def test_tpu_dry_run_prints_every_gcloud_command():
  result = run('tpu_pod.sh', *TPU_ARGS, '--accelerator-type', 'v4-32', '--create',
               '--gin.TRAIN_STEPS=100', '--env', 'TFDS_DATA_DIR=gs://bkt/tfds', '--dry-run')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  gcloud = [l for l in out.splitlines() if l.startswith('gcloud ')]
  assert gcloud[0] == ("gcloud compute tpus tpu-vm describe spt-v4 --zone=us-central2-b "
                       "'--format=value(state)'")
  assert gcloud[1] == ('gcloud compute tpus tpu-vm create spt-v4 --zone=us-central2-b '
                       '--accelerator-type=v4-32 --version=tpu-ubuntu2204-base')
  assert gcloud[2].startswith('gcloud compute tpus tpu-vm scp /')
  assert gcloud[2].endswith('spt-v4:spt_jax_src.tar.gz --zone=us-central2-b --worker=all')
  assert '--worker=all' in gcloud[3] and 'tar -xzf ~/spt_jax_src.tar.gz -C ~/spt_jax' in gcloud[3]
  setup = gcloud[4]
  assert '--worker=all' in setup
  assert 'PYTHON=python3.11 bash launch/setup.sh' in setup
  assert 'pip install --quiet --disable-pip-version-check -r requirements-tpu.txt' in setup
  assert '--worker=all' in gcloud[5] and 'started on' in out
  assert 'setsid nohup bash ~/spt_jax_run.sh' in out
  assert ('.venv/bin/python -m spt_jax.train --gin_file=experiments/t0_spt_large.gin '
          '--gin_search_paths=gin "--gin.MODEL_DIR=\'gs://bkt/spt/run1\'" '
          '--gin.TRAIN_STEPS=100 > ~/spt_jax_train.log 2>&1') in out
  assert 'export TFDS_DATA_DIR=gs://bkt/tfds' in out
  stream = gcloud[-1]
  assert stream.startswith('gcloud compute tpus tpu-vm ssh spt-v4 --zone=us-central2-b --worker=0')
  assert 'tail -n +1 -F ~/spt_jax_train.log' in stream
  assert len(gcloud) == 7
  assert "git ls-files -z --cached --others --exclude-standard | tar -czf" in out


def test_tpu_dry_run_variants():
  # Reuse only (no create); version chosen from the type; repo clone; project.
  result = run('tpu_pod.sh', *TPU_ARGS, '--dry-run', '--project', 'proj', '--repo',
               'https://example.com/spt_jax.git', '--branch', 'v1', '--no_stream')
  assert result.returncode == 0, result.stderr
  gcloud = [l for l in result.stdout.splitlines() if l.startswith('gcloud ')]
  assert not [l for l in gcloud if ' create ' in l]
  assert all('--project=proj' in l for l in gcloud)
  assert ('git clone --depth=1 --branch=v1 https://example.com/spt_jax.git ~/spt_jax'
          in gcloud[1])
  assert not [l for l in gcloud if '--worker=0' in l]   # --no_stream
  for accel, version in (('v5p-64', 'v2-alpha-tpuv5'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
                         ('v6e-8', 'v2-alpha-tpuv6e'), ('v4-8', 'tpu-ubuntu2204-base')):
    result = run('tpu_pod.sh', *TPU_ARGS, '--dry-run', '--create', '--accelerator-type', accel,
                 '--spot')
    create = lines_with(result.stdout, 'tpu-vm create ')[0]
    assert create.endswith(f'--accelerator-type={accel} --version={version} --spot')
  result = run('tpu_pod.sh', '--tpu', 't', '--zone', 'z', '--attach', '--dry-run')
  gcloud = [l for l in result.stdout.splitlines() if l.startswith('gcloud ')]
  assert len(gcloud) == 1 and '--worker=0' in gcloud[0]


@pytest.mark.parametrize('args,message', [
    (('--zone', 'z'), '--tpu NAME is required'),
    (('--tpu', 't'), '--zone ZONE is required'),
    (('--tpu', 't', '--zone', 'z', '--model_dir', 'gs://b'), '--gin_file is required'),
    (('--tpu', 't', '--zone', 'z', '--gin_file', 'a.gin'), '--model_dir is required'),
    (('--tpu', 't', '--zone', 'z', '--gin_file', 'a.gin', '--model_dir', '/tmp/x'),
     '--model_dir must be a gs:// path'),
    (TPU_ARGS + ('--create',), '--create needs --accelerator-type'),
    (TPU_ARGS + ('--env', 'NO_VALUE'), '--env takes KEY=VALUE'),
    (TPU_ARGS + ('--branch', 'b'), '--branch needs --repo'),
])
def test_tpu_argument_errors(args, message):
  result = run('tpu_pod.sh', *args, '--dry-run')
  assert result.returncode == 2
  assert message in result.stderr


FAKE_GCLOUD = r"""
#!/usr/bin/env bash
# Stand-in for gcloud: a TPU slice of $FAKE_NUM_WORKERS workers, each a home directory
# $FAKE_WORKERS/w<i>; ssh runs --command there with bash (HOME set), scp copies into it.
set -euo pipefail
printf '%s\n' "$4" >> "$FAKE_GCLOUD_LOG"   # the verb: one line per call
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || { echo "unexpected: $*" >&2; exit 9; }
verb="$4"; shift 4
worker="" command="" positional=()
for a in "$@"; do
  case "$a" in
    --worker=*) worker="${a#*=}" ;;
    --command=*) command="${a#*=}" ;;
    --*) ;;
    *) positional+=("$a") ;;
  esac
done
workers=()
if [[ "$worker" == all ]]; then
  for ((i = 0; i < FAKE_NUM_WORKERS; i++)); do workers+=("$i"); done
else
  workers=("$worker")
fi
case "$verb" in
  describe) if [[ -f "$FAKE_WORKERS/exists" ]]; then echo READY; else exit 1; fi ;;
  create) touch "$FAKE_WORKERS/exists" ;;
  scp)
    for w in "${workers[@]}"; do
      mkdir -p "$FAKE_WORKERS/w$w"; cp "${positional[0]}" "$FAKE_WORKERS/w$w/${positional[1]#*:}"
    done ;;
  ssh)
    for w in "${workers[@]}"; do
      home="$FAKE_WORKERS/w$w"; mkdir -p "$home"
      # The worker's venv: the test interpreter (set-up is skipped in the test).
      if [[ -d "$home/spt_jax" && ! -e "$home/spt_jax/.venv" ]]; then
        mkdir -p "$home/spt_jax/.venv/bin"; ln -s "$FAKE_PYTHON" "$home/spt_jax/.venv/bin/python"
      fi
      (cd "$home" && HOME="$home" FAKE_WORKER="$w" bash -c "$command")
    done ;;
  *) echo "unexpected verb $verb" >&2; exit 9 ;;
esac
"""

FAKE_MODULE = """
import os, sys
print('fake train on worker', os.environ.get('FAKE_WORKER'), 'args:', ' '.join(sys.argv[1:]))
print('TFDS_DATA_DIR=' + os.environ.get('TFDS_DATA_DIR', ''))
sys.exit(int(os.environ.get('FAKE_RC', '0')))
"""


@pytest.mark.parametrize('rc', [0, 3])
def test_tpu_real_run_on_fake_slice(tmp_path, rc):
  """Create, copy, start detached on 2 workers, stream worker 0's log; exit with its status."""
  repo = fake_repo(tmp_path, scripts=('tpu_pod.sh',), gin_files=('experiments/x.gin',))
  (repo / 'fakemod.py').write_text(FAKE_MODULE)
  workers = tmp_path / 'workers'
  workers.mkdir()
  bin_dir = tmp_path / 'bin'
  write_executable(bin_dir / 'gcloud', FAKE_GCLOUD)
  env = {
      'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'FAKE_GCLOUD_LOG': str(tmp_path / 'gcloud.log'),
      'FAKE_WORKERS': str(workers), 'FAKE_NUM_WORKERS': '2', 'FAKE_PYTHON': sys.executable,
      'SPT_TPU_LOG_POLL_S': '1', 'TMPDIR': str(tmp_path),
  }
  result = run('tpu_pod.sh', '--tpu', 'fake', '--zone', 'z', '--accelerator-type', 'v4-16',
               '--create', '--gin_file', 'experiments/x.gin', '--model_dir', 'gs://b/run',
               '--skip_setup', '--module', 'fakemod', '--env', 'TFDS_DATA_DIR=gs://b/tfds',
               '--env', f'FAKE_RC={rc}', '--gin.TRAIN_STEPS=5', root=repo, env=env, timeout=90)
  assert result.returncode == rc, result.stdout + result.stderr
  # Worker 0's log was streamed; both workers ran the same command.
  assert 'fake train on worker 0 args: --gin_file=experiments/x.gin --gin_search_paths=gin ' \
         "--gin.MODEL_DIR='gs://b/run' --gin.TRAIN_STEPS=5" in result.stdout
  assert 'TFDS_DATA_DIR=gs://b/tfds' in result.stdout
  for w in (0, 1):
    log = (workers / f'w{w}' / 'spt_jax_train.log').read_text()
    assert f'fake train on worker {w}' in log
    assert (workers / f'w{w}' / 'spt_jax_train.rc').read_text().strip() == str(rc)
    assert (workers / f'w{w}' / 'spt_jax' / 'gin' / 'experiments' / 'x.gin').is_file()
  verbs = (tmp_path / 'gcloud.log').read_text().split()
  assert verbs == ['describe', 'create', 'scp', 'ssh', 'ssh', 'ssh']
  # A second launch while nothing runs reuses the slice (no create).
  if rc == 0:
    again = run('tpu_pod.sh', '--tpu', 'fake', '--zone', 'z', '--gin_file', 'experiments/x.gin',
                '--model_dir', 'gs://b/run', '--skip_setup', '--skip_copy', '--module', 'fakemod',
                root=repo, env=env, timeout=90)
    assert again.returncode == 0, again.stderr
    assert "reusing TPU VM 'fake' (state: READY)" in again.stderr


def test_tpu_refuses_missing_slice_without_create(tmp_path):
  repo = fake_repo(tmp_path, scripts=('tpu_pod.sh',), gin_files=('experiments/x.gin',))
  bin_dir = tmp_path / 'bin'
  write_executable(bin_dir / 'gcloud', FAKE_GCLOUD)
  (tmp_path / 'workers').mkdir()
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'FAKE_GCLOUD_LOG': str(tmp_path / 'g.log'),
         'FAKE_WORKERS': str(tmp_path / 'workers'), 'FAKE_NUM_WORKERS': '1',
         'FAKE_PYTHON': sys.executable}
  result = run('tpu_pod.sh', '--tpu', 'fake', '--zone', 'z', '--gin_file', 'experiments/x.gin',
               '--model_dir', 'gs://b/run', root=repo, env=env)
  assert result.returncode == 2
  assert "TPU VM 'fake' not found in zone z" in result.stderr and '--create' in result.stderr


# ------------------------------------------------------------------------------ gpu_slurm.sh

SLURM_ARGS = ('--nodes', '2', '--gpus_per_node', '8', '--gin_file',
              'experiments/t0_spt_large.gin', '--model_dir', '/shared/run1')


def test_slurm_dry_run_prints_sbatch_script_and_commands():
  result = run('gpu_slurm.sh', *SLURM_ARGS, '--partition', 'gpu', '--time', '24:00:00',
               '--gin.TRAIN_STEPS=10', '--env', 'TFDS_DATA_DIR=/shared/tfds', '--dry-run')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  cmds = [l for l in out.splitlines() if not l.startswith('#')]
  assert cmds[0] == 'bash launch/setup.sh'
  assert cmds[1].endswith('-r requirements-gpu.txt')
  assert cmds[2] == f'mkdir -p {ROOT}/runs/slurm'
  assert cmds[3] == f'sbatch {ROOT}/runs/slurm/spt_jax.sbatch'
  script = [l[len('#   '):] for l in out.splitlines() if l.startswith('#   ')]
  for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=8', '#SBATCH --gpus-per-task=1',
               '#SBATCH --gpu-bind=none', '#SBATCH --partition=gpu', '#SBATCH --time=24:00:00',
               f'#SBATCH --output={ROOT}/runs/slurm/%x-%j.out', f'cd {ROOT}',
               'export TFDS_DATA_DIR=/shared/tfds'):
    assert line in script, line
  srun = [l for l in script if l.startswith('srun ')]
  assert srun == [
      'srun --nodes=2 --ntasks-per-node=8 --gpus-per-task=1 --gpu-bind=none --cpus-per-task=8 '
      f'--kill-on-bad-exit=1 {ROOT}/.venv/bin/python -m spt_jax.train '
      '--gin_file=experiments/t0_spt_large.gin --gin_search_paths=gin '
      '"--gin.MODEL_DIR=\'/shared/run1\'" --gin.TRAIN_STEPS=10']


def test_slurm_dry_run_srun_mode_and_relative_model_dir():
  result = run('gpu_slurm.sh', '--nodes=1', '--gpus_per_node=4', '--gin_file=a.gin',
               '--model_dir=runs/x', '--srun', '--skip_setup', '--dry-run')
  assert result.returncode == 0, result.stderr
  cmds = [l for l in result.stdout.splitlines() if not l.startswith('#')]
  assert cmds == [
      'srun --nodes=1 --ntasks-per-node=4 --gpus-per-task=1 --gpu-bind=none --cpus-per-task=8 '
      f'--kill-on-bad-exit=1 {ROOT}/.venv/bin/python -m spt_jax.train --gin_file=a.gin '
      f'--gin_search_paths=gin "--gin.MODEL_DIR=\'{ROOT}/runs/x\'"']


@pytest.mark.parametrize('args,message', [
    (('--gpus_per_node', '8'), '--nodes N is required'),
    (('--nodes', '0', '--gpus_per_node', '8'), '--nodes must be a positive whole number'),
    (('--nodes', '1'), '--gpus_per_node G is required'),
    (('--nodes', '1', '--gpus_per_node', 'x'), '--gpus_per_node must be a positive whole number'),
    (('--nodes', '1', '--gpus_per_node', '1', '--model_dir', 'd'), '--gin_file is required'),
    (('--nodes', '1', '--gpus_per_node', '1', '--gin_file', 'a'), '--model_dir is required'),
    (SLURM_ARGS + ('--sbatch_arg=exclusive',), '--sbatch_arg takes one sbatch option'),
])
def test_slurm_argument_errors(args, message):
  result = run('gpu_slurm.sh', *args, '--dry-run')
  assert result.returncode == 2
  assert message in result.stderr


FAKE_SRUN = r"""
#!/usr/bin/env bash
# Stand-in for srun on one machine: starts nodes x ntasks-per-node local processes with the
# environment a SLURM step gives its tasks, waits for all, fails if any fails.
set -uo pipefail
nodes=1 per_node=1
while [[ "$1" == --* ]]; do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --ntasks-per-node=*) per_node="${1#*=}" ;;
  esac
  shift
done
ntasks=$((nodes * per_node)); pids=()
for ((p = 0; p < ntasks; p++)); do
  SLURM_JOB_ID="$FAKE_JOB_ID" SLURM_STEP_NODELIST=localhost SLURM_NTASKS="$ntasks" \
  SLURM_STEP_NUM_NODES="$nodes" SLURM_PROCID="$p" SLURM_LOCALID=$((p % per_node)) \
  "$@" > "$FAKE_SRUN_OUT/task$p.out" 2>&1 &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
"""


@pytest.mark.slow
def test_slurm_sbatch_script_brings_up_jax_distributed(tmp_path):
  """Submits with a stand-in sbatch, then runs the written script with a stand-in srun:
  2 nodes x 2 tasks on CPU, each task initialising jax.distributed from SLURM's variables."""
  repo = fake_repo(tmp_path, scripts=('gpu_slurm.sh',), gin_files=('experiments/x.gin',))
  shutil.copytree(ROOT / 'tests', repo / 'tests', ignore=shutil.ignore_patterns('__pycache__'))
  (repo / '.venv').symlink_to(ROOT / '.venv')
  bin_dir = tmp_path / 'bin'
  submitted = tmp_path / 'submitted.sbatch'
  write_executable(bin_dir / 'sbatch', f'#!/usr/bin/env bash\ncp "$1" {submitted}\n'
                   'echo "Submitted batch job 4242"\n')
  write_executable(bin_dir / 'srun', FAKE_SRUN)
  out_dir = tmp_path / 'tasks'
  out_dir.mkdir()
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'FAKE_SRUN_OUT': str(out_dir),
         'FAKE_JOB_ID': str(random.randrange(1000, 1_000_000)), 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  result = run('gpu_slurm.sh', '--nodes', '2', '--gpus_per_node', '2', '--gin_file',
               'experiments/x.gin', '--model_dir', 'runs/m', '--skip_setup', '--module',
               'tests.test_launch', '--cpus_per_task', '1', '--gin.TRAIN_STEPS=3',
               root=repo, env=env)
  assert result.returncode == 0, result.stderr
  assert 'Submitted batch job 4242' in result.stdout
  assert submitted.read_text() == (repo / 'runs/slurm/spt_jax.sbatch').read_text()
  job = subprocess.run(['bash', str(submitted)], env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=240)
  outputs = {p.name: p.read_text() for p in sorted(out_dir.iterdir())}
  assert job.returncode == 0, (job.stderr, outputs)
  assert sorted(outputs) == [f'task{i}.out' for i in range(4)]
  for i in range(4):
    out = outputs[f'task{i}.out']
    assert f'probe process {i} of 4: sum=6' in out, out
    assert f"--gin.MODEL_DIR='{repo}/runs/m' --gin.TRAIN_STEPS=3" in out


# ------------------------------------------------------------------------------ gin/t5x
# The T5X route runs for real under t5x.train / t5x.eval in tests/test_t5x_route.py (t5x
# installed by launch/setup.sh --t5x); here, without t5x, it is checked structurally: every file parses
# with gin's own parser, each binding's module alias is imported in its file, includes resolve,
# bindings of our own configurables name real fields, T5X's Adafactor factor rules and the
# partitioner rules cover every logical axis of the network, and the adapter module produces
# T5X's `params` + `params_axes` layout from the real network.

T5X_DIR = ROOT / 'gin' / 't5x'
T5X_GIN_FILES = sorted(T5X_DIR.glob('*.gin'))


class _RecordingDelegate:
  """gin ParserDelegate that records references and macros instead of resolving them."""

  def configurable_reference(self, scoped_name, evaluate):
    return ('@', scoped_name, evaluate)

  def macro(self, name):
    return ('%', name)


def parse_gin(path):
  import gin.config_parser as cp  # pylint: disable=g-import-not-at-top
  cp.ParserDelegate.register(_RecordingDelegate)
  with open(path) as f:
    return list(cp.ConfigParser(f, _RecordingDelegate()))


def _references(value):
  """All ('@', name, evaluate) references nested anywhere in a parsed value."""
  if isinstance(value, tuple) and len(value) == 3 and value[0] == '@':
    yield value[1]
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _references(v)
  elif isinstance(value, dict):
    for v in value.values():
      yield from _references(v)


def bindings_of(path):
  """{(scope, selector, arg_name): value} of one gin file (macros: selector only)."""
  import gin.config_parser as cp  # pylint: disable=g-import-not-at-top
  return {(s.scope, s.selector, s.arg_name): s.value for s in parse_gin(path)
          if isinstance(s, cp.BindingStatement)}


def test_t5x_gin_files_exist():
  names = {p.name for p in T5X_GIN_FILES}
  assert {'spt_model.gin', 'spt_finetune.gin', 'spt_t5_1_1_base.gin', 'spt_t5_1_1_large.gin',
          'spt_t5_1_1_xl.gin', 't0_spt_large.gin', 't0_spt_xl.gin',
          'prompts_only.gin'} <= names
  assert (T5X_DIR / 'README.md').is_file()


@pytest.mark.parametrize('path', T5X_GIN_FILES, ids=lambda p: p.name)
def test_t5x_gin_file_parses_and_imports_what_it_binds(path):
  import gin.config_parser as cp  # pylint: disable=g-import-not-at-top
  statements = parse_gin(path)
  imports = [s for s in statements if isinstance(s, cp.ImportStatement)]
  assert imports and imports[0].module == '__gin__.dynamic_registration', (
      'T5X-style files start with `from __gin__ import dynamic_registration`')
  aliases = {s.alias or s.module.split('.')[-1] if s.is_from or s.alias else s.module
             for s in imports}
  used = set()
  for s in statements:
    if isinstance(s, cp.BindingStatement):
      if '.' in s.selector:   # a configurable, not a macro
        used.add(s.selector.rsplit('.', 1)[0])
      used.update(r.split('/')[-1].rsplit('.', 1)[0] for r in _references(s.value))
    elif isinstance(s, cp.IncludeStatement):
      inc = s.filename
      assert inc.startswith('t5x/') or (ROOT / inc).is_file(), f'{path.name}: include {inc}'
  used.discard('gin')   # %gin.REQUIRED
  missing = sorted(u for u in used if u not in aliases)
  assert not missing, f'{path.name} binds {missing} without importing them'


def test_t5x_bindings_of_our_configurables_name_real_fields():
  import dataclasses  # pylint: disable=g-import-not-at-top
  import inspect  # pylint: disable=g-import-not-at-top
  from spt_jax import t5x_adapter as spt_t5x  # pylint: disable=g-import-not-at-top
  from spt_jax import network, prompts  # pylint: disable=g-import-not-at-top
  fields = {
      'network.T5Config': {f.name for f in dataclasses.fields(network.T5Config)},
      'prompts.PromptConfig': {f.name for f in dataclasses.fields(prompts.PromptConfig)},
      't5x_adapter.SptT5XTransformer': {'config', 'prompt_config'},
      't5x_adapter.match_any': set(inspect.signature(spt_t5x.match_any).parameters),
  }
  seen = set()
  for path in T5X_GIN_FILES:
    for (_, selector, arg), _ in bindings_of(path).items():
      if selector in fields:
        assert arg in fields[selector], f'{path.name}: {selector}.{arg} is not a field'
        seen.add(selector)
  assert seen == set(fields)
  # Each size file, on top of the shared model file, builds a valid T5Config.
  shared = {a: v for (_, s, a), v in bindings_of(T5X_DIR / 'spt_model.gin').items()
            if s == 'network.T5Config' and not isinstance(v, tuple) or a == 'mlp_activations'}
  shared = {a: v for a, v in shared.items() if a in fields['network.T5Config']}
  for size, emb in (('base', 768), ('large', 1024), ('xl', 2048)):
    own = {a: v for (_, s, a), v in bindings_of(T5X_DIR / f'spt_t5_1_1_{size}.gin').items()
           if s == 'network.T5Config'}
    cfg = network.T5Config(**{**shared, **own})
    assert cfg.emb_dim == emb and cfg.mlp_activations == ('gelu', 'linear')
    assert cfg.num_heads * cfg.head_dim == {'base': 768, 'large': 1024, 'xl': 2048}[size]
    models_gin = ROOT / 'gin' / 'models' / f't5_1_1_{size}.gin'
    if models_gin.is_file():   # same dims as spt_jax.train's model file
      theirs = {a: v for (_, s, a), v in bindings_of(models_gin).items()
                if s.endswith('T5Config') and a in own}
      assert {a: own[a] for a in theirs} == theirs, models_gin


def test_t5x_prompt_config_matches_spt_method_file():
  # The T5X route runs the paper reading: the bank-health remedies of methods/spt.gin live in
  # spt_jax's trainer (loss, train step, model_state), which t5x.train does not run.
  spt_gin = ROOT / 'gin' / 'methods' / 'spt_paper.gin'
  ours = {a: v for (_, s, a), v in bindings_of(T5X_DIR / 'spt_model.gin').items()
          if s == 'prompts.PromptConfig'}
  theirs = {a: v for (_, s, a), v in bindings_of(spt_gin).items() if s == 'prompts.PromptConfig'}
  assert ours == theirs


def test_t5x_run_settings_never_pack_and_spare_prompts_on_restore():
  b = bindings_of(T5X_DIR / 'spt_finetune.gin')
  for scope in ('train', 'train_eval', 'infer_eval'):
    assert b[(scope, 'utils.DatasetConfig', 'pack')] is False
  assignment = b[('', 'utils.RestoreCheckpointConfig', 'assignment_map')]
  import re  # pylint: disable=g-import-not-at-top
  (pattern, target), = assignment
  assert target is None
  for p in ('target/encoder/soft_prompt/prompt', 'target/encoder/memory_bank/values',
            'state/param_states/encoder/memory_bank/keys/v_row'):
    assert re.fullmatch(pattern, p)
  assert not re.fullmatch(pattern, 'target/encoder/layers_0/attention/query/kernel')
  for size in ('large', 'xl'):
    t0 = bindings_of(T5X_DIR / f't0_spt_{size}.gin')
    assert t0[('', 'MIXTURE_OR_TASK_NAME', '')] == 'spt_t0_train'
    assert t0[('', 'TASK_FEATURE_LENGTHS', '')] == {'inputs': 1024, 'targets': 256}
    assert t0[('', 'DROPOUT_RATE', '')] == 0.1
    assert f'lm100k_{size}' in t0[('', 'INITIAL_CHECKPOINT_PATH', '')]


def _tiny_spt_network(key_loss_weight=0.0):
  from spt_jax import t5x_adapter as spt_t5x  # pylint: disable=g-import-not-at-top
  from spt_jax import network, prompts  # pylint: disable=g-import-not-at-top
  cfg = network.T5Config(vocab_size=128, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                         num_encoder_layers=1, num_decoder_layers=1)
  pc = prompts.PromptConfig(soft_prompt_length=3, memory_size=8, memory_length=2, top_k=2,
                            init_vocab_size=100, key_loss_weight=key_loss_weight)
  return (spt_t5x, network.Transformer(cfg, prompts.PromptPrefix(pc)),
          spt_t5x.SptT5XTransformer(cfg, prompt_config=pc))


def _tiny_batch():
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  enc = rng.randint(1, 128, size=(2, 6)).astype(np.int32)
  enc[1, 4:] = 0
  dec_in = rng.randint(1, 128, size=(2, 4)).astype(np.int32)
  dec_in[:, 0] = 0
  return enc, dec_in, rng.randint(1, 128, size=(2, 4)).astype(np.int32)


@pytest.mark.slow   # one compile of a tiny network: ~5 s idle, ~20 s on a loaded 2-core box
def test_t5x_adapter_emits_params_axes_and_same_network():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from flax.linen import partitioning as flax_partitioning  # pylint: disable=g-import-not-at-top
  spt_t5x, ours, t5x_net = _tiny_spt_network()
  enc, dec_in, dec_tgt = _tiny_batch()
  rng = jax.random.PRNGKey(0)
  boxed = jax.jit(functools.partial(ours.init, enable_dropout=False))(rng, enc, dec_in, dec_tgt)
  variables = spt_t5x.to_t5x_variables(boxed)
  # SptT5XTransformer.init returns exactly this layout (traced, not compiled: CPU time is scarce).
  traced = jax.eval_shape(functools.partial(t5x_net.init, enable_dropout=False), rng, enc, dec_in,
                          dec_tgt)
  assert jax.tree.structure(traced) == jax.tree.structure(variables)
  assert set(variables) == {'params', 'params_axes'}   # no 'retrieval' statistics
  params = variables['params']
  # T5X's _validate_params_axes: every parameter has axis names, and nothing else does.
  names = flax_partitioning.get_axis_names(variables['params_axes'])
  flat_params = traverse_util.flatten_dict(params, sep='/')
  flat_names = traverse_util.flatten_dict(names, sep='/')
  assert set(flat_params) == set(flat_names)
  assert tuple(flat_names['encoder/memory_bank/values']) == ('memory', 'memory_length', 'embed')
  assert tuple(flat_names['encoder/soft_prompt/prompt']) == ('prompt', 'embed')
  for path, value in flat_params.items():
    assert isinstance(value, jax.Array), path
    assert len(flat_names[path]) == value.ndim, path
  # Same values and same outputs as the network's own boxed variables.
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  unboxed = traverse_util.flatten_dict(meta.unbox(boxed['params']), sep='/')
  assert set(unboxed) == set(flat_params)
  for path in unboxed:
    np.testing.assert_array_equal(unboxed[path], flat_params[path])
  both = jax.jit(lambda p, b: (
      t5x_net.apply(p, enc, dec_in, dec_tgt, enable_dropout=False),
      ours.apply(b, enc, dec_in, dec_tgt, enable_dropout=False)))
  logits_t5x, logits_ours = both({'params': params}, boxed)
  np.testing.assert_allclose(np.asarray(logits_t5x), np.asarray(logits_ours), rtol=1e-6)
  # prompts_only.gin's filter selects exactly the prompt parameters (flax traversal paths).
  b = bindings_of(T5X_DIR / 'prompts_only.gin')
  keep = spt_t5x.match_any(b[('', 't5x_adapter.match_any', 'regexes')])
  marked = traverse_util.ModelParamTraversal(keep).update(lambda x: None, dict(params))
  selected = {p for p, v in traverse_util.flatten_dict(marked, sep='/').items() if v is None}
  assert selected == {'encoder/soft_prompt/prompt', 'encoder/memory_bank/keys',
                      'encoder/memory_bank/values'}
  with pytest.raises(ValueError, match='at least one regex'):
    spt_t5x.match_any([])


def test_t5x_adapter_refuses_key_loss():
  import jax  # pylint: disable=g-import-not-at-top
  _, _, t5x_net = _tiny_spt_network(key_loss_weight=0.5)
  enc, dec_in, dec_tgt = _tiny_batch()
  with pytest.raises(ValueError, match='key_loss_weight=0.5 has no effect'):
    t5x_net.init(jax.random.PRNGKey(0), enc, dec_in, dec_tgt, enable_dropout=False)


def test_t5x_adapter_refuses_packed_batches_with_prompts():
  # T5X's trainer calls the module directly, so the adapter refuses segment ids itself.
  import jax  # pylint: disable=g-import-not-at-top
  _, _, t5x_net = _tiny_spt_network()
  enc, dec_in, dec_tgt = _tiny_batch()
  with pytest.raises(ValueError, match='pack=False'):
    t5x_net.init(jax.random.PRNGKey(0), enc, dec_in, dec_tgt, encoder_segment_ids=enc,
                 decoder_segment_ids=dec_tgt, enable_dropout=False)


def test_t5x_local_model_is_the_tiny_model_of_runs_local():
  """gin/t5x/local_model.gin builds the model gin/models/t5_1_1_tiny.gin gives spt_jax.train
  (so spt_jax.evaluate with runs/local.gin reads a T5X local run's checkpoint)."""
  ours = {a: v for (_, s, a), v in bindings_of(T5X_DIR / 'local_model.gin').items()
          if s == 'network.T5Config'}
  theirs = {a: v for (_, s, a), v in bindings_of(ROOT / 'gin' / 'models' / 't5_1_1_tiny.gin')
            .items() if s.endswith('T5Config') and a not in ('dropout_rate', 'dtype')}
  assert {a: ours[a] for a in theirs} == theirs
  assert ours['dtype'] == 'float32'
  macros = bindings_of(T5X_DIR / 'local_model.gin')
  assert macros[('', 'DROPOUT_RATE', '')] == 0.0
  local = bindings_of(T5X_DIR / 'local.gin')
  for scope in ('train', 'train_eval', 'infer_eval'):
    assert local[(scope, 'utils.DatasetConfig', 'pack')] is False
  assert local[('', 'INITIAL_CHECKPOINT_PATH', '')] is None
  assert local[('', 'MIXTURE_OR_TASK_NAME', '')] == 'spt_sample_train'


def test_t5x_adapter_absolute_path_and_task_vocabulary(tmp_path, monkeypatch):
  from spt_jax import t5x_adapter  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  assert t5x_adapter.absolute_path('runs/x') == str(tmp_path / 'runs' / 'x')
  assert t5x_adapter.absolute_path('/abs/y') == '/abs/y'
  assert t5x_adapter.absolute_path('gs://bucket/run') == 'gs://bucket/run'
  for bad in ('', None):
    with pytest.raises(ValueError, match='MODEL_DIR'):
      t5x_adapter.absolute_path(bad)
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  vocab = t5x_adapter.task_vocabulary('spt_sample_train')
  assert vocab is sample.SAMPLE_VOCABULARY   # 1,029 ids: fits the tiny model's 1152 rows
  with pytest.raises(ValueError, match=r"not a registered .*import its registry"):
    t5x_adapter.task_vocabulary('spt_no_such_mixture')
  with pytest.raises(ValueError, match="not 'answers'"):
    t5x_adapter.task_vocabulary('spt_sample_train', feature='answers')


def _t5x_factor_rule(rules, axes):
  """T5X adafactor.set_param_axes' rule for one parameter (names 'row'/'column'/...)."""
  dims = tuple(rules[a] for a in axes)   # KeyError == T5X's failure for a missing name
  if 'row' in dims and 'column' in dims and 'none' in dims:
    raise ValueError(f'Incomplete adafactor spec {dims}')
  if 'row' not in dims or 'column' not in dims:
    dims = tuple('none' if d in ('row', 'column') else d for d in dims)
  return dims


def test_t5x_adafactor_and_partition_rules_cover_every_axis():
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from flax.linen import partitioning as flax_partitioning  # pylint: disable=g-import-not-at-top
  _, _, t5x_net = _tiny_spt_network()
  enc, dec_in, dec_tgt = _tiny_batch()
  variables = jax.eval_shape(
      lambda: t5x_net.init(jax.random.PRNGKey(0), enc, dec_in, dec_tgt, enable_dropout=False))
  names = traverse_util.flatten_dict(
      flax_partitioning.get_axis_names(variables['params_axes']), sep='/')
  b = bindings_of(T5X_DIR / 'spt_model.gin')
  factor_rules = b[('', 'adafactor.Adafactor', 'logical_factor_rules')]
  assert set(factor_rules.values()) <= {'row', 'column', 'batch', 'none'}
  for path, axes in names.items():
    dims = _t5x_factor_rule(factor_rules, tuple(axes))
    if len(axes) > 2:   # T5X requires an explicit factorisation above rank 2
      assert 'row' in dims and 'column' in dims, (path, dims)
  assert _t5x_factor_rule(factor_rules, ('memory', 'memory_length', 'embed')) == (
      'column', 'column', 'row')
  extra = b[('', 'partitioning.standard_logical_axis_rules', 'additional_rules')]
  assert extra == [('prompt', None), ('memory', 'model'), ('memory_length', None)]
  from spt_jax import partitioning  # pylint: disable=g-import-not-at-top
  ours = dict(partitioning.LOGICAL_AXIS_RULES)
  for name, mesh_axis in extra:   # the same placement as spt_jax.train
    assert ours[name] == mesh_axis


def _slurm_probe():
  """Task body for the SLURM test: what spt_jax.train's start does, then one collective."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize()   # no arguments: jax's SLURM detection
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  local = np.full((jax.local_device_count(),), jax.process_index(), np.int32)
  x = jax.make_array_from_process_local_data(sharding, local)
  total = int(jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))(x))
  print(f'probe process {jax.process_index()} of {jax.process_count()}: sum={total}',
        flush=True)
  print('args:', ' '.join(sys.argv[1:]), flush=True)
  jax.distributed.shutdown()


if __name__ == '__main__':
  _slurm_probe()
