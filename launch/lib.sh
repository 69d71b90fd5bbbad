# Shared helpers of the launchers (sourced, not run). The sourcing script sets
# `script_name` (for messages) and `dry_run` (0 or 1) before calling them.
# shellcheck shell=bash
# shellcheck disable=SC2154  # script_name and dry_run are set by the sourcing script

die() {
  echo "${script_name}: error: $*" >&2
  echo "Run 'bash launch/${script_name} --help' for usage." >&2
  exit 2
}

# Prints one argument so that a shell reads it back unchanged (readable for gin bindings).
quote_arg() {
  local a="$1"
  if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$a"
  elif [[ "$a" != *"'"* ]]; then
    printf "'%s'" "$a"
  else
    a="${a//\\/\\\\}"; a="${a//\"/\\\"}"; a="${a//\$/\\\$}"; a="${a//\`/\\\`}"
    printf '"%s"' "$a"
  fi
}

print_cmd() {
  local first=1 a
  for a in "$@"; do
    if [[ $first == 0 ]]; then printf ' '; fi
    quote_arg "$a"
    first=0
  done
  printf '\n'
}

# --dry-run: print the command on stdout. Otherwise: echo it on stderr ('+ ...') and run it.
run_cmd() {
  if [[ $dry_run == 1 ]]; then
    print_cmd "$@"
  else
    { printf '+ '; print_cmd "$@"; } >&2
    "$@"
  fi
}

# Needs a value after an option; $2 is the next word (or empty).
need_value() {
  if [[ $# -lt 2 || -z "$2" || "$2" == --* ]]; then die "$1 needs a value"; fi
}

is_positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
