#!/usr/bin/env bash
# A seed study of the toy task on one GPU machine, in one shot: `rlvr-jax sweep` (docs/sweep.md) of
# STUDY_CONFIG x SEEDS x COMBOS, JOBS runs at once sharing the GPU, stopped after STUDY_BUDGET_S seconds,
# then the table and figures of whatever finished, copied with every run's numbers into $OUT.
#
#   bash benchmarks/device_study.sh        (from the repository root; settings by environment variable)
#
# Steps:
#   1. the wheels in .whl/ (packages that machine lacks) into DEVICE_STUDY_SITE (default /tmp/site); the
#      flax wheel in .whl/fallback/ only when the machine's flax is outside 0.12.8..0.12.x;
#   2. versions and the nvidia-smi line;
#   3. the runs' datasets and the shared base policy (warm start), built once, before the runs, with every
#      CPU (benchmarks/device_study_prebuild.py), under `timeout BASE_BUDGET_S`;
#   4. the sweep, under `timeout --foreground STUDY_BUDGET_S`: at the deadline the sweep alone gets SIGTERM,
#      asks each running run to finish its step, save a checkpoint and exit, writes the table and exits
#      130 (the runs' reward workers are not signalled); STUDY_GRACE_S later it is killed if still there;
#   5. always: `rlvr-jax sweep ... --report` over the complete runs, then into RESULTS (default $OUT):
#      study.log (this script's output), table.md, table.json, the figures, and study.tar.gz (study.json,
#      timings.jsonl, the base policy's build.log and warmstart.json, each run's summary.json,
#      metrics.jsonl, config.yaml, train.log, sweep_failed.json).
#
# .whl/ (git-ignored; name it in the device call's `carry`) must hold, for Python 3.12 manylinux x86_64
# (README of the device tool: pip download --no-deps --only-binary=:all: --python-version 3.12 ...): pydantic
# 2.14.4, pydantic_core 2.50.5, annotated_types 0.8.0, typing_extensions 4.16.0, typing_inspection 0.4.5,
# tensorflow_datasets 4.9.10, array_record 0.8.6, dm_tree 0.1.10, immutabledict 4.3.1, promise 2.3 (sdist
# only: `pip wheel --no-deps promise==2.3`), simple_parsing 0.1.9, docstring_parser 0.18.0,
# tensorflow_metadata 1.21.0, termcolor 3.3.0, toml 0.10.2, grain 0.2.18, portpicker 1.6.0, tensorboardX
# 2.6.5. The machine's own transformers 5.17 builds the toy's tokenizer identically to 5.24; datasets,
# math-verify, gguf and gcsfs are imported only by file data, the math verifier, import-gguf and gs:// paths.
#
# Settings (environment):
#   STUDY_CONFIG     config name or file (default toy_strategy)
#   SEEDS            run.seed values (default 0-15)
#   COMBOS           ';'-separated named combinations, each "NAME=key=value [key=value ...]"
#                    (default "GRPO=advantage.estimator=grpo;GRPO-N=advantage.sign=negative_only;NSR=advantage.estimator=nsr")
#   STUDY_OVERRIDES  space-separated overrides for every run (default none: the config's 200 steps)
#   JOBS             runs at once (default 12)
#   STUDY_BUDGET_S   seconds the sweep may run (default 300); BASE_BUDGET_S for step 3 (default 180: past it the
#                    sweep builds what is missing itself, inside its own budget)
#   STUDY_GRACE_S    seconds after the deadline before the sweep is killed (default 60)
#   TOTAL_BUDGET_S   optional cap on the whole script: the sweep's budget shrinks to end by TOTAL_BUDGET_S
#                    minus STUDY_GRACE_S and 30 s for the report (a slow start or prebuild eats the sweep's time)
#   STUDY_NAME       the study's name in the table (default sweep)
#   OUT_DIR          the study folder (default /tmp/device_study; a rerun continues the study there)
#   RESULTS          where the results are copied (default $OUT, else OUT_DIR/results)
#   PYTHON           the interpreter (default python3)
set -uo pipefail # no -e: the report and the copy must run whatever happened before them
cd "$(dirname "$0")/.." || exit 3
PY=${PYTHON:-python3}
SITE=${DEVICE_STUDY_SITE:-/tmp/site}
STUDY_CONFIG=${STUDY_CONFIG:-toy_strategy}
SEEDS=${SEEDS:-0-15}
COMBOS=${COMBOS:-GRPO=advantage.estimator=grpo;GRPO-N=advantage.sign=negative_only;NSR=advantage.estimator=nsr}
JOBS=${JOBS:-12}
STUDY_BUDGET_S=${STUDY_BUDGET_S:-300}
BASE_BUDGET_S=${BASE_BUDGET_S:-180}
STUDY_GRACE_S=${STUDY_GRACE_S:-60}
OUT_DIR=${OUT_DIR:-/tmp/device_study}
RESULTS=${RESULTS:-${OUT:-$OUT_DIR/results}}
mkdir -p "$OUT_DIR" "$RESULTS"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee -a "$RESULTS/study.log") 2>&1
tee_pid=$!
T0=$SECONDS
stamp() { echo "[device_study +$((SECONDS - T0)) s] $*"; }

