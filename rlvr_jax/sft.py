"""Supervised warm start: maximise log pi(response | prompt) on traces (builds the toy base policy).

Uses the policy's own forward and the loss module's token log-probs; one jitted, donated step
(`update.jit_step`) with AdamW. The loss is the token-mean negative log-likelihood of the response,
which ends with the end-of-turn token so the policy learns to stop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlvr_jax.loss import completion_logp_entropy
from rlvr_jax.tokenizer import encode_left_padded
from rlvr_jax.types import TrainBatch, TrainState


@dataclasses.dataclass(frozen=True)
class SFTSpec:
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    max_response_len: int = 8


def encode_traces(
    tok: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_prompt_len: int,
    max_response_len: int,
    end_token: str,
) -> TrainBatch:
    """Rendered prompts (left padded) and responses + end token (right padded) as a TrainBatch."""
    prompt_ids, prompt_mask = encode_left_padded(tok, prompts, max_prompt_len)
    n = len(responses)
    tokens = np.full((n, max_response_len), tok.pad_token_id, np.int32)
    mask = np.zeros((n, max_response_len), np.int32)
    end_id = tok.convert_tokens_to_ids(end_token)
    for row, text in enumerate(responses):
        ids = tok.encode(text, add_special_tokens=False) + [end_id]
        if len(ids) > max_response_len:
            raise ValueError(
                f"trace {row} has {len(ids)} response tokens, more than max_response_len={max_response_len}"
            )
        tokens[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    zeros = np.zeros((n, max_response_len), np.float32)
    return TrainBatch(
        prompt_tokens=prompt_ids,
        prompt_mask=prompt_mask,
        tokens=tokens,
        mask=mask,
        logp_old=zeros,
        adv=np.ones(n, np.float32),
        weight=np.ones(n, np.float32),
    )


def sft_step(
    state: TrainState, batch: TrainBatch, graphdef: nnx.GraphDef, tx: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on the response tokens' mean negative log-likelihood."""

    def nll(params: Any) -> jax.Array:
        logp, _ = completion_logp_entropy(nnx.merge(graphdef, params), batch)
        m = batch.mask.astype(jnp.float32)
        return -jnp.sum(logp * m) / jnp.maximum(jnp.sum(m), 1.0)

    loss, grads = jax.value_and_grad(nll)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), {"sft/loss": loss}


def batch_rows(data: TrainBatch, step: int, batch_size: int, seed: int) -> TrainBatch:
    """Rows of SFT batch `step`: a keyed permutation per epoch, so the order is a function of (seed, step)."""
    n = data.tokens.shape[0]
    per_epoch = max(n // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    rows = order[k * batch_size : (k + 1) * batch_size]
    return jax.tree.map(lambda x: np.asarray(x)[rows], data)
