"""Helpers for the CPU benchmarks: timing, physical anchors, a neighbour-load meter, a random HF model.

Every speed a benchmark prints is read against a limit measured in the same process on the same
machine (memory read bandwidth, f32 matmul throughput), so those probes live next to the timer.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# This checkout's rlvr_jax before any installed one (an editable install may point at another worktree):
# every benchmark imports this module before rlvr_jax, so the repository root goes first here, once.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """(median, all) wall times of `fn()`; `fn` must block until its result is ready."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


class ForeignLoad:
    """CPU time other processes used while the block ran (`cpu_s`; `cores` = cpu_s / wall_s), Linux only.

    On a shared 2-core box one neighbour halves our cores and stalls the OpenMP/Eigen barriers of
    both torch and XLA, so each result carries this number; well above 0 means inflated timings.
    """

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:8]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait

    def __enter__(self) -> ForeignLoad:
        self._start = (self._busy_s(), sum(os.times()[:2]), time.perf_counter())
        return self

    def __exit__(self, *exc: Any) -> None:
        busy, own, wall = self._start
        self.wall_s = time.perf_counter() - wall
        self.cpu_s = max(0.0, (self._busy_s() - busy) - (sum(os.times()[:2]) - own))  # others' CPU-seconds
        self.cores = self.cpu_s / self.wall_s


def memory_read_bandwidth(gbytes: float, repeats: int = 5) -> dict[str, float]:
    """Read GB/s (1e9 B/s) of summing an f32 array far larger than the caches.

    numpy's sum is single-threaded and near compute bound per core, so it also runs split over all
    cores (it drops the GIL); jax's is XLA:CPU's own loop. Anchors are best-of-repeats: the limit
    is a capability, and the fastest repeat is the one least disturbed by neighbours.
    """
    import jax
    import jax.numpy as jnp

    host = np.ones(int(gbytes * 1e9) // 4, np.float32)
    host.sum()  # fault the pages in before timing
    cores = os.cpu_count() or 1
    chunks = np.array_split(host, cores)
    nbytes = host.nbytes

    def best(fn):
        return nbytes / min(timed(fn, repeats)[1]) / 1e9

    with ThreadPoolExecutor(cores) as pool:
        out = {"numpy_1thread": best(host.sum), f"numpy_{cores}threads": best(lambda: sum(pool.map(np.sum, chunks)))}
    dev = jnp.asarray(host)
    reduce = jax.jit(jnp.sum)
    reduce(dev).block_until_ready()  # compile
    out["jax_sum"] = best(lambda: reduce(dev).block_until_ready())
    # dev, host and chunks are freed on return
    out["anchor"] = max(out.values())
    return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best f32 GFLOP/s of a square jax matmul: the anchor once decode turns compute bound."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, a).block_until_ready()
    return 2 * n**3 / min(timed(lambda: mm(a, a).block_until_ready(), repeats)[1]) / 1e9


def make_random_qwen2(folder: Path, seed: int = 0, **config: Any) -> Path:
    """Save a randomly initialised Qwen2ForCausalLM (f32, default HF init) as an HF folder."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**config)).to(torch.float32).eval()
    model.save_pretrained(str(folder))
    return folder
