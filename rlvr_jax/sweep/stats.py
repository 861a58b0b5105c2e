"""The few statistics a study table needs (numpy only; scipy is not a dependency for three formulas)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (None for n = 0).

    Chosen over the normal (Wald) interval because a study's fractions are often 0/16 or 16/16, where
    Wald collapses to a zero-width interval; Wilson stays inside [0, 1] and keeps its coverage near 95 %.
    """
    if n == 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # The bounds hold p exactly: at 0/n and n/n rounding would otherwise leave 1 - 1e-16 below p = 1.
    return min(p, max(0.0, center - half)), max(p, min(1.0, center + half))


def mean_sd(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (ddof 1; None with fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    return {
        "n": int(x.size),
        "mean": float(x.mean()) if x.size else None,
        "sd": float(x.std(ddof=1)) if x.size > 1 else None,
    }


def median_range(values: Sequence[float]) -> dict[str, float | int | None]:
    x = np.asarray(values, dtype=float)
    if not x.size:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": int(x.size), "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max())}


def band(table: np.ndarray, low: float = 10, high: float = 90) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of [seeds, steps]: the median and the low-high percentile band over seeds."""
    return np.median(table, axis=0), np.percentile(table, low, axis=0), np.percentile(table, high, axis=0)
