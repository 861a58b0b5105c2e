"""Helpers shared by the CPU benchmarks: timing, a memory-bandwidth anchor, and a random HF checkpoint.

Every speed number a benchmark prints should be read against a physical limit measured in the same
process on the same machine, so the anchor lives here next to the timer.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of `fn()` over `repeats` calls; `fn` must block until its result is ready."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


class ForeignLoad:
    """CPU seconds that other processes burned while the block ran (from /proc/stat, Linux only).

    On a 2-core box a concurrent test run halves our cores and wrecks OpenMP/XLA barriers, so every
    result carries this number; anything well above zero means the timings are contaminated.
    """

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "ForeignLoad":
        self.start = (self._busy_s(), sum(os.times()[:2]), time.perf_counter())
        return self

    def __exit__(self, *exc: Any) -> None:
        busy, own, wall = self.start
        self.wall_s = time.perf_counter() - wall
        self.cpu_s = max(0.0, (self._busy_s() - busy) - (sum(os.times()[:2]) - own))


def memory_read_bandwidth(gbytes: float, repeats: int = 5) -> dict[str, float]:
    """Read bandwidth in GB/s (1e9 bytes) of summing an f32 array far larger than the caches.

    numpy's reduction is single-threaded, so it is also run split over all cores (it drops the GIL);
    the jax reduction is what XLA:CPU achieves on the same bytes. The best of them is the anchor.
    """
    import jax
    import jax.numpy as jnp

    n = int(gbytes * 1e9) // 4
    host = np.ones(n, np.float32)
    host.sum()  # fault the pages in before timing
    cores = os.cpu_count() or 1
    chunks = np.array_split(host, cores)
    pool = ThreadPoolExecutor(cores)
    out = {
        "numpy_1thread": host.nbytes / timed(lambda: host.sum(), repeats)[0] / 1e9,
        f"numpy_{cores}threads": host.nbytes / timed(lambda: sum(pool.map(np.sum, chunks)), repeats)[0] / 1e9,
    }
    pool.shutdown()
    dev = jnp.asarray(host)
    del host, chunks
    reduce = jax.jit(jnp.sum)
    reduce(dev).block_until_ready()  # compile
    out["jax_sum"] = dev.nbytes / timed(lambda: reduce(dev).block_until_ready(), repeats)[0] / 1e9
    dev.delete()
    out["anchor"] = max(out.values())
    return out


def make_random_qwen2(folder: Path, seed: int = 0, **config: Any) -> Path:
    """Save a randomly initialised Qwen2ForCausalLM (f32, default HF init) as an HF folder."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**config)).to(torch.float32).eval()
    model.save_pretrained(str(folder))
    return folder
