"""benchmarks/device_check.py: the CPU --dry-run prints every figure, and its FLOP formulas match XLA's count."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_check.py"
FIGURES = ["matmul_peak", "memory_bandwidth", "update_mfu", "decode_b1", "decode_b64", "small_f32", "small_bf16"]


def _module():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_prints_every_figure(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "OUT", "JAX_COMPILATION_CACHE_DIR")}
    out = tmp_path / "device_check.jsonl"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--budget-s", "500", "--out", str(out)],  # a slow CI box: no skips
        cwd=tmp_path,  # the script finds the repository by its own path
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in out.read_text().splitlines()] == printed
    rows = {row["figure"]: row for row in printed}
    assert rows["env"]["platform"] == "cpu" and rows["env"]["dry_run"] is True
    for figure in FIGURES:
        row = rows[figure]
        assert "error" not in row and "skipped" not in row, row
        assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]) and row["value"] > 0, row
        assert row["unit"]
        assert f"| {figure} | {row['value']} |" in proc.stdout  # the closing table
    update = rows["update_mfu"]
    assert update["step_s"] > 0 and update["compile_s"] > 0 and update["micro_batches"] == 2
    assert update["param_dtype"] == "float32" and update["compute_dtype"] == "bfloat16"
    assert update["skipped_steps"] == 0 and math.isfinite(update["loss_value"])
    for batch in (1, 64):
        decode = rows[f"decode_b{batch}"]
        assert decode["batch"] == batch and decode["step_ms"] > 0 and decode["tflop_s"] > 0
        assert decode["step_bytes"] == decode["param_bytes"] + decode["kv_bytes"]
    for figure in ("small_f32", "small_bf16"):
        small = rows[figure]
        assert small["prompts"] * small["group_size"] == 8 and small["new_tokens"] == 8  # dry-run shape 2,4,8,8
        assert len(small["step_times"]) == 3 and small["timed_steps"] == "3..3"


def test_flop_and_byte_formulas():
    """The analytic model FLOPs (update step, one decode step) against XLA's own count of the
    trainer's lowered programs (nothing compiled or allocated); XLA also counts elementwise ops."""
    import jax.numpy as jnp

    dc = _module()
    arch = dc.make_arch(dc.PRESETS["medium"])
    model = dc.update_flops(arch, rows=4, prompt=32, completion=96)
    xla = dc.xla_update_flops(arch, 4, 32, 96, jnp.float32)
    assert 0.97 < model["total"] / xla <= 1.0
    cost = dc.decode_costs(arch, batch=8, prompt=32, new=64, param_bytes=2 * arch.num_params, kv_itemsize=2)
    xla = dc.xla_decode_flops(arch, 8, 32, 64, jnp.bfloat16)
    assert 0.9 < cost["step_flops_scanned"] / xla <= 1.0
    # bytes: every weight once + live k and v of every layer; step j of 63 reads 32 + j slots
    slot = 8 * arch.num_layers * 2 * arch.num_kv_heads * arch.head_dim * 2
    assert cost["kv_bytes"] == pytest.approx(slot * sum(32 + j for j in range(1, 64)) / 63)
    assert cost["step_bytes"] == 2 * arch.num_params + cost["kv_bytes"]
    # the GPU run's model is Qwen2.5-0.5B's shape: its published 494,032,768 parameters
    assert dc.make_arch(dc.PRESETS["qwen2.5-0.5b"]).num_params == 494_032_768


def test_wrapper_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed")
    proc = subprocess.run([shellcheck, "-x", "benchmarks/device_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
