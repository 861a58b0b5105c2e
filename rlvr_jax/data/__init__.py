"""Prompt sources (TFDS array_record builders, built offline) and the grain prompt pipeline."""

from rlvr_jax.data.common import DataError, decode_record
from rlvr_jax.data.pipeline import PromptPipeline, StepBatch, evaluation_batches, prompt_dataset

__all__ = ["DataError", "PromptPipeline", "StepBatch", "decode_record", "evaluation_batches", "prompt_dataset"]
