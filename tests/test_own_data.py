"""The README's "train on your own data" example end to end through the CLI: the example's data
generator, reward file and config, with a tiny random model in place of SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rlvr_jax import cli
from tests.hf_fixtures import TINY_CONFIGS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "smollm2_arithmetic"
ARCH = {"model_type": "qwen2", **{k: v for k, v in TINY_CONFIGS["qwen2"].items() if k != "max_position_embeddings"}}


def test_the_example_trains_through_the_user_path(tmp_path, tiny_tokenizer_dir, monkeypatch):
    data = tmp_path / "data"
    subprocess.run(
        [sys.executable, str(EXAMPLE / "make_data.py"), str(data), "--train", "60", "--test", "12"],
        check=True,
        capture_output=True,
    )
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    held = {json.loads(line)["question"] for line in (data / "test.jsonl").read_text().splitlines()}
    assert len(rows) == 60 and not held & {r["question"] for r in rows}  # no test problem is trained on
    monkeypatch.chdir(EXAMPLE.parents[1])  # the config's reward paths are relative to the repository root
    run = tmp_path / "run"
    code = cli.main([
        "train", "--config", str(EXAMPLE / "config.yaml"), "--run-dir", str(run),
        "model.path=null", f"model.arch={json.dumps(ARCH)}", f"model.tokenizer={tiny_tokenizer_dir}",
        f"data.path={data / 'train.jsonl'}", f"eval.path={data / 'test.jsonl'}", "data.prompts_per_step=4",
        "data.max_prompt_len=128", "rollout.group_size=4", "rollout.max_new_tokens=8", "run.steps=2", "eval.n=2", "eval.samples_per_pass=2",
        "eval.batch_problems=4", "eval.max_problems=8", "logging.progress_bar=false", "checkpoint.every=0",
    ])  # fmt: skip
    assert code == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert {"reward/correct/mean", "reward/boxed/mean"} <= metrics[1].keys()
    report = json.loads((run / "evals" / "step_000002.json").read_text())
    assert report["verifier"] == ["correct", "boxed"] and set(report["subsets"]) <= {"1-digit", "2-digit", "3-digit"}
    assert report["problems"][0]["id"].startswith("test/")
