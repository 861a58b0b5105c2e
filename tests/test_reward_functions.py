"""Reward functions: TRL / verl signatures from files, modules and Python, through the killable pool;
each bad input's one-line error; the built-ins in function form; the verifier path unchanged."""

import math
import multiprocessing
import sys
import textwrap
import threading

import numpy as np
import pytest

from rlvr_jax.config import ConfigError, OnError, RewardConfig, RewardFunctionConfig, load_config, save_config
from rlvr_jax.rewards import (
    VERIFIERS,
    RewardFunctionError,
    RewardPool,
    RewardResult,
    RewardSpecError,
    Sample,
    check_columns,
    exact_correct,
    exact_format,
    function_metrics,
    load_reward_functions,
    numeric_correct,
    numeric_format,
    toy_strategy_correct,
    toy_strategy_format,
)

TRL_FILE = """
def correct(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]

def brevity(completions, kind):  # no **kwargs: gets only what it names; None = not applicable
    return [None if k == "skip" else 1.0 / len(c) for c, k in zip(completions, kind)]

def shape(prompts, completions, **kwargs):  # which TRL format arrived
    chat = isinstance(prompts[0], list) and completions[0] == [{"role": "assistant", "content": "x"}]
    return [1.0 if chat else 2.0 if (prompts[0], completions[0]) == ("q", "x") else 0.0]
"""

MODULE = """
def keywords(prompts, completions, **kwargs):  # 1.0 iff exactly the dataset's columns and gold arrive
    return [float(sorted(kwargs) == ["answer", "gold", "id", "kind"] and kwargs["gold"] == ["7"])]
"""

VERL_FILE = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    if data_source == "as_dict":
        return {"score": 0.25, "acc": True}
    return float(solution_str == ground_truth) + (extra_info or {}).get("bonus", 0.0)
"""

MISBEHAVING_FILE = """
import math, time

def bad(completions, mode, **kwargs):
    if mode[0] == "raise":
        return [1 / 0]
    if mode[0] == "sleep":
        time.sleep(30)
    return {"long": [1.0, 2.0], "nan": [math.nan], "text": ["high"], "scalar": 1.0}.get(mode[0], [1.0])

def steady(completions, **kwargs):
    return [0.5]
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _cfg(*functions, **fields):
    return RewardConfig(workers=1, functions=[RewardFunctionConfig(**f) for f in functions], **fields)


def _samples(**columns_per_row):
    """Samples with gold '7' whose columns are given column -> list of values."""
    rows = zip(*columns_per_row.values())
    return [Sample("q", "7", dict(zip(columns_per_row, row))) for row in rows]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- TRL and verl functions through the pool ----------------------------------------------------


