"""Multi-step integer arithmetic, e.g. `(17 + 5) * 3 - 4`, with the answer asked for in `\\boxed{}`.

Each expression is a random binary tree over `+ - *` with 1..max_operand leaves, printed with only the
parentheses its meaning needs; the gold answer is computed from the tree alongside the text (never by
evaluating a string). `subset` is the number of operations (`ops1` .. `opsN`), the difficulty axis.
Splits `train` and `test`, each from its own seeded stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from rlvr_jax.data import common

OPS = ("+", "-", "*")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
_SPLIT_STREAM = {"train": 0, "test": 1}


@dataclasses.dataclass(eq=False)
class ArithmeticConfig(tfds.core.BuilderConfig):
    seed: int = 0
    train_size: int = 4096
    test_size: int = 512
    min_ops: int = 1
    max_ops: int = 4
    max_operand: int = 20
    """Leaves are drawn from 1..max_operand."""

    def validate(self) -> None:
        if min(self.train_size, self.test_size) < 1:
            raise common.DataError(f"arithmetic split sizes must be >= 1, got {self.train_size}, {self.test_size}")
        if not 1 <= self.min_ops <= self.max_ops:
            raise common.DataError(f"arithmetic needs 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if self.max_operand < 1:
            raise common.DataError(f"arithmetic max_operand must be >= 1, got {self.max_operand}")


def expression(leaves: list[int], ops: list[str], rng: np.random.Generator) -> tuple[str, int, str]:
    """(text, value, top operator) of a random tree over `leaves` joined by `ops` (len(leaves) - 1)."""
    if not ops:
        return str(leaves[0]), leaves[0], ""
    split = int(rng.integers(len(ops)))  # the root operator; its left subtree holds leaves[: split + 1]
    op = ops[split]
    left, lval, lop = expression(leaves[: split + 1], ops[:split], rng)
    right, rval, rop = expression(leaves[split + 1 :], ops[split + 1 :], rng)
    # Parenthesise a child that binds more loosely; on the right, also an equal one under `-`
    # (a - (b + c) != a - b + c).
    if lop and _PRECEDENCE[lop] < _PRECEDENCE[op]:
        left = f"({left})"
    if rop and (_PRECEDENCE[rop] < _PRECEDENCE[op] or (_PRECEDENCE[rop] == _PRECEDENCE[op] and op == "-")):
        right = f"({right})"
    value = lval + rval if op == "+" else lval - rval if op == "-" else lval * rval
    return f"{left} {op} {right}", value, op


def problem(cfg: ArithmeticConfig, rng: np.random.Generator) -> tuple[str, int, int]:
    """(expression text, value, number of operations) of one random problem."""
    n_ops = int(rng.integers(cfg.min_ops, cfg.max_ops + 1))
    leaves = [int(x) for x in rng.integers(1, cfg.max_operand + 1, size=n_ops + 1)]
    ops = [OPS[int(i)] for i in rng.integers(len(OPS), size=n_ops)]
    text, value, _ = expression(leaves, ops, rng)
    return text, value, n_ops


def prompt_text(expr: str) -> str:
    return f"Compute {expr}. Put the final answer in \\boxed{{}}."


class Arithmetic(common.TaskBuilder, skip_registration=True):
    """TFDS builder; not registered globally, build and read it through rlvr_jax.data.sources."""

    name = "arithmetic"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ArithmeticConfig
    BUILDER_CONFIGS = [ArithmeticConfig(name="default")]  # noqa: RUF012 (the TFDS API)

    def _info(self) -> tfds.core.DatasetInfo:
        return common.dataset_info(self, __doc__)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.train_size),
            "test": self._generate_examples("test", cfg.test_size),
        }

    def _generate_examples(self, split: str, n: int) -> Iterator[tuple[str, dict[str, str]]]:
        cfg = self.builder_config
        rng = np.random.default_rng([cfg.seed, _SPLIT_STREAM[split]])
        for i in range(n):
            expr, value, n_ops = problem(cfg, rng)
            yield (
                str(i),
                {
                    "id": f"arithmetic/{split}/{i}",
                    "prompt": prompt_text(expr),
                    "answer": str(value),
                    "subset": f"ops{n_ops}",
                },
            )
