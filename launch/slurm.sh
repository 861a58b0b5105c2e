#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node holding all its GPUs. JAX's cluster
# auto-detection reads the SLURM environment (SLURM_JOB_ID, node list, task ids), so the trainer's
# `mesh.distributed.init=auto` calls jax.distributed.initialize() with no other settings.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/slurm.sh --nodes N --gpus-per-node G --partition P --run-dir DIR [options] [-- key=value ...]

Writes an sbatch script next to the run directory and submits it.
  --nodes N            nodes (one JAX process each)                  [NODES]      required
  --gpus-per-node G    GPUs per node                                 [GPUS]       required
  --partition P        SLURM partition                               [PARTITION]  required
  --run-dir DIR        run directory on a filesystem all nodes share [RUN_DIR]    required
  --config FILE        YAML config                                   default toy_strategy (packaged)
  --time HH:MM:SS      wall-clock limit (the trainer saves and exits 0 on the SIGTERM that ends it)
  --account A          SLURM account                                 [ACCOUNT]
  --dry-run            print the sbatch script and the submit command, submit nothing
  -- key=value         config overrides
USAGE
}

NODES="${NODES:-}" GPUS="${GPUS:-}" PARTITION="${PARTITION:-}" RUN_DIR="${RUN_DIR:-}" ACCOUNT="${ACCOUNT:-}"
CONFIG="toy_strategy" TIME_LIMIT="" OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="${2:?}"; shift 2 ;;
    --gpus-per-node) GPUS="${2:?}"; shift 2 ;;
    --partition) PARTITION="${2:?}"; shift 2 ;;
    --run-dir) RUN_DIR="${2:?}"; shift 2 ;;
    --config) CONFIG="${2:?}"; shift 2 ;;
    --time) TIME_LIMIT="${2:?}"; shift 2 ;;
    --account) ACCOUNT="${2:?}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require NODES --nodes "the number of nodes"
require GPUS --gpus-per-node "GPUs on each node"
require PARTITION --partition "the SLURM partition to queue in"
require RUN_DIR --run-dir "a run directory on a filesystem shared by all nodes"
[[ "$NODES" =~ ^[0-9]+$ && "$GPUS" =~ ^[0-9]+$ ]] || die "--nodes and --gpus-per-node must be integers"

ROOT="$(cd "$HERE/.." && pwd)"
SCRIPT="${RUN_DIR%/}.sbatch"
HEADER="#SBATCH --job-name=rlvr-jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --partition=$PARTITION
#SBATCH --signal=TERM@120
#SBATCH --output=${RUN_DIR%/}.%j.log"
if [[ -n "$TIME_LIMIT" ]]; then HEADER+=$'\n'"#SBATCH --time=$TIME_LIMIT"; fi
if [[ -n "$ACCOUNT" ]]; then HEADER+=$'\n'"#SBATCH --account=$ACCOUNT"; fi
BODY="#!/usr/bin/env bash
$HEADER
set -euo pipefail
cd $(quoted "$ROOT")
export XLA_FLAGS=\"--xla_gpu_deterministic_ops=true \${XLA_FLAGS:-}\"
srun $(quoted .venv/bin/rlvr-jax train --config "$CONFIG" --run-dir "$RUN_DIR" logging.progress_bar=false "${OVERRIDES[@]}")"

echo "--- $SCRIPT"
echo "$BODY"
echo "---"
if [[ "$DRY_RUN" == 0 ]]; then
  mkdir -p "$(dirname "$SCRIPT")"
  printf '%s\n' "$BODY" > "$SCRIPT"
fi
run sbatch "$SCRIPT"
