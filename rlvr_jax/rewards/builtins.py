"""The built-in verifiers as TRL-style reward functions, for reward.functions:

    rlvr_jax.rewards:math_correct     numeric_correct     exact_correct     toy_strategy_correct
    rlvr_jax.rewards:math_format      numeric_format      exact_format      toy_strategy_format

`*_correct(completions, gold, **columns)` scores each completion against `gold`, the task's
verification target, which the reward pool passes to every function (Sample.gold); used outside
rlvr-jax (e.g. in TRL) the dataset needs a `gold` column. `*_format(completions, **columns)` is the
verifier's format check as 0/1. They wrap rlvr_jax/rewards/verifiers.py, so they only read text
(no eval, no sympify). Unlike the verifier path, they do not swallow exceptions: a gold answer that
does not parse raises, and reward.on_error decides what happens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rlvr_jax.rewards.verifiers import VERIFIERS


def _text(completion: str | list[dict[str, Any]]) -> str:
    """A completion's text; conversational completions are [{"role": "assistant", "content": text}]."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _correct(verifier: str, completions: Sequence[Any], gold: Sequence[str]) -> list[float]:
    score: Callable[[str, str], float] = VERIFIERS[verifier].score
    return [float(score(_text(c), g)) for c, g in zip(completions, gold, strict=True)]


def _format(verifier: str, completions: Sequence[Any]) -> list[float]:
    return [float(VERIFIERS[verifier].has_format(_text(c))) for c in completions]


def math_correct(completions: Sequence[Any], gold: Sequence[str], **columns: Any) -> list[float]:
    """1.0 iff math-verify finds the last \\boxed{} answer equivalent to the gold."""
    return _correct("math", completions, gold)


def numeric_correct(completions: Sequence[Any], gold: Sequence[str], **columns: Any) -> list[float]:
    """1.0 iff the last number equals the gold's last number within 1e-6 relative (exact rationals)."""
    return _correct("numeric", completions, gold)


def exact_correct(completions: Sequence[Any], gold: Sequence[str], **columns: Any) -> list[float]:
    """1.0 iff the text equals the gold after trimming and collapsing whitespace."""
    return _correct("exact", completions, gold)


def toy_strategy_correct(completions: Sequence[Any], gold: Sequence[str], **columns: Any) -> list[float]:
    """A strategy token opens the completion and the first integer after it is the answer: 1.0, or S1's
    0.8 on the graded variant's gold (`b|graded`); else 0."""
    return _correct("toy_strategy", completions, gold)


def math_format(completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 iff the completion has a balanced \\boxed{...}."""
    return _format("math", completions)


def numeric_format(completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 iff the completion contains a number."""
    return _format("numeric", completions)


def exact_format(completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 iff the completion is not blank."""
    return _format("exact", completions)


def toy_strategy_format(completions: Sequence[Any], **columns: Any) -> list[float]:
    """1.0 iff the completion opens with <S1>, <S2> or <S3>."""
    return _format("toy_strategy", completions)
