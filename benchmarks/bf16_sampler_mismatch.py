"""The sampler-vs-trainer log-prob gap (`dyn/sampler_mismatch`) with bf16 compute over f32 weights,
for the sampler's bf16 copy of the weights (one cast per rollout) and for the f32 weights cast at
each use inside the jitted prefill and decode (the code before the copy was bf16).

The trainer's log-probs come from one uncached forward over prompt + completion with the f32
weights, as the update and the dynamics pass compute them; the sampler's are PPO's logp_old.

    .venv/bin/python benchmarks/bf16_sampler_mismatch.py --model models/smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlvr_jax import rollout as rollout_lib
from rlvr_jax.config import MeshConfig
from rlvr_jax.loss import completion_logp_entropy
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
from rlvr_jax.model import from_pretrained
from rlvr_jax.step import to_train_batch
from rlvr_jax.tokenizer import encode_left_padded, load_tokenizer
from rlvr_jax.types import PromptBatch

QUESTIONS = ["What is 12 * 7?", "Name a prime number larger than 10."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bf16_sampler_mismatch.json")
    args = parser.parse_args()
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    arch, graphdef, params = from_pretrained(args.model, mesh, TRAIN_RULES, dtype=jnp.bfloat16)
    tok = load_tokenizer(args.model)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]
    ids, mask = encode_left_padded(tok, texts)
    prompts = PromptBatch(tokens=jnp.asarray(ids), mask=jnp.asarray(mask), index=jnp.arange(len(texts)))
    sp = rollout_lib.SamplingSpec(
        max_new_tokens=args.new_tokens, group_size=args.group, stop_on_eos=False, pad_id=int(tok.pad_token_id)
    )
    rows = len(texts) * args.group

    def trainer_logp(p, r):
        batch = to_train_batch(r, jnp.zeros(rows), jnp.zeros(rows))
        return completion_logp_entropy(nnx.merge(graphdef, p), batch)[0]

    trainer = jax.jit(trainer_logp)
    cast_once = rollout_lib.make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, sp)
    real = rollout_lib.rollout_weights
    rollout_lib.rollout_weights = lambda g, a, sh, per_layer: lambda p: jax.device_put(p, sh)  # the old path
    cast_at_use = rollout_lib.make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, sp)
    rollout_lib.rollout_weights = real
    out, record = {}, {"command": " ".join(["python", *sys.argv]), "jax": jax.__version__}
    for name, sampler in (("bf16_copy", cast_once), ("cast_at_use", cast_at_use)):
        r = jax.device_get(sampler(params, prompts, jax.random.key(0)))
        gap = np.abs(r.logp - np.asarray(trainer(params, r)))[r.mask.astype(bool)]
        out[name] = r
        record[name] = {"mean": float(gap.mean()), "max": float(gap.max()), "tokens": int(gap.size)}
    record["same_tokens"] = bool((out["bf16_copy"].tokens == out["cast_at_use"].tokens).all())
    record["same_logp"] = bool((out["bf16_copy"].logp == out["cast_at_use"].logp).all())
    print(json.dumps(record, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
