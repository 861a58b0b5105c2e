"""`rlvr-jax generate` (sample from a Hugging Face-format model) and `import-gguf` (a llama.cpp file -> one)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample completions from a Hugging Face-format model folder",
        description="Print one JSON object per sample: prompt, completion, token_ids, finish_reason.",
    )
    p.add_argument(
        "--model", required=True, help="folder with config.json, safetensors and the tokenizer, or a Hub model id"
    )
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (G)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--allow-nonfinite", action="store_true", help="load weights holding NaN or inf (default: an error)")


def _validate_sampling(args: argparse.Namespace) -> None:
    problems = []
    if args.max_new_tokens < 1:
        problems.append("--max-new-tokens must be >= 1")
    if args.temperature < 0:
        problems.append("--temperature must be >= 0 (0 is greedy)")
    if not 0 < args.top_p <= 1:
        problems.append("--top-p must be in (0, 1]")
    if args.top_k < 0:
        problems.append("--top-k must be >= 0 (0 disables it)")
    if args.num_samples < 1:
        problems.append("--num-samples must be >= 1")
    if args.seed < 0:
        problems.append("--seed must be >= 0")
    # Like an empty prompt column in a data file: there is nothing to condition on.
    problems += [f"--prompt number {i} is empty" for i, p in enumerate(args.prompt, 1) if not p.strip()]
    if problems:
        raise SystemExit("rlvr-jax generate: " + "; ".join(problems))


def run_generate(args: argparse.Namespace) -> int:
    _validate_sampling(args)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh
    from rlvr_jax.model import ArchError, CheckpointFormatError, from_pretrained
    from rlvr_jax.rollout import SamplingSpec, make_sampler
    from rlvr_jax.tokenizer import TokenizerError, encode_left_padded, load_tokenizer, render_prompt, stop_token_ids
    from rlvr_jax.types import PromptBatch

    try:
        tok = load_tokenizer(args.tokenizer or args.model)
        rendered = [render_prompt(tok, p, use_chat_template=not args.raw) for p in args.prompt]
        tokens, mask = encode_left_padded(tok, rendered)  # a prompt of no tokens: an error before the weights load
        mesh = make_mesh()
        arch, graphdef, params = from_pretrained(
            args.model, mesh, ROLLOUT_RULES, args.dtype, args.dtype, allow_nonfinite=args.allow_nonfinite
        )
    except (ArchError, CheckpointFormatError, TokenizerError) as err:
        raise SystemExit(f"rlvr-jax generate: {err}") from None
    sampling = SamplingSpec(
        max_new_tokens=args.max_new_tokens,
        group_size=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop_ids=stop_token_ids(tok, arch.eos_token_ids),
        pad_id=int(tok.pad_token_id),
    )
    sampler = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, sampling)
    prompts = PromptBatch(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), index=jnp.arange(len(rendered)))
    rollout = jax.device_get(sampler(params, prompts, jax.random.key(args.seed)))
    for row, reason in enumerate(rollout.finish_reasons):
        ids = np.asarray(rollout.tokens[row][: rollout.lengths[row]]).tolist()
        print(
            json.dumps(
                {
                    "prompt": args.prompt[row // args.num_samples],
                    "completion": tok.decode(ids, skip_special_tokens=True),
                    "token_ids": ids,
                    "finish_reason": reason,
                }
            )
        )
    return 0


def add_import_gguf_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-gguf",
        help="convert a llama.cpp GGUF file (Llama, Qwen2, Qwen3) into a Hugging Face folder",
        description="Dequantized safetensors + config.json + tokenizer (with its chat template), loadable by "
        "transformers, `rlvr-jax generate --model` and `model.path`.",
    )
    p.add_argument("file", type=Path, help="the .gguf file")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or be empty)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="of the written weights")


def run_import_gguf(args: argparse.Namespace) -> int:
    from rlvr_jax.model.gguf_io import GGUFError, import_gguf

    try:
        arch = import_gguf(args.file, args.out, args.dtype)
    except GGUFError as err:
        raise SystemExit(f"rlvr-jax import-gguf: {err}") from None
    print(
        f"imported {args.file} ({arch.model_type}, {arch.num_params / 1e6:.1f}M parameters, {args.dtype}) to {args.out}"
    )
    return 0
