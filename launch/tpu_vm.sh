#!/usr/bin/env bash
# Multi-host training on a Cloud TPU VM slice: create (queued resource), set up every worker, train on
# all workers at once, stream logs, delete. JAX's multi-controller runtime does the rest: every worker
# runs the same command and `mesh.distributed.init=auto` finds the slice (TPU_WORKER_HOSTNAMES).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/tpu_vm.sh ACTION [options] [-- key=value ...]

ACTION   create | setup | train | logs | stop | delete
  create   request the slice as a queued resource (waits in the queue until capacity is granted)
  setup    copy this checkout to every worker, install it with the [tpu] extra, mount the bucket
           read-only at /mnt/gcs (for inputs: data files; models can also be read as gs:// URLs)
  train    start `rlvr-jax train` on all workers (in the background) with the run directory
           gs://BUCKET/runs/RUN_NAME; re-running resumes from its latest checkpoint
  logs     stream worker 0's training log
  stop     SIGTERM the trainer on all workers (it finishes the step, saves a checkpoint, exits 0)
  delete   delete the slice and its queued resource

options (or the environment variables in brackets):
  --project ID        Google Cloud project            [PROJECT]   required
  --zone ZONE         e.g. us-west4-a (v5e)           [ZONE]      required
  --name NAME         slice / queued-resource name    [TPU_NAME]  required
  --accelerator TYPE  e.g. v5litepod-16, v5p-16       [ACCELERATOR]  required by create
  --runtime VERSION   TPU VM image                    [RUNTIME]   default v2-alpha-tpuv5-lite
  --spot              request spot capacity (preemptible; training resumes after preemption)
  --bucket NAME       GCS bucket: run directories are written to gs://NAME/runs/ directly (Orbax
                      and the trainer write gs:// URLs); setup mounts it read-only at /mnt/gcs
                                                      [BUCKET]    required by setup and train
  --config FILE       config path inside the checkout (train)          default toy_strategy (packaged)
  --run-name NAME     run directory gs://BUCKET/runs/NAME (train, logs)   default the slice name
  --dry-run           print every command, run none
  -- key=value        config overrides passed to rlvr-jax train
USAGE
}

ACTION="${1:-}"
[[ -n "$ACTION" ]] || { usage; exit 2; }
shift
case "$ACTION" in
  -h|--help) usage; exit 0 ;;
  create|setup|train|logs|stop|delete) ;;
  *) die "unknown action '$ACTION' (create | setup | train | logs | stop | delete)" ;;
esac

PROJECT="${PROJECT:-}" ZONE="${ZONE:-}" TPU_NAME="${TPU_NAME:-}" ACCELERATOR="${ACCELERATOR:-}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}" BUCKET="${BUCKET:-}" SPOT=0
CONFIG="toy_strategy" RUN_NAME="" OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT="${2:?}"; shift 2 ;;
    --zone) ZONE="${2:?}"; shift 2 ;;
    --name) TPU_NAME="${2:?}"; shift 2 ;;
    --accelerator) ACCELERATOR="${2:?}"; shift 2 ;;
    --runtime) RUNTIME="${2:?}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --bucket) BUCKET="${2:?}"; shift 2 ;;
    --config) CONFIG="${2:?}"; shift 2 ;;
    --run-name) RUN_NAME="${2:?}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

require PROJECT --project "the Google Cloud project that owns the TPU quota"
require ZONE --zone "a zone with the accelerator, e.g. us-west4-a for v5e"
require TPU_NAME --name "a name for the slice"
RUN_NAME="${RUN_NAME:-$TPU_NAME}"
RUN_DIR="gs://$BUCKET/runs/$RUN_NAME"
LOG="\$HOME/rlvr-jax-$RUN_NAME.log"
WHERE=(--project "$PROJECT" --zone "$ZONE")

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command "$1"
}

case "$ACTION" in
  create)
    require ACCELERATOR --accelerator "the slice type, e.g. v5litepod-16 or v5p-16"
    EXTRA=()
    if [[ "$SPOT" == 1 ]]; then EXTRA+=(--spot); fi
    run gcloud compute tpus queued-resources create "$TPU_NAME" "${WHERE[@]}" --node-id "$TPU_NAME" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" "${EXTRA[@]}"
    run gcloud compute tpus queued-resources describe "$TPU_NAME" "${WHERE[@]}" --format "value(state.state)"
    ;;
  setup)
    require BUCKET --bucket "the GCS bucket that holds run directories and checkpoints"
    ROOT="$(cd "$HERE/.." && pwd)"
    ARCHIVE="/tmp/rlvr-jax-$TPU_NAME.tar.gz"
    run git -C "$ROOT" archive --format tar.gz --prefix rlvr-jax/ -o "$ARCHIVE" HEAD
    run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME:rlvr-jax.tar.gz" "${WHERE[@]}" --worker=all
    on_all_workers "tar xzf rlvr-jax.tar.gz && cd rlvr-jax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]' && sudo mkdir -p /mnt/gcs && sudo chown \$USER /mnt/gcs && gcsfuse -o ro --implicit-dirs $(quoted "$BUCKET") /mnt/gcs"
    ;;
  train)
    require BUCKET --bucket "the GCS bucket for the run directory (gs://BUCKET/runs/RUN_NAME)"
    TRAIN="$(quoted .venv/bin/rlvr-jax train --config "$CONFIG" --run-dir "$RUN_DIR" logging.progress_bar=false "${OVERRIDES[@]}")"
    on_all_workers "cd rlvr-jax && nohup $TRAIN > $LOG 2>&1 &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 --command "tail -n 100 -f $LOG"
    ;;
  stop)
    on_all_workers "pkill -TERM -f 'rlvr-jax train' || true"
    ;;
  delete)
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${WHERE[@]}" --force --quiet
    ;;
esac
