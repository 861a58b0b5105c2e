"""`rlvr-jax plot RUN_DIR`: the figures of a run, from metrics.jsonl and evals/step_*.json.

figures/training.png   reward and held-out pass@1, token entropy, probe class probabilities
figures/probe.png      probe class probabilities over steps (log scale), with the detected transition
                       and the online detector's stage-2 onset
figures/dynamics.png   per advantage sign: pi_old of the sampled tokens, saturated / rare fractions,
                       log-prob change and top-1 mass change made by the update
figures/pass_at_k.png  pass@k against k at every evaluated step (base policy in black), overall and per subset
figures/boundary.png   problems gained / lost / kept against the base policy (step 0) over training
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.boundary import boundary_over_training
from rlvr_jax.evaluate import read_evals
from rlvr_jax.stages import detect_transition, probe_rest, probe_series
from rlvr_jax.storage import as_path
from rlvr_jax.writers import read_jsonl

SIGN_COLORS = {"pos": "tab:green", "neg": "tab:red", "zero": "tab:gray"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return ([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else ([], [])


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and value > 0


def plot_run(run_dir: str | Path) -> list[Path]:
    run_dir = as_path(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if not rows:
        raise FileNotFoundError(
            f"{run_dir / 'metrics.jsonl'} is missing or empty: is {run_dir} a training run directory?"
        )
    out_dir = run_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    evals = read_evals(run_dir)
    made = [_training(rows, out_dir), _probe(rows, out_dir), _dynamics(rows, out_dir)]
    if evals:
        made += [_pass_at_k(evals, out_dir), _boundary(evals, out_dir)]
    return [p for p in made if p is not None]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with path.open("wb") as f:  # a local file or a gs:// object
        fig.savefig(f, dpi=110, format="png")
    _plt().close(fig)
    return path


def _training(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for key in ("reward/mean", "eval/pass@1", "eval/pass@1/hard"):
        if series(rows, key)[0]:
            axes[0].plot(*series(rows, key), label=key, marker="." if key.startswith("eval") else None)
    axes[0].set_title("reward and held-out pass@1")
    axes[1].plot(*series(rows, "entropy"), color="k")
    axes[1].set_title("token entropy (sampled positions)")
    steps, probs = probe_series(rows)
    for name, values in probs.items():
        axes[2].plot(steps, values, label=f"pi({name})")
    axes[2].set_yscale("log")
    axes[2].set_title("probe")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, out_dir / "training.png")


def _probe(rows: list[dict[str, Any]], out_dir: Path) -> Path | None:
    steps, probs = probe_series(rows)
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, values in probs.items():
        ax.plot(steps, values, marker=".", label=f"pi({name})")
    rest = series(rows, "probe/pi_rest")
    if rest[0]:
        ax.plot(*rest, color="0.6", ls=":", label="rest")
    stage = detect_transition(steps, probs, rest=probe_rest(rows, steps))
    if stage.get("transition"):
        ax.axvline(stage["step"], color="k", ls="--", lw=0.8, label=f"transition (step {stage['step']})")
    for onset in series(rows, "stage/onset_step")[1][:1]:  # the online detector's onset, logged once
        ax.axvline(onset, color="tab:purple", ls=":", lw=1.0, label=f"online onset (step {onset:.0f})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("probe: class probability at the decision position")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "probe.png")


def _dynamics(rows: list[dict[str, Any]], out_dir: Path) -> Path | None:
    if not series(rows, "dyn/pi_old/pos")[0]:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    panels = [
        ("dyn/pi_old/{}", "pi_old(y) of sampled tokens"),
        ("dyn/saturated/{}", "saturated (> 0.9), rare (< 0.01) dashed"),
        ("dyn/dlogp/{}", "update: mean change of log pi(y)"),
        ("dyn/dtop1/{}", "update: change of top-1 mass"),
    ]
    for ax, (pattern, title) in zip(axes, panels):
        for sign, color in SIGN_COLORS.items():
            # a step without tokens of this sign logs 0 for its means: leave those steps out
            signed = [r for r in rows if _positive(r.get(f"dyn/tokens/{sign}"))]
            _smoothed(ax, series(signed, pattern.format(sign)), color, sign)
            if pattern.startswith("dyn/saturated"):
                _smoothed(ax, series(signed, f"dyn/rare/{sign}"), color, None, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:  # a panel may have no data yet (e.g. before the first pass)
            ax.legend(fontsize=7, title="advantage", title_fontsize=7)
    return _save(fig, out_dir / "dynamics.png")


def _smoothed(ax: Any, xy: tuple[list[int], list[float]], color: str, label: str | None, ls: str = "-") -> None:
    """Raw values faint, a centred moving average (about 1/40 of the run) on top: per-sign token
    counts are small, so single steps are noisy."""
    steps, values = xy
    if not steps:
        return
    window = max(1, len(values) // 40)
    ax.plot(steps, values, color=color, alpha=0.25, lw=0.8, ls=ls)
    if window > 1:
        kernel = np.ones(window) / window
        padded = np.pad(np.asarray(values, float), (window // 2, window - 1 - window // 2), mode="edge")
        values = np.convolve(padded, kernel, mode="valid").tolist()
    ax.plot(steps, values, color=color, lw=1.5, ls=ls, label=label)


def _pass_at_k(evals: list[dict[str, Any]], out_dir: Path) -> Path:
    plt = _plt()
    groups = ["all"] + sorted({s for e in evals for s in e.get("subsets", {})})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    colors = plt.cm.viridis(np.linspace(0.15, 0.95, max(len(evals) - 1, 1)))
    for ax, group in zip(axes[0], groups):
        for i, e in enumerate(evals):
            curve = e["pass_at_k"] if group == "all" else e.get("subsets", {}).get(group, {}).get("pass_at_k")
            if not curve:
                continue
            ks = [int(k) for k in curve]
            style = (
                dict(color="k", lw=2, label="base (step 0)")
                if e["step"] == 0
                else dict(color=colors[min(i - 1, len(colors) - 1)], lw=1, label=f"step {e['step']}")
            )
            ax.plot(ks, list(curve.values()), marker=".", **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k")
        ax.set_title(f"pass@k ({group})")
        ax.legend(fontsize=7)
    return _save(fig, out_dir / "pass_at_k.png")


def _boundary(evals: list[dict[str, Any]], out_dir: Path) -> Path | None:
    table = boundary_over_training(evals)
    if not table:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [t["step"] for t in table]
    for key, color in (("solved", "k"), ("gained", "tab:green"), ("lost", "tab:red"), ("kept", "tab:blue")):
        ax.plot(steps, [t[key] for t in table], marker=".", color=color, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("problems (solved at least once in n samples)")
    ax.set_title("capability boundary vs the base policy")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "boundary.png")
