"""`rlvr-jax sweep`: the study spec, the plan (shared base policies), the statistics, the table read back from
run folders, and one real tiny sweep that is stopped half-way and resumed."""

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlvr_jax import cli
from rlvr_jax.cli import sweep as sweep_cli
from rlvr_jax.cli.sweep import add_sweep_parser, study_from_args
from rlvr_jax.config import ConfigError, load_config, save_config
from rlvr_jax.sweep import figures, spec, stats, table
from rlvr_jax.sweep import runner as runner_mod
from rlvr_jax.sweep.plan import FAILED, failure, make_plan, stale, vary_base_seed
from rlvr_jax.sweep.runner import Runner, child_env, cpu_count, cpu_slots, run_all
from rlvr_jax.warmstart import fingerprint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_file_describes_runs_that_validate(path, monkeypatch):
    # A study's config paths are relative to the repository root, where `rlvr-jax sweep studies/X.yaml` runs.
    monkeypatch.chdir(ROOT)
    study = spec.make_study(spec.read_sweep_file(path), {})
    assert study.combos and study.seeds
    for combo in study.combos:
        load_config(study.config, (*study.overrides, *combo.overrides))


# --- statistics ----------------------------------------------------------------------------------


def test_wilson_interval_matches_hand_computed_values():
    # By hand, z = 1.96, n = 16: z^2/n = 0.24009, so (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / 1.24009.
    hand = {0: (0.0, 0.19361), 8: (0.28000, 0.72000), 15: (0.71671, 0.98888), 16: (0.80639, 1.0)}
    for k, interval in hand.items():
        assert stats.wilson(k, 16) == pytest.approx(interval, abs=2e-5), k
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=2e-5)  # the textbook 0 of 10
    assert stats.wilson(0, 0) is None
    for n in range(1, 41):  # every interval holds its own fraction, exactly at 0/n and n/n
        assert all(lo <= k / n <= hi for k in range(n + 1) for lo, hi in [stats.wilson(k, n)]), n
    with pytest.raises(ValueError):
        stats.wilson(5, 4)


def test_mean_sd_and_median_range():
    assert stats.mean_sd([1.0, 2.0, 3.0, 4.0]) == {"n": 4, "mean": 2.5, "sd": pytest.approx(1.290994)}
    assert stats.mean_sd([0.5]) == {"n": 1, "mean": 0.5, "sd": None}
    assert stats.median_range([80, 60, 95]) == {"n": 3, "median": 80.0, "min": 60.0, "max": 95.0}
    assert stats.median_range([])["median"] is None


# --- the study spec --------------------------------------------------------------------------------


def test_seeds_parse_ranges_and_lists():
    assert spec.parse_seeds("0-3,8") == (0, 1, 2, 3, 8)
    assert spec.parse_seeds("0,1,2") == (0, 1, 2)
    assert spec.parse_seeds([5, 2, 5]) == (5, 2)
    assert spec.parse_seeds(7) == (7,)
    for bad in ("3-1", "a", "", True):
        with pytest.raises(spec.SweepSpecError):
            spec.parse_seeds(bad)


