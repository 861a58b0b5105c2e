"""One RL step on its own (rl_step on a tiny random model and a task registered by the test), and the
hooks' cadence. The same steps driven by `loop.train` give the same numbers."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from rlvr_jax.config import load_config
from rlvr_jax.hooks import Hooks
from rlvr_jax.loop import prepare_policy, step_context, train, with_data_dir
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.rewards import RewardPool
from rlvr_jax.rollout import SamplingSpec
from rlvr_jax.step import StepRecord, decode_waste, rl_step
from rlvr_jax.tasks import Task, get_task, register
from rlvr_jax.update import init_train_state, make_optimizer, total_optimizer_steps
from rlvr_jax.writers import to_host
from tests.hf_fixtures import TINY_CONFIGS


@dataclasses.dataclass(frozen=True)
class DoublingTask(Task):
    """Twenty in-memory problems "What is i + i?"; a task as a user would write one."""

    def source(self, split, data_dir=None, manual_dir=None, **params):
        return [
            {"id": f"double/{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "subset": f"r{i % 2}"}
            for i in range(20)
        ]

    def rollout_counts(self, completions):
        return {"digit": float(sum(any(ch.isdigit() for ch in c) for c in completions))}


register(DoublingTask(name="doubling_for_tests", verifier="numeric", headline_subsets=("r1",)))
ARCH = {k: v for k, v in TINY_CONFIGS["qwen2"].items() if k != "max_position_embeddings"}


def _config(tmp_path, tokenizer_dir, *extra):
    overrides = [
        "data.task=doubling_for_tests",
        "reward.verifier=numeric",
        f"model.arch={json.dumps({'model_type': 'qwen2', **ARCH})}",
        f"model.tokenizer={tokenizer_dir}",
        "advantage.estimator=nsr",  # -1 on every wrong rollout: the update moves the random model for sure
        "optim.lr=1e-2",
        "data.prompts_per_step=4",
        "data.max_prompt_len=48",
        "rollout.group_size=4",
        "rollout.max_new_tokens=6",
        "run.steps=2",
        "eval.n=2",
        "eval.samples_per_pass=2",
        "eval.max_problems=4",
        "eval.batch_problems=4",
        "logging.progress_bar=false",
        "logging.dynamics_every=2",
        f"run.run_dir={tmp_path}",
        *extra,
    ]
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, tiny_tokenizer_dir):
    """rl_step driven by hand, twice, from a fresh state: (records, params before, params after)."""
    tmp = tmp_path_factory.mktemp("step")
    cfg = with_data_dir(_config(tmp, tiny_tokenizer_dir), tmp)
    task = get_task(cfg.data.task)
    mesh = make_mesh(cfg.mesh)
    policy, params = prepare_policy(cfg, task, tmp, mesh, print)
    tx = make_optimizer(cfg.optim, total_optimizer_steps(cfg.optim, cfg.run.steps))
    state = init_train_state(params, tx, mesh, TRAIN_RULES)
    before = jax.device_get(state.params)
    with RewardPool(cfg.reward) as pool:
        ctx = step_context(cfg, task, policy, params, state, tx, mesh, pool)
        records = []
        for step in range(cfg.run.steps):
            state, record = rl_step(ctx, state, step)
            records.append(record)
    return records, before, jax.device_get(state.params), int(state.step)


def test_rl_step_runs_the_stages_and_reports_the_step(two_steps):
    records, before, after, updates = two_steps
    assert [r.step for r in records] == [1, 2] and updates == 2
    for record in records:
        assert record.rollout.tokens.shape == (16, 6) and len(record.texts) == 16
        assert record.rewards.shape == (16,) and np.isin(record.rewards, [0.0, 1.0]).all()
        by_prompt = record.prompt_index.reshape(4, 4)
        assert (by_prompt == by_prompt[:, :1]).all()  # row b*G + g belongs to prompt b
        metrics = record.host_metrics
        assert 0.0 <= metrics["reward/mean"] <= 1.0 and 0.0 <= metrics["rollout/frac_digit"] <= 1.0
        assert metrics["time/step_s"] > 0 and {"loss", "entropy", "grad_norm"} <= record.device_metrics.keys()
        lengths = np.asarray(record.rollout.lengths)
        assert metrics["rollout/length_max"] == lengths.max()
        idle = (lengths.max() - lengths).sum() / (lengths.size * (lengths.max() - 1))
        assert metrics["rollout/finished_row_frac"] == pytest.approx(idle)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
    assert all(changed), "NSR's -1 on wrong rollouts must move every parameter"
    # Step k draws its own prompts: the two steps' prompt sets differ (a keyed permutation by step).
    assert set(records[0].prompt_index) != set(records[1].prompt_index)


def test_the_decode_waste_is_the_idle_row_steps_of_finished_rows():
    # Rows of 3, 1, 5, 5 tokens: prefill samples each first token, then 4 decode steps run all 4 rows
    # (16 row-steps); the rows need 2, 0, 4, 4 of them and idle through the other 6.
    assert decode_waste(needed=10, ran=16) == 6 / 16
    assert decode_waste(needed=0, ran=0) == 0.0  # no decode step at all
    # Compacted 2 rows at a time: all 4 rows run decode steps 1-2, then only the two 5-token rows run
    # steps 3-4: 8 + 4 = 12 row-steps.
    assert decode_waste(needed=10, ran=12) == 2 / 12


def test_train_is_setup_plus_rl_step(two_steps, tmp_path, tiny_tokenizer_dir):
    """loop.train's metrics rows equal the hand-driven steps' numbers, bit for bit."""
    records, *_ = two_steps
    summary = train(_config(tmp_path, tiny_tokenizer_dir), log=lambda _: None)
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for record, row in zip(records, rows[1:]):
        expected = {**to_host(record.device_metrics), **to_host(record.host_metrics)}
        for key, value in expected.items():
            if not key.startswith("time/"):
                assert row[key] == value, key
    assert "eval/pass@2/r1" in rows[2] and "eval/pass@2/r1" not in rows[1]  # eval at the end only


def test_a_compacting_run_draws_the_same_rollouts(two_steps, tmp_path, tiny_tokenizer_dir):
    """rollout.compact_rows through the loop: the same rollouts as the hand-driven plain steps. (This
    random model rarely stops before max_new_tokens; the saving is tested in tests/test_rollout.py.)"""
    records, *_ = two_steps
    cfg = _config(tmp_path, tiny_tokenizer_dir, "rollout.compact_rows=16")
    assert SamplingSpec.from_config(cfg.rollout, (0,), 0).compact_rows == 16
    train(cfg, log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    for record, row in zip(records, rows, strict=True):
        for key in (
            "reward/mean",
            "reward/correct_frac",
            "rollout/length_mean",
            "rollout/eos_frac",
            "rollout/length_max",
        ):
            assert row[key] == record.host_metrics[key], key
        assert row["rollout/finished_row_frac"] <= record.host_metrics["rollout/finished_row_frac"]


def _record(step: int, stopping: bool = False, **host) -> StepRecord:
    return StepRecord(step, {}, dict(host), np.zeros(0), None, [], np.zeros(0), [], stopping)


def test_hooks_run_in_order_at_their_cadence():
    calls = []
    hooks = Hooks(last_step=7)
    hooks.add("every_3", lambda r: calls.append(("every_3", r.step)), every=3)
    hooks.add("end_only", lambda r: calls.append(("end_only", r.step)), every=0)
    hooks.add("never_at_end", lambda r: calls.append(("never_at_end", r.step)), every=2, at_end=False)
    hooks.add("on_stop", lambda r: calls.append(("on_stop", r.step)), every=0, at_end=False, when=lambda r: r.stopping)
    for step in range(1, 8):
        hooks.run(_record(step, stopping=step == 5))
    assert hooks.names == ["every_3", "end_only", "never_at_end", "on_stop"]
    assert calls == [
        ("never_at_end", 2),
        ("every_3", 3),
        ("never_at_end", 4),
        ("on_stop", 5),
        ("every_3", 6),
        ("never_at_end", 6),
        ("every_3", 7),
        ("end_only", 7),
    ]
