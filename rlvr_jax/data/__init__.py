"""Tasks as TFDS array_record datasets (built offline) and the grain prompt pipeline."""

from rlvr_jax.data.common import DataError, decode_record
from rlvr_jax.data.pipeline import PromptPipeline, StepBatch, evaluation_batches, prompt_dataset
from rlvr_jax.data.sources import (
    TASKS,
    build_task,
    load_task_source,
    task_builder,
    verification_target,
    warmstart_examples,
)
from rlvr_jax.data.toy_strategy import STRATEGY_TOKENS, toy_tokenizer

__all__ = [
    "STRATEGY_TOKENS",
    "TASKS",
    "DataError",
    "PromptPipeline",
    "StepBatch",
    "build_task",
    "decode_record",
    "evaluation_batches",
    "load_task_source",
    "prompt_dataset",
    "task_builder",
    "toy_tokenizer",
    "verification_target",
    "warmstart_examples",
]