def test_trl_functions_from_a_file_and_a_module_get_columns_weights_and_none(tmp_path, monkeypatch):
    path = _write(tmp_path, "rewards.py", TRL_FILE)
    (tmp_path / "mypkg_rf").mkdir()
    _write(tmp_path / "mypkg_rf", "__init__.py", "")
    _write(tmp_path / "mypkg_rf", "scoring.py", MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the file is named relative to the working directory
    cfg = _cfg(
        {"fn": "rewards.py:correct"},
        {"fn": f"{path}:brevity", "weight": 0.5, "name": "short"},
        {"fn": "mypkg_rf.scoring:keywords", "weight": 0.25},
    )
    samples = _samples(answer=["7", "7", "8"], kind=["a", "skip", "a"], id=["p0", "p1", "p2"])
    with RewardPool(cfg) as pool:
        result = pool.score(["7", " 7 ", "1234"], samples)
    assert pool.names == ("correct", "short", "keywords")
    np.testing.assert_array_equal(result.per_function["correct"], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(result.per_function["short"], np.float32([1.0, np.nan, 0.25]))
    np.testing.assert_array_equal(result.per_function["keywords"], [1.0, 1.0, 1.0])
    # total = 1 * correct + 0.5 * short + 0.25 * keywords, the None adding 0
    np.testing.assert_array_equal(result.rewards, np.float32([1.75, 1.25, 0.375]))
    assert result.correct.tolist() == [True, True, False]  # correct_from total, threshold 1.0
    assert result.errors == result.timeouts == 0
    metrics = result.metrics()
    assert metrics["reward/short/mean"] == pytest.approx(0.625)  # over the two rows it applied to
    assert metrics["reward/correct/mean"] == pytest.approx(2 / 3) and "reward/short/errors" not in metrics


def test_conversational_samples_get_message_lists(tmp_path):
    path = _write(tmp_path, "rewards.py", TRL_FILE)
    chat = Sample([{"role": "user", "content": "q"}], "7")
    with RewardPool(_cfg({"fn": f"{path}:shape"})) as pool:
        result = pool.score(["x", "x"], [chat, Sample("q", "7")])
    assert result.per_function["shape"].tolist() == [1.0, 2.0]


def test_verl_compute_score_float_and_dict_returns(tmp_path):
    path = _write(tmp_path, "verl_reward.py", VERL_FILE)
    samples = [
        Sample("q", "7", {"data_source": "gsm8k"}),
        Sample("q", "7", {"data_source": "gsm8k", "extra_info": {"bonus": 0.5}}),
        Sample("q", "7", {"data_source": "as_dict"}),
        Sample("q", "7"),  # no data_source / extra_info columns: "" and None
    ]
    with RewardPool(_cfg({"fn": f"{path}:compute_score"})) as pool:
        result = pool.score(["7", "8", "7", "7"], samples)
    assert result.rewards.tolist() == [1.0, 0.5, 0.25, 1.0]
    assert result.correct.tolist() == [True, False, False, True]


def test_a_closure_is_shipped_by_cloudpickle_and_correct_from_names_a_function_or_the_total():
    offset = 0.75

    def near(completions, **kwargs):  # defined here: only cloudpickle can send it, by value
        return [offset if c == "7" else 0.25 for c in completions]

    def always(completions, **kwargs):
        return [0.5]

    cfg = RewardConfig(workers=1, correct_from="near")
    with RewardPool(cfg, functions=[near, always], correct_threshold=0.75) as pool:
        result = pool.score(["7", "8"], ["7", "7"])  # plain gold strings still work
    assert result.rewards.tolist() == [1.25, 0.75]
    assert result.correct.tolist() == [True, False]  # near: 0.75, 0.25 against 0.75 (the totals both pass)
    by_total = cfg.model_copy(update={"correct_from": "total"})
    with RewardPool(by_total, functions=[near, always], correct_threshold=0.75) as pool:
        assert pool.score(["7", "8"], ["7", "7"]).correct.tolist() == [True, True]  # totals 1.25, 0.75


def test_an_unpicklable_callable_is_one_clear_error():
    lock = threading.Lock()

    def locked(completions, **kwargs):
        with lock:
            return [1.0]

    with pytest.raises(RewardSpecError) as err:
        RewardPool(RewardConfig(workers=1), functions=[locked])
    line = _one_line(err)
    assert "reward function 'locked' passed in Python cannot be sent to the reward workers (TypeError: cannot " in line
    assert "pickle '_thread.lock' object)" in line
    assert "define it at module level in an importable file" in str(err.value)


# --- misbehaving functions at scoring time -------------------------------------------------------


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory):
    path = _write(tmp_path_factory.mktemp("rf"), "misbehaving.py", MISBEHAVING_FILE)
    with RewardPool(_cfg({"fn": f"{path}:bad"}, {"fn": f"{path}:steady"}, timeout_s=0.5)) as pool:
        yield pool


@pytest.mark.parametrize(
    "mode, problem",
    [
        ("raise", "raised ZeroDivisionError: division by zero (at misbehaving.py:6)"),
        ("long", "returned 2 values for 1 completion"),
        ("nan", "returned nan, not a finite number (use None for 'not applicable')"),
        ("text", "returned str 'high', not a number or None"),
        ("scalar", "returned float 1.0, not a list with one value per completion"),
    ],
)
def test_a_misbehaving_function_names_itself_and_the_row(misbehaving, mode, problem):
    samples = _samples(mode=["ok", "ok", mode, mode], id=["a", "b", "c", "d"])
    with pytest.raises(RewardFunctionError) as err:
        misbehaving.score(["x"] * 4, samples)
    line = _one_line(err)
    assert line.startswith("reward function 'bad' (reward.functions[0] '")
    assert (
        f"failed on row 2 (id 'c'): {problem} (2 of 4 rows failed); fix the function, or set reward.on_error=zero"
        in line
    )
    assert misbehaving.score(["x"], _samples(mode=["ok"])).rewards.tolist() == [1.5]  # the pool goes on


def test_on_error_zero_counts_and_a_timeout_spares_the_rest(tmp_path):
    path = _write(tmp_path, "misbehaving.py", MISBEHAVING_FILE)
    cfg = _cfg({"fn": f"{path}:bad"}, {"fn": f"{path}:steady"}, on_error="zero", timeout_s=0.5)
    modes = ["ok", "raise", "nan", "sleep", "ok"]
    with RewardPool(cfg) as pool:
        pids = pool.pids
        result = pool.score(["x"] * 5, _samples(mode=modes))
        assert pool.pids != pids  # the sleeping worker was killed and replaced
        again = pool.score(["x"], _samples(mode=["ok"]))
    np.testing.assert_array_equal(result.per_function["bad"], np.float32([1, np.nan, np.nan, np.nan, 1]))
    np.testing.assert_array_equal(result.per_function["steady"], np.float32([0.5, 0.5, 0.5, np.nan, 0.5]))
    assert result.rewards.tolist() == [1.5, 0.5, 0.5, 0.0, 1.5]  # a timeout scores every function 0
    assert (result.timeouts, result.errors, result.function_errors) == (1, 2, {"bad": 2, "steady": 0})
    metrics = result.metrics()
    assert (metrics["reward/bad/errors"], metrics["reward/steady/errors"], metrics["reward/timeouts"]) == (2, 0, 1)
    assert metrics["reward/bad/mean"] == 1.0 and again.rewards.tolist() == [1.5]


def test_a_function_that_loads_in_the_parent_but_not_in_a_worker(tmp_path):
    text = 'import multiprocessing\nif multiprocessing.current_process().name == "reward-worker":\n    raise OSError("no GPU here")\ndef f(completions, **kw):\n    return [1.0]\n'
    path = _write(tmp_path, "parent_only.py", text)
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(RewardSpecError) as err:
        RewardPool(_cfg({"fn": f"{path}:f"}))
    assert "does not import: OSError: no GPU here (at parent_only.py:3); fix the file" in _one_line(err)
    assert {p.pid for p in multiprocessing.active_children()} <= before  # no worker left behind


# --- bad specs: one line each, before any worker starts ------------------------------------------


def _spec_error(tmp_path, fn, **fields):
    with pytest.raises(RewardSpecError) as err:
        load_reward_functions(_cfg({"fn": fn}, **fields))
    return _one_line(err)


def test_bad_specs_are_one_line_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "broken.py", "import math\nx = undefined_name\n")
    _write(
        tmp_path,
        "ok.py",
        TRL_FILE + "\ndef two(a, b):\n    return [0.0]\n\nasync def later(completions):\n    return [0.0]\n",
    )
    cases = {
        "missing.py:f": "reward.functions[0] 'missing.py:f': file missing.py does not exist (looked for "
        f"{tmp_path / 'missing.py'}; a relative path is relative to the working directory)",
        "broken.py:f": "reward.functions[0] 'broken.py:f': broken.py does not import: NameError: name "
        "'undefined_name' is not defined (at broken.py:2); fix the file",
        "no_such_pkg_rf.rewards:f": "no module named 'no_such_pkg_rf'; install it, put its folder on PYTHONPATH, "
        "or give a file path such as path/to/rewards.py:fn",
        "ok.py:nope": "ok.py has no attribute 'nope'; its public callables: brevity, correct, later, shape, two",
        "ok.py:two": "signature (a, b) is not a reward function's; accepted: TRL's fn(prompts, completions, "
        "**columns) -> list[float | None], or verl's compute_score(data_source, solution_str, ground_truth, "
        "extra_info=None) -> float | dict",
        "ok.py:later": "is an async function; reward functions run in worker processes: use a def",
        "math:pi": "reward.functions[0] 'math:pi' is a float, not a function",
    }
    for fn, message in cases.items():
        assert message in _spec_error(tmp_path, fn), fn