def test_a_grid_and_named_combinations():
    grid = spec.grid_combos(
        [
            spec.parse_grid_axis("advantage.estimator=grpo,nsr"),
            spec.parse_grid_axis("advantage.sign=full,negative_only"),
        ]
    )
    assert [c.name for c in grid] == [
        "estimator=grpo sign=full",
        "estimator=grpo sign=negative_only",
        "estimator=nsr sign=full",
        "estimator=nsr sign=negative_only",
    ]
    assert grid[1].overrides == ("advantage.estimator=grpo", "advantage.sign=negative_only")
    assert grid[1].folder == "estimator=grpo_sign=negative_only"
    assert spec.parse_grid_axis("warmstart.prior=[0.3,0.02,0.68],[0.2,0.1,0.7]")[1] == [
        "[0.3,0.02,0.68]",
        "[0.2,0.1,0.7]",
    ]
    named = spec.parse_combo("GRPO-N=advantage.estimator=grpo advantage.sign=negative_only")
    assert named == spec.Combo("GRPO-N", ("advantage.estimator=grpo", "advantage.sign=negative_only"))
    crossed = spec.cross([named], spec.grid_combos([spec.parse_grid_axis("optim.lr=0.001,0.003")]))
    assert [c.name for c in crossed] == ["GRPO-N lr=0.001", "GRPO-N lr=0.003"]
    assert crossed[0].overrides[-1] == "optim.lr=0.001"
    assert spec.cross([], []) == (spec.Combo("default", ()),)
    for bad in ("advantage.sign=negative_only", "NAME", "N=advantage.sign"):  # no name, no '=', no value
        with pytest.raises(spec.SweepSpecError):
            spec.parse_combo(bad)
    with pytest.raises(spec.SweepSpecError, match="share a folder"):
        spec.cross([spec.Combo("a b", ()), spec.Combo("a_b", ())], [])


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_a_sweep_file_with_flags_over_it_and_the_command_that_regenerates_it(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "config: toy_strategy\nseeds: 0-3\nout: runs/x\nname: signs\noverrides: [run.steps=40]\n"
        "combos:\n  GRPO: advantage.estimator=grpo\n  GRPO-N: [advantage.estimator=grpo, advantage.sign=negative_only]\n"
        "grid:\n  optim.lr: [0.001, 0.003]\n"
    )
    study = study_from_args(_parse(["sweep", str(path), "eval.n=8", "--seeds", "0,1"]))
    assert study.seeds == (0, 1) and study.name == "signs" and study.out == Path("runs/x")
    assert study.overrides == ("run.steps=40", "eval.n=8")
    assert [c.name for c in study.combos] == ["GRPO lr=0.001", "GRPO lr=0.003", "GRPO-N lr=0.001", "GRPO-N lr=0.003"]
    # The printed command describes the same study without the file.
    again = study_from_args(_parse(shlex.split(spec.command(study))[1:]))
    assert again == study
    path.write_text("config: toy_strategy\nseed: 3\n")
    with pytest.raises(spec.SweepSpecError, match="unknown keys"):
        study_from_args(_parse(["sweep", str(path)]))


# --- the plan ------------------------------------------------------------------------------------

TINY = [
    "warmstart.steps=30",
    "warmstart.traces=256",
    "run.steps=2",
    "data.prompts_per_step=4",
    "rollout.group_size=4",
    "eval.max_problems=8",
    "eval.n=4",
    "eval.samples_per_pass=4",
    "logging.probe_every=1",
    "logging.tensorboard=false",
    "reward.workers=1",
]


def _study(out, seeds=(0, 1), vary_base=False, combos=None):
    combos = combos or (
        spec.Combo("full", ("advantage.sign=full",)),
        spec.Combo("neg", ("advantage.sign=negative_only",)),
    )
    return spec.Study("toy_strategy", tuple(seeds), tuple(combos), Path(out), tuple(TINY), vary_base, "test")


def _config(run):
    return load_config("toy_strategy", run.overrides)


def test_the_runs_share_one_base_policy_per_warm_start_setting(tmp_path):
    plan = make_plan(_study(tmp_path, seeds=(0, 1, 2)))
    assert len(plan.bases) == 1 and len(plan.runs) == 6 and len(plan.datasets) == 1
    assert [(r.combo.name, r.seed) for r in plan.runs[:3]] == [("full", 0), ("neg", 0), ("full", 1)]  # seed-major
    for run in plan.runs:
        cfg = _config(run)
        assert cfg.run.seed == run.seed and cfg.warmstart.seed == 0 and not cfg.warmstart.enabled
        assert cfg.model.path == str(plan.bases[0].folder) and cfg.data.data_dir == str(tmp_path / "datasets")
        assert cfg.eval.cache_dir == str(tmp_path / "eval_cache")  # one base evaluation per seed, shared
    # A combination that changes a warm-start setting gets a base of its own; one with a model needs none.
    lr = spec.Combo("lr", ("warmstart.lr=0.02",))
    model = spec.Combo("model", (f"model.path={tmp_path}", "model.arch={}", "warmstart.enabled=false"))
    plan = make_plan(_study(tmp_path, combos=(spec.Combo("a", ()), lr, model)))
    assert len(plan.bases) == 2 and all(r.base is None for r in plan.runs if r.combo == model)


