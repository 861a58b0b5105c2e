"""`rlvr-jax bandit`: the softmax-bandit model of the two-stage dynamics (rlvr_jax/bandit.py)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from rlvr_jax.advantage import GROUP_RELATIVE
from rlvr_jax.bandit import BanditSpec, RewardNoise, plot_probabilities, simulate, summary
from rlvr_jax.bandit import __doc__ as BANDIT_DOC
from rlvr_jax.config import AdvantageConfig, Estimator, LossDenominator, SignFilter, StdMode


def _three_floats(text: str, what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be 3 comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{what} must be 3 comma-separated numbers (a1,a2,a3), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be finite, got {text!r}")
    return values


def _p0(text: str) -> tuple[float, float, float]:
    p0 = _three_floats(text, "--p0")
    if min(p0) <= 0:
        raise argparse.ArgumentTypeError(f"--p0 must be positive (the logits start at log p0), got {text!r}")
    if abs(sum(p0) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"--p0 must sum to 1, got {text!r} (sum {sum(p0):.6g})")
    return p0


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None
    return seeds


def add_bandit_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `bandit` subcommand (dispatch it to `run_bandit`)."""
    p = subparsers.add_parser(
        "bandit", help="softmax-bandit model of the two-stage RLVR dynamics", description=BANDIT_DOC.split("\n\n")[0]
    )
    p.add_argument("--estimator", choices=[e.value for e in Estimator], default="grpo")
    p.add_argument("--sign", choices=[s.value for s in SignFilter], default="full")
    p.add_argument("--std", choices=[s.value for s in StdMode], default="population")
    p.add_argument("--w-lambda", type=float, default=0.1, help="W-REINFORCE weight of correct samples")
    p.add_argument(
        "--correct-threshold", type=float, default=1.0, help="reward >= this is correct (nsr/psr/w_reinforce)"
    )
    p.add_argument("--loss-denominator", choices=[d.value for d in LossDenominator], default="kept")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--group-size", type=int, default=8, help="G: samples per group")
    p.add_argument("--groups", type=int, default=16, help="groups per step")
    p.add_argument("--p0", type=_p0, default=(0.30, 0.01, 0.69), help="initial pi(a1),pi(a2),pi(a3)")
    p.add_argument(
        "--rewards",
        type=lambda t: _three_floats(t, "--rewards"),
        default=(0.8, 1.0, 0.0),
        help="mean reward of a1,a2,a3",
    )
    noise = p.add_mutually_exclusive_group()
    noise.add_argument(
        "--bernoulli",
        action="store_const",
        dest="noise",
        const="rollout",
        default="none",
        help="0/1 rewards with those means, drawn per rollout",
    )
    noise.add_argument(
        "--bernoulli-per-group",
        action="store_const",
        dest="noise",
        const="group",
        help="0/1 rewards, one draw per group (a1 fails on whole prompts, like the toy task)",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument("--seeds", type=_seeds, help="several seeds in one vmapped run, e.g. 0,1,2")
    p.add_argument("--out", default="runs/bandit", help="output folder")
    return p


def spec_from_args(args: argparse.Namespace) -> BanditSpec:
    """Validate the numbers argparse cannot check alone; SystemExit with every problem."""
    problems = []
    if args.steps < 1:
        problems.append("--steps must be >= 1")
    if not args.lr > 0:
        problems.append("--lr must be > 0")
    if args.groups < 1:
        problems.append("--groups must be >= 1")
    if args.group_size < (2 if Estimator(args.estimator) in GROUP_RELATIVE else 1):
        problems.append(f"--group-size must be >= 2 for {args.estimator} (it compares rollouts within a group)")
    if args.noise != "none" and not all(0 <= r <= 1 for r in args.rewards):
        problems.append("--rewards must lie in [0, 1] with --bernoulli* (they are probabilities)")
    if problems:
        raise SystemExit("rlvr-jax bandit: " + "; ".join(problems))
    adv = AdvantageConfig(
        estimator=args.estimator,
        sign=args.sign,
        std=args.std,
        w_lambda=args.w_lambda,
        correct_threshold=args.correct_threshold,
        loss_denominator=args.loss_denominator,
    )
    return BanditSpec(
        p0=tuple(args.p0),
        rewards=tuple(args.rewards),
        steps=args.steps,
        lr=args.lr,
        group_size=args.group_size,
        groups=args.groups,
        noise=RewardNoise(args.noise),
        adv=adv,
    )


def run_bandit(args: argparse.Namespace) -> int:
    """Simulate, then write summary.json, trajectories.npz and probabilities.png under --out."""
    spec = spec_from_args(args)
    seeds = args.seeds or (args.seed,)
    probs, ent = simulate(spec, seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arg_record = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if not callable(v)}
    result = summary(arg_record, seeds, probs, ent)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez_compressed(out / "trajectories.npz", probs=probs, entropy=ent, seeds=np.asarray(seeds))
    plot_probabilities(probs, ent, out / "probabilities.png", f"{args.estimator} / {args.sign}, seeds {list(seeds)}")
    print(json.dumps({k: result[k] for k in ("seeds", "crossover_step", "max_p1_step", "min_p2", "final_entropy")}))
    return 0
