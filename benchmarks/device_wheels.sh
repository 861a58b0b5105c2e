# shellcheck shell=bash
# Sourced by the device scripts (device_check.sh, device_study.sh): install_device_wheels PY SITE puts the
# wheels in .whl/ (packages the GPU machine lacks) into SITE, and .whl/fallback/flax-*.whl only when the
# machine's own flax is outside the range this project is tested with; PYTHONPATH gains SITE first.
# Returns non-zero when pip fails. Run from the repository root.

_flax_in_range() {
  "$1" - <<'PYEOF'
import sys
from importlib import metadata
try:
    version = tuple(int(x) for x in metadata.version("flax").split(".")[:3])
except Exception:
    sys.exit(1)
sys.exit(0 if (0, 12, 8) <= version < (0, 13) else 1)
PYEOF
}

install_device_wheels() {
  local py=$1 site=$2
  local pip=("$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site")
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  if compgen -G ".whl/*.whl" >/dev/null; then
    "${pip[@]}" .whl/*.whl || return 1
    export PYTHONPATH=$site:$PYTHONPATH
  fi
  if compgen -G ".whl/fallback/flax-*.whl" >/dev/null && ! _flax_in_range "$py"; then
    echo "flax outside 0.12.8..0.12.x here: installing $(ls .whl/fallback/flax-*.whl)"
    "${pip[@]}" .whl/fallback/flax-*.whl || return 1
    export PYTHONPATH=$site:$PYTHONPATH
  fi
}
