"""Sample: what one completion is scored against (the prompt, the task's gold answer, the example's columns)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# TRL passes these as the functions' own arguments, so a column of the same name cannot be passed too.
RESERVED_COLUMNS = frozenset({"prompts", "completions"})
# Columns TRL leaves out of the keywords (the prompt arrives as `prompts`); rlvr-jax does the same.
SKIPPED_COLUMNS = frozenset({"prompt", "completion", "completion_ids"})


@dataclasses.dataclass(frozen=True)
class Sample:
    prompt: str | list[dict[str, Any]]
    """The prompt text or, for a conversational dataset, its chat messages [{role, content}, ...]."""
    gold: str
    """The task's verification target: what the built-in verifiers score against, passed to every
    reward function as the `gold` keyword (and to verl-style ones as `ground_truth`); a dataset column
    named `gold` is shadowed by it (usually it is the same answer)."""
    columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Every dataset column of the example (JSON-like values); each reaches TRL-style functions as a keyword."""

    def __post_init__(self) -> None:
        if clash := sorted(RESERVED_COLUMNS & set(self.columns)):
            raise ValueError(
                f"dataset column(s) {', '.join(clash)} clash with the reward functions' own arguments; rename them"
            )
