#!/usr/bin/env bash
# Train on this machine with whatever accelerator it has (CPU, one or more GPUs, a single TPU VM host).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/local.sh [--config FILE] [--run-dir DIR] [--dry-run] [-- key=value ...]

Runs `rlvr-jax train` from the project's virtual environment (created by `make train` / `make test`).
  --config FILE   YAML config (default: the embedded toy_strategy.yaml)
  --run-dir DIR   run directory; an existing one with checkpoints is resumed
  --dry-run       print the command, do not run it
  -- key=value    config overrides, e.g. -- run.steps=50 advantage.sign=negative_only
On GPU set XLA_FLAGS=--xla_gpu_deterministic_ops=true for bit-reproducible runs.
USAGE
}

CONFIG="" RUN_DIR="" OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --run-dir) RUN_DIR="${2:?--run-dir needs a directory}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

ROOT="$(cd "$HERE/.." && pwd)"
BIN="$ROOT/.venv/bin/rlvr-jax"
if [[ ! -x "$BIN" && "$DRY_RUN" == 0 ]]; then
  die "$BIN not found: run 'make train' (or 'make test') once to create the virtual environment"
fi
CMD=("$BIN" train)
if [[ -n "$CONFIG" ]]; then
  # a file, or the name of a packaged config (rlvr-jax resolves it and names the packaged ones if neither)
  CMD+=(--config "$CONFIG")
fi
if [[ -n "$RUN_DIR" ]]; then CMD+=(--run-dir "$RUN_DIR"); fi
run "${CMD[@]}" "${OVERRIDES[@]}"
