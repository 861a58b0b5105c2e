"""On-device probability-mass statistics (ALGORITHMS.md section 4).

`class_probabilities` is the probe: at the first response position of fixed prompts, the exact
softmax mass of named token classes (e.g. the toy task's strategy tokens S1/S2/S3) and the rest.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from rlvr_jax.types import PromptBatch


def class_probabilities(model: Any, prompts: PromptBatch, classes: Sequence[Sequence[int]]) -> jax.Array:
    """f32[C + 1]: mean over prompts of each class's next-token probability, then the remaining mass.

    A class is a set of token ids (a class such as "S1" may have several spellings).
    """
    from rlvr_jax.model import positions_from_mask

    logits, _ = model(prompts.tokens, positions_from_mask(prompts.mask), prompts.mask)
    probs = jax.nn.softmax(logits[:, -1].astype(jnp.float32), axis=-1)  # left padded: last slot is real
    per_class = jnp.stack([probs[:, jnp.asarray(ids)].sum(axis=-1) for ids in classes], axis=-1)
    mean = per_class.mean(axis=0)
    return jnp.concatenate([mean, 1.0 - mean.sum(keepdims=True)])
