"""The package stands alone: a wheel built from this repository carries the default configs, recipes
and probe files, and `rlvr-jax` finds them from outside any checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from rlvr_jax.config import PACKAGED


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    root = PACKAGED.parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("rlvr_jax-*.whl")
    return path


def test_wheel_ships_configs_recipes_and_probes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(PACKAGED.parent.parent).as_posix() for p in PACKAGED.rglob("*.yaml")}
    assert {"rlvr_jax/configs/toy_strategy.yaml", "rlvr_jax/configs/probes/toy_strategy.yaml"} <= shipped
    assert shipped <= names, sorted(shipped - names)


def test_installed_package_resolves_its_default_config_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    script = (
        "import rlvr_jax, rlvr_jax.cli as cli\n"
        "from rlvr_jax.config import load_config\n"
        "from rlvr_jax.probe import load_probe_file\n"
        f"assert rlvr_jax.__file__.startswith({str(target)!r}), rlvr_jax.__file__\n"
        "cfg = load_config(cli.DEFAULT_CONFIG)\n"
        "print(cfg.run.name, load_config('recipes/qwen2.5-math-1.5b_math_grpo').run.name,"
        " sorted(load_probe_file('toy_strategy').classes))\n"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "toy_strategy" and "['S1', 'S2', 'S3']" in done.stdout
