"""Rewards: verifier tables, code-injection safety, hard timeouts, crashes, determinism, shutdown."""

import multiprocessing
import os

import numpy as np
import pytest

from rlvr_jax.config import RewardConfig
from rlvr_jax.rewards import RewardPool, last_boxed, last_number, toy_strategy_of
from rlvr_jax.rewards.verifiers import score_exact, score_numeric, score_toy_strategy

PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # sympy grinds on this until killed


@pytest.fixture(scope="module")
def pool():
    """One 2-worker pool for the module: worker start-up (fork server + math-verify) is paid once."""
    with RewardPool(RewardConfig(verifier="math", workers=2, timeout_s=1.0)) as p:
        yield p


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- safety -----------------------------------------------------------------------------------


@pytest.mark.parametrize("verifier", ["math", "numeric"])
def test_code_in_an_answer_is_never_executed(pool, tmp_path, verifier):
    marker = tmp_path / "MARKER"
    payload = f"__import__('os').system('touch {marker}')"
    completions = [payload, f"${payload}$", f"\\boxed{{{payload}}}", f"The answer is $\\boxed{{{payload}}}$"]
    # A gold no digit of the temp path can spell, so a 0 reward means "not executed, not matched".
    result = pool.score(completions, ["-987654321"] * len(completions), verifier)
    assert not marker.exists()
    assert result.rewards.tolist() == [0.0] * len(completions)


def test_pathological_answer_is_cut_at_the_timeout_and_the_pool_recovers(pool):
    before = set(pool.pids)
    result = pool.score([PATHOLOGICAL, "\\boxed{2}"], ["1", "2"])
    assert result.timeouts == 1 and result.errors == 0
    assert result.rewards.tolist() == [0.0, 1.0]
    assert 1.0 <= result.seconds < 10.0
    assert len(before - set(pool.pids)) == 1  # the stuck worker was replaced
    after = pool.score(["\\boxed{\\frac12}"], ["0.5"])
    assert after.rewards.tolist() == [1.0] and after.timeouts == 0
    want = {"reward/timeouts": 0.0, "reward/errors": 0.0, "time/reward_s": after.seconds, "reward/math/mean": 1.0}
    assert after.metrics() == want


# --- verifier tables --------------------------------------------------------------------------

MATH_CASES = [
    ("\\boxed{\\frac12}", "0.5", 1.0),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", 1.0),
    ("so the answer is $\\boxed{0.5}$", "\\boxed{1/2}", 1.0),
    ("\\boxed{x^2+1}", "1+x^2", 1.0),
    ("first \\boxed{3}, then finally \\boxed{5}", "5", 1.0),  # the last box is the answer
    ("\\boxed{3}", "4", 0.0),
    ("\\boxed{\\{1,3\\}}", "\\{1,2\\}", 0.0),
    ("\\boxed{0.5}", "\\frac{1}{3}", 0.0),
    ("I do not know", "7", 0.0),
]


def test_math_scores_equivalent_answers_one_and_wrong_ones_zero(pool):
    completions, golds, want = zip(*MATH_CASES)
    result = pool.score(completions, golds, "math")
    assert result.rewards.tolist() == list(want)
    assert result.correct.tolist() == [w == 1.0 for w in want]
    assert result.errors == result.timeouts == 0


@pytest.mark.parametrize(
    "completion, gold, want",
    [
        ("The answer is 42.", "42", 1.0),
        ("total: 1,234 apples", "1234", 1.0),
        ("1,234,567.5", "1234567.5", 1.0),
        ("it is -7", "-7", 1.0),
        ("0.5", "1/2", 1.0),
        ("-3/4", "-0.75", 1.0),
        ("\\frac{3}{4}", "0.75", 1.0),
        ("1, 2, 3", "3", 1.0),
        ("1.0000001", "1", 1.0),  # within 1e-6 relative
        ("1.00001", "1", 0.0),
        ("0.0", "0", 1.0),
        ("0.0000001", "0", 0.0),  # a zero gold needs an exact zero
        ("42 then 43", "42", 0.0),  # the last number counts
        ("x2", "2", 0.0),  # digits glued to a word are not a number
        ("1/0", "1", 0.0),
        ("9" * 5000, "1", 0.0),  # past Python's int-string limit: no number, not a crash
        ("no number here", "1", 0.0),
    ],
)
def test_numeric_table(completion, gold, want):
    assert score_numeric(completion, gold) == want


