"""`rlvr-jax eval`: pass@k and capability-boundary evaluation of a checkpoint or a Hugging Face model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from rlvr_jax.config import Config
from rlvr_jax.evaluate import Evaluator
from rlvr_jax.mesh import ROLLOUT_RULES
from rlvr_jax.rewards import RewardPool
from rlvr_jax.storage import as_path


def _task(name: str, cfg: Config | None = None) -> Any:
    """The registered task `name`, or (given the run's config) the task of its files."""
    from rlvr_jax.tasks import TaskError, get_task, task_for

    try:
        return task_for(cfg) if cfg is not None else get_task(name)
    except TaskError as err:
        raise SystemExit(f"rlvr-jax eval: {err}") from None


def add_eval_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="pass@k and capability-boundary evaluation of a checkpoint or HF model",
        description="n samples per problem with per-problem random streams fixed by --seed, "
        "unbiased pass@k for k = 1, 2, 4, ..., n, overall and per subset; with "
        "--reference, the problems gained, lost and kept against another evaluation.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run-dir", type=as_path, help="a training run directory, local or gs:// (its checkpoint and settings)"
    )
    source.add_argument("--model", help="a Hugging Face model folder (local or gs://) or Hub model id (owner/name)")
    p.add_argument("--step", type=int, help="with --run-dir: checkpoint step (default: the latest)")
    p.add_argument("--config", help="with --model: a YAML config (file or packaged name) for the data/reward settings")
    p.add_argument("--task", help="task name (default: the run's / config's)")
    p.add_argument("--split", default=None, help="split (default: eval.split, usually test)")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default 256)")
    p.add_argument("--temperature", type=float, default=None, help="default 0.6")
    p.add_argument("--top-p", type=float, default=None, help="default 0.95")
    p.add_argument("--max-problems", type=int, default=None, help="the first M problems of the split")
    p.add_argument("--samples-per-pass", type=int, default=None)
    p.add_argument("--batch-problems", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="random streams (keep equal to compare models)")
    p.add_argument("--verifier", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--reference", type=Path, help="another eval's JSON (e.g. the base model) for boundary sets")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="with --model: load weights holding NaN or inf (default: an error)",
    )
    p.add_argument("--out", type=Path, required=True, help="output JSON")


# flag -> (its smallest value, what it is): checked before any model or data is read.
_AT_LEAST = {
    "n": (1, "samples per problem"),
    "max_problems": (1, "problems"),
    "samples_per_pass": (1, "samples per sampler call"),
    "batch_problems": (1, "problems per sampler call"),
    "max_new_tokens": (1, "tokens"),
    "seed": (0, "a seed"),
    "step": (0, "a checkpoint step"),
}


