"""The `rlvr-jax` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rlvr_jax.bandit import add_bandit_parser, run_bandit
from rlvr_jax.storage import as_path


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample completions from a Hugging Face-format model folder",
        description="Print one JSON object per sample: prompt, completion, token_ids, finish_reason.",
    )
    p.add_argument(
        "--model", required=True, help="folder with config.json, safetensors and the tokenizer, or a Hub model id"
    )
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (G)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")


def _validate_sampling(args: argparse.Namespace) -> None:
    problems = []
    if args.max_new_tokens < 1:
        problems.append("--max-new-tokens must be >= 1")
    if args.temperature < 0:
        problems.append("--temperature must be >= 0 (0 is greedy)")
    if not 0 < args.top_p <= 1:
        problems.append("--top-p must be in (0, 1]")
    if args.top_k < 0:
        problems.append("--top-k must be >= 0 (0 disables it)")
    if args.num_samples < 1:
        problems.append("--num-samples must be >= 1")
    if problems:
        raise SystemExit("rlvr-jax generate: " + "; ".join(problems))


def run_generate(args: argparse.Namespace) -> int:
    _validate_sampling(args)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh
    from rlvr_jax.model import ArchError, CheckpointFormatError, from_pretrained
    from rlvr_jax.rollout import SamplingParams, make_sampler
    from rlvr_jax.tokenizer import TokenizerError, encode_left_padded, load_tokenizer, render_prompt, stop_token_ids
    from rlvr_jax.types import PromptBatch

    try:
        tok = load_tokenizer(args.tokenizer or args.model)
        mesh = make_mesh()
        arch, graphdef, params = from_pretrained(args.model, mesh, ROLLOUT_RULES, args.dtype, args.dtype)
    except (ArchError, CheckpointFormatError, TokenizerError) as err:
        raise SystemExit(f"rlvr-jax generate: {err}") from None
    rendered = [render_prompt(tok, p, use_chat_template=not args.raw) for p in args.prompt]
    tokens, mask = encode_left_padded(tok, rendered)
    sampling = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        group_size=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop_ids=stop_token_ids(tok, arch.eos_token_ids),
        pad_id=int(tok.pad_token_id),
    )
    sampler = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, sampling)
    prompts = PromptBatch(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), index=jnp.arange(len(rendered)))
    rollout = jax.device_get(sampler(params, prompts, jax.random.key(args.seed)))
    for row, reason in enumerate(rollout.finish_reasons):
        ids = np.asarray(rollout.tokens[row][: rollout.lengths[row]]).tolist()
        print(
            json.dumps(
                {
                    "prompt": args.prompt[row // args.num_samples],
                    "completion": tok.decode(ids, skip_special_tokens=True),
                    "token_ids": ids,
                    "finish_reason": reason,
                }
            )
        )
    return 0


DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "toy_strategy.yaml"


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="RL training (default: the toy strategy task on CPU)",
        description="Train with a YAML config plus dotted overrides, e.g. advantage.sign=negative_only.",
    )
    p.add_argument("--config", type=Path, default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name})")
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


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint's policy as a Hugging Face folder",
        description="safetensors + config.json + tokenizer, loadable by transformers and `rlvr-jax generate --model`.",
    )
    p.add_argument("--run-dir", type=as_path, required=True, help="a training run directory (local or gs://)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or be empty)")


def run_export(args: argparse.Namespace) -> int:
    import shutil

    from rlvr_jax.checkpoint import CheckpointError, restore_policy
    from rlvr_jax.mesh import TRAIN_RULES, make_mesh
    from rlvr_jax.model import save_pretrained
    from rlvr_jax.tokenizer import TokenizerError, load_tokenizer

    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"rlvr-jax export: --out {args.out} is not empty; choose a new folder")
    try:
        tok = load_tokenizer(args.run_dir / "tokenizer")
        arch, _, params, meta = restore_policy(args.run_dir, args.step, make_mesh(), TRAIN_RULES)
    except (CheckpointError, TokenizerError) as err:
        raise SystemExit(f"rlvr-jax export: {err}") from None
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(tmp, arch, params, tok)
    if args.out.exists():
        args.out.rmdir()
    tmp.rename(args.out)  # a failed export never leaves a half-written folder under the requested name
    print(f"exported step {meta['step']} of {args.run_dir} to {args.out}")
    return 0


def _import_gguf_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-gguf",
        help="convert a llama.cpp GGUF file (Llama, Qwen2, Qwen3) into a Hugging Face folder",
        description="Dequantized safetensors + config.json + tokenizer (with its chat template), loadable by "
        "transformers, `rlvr-jax generate --model` and `model.path`.",
    )
    p.add_argument("file", type=Path, help="the .gguf file")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or be empty)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="of the written weights")


def run_import_gguf(args: argparse.Namespace) -> int:
    from rlvr_jax.model.gguf_io import GGUFError, import_gguf

    try:
        arch = import_gguf(args.file, args.out, args.dtype)
    except GGUFError as err:
        raise SystemExit(f"rlvr-jax import-gguf: {err}") from None
    print(
        f"imported {args.file} ({arch.model_type}, {arch.num_params / 1e6:.1f}M parameters, {args.dtype}) to {args.out}"
    )
    return 0


def run_train(args: argparse.Namespace) -> int:
    from rlvr_jax.config import ConfigError, load_config

    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else Path("configs/toy_strategy.yaml"))
    overrides = list(args.overrides) + ([f"run.run_dir={args.run_dir}"] if args.run_dir else [])
    try:
        cfg = load_config(path, overrides)
    except ConfigError as err:
        raise SystemExit(f"rlvr-jax train: {err}") from None
    from rlvr_jax.checkpoint import CheckpointError
    from rlvr_jax.loop import train
    from rlvr_jax.model import ArchError, CheckpointFormatError
    from rlvr_jax.probe import ProbeError
    from rlvr_jax.storage import StorageError
    from rlvr_jax.tokenizer import TokenizerError

    try:
        train(cfg, restart=args.restart, stop_at=args.stop_at, allow_config_change=args.allow_config_change)
    except (CheckpointError, ProbeError, StorageError, ArchError, CheckpointFormatError, TokenizerError) as err:
        raise SystemExit(f"rlvr-jax train: {err}") from None
    return 0


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    from rlvr_jax.evaluate import add_eval_parser as add

    add(sub)


def _run_eval(args: argparse.Namespace) -> int:
    from rlvr_jax.evaluate import run_eval_command

    return run_eval_command(args)


def _plot_parser(sub: argparse._SubParsersAction) -> None:
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


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="per-device memory of a config's model on its mesh, and whether it fits",
        description="Params, optimizer state, KL reference, rollout copy, KV cache, gradients and "
        "micro-batch activations per device, and the verdict per accelerator.",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the embedded toy config)")
    p.add_argument("--devices", type=int, default=None, help="total devices (needed when a mesh axis is -1)")
    p.add_argument(
        "--accelerator", action="append", default=None, help="v5e | v5p | v6e | h100 | h200 (repeatable; default: all)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")


def run_plan(args: argparse.Namespace) -> int:
    from rlvr_jax.config import ConfigError, load_config
    from rlvr_jax.model import Arch, ArchError
    from rlvr_jax.plan import ACCELERATORS, format_plan, plan_memory

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
        fields = json.loads((as_path(cfg.model.path) / "config.json").read_text())
    if not fields:
        raise SystemExit(
            "rlvr-jax plan: the config names no architecture: set model.arch or a model.path with config.json"
        )
    if "vocab_size" not in fields and cfg.data.task == "toy_strategy":
        fields["vocab_size"] = 512  # the toy tokenizer's size limit
    try:
        arch = Arch.from_hf(fields, source="config model.arch")
        plan = plan_memory(cfg, arch, devices)
    except (ArchError, ValueError) as err:
        raise SystemExit(f"rlvr-jax plan: {err}") from None
    print(format_plan(cfg, arch, plan, names))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr-jax", description="RLVR training for LLMs in JAX/Flax NNX.")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    add_bandit_parser(sub)
    _train_parser(sub)
    _export_parser(sub)
    add_eval_parser(sub)
    _plot_parser(sub)
    _plan_parser(sub)
    _import_gguf_parser(sub)
    args = parser.parse_args(argv)
    commands = {
        "generate": run_generate,
        "bandit": run_bandit,
        "train": run_train,
        "export": run_export,
        "eval": _run_eval,
        "plot": run_plot,
        "plan": run_plan,
        "import-gguf": run_import_gguf,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
