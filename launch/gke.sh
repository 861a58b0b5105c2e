#!/usr/bin/env bash
# Multi-host TPU training on GKE: a JobSet with one pod per TPU VM host of the slice. GKE's TPU
# webhook sets the worker environment (TPU_WORKER_HOSTNAMES, TPU_WORKER_ID) that JAX auto-detects, so
# every pod runs the same `rlvr-jax train` command. The run directory is a gs:// URL (Orbax and the
# trainer write the bucket directly, with Workload Identity credentials), so a restarted JobSet resumes
# from the latest checkpoint; the GCS FUSE CSI driver mounts the bucket read-only at /mnt/gcs for inputs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
usage: launch/gke.sh --image IMAGE --accelerator TYPE --bucket NAME --run-name NAME [options] [-- key=value ...]

Prints the JobSet manifest and applies it with kubectl (the cluster needs the JobSet controller, a TPU
node pool of the right type, Workload Identity access to the bucket, and the GCS FUSE CSI driver).
  --image IMAGE        container image with this project installed (pip install '.[tpu]')  [IMAGE]
  --accelerator TYPE   v5litepod-16 | v5p-16 | v6e-16                                       [ACCELERATOR]
  --bucket NAME        GCS bucket for run directories (also mounted read-only at /mnt/gcs)  [BUCKET]
  --run-name NAME      run directory gs://BUCKET/runs/NAME, also the JobSet name            [RUN_NAME]
  --config FILE        config path inside the image     default toy_strategy (packaged)
  --service-account SA Kubernetes service account with access to the bucket  default default
  --dry-run            print the manifest and the kubectl command, apply nothing
  -- key=value         config overrides
USAGE
}

IMAGE="${IMAGE:-}" ACCELERATOR="${ACCELERATOR:-}" BUCKET="${BUCKET:-}" RUN_NAME="${RUN_NAME:-}"
CONFIG="toy_strategy" SERVICE_ACCOUNT="default" OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --image) IMAGE="${2:?}"; shift 2 ;;
    --accelerator) ACCELERATOR="${2:?}"; shift 2 ;;
    --bucket) BUCKET="${2:?}"; shift 2 ;;
    --run-name) RUN_NAME="${2:?}"; shift 2 ;;
    --config) CONFIG="${2:?}"; shift 2 ;;
    --service-account) SERVICE_ACCOUNT="${2:?}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require IMAGE --image "a container image with rlvr-jax installed"
require ACCELERATOR --accelerator "the TPU slice type"
require BUCKET --bucket "the GCS bucket for run directories"
require RUN_NAME --run-name "a name for the run (lowercase letters, digits, dashes)"
[[ "$RUN_NAME" =~ ^[a-z0-9-]+$ ]] || die "--run-name must be lowercase letters, digits and dashes (a Kubernetes name)"

# slice type -> node selector accelerator, topology, hosts, chips per host
case "$ACCELERATOR" in
  v5litepod-16) GKE_ACCEL=tpu-v5-lite-podslice TOPOLOGY=4x4 HOSTS=4 CHIPS=4 ;;
  v5p-16) GKE_ACCEL=tpu-v5p-slice TOPOLOGY=2x2x2 HOSTS=2 CHIPS=4 ;;
  v6e-16) GKE_ACCEL=tpu-v6e-slice TOPOLOGY=4x4 HOSTS=4 CHIPS=4 ;;
  *) die "--accelerator $ACCELERATOR is not one of v5litepod-16, v5p-16, v6e-16 (add its topology to launch/gke.sh)" ;;
esac

ARGS=""
for arg in train --config "$CONFIG" --run-dir "gs://$BUCKET/runs/$RUN_NAME" logging.progress_bar=false "${OVERRIDES[@]}"; do
  ARGS+="
              - \"${arg//\"/\\\"}\""
done
MANIFEST="apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $RUN_NAME
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: 10  # preempted or failed: restart the whole slice; training resumes from the latest checkpoint
  replicatedJobs:
  - name: workers
    template:
      spec:
        parallelism: $HOSTS
        completions: $HOSTS
        completionMode: Indexed
        backoffLimit: 0
        template:
          metadata:
            annotations:
              gke-gcsfuse/volumes: \"true\"
          spec:
            serviceAccountName: $SERVICE_ACCOUNT
            restartPolicy: Never
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: $GKE_ACCEL
              cloud.google.com/gke-tpu-topology: $TOPOLOGY
            terminationGracePeriodSeconds: 120  # SIGTERM: finish the step, save, exit 0
            containers:
            - name: rlvr-jax
              image: $IMAGE
              command: [\"rlvr-jax\"]
              args:$ARGS
              resources:
                limits:
                  google.com/tpu: $CHIPS
              volumeMounts:
              - name: bucket
                mountPath: /mnt/gcs
                readOnly: true
            volumes:
            - name: bucket
              csi:
                driver: gcsfuse.csi.storage.gke.io
                volumeAttributes:
                  bucketName: $BUCKET
                  mountOptions: implicit-dirs
                readOnly: true"

echo "$MANIFEST"
echo "---"
if [[ "$DRY_RUN" == 1 ]]; then
  run kubectl apply -f -
else
  printf '%s\n' "$MANIFEST" | run kubectl apply -f -
fi
