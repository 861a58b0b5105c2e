#!/usr/bin/env bash
# Device check on a GPU machine: update-step MFU, decode bandwidth, the small GRPO workload's step time.
#
#   bash benchmarks/device_check.sh [device_check.py flags, e.g. --out $OUT/device_check.jsonl]
#
# Installs the wheels in .whl/ (packages that machine lacks, e.g. pydantic) into /tmp/site first
# (DEVICE_CHECK_SITE overrides);
# .whl/fallback/ holds a flax wheel, installed only when the machine's flax is outside the range
# this project is tested with. Then prints versions and runs benchmarks/device_check.py (one JSON
# line per figure, a table last). PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${DEVICE_CHECK_SITE:-/tmp/site}
# shellcheck source=benchmarks/device_wheels.sh
source benchmarks/device_wheels.sh
install_device_wheels "$PY" "$SITE"

$PY - <<'EOF'
import sys
from importlib import metadata
names = ["jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "pydantic", "numpy"]
found = []
for name in names:
    try:
        found.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
print(f"python {sys.version.split()[0]}; " + ", ".join(found), flush=True)
EOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
fi

PYTHONUNBUFFERED=1 exec $PY benchmarks/device_check.py "$@"
