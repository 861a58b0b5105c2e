"""Base vs final held-out accuracy of the example's runs, over seeds, and where the time went.

    python examples/smollm2_arithmetic/report.py runs/smollm2_arithmetic_seed0 runs/smollm2_arithmetic_seed1 ...
        [--figure docs/figures/smollm2_arithmetic.png]

Reads each run's summary.json (the step-0 and final evaluations) and metrics.jsonl (training reward,
step time split). Prints a Markdown table: per metric, base and final as mean +- sample sd over the
runs, and the paired change (final - base of the same run: same problems, same evaluation seed) as
mean with its [min, max] over runs and how many runs improved. With a few seeds this is a description of
those seeds, not a population estimate: the table says n.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = ("pass@1", "pass@8")
SUBSETS = ("", "/1-digit", "/2-digit", "/3-digit")


def read_run(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    evals = sorted((run_dir / "evals").glob("step_*.json"))
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a damaged line is skipped, as the trainer's own readers do
    first, last = (json.loads(path.read_text()) for path in (evals[0], evals[-1]))
    return {"name": run_dir.name, "summary": summary, "rows": rows, "evals": (first, last)}


def paired_change(first: dict, last: dict) -> tuple[float, float, int]:
    """pass@1 change within one run, problem by problem (c/n at the last evaluation minus at the first,
    same problems): mean and the half-width of its normal 95 % interval over problems."""
    before = {p["id"]: p["c"] / p["n"] for p in first["problems"]}
    diffs = [p["c"] / p["n"] - before[p["id"]] for p in last["problems"] if p["id"] in before]
    half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5
    return statistics.mean(diffs), half, len(diffs)


def within_runs(runs: list[dict]) -> list[str]:
    lines = ["| run | pass@1 change, 95 % interval over held-out problems | problems |", "|---|---|---|"]
    for run in runs:
        mean, half, count = paired_change(*run["evals"])
        lines.append(f"| {run['name']} | {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | {count} |")
    return lines


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def accuracy_table(runs: list[dict]) -> list[str]:
    lines = [
        f"| held-out metric (n = {len(runs)} runs) | base | final | change: mean [min, max] over runs | runs improved |",
        "|---|---|---|---|---|",
    ]
    for metric in METRICS:
        for subset in SUBSETS:
            key = f"eval/{metric}{subset}"
            pairs = [(r["summary"]["base"].get(key), r["summary"]["final"].get(key)) for r in runs]
            if any(b is None or f is None for b, f in pairs):
                continue
            base, final = [b for b, _ in pairs], [f for _, f in pairs]
            change = [f - b for b, f in pairs]
            improved = sum(c > 0 for c in change)
            lines.append(
                f"| {metric}{subset or ' (all)'} | {mean_sd(base)} | {mean_sd(final)} | "
                f"{statistics.mean(change):+.3f} [{min(change):+.3f}, {max(change):+.3f}] | {improved}/{len(runs)} |"
            )
    return lines


def training_trend(runs: list[dict], first: int = 5) -> list[str]:
    """Training-sample means over the first and last `first` steps of each run (32 samples a step)."""
    lines = [f"| training samples, mean of steps 1-{first} -> last {first} | {' | '.join(r['name'] for r in runs)} |"]
    lines.append("|---|" + "---|" * len(runs))
    for key, label in (("reward/correct_frac", "correct"), ("reward/boxed/mean", "answer in \\boxed{}")):
        cells = []
        for run in runs:
            values = [r[key] for r in run["rows"] if key in r]
            if len(values) < 2 * first:
                cells.append("n/a")
                continue
            head, tail = statistics.mean(values[:first]), statistics.mean(values[-first:])
            cells.append(f"{head:.3f} -> {tail:.3f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def time_split(runs: list[dict]) -> list[str]:
    """Per training step (step 0, which compiles, left out): rollout, reward, and the rest (the update,
    with logging.block_each_step so that device work is charged to the stage that queued it)."""
    rollout, reward, step = [], [], []
    for run in runs:
        for row in run["rows"]:
            if row.get("step", 0) >= 2 and "time/step_s" in row:
                rollout.append(row["time/rollout_s"])
                reward.append(row["time/reward_s"])
                step.append(row["time/step_s"])
    if not step:
        return []
    total = statistics.median(step)
    parts = {
        "rollout": statistics.median(rollout),
        "reward": statistics.median(reward),
        "update (rest)": total - statistics.median(rollout) - statistics.median(reward),
    }
    lines = [f"| per training step (median over {len(step)} steps) | seconds | share |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.1f} | {sec / total:.0%} |" for name, sec in parts.items()]
    lines.append(f"| step | {total:.1f} | 100% |")
    wall = [r["summary"].get("seconds_this_session") for r in runs]
    if all(isinstance(w, (int, float)) for w in wall):
        lines.append(f"\nWhole run (evaluations and compilation included): {mean_sd([w / 60 for w in wall])} min.")
    return lines


def figure(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        steps = [r["step"] for r in run["rows"] if "reward/correct_frac" in r]
        values = [r["reward/correct_frac"] for r in run["rows"] if "reward/correct_frac" in r]
        left.plot(steps, values, marker=".", label=run["name"])
    left.set(xlabel="step", ylabel="train correct fraction (32 samples)", title="training")
    left.legend(fontsize=7)
    labels = [s.strip("/") or "all" for s in SUBSETS]
    width = 0.8 / (2 * len(runs))
    for i, run in enumerate(runs):
        for j, (when, hatch) in enumerate((("base", ""), ("final", "//"))):
            values = [run["summary"][when].get(f"eval/pass@1{s}", float("nan")) for s in SUBSETS]
            xs = [k + (2 * i + j) * width - 0.4 for k in range(len(SUBSETS))]
            right.bar(xs, values, width, hatch=hatch, color=f"C{i}", alpha=0.5 if when == "base" else 0.9)
    right.set_xticks(range(len(SUBSETS)), labels)
    right.set(ylabel="held-out pass@1", title="base (light) vs final (hatched), per run")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        parser.error(f"no summary.json (the run has not finished) in: {', '.join(missing)}")
    runs = [read_run(r) for r in args.runs]
    print("\n".join(accuracy_table(runs)))
    print()
    print("\n".join(within_runs(runs)))
    print()
    print("\n".join(training_trend(runs)))
    print()
    print("\n".join(time_split(runs)))
    if args.figure:
        figure(runs, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
