# Shared helpers for the launch/ scripts (sourced, not run).
# shellcheck shell=bash

DRY_RUN=0

die() {
  echo "error: $*" >&2
  exit 2
}

# Print a command exactly as it will run (shell-quoted); run it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then
    "$@"
  fi
}

# require VAR FLAG WHAT: fail early, naming the flag and the environment variable that set it.
require() {
  local var="$1" flag="$2" what="$3"
  if [[ -z "${!var:-}" ]]; then
    die "missing ${flag} (or \$${var}): ${what}"
  fi
}

# Quote an argument list into one string for a remote shell.
quoted() {
  local out="" arg
  for arg in "$@"; do
    out+="$(printf ' %q' "$arg")"
  done
  printf '%s' "${out# }"
}
