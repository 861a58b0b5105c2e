"""Advantages from group rewards: baseline x sign filter (docs/algorithms.md section 2).

Every function here is pure jnp over `rewards: f32[B, G]` (B prompts, G rollouts each) and jit-safe.
The config is static: jit `advantages` with the config closed over (`functools.partial`) or marked
static (`AdvantageConfig` is frozen and hashable), never traced.

Non-finite rewards are a bug upstream (a verifier or a format reward), never a signal. They cannot
raise inside jit, so the contract is two-sided: callers run `check_rewards` on the host before the
jitted step (a clear error naming the first bad cell), and `advantages` itself turns every group
holding a NaN or inf into NaN advantages, so a caller that skips the check gets a NaN loss that the
writers' NaN guard reports, not silently zeroed rollouts.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.config import GROUP_RELATIVE as GROUP_RELATIVE
from rlvr_jax.config import AdvantageConfig, Estimator, LossDenominator, SignFilter, StdMode

Array = jax.Array

# GROUP_RELATIVE (defined with the config, which refuses G = 1 for them at load): estimators that compare
# a rollout with its group. With G = 1 there is nothing to compare with (GRPO and Dr.GRPO give 0 for every
# rollout, RLOO divides by G - 1 = 0). The absolute estimators (NSR, PSR, W-REINFORCE) score each rollout
# on its own: G = 1 is fine.


# --- host-side check ------------------------------------------------------------------------------


def check_rewards(rewards: np.ndarray | Array) -> None:
    """Raise ValueError unless `rewards` is a finite f32[B, G] array; run on the host before jit."""
    r = np.asarray(rewards)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [B, G] (prompts x group_size), got shape {r.shape}")
    bad = np.argwhere(~np.isfinite(r))
    if bad.size:
        row, col = (int(i) for i in bad[0])
        raise ValueError(
            f"reward at row {row}, col {col} (prompt {row}, rollout {col}) is {r[row, col]}; "
            f"{len(bad)} non-finite reward(s) in total: fix the verifier or reward function"
        )


# --- baseline (group-relative) estimators ---------------------------------------------------------


def _all_equal(rewards: Array) -> Array:
    """bool[B, 1]: every reward of the group is the same finite value.

    Tested explicitly because r - mean(r) is not always exactly 0 in f32 (mean of three 0.1 is not
    0.1), and GRPO would blow that rounding up by 1/eps. An all-inf group is not "equal": it must
    come out NaN like any other non-finite group.
    """
    hi = jnp.max(rewards, axis=-1, keepdims=True)
    lo = jnp.min(rewards, axis=-1, keepdims=True)
    return (hi == lo) & jnp.isfinite(hi)


def grpo(rewards: Array, std: StdMode = StdMode.population, eps: float = 1e-6) -> Array:
    """GRPO: A_i = (r_i - mean(r)) / (std(r) + eps); all-equal groups get exactly 0.

    std is the population std (divide by G) or the unbiased one (divide by G - 1).
    """
    ddof = 1 if std == StdMode.unbiased else 0
    centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    adv = centred / (jnp.std(rewards, axis=-1, keepdims=True, ddof=ddof) + eps)
    return jnp.where(_all_equal(rewards), 0.0, adv)


def drgrpo(rewards: Array) -> Array:
    """Dr.GRPO: A_i = r_i - mean(r) (no std division); all-equal groups get exactly 0."""
    adv = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    return jnp.where(_all_equal(rewards), 0.0, adv)


def rloo(rewards: Array) -> Array:
    """RLOO: A_i = r_i - mean_{j != i} r_j = r_i - (sum(r) - r_i) / (G - 1); all-equal groups get 0."""
    g = rewards.shape[-1]
    others = (jnp.sum(rewards, axis=-1, keepdims=True) - rewards) / (g - 1)
    return jnp.where(_all_equal(rewards), 0.0, rewards - others)


# --- absolute estimators (no baseline; Zhu et al.) ------------------------------------------------


def is_correct(rewards: Array, threshold: float) -> Array:
    """bool[B, G]: r_i >= threshold (NaN counts as incorrect; `advantages` turns it into NaN)."""
    return rewards >= threshold


def _correct(rewards: Array, threshold: float, correct: Array | None) -> Array:
    """Given correctness flags (reward.correct_from names a function), else reward >= threshold."""
    return is_correct(rewards, threshold) if correct is None else jnp.asarray(correct, bool)


def nsr(rewards: Array, threshold: float = 1.0, correct: Array | None = None) -> Array:
    """Negative sample reinforcement: A_i = -1 if incorrect else 0 (all-wrong groups still get -1)."""
    return jnp.where(_correct(rewards, threshold, correct), 0.0, -1.0).astype(rewards.dtype)


def psr(rewards: Array, threshold: float = 1.0, correct: Array | None = None) -> Array:
    """Positive sample reinforcement: A_i = +1 if correct else 0."""
    return jnp.where(_correct(rewards, threshold, correct), 1.0, 0.0).astype(rewards.dtype)


def w_reinforce(rewards: Array, threshold: float = 1.0, w_lambda: float = 0.1, correct: Array | None = None) -> Array:
    """Weighted REINFORCE: A_i = +lambda if correct else -1."""
    return jnp.where(_correct(rewards, threshold, correct), w_lambda, -1.0).astype(rewards.dtype)


# --- sign filter and loss weights -----------------------------------------------------------------

# (rewards, cfg, correctness flags or None) -> advantages; the baselines ignore correctness.
_ESTIMATORS: dict[Estimator, Callable[[Array, AdvantageConfig, Array | None], Array]] = {
    Estimator.grpo: lambda r, cfg, c: grpo(r, cfg.std, cfg.eps),
    Estimator.drgrpo: lambda r, cfg, c: drgrpo(r),
    Estimator.rloo: lambda r, cfg, c: rloo(r),
    Estimator.nsr: lambda r, cfg, c: nsr(r, cfg.correct_threshold, c),
    Estimator.psr: lambda r, cfg, c: psr(r, cfg.correct_threshold, c),
    Estimator.w_reinforce: lambda r, cfg, c: w_reinforce(r, cfg.correct_threshold, cfg.w_lambda, c),
}

# full: A; negative_only: min(A, 0) (GRPO-N, "relative negative gradients"); positive_only: max(A, 0).
_SIGN_FILTERS: dict[SignFilter, Callable[[Array], Array]] = {
    SignFilter.full: lambda a: a,
    SignFilter.negative_only: lambda a: jnp.minimum(a, 0.0),
    SignFilter.positive_only: lambda a: jnp.maximum(a, 0.0),
}


def nonzero_weight(adv: Array) -> Array:
    """f32[B, G]: w_i = 1[A_i != 0], A_i the advantage AFTER the sign filter (loss_denominator=nonzero).

    Under GRPO-N the loss then divides by the tokens of the rollouts with a negative advantage only,
    instead of by every token of the batch; zero-advantage rollouts (positives clipped away, all-equal
    groups) leave the normaliser. A NaN advantage (non-finite rewards) keeps weight 1, so the NaN
    still reaches the loss.
    """
    return (adv != 0.0).astype(adv.dtype)


def loss_weight(rewards: Array, cfg: AdvantageConfig, correct: Array | None = None, adv: Array | None = None) -> Array:
    """f32[B, G]: 1 on the rollouts that count in the loss normaliser, else 0.

    NSR and PSR train on a subset of the batch (the paper drops the other rollouts), so with
    `loss_denominator=kept` their token mean divides by the kept rollouts only: NSR keeps the
    incorrect ones, PSR the correct ones. Every other estimator, and `loss_denominator=all`, keeps
    every rollout (a sign filter zeroes advantages but does not shrink the denominator).
    `loss_denominator=nonzero` keeps the rollouts whose filtered advantage `adv` is non-zero
    (`nonzero_weight`), which is how a sign filter shrinks the denominator.
    """
    ones = jnp.ones_like(rewards)
    if cfg.loss_denominator == LossDenominator.nonzero:
        if adv is None:
            raise ValueError("loss_denominator=nonzero needs the filtered advantages (adv=...)")
        return nonzero_weight(adv)
    if cfg.loss_denominator == LossDenominator.all:
        return ones
    correct = _correct(rewards, cfg.correct_threshold, correct)
    if cfg.estimator == Estimator.nsr:
        return jnp.where(correct, 0.0, 1.0).astype(rewards.dtype)
    if cfg.estimator == Estimator.psr:
        return correct.astype(rewards.dtype)
    return ones


def _check_shape(rewards: Array, cfg: AdvantageConfig) -> None:
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [B, G] (prompts x group_size), got shape {rewards.shape}")
    if rewards.shape[-1] < 2 and cfg.estimator in GROUP_RELATIVE:
        raise ValueError(
            f"estimator {cfg.estimator.value!r} compares rollouts within a group and needs "
            f"group_size >= 2, got group_size {rewards.shape[-1]}; use more samples per "
            f"prompt or an absolute estimator (nsr, psr, w_reinforce)"
        )


def advantages(rewards: Array, cfg: AdvantageConfig, correct: Array | None = None) -> tuple[Array, Array]:
    """(adv f32[B, G], weight f32[B, G]) for rewards f32[B, G]; `correct` bool[B, G], when given,
    decides correctness for NSR / PSR / W-REINFORCE instead of reward >= correct_threshold.

    adv = sign_filter(estimator(r)): the estimator sees the FULL group, then the filter clips, so
    under GRPO-N a wrong rollout keeps the -sqrt(p / (1 - p)) it has in its full binary group.
    A group with any NaN/inf reward gets NaN advantages (see the module docstring).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    _check_shape(rewards, cfg)
    adv = _SIGN_FILTERS[cfg.sign](_ESTIMATORS[cfg.estimator](rewards, cfg, correct))
    finite = jnp.all(jnp.isfinite(rewards), axis=-1, keepdims=True)
    adv = jnp.where(finite, adv, jnp.nan)
    return adv, loss_weight(rewards, cfg, correct, adv)


def group_stats(rewards: Array, threshold: float = 1.0, correct: Array | None = None) -> dict[str, Array]:
    """Batch ratios as f32 scalars on device: correct rollouts / B*G, all-correct groups / B,
    all-wrong groups / B (correct means r >= threshold, unless flags are given)."""
    correct = _correct(rewards, threshold, correct)
    return {
        "correct_ratio": jnp.mean(correct.astype(jnp.float32)),
        "all_correct_ratio": jnp.mean(jnp.all(correct, axis=-1).astype(jnp.float32)),
        "all_wrong_ratio": jnp.mean(jnp.all(~correct, axis=-1).astype(jnp.float32)),
    }