def test_vary_base_warm_starts_each_seed_with_its_own_trace_streams(tmp_path):
    plan = make_plan(_study(tmp_path, seeds=(3, 4), vary_base=True))
    # Warm-start seed s draws trace streams s and s + 1: seed k gets 2k, so no two bases share a stream.
    assert [b.key.split("-")[0] for b in plan.bases] == ["seed6", "seed8"]
    assert {(_config(r).run.seed, _config(r).warmstart.seed) for r in plan.runs} == {(3, 6), (4, 8)}
    streams = [{s, s + 1} for s in (vary_base_seed(k) for k in range(16))]
    assert all(not a & b for i, a in enumerate(streams) for b in streams[i + 1 :])


def test_bases_from_reads_another_studys_bases_and_starts_every_run_from_step_zero(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    base_plan = make_plan(_study(first, seeds=(3, 4), vary_base=True))
    with pytest.raises(ConfigError, match=r"--bases-from .*first: not a study folder \(no study.json\)"):
        make_plan(_bases_from(second, first))
    (first / "study.json").parent.mkdir(parents=True)
    (first / "study.json").write_text("{}")
    plan = make_plan(_bases_from(second, first))
    assert [b.folder for b in plan.bases] == [b.folder for b in base_plan.bases]  # the same folders, under first/
    for run in plan.runs:
        cfg = _config(run)
        assert run.source is None and run.run_dir.is_relative_to(second)  # a new run, in this study's folder
        assert cfg.model.path.startswith(str(first / "base_policy")) and cfg.data.data_dir == str(first / "datasets")
        assert cfg.optim.lr == 3e-4
    again = study_from_args(_parse(shlex.split(spec.command(plan.study))[1:]))
    assert again.bases_from == first
    with pytest.raises(spec.SweepSpecError, match="--bases-from and --extends: give one"):
        spec.make_study({}, {"config": "toy_strategy", "seeds": "0", "out": "x", "extends": "a", "bases_from": "b"})


def _bases_from(out, bases):
    combo = spec.Combo("lr", ("optim.lr=3e-4",))
    study = _study(out, seeds=(3, 4), vary_base=True, combos=(combo,))
    return dataclasses.replace(study, bases_from=bases)


def test_warmstart_seed_defaults_to_run_seed():
    plain = load_config("toy_strategy", ["run.seed=3"])
    assert fingerprint(plain) == fingerprint(load_config("toy_strategy", ["warmstart.seed=3"]))
    assert fingerprint(plain) != fingerprint(load_config("toy_strategy", ["run.seed=3", "warmstart.seed=4"]))
    # Without warmstart.seed the fingerprint is the one cached folders already carry (no new field in it).
    assert "seed" not in fingerprint(plain)["warmstart"] and fingerprint(plain)["seed"] == 3


# --- the table from run folders --------------------------------------------------------------------


def _fake_run(run, *, onset=None, reward=0.9, hard=0.5, entropy=None, online=False, pi_rare=(0.02, 0.01, 0.5)):
    """summary.json and metrics.jsonl as a finished run writes them (only the fields the table reads)."""
    run.run_dir.mkdir(parents=True)
    final = {"eval/reward_mean": reward, "eval/correct_frac/hard": hard, "eval/correct_frac/easy": 1.0}
    final.update({"eval/pass@1": reward, "eval/pass@4": reward + 0.05, "eval/pass@4/hard": hard + 0.1})
    final.update({"probe/pi_A": 0.5, "probe/pi_B": pi_rare[-1], "probe/pi_B/hard": 0.9})
    final.update({"probe/entropy": entropy} if entropy else {})
    stages = {"transition": onset is not None, "rare_classes": ["B"]} | ({"step": onset} if onset else {})
    stages |= {"onset_step": onset, "online": {"rare_to": pi_rare[1]}} if online and onset else {}
    stages |= {"onset_step": onset} if online and not onset else {}
    summary = {"steps": run.steps, "final": final, "stages": stages, "seconds_this_session": 1.0}
    (run.run_dir / "summary.json").write_text(json.dumps(summary))
    rows = [{"step": s, "probe/pi_A": 0.9, "probe/pi_B": p} for s, p in zip((0, 1, 2), pi_rare)]
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_table_from_run_folders(tmp_path):
    plan = make_plan(_study(tmp_path, seeds=(0, 1, 2, 3)))
    by = {(r.combo.name, r.seed): r for r in plan.runs}
    for seed, onset in enumerate([40, None, 80, 60]):
        _fake_run(by["full", seed], onset=onset, reward=0.9 + 0.02 * seed, hard=0.5, pi_rare=(0.02, 0.01, 0.1 * seed))
    for seed in range(3):  # neg seed 3 is missing (not run yet)
        _fake_run(by["neg", seed], reward=0.8, hard=0.0, entropy=0.1 * (seed + 1))
    result = table.summarize(plan, ["hard"])
    full, neg = result["combos"]
    assert result["stage2_source"] == "transition" and result["missing"] == ["neg seed 3"]
    assert (result["complete"], result["planned"]) == (7, 8)
    assert full["stage2"]["reached"] == 3 and full["stage2"]["n"] == 4
    assert full["stage2"]["wilson95"] == pytest.approx(list(stats.wilson(3, 4)))
    assert full["onset_step"] == {"n": 3, "median": 60.0, "min": 40.0, "max": 80.0}
    assert full["reward"]["mean"] == pytest.approx(0.93) and full["reward"]["sd"] == pytest.approx(0.0258199, abs=1e-6)
    assert full["k"] == 4 and full["pass_at_k_subsets"]["hard"]["mean"] == pytest.approx(0.6)
    assert full["entropy"]["n"] == 0 and neg["entropy"]["mean"] == pytest.approx(0.2)
    assert neg["stage2"]["reached"] == 0 and neg["complete"] == 3 and neg["onset_step"]["n"] == 0
    markdown = table.to_markdown(result, "rlvr-jax sweep ...")
    assert "7 of 8 runs complete (not run or not finished: neg seed 3)" in markdown and "RL-seed variance" in markdown
    assert "| full | 4/4 | 0.75 [0.30, 0.95] (3/4) | 60 [40, 80] | 0.930 ± 0.026 | 0.500 ± 0.000 |" in markdown
    assert "| pass@4 | pass@4 hard | entropy | probe at end (median) |" in markdown
    assert "n/a | A 0.5, B 0.15 |\n| neg | 3/4 |" in markdown
    assert "0.200 ± 0.100 | A 0.5, B 0.5 |\n" in markdown  # the entropy of the runs that report it
    assert full["probe_final"]["B"] == pytest.approx({"n": 4, "median": 0.15, "min": 0.0, "max": 0.3})
    made = figures.draw(result, tmp_path / "figures")
    assert sorted(p.name for p in made) == ["probe_bands.png", "stage2.png"] and all(p.stat().st_size for p in made)
    assert figures.seed_series([r for r in result["runs"] if r["combo"] == "full"])[1]["B"].shape == (4, 3)


def test_the_stage2_source_is_the_online_onset_when_every_run_has_it(tmp_path):
    plan = make_plan(_study(tmp_path, seeds=(0, 1)))
    for run in plan.runs:
        # The online detector says 30 where the end-of-run one says nothing (or another step).
        _fake_run(run, onset=30 if run.seed == 0 else None, online=True)
    summaries = [json.loads((r.run_dir / "summary.json").read_text()) for r in plan.runs]
    summaries[1]["stages"]["transition"] = False
    assert table.choose_source(summaries) == "onset_step"
    assert table.choose_source(summaries[:1] + [{"stages": {"transition": True}}]) == "transition"
    result = table.summarize(plan, ["hard"])
    assert result["stage2_source"] == "onset_step" and "online detector" in table.to_markdown(result)
    assert [row["stage2"]["reached"] for row in result["combos"]] == [1, 1]
    assert table.summarize(plan, ["hard"], "transition")["stage2_source"] == "transition"
    with pytest.raises(ValueError, match="unknown stage-2 source"):
        table.summarize(plan, ["hard"], "peak")


def test_an_onset_that_stalls_is_not_a_takeover(tmp_path):
    """The online onset (the rare class rising while the leader falls) in every run, but in seed 2 the
    rare class never leads: stage 2 3/3, rare class leading at the end 2/3, both in the table."""
    plan = make_plan(_study(tmp_path, seeds=(0, 1, 2)))
    for run in plan.runs:
        _fake_run(run, onset=30, online=True)
        if run.seed == 2:
            path = run.run_dir / "summary.json"
            summary = json.loads(path.read_text())
            summary["stages"]["transition"] = False
            path.write_text(json.dumps(summary))
    result = table.summarize(plan, ["hard"])
    full = result["combos"][0]
    assert (full["stage2"]["reached"], full["stage2"]["n"]) == (3, 3)
    assert (full["takeover"]["reached"], full["takeover"]["n"]) == (2, 3)
    assert full["takeover"]["wilson95"] == pytest.approx(list(stats.wilson(2, 3)))
    markdown = table.to_markdown(result)
    assert full["onset_level"] == {"n": 3, "median": 0.01, "min": 0.01, "max": 0.01}
    assert full["takeover_step"] == {"n": 2, "median": 30.0, "min": 30.0, "max": 30.0}  # seed 2 never leads
    header = (
        "| stage 2 [95 % CI] | onset step | rare class at onset | rare class leads at end [95 % CI] | leads from step |"
    )
    assert header + " reward |" in markdown
    cells = "| full | 3/3 | 1.00 [0.44, 1.00] (3/3) | 30 [30, 30] | 0.01 [0.01, 0.01] | 0.67 [0.21, 0.94] (2/3) | 30 [30, 30] |"
    assert cells in markdown
    # With the end-of-run detector as the stage-2 source the column would repeat it: not shown.
    assert "rare class leads" not in table.to_markdown(table.summarize(plan, ["hard"], "transition"))


def test_the_table_rejudges_a_collapse_its_summary_called_a_takeover(tmp_path):
    """summary.json (written before the rest-mass rule) says the rare class B took over at step 30, but
    its probe readings show the mass left both classes (rest 0.99997): the table re-runs the detector."""
    plan = make_plan(_study(tmp_path, seeds=(0, 1)))
    for run in plan.runs:
        _fake_run(run, onset=30)
    collapsed = plan.runs[0]
    rows = [
        {"step": s, "probe/pi_A": a, "probe/pi_B": b, "probe/pi_rest": r}
        for s, a, b, r in [(0, 0.9, 0.02, 0.08), (1, 0.5, 0.01, 0.49), (2, 1e-5, 2e-5, 0.99997)]
    ]
    (collapsed.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = table.summarize(plan, ["hard"])
    by_run = {(r["combo"], r["seed"]): r for r in result["runs"]}
    assert by_run[collapsed.combo.name, collapsed.seed]["stage2"]["reached"] is False
    assert table.end_of_run_stage(collapsed.run_dir) == {"transition": False, "step": None, "rare_classes": ["B"]}
    # The other runs logged no rest mass: their summaries' own reports stand.
    others = [r for key, r in by_run.items() if key != (collapsed.combo.name, collapsed.seed)]
    assert all(r["stage2"]["reached"] for r in others) and table.end_of_run_stage(plan.runs[1].run_dir) == {}


# --- a real sweep ----------------------------------------------------------------------------------


def _sweep_command(out):
    return [
        *["sweep", "--config", "toy_strategy", "--seeds", "0-1", "--out", str(out), "--jobs", "2"],
        *["--combo", "full=advantage.sign=full", "--combo", "neg=advantage.sign=negative_only", *TINY],
    ]


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("runs/*/seed*/summary.json"))}


