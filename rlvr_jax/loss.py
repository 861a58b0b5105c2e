"""Token log-probs, the PPO / GSPO policy objectives, KL to a reference, entropy, aggregation.

Formulas (docs/algorithms.md section 3), per completion token t of rollout i, w = exp(logp - logp_old):
  PPO:   l = -min(w A, clip(w, 1 - eps_low, 1 + eps_high) A); dual-clip for A < 0: min(l, -c A)
  GSPO:  s_i = exp(mean_t (logp - logp_old)); l_i = -min(s_i A_i, clip(s_i) A_i), on every token of i
  KL:    k1 = log(p/q), k2 = 0.5 log(p/q)^2, k3 = q/p - 1 - log(q/p), p = pi_theta, q = pi_ref
Aggregation divides a sum of per-row contributions by a normaliser computed over the WHOLE batch
(`normaliser`), so micro-batches that each divide by the global normaliser sum to the big-batch loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rlvr_jax.config import Aggregation, KLEstimator, LossConfig, PolicyObjective
from rlvr_jax.model import positions_from_mask
from rlvr_jax.model.decoder import head_logits
from rlvr_jax.types import TrainBatch


def _logp_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = head_logits(hidden, head)  # [B, T, V] f32, the one materialisation
    logz = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz
    probs = jnp.exp(logits - logz[..., None])
    entropy = logz - jnp.sum(probs * logits, axis=-1)
    return logp, entropy


def _logp_top1(hidden: jax.Array, head: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = head_logits(hidden, head)
    logz = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz
    return logp, jnp.max(logits, axis=-1) - logz


def _chunked(
    fn: Callable, hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """fn(hidden, head, targets) -> two f32 [B, T] arrays, `chunk` positions at a time under remat."""
    t = hidden.shape[1]
    if chunk <= 0 or chunk >= t:
        return fn(hidden, head, targets)
    pad = (-t) % chunk
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    y = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    h = h.reshape(h.shape[0], n, chunk, h.shape[-1]).swapaxes(0, 1)
    y = y.reshape(y.shape[0], n, chunk).swapaxes(0, 1)
    body = jax.checkpoint(lambda hy: fn(hy[0], head, hy[1]))
    a, b = jax.lax.map(body, (h, y))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(x.shape[1], -1)[:, :t]  # noqa: E731
    return unchunk(a), unchunk(b)


def token_logp_entropy(
    hidden: jax.Array, head: jax.Array, targets: jax.Array, chunk: int = 0
) -> tuple[jax.Array, jax.Array]:
    """log pi(targets) and the full-distribution entropy, f32 [B, T], from hidden [B, T, D].

    With `chunk` > 0 the T axis is processed `chunk` tokens at a time under remat, so the backward
    pass holds one [B, chunk, V] block instead of [B, T, V].
    """
    return _chunked(_logp_entropy, hidden, head, targets, chunk)


def _completion(model: Any, batch: TrainBatch, fn: Callable, chunk: int) -> tuple[jax.Array, jax.Array]:
    tokens = jnp.concatenate([batch.prompt_tokens, batch.tokens], axis=1)
    mask = jnp.concatenate([batch.prompt_mask, batch.mask], axis=1)
    hidden, _ = model.hidden_states(tokens, positions_from_mask(mask), mask)
    p = batch.prompt_tokens.shape[1]
    return _chunked(fn, hidden[:, p - 1 : -1], model.head_weight(), batch.tokens, chunk)


def completion_logp_entropy(model: Any, batch: TrainBatch, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """Run the policy over prompt + completion; log-probs and entropies at the completion tokens."""
    return _completion(model, batch, _logp_entropy, chunk)


def completion_logp_top1(model: Any, batch: TrainBatch, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """log pi(y_t) of the completion tokens and log max_v pi(v) at the same positions (no gradient use)."""
    return _completion(model, batch, _logp_top1, chunk)


def ppo_token_loss(logp: jax.Array, logp_old: jax.Array, adv: jax.Array, cfg: LossConfig) -> tuple[jax.Array, ...]:
    """Per-token clipped objective [N, M], the ratio, and where the clip is active."""
    a = adv[:, None]
    ratio = jnp.exp(logp - logp_old)
    clipped_ratio = jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    loss = -jnp.minimum(ratio * a, clipped_ratio * a)
    if cfg.dual_clip is not None:
        loss = jnp.where(a < 0, jnp.minimum(loss, -cfg.dual_clip * a), loss)
    active = ((a > 0) & (ratio > 1.0 + cfg.eps_high)) | ((a < 0) & (ratio < 1.0 - cfg.eps_low))
    return loss, ratio, active


def gspo_token_loss(
    logp: jax.Array, logp_old: jax.Array, adv: jax.Array, mask: jax.Array, cfg: LossConfig
) -> tuple[jax.Array, ...]:
    """GSPO: s_i = exp(sum_t m_it log w_it / max(sum_t m_it, 1)) = (pi(y_i) / pi_old(y_i))^(1/|y_i|), the
    length-normalised sequence ratio; l_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i) is placed
    on each token of rollout i (seq_mean_token_mean then gives the paper's mean over sequences)."""
    m = mask.astype(jnp.float32)
    log_s = jnp.sum((logp - logp_old) * m, axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    s = jnp.exp(log_s)
    loss = -jnp.minimum(s * adv, jnp.clip(s, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * adv)
    active = ((adv > 0) & (s > 1.0 + cfg.eps_high)) | ((adv < 0) & (s < 1.0 - cfg.eps_low))
    shape = logp.shape
    return (
        jnp.broadcast_to(loss[:, None], shape),
        jnp.broadcast_to(s[:, None], shape),
        jnp.broadcast_to(active[:, None], shape),
    )


def kl_penalty(logp: jax.Array, logp_ref: jax.Array, estimator: KLEstimator) -> jax.Array:
    """Per-token KL(pi_theta || pi_ref) estimate from the sampled token's log-probs."""
    log_ratio = logp - logp_ref  # log(p / q)
    if estimator == KLEstimator.k1:
        return log_ratio
    if estimator == KLEstimator.k2:
        return 0.5 * log_ratio**2
    return jnp.exp(-log_ratio) - 1.0 + log_ratio  # k3: q/p - 1 - log(q/p)


def normaliser(mask: jax.Array, weight: jax.Array, mode: Aggregation) -> jax.Array:
    """Denominator of the aggregated loss over a whole batch: kept tokens, or kept sequences."""
    if mode == Aggregation.token_mean:
        return jnp.maximum(jnp.sum(mask * weight[:, None]), 1.0)
    return jnp.maximum(jnp.sum(weight), 1.0)


def row_contributions(
    per_token: jax.Array, mask: jax.Array, weight: jax.Array, mode: Aggregation, max_len: int
) -> jax.Array:
    """Numerator terms per row [N]; `sum(row_contributions) / normaliser` is the aggregated value."""
    m = mask.astype(jnp.float32)
    sums = jnp.sum(per_token * m, axis=1)
    if mode == Aggregation.token_mean:
        return weight * sums
    if mode == Aggregation.seq_mean_token_mean:
        return weight * sums / jnp.maximum(m.sum(axis=1), 1.0)
    return weight * sums / max_len  # Dr.GRPO: a constant length, no per-sequence length bias


def policy_loss(
    logp: jax.Array, entropy: jax.Array, batch: TrainBatch, cfg: LossConfig, max_len: int, norm: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Aggregated loss (divided by the batch-wide `norm`) and summable metric terms."""
    if cfg.objective == PolicyObjective.ppo:
        per_token, ratio, active = ppo_token_loss(logp, batch.logp_old, batch.adv, cfg)
    else:
        per_token, ratio, active = gspo_token_loss(logp, batch.logp_old, batch.adv, batch.mask, cfg)
    if cfg.entropy_coef:
        per_token = per_token - cfg.entropy_coef * entropy
    kl = None
    if cfg.kl_beta > 0:
        kl = kl_penalty(logp, batch.logp_ref, cfg.kl_estimator)
        per_token = per_token + cfg.kl_beta * kl
    rows = row_contributions(per_token, batch.mask, batch.weight, cfg.aggregation, max_len)
    loss = jnp.sum(rows) / norm
    return loss, _metric_terms(batch, ratio, active, entropy, kl)


def _metric_terms(
    batch: TrainBatch, ratio: jax.Array, active: jax.Array, entropy: jax.Array, kl: jax.Array | None
) -> dict[str, jax.Array]:
    """Sums, counts, mins and maxes that combine across micro-batches (see `finalize_metrics`)."""
    m = batch.mask.astype(bool)
    kept = m & (batch.weight[:, None] > 0)
    pos, neg = m & (batch.adv[:, None] > 0), m & (batch.adv[:, None] < 0)
    f = lambda x: x.astype(jnp.float32)  # noqa: E731
    terms = {
        "sum/tokens": jnp.sum(f(m)),
        "sum/tokens_kept": jnp.sum(f(kept)),
        "sum/tokens_pos": jnp.sum(f(pos)),
        "sum/tokens_neg": jnp.sum(f(neg)),
        "sum/clip_pos": jnp.sum(f(active & pos)),
        "sum/clip_neg": jnp.sum(f(active & neg)),
        "sum/ratio": jnp.sum(jnp.where(m, ratio, 0.0)),
        "sum/entropy": jnp.sum(jnp.where(m, entropy, 0.0)),
        "min/ratio": jnp.min(jnp.where(m, ratio, jnp.inf)),
        "max/ratio": jnp.max(jnp.where(m, ratio, -jnp.inf)),
    }
    if kl is not None:
        terms["sum/kl"] = jnp.sum(jnp.where(m, kl, 0.0))
    return terms


# How a term combines, from its key's prefix: (pairwise op, reduction over a stacked axis).
_TERM_OPS = {"sum": (jnp.add, jnp.sum), "min": (jnp.minimum, jnp.min), "max": (jnp.maximum, jnp.max)}


def _term_ops(key: str) -> tuple:
    return _TERM_OPS[key.split("/")[0]]


def combine_terms(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Two micro-batches' terms as one."""
    return {k: _term_ops(k)[0](a[k], b[k]) for k in a}


def reduce_terms(stacked: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Terms stacked along axis 0 (one row per optimizer step) as one."""
    return {k: _term_ops(k)[1](v, axis=0) for k, v in stacked.items()}


def finalize_metrics(terms: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Turn combined terms into the logged metrics (fractions and means)."""
    per = lambda num, den: terms[num] / jnp.maximum(terms[den], 1.0)  # noqa: E731
    out = {
        "clip_frac/pos": per("sum/clip_pos", "sum/tokens_pos"),
        "clip_frac/neg": per("sum/clip_neg", "sum/tokens_neg"),
        "clip_frac": (terms["sum/clip_pos"] + terms["sum/clip_neg"]) / jnp.maximum(terms["sum/tokens"], 1.0),
        "ratio/mean": per("sum/ratio", "sum/tokens"),
        "ratio/min": terms["min/ratio"],
        "ratio/max": terms["max/ratio"],
        "entropy": per("sum/entropy", "sum/tokens"),
        "tokens": terms["sum/tokens"],
        "tokens_kept": terms["sum/tokens_kept"],
    }
    if "sum/kl" in terms:
        out["kl"] = per("sum/kl", "sum/tokens")
    return out
