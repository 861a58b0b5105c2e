"""The study's figures (OUT/figures/), from the complete runs' metrics.jsonl and the table.

probe_bands.png  one panel per combination: each probe class's pi over steps, median and 10-90 % band over
                 seeds (log y), and a thin line per seed for the classes rare under the base policy
stage2.png       the fraction of seeds reaching stage 2 per combination, with its Wilson 95 % interval
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.stages import probe_series
from rlvr_jax.sweep.stats import band
from rlvr_jax.writers import read_jsonl

FLOOR = 1e-6  # log axis: probabilities below this are drawn at it


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    return plt


def draw(table: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [_stage2(table, out_dir / "stage2.png")]
    bands = _probe_bands(table, out_dir / "probe_bands.png")
    return made + ([bands] if bands else [])


def seed_series(runs: list[dict[str, Any]]) -> tuple[list[int], dict[str, np.ndarray]]:
    """The probe steps every run has, and per class an array [runs, steps] of pi at those steps."""
    per_run = [probe_series(read_jsonl(Path(r["run_dir"]) / "metrics.jsonl")) for r in runs]
    per_run = [(steps, probs) for steps, probs in per_run if steps]
    if not per_run:
        return [], {}
    common = sorted(set.intersection(*(set(steps) for steps, _ in per_run)))
    names = sorted(set.intersection(*(set(probs) for _, probs in per_run)))
    table = {n: np.array([[dict(zip(steps, probs[n]))[s] for s in common] for steps, probs in per_run]) for n in names}
    return common, table


def _probe_bands(table: dict[str, Any], path: Path) -> Path | None:
    combos = [row["combo"] for row in table["combos"]]
    runs = {c: [r for r in table["runs"] if r["combo"] == c and r["complete"]] for c in combos}
    series = {c: seed_series(runs[c]) for c in combos}
    shown = [c for c in combos if series[c][0]]
    if not shown:
        return None
    plt = _plt()
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, combo in zip(axes.flat, shown):
        steps, probs = series[combo]
        rare = {c for r in runs[combo] for c in r.get("stages", {}).get("rare_classes") or []}
        for i, (name, values) in enumerate(probs.items()):
            color = colors[i % len(colors)]
            values = np.clip(values, FLOOR, 1.0)
            median, low, high = band(values)
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
            ax.plot(steps, median, color=color, label=f"pi({name})" + (" (rare)" if name in rare else ""))
            if name in rare:
                for line in values:
                    ax.plot(steps, line, color=color, linewidth=0.5, alpha=0.5)
        ax.set_yscale("log")
        ax.set_title(f"{combo} ({len(probs[next(iter(probs))])} seeds)", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("probe pi: median, 10-90 % over seeds")
    return _save(fig, path)


def _stage2(table: dict[str, Any], path: Path) -> Path:
    """Per combination, the fraction of runs reaching stage 2 and, when the onset detector is the source,
    beside it the fraction whose rare class leads at the end, each with its Wilson interval."""
    plt = _plt()
    rows = table["combos"]
    bars = [("stage2", f"stage 2 ({table['stage2_source']})", "tab:blue")]
    if table["stage2_source"] != "transition":
        bars.append(("takeover", "rare class leads at the end", "tab:orange"))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1.5), 3.6))
    width = 0.8 / len(bars)
    for i, (key, label, color) in enumerate(bars):
        x = np.arange(len(rows)) + (i - (len(bars) - 1) / 2) * width
        rates = [r[key] for r in rows]
        fractions = [r["fraction"] or 0.0 for r in rates]
        lows = [f - r["wilson95"][0] if r["wilson95"] else 0.0 for f, r in zip(fractions, rates)]
        highs = [r["wilson95"][1] - f if r["wilson95"] else 0.0 for f, r in zip(fractions, rates)]
        ax.bar(x, fractions, width=width, color=color, alpha=0.7, label=label)
        ax.errorbar(x, fractions, yerr=[lows, highs], fmt="none", ecolor="k", capsize=3)
        for xi, r in zip(x, rates):
            ax.annotate(f"{r['reached']}/{r['n']}", (xi, 1.02), ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(rows)), [r["combo"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction of runs")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("stage 2 over seeds (Wilson 95 % intervals)", fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path
