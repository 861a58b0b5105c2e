"""On-device probability-mass statistics (docs/algorithms.md section 4).

`probe_statistics` is the probe (see probe.py): at named decision positions of fixed prompts, the
exact softmax mass of named token classes (e.g. the toy task's strategy tokens S1/S2/S3) and the rest,
overall and per subset, the classes' logits (raw and centred) and the entropy of the next-token
distribution; `class_probabilities` is its mass part alone.
`sampled_token_stats` and `update_shift_stats` split the sampled tokens of an update by the sign of
their rollout's advantage (section 4 of docs/algorithms.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlvr_jax.types import PromptBatch


def decision_logits(model: Any, prompts: PromptBatch) -> jax.Array:
    """f32[B, V]: the next-token logits at the last prompt position (left padded: the last slot is real)."""
    from rlvr_jax.model import positions_from_mask

    logits, _ = model(prompts.tokens, positions_from_mask(prompts.mask), prompts.mask)
    return logits[:, -1].astype(jnp.float32)


def _class_mass(logits: jax.Array, member: jax.Array, applies: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(f32[C + 1] per-class mean mass and the rest, f32[B, C] each item's class masses)."""
    probs = jax.nn.softmax(logits, axis=-1)
    mass = (probs @ member.T) * applies  # [B, C]
    per_class = mass.sum(axis=0) / jnp.maximum(applies.sum(axis=0), 1.0)
    rest = jnp.mean(1.0 - mass.sum(axis=1))
    return jnp.concatenate([per_class, rest[None]]), mass


def class_probabilities(model: Any, prompts: PromptBatch, member: jax.Array, applies: jax.Array) -> jax.Array:
    """f32[C + 1]: each class's next-token probability at the last prompt position, averaged over the
    prompts it applies to, then the mean mass outside each prompt's classes ("rest").

    member f32[C, V]: 1 where token v belongs to class c (a class may have several spellings);
    applies f32[B, C]: 1 where prompt b defines class c.
    """
    return _class_mass(decision_logits(model, prompts), member, applies)[0]


def probe_statistics(
    model: Any,
    prompts: PromptBatch,
    member: jax.Array,
    applies: jax.Array,
    class_ids: jax.Array,
    in_subset: jax.Array,
) -> dict[str, jax.Array]:
    """Everything the probe logs, from one forward pass (docs/algorithms.md section 4):

    pi f32[C + 1]            as `class_probabilities`;
    pi_subset f32[S, C + 1]  the same averages over the items of each subset (in_subset f32[S, B]);
    logit f32[C]             log sum_{v in c} exp(z_v) of the raw logits z, averaged over the items of c;
    zc f32[C]                the same, centred: minus mean_v z_v of the item first (shift-free);
    entropy f32[], entropy_subset f32[S]: -sum_v pi_v log pi_v at the decision position, item mean.

    class_ids i32[C, K]: each class's token ids, padded with -1 (K = the most spellings of a class):
    the class logit gathers K columns instead of masking a [B, C, V] copy of the logits.
    """
    logits = decision_logits(model, prompts)
    pi, mass = _class_mass(logits, member, applies)
    # The statistics below reduce over the same logits; fused with the softmax above, XLA changes the
    # probabilities in their last bit. The barrier keeps `pi` exactly what `class_probabilities` (and
    # every run before these statistics existed) computes.
    pi, mass, logits = jax.lax.optimization_barrier((pi, mass, logits))
    # Per subset: the same ratios as `pi`, with each item weighted by its membership of the subset.
    count = in_subset @ applies  # [S, C]: items of the subset that define the class
    per_class = (in_subset @ mass) / jnp.maximum(count, 1.0)
    items = jnp.maximum(in_subset.sum(axis=1), 1.0)
    rest = (in_subset @ (1.0 - mass.sum(axis=1))) / items
    gathered = jnp.where(class_ids >= 0, logits[:, jnp.maximum(class_ids, 0)], -jnp.inf)  # [B, C, K]
    lse = jax.nn.logsumexp(gathered, axis=-1)  # [B, C]
    centred = lse - jnp.mean(logits, axis=-1, keepdims=True)
    defined = jnp.maximum(applies.sum(axis=0), 1.0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)  # [B]
    return {
        "pi": pi,
        "pi_subset": jnp.concatenate([per_class, rest[:, None]], axis=1),
        "logit": jnp.sum(jnp.where(applies > 0, lse, 0.0), axis=0) / defined,
        "zc": jnp.sum(jnp.where(applies > 0, centred, 0.0), axis=0) / defined,
        "entropy": jnp.mean(entropy),
        "entropy_subset": (in_subset @ entropy) / items,
    }


