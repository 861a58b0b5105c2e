"""Answer verifiers: pure functions `(completion, gold) -> score in [0, 1]`, plus format checks.

They run on model output, so they only read text: no eval, no sympify, no parse_expr (those execute
code hidden in a string). They are meant to run inside the pool's worker processes, which enforce
the time limit; `math` imports math-verify (sympy, ~0.7 s) lazily so the trainer process never pays
for it.

Numbers are ASCII digits 0-9, and text is not Unicode-normalised. Both NFKC and Python's own `\\d`
(with `int` / `Fraction`) read the digits of other forms and scripts, such as the fullwidth U+FF10 to
U+FF19, as 0-9, so a completion writing 12 in fullwidth digits would score as 12. A number is what the
completion writes, not what it resembles: a policy paid for the fullwidth form learns an answer format
that no parser downstream reads, and NFKC would also rewrite the text around the number (a vulgar
fraction becomes digits around U+2044 FRACTION SLASH). So `numeric` and `toy_strategy` match `[0-9]`
only, and `math` leaves it to math-verify, which scores a fullwidth `\\boxed{12}` against `12` as wrong
too (tests/test_hostile.py pins all three).

Format reward (added as `format_weight * has_format(completion)` by the pool):
  math          the completion has a balanced `\\boxed{...}`
  numeric       the completion contains a number
  exact         the completion is not blank
  toy_strategy  the completion starts with a strategy token `<S1>`, `<S2>` or `<S3>`
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from fractions import Fraction
from typing import NamedTuple


class Verifier(NamedTuple):
    score: Callable[[str, str], float]  # (completion, gold) -> score in [0, 1]; binary verifiers: 1.0 correct, 0.0 not
    has_format: Callable[[str], bool]  # completion -> the task's answer format is present


# --- math (math-verify) -----------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` whose braces balance, else None.

    math-verify on its own joins several boxed answers into one set (`\\boxed{3} ... \\boxed{5}`
    parses as {3, 5}), so a model that boxes an intermediate result would never match; we hand it
    only the last box, the usual "final answer" convention. One pass over the braces keeps this
    linear even for adversarial strings full of unclosed boxes.
    """
    closing: dict[int, int] = {}  # position of "{" -> position of its "}"
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    for m in reversed(list(_BOXED.finditer(text))):
        open_at = m.end() - 1
        if open_at in closing:
            return text[m.end() : closing[open_at]]
    return None


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    """math-verify's parse of a gold answer; cached because each prompt's gold repeats G times.

    A bare gold such as `\\frac12` or `\\{2,1\\}` parses to nothing, and `2x+1` or `3,5` parse
    wrongly (to 2 and 3.5), so a gold without its own `\\boxed` or `$` is read as if boxed.
    """
    from math_verify import parse  # heavy import: happens in worker processes only

    if "\\boxed" in gold or "$" in gold:
        parsed = parse(gold, parsing_timeout=None)
    else:
        parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None) or parse(gold, parsing_timeout=None)
    if not parsed:
        # A gold that never parses would silently score every sample 0; raising counts it in errors.
        raise ValueError(f"math gold answer {gold!r} does not parse")
    return tuple(parsed)


def score_math(completion: str, gold: str) -> float:
    """1.0 iff math-verify finds the completion's final answer equivalent to the gold.

    Only the public `parse`/`verify` touch model output. Their own `signal.alarm` timeouts are off
    (None): the pool's hard kill bounds the whole sample, and an alarm that fires inside
    math-verify would be swallowed as "wrong" instead of being counted as a timeout.
    """
    from math_verify import parse, verify  # heavy import: happens in worker processes only

    boxed = last_boxed(completion)
    pred = parse(completion if boxed is None else f"\\boxed{{{boxed}}}", parsing_timeout=None)
    return float(verify(list(_parse_gold(gold)), pred, timeout_seconds=None))


def has_boxed(completion: str) -> bool:
    return last_boxed(completion) is not None


# --- numeric ----------------------------------------------------------------------------------

# A number: 1,234,567.5 (thousands groups of exactly three digits) | 1234.5 | .5; ASCII digits only
# (`\d` would also match fullwidth and other scripts' digits, which Fraction then reads as numbers).
_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+"
_NUMBER = re.compile(
    rf"(?P<fsign>-)?\\[dt]?frac\{{\s*(?P<fnum>{_NUM})\s*\}}\{{\s*(?P<fden>{_NUM})\s*\}}"  # \frac{a}{b}
    rf"|(?<![\w.])(?P<sign>-)?(?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?"  # -a, a/b (not x2, not 1.2.3)
)
_RELATIVE_TOL = Fraction(1, 10**6)


