"""Cadence work as hooks: each runs after a step when its cadence says so, in registration order.

    hooks = Hooks()
    hooks.add("eval", evaluate_now, every=cfg.eval.every)              # + after the last step
    hooks.add("checkpoint", save, every=cfg.checkpoint.every, when=lambda r: r.stopping)

A hook is due after step k (1-based, `record.step`) when `every` divides k, at the run's last step
(unless `at_end=False`), or when its `when(record)` says so. The registration order is the order in
which they run: hooks that add host metrics (probe, evaluation) come before the one that writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from rlvr_jax.step import StepRecord


@dataclasses.dataclass(frozen=True)
class Hook:
    name: str
    fn: Callable[[StepRecord], None]
    every: int  # 0: only at the end and when `when` says so
    at_end: bool = True
    when: Callable[[StepRecord], bool] | None = None

    def due(self, record: StepRecord, last_step: int) -> bool:
        step = record.step
        return (
            bool(self.every and step % self.every == 0)
            or (self.at_end and step == last_step)
            or bool(self.when and self.when(record))
        )


class Hooks:
    """The run's hooks, in order; `run(record)` calls every one that is due after that step."""

    def __init__(self, last_step: int):
        self.last_step = last_step
        self._hooks: list[Hook] = []

    def add(
        self,
        name: str,
        fn: Callable[[StepRecord], None],
        every: int = 1,
        at_end: bool = True,
        when: Callable[[StepRecord], bool] | None = None,
    ) -> None:
        self._hooks.append(Hook(name, fn, every, at_end, when))

    @property
    def names(self) -> list[str]:
        return [h.name for h in self._hooks]

    def run(self, record: StepRecord) -> None:
        for hook in self._hooks:
            if hook.due(record, self.last_step):
                hook.fn(record)
