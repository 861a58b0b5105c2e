"""pass@k against brute-force enumeration and closed forms; boundary sets on hand-made results."""

import itertools
from math import comb

import numpy as np
import pytest

from rlvr_jax.boundary import above_one_over_k, boundary_sets, k_values, pass_at_k, pass_at_k_table, summarize


def brute_force(n, c, k):
    """Fraction of all k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_matches_enumeration_for_small_n(n):
    table = pass_at_k_table(n, np.arange(n + 1))
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert table[c, k - 1] == pytest.approx(brute_force(n, c, k), abs=1e-12)


def test_closed_forms():
    n = 1024
    c = np.array([0, 1, 7, 512, 1023, 1024])
    table = pass_at_k_table(n, c)
    np.testing.assert_allclose(table[:, 0], c / n, atol=1e-12)  # pass@1 = c / n
    np.testing.assert_allclose(table[:, 1], 1 - (n - c) * (n - c - 1) / (n * (n - 1)), atol=1e-12)
    assert np.all(table[0] == 0.0) and np.all(table[-1] == 1.0)
    np.testing.assert_allclose(table[1], np.arange(1, n + 1) / n, atol=1e-12)  # c = 1: k / n
    # the binomial form where Python's exact integers can still take it
    for cc, k in [(7, 100), (512, 3), (1023, 2)]:
        assert table[list(c).index(cc), k - 1] == pytest.approx(1 - comb(n - cc, k) / comb(n, k), rel=1e-12)


def test_finite_and_monotone_in_k_at_n_1024():
    rng = np.random.default_rng(0)
    table = pass_at_k_table(1024, rng.integers(0, 1025, size=300))
    assert np.all(np.isfinite(table)) and np.all((table >= 0) & (table <= 1))
    assert np.all(np.diff(table, axis=1) >= -1e-15)


def test_k_values_and_means():
    assert k_values(1) == [1] and k_values(8) == [1, 2, 4, 8] and k_values(12) == [1, 2, 4, 8, 12]
    assert pass_at_k(4, [0, 4, 2], ks=[1, 4]) == {1: pytest.approx(0.5), 4: pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="k must lie"):
        pass_at_k(4, [1], ks=[5])
    with pytest.raises(ValueError, match=r"correct counts must lie in \[0, 4\]"):
        pass_at_k(4, [5])


def test_summary_per_subset():
    problems = [
        {"id": "a", "subset": "hard", "c": 0},
        {"id": "b", "subset": "hard", "c": 2},
        {"id": "c", "subset": "", "c": 4},
        {"id": "d", "subset": "", "c": 1},
    ]
    out = summarize(problems, 4)
    assert out["problems"] == 4 and list(out["pass_at_k"]) == ["1", "2", "4"]
    assert out["pass_at_k"]["1"] == pytest.approx((0 + 2 + 4 + 1) / 16)
    # 1/k diagnostic: c/n > 1/k, i.e. c > 2 for k = 2 and c > 1 for k = 4 (k = 1 would need c > n)
    assert out["above_1_over_k"] == {"2": 0.25, "4": 0.5} and "entropy" not in out
    assert out["subsets"] == {
        "hard": {
            "problems": 2,
            "pass_at_k": {"1": 0.25, "2": pytest.approx((0 + 5 / 6) / 2), "4": 0.5},
            "above_1_over_k": {"2": 0.0, "4": 0.5},
        }
    }


def test_above_one_over_k_by_hand_and_its_pass_at_k_bound():
    # n = 8: c/8 > 1/k <=> c * k > 8. c = 1: no k (1/8 > 1/8 fails); c = 2: k = 8; c = 4: k = 4, 8
    # (4/8 > 1/2 fails); c = 5: k = 2, 4, 8.
    assert above_one_over_k(8, [1, 2, 4, 5]) == {2: 0.25, 4: 0.5, 8: 0.75}
    assert above_one_over_k(12, [0, 12], ks=[1, 3, 12]) == {3: 0.5, 12: 0.5}  # k = 1 is never reported
    # p = c/n > 1/k implies the unbiased pass@k estimate exceeds 1 - (1 - 1/k)^k (>= 1 - 1/e = 0.632).
    n = 64
    table = pass_at_k_table(n, np.arange(n + 1))
    for k in k_values(n)[1:]:
        above = np.arange(n + 1) * k > n
        assert np.all(table[above, k - 1] > 1 - (1 - 1 / k) ** k) and 1 - (1 - 1 / k) ** k > 1 - np.exp(-1)
    # ... and not conversely: one success in 64 gives pass@32 = 0.5 while 1/64 < 1/32
    assert table[1, 31] == pytest.approx(0.5) and above_one_over_k(n, [1], ks=[32]) == {32: 0.0}


def test_summary_entropy_is_token_weighted_over_problems_and_subsets():
    problems = [
        {"id": "a", "subset": "hard", "c": 0, "entropy": 0.5, "tokens": 10},
        {"id": "b", "subset": "hard", "c": 1, "entropy": 2.0, "tokens": 30},
        {"id": "c", "subset": "easy", "c": 2, "entropy": 1.0, "tokens": 20},
    ]
    out = summarize(problems, 2)
    assert out["entropy"] == pytest.approx((0.5 * 10 + 2.0 * 30 + 1.0 * 20) / 60)
    assert out["subsets"]["hard"]["entropy"] == pytest.approx((5 + 60) / 40)
    assert out["subsets"]["easy"]["entropy"] == pytest.approx(1.0)


def test_boundary_sets():
    ref = [{"id": "p1", "c": 0}, {"id": "p2", "c": 3}, {"id": "p3", "c": 1}, {"id": "p4", "c": 0}]
    cur = [{"id": "p1", "c": 2}, {"id": "p2", "c": 4}, {"id": "p3", "c": 0}, {"id": "p4", "c": 0}]
    out = boundary_sets(cur, ref, 4, 4)
    assert out["solved"] == {"current": 2, "reference": 2, "total": 4}
    assert out["gained"] == ["p1"] and out["lost"] == ["p3"] and out["kept"] == ["p2"] and out["never"] == 1
    assert out["pass_at_k_delta"]["1"] == pytest.approx((2 + 4 + 0) / 16 - (0 + 3 + 1) / 16)
    assert out["pass_at_k_delta"]["4"] == pytest.approx(0.0)  # two solved-at-all each
    with pytest.raises(ValueError, match="different problems: 1 only in this one"):
        boundary_sets(cur + [{"id": "p5", "c": 1}], ref, 4, 4)
