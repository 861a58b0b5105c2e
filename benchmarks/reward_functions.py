"""Per-sample overhead of reward functions in the pool: a trivial TRL function against the built-in
toy_strategy verifier (both near-free, so the time is the pool's: pickling samples, pipes, deadlines,
building the keyword lists), and against calling the function directly in this process.

    python benchmarks/reward_functions.py            # 2048 samples a call, 5 repeats
    python benchmarks/reward_functions.py --quick    # 512 samples, 2 repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ForeignLoad

from rlvr_jax.config import RewardConfig, RewardFunctionConfig
from rlvr_jax.rewards import RewardPool, Sample


def length_penalty(completions, **columns):
    """A trivial function: the time measured is the pool's, not the function's."""
    return [-len(c) / 1000 for c in completions]


def make_inputs(n: int) -> tuple[list[str], list[Sample]]:
    columns = {"id": "row", "answer": "4", "data_source": "toy", "level": 3}  # a typical handful of columns
    return [f"<S{1 + i % 3}> {i % 7}" for i in range(n)], [Sample("prompt text", "4", columns) for _ in range(n)]


def time_calls(score: Callable, n: int, repeats: int) -> dict:
    completions, samples = make_inputs(n)
    score(completions, samples)  # untimed: first-call effects
    times = []
    with ForeignLoad() as load:
        for _ in range(repeats):
            start = time.perf_counter()
            score(completions, samples)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(us_per_sample=1e6 * median / n, foreign_cpu_s=load.cpu_s)


def direct(completions: list[str], samples: list[Sample]) -> None:
    for c, s in zip(completions, samples):
        length_penalty([c], **{k: [v] for k, v in s.columns.items()})


SETUPS = {
    "verifier toy_strategy": dict(),
    "1 function (Python callable)": dict(functions=[length_penalty]),
    "1 built-in function": dict(fns=["rlvr_jax.rewards:toy_strategy_correct"]),
    "4 functions": dict(
        fns=[f"rlvr_jax.rewards:{name}" for name in ("toy_strategy_correct", "toy_strategy_format", "exact_format")],
        functions=[length_penalty],
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, repeats = (512, 2) if args.quick else (2048, 5)
    rows = {"direct call, this process": time_calls(direct, n, repeats)}
    for workers in (1, 2):
        for name, setup in SETUPS.items():
            fns = [RewardFunctionConfig(fn=fn) for fn in setup.get("fns", [])]
            cfg = RewardConfig(workers=workers, functions=fns)
            with RewardPool(cfg, functions=setup.get("functions", ())) as pool:
                rows[f"{name}, {workers} worker{'s' * (workers > 1)}"] = time_calls(pool.score, n, repeats)
    print(f"trivial rewards: {n} samples a call, median of {repeats}")
    print(f"{'setup':<42} {'us/sample':>10} {'foreign CPU s':>14}")
    for name, row in rows.items():
        print(f"{name:<42} {row['us_per_sample']:>10.1f} {row['foreign_cpu_s']:>14.1f}")


if __name__ == "__main__":
    main()
