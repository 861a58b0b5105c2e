"""Reward functions: TRL- or verl-style callables, named in the config or passed in Python.

Accepted signatures (each function is called once per sample, with one-element lists, by keyword):
  TRL   fn(prompts, completions, **columns) -> list[float | None]
        prompts / completions are strings, or for conversational samples (Sample.prompt a message
        list) message lists, completions as [{"role": "assistant", "content": text}]; every dataset
        column arrives as a keyword, and `gold` (the task's verification target) always does. There
        is no `completion_ids` (the workers see text only). A function without **kwargs gets only the
        keywords it names.
  verl  compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict
        data_source and extra_info come from those columns ("" and None without them), ground_truth is
        the gold; a dict return must hold "score".
None means "not applicable": it adds 0 to the total and is left out of the function's mean.

`load_reward_functions` imports and inspects every function in the calling process before any
expensive work, so a module that does not import, a missing attribute or a wrong signature is one
line naming the function and the fix. Workers get each function as a `RewardFunction`: a
"module:attr" / "/abs/file.py:attr" target they import once, or the cloudpickle of a Python callable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import pickle
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from rlvr_jax.config import FUNCTION_NAME, RewardConfig
from rlvr_jax.rewards.sample import SKIPPED_COLUMNS

TRL, VERL = "trl", "verl"
VERL_ARGUMENTS = frozenset({"data_source", "solution_str", "ground_truth", "extra_info"})
_VERL_REQUIRED = frozenset({"data_source", "solution_str", "ground_truth"})
TRL_ARGUMENTS = frozenset({"prompts", "completions", "gold"})  # passed besides the columns
_TRL_ONLY = frozenset({"completion_ids", "trainer_state", "log_extra", "log_metric"})  # TRL's, not ours
SIGNATURES = (
    "accepted: TRL's fn(prompts, completions, **columns) -> list[float | None], "
    "or verl's compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict"
)


class RewardSpecError(ValueError):
    """A reward function that cannot be used as given; the message names it, the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class RewardFunction:
    """One reward function as the workers receive it (picklable; loaded once per worker)."""

    name: str
    weight: float
    style: str  # TRL or VERL
    origin: str  # where it was given, for messages: reward.functions[0] 'rewards.py:fmt'
    target: str = ""  # "pkg.module:attr" or "/abs/file.py:attr", imported by name in the worker
    pickled: bytes = b""  # a Python callable's cloudpickle, when there is no target
    keywords: frozenset[str] | None = None  # keyword arguments it accepts; None: any (**kwargs)
    required: frozenset[str] = frozenset()  # keyword arguments without a default

    def load(self) -> Callable[..., Any]:
        if self.target:
            return import_target(self.target, self.origin)
        try:
            return pickle.loads(self.pickled)
        except Exception as err:  # e.g. a module the parent could import and this process cannot
            raise RewardSpecError(f"{self.origin} does not load in a reward worker: {describe(err)}") from None


# --- importing ----------------------------------------------------------------------------------


def describe(err: BaseException, located: bool = True) -> str:
    """`Type: first line of the message (at file.py:12)`: one line, wherever the error came from."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
    frames = traceback.extract_tb(err.__traceback__) if located else []
    return f"{text} (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else text


def is_file_target(module_part: str) -> bool:
    """Whether a target's module part names a Python file (imported by path) rather than a module."""
    return module_part.endswith(".py") or "/" in module_part


def _import_module(name: str, where: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):  # not a module it imports
            raise RewardSpecError(
                f"{where}: no module named {err.name!r}; install it, put its folder on PYTHONPATH, "
                "or give a file path such as path/to/rewards.py:fn"
            ) from None
        raise RewardSpecError(f"{where}: module {name!r} does not import: {describe(err)}; fix the module") from None
    except Exception as err:
        raise RewardSpecError(f"{where}: module {name!r} does not import: {describe(err)}; fix the module") from None


def _absolute(text: str) -> Path:
    path = Path(text).expanduser()
    return (path if path.is_absolute() else Path.cwd() / path).resolve()


def _import_file(text: str, where: str) -> ModuleType:
    """A .py file as a module, once per process (its functions share it), named after its absolute path."""
    path = _absolute(text)
    if not path.is_file():
        raise RewardSpecError(
            f"{where}: file {text} does not exist (looked for {path}; a relative path is relative to the "
            "working directory)"
        )
    name = f"rlvr_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickle look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise RewardSpecError(f"{where}: {text} does not import: {describe(err)}; fix the file") from None
    return module


def import_target(target: str, where: str) -> Any:
    """The object `target` ("pkg.module:attr" or "path/file.py:attr") names."""
    module_part, _, attr = target.rpartition(":")
    module = _import_file(module_part, where) if is_file_target(module_part) else _import_module(module_part, where)
    if not hasattr(module, attr):
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardSpecError(
            f"{where}: {module_part} has no attribute {attr!r}; its public callables: {', '.join(public) or 'none'}"
        )
    return getattr(module, attr)


