"""Task datasets (TFDS array_record, built offline) and the grain prompt pipeline."""

from __future__ import annotations

import ast
import functools
import json
import operator
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax.config import DataConfig, load_config
from rlvr_jax.data import DataError, PromptPipeline, decode_record
from rlvr_jax.data.official import last_boxed
from rlvr_jax.data.toy_strategy import STRATEGY_TOKENS, exact_counts, execute, toy_tokenizer, warmstart_examples
from rlvr_jax.rewards.verifiers import score_toy_strategy
from rlvr_jax.tasks import get_task
from rlvr_jax.tasks.toy_strategy import bernoulli_draws
from rlvr_jax.tokenizer import load_tokenizer, render_prompt
from rlvr_jax.warmstart import TRACE_NEUTRAL_TASK_ARGS, fingerprint

TOY = dict(train_size=1000, test_size=200, warmstart_size=4000)  # warmstart big enough to see a 2% prior


def rows(source) -> list[dict]:
    return [decode_record(source[i]) for i in range(len(source))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def toy_train(data_dir) -> list[dict]:
    return rows(get_task("toy_strategy").source("train", data_dir, **TOY))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(toy_tokenizer(tmp_path_factory.mktemp("toy_tok")))


# --- toy strategy ---------------------------------------------------------------------------------


def test_toy_builds_the_same_dataset_from_the_same_seed(tmp_path):
    small = dict(train_size=64, test_size=16, warmstart_size=64)
    a = rows(get_task("toy_strategy").source("warmstart", tmp_path / "a", seed=3, **small))
    b = rows(get_task("toy_strategy").source("warmstart", tmp_path / "b", seed=3, **small))
    c = rows(get_task("toy_strategy").source("warmstart", tmp_path / "a", seed=4, **small))
    assert a == b
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]


def test_toy_semantics_and_hard_subset(toy_train):
    hard = [r["subset"] == "hard" for r in toy_train]
    assert sum(hard) == 200  # exactly round(0.2 * 1000), at seeded positions
    assert 0 < sum(hard[:500]) < 200
    for r, is_hard in zip(toy_train, hard):
        assert re.fullmatch(r"\d\d \d\d \d\d", r["prompt"])
        a, b, c = (int(x) for x in r["prompt"].split())
        assert r["answer"] == str(b) and r["response"] == ""
        answers = [execute(s, a, b, c).split()[1] for s in range(3)]
        assert (answers[0] == r["answer"]) == (not is_hard)  # S1: right exactly off the hard subset
        assert answers[1] == r["answer"]  # S2: always right
        assert answers[2] != r["answer"] and c != a  # S3: always wrong


def test_warmstart_follows_the_prior_and_executes_faithfully(data_dir):
    traces = warmstart_examples(data_dir, **TOY)
    assert len(traces) == 4000
    counts = np.zeros(3)
    for r in traces:
        token, value = r["response"].split()
        s = STRATEGY_TOKENS.index(token)
        counts[s] += 1
        assert r["response"] == execute(s, *(int(x) for x in r["prompt"].split()))
        assert (value == r["answer"]) == (s == 1 or (s == 0 and r["subset"] == "easy"))
    np.testing.assert_allclose(counts / len(traces), [0.30, 0.02, 0.68], atol=1e-3)
    # The rare strategy is spread over the split (a seeded permutation), not laid out in one block.
    rare = [i for i, r in enumerate(traces) if r["response"].startswith("<S2>")]
    assert rare[-1] - rare[0] > len(traces) // 2 and np.diff(rare).max() < len(traces) // 4


