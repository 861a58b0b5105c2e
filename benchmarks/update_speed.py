"""Update-step speed: tokens/s and model FLOP utilisation against this CPU's f32 matmul peak.

The step is the trainer's own jitted, donated `train_step` (PPO loss, AdamW, global-norm clip) on a
~65M-parameter random Qwen2-style model; the peak is measured in the same process right before.
Model FLOPs per token: 6 x (non-embedding params + the output projection) for forward + backward,
plus attention's 12 x layers x T x D (PaLM appendix B convention). No remat is counted.

    .venv/bin/python benchmarks/update_speed.py [--quick] [--rows 16] [--seq 256]
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
from common import ForeignLoad, matmul_peak_gflops, timed

from rlvr_jax.config import LossConfig, MeshConfig, OptimConfig
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.types import TrainBatch
from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step

FULL = dict(
    vocab_size=32000, hidden_size=640, intermediate_size=1792, num_layers=10, num_heads=10, num_kv_heads=2, head_dim=64
)
QUICK = dict(
    vocab_size=4096, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64
)


def model_flops_per_token(arch: Arch, seq: int) -> float:
    embed = arch.vocab_size * arch.hidden_size
    dense = arch.num_params - embed * (1 if arch.tie_word_embeddings else 2)
    head = arch.vocab_size * arch.hidden_size  # the logits matmul is real compute even when tied
    return 6.0 * (dense + head) + 12.0 * arch.num_layers * seq * arch.hidden_size


def make_batch(rows: int, prompt: int, completion: int, vocab: int, seed: int = 0) -> TrainBatch:
    rng = np.random.default_rng(seed)
    return TrainBatch(
        prompt_tokens=jnp.asarray(rng.integers(2, vocab, (rows, prompt)), jnp.int32),
        prompt_mask=jnp.ones((rows, prompt), jnp.int32),
        tokens=jnp.asarray(rng.integers(2, vocab, (rows, completion)), jnp.int32),
        mask=jnp.ones((rows, completion), jnp.int32),
        logp_old=jnp.full((rows, completion), -np.log(vocab), jnp.float32),
        adv=jnp.asarray(rng.normal(size=rows), jnp.float32),
        weight=jnp.ones(rows, jnp.float32),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, few repeats (smoke run)")
    parser.add_argument("--rows", type=int, default=16, help="sequences per update")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence (prompt + completion)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "update_speed.json")
    args = parser.parse_args()
    arch = Arch(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, **(QUICK if args.quick else FULL))
    repeats = 2 if args.quick else args.repeats
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    graphdef, params = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0))
    optim = OptimConfig(lr=1e-5)
    tx = make_optimizer(optim, 100)
    state = init_train_state(params, tx, mesh, TRAIN_RULES)
    step = make_train_step(graphdef, tx, UpdateSpec(LossConfig(), optim, args.seq // 2), state, mesh, TRAIN_RULES)
    batch = make_batch(args.rows, args.seq // 2, args.seq - args.seq // 2, arch.vocab_size)
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)

    run()  # compile
    peak = matmul_peak_gflops()
    with ForeignLoad() as load:
        median, times = timed(run, repeats)
    tokens = args.rows * args.seq
    flops = model_flops_per_token(arch, args.seq) * tokens
    result = {
        "params": arch.num_params,
        "rows": args.rows,
        "seq": args.seq,
        "step_s": median,
        "times": times,
        "tokens_per_s": tokens / median,
        "model_gflops_per_step": flops / 1e9,
        "achieved_gflops": flops / median / 1e9,
        "matmul_peak_gflops": peak,
        "mfu": flops / median / 1e9 / peak,
        "foreign_cpu_s": load.cpu_s,
        "jax": jax.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| params | rows x seq | step s (median of {repeats}) | tokens/s | model GFLOP/s | f32 matmul peak | MFU |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {arch.num_params / 1e6:.1f}M | {args.rows} x {args.seq} | {median:.2f} | {tokens / median:.0f} | "
        f"{flops / median / 1e9:.1f} | {peak:.1f} | {100 * flops / median / 1e9 / peak:.1f}% |"
    )
    print(f"(other processes used {load.cpu_s:.1f} CPU-s during the timed block)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
