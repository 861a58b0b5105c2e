"""The orchestrator: setup, then `for step: rl_step(...); hooks.run(...)`, then the summary.

`train(cfg)` reads top to bottom: `setup` builds the step context (rlvr_jax/step.py: the stages of
one step) and restores or initialises the state; `cadence_hooks` registers the work that runs every
N steps (rlvr_jax/hooks.py); `finish` writes the summary. Everything task-specific comes from the
run's Task (rlvr_jax/tasks), everything random from the RNG purposes of rlvr_jax/rng.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from rlvr_jax.checkpoint import Checkpointer, CheckpointError, fingerprint, move_aside
from rlvr_jax.compile_cache import use_compile_cache
from rlvr_jax.config import Config, ConfigChanges, ConfigError, save_config
from rlvr_jax.data import PromptPipeline
from rlvr_jax.data.pipeline import scan_prompts
from rlvr_jax.eval_cache import base_evaluation
from rlvr_jax.evaluate import Evaluator
from rlvr_jax.hooks import Hooks
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh, maybe_initialize_distributed, report_sharding
from rlvr_jax.model import Arch, check_arch_matches, load_policy, model_dir
from rlvr_jax.plots import plot_run
from rlvr_jax.preemption import StopRequest
from rlvr_jax.probe import Probe, make_probe, probe_spec
from rlvr_jax.rewards import RewardPool, check_columns, check_verifier, load_reward_functions
from rlvr_jax.rng import purpose_key
from rlvr_jax.rollout import SamplingSpec, make_sampler
from rlvr_jax.schedule import PhaseState, advance
from rlvr_jax.stages import OnlineDetector
from rlvr_jax.step import StepContext, StepRecord, make_phase_advantages, make_reference, rl_step
from rlvr_jax.storage import ensure_writable, is_hub_id, is_remote, local_cache, upload_dir, write_text_atomic
from rlvr_jax.summary import format_eval, make_summary
from rlvr_jax.tasks import FileTask, Task, task_for
from rlvr_jax.tokenizer import load_tokenizer, stop_token_ids
from rlvr_jax.types import TrainState
from rlvr_jax.update import (
    UpdateSpec,
    abstract_train_state,
    init_train_state,
    make_optimizer,
    make_train_step,
    total_optimizer_steps,
)
from rlvr_jax.wandb_log import check_logging, wandb_run
from rlvr_jax.writers import LateWriter, MetricWriter, RolloutLog, read_jsonl, trim_jsonl


def train(
    cfg: Config,
    log: Callable[[str], None] = print,
    *,
    restart: bool = False,
    stop_at: int | None = None,
    allow_config_change: bool = False,
    task: Task | None = None,
    reward_funcs: Sequence[Callable[..., Any]] = (),
) -> dict[str, Any]:
    """Run (or resume) RL training as configured; returns the summary (also written to the run dir).

    restart: move existing checkpoints aside and start at step 0 (default: resume from the latest).
    stop_at: save a checkpoint and return after this step (a time-boxed slice of a longer run).
    allow_config_change: resume even if settings that change the maths differ from the checkpoint's.
    task: the run's task (default `task_for(cfg)`: data.task, or the files of data.path); the Python API
        passes one holding in-memory rows.
    reward_funcs: Python reward functions (TRL or verl signatures) after those of reward.functions.
    """
    clock = time.perf_counter()
    with contextlib.ExitStack() as closing:
        run = setup(
            cfg, log, closing, restart=restart, allow_config_change=allow_config_change, task=task, funcs=reward_funcs
        )
        hooks = cadence_hooks(run)
        record, last = None, time.perf_counter()
        for step in range(run.start, run.cfg.run.steps):
            run.phase = advance(run.phase, run.cfg.advantage.schedule, step, run.onset_step)
            run.state, record = rl_step(run.ctx, run.state, step, run.phase.phase)
            record.stopping = run.stop.should_stop(record.step) or (stop_at is not None and record.step >= stop_at)
            # Wall time since the previous step ended: the update is dispatched asynchronously, so this,
            # not the step's own time/step_s, is what a step costs in steady state.
            record.host_metrics["time/interval_s"], last = time.perf_counter() - last, time.perf_counter()
            hooks.run(record)
            if record.stopping:
                break
        final_eval = final_evaluation(run, record)
    if final_eval is None:
        done = record.step
        why = run.stop.reason or f"--stop-at {stop_at}"
        log(
            f"stopped after step {done} of {run.cfg.run.steps} ({why}); checkpoint saved in "
            f"{run.ckpt.directory / str(done)}. Run the same command again to resume."
        )
        return {"run": run.cfg.run.name, "stopped_at": done, "reason": why}
    return finish(run, final_eval, time.perf_counter() - clock)


# --- setup -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Policy:
    """What the loop needs to know about the policy besides its params."""

    arch: Arch
    graphdef: Any
    tokenizer: Any
    folder: Any


@dataclasses.dataclass
class Run:
    """A run after setup: the step context, the state to continue from, and the run's sinks."""

    cfg: Config
    task: Task
    ctx: StepContext
    state: TrainState
    start: int
    base_eval: dict[str, Any]
    meta: dict[str, Any]  # what every checkpoint's record holds besides the step (and the two below)
    ckpt: Checkpointer
    writer: LateWriter
    samples: RolloutLog
    evaluate: Evaluator
    probe: Probe
    stop: StopRequest
    log: Callable[[str], None]
    # Host-side state that steers the run besides the train state; saved in each checkpoint's meta.
    stages: OnlineDetector | None = None  # the online stage detector (None: the run has no probe)
    phase: PhaseState = PhaseState()  # the advantage.schedule phase in force

    @property
    def onset_step(self) -> int | None:
        return self.stages.onset_step if self.stages else None


