"""The toy strategy task (docs/algorithms.md section 6) as a task: strategy-faithful gold, the
pi(S1), pi(S2), pi(S3) probe, strategy fractions of the rollouts, and the supervised warm start.

Its variants are dataset parameters (data.task_args, rlvr_jax/data/toy_strategy.py): reward binary
(default), graded or bernoulli, and hard_fraction (0 with binary: the tie case).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlvr_jax.data.toy_strategy import STRATEGY_TOKENS, ToyStrategy
from rlvr_jax.probe import ProbeSpec
from rlvr_jax.rewards import toy_strategy_of
from rlvr_jax.rewards.verifiers import S1_EXPECTED_REWARD
from rlvr_jax.tasks.base import TaskError, TfdsTask, register

STRATEGIES = tuple(t.strip("<>") for t in STRATEGY_TOKENS)  # S1, S2, S3
# The toy tokenizer's size limit (rlvr_jax.data.toy_strategy.toy_tokenizer): the warm-started model's vocab.
TOY_VOCAB = 512


# Dataset parameters that only the warm-start split uses; the warm start takes them from warmstart.*.
_WARMSTART_OWNED = {"prior": "warmstart.prior", "warmstart_size": "warmstart.traces"}


def bernoulli_draws(key: Sequence[Any], name: str, count: int, rate: float) -> list[bool]:
    """Per-sample success flags: sample g succeeds iff u_g < rate, where
    u_g = int(first 8 bytes of sha256(repr((*key, name, g)))) / 2**64 is uniform on [0, 1).

    A function of (key, name, g) only: the same on every process, host and rerun, independent across
    samples and rounds, and not a function of the prompt text the policy sees.
    """
    out = []
    for g in range(count):
        digest = hashlib.sha256(repr((*key, name, g)).encode()).digest()
        out.append(int.from_bytes(digest[:8], "big") / 2**64 < rate)
    return out


@dataclasses.dataclass(frozen=True)
class ToyStrategyTask(TfdsTask):
    def open_split(self, split: str, data: Any) -> Sequence[Mapping[str, Any]]:
        owned = [f"{k} (set {v})" for k, v in _WARMSTART_OWNED.items() if k in data.task_args]
        if owned:
            raise TaskError(f"data.task_args: {', '.join(owned)}; the warm-start traces are configured under warmstart")
        return super().open_split(split, data)

    def target(self, example: Mapping[str, Any]) -> str:
        # Strategy-faithful: the verifier also checks that the chosen strategy can solve this subset,
        # so RL cannot relabel S1's execution to copy the right number. graded: `b|graded`.
        if example["subset"] == "bernoulli":
            raise TaskError("a toy_strategy reward=bernoulli instance has one gold per sample: use targets()")
        return f"{example['answer']}|{example['subset']}"

    def targets(self, example: Mapping[str, Any], count: int, draw: Sequence[Any] = ()) -> list[str]:
        """reward=bernoulli: sample g's gold is `b|easy` (S1 and S2 earn 1) with probability 0.8, else
        `b|hard` (S2 only), drawn by `bernoulli_draws(draw, id, count, 0.8)`; so S1 earns 1 with
        probability 0.8 on every sample, with nothing in the prompt to tell which. Otherwise the one
        target of the instance for every sample."""
        if example["subset"] != "bernoulli":
            return super().targets(example, count, draw)
        wins = bernoulli_draws(draw, example["id"], count, S1_EXPECTED_REWARD)
        return [f"{example['answer']}|{'easy' if win else 'hard'}" for win in wins]

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
