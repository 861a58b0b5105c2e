"""The orchestrator: config -> data -> rollout -> reward -> advantage -> update -> metrics.

`train(cfg)` reads top to bottom like the recipe it is; every stage lives in its own module and the
contracts between them are the pytrees of `types.py`. RNG: one seed split by purpose (init, rollout,
train, eval) and folded with the step, so a step's randomness does not depend on what ran before.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import advantage as adv_lib
from rlvr_jax.checkpoint import Checkpointer, CheckpointError, fingerprint, move_aside
from rlvr_jax.config import Config, ConfigChanges, SignFilter, save_config
from rlvr_jax.data import PromptPipeline, verification_target
from rlvr_jax.distributed import global_rows, global_tree, local_tree, sum_over_processes
from rlvr_jax.evaluate import Evaluator, decode_completions
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh, maybe_initialize_distributed
from rlvr_jax.model import Arch, load_policy, model_dir
from rlvr_jax.plots import boundary_over_training, plot_run, probe_series, read_evals
from rlvr_jax.preemption import StopRequest
from rlvr_jax.probe import make_probe
from rlvr_jax.rewards import RewardPool
from rlvr_jax.rollout import SamplingParams, make_sampler
from rlvr_jax.stages import describe as describe_stages
from rlvr_jax.stages import detect_transition
from rlvr_jax.storage import ensure_writable, is_remote, local_cache, upload_dir, write_text_atomic
from rlvr_jax.tokenizer import load_tokenizer, stop_token_ids
from rlvr_jax.types import PromptBatch, Rollout, TrainBatch
from rlvr_jax.update import (
    UpdateSpec,
    abstract_train_state,
    init_train_state,
    make_optimizer,
    make_train_step,
    total_optimizer_steps,
)
from rlvr_jax.warmstart import build_base_policy
from rlvr_jax.writers import LateWriter, MetricWriter, RolloutLog, read_jsonl, trim_jsonl

PURPOSES = {"init": 0, "rollout": 1, "train": 2, "eval": 3}


def purpose_key(seed: int, purpose: str) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), PURPOSES[purpose])


@dataclasses.dataclass
class Policy:
    """What the loop needs to know about the policy besides its params."""

    arch: Arch
    graphdef: Any
    tokenizer: Any
    folder: Any


def prepare_policy(cfg: Config, run_dir: Any, mesh: Any, log: Callable[[str], None]) -> tuple[Policy, Any]:
    folder = model_dir(cfg.model.path) if cfg.model.path else None  # a Hub model id: its HF cache folder
    if folder is None and cfg.warmstart.enabled:
        folder = build_base_policy(cfg, local_cache(run_dir, "base_policy"), Path(cfg.data.data_dir), mesh, log)
    # The warm-started folder's own config.json is the architecture (model.arch only described how to build it).
    model_cfg = (
        cfg.model.model_copy(update={"path": str(folder), "arch": {}}) if folder and not cfg.model.path else cfg.model
    )
    arch, graphdef, params = load_policy(model_cfg, mesh, TRAIN_RULES, purpose_key(cfg.run.seed, "init"))
    tok_dir = cfg.model.tokenizer or folder
    if tok_dir is None:
        raise ValueError("config: a random model (model.arch) needs model.tokenizer, or warmstart.enabled=true")
    tok = load_tokenizer(tok_dir)
    return Policy(arch, graphdef, tok, folder), params


def data_dir(cfg: Config, run_dir: Any) -> Path:
    return Path(cfg.data.data_dir) if cfg.data.data_dir else local_cache(run_dir, "datasets")


def with_data_dir(cfg: Config, run_dir: Any) -> Config:
    """Datasets are built under the run directory (a local cache for a bucket run directory) unless
    data.data_dir names a shared place."""
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": str(data_dir(cfg, run_dir))})})


def to_train_batch(
    rollout: Rollout, adv: jax.Array, weight: jax.Array, logp_ref: jax.Array | None = None
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
    )


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


def train(
    cfg: Config,
    log: Callable[[str], None] = print,
    *,
    restart: bool = False,
    stop_at: int | None = None,
    allow_config_change: bool = False,
) -> dict[str, Any]:
    """Run (or resume) RL training as configured; returns the summary (also written to the run dir).

    restart: move existing checkpoints aside and start at step 0 (default: resume from the latest).
    stop_at: save a checkpoint and return after this step (a time-boxed slice of a longer run).
    allow_config_change: resume even if settings that change the maths differ from the checkpoint's.
    """
    maybe_initialize_distributed(cfg.mesh)
    run_dir = cfg.run_dir
    cfg = with_data_dir(cfg, run_dir)
    ensure_writable(run_dir)  # a missing bucket or credentials: stop now, with the fix
    mesh = make_mesh(cfg.mesh)
    clock = time.perf_counter()
    if restart and (moved := move_aside(run_dir / "checkpoints")):
        log(f"--restart: previous checkpoints moved to {moved}")
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
    policy, params = prepare_policy(cfg, run_dir, mesh, log)
    tok = policy.tokenizer
    stop_ids = stop_token_ids(tok, policy.arch.eos_token_ids)
    pipeline = PromptPipeline(
        cfg.data.task, cfg.data.split, cfg.data, tok, cfg.run.seed, jax.process_index(), jax.process_count()
    )
    sampler = make_sampler(
        policy.arch,
        policy.graphdef,
        params,
        mesh,
        ROLLOUT_RULES,
        SamplingParams.from_config(cfg.rollout, stop_ids, int(tok.pad_token_id)),
    )
    tx = make_optimizer(cfg.optim, total_optimizer_steps(cfg.optim, cfg.run.steps))
    reference_id = {
        "source": str(policy.folder or "random init from model.arch and run.seed"),
        "fingerprint": fingerprint(params),
    }
    train_key = purpose_key(cfg.run.seed, "train")
    resumed = ckpt.restore_latest(
        abstract_train_state(params, tx, train_key, mesh, TRAIN_RULES),
        lambda meta: check_resumable(meta, cfg, reference_id, allow_config_change, log),
        log,
    )
    if resumed:
        state, meta = resumed
        start, base_eval = meta["step"], meta["base_eval"]
        log(f"resuming from checkpoint step {start} ({ckpt.directory / str(start)})")
        trim_jsonl(run_dir / "metrics.jsonl", start)
        trim_jsonl(run_dir / "rollouts.jsonl", start)
    else:
        state, start, base_eval = init_train_state(params, tx, train_key, mesh, TRAIN_RULES), 0, None
    write_run_files(cfg, run_dir, tok)
    spec = UpdateSpec(cfg.loss, cfg.optim, cfg.loss.max_len_norm or cfg.rollout.max_new_tokens)
    train_step = make_train_step(policy.graphdef, tx, spec, state, mesh, TRAIN_RULES)
    unfiltered = cfg.advantage.model_copy(update={"sign": SignFilter.full})
    advantages = jax.jit(lambda r: (*adv_lib.advantages(r, cfg.advantage), adv_lib.advantages(r, unfiltered)[0]))
    probe = make_probe(cfg, tok, policy.graphdef)
    reference = make_reference(cfg, policy, params)
    del params  # the state (fresh or restored) owns the policy from here on
    writer = LateWriter(MetricWriter(run_dir, cfg.logging.tensorboard, append=start > 0))
    samples = RolloutLog(run_dir, cfg.logging.rollouts_every, append=start > 0)  # like metrics.jsonl
    g = cfg.rollout.group_size
    with StopRequest(log) as stop, RewardPool(cfg.reward) as pool:
        evaluate = Evaluator(cfg, tok, policy.arch, policy.graphdef, state.params, mesh, pool)
        if base_eval is None:  # step 0: every run carries its own base-policy record
            base_eval = {**evaluate(state.params, 0), **probe(state.params)}
            writer.writer.write(0, base_eval)
        log(_format_eval("base policy", base_eval))
        meta = {
            "config": cfg.model_dump(mode="json"),
            "reference": reference_id,
            "base_eval": base_eval,
            "arch": policy.arch.to_hf(),
            "mesh": dict(mesh.shape),
            "process_count": jax.process_count(),
        }
        progress = _progress(cfg, start)
        done, final_eval = start, None
        for step in range(start, cfg.run.steps):
            t0 = time.perf_counter()
            step_batch = pipeline.batch(step)
            arrays, examples = step_batch
            # Each process holds its own prompts' rows; the arrays below are global over all processes.
            prompts = PromptBatch(**global_tree(arrays, mesh, ROLLOUT_RULES))
            rollout = sampler(state.params, prompts, jax.random.fold_in(purpose_key(cfg.run.seed, "rollout"), step))
            logp_ref = reference(rollout) if reference else None  # async: runs while the host scores
            host = local_tree(rollout)  # this process scores only the rollouts it holds
            texts = decode_completions(tok, host, stop_ids)
            golds = [verification_target(cfg.data.task, e) for e in examples for _ in range(g)]
            result = pool.score(texts, golds, cfg.reward.verifier)
            local_rewards = result.rewards.reshape(-1, g)
            adv_lib.check_rewards(local_rewards)
            rewards = global_rows(local_rewards, mesh, TRAIN_RULES)
            adv, weight, adv_unfiltered = advantages(rewards)
            measure = (step + 1) % cfg.logging.dynamics_every == 0
            batch = to_train_batch(rollout, adv, weight, logp_ref).replace(adv_unfiltered=adv_unfiltered.reshape(-1))
            state, device_metrics = train_step(state, batch, measure)
            done = step + 1
            samples.write(done, np.repeat(arrays["index"], g), host, texts, result.rewards)
            host_metrics = rollout_metrics(host, result, step_batch, texts, cfg)
            host_metrics["time/step_s"] = time.perf_counter() - t0
            host_metrics["time/tokens_per_s"] = host_metrics.pop("tokens") / host_metrics["time/step_s"]
            if probe.enabled and (done % cfg.logging.probe_every == 0 or done == cfg.run.steps):
                host_metrics.update(probe(state.params))
            if (cfg.eval.every and done % cfg.eval.every == 0) or done == cfg.run.steps:
                host_metrics.update(evaluate(state.params, done))
            if done == cfg.run.steps:
                final_eval = {k: v for k, v in host_metrics.items() if k.startswith(("eval/", "probe/"))}
            writer.push(
                done, {**device_metrics, **adv_lib.group_stats(rewards, cfg.advantage.correct_threshold)}, host_metrics
            )
            progress.update(1)
            progress.set_postfix(
                reward=f"{host_metrics['reward/mean']:.3f}", tok_s=f"{host_metrics['time/tokens_per_s']:.0f}"
            )
            stopping = stop.should_stop(done) or (stop_at is not None and done >= stop_at)
            if stopping or done == cfg.run.steps or _checkpoint_due(cfg, done, host_metrics):
                writer.persist()  # the metrics row of `done` is in the run dir before its checkpoint
                samples.persist()
                ckpt.save(done, state, {**meta, "data": {"next_batch": done}}, writer.last)
            if stopping:
                break
        writer.flush()
        progress.close()
        if final_eval is None and done >= cfg.run.steps:  # resumed a run that had already finished
            log(f"the run is already complete (step {done} of run.steps={cfg.run.steps}); use --restart to train again")
            final_eval = {**evaluate(state.params, done), **probe(state.params)}
    ckpt.close()
    writer.writer.close()
    samples.close()
    if done < cfg.run.steps:
        why = stop.reason or f"--stop-at {stop_at}"
        log(
            f"stopped after step {done} of {cfg.run.steps} ({why}); checkpoint saved in "
            f"{ckpt.directory / str(done)}. Run the same command again to resume."
        )
        return {"run": cfg.run.name, "stopped_at": done, "reason": why}
    log(_format_eval("final policy", final_eval))
    summary = _summary(cfg, base_eval, final_eval, run_dir, time.perf_counter() - clock, writer.last)
    if jax.process_index() == 0:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
        plot_run(run_dir)
    log(summary["stages"]["summary"])
    log(f"summary written to {run_dir / 'summary.json'}")
    return summary


def _checkpoint_due(cfg: Config, step: int, host_metrics: dict[str, Any]) -> bool:
    """Every `checkpoint.every` steps, and at each step that measures `checkpoint.best_metric`."""
    every = cfg.checkpoint.every
    best = cfg.checkpoint.best_metric
    return bool(every and step % every == 0) or bool(best and best in host_metrics)


def check_resumable(
    meta: dict[str, Any], cfg: Config, reference_id: dict[str, str], allow_change: bool, log: Callable[[str], None]
) -> None:
    """Refuse a resume that would not continue the saved run; report the harmless differences."""
    where = f"checkpoint step {meta['step']}"
    changes = ConfigChanges.between(meta["config"], cfg)
    if changes.state:
        raise CheckpointError(
            f"cannot resume from {where}: these settings define the saved state and differ:\n  "
            + "\n  ".join(changes.state)
            + "\nUse the original values, or start over with --restart or a new --run-dir."
        )
    if changes.trajectory and not allow_change:
        raise CheckpointError(
            f"cannot resume from {where}: these settings change the training maths:\n  "
            + "\n  ".join(changes.trajectory)
            + "\nUse the original values, or pass --allow-config-change to continue with the "
            "new ones (the run then no longer matches an uninterrupted run)."
        )
    for line in changes.harmless + (changes.trajectory if allow_change else []):
        log(f"resume: config changed: {line}")
    saved = meta["reference"]
    if saved["fingerprint"] != reference_id["fingerprint"]:
        text = (
            f"the initial policy loaded now ({reference_id['source']}, fingerprint "
            f"{reference_id['fingerprint']}) differs from the one the run started with ({saved['source']}, "
            f"fingerprint {saved['fingerprint']})"
        )
        if cfg.loss.kl_beta > 0:
            raise CheckpointError(
                f"cannot resume from {where}: {text}; it is the KL reference, so restore the "
                "original model files (or point model.path at them)"
            )
        log(f"resume: warning: {text}; not used since loss.kl_beta = 0")


def write_run_files(cfg: Config, run_dir: Any, tok: Any) -> None:
    """The resolved config and the tokenizer (so `rlvr-jax export` needs nothing outside the run dir)."""
    if jax.process_index() != 0:
        return
    save_config(cfg, run_dir / "config.yaml")
    if (run_dir / "tokenizer" / "tokenizer_config.json").is_file():
        return
    if not is_remote(run_dir):
        tok.save_pretrained(str(run_dir / "tokenizer"))
        return
    with tempfile.TemporaryDirectory(prefix="rlvr-jax-tokenizer-") as tmp:
        tok.save_pretrained(tmp)  # transformers writes local files only
        upload_dir(Path(tmp), run_dir / "tokenizer")


def rollout_metrics(host: Rollout, result: Any, step_batch: Any, texts: list[str], cfg: Config) -> dict[str, float]:
    """Host-side metrics of the whole step: this process's rollouts, summed over processes."""
    from rlvr_jax.rewards import toy_strategy_of

    rewards = np.asarray(result.rewards, np.float64)
    sums = {
        "n": float(rewards.size),
        "reward": float(rewards.sum()),
        "reward_sq": float((rewards**2).sum()),
        "correct": float(np.sum(result.correct)),
        "length": float(np.sum(host.lengths)),
        "eos": float(np.sum(host.eos)),
        "timeouts": float(result.timeouts),
        "errors": float(result.errors),
        "truncated": step_batch.metrics["data/truncated"],
    }
    strategies = ("S1", "S2", "S3") if cfg.data.task == "toy_strategy" else ()
    chosen = [toy_strategy_of(t) for t in texts] if strategies else []
    sums.update({f"frac_{s}": float(chosen.count(s)) for s in strategies})
    total = sum_over_processes(sums)
    n = max(total["n"], 1.0)
    mean = total["reward"] / n
    out = {
        "reward/mean": mean,
        "reward/std": float(np.sqrt(max(total["reward_sq"] / n - mean**2, 0.0))),
        "reward/correct_frac": total["correct"] / n,
        "rollout/length_mean": total["length"] / n,
        "rollout/eos_frac": total["eos"] / n,
        "reward/timeouts": total["timeouts"],
        "reward/errors": total["errors"],
        "data/truncated": total["truncated"],
        "time/reward_s": result.seconds,
        "tokens": total["length"],
    }
    out.update({f"rollout/frac_{s}": total[f"frac_{s}"] / n for s in strategies})
    return out


