"""examples/smollm2_arithmetic/signs_report.py on a hand-made study folder: pass@k changes, the boundary
counts and the head-to-head table against values computed by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "smollm2_arithmetic" / "signs_report.py"
SUBSETS = ("1-digit", "2-digit", "3-digit")


def load_report():
    spec = importlib.util.spec_from_file_location("signs_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder, method, seed, base, final, entropy):
    run = folder / "runs" / method / f"seed{seed}"
    (run / "evals").mkdir(parents=True)
    for step, counts, held in ((0, base, 1.0), (3, final, 0.5)):
        problems = [
            {"id": f"test/{i}", "subset": SUBSETS[i], "n": 4, "c": c, "entropy": held, "tokens": 10}
            for i, c in enumerate(counts)
        ]
        report = {"step": step, "n": 4, "problems": problems[::-1], "entropy": held, "pass_at_k": {}, "subsets": {}}
        (run / "evals" / f"step_{step:06d}.json").write_text(json.dumps(report))
    rows = [{"step": 0}] + [{"step": s, "entropy": e, "reward/correct_frac": 0.1 * s} for s, e in enumerate(entropy, 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text("{}")


def test_the_tables_match_hand_computed_values(tmp_path):
    report = load_report()
    write_run(tmp_path, "A", 0, base=[0, 1, 4], final=[1, 0, 4], entropy=[1.0] * 5 + [0.4] * 5)
    write_run(tmp_path, "A", 1, base=[0, 2, 4], final=[0, 3, 4], entropy=[1.0] * 5 + [0.6] * 5)
    write_run(tmp_path, "B", 0, base=[0, 1, 4], final=[0, 0, 0], entropy=[1.0] * 10)
    (tmp_path / "runs" / "B" / "seed1").mkdir()  # unfinished: no summary.json, left out
    methods = report.read_study(tmp_path)
    assert sorted(methods) == ["A", "B"] and [r["seed"] for r in methods["A"]] == [0, 1] and len(methods["B"]) == 1

    # pass@1 = c/4 per problem. A, seed 0: (0 + .25 + 1)/3 -> (.25 + 0 + 1)/3, no change; seed 1: .5 -> .5833.
    lines = report.pass_at_k_rows(methods, [1, 4])
    assert lines[2] == "| A (2) | 0.458 -> 0.500 | 0.667 -> 0.667 |"
    # The change: mean +.0417 over seeds, [0, +.0833]. pass@4 (solved at all) is 2/3 -> 2/3 in both seeds,
    # but per problem averaged over seeds it is +.5 (test/0), -.5 (test/1), 0: the interval over problems
    # is as wide as (-.5, +.5): resamples of one problem three times reach both ends.
    row = next(line for line in lines if line.startswith("| A (2) | +"))
    assert row.startswith("| A (2) | +0.042 [+0.000, +0.083] (")
    assert "| +0.000 [+0.000, +0.000] (-0.500, +0.500) {" in row
    # B lost everything: pass@1 (0 + .25 + 1)/3 = .4167 -> 0; pass@4 2/3 -> 0.
    assert "| B (1) | 0.417 -> 0.000 | 0.667 -> 0.000 |" in lines

    boundary = report.boundary_table(methods)
    assert boundary[2] == "| A | 6 | 4 | 4 | 1 | 1 |"  # seed 0 loses test/1 and gains test/0
    assert boundary[3] == "| B | 3 | 2 | 0 | 2 | 0 |"

    runs = report.per_run_table(methods)
    # A seed 0: pass@1 (0 + .25 + 1)/3 -> (.25 + 0 + 1)/3; pass@4 2/3 -> 2/3; loses test/1, gains test/0.
    assert runs[2] == "| A seed 0 | 0.417 -> 0.417 | 0.667 -> 0.667 | 2 -> 2 | 1 | 1 | 1.00 -> 0.50 |"
    assert runs[4] == "| B seed 0 | 0.417 -> 0.000 | 0.667 -> 0.000 | 2 -> 0 | 2 | 0 | 1.00 -> 0.50 |"

    [_, _, versus] = report.head_to_head(methods, [1])  # seed 0 only: A's final (.25, 0, 1) minus B's (0, 0, 0)
    assert versus.startswith("| A - B (1) | +0.417 [+0.417, +0.417] (")

    entropy = report.entropy_table(methods)
    assert entropy[2] == "| A | 1.000 -> 0.500 (last: [0.400, 0.600]) | 1.000 -> 0.500 |"

    subsets = report.subset_table(methods, 4)
    assert (
        "| B | 3-digit (1) | -1.000 [-1.000, -1.000] (-1.000, -1.000) {-1.000, -1.000} "
        "| -1.000 [-1.000, -1.000] (-1.000, -1.000) {-1.000, -1.000} |" in subsets
    )
    report.figure(methods, 4, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 0


def test_the_bootstrap_interval_covers_the_mean_and_is_reproducible():
    report = load_report()
    values = np.array([0.0, 0.1, 0.2, 0.3, 1.0])
    low, high = report.bootstrap_interval(values)
    assert low < values.mean() < high and (low, high) == report.bootstrap_interval(values)
    assert report.bootstrap_interval(np.full(7, 0.25)) == (0.25, 0.25)


def test_the_two_way_interval_counts_the_seeds_that_the_problem_interval_holds_fixed():
    report = load_report()
    # Seed 0 gains 1 on every problem and seed 1 loses 1: averaged over the seeds every problem is 0, so
    # the problem bootstrap is (0, 0); resampling seeds draws {0, 0} (+1), {1, 1} (-1) or one of each (0),
    # each pair with probability 1/4, so the 2.5 and 97.5 percentiles are -1 and +1.
    split = np.array([[1.0] * 6, [-1.0] * 6])
    assert report.bootstrap_interval(split.mean(0)) == (0.0, 0.0)
    assert report.two_way_interval(split) == (-1.0, 1.0)
    assert report.cell(split) == "+0.000 [-1.000, +1.000] (+0.000, +0.000) {-1.000, +1.000}"
    # One seed: every seed resample is that seed, so only the problems vary (as in the problem bootstrap).
    one = np.array([[0.0, 1.0, 0.0, 1.0]])
    low, high = report.two_way_interval(one)
    assert low < 0.5 < high and (low, high) == report.two_way_interval(one)
    assert report.two_way_interval(np.full((3, 5), 0.25)) == (0.25, 0.25)


def test_the_committed_study_records_are_in_the_repository_and_complete():
    # docs/smollm2_arithmetic.md's tables regenerate from docs/results/smollm2_signs (no checkpoints): every
    # run there has both evaluations at n = 256 on the same 30 problems, and base evaluations of one seed
    # agree across methods (they are one cached evaluation). Written against a `runs/` ignore that once
    # kept the records out of git.
    folder = SCRIPT.parents[2] / "docs" / "results" / "smollm2_signs"
    methods = load_report().read_study(folder)
    # The study is complete: three methods x seeds 0, 1 and 2 (issue 15.7).
    assert {name: sorted(r["seed"] for r in runs) for name, runs in methods.items()} == {
        name: [0, 1, 2] for name in ("GRPO", "GRPO-N", "NSR")
    }
    base_by_seed = {}
    for runs in methods.values():
        for run in runs:
            assert run["base"]["step"] == 0 and run["final"]["step"] == 20
            assert run["base"]["n"] == run["final"]["n"] == 256
            ids = [p["id"] for p in run["base"]["problems"]]
            assert len(ids) == 30 and ids == [p["id"] for p in run["final"]["problems"]]
            counts = [p["c"] for p in run["base"]["problems"]]
            assert base_by_seed.setdefault(run["seed"], counts) == counts