def test_toy_parameters_change_the_dataset(tmp_path):
    params = dict(train_size=100, test_size=10, warmstart_size=100, hard_fraction=0.5, prior=(0.5, 0.5, 0.0))
    train = rows(get_task("toy_strategy").source("train", tmp_path, **params))
    warm = rows(get_task("toy_strategy").source("warmstart", tmp_path, **params))
    assert sum(r["subset"] == "hard" for r in train) == 50
    assert sorted(r["response"].split()[0] for r in warm) == ["<S1>"] * 50 + ["<S2>"] * 50
    assert exact_counts(7, (0.3, 0.02, 0.68)).tolist() == [2, 0, 5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bogus=1), r"unknown ToyStrategyConfig parameter.*bogus.*valid:.*hard_fraction"),
        (dict(prior=(0.5, 0.6, 0.0)), r"prior must be 3 non-negative numbers summing to 1"),
        (dict(hard_fraction=1.5), r"hard_fraction must be in \[0, 1\]"),
    ],
)
def test_toy_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        get_task("toy_strategy").source("train", tmp_path, **kwargs)


SMALL = dict(train_size=512, test_size=16, warmstart_size=64)


def _strategy_rewards(task, example, count=1, draw=()):
    """[(S1, S2, S3) rewards of the faithful answers] for each of `count` samples of `example`."""
    a, b, c = (int(x) for x in example["prompt"].split())
    return [
        tuple(score_toy_strategy(execute(s, a, b, c), gold) for s in range(3))
        for gold in task.targets(example, count, draw)
    ]


def test_toy_graded_variant_rewards_s1_0_8_on_every_instance(tmp_path):
    task = get_task("toy_strategy")
    train = rows(task.source("train", tmp_path, reward="graded", hard_fraction=0.0, **SMALL))
    assert len(train) == 512 and {r["subset"] for r in train} == {"graded"}  # no hard subset to identify
    for r in train:
        a, b, _ = r["prompt"].split()
        assert a == b and task.target(r) == f"{b}|graded"
        assert _strategy_rewards(task, r) == [(0.8, 1.0, 0.0)]


def test_toy_tie_variant_s1_and_s2_always_correct(tmp_path):
    task = get_task("toy_strategy")
    train = rows(task.source("train", tmp_path, hard_fraction=0, **SMALL))  # an int 0 is the same dataset
    assert {r["subset"] for r in train} == {"easy"}
    assert all(_strategy_rewards(task, r) == [(1.0, 1.0, 0.0)] for r in train)
    again = rows(task.source("train", tmp_path, hard_fraction=0.0, **SMALL))
    assert again == train and len(list(tmp_path.glob("toy_strategy/custom_*"))) == 1
    # The warm start's choice traces on the tie instances: a == b everywhere, the prior kept.
    traces = warmstart_examples(tmp_path, hard_fraction=0.0, warmstart_size=1000)
    assert all(len(set(t["prompt"].split()[:2])) == 1 for t in traces)
    assert sorted(t["response"][:4] for t in traces) == ["<S1>"] * 300 + ["<S2>"] * 20 + ["<S3>"] * 680


def test_warmstart_traces_do_not_depend_on_the_reward_variant(tmp_path):
    # Why the warm-start fingerprint leaves `reward` out (TRACE_NEUTRAL_TASK_ARGS): the graded, bernoulli
    # and tie (binary) variants train on the same traces, so they can share one base policy.
    assert TRACE_NEUTRAL_TASK_ARGS == ("reward",)
    traces = {
        reward: [
            (t["prompt"], t["response"])
            for t in warmstart_examples(tmp_path, hard_fraction=0.0, reward=reward, warmstart_size=300)
        ]
        for reward in ("binary", "graded", "bernoulli")
    }
    assert traces["binary"] == traces["graded"] == traces["bernoulli"]
    assert len(set(traces["binary"])) > 100  # real traces, not an empty or constant split
    cfgs = [
        load_config("toy_tie"),
        load_config("toy_graded"),
        load_config("toy_strategy", ["data.task_args.reward=bernoulli", "data.task_args.hard_fraction=0.0"]),
    ]
    assert fingerprint(cfgs[0]) == fingerprint(cfgs[1]) == fingerprint(cfgs[2])
    assert fingerprint(cfgs[0]) != fingerprint(load_config("toy_strategy"))  # hard_fraction does shape them


