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


def _module(path: Path = SCRIPT):
    spec = importlib.util.spec_from_file_location(path.stem, path)
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
    for figure in ("update_mfu", "decode_b1", "decode_b64"):  # each followed by its op profile
        prof = rows[f"profile_{figure}"]
        assert [r["figure"] for r in printed].index(prof["figure"]) == [r["figure"] for r in printed].index(figure) + 1
        assert "error" not in prof and 0 < prof["value"] <= 105, prof  # busy %: the ops' union over the call's wall
        assert 0 < prof["busy_ms_per_call"] <= prof["op_ms_per_call"] * 1.0001 and prof["ops_per_call"] > 1
        assert sum(prof["classes_pct"].values()) == pytest.approx(100, abs=0.01)
        assert prof["top"] and all(op["ms_per_call"] > 0 for op in prof["top"])
        assert not any(op["op"].split("/")[-1].startswith("while") for op in prof["top"])  # control flow left out
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


def test_op_profile_sums_ops_not_host_spans_or_overlaps():
    """op_profile.summarize on hand-made traces: a GPU trace's kernels (its host events ignored), busy
    time as the union of overlapping kernels, ops keyed by program and op; a CPU trace's XLA thunks
    without the `while` that spans its body or the host's bookkeeping."""
    op = _module(ROOT / "benchmarks" / "op_profile.py")

    def meta(pid, name):
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}

    def event(pid, name, ts, dur, **args):
        return {"ph": "X", "pid": pid, "tid": 1, "name": name, "ts": ts, "dur": dur, "args": args}

    gpu = {
        "traceEvents": [
            meta(1, "/host:CPU"),
            meta(2, "/device:GPU:0"),
            event(1, "ThunkExecutor::Execute", 0, 900),
            event(2, "sm90_xmma_gemm_bf16", 0, 400, hlo_module="jit_step", hlo_op="fusion.3"),
            event(2, "loop_add_fusion", 300, 200, hlo_module="jit_step", hlo_op="add.1"),  # overlaps the gemm
            event(2, "sm90_xmma_gemm_bf16", 600, 100, hlo_module="jit_step", hlo_op="fusion.3"),
            event(2, "ncclAllReduceKernel", 800, 100),
        ]
    }
    found = op.summarize(gpu, wall_s=1e-3, calls=1)
    assert found["busy_ms_per_call"] == pytest.approx(0.7)  # [0, 500) + [600, 700) + [800, 900): 700 us
    assert found["busy_pct"] == pytest.approx(70.0)
    assert found["op_ms_per_call"] == pytest.approx(0.8)  # 400 + 200 + 100 + 100 us, summed per op
    assert [t["op"] for t in found["top"]] == ["jit_step/fusion.3", "jit_step/add.1", "ncclAllReduceKernel"]
    assert found["top"][0]["kernel"] == "sm90_xmma_gemm_bf16" and found["top"][0]["count_per_call"] == 2
    assert found["classes_pct"] == pytest.approx({"matmul": 62.5, "other": 25.0, "collective": 12.5})

    cpu = {
        "traceEvents": [
            meta(1, "/host:CPU"),
            event(1, "while.7", 0, 1000, hlo_module="jit_decode", hlo_op="while.7"),
            event(1, "ynn_fusion.2", 100, 300, hlo_module="jit_decode", hlo_op="ynn_fusion.2"),
            event(1, "ynn_fusion.2", 500, 100, hlo_module="jit_fn", hlo_op="ynn_fusion.2"),  # another program
            event(1, "SlinkyThreadPool::Await", 0, 50, hlo_module="jit_decode", hlo_op="x"),
        ]
    }
    found = op.summarize(cpu, wall_s=2e-3, calls=2)
    assert [t["op"] for t in found["top"]] == ["jit_decode/ynn_fusion.2", "jit_fn/ynn_fusion.2"]
    assert found["top"][0]["kernel"] is None and found["ops_per_call"] == 1
    assert found["busy_pct"] == pytest.approx(20.0) and found["op_ms_per_call"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no op events"):
        op.summarize({"traceEvents": [meta(1, "/host:CPU")]}, wall_s=1.0, calls=1)