@pytest.mark.parametrize(
    "completion, gold, want",
    [
        ("  hello   world ", "hello world", 1.0),
        ("a\nb", "a b", 1.0),
        ("Hello", "hello", 0.0),
        ("", "x", 0.0),
    ],
)
def test_exact_table(completion, gold, want):
    assert score_exact(completion, gold) == want


@pytest.mark.parametrize(
    "completion, gold, want",
    [
        ("<S1> 47", "47", 1.0),
        ("<S3> 13", "47", 0.0),
        ("47", "47", 0.0),  # no strategy token
        ("<S2>", "47", 0.0),  # no number
        (" <S2> the answer is 52", "52", 1.0),
        ("<S2> 52 or 47", "47", 0.0),  # the first integer after the token counts
        ("<S2> 047", "47", 1.0),
        ("<S4> 47", "47", 0.0),
        ("I pick <S1> 47", "47", 0.0),  # the token must come first
        # Strategy-faithful gold: S2 solves everything, S1 only easy instances, S3 nothing.
        ("<S1> 47", "47|easy", 1.0),
        ("<S2> 47", "47|easy", 1.0),
        ("<S1> 47", "47|hard", 0.0),  # the right number under S1 on a hard instance does not count
        ("<S2> 47", "47|hard", 1.0),
        ("<S3> 47", "47|easy", 0.0),
        ("<S2> 13", "47|hard", 0.0),
        # Graded variant (Yao et al.'s r(a1) = 0.8 < r(a2) = 1): by strategy, on every instance.
        ("<S1> 47", "47|graded", 0.8),
        ("<S2> 47", "47|graded", 1.0),
        ("<S3> 47", "47|graded", 0.0),
        ("<S1> 46", "47|graded", 0.0),  # the wrong number earns nothing
    ],
)
def test_toy_strategy_table(completion, gold, want):
    assert score_toy_strategy(completion, gold) == want


@pytest.mark.parametrize("gold", ["47|medium", "x|hard", "47|", "47|bernoulli"])
def test_toy_strategy_rejects_bad_gold(gold):
    if gold == "47|":
        assert score_toy_strategy("<S1> 47", gold) == 1.0  # an empty subset means answer-only
        return
    with pytest.raises(ValueError, match="toy_strategy gold"):
        score_toy_strategy("<S1> 47", gold)


def test_graded_correctness_follows_the_threshold():
    # Verifier path: correct iff the verifier's own score >= advantage.correct_threshold. Default 1.0:
    # only S2 is correct on the graded variant; 0.8 also counts S1 (as NSR's cut would); format never does.
    completions, golds = ["<S1> 4", "<S2> 4", "<S3> 9"], ["4|graded"] * 3
    with RewardPool(RewardConfig(workers=1, format_weight=0.5)) as p:
        result = p.score(completions, golds)
    assert result.rewards.tolist() == pytest.approx([1.3, 1.5, 0.5])
    assert result.correct.tolist() == [False, True, False]
    with RewardPool(RewardConfig(workers=1), correct_threshold=0.8) as p:
        assert p.score(completions, golds).correct.tolist() == [True, True, False]


def test_toy_strategy_of():
    assert [toy_strategy_of(c) for c in ["<S1> 47", "  <S3>", "<S2", "47 <S1>", ""]] == ["S1", "S3", None, None, None]


def test_last_boxed_and_last_number():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x_{1}}") == "x_{1}"
    assert last_boxed("\\boxed{3} then \\boxed{4") == "3"  # an unclosed box is skipped
    assert last_boxed("no box") is None
    assert last_number("between 3 and 7.") == 7 and last_number("none") is None


