"""Prompts from the user's files (JSON lines, Parquet, a datasets folder, rows from Python): the
column conventions of verl and TRL without conversion, templates and system prompts, the keyed order,
clear errors, and a JSONL run that resumes bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax.config import load_config
from rlvr_jax.data import DataError, PromptPipeline
from rlvr_jax.data.pipeline import scan_prompts
from rlvr_jax.tasks import TaskError, task_for
from rlvr_jax.tokenizer import load_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def file_task(tmp_path, *overrides):
    cfg = load_config(None, ["data.source=jsonl", f"data.path={tmp_path / 'train.jsonl'}", *overrides])
    return task_for(cfg), cfg


QUESTIONS = [{"question": f"What is {i} + {i}?", "answer": 2 * i, "level": f"L{i % 3}"} for i in range(30)]


def test_string_prompts_with_template_system_prompt_and_columns(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", QUESTIONS)
    task, cfg = file_task(
        tmp_path,
        "data.prompt_key=question",
        "data.template='{question} Put the answer in \\boxed{{}}.'",
        "data.system_prompt=Be brief.",
        "data.subset_key=level",
    )
    source = task.source(cfg.data.split, tmp_path / "cache")
    assert len(source) == 30
    task.check(source, "train")
    ex = task.example(source[4], 4)
    assert ex["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 4 + 4? Put the answer in \\boxed{}."},
    ]
    assert ex["prompt"] == "What is 4 + 4? Put the answer in \\boxed{}." and ex["answer"] == "8"
    assert ex["subset"] == "L1" and ex["id"] == f"{tmp_path.name}/4" and ex["columns"]["question"] == "What is 4 + 4?"
    assert task.target(ex) == "8"


def test_verl_parquet_rows_work_as_they_are(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"Q{i}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i)},
            "extra_info": {"split": "train", "index": i},
        }
        for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    cfg = load_config(
        None, ["data.source=parquet", f"data.path={tmp_path / '*.parquet'}", "data.subset_key=data_source"]
    )
    task = task_for(cfg)
    source = task.source("train", tmp_path / "cache")
    task.check(source, "train")
    ex = task.example(source[2], 2)
    assert ex["messages"] == [{"role": "user", "content": "Q2"}] and ex["answer"] == "2"
    assert ex["subset"] == "openai/gsm8k" and ex["columns"]["extra_info"] == {"split": "train", "index": 2}


def test_trl_conversational_rows_and_a_datasets_folder_with_splits(tmp_path):
    import datasets

    def rows(n):
        return [
            {
                "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}],
                "solution": f"s{i}",
            }
            for i in range(n)
        ]

    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows(6)), "test": datasets.Dataset.from_list(rows(3))}
    ).save_to_disk(str(folder))
    cfg = load_config(None, ["data.source=hf", f"data.path={folder}", "data.system_prompt=unused, the rows have one"])
    task = task_for(cfg)
    train, test = task.source("train"), task.source("test")
    assert (len(train), len(test)) == (6, 3)
    ex = task.example(test[1], 1)
    assert ex["messages"][0] == {"role": "system", "content": "sys"} and len(ex["messages"]) == 2
    assert ex["answer"] == "s1" and ex["prompt"] == "q1"
    with pytest.raises(DataError, match=r"has no split 'dev'; its splits: train, test"):
        task.source("dev")


def test_eval_path_and_globs_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", QUESTIONS[10:20])
    write_jsonl(tmp_path / "a.jsonl", QUESTIONS[:10])
    write_jsonl(tmp_path / "held.jsonl", QUESTIONS[20:])
    cfg = load_config(
        None,
        [
            "data.source=jsonl",
            f"data.path={tmp_path}/?.jsonl",
            f"eval.path={tmp_path}/held.jsonl",
            "data.prompt_key=question",
        ],
    )
    task = task_for(cfg)
    train, held = task.source("train", tmp_path / "c"), task.source("test", tmp_path / "c")
    assert [r["question"] for r in train] == [q["question"] for q in QUESTIONS[:20]]  # a.jsonl, then b.jsonl
    assert len(held) == 10
    no_eval = task_for(load_config(None, ["data.source=jsonl", f"data.path={tmp_path}/a.jsonl"]))
    with pytest.raises(TaskError, match="set eval.path to the held-out file"):
        no_eval.source("test")


@pytest.mark.parametrize(
    ("path", "task", "name"),
    [
        ("data/math_train.jsonl", None, "math_train"),
        ("data/arith/train.jsonl", None, "arith"),
        ("gs://bucket/arith/*.parquet", None, "arith"),
        ("train.jsonl", None, "train"),
        ("data/arith/train.jsonl", "arithmetic", "arithmetic"),
    ],
)
def test_a_file_run_is_named_after_its_files_not_the_default_task(path, task, name):
    overrides = ["data.source=jsonl", f"data.path={path}", "data.prompt_key=question"]
    file_run = task_for(load_config(None, overrides + ([f"data.task={task}"] if task else [])))
    assert file_run.name == name
    assert file_run.example(QUESTIONS[3], 3)["id"] == f"{name}/3"  # no data.id_key: <records name>/<row>


def test_python_rows_are_a_source_too(tmp_path):
    cfg = load_config(None, ["data.source=python", "data.prompt_key=question"])
    task = task_for(cfg, rows={"train": QUESTIONS[:4], "test": QUESTIONS[4:6]})
    assert len(task.source("train")) == 4 and task.example(task.source("test")[0], 0)["answer"] == "8"
    assert task.name == "rows"
    with pytest.raises(TaskError, match="must be a list of dicts or a datasets.Dataset"):
        task_for(cfg, rows={"train": "not rows"}).source("train")


@pytest.mark.parametrize(
    ("rows", "overrides", "match"),
    [
        ([], [], r"has no rows"),
        ([{"text": "q", "answer": 1}], [], r"no column 'prompt' \(data.prompt_key\); the rows have answer, text"),
        ([{"prompt": "q", "x": 1}], [], r"no answer column: set data.answer_key \(looked for answer, "),
        ([{"prompt": "q", "answer": 1}], ["data.id_key=uid"], r"no column 'uid' \(data.id_key\)"),
        ([{"prompt": "  ", "answer": 1}], [], r"row \S+/0: the prompt \(prompt\) is empty"),
        ([{"prompt": 3, "answer": 1}], [], r"must be a string or chat messages"),
        ([{"prompt": "q", "answer": 1}], ["data.template='{question}'"], r"data.template names \['question'\]"),
    ],
)
def test_bad_rows_are_one_clear_line(tmp_path, rows, overrides, match):
    write_jsonl(tmp_path / "train.jsonl", rows)
    task, _cfg = file_task(tmp_path, *overrides)
    with pytest.raises(DataError, match=match):
        source = task.source("train", tmp_path / "cache")
        task.check(source, "the train rows")


def test_missing_files_and_unreachable_hub_datasets(tmp_path, monkeypatch):
    task, _ = file_task(tmp_path)
    with pytest.raises(DataError, match=r"cannot read .*train.jsonl: .*does not exist"):
        task.source("train")
    with pytest.raises(DataError, match=r"no file matches"):
        task_for(load_config(None, ["data.source=jsonl", f"data.path={tmp_path}/*.jsonl"])).source("train")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q", "answer": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl is not valid jsonl"):
        task_for(load_config(None, ["data.source=jsonl", f"data.path={tmp_path}/bad.jsonl"])).source("train", tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"openai/gsm8k"):
        task_for(load_config(None, ["data.source=hf", "data.path=openai/gsm8k"])).source("train", tmp_path)


def test_keyed_order_and_prompt_scan(tmp_path, tiny_tokenizer_dir):
    write_jsonl(tmp_path / "train.jsonl", QUESTIONS)
    task, cfg = file_task(tmp_path, "data.prompt_key=question", "data.prompts_per_step=8", "data.max_prompt_len=48")
    tok = load_tokenizer(tiny_tokenizer_dir)
    source = task.source("train", tmp_path / "cache")

    def batches(seed):
        pipe = PromptPipeline(task.source("train", tmp_path / "cache"), cfg.data, tok, seed, normalize=task.example)
        return [pipe.batch(k) for k in range(5)]

    a, b, c = batches(0), batches(0), batches(1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.arrays["tokens"], y.arrays["tokens"])
        assert x.examples == y.examples
    assert [e["id"] for e in a[0].examples] != [e["id"] for e in c[0].examples]
    seen = [e["columns"]["question"] for bt in batches(3)[:4] for e in bt.examples]  # 32 rows = one epoch + 2
    assert set(seen[:30]) == {q["question"] for q in QUESTIONS}
    assert scan_prompts(source, tok, cfg.data, task.example) == 0
    short = cfg.data.model_copy(update={"max_prompt_len": 4})
    with pytest.raises(DataError, match=r"example \S+/0 has a \d+-token prompt, more than data.max_prompt_len=4"):
        scan_prompts(source, tok, short, task.example, "")
    assert scan_prompts(source, tok, short.model_copy(update={"long_prompt": "truncate"}), task.example) == 30


# --- a run on JSONL files: resume and multi-host exactly as for a registered task -------------


@pytest.fixture(scope="module")
def toy_jsonl(toy_base, tmp_path_factory):
    """The toy task's train and test splits written as JSONL files with their own column names."""
    from rlvr_jax.tasks import get_task

    out = tmp_path_factory.mktemp("jsonl")
    _folder, data = toy_base
    toy = get_task("toy_strategy")
    for split in ("train", "test"):
        source = toy.source(split, data)
        rows = [toy.example(source[i], i) for i in range(len(source))]
        write_jsonl(
            out / f"{split}.jsonl",
            [{"question": r["prompt"], "gold": r["answer"], "level": r["subset"], "uid": r["id"]} for r in rows],
        )
    return [
        "data.source=jsonl",
        f"data.path={out / 'train.jsonl'}",
        f"eval.path={out / 'test.jsonl'}",
        "data.prompt_key=question",
        "data.answer_key=gold",
        "data.subset_key=level",
        "data.id_key=uid",
        "reward.verifier=numeric",
    ]