def test_toy_bernoulli_variant_s1_wins_0_8_per_sample_reproducibly(tmp_path):
    task = get_task("toy_strategy")
    train = rows(task.source("train", tmp_path, reward="bernoulli", hard_fraction=0.0, **SMALL))
    assert {r["subset"] for r in train} == {"bernoulli"} and all(len(set(r["prompt"].split()[:2])) == 1 for r in train)
    draw = ("train", 0, 3)
    per_sample = [x for r in train for x in _strategy_rewards(task, r, 8, draw)]
    assert {(s2, s3) for _, s2, s3 in per_sample} == {(1.0, 0.0)}  # S2 always 1, S3 always 0
    s1 = np.array([x[0] for x in per_sample])
    assert set(s1) == {0.0, 1.0}
    assert abs(s1.mean() - 0.8) < 0.025  # 4096 draws: std sqrt(0.16 / 4096) = 0.006
    # Deterministic per (draw, instance, sample); a new round (step) draws afresh.
    assert [_strategy_rewards(task, r, 8, draw) for r in train[:20]] == [
        _strategy_rewards(task, r, 8, draw) for r in train[:20]
    ]
    other = np.array([x[0] for r in train for x in _strategy_rewards(task, r, 8, ("train", 0, 4))])
    assert (other != s1).mean() == pytest.approx(2 * 0.8 * 0.2, abs=0.03)  # independent rounds
    with pytest.raises(DataError, match="one gold per sample"):
        task.target(train[0])


