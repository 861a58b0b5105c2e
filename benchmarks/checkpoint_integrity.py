"""Cost of checkpoint content fingerprints: save and restore with and without them, on CPU.

Workload: a Qwen2-shaped policy (hidden 768, 8 layers, 12 heads / 4 KV heads, head 64, MLP 2048,
vocab 32000, tied; about 80M f32 parameters) and its AdamW state (non-zero moments), one device:
about 0.96 GB per checkpoint, written to a local disk (--dir; default a temp folder).

Timed, median of repeats, the two variants alternating so that a neighbour's load hits both alike:
  save_call     `Checkpointer.save` until it returns: what the training loop waits for with the default
                async save (device -> host copy, plus, with fingerprints, their on-device pass)
  save_total    save_call plus waiting until the checkpoint is complete on disk
  restore       `restore_latest` (read back into the train-state layout, plus, with fingerprints,
                the check of every leaf and of the meta record)
  fingerprints  `content_fingerprints` of params and train state alone, warm
"without" replaces `_integrity` by a record without fingerprints and `verify_items` by a no-op: the
code path before fingerprints existed. The first call of each variant (jit compilation, Orbax set-up)
is timed apart and left out of the medians. Restores read what was just written, mostly from the page
cache: the fastest reads, so the fingerprints' share of a restore is at its largest here.

    .venv/bin/python benchmarks/checkpoint_integrity.py [--quick] [--repeats 5] [--dir /path]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ForeignLoad

from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax.checkpoint import Checkpointer, content_fingerprints
from rlvr_jax.config import CheckpointConfig, MeshConfig, OptimConfig
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.update import abstract_train_state, init_train_state, make_optimizer

MODEL = dict(
    model_type="qwen2",
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_layers=8,
    num_heads=12,
    num_kv_heads=4,
    head_dim=64,
    qkv_bias=True,
    tie_word_embeddings=True,
)
QUICK = {**MODEL, "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 704, "num_layers": 2, "num_heads": 4}


@contextlib.contextmanager
def without_fingerprints():
    """The save and restore path as it was before fingerprints (measurement only)."""
    integrity, verify = ckpt_lib._integrity, ckpt_lib.verify_items
    ckpt_lib._integrity = lambda record, items: None  # an unverified record, as before
    ckpt_lib.verify_items = lambda meta, items: None
    try:
        yield
    finally:
        ckpt_lib._integrity, ckpt_lib.verify_items = integrity, verify


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoints go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "checkpoint_integrity.json")
    args = parser.parse_args()
    arch = Arch(**(QUICK if args.quick else MODEL))
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    _, params = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0))
    tx = make_optimizer(OptimConfig(lr=1e-5), 100)
    state = init_train_state(params, tx, jax.random.key(1), mesh, TRAIN_RULES)
    leaves, treedef = jax.tree.flatten(state.params)
    grads = treedef.unflatten([jax.random.normal(jax.random.key(i), x.shape, x.dtype) for i, x in enumerate(leaves)])
    _, opt_state = jax.jit(tx.update)(grads, state.opt_state, state.params)
    state = dataclasses.replace(state, opt_state=jax.block_until_ready(opt_state))  # moments as after a step
    del grads
    target = abstract_train_state(params, tx, jax.random.key(1), mesh, TRAIN_RULES)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    train = ckpt_lib._train_item(state)

    root = Path(tempfile.mkdtemp(prefix="rlvr-jax-ckpt-bench-", dir=args.dir))
    ckpt = Checkpointer(root / "checkpoints", CheckpointConfig(async_save=True, keep=2))
    step = 0
    times: dict[str, dict[str, list[float]]] = {
        v: {"save_call": [], "save_total": [], "restore": []} for v in ("with", "without")
    }
    first: dict[str, dict[str, float]] = {}

    def refuse(message: str) -> None:
        raise RuntimeError(f"a verified restore warned: {message}")

    notices = {"with": refuse, "without": lambda message: None}  # without: "restored unverified"

    def one_round(variant: str) -> dict[str, float]:
        nonlocal step
        step += 1
        with without_fingerprints() if variant == "without" else contextlib.nullcontext():
            start = time.perf_counter()
            ckpt.save(step, state, {"note": "bench"})
            call = time.perf_counter() - start
            ckpt.wait()
            total = time.perf_counter() - start
            start = time.perf_counter()
            restored, meta = ckpt.restore_latest(target, lambda m: None, notices[variant])
            jax.block_until_ready(restored)
            restore = time.perf_counter() - start
        assert meta["step"] == step
        del restored
        return {"save_call": call, "save_total": total, "restore": restore}

    fingerprint_first = time.perf_counter()
    content_fingerprints(state.params), content_fingerprints(train)
    fingerprint_first = time.perf_counter() - fingerprint_first
    with ForeignLoad() as load:
        for variant in ("without", "with"):
            first[variant] = one_round(variant)
        for _ in range(args.repeats):
            for variant in ("without", "with"):
                for key, value in one_round(variant).items():
                    times[variant][key].append(value)
        fp_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            content_fingerprints(state.params), content_fingerprints(train)
            fp_times.append(time.perf_counter() - start)
    ckpt.close()
    shutil.rmtree(root, ignore_errors=True)

    median = {v: {k: statistics.median(t) for k, t in parts.items()} for v, parts in times.items()}
    result = {
        "workload": "quick" if args.quick else "Qwen2-shaped, ~80M params, f32, AdamW",
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "checkpoint_bytes": int(nbytes),
        "repeats": args.repeats,
        "seconds_median": {v: {k: round(x, 4) for k, x in parts.items()} for v, parts in median.items()},
        "ratio_with_over_without": {k: round(median["with"][k] / median["without"][k], 3) for k in median["with"]},
        "fingerprints_alone_s": round(statistics.median(fp_times), 4),
        # the same overhead estimated from the fingerprint pass alone (steadier than a difference of
        # two noisy medians): one pass per save, one per restore
        "fingerprints_alone_over_without": {
            k: round(statistics.median(fp_times) / median["without"][k], 3) for k in median["without"]
        },
        "fingerprints_gb_per_s": round(nbytes / statistics.median(fp_times) / 1e9, 2),
        "first_call_s": {
            "fingerprints_incl_compile": round(fingerprint_first, 3),
            **{f"{v}_{k}": round(x, 3) for v, parts in first.items() for k, x in parts.items()},
        },
        "seconds_all": {v: {k: [round(x, 4) for x in t] for k, t in parts.items()} for v, parts in times.items()},
        "foreign_load_cores": round(load.cores, 2),
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
