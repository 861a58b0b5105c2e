"""Token sampling alone: `jax.random.categorical` (a Gumbel per vocabulary entry) against the inverse-CDF
draw `sample_tokens` uses (one uniform per row), at the decode shapes of `decode_speed.py`.

Interleaved A/B in one process (A, B, A, B, ...), median of repeats, each jitted and warmed first, with
the CPU time other processes took meanwhile: `python benchmarks/sampler_speed.py [--vocab 32768]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ForeignLoad

from rlvr_jax.rollout import inverse_cdf_draw


def _categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    fns = {"categorical": jax.jit(_categorical), "inverse_cdf": jax.jit(inverse_cdf_draw)}
    for batch in (int(b) for b in args.batches.split(",")):
        logits = jax.random.normal(jax.random.key(0), (batch, args.vocab)) * 3.0
        keys = jax.random.split(jax.random.key(1), batch)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():
            fn(keys, logits).block_until_ready()
        with ForeignLoad() as load:
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(keys, logits).block_until_ready()
                    times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        row = {"batch": batch, "vocab": args.vocab, **{f"{k}_ms": round(v * 1e3, 3) for k, v in med.items()}}
        row["speedup"] = round(med["categorical"] / med["inverse_cdf"], 2)
        row["other_processes_cores"] = round(load.cores, 2)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
