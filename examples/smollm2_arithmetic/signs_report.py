"""The sign study on SmolLM2 (studies/smollm2_signs.yaml): pass@k to k = 256 before and after, per method.

    python examples/smollm2_arithmetic/signs_report.py runs/sweeps/smollm2_signs [--figure F] [--json F]

Reads every finished run of the study folder (runs/<method>/seed<k>: summary.json, metrics.jsonl and the
step-0 and final evals/step_*.json, n samples per problem) and prints Markdown tables:
- pass@k for k = 1 ... n, base and final, per method: the change as mean over seeds with [min, max], and
  two 95 % intervals (percentile bootstraps of the mean change): (over problems) resamples the held-out
  problems of the per-problem change averaged over the seeds, so it holds the seeds fixed; {over seeds
  and problems} resamples seeds and problems independently (a crossed two-way bootstrap), so it also
  counts how much another seed could move the result;
- per subset, pass@1 and pass@n;
- the capability boundary at k = n: problems solved at least once before and after, lost and gained,
  summed over seeds, and per run;
- methods head to head: the final pass@k of one minus the other's, problem by problem on the same seeds;
- entropy: the training token entropy (first and last steps) and the held-out evaluation entropy.
With 3 seeds the two-way interval is coarse (a seed resample is one of 10 multisets), but it is the one that
answers "would another set of seeds agree"; the problem interval only answers "would other problems".
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from rlvr_jax.boundary import boundary_sets, k_values, pass_at_k_table
from rlvr_jax.evaluate import read_evals
from rlvr_jax.writers import read_jsonl

BOOTSTRAP = 10_000


def read_study(folder: Path) -> dict[str, list[dict]]:
    """method -> its finished runs, by seed: the base and final evaluation and the training metrics."""
    methods: dict[str, list[dict]] = {}
    for run_dir in sorted(folder.glob("runs/*/seed*")):
        if not (run_dir / "summary.json").is_file():
            continue  # not finished: left out, and counted in the header
        evals = read_evals(run_dir)
        base, final = evals[0], evals[-1]
        rows = read_jsonl(run_dir / "metrics.jsonl")
        seed = int(run_dir.name.removeprefix("seed"))
        methods.setdefault(run_dir.parent.name, []).append({"seed": seed, "base": base, "final": final, "rows": rows})
    return methods


def per_problem(report: dict, subset: str | None = None) -> tuple[list[str], np.ndarray]:
    """Problem ids (sorted) and f64[P, n] pass@k of each, for one evaluation (one subset or all)."""
    problems = sorted((p for p in report["problems"] if subset in (None, p["subset"])), key=lambda p: p["id"])
    n = report["n"]
    return [p["id"] for p in problems], pass_at_k_table(n, np.array([p["c"] for p in problems]))


def changes(runs: list[dict], subset: str | None = None) -> np.ndarray:
    """f64[seeds, P, n]: final minus base pass@k, per seed and problem (the same problems and draws)."""
    out = []
    for run in runs:
        ids, before = per_problem(run["base"], subset)
        ids_after, after = per_problem(run["final"], subset)
        if ids != ids_after:
            raise SystemExit(f"seed {run['seed']}: the base and final evaluations cover different problems")
        out.append(after - before)
    return np.stack(out)


def bootstrap_interval(per_problem_values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean over problems (axis 0), resampling problems."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_problem_values), size=(BOOTSTRAP, len(per_problem_values)))
    means = per_problem_values[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def two_way_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of f64[seeds, problems], resampling seeds and problems.

    Seeds and problems are crossed (every seed evaluated every problem), so each replicate draws seeds and
    problems independently, with replacement, and averages the chosen rows and columns."""
    rng = np.random.default_rng(seed)
    seeds, problems = values.shape
    seed_picks = rng.integers(0, seeds, size=(BOOTSTRAP, seeds))
    problem_picks = rng.integers(0, problems, size=(BOOTSTRAP, problems))
    means = values[seed_picks[:, :, None], problem_picks[:, None, :]].mean(axis=(1, 2))  # [BOOTSTRAP]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cell(values: np.ndarray) -> str:
    """For f64[seeds, problems] changes: mean [min, max over seeds] (95 % over problems) {95 % over both}."""
    by_seed = values.mean(1)
    low, high = bootstrap_interval(values.mean(0))
    both_low, both_high = two_way_interval(values)
    return (
        f"{by_seed.mean():+.3f} [{by_seed.min():+.3f}, {by_seed.max():+.3f}] "
        f"({low:+.3f}, {high:+.3f}) {{{both_low:+.3f}, {both_high:+.3f}}}"
    )


