"""Tests of the launchers in launch/: dry-run output, argument errors, and real runs against
stand-in `gcloud` / `sbatch` / `srun` / python executables.

The stand-ins make the non-dry-run code paths run for real on this machine: the TPU launcher's
remote commands execute in per-worker home directories, the SLURM script is executed with an
`srun` that starts one local process per task with SLURM's environment, and those processes
bring up `jax.distributed` through jax's own SLURM detection (as spt_jax.train does).

Run as a module (`python -m tests.test_launch`), this file is the probe that the SLURM test
starts in each task.
"""
import os
import pathlib
import random
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
  for s in scripts:
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
  assert evaluate.startswith('.venv/bin/python -m spt_jax.evaluate --gin_file=methods/spt.gin '
                             '--gin_file=runs/local.gin --gin_search_paths=gin')
  assert '"--gin.CHECKPOINT_PATH=\'runs/local_spt/checkpoints/<final step>\'"' in evaluate
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
