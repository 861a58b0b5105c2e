"""Calling one reward function on one sample (in a worker) and checking what it returns.

A function that raises, returns a list of the wrong length, a non-number, NaN or inf raises `Problem`
with one line saying which; the pool turns it into an error naming the function and the row (or a 0
with reward.on_error=zero).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from rlvr_jax.rewards.functions import TRL, RewardFunction, describe
from rlvr_jax.rewards.sample import SKIPPED_COLUMNS, Sample

Call = Callable[[str, Sample], float | None]


class Problem(Exception):
    """The reward function misbehaved on this sample; the message says how, in one line."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_number(value: Any) -> float | None:
    """A finite float, or None for "not applicable"; anything else is a Problem."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, numbers.Real):
        raise Problem(f"returned {type(value).__name__} {_short(value)}, not a number or None")
    try:
        number = float(value)
    except OverflowError:
        raise Problem(f"returned {_short(value)}, too large for a float") from None
    if not math.isfinite(number):
        raise Problem(f"returned {number}, not a finite number (use None for 'not applicable')")
    return number


def _only_value(out: Any) -> float | None:
    if isinstance(out, np.ndarray):
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise Problem(f"returned {type(out).__name__} {_short(out)}, not a list with one value per completion")
    if len(out) != 1:
        raise Problem(f"returned {len(out)} values for 1 completion")
    return check_number(out[0])


def _invoke(fn: Callable[..., Any], keywords: frozenset[str] | None, arguments: dict[str, Any]) -> Any:
    if keywords is not None:  # no **kwargs: pass only what it names
        arguments = {k: v for k, v in arguments.items() if k in keywords}
    try:
        return fn(**arguments)
    except (Exception, SystemExit) as err:  # user code on model output: report it, never die here
        raise Problem(f"raised {describe(err)}") from None


def trl_arguments(completion: str, sample: Sample) -> dict[str, list[Any]]:
    """TRL's keywords for one sample: conversational samples get message lists, others strings."""
    chat = isinstance(sample.prompt, list)
    completions = [[{"role": "assistant", "content": completion}]] if chat else [completion]
    columns = {k: [v] for k, v in sample.columns.items() if k not in SKIPPED_COLUMNS}
    return {**columns, "prompts": [sample.prompt], "completions": completions, "gold": [sample.gold]}


def _call_trl(fn: Callable[..., Any], keywords: frozenset[str] | None, completion: str, sample: Sample) -> float | None:
    return _only_value(_invoke(fn, keywords, trl_arguments(completion, sample)))


def _call_verl(
    fn: Callable[..., Any], keywords: frozenset[str] | None, completion: str, sample: Sample
) -> float | None:
    arguments = {
        "data_source": sample.columns.get("data_source", ""),
        "solution_str": completion,
        "ground_truth": sample.gold,
        "extra_info": sample.columns.get("extra_info"),
    }
    out = _invoke(fn, keywords, arguments)
    if isinstance(out, dict):  # verl allows {"score": s, ...extra metrics}
        if "score" not in out:
            raise Problem(f"returned a dict without 'score' (keys: {', '.join(map(str, out))})")
        out = out["score"]
    return check_number(out)


def make_call(function: RewardFunction) -> Call:
    """`(completion, sample) -> value | None` for one function, loaded (imported, unpickled) now."""
    call = _call_trl if function.style == TRL else _call_verl
    return functools.partial(call, function.load(), function.keywords)
