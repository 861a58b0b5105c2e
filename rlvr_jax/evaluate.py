"""Evaluation during training: held-out reward / pass rates, the probe of first-token class
probabilities, and the training figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlvr_jax.boundary import summarize
from rlvr_jax.config import Config
from rlvr_jax.data import evaluation_batches, load_task_source, verification_target
from rlvr_jax.distributed import allgather_objects, global_tree, local_tree
from rlvr_jax.mesh import ROLLOUT_RULES
from rlvr_jax.rewards import RewardPool
from rlvr_jax.rollout import SamplingParams, make_sampler
from rlvr_jax.storage import as_path, write_text_atomic
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
    """pass@k (overall and per subset) on a fixed set of held-out problems.

    n samples per problem are drawn in n / samples_per_pass sampler calls. Sample g of pass j of the
    problem with global index i uses the key fold_in(fold_in(fold_in(eval_key, j), i), g), whatever
    the batching: a base and a trained model evaluated with the same seed and settings see the same
    random streams, so their per-problem results differ only through the policy.
    """

    def __init__(
        self, cfg: Config, tokenizer: Any, arch: Any, graphdef: Any, abstract_params: Any, mesh: Any, pool: RewardPool
    ):
        ev = cfg.eval
        self.group = min(ev.samples_per_pass, ev.n)
        if ev.n % self.group:
            raise ValueError(f"eval.n={ev.n} must be a multiple of eval.samples_per_pass={ev.samples_per_pass}")
        self.passes = ev.n // self.group
        source = load_task_source(cfg.data.task, ev.split, cfg.data.data_dir, cfg.data.manual_dir)
        batch_problems = min(ev.batch_problems, len(source), ev.max_problems or len(source))
        batch_problems = max(jax.process_count(), batch_problems - batch_problems % jax.process_count())
        self.batches = evaluation_batches(
            source, tokenizer, cfg.data, batch_problems, ev.max_problems, jax.process_index(), jax.process_count()
        )
        self.stop = stop_token_ids(tokenizer, arch.eos_token_ids)
        sampling = SamplingParams.from_config(
            cfg.rollout.model_copy(update={"group_size": self.group, "temperature": ev.temperature, "top_p": ev.top_p}),
            self.stop,
            int(tokenizer.pad_token_id),
        )
        self.sampler = make_sampler(arch, graphdef, abstract_params, mesh, ROLLOUT_RULES, sampling)
        self.key = jax.random.fold_in(jax.random.key(cfg.run.seed), EVAL_PURPOSE)
        self.cfg, self.tokenizer, self.pool, self.mesh = cfg, tokenizer, pool, mesh

    def run(self, params: Any) -> dict[str, Any]:
        """The evaluation report: pass@k overall / per subset, mean reward, and per-problem counts."""
        problems: list[dict[str, Any]] = []
        reward_sum = 0.0
        for (arrays, examples), valid in self.batches:
            prompts = PromptBatch(**global_tree(arrays, self.mesh, ROLLOUT_RULES))
            correct = np.zeros(len(examples), np.int64)
            pending = self.sampler(params, prompts, jax.random.fold_in(self.key, 0))
            for j in range(self.passes):
                rollout = local_tree(pending)  # this process's problems
                if j + 1 < self.passes:  # sample the next pass while the host scores this one
                    pending = self.sampler(params, prompts, jax.random.fold_in(self.key, j + 1))
                texts = decode_completions(self.tokenizer, rollout, self.stop)
                golds = [verification_target(self.cfg.data.task, e) for e in examples for _ in range(self.group)]
                result = self.pool.score(texts, golds, self.cfg.reward.verifier)
                correct += result.correct.reshape(len(examples), self.group).sum(axis=1)
                reward_sum += float(result.rewards.reshape(len(examples), self.group)[:valid].sum())
            problems += [
                {"id": e["id"], "subset": e["subset"], "n": self.cfg.eval.n, "c": int(c)}
                for e, c in zip(examples[:valid], correct[:valid])
            ]
        parts = allgather_objects([problems, reward_sum])
        problems, reward_sum = [p for part in parts for p in part[0]], sum(part[1] for part in parts)
        report = summarize(problems, self.cfg.eval.n)
        report.update(mean_reward=reward_sum / (len(problems) * self.cfg.eval.n), problems=problems, **self.settings())
        return report

    def settings(self) -> dict[str, Any]:
        ev = self.cfg.eval
        return {
            "task": self.cfg.data.task,
            "split": ev.split,
            "n": ev.n,
            "temperature": ev.temperature,
            "top_p": ev.top_p,
            "max_new_tokens": self.cfg.rollout.max_new_tokens,
            "seed": self.cfg.run.seed,
            "samples_per_pass": self.group,
            "verifier": self.cfg.reward.verifier,
        }

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        """Flat eval/* metrics for metrics.jsonl; the full report goes to evals/step_<k>.json."""
        report = self.run(params)
        if self.cfg.run_dir and jax.process_index() == 0:
            write_text_atomic(
                self.cfg.run_dir / "evals" / f"step_{step:06d}.json", json.dumps({"step": step, **report})
            )
        return eval_metrics(report)


def eval_metrics(report: dict[str, Any]) -> dict[str, float]:
    out = {"eval/reward_mean": report["mean_reward"], "eval/correct_frac": report["pass_at_k"]["1"]}
    out.update({f"eval/pass@{k}": v for k, v in report["pass_at_k"].items()})
    for name, sub in report["subsets"].items():
        out[f"eval/correct_frac/{name}"] = sub["pass_at_k"]["1"]
        out.update({f"eval/pass@{k}/{name}": v for k, v in sub["pass_at_k"].items()})
    return out


# --- `rlvr-jax eval` ------------------------------------------------------------------------------

DEFAULT_VERIFIER = {"toy_strategy": "toy_strategy", "arithmetic": "numeric", "gsm8k": "numeric", "math": "math"}


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
    p.add_argument("--config", type=Path, help="with --model: a YAML config for the data/reward settings")
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
    p.add_argument("--out", type=Path, required=True, help="output JSON")


def eval_config(args: Any) -> Config:
    """The run's (or the given / default) config with the command-line settings applied."""
    from rlvr_jax.config import load_config, validate

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
        tree = load_config(args.config).model_dump(mode="json")
    ev, data = tree["eval"], tree["data"]
    if args.config is None and args.run_dir is None:
        ev.update(n=256, temperature=0.6, top_p=0.95)  # ALGORITHMS.md section 5 defaults
    if args.task and args.task != data["task"]:
        data["task"] = args.task
        tree["reward"]["verifier"] = DEFAULT_VERIFIER.get(args.task, tree["reward"]["verifier"])
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
    return validate(tree)


def run_eval_command(args: Any) -> int:
    from rlvr_jax.boundary import boundary_sets
    from rlvr_jax.checkpoint import CheckpointError, restore_policy
    from rlvr_jax.mesh import make_mesh
    from rlvr_jax.model import ArchError, CheckpointFormatError, from_pretrained
    from rlvr_jax.tokenizer import TokenizerError, load_tokenizer

    cfg = eval_config(args)
    mesh = make_mesh(cfg.mesh)
    reference = _read_reference(args.reference) if args.reference else None
    try:
        if args.run_dir is not None:
            tok = load_tokenizer(args.run_dir / "tokenizer")
            arch, graphdef, params, meta = restore_policy(args.run_dir, args.step, mesh, ROLLOUT_RULES)
            model = {"run_dir": str(args.run_dir), "step": meta["step"]}
        else:
            tok = load_tokenizer(cfg.model.tokenizer or args.model)
            arch, graphdef, params = from_pretrained(
                args.model, mesh, ROLLOUT_RULES, cfg.model.param_dtype, cfg.model.dtype
            )
            model = {"model": str(args.model)}
    except (CheckpointError, ArchError, CheckpointFormatError, TokenizerError, FileNotFoundError) as err:
        raise SystemExit(f"rlvr-jax eval: {err}") from None
    from rlvr_jax.data import DataError

    with RewardPool(cfg.reward) as pool:
        try:
            evaluator = Evaluator(cfg, tok, arch, graphdef, params, mesh, pool)
        except (DataError, ValueError) as err:
            raise SystemExit(f"rlvr-jax eval: {err}") from None
        report = {**model, **evaluator.run(params)}
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
