"""The decoder's RoPE table and SwiGLU backward, A/B in one process on the peer workload's update.

The trainer's own jitted `train_step` on the shared GRPO workload's "small" model shape (random Qwen2,
hidden 512, 8 layers, 22.8M parameters, 64 sequences x (16 + 64) tokens, f32), compiled three times
with the decoder's two formulations swapped in before tracing:
- `before`: cos and sin computed in the graph from the positions, silu(gate) * up differentiated by
  autodiff (the decoder as it was until 2026-11-29);
- `rope_table`: the constant RoPE table (`decoder.rope_tables`), autodiff MLP;
- `rope_table+swiglu`: both, the decoder as it is.
The variants' calls are interleaved (one call of each per round), so a slower minute of a shared
machine hits all three; the medians and their ratios are the result, with the f32 matmul peak measured
between rounds.

    .venv/bin/python benchmarks/update_ab.py [--rounds 9] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_peak_gflops
from update_speed import make_batch, model_flops_per_token

from rlvr_jax.config import LossConfig, MeshConfig, OptimConfig
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, decoder, forward, init_params
from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step

SMALL = dict(
    vocab_size=512, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8, num_kv_heads=2, head_dim=64
)
QUICK = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)


def rope_in_graph(positions: jax.Array, arch: Arch, num_positions: int) -> decoder.RopeTables:
    """The formulation the table replaced: cos and sin of the angles, computed inside the jitted graph."""
    angles = positions.astype(jnp.float32)[..., None] * decoder.rope_inv_freq(arch)
    return decoder.RopeTables(cos=jnp.cos(angles)[:, :, None, :], sin=jnp.sin(angles)[:, :, None, :])


def swiglu_autodiff(gate: jax.Array, up: jax.Array) -> jax.Array:
    return jax.nn.silu(gate) * up


VARIANTS = {
    "before": (rope_in_graph, swiglu_autodiff),
    "rope_table": (decoder.rope_tables, swiglu_autodiff),
    "rope_table+swiglu": (decoder.rope_tables, decoder.swiglu),
}


def compiled_steps(arch: Arch, batch) -> dict:
    """One warm (state, step) per variant: each traced with its formulation patched into the decoder."""
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    graphdef, params = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0))
    optim = OptimConfig(lr=1e-5)
    tx = make_optimizer(optim, 100)
    kept = decoder.rope_tables, decoder.swiglu
    out = {}
    try:
        for name, (rope, mlp) in VARIANTS.items():
            decoder.rope_tables, decoder.swiglu = rope, mlp
            jaxpr = str(jax.make_jaxpr(lambda p: forward(graphdef, p, batch.tokens, batch.mask))(params))
            assert (" sin " in jaxpr) == (rope is rope_in_graph), f"{name}: the patched RoPE is not the one traced"
            state = init_train_state(params, tx, mesh, TRAIN_RULES)
            step = make_train_step(graphdef, tx, UpdateSpec(LossConfig(), optim, 16), state, mesh, TRAIN_RULES)
            state, metrics = step(state, batch)  # traced and compiled here, with this variant in place
            jax.block_until_ready(metrics)
            out[name] = [state, step]
    finally:
        decoder.rope_tables, decoder.swiglu = kept
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="calls of each variant, interleaved")
    parser.add_argument("--quick", action="store_true", help="the tiny shape, 3 rounds (smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "update_ab.json")
    args = parser.parse_args()
    shape, rounds = (QUICK, 3) if args.quick else (SMALL, args.rounds)
    arch = Arch(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, **shape)
    batch = make_batch(64, 16, 64, arch.vocab_size)
    steps = compiled_steps(arch, batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks = [matmul_peak_gflops()]
    for i in range(rounds):
        for name, held in steps.items():
            start = time.perf_counter()
            held[0], metrics = held[1](held[0], batch)
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - start)
        if i % 3 == 2:
            peaks.append(matmul_peak_gflops())
    gflop = model_flops_per_token(arch, 80) * 64 * 80 / 1e9
    peak = float(np.median(peaks))
    base = float(np.median(times["before"]))
    result = {
        "params": arch.num_params,
        "rows_x_tokens": [64, 80],
        "rounds": rounds,
        "model_gflop_per_step": gflop,
        "matmul_peak_gflops_median": peak,
        "matmul_peaks": peaks,
        "jax": jax.__version__,
        "variants": {
            name: {
                "median_s": float(np.median(t)),
                "times_s": t,
                "speedup_vs_before": base / float(np.median(t)),
                "peak_fraction": gflop / float(np.median(t)) / peak,
            }
            for name, t in times.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"| variant | median s ({rounds} interleaved calls) | vs before | share of the {peak:.0f} GFLOP/s peak |")
    print("|---|---|---|---|")
    for name, row in result["variants"].items():
        print(
            f"| {name} | {row['median_s']:.3f} | {row['speedup_vs_before']:.3f}x | {100 * row['peak_fraction']:.1f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
