"""The toy strategy task (docs/algorithms.md section 6) as a task: strategy-faithful gold, the
pi(S1), pi(S2), pi(S3) probe, strategy fractions of the rollouts, and the supervised warm start."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.data.toy_strategy import STRATEGY_TOKENS, ToyStrategy
from rlvr_jax.probe import ProbeSpec
from rlvr_jax.rewards import toy_strategy_of
from rlvr_jax.tasks.base import TfdsTask, register

STRATEGIES = tuple(t.strip("<>") for t in STRATEGY_TOKENS)  # S1, S2, S3
# The toy tokenizer's size limit (rlvr_jax.data.toy_strategy.toy_tokenizer): the warm-started model's vocab.
TOY_VOCAB = 512


@dataclasses.dataclass(frozen=True)
class ToyStrategyTask(TfdsTask):
    def target(self, example: Mapping[str, Any]) -> str:
        # Strategy-faithful: the verifier also checks that the chosen strategy can solve this subset,
        # so RL cannot relabel S1's execution to copy the right number.
        return f"{example['answer']}|{example['subset']}"

    def probe(self) -> ProbeSpec:
        # pi(S1), pi(S2), pi(S3) at the first response token of 64 held-out prompts.
        return ProbeSpec(classes={s: [f"<{s}>"] for s in STRATEGIES}, from_split=("test", 64))

    def rollout_counts(self, completions: Sequence[str]) -> dict[str, float]:
        chosen = [toy_strategy_of(t) for t in completions]
        return {s: float(chosen.count(s)) for s in STRATEGIES}

    def arch_defaults(self) -> dict[str, Any]:
        return {"vocab_size": TOY_VOCAB}

    @property
    def has_warm_start(self) -> bool:
        return True

    def warm_start(self, cfg: Any, out_dir: Path, data_dir: Path, mesh: Any, log: Callable[[str], None]) -> Path:
        from rlvr_jax.warmstart import build_base_policy

        return build_base_policy(cfg, out_dir, data_dir, mesh, log)


TOY_STRATEGY = register(
    ToyStrategyTask(name="toy_strategy", verifier="toy_strategy", headline_subsets=("hard",), builder=ToyStrategy)
)
