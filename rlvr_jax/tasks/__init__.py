"""Tasks as plugins: `get_task(cfg.data.task)` answers every task-specific question (rlvr_jax/tasks/base.py).

Built-in registrations: toy_strategy, arithmetic, gsm8k, math. `task_for(cfg)` is the run's task:
a registered one, or a FileTask over the user's files (data.source jsonl / parquet / hf).
"""

from collections.abc import Mapping
from typing import Any

from rlvr_jax.config import Config, DataSource
from rlvr_jax.tasks import builtin, toy_strategy  # noqa: F401  (their registrations)
from rlvr_jax.tasks.base import Task, TaskError, TfdsTask, get_task, register, task_names
from rlvr_jax.tasks.files import FileTask

__all__ = ["FileTask", "Task", "TaskError", "TfdsTask", "get_task", "register", "task_for", "task_names"]


def task_for(cfg: Config, rows: Mapping[str, Any] | None = None) -> Task:
    """The run's task: a registered one (data.source: task), or the user's files / in-memory rows by split."""
    if rows is None and cfg.data.source == DataSource.task:
        return get_task(cfg.data.task)
    return FileTask.from_config(cfg, rows)