@pytest.mark.slow
def test_a_tiny_sweep_stopped_half_way_resumes_without_redoing_finished_runs(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "rlvr_jax.cli", *_sweep_command(out)], env=env)
    deadline = time.time() + 900
    while not _mtimes(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # the first runs just finished; the others are running or queued
    assert proc.wait(timeout=600) == 130
    finished = _mtimes(out)
    assert 1 <= len(finished) < 4
    partial = json.loads((out / "table.json").read_text())
    assert partial["complete"] == len(finished) and len(partial["missing"]) == 4 - len(finished)

    assert cli.main(_sweep_command(out)) == 0  # the same command continues
    assert {p: _mtimes(out)[p] for p in finished} == finished  # finished runs were not redone
    bases = list((out / "base_policy").iterdir())
    assert len(bases) == 1  # built once, by the first sweep
    assert len(list((out / "eval_cache").glob("*.json"))) == 2  # one base evaluation per seed
    for run_dir in out.glob("runs/*/seed*"):
        cfg = load_config(run_dir / "config.yaml")
        assert cfg.model.path == str(bases[0] / "policy") and not cfg.warmstart.enabled
    done = json.loads((out / "table.json").read_text())
    assert done["complete"] == 4 and not done["missing"] and [r["complete"] for r in done["combos"]] == [2, 2]
    assert "4 of 4 runs complete" in (out / "table.md").read_text()
    assert (out / "figures" / "probe_bands.png").is_file() and (out / "figures" / "stage2.png").is_file()


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _metrics(run_dir):
    """metrics.jsonl without the wall-clock metrics (all under time/)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.mark.slow
def test_extends_continues_the_finished_runs_in_copies_as_an_uninterrupted_run_would(tmp_path):
    short, long, alone = tmp_path / "short", tmp_path / "long", tmp_path / "alone"
    sweep = ["sweep", "--config", "toy_strategy", "--seeds", "0", "--jobs", "1", "--combo", "full=advantage.sign=full"]
    extend = ["--out", str(long), "--extends", str(short), *TINY, "run.steps=4"]
    assert cli.main([*sweep, "--out", str(short), *TINY]) == 0  # TINY: run.steps=2
    before = _files(short / "runs")

    # Not finished there yet: the run is marked failed (naming why) and the same command retries it later.
    (short / "runs" / "full" / "seed0" / "summary.json").rename(short / "hidden.json")
    assert cli.main([*sweep, *extend]) == 1
    assert "has not finished: complete that study first" in failure(make_plan(_long_study(long, short)).runs[0])["why"]
    (short / "hidden.json").rename(short / "runs" / "full" / "seed0" / "summary.json")

    assert cli.main([*sweep, *extend]) == 0
    assert _files(short / "runs") == before  # the short study is left as it was
    assert not (long / "base_policy").exists()  # its base policy is reused, not rebuilt
    extended = long / "runs" / "full" / "seed0"
    assert json.loads((extended / "summary.json").read_text())["steps"] == 4
    assert "--extends" in json.loads((long / "study.json").read_text())["command"]

    # The same 4 steps in one go, from the same base policy: the same numbers at every step.
    run = make_plan(_long_study(long, short)).runs[0]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "rlvr_jax.cli", "train", "--config", "toy_strategy", "--run-dir", str(alone)]
    subprocess.run([*command, *run.overrides], env=env, check=True, capture_output=True)
    continued, uninterrupted = _metrics(extended), _metrics(alone)
    assert [row["step"] for row in continued] == [0, 1, 2, 3, 4]
    continued[2] = {k: v for k, v in continued[2].items() if not k.startswith("eval/")}  # the short run's last eval
    assert continued == uninterrupted


def _long_study(long, short):
    combo = spec.Combo("full", ("advantage.sign=full",))
    return spec.Study("toy_strategy", (0,), (combo,), long, (*TINY, "run.steps=4"), extends=short)


def test_the_runner_reports_status_and_cpu_time_and_stops_its_children(tmp_path):
    runner = Runner(1, tmp_path, log=lambda _: None)
    code, cpu = runner.call([sys.executable, "-c", "import sys; sum(range(10**7)); sys.exit(3)"], tmp_path / "a.log")
    assert code == 3 and cpu > 0.05 and "$ " in (tmp_path / "a.log").read_text()
    result = {}
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    thread = threading.Thread(target=lambda: result.update(r=runner.call(sleeper, tmp_path / "b.log")))
    thread.start()
    while not runner.live:
        time.sleep(0.05)
    runner.stop()  # SIGTERM, and back once the child is reaped
    thread.join(10)
    assert result["r"][0] == -signal.SIGTERM
    assert runner.call(sleeper, tmp_path / "c.log")[0] == -signal.SIGTERM  # nothing starts after a stop
    env = child_env(2, tmp_path / "cache", {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cache")
    single = max(1, cpu_count() // 2) == 1
    assert ("--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]) == single and "device_count=8" in env["XLA_FLAGS"]


def test_cpu_slots_are_disjoint_and_a_pinned_process_sees_only_its_own(tmp_path):
    assert cpu_slots(2, [0, 1]) == [[0], [1]]
    assert cpu_slots(2, [0, 1, 2, 3, 5]) == [[0, 1], [2, 3]]
    assert cpu_slots(3, [4, 7]) == [[4], [7], [4]]  # more jobs than CPUs: shared round-robin
    (tmp_path / "affinity.py").write_text("import os, sys\nprint(sorted(os.sched_getaffinity(0)))\nsys.exit(3)\n")
    runner = Runner(2, tmp_path, log=lambda _: None)
    runner.env["PYTHONPATH"] = str(tmp_path)
    command = [sys.executable, "-m", "affinity"]
    logs = [tmp_path / f"{i}.log" for i in range(2)]
    tasks = [(str(i), lambda i=i: runner_mod._timed(str(i), lambda: runner.call(command, logs[i]))) for i in range(2)]
    outcomes = runner.map(tasks)
    assert [o.code for o in outcomes] == [3, 3]  # the exit status comes through the pinning wrapper
    seen = [json.loads(log.read_text().splitlines()[-1]) for log in logs]
    assert sorted(seen) == sorted(cpu_slots(2))  # each process on its slot's CPUs, no two on one


def _fake_train(done_seeds, steps):
    """train_command's stand-in: seeds in done_seeds write summary.json, the others fail with one line."""

    def command(plan, run):
        if run.seed in done_seeds:
            code = (
                f"import json; open({str(run.run_dir / 'summary.json')!r}, 'w').write(json.dumps({{'steps': {steps}}}))"
            )
        else:
            code = "import sys; print('rlvr-jax train: invalid config: something named'); sys.exit(2)"
        return [sys.executable, "-c", code]

    return command


def test_a_failed_run_is_reported_not_dropped(tmp_path, monkeypatch, capsys):
    combos = (spec.Combo("a", ()), spec.Combo("lr", ("warmstart.lr=0.02",)))
    plan = make_plan(_study(tmp_path, seeds=(0, 1), combos=combos))
    built, unbuilt = plan.bases  # the second base "failed to build": no warmstart.json
    built.folder.mkdir(parents=True)
    (built.folder / "warmstart.json").write_text("{}")
    unbuilt.folder.parent.mkdir(parents=True)
    (unbuilt.folder.parent / "build.log").write_text("boom\n")
    monkeypatch.setattr(runner_mod, "train_command", _fake_train({0}, plan.runs[0].steps))
    runner = Runner(1, tmp_path, log=lambda _: None)
    outcomes = {o.label: o.status for o in run_all(runner, plan)}
    assert outcomes == {"a seed 0": "done", "a seed 1": "failed", "lr seed 0": "failed", "lr seed 1": "failed"}
    result = table.summarize(plan, ["hard"])
    failed = {f["run"]: f for f in result["failed"]}
    assert sorted(failed) == ["a seed 1", "lr seed 0", "lr seed 1"] and result["complete"] == 1
    assert failed["a seed 1"]["exit_status"] == 2
    assert (
        failed["a seed 1"]["why"]
        == "rlvr-jax train exited with status 2 (rlvr-jax train: invalid config: something named)"
    )
    assert failed["lr seed 0"]["why"].startswith(f"its base policy {unbuilt.key} did not build")
    a, lr = result["combos"]
    assert (a["complete"], a["failed"], lr["failed"]) == (1, 1, 2)
    # The one complete run's summary has no stage detector output: unknown, not "did not reach stage 2".
    assert a["stage2"]["n"] == 0 and a["stage2"]["fraction"] is None
    markdown = table.to_markdown(result)
    assert "1 of 4 runs complete, 3 failed." in markdown and "Failed runs are not in the statistics" in markdown
    assert "- **failed**: a seed 1: rlvr-jax train exited with status 2" in markdown
    assert "| a | 1/2 (1 failed) | n/a |" in markdown
    capsys.readouterr()
    assert sweep_cli.outcome_status(result) == 1
    out = capsys.readouterr().out
    assert "failed: lr seed 1: its base policy" in out and out.endswith(
        "rlvr-jax sweep: 1 of 4 runs complete, 3 failed; the same command retries what is not complete\n"
    )
    # A retry that succeeds clears the failure.
    monkeypatch.setattr(runner_mod, "train_command", _fake_train({0, 1}, plan.runs[0].steps))
    run_all(runner, plan)
    assert failure(plan.runs[2]) is None and not (plan.runs[2].run_dir / FAILED).exists()
    assert sweep_cli.outcome_status(table.summarize(plan, ["hard"])) == 1  # the lr runs still have no base


def test_a_run_folder_trained_with_another_config_stops_the_sweep(tmp_path):
    study = _study(tmp_path, seeds=(0,))
    plan = make_plan(study)
    run = plan.runs[0]
    assert stale(study, run) == []  # nothing there yet
    run.run_dir.mkdir(parents=True)
    save_config(
        load_config(study.config, run.overrides + ("run.steps=7", "logging.probe_every=3")), run.run_dir / "config.yaml"
    )
    assert stale(study, run) == []  # the step budget and logging do not change the table's numbers
    moved = ("data.data_dir=/elsewhere/datasets", "eval.cache_dir=/elsewhere/eval_cache")
    save_config(load_config(study.config, run.overrides + moved), run.run_dir / "config.yaml")
    assert stale(study, run) == []  # nor where the datasets and the base evaluations are kept (a moved study)
    save_config(
        load_config(study.config, run.overrides + ("advantage.sign=positive_only",)), run.run_dir / "config.yaml"
    )
    assert stale(study, run) == ["advantage.sign: 'positive_only' -> 'full'"]
    with pytest.raises(
        SystemExit,
        match=r"seed0 holds a run trained with another config \(advantage.sign: 'positive_only' -> 'full'\); give the study another --out",
    ):
        sweep_cli.check_not_stale(plan)


SWEEP_ERRORS = [
    (["--seeds", "0-1", "--jobs", "0"], "--jobs / jobs must be a positive integer (processes at once), got 0"),
    (["--seeds", "a"], "--seeds / seeds: 'a' is neither a seed nor a range such as 0-15"),
    (["--seeds", "0", "--combo", "X=advantage.sign=bogus"], "combination 'X' (advantage.sign=bogus): invalid config:"),
    (["--seeds", "0", "advantage.nope=1"], "invalid config: unknown config key 'advantage.nope'"),
    (["--seeds", "0", "--combo", "advantage.sign=full"], "--combo 'advantage.sign=full': write NAME=section.key=value"),
    (["--seeds", "0", "--grid", "sign=full"], "--grid 'sign=full': write section.key=value1,value2"),
    (["--seeds", "0", "nosuch.yaml"], "sweep file nosuch.yaml does not exist (an argument without '=' is read as"),
]


@pytest.mark.parametrize("argv, says", SWEEP_ERRORS, ids=[" ".join(c[0]) for c in SWEEP_ERRORS])
def test_a_bad_sweep_is_one_line_with_status_2_before_any_work(capsys, tmp_path, argv, says):
    out = tmp_path / "study"
    capsys.readouterr()
    with pytest.raises(cli.UserError) as stop:
        cli.main(["sweep", "--config", "toy_strategy", "--out", str(out), *argv])
    line = str(stop.value)
    assert stop.value.code == 2 and "\n" not in line and line.startswith("rlvr-jax sweep: ")
    assert says in line and capsys.readouterr().err == line + "\n"
    assert not out.exists()  # nothing written, nothing built


def test_an_unwritable_out_and_a_missing_config_are_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv, says in (
        (["--config", "toy_strategy", "--seeds", "0", "--out", str(blocker / "x"), "--dry-run"], "--out "),
        (["--config", "nosuch", "--seeds", "0", "--out", str(tmp_path / "s")], "config file nosuch does not exist"),
        (["--seeds", "0", "--out", str(tmp_path / "s")], "missing --config (on the command line or in the sweep file)"),
    ):
        with pytest.raises(cli.UserError) as stop:
            cli.main(["sweep", *argv])
        assert stop.value.code == 2 and says in str(stop.value) and "\n" not in str(stop.value)
    assert "cannot create the study folder" in capsys.readouterr().err
