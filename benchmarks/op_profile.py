"""Where a jitted call's time goes: one `jax.profiler` trace, summed per op.

`capture(fn, calls)` runs `fn()` (which must block on its result) `calls` times under a trace and
returns `summarize` of the trace's events: the ops' busy time against the wall time of the calls, and
the ops that took it. Which events are ops:
- on an accelerator, the kernels in the trace's device processes (`/device:GPU:0`, `/device:TPU:0`, ...);
- on the CPU backend, XLA's thunks on the host threads (events that carry an `hlo_op`), less control
  flow (a `while` event spans its body's ops, which are traced on their own).

Busy time is the union of the ops' intervals (kernels on several streams, or CPU ops on several threads,
overlap; summing them would count one moment twice). `busy_pct` = busy / wall: well under 100 % on a GPU
means the device waits on the host (launches, syncs) between kernels. Per op: its summed duration per
call, its share of the summed op time and its count per call. `classes` buckets the op time by name
(matmul / collective / copy / other) with the regexes below: a name-based guide, not a cost model.

    python benchmarks/op_profile.py            # self-check on this machine: a small jitted MLP
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CLASSES = (
    ("matmul", re.compile(r"gemm|matmul|cublas|cutlass|xmma|wgmma|convolution|dot|ynn_fusion", re.I)),
    ("collective", re.compile(r"nccl|all-?reduce|all-?gather|reduce-?scatter|all-?to-?all|collective", re.I)),
    ("copy", re.compile(r"memcpy|memset|^copy|transpose", re.I)),
)
HOST_ONLY = ("Thunk", "$", "Pjit", "SlinkyThreadPool")  # host bookkeeping spans on the CPU backend, not ops
# XLA:CPU control flow: a `while` (or conditional, call) event spans the ops of its body, traced on their own
CONTAINERS = re.compile(r"^(while|conditional|call)(\.\d+)?$")


def op_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The events that are ops: kernels of the device processes when the trace has any, else the
    CPU backend's XLA thunks (events with an `hlo_op`)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    names = {
        e["pid"]: e.get("args", {}).get("name", "")
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    devices = {pid for pid, name in names.items() if name.startswith("/device:")}
    on_device = [e for e in events if e.get("pid") in devices]
    if on_device:
        return on_device
    return [
        e
        for e in events
        if "hlo_op" in e.get("args", {})
        and not e["name"].startswith(HOST_ONLY)
        and not CONTAINERS.match(e["args"]["hlo_op"])
    ]


def busy_us(events: Iterable[dict[str, Any]]) -> float:
    """Length of the union of the events' [ts, ts + dur) intervals, in the trace's microseconds."""
    total, end = 0.0, None
    for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def op_key(event: dict[str, Any]) -> str:
    """`module/op` (op names repeat across a trace's jitted programs), or the kernel's own name."""
    args = event.get("args", {})
    if "hlo_op" not in args:
        return event["name"]
    return f"{args['hlo_module']}/{args['hlo_op']}" if "hlo_module" in args else args["hlo_op"]


def op_class(name: str) -> str:
    return next((label for label, pattern in CLASSES if pattern.search(name)), "other")


def summarize(trace: dict[str, Any], wall_s: float, calls: int, top: int = 12) -> dict[str, Any]:
    """Busy fraction, op time by class and the `top` ops by summed time (all per call)."""
    events = op_events(trace)
    if not events:
        raise ValueError("the trace holds no op events (no device process, no XLA thunk with an hlo_op)")
    per_op: dict[str, float] = collections.Counter()
    count: dict[str, int] = collections.Counter()
    kernel_of: dict[str, str] = {}
    for e in events:
        key = op_key(e)
        per_op[key] += e["dur"]
        count[key] += 1
        kernel_of.setdefault(key, e["name"])  # a GPU kernel's own name; on the CPU it is the op's
    op_us = sum(per_op.values())
    classes: dict[str, float] = collections.Counter()
    for key, us in per_op.items():
        classes[op_class(f"{key} {kernel_of[key]}")] += us
    busy = busy_us(events)
    return dict(
        busy_pct=100 * busy / 1e6 / wall_s,
        busy_ms_per_call=busy / 1e3 / calls,
        wall_ms_per_call=1e3 * wall_s / calls,
        op_ms_per_call=op_us / 1e3 / calls,
        ops_per_call=len(events) / calls,
        classes_pct={k: 100 * v / op_us for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
        top=[
            dict(
                op=key,
                kernel=None if key.endswith(kernel_of[key]) else kernel_of[key],
                ms_per_call=us / 1e3 / calls,
                pct=100 * us / op_us,
                count_per_call=count[key] / calls,
            )
            for key, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
        ],
    )


def capture(fn: Callable[[], Any], calls: int = 1, workdir: str | Path | None = None, top: int = 12) -> dict:
    """Trace `calls` calls of `fn()` (already compiled and warm) and summarize them. The raw trace
    stays in `workdir` when one is given (open `*.trace.json.gz` in ui.perfetto.dev)."""
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir or tmp)
        jax.profiler.start_trace(str(folder), create_perfetto_trace=True)
        start = time.perf_counter()
        try:
            for _ in range(calls):
                fn()
        finally:
            wall = time.perf_counter() - start
            jax.profiler.stop_trace()
        found = sorted(folder.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"jax.profiler wrote no *.trace.json.gz under {folder}")
        with gzip.open(found[-1]) as f:
            trace = json.load(f)
    return summarize(trace, wall, calls, top)


def main() -> None:
    import jax
    import jax.numpy as jnp

    x = jnp.ones((256, 512))
    w1, w2 = jnp.ones((512, 1024)) / 512, jnp.ones((1024, 512)) / 1024
    mlp = jax.jit(lambda x: jax.nn.silu(x @ w1) @ w2)
    jax.block_until_ready(mlp(x))
    print(json.dumps(capture(lambda: jax.block_until_ready(mlp(x)), calls=5), indent=1))


if __name__ == "__main__":
    main()
