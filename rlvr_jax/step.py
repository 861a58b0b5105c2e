"""One RL step, written as its stages: prompts -> rollout -> reference -> reward -> advantage -> update.

`rl_step(ctx, state, step)` is the whole step; each line calls into the module that owns the stage.
`StepContext` holds what a step reads besides the train state (built once by `loop.setup`); the
`StepRecord` it returns carries the step's metrics and this process's rollouts to the hooks
(rlvr_jax/hooks.py), which do the cadence work (evaluation, probe, logging, checkpoints).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import advantage as adv_lib
from rlvr_jax.config import AdvantageConfig, Config, SignFilter
from rlvr_jax.data import PromptPipeline, StepBatch
from rlvr_jax.distributed import allgather_objects, global_rows, global_tree, local_tree, sum_over_processes
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES
from rlvr_jax.rewards import RewardPool, RewardResult, Sample, function_metrics
from rlvr_jax.rollout import Sampler
from rlvr_jax.schedule import phase_settings
from rlvr_jax.tasks import Task
from rlvr_jax.tokenizer import decode_completions
from rlvr_jax.types import PromptBatch, Rollout, TrainBatch, TrainState

Reference = Callable[[Rollout], jax.Array]
Advantages = Callable[[jax.Array, jax.Array | None], tuple[jax.Array, jax.Array, jax.Array]]
Update = Callable[[TrainState, TrainBatch, bool], tuple[TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What every step reads besides the train state; built once, never mutated."""

    cfg: Config
    task: Task
    prompts: PromptPipeline
    sampler: Sampler
    reference: Reference | None  # log pi_ref of the sampled tokens (only when loss.kl_beta > 0)
    pool: RewardPool
    # One jitted advantage stage per advantage.schedule phase (index 0: the advantage section's own
    # settings): (rewards[B, G], correct[B, G] or None) -> (adv, weight, adv before the sign filter)
    advantages: tuple[Advantages, ...]
    update: Update  # (state, batch, measure dynamics) -> (state, device metrics)
    tokenizer: Any
    stop_ids: tuple[int, ...]
    mesh: Any
    rollout_key: jax.Array  # the run's rollout-purpose key (rlvr_jax/rng.py), folded with the step


@dataclasses.dataclass
class StepRecord:
    """One finished step, for the hooks. Hooks may add host metrics (evaluation, probe) before the
    metrics hook writes the row."""

    step: int  # steps done, this one included (the row's `step` in metrics.jsonl)
    device_metrics: dict[str, Any]  # device scalars: fetched one step late by the writer
    host_metrics: dict[str, Any]
    prompt_index: np.ndarray  # i32[rows]: the global prompt index of each of this process's rollouts
    rollout: Rollout  # this process's rollouts, on the host
    texts: list[str]
    rewards: np.ndarray  # f32[rows]
    prompts: list[str] = dataclasses.field(default_factory=list)  # the prompt text of each row, aligned with texts
    stopping: bool = False  # set by the loop when a stop was requested or --stop-at reached


def rl_step(ctx: StepContext, state: TrainState, step: int, phase: int = 0) -> tuple[TrainState, StepRecord]:
    """Step `step` (0-based) of training, with the advantage settings of schedule phase `phase`."""
    start = time.perf_counter()
    batch = ctx.prompts.batch(step)  # this process's rows of the step's prompts
    prompts = PromptBatch(**global_tree(batch.arrays, ctx.mesh, ROLLOUT_RULES))
    rollout = ctx.sampler(state.params, prompts, jax.random.fold_in(ctx.rollout_key, step))
    logp_ref = ctx.reference(rollout) if ctx.reference else None  # dispatched now: runs while the host scores
    host = local_tree(rollout)  # this process's rollouts on the host (waits for the sampler)
    sampled = time.perf_counter() - start
    texts, scored = score(ctx, host, batch, step)
    rewards, correct = group_rewards(ctx, scored)
    adv, weight, adv_unfiltered = ctx.advantages[phase](rewards, correct)
    train_batch = to_train_batch(rollout, adv, weight, logp_ref, adv_unfiltered)
    state, device_metrics = ctx.update(state, train_batch, dynamics_due(ctx.cfg, step))
    if ctx.cfg.logging.block_each_step:
        jax.block_until_ready(state)
    device_metrics = {**device_metrics, **adv_lib.group_stats(rewards, ctx.cfg.advantage.correct_threshold, correct)}
    host_metrics = rollout_metrics(ctx.task, host, scored, batch, texts, time.perf_counter() - start)
    host_metrics["time/rollout_s"] = sampled
    if ctx.cfg.advantage.schedule:
        host_metrics["advantage/phase"] = phase
    g = ctx.cfg.rollout.group_size
    index, prompts = np.repeat(batch.arrays["index"], g), [e["prompt"] for e in batch.examples for _ in range(g)]
    return state, StepRecord(step + 1, device_metrics, host_metrics, index, host, texts, scored.rewards, prompts)


