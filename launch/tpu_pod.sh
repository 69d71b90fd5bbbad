#!/usr/bin/env bash
# Runs a gin config on every worker of a Cloud TPU VM slice (TPU pod), T5X-style.
#
#   bash launch/tpu_pod.sh --tpu spt-v4 --zone us-central2-b --accelerator-type v4-32 --create \
#     --gin_file experiments/t0_spt_large.gin --model_dir gs://BUCKET/spt/t0_spt_large
#   bash launch/tpu_pod.sh ... --dry-run     # print every gcloud command, run nothing
#   bash launch/tpu_pod.sh --tpu spt-v4 --zone us-central2-b --attach   # re-attach to the log
#
# Steps: (1) create the TPU VM slice, or reuse it if it exists; (2) copy this working tree to
# ~/spt_jax on all workers (a tarball via `tpu-vm scp --worker=all`, or `git clone` with
# --repo); (3) on all workers: python3.11 if missing, `bash launch/setup.sh` and
# `pip install -r requirements-tpu.txt`; (4) start the same `python -m spt_jax.train` on all
# workers in the background (jax.distributed.initialize() finds the pod by itself; MODEL_DIR
# must be on gs:// so that every host writes to one place); (5) stream worker 0's log until
# training ends, exiting with its status. Ctrl-C stops only the streaming, not the run.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash launch/tpu_pod.sh --tpu NAME --zone ZONE --gin_file FILE --model_dir gs://... [options]

Required:
  --tpu NAME               TPU VM name
  --zone ZONE              its zone (e.g. us-central2-b for v4)
  --gin_file FILE          gin file relative to gin/ (repeatable; applied in order)
  --model_dir gs://...     MODEL_DIR; must be a gs:// path shared by all workers
Creating the slice:
  --create                 create the TPU VM if it does not exist (otherwise it must exist)
  --accelerator-type TYPE  e.g. v4-32, v5p-64, v5litepod-16, v6e-16 (needed with --create)
  --version VERSION        TPU software version (default by type: tpu-ubuntu2204-base for v4,
                           v2-alpha-tpuv5 for v5p, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e
                           for v6e)
  --spot                   create a Spot (preemptible) slice
  --project PROJECT        gcloud project (default: gcloud's configured one)
Code and environment:
  --repo URL               git clone URL on the workers instead of copying this working tree
  --branch BRANCH          branch or tag for --repo (default: the remote's default)
  --python PYTHON          interpreter for the venv (default: python3.11; jax needs >= 3.11;
                           installed with apt on the workers when missing)
  --env KEY=VALUE          environment variable for training (repeatable), e.g.
                           --env TFDS_DATA_DIR=gs://BUCKET/tfds --env SPT_P3_DIR=gs://BUCKET/p3
  --skip_copy              do not copy the code (workers already have ~/spt_jax)
  --skip_setup             do not run set-up on the workers
Running:
  --gin.KEY=VALUE          extra gin binding for spt_jax.train (repeatable)
  --module MODULE          entry point (default: spt_jax.train; e.g. spt_jax.evaluate)
  --attach                 only stream worker 0's log of the run already started
  --no_stream              start the run and return without streaming the log
  --dry-run                print every command (gcloud and local) and the worker run script
  -h, --help               this message
Options also accept the --opt=value form.
EOF
}

script_name=tpu_pod.sh
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

tpu="" zone="" accelerator_type="" version="" project="" repo="" branch=""
model_dir="" module="spt_jax.train" python="python3.11"
create=0 spot=0 copy=1 setup=1 attach=0 stream=1 dry_run=0
gin_files=() gin_bindings=() env_vars=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1 ;;
    --create) create=1 ;;
    --spot) spot=1 ;;
    --skip_copy|--skip-copy) copy=0 ;;
    --skip_setup|--skip-setup) setup=0 ;;
    --attach) attach=1 ;;
    --no_stream|--no-stream) stream=0 ;;
    --tpu=*) tpu="${1#*=}" ;;
    --tpu) need_value "$@"; tpu="$2"; shift ;;
    --zone=*) zone="${1#*=}" ;;
    --zone) need_value "$@"; zone="$2"; shift ;;
    --accelerator-type=*|--accelerator_type=*) accelerator_type="${1#*=}" ;;
    --accelerator-type|--accelerator_type) need_value "$@"; accelerator_type="$2"; shift ;;
    --version=*) version="${1#*=}" ;;
    --version) need_value "$@"; version="$2"; shift ;;
    --project=*) project="${1#*=}" ;;
    --project) need_value "$@"; project="$2"; shift ;;
    --repo=*) repo="${1#*=}" ;;
    --repo) need_value "$@"; repo="$2"; shift ;;
    --branch=*) branch="${1#*=}" ;;
    --branch) need_value "$@"; branch="$2"; shift ;;
    --python=*) python="${1#*=}" ;;
    --python) need_value "$@"; python="$2"; shift ;;
    --module=*) module="${1#*=}" ;;
    --module) need_value "$@"; module="$2"; shift ;;
    --model_dir=*|--model-dir=*) model_dir="${1#*=}" ;;
    --model_dir|--model-dir) need_value "$@"; model_dir="$2"; shift ;;
    --gin_file=*|--gin-file=*) gin_files+=("${1#*=}") ;;
    --gin_file|--gin-file) need_value "$@"; gin_files+=("$2"); shift ;;
    --env=*) env_vars+=("${1#*=}") ;;
    --env) need_value "$@"; env_vars+=("$2"); shift ;;
    --gin.*=*) gin_bindings+=("$1") ;;
    --gin.*) die "gin binding '$1' has no value: write it as --gin.KEY=VALUE" ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done