def test_names_correct_from_and_columns_are_checked_up_front(tmp_path):
    path = _write(tmp_path, "rewards.py", TRL_FILE)

    def correct(completions, **kwargs):
        return [1.0]

    with pytest.raises(RewardSpecError) as err:
        load_reward_functions(_cfg({"fn": f"{path}:correct"}), extra=[correct])
    assert "and reward function 'correct' passed in Python are both named 'correct'; rename one" in _one_line(err)
    assert "use total or one of: correct" in _spec_error(tmp_path, f"{path}:correct", correct_from="nope")
    with pytest.raises(RewardSpecError, match="names a reward function but there are none"):
        load_reward_functions(RewardConfig(correct_from="math"))
    with pytest.raises(RewardSpecError) as err:
        load_reward_functions(RewardConfig(), extra=[lambda completions: [1.0]])
    assert "'<lambda>' passed in Python: its name is not usable" in _one_line(err)
    functions = load_reward_functions(_cfg({"fn": f"{path}:correct"}))
    check_columns(functions, ["answer", "prompt"])
    with pytest.raises(RewardSpecError) as err:
        check_columns(functions, ["question", "prompt"])
    assert "needs keyword 'answer', but every row has no column 'answer' (columns: prompt, question)" in _one_line(err)
    with (
        RewardPool(_cfg({"fn": f"{path}:correct"})) as pool,
        pytest.raises(RewardSpecError, match="row 1 \\(id 'b'\\)"),
    ):
        pool.submit(["7", "7"], [Sample("q", "7", {"answer": "7"}), Sample("q", "7", {"id": "b"})])


