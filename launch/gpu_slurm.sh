#!/usr/bin/env bash
# Runs a gin config on a GPU cluster with SLURM: one process per GPU across nodes.
#
#   bash launch/gpu_slurm.sh --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00 \
#     --gin_file experiments/t0_spt_large.gin --model_dir /shared/runs/t0_spt_large
#   bash launch/gpu_slurm.sh ... --dry-run   # print the sbatch script and the commands
#   bash launch/gpu_slurm.sh ... --srun      # run with srun in the foreground (inside salloc)
#
# Assumes the repository sits on a filesystem shared by all nodes (the SLURM norm): the venv is
# set up once here (`bash launch/setup.sh` + `pip install -r requirements-gpu.txt`) and used by
# every task. srun starts nodes x gpus_per_node tasks (--ntasks-per-node=G --gpus-per-task=1);
# in each, spt_jax.train calls jax.distributed.initialize(), which reads SLURM_JOB_ID,
# SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID: the coordinator is the
# first node, and task i on a node drives local GPU SLURM_LOCALID. For that, every task must
# see all GPUs of its node, hence --gpu-bind=none (SLURM's per-task binding would leave each
# task one GPU numbered 0).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash launch/gpu_slurm.sh --nodes N --gpus_per_node G --gin_file FILE --model_dir DIR [options]

Required:
  --nodes N              number of nodes
  --gpus_per_node G      GPUs per node = processes per node
  --gin_file FILE        gin file relative to gin/ (repeatable; applied in order)
  --model_dir DIR        MODEL_DIR on a filesystem all nodes share (or gs://...)
SLURM:
  --partition P          partition (default: the cluster's default)
  --time T               time limit, e.g. 24:00:00 (default: the partition's)
  --account A            account to charge
  --cpus_per_task C      CPU cores per process (default: 8; feeds the input pipeline)
  --job_name NAME        job name (default: spt_jax)
  --sbatch_arg ARG       extra '#SBATCH ARG' line, e.g. --sbatch_arg=--exclusive (repeatable)
  --log_dir DIR          where the sbatch script and SLURM logs go (default: runs/slurm)
Environment:
  --env KEY=VALUE        environment variable for training (repeatable), e.g.
                         --env TFDS_DATA_DIR=/shared/tfds --env SPT_P3_DIR=/shared/p3
  --skip_setup           do not run set-up (the .venv with GPU jax already exists)
Running:
  --gin.KEY=VALUE        extra gin binding for spt_jax.train (repeatable)
  --module MODULE        entry point (default: spt_jax.train; e.g. spt_jax.evaluate)
  --srun                 run srun directly (foreground, e.g. inside salloc) instead of sbatch
  --dry-run              print the sbatch script and the commands, run nothing
  -h, --help             this message
Options also accept the --opt=value form.
EOF
}

script_name=gpu_slurm.sh
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
repo_dir="$(pwd)"

nodes="" gpus_per_node="" model_dir="" partition="" time_limit="" account=""
cpus_per_task=8 job_name="spt_jax" log_dir="runs/slurm" module="spt_jax.train"
setup=1 use_srun=0 dry_run=0
gin_files=() gin_bindings=() env_vars=() sbatch_args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1 ;;
    --srun) use_srun=1 ;;
    --skip_setup|--skip-setup) setup=0 ;;
    --nodes=*) nodes="${1#*=}" ;;
    --nodes) need_value "$@"; nodes="$2"; shift ;;
    --gpus_per_node=*|--gpus-per-node=*) gpus_per_node="${1#*=}" ;;
    --gpus_per_node|--gpus-per-node) need_value "$@"; gpus_per_node="$2"; shift ;;
    --partition=*) partition="${1#*=}" ;;
    --partition) need_value "$@"; partition="$2"; shift ;;
    --time=*) time_limit="${1#*=}" ;;
    --time) need_value "$@"; time_limit="$2"; shift ;;
    --account=*) account="${1#*=}" ;;
    --account) need_value "$@"; account="$2"; shift ;;
    --cpus_per_task=*|--cpus-per-task=*) cpus_per_task="${1#*=}" ;;
    --cpus_per_task|--cpus-per-task) need_value "$@"; cpus_per_task="$2"; shift ;;
    --job_name=*|--job-name=*) job_name="${1#*=}" ;;
    --job_name|--job-name) need_value "$@"; job_name="$2"; shift ;;
    --log_dir=*|--log-dir=*) log_dir="${1#*=}" ;;
    --log_dir|--log-dir) need_value "$@"; log_dir="$2"; shift ;;
    --module=*) module="${1#*=}" ;;
    --module) need_value "$@"; module="$2"; shift ;;
    --model_dir=*|--model-dir=*) model_dir="${1#*=}" ;;
    --model_dir|--model-dir) need_value "$@"; model_dir="$2"; shift ;;
    --gin_file=*|--gin-file=*) gin_files+=("${1#*=}") ;;
    --gin_file|--gin-file) need_value "$@"; gin_files+=("$2"); shift ;;
    --env=*) env_vars+=("${1#*=}") ;;
    --env) need_value "$@"; env_vars+=("$2"); shift ;;
    --sbatch_arg=*|--sbatch-arg=*) sbatch_args+=("${1#*=}") ;;
    --gin.*=*) gin_bindings+=("$1") ;;
    --gin.*) die "gin binding '$1' has no value: write it as --gin.KEY=VALUE" ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done

