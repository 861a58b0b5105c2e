"""Decode speed of the rlvr_jax sampler vs transformers `generate`, against this machine's limits.

Small-batch decode is memory bound: each step reads every weight plus the live KV cache once. So
besides tokens/s we report the GB/s those reads imply as a fraction of the read bandwidth measured
in this same run (and, for large batches, which turn compute bound, GFLOP/s against a measured
f32 matmul peak), and the speedup over transformers (torch CPU) on the very same weights.

    python benchmarks/decode_speed.py            # ~65M-param Qwen2, batches 1, 8, 64
    python benchmarks/decode_speed.py --quick    # smoke run: tiny model, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
from common import ForeignLoad, make_random_qwen2, matmul_peak_gflops, memory_read_bandwidth, timed
from flax import nnx

from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh
from rlvr_jax.model import from_pretrained
from rlvr_jax.rollout import SamplingSpec, make_sampler, prefill
from rlvr_jax.types import PromptBatch

# Qwen2-style, GQA, tied embeddings. FULL is ~65M parameters (259 MB f32), far past the 32 MB L3,
# so every decode step really streams the weights from DRAM.
FULL = dict(
    vocab_size=32000,
    hidden_size=640,
    intermediate_size=1792,
    num_hidden_layers=10,
    num_attention_heads=10,
    num_key_value_heads=2,
    head_dim=64,
)
QUICK = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)
COMMON = dict(
    tie_word_embeddings=True,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    use_sliding_window=False,
    bos_token_id=None,
    eos_token_id=0,
    pad_token_id=1,
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, small probes, 2 repeats")
    ap.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt tokens, no padding (default 32)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 2 with --quick)")
    ap.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-measure a batch up to N times while other processes kept >0.1 core busy (default 1)",
    )
    ap.add_argument("--greedy", action="store_true", help="greedy decoding (default: sampling at temperature 1)")
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--workdir", default=None, help="where to save the HF checkpoint (default: a temp dir)")
    ap.add_argument("--out", default=None, help="JSON path (default results/decode_speed[_quick].json)")
    return ap.parse_args()


def prepare_ours(loaded: tuple, batch: int, args: argparse.Namespace):
    """(run the whole sampler, run its prefill alone, row of byte/FLOP costs), both compiled."""
    mesh, arch, graphdef, state = loaded
    sp = SamplingSpec(
        max_new_tokens=args.new_tokens, temperature=0.0 if args.greedy else 1.0, stop_on_eos=False, pad_id=1
    )
    sampler = make_sampler(arch, graphdef, state, mesh, ROLLOUT_RULES, sp)
    tokens = jax.random.randint(jax.random.key(batch), (batch, args.prompt_len), 2, arch.vocab_size, jnp.int32)
    prompts = PromptBatch(tokens=tokens, mask=jnp.ones_like(tokens), index=jnp.arange(batch, dtype=jnp.int32))
    key = jax.random.key(0)
    # The rollout module's own `prefill`, jitted alone: what the sampler runs before its decode
    # loop, timed apart so the decode steps can be costed by subtraction.
    prefill_jit = jax.jit(lambda ps, pr, k: prefill(nnx.merge(graphdef, ps), pr, k, sp))

    def run() -> None:
        out = jax.block_until_ready(sampler(state, prompts, key))
        assert int(out.lengths.min()) == args.new_tokens  # stop_on_eos=False: every row is full length

    def run_prefill() -> None:
        with jax.set_mesh(mesh):
            jax.block_until_ready(prefill_jit(state, prompts, key))

    # Prefill samples token 1, then M-1 decode steps. Step j must read every weight once and the
    # P + j live cache slots (k and v, every layer, f32). The sampler really scans all P + M slots
    # under a mask; we cost only live ones, i.e. what any decoder must read.
    steps, p = args.new_tokens - 1, args.prompt_len
    live = p + (steps + 1) / 2  # mean of P + j over j = 1..steps
    slot_bytes = batch * arch.num_layers * 2 * arch.num_kv_heads * arch.head_dim * 4
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    # FLOPs: a multiply-add per weight per row (tied embedding as lm_head) plus q.k and p.v.
    flops = 2 * batch * arch.num_params + 4 * batch * arch.num_layers * arch.num_heads * arch.head_dim * live
    cost = dict(
        batch=batch,
        num_params=arch.num_params,
        param_bytes=param_bytes,
        kv_bytes_per_step=slot_bytes * live,
        kv_bytes_scanned=slot_bytes * (p + steps + 1),
        step_bytes=param_bytes + slot_bytes * live,
        step_flops=flops,
        steps=steps,
        compile_s=timed(run, 1)[0],
    )  # first call compiles
    run_prefill()
    return run, run_prefill, cost


def load_torch(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)  # the same cores XLA:CPU's pool uses
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def prepare_torch(model, batch: int, args: argparse.Namespace):
    """transformers `generate` on the same weights, forced to exactly `new_tokens` tokens per row."""
    import torch

    ids = torch.randint(
        2, model.config.vocab_size, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch)
    )
    sampling = {} if args.greedy else dict(temperature=1.0, top_k=0, top_p=1.0)  # plain T=1, like ours
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=not args.greedy,
        pad_token_id=1,
        **sampling,
    )

    def run() -> None:
        with torch.inference_mode():
            assert model.generate(ids, **kwargs).shape[1] == args.prompt_len + args.new_tokens

    run()  # warm-up: first-call allocations and lazy init
    return run


def measure(loaded: tuple, torch_model, batch: int, args: argparse.Namespace, repeats: int) -> dict:
    """Alternate our and transformers' repeats, so a busy neighbour lands on both, not on one only."""
    run, run_prefill, row = prepare_ours(loaded, batch, args)
    runs = {"ours": run} if torch_model is None else {"ours": run, "torch": prepare_torch(torch_model, batch, args)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with ForeignLoad() as load:
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, 1)[0])
        row["prefill_s"] = timed(run_prefill, repeats)[0]
    for name, ts in times.items():
        row.update(
            {
                f"{name}_s": statistics.median(ts),
                f"{name}_times": ts,
                f"{name}_tok_s": batch * args.new_tokens / statistics.median(ts),
            }
        )
    step_s = (row["ours_s"] - row["prefill_s"]) / row.pop("steps")
    row.update(
        foreign_cores=load.cores,
        decode_step_ms=1e3 * step_s,
        step_gb_s=row["step_bytes"] / step_s / 1e9,
        step_gflop_s=row["step_flops"] / step_s / 1e9,
    )
    if "torch_s" in row:
        row["speedup"] = row["torch_s"] / row["ours_s"]
    return row