def _fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def last_number(text: str) -> Fraction | None:
    """The last number in `text` as an exact fraction, or None (also for x/0 and absurdly long digits)."""
    last = None
    for last in _NUMBER.finditer(text):  # noqa: B007 - keep the final match
        pass
    if last is None:
        return None
    num, den, sign = last.group("num", "den", "sign") if last.group("num") else last.group("fnum", "fden", "fsign")
    try:
        value = _fraction(num) / (_fraction(den) if den else 1)
    except (ZeroDivisionError, ValueError):  # ValueError: Python's int-string length limit
        return None
    return -value if sign else value


def score_numeric(completion: str, gold: str) -> float:
    """1.0 iff the last number of the completion equals the gold's last number within 1e-6 relative.

    Exact rational arithmetic (no floats, no eval); a zero gold needs an exact zero.
    """
    pred, want = last_number(completion), last_number(gold)
    if pred is None or want is None:
        return 0.0
    return float(abs(pred - want) <= _RELATIVE_TOL * abs(want))


def has_number(completion: str) -> bool:
    return last_number(completion) is not None


# --- exact ------------------------------------------------------------------------------------


def _squash(text: str) -> str:
    return " ".join(text.split())


def score_exact(completion: str, gold: str) -> float:
    """1.0 iff the texts are equal after trimming and collapsing runs of whitespace."""
    return float(_squash(completion) == _squash(gold))


def is_nonblank(completion: str) -> bool:
    return bool(completion.strip())


# --- toy_strategy -----------------------------------------------------------------------------

_STRATEGY = re.compile(r"\s*<(S[123])>")
_INT = re.compile(r"-?[0-9]+")  # ASCII digits only, like the numeric verifier


def toy_strategy_of(completion: str) -> str | None:
    """ "S1", "S2" or "S3" when the completion opens with that strategy token, else None."""
    m = _STRATEGY.match(completion)
    return m.group(1) if m else None


def _canonical_int(text: str) -> str:
    """'-007' -> '-7', '-0' -> '0': compares integers as text, free of int()'s digit limit."""
    digits = text.lstrip("-").lstrip("0") or "0"
    return "-" + digits if text.startswith("-") and digits != "0" else digits


# S1's expected reward per sample in the toy's graded and bernoulli variants: Yao et al.'s r(a1) = 0.8 < r(a2) = 1.
S1_EXPECTED_REWARD = 0.8
# The reward of each strategy's right answer per gold subset (docs/algorithms.md section 6); a strategy
# not listed earns 0. easy / hard (binary): S2 always, S1 only off the hard subset, S3 never. graded:
# S1 earns 0.8 and S2 1.0 on every instance, S3 0.
_REWARD = {
    "easy": {"S1": 1.0, "S2": 1.0},
    "hard": {"S2": 1.0},
    "graded": {"S1": S1_EXPECTED_REWARD, "S2": 1.0},
}


def score_toy_strategy(completion: str, gold: str) -> float:
    """The completion's reward: it must open with a strategy token and the first integer after it must be
    the answer (else 0); then 1.0, or what that strategy earns on the gold's subset.

    Gold is `"<answer>"` (the answer alone is scored) or `"<answer>|<subset>"`, which also requires a
    strategy that can solve that instance: `easy` S1 or S2 (1.0), `hard` S2 only (1.0), `graded` S1 0.8
    and S2 1.0; S3 earns 0 everywhere. Without the subset, RL can rewrite what follows `<S1>` to copy the
    right number (the answer is in the prompt) instead of moving probability to S2; with it, the
    per-instance reward is exactly the bandit's three classes.
    """
    answer_text, _, subset = gold.strip().partition("|")
    if not _INT.fullmatch(answer_text) or subset not in ("", *_REWARD):
        raise ValueError(
            f"toy_strategy gold must be an integer, optionally '|easy', '|hard' or '|graded', got {gold!r}"
        )
    m = _STRATEGY.match(completion)
    answer = _INT.search(completion, m.end()) if m else None
    right = answer is not None and _canonical_int(answer.group()) == _canonical_int(answer_text)
    if not right:
        return 0.0
    return 1.0 if not subset else _REWARD[subset].get(m.group(1), 0.0)


def starts_with_strategy(completion: str) -> bool:
    return toy_strategy_of(completion) is not None


VERIFIERS: dict[str, Verifier] = {
    "math": Verifier(score_math, has_boxed),
    "numeric": Verifier(score_numeric, has_number),
    "exact": Verifier(score_exact, is_nonblank),
    "toy_strategy": Verifier(score_toy_strategy, starts_with_strategy),
}
