"""The exploitation -> exploration stage detector, on the probe's class probabilities over steps.

RLVR's two-stage dynamic (docs/algorithms.md section 1): first the mass of already-likely rewarded
tokens saturates (exploitation), then a token that was rare under the base policy takes over
(exploration). The rule, stated so a reader can check it against the figure:

  * rare classes: those whose base-policy probability (first probe point) is below
    `rare_ratio` (default 0.1) times the base policy's largest class probability;
  * the transition happened at the first probe step from which a rare class is the leading class
    (largest probability among the named classes) at every later probe point, including the last;
  * the exploitation stage is the span before it; its peak is the largest probability that a
    non-rare class reaches before the transition.

Without a transition the report says so and gives the best rare class's peak, so "the rare class
never took over" is a measured statement, not a missing one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def probe_series(rows: list[dict[str, Any]]) -> tuple[list[int], dict[str, list[float]]]:
    """Steps with a probe reading and each named class's probability (rest excluded)."""
    # probe/pi_<class> only: per-subset keys (probe/pi_<class>/<subset>) are not classes of their own
    keys = {k for r in rows for k in r if k.startswith("probe/pi_") and k.count("/") == 1}
    names = sorted({k[len("probe/pi_") :] for k in keys} - {"rest"})
    probed = [r for r in rows if all(isinstance(r.get(f"probe/pi_{n}"), (int, float)) for n in names)] if names else []
    return [r["step"] for r in probed], {n: [r[f"probe/pi_{n}"] for r in probed] for n in names}


def detect_transition(
    steps: Sequence[int], probs: Mapping[str, Sequence[float]], rare_ratio: float = 0.1
) -> dict[str, Any]:
    """steps[T] and per-class probabilities [T] (probe order) -> the stage report described above."""
    names = list(probs)
    if not names or len(steps) == 0:
        return {"transition": False, "reason": "no probe data"}
    table = np.asarray([probs[n] for n in names], dtype=float)  # [C, T]
    if table.shape[1] != len(steps):
        raise ValueError(f"{len(steps)} steps but {table.shape[1]} probe values per class")
    base = table[:, 0]
    rare = [i for i in range(len(names)) if base[i] < rare_ratio * base.max()]
    leader = table.argmax(axis=0)
    report: dict[str, Any] = {
        "rule": f"a class with base probability < {rare_ratio} x the base leader's leads "
        "from some probe step to the end",
        "rare_classes": [names[i] for i in rare],
        "base": dict(zip(names, base.round(4).tolist())),
        "final": dict(zip(names, table[:, -1].round(4).tolist())),
    }
    start = _first_persistent(leader, set(rare))
    if start is None:
        best = max(rare, key=lambda i: table[i].max()) if rare else None
        report.update(transition=False, leader_at_end=names[int(leader[-1])])
        if best is not None:
            peak = int(table[best].argmax())
            report.update(
                best_rare_class=names[best],
                best_rare_peak=float(table[best, peak]),
                best_rare_peak_step=int(steps[peak]),
            )
        return report
    before = table[:, :start]
    common = [i for i in range(len(names)) if i not in rare]
    report.update(
        transition=True,
        step=int(steps[start]),
        new_leader=names[int(leader[start])],
        previous_leader=names[int(leader[start - 1])] if start else None,
    )
    if start and common:
        i = max(common, key=lambda c: before[c].max())
        peak = int(before[i].argmax())
        report.update(
            exploitation_peak_class=names[i],
            exploitation_peak=float(before[i, peak]),
            exploitation_peak_step=int(steps[peak]),
        )
    return report


def _first_persistent(leader: np.ndarray, rare: set[int]) -> int | None:
    """First index t such that leader[t:] are all rare classes (and t is not the base point)."""
    t = len(leader)
    while t > 0 and int(leader[t - 1]) in rare:
        t -= 1
    return t if 0 < t < len(leader) else None


def describe(report: Mapping[str, Any]) -> str:
    if report.get("transition"):
        text = f"exploitation -> exploration at step {report['step']}: {report['new_leader']} (rare at the start) leads from then on"
        if "exploitation_peak" in report:
            text += (
                f"; exploitation peak {report['exploitation_peak_class']}={report['exploitation_peak']:.3f} "
                f"at step {report['exploitation_peak_step']}"
            )
        return text
    if "best_rare_class" in report:
        return (
            f"no exploitation -> exploration transition: {report['leader_at_end']} leads at the end; the best rare "
            f"class {report['best_rare_class']} peaked at {report['best_rare_peak']:.4f} (step {report['best_rare_peak_step']})"
        )
    return "no exploitation -> exploration transition" + (f" ({report['reason']})" if "reason" in report else "")
