"""One score() call's bookkeeping: per-term values as replies arrive, then the RewardResult.

A "term" is one reward function, or the verifier's score and its format check on the verifier path.
The total is sum(weight * value) over the terms, in float64 in term order, then float32: a None, an
error or a timeout adds 0 (TRL's nansum). On the verifier path that is exactly the old
`score + format_weight * has_format`, bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlvr_jax.config import OnError
from rlvr_jax.rewards.functions import RewardFunction
from rlvr_jax.rewards.sample import Sample
from rlvr_jax.rewards.worker import ERROR, VerifierSpec


class RewardFunctionError(RuntimeError):
    """A reward function misbehaved on a row (raised, wrong length, non-number); one line says which."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one program's replies become a RewardResult."""

    key: Any  # the program's key in the workers: None for the pool's own, else a VerifierSpec
    names: tuple[str, ...]  # one per term
    weights: tuple[float, ...]
    origins: tuple[str, ...]  # where each function was given, for error messages
    correct_term: int | None  # correct iff this term's value >= threshold; None: the total's
    threshold: float
    on_error: OnError | None  # functions only: what a misbehaving function does to the run

    @staticmethod
    def of_verifier(spec: VerifierSpec, key: Any, threshold: float = 1.0) -> Plan:
        """Correct iff the verifier's own score >= threshold (advantage.correct_threshold, default 1: a binary
        verifier's 1); the format reward never makes an answer correct. A graded verifier (the toy's
        reward=graded, S1 earning 0.8) is correct by the same rule as the advantages' NSR / PSR cut."""
        names, weights = (spec.verifier,), (1.0,)
        if spec.format_weight:
            names, weights = (spec.verifier, "format"), (1.0, spec.format_weight)
        return Plan(key, names, weights, names, 0, threshold, None)

    @staticmethod
    def of_functions(
        functions: Sequence[RewardFunction], correct_from: str, threshold: float, on_error: OnError
    ) -> Plan:
        names = tuple(f.name for f in functions)
        term = None if correct_from == "total" else names.index(correct_from)
        weights, origins = tuple(f.weight for f in functions), tuple(f.origin for f in functions)
        return Plan(None, names, weights, origins, term, threshold, on_error)


@dataclasses.dataclass(frozen=True)
class RewardResult:
    rewards: np.ndarray  # f32[N]: the weighted total; 0 on a timeout or an error
    correct: np.ndarray  # bool[N]: per reward.correct_from (verifier path: the verifier scored 1)
    timeouts: int  # samples cut at the deadline (their worker was killed)
    errors: int  # samples with a verifier that raised, a function that misbehaved, or a dead worker
    seconds: float  # wall time of the whole call
    per_function: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # f32[N] per term, NaN: none
    function_errors: dict[str, int] = dataclasses.field(default_factory=dict)  # on_error=zero: rows zeroed

    def sums(self) -> dict[str, float]:
        """Per-term sums to add over processes, then turn into metrics with `function_metrics`."""
        out: dict[str, float] = {}
        for name, values in self.per_function.items():
            applicable = ~np.isnan(values)
            out[f"reward/{name}/sum"] = float(np.sum(values[applicable], dtype=np.float64))
            out[f"reward/{name}/applicable"] = float(np.sum(applicable))
        out.update({f"reward/{name}/errors": float(n) for name, n in self.function_errors.items()})
        return out

    def metrics(self) -> dict[str, float]:
        return {
            "reward/timeouts": float(self.timeouts),
            "reward/errors": float(self.errors),
            "time/reward_s": self.seconds,
            **function_metrics(self.sums()),
        }


def function_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """reward/<name>/mean over the samples where the term applied (left out when none did, so that no
    NaN is logged) and, with on_error=zero, reward/<name>/errors; `sums` may hold other keys too."""
    out: dict[str, float] = {}
    for key, value in sums.items():
        section, _, rest = key.partition("/")
        name, _, kind = rest.partition("/")
        if section != "reward" or not name or "/" in kind:
            continue
        if kind == "applicable" and value > 0:
            out[f"reward/{name}/mean"] = sums[f"reward/{name}/sum"] / value
        elif kind == "errors":
            out[key] = value
    return out


class Batch:
    """One score() call: the inputs, each term's values so far, and chunks waiting for a worker."""

    def __init__(self, completions: list[str], samples: list[Sample], plan: Plan, chunk: int):
        n = len(completions)
        self.completions, self.samples, self.plan = completions, samples, plan
        self.values = np.full((n, len(plan.names)), np.nan)  # float64: the total sums these exactly
        self.problems: list[tuple[int, int, str]] = []  # (row, term, what went wrong)
        self.left, self.timeouts, self.errors = n, 0, 0
        self.pending = deque(list(range(i, min(i + chunk, n))) for i in range(0, n, chunk))

    def message(self, indices: list[int], timeout_s: float) -> tuple:
        return self.plan.key, timeout_s, [(i, self.completions[i], self.samples[i]) for i in indices]

    def record(self, index: int, status: int, values: tuple, problems: tuple) -> None:
        self.left -= 1
        if status == ERROR:
            self.errors += 1
            return
        for term, value in enumerate(values):
            if value is not None:
                self.values[index, term] = value
        found = [(index, term, p) for term, p in enumerate(problems) if p is not None]
        self.problems += found
        self.errors += bool(found)

    def fail(self, index: int, timed_out: bool) -> None:
        self.timeouts += timed_out
        self.errors += not timed_out
        self.left -= 1

    def result(self, seconds: float) -> RewardResult:
        """The RewardResult; with on_error=raise, a RewardFunctionError for the first misbehaving row."""
        plan = self.plan
        if self.problems and plan.on_error == OnError.stop:
            raise RewardFunctionError(self._problem_line())
        total = np.zeros(len(self.completions))
        for term, weight in enumerate(plan.weights):
            total += weight * np.nan_to_num(self.values[:, term], nan=0.0)
        rewards = total.astype(np.float32)
        if plan.correct_term is None:  # in float32, as the device's sign filters compare the rewards
            correct = rewards >= np.float32(plan.threshold)
        else:  # the function's value as returned (NaN: not applicable, failed or timed out -> False)
            correct = self.values[:, plan.correct_term] >= plan.threshold
        per_function = {name: self.values[:, term].astype(np.float32) for term, name in enumerate(plan.names)}
        counts = {name: sum(t == term for _, t, _ in self.problems) for term, name in enumerate(plan.names)}
        function_errors = counts if plan.on_error == OnError.zero else {}
        return RewardResult(rewards, correct, self.timeouts, self.errors, seconds, per_function, function_errors)

    def _problem_line(self) -> str:
        row, term, problem = min(self.problems)
        row_id = self.samples[row].columns.get("id")
        where = f"row {row}" + (f" (id {row_id!r})" if row_id is not None else "")
        rows = len({r for r, _, _ in self.problems})
        also = f" ({rows} of {len(self.completions)} rows failed)" if rows > 1 else ""
        return (
            f"reward function {self.plan.names[term]!r} ({self.plan.origins[term]}) failed on {where}: {problem}"
            f"{also}; fix the function, or set reward.on_error=zero to score such rows 0 and count them"
        )
