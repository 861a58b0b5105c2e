"""The default pipeline, shortened, end to end through the CLI: warm start, RL steps, run directory."""

import json

import numpy as np
import pytest

from rlvr_jax import cli

SHORT = [
    "run.steps=3",
    "eval.every=2",
    "loss.kl_beta=0.01",
    "warmstart.steps=30",
    "warmstart.traces=512",
    "eval.max_problems=16",
    "eval.n=4",
    "data.prompts_per_step=4",
    "logging.probe_every=1",
    "logging.progress_bar=false",
    "logging.dynamics_every=2",
]
REQUIRED = {"step", "reward/mean", "reward/correct_frac", "loss", "entropy", "time/tokens_per_s"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "--run-dir", str(out), *SHORT]) == 0
    return out


def test_run_directory_layout(run_dir):
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "base_policy" / "config.json").is_file()
    assert (run_dir / "base_policy" / "tokenizer.json").is_file()
    assert any((run_dir / "tensorboard").iterdir())
    for name in ("training", "probe", "dynamics", "pass_at_k", "boundary"):
        assert (run_dir / "figures" / f"{name}.png").stat().st_size > 10_000, name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    base, rows = rows[0], rows[1:]  # step 0: the base policy's evaluation and probe
    assert {"eval/pass@1", "eval/pass@4", "eval/pass@4/hard", "probe/pi_S2"} <= base.keys() and "loss" not in base
    probe_keys = {f"probe/{k}" for c in ("S1", "S2", "S3") for k in (f"pi_{c}", f"logit_{c}", f"zc_{c}")}
    probe_keys |= {"probe/pi_rest", "probe/entropy"} | {
        f"probe/{k}/{s}" for k in ("pi_S2", "entropy") for s in ("hard", "easy")
    }
    assert probe_keys <= base.keys() and "stage/onset" not in base  # the detector reads step 0 as its base
    for subset in ("hard", "easy"):  # per subset the classes and the rest sum to 1 as overall
        assert sum(base[f"probe/pi_{c}/{subset}"] for c in ("S1", "S2", "S3", "rest")) == pytest.approx(1.0, abs=1e-4)
    assert 0 < base["probe/entropy"] < np.log(512)
    for row in rows:
        assert row.keys() >= REQUIRED
        assert 0.0 <= row["reward/mean"] <= 1.0 and row["time/tokens_per_s"] > 0
        assert probe_keys <= row.keys() and row["stage/onset"] in (0.0, 1.0)
        assert "advantage/phase" not in row  # logged only with an advantage.schedule
        assert row["update/skipped_total"] == 0
        assert row["kl"] is not None and abs(row["kl"]) < 1.0  # KL to the frozen initial policy
    # eval.every=2, and at the end; each evaluation's per-problem record is in evals/
    assert ["eval/pass@4/hard" in r for r in rows] == [False, True, True]
    assert sorted(p.name for p in (run_dir / "evals").iterdir()) == [f"step_{k:06d}.json" for k in (0, 2, 3)]
    report = json.loads((run_dir / "evals" / "step_000003.json").read_text())
    assert report["n"] == 4 and len(report["problems"]) == 16 and set(report["pass_at_k"]) == {"1", "2", "4"}
    assert report["pass_at_k"]["1"] == rows[-1]["eval/pass@1"]
    # held-out entropy and the 1/k diagnostic, in the record and in the metrics row
    assert set(report["above_1_over_k"]) == {"2", "4"} and report["entropy"] == rows[-1]["eval/entropy"] > 0
    for row in (base, rows[-1]):
        assert {
            "eval/entropy",
            "eval/entropy/hard",
            "eval/above_1_over_k@2",
            "eval/above_1_over_k@4/hard",
        } <= row.keys()
    fraction = np.mean([p["c"] * 4 > 4 for p in report["problems"]])  # c/n > 1/k at n = k = 4
    assert rows[-1]["eval/above_1_over_k@4"] == pytest.approx(fraction)
    assert all(p["tokens"] > 0 and p["entropy"] >= 0 for p in report["problems"])
    # per-sign statistics every step, the post-update pass every logging.dynamics_every=2 steps
    assert all({"dyn/pi_old/pos", "dyn/rare/neg", "dyn/nonzero_adv_token_frac"} <= r.keys() for r in rows)
    assert len(rows[0]["dyn/hist/neg"]) == 10
    assert ["dyn/dlogp/neg" in r for r in rows] == [False, True, False]
    assert abs(rows[1]["dyn/sampler_mismatch/mean"]) < 1e-4  # f32 on CPU: sampler and trainer agree
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["step"] for e in summary["pass_at_k_over_training"]] == [0, 2, 3]
    assert summary["boundary_over_training"][0]["gained"] == 0 and "transition" in summary["stages"]
    assert summary["steps"] == 3 and summary["advantage"] == {"estimator": "grpo", "sign": "full"}
    assert "onset_step" in summary["stages"] and summary["stages"]["online"]["rare_classes"] == ["S2"]
    assert "online detector" in summary["stages"]["online_summary"] and "advantage_schedule" not in summary
    for stage in ("base", "final"):
        probs = [summary[stage][f"probe/pi_{c}"] for c in ("S1", "S2", "S3", "rest")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert "eval/correct_frac/hard" in summary[stage]


def test_resolved_config_reloads(run_dir):
    from rlvr_jax.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    assert cfg.run.steps == 3 and cfg.run.run_dir == str(run_dir)


def test_second_run_reuses_the_base_policy(run_dir, capsys):
    stamp = (run_dir / "base_policy" / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["train", "--run-dir", str(run_dir), *SHORT, "run.steps=1"]) == 0
    assert "reusing the base policy" in capsys.readouterr().out
    assert (run_dir / "base_policy" / "model.safetensors").stat().st_mtime_ns == stamp


def test_bad_override_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="rollout.temprature"):
        cli.main(["train", "--run-dir", str(tmp_path), "rollout.temprature=0.5"])


def test_plot_command_rewrites_the_figures(run_dir, capsys):
    (run_dir / "figures" / "probe.png").unlink()
    assert cli.main(["plot", str(run_dir)]) == 0
    assert str(run_dir / "figures" / "probe.png") in capsys.readouterr().out
    assert (run_dir / "figures" / "probe.png").is_file()


def test_plot_of_a_non_run_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="metrics.jsonl is missing or empty"):
        cli.main(["plot", str(tmp_path)])
