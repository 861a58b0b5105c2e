"""The prompt pipeline: a grain `MapDataset` over a random-access prompt source, random access by step.

Order: grain's keyed shuffle of the whole split, reshuffled each epoch (per-epoch seed derived from
the data seed), repeated forever. The global stream position of row r of step k is k * B + r, so
step k's batch is a pure function of (seed, k): a resumed run needs only the step, and a fresh
pipeline reproduces any step. Process p of P reads the contiguous rows [p * B/P, (p+1) * B/P) of the
global batch, so the processes together hold exactly the single-process batch, in order (the layout
`jax.make_array_from_process_local_data` expects for a batch sharded over processes).

Prompts are rendered with the chat template (or the plain template), tokenised without adding
special tokens (the template carries them) and left padded to the static width max_prompt_len.
A batch can straddle an epoch boundary; it then may hold one example twice (end of epoch e, start of
e + 1), which is harmless for RL sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from rlvr_jax.config import DataConfig, LongPrompt
from rlvr_jax.data import common
from rlvr_jax.tokenizer import render_messages, render_prompt


class StepBatch(NamedTuple):
    """One process's share of a step: `arrays` fits `PromptBatch(**arrays)`; `examples` are host-side."""

    arrays: dict[str, np.ndarray]  # tokens i32[B, P] (left padded), mask i32[B, P], index i32[B] (global)
    examples: list[dict[str, Any]]  # id, prompt (text), messages, answer, subset, columns, truncated

    @property
    def metrics(self) -> dict[str, float]:
        """Host metrics of this batch (data/truncated: prompts cut to max_prompt_len, this process)."""
        return {"data/truncated": float(sum(e["truncated"] for e in self.examples))}


def shuffle_seed(seed: int) -> int:
    # grain seeds epoch e with (seed + e); hashing the data seed first keeps run seed s + 1 from
    # replaying run s's epoch-1 order.
    return int(np.random.SeedSequence([seed, 0x6461_7461]).generate_state(1)[0])


def _with_index(index: int, record: Any) -> tuple[int, Any]:
    return index, record


Normalize = Callable[[Any, int], dict[str, Any]]  # (record, row index) -> example (Task.example)


class _Encode:
    """Record -> one padded row; a module-level class, not a closure, so the dataset pickles (grain's
    multiprocessing needs that)."""

    def __init__(self, tokenizer: Any, cfg: DataConfig, length: int, normalize: Normalize = common.builtin_example):
        self.tokenizer, self.cfg, self.length, self.normalize = tokenizer, cfg, length, normalize

    def __call__(self, item: tuple[int, dict[str, Any]]) -> dict[str, Any]:
        index, record = item
        # The source repeats modulo its length; `index` arrives as epoch * length + i.
        ex = self.normalize(record, index % self.length)
        ids = self.tokenizer.encode(render(self.tokenizer, ex, self.cfg), add_special_tokens=False)
        truncated = check_length(ex["id"], len(ids), self.cfg)
        width = self.cfg.max_prompt_len
        ids = ids[-width:]  # keep the end: the generation prompt must survive truncation
        tokens = np.full(width, self.tokenizer.pad_token_id, np.int32)
        mask = np.zeros(width, np.int32)
        tokens[width - len(ids) :] = ids
        mask[width - len(ids) :] = 1
        example = {**ex, "truncated": truncated}
        return {"tokens": tokens, "mask": mask, "index": index % self.length, "example": example}


def render(tokenizer: Any, example: dict[str, Any], cfg: DataConfig) -> str:
    """The text the policy sees for an example: its chat messages, or its prompt as one user message."""
    if example.get("messages"):
        return render_messages(tokenizer, example["messages"], cfg.chat_template, cfg.plain_template)
    return render_prompt(tokenizer, example["prompt"], cfg.chat_template, cfg.plain_template)


def check_length(example_id: str, tokens: int, cfg: DataConfig) -> bool:
    """Whether the prompt is cut to max_prompt_len; an empty or (with long_prompt=error) too long one is an error."""
    if tokens == 0:
        raise common.DataError(f"example {example_id}: the rendered prompt is empty (no tokens)")
    truncated = tokens > cfg.max_prompt_len
    if truncated and cfg.long_prompt == LongPrompt.error:
        raise common.DataError(
            f"example {example_id} has a {tokens}-token prompt, more than "
            f"data.max_prompt_len={cfg.max_prompt_len}; raise the limit or set data.long_prompt=truncate"
        )
    return truncated


def _stack(rows: Sequence[dict[str, Any]]) -> StepBatch:
    arrays = {
        "tokens": np.stack([r["tokens"] for r in rows]),
        "mask": np.stack([r["mask"] for r in rows]),
        "index": np.asarray([r["index"] for r in rows], np.int32),
    }
    return StepBatch(arrays, [r["example"] for r in rows])


