"""The persistent compilation cache `rlvr-jax train` turns on by default (run.compile_cache): a second run
of the same config starts without compiling, and a cache the process already has is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from rlvr_jax.compile_cache import use_compile_cache

ROOT = Path(__file__).resolve().parents[1]


def test_a_cache_the_process_has_wins():
    # conftest points this session at one folder through JAX_COMPILATION_CACHE_DIR, as the sweep does
    # for its runs: the config's folder must not take its place.
    session = jax.config.jax_compilation_cache_dir
    assert session and use_compile_cache("/somewhere/else", print) == session
    assert jax.config.jax_compilation_cache_dir == session


def test_a_folder_that_cannot_be_made_is_one_line_not_an_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    lines = []
    session = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)  # as in a process with no cache yet
    try:
        assert use_compile_cache(str(blocker / "xla"), lines.append) is None
        assert jax.config.jax_compilation_cache_dir is None  # the run goes on without one
    finally:
        jax.config.update("jax_compilation_cache_dir", session)
    assert jax.config.jax_compilation_cache_dir == session
    assert len(lines) == 1 and lines[0].startswith(f"run.compile_cache: cannot use {blocker / 'xla'}")


@pytest.mark.slow
def test_a_second_run_of_the_same_config_compiles_nothing(tmp_path, toy_base):
    folder, data = toy_base
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR")
    env["PYTHONPATH"] = str(ROOT)
    args = [
        f"model.path={folder}", "model.arch={}", "warmstart.enabled=false", f"data.data_dir={data}",
        "run.steps=1", "data.prompts_per_step=4", "rollout.group_size=4", "eval.max_problems=8", "eval.n=2",
        "logging.progress_bar=false", f"run.compile_cache={cache}",
    ]  # fmt: skip

    def train(name: str) -> None:
        argv = [sys.executable, "-m", "rlvr_jax.cli", "train", "--run-dir", str(tmp_path / name), *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    train("first")
    compiled = sorted(os.listdir(cache))
    assert len(compiled) >= 5  # rollout, update, evaluation, probe, ... each kept on disk
    train("second")  # another run directory, the same programs: every one is loaded, none is compiled
    assert sorted(os.listdir(cache)) == compiled