def test_config_rejects_functions_beside_a_verifier_and_duplicate_names(tmp_path):
    both = ["reward.verifier=math", "reward.functions=[{fn: 'rlvr_jax.rewards:math_correct'}]"]
    with pytest.raises(ConfigError, match="reward.verifier='math' and reward.functions are both set"):
        load_config(None, both)
    with pytest.raises(ConfigError, match="reward.format_weight=0.1 and reward.functions are both set"):
        load_config(None, ["reward.format_weight=0.1", both[1]])
    twice = "reward.functions=[{fn: 'a.py:f'}, {fn: 'b.py:f'}]"
    with pytest.raises(ConfigError, match="name\\(s\\) f used twice"):
        load_config(None, [twice])
    with pytest.raises(ConfigError, match="must look like 'pkg.module:attr' or 'file.py:attr'"):
        load_config(None, ["reward.functions=[{fn: rewards.py}]"])
    cfg = load_config(None, ["reward.functions=[{fn: 'a.py:f'}, {fn: 'b.py:f', name: g, weight: 1}]"]).reward
    assert [(f.label, f.weight) for f in cfg.functions] == [("f", 1.0), ("g", 1.0)]
    full = load_config(None, [twice.replace("'b.py:f'", "'b.py:f', name: g"), "reward.on_error=zero"])
    save_config(full, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == full and full.reward.on_error is OnError.zero


def test_sample_rejects_columns_that_clash_with_the_arguments():
    with pytest.raises(ValueError, match="column\\(s\\) completions clash"):
        Sample("q", "7", {"completions": "x"})


# --- built-ins as functions, and the verifier path ------------------------------------------------

MATH = [("\\boxed{\\frac12}", "0.5"), ("\\boxed{3}", "4"), ("x \\boxed{2} y \\boxed{5}", "5"), ("none", "7")]


def test_builtins_as_functions_equal_the_verifier_path():
    completions, golds = [c for c, _ in MATH], [g for _, g in MATH]
    fns = [{"fn": "rlvr_jax.rewards:math_correct"}, {"fn": "rlvr_jax.rewards:math_format", "weight": 0.5}]
    with RewardPool(RewardConfig(workers=1, verifier="math", format_weight=0.5)) as by_verifier:
        want = by_verifier.score(completions, golds)
    with RewardPool(_cfg(*fns)) as by_functions:
        got = by_functions.score(completions, [Sample("q", g, {"answer": "unused"}) for g in golds])
    np.testing.assert_array_equal(got.rewards, want.rewards)
    np.testing.assert_array_equal(got.correct, want.correct)
    assert want.rewards.tolist() == [1.5, 0.5, 1.5, 0.0] and 0 < got.correct.sum() < len(MATH)
    np.testing.assert_array_equal(got.per_function["math_correct"], want.per_function["math"])
    np.testing.assert_array_equal(got.per_function["math_format"], want.per_function["format"])
    cases = {
        "numeric": (numeric_correct, numeric_format, ["it is 3", "3.5", "none"], "3"),
        "exact": (exact_correct, exact_format, ["yes", " yes ", ""], "yes"),
        "toy_strategy": (toy_strategy_correct, toy_strategy_format, ["<S1> 4", "4", "<S3> 5"], "4"),
    }
    for name, (correct, fmt, texts, gold) in cases.items():
        verifier = VERIFIERS[name]
        assert correct(texts, gold=[gold] * 3) == [verifier.score(t, gold) for t in texts], name
        chat = [[{"role": "assistant", "content": t}] for t in texts]
        assert fmt(chat) == [float(verifier.has_format(t)) for t in texts], name


def test_the_verifier_path_scores_as_before_bit_for_bit():
    """rewards = f32(score + format_weight * has_format), correct = score >= 1, an error 0 (old formula)."""
    cases = {
        "toy_strategy": (["<S1> 4", "<S2> 5", "5", "<S3>", "<S1> 4"], ["4", "4", "5", "1|hard", "four"]),
        "numeric": (["it is 0.1", "1/3", "none", "x"], ["1/10", "0.3333", "2", "3"]),
        "exact": (["a  b", "", "c"], ["a b", "x", "d"]),
    }
    counted = {}
    with RewardPool(RewardConfig(workers=1, format_weight=0.1)) as pool:
        for name, (texts, golds) in cases.items():
            got = pool.score(texts, [Sample("", g) for g in golds], name)
            want, errors = [], 0
            for text, gold in zip(texts, golds):
                try:
                    score = VERIFIERS[name].score(text, gold)
                    want.append((np.float32(score + 0.1 * float(VERIFIERS[name].has_format(text))), score >= 1.0))
                except ValueError:
                    want.append((np.float32(0.0), False))
                    errors += 1
            assert got.rewards.tobytes() == np.array([w[0] for w in want], np.float32).tobytes(), name
            assert got.correct.tolist() == [w[1] for w in want] and got.errors == errors, name
            assert set(got.per_function) == {name, "format"} and not math.isnan(got.per_function[name][0])
            counted[name] = errors
    assert counted == {"toy_strategy": 1, "numeric": 0, "exact": 0}  # the gold "four" raises: scored 0, counted


@pytest.fixture(autouse=True)
def _no_leftover_reward_modules():
    """File modules are cached per process by path; tests write fresh files, so forget them after each."""
    yield
    for name in [n for n in sys.modules if n.startswith("rlvr_reward_")]:
        del sys.modules[name]


def test_function_metrics_from_sums_added_over_processes():
    """step.py sums RewardResult.sums() over processes, then turns them into means."""

    def part(a, b):
        values = {"a": np.float32(a), "b": np.float32(b)}
        return RewardResult(np.zeros(len(a), np.float32), np.zeros(len(a), bool), 0, 0, 0.0, values, {"a": 1, "b": 0})

    one, two = part([1.0, np.nan], [np.nan, np.nan]), part([0.5, 0.0], [np.nan, np.nan])
    total = {k: one.sums()[k] + two.sums()[k] for k in one.sums()}
    total["reward/errors"] = 7.0  # the step's own keys pass through untouched
    assert function_metrics(total) == {"reward/a/mean": 0.5, "reward/a/errors": 2.0, "reward/b/errors": 0.0}
