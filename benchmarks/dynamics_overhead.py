"""Cost of the probability-mass logging at default settings, as a fraction of a GRPO step.

Workload: the shared bench's "small" GRPO step shape (Qwen2 hidden 512, 8 layers, 8 heads / 2 KV
heads, MLP 1408, vocab 512, tied; 8 prompts x G=8, prompts 16 tokens, completions 64 tokens, f32).
Timed in one process, median of repeats:
  rollout       the jitted sampler (the step's other half);
  update_bare   the update step with the per-sign statistics compiled out;
  update        the update step as the trainer runs it (per-sign statistics every step);
  update_dyn    the same plus the post-update pass (two extra forwards);
  probe         the toy-sized probe (64 prompts, one forward at the decision position).
Overhead at defaults = [(update - update_bare) + (update_dyn - update) / dynamics_every
                        + probe / probe_every] / (rollout + update_bare).

    .venv/bin/python benchmarks/dynamics_overhead.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed

from rlvr_jax import update as update_lib
from rlvr_jax.config import LoggingConfig, LossConfig, MeshConfig, OptimConfig
from rlvr_jax.dynamics import class_probabilities
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.rollout import SamplingSpec, make_sampler
from rlvr_jax.types import PromptBatch, TrainBatch

SMALL = dict(
    model_type="qwen2",
    vocab_size=512,
    hidden_size=512,
    intermediate_size=1408,
    num_layers=8,
    num_heads=8,
    num_kv_heads=2,
    head_dim=64,
    qkv_bias=True,
    tie_word_embeddings=True,
)
QUICK = {**SMALL, "hidden_size": 128, "intermediate_size": 352, "num_layers": 2, "num_heads": 4, "head_dim": 32}
PROMPTS, GROUP, PROMPT_LEN, NEW = 8, 8, 16, 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dynamics_overhead.json")
    args = parser.parse_args()
    arch = Arch(**(QUICK if args.quick else SMALL))
    mesh = make_mesh(MeshConfig())
    graphdef, params = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = PromptBatch(
        tokens=jnp.asarray(rng.integers(2, arch.vocab_size, (PROMPTS, PROMPT_LEN)), jnp.int32),
        mask=jnp.ones((PROMPTS, PROMPT_LEN), jnp.int32),
        index=jnp.arange(PROMPTS),
    )
    sampling = SamplingSpec(
        max_new_tokens=NEW, group_size=GROUP, temperature=1.0, top_p=1.0, top_k=0, stop_ids=(), pad_id=1
    )
    sampler = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, sampling)
    rollout = sampler(params, prompts, jax.random.key(1))
    batch = TrainBatch(
        prompt_tokens=rollout.prompt_tokens,
        prompt_mask=rollout.prompt_mask,
        tokens=rollout.tokens,
        mask=rollout.mask,
        logp_old=rollout.logp,
        adv=jnp.asarray(rng.normal(size=PROMPTS * GROUP), jnp.float32),
        weight=jnp.ones(PROMPTS * GROUP, jnp.float32),
    )
    optim = OptimConfig(lr=1e-5)
    tx = update_lib.make_optimizer(optim, 100)
    spec = update_lib.UpdateSpec(LossConfig(), optim, NEW)
    fresh = lambda: update_lib.init_train_state(params, tx, mesh, TRAIN_RULES)  # noqa: E731

    def update_timer(dynamics: bool, bare: bool = False):
        original = update_lib.sampled_token_stats
        if bare:  # compile the step without the per-sign statistics (measurement only)
            update_lib.sampled_token_stats = lambda *a, **k: {}
        try:
            step = update_lib.make_train_step(graphdef, tx, spec, fresh(), mesh, TRAIN_RULES)
            holder = {"state": fresh()}

            def run():
                holder["state"], metrics = step(holder["state"], batch, dynamics)
                jax.block_until_ready((holder["state"], metrics))

            run()  # compile
            return run
        finally:
            update_lib.sampled_token_stats = original

    member = jnp.zeros((3, arch.vocab_size)).at[jnp.arange(3), jnp.arange(3) + 5].set(1.0)
    probe_prompts = PromptBatch(
        tokens=jnp.tile(prompts.tokens, (8, 1)), mask=jnp.tile(prompts.mask, (8, 1)), index=jnp.arange(64)
    )
    from flax import nnx

    probe_fn = jax.jit(lambda p: class_probabilities(nnx.merge(graphdef, p), probe_prompts, member, jnp.ones((64, 3))))
    probe_fn(params).block_until_ready()
    timers = {
        "rollout": lambda: jax.block_until_ready(sampler(params, prompts, jax.random.key(1))),
        "update_bare": update_timer(False, bare=True),
        "update": update_timer(False),
        "update_dyn": update_timer(True),
        "probe": lambda: probe_fn(params).block_until_ready(),
    }
    times = {name: timed(fn, args.repeats)[0] for name, fn in timers.items()}
    defaults = LoggingConfig()
    step = times["rollout"] + times["update_bare"]
    parts = {
        "per_sign_stats": (times["update"] - times["update_bare"]) / step,
        "post_update_pass": (times["update_dyn"] - times["update"]) / defaults.dynamics_every / step,
        "probe": times["probe"] / defaults.probe_every / step,
    }
    # A negative difference is run-to-run noise (the statistics are a few reductions over [N, M]):
    # count it as zero, so the total is an upper estimate.
    result = {
        "workload": "quick" if args.quick else "small (shared bench shape)",
        "params": arch.num_params,
        "seconds": {k: round(v, 4) for k, v in times.items()},
        "dynamics_every": defaults.dynamics_every,
        "probe_every": defaults.probe_every,
        "fraction_of_step": {k: round(v, 4) for k, v in parts.items()},
        "overhead_at_defaults": round(sum(max(v, 0.0) for v in parts.values()), 4),
        "overhead_if_every_step": round(
            (times["update_dyn"] - times["update_bare"] + times["probe"]) / (times["rollout"] + times["update_bare"]), 4
        ),
        "device": str(jax.devices()[0].platform),
        "devices": jax.device_count(),
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        args.out.parent.mkdir(exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