def fmt(times: list[float]) -> str:
    return "/".join(f"{t:.3f}" for t in times)


def main() -> None:
    args = parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, {platform.platform()}")
    with ForeignLoad() as load:
        bw = memory_read_bandwidth(0.25 if args.quick else 1.5, repeats=3 if args.quick else 5)
        peak = matmul_peak_gflops(1024 if args.quick else 2048)
    print(
        "memory read GB/s (best of repeats): "
        + ", ".join(f"{k} {v:.1f}" for k, v in bw.items())
        + f"; f32 matmul {peak:.0f} GFLOP/s (others kept {load.cores:.2f} cores busy)"
    )

    config = {**(QUICK if args.quick else FULL), **COMMON}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_random_qwen2(Path(args.workdir or tmp) / "qwen2_random", **config)
        # Both sides load the same saved folder: ours f32 on a one-device mesh, torch f32 eager.
        mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
        loaded = (mesh, *from_pretrained(folder, mesh, ROLLOUT_RULES))
        torch_model = None if args.no_torch else load_torch(folder)
        for b in (int(x) for x in args.batches.split(",")):
            row = measure(loaded, torch_model, b, args, repeats)
            for _ in range(args.retries):  # a shared box: retry a measurement a neighbour disturbed
                if row["foreign_cores"] <= 0.1:
                    break
                print(f"  batch {b}: others kept {row['foreign_cores']:.2f} cores busy, measuring again", flush=True)
                row = min(row, measure(loaded, torch_model, b, args, repeats), key=lambda r: r["foreign_cores"])
            row.update(bw_fraction=row["step_gb_s"] / bw["anchor"], flop_fraction=row["step_gflop_s"] / peak)
            rows.append(row)
            print(
                f"  batch {b}: ours {fmt(row['ours_times'])} s"
                + (f", transformers {fmt(row['torch_times'])} s" if "torch_s" in row else "")
                + f" (others kept {row['foreign_cores']:.2f} cores busy)",
                flush=True,
            )

    n, mb = rows[0]["num_params"], rows[0]["param_bytes"] / 1e6
    print(
        f"\nrandom Qwen2, {n / 1e6:.1f}M params ({mb:.0f} MB f32); prompt {args.prompt_len}, {args.new_tokens} new "
        f"tokens, {'greedy' if args.greedy else 'sampling T=1'}, median of {repeats}; anchors {bw['anchor']:.1f} "
        f"GB/s read, {peak:.0f} GFLOP/s f32 matmul\n"
    )
    print(
        "| batch | ours s | ours tok/s | prefill s | decode ms/step | weight+KV GB/s | of BW | GFLOP/s | of peak "
        "| transformers s | transformers tok/s | speedup |\n|" + "---|" * 12
    )
    for r in rows:
        theirs = f"{r['torch_s']:.3f} | {r['torch_tok_s']:.0f} | {r['speedup']:.2f}x" if "torch_s" in r else "- | - | -"
        print(
            f"| {r['batch']} | {r['ours_s']:.3f} | {r['ours_tok_s']:.0f} | {r['prefill_s']:.3f} | {r['decode_step_ms']:.1f} "
            f"| {r['step_gb_s']:.1f} | {100 * r['bw_fraction']:.0f}% | {r['step_gflop_s']:.1f} "
            f"| {100 * r['flop_fraction']:.0f}% | {theirs} |"
        )
    noisy = [r["batch"] for r in rows if r["foreign_cores"] > 0.1]
    if noisy:
        print(f"\nWARNING: other processes kept >0.1 core busy during batches {noisy}: those timings are inflated.")

    out = Path(args.out or Path(__file__).parent / "results" / f"decode_speed{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                machine=dict(cores=os.cpu_count(), platform=platform.platform(), jax=jax.__version__),
                memory_read_gb_s=bw,
                matmul_gflop_s=peak,
                model=dict(config=config, num_params=n, param_bytes=rows[0]["param_bytes"]),
                settings=dict(
                    prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=repeats, greedy=args.greedy
                ),
                rows=rows,
            ),
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