def prompt_dataset(
    source: Sequence[Any],
    tokenizer: Any,
    cfg: DataConfig,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    normalize: Normalize = common.builtin_example,
) -> grain.MapDataset:
    """Infinite grain dataset whose element k is this process's `StepBatch` of step k."""
    if cfg.prompts_per_step % process_count:
        raise common.DataError(
            f"data.prompts_per_step={cfg.prompts_per_step} must divide evenly over {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise common.DataError(f"process_index {process_index} is outside 0..{process_count - 1}")
    if len(source) == 0:
        raise common.DataError("the data source is empty")
    local = cfg.prompts_per_step // process_count
    ds = grain.MapDataset.source(source)
    ds = ds.map_with_index(_with_index)  # before the shuffle: the index is the global example index
    ds = ds.shuffle(seed=shuffle_seed(seed)).repeat()
    ds = ds.map(_Encode(tokenizer, cfg, len(source), normalize))
    # Local batch j covers stream rows [j * local, (j + 1) * local); process p of step k takes
    # batch k * P + p, i.e. rows k * B + p * local onwards.
    return ds.batch(local, batch_fn=_stack)[process_index::process_count]


class PromptPipeline:
    """Prompts of one split for one process, addressed by step (no iterator state)."""

    def __init__(
        self,
        source: Sequence[Any],
        data_cfg: DataConfig,
        tokenizer: Any,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        normalize: Normalize = common.builtin_example,
    ):
        self.source = source
        self.data_cfg = data_cfg
        self.dataset = prompt_dataset(self.source, tokenizer, data_cfg, seed, process_index, process_count, normalize)

    def __len__(self) -> int:
        """Examples in the split."""
        return len(self.source)

    @property
    def steps_per_epoch(self) -> float:
        return len(self.source) / self.data_cfg.prompts_per_step

    def batch(self, step: int) -> StepBatch:
        """This process's rows of global step `step` (any step, in any order)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.dataset[step]

    def iterator(self, start_step: int = 0, read_options: grain.ReadOptions | None = None) -> grain.DatasetIterator:
        """A grain iterator from `start_step` (get_state/set_state work) for code that wants one.

        One reader thread and a few batches ahead by default: grain's default (16 threads, 500
        elements) would tokenise hundreds of steps ahead and share one HF tokenizer across threads.
        """
        options = read_options or grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
        return iter(self.dataset[start_step:].to_iter_dataset(options))


def evaluation_batches(
    source: Sequence[Any],
    tokenizer: Any,
    cfg: DataConfig,
    problems_per_batch: int,
    max_problems: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    normalize: Normalize = common.builtin_example,
) -> list[tuple[StepBatch, int]]:
    """The first `max_problems` problems of a split in source order (no shuffle), as (batch, valid rows).

    Every batch has the same static shape (the last one is padded by repeating its final row, which
    the caller drops), so the sampler compiles once. With several processes each one takes the same
    contiguous share of every batch as in training.
    """
    if problems_per_batch % process_count:
        raise common.DataError(
            f"eval.batch_problems={problems_per_batch} must divide evenly over {process_count} processes"
        )
    total = len(source) if max_problems is None else min(max_problems, len(source))
    if total == 0:
        raise common.DataError("the evaluation split is empty")
    encode = _Encode(tokenizer, cfg, len(source), normalize)
    local = problems_per_batch // process_count
    out = []
    for start in range(0, total, problems_per_batch):
        rows = list(range(start, min(start + problems_per_batch, total)))
        mine = rows[process_index * local : (process_index + 1) * local]
        valid = len(mine)
        mine = (mine or rows[-1:]) + [(mine or rows)[-1]] * (local - max(valid, 1))
        out.append((_stack([encode((i, source[i])) for i in mine]), valid))
    return out


def scan_prompts(
    source: Sequence[Any],
    tokenizer: Any,
    cfg: DataConfig,
    normalize: Normalize = common.builtin_example,
    what: str = "",
) -> int:
    """Render and tokenize every row once, before any expensive work: the first bad row (not a valid
    example, an empty prompt, too long with long_prompt=error) is an error naming it. Returns the number
    of prompts that data.long_prompt=truncate will cut."""
    truncated = 0
    for start in range(0, len(source), 512):
        rows = range(start, min(start + 512, len(source)))
        examples = [normalize(source[i], i) for i in rows]
        texts = [render(tokenizer, ex, cfg) for ex in examples]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        for ex, length in zip(examples, lengths):
            try:
                truncated += check_length(ex["id"], length, cfg)
            except common.DataError as err:
                raise common.DataError(f"{what}: {err}" if what else str(err)) from None
    return truncated
