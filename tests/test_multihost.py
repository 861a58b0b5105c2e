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


def run_single(toy_base, run_dir, *extra):
    """One process, 8 devices, the (2, 2, 2) mesh."""
    args = run_args(toy_base, *MESH, *extra)
    done = subprocess.run(command(run_dir, args), env=subprocess_env(8), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def single(toy_base, tmp_path_factory):
    return run_single(toy_base, tmp_path_factory.mktemp("single"))


def start_two(toy_base, run_dir, *extra):
    port = free_port()
    return [
        subprocess.Popen(
            command(
                run_dir,
                run_args(
                    toy_base,
                    *MESH,
                    f"mesh.distributed.coordinator_address=localhost:{port}",
                    "mesh.distributed.num_processes=2",
                    f"mesh.distributed.process_id={i}",
                    *extra,
                ),
            ),
            env=subprocess_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def test_two_processes_equal_one_process(toy_base, single, tmp_path):
    assert_two_equal_one(toy_base, single, tmp_path / "multi")


def assert_two_equal_one(toy_base, single, multi, *extra):
    """Two processes x 4 devices (each reads, samples and scores half the prompts) equal `single`."""
    procs = start_two(toy_base, multi, *extra)
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


def test_sigterm_to_one_host_stops_both_at_the_same_step_and_the_restart_matches(toy_base, single, tmp_path):
    """A preemption notice reaches one host; JAX's preemption sync point stops every host after the
    same step, they save one checkpoint together, and the restarted pair finishes like one process."""
    import signal

    run_dir = tmp_path / "preempted"
    procs = start_two(toy_base, run_dir)
    lines = []
    for line in procs[0].stdout:
        lines.append(line)
        if line.startswith("base policy:"):
            procs[0].send_signal(signal.SIGTERM)  # host 0 only
            break
    outs = ["".join(lines) + procs[0].communicate(timeout=600)[0], procs[1].communicate(timeout=600)[0]]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    stopped = [line for line in outs[0].splitlines() if line.startswith("stopped after step")]
    assert stopped and "(preemption notice)" in stopped[0], outs[0][-2000:]
    step = int(stopped[0].split()[3])
    assert 1 <= step < 4 and (run_dir / "checkpoints" / str(step)).is_dir()
    assert f"stopped after step {step} of 4" in outs[1]  # host 1 stopped at the same step
    procs = start_two(toy_base, run_dir)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert f"resuming from checkpoint step {step}" in outs[0]
    assert (run_dir / "rollouts.jsonl").read_text() == (single / "rollouts.jsonl").read_text()
    assert_same_state(single, run_dir, 4, exact=False)
