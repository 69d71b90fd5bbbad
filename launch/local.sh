#!/usr/bin/env bash
# The README's local run: set up ./.venv, train SPT on the embedded sample mixture on CPU,
# evaluate the final checkpoint on the held-out sample mixture, and say where everything is.
#
#   bash launch/local.sh                          # SPT, methods/spt.gin + runs/local.gin
#   bash launch/local.sh --dry-run                # print the exact commands, run nothing
#   bash launch/local.sh --gin_file=methods/prompt_tuning.gin --model_dir=runs/local_pt
#   bash launch/local.sh --gin_file=experiments/t0_spt_large.gin --gin.TRAIN_STEPS=50
#
# runs/local.gin is always overlaid last, so any method or experiment file shrinks to CPU
# (tiny model, sample mixture, few steps), as T5X's local_tiny.gin does.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash launch/local.sh [options] [--gin.KEY=VALUE ...]

Trains with spt_jax.train on CPU, then evaluates the final checkpoint with spt_jax.evaluate.

Options:
  --model_dir DIR      where checkpoints, summaries and eval results go (default: runs/local_spt)
  --gin_file FILE      method or experiment gin file, relative to gin/ (repeatable;
                       default: methods/spt.gin); runs/local.gin is always added last
  --eval_mixture NAME  seqio mixture to evaluate (default: spt_sample_heldout_score_eval)
  --gin.KEY=VALUE      extra gin binding, passed to training and evaluation alike (so model
                       settings match the checkpoint), e.g. --gin.TRAIN_STEPS=50
  --skip_setup         do not run launch/setup.sh (use the existing .venv)
  --skip_eval          train only
  --python PATH        interpreter to run (default: .venv/bin/python)
  --dry-run            print the exact commands and exit without running them
  -h, --help           this message
Options also accept the --opt=value form.
EOF
}

script_name=local.sh
# shellcheck source=launch/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

model_dir="runs/local_spt"
eval_mixture="spt_sample_heldout_score_eval"
gin_files=()
gin_bindings=()
run_setup=1
run_eval=1
dry_run=0
python=".venv/bin/python"

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1 ;;
    --skip_setup|--skip-setup) run_setup=0 ;;
    --skip_eval|--skip-eval) run_eval=0 ;;
    --model_dir=*|--model-dir=*) model_dir="${1#*=}" ;;
    --model_dir|--model-dir) need_value "$@"; model_dir="$2"; shift ;;
    --gin_file=*|--gin-file=*) gin_files+=("${1#*=}") ;;
    --gin_file|--gin-file) need_value "$@"; gin_files+=("$2"); shift ;;
    --eval_mixture=*|--eval-mixture=*) eval_mixture="${1#*=}" ;;
    --eval_mixture|--eval-mixture) need_value "$@"; eval_mixture="$2"; shift ;;
    --python=*) python="${1#*=}" ;;
    --python) need_value "$@"; python="$2"; shift ;;
    --gin.*=*) gin_bindings+=("$1") ;;
    --gin.*) die "gin binding '$1' has no value: write it as --gin.KEY=VALUE" ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done

[[ -n "$model_dir" ]] || die "--model_dir is empty"
[[ -n "$eval_mixture" ]] || die "--eval_mixture is empty"
if [[ ${#gin_files[@]} -eq 0 ]]; then gin_files=("methods/spt.gin"); fi
gin_files+=("runs/local.gin")

# Gin files are looked up as given and under gin/ (--gin_search_paths=gin).
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

gin_args=()
for f in "${gin_files[@]}"; do gin_args+=("--gin_file=$f"); done
gin_args+=("--gin_search_paths=gin")

train_cmd=("$python" -m spt_jax.train "${gin_args[@]}" "--gin.MODEL_DIR='$model_dir'"
           "${gin_bindings[@]}")

eval_dir="$model_dir/eval"

# The highest-step checkpoint that training left in $model_dir: orbax step directories
# (<dir>/checkpoints/<step> or <dir>/<step>) or T5X-style <dir>/checkpoint_<step>.
final_checkpoint() {
  local dir="$1" best="" best_step=-1 c name step
  for c in "$dir"/checkpoints/* "$dir"/*; do
    [[ -d "$c" ]] || continue
    name="${c##*/}"
    step="${name#checkpoint_}"
    [[ "$step" =~ ^[0-9]+$ ]] || continue
    if (( 10#$step > best_step )); then best_step=$((10#$step)); best="$c"; fi
  done
  [[ -n "$best" ]] && printf '%s\n' "$best"
}

eval_cmd() {
  local ckpt="$1"
  local cmd=("$python" -m spt_jax.evaluate)
  # runs/eval.gin holds evaluation defaults when the project provides it; it comes first, so
  # that the method / experiment files and runs/local.gin (last) override its EVAL_* values.
  if [[ -f gin/runs/eval.gin ]]; then cmd+=("--gin_file=runs/eval.gin"); fi
  cmd+=("${gin_args[@]}")
  # MODEL_DIR too: the training gin files (runs/train.gin via runs/local.gin) require it.
  cmd+=("--gin.MODEL_DIR='$model_dir'" "--gin.CHECKPOINT_PATH='$ckpt'"
        "--gin.EVAL_MIXTURE='$eval_mixture'" "--gin.EVAL_OUTPUT_DIR='$eval_dir'"
        "${gin_bindings[@]}")
  run_cmd "${cmd[@]}"
}

summary() {
  local ckpt="$1"
  echo
  echo "local.sh: done."
  echo "  checkpoint: $ckpt"
  echo "  summaries:  $model_dir  (TensorBoard: tensorboard --logdir $model_dir)"
  if [[ $run_eval == 1 ]]; then
    echo "  results:    $eval_dir/results.md  (also results.json / results.csv there)"
  fi
}

if [[ $dry_run == 1 ]]; then
  echo "# local.sh --dry-run: these commands would run, in this order, from $(pwd)"
  if [[ $run_setup == 1 ]]; then run_cmd bash launch/setup.sh; fi
  run_cmd "${train_cmd[@]}"
  if [[ $run_eval == 1 ]]; then
    ckpt="$(final_checkpoint "$model_dir" || true)"
    if [[ -z "$ckpt" ]]; then
      echo "# CHECKPOINT_PATH is resolved after training: the highest-step checkpoint in $model_dir"
      ckpt="$model_dir/checkpoints/<final step>"
    fi
    eval_cmd "$ckpt"
  fi
  exit 0
fi

if [[ $run_setup == 1 ]]; then run_cmd bash launch/setup.sh; fi
[[ -x "$python" ]] || die "$python not found: run 'bash launch/setup.sh' (or drop --skip_setup)"

run_cmd "${train_cmd[@]}"

ckpt="$(final_checkpoint "$model_dir" || true)"
[[ -n "$ckpt" ]] || die "training finished but left no checkpoint under $model_dir \
(looked for $model_dir/checkpoints/<step>, $model_dir/<step>, $model_dir/checkpoint_<step>)"
if [[ $run_eval == 1 ]]; then eval_cmd "$ckpt"; fi
summary "$ckpt"
