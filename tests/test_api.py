"""The Python API: Trainer over rows given in Python with a reward function defined in the test (shipped
to the reward workers by value), then evaluate and export; and its errors."""

from __future__ import annotations

import json
import threading

import pytest

from rlvr_jax import Trainer, load_config
from rlvr_jax.rewards import RewardSpecError
from tests.hf_fixtures import TINY_CONFIGS

ARCH = {"model_type": "qwen2", **{k: v for k, v in TINY_CONFIGS["qwen2"].items() if k != "max_position_embeddings"}}
ROWS = [
    {"question": f"What is {i} + {i}?", "answer": str(2 * i), "kind": "even" if i % 2 == 0 else "odd"}
    for i in range(16)
]


def overrides(tmp_path, tokenizer_dir):
    return [
        f"run.run_dir={tmp_path / 'run'}",
        f"model.arch={json.dumps(ARCH)}",
        f"model.tokenizer={tokenizer_dir}",
        "warmstart.enabled=false",
        "data.prompt_key=question",
        "data.subset_key=kind",
        "data.prompts_per_step=4",
        "data.max_prompt_len=48",
        "rollout.group_size=4",
        "rollout.max_new_tokens=6",
        "advantage.estimator=nsr",
        "optim.lr=1e-2",
        "run.steps=2",
        "eval.n=2",
        "eval.samples_per_pass=2",
        "eval.batch_problems=4",
        "logging.progress_bar=false",
        "logging.probe_every=1000",
    ]


def test_trainer_trains_evaluates_and_exports(tmp_path, tiny_tokenizer_dir):
    digits = "0123456789"

    def has_digit(prompts, completions, kind, **columns):  # a closure over `digits`: shipped by value
        return [float(any(ch in digits for ch in c)) if k == "even" else None for c, k in zip(completions, kind)]

    trainer = Trainer(
        load_config(None, overrides(tmp_path, tiny_tokenizer_dir)),
        train_dataset=ROWS,
        eval_dataset=ROWS[:4],
        reward_funcs=[has_digit],
        log=lambda _: None,
    )
    summary = trainer.train()
    assert summary["steps"] == 2 and trainer.cfg.data.source.value == "python"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(0.0 <= r["reward/has_digit/mean"] <= 1.0 for r in rows[1:])  # odd rows: None, not in the mean
    report = trainer.evaluate(n=4, samples_per_pass=4)
    assert report["step"] == 2 and report["n"] == 4 and len(report["problems"]) == 4
    assert set(report["subsets"]) == {"even", "odd"} and report["verifier"] == ["has_digit"]
    out = trainer.export(tmp_path / "hf")
    from rlvr_jax.model import Arch

    assert Arch.from_dir(out).hidden_size == ARCH["hidden_size"]


def test_trainer_refuses_bad_input_before_any_work(tmp_path, tiny_tokenizer_dir):
    cfg = load_config(None, overrides(tmp_path, tiny_tokenizer_dir))
    with pytest.raises(ValueError, match="give both train_dataset and eval_dataset"):
        Trainer(cfg, train_dataset=ROWS)
    lock = threading.Lock()

    def holds_a_lock(prompts, completions, **columns):
        return [float(lock.locked())] * len(completions)

    with pytest.raises(RewardSpecError, match="holds_a_lock"):
        Trainer(cfg, train_dataset=ROWS, eval_dataset=ROWS, reward_funcs=[holds_a_lock])
