"""The toy task's variants end to end (docs/algorithms.md section 6): the graded variant through the CLI
with a tiny warm start of its own, and the tie case; their rewards, probe and evaluation records."""

import json

import pytest

from rlvr_jax import cli

TINY = [
    "run.steps=2",
    "warmstart.steps=20",
    "warmstart.traces=256",
    "eval.max_problems=8",
    "eval.n=4",
    "eval.samples_per_pass=4",
    "eval.batch_problems=8",
    "data.prompts_per_step=4",
    "logging.probe_every=1",
    "logging.progress_bar=false",
    "logging.dynamics_every=2",
    "checkpoint.every=0",
    "logging.rollouts_every=1",
    "logging.rollouts_per_step=0",
]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def graded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("graded")
    assert cli.main(["train", "--config", "toy_graded", "--run-dir", str(out), *TINY]) == 0
    return out


def test_graded_variant_trains_end_to_end(graded_run):
    rows = _rows(graded_run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:  # the probe still reports the three strategies
        assert {"probe/pi_S1", "probe/pi_S2", "probe/pi_S3"} <= row.keys()
    for row in rows[1:]:
        assert 0.0 <= row["reward/mean"] <= 1.0 and row["update/skipped_total"] == 0
        # Only S2 is correct at the default threshold 1.0, and S2 is the only way to earn 1.
        assert row["reward/correct_frac"] <= row["reward/mean"] + 1e-6
    # Rewards are 0, 0.8 or 1 by strategy (every rollout of both steps is logged).
    logged = [json.loads(line) for line in (graded_run / "rollouts.jsonl").read_text().splitlines()]
    rewards = [x for step in logged for x in step["reward"]]
    assert len(rewards) == 2 * 4 * 8 and {round(x, 4) for x in rewards} <= {0.0, 0.8, 1.0}
    # No hard subset: every held-out problem is in the one "graded" subset.
    report = json.loads((graded_run / "evals" / "step_000002.json").read_text())
    assert set(report["subsets"]) == {"graded"} and {p["subset"] for p in report["problems"]} == {"graded"}
    assert report["subsets"]["graded"]["pass_at_k"] == report["pass_at_k"]
    # The warm start's choice traces were drawn on the variant's instances (its fingerprint says so).
    warm = json.loads((graded_run / "base_policy" / "warmstart.json").read_text())
    # `reward` is not in it: the traces do not depend on it (test_data), so the tie case shares this base.
    assert warm["fingerprint"]["task_args"] == {"hard_fraction": 0.0}


def test_tie_case_runs_and_probes(graded_run, tmp_path):
    # The tie case's own warm-start traces are checked in tests/test_data.py; here RL, the probe and the
    # evaluation run on its data, from the graded run's base policy (a second warm start costs minutes).
    base = graded_run / "base_policy"
    args = [*TINY, "run.steps=1", f"model.path={base}", "model.arch={}", "warmstart.enabled=false"]
    assert cli.main(["train", "--config", "toy_tie", "--run-dir", str(tmp_path), *args]) == 0
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1]
    assert {"probe/pi_S1", "probe/pi_S2", "probe/pi_S3"} <= rows[1].keys()
    report = json.loads((tmp_path / "evals" / "step_000001.json").read_text())
    assert set(report["subsets"]) == {"easy"}  # no hard subset: S1 and S2 both solve every instance


def test_bernoulli_golds_reach_the_reward_stage_per_sample(tmp_path):
    # The step's and the evaluator's `samples` ask the task for one gold per sample, keyed by the round.
    from rlvr_jax.step import samples
    from rlvr_jax.tasks import get_task

    task = get_task("toy_strategy")
    source = task.source("train", tmp_path, reward="bernoulli", hard_fraction=0.0, train_size=64, test_size=4)
    examples = [task.example(source[i], i) for i in range(16)]
    out = samples(task, examples, 8, ("train", 0, 5))
    assert len(out) == 128 and [s.gold for s in out[:8]] == task.targets(examples[0], 8, ("train", 0, 5))
    golds = [s.gold.partition("|")[2] for s in out]
    assert set(golds) == {"easy", "hard"} and golds != [
        s.gold.partition("|")[2] for s in samples(task, examples, 8, ())
    ]
    # Other variants: the one target of each instance, for every sample of its group.
    graded = task.source("train", tmp_path, reward="graded", hard_fraction=0.0, train_size=64, test_size=4)
    ex = task.example(graded[0], 0)
    assert [s.gold for s in samples(task, [ex], 4, ("train", 0, 5))] == [task.target(ex)] * 4