def setup(
    cfg: Config,
    log: Callable[[str], None],
    closing: contextlib.ExitStack,
    *,
    restart: bool,
    allow_config_change: bool,
    task: Task | None = None,
    funcs: Sequence[Callable[..., Any]] = (),
) -> Run:
    """Everything before the first step: mesh, policy, data, compiled stages, state, sinks, base evaluation."""
    check_logging(cfg)  # logging.wandb without the package: stop before any expensive work
    use_compile_cache(cfg.run.compile_cache, log)  # before the first compile (the warm start's included)
    maybe_initialize_distributed(cfg.mesh)
    run_dir = cfg.run_dir
    cfg = with_data_dir(cfg, run_dir)
    ensure_writable(run_dir)  # a missing bucket or credentials: stop now, with the fix
    task = task or task_for(cfg)
    # What the run names (model, verifier, reward functions, probe file, mesh) is checked in seconds, then the
    # data: bad input stops the run here, before any dataset is built or weights load.
    preflight(cfg, task, funcs)
    functions = load_reward_functions(cfg.reward, funcs)
    probe_set = probe_spec(cfg, task)
    mesh = make_mesh(cfg.mesh)  # a mesh that does not fit this machine's devices: a ConfigError now
    sources = open_sources(cfg, task)
    check_columns(functions, columns_of(task, sources["train"]))
    if restart and (moved := move_aside(run_dir / "checkpoints")):
        log(f"--restart: previous checkpoints moved to {moved}")
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
    closing.callback(ckpt.close)
    policy, params = prepare_policy(cfg, task, run_dir, mesh, log, sources)
    report_sharding(params, mesh, TRAIN_RULES, log, strict=cfg.mesh.strict_sharding)
    tx = make_optimizer(cfg.optim, total_optimizer_steps(cfg.optim, cfg.run.steps))
    reference_id = {
        "source": str(policy.folder or "random init from model.arch and run.seed"),
        "fingerprint": fingerprint(params),
    }
    state, start, saved = restore_or_init(cfg, ckpt, params, tx, mesh, reference_id, allow_config_change, log)
    base_eval = saved["base_eval"] if saved else None
    write_run_files(cfg, run_dir, policy.tokenizer)
    wandb = closing.enter_context(wandb_run(cfg, run_dir, resumed=start > 0))  # finished after the writers close
    metrics = MetricWriter(run_dir, cfg.logging.tensorboard, append=start > 0, wandb=wandb)
    writer = LateWriter(metrics)
    samples = RolloutLog(  # appends like metrics.jsonl; shows its rows as TensorBoard text and W&B tables
        run_dir,
        cfg.logging.rollouts_every > 0,
        append=start > 0,
        group_size=cfg.rollout.group_size,
        per_step=cfg.logging.rollouts_per_step,
        show=metrics.write_samples,
    )
    closing.callback(samples.close)
    closing.callback(writer.close)
    stop = closing.enter_context(StopRequest(log))
    pool = closing.enter_context(RewardPool(cfg.reward, funcs, cfg.advantage.correct_threshold))
    ctx = step_context(cfg, task, policy, params, state, tx, mesh, pool, sources["train"])
    del params  # the state (fresh or restored) owns the policy from here on
    evaluate = Evaluator(
        cfg, task, policy.tokenizer, policy.arch, policy.graphdef, state.params, mesh, pool, sources["eval"]
    )
    probe = make_probe(probe_set, cfg, task, policy.tokenizer, policy.graphdef)
    if base_eval is None:  # step 0: every run carries its own base-policy record
        base_eval = {
            **base_evaluation(evaluate, state.params, cfg.eval.cache_dir, dict(mesh.shape), log),
            **probe(state.params),
        }
        writer.write_now(0, base_eval)
    log(format_eval("base policy", base_eval, task))
    stages, phase = steering_state(cfg, probe, saved, base_eval, start, log)
    meta = {
        "config": cfg.model_dump(mode="json"),
        "reference": reference_id,
        "base_eval": base_eval,
        "arch": policy.arch.to_hf(),
        "mesh": dict(mesh.shape),
        "process_count": jax.process_count(),
    }
    return Run(
        cfg, task, ctx, state, start, base_eval, meta, ckpt, writer, samples, evaluate, probe, stop, log, stages, phase
    )


