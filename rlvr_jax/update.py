"""The jitted, sharded, donated update step: `(TrainState, TrainBatch) -> (TrainState, metrics)`.

One call consumes one rollout batch: `epochs` passes, each split into `mini_batches` optimizer steps
(PPO-style reuse: after the first step the ratios move off 1 and clipping acts), each optimizer step
accumulating gradients over `micro_batches` with `lax.scan`. Every loss divides by a normaliser of
its whole mini-batch, so the accumulated gradient equals the one-big-batch gradient. A step whose
gradients are not finite leaves params and optimizer state untouched and is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rlvr_jax.config import LossConfig, OptimConfig, Schedule
from rlvr_jax.dynamics import sampled_token_stats, update_shift_stats
from rlvr_jax.loss import (
    completion_logp_entropy,
    completion_logp_top1,
    finalize_metrics,
    normaliser,
    policy_loss,
    reduce_terms,
)
from rlvr_jax.mesh import Rules, replicated, sharding_for, tree_shardings
from rlvr_jax.types import TrainBatch, TrainState


@dataclasses.dataclass(frozen=True)
class UpdateSpec:
    """Static settings of the update step (hashable: part of the compiled function)."""

    loss: LossConfig
    optim: OptimConfig
    max_len: int  # constant length of seq_mean_token_sum_norm


def learning_rate(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to cfg.lr, then constant, cosine or linear decay over the remaining steps."""
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == Schedule.constant:
        after = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == Schedule.cosine:
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps)
    else:
        after = optax.linear_schedule(cfg.lr, 0.0, decay_steps)
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (no weight decay on vectors: norms and biases)."""
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    adamw = optax.adamw(
        learning_rate(cfg, total_steps),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw) if cfg.max_grad_norm > 0 else adamw


def total_optimizer_steps(optim: OptimConfig, rl_steps: int) -> int:
    return rl_steps * optim.epochs * optim.mini_batches


def _split_rows(batch: TrainBatch, parts: int) -> TrainBatch:
    """[N, ...] -> [parts, N / parts, ...], part k = rows k, k + parts, ... (strided, so each
    device's contiguous row block contributes equally to every part and nothing moves)."""

    def split(x: jax.Array | None) -> jax.Array | None:
        if x is None:
            return None
        if x.shape[0] % parts:
            raise ValueError(
                f"{x.shape[0]} rollouts do not split into {parts} equal parts; make "
                "prompts_per_step * group_size divisible by mini_batches * micro_batches"
            )
        return x.reshape(x.shape[0] // parts, parts, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch, is_leaf=lambda x: x is None)


def _grads(graphdef: nnx.GraphDef, params: Any, mini: TrainBatch, spec: UpdateSpec) -> tuple[Any, dict, jax.Array]:
    """Gradient of one mini-batch, accumulated over micro-batches; (grads, metric terms, loss)."""
    norm = normaliser(mini.mask, mini.weight, spec.loss.aggregation)

    def loss_fn(p: Any, micro: TrainBatch) -> tuple[jax.Array, dict]:
        logp, entropy = completion_logp_entropy(nnx.merge(graphdef, p), micro, spec.loss.logits_chunk)
        return policy_loss(logp, entropy, micro, spec.loss, spec.max_len, norm)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    micros = _split_rows(mini, spec.optim.micro_batches)
    if spec.optim.micro_batches == 1:
        (loss, terms), grads = grad_fn(params, jax.tree.map(lambda x: x[0], micros))
        return grads, terms, loss

    # Every micro-batch runs inside the scan, from zero gradients. With the first one peeled off
    # before the loop, micro_batches=2 left a one-trip loop that XLA inlines, and both micro-batches'
    # activations were live at once (XLA:CPU temp bytes equal to micro_batches=1's; about half now).
    def body(carry, micro):
        g_acc, loss_acc = carry
        (loss, t), g = grad_fn(params, micro)
        return (jax.tree.map(jnp.add, g_acc, g), loss_acc + loss), t

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32))
    (grads, loss), terms = jax.lax.scan(body, zeros, micros)
    return grads, reduce_terms(terms), loss


def _token_view(
    graphdef: nnx.GraphDef, params: Any, batch: TrainBatch, spec: UpdateSpec
) -> tuple[jax.Array, jax.Array]:
    """(log pi(y), log top-1 prob) at the sampled tokens, micro-batched like the loss (no gradients)."""
    parts = spec.optim.mini_batches * spec.optim.micro_batches
    fn = lambda b: completion_logp_top1(nnx.merge(graphdef, params), b, spec.loss.logits_chunk)  # noqa: E731
    logp, top1 = jax.lax.map(fn, _split_rows(batch, parts))
    merge = lambda x: x.swapaxes(0, 1).reshape(-1, x.shape[-1])  # noqa: E731  (inverse of the strided split)
    return jax.lax.stop_gradient(merge(logp)), jax.lax.stop_gradient(merge(top1))


