"""The peer workload's reward (../shared/bench/make_workload.py REWARD), in TRL's signature: 1.0 when the
first integer in the completion equals the answer, else 0.0."""

from __future__ import annotations

import re

_INTEGER = re.compile(r"-?\d+")


def first_integer(prompts, completions, answer, **columns) -> list[float]:
    out = []
    for completion, gold in zip(completions, answer):
        found = _INTEGER.search(completion)
        out.append(float(found is not None and len(found.group()) < 20 and int(found.group()) == int(gold)))
    return out
