"""The persistent XLA compilation cache: a second run of the same programs loads them instead of compiling.

jax keeps compiled executables on disk once `jax_compilation_cache_dir` is set. `rlvr-jax train` and `eval`
turn it on by default (`run.compile_cache`, a folder shared by every run of this user), so a rerun, a resumed run
or a run of another config that compiles the same step reaches step 1 without recompiling. A cache that
the process already has (JAX_COMPILATION_CACHE_DIR, or the caller's own `jax.config`) wins: the sweep and
the test suite point every process at one folder of their own. jax runs what the folder holds, so it
must be writable by this user alone (the default is in the user's home).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax


def use_compile_cache(folder: str | None, log: Callable[[str], None]) -> str | None:
    """Point jax's persistent compilation cache at `folder` (`~` expanded; None: leave it off), unless the
    process has a cache already. Returns the folder in use, or None. A folder that cannot be made is not
    an error: the run compiles as it would without a cache, and says so in one line."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if not folder:
        return None
    path = Path(os.path.expanduser(folder))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log(f"run.compile_cache: cannot use {path} ({err}); compiling without a persistent cache")
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # jax's defaults keep only programs that took >= 1 s to compile; on CPU most of a run's programs take
    # less, and together they are most of the start-up. An explicit JAX_PERSISTENT_* setting still wins.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(path)
