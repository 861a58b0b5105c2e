"""Live-row compaction (rollout.compact_rows) on a batch whose lengths spread as in real RLVR.

A random Qwen2-shaped model whose stop set holds a fraction 1 / mean of the vocabulary: a random
model's next-token distribution is close to uniform, so lengths are about geometric with that mean,
from 1 token to max_new_tokens in one batch. The same prompts and key are sampled with compaction off
and at each --parts; reported per setting, measured in this one run (median of --repeats):
  waste      the share of the decode loop's row-steps spent on finished rows (1 - needed / ran);
  seconds    the whole sampler call (prefill + decode + compaction copies + host syncs);
  speedup    plain seconds / this setting's;
  same_tokens    every token, length and stop equal to the plain sampler's;
  logp_max_diff  the largest recorded log-prob difference (a smaller batch may use other matmul kernels).

    python benchmarks/compaction.py                  # 4-layer model, batch 64, 128 new tokens
    python benchmarks/compaction.py --full           # the ~65M decode_speed model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np
from common import ForeignLoad, make_random_qwen2, timed
from decode_speed import COMMON, FULL, QUICK

from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh
from rlvr_jax.model import from_pretrained
from rlvr_jax.rollout import SamplingSpec, make_sampler
from rlvr_jax.types import PromptBatch


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the ~65M-parameter decode_speed model")
    ap.add_argument("--batch", type=int, default=64, help="sequences per call (default 64)")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default 32)")
    ap.add_argument("--new-tokens", type=int, default=128, help="max_new_tokens (default 128)")
    ap.add_argument("--mean-length", type=float, default=32.0, help="mean completion length (default 32)")
    ap.add_argument("--parts", default="4,8,16", help="compact_rows settings to compare with 0 (default 4,8,16)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--out", default=None, help="JSON path (default results/compaction.json)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    shape = {**(FULL if args.full else QUICK), **COMMON}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_random_qwen2(Path(tmp) / "model", **shape)
        mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
        arch, graphdef, params = from_pretrained(folder, mesh, ROLLOUT_RULES)
    stops = tuple(range(2, 2 + max(1, round(arch.vocab_size / args.mean_length))))
    base = SamplingSpec(max_new_tokens=args.new_tokens, pad_id=1, stop_ids=stops)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.prompt_len), 2, arch.vocab_size, jnp.int32)
    prompts = PromptBatch(tokens=tokens, mask=jnp.ones_like(tokens), index=jnp.arange(args.batch, dtype=jnp.int32))
    key = jax.random.key(0)
    rows, plain = [], None
    for parts in [0, *map(int, args.parts.split(","))]:
        sampler = make_sampler(
            arch, graphdef, params, mesh, ROLLOUT_RULES, dataclasses.replace(base, compact_rows=parts)
        )
        out = jax.device_get(sampler(params, prompts, key))  # compiles every batch size this call needs
        with ForeignLoad() as load:
            median, times = timed(lambda s=sampler: jax.block_until_ready(s(params, prompts, key)), args.repeats)
        needed = float(np.sum(out.lengths - 1))
        row = {
            "compact_rows": parts,
            "waste": 1 - needed / float(out.decode_row_steps),
            "decode_row_steps": int(out.decode_row_steps),
            "seconds": median,
            "times": times,
            "foreign_cores": load.cores,
        }
        if plain is None:
            plain = (out, median)
            lengths = np.asarray(out.lengths)
            row["lengths"] = {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())}
        else:
            row["speedup"] = plain[1] / median
            row["same_tokens"] = all(
                np.array_equal(getattr(out, f), getattr(plain[0], f)) for f in ("tokens", "lengths", "eos")
            )
            row["logp_max_diff"] = float(np.max(np.abs(out.logp - plain[0].logp)))
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "model": shape,
        "params": arch.num_params,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "rows": rows,
    }
    path = Path(args.out or Path(__file__).resolve().parent / "results" / "compaction.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
