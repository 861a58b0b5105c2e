"""Decode speed of the rlvr_jax sampler vs transformers `generate`, anchored to memory bandwidth.

Batch-small decode is memory bound: every step reads all weights plus the live KV cache once. So
besides tokens/s we report the GB/s those reads imply and their fraction of the read bandwidth
measured in this same run, and the speedup over transformers (torch CPU) on identical weights.

    python benchmarks/decode_speed.py            # full: ~65M-param Qwen2, batches 1, 8, 64
    python benchmarks/decode_speed.py --quick    # smoke run: tiny model, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from common import ForeignLoad, make_random_qwen2, memory_read_bandwidth, timed  # noqa: E402
from rlvr_jax.config import MeshConfig  # noqa: E402
from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh  # noqa: E402
from rlvr_jax.model import from_pretrained  # noqa: E402
from rlvr_jax.rollout import SamplingParams, make_sampler, prefill  # noqa: E402
from rlvr_jax.types import PromptBatch  # noqa: E402

# Qwen2-style with GQA and tied embeddings; FULL lands at ~65M parameters (260 MB in f32), well past
# the 32 MB L3 so each decode step really streams the weights from DRAM.
FULL = dict(vocab_size=32000, hidden_size=640, intermediate_size=1792, num_hidden_layers=10,
            num_attention_heads=10, num_key_value_heads=2, head_dim=64)
QUICK = dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64)
COMMON = dict(tie_word_embeddings=True, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
              use_sliding_window=False, bos_token_id=None, eos_token_id=0, pad_token_id=1)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, small bandwidth probe, 2 repeats")
    ap.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt tokens, no padding (default 32)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3, quick 2)")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding (default: sample at temperature 1)")
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--workdir", default=None, help="where to save the HF checkpoint (default: a temp dir)")
    ap.add_argument("--out", default=None, help="JSON path (default results/decode_speed[_quick].json)")
    return ap.parse_args()


def time_ours(loaded: tuple, batch: int, args: argparse.Namespace, repeats: int) -> dict:
    """End-to-end sampler time, and prefill alone so the decode steps can be costed separately."""
    mesh, arch, graphdef, state = loaded
    sp = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0 if args.greedy else 1.0,
                        stop_on_eos=False, pad_id=1)
    sampler = make_sampler(arch, graphdef, state, mesh, ROLLOUT_RULES, sp)
    tokens = jax.random.randint(jax.random.key(batch), (batch, args.prompt_len), 2, arch.vocab_size, jnp.int32)
    prompts = PromptBatch(tokens=tokens, mask=jnp.ones_like(tokens), index=jnp.arange(batch, dtype=jnp.int32))
    key = jax.random.key(0)

    def run():
        out = jax.block_until_ready(sampler(state, prompts, key))
        assert int(out.lengths.min()) == args.new_tokens  # stop_on_eos=False: every row is full length
        return out

    # The same jitted `prefill` the sampler runs first; its time is subtracted to cost decode alone.
    prefill_jit = jax.jit(lambda ps, pr, k: prefill(nnx.merge(graphdef, ps), pr, k, sp))

    def run_prefill():
        with jax.set_mesh(mesh):
            jax.block_until_ready(prefill_jit(state, prompts, key))

    compile_s = timed(run, 1)[0]  # first call traces and compiles both jits
    run_prefill()
    total, all_times = timed(run, repeats)
    pre = timed(run_prefill, repeats)[0]
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    # One decode step per token after the first (prefill samples token 1). Step j reads every weight
    # once and the P + j live cache slots of every layer (k and v, f32). The implementation actually
    # scans all P + M slots under a mask; we cost only the live ones, what any decoder must read.
    steps = args.new_tokens - 1
    slot_bytes = batch * arch.num_layers * 2 * arch.num_kv_heads * arch.head_dim * 4
    live_slots = np.mean([args.prompt_len + j for j in range(1, steps + 1)])
    step_bytes = param_bytes + slot_bytes * live_slots
    step_s = (total - pre) / steps
    return dict(batch=batch, ours_s=total, ours_times=all_times, compile_s=compile_s, prefill_s=pre,
                decode_step_ms=1e3 * step_s, ours_tok_s=batch * args.new_tokens / total,
                param_bytes=param_bytes, kv_bytes_per_step=slot_bytes * live_slots,
                kv_bytes_full_scan=slot_bytes * (args.prompt_len + args.new_tokens),
                step_gb_s=step_bytes / step_s / 1e9, num_params=arch.num_params)


def time_torch(model, batch: int, args: argparse.Namespace, repeats: int) -> dict:
    """transformers `generate` on the same weights, forced to exactly `new_tokens` tokens per row."""
    import torch

    ids = torch.randint(2, model.config.vocab_size, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch))
    sampling = {} if args.greedy else dict(temperature=1.0, top_k=0, top_p=1.0)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                  do_sample=not args.greedy, pad_token_id=1, **sampling)

    def run():
        with torch.inference_mode():
            out = model.generate(ids, **kwargs)
        assert out.shape[1] == args.prompt_len + args.new_tokens

    run()  # warm-up: first-call allocations and lazy init
    total, all_times = timed(run, repeats)
    return dict(torch_s=total, torch_times=all_times, torch_tok_s=batch * args.new_tokens / total)


def _times(ts: list[float]) -> str:
    return "/".join(f"{t:.3f}" for t in ts)


def load_torch(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)  # same cores as XLA:CPU's pool
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def main() -> None:
    args = parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, {platform.platform()}")

    with ForeignLoad() as load:
        bw = memory_read_bandwidth(0.25 if args.quick else 1.5, repeats=3 if args.quick else 5)
    print("memory read GB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in bw.items())
          + f" (other processes used {load.cpu_s:.1f} CPU-s of its {load.wall_s:.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.workdir or tmp) / "qwen2_random"
        make_random_qwen2(folder, **(QUICK if args.quick else FULL), **COMMON)
        # Both sides load the same saved folder: ours f32 on a one-device mesh, torch f32 eager.
        mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
        loaded = (mesh, *from_pretrained(folder, mesh, ROLLOUT_RULES))
        torch_model = None if args.no_torch else load_torch(folder)
        rows = []
        for b in batches:
            with ForeignLoad() as ours_load:
                row = time_ours(loaded, b, args, repeats)
            row["ours_foreign_cpu_s"] = ours_load.cpu_s
            if torch_model is not None:
                with ForeignLoad() as torch_load:
                    row.update(time_torch(torch_model, b, args, repeats))
                row["torch_foreign_cpu_s"] = torch_load.cpu_s
                row["speedup"] = row["torch_s"] / row["ours_s"]
            row["bw_fraction"] = row["step_gb_s"] / bw["anchor"]
            rows.append(row)
            print(f"  batch {b}: ours {_times(row['ours_times'])} s (others {row['ours_foreign_cpu_s']:.1f} CPU-s)"
                  + (f", transformers {_times(row['torch_times'])} s (others {row['torch_foreign_cpu_s']:.1f} CPU-s)"
                     if "torch_s" in row else ""), flush=True)

    n = rows[0]["num_params"]
    print(f"\nmodel: random Qwen2 {n / 1e6:.1f}M params ({rows[0]['param_bytes'] / 1e6:.0f} MB f32), "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}, {'greedy' if args.greedy else 'sampling T=1'}, "
          f"median of {repeats}; anchor {bw['anchor']:.1f} GB/s\n")
    print("| batch | ours s | ours tok/s | prefill s | decode ms/step | weight+KV GB/s | of anchor "
          "| transformers s | transformers tok/s | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        torch_cols = (f"{r['torch_s']:.3f} | {r['torch_tok_s']:.0f} | {r['speedup']:.2f}x" if "torch_s" in r
                      else "- | - | -")
        print(f"| {r['batch']} | {r['ours_s']:.3f} | {r['ours_tok_s']:.0f} | {r['prefill_s']:.3f} | "
              f"{r['decode_step_ms']:.2f} | {r['step_gb_s']:.1f} | {100 * r['bw_fraction']:.0f}% | {torch_cols} |")

    out = Path(args.out or Path(__file__).parent / "results" / f"decode_speed{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {**(QUICK if args.quick else FULL), **COMMON}
    out.write_text(json.dumps(dict(
        machine=dict(cores=os.cpu_count(), processor=platform.platform(), jax=jax.__version__),
        memory_read_gb_s=bw, model=dict(config=config, num_params=n, param_bytes=rows[0]["param_bytes"]),
        settings=dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=repeats,
                      greedy=args.greedy, quick=args.quick),
        rows=rows), indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