def score(ctx: StepContext, host: Rollout, batch: StepBatch, step: int = 0) -> tuple[list[str], RewardResult]:
    """The reward stage: this process decodes and scores only the rollouts it holds (`host`)."""
    texts = decode_completions(ctx.tokenizer, host.tokens, host.lengths, ctx.stop_ids)
    draw = ("train", ctx.cfg.run.seed, step)
    result = ctx.pool.score(texts, samples(ctx.task, batch.examples, ctx.cfg.rollout.group_size, draw))
    adv_lib.check_rewards(result.rewards.reshape(-1, ctx.cfg.rollout.group_size))
    return texts, result


def samples(task: Task, examples: list[dict[str, Any]], group_size: int, draw: tuple = ()) -> list[Sample]:
    """What the reward functions see of each rollout's example (row b*G + g belongs to example b); the
    gold of each sample from `task.targets` (`draw`: the sampling round, for per-sample random rewards)."""
    out = []
    for e in examples:
        prompt = e["messages"] if e.get("chat") else e["prompt"]
        columns = e.get("columns", {})
        out += [Sample(prompt, gold, columns) for gold in task.targets(e, group_size, draw)]
    return out


def group_rewards(ctx: StepContext, scored: RewardResult) -> tuple[jax.Array, jax.Array | None]:
    """Rewards [B, G] over every process, and correctness flags when reward.correct_from names a
    function (else None: the advantage module uses reward >= advantage.correct_threshold)."""
    g = ctx.cfg.rollout.group_size
    rewards = global_rows(scored.rewards.reshape(-1, g), ctx.mesh, TRAIN_RULES)
    if ctx.cfg.reward.correct_from == "total":
        return rewards, None
    return rewards, global_rows(scored.correct.reshape(-1, g), ctx.mesh, TRAIN_RULES)


def to_train_batch(
    rollout: Rollout,
    adv: jax.Array,
    weight: jax.Array,
    logp_ref: jax.Array | None = None,
    adv_unfiltered: jax.Array | None = None,
) -> TrainBatch:
    return TrainBatch(
        prompt_tokens=rollout.prompt_tokens,
        prompt_mask=rollout.prompt_mask,
        tokens=rollout.tokens,
        mask=rollout.mask,
        logp_old=rollout.logp,
        adv=adv.reshape(-1),
        weight=weight.reshape(-1),
        logp_ref=logp_ref,
        adv_unfiltered=None if adv_unfiltered is None else adv_unfiltered.reshape(-1),
    )


def dynamics_due(cfg: Config, step: int) -> bool:
    """The post-update probability-mass pass runs inside the update every logging.dynamics_every steps."""
    return (step + 1) % cfg.logging.dynamics_every == 0