def check_flags(args: Any) -> None:
    """Every out-of-range flag, in one line naming each flag, its value and the range."""
    problems = [
        f"--{name.replace('_', '-')} {value} must be >= {low} ({what})"
        for name, (low, what) in _AT_LEAST.items()
        if (value := getattr(args, name)) is not None and value < low
    ]
    if args.temperature is not None and not 0 <= args.temperature < float("inf"):
        problems.append(f"--temperature {args.temperature} must be a finite number >= 0 (0 is greedy)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        problems.append(f"--top-p {args.top_p} must be in (0, 1]")
    if args.allow_nonfinite and args.model is None:
        problems.append("--allow-nonfinite applies to --model (a checkpoint's weights are verified by content)")
    if problems:
        raise SystemExit("rlvr-jax eval: " + "; ".join(problems))


def eval_config(args: Any) -> Config:
    """The run's (or the given / default) config with the command-line settings applied."""
    from rlvr_jax.config import ConfigError, load_config, validate

    if args.run_dir is not None:
        from rlvr_jax.checkpoint import Checkpointer

        ckpt = Checkpointer(args.run_dir / "checkpoints", read_only=True)
        steps = ckpt.steps()
        try:
            tree = ckpt.read_meta(args.step if args.step is not None else steps[-1])["config"] if steps else None
        except Exception as err:  # - an unreadable or foreign checkpoint record
            raise SystemExit(
                f"rlvr-jax eval: cannot read the checkpoint record in {args.run_dir / 'checkpoints'}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from None
        finally:
            ckpt.close()
        if tree is None:
            raise SystemExit(f"rlvr-jax eval: {args.run_dir / 'checkpoints'} holds no checkpoint")
    else:
        try:
            tree = load_config(args.config).model_dump(mode="json")
        except ConfigError as err:
            raise SystemExit(f"rlvr-jax eval: --config: {err}") from None
    ev, data = tree["eval"], tree["data"]
    if args.config is None and args.run_dir is None:
        ev.update(n=256, temperature=0.6, top_p=0.95)  # docs/algorithms.md section 5 defaults
    if args.task and (data["source"] != "task" or args.task != data["task"]):  # a registered task, not the run's
        data.update(task=args.task, source="task", path=None)
        ev["path"] = None
        if not tree["reward"]["functions"]:  # the task's verifier, unless the run scores with its own functions
            tree["reward"]["verifier"] = _task(args.task).verifier
    settings = {
        ("eval", "split"): args.split,
        ("eval", "n"): args.n,
        ("eval", "temperature"): args.temperature,
        ("eval", "top_p"): args.top_p,
        ("eval", "max_problems"): args.max_problems,
        ("eval", "samples_per_pass"): args.samples_per_pass,
        ("eval", "batch_problems"): args.batch_problems,
        ("rollout", "max_new_tokens"): args.max_new_tokens,
        ("run", "seed"): args.seed,
        ("reward", "verifier"): args.verifier,
        ("data", "data_dir"): args.data_dir,
    }
    for (section, key), value in settings.items():
        if value is not None:
            tree[section][key] = value
    tree["mesh"] = {"data": 1, "fsdp": -1, "tensor": 1}  # this machine's devices, whatever the run used
    tree["model"]["allow_nonfinite"] = args.allow_nonfinite
    try:
        return validate(tree)
    except ConfigError as err:  # flags that fit one by one but not together (--n 24 --samples-per-pass 16)
        raise SystemExit(f"rlvr-jax eval: {err}") from None


def run_eval_command(args: Any) -> int:
    from rlvr_jax.boundary import boundary_sets
    from rlvr_jax.checkpoint import CheckpointError, restore_policy
    from rlvr_jax.compile_cache import use_compile_cache
    from rlvr_jax.data import DataError
    from rlvr_jax.mesh import make_mesh
    from rlvr_jax.model import ArchError, CheckpointFormatError, from_pretrained
    from rlvr_jax.rewards import RewardFunctionError, RewardSpecError, check_verifier
    from rlvr_jax.tokenizer import TokenizerError, load_tokenizer

    check_flags(args)
    cfg = eval_config(args)
    use_compile_cache(cfg.run.compile_cache, print)  # as train does: a repeated evaluation loads its programs
    mesh = make_mesh(cfg.mesh)
    reference = _read_reference(args.reference) if args.reference else None
    task = _task(cfg.data.task, cfg)
    try:  # what the run names, and its data, before the weights load
        if not cfg.reward.functions:
            check_verifier(cfg.reward.verifier)
        source = task.source(cfg.eval.split, cfg.data.data_dir, cfg.data.manual_dir)
    except (DataError, ValueError) as err:
        raise SystemExit(f"rlvr-jax eval: {err}") from None
    try:
        if args.run_dir is not None:
            tok = load_tokenizer(args.run_dir / "tokenizer")
            arch, graphdef, params, meta = restore_policy(args.run_dir, args.step, mesh, ROLLOUT_RULES)
            model = {"run_dir": str(args.run_dir), "step": meta["step"]}
        else:
            tok = load_tokenizer(cfg.model.tokenizer or args.model)
            arch, graphdef, params = from_pretrained(
                args.model,
                mesh,
                ROLLOUT_RULES,
                cfg.model.param_dtype,
                cfg.model.dtype,
                allow_nonfinite=args.allow_nonfinite,
            )
            model = {"model": str(args.model)}
    except (CheckpointError, ArchError, CheckpointFormatError, TokenizerError, FileNotFoundError) as err:
        raise SystemExit(f"rlvr-jax eval: {err}") from None
    try:
        with RewardPool(cfg.reward, (), cfg.advantage.correct_threshold) as pool:
            evaluator = Evaluator(cfg, task, tok, arch, graphdef, params, mesh, pool, source)
            report = {**model, **evaluator.run(params)}
    except (DataError, ValueError, RewardSpecError, RewardFunctionError) as err:
        raise SystemExit(f"rlvr-jax eval: {err}") from None
    if reference is not None:
        _warn_if_settings_differ(report, reference)
        report["boundary"] = boundary_sets(report["problems"], reference["problems"], report["n"], reference["n"])
    if jax.process_index() == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(format_report(report))
    return 0


def _read_reference(path: Path) -> dict[str, Any]:
    try:
        ref = json.loads(path.read_text())
        assert isinstance(ref, dict) and isinstance(ref["problems"], list) and isinstance(ref["n"], int)
        return ref
    except (OSError, ValueError, KeyError, AssertionError) as err:
        raise SystemExit(f"rlvr-jax eval: --reference {path} is not an `rlvr-jax eval` JSON output ({err})") from None


def _warn_if_settings_differ(report: dict[str, Any], ref: dict[str, Any]) -> None:
    keys = ("task", "split", "temperature", "top_p", "seed", "max_new_tokens", "verifier")
    diff = [f"{k}: {ref.get(k)!r} (reference) vs {report.get(k)!r}" for k in keys if ref.get(k) != report.get(k)]
    if diff:
        print("warning: the reference was evaluated with other settings: " + "; ".join(diff))


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['task']}/{report['split']}: {len(report['problems'])} problems, "
        f"n={report['n']}, T={report['temperature']}, top_p={report['top_p']}, mean reward {report['mean_reward']:.3f}"
    ]
    lines.append("pass@k  " + "  ".join(f"{k}:{v:.3f}" for k, v in report["pass_at_k"].items()))
    for name, sub in report["subsets"].items():
        lines.append(f"  {name} ({sub['problems']})  " + "  ".join(f"{k}:{v:.3f}" for k, v in sub["pass_at_k"].items()))
    if "boundary" in report:
        b = report["boundary"]
        lines.append(
            f"boundary vs reference: solved {b['solved']['current']} vs {b['solved']['reference']} of "
            f"{b['solved']['total']}; gained {len(b['gained'])}, lost {len(b['lost'])}, kept {len(b['kept'])}"
        )
        lines.append("pass@k delta  " + "  ".join(f"{k}:{v:+.3f}" for k, v in b["pass_at_k_delta"].items()))
    return "\n".join(lines)