def train_step(
    state: TrainState,
    batch: TrainBatch,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    spec: UpdateSpec,
    dynamics: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """epochs x mini_batches optimizer steps over one rollout batch.

    Sampled-token statistics per advantage sign are always logged (they read only the batch); with
    `dynamics`, two extra forward passes (before and after the update) measure where the update
    moved probability mass (`dynamics.update_shift_stats`).
    """
    # Split by the rollout's own advantage sign, before any sign filter: under negative-only training
    # the positive rollouts still show what happens to tokens the loss no longer pushes.
    sign_of = batch.adv if batch.adv_unfiltered is None else batch.adv_unfiltered
    stats = sampled_token_stats(batch.logp_old, sign_of, batch.mask)
    before = _token_view(graphdef, state.params, batch, spec) if dynamics else None
    minis = _split_rows(batch, spec.optim.mini_batches)
    schedule = jax.tree.map(lambda x: jnp.concatenate([x] * spec.optim.epochs), minis)

    def opt_step(carry, mini):
        params, opt_state, skipped = carry
        grads, terms, loss = _grads(graphdef, params, mini, spec)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        out = {"loss": loss, "grad_norm": grad_norm}
        return (keep(new_params, params), keep(new_opt_state, opt_state), skipped + (~finite)), (out, terms)

    carry = (state.params, state.opt_state, state.skipped)
    (params, opt_state, skipped), (per_step, terms) = jax.lax.scan(opt_step, carry, schedule)
    terms = (
        jax.tree.map(lambda x: x[0], terms) if spec.optim.epochs * spec.optim.mini_batches == 1 else reduce_terms(terms)
    )
    metrics = {
        **finalize_metrics(terms),
        "loss": per_step["loss"].mean(),
        "loss/first": per_step["loss"][0],
        "grad_norm": per_step["grad_norm"].mean(),
        "update/skipped_total": skipped,
        "update/optimizer_steps": jnp.asarray(per_step["loss"].shape[0], jnp.int32),
    }
    metrics.update(stats)
    if dynamics:
        after = _token_view(graphdef, params, batch, spec)
        metrics.update(update_shift_stats(before, after, batch.logp_old, sign_of, batch.mask))
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1, skipped=skipped)
    return new_state, metrics


def _fresh_state(tx: optax.GradientTransformation) -> Callable[[Any], TrainState]:
    def make(params: Any) -> TrainState:
        return TrainState(
            params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32)
        )

    return make


def init_train_state(params: Any, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules) -> TrainState:
    """The whole train state, created under jit directly in its sharded layout."""
    make = _fresh_state(tx)
    abstract = jax.eval_shape(make, params)
    with jax.set_mesh(mesh):
        return jax.jit(make, out_shardings=tree_shardings(abstract, mesh, rules))(params)


def abstract_train_state(params: Any, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules) -> TrainState:
    """Shapes, dtypes and target shardings of the train state, allocating nothing (a restore target)."""
    abstract = jax.eval_shape(_fresh_state(tx), params)
    shardings = tree_shardings(abstract, mesh, rules)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def batch_shardings(batch: TrainBatch, mesh: Mesh, rules: Rules) -> TrainBatch:
    """Rows over the batch axes (data x fsdp), everything else replicated."""

    def one(x: jax.Array | None) -> NamedSharding | None:
        if x is None:
            return None
        return sharding_for(("batch",) + (None,) * (x.ndim - 1), mesh, rules, x.shape)

    return jax.tree.map(one, batch, is_leaf=lambda x: x is None)


def jit_step(
    fn: Callable[[TrainState, Any], tuple[TrainState, dict]], state: TrainState, mesh: Mesh, rules: Rules
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Jit `fn(state, batch)` once per batch shape with explicit in/out shardings, donating the state."""
    state_sh = tree_shardings(state, mesh, rules)
    compiled: dict[str, Callable] = {}

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        key = str(jax.tree.map(lambda x: (x.shape, x.dtype), batch))
        if key not in compiled:
            batch_sh = batch_shardings(batch, mesh, rules)
            compiled[key] = (
                batch_sh,
                jax.jit(
                    fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated(mesh)), donate_argnums=0
                ),
            )
        batch_sh, fn_jit = compiled[key]
        # Rollout outputs (or host arrays) arrive in whatever layout produced them: put rows on the batch axes.
        batch = jax.device_put(batch, batch_sh)
        with jax.set_mesh(mesh):
            return fn_jit(state, batch)

    return step


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    spec: UpdateSpec,
    state: TrainState,
    mesh: Mesh,
    rules: Rules,
) -> Callable[..., tuple[TrainState, dict]]:
    """The RL update step, jitted at this boundary: `step(state, batch, dynamics=False)` (two compiled
    variants; the one with the post-update pass runs every `logging.dynamics_every` steps)."""
    plain = jit_step(lambda s, b: train_step(s, b, graphdef, tx, spec), state, mesh, rules)
    measured = jit_step(lambda s, b: train_step(s, b, graphdef, tx, spec, dynamics=True), state, mesh, rules)
    return lambda state, batch, dynamics=False: (measured if dynamics else plain)(state, batch)
