"""Contracts between pipeline stages: small typed pytrees with their shapes in the annotations.

Alphabet: B prompts, G samples per prompt, P prompt tokens, M new tokens, V vocab.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class PromptBatch:
    tokens: jax.Array  # i32[B, P], left padded
    mask: jax.Array  # i32[B, P], 1 on real tokens
    index: jax.Array  # i32[B], global prompt index: seeds each prompt's sampling stream


@struct.dataclass
class Rollout:
    prompt_tokens: jax.Array  # i32[B*G, P], prompt b repeated G times (row b*G + g)
    prompt_mask: jax.Array  # i32[B*G, P]
    tokens: jax.Array  # i32[B*G, M], pad after the stop token
    mask: jax.Array  # i32[B*G, M], 1 on generated tokens (the stop token included)
    lengths: jax.Array  # i32[B*G], generated tokens per sequence
    eos: jax.Array  # bool[B*G], True: stopped on a stop id; False: hit max_new_tokens
    logp: jax.Array  # f32[B*G, M], log pi(y_t) under the un-tempered policy (PPO's logp_old)
    entropy: jax.Array | None = None  # f32[B*G, M], the un-tempered policy's entropy (evaluation only)
    # i32[] (replicated): the row-steps the decode loop ran, over the whole batch (all processes); with
    # live-row compaction (rollout.compact_rows) fewer than rows x steps.
    decode_row_steps: jax.Array | None = None

    @property
    def finish_reasons(self) -> list[str]:
        return ["eos" if bool(e) else "length" for e in jax.device_get(self.eos)]


@struct.dataclass
class TrainBatch:
    """What the update step reads: one rollout batch with its advantages (N = B*G rows)."""

    prompt_tokens: jax.Array  # i32[N, P]
    prompt_mask: jax.Array  # i32[N, P]
    tokens: jax.Array  # i32[N, M]
    mask: jax.Array  # i32[N, M], 1 on tokens that count in the loss
    logp_old: jax.Array  # f32[N, M], log pi_old(y_t) recorded by the sampler
    adv: jax.Array  # f32[N], advantage of each rollout
    weight: jax.Array  # f32[N], 1 for rollouts that count in the loss normaliser
    logp_ref: jax.Array | None = None  # f32[N, M] under the frozen reference (only when kl_beta > 0)
    adv_unfiltered: jax.Array | None = None  # f32[N], before the sign filter: splits the dynamics statistics


@struct.dataclass
class TrainState:
    """Everything the next update reads (and a checkpoint must hold)."""

    params: Any  # nnx.State of the policy
    opt_state: Any  # optax state
    step: jax.Array  # i32[]: update calls done (one per rollout batch)
    skipped: jax.Array  # i32[]: optimizer steps skipped for non-finite gradients
