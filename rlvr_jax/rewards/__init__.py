"""Rewards: built-in verifiers or user reward functions, run in killable worker processes with a
per-sample time limit.

`RewardPool(cfg.reward, functions, correct_threshold).score(completions, samples)` -> RewardResult
(rewards f32[N], correct bool[N], per_function, timeouts, errors). Verifiers: math (math-verify),
numeric, exact, toy_strategy. Reward functions (TRL or verl signatures): rlvr_jax/rewards/functions.py;
the built-ins in that form are rlvr_jax.rewards:math_correct, ... (rlvr_jax/rewards/builtins.py).
"""

from rlvr_jax.rewards.batch import RewardFunctionError, RewardResult, function_metrics
from rlvr_jax.rewards.builtins import (
    exact_correct,
    exact_format,
    math_correct,
    math_format,
    numeric_correct,
    numeric_format,
    toy_strategy_correct,
    toy_strategy_format,
)
from rlvr_jax.rewards.functions import RewardFunction, RewardSpecError, check_columns, load_reward_functions
from rlvr_jax.rewards.pool import RewardPool, check_verifier
from rlvr_jax.rewards.sample import Sample
from rlvr_jax.rewards.verifiers import VERIFIERS, last_boxed, last_number, toy_strategy_of

__all__ = [
    "VERIFIERS",
    "RewardFunction",
    "RewardFunctionError",
    "RewardPool",
    "RewardResult",
    "RewardSpecError",
    "Sample",
    "check_columns",
    "check_verifier",
    "exact_correct",
    "exact_format",
    "function_metrics",
    "last_boxed",
    "last_number",
    "load_reward_functions",
    "math_correct",
    "math_format",
    "numeric_correct",
    "numeric_format",
    "toy_strategy_correct",
    "toy_strategy_format",
    "toy_strategy_of",
]
