"""Throughput of the reward pool on math answers: 1 vs 2 worker processes, against direct calls.

The anchor is the same verifier called in this process with no pool: "1 worker" at ~100% of it
means the pipes, chunking and deadlines cost nothing; "2 workers" can reach 2x only with two
idle cores (the ForeignLoad column says how much CPU other processes took meanwhile).

Inputs: G=8 answers per gold (integers, fractions, sets), half equivalent in another form
(`\\frac{1}{2}` vs 0.5), half wrong. Every repeat uses fresh strings, because math-verify caches
parses and a repeat of the same strings would time the cache.

    python benchmarks/reward_pool.py             # 512 answers a call, 5 repeats
    python benchmarks/reward_pool.py --quick     # 128 answers, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ForeignLoad

from rlvr_jax.config import RewardConfig
from rlvr_jax.rewards import RewardPool

GROUP = 8


def _pair(kind: int, k: int, slot: int) -> tuple[str, str]:
    """(completion, gold): even slots give the gold in another form, odd slots distinct wrong answers.

    The right answers of a group share one string, as a group that agrees would; math-verify's
    parse cache then hits, which is realistic. k keeps strings unique across groups and repeats.
    """
    a, b, w = k + 2, k + 3, k + 1 + slot  # a/b coprime, so it never simplifies to an integer
    right = slot % 2 == 0
    if kind == 0:
        return f"Adding up, the total is $\\boxed{{{k if right else w}}}$.", str(k)
    if kind == 1:
        pred = f"{a}/{b}" if right else f"\\frac{{{b}}}{{{w}}}"
        return f"So the ratio is \\boxed{{{pred}}}.", f"\\frac{{{a}}}{{{b}}}"
    pred = f"\\{{{b},{a}\\}}" if right else f"\\{{{a},{b + slot}\\}}"
    return f"The solutions form $\\boxed{{{pred}}}$", f"\\{{{a},{b}\\}}"


def make_inputs(n: int, repeat: int) -> tuple[list[str], list[str]]:
    pairs = []
    for i in range(n):
        gold_id = repeat * n + i // GROUP
        pairs.append(_pair(gold_id % 3, 10 * gold_id + 7, slot=i % GROUP))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def time_calls(fn, n: int, repeats: int) -> dict:
    """Median samples/s over `repeats` calls, each on fresh inputs (repeat index offset by 1000)."""
    times = []
    with ForeignLoad() as load:
        for r in range(repeats):
            completions, golds = make_inputs(n, 1000 + r)
            start = time.perf_counter()
            fn(completions, golds)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(samples_per_s=n / median, ms_per_sample=1e3 * median / n, foreign_cpu_s=load.cpu_s)


def direct(completions: list[str], golds: list[str]) -> None:
    from rlvr_jax.rewards import Sample
    from rlvr_jax.rewards.worker import VerifierProgram, VerifierSpec  # math-verify then loads in this process

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # as in the workers: no timeout warning

    program = VerifierProgram(VerifierSpec("math", 0.0))
    for c, g in zip(completions, golds):
        program(c, Sample("", g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="128 answers a call, 2 repeats")
    ap.add_argument("--n", type=int, default=None, help="answers per call (default 512, quick 128)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per setup (default 5, quick 2)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    n = args.n or (128 if args.quick else 512)
    repeats = args.repeats or (2 if args.quick else 5)

    rows = {}
    for workers in (1, 2):
        start = time.perf_counter()
        with RewardPool(RewardConfig(verifier="math", workers=workers)) as pool:
            startup = time.perf_counter() - start
            pool.score(*make_inputs(n, 0))  # untimed: first-call effects
            rows[f"pool, {workers} worker{'s' * (workers > 1)}"] = dict(
                time_calls(pool.score, n, repeats), startup_s=startup
            )
    direct(*make_inputs(n, 0))  # untimed: import and warm math-verify here
    rows["direct, this process"] = dict(time_calls(direct, n, repeats), startup_s=0.0)

    anchor = rows["direct, this process"]["samples_per_s"]
    print(f"math answers: {n} a call, median of {repeats}; anchor = direct calls in this process")
    print(f"{'setup':<22} {'samples/s':>10} {'ms/sample':>10} {'vs direct':>10} {'start s':>8} {'foreign CPU s':>14}")
    for name, row in rows.items():
        print(
            f"{name:<22} {row['samples_per_s']:>10.0f} {row['ms_per_sample']:>10.2f} "
            f"{row['samples_per_s'] / anchor:>9.2f}x {row['startup_s']:>8.2f} {row['foreign_cpu_s']:>14.1f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(dict(n=n, repeats=repeats, rows=rows), indent=2))


if __name__ == "__main__":
    main()
