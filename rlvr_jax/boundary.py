"""Capability boundary: unbiased pass@k from n samples per problem, and boundary sets against a reference.

pass@k of one problem with n samples of which c are correct (Chen et al., 2021):

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i=0}^{k-1} (n - c - i) / (n - i)

Binomials overflow long before n = 1024, so the product is taken directly: every factor lies in
[0, 1] (clipped at 0 once i > n - c - 1, where pass@k is exactly 1), and a cumulative product gives
every k at once. Boundary sets (docs/algorithms.md section 5): problems solved at least once (c > 0) by
the current and the reference model; gained, lost, kept; and the pass@k difference per k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def k_values(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(max(n, 1).bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def pass_at_k_table(n: int, correct: np.ndarray) -> np.ndarray:
    """f64[P, n]: column k-1 is pass@k of each problem (n samples each, `correct` successes)."""
    c = np.asarray(correct, dtype=np.float64)[:, None]
    if np.any(c < 0) or np.any(c > n):
        raise ValueError(f"correct counts must lie in [0, {n}]")
    i = np.arange(n, dtype=np.float64)[None, :]
    factors = np.clip((n - c - i) / (n - i), 0.0, 1.0)
    return 1.0 - np.cumprod(factors, axis=1)


def pass_at_k(n: int, correct: np.ndarray | Sequence[int], ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over problems for each k (default: k_values(n))."""
    ks = list(ks) if ks is not None else k_values(n)
    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"k must lie in [1, n={n}], got {ks}")
    table = pass_at_k_table(n, np.asarray(correct))
    return {k: float(table[:, k - 1].mean()) if len(table) else float("nan") for k in ks}


def summarize(problems: Sequence[Mapping[str, Any]], n: int) -> dict[str, Any]:
    """pass@k overall and per named subset from per-problem records {"id", "subset", "c"}."""
    correct = np.asarray([p["c"] for p in problems])
    out: dict[str, Any] = {"problems": len(problems), "pass_at_k": _keyed(pass_at_k(n, correct)), "subsets": {}}
    for subset in sorted({p.get("subset", "") for p in problems} - {""}):
        rows = np.asarray([p.get("subset", "") == subset for p in problems])
        out["subsets"][subset] = {"problems": int(rows.sum()), "pass_at_k": _keyed(pass_at_k(n, correct[rows]))}
    return out


def _keyed(values: Mapping[int, float]) -> dict[str, float]:
    return {str(k): v for k, v in values.items()}


def boundary_sets(
    current: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], n_current: int, n_reference: int
) -> dict[str, Any]:
    """Solved-at-least-once sets of two evaluations of the same problems, and pass@k differences."""
    cur = {p["id"]: p for p in current}
    ref = {p["id"]: p for p in reference}
    if cur.keys() != ref.keys():
        only_cur, only_ref = sorted(cur.keys() - ref.keys()), sorted(ref.keys() - cur.keys())
        raise ValueError(
            f"the two evaluations cover different problems: {len(only_cur)} only in this one "
            f"(e.g. {only_cur[:3]}), {len(only_ref)} only in the reference (e.g. {only_ref[:3]})"
        )
    solved_cur = {i for i, p in cur.items() if p["c"] > 0}
    solved_ref = {i for i, p in ref.items() if p["c"] > 0}
    ids = sorted(cur)
    ks = list(k_values(min(n_current, n_reference)))
    pc = pass_at_k(n_current, [cur[i]["c"] for i in ids], ks)
    pr = pass_at_k(n_reference, [ref[i]["c"] for i in ids], ks)
    return {
        "solved": {"current": len(solved_cur), "reference": len(solved_ref), "total": len(ids)},
        "gained": sorted(solved_cur - solved_ref),
        "lost": sorted(solved_ref - solved_cur),
        "kept": sorted(solved_cur & solved_ref),
        "never": len(ids) - len(solved_cur | solved_ref),
        "pass_at_k_delta": {str(k): pc[k] - pr[k] for k in ks},
    }


def boundary_over_training(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per evaluated step: solved, gained, lost, kept against the step-0 evaluation."""
    base = next((e for e in evals if e["step"] == 0), None)
    if base is None:
        return []
    out = []
    for e in evals:
        b = boundary_sets(e["problems"], base["problems"], e["n"], base["n"])
        out.append(
            {
                "step": e["step"],
                "solved": b["solved"]["current"],
                "gained": len(b["gained"]),
                "lost": len(b["lost"]),
                "kept": len(b["kept"]),
            }
        )
    return out
