"""Compile time against depth: the trainer's sampler and train step on random Qwen2-shaped models that
differ only in their number of layers, with no persistent cache (every program compiles here).

Two decoders per depth, in one run: `unrolled` (a Python loop over the layers: XLA sees every layer's
ops once per layer) and `scan_layers` (model.scan_layers: the training forward/backward and the prefill
run one traced layer under `lax.scan`; the decode loop stays unrolled, see Decoder._scan). Per depth
and decoder, median of --repeats fresh builds (new jit objects, jax's in-memory caches cleared):
  sampler_s       first sampler call (prefill + decode loop compile) minus a second, compiled call;
  update_s        the same for `train_step` (loss, grads, AdamW);
  *_run_s         the second, compiled call (what the decoder costs at run time);
  ratio           against the shallowest depth of the same decoder.

    python benchmarks/compile_time.py                   # depths 2 and 30, hidden 64, one build each
    python benchmarks/compile_time.py --depths 2,8,30 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np
from common import ForeignLoad
from update_speed import make_batch

from rlvr_jax.config import LossConfig, MeshConfig, OptimConfig
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.rollout import SamplingSpec, make_sampler
from rlvr_jax.types import PromptBatch
from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step

SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
ROWS, PROMPT, NEW = 4, 16, 16


def first_call_extra(fn) -> tuple[float, float]:
    """(seconds the first call takes beyond a second one: its compile and one-off dispatch setup, the
    second call's seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(fn())
    second = time.perf_counter() - start
    return first - second, second


def measure(layers: int, scan_layers: bool) -> dict[str, float]:
    jax.clear_caches()
    arch = Arch(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, num_layers=layers, **SHAPE)
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    graphdef, params = init_params(arch, mesh, ROLLOUT_RULES, jax.random.key(0), scan_layers=scan_layers)
    sampler = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, SamplingSpec(max_new_tokens=NEW, pad_id=1))
    tokens = jax.random.randint(jax.random.key(1), (ROWS, PROMPT), 2, arch.vocab_size, jnp.int32)
    prompts = PromptBatch(tokens=tokens, mask=jnp.ones_like(tokens), index=jnp.arange(ROWS, dtype=jnp.int32))
    sampler_s, sampler_run_s = first_call_extra(lambda: sampler(params, prompts, jax.random.key(0)).tokens)
    graphdef, params = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0), scan_layers=scan_layers)
    optim = OptimConfig(lr=1e-5)
    tx = make_optimizer(optim, 100)
    holder = {"state": init_train_state(params, tx, mesh, TRAIN_RULES)}
    step = make_train_step(graphdef, tx, UpdateSpec(LossConfig(), optim, PROMPT), holder["state"], mesh, TRAIN_RULES)
    batch = make_batch(ROWS, PROMPT, NEW, arch.vocab_size)

    def update():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics

    update_s, update_run_s = first_call_extra(update)
    return dict(sampler_s=sampler_s, update_s=update_s, sampler_run_s=sampler_run_s, update_run_s=update_run_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default="2,30", help="layer counts, shallowest first (default 2,30)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh builds per depth (default 1)")
    ap.add_argument("--out", default=None, help="JSON path (default results/compile_time.json)")
    args = ap.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)  # measure compiles, not cache reads
    rows = []
    for decoder in ("unrolled", "scan_layers"):
        first = None
        for layers in map(int, args.depths.split(",")):
            with ForeignLoad() as load:
                runs = [measure(layers, decoder == "scan_layers") for _ in range(args.repeats)]
            row = {"decoder": decoder, "layers": layers, **{k: float(np.median([r[k] for r in runs])) for k in runs[0]}}
            row["foreign_cores"] = load.cores
            first = first or row
            if row is not first:
                row |= {f"{k}_ratio": row[k] / first[k] for k in ("sampler_s", "update_s")}
            print(json.dumps(row), flush=True)
            rows.append(row)
    path = Path(args.out or Path(__file__).resolve().parent / "results" / "compile_time.json")
    path.write_text(
        json.dumps({"shape": SHAPE, "rows": ROWS, "prompt": PROMPT, "new_tokens": NEW, "depths": rows}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