def pass_at_k_rows(methods: dict[str, list[dict]], ks: list[int]) -> list[str]:
    lines = [
        "| method (seeds) | " + " | ".join(f"pass@{k}: base -> final" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    change_lines = [
        "| method (seeds) | " + " | ".join(f"change in pass@{k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    columns = [k - 1 for k in ks]
    for name, runs in methods.items():
        base = np.array([per_problem(r["base"])[1][:, columns].mean(0) for r in runs])
        final = np.array([per_problem(r["final"])[1][:, columns].mean(0) for r in runs])
        lines.append(
            f"| {name} ({len(runs)}) | "
            + " | ".join(f"{b:.3f} -> {f:.3f}" for b, f in zip(base.mean(0), final.mean(0)))
            + " |"
        )
        delta = changes(runs)
        change_lines.append(f"| {name} ({len(runs)}) | " + " | ".join(cell(delta[:, :, k - 1]) for k in ks) + " |")
    return lines + [""] + change_lines


def subset_table(methods: dict[str, list[dict]], n: int) -> list[str]:
    subsets = sorted({p["subset"] for runs in methods.values() for p in runs[0]["base"]["problems"]})
    lines = ["| method | subset (problems) | pass@1 change | pass@" + str(n) + " change |", "|---|---|---|---|"]
    for name, runs in methods.items():
        for subset in subsets:
            delta = changes(runs, subset)
            cells = [cell(delta[:, :, k - 1]) for k in (1, n)]
            lines.append(f"| {name} | {subset} ({delta.shape[1]}) | {cells[0]} | {cells[1]} |")
    return lines


def run_boundary(run: dict) -> dict:
    """boundary_sets of a run's final evaluation against its base: solved counts, gained, lost, kept."""
    base, final = run["base"], run["final"]
    return boundary_sets(final["problems"], base["problems"], final["n"], base["n"])


def boundary_table(methods: dict[str, list[dict]]) -> list[str]:
    """Solved at least once in n samples (c > 0), before and after, over every (seed, problem) pair."""
    lines = [
        "| method | pairs | solved by base | solved after | lost | gained |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in methods.items():
        sets = [run_boundary(run) for run in runs]
        pairs, before, after = (sum(b["solved"][key] for b in sets) for key in ("total", "reference", "current"))
        lost, gained = (sum(len(b[key]) for b in sets) for key in ("lost", "gained"))
        lines.append(f"| {name} | {pairs} | {before} | {after} | {lost} | {gained} |")
    return lines


def per_run_table(methods: dict[str, list[dict]]) -> list[str]:
    """One row per run: pass@1 and pass@n, problems solved at least once (of P), lost, gained, entropy."""
    n = next(iter(methods.values()))[0]["base"]["n"]
    lines = [
        f"| run | pass@1 base -> final | pass@{n} base -> final | solved base -> final | lost | gained "
        "| held-out entropy base -> final |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in methods.items():
        for run in sorted(runs, key=lambda r: r["seed"]):
            (_, before), (_, after) = per_problem(run["base"]), per_problem(run["final"])
            sets = run_boundary(run)
            lines.append(
                f"| {name} seed {run['seed']} | {before[:, 0].mean():.3f} -> {after[:, 0].mean():.3f} "
                f"| {before[:, -1].mean():.3f} -> {after[:, -1].mean():.3f} "
                f"| {sets['solved']['reference']} -> {sets['solved']['current']} | {len(sets['lost'])} "
                f"| {len(sets['gained'])} | {run['base']['entropy']:.2f} -> {run['final']['entropy']:.2f} |"
            )
    return lines


def head_to_head(methods: dict[str, list[dict]], ks: list[int]) -> list[str]:
    """Final pass@k of A minus B on the seeds both finished, problem by problem."""
    names = list(methods)
    lines = ["| A - B (seeds) | " + " | ".join(f"final pass@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            seeds = sorted({r["seed"] for r in methods[a]} & {r["seed"] for r in methods[b]})
            if not seeds:
                continue
            pick = {name: {r["seed"]: r for r in methods[name]} for name in (a, b)}
            diff = np.stack([per_problem(pick[a][s]["final"])[1] - per_problem(pick[b][s]["final"])[1] for s in seeds])
            cells = [cell(diff[:, :, k - 1]) for k in ks]
            lines.append(f"| {a} - {b} ({len(seeds)}) | " + " | ".join(cells) + " |")
    return lines


def entropy_table(methods: dict[str, list[dict]], first: int = 5) -> list[str]:
    lines = [
        f"| method | training entropy, steps 1-{first} -> last {first} (nats/token) | held-out entropy, base -> final |",
        "|---|---|---|",
    ]
    for name, runs in methods.items():
        head, tail = [], []
        for run in runs:
            values = [row["entropy"] for row in run["rows"] if "entropy" in row]
            head.append(statistics.mean(values[:first]))
            tail.append(statistics.mean(values[-first:]))
        held = [(r["base"]["entropy"], r["final"]["entropy"]) for r in runs]
        lines.append(
            f"| {name} | {statistics.mean(head):.3f} -> {statistics.mean(tail):.3f} "
            f"(last: [{min(tail):.3f}, {max(tail):.3f}]) | "
            f"{statistics.mean(b for b, _ in held):.3f} -> {statistics.mean(f for _, f in held):.3f} |"
        )
    return lines


def figure(methods: dict[str, list[dict]], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.arange(1, n + 1)
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(14, 3.8))
    for i, (name, runs) in enumerate(methods.items()):
        delta = changes(runs).mean(1)  # [seeds, n]: change in mean pass@k
        left.plot(ks, delta.mean(0), color=f"C{i}", label=f"{name} ({len(runs)} seeds)")
        left.fill_between(ks, delta.min(0), delta.max(0), color=f"C{i}", alpha=0.2)
        for key, axis in (("entropy", mid), ("reward/correct_frac", right)):
            steps = sorted({row["step"] for run in runs for row in run["rows"] if key in row})
            table = np.array([[row[key] for row in run["rows"] if key in row] for run in runs])
            axis.plot(steps, table.mean(0), color=f"C{i}", label=name)
            axis.fill_between(steps, table.min(0), table.max(0), color=f"C{i}", alpha=0.2)
    left.axhline(0, color="k", lw=0.5)
    left.set(xscale="log", xlabel="k", ylabel="final - base pass@k (held-out)", title="pass@k change (band: seeds)")
    left.legend(fontsize=8)
    mid.set(xlabel="step", ylabel="token entropy (nats)", title="training entropy")
    right.set(xlabel="step", ylabel="correct fraction (32 samples)", title="training correct")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the study's --out folder")
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    methods = read_study(args.study)
    if not methods:
        parser.error(f"{args.study}: no finished run under runs/<method>/seed<k>")
    n = next(iter(methods.values()))[0]["base"]["n"]
    ks = [k for k in k_values(n) if k in (1, 4, 16, 64, n)]
    done = ", ".join(f"{name}: seeds {sorted(r['seed'] for r in runs)}" for name, runs in methods.items())
    print(
        f"Finished runs ({done}); {n} samples per problem. Change cells: mean over seeds [min, max over seeds] "
        "(95 % bootstrap over problems) {95 % bootstrap over seeds and problems}.\n"
    )
    for table in (
        pass_at_k_rows(methods, ks),
        subset_table(methods, n),
        boundary_table(methods),
        per_run_table(methods),
    ):
        print("\n".join(table) + "\n")
    print("\n".join(head_to_head(methods, ks)) + "\n")
    print("\n".join(entropy_table(methods)))
    if args.figure:
        figure(methods, n, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
