"""The orchestrator: config -> data -> rollout -> reward -> advantage -> update -> metrics.

`train(cfg)` reads top to bottom like the recipe it is; every stage lives in its own module and the
contracts between them are the pytrees of `types.py`. RNG: one seed split by purpose (init, rollout,
train, eval) and folded with the step, so a step's randomness does not depend on what ran before.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import advantage as adv_lib
from rlvr_jax.config import Config, save_config
from rlvr_jax.data import PromptPipeline, verification_target
from rlvr_jax.dynamics import class_probabilities
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh, maybe_initialize_distributed
from rlvr_jax.model import Arch, load_policy
from rlvr_jax.rewards import RewardPool
from rlvr_jax.rollout import SamplingParams, make_sampler
from rlvr_jax.tokenizer import load_tokenizer, stop_token_ids
from rlvr_jax.types import PromptBatch, Rollout, TrainBatch
from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step, total_optimizer_steps
from rlvr_jax.warmstart import build_base_policy, strategy_token_ids
from rlvr_jax.writers import LateWriter, MetricWriter

PURPOSES = {"init": 0, "rollout": 1, "train": 2, "eval": 3}


def purpose_key(seed: int, purpose: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), PURPOSES[purpose])


@dataclasses.dataclass
class Policy:
    """What the loop needs to know about the policy besides its params."""

    arch: Arch
    graphdef: Any
    tokenizer: Any
    folder: Path | None
    probe_classes: list[list[int]] | None  # token-id classes of the probe (toy: S1, S2, S3)


def prepare_policy(cfg: Config, run_dir: Path, mesh: Any, log: Callable[[str], None]) -> tuple[Policy, Any]:
    folder = Path(cfg.model.path) if cfg.model.path else None
    if folder is None and cfg.warmstart.enabled:
        folder = build_base_policy(cfg, run_dir / "base_policy", Path(cfg.data.data_dir), mesh, log)
    # The warm-started folder's own config.json is the architecture (model.arch only described how to build it).
    model_cfg = cfg.model.model_copy(update={"path": str(folder), "arch": {}}) if folder and not cfg.model.path \
        else cfg.model
    arch, graphdef, params = load_policy(model_cfg, mesh, TRAIN_RULES, purpose_key(cfg.run.seed, "init"))
    tok_dir = cfg.model.tokenizer or folder
    if tok_dir is None:
        raise ValueError("config: a random model (model.arch) needs model.tokenizer, or warmstart.enabled=true")
    tok = load_tokenizer(tok_dir)
    probe = strategy_token_ids(tok) if cfg.data.task == "toy_strategy" else None
    return Policy(arch, graphdef, tok, folder, probe), params


def data_dir(cfg: Config, run_dir: Path) -> Path:
    return Path(cfg.data.data_dir) if cfg.data.data_dir else run_dir / "datasets"


def with_data_dir(cfg: Config, run_dir: Path) -> Config:
    """Datasets are built under the run directory unless data.data_dir names a shared place."""
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": str(data_dir(cfg, run_dir))})})


def decode_completions(tok: Any, rollout: Rollout, stop_ids: tuple[int, ...]) -> list[str]:
    """Completion text per row, without the stop token; special tokens kept (strategy tokens are special)."""
    out = []
    for row, length in zip(rollout.tokens, rollout.lengths):
        ids = [int(t) for t in row[:length]]
        if ids and ids[-1] in stop_ids:
            ids = ids[:-1]
        out.append(tok.decode(ids, skip_special_tokens=False))
    return out


def to_train_batch(rollout: Rollout, adv: jax.Array, weight: jax.Array, logp_ref: jax.Array | None = None) -> TrainBatch:
    return TrainBatch(prompt_tokens=rollout.prompt_tokens, prompt_mask=rollout.prompt_mask, tokens=rollout.tokens,
                      mask=rollout.mask, logp_old=rollout.logp, adv=adv.reshape(-1), weight=weight.reshape(-1),
                      logp_ref=logp_ref)


def make_reference(cfg: Config, policy: Policy, params: Any) -> Callable[[Rollout], jax.Array] | None:
    """log pi_ref of the sampled tokens under a frozen copy of the initial policy; None when kl_beta = 0
    (then no reference is kept). Dispatched before host-side scoring, so the two overlap."""
    if cfg.loss.kl_beta == 0:
        return None
    from flax import nnx

    from rlvr_jax.loss import completion_logp_entropy

    frozen = jax.tree.map(jnp.copy, params)  # the train state is donated: keep our own buffers

    def logp_ref(p: Any, r: Rollout) -> jax.Array:
        batch = to_train_batch(r, jnp.zeros(r.tokens.shape[0]), jnp.zeros(r.tokens.shape[0]))
        return completion_logp_entropy(nnx.merge(policy.graphdef, p), batch, cfg.loss.logits_chunk)[0]

    fn = jax.jit(logp_ref)
    return lambda rollout: fn(frozen, rollout)


class Evaluator:
    """Mean reward (overall and per subset) on held-out prompts, sampled like the evaluation config says."""

    def __init__(self, cfg: Config, policy: Policy, mesh: Any, params: Any, pool: RewardPool):
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
                                              jax.random.fold_in(purpose_key(self.cfg.run.seed, "eval"), 0)))
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


def train(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run RL training as configured; returns (and writes) the summary."""
    maybe_initialize_distributed(cfg.mesh)
    run_dir = cfg.run_dir
    cfg = with_data_dir(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    mesh = make_mesh(cfg.mesh)
    start = time.perf_counter()
    policy, params = prepare_policy(cfg, run_dir, mesh, log)
    tok = policy.tokenizer
    stop = stop_token_ids(tok, policy.arch.eos_token_ids)
    pipeline = PromptPipeline(cfg.data.task, cfg.data.split, cfg.data, tok, cfg.run.seed, jax.process_index(),
                              jax.process_count())
    sampler = make_sampler(policy.arch, policy.graphdef, params, mesh, ROLLOUT_RULES,
                           SamplingParams.from_config(cfg.rollout, stop, int(tok.pad_token_id)))
    tx = make_optimizer(cfg.optim, total_optimizer_steps(cfg.optim, cfg.run.steps))
    state = init_train_state(params, tx, purpose_key(cfg.run.seed, "train"), mesh, TRAIN_RULES)
    spec = UpdateSpec(cfg.loss, cfg.optim, cfg.loss.max_len_norm or cfg.rollout.max_new_tokens)
    train_step = make_train_step(policy.graphdef, tx, spec, state, mesh, TRAIN_RULES)
    advantages = jax.jit(lambda r: adv_lib.advantages(r, cfg.advantage))
    probe = make_probe(cfg, policy, mesh)
    reference = make_reference(cfg, policy, params)
    writer = LateWriter(MetricWriter(run_dir, cfg.logging.tensorboard))
    g = cfg.rollout.group_size
    with RewardPool(cfg.reward) as pool:
        evaluate = Evaluator(cfg, policy, mesh, params, pool)
        first_eval = {**evaluate(state.params, 0), **probe(state.params)}
        log(_format_eval("base policy", first_eval))
        history = []
        progress = _progress(cfg)
        for step in range(cfg.run.steps):
            t0 = time.perf_counter()
            step_batch = pipeline.batch(step)
            arrays, examples = step_batch
            rollout = sampler(state.params, PromptBatch(**arrays),
                              jax.random.fold_in(purpose_key(cfg.run.seed, "rollout"), step))
            logp_ref = reference(rollout) if reference else None  # async: runs while the host scores
            host = jax.device_get(rollout)
            texts = decode_completions(tok, host, stop)
            golds = [verification_target(cfg.data.task, e) for e in examples for _ in range(g)]
            result = pool.score(texts, golds, cfg.reward.verifier)
            rewards = result.rewards.reshape(-1, g)
            adv_lib.check_rewards(rewards)
            adv, weight = advantages(jnp.asarray(rewards))
            state, device_metrics = train_step(state, to_train_batch(rollout, adv, weight, logp_ref))
            host_metrics = {**_rollout_metrics(host, rewards, result, cfg), **result.metrics(),
                            **step_batch.metrics, "step_time_s": time.perf_counter() - t0}
            host_metrics["tokens_per_s"] = float(host.lengths.sum()) / host_metrics["step_time_s"]
            if cfg.data.task == "toy_strategy":
                host_metrics.update(_strategy_fractions(texts))
            if probe.enabled and (step + 1) % cfg.logging.probe_every == 0:
                host_metrics.update(probe(state.params))
            if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.run.steps:
                host_metrics.update(evaluate(state.params, step + 1))
            writer.push(step + 1, {**device_metrics, **adv_lib.group_stats(jnp.asarray(rewards),
                                                                            cfg.advantage.correct_threshold)},
                        host_metrics)
            history.append(host_metrics["reward/mean"])
            progress.update(1)
            progress.set_postfix(reward=f"{host_metrics['reward/mean']:.3f}",
                                 tok_s=f"{host_metrics['tokens_per_s']:.0f}")
        writer.flush()
        progress.close()
        final_eval = {**evaluate(state.params, cfg.run.steps), **probe(state.params)}
    writer.writer.close()
    log(_format_eval("final policy", final_eval))
    summary = _summary(cfg, first_eval, final_eval, history, time.perf_counter() - start, writer.last)
    if jax.process_index() == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_training(run_dir)
    log(f"summary written to {run_dir / 'summary.json'}")
    return summary


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


class _Probe:
    def __init__(self, fn: Callable | None, names: list[str]):
        self.fn, self.names, self.enabled = fn, names, fn is not None

    def __call__(self, params: Any) -> dict[str, float]:
        if self.fn is None:
            return {}
        values = np.asarray(jax.device_get(self.fn(params)))
        return {f"probe/pi_{name}": float(v) for name, v in zip(self.names + ["rest"], values)}


def make_probe(cfg: Config, policy: Policy, mesh: Any) -> _Probe:
    """pi(class) at the first response position of fixed held-out prompts (toy: S1, S2, S3)."""
    if policy.probe_classes is None:
        return _Probe(None, [])
    from flax import nnx

    probe_data = cfg.data.model_copy(update={"prompts_per_step": 64})
    arrays, _ = PromptPipeline(cfg.data.task, cfg.eval.split, probe_data, policy.tokenizer, cfg.run.seed + 1).batch(0)
    prompts = PromptBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    fn = jax.jit(lambda p: class_probabilities(nnx.merge(policy.graphdef, p), prompts, policy.probe_classes))
    return _Probe(fn, ["S1", "S2", "S3"])


def _rollout_metrics(host: Rollout, rewards: np.ndarray, result: Any, cfg: Config) -> dict[str, float]:
    return {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
            "reward/correct_frac": float(np.mean(result.correct)),
            "rollout/length_mean": float(host.lengths.mean()), "rollout/eos_frac": float(np.mean(host.eos))}


def _strategy_fractions(texts: list[str]) -> dict[str, float]:
    from rlvr_jax.rewards import toy_strategy_of

    chosen = [toy_strategy_of(t) for t in texts]
    return {f"rollout/frac_{s}": chosen.count(s) / len(chosen) for s in ("S1", "S2", "S3")}


def _progress(cfg: Config) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=cfg.run.steps, desc="rl", disable=not cfg.logging.progress_bar or jax.process_index() != 0)


def _format_eval(name: str, values: dict[str, float]) -> str:
    keys = ["eval/reward_mean", "eval/correct_frac", "eval/correct_frac/hard", "probe/pi_S1", "probe/pi_S2",
            "probe/pi_S3"]
    shown = ", ".join(f"{k.split('/', 1)[1]}={values[k]:.3f}" for k in keys if k in values)
    return f"{name}: {shown}"


def _summary(cfg: Config, first: dict, final: dict, history: list[float], seconds: float, last: dict) -> dict:
    return {"run": cfg.run.name, "steps": cfg.run.steps, "seconds": round(seconds, 1),
            "advantage": {"estimator": cfg.advantage.estimator.value, "sign": cfg.advantage.sign.value},
            "base": first, "final": final,
            "train_reward_first_10": float(np.mean(history[:10])) if history else None,
            "train_reward_last_10": float(np.mean(history[-10:])) if history else None,
            "last_metrics": last}