def make_advantages(cfg: Config, settings: AdvantageConfig | None = None) -> Advantages:
    """The advantage stage, jitted: (adv, weight) as configured (or with `settings`, a schedule
    phase's), and adv before the sign filter (the dynamics statistics split tokens by their rollout's
    own sign)."""
    settings = settings or cfg.advantage
    unfiltered = settings.model_copy(update={"sign": SignFilter.full})

    def fn(rewards: jax.Array, correct: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
        filtered = adv_lib.advantages(rewards, settings, correct)
        return (*filtered, adv_lib.advantages(rewards, unfiltered, correct)[0])

    return jax.jit(fn)


def make_phase_advantages(cfg: Config) -> tuple[Advantages, ...]:
    """One jitted advantage stage per schedule phase (rlvr_jax/schedule.py); phases with the same
    settings share one. (A phase that cannot run, a group-relative estimator with group_size 1, is
    refused at config load.)"""
    built: dict[AdvantageConfig, Advantages] = {}
    for settings in phase_settings(cfg.advantage):
        if settings not in built:
            built[settings] = make_advantages(cfg, settings)
    return tuple(built[s] for s in phase_settings(cfg.advantage))


def make_reference(cfg: Config, graphdef: Any, params: Any) -> Reference | None:
    """log pi_ref of the sampled tokens under a frozen copy of the initial policy; None when kl_beta = 0
    (then no reference is kept)."""
    if cfg.loss.kl_beta == 0:
        return None
    from flax import nnx

    from rlvr_jax.loss import completion_logp_entropy

    frozen = jax.tree.map(jnp.copy, params)  # the train state is donated: keep our own buffers

    def logp_ref(p: Any, r: Rollout) -> jax.Array:
        rows = jnp.zeros(r.tokens.shape[0])
        model = nnx.merge(graphdef, p)
        return completion_logp_entropy(model, to_train_batch(r, rows, rows), cfg.loss.logits_chunk)[0]

    fn = jax.jit(logp_ref)
    return lambda rollout: fn(frozen, rollout)


def decode_waste(needed: float, ran: float) -> float:
    """The share of the decode loop's row-steps spent on rows that had already finished.

    Prefill samples every row's first token; a row of length L then needs L - 1 decode steps (`needed`,
    summed over the batch). The loop ran `ran` row-steps (Rollout.decode_row_steps): every row until the
    longest one stopped, or fewer with live-row compaction (rollout.compact_rows)."""
    return (ran - needed) / ran if ran > 0 else 0.0


def rollout_metrics(
    task: Task, host: Rollout, result: RewardResult, batch: StepBatch, texts: list[str], seconds: float
) -> dict[str, float]:
    """Host-side metrics of the whole step: this process's rollouts, summed over processes."""
    rewards = np.asarray(result.rewards, np.float64)
    lengths = np.asarray(host.lengths, np.int64)
    longest = max(allgather_objects(int(lengths.max(initial=0))))
    sums = {
        "n": float(rewards.size),
        "reward": float(rewards.sum()),
        "reward_sq": float((rewards**2).sum()),
        "correct": float(np.sum(result.correct)),
        "length": float(lengths.sum()),
        "eos": float(np.sum(host.eos)),
        "decode_needed": float(np.sum(np.maximum(lengths - 1, 0))),
        "timeouts": float(result.timeouts),
        "errors": float(result.errors),
        "truncated": batch.metrics["data/truncated"],
    }
    counts = task.rollout_counts(texts)
    sums.update({f"frac_{name}": count for name, count in counts.items()})
    sums.update(result.sums())  # per reward function: sum, applicable count, errors
    total = sum_over_processes(sums)
    n = max(total["n"], 1.0)
    mean = total["reward"] / n
    out = {
        "reward/mean": mean,
        "reward/std": float(np.sqrt(max(total["reward_sq"] / n - mean**2, 0.0))),
        "reward/correct_frac": total["correct"] / n,
        "rollout/length_mean": total["length"] / n,
        "rollout/eos_frac": total["eos"] / n,
        "rollout/length_max": float(longest),
        # decode_row_steps counts the whole (global) batch already: not summed over processes.
        "rollout/finished_row_frac": decode_waste(total["decode_needed"], float(host.decode_row_steps)),
        "reward/timeouts": total["timeouts"],
        "reward/errors": total["errors"],
        "data/truncated": total["truncated"],
        "time/reward_s": result.seconds,
    }
    out.update({f"rollout/frac_{name}": total[f"frac_{name}"] / n for name in counts})
    out.update(function_metrics(total))
    out["time/step_s"] = seconds
    out["time/tokens_per_s"] = total["length"] / seconds
    return out
