"""The one table of RNG purposes: a run's seed is split by purpose, then folded with the step.

    init     initial parameters of a random model (and of the toy warm start)
    rollout  sampling during training: fold_in(rollout key, step), then per sequence (rollout.py)
    train    reserved for randomness inside the update (none today)
    eval     pass@k sampling: fold_in(eval key, pass), then per problem and sample (evaluate.py)

A step's randomness is a pure function of (seed, purpose, step), so a resumed run draws exactly the
numbers an uninterrupted one would.
"""

from __future__ import annotations

import jax

PURPOSES = {"init": 0, "rollout": 1, "train": 2, "eval": 3}


def purpose_key(seed: int, purpose: str) -> jax.Array:
    """The key of `purpose` (one of PURPOSES) for run seed `seed`."""
    return jax.random.fold_in(jax.random.key(seed), PURPOSES[purpose])
