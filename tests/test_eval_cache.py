"""eval.cache_dir: runs that start from one policy with one seed share one base evaluation, computed by
the first; anything the evaluation depends on changes the digest, and a damaged entry is evaluated again."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from rlvr_jax import cli
from rlvr_jax.config import ConfigError, load_config
from rlvr_jax.eval_cache import evaluation_digest
from rlvr_jax.rewards.functions import RewardFunction


def fake_evaluator(tmp_path, *overrides, weights=None, tokens=None, reward_code="def f(**kw): return 1.0\n"):
    """What the digest reads from an Evaluator: the config, the stop tokens, the rewards, the batches."""
    source = tmp_path / "rewards.py"
    source.write_text(reward_code)
    reward = RewardFunction("f", 1.0, "trl", "reward.functions[0]", target=f"{source}:f")
    batch = {"tokens": np.arange(6, dtype=np.int32).reshape(2, 3) if tokens is None else tokens}
    evaluator = SimpleNamespace(
        cfg=load_config(None, list(overrides)),
        stop=[2],
        pool=SimpleNamespace(functions=[reward]),
        batches=[((batch, [{"id": "a", "answer": "1"}, {"id": "b", "answer": "2"}]), 2)],
    )
    params = {"w": np.ones((2, 2), np.float32) if weights is None else weights, "b": np.zeros(2, np.float32)}
    return evaluator, params


def digest(tmp_path, *overrides, **kwargs):
    evaluator, params = fake_evaluator(tmp_path, *overrides, **kwargs)
    return evaluation_digest(evaluator, params, {"data": 1})


def test_the_digest_follows_what_the_evaluation_depends_on_and_nothing_else(tmp_path):
    base = digest(tmp_path)
    assert digest(tmp_path) == base
    # Where the evaluation runs from or how often a run evaluates do not change the base evaluation.
    assert digest(tmp_path, "eval.every=5", f"eval.cache_dir={tmp_path}", "run.steps=7") == base
    assert digest(tmp_path, "advantage.sign=negative_only", "optim.lr=0.5") == base
    # Nor where the checkout is: the reward file (made absolute at load) and eval.path, same contents.
    (tmp_path / "moved").mkdir()
    assert digest(tmp_path / "moved") == base
    files = ["data.source=jsonl", "data.path=train.jsonl"]
    assert digest(tmp_path, *files, "eval.path=/elsewhere/test.jsonl") == digest(
        tmp_path, *files, "eval.path=test.jsonl"
    )
    one_bit = np.ones((2, 2), np.float32)
    one_bit.view(np.uint32)[0, 0] ^= 1
    changed = {
        "a weight, by one bit": digest(tmp_path, weights=one_bit),
        "a weight's dtype": digest(tmp_path, weights=np.ones((2, 2), np.float64)),
        "the seed": digest(tmp_path, "run.seed=1"),
        "eval.n": digest(tmp_path, "eval.n=32"),
        "eval.temperature": digest(tmp_path, "eval.temperature=1.0"),
        "rollout.max_new_tokens": digest(tmp_path, "rollout.max_new_tokens=9"),
        "a prompt token": digest(tmp_path, tokens=np.array([[0, 1, 2], [3, 4, 6]], np.int32)),
        "the reward's code": digest(tmp_path, reward_code="def f(**kw): return 0.0\n"),
        "the model's dtype": digest(tmp_path, "model.dtype=bfloat16"),
    }
    assert all(value != base for value in changed.values()), [k for k, v in changed.items() if v == base]
    assert len(set(changed.values())) == len(changed)


def test_a_gcs_cache_folder_is_one_line():
    with pytest.raises(ConfigError, match=r"eval.cache_dir='gs://b/c'.*local folder"):
        load_config(None, ["eval.cache_dir=gs://b/c"])


@pytest.mark.slow
def test_runs_of_one_seed_share_the_base_evaluation_and_it_equals_an_uncached_one(tmp_path, toy_base, capsys):
    folder, data = toy_base
    cache = tmp_path / "cache"
    args = [
        f"model.path={folder}", "model.arch={}", "warmstart.enabled=false", f"data.data_dir={data}",
        "run.steps=1", "data.prompts_per_step=4", "rollout.group_size=4", "eval.max_problems=8", "eval.n=4",
        "logging.progress_bar=false", "logging.tensorboard=false", "reward.workers=1",
    ]  # fmt: skip

    def train(name, *extra):
        assert cli.main(["train", "--run-dir", str(tmp_path / name), *args, *extra]) == 0
        return json.loads((tmp_path / name / "evals" / "step_000000.json").read_text())

    first = train("full", f"eval.cache_dir={cache}")
    assert "base evaluation stored in" in capsys.readouterr().out
    [entry] = cache.iterdir()
    negative = train("negative", f"eval.cache_dir={cache}", "advantage.sign=negative_only")
    assert f"base evaluation read from {entry}" in capsys.readouterr().out
    assert negative == first and list(cache.iterdir()) == [entry]
    assert train("uncached") == first  # what the cache gave is what evaluating gives

    train("seed1", f"eval.cache_dir={cache}", "run.seed=1")  # another seed: other draws, its own entry
    assert len(list(cache.iterdir())) == 2
    entry.write_text('{"pass_at_k": ')  # a damaged entry: evaluated again and replaced
    assert train("again", f"eval.cache_dir={cache}") == first
    assert json.loads(entry.read_text())["pass_at_k"] == first["pass_at_k"]
    assert "base evaluation stored in" in capsys.readouterr().out


def test_fake_evaluator_fields_match_the_evaluator():
    # The digest reads these attributes of rlvr_jax.evaluate.Evaluator; a rename there must fail here too.
    import inspect

    from rlvr_jax.evaluate import Evaluator

    source = inspect.getsource(Evaluator.__init__)
    for name in ("self.stop", "self.batches", "self.pool", "self.cfg"):
        assert name in source, name
