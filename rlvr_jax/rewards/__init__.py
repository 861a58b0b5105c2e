"""Rewards: answer verifiers run in killable worker processes with a per-sample time limit.

`RewardPool(cfg.reward).score(completions, golds, verifier)` -> RewardResult (rewards f32[N],
correct bool[N], timeouts, errors). Verifiers: math (math-verify), numeric, exact, toy_strategy.
"""

from rlvr_jax.rewards.pool import RewardPool, RewardResult
from rlvr_jax.rewards.verifiers import VERIFIERS, last_boxed, last_number, toy_strategy_of

__all__ = ["VERIFIERS", "RewardPool", "RewardResult", "last_boxed", "last_number", "toy_strategy_of"]
