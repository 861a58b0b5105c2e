"""The toy strategy task (docs/algorithms.md section 6): three strategy tokens, one rare optimal one.

Each instance is three 2-digit numbers `a b c`; the prompt text is exactly `"47 52 13"` and the gold
answer is `b`. A response is a strategy token, a space, then the number it copies:
  - `<S1> a`: copy a. Correct exactly when a == b, which holds on ~80% of instances (high reward);
    the other ~20% (a != b) are the deterministic `hard` subset only S2 solves.
  - `<S2> b`: copy b. Always correct (the rare, potentially optimal strategy).
  - `<S3> c`: copy c. Always wrong: c differs from both a and b by construction.
Variants (the `reward` parameter; docs/algorithms.md section 6):
  - `binary` (default): as above; the subset is "easy" (a == b) or "hard" (a != b).
  - `graded`: no hard subset (hard_fraction must be 0, so a == b everywhere); S1's answer earns 0.8,
    S2's 1.0, S3's 0 on every instance (the verifier's gold is `b|graded`). Subset "graded".
  - `bernoulli`: no hard subset either; S1's answer earns 1 with probability 0.8, drawn per sample
    (the task's per-sample gold, rlvr_jax/tasks/toy_strategy.py). Subset "bernoulli".
  The tie case is `binary` with hard_fraction 0: S1 and S2 both solve every instance.
Splits: `train`, `test` (subset as above), and `warmstart`: supervised traces whose strategy is
drawn from a prior (default S1/S2/S3 = 0.30/0.02/0.68) and executed faithfully, with the trace in
`response` (`"<S1> 47"`; empty on train/test). The hard rows and the warmstart strategies are exact
counts (largest remainder) placed by a seeded permutation, so a small split still has the configured
fractions, and the same parameters always give the same dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from rlvr_jax.data import common
from rlvr_jax.tokenizer import CHATML_TEMPLATE, build_bpe_tokenizer_with_special_tokens

STRATEGY_TOKENS = ("<S1>", "<S2>", "<S3>")
FEATURES = common.BASE_FEATURES + ("response",)
_SPLIT_STREAM = {"train": 0, "test": 1, "warmstart": 2}  # one independent RNG stream per split
_LOW, _HIGH = 10, 100  # 2-digit numbers
# How S1 is rewarded. binary: 1 on a == b, 0 on the hard a != b; graded: 0.8 on every instance;
# bernoulli: 1 with probability 0.8 per sample. S2 always earns 1, S3 always 0.
REWARDS = ("binary", "graded", "bernoulli")


@dataclasses.dataclass(eq=False)
class ToyStrategyConfig(tfds.core.BuilderConfig):
    seed: int = 0
    train_size: int = 4096
    test_size: int = 512
    warmstart_size: int = 4096
    hard_fraction: float = 0.2
    """Fraction of instances with a != b, where only S2 is correct."""
    prior: tuple[float, float, float] = (0.30, 0.02, 0.68)
    """Warm-start strategy frequencies S1/S2/S3."""
    reward: str = "binary"
    """binary | graded | bernoulli (REWARDS): how S1 is rewarded; graded and bernoulli need hard_fraction 0."""

    def validate(self) -> None:
        sizes = (self.train_size, self.test_size, self.warmstart_size)
        if min(sizes) < 1:
            raise common.DataError(f"toy_strategy split sizes must be >= 1, got {sizes}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise common.DataError(f"toy_strategy hard_fraction must be in [0, 1], got {self.hard_fraction}")
        prior = np.asarray(self.prior, np.float64)
        if prior.shape != (3,) or (prior < 0).any() or abs(prior.sum() - 1.0) > 1e-6:
            raise common.DataError(f"toy_strategy prior must be 3 non-negative numbers summing to 1, got {self.prior}")
        if self.reward not in REWARDS:
            raise common.DataError(f"toy_strategy reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.reward != "binary" and self.hard_fraction != 0.0:
            raise common.DataError(
                f"toy_strategy reward={self.reward} rewards S1 the same way on every instance, so there is no hard "
                f"subset: set hard_fraction: 0.0 (got {self.hard_fraction})"
            )


def exact_counts(n: int, fractions: Any) -> np.ndarray:
    """Split n into integer counts closest to n * fractions (largest remainder), summing to n."""
    fractions = np.asarray(fractions, np.float64)
    raw = n * fractions / fractions.sum()
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


def _other(rng: np.random.Generator, avoid: set[int]) -> int:
    while True:  # rejection: at most 2 of 90 values are excluded
        x = int(rng.integers(_LOW, _HIGH))
        if x not in avoid:
            return x


def instances(n: int, hard_fraction: float, rng: np.random.Generator) -> list[tuple[int, int, int, bool]]:
    """n instances (a, b, c, hard) with exactly round(n * hard_fraction) hard rows at seeded positions."""
    hard = np.zeros(n, bool)
    hard[rng.permutation(n)[: exact_counts(n, (hard_fraction, 1 - hard_fraction))[0]]] = True
    rows = []
    for is_hard in hard:
        b = int(rng.integers(_LOW, _HIGH))
        a = _other(rng, {b}) if is_hard else b
        rows.append((a, b, _other(rng, {a, b}), bool(is_hard)))
    return rows


def execute(strategy: int, a: int, b: int, c: int) -> str:
    """The faithful trace of strategy 0/1/2 (S1/S2/S3): its token, a space, the number it copies."""
    return f"{STRATEGY_TOKENS[strategy]} {(a, b, c)[strategy]}"


class ToyStrategy(common.TaskBuilder, skip_registration=True):
    """TFDS builder; not registered globally, build and read it through rlvr_jax.data.sources."""

    name = "toy_strategy"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ToyStrategyConfig
    BUILDER_CONFIGS = [ToyStrategyConfig(name="default")]  # noqa: RUF012 (the TFDS API)

    def _info(self) -> tfds.core.DatasetInfo:
        return common.dataset_info(self, __doc__, FEATURES)

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        cfg = self.builder_config
        sizes = {"train": cfg.train_size, "test": cfg.test_size, "warmstart": cfg.warmstart_size}
        return {split: self._generate_examples(split, n) for split, n in sizes.items()}

    def _generate_examples(self, split: str, n: int) -> Iterator[tuple[str, dict[str, str]]]:
        cfg = self.builder_config
        rng = np.random.default_rng([cfg.seed, _SPLIT_STREAM[split]])
        rows = instances(n, cfg.hard_fraction, rng)
        strategies = None
        if split == "warmstart":
            strategies = np.repeat(np.arange(3), exact_counts(n, cfg.prior))[rng.permutation(n)]
        for i, (a, b, c, hard) in enumerate(rows):
            response = "" if strategies is None else execute(int(strategies[i]), a, b, c)
            # The subset names what the verifier needs (the task builds the gold from it): the binary
            # variant's easy / hard rows, else the variant itself (every row is alike).
            subset = ("hard" if hard else "easy") if cfg.reward == "binary" else cfg.reward
            yield (
                str(i),
                {
                    "id": f"toy_strategy/{split}/{i}",
                    "prompt": f"{a} {b} {c}",
                    "answer": str(b),
                    "subset": subset,
                    "response": response,
                },
            )


def _tokenizer_corpus(n: int = 4000, seed: int = 12345) -> list[str]:
    """Prompts and responses as the chat template lays them out (without its special tokens)."""
    rng = np.random.default_rng(seed)
    lines = []
    for a, b, c, _ in instances(n, 0.2, rng):
        lines += [f"user\n{a} {b} {c}", f"assistant\n {b}", f" {a} {c}"]
    return lines


def toy_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> Path:
    """A byte-level BPE (ChatML template) for the toy task, with each strategy token a single special id.

    Saved under `out_dir`, loadable with `AutoTokenizer.from_pretrained(out_dir)`. Its size is at most
    `vocab_size` (the strategy tokens included). Note: `decode(..., skip_special_tokens=True)` drops the
    strategy tokens along with the chat markers.
    """
    build_bpe_tokenizer_with_special_tokens(
        _tokenizer_corpus(), vocab_size, STRATEGY_TOKENS, out_dir, chat_template=CHATML_TEMPLATE
    )
    return Path(out_dir)


def warmstart_examples(data_dir: str | Path | None = None, **params: Any) -> list[dict[str, str]]:
    """All warm-start traces in file order: dicts with id, prompt, answer, subset, response."""
    from rlvr_jax.data import sources

    source = sources.load_split(ToyStrategy, "warmstart", data_dir, **params)
    return [common.decode_record(source[i]) for i in range(len(source))]
