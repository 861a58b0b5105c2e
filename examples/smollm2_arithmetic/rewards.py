"""The example's rewards, in TRL's signature (every dataset column arrives as a keyword argument).

The model's output is untrusted text: it is only matched with regular expressions, never evaluated.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{\s*(-?[\d,]+)\s*\}")
_NUMBER = re.compile(r"-?\d[\d,]*")


def final_number(text: str) -> int | None:
    """The boxed number if there is one, else the last number in the text."""
    found = _BOXED.findall(text) or _NUMBER.findall(text)
    if not found:
        return None
    digits = found[-1].replace(",", "")
    return int(digits) if len(digits) <= 12 else None  # a 10^5000-digit "answer" is not parsed


def correct(prompts, completions, answer, **columns) -> list[float]:
    """1.0 when the final number of the completion is the answer."""
    return [float(final_number(c) == int(a)) for c, a in zip(completions, answer)]


def boxed(prompts, completions, **columns) -> list[float]:
    """1.0 when the completion puts a number in \\boxed{}: the format the prompt asks for."""
    return [float(bool(_BOXED.search(c))) for c in completions]
