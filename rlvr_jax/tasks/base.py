"""The Task interface: everything task-specific that the generic modules need, in one object.

A task supplies its prompt source per split, the gold string its verifier scores against, the
verifier's name, the subsets worth a headline, an optional probe, host metrics of its own and an
optional warm start of the base policy. `data.task` names a registered task; the loop, the evaluator,
the probe and the planner ask the task and never test a task's name.

Register a new task once, before the run starts (e.g. in the module that defines it):

    from rlvr_jax.tasks import TfdsTask, register
    register(TfdsTask(name="countdown", verifier="numeric", builder=CountdownBuilder))

A source is a random-access sequence of records (`len`, `[i]`) holding at least the string fields
`id`, `prompt`, `answer` and `subset` (text may arrive as bytes: TFDS hands text back that way).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.data import DataError, sources
from rlvr_jax.data.common import builtin_example
from rlvr_jax.probe import ProbeSpec


class TaskError(DataError):
    """An unknown task, or a feature the task does not have; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A task; subclasses implement `source`. Every other method has a generic default."""

    name: str
    verifier: str
    """The default `reward.verifier` for this task (rlvr_jax/rewards/verifiers.py)."""
    headline_subsets: tuple[str, ...] = ()
    """Subsets whose pass@k the run prints next to the overall numbers (e.g. the toy's `hard`)."""

    def source(
        self, split: str, data_dir: str | Path | None = None, manual_dir: str | Path | None = None, **params: Any
    ) -> Sequence[Mapping[str, Any]]:
        """Random-access records of one split (`params`: the task's own dataset parameters)."""
        raise NotImplementedError(f"task {self.name!r} defines no source")

    def open_split(self, split: str, data: Any) -> Sequence[Mapping[str, Any]]:
        """`source(split)` with the run's `data` config section: its data_dir, manual_dir and task_args.
        Training, evaluation and the probe all open their splits here, so they read the same dataset."""
        return self.source(split, data.data_dir, data.manual_dir, **data.task_args)

    def example(self, record: Mapping[str, Any], index: int) -> dict[str, Any]:
        """Row `index` of a source as the pipeline and the rewards see it: id, prompt (text), messages
        (chat messages to render, or None: the prompt as one user message), answer, subset, columns."""
        return builtin_example(record, index)

    def target(self, example: Mapping[str, Any]) -> str:
        """The gold string the verifier scores a completion of `example` against."""
        return example["answer"]

    def targets(self, example: Mapping[str, Any], count: int, draw: Sequence[Any] = ()) -> list[str]:
        """The gold strings of `count` samples of `example` (default: `target(example)` for each). `draw`
        names the sampling round (purpose, run seed, step or evaluation pass), so a task whose reward is
        random per sample (the toy's reward=bernoulli) draws reproducibly."""
        return [self.target(example)] * count

    def probe(self) -> ProbeSpec | None:
        """The probe logged when `logging.probe_file` is not set (None: no probe)."""
        return None

    def rollout_counts(self, completions: Sequence[str]) -> dict[str, float]:
        """Counts over this process's completions, logged (summed over processes, per rollout) as
        `rollout/frac_<name>`."""
        return {}

    def arch_defaults(self) -> dict[str, Any]:
        """config.json fields a model.arch of this task may leave out (the planner fills them in)."""
        return {}

    @property
    def has_warm_start(self) -> bool:
        return False

    def warm_start(self, cfg: Any, out_dir: Path, data_dir: Path, mesh: Any, log: Callable[[str], None]) -> Path:
        """Build (or reuse) the base policy as an HF folder under `out_dir` (warmstart.enabled)."""
        raise TaskError(
            f"task {self.name!r} has no warm start: set warmstart.enabled=false and model.path to a model folder"
        )


@dataclasses.dataclass(frozen=True)
class TfdsTask(Task):
    """A task whose splits come from one TFDS builder (array_record, built offline on first use)."""

    builder: type | None = None
    manual_help: str | None = None
    """For builders that read the user's local files: where to put them (data.manual_dir)."""

    def source(
        self, split: str, data_dir: str | Path | None = None, manual_dir: str | Path | None = None, **params: Any
    ) -> Sequence[Mapping[str, Any]]:
        return sources.load_split(self.builder, split, data_dir, manual_dir, self.manual_help, **params)


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make `task` available as `data.task: <task.name>`; registering a name twice is an error."""
    if task.name in _REGISTRY and _REGISTRY[task.name] is not task:
        raise TaskError(f"a task named {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task `name`, or an error listing the registered ones."""
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def task_names() -> list[str]:
    return sorted(_REGISTRY)
