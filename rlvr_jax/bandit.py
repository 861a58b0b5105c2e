"""The softmax-bandit model of the toy strategy task (docs/algorithms.md sections 1 and 6).

Three actions stand for the three strategies: a1 high reward, a2 optimal but rare, a3 low reward.
The policy is a free logit vector z (pi = softmax(z), z0 = log p0), trained by plain SGD ascent on
the same surrogate the LLM loss uses, with advantages from `rlvr_jax.advantage.advantages`:

    J(z) = sum_i w_i A_i log pi(a_i) / N,    N = max(sum_i w_i, 1)
    dz_v = lr * sum_i w_i A_i (1[v = a_i] - pi_v) / N

(the per-sample softmax update of docs/algorithms.md, averaged as the loss averages it). Each step
samples `groups` groups of `group_size` actions; the reward of an action is its mean reward
(default) or a 0/1 draw with that mean, per rollout (`--bernoulli`) or per group
(`--bernoulli-per-group`). Everything runs on device: one jitted
`lax.scan` over steps, `vmap` over seeds, keys = fold_in(key(seed), step).

"Correct" (NSR, PSR, W-REINFORCE) means reward >= `--correct-threshold` (default 1.0, the trainer's
default). With the default deterministic rewards (0.8, 1.0, 0) only a2 is correct, so NSR pushes
a1 and a3 down alike; `--bernoulli` (a1 correct 80% of the time) or `--correct-threshold 0.8`
model the other readings. The baseline estimators (GRPO, Dr.GRPO, RLOO) ignore the threshold.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from rlvr_jax.advantage import advantages
from rlvr_jax.config import AdvantageConfig

Array = jax.Array
ACTIONS = ("a1", "a2", "a3")


class RewardNoise(str, enum.Enum):
    none = "none"  # reward = the action's mean reward (0.8 for a1)
    rollout = "rollout"  # 0/1, one Bernoulli draw per rollout (a1 right on 80% of its samples)
    group = "group"  # 0/1, one uniform u per group: r_i = 1[u < mean(a_i)] (a1 right on 80% of prompts)


@dataclasses.dataclass(frozen=True)
class BanditSpec:
    """Everything one simulation reads; frozen and hashable, so it can key the compile cache."""

    p0: tuple[float, float, float] = (0.30, 0.01, 0.69)
    rewards: tuple[float, float, float] = (0.8, 1.0, 0.0)
    steps: int = 4000
    lr: float = 0.1
    group_size: int = 8
    groups: int = 16
    noise: RewardNoise = RewardNoise.none
    adv: AdvantageConfig = AdvantageConfig()


# --- the model ------------------------------------------------------------------------------------


def surrogate(logits: Array, actions: Array, adv: Array, weight: Array) -> Array:
    """J(z) = sum_i w_i A_i log softmax(z)[a_i] / max(sum_i w_i, 1) over actions i32[B, G].

    Its gradient is sum_i w_i A_i (onehot(a_i) - pi) / N. N has a floor of 1 because a batch with
    no kept rollout (NSR on all-correct groups) has w_i A_i = 0 everywhere: the step must be 0.
    """
    logp = jax.nn.log_softmax(logits)[actions]
    return jnp.sum(weight * adv * logp) / jnp.maximum(jnp.sum(weight), 1.0)


def entropy(probs: Array) -> Array:
    """H(pi) = -sum_v pi_v log pi_v in nats (0 log 0 = 0)."""
    return -jnp.sum(xlogy(probs, probs), axis=-1)


def sample_rewards(key: Array, actions: Array, spec: BanditSpec) -> Array:
    """f32[B, G]: each action's mean reward, or 1[u < mean] with u ~ U(0, 1) per rollout or per group.

    The per-group draw models the toy task, where S1's failures are a fixed hard subset of prompts:
    within one group (one prompt) every a1 sample succeeds or every one fails, together.
    """
    mean = jnp.asarray(spec.rewards, jnp.float32)[actions]
    if spec.noise == RewardNoise.none:
        return mean
    shape = actions.shape if spec.noise == RewardNoise.rollout else actions.shape[:1] + (1,)
    return (jax.random.uniform(key, shape) < mean).astype(jnp.float32)


def _step(spec: BanditSpec, key: Array, logits: Array, step: Array) -> tuple[Array, tuple[Array, Array]]:
    """One SGD ascent step on J; returns the new logits and (pi, H(pi)) after the update."""
    k_sample, k_reward = jax.random.split(jax.random.fold_in(key, step))
    actions = jax.random.categorical(k_sample, logits, shape=(spec.groups, spec.group_size))
    adv, weight = advantages(sample_rewards(k_reward, actions, spec), spec.adv)
    logits = logits + spec.lr * jax.grad(surrogate)(logits, actions, adv, weight)
    probs = jax.nn.softmax(logits)
    return logits, (probs, entropy(probs))


def _trajectory(spec: BanditSpec, seed: Array) -> tuple[Array, Array]:
    """(pi f32[steps+1, 3], H f32[steps+1]) for one seed; row k is the policy after k updates."""
    logits0 = jnp.log(jnp.asarray(spec.p0, jnp.float32))
    body = functools.partial(_step, spec, jax.random.key(seed))
    _, (probs, ent) = jax.lax.scan(body, logits0, jnp.arange(spec.steps))
    probs0 = jax.nn.softmax(logits0)
    return jnp.concatenate([probs0[None], probs]), jnp.concatenate([entropy(probs0)[None], ent])


@functools.lru_cache(maxsize=16)
def _program(spec: BanditSpec, vmapped: bool):
    """The jitted simulation, compiled once per spec (the config is closed over, static)."""
    fn = functools.partial(_trajectory, spec)
    return jax.jit(jax.vmap(fn) if vmapped else fn)


def simulate(spec: BanditSpec, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """All seeds in one vmapped call: (pi f32[S, steps+1, 3], H f32[S, steps+1]) on the host."""
    probs, ent = _program(spec, True)(jnp.asarray(seeds, jnp.int32))
    return np.asarray(probs), np.asarray(ent)


def simulate_one(spec: BanditSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One seed without vmap: (pi f32[steps+1, 3], H f32[steps+1])."""
    probs, ent = _program(spec, False)(jnp.int32(seed))
    return np.asarray(probs), np.asarray(ent)