def steering_state(
    cfg: Config,
    probe: Probe,
    saved: dict[str, Any] | None,
    base_eval: dict[str, Any],
    start: int,
    log: Callable[[str], None],
) -> tuple[OnlineDetector | None, PhaseState]:
    """The online stage detector and the schedule phase to continue from: fresh (the detector has
    seen the base probe reading), or a checkpoint's (`saved`: its meta record). The detector's state
    is a function of its settings and the probe readings, so a checkpoint written before it was saved,
    or under other `logging.stage_*` settings, gets it replayed from metrics.jsonl (already trimmed
    to the checkpoint). The saved phase holds only for the schedule it was saved under; otherwise
    (no phase saved, or the schedule changed with --allow-config-change) it is recomputed from the
    detector's onset, and a phase recomputed so starts at this step."""
    stages = None
    if probe.enabled:
        fresh = OnlineDetector.from_config(cfg.logging)
        if saved is None:
            stages = fresh.observe(0, probe_classes(probe, base_eval))
        elif saved.get("stages") is not None and same_detector(OnlineDetector.from_json(saved["stages"]), fresh):
            stages = OnlineDetector.from_json(saved["stages"])
        else:
            stages = fresh
            for row in read_jsonl(cfg.run_dir / "metrics.jsonl"):
                if all(isinstance(row.get(f"probe/pi_{n}"), (int, float)) for n in probe.names):
                    stages = stages.observe(row["step"], probe_classes(probe, row))
    schedule = cfg.advantage.model_dump(mode="json")["schedule"]
    saved_schedule = ((saved or {}).get("config") or {}).get("advantage", {}).get("schedule", [])
    if saved is not None and saved.get("schedule") is not None and saved_schedule == schedule:
        phase = PhaseState.from_json(saved["schedule"])
    else:
        phase = advance(PhaseState(), cfg.advantage.schedule, start, stages.onset_step if stages else None)
    if cfg.advantage.uses_onset and stages is not None and not (stages.rare and len(stages.rare) < len(stages.names)):
        log(
            "advantage.schedule: the probe's base reading has no rare class (or only rare ones), so the stage "
            "detector cannot fire and the onset phases will not start"
        )
    return stages, phase