def test_bernoulli_draws_pinned():
    # sha256 of repr((*key, name, g)): pinned so a given seed keeps its draws across versions.
    flags = bernoulli_draws(("train", 0, 0), "toy_strategy/train/0", 8, 0.8)
    assert flags == bernoulli_draws(["train", 0, 0], "toy_strategy/train/0", 8, 0.8)  # a list key: the same
    assert flags == [False, True, False, True, True, True, True, True]
    assert (
        bernoulli_draws(("k",), "x", 100, 0.0) == [False] * 100
        and bernoulli_draws(("k",), "x", 100, 1.0) == [True] * 100
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reward="graded"), r"reward=graded rewards S1 the same way on every instance.*hard_fraction: 0.0"),
        (dict(reward="shaped", hard_fraction=0.0), r"reward must be one of binary, graded, bernoulli"),
        (dict(hard_fraction="0.2"), r"hard_fraction must be a number, got '0.2' \(str\)"),
        (dict(hard_fraction=True), r"hard_fraction must be a number, got True"),
        (dict(train_size=64.0), r"train_size must be an integer, got 64.0"),
        (dict(prior=[0.5, 0.5]), r"prior must be a list of 3"),
        (dict(prior=[0.5, "0.5", 0.0]), r"prior\[1\] must be a number"),
    ],
)
def test_toy_variant_parameters_are_checked_strictly(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        get_task("toy_strategy").source("train", tmp_path, **kwargs)


def test_task_args_reach_every_split_through_open_split(tmp_path):
    from rlvr_jax.config import load_config

    task = get_task("toy_strategy")
    cfg = load_config("toy_graded", [f"data.data_dir={tmp_path}"])
    assert cfg.data.task_args == {"reward": "graded", "hard_fraction": 0.0}
    for split in ("train", "test"):
        assert {decode_record(r)["subset"] for r in task.open_split(split, cfg.data)} == {"graded"}
    bad = load_config("toy_graded", [f"data.data_dir={tmp_path}", "data.task_args.prior=[0.3, 0.3, 0.4]"])
    with pytest.raises(DataError, match=r"prior \(set warmstart.prior\)"):
        task.open_split("train", bad.data)


def test_unknown_task_and_split_list_the_valid_ones(data_dir):
    with pytest.raises(
        DataError, match=r"unknown task 'gsm9k'; registered tasks: arithmetic, (.*, )?gsm8k, math, (.*, )?toy_strategy"
    ):
        get_task("gsm9k")
    with pytest.raises(DataError, match=r"no split 'dev'; valid splits: \['test', 'train', 'warmstart'\]"):
        get_task("toy_strategy").source("dev", data_dir, **TOY)


def test_toy_tokenizer_strategy_tokens_and_chat_template(tok, tmp_path):
    ids = tok.convert_tokens_to_ids(list(STRATEGY_TOKENS))
    assert len(set(ids)) == 3 and tok.unk_token_id not in ids and len(tok) <= 512
    for token, tid in zip(STRATEGY_TOKENS, ids):
        encoded = tok.encode(f"{token} 47", add_special_tokens=False)
        assert encoded[0] == tid and tok.decode(encoded) == f"{token} 47"
    text = render_prompt(tok, "47 52 13")
    assert text == "<|im_start|>user\n47 52 13<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok.encode(text, add_special_tokens=False)) <= 16  # 2-digit numbers merged into single tokens


# --- arithmetic -----------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def safe_eval(expr: str) -> int:
    """Integers joined by + - * and parentheses, nothing else."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise ValueError(f"unexpected {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval").body)


def test_arithmetic_gold_answers_are_the_expression_values(data_dir):
    data = rows(get_task("arithmetic").source("train", data_dir, train_size=300, test_size=10))
    for r in data:
        expr = re.fullmatch(r"Compute (.+)\. Put the final answer in \\boxed\{\}\.", r["prompt"]).group(1)
        assert safe_eval(expr) == int(r["answer"]), r
        assert r["subset"] == f"ops{len(re.findall(r' [-+*] ', expr))}"
    assert {r["subset"] for r in data} == {"ops1", "ops2", "ops3", "ops4"}
    assert any("(" in r["prompt"] for r in data)
    again = rows(get_task("arithmetic").source("train", data_dir, train_size=300, test_size=10))
    assert again == data


# --- gsm8k / math from official files -------------------------------------------------------------


def test_last_boxed():
    assert last_boxed(r"so $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{\{a, b\}}") == r"\{a, b\}"
    assert last_boxed(r"the answer is $\boxed 5$.") == "5"
    assert last_boxed(r"\fbox{x^{2}}") == "x^{2}"
    assert last_boxed(r"\boxed{\frac{1}{2}") is None
    assert last_boxed("no box") is None


def _write_jsonl(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


GSM_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A farm has 1,234 cows.", "answer": "So 1,234.\n#### 1,234"},
]


def test_gsm8k_from_official_files(tmp_path):
    _write_jsonl(tmp_path / "manual" / "gsm8k" / "train.jsonl", GSM_ROWS)
    _write_jsonl(tmp_path / "manual" / "gsm8k" / "test.jsonl", GSM_ROWS[:1])
    data = rows(get_task("gsm8k").source("train", tmp_path / "tfds", tmp_path / "manual"))
    assert [r["answer"] for r in data] == ["7", "1234"]
    assert data[0]["id"] == "gsm8k/train/1" and data[0]["subset"] == ""
    assert data[0]["prompt"].startswith(GSM_ROWS[0]["question"]) and "\\boxed{}" in data[0]["prompt"]
    # Built once: reading again needs no manual files.
    assert len(get_task("gsm8k").source("test", tmp_path / "tfds")) == 1


@pytest.mark.parametrize(
    "train, match",
    [
        (None, r"test\.jsonl not found: put the official GSM8K files"),
        ([GSM_ROWS[0], "{not json"], r"train\.jsonl line 2: not valid JSON"),
        ([GSM_ROWS[0], {"question": "q"}], r"train\.jsonl line 2: missing text field\(s\) \['answer'\]"),
        ([{"question": "q", "answer": "42"}], r"train\.jsonl line 1: the answer has no final value after '####'"),
        ([], r"train\.jsonl holds no examples"),
    ],
)
def test_gsm8k_bad_input(tmp_path, train, match):
    manual = tmp_path / "manual"  # files directly in manual_dir also work
    _write_jsonl(manual / "train.jsonl", GSM_ROWS if train is None else train)
    if train is not None:
        _write_jsonl(manual / "test.jsonl", GSM_ROWS)
    with pytest.raises(DataError, match=match):
        get_task("gsm8k").source("train", tmp_path / "tfds", manual)


def test_gsm8k_without_manual_dir_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"set data.manual_dir and put the official GSM8K files"):
        get_task("gsm8k").source("train", tmp_path)


def _math(problem: str, solution: str, level: str = "Level 2") -> dict:
    return {"problem": problem, "solution": solution, "level": level, "type": "Algebra"}


def _write_math(root: Path, files: dict[str, object]) -> None:
    for rel, record in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(record if isinstance(record, str) else json.dumps(record))


MATH_FILES = {
    "train/algebra/10.json": _math("p10", r"First $\boxed{3}$, then $\boxed{\frac{1}{\sqrt{2}}}$.", "Level 5"),
    "train/algebra/2.json": _math("p2", r"Hence $\boxed 4$."),
    "train/geometry/1.json": _math("p1", r"So $\boxed{\{1, 2\}}$."),
    "test/algebra/7.json": _math("p7", r"$\boxed{7}$"),
}


def test_math_from_the_official_tree(tmp_path):
    _write_math(tmp_path / "manual" / "math", MATH_FILES)
    data = rows(get_task("math").source("train", tmp_path / "tfds", tmp_path / "manual", instruction=""))
    assert [r["id"] for r in data] == ["math/train/algebra/2", "math/train/algebra/10", "math/train/geometry/1"]
    assert [r["answer"] for r in data] == ["4", r"\frac{1}{\sqrt{2}}", r"\{1, 2\}"]
    assert [r["subset"] for r in data] == ["Level 2", "Level 5", "Level 2"]
    assert data[0]["prompt"] == "p2"  # instruction="" leaves the problem as it is


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"train/algebra/3.json": _math("p", "no box here")}, r"algebra/3\.json: the solution has no complete"),
        ({"train/algebra/3.json": "{oops"}, r"algebra/3\.json: not valid JSON"),
        (
            {"train/algebra/3.json": {"problem": "p", "solution": r"\boxed{1}", "type": "x"}},
            r"algebra/3\.json: missing text field\(s\) \['level'\]",
        ),
    ],
)
def test_math_bad_input(tmp_path, bad, match):
    _write_math(tmp_path / "manual", {**MATH_FILES, **bad})
    with pytest.raises(DataError, match=match):
        get_task("math").source("train", tmp_path / "tfds", tmp_path / "manual")


def test_math_missing_split_folder(tmp_path):
    _write_math(tmp_path / "manual", {k: v for k, v in MATH_FILES.items() if k.startswith("train")})
    with pytest.raises(DataError, match=r"MATH folder .*test not found .*put the official MATH folders"):
        get_task("math").source("train", tmp_path / "tfds", tmp_path / "manual")


# --- pipeline -------------------------------------------------------------------------------------


def _pipe(data_dir, tok, seed=0, split="train[:96]", process_index=0, process_count=1, **cfg):
    cfg = DataConfig(**{"data_dir": str(data_dir), "prompts_per_step": 8, "max_prompt_len": 16, **cfg})
    source = get_task("toy_strategy").source(split, data_dir, **TOY)
    return PromptPipeline(source, cfg, tok, seed, process_index, process_count)


def _same(x, y) -> None:
    assert x.examples == y.examples
    for key in ("tokens", "mask", "index"):
        np.testing.assert_array_equal(x.arrays[key], y.arrays[key])


def test_pipeline_is_a_function_of_seed_and_step(data_dir, tok, toy_train):
    pipe = _pipe(data_dir, tok)
    b = pipe.batch(5)
    assert b.arrays["tokens"].shape == (8, 16) and b.arrays["tokens"].dtype == np.int32
    assert b.arrays["index"].dtype == np.int32
    for i, ex in zip(b.arrays["index"], b.examples):  # index is the global example index
        assert toy_train[i]["id"] == ex["id"] and toy_train[i]["answer"] == ex["answer"]
    fresh = _pipe(data_dir, tok)  # a resumed run: only the step is known
    _same(fresh.batch(5), b)
    _same(fresh.batch(2), pipe.batch(2))
    other = _pipe(data_dir, tok, seed=1)
    assert not np.array_equal(other.batch(5).arrays["index"], b.arrays["index"])


def test_pipeline_epochs_are_permutations_reshuffled(data_dir, tok):
    pipe = _pipe(data_dir, tok)  # 96 examples, 8 a step: 12 steps an epoch
    epochs = [np.concatenate([pipe.batch(12 * e + k).arrays["index"] for k in range(12)]) for e in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(96))
    assert not np.array_equal(epochs[0], epochs[1])
    assert pipe.steps_per_epoch == 12 and len(pipe) == 96


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_union_is_the_single_process_batch(data_dir, tok, count):
    single = _pipe(data_dir, tok)
    parts = [_pipe(data_dir, tok, process_index=p, process_count=count) for p in range(count)]
    for step in (0, 7, 13):
        shards = [p.batch(step) for p in parts]
        assert all(s.arrays["tokens"].shape == (8 // count, 16) for s in shards)
        whole = single.batch(step)
        assert functools.reduce(operator.iadd, (s.examples for s in shards), []) == whole.examples
        for key in ("tokens", "mask", "index"):
            np.testing.assert_array_equal(np.concatenate([s.arrays[key] for s in shards]), whole.arrays[key])
    with pytest.raises(DataError, match="must divide evenly over 3 processes"):
        _pipe(data_dir, tok, process_count=3)


def test_prompts_are_left_padded_renderings(data_dir, tok):
    for chat in (True, False):
        pipe = _pipe(data_dir, tok, chat_template=chat, plain_template="Q: {prompt}\nA:")
        b = pipe.batch(0)
        for tokens, mask, ex in zip(b.arrays["tokens"], b.arrays["mask"], b.examples):
            n = int(mask.sum())
            assert mask.tolist() == [0] * (16 - n) + [1] * n
            assert (tokens[: 16 - n] == tok.pad_token_id).all()
            expected = render_prompt(tok, ex["prompt"]) if chat else f"Q: {ex['prompt']}\nA:"
            assert tok.decode(tokens[16 - n :].tolist()) == expected
        assert b.metrics == {"data/truncated": 0.0}


def test_long_prompts_error_or_truncate(data_dir, tok):
    with pytest.raises(
        DataError,
        match=r"example toy_strategy/train/\d+ has a 11-token prompt, more than "
        r"data.max_prompt_len=6",
    ):
        _pipe(data_dir, tok, max_prompt_len=6).batch(0)
    b = _pipe(data_dir, tok, max_prompt_len=6, long_prompt="truncate").batch(0)
    full = tok.encode(render_prompt(tok, b.examples[0]["prompt"]), add_special_tokens=False)
    assert b.arrays["tokens"][0].tolist() == full[-6:]  # the end (generation prompt) survives
    assert b.arrays["mask"].all() and b.metrics == {"data/truncated": 8.0}
    assert all(ex["truncated"] for ex in b.examples)


def test_grain_iterator_state_restores_the_position(data_dir, tok):
    pipe = _pipe(data_dir, tok)
    it = pipe.iterator(start_step=3)
    _same(next(it), pipe.batch(3))
    state = it.get_state()
    after = next(it)
    it.set_state(state)
    _same(next(it), after)
    _same(after, pipe.batch(4))


def test_a_fresh_process_reads_the_built_dataset(data_dir, toy_train):
    info = next(Path(data_dir, "toy_strategy").glob("custom_*/1.0.0/dataset_info.json"))
    built_at = info.stat().st_mtime_ns
    script = (
        "import json, sys, tensorflow_datasets as tfds\n"
        "from rlvr_jax.data import decode_record\n"
        "from rlvr_jax.tasks import get_task\n"
        f"src = get_task('toy_strategy').source('train[:3]', sys.argv[1], **{TOY!r})\n"
        "raw = tfds.builder_from_directory(sys.argv[2]).as_data_source(split='train')\n"
        "print(json.dumps([[decode_record(src[i]) for i in range(3)], decode_record(raw[999])]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(data_dir), str(info.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, last = json.loads(out.stdout.strip().splitlines()[-1])
    assert first == toy_train[:3] and last == toy_train[999]
    assert info.stat().st_mtime_ns == built_at  # read, not rebuilt