def absolute_target(target: str) -> str:
    """A file target with its path made absolute (workers must not depend on the working directory)."""
    module_part, _, attr = target.rpartition(":")
    return f"{_absolute(module_part)}:{attr}" if is_file_target(module_part) else target


# --- inspecting ---------------------------------------------------------------------------------


def inspect_signature(fn: Any, where: str) -> tuple[str, frozenset[str] | None, frozenset[str]]:
    """(style, keywords it accepts or None for **kwargs, keywords it requires), or one clear error."""
    if not callable(fn):
        raise RewardSpecError(f"{where} is a {type(fn).__name__}, not a function; {SIGNATURES}")
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        raise RewardSpecError(f"{where} is an async function; reward functions run in worker processes: use a def")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise RewardSpecError(f"{where}: its signature cannot be read; wrap it in a def. {SIGNATURES}") from None
    params = sig.parameters.values()
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = frozenset(p.name for p in params if p.kind in by_name)
    required = frozenset(p.name for p in params if p.kind in by_name and p.default is p.empty)
    any_keyword = any(p.kind == p.VAR_KEYWORD for p in params)
    positional_only = [p.name for p in params if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
    style = VERL if names >= _VERL_REQUIRED else TRL if "completions" in names or any_keyword else None
    wrong = (
        style is None
        or positional_only
        or (style == VERL and required - VERL_ARGUMENTS)
        or (style == TRL and required & _TRL_ONLY)
    )
    if wrong:
        extra = f" (rlvr-jax does not pass {', '.join(sorted(required & _TRL_ONLY))})" if required & _TRL_ONLY else ""
        raise RewardSpecError(f"{where}: signature {sig} is not a reward function's{extra}; {SIGNATURES}")
    return style, None if any_keyword else names, required


def _name_of(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__name__", type(inner).__name__)


def _pickled(fn: Any, where: str) -> bytes:
    """cloudpickle: by reference when importable by name, by value otherwise (__main__, notebooks, closures)."""
    try:
        return cloudpickle.dumps(fn)
    except Exception as err:
        raise RewardSpecError(
            f"{where} cannot be sent to the reward workers ({describe(err, located=False)}); define it at module "
            "level in an "
            'importable file, or name it as "module:attr" in reward.functions'
        ) from None


def _configured(index: int, fc: Any) -> RewardFunction:
    where = f"reward.functions[{index}] {fc.fn!r}"
    style, keywords, required = inspect_signature(import_target(fc.fn, where), where)
    return RewardFunction(fc.label, fc.weight, style, where, absolute_target(fc.fn), b"", keywords, required)


def _passed(fn: Any) -> RewardFunction:
    name = _name_of(fn)
    where = f"reward function {name!r} passed in Python"
    if not FUNCTION_NAME.fullmatch(name):
        raise RewardSpecError(f"{where}: its name is not usable in metric names; define it with def and a name")
    style, keywords, required = inspect_signature(fn, where)
    return RewardFunction(name, 1.0, style, where, "", _pickled(fn, where), keywords, required)


def load_reward_functions(cfg: RewardConfig, extra: Sequence[Callable[..., Any]] = ()) -> list[RewardFunction]:
    """cfg.functions then the Python callables `extra` (weight 1, named by __name__), imported and checked
    here; run it before any expensive work. Also checks that names are unique and correct_from exists."""
    functions = [_configured(i, fc) for i, fc in enumerate(cfg.functions)]
    functions += [_passed(fn) for fn in extra]
    seen: dict[str, str] = {}
    for f in functions:
        if f.name in seen:
            raise RewardSpecError(
                f"{seen[f.name]} and {f.origin} are both named {f.name!r}; rename one (config: name:)"
            )
        seen[f.name] = f.origin
    check_correct_from(cfg.correct_from, functions)
    return functions


def check_correct_from(correct_from: str, functions: Sequence[RewardFunction]) -> None:
    if correct_from == "total" or any(f.name == correct_from for f in functions):
        return
    if not functions:
        raise RewardSpecError(
            f"reward.correct_from={correct_from!r} names a reward function but there are none (the verifier "
            "counts a sample correct when it scores 1); set reward.correct_from=total or add reward.functions"
        )
    names = ", ".join(f.name for f in functions)
    raise RewardSpecError(
        f"reward.correct_from={correct_from!r} is not a reward function; use total or one of: {names}"
    )


def check_columns(functions: Sequence[RewardFunction], columns: Iterable[str], row: str = "every row") -> None:
    """Raise unless every TRL-style function gets each keyword it requires from `columns` (call it at setup
    with the dataset's column names; the pool checks each batch too)."""
    given = TRL_ARGUMENTS | (set(columns) - SKIPPED_COLUMNS)
    for f in functions:
        if f.style == TRL and (missing := sorted(f.required - given)):
            have = ", ".join(sorted(set(columns))) or "none"
            raise RewardSpecError(
                f"{f.origin} needs keyword {missing[0]!r}, but {row} has no column {missing[0]!r} (columns: "
                f"{have}); add the column, or give the parameter a default"
            )