def same_detector(a: OnlineDetector, b: OnlineDetector) -> bool:
    """Whether two detectors apply the same rule (window, rare ratio, minimum rise)."""
    return (a.window, a.rare_ratio, a.min_rise) == (b.window, b.rare_ratio, b.min_rise)


NO_TOKENIZER = "config: a random model (model.arch) needs model.tokenizer, or warmstart.enabled=true"


def preflight(cfg: Config, task: Task, funcs: Sequence[Callable[..., Any]] = ()) -> None:
    """The checks that need more than the config itself but only seconds: the policy's architecture
    (model.arch, a model folder's config.json), the tokenizer's source, the verifier's name, the probe
    an advantage.schedule onset phase reads, and the split of the prompts over processes."""
    model = cfg.model
    if model.path is None and not model.arch:
        raise ConfigError("config: set model.path (an HF folder) or model.arch (config.json fields of a random model)")
    if model.path is None and model.tokenizer is None and not cfg.warmstart.enabled:
        raise ConfigError(NO_TOKENIZER)
    wanted = Arch.from_hf({**task.arch_defaults(), **model.arch}, source="config model.arch") if model.arch else None
    folder = model.path is not None and not is_hub_id(model.path)  # a Hub model is read once downloaded
    arch = Arch.from_dir(model.path) if folder else wanted
    if folder and wanted is not None:
        check_arch_matches(wanted, arch, model.path)
    if arch is not None and cfg.rollout.top_k > arch.vocab_size:
        raise ConfigError(
            f"rollout.top_k={cfg.rollout.top_k} is more than the vocabulary ({arch.vocab_size} tokens); "
            "lower it, or 0 to turn top-k off"
        )
    if not cfg.reward.functions and not funcs:
        try:
            check_verifier(cfg.reward.verifier)
        except ValueError as err:
            raise ConfigError(f"reward.verifier: {err}") from None
    if cfg.advantage.uses_onset and probe_spec(cfg, task) is None:
        raise ConfigError(
            f"advantage.schedule: at: onset needs the probe the stage detector reads; task {task.name!r} has "
            "none: set logging.probe_file"
        )
    if cfg.data.prompts_per_step % jax.process_count():
        raise ConfigError(
            f"data.prompts_per_step={cfg.data.prompts_per_step} does not divide over the {jax.process_count()} "
            "processes of this job (each reads an equal share); make it a multiple of the process count"
        )


def step_context(
    cfg: Config,
    task: Task,
    policy: Policy,
    params: Any,
    state: TrainState,
    tx: Any,
    mesh: Any,
    pool: RewardPool,
    source: Any = None,
) -> StepContext:
    """The compiled stages of one step, and what they read (`source`: the train split, opened by setup)."""
    tok = policy.tokenizer
    stop_ids = stop_token_ids(tok, policy.arch.eos_token_ids)
    source = source if source is not None else task.open_split(cfg.data.split, cfg.data)
    index, count = jax.process_index(), jax.process_count()
    prompts = PromptPipeline(source, cfg.data, tok, cfg.run.seed, index, count, task.example)
    sampling = SamplingSpec.from_config(cfg.rollout, stop_ids, int(tok.pad_token_id))
    sampler = make_sampler(policy.arch, policy.graphdef, params, mesh, ROLLOUT_RULES, sampling)
    spec = UpdateSpec(cfg.loss, cfg.optim, cfg.loss.max_len_norm or cfg.rollout.max_new_tokens)
    update = make_train_step(policy.graphdef, tx, spec, state, mesh, TRAIN_RULES)
    reference = make_reference(cfg, policy.graphdef, params)
    return StepContext(
        cfg=cfg,
        task=task,
        prompts=prompts,
        sampler=sampler,
        reference=reference,
        pool=pool,
        advantages=make_phase_advantages(cfg),
        update=update,
        tokenizer=tok,
        stop_ids=stop_ids,
        mesh=mesh,
        rollout_key=purpose_key(cfg.run.seed, "rollout"),
    )


