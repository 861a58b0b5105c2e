"""Tasks as plugins: `get_task(cfg.data.task)` answers every task-specific question (rlvr_jax/tasks/base.py).

Built-in registrations: toy_strategy, arithmetic, gsm8k, math.
"""

from rlvr_jax.tasks import builtin, toy_strategy  # noqa: F401  (their registrations)
from rlvr_jax.tasks.base import Task, TaskError, TfdsTask, get_task, register, task_names

__all__ = ["Task", "TaskError", "TfdsTask", "get_task", "register", "task_names"]