def _progress(cfg: Config, start: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.run.steps, initial=start, desc="rl", disable=not cfg.logging.progress_bar or jax.process_index() != 0
    )


def _format_eval(name: str, values: dict[str, float]) -> str:
    keys = ["eval/reward_mean", "eval/correct_frac", "eval/correct_frac/hard"]
    keys += [k for k in values if k.startswith("eval/pass@") and k.count("/") == 1 and k != "eval/pass@1"][-1:]
    keys += [k for k in values if k.startswith("eval/pass@") and k.endswith("/hard") and k != "eval/pass@1/hard"][-1:]
    keys += ["probe/pi_S1", "probe/pi_S2", "probe/pi_S3"]
    shown = ", ".join(f"{k.split('/', 1)[1]}={values[k]:.3f}" for k in keys if k in values)
    return f"{name}: {shown}"


def _summary(cfg: Config, first: dict, final: dict, run_dir: Any, seconds: float, last: dict) -> dict:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    history = [r["reward/mean"] for r in rows if r.get("reward/mean") is not None]
    evals = read_evals(run_dir)
    stage = detect_transition(*probe_series(rows))
    return {
        "run": cfg.run.name,
        "steps": cfg.run.steps,
        "seconds_this_session": round(seconds, 1),
        "advantage": {"estimator": cfg.advantage.estimator.value, "sign": cfg.advantage.sign.value},
        "base": first,
        "final": final,
        "train_reward_first_10": float(np.mean(history[:10])) if history else None,
        "train_reward_last_10": float(np.mean(history[-10:])) if history else None,
        "stages": {**stage, "summary": describe_stages(stage)},
        "pass_at_k_over_training": [
            {
                "step": e["step"],
                "pass_at_k": e["pass_at_k"],
                **{f"pass_at_k/{k}": v["pass_at_k"] for k, v in e["subsets"].items()},
            }
            for e in evals
        ],
        "boundary_over_training": boundary_over_training(evals),
        "last_metrics": last,
    }
