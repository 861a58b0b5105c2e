"""The built-in tasks with a plain gold answer: arithmetic (generated), GSM8K and MATH (the user's files)."""

from __future__ import annotations

from rlvr_jax.data import arithmetic, official
from rlvr_jax.tasks.base import TfdsTask, register

ARITHMETIC = register(TfdsTask(name="arithmetic", verifier="numeric", builder=arithmetic.Arithmetic))
GSM8K = register(TfdsTask(name="gsm8k", verifier="numeric", builder=official.Gsm8k, manual_help=official.GSM8K_HELP))
MATH = register(TfdsTask(name="math", verifier="math", builder=official.Math, manual_help=official.MATH_HELP))
