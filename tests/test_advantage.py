"""Advantages (docs/algorithms.md section 2) against hand-computed tables.

Expected numbers are written out literally; the comment above each table shows the arithmetic.
eps = 0 where a table checks the bare formula (eps only shifts the 6th digit).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.advantage import GROUP_RELATIVE, advantages, check_rewards, group_stats
from rlvr_jax.config import AdvantageConfig, Estimator, SignFilter

SQRT3 = 1.7320508  # sqrt(3)
INV_SQRT3 = 0.5773503  # sqrt(1/3)

# Binary groups with p = fraction correct. Population std of a 0/1 group is sqrt(p(1-p)), so
# a correct rollout gets (1-p)/sqrt(p(1-p)) = sqrt((1-p)/p) and a wrong one -sqrt(p/(1-p)).
BINARY = [
    [1.0, 0.0, 0.0, 0.0],  # p = 1/4: correct +sqrt(3), wrong -sqrt(1/3)
    [1.0, 1.0, 1.0, 0.0],  # p = 3/4: correct +sqrt(1/3), wrong -sqrt(3)
    [1.0, 1.0, 0.0, 0.0],  # p = 1/2: +-1
    [0.0, 0.0, 0.0, 0.0],  # all wrong: every baseline is 0
]
# Graded group: mean 2.0/4 = 0.5, deviations (0.3, 0.5, -0.5, -0.3).
GRADED = [[0.8, 1.0, 0.0, 0.2]]


def _adv(rewards, **kw):
    adv, weight = advantages(jnp.asarray(rewards, jnp.float32), AdvantageConfig(**kw))
    return np.asarray(adv), np.asarray(weight)


def _close(actual, expected):
    np.testing.assert_allclose(actual, np.asarray(expected, np.float32), rtol=1e-6, atol=1e-6)


def test_grpo_binary_population_std():
    adv, weight = _adv(BINARY, eps=0.0)
    _close(
        adv,
        [
            [SQRT3, -INV_SQRT3, -INV_SQRT3, -INV_SQRT3],
            [INV_SQRT3, INV_SQRT3, INV_SQRT3, -SQRT3],
            [1.0, 1.0, -1.0, -1.0],
            [0.0, 0.0, 0.0, 0.0],
        ],
    )
    np.testing.assert_array_equal(weight, np.ones((4, 4), np.float32))


def test_grpo_negative_only_penalises_wrong_by_sqrt_p_over_1_minus_p():
    # GRPO-N: the advantage is computed on the full group, then clipped at 0. A wrong rollout keeps
    # -sqrt(p/(1-p)); the all-wrong group gives no signal at all (unlike NSR below).
    adv, _ = _adv(BINARY, eps=0.0, sign=SignFilter.negative_only)
    _close(
        adv,
        [
            [0.0, -INV_SQRT3, -INV_SQRT3, -INV_SQRT3],
            [0.0, 0.0, 0.0, -SQRT3],
            [0.0, 0.0, -1.0, -1.0],
            [0.0, 0.0, 0.0, 0.0],
        ],
    )


def test_grpo_positive_only_and_full_sign_filters():
    adv, _ = _adv(BINARY[:1], eps=0.0, sign=SignFilter.positive_only)
    _close(adv, [[SQRT3, 0.0, 0.0, 0.0]])
    adv, _ = _adv(BINARY[:1], eps=0.0, sign=SignFilter.full)
    _close(adv, [[SQRT3, -INV_SQRT3, -INV_SQRT3, -INV_SQRT3]])


def test_grpo_unbiased_std():
    # [1,0,0,0]: squared deviations 0.5625 + 3 * 0.0625 = 0.75; / (G-1) = 0.25 -> std 0.5.
    # A = (0.75, -0.25, -0.25, -0.25) / 0.5.
    adv, _ = _adv(BINARY[:1], eps=0.0, std="unbiased")
    _close(adv, [[1.5, -0.5, -0.5, -0.5]])
    # Graded: squared deviations 0.09 + 0.25 + 0.25 + 0.09 = 0.68; / 3 -> std sqrt(0.226667) = 0.4760952.
    # 0.3 / 0.4760952 = 0.6301260, 0.5 / 0.4760952 = 1.0502100.
    adv, _ = _adv(GRADED, eps=0.0, std="unbiased")
    _close(adv, [[0.6301260, 1.0502100, -1.0502100, -0.6301260]])


def test_unbiased_std_is_torch_std_default_as_in_verl():
    # verl's GRPO (and Zhu et al.'s NSR code built on it) divides by torch.std(scores) + eps, and
    # torch.std's default is the Bessel-corrected (G - 1) std: std=unbiased must be exactly that.
    torch = pytest.importorskip("torch")
    rewards = np.random.default_rng(0).choice([0.0, 0.2, 0.8, 1.0], size=(6, 5)).astype(np.float32)
    rewards[0] = 0.8  # an all-equal group: both give 0 (verl: 0 / (0 + eps))
    r = torch.tensor(rewards)
    expected = (r - r.mean(dim=-1, keepdim=True)) / (r.std(dim=-1, keepdim=True) + 1e-6)
    adv, _ = _adv(rewards, std="unbiased")
    np.testing.assert_allclose(adv, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_grpo_graded_rewards():
    # Population: 0.68 / 4 = 0.17 -> std 0.4123106; 0.3 / 0.4123106 = 0.7276069, 0.5 / 0.4123106 = 1.2126781.
    adv, _ = _adv(GRADED, eps=0.0)
    _close(adv, [[0.7276069, 1.2126781, -1.2126781, -0.7276069]])


def test_grpo_eps_enters_the_denominator():
    # [1,1,0,0]: deviations +-0.5, std 0.5; with eps 0.5 the denominator is 1.0.
    adv, _ = _adv([[1.0, 1.0, 0.0, 0.0]], eps=0.5)
    _close(adv, [[0.5, 0.5, -0.5, -0.5]])


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
@pytest.mark.parametrize("value", [0.0, 0.1, 0.7, 1.0])
def test_all_equal_groups_get_exactly_zero(estimator, value):
    # In f32 mean(0.1, 0.1, 0.1) != 0.1, so r - mean is ~7e-9, which GRPO would divide by eps.
    adv, _ = _adv([[value] * 3], estimator=estimator)
    np.testing.assert_array_equal(adv, np.zeros((1, 3), np.float32))
    adv, _ = _adv([[value] * 8], estimator=estimator, std="unbiased")
    np.testing.assert_array_equal(adv, np.zeros((1, 8), np.float32))


def test_drgrpo_table():
    # r - mean: binary p = 1/4 -> (0.75, -0.25, ...); graded -> the deviations themselves.
    adv, _ = _adv(BINARY[:1] + [[0.0, 0.0, 0.0, 0.0]], estimator="drgrpo")
    _close(adv, [[0.75, -0.25, -0.25, -0.25], [0.0, 0.0, 0.0, 0.0]])
    adv, _ = _adv(GRADED, estimator="drgrpo")
    _close(adv, [[0.3, 0.5, -0.5, -0.3]])


def test_rloo_table():
    # r_i - (sum - r_i) / (G - 1). Binary [1,0,0,0]: 1 - 0/3 = 1; 0 - 1/3 = -1/3.
    # Graded (sum 2.0): 0.8 - 1.2/3 = 0.4; 1.0 - 1.0/3 = 2/3; 0 - 2.0/3 = -2/3; 0.2 - 1.8/3 = -0.4.
    adv, _ = _adv(BINARY[:1], estimator="rloo")
    _close(adv, [[1.0, -1 / 3, -1 / 3, -1 / 3]])
    adv, _ = _adv(GRADED, estimator="rloo")
    _close(adv, [[0.4, 0.6666667, -0.6666667, -0.4]])
    adv, _ = _adv(GRADED, estimator="rloo", sign="negative_only")
    _close(adv, [[0.0, 0.0, -0.6666667, -0.4]])


def test_nsr_gives_minus_one_to_every_wrong_rollout_even_in_all_wrong_groups():
    # threshold 1.0: 0.8 and 0.2 are wrong. All-wrong group: -1 each (GRPO-N gives 0 there).
    adv, weight = _adv(BINARY[:1] + BINARY[3:] + GRADED, estimator="nsr")
    _close(adv, [[0.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0], [-1.0, 0.0, -1.0, -1.0]])
    # kept: NSR drops the correct rollouts from the normaliser.
    np.testing.assert_array_equal(weight, [[0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]])
    _, weight = _adv(GRADED, estimator="nsr", loss_denominator="all")
    np.testing.assert_array_equal(weight, [[1, 1, 1, 1]])


def test_psr_table_and_weight():
    adv, weight = _adv(BINARY[:1] + GRADED + [[1.0, 1.0, 1.0, 1.0]], estimator="psr")
    _close(adv, [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(weight, [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    _, weight = _adv(GRADED, estimator="psr", loss_denominator="all")
    np.testing.assert_array_equal(weight, [[1, 1, 1, 1]])


def test_nonzero_denominator_keeps_only_rollouts_with_a_nonzero_filtered_advantage():
    # GRPO-N (eps = 0) on BINARY: the filtered advantages are the table of
    # test_grpo_negative_only_...; w_i = 1[A_i != 0] keeps exactly the wrong rollouts of mixed groups.
    adv, weight = _adv(BINARY, eps=0.0, sign=SignFilter.negative_only, loss_denominator="nonzero")
    np.testing.assert_array_equal(weight, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(weight, (adv != 0).astype(np.float32))
    # Full GRPO: only the all-equal group (A = 0 everywhere) leaves the normaliser.
    _, weight = _adv(BINARY, eps=0.0, loss_denominator="nonzero")
    np.testing.assert_array_equal(weight, [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    # GRPO-P keeps the correct rollouts of mixed groups; NSR is the same as `kept` (-1 on every wrong one).
    _, weight = _adv(BINARY, eps=0.0, sign=SignFilter.positive_only, loss_denominator="nonzero")
    np.testing.assert_array_equal(weight, [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    nsr_nonzero = _adv(BINARY + GRADED, estimator="nsr", loss_denominator="nonzero")[1]
    np.testing.assert_array_equal(nsr_nonzero, _adv(BINARY + GRADED, estimator="nsr")[1])
    # A non-finite group keeps weight 1: its NaN advantages must reach the loss.
    _, weight = _adv([[1.0, np.nan, 0.0, 0.0]], sign=SignFilter.negative_only, loss_denominator="nonzero")
    np.testing.assert_array_equal(weight, [[1, 1, 1, 1]])


def test_correct_threshold_moves_the_nsr_cut():
    # threshold 0.8: 0.8 and 1.0 are correct now.
    adv, weight = _adv(GRADED, estimator="nsr", correct_threshold=0.8)
    _close(adv, [[0.0, 0.0, -1.0, -1.0]])
    np.testing.assert_array_equal(weight, [[0, 0, 1, 1]])


@pytest.mark.parametrize(
    "w_lambda, expected",
    [
        (0.1, [[-1.0, 0.1, -1.0, -1.0]]),  # the paper's default
        (0.5, [[-1.0, 0.5, -1.0, -1.0]]),
    ],
)
def test_w_reinforce_table(w_lambda, expected):
    adv, weight = _adv(GRADED, estimator="w_reinforce", w_lambda=w_lambda)
    _close(adv, expected)
    np.testing.assert_array_equal(weight, [[1, 1, 1, 1]])  # both signs are trained on


def test_w_reinforce_sign_filters():
    adv, _ = _adv(GRADED, estimator="w_reinforce", sign="negative_only")
    _close(adv, [[-1.0, 0.0, -1.0, -1.0]])
    adv, _ = _adv(GRADED, estimator="w_reinforce", sign="positive_only")
    _close(adv, [[0.0, 0.1, 0.0, 0.0]])


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_group_size_one_is_an_error_for_group_relative_estimators(estimator):
    with pytest.raises(ValueError, match="group_size"):
        advantages(jnp.ones((4, 1)), AdvantageConfig(estimator=estimator))


def test_group_size_one_is_fine_for_absolute_estimators():
    # NSR/PSR/W-REINFORCE score each rollout alone, so G = 1 is well defined.
    rewards = jnp.asarray([[1.0], [0.0]])
    adv, weight = advantages(rewards, AdvantageConfig(estimator="nsr"))
    _close(adv, [[0.0], [-1.0]])
    np.testing.assert_array_equal(weight, [[0], [1]])


def test_rewards_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        advantages(jnp.ones(8), AdvantageConfig())
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        check_rewards(np.ones(8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_rewards_names_the_first_non_finite_cell(bad):
    rewards = np.zeros((3, 4), np.float32)
    rewards[1, 2] = bad
    rewards[2, 0] = bad
    with pytest.raises(ValueError, match=r"row 1, col 2 .*2 non-finite"):
        check_rewards(rewards)
    check_rewards(np.zeros((3, 4)))  # finite: no error


@pytest.mark.parametrize("estimator", list(Estimator))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_advantages_propagate_non_finite_rewards_as_nan(estimator, bad):
    rewards = np.asarray(BINARY[:2], np.float32)
    rewards[1, 3] = bad
    adv, weight = _adv(rewards, estimator=estimator)
    assert np.isnan(adv[1]).all(), "the poisoned group must be NaN, not silently masked"
    assert np.isfinite(adv[0]).all(), "other groups are untouched"
    assert np.isfinite(weight).all()


def test_all_inf_group_is_nan_not_all_equal():
    adv, _ = _adv([[np.inf] * 4], estimator="grpo")
    assert np.isnan(adv).all()


def test_group_stats():
    # correct (>= 1.0): 4 + 0 + 1 + 1 = 6 of 16; all-correct groups: row 0; all-wrong: row 1.
    stats = group_stats(jnp.asarray([[1.0] * 4, [0.0] * 4, BINARY[0], GRADED[0]]), 1.0)
    assert {k: float(v) for k, v in stats.items()} == {
        "correct_ratio": 0.375,
        "all_correct_ratio": 0.25,
        "all_wrong_ratio": 0.25,
    }


def _mixed_rewards(group_size):
    key = jax.random.key(group_size)
    binary = jax.random.bernoulli(key, 0.3, (16, group_size)).astype(jnp.float32)
    graded = jnp.round(jax.random.uniform(jax.random.fold_in(key, 1), (16, group_size)) * 5) / 5
    return jnp.concatenate([binary, graded, jnp.full((2, group_size), 0.1)])


@pytest.mark.parametrize("estimator, sign", list(itertools.product(Estimator, SignFilter)))
@pytest.mark.parametrize("group_size", [3, 8])
def test_jit_matches_eager(estimator, sign, group_size):
    """Absolute estimators: bitwise. Baseline estimators: bitwise zeros, values within a few ulp.

    Eager and jitted runs are different XLA programs: under jit XLA turns x / G into x * (1/G) and
    contracts the c*c + acc of the fused variance reduction into an FMA, so the last bits can differ
    (measured on CPU, jax 0.10: GRPO up to 2 ulp, RLOO 1 ulp, Dr.GRPO none). Same program, same bits
    is what reproducibility needs, and that is checked bitwise below.
    """
    rewards = _mixed_rewards(group_size)
    cfg = AdvantageConfig(estimator=estimator, sign=sign)
    eager = [np.asarray(x) for x in advantages(rewards, cfg)]
    jitted = jax.jit(functools.partial(advantages, cfg=cfg))
    jit_a, jit_b = [[np.asarray(x) for x in jitted(rewards)] for _ in range(2)]
    for e, a, b in zip(eager, jit_a, jit_b):
        np.testing.assert_array_equal(a, b)  # same program, same bits
        np.testing.assert_array_equal(e == 0, a == 0)
        if estimator in GROUP_RELATIVE:
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(a, e)


def test_config_can_be_a_static_jit_argument():
    # AdvantageConfig is frozen and hashable: static_argnums works as well as closing over it.
    rewards, cfg = _mixed_rewards(8), AdvantageConfig(sign="negative_only")
    static = jax.jit(advantages, static_argnums=1)(rewards, cfg)
    closed = jax.jit(functools.partial(advantages, cfg=cfg))(rewards)
    for a, b in zip(static, closed):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
