"""Count the data-movement ops XLA puts inside the compiled decode loop (copies, transposes).

A decode step should read every weight and the live KV cache once. A transpose or copy of a
loop-invariant weight, or of the whole KV cache, inside the `while` body re-reads and re-writes it
every token. This script compiles the sampler's decode loop (`rollout.decode`, jitted like
`make_sampler` does) for the decode_speed.py model, walks the top-level instructions of the decode
loop body (and of the loops and calls nested in it), and counts every `copy`, `transpose` or loop
fusion that contains one, with its bytes (its output's size), classified by what it moves:

    weight  it moves about all of a loop-invariant element of the loop state of >= 32 KiB (a parameter)
    cache   its output is at least one layer's K or V cache
    other   activations, logits, RNG words

One JSON line per batch size is printed and appended to --out (default
benchmarks/results/decode_hlo.jsonl): the counts and bytes per decode step for each kind, the
parameter bytes beside them, the platform and the jax version. It compiles only (no timing), so
the result is the same on a loaded machine; pass --verbose to list every op.

    python benchmarks/decode_hlo.py                           # quick model, f32, batch 1 and 64
    python benchmarks/decode_hlo.py --full --batch 1          # the decode_speed.py model
    python benchmarks/decode_hlo.py --dtype bfloat16          # bf16 params and compute (the device check's)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))
# This checkout's rlvr_jax before any installed one (an editable install may point at another worktree).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
from decode_speed import COMMON, FULL, QUICK
from flax import nnx

from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import ROLLOUT_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.rollout import SamplingSpec, decode, prefill
from rlvr_jax.types import PromptBatch

ROOT = Path(__file__).resolve().parent.parent

_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(\[[^\]]*\])?(?:\{[^}]*\})? ([\w\-]+)\((.*)$")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}


def computations(hlo: str) -> dict[str, list[str]]:
    """HLO module text -> {computation name: its instruction lines}."""
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = _HEADER.match(line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps


def _nbytes(dtype: str, dims: str | None) -> int:
    size = _BYTES.get(dtype, 4)
    for d in (dims or "[]").strip("[]").split(","):
        size *= int(d) if d else 1
    return size


def layout_ops(hlo: str, cache_bytes: int) -> list[dict]:
    """Copies/transposes (alone or inside a loop fusion) among the decode loop body's instructions."""
    comps = computations(hlo)
    moves = {n for n, lines in comps.items() if any(re.search(r" (transpose|copy)\(", ln) for ln in lines)}
    # The decode loop: the `while` whose body has the most instructions (the decoder's layers).
    whiles = [
        (m.group(1), m.group(2))
        for lines in comps.values()
        for ln in lines
        for m in [re.search(r"condition=%?([\w.\-]+), body=%?([\w.\-]+)", ln)]
        if m
    ]
    body = max((b for _, b in whiles), key=lambda b: len(comps.get(b, [])))
    found = []
    todo, seen = [body], set()
    while todo:
        comp = todo.pop()
        if comp in seen:
            continue
        seen.add(comp)
        lines = comps[comp]
        param = next(
            (m.group(1) for ln in lines for m in [re.match(r"\s*%([\w.\-]+) = .* parameter\(0\)", ln)] if m), None
        )
        # Loop-invariant state: tuple elements the body's ROOT tuple passes through unchanged.
        gte, gte_bytes = {}, {}
        for ln in lines:
            m = _INSTR.match(ln)
            if m and m.group(4) == "get-tuple-element" and param and f"%{param})" in m.group(5):
                gte[m.group(1)] = int(re.search(r"index=(\d+)", ln).group(1))
                gte_bytes[m.group(1)] = _nbytes(m.group(2), m.group(3))
        root = next((ln for ln in lines if ln.lstrip().startswith("ROOT")), "")
        root_args = re.findall(r"%([\w.\-]+)", root.split(" tuple(", 1)[-1]) if " tuple(" in root else []
        invariant = {n for n, i in gte.items() if i < len(root_args) and root_args[i] == n}
        for ln in lines:
            # Nested loops and calls first: their tuple-typed results do not match _INSTR.
            nested = re.search(r" while\(.*body=%?([\w.\-]+)", ln)
            if nested:
                todo.append(nested.group(1))
            called = re.search(r"(?:calls|to_apply)=%?([\w.\-]+)", ln)
            if called and re.search(r" call\(", ln):
                todo.append(called.group(1))
            m = _INSTR.match(ln)
            if not m:
                continue
            _, dtype, dims, op, rest = m.groups()
            is_move = op in ("copy", "transpose") or (op == "fusion" and called and called.group(1) in moves)
            if not is_move or "kind=kCustom" in ln:
                continue
            nbytes = _nbytes(dtype, dims)
            operands = set(re.findall(r"%([\w.\-]+)", rest.split("), ")[0]))
            # A weight copy moves (about) a whole loop-invariant operand of weight size, not an activation
            # combined with a bias or the (also invariant) key mask.
            weight = any(gte_bytes[o] >= 2**15 and nbytes >= gte_bytes[o] // 2 for o in operands & invariant)
            kind = "weight" if weight else "cache" if nbytes >= cache_bytes else "other"
            meta = re.search(r'op_name="([^"]*)"', ln)
            found.append(
                dict(
                    kind=kind, op=op, shape=f"{dtype}{dims or '[]'}", bytes=nbytes, where=meta.group(1) if meta else ""
                )
            )
    return found


def summarize(found: list[dict]) -> dict:
    out = {}
    for kind in ("weight", "cache", "other"):
        ops = [f for f in found if f["kind"] == kind]
        out[kind] = dict(count=len(ops), bytes=sum(f["bytes"] for f in ops))
    return out


def compiled_decode(
    arch: Arch, batch: int, prompt_len: int, new_tokens: int, dtype: jnp.dtype = jnp.float32
) -> tuple[str, int, int]:
    """(optimized HLO text of the jitted `rollout.decode`, one layer's K cache bytes, parameter bytes).

    Random parameters on one device in `dtype` (params and compute), sampling at T=1 without EOS stop,
    the decode jitted with its sampler state donated as `make_sampler` does.
    """
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    graphdef, params = init_params(arch, mesh, ROLLOUT_RULES, jax.random.key(0), param_dtype=dtype, dtype=dtype)
    sp = SamplingSpec(max_new_tokens=new_tokens, temperature=1.0, stop_on_eos=False, pad_id=1)
    ones = jnp.ones((batch, prompt_len), jnp.int32)
    prompts = PromptBatch(tokens=ones, mask=ones, index=jnp.arange(batch))
    with jax.set_mesh(mesh):
        state = jax.eval_shape(
            lambda w, pr, k: prefill(nnx.merge(graphdef, w), pr, k, sp), params, prompts, jax.random.key(0)
        )
        dec = jax.jit(lambda w, s: decode(nnx.merge(graphdef, w), s, sp), donate_argnums=1)
        hlo = dec.lower(params, state).compile().as_text()
    cache_bytes = min(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.cache))
    return hlo, cache_bytes, sum(x.nbytes for x in jax.tree.leaves(params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the decode_speed.py model (default: its --quick model)")
    ap.add_argument("--batch", default="1,64", help="comma-separated batch sizes (default 1,64)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="params and compute")
    ap.add_argument("--verbose", action="store_true", help="list every op")
    ap.add_argument("--label", default="", help="a note stored in each line (e.g. which code was measured)")
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "decode_hlo.jsonl"), help="JSON lines, appended"
    )
    args = ap.parse_args()
    model = "full" if args.full else "quick"
    arch = Arch.from_hf({**(FULL if args.full else QUICK), **COMMON, "model_type": "qwen2"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for b in (int(x) for x in args.batch.split(",")):
        hlo, cache_bytes, param_bytes = compiled_decode(
            arch, b, args.prompt_len, args.new_tokens, jnp.dtype(args.dtype)
        )
        found = layout_ops(hlo, cache_bytes)
        row = dict(
            benchmark="decode_hlo",
            model=model,
            batch=b,
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            dtype=args.dtype,
            param_bytes=param_bytes,
            per_step=summarize(found),
            platform=jax.devices()[0].platform,
            jax=jax.__version__,
            label=args.label,
        )
        line = json.dumps(row)
        print(line, flush=True)
        with out.open("a") as f:
            f.write(line + "\n")
        if args.verbose:
            for f in sorted(found, key=lambda f: -f["bytes"]):
                print(f"   {f['kind']:6} {f['op']:9} {f['shape']:24} {f['bytes']:>10}  {f['where'][-70:]}")


if __name__ == "__main__":
    main()