# --- summary and figures (host side) --------------------------------------------------------------


def summarize(probs: np.ndarray, ent: np.ndarray) -> dict:
    """The numbers of one seed's trajectory (steps count updates: row 0 is p0)."""
    crossed = np.flatnonzero(probs[:, 1] > 0.5)
    return {
        "crossover_step": int(crossed[0]) if crossed.size else None,
        "min_p2": float(probs[:, 1].min()),
        "min_p2_step": int(probs[:, 1].argmin()),
        "max_p1": float(probs[:, 0].max()),
        "max_p1_step": int(probs[:, 0].argmax()),
        "final_entropy": float(ent[-1]),
        "final_probs": [float(p) for p in probs[-1]],
    }


def summary(spec_args: dict, seeds: Sequence[int], probs: np.ndarray, ent: np.ndarray) -> dict:
    """summary.json: the args, then one list per metric, aligned with `seeds`."""
    per_seed = [summarize(p, e) for p, e in zip(probs, ent)]
    out = {"args": spec_args, "seeds": list(seeds)}
    for key in per_seed[0]:
        out[key] = [s[key] for s in per_seed]
    return out


def _draw(axes, probs: np.ndarray, ent: np.ndarray, title: str) -> None:
    """Three panels: pi(a1..a3) (one line per seed), pi(a2) on a log scale (its stage-1 dip), entropy."""
    ax_p, ax_2, ax_h = axes
    colors = ("tab:blue", "tab:orange", "tab:green")
    for s in range(probs.shape[0]):
        for a in range(3):
            ax_p.plot(probs[s, :, a], color=colors[a], lw=1, alpha=0.8, label=f"pi({ACTIONS[a]})" if s == 0 else None)
        ax_2.semilogy(probs[s, :, 1], color=colors[1], lw=1, alpha=0.8)
        ax_h.plot(ent[s], color="black", lw=1, alpha=0.8)
    ax_p.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax_p.set(title=title, ylim=(0, 1), ylabel="probability")
    ax_2.set(ylabel="pi(a2), log")
    ax_h.set(xlabel="step", ylabel="entropy (nats)")
    ax_p.legend(loc="center right", fontsize=8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and test machines
    import matplotlib.pyplot as plt

    return plt


def plot_probabilities(probs: np.ndarray, ent: np.ndarray, path: Path, title: str) -> None:
    """pi(a1), pi(a2), pi(a3) (one line per seed) above the entropy, saved as a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True, height_ratios=(2, 1, 1))
    _draw(axes, probs, ent, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_NOISE_TITLE = {"none": "mean rewards", "rollout": "0/1 per rollout", "group": "0/1 per group"}


def plot_comparison(run_dirs: Sequence[str | Path], path: str | Path) -> None:
    """One column per `bandit` output folder (its trajectories.npz and summary.json), same axes."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        3,
        len(run_dirs),
        figsize=(4.5 * len(run_dirs), 7),
        sharex=True,
        sharey="row",
        height_ratios=(2, 1, 1),
        squeeze=False,
    )
    for col, run in enumerate(map(Path, run_dirs)):
        data = np.load(run / "trajectories.npz")
        args = json.loads((run / "summary.json").read_text())["args"]
        _draw(
            axes[:, col],
            data["probs"],
            data["entropy"],
            f"{args['estimator']} / {args['sign']}, {_NOISE_TITLE[args['noise']]}",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