[[ -n "$tpu" ]] || die "--tpu NAME is required"
[[ -n "$zone" ]] || die "--zone ZONE is required"
if [[ $attach == 0 ]]; then
  [[ ${#gin_files[@]} -gt 0 ]] || die "--gin_file is required (e.g. --gin_file experiments/t0_spt_large.gin)"
  [[ -n "$model_dir" ]] || die "--model_dir is required (a gs:// path, e.g. gs://BUCKET/spt/run1)"
  [[ "$model_dir" == gs://* ]] || die "--model_dir must be a gs:// path so that all workers \
write checkpoints and summaries to one place (got '$model_dir')"
fi
if [[ $create == 1 && -z "$accelerator_type" ]]; then
  die "--create needs --accelerator-type (e.g. v4-32)"
fi
for kv in "${env_vars[@]}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--env takes KEY=VALUE (got '$kv')"
done
if [[ -n "$branch" && -z "$repo" ]]; then die "--branch needs --repo"; fi

if [[ -z "$version" ]]; then
  case "$accelerator_type" in
    v5p-*) version="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

gcloud_common=("--zone=$zone")
if [[ -n "$project" ]]; then gcloud_common+=("--project=$project"); fi
tpu_vm=(gcloud compute tpus tpu-vm)

# Paths on the workers: the tilde is meant literally here and expands in the workers' shell.
# shellcheck disable=SC2088
remote_dir='~/spt_jax'
# shellcheck disable=SC2088
log_file='~/spt_jax_train.log'
# shellcheck disable=SC2088
rc_file='~/spt_jax_train.rc'
# shellcheck disable=SC2088
pid_file='~/spt_jax_train.pid'
run_script_name="spt_jax_run.sh"
poll_s="${SPT_TPU_LOG_POLL_S:-10}"   # how often the log streamer checks for the run's end
[[ "$poll_s" =~ ^[0-9]+$ ]] || die "SPT_TPU_LOG_POLL_S must be a whole number of seconds"

stream_log() {
  # Follows worker 0's log until the run writes its exit status, then exits with it.
  local cmd="touch $log_file; tail -n +1 -F $log_file & t=\$!; \
while [ ! -f $rc_file ]; do sleep $poll_s; done; sleep 2; kill \$t; exit \"\$(cat $rc_file)\""
  run_cmd "${tpu_vm[@]}" ssh "$tpu" "${gcloud_common[@]}" --worker=0 "--command=$cmd"
}

if [[ $dry_run == 1 ]]; then
  echo "# tpu_pod.sh --dry-run: commands in the order they would run, from $(pwd)"
fi

if [[ $attach == 1 ]]; then
  stream_log
  exit 0
fi

# Gin files resolve against gin/ (--gin_search_paths=gin) on the workers.
missing=()
for f in "${gin_files[@]}"; do
  if [[ ! -f "$f" && ! -f "gin/$f" ]]; then missing+=("$f"); fi
done
if [[ ${#missing[@]} -gt 0 && -z "$repo" ]]; then
  if [[ $dry_run == 1 ]]; then
    echo "# note: gin file(s) not found (yet): ${missing[*]}" >&2
  else
    die "gin file(s) not found as given or under gin/: ${missing[*]} (list them with: ls gin/*/)"
  fi
fi

# ---------------------------------------------------------------- 1. the slice
if [[ $dry_run == 1 ]]; then
  echo "# 1. reuse the slice if this succeeds, otherwise create it (with --create)"
  run_cmd "${tpu_vm[@]}" describe "$tpu" "${gcloud_common[@]}" "--format=value(state)"
  if [[ $create == 1 ]]; then
    create_cmd=("${tpu_vm[@]}" create "$tpu" "${gcloud_common[@]}"
                "--accelerator-type=$accelerator_type" "--version=$version")
    if [[ $spot == 1 ]]; then create_cmd+=(--spot); fi
    run_cmd "${create_cmd[@]}"
  fi
else
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found: install the Google Cloud CLI \
(https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
  if state="$(run_cmd "${tpu_vm[@]}" describe "$tpu" "${gcloud_common[@]}" \
              "--format=value(state)" 2>/dev/null)"; then
    echo "tpu_pod.sh: reusing TPU VM '$tpu' (state: ${state:-unknown})" >&2
    [[ "$state" == "READY" ]] || echo "tpu_pod.sh: warning: '$tpu' is not READY" >&2
  elif [[ $create == 1 ]]; then
    create_cmd=("${tpu_vm[@]}" create "$tpu" "${gcloud_common[@]}"
                "--accelerator-type=$accelerator_type" "--version=$version")
    if [[ $spot == 1 ]]; then create_cmd+=(--spot); fi
    run_cmd "${create_cmd[@]}"
  else
    die "TPU VM '$tpu' not found in zone $zone (or not accessible): pass --create and \
--accelerator-type to create it, or check --project / --zone"
  fi
fi

# ---------------------------------------------------------------- 2. the code
if [[ $copy == 1 ]]; then
  if [[ -n "$repo" ]]; then
    [[ $dry_run == 1 ]] && echo "# 2. clone the repository on all workers"
    clone="rm -rf $remote_dir && git clone --depth=1"
    if [[ -n "$branch" ]]; then clone+=" --branch=$(quote_arg "$branch")"; fi
    clone+=" $(quote_arg "$repo") $remote_dir"
    run_cmd "${tpu_vm[@]}" ssh "$tpu" "${gcloud_common[@]}" --worker=all "--command=$clone"
  else
    [[ $dry_run == 1 ]] && echo "# 2. copy this working tree (tracked + untracked, not ignored files) to all workers"
    tarball="${TMPDIR:-/tmp}/spt_jax_src_${tpu}.tar.gz"
    if [[ $dry_run == 1 ]]; then
      echo "git ls-files -z --cached --others --exclude-standard | tar -czf $(quote_arg "$tarball") --null -T -"
    else
      echo "+ git ls-files ... | tar -czf $tarball" >&2
      git ls-files -z --cached --others --exclude-standard | tar -czf "$tarball" --null -T -
    fi
    run_cmd "${tpu_vm[@]}" scp "$tarball" "$tpu:spt_jax_src.tar.gz" "${gcloud_common[@]}" --worker=all
    run_cmd "${tpu_vm[@]}" ssh "$tpu" "${gcloud_common[@]}" --worker=all \
      "--command=rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf ~/spt_jax_src.tar.gz -C $remote_dir"
  fi
fi

# ---------------------------------------------------------------- 3. set-up
if [[ $setup == 1 ]]; then
  [[ $dry_run == 1 ]] && echo "# 3. set up the venv and the TPU requirements on all workers"
  py="$(quote_arg "$python")"
  setup_cmd="set -e; if ! command -v $py >/dev/null 2>&1; then \
sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $py $py-venv; fi; \
cd $remote_dir && PYTHON=$py bash launch/setup.sh && \
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-tpu.txt"
  run_cmd "${tpu_vm[@]}" ssh "$tpu" "${gcloud_common[@]}" --worker=all "--command=$setup_cmd"
fi

# ---------------------------------------------------------------- 4. the run
train_cmd=(.venv/bin/python -m "$module")
for f in "${gin_files[@]}"; do train_cmd+=("--gin_file=$f"); done
train_cmd+=(--gin_search_paths=gin "--gin.MODEL_DIR='$model_dir'" "${gin_bindings[@]}")

# The same script runs on every worker; jax.distributed.initialize() in the trainer
# discovers the pod (coordinator = worker 0) from the TPU metadata.
run_script="#!/usr/bin/env bash
# Written by launch/tpu_pod.sh; runs on every worker of TPU VM '$tpu'.
set -uo pipefail
echo \$\$ > $pid_file
rm -f $rc_file
cd $remote_dir"
for kv in "${env_vars[@]}"; do
  run_script+=$'\n'"export ${kv%%=*}=$(quote_arg "${kv#*=}")"
done
run_script+=$'\n'"$(print_cmd "${train_cmd[@]}") > $log_file 2>&1"
run_script+=$'\n'"echo \$? > $rc_file"

# Written through a quoted heredoc, then started detached so it outlives the ssh session.
start_cmd="if [ -f $pid_file ] && kill -0 \"\$(cat $pid_file)\" 2>/dev/null && [ ! -f $rc_file ]; then \
echo \"a run is already active on \$(hostname): stop it or use --attach\" >&2; exit 1; fi
cat > ~/$run_script_name <<'SPT_JAX_RUN_EOF'
$run_script
SPT_JAX_RUN_EOF
rm -f $rc_file; setsid nohup bash ~/$run_script_name > /dev/null 2>&1 < /dev/null &
echo \"started on \$(hostname)\""

[[ $dry_run == 1 ]] && echo "# 4. start training on all workers (detached); the worker run script is:" \
  && printf '%s\n' "$run_script" | sed 's/^/#   /'
run_cmd "${tpu_vm[@]}" ssh "$tpu" "${gcloud_common[@]}" --worker=all "--command=$start_cmd"

# ---------------------------------------------------------------- 5. the log
if [[ $stream == 1 ]]; then
  [[ $dry_run == 1 ]] && echo "# 5. stream worker 0's log until training exits (exit status = training's)"
  stream_log
elif [[ $dry_run == 0 ]]; then
  echo "tpu_pod.sh: started; follow worker 0's log with: bash launch/tpu_pod.sh --tpu $tpu --zone $zone${project:+ --project $project} --attach" >&2
fi
if [[ $dry_run == 0 ]]; then
  echo "tpu_pod.sh: delete the slice when done: gcloud compute tpus tpu-vm delete $tpu --zone=$zone${project:+ --project=$project}" >&2
fi
