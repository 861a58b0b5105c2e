"""Evaluation during training: held-out reward / pass rates, the probe of first-token class
probabilities, and the training figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.config import Config
from rlvr_jax.data import PromptPipeline, verification_target
from rlvr_jax.dynamics import class_probabilities
from rlvr_jax.mesh import ROLLOUT_RULES
from rlvr_jax.rewards import RewardPool
from rlvr_jax.rollout import SamplingParams, make_sampler
from rlvr_jax.tokenizer import stop_token_ids
from rlvr_jax.types import PromptBatch, Rollout

EVAL_PURPOSE = 3  # the "eval" purpose of the run seed (see loop.PURPOSES)


def decode_completions(tok: Any, rollout: Rollout, stop_ids: tuple[int, ...]) -> list[str]:
    """Completion text per row, without the stop token; special tokens kept (strategy tokens are special)."""
    out = []
    for row, length in zip(rollout.tokens, rollout.lengths):
        ids = [int(t) for t in row[:length]]
        if ids and ids[-1] in stop_ids:
            ids = ids[:-1]
        out.append(tok.decode(ids, skip_special_tokens=False))
    return out


class Evaluator:
    """Mean reward (overall and per subset) on held-out prompts, sampled like the evaluation config says."""

    def __init__(self, cfg: Config, policy: Any, mesh: Any, params: Any, pool: RewardPool):
        n_problems = cfg.eval.max_problems or 256
        eval_data = cfg.data.model_copy(update={"prompts_per_step": n_problems})
        self.pipeline = PromptPipeline(cfg.data.task, cfg.eval.split, eval_data, policy.tokenizer, cfg.run.seed,
                                       jax.process_index(), jax.process_count())
        self.samples = min(cfg.eval.n, 16)
        self.stop = stop_token_ids(policy.tokenizer, policy.arch.eos_token_ids)
        params_sampling = SamplingParams.from_config(
            cfg.rollout.model_copy(update={"group_size": self.samples, "temperature": cfg.eval.temperature,
                                           "top_p": cfg.eval.top_p}), self.stop, int(policy.tokenizer.pad_token_id))
        self.sampler = make_sampler(policy.arch, policy.graphdef, params, mesh, ROLLOUT_RULES, params_sampling)
        self.cfg, self.policy, self.pool = cfg, policy, pool

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        arrays, examples = self.pipeline.batch(0)
        rollout = jax.device_get(self.sampler(params, PromptBatch(**arrays),
                                              jax.random.fold_in(jax.random.fold_in(jax.random.key(self.cfg.run.seed), EVAL_PURPOSE), 0)))
        texts = decode_completions(self.policy.tokenizer, rollout, self.stop)
        golds = [verification_target(self.cfg.data.task, e) for e in examples for _ in range(self.samples)]
        result = self.pool.score(texts, golds, self.cfg.reward.verifier)
        correct = result.correct.reshape(len(examples), self.samples)
        out = {"eval/reward_mean": float(result.rewards.mean()), "eval/correct_frac": float(correct.mean()),
               "eval/pass@1": float(correct.mean()), f"eval/pass@{self.samples}": float(correct.any(axis=1).mean())}
        for subset in sorted({e["subset"] for e in examples} - {""}):
            rows = np.array([e["subset"] == subset for e in examples])
            out[f"eval/correct_frac/{subset}"] = float(correct[rows].mean())
        return out


class _Probe:
    def __init__(self, fn: Callable | None, names: list[str]):
        self.fn, self.names, self.enabled = fn, names, fn is not None

    def __call__(self, params: Any) -> dict[str, float]:
        if self.fn is None:
            return {}
        values = np.asarray(jax.device_get(self.fn(params)))
        return {f"probe/pi_{name}": float(v) for name, v in zip(self.names + ["rest"], values)}


def make_probe(cfg: Config, policy: Any, mesh: Any) -> _Probe:
    """pi(class) at the first response position of fixed held-out prompts (toy: S1, S2, S3)."""
    if policy.probe_classes is None:
        return _Probe(None, [])
    from flax import nnx

    probe_data = cfg.data.model_copy(update={"prompts_per_step": 64})
    arrays, _ = PromptPipeline(cfg.data.task, cfg.eval.split, probe_data, policy.tokenizer, cfg.run.seed + 1).batch(0)
    prompts = PromptBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    fn = jax.jit(lambda p: class_probabilities(nnx.merge(policy.graphdef, p), prompts, policy.probe_classes))
    return _Probe(fn, ["S1", "S2", "S3"])


def plot_training(run_dir: Path) -> Path:
    """figures/training.png: reward, entropy and the probe's class probabilities over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    series = lambda key: [(r["step"], r[key]) for r in rows if r.get(key) is not None]  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for key in ("reward/mean", "eval/correct_frac"):
        if series(key):
            axes[0].plot(*zip(*series(key)), label=key)
    axes[0].set_title("reward")
    axes[1].plot(*zip(*series("entropy")), color="k")
    axes[1].set_title("token entropy (sampled positions)")
    for name in ("S1", "S2", "S3", "rest"):
        if series(f"probe/pi_{name}"):
            axes[2].plot(*zip(*series(f"probe/pi_{name}")), label=f"pi({name})")
    axes[2].set_yscale("log")
    axes[2].set_title("probe: first response token")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / "figures" / "training.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