[[ -n "$nodes" ]] || die "--nodes N is required"
is_positive_int "$nodes" || die "--nodes must be a positive whole number (got '$nodes')"
[[ -n "$gpus_per_node" ]] || die "--gpus_per_node G is required"
is_positive_int "$gpus_per_node" || die "--gpus_per_node must be a positive whole number (got '$gpus_per_node')"
is_positive_int "$cpus_per_task" || die "--cpus_per_task must be a positive whole number (got '$cpus_per_task')"
[[ ${#gin_files[@]} -gt 0 ]] || die "--gin_file is required (e.g. --gin_file experiments/t0_spt_large.gin)"
[[ -n "$model_dir" ]] || die "--model_dir is required (on a filesystem every node sees, or gs://)"
[[ "$job_name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job_name may use letters, digits, '_', '.', '-' only"
for kv in "${env_vars[@]}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--env takes KEY=VALUE (got '$kv')"
done
for a in "${sbatch_args[@]}"; do
  [[ "$a" == -* && "$a" != *$'\n'* ]] || die "--sbatch_arg takes one sbatch option such as --exclusive (got '$a')"
done

# Relative MODEL_DIR / log dir are taken from the repository root, where every task starts.
case "$model_dir" in
  /*|gs://*) ;;
  *) model_dir="$repo_dir/$model_dir" ;;
esac
case "$log_dir" in
  /*) ;;
  *) log_dir="$repo_dir/$log_dir" ;;
esac

missing=()
for f in "${gin_files[@]}"; do
  if [[ ! -f "$f" && ! -f "gin/$f" ]]; then missing+=("$f"); fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $dry_run == 1 ]]; then
    echo "# note: gin file(s) not found (yet): ${missing[*]}" >&2
  else
    die "gin file(s) not found as given or under gin/: ${missing[*]} (list them with: ls gin/*/)"
  fi
fi

# One process per GPU. --gpu-bind=none: see the header (jax picks GPU SLURM_LOCALID itself).
# Options are repeated on srun because srun inside sbatch does not inherit all of them
# (e.g. --cpus-per-task in SLURM 22.05+).
srun_cmd=(srun "--nodes=$nodes" "--ntasks-per-node=$gpus_per_node" --gpus-per-task=1
          --gpu-bind=none "--cpus-per-task=$cpus_per_task" --kill-on-bad-exit=1)
train_cmd=("$repo_dir/.venv/bin/python" -m "$module")
for f in "${gin_files[@]}"; do train_cmd+=("--gin_file=$f"); done
train_cmd+=(--gin_search_paths=gin "--gin.MODEL_DIR='$model_dir'" "${gin_bindings[@]}")

sbatch_header=(
  "--job-name=$job_name"
  "--nodes=$nodes"
  "--ntasks-per-node=$gpus_per_node"
  "--gpus-per-task=1"
  "--gpu-bind=none"
  "--cpus-per-task=$cpus_per_task"
  "--output=$log_dir/%x-%j.out"
)
if [[ -n "$partition" ]]; then sbatch_header+=("--partition=$partition"); fi
if [[ -n "$time_limit" ]]; then sbatch_header+=("--time=$time_limit"); fi
if [[ -n "$account" ]]; then sbatch_header+=("--account=$account"); fi
sbatch_header+=("${sbatch_args[@]}")

env_lines=""
for kv in "${env_vars[@]}"; do
  env_lines+="export ${kv%%=*}=$(quote_arg "${kv#*=}")"$'\n'
done

script="#!/usr/bin/env bash
# Written by launch/gpu_slurm.sh: $nodes node(s) x $gpus_per_node GPU(s), one process per GPU.
"
for h in "${sbatch_header[@]}"; do script+="#SBATCH $h"$'\n'; done
script+="set -euo pipefail
cd $(quote_arg "$repo_dir")
${env_lines}# jax.distributed.initialize() in $module reads the SLURM step's environment.
$(print_cmd "${srun_cmd[@]}" "${train_cmd[@]}")
"

setup_cmds() {
  run_cmd bash launch/setup.sh
  run_cmd .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-gpu.txt
}

if [[ $dry_run == 1 ]]; then
  echo "# gpu_slurm.sh --dry-run: commands in the order they would run, from $repo_dir"
  if [[ $setup == 1 ]]; then setup_cmds; fi
  if [[ $use_srun == 1 ]]; then
    for kv in "${env_vars[@]}"; do echo "export ${kv%%=*}=$(quote_arg "${kv#*=}")"; done
    print_cmd "${srun_cmd[@]}" "${train_cmd[@]}"
  else
    script_path="$log_dir/$job_name.sbatch"
    echo "# sbatch script $script_path:"
    printf '%s' "$script" | sed 's/^/#   /'
    print_cmd mkdir -p "$log_dir"
    print_cmd sbatch "$script_path"
  fi
  exit 0
fi

if [[ $setup == 1 ]]; then setup_cmds; fi
[[ -x .venv/bin/python ]] || die ".venv/bin/python not found: run without --skip_setup"

if [[ $use_srun == 1 ]]; then
  command -v srun >/dev/null 2>&1 || die "srun not found: run this on a SLURM login node"
  for kv in "${env_vars[@]}"; do export "${kv?}"; done
  run_cmd "${srun_cmd[@]}" "${train_cmd[@]}"
else
  command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a SLURM login node"
  mkdir -p "$log_dir"
  script_path="$log_dir/$job_name.sbatch"
  printf '%s' "$script" > "$script_path"
  echo "gpu_slurm.sh: wrote $script_path" >&2
  run_cmd sbatch "$script_path"
  echo "gpu_slurm.sh: logs: $log_dir/$job_name-<jobid>.out (squeue -u \$USER to watch)" >&2
fi