def open_sources(cfg: Config, task: Task) -> dict[str, Any]:
    """The train and evaluation splits, opened once (a registered task builds its dataset here), with
    the cheap checks of file rows (columns, templates) done before any expensive work."""
    data = cfg.data
    sources = {
        "train": task.open_split(data.split, data),
        "eval": task.open_split(cfg.eval.split, data),
    }
    if isinstance(task, FileTask):
        task.check(sources["train"], f"the {data.split} rows ({data.path or 'Python'})")
        task.check(sources["eval"], f"the {cfg.eval.split} rows ({cfg.eval.path or data.path or 'Python'})")
    return sources


def columns_of(task: Task, source: Any) -> list[str]:
    """The columns a reward function can ask for: those of the train split's first example."""
    return sorted(task.example(source[0], 0)["columns"]) if len(source) else []


def prepare_policy(
    cfg: Config, task: Task, run_dir: Any, mesh: Any, log: Callable[[str], None], sources: dict[str, Any] | None = None
) -> tuple[Policy, Any]:
    """The policy's folder (a model path, or the task's warm start), its tokenizer, then its weights;
    between the two, every prompt is rendered and measured once (`sources`), so a bad row stops the run
    before the weights load."""
    folder = model_dir(cfg.model.path) if cfg.model.path else None  # a Hub model id: its HF cache folder
    if folder is not None:
        Arch.from_dir(folder)  # a missing or unreadable config.json is named before anything loads
    if folder is None and cfg.warmstart.enabled:
        folder = task.warm_start(cfg, local_cache(run_dir, "base_policy"), Path(cfg.data.data_dir), mesh, log)
    tok_dir = cfg.model.tokenizer or folder
    if tok_dir is None:
        raise ConfigError(NO_TOKENIZER)
    tok = load_tokenizer(tok_dir)
    for split, source in (sources or {}).items():
        limit = cfg.eval.max_problems if split == "eval" else None
        rows = source if limit is None else [source[i] for i in range(min(limit, len(source)))]
        cut = scan_prompts(rows, tok, cfg.data, task.example, f"the {split} split")
        if cut:
            log(f"data: {cut} {split} prompts are longer than data.max_prompt_len and will be truncated")
    # The warm-started folder's own config.json is the architecture (model.arch only described how to build it).
    model_cfg = (
        cfg.model.model_copy(update={"path": str(folder), "arch": {}}) if folder and not cfg.model.path else cfg.model
    )
    arch, graphdef, params = load_policy(model_cfg, mesh, TRAIN_RULES, purpose_key(cfg.run.seed, "init"))
    return Policy(arch, graphdef, tok, folder), params


def restore_or_init(
    cfg: Config,
    ckpt: Checkpointer,
    params: Any,
    tx: Any,
    mesh: Any,
    reference_id: dict[str, str],
    allow_config_change: bool,
    log: Callable[[str], None],
) -> tuple[TrainState, int, dict[str, Any] | None]:
    """(state, first step, the checkpoint's meta record or None): the latest usable checkpoint, else a
    fresh state."""
    target = abstract_train_state(params, tx, mesh, TRAIN_RULES)
    resumed = ckpt.restore_latest(
        target, lambda meta: check_resumable(meta, cfg, reference_id, allow_config_change, log), log
    )
    if not resumed:
        return init_train_state(params, tx, mesh, TRAIN_RULES), 0, None
    state, meta = resumed
    start = meta["step"]
    log(f"resuming from checkpoint step {start} ({ckpt.directory / str(start)})")
    trim_jsonl(cfg.run_dir / "metrics.jsonl", start)
    trim_jsonl(cfg.run_dir / "rollouts.jsonl", start)
    return state, start, meta


def data_dir(cfg: Config, run_dir: Any) -> Path:
    return Path(cfg.data.data_dir) if cfg.data.data_dir else local_cache(run_dir, "datasets")


def with_data_dir(cfg: Config, run_dir: Any) -> Config:
    """Datasets are built under the run directory (a local cache for a bucket run directory) unless
    data.data_dir names a shared place."""
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": str(data_dir(cfg, run_dir))})})


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


# --- the hooks -------------------------------------------------------------------------------------


