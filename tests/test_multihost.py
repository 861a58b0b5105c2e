"""JAX's multi-controller runtime on localhost: two processes with 4 fake CPU devices each, running a
short toy_strategy training through the normal CLI, equal one process with 8 devices on the same
(2, 2, 2) mesh: same sampled tokens, metrics and parameters (f32 tolerance: cross-process
collectives may add in another order)."""

import socket
import subprocess

import numpy as np
import pytest

from rlvr_jax.writers import read_jsonl
from tests.test_resume import assert_same_state, command, deterministic_rows, run_args, subprocess_env

pytestmark = pytest.mark.slow
MESH = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(toy_base, tmp_path):
    single = tmp_path / "single"
    done = subprocess.run(command(single, run_args(toy_base, *MESH)), env=subprocess_env(8), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    multi = tmp_path / "multi"
    port = free_port()
    procs = [subprocess.Popen(command(multi, run_args(toy_base, *MESH, f"mesh.distributed.coordinator_address=localhost:{port}",
                                                      "mesh.distributed.num_processes=2", f"mesh.distributed.process_id={i}")),
                              env=subprocess_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "summary written" in outs[0]
    from rlvr_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(multi / "checkpoints", read_only=True)
    meta = ckpt.read_meta(4)
    ckpt.close()
    assert meta["process_count"] == 2 and meta["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # Same sampled tokens (both processes' rows, written by process 0), same rewards.
    assert (multi / "rollouts.jsonl").read_text() == (single / "rollouts.jsonl").read_text()
    rows, expected = deterministic_rows(multi), deterministic_rows(single)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert got[key] == value, key
    assert_same_state(single, multi, 4, exact=False)
    assert len(read_jsonl(multi / "metrics.jsonl")) == 5  # one writer: process 0
    assert np.isfinite(rows[-1]["loss"])