@pytest.mark.slow
def test_a_jsonl_run_resumes_bit_for_bit(toy_base, toy_jsonl, tmp_path):
    from rlvr_jax import cli
    from tests.test_resume import MESH_222, assert_same_run, run_args, train

    args = run_args(toy_base, *MESH_222, *toy_jsonl)
    train(tmp_path / "whole", args)
    train(tmp_path / "sliced", args, "--stop-at", "2")
    train(tmp_path / "sliced", args)
    assert_same_run(tmp_path / "whole", tmp_path / "sliced", probed=False)  # a file task has no probe
    report = json.loads((tmp_path / "whole" / "evals" / "step_000004.json").read_text())
    assert set(report["subsets"]) == {"easy", "hard"} and report["problems"][0]["id"].startswith("toy_strategy/test/")
    assert report["task"] == Path(toy_jsonl[1].split("=", 1)[1]).parent.name  # the files' folder, not data.task
    # `rlvr-jax eval --task toy_strategy` evaluates the registered task even though data.task already says so
    out = tmp_path / "registered.json"
    assert cli.main(["eval", "--run-dir", str(tmp_path / "whole"), "--task", "toy_strategy", "--n", "2",
                     "--max-problems", "4", "--out", str(out)]) == 0  # fmt: skip
    registered = json.loads(out.read_text())
    assert registered["task"] == "toy_strategy" and registered["problems"][0]["id"].startswith("toy_strategy/test/")


@pytest.mark.slow
def test_a_jsonl_run_on_two_processes_equals_one(toy_base, toy_jsonl, tmp_path):
    from tests.test_multihost import assert_two_equal_one, run_single

    single = run_single(toy_base, tmp_path / "single", *toy_jsonl)
    assert_two_equal_one(toy_base, single, tmp_path / "multi", *toy_jsonl)
