"""Capability boundary: unbiased pass@k from n samples per problem, and boundary sets against a reference.

pass@k of one problem with n samples of which c are correct (Chen et al., 2021):

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i=0}^{k-1} (n - c - i) / (n - i)

Binomials overflow long before n = 1024, so the product is taken directly: every factor lies in
[0, 1] (clipped at 0 once i > n - c - 1, where pass@k is exactly 1), and a cumulative product gives
every k at once. Boundary sets (docs/algorithms.md section 5): problems solved at least once (c > 0) by
the current and the reference model; gained, lost, kept; and the pass@k difference per k.

The 1/k diagnostic (Yao et al.): the fraction of problems whose empirical correct-probability
p = c/n exceeds 1/k, for each reported k >= 2 (p > 1 is impossible, so k = 1 is left out). It says
how many problems a k-sample budget covers *reliably*, where pass@k also counts lucky hits: p > 1/k
implies pass@k = 1 - (1 - p)^k > 1 - (1 - 1/k)^k, which is 0.75 at k = 2 and decreases towards
1 - 1/e = 0.632 as k grows. The same bound holds for the unbiased estimate computed here, since
C(n - c, k) / C(n, k) = prod_i (n - c - i) / (n - i) <= (1 - c/n)^k. The converse fails: a problem
with p just under 1/k still has pass@k near 0.63, and one with a single lucky success has
pass@k = k/n > 0 but is below 1/k as soon as k < n.
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


def above_one_over_k(n: int, correct: np.ndarray | Sequence[int], ks: Sequence[int] | None = None) -> dict[int, float]:
    """For each k >= 2 (default: k_values(n)), the fraction of problems with c/n > 1/k (as c*k > n: exact)."""
    ks = [k for k in (ks if ks is not None else k_values(n)) if k >= 2]
    c = np.asarray(correct, dtype=np.int64)
    return {k: float(np.mean(c * k > n)) if len(c) else float("nan") for k in ks}


def summarize(problems: Sequence[Mapping[str, Any]], n: int) -> dict[str, Any]:
    """pass@k and the 1/k diagnostic overall and per named subset from per-problem records
    {"id", "subset", "c"}; with each record's "entropy" and "tokens", also the token-weighted mean entropy."""
    correct = np.asarray([p["c"] for p in problems])
    out: dict[str, Any] = {"problems": len(problems), **_measures(problems, n, correct), "subsets": {}}
    for subset in sorted({p.get("subset", "") for p in problems} - {""}):
        rows = np.asarray([p.get("subset", "") == subset for p in problems])
        chosen = [p for p, keep in zip(problems, rows) if keep]
        out["subsets"][subset] = {"problems": int(rows.sum()), **_measures(chosen, n, correct[rows])}
    return out


def _measures(problems: Sequence[Mapping[str, Any]], n: int, correct: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pass_at_k": _keyed(pass_at_k(n, correct)),
        "above_1_over_k": _keyed(above_one_over_k(n, correct)),
    }
    if problems and all("tokens" in p and "entropy" in p for p in problems):
        tokens = sum(p["tokens"] for p in problems)
        out["entropy"] = sum(p["entropy"] * p["tokens"] for p in problems) / max(tokens, 1)
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