def cadence_hooks(run: Run) -> Hooks:
    """Every piece of cadence work, in the order it runs after a step."""
    cfg = run.cfg
    hooks = Hooks(last_step=cfg.run.steps)
    if run.probe.enabled:
        hooks.add("probe", lambda r: probe_and_detect(run, r), every=cfg.logging.probe_every)
    hooks.add("eval", lambda r: r.host_metrics.update(run.evaluate(run.state.params, r.step)), every=cfg.eval.every)
    hooks.add("metrics", lambda r: run.writer.push(r.step, r.device_metrics, r.host_metrics))
    hooks.add(
        "rollouts",
        lambda r: run.samples.write(r.step, r.prompt_index, r.rollout, r.texts, r.rewards, r.prompts),
        every=cfg.logging.rollouts_every,
        at_end=False,
    )
    hooks.add("progress", progress_hook(cfg, run.start))
    best = cfg.checkpoint.best_metric
    hooks.add(
        "checkpoint",
        lambda r: save_checkpoint(run, r.step),
        every=cfg.checkpoint.every,
        when=lambda r: r.stopping or bool(best and best in r.host_metrics),  # also at each step measuring `best`
    )
    return hooks


def probe_and_detect(run: Run, record: StepRecord) -> None:
    """The probe, then the online stage detector on its reading (host side, a few comparisons)."""
    values = run.probe(run.state.params)
    record.host_metrics.update(values)
    if run.stages is not None:
        run.stages = run.stages.observe(record.step, probe_classes(run.probe, values))
        record.host_metrics.update(run.stages.metrics(record.step))


def probe_classes(probe: Probe, values: dict[str, Any]) -> dict[str, float]:
    """The named classes' probabilities of a probe reading, in probe order (what the detectors read)."""
    return {name: values[f"probe/pi_{name}"] for name in probe.names}


def save_checkpoint(run: Run, step: int) -> None:
    run.writer.persist()  # the metrics row of `step` is in the run dir before its checkpoint
    run.samples.persist()
    steering = {"stages": run.stages.to_json() if run.stages else None, "schedule": run.phase.to_json()}
    run.ckpt.save(step, run.state, {**run.meta, "data": {"next_batch": step}, **steering}, run.writer.last)


def progress_hook(cfg: Config, start: int) -> Callable[[StepRecord], None]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.run.steps, initial=start, desc="rl", disable=not cfg.logging.progress_bar or jax.process_index() != 0
    )

    def update(record: StepRecord) -> None:
        bar.update(1)
        metrics = record.host_metrics
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", tok_s=f"{metrics['time/tokens_per_s']:.0f}")
        if record.step == cfg.run.steps or record.stopping:
            bar.close()

    return update


# --- the end ---------------------------------------------------------------------------------------


def final_evaluation(run: Run, record: StepRecord | None) -> dict[str, Any] | None:
    """The final policy's evaluation and probe (None: the run stopped early)."""
    run.writer.flush()
    if record is None:  # resumed a run that had already finished
        done = run.start
        run.log(
            f"the run is already complete (step {done} of run.steps={run.cfg.run.steps}); use --restart to train again"
        )
        return {**run.evaluate(run.state.params, done), **run.probe(run.state.params)}
    if record.step < run.cfg.run.steps:
        return None
    return {k: v for k, v in record.host_metrics.items() if k.startswith(("eval/", "probe/"))}


def finish(run: Run, final_eval: dict[str, Any], seconds: float) -> dict[str, Any]:
    run.log(format_eval("final policy", final_eval, run.task))
    online = run.stages.report() if run.stages else None
    summary = make_summary(run.cfg, run.base_eval, final_eval, seconds, run.writer.last, online, run.phase)
    if jax.process_index() == 0:
        write_text_atomic(run.cfg.run_dir / "summary.json", json.dumps(summary, indent=2))
        plot_run(run.cfg.run_dir)
    run.log(summary["stages"]["summary"])
    if online is not None:
        run.log(summary["stages"]["online_summary"])
    run.log(f"summary written to {run.cfg.run_dir / 'summary.json'}")
    return summary