# 1. wheels
# shellcheck source=benchmarks/device_wheels.sh
source benchmarks/device_wheels.sh
install_device_wheels "$PY" "$SITE" || { stamp "installing .whl wheels failed"; exit 3; }
stamp "wheels installed"

# Several processes share the one GPU: no process takes 75 % of its memory up front. One persistent
# compilation cache for the prebuild and every run (the sweep's default is OUT_DIR/xla_cache, and it sets
# the minimum compile time only when it picks the folder itself).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT_DIR/xla_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

# 2. versions
"$PY" - <<'EOF'
import os, sys
from importlib import metadata
names = ["jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
         "numpy", "pydantic", "transformers", "tokenizers", "tensorflow-datasets", "grain", "array-record",
         "tensorboardX", "protobuf"]
found = []
for name in names:
    try:
        found.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
print(f"python {sys.version.split()[0]}; " + ", ".join(found), flush=True)
print(f"cpus: {len(os.sched_getaffinity(0))} in this process's mask, {os.cpu_count()} on the machine", flush=True)
import jax
print(f"jax devices: {jax.devices()}", flush=True)
EOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
fi

# The sweep's arguments, shared by the prebuild, the sweep and the report.
args=(--config "$STUDY_CONFIG" --seeds "$SEEDS" --out "$OUT_DIR" --jobs "$JOBS" --name "${STUDY_NAME:-sweep}")
IFS=';' read -r -a combos <<<"$COMBOS"
for combo in "${combos[@]}"; do
  [[ -n ${combo// /} ]] && args+=(--combo "$combo")
done
read -r -a overrides <<<"${STUDY_OVERRIDES:-}"
args+=("${overrides[@]}")
stamp "study: ${args[*]}"

# 3. datasets and base policy, once, with every CPU
timeout --foreground -k "$STUDY_GRACE_S" "$BASE_BUDGET_S" "$PY" benchmarks/device_study_prebuild.py "${args[@]}"
stamp "prebuild exited $?"

# 4. the sweep, stopped at its deadline
budget=$STUDY_BUDGET_S
if [[ -n ${TOTAL_BUDGET_S:-} ]]; then
  left=$((TOTAL_BUDGET_S - (SECONDS - T0) - STUDY_GRACE_S - 30))
  ((left < budget)) && budget=$((left > 30 ? left : 30))
fi
stamp "sweep: budget $budget s"
timeout --foreground -k "$STUDY_GRACE_S" "$budget" "$PY" -m rlvr_jax.cli sweep "${args[@]}"
status=$?
case $status in
  124) stamp "sweep: deadline of $budget s reached (SIGTERM; it stopped its runs and exited)" ;;
  137) stamp "sweep: killed $STUDY_GRACE_S s after its deadline" ;;
  *) stamp "sweep exited $status" ;;
esac
# After a kill its runs may still be saving (they had SIGTERM from it): wait for them, within the grace.
for ((i = 0; i < STUDY_GRACE_S; i++)); do
  pgrep -f -- "--run-dir $OUT_DIR/runs/" >/dev/null || break
  sleep 1
done
pgrep -f -- "--run-dir $OUT_DIR/runs/" >/dev/null && stamp "runs still running after the grace: $(pgrep -c -f -- "--run-dir $OUT_DIR/runs/")"

# 5. report and results, always
"$PY" -m rlvr_jax.cli sweep "${args[@]}" --report >"$OUT_DIR/report.log" 2>&1
stamp "report exited $? (its output: report.log in study.tar.gz)"
for f in table.md table.json; do
  [[ -f $OUT_DIR/$f ]] && cp "$OUT_DIR/$f" "$RESULTS/"
done
for f in "$OUT_DIR"/figures/*.png; do
  [[ -f $f ]] && cp "$f" "$RESULTS/"
done
[[ -f $OUT_DIR/table.md ]] && cat "$OUT_DIR/table.md"
pack() { # the small files of the study (no checkpoints, datasets, policies or caches); $1: also skip train.log
  (cd "$OUT_DIR" && find . \( -path ./xla_cache -o -path ./datasets -o -path ./results -o -name checkpoints \
    -o -name policy -o -name tensorboard -o -name tokenizer -o -path './base_policy/*/datasets' \) -prune -o -type f \
    \( -name '*.json' -o -name '*.jsonl' -o -name '*.yaml' -o -name '*.log' -o -name '*.md' \) \
    ! -name "${1:-.}" -print0 | tar --null -T - -czf "$RESULTS/study.tar.gz")
}
pack
if [[ $(stat -c %s "$RESULTS/study.tar.gz") -gt $((15 * 1024 * 1024)) ]]; then
  stamp "study.tar.gz over 15 MiB: packing again without the runs' train.log"
  pack train.log
fi
stamp "done: $(cd "$RESULTS" && echo *)"
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null