SIGNS = ("pos", "neg", "zero")
HIST_EDGES = tuple(i / 10 for i in range(11))  # fixed pi_old bins [0, .1), ..., [.9, 1]
SATURATED, RARE = 0.9, 0.01


def sign_masks(adv: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """f32[N, M] token masks of rollouts with positive / negative / zero advantage."""
    m = mask.astype(jnp.float32)
    a = adv[:, None]
    return {"pos": m * (a > 0), "neg": m * (a < 0), "zero": m * (a == 0)}


def _mean(x: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def sampled_token_stats(
    logp_old: jax.Array, adv: jax.Array, mask: jax.Array, entropy: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Before the update, per advantage sign: pi_old(y) mean, saturated (> 0.9) and rare (< 0.01)
    fractions, a 10-bin histogram (fractions), token count, mean entropy; and the share of tokens
    that carry a non-zero advantage. Means over a sign without tokens are 0 (see dyn/tokens/<sign>)."""
    p = jnp.exp(logp_old)
    out: dict[str, jax.Array] = {}
    masks = sign_masks(adv, mask)
    bins = jnp.clip(jnp.floor(p * 10).astype(jnp.int32), 0, 9)
    for sign, m in masks.items():
        out[f"dyn/tokens/{sign}"] = jnp.sum(m)
        out[f"dyn/pi_old/{sign}"] = _mean(p, m)
        out[f"dyn/saturated/{sign}"] = _mean((p > SATURATED).astype(jnp.float32), m)
        out[f"dyn/rare/{sign}"] = _mean((p < RARE).astype(jnp.float32), m)
        counts = jnp.zeros(10).at[bins.reshape(-1)].add(m.reshape(-1))
        out[f"dyn/hist/{sign}"] = counts / jnp.maximum(jnp.sum(m), 1.0)
        if entropy is not None:
            out[f"dyn/entropy/{sign}"] = _mean(entropy, m)
    total = jnp.maximum(jnp.sum(mask), 1)
    out["dyn/nonzero_adv_token_frac"] = (jnp.sum(masks["pos"]) + jnp.sum(masks["neg"])) / total
    return out


def update_shift_stats(
    before: tuple[jax.Array, jax.Array],
    after: tuple[jax.Array, jax.Array],
    logp_rollout: jax.Array,
    adv: jax.Array,
    mask: jax.Array,
) -> dict[str, jax.Array]:
    """Where the update moved mass, per advantage sign, from (log pi(y), log max_v pi(v)) at the sampled
    positions before and after the update: mean logp change of the sampled token, mean change of the
    top-1 probability, and how often the argmax itself was the sampled token. Also the sampler-vs-
    trainer mismatch |logp_rollout - logp_trainer| for the same params (~0 in f32 on one device)."""
    (logp0, top0), (logp1, top1) = before, after
    out: dict[str, jax.Array] = {}
    for sign, m in sign_masks(adv, mask).items():
        out[f"dyn/dlogp/{sign}"] = _mean(logp1 - logp0, m)
        out[f"dyn/dtop1/{sign}"] = _mean(jnp.exp(top1) - jnp.exp(top0), m)
        out[f"dyn/sampled_is_top1/{sign}"] = _mean((logp0 >= top0).astype(jnp.float32), m)
    m = mask.astype(jnp.float32)
    gap = jnp.abs(logp_rollout - logp0)
    out["dyn/sampler_mismatch/mean"] = _mean(gap, m)
    out["dyn/sampler_mismatch/max"] = jnp.max(gap * m)
    return out
