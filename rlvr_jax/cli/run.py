"""`rlvr-jax train`, `plot`, `export` and `plan`: a run directory's life, and its memory before it starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlvr_jax.config import PACKAGED
from rlvr_jax.storage import as_path

DEFAULT_CONFIG = PACKAGED / "toy_strategy.yaml"


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="RL training (default: the toy strategy task on CPU)",
        description="Train with a YAML config plus dotted overrides, e.g. advantage.sign=negative_only.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML config file, or the name of a packaged one (toy_strategy, toy_strategy_negative_only, "
        "recipes/<name>); default: toy_strategy",
    )
    p.add_argument("--run-dir", default=None, help="output folder or gs:// URL (default: runs/<run.name>)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start at step 0 even if the run dir has checkpoints (they are moved aside, not deleted)",
    )
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        metavar="STEP",
        help="save a checkpoint and exit after this step (resume later with the same command)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although settings that change the training maths differ from the checkpoint's",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint's policy as a Hugging Face folder",
        description="safetensors + config.json + tokenizer, loadable by transformers and `rlvr-jax generate --model`.",
    )
    p.add_argument("--run-dir", type=as_path, required=True, help="a training run directory (local or gs://)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or be empty)")


def run_export(args: argparse.Namespace) -> int:
    from rlvr_jax.api import export_checkpoint
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.tokenizer import TokenizerError

    try:
        step = export_checkpoint(args.run_dir, args.out, args.step)
    except FileExistsError as err:
        raise SystemExit(f"rlvr-jax export: --out {err}") from None
    except (CheckpointError, TokenizerError) as err:
        raise SystemExit(f"rlvr-jax export: {err}") from None
    print(f"exported step {step} of {args.run_dir} to {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from rlvr_jax.config import ConfigError, load_config

    if args.stop_at is not None and args.stop_at < 1:
        raise SystemExit(
            f"rlvr-jax train: --stop-at {args.stop_at} must be >= 1 (the step after which to save and exit)"
        )
    path = args.config or DEFAULT_CONFIG
    overrides = list(args.overrides) + ([f"run.run_dir={args.run_dir}"] if args.run_dir else [])
    try:
        cfg = load_config(path, overrides)
    except ConfigError as err:
        raise SystemExit(f"rlvr-jax train: {err}") from None
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.data import DataError
    from rlvr_jax.loop import train
    from rlvr_jax.model import ArchError, CheckpointFormatError
    from rlvr_jax.probe import ProbeError
    from rlvr_jax.rewards import RewardFunctionError, RewardSpecError
    from rlvr_jax.storage import StorageError
    from rlvr_jax.tokenizer import TokenizerError

    try:
        train(cfg, restart=args.restart, stop_at=args.stop_at, allow_config_change=args.allow_config_change)
    except (
        ConfigError,  # settings that validate but cannot work here (logging.wandb without the package)
        CheckpointError,
        ProbeError,
        StorageError,
        ArchError,
        CheckpointFormatError,
        TokenizerError,
        DataError,
        RewardSpecError,
        RewardFunctionError,
    ) as err:
        raise SystemExit(f"rlvr-jax train: {err}") from None
    return 0


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="write a run's figures (probe, dynamics, pass@k, boundary) under RUN_DIR/figures")
    p.add_argument("run_dir", type=as_path, help="a training run directory (local or gs://)")


def run_plot(args: argparse.Namespace) -> int:
    from rlvr_jax.plots import plot_run

    try:
        made = plot_run(args.run_dir)
    except FileNotFoundError as err:
        raise SystemExit(f"rlvr-jax plot: {err}") from None
    for path in made:
        print(path)
    return 0


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="per-device memory of a config's model on its mesh, and whether it fits",
        description="Params, optimizer state, KL reference, rollout copy, KV cache, gradients and "
        "micro-batch activations per device, and the verdict per accelerator.",
    )
    p.add_argument("--config", default=None, help="YAML config file or packaged name (default: toy_strategy)")
    p.add_argument("--devices", type=int, default=None, help="total devices (needed when a mesh axis is -1)")
    p.add_argument(
        "--accelerator", action="append", default=None, help="v5e | v5p | v6e | h100 | h200 (repeatable; default: all)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")


def run_plan(args: argparse.Namespace) -> int:
    from rlvr_jax.config import ConfigError, load_config
    from rlvr_jax.model import Arch, ArchError
    from rlvr_jax.model.arch import read_config_json
    from rlvr_jax.plan import ACCELERATORS, format_plan, plan_memory
    from rlvr_jax.tasks import TaskError, get_task

    try:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    except ConfigError as err:
        raise SystemExit(f"rlvr-jax plan: {err}") from None
    names = args.accelerator or list(ACCELERATORS)
    unknown = sorted(set(names) - set(ACCELERATORS))
    if unknown:
        raise SystemExit(f"rlvr-jax plan: unknown accelerator {unknown}; known: {sorted(ACCELERATORS)}")
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    devices = args.devices or (None if -1 in sizes else sizes[0] * sizes[1] * sizes[2])
    if devices is None:
        raise SystemExit(
            "rlvr-jax plan: the config's mesh has an axis of -1 (all remaining devices): pass --devices N, "
            "e.g. --devices 16 for a v5e-16 slice"
        )
    fields = dict(cfg.model.arch)
    if not fields and cfg.model.path and (as_path(cfg.model.path) / "config.json").is_file():
        try:
            fields = read_config_json(as_path(cfg.model.path) / "config.json")
        except ArchError as err:
            raise SystemExit(f"rlvr-jax plan: {err}") from None
    if not fields:
        raise SystemExit(
            "rlvr-jax plan: the config names no architecture: set model.arch or a model.path with config.json"
        )
    try:
        fields = {**get_task(cfg.data.task).arch_defaults(), **fields}  # e.g. the toy tokenizer's vocab size
    except TaskError as err:
        raise SystemExit(f"rlvr-jax plan: {err}") from None
    try:
        arch = Arch.from_hf(fields, source="config model.arch")
        plan = plan_memory(cfg, arch, devices)
    except (ArchError, ValueError) as err:
        raise SystemExit(f"rlvr-jax plan: {err}") from None
    print(format_plan(cfg, arch, plan, names))
    return 0