# --- pool behaviour ---------------------------------------------------------------------------


def test_all_verifiers_through_the_pool_with_a_format_reward():
    with RewardPool(RewardConfig(workers=1, format_weight=0.5)) as p:
        math = p.score(["\\boxed{2}", "\\boxed{3}", "2"], ["2", "2", "2"], "math")
        toy = p.score(["<S1> 4", "<S1> 5", "5"], ["4", "4", "5"])  # cfg.verifier: toy_strategy
        num = p.score(["it is 3", "it is 4", "none"], ["3", "3", "3"], "numeric")
        exact = p.score(["yes", " ", "no"], ["yes", "yes", "yes"], "exact")
    assert math.rewards.tolist() == [1.5, 0.5, 1.0] and math.correct.tolist() == [True, False, True]
    assert toy.rewards.tolist() == [1.5, 0.5, 0.0]
    assert num.rewards.tolist() == [1.5, 0.5, 0.0]
    assert exact.rewards.tolist() == [1.5, 0.0, 0.5]


def test_crashes_score_zero_and_are_counted(pool):
    raised = pool.score(["a", "b", "c"], ["1", "2", "3"], "_raise")  # the verifier raises
    assert raised.errors == 3 and raised.rewards.tolist() == [0.0] * 3
    died = pool.score(["a", "b", "c"], ["1", "2", "3"], "_exit")  # the worker process dies mid-sample
    assert died.errors == 3 and died.timeouts == 0 and not died.correct.any()
    bad_gold = pool.score(["<S1> 4", "<S1> 4"], ["4", "four"], "toy_strategy")  # a data bug raises
    assert bad_gold.rewards.tolist() == [1.0, 0.0] and bad_gold.errors == 1
    assert pool.score(["\\boxed{2}"], ["2"]).rewards.tolist() == [1.0]  # and the pool still works


def test_results_do_not_depend_on_worker_count(pool):
    rng = np.random.default_rng(0)
    math = [(f"\\boxed{{{a}}}", str(b)) for a, b in rng.integers(1, 4, size=(40, 2))] + MATH_CASES[:4]
    nums = [(f"so {a}/{b}", str(c / b)) for a, b, c in rng.integers(1, 5, size=(40, 3))]
    with RewardPool(RewardConfig(workers=1)) as one:
        for verifier, cases in [("math", math), ("numeric", nums)]:
            completions, golds = [c[0] for c in cases], [c[1] for c in cases]
            a, b = one.score(completions, golds, verifier), pool.submit(completions, golds, verifier).result()
            assert a.timeouts == b.timeouts == a.errors == b.errors == 0
            np.testing.assert_array_equal(a.rewards, b.rewards)
            np.testing.assert_array_equal(a.correct, b.correct)
            assert 0 < a.correct.sum() < len(cases)


def test_bad_arguments_raise_in_the_caller(pool):
    valid = "valid verifiers: exact, math, numeric, toy_strategy"
    with pytest.raises(ValueError, match=f"unknown verifier 'nope'; {valid}"):
        pool.submit(["a"], ["a"], "nope")
    with pytest.raises(ValueError, match="unknown verifier"):
        RewardPool(RewardConfig(verifier="nope"))
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        pool.submit(["a", "b"], ["a"], "exact")
    empty = pool.score([], [], "exact")
    assert empty.rewards.shape == (0,) and empty.rewards.dtype == np.float32 and empty.correct.dtype == bool


def test_close_after_a_timeout_leaves_no_processes():
    p = RewardPool(RewardConfig(verifier="math", workers=1, timeout_s=0.3))
    first = p.pids
    assert p.score([PATHOLOGICAL], ["1"]).timeouts == 1
    pids = first + p.pids
    p.close()
    p.close()  # idempotent
    assert not {c.pid for c in multiprocessing.active_children()} & set(pids)
    assert not any(_pid_exists(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        p.submit(["a"], ["a"], "exact")
