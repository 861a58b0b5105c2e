"""Device check: update-step MFU, decode bandwidth and the small GRPO workload's step time on one accelerator.

Every figure is printed as one JSON line `{"figure", "value", "unit", ...the inputs that define it}`
(also appended to --out) and read against anchors measured in the same process:

  matmul_peak      bf16 N x N x N jitted matmul, median of groups of back-to-back calls (TFLOP/s)
  memory_bandwidth elementwise y = x * c over a large f32 array: bytes read + written (GB/s);
                   a read-only reduction is reported beside it
  update_mfu       the trainer's own jitted, donated train_step (make_train_step: PPO loss, AdamW,
                   global-norm clip) on a random Qwen2.5-0.5B-shaped model, bf16 compute, f32 params
                   (master weights, as the recipes run), `rows` sequences of prompt + completion
                   tokens, micro-batched. Model FLOPs per step, counted analytically (PaLM convention,
                   forward + backward = 3 x forward, no remat counted):
                       6 * P_dense * rows * (prompt + completion)          every position, every layer
                     + 6 * V * D * rows * completion                       LM head (tied embedding), only
                                                                           at completion positions
                     + 12 * L * N * H * rows * (prompt + completion)^2     attention scores and p.v, the
                                                                           full square (what the
                                                                           implementation computes)
                   P_dense = parameters less the embedding table. MFU = model FLOPs / median step time
                   / the measured bf16 matmul peak; also against the datasheet peak.
  decode_b1,       the trainer's own make_sampler (prefill + while_loop decode, T = 1, no EOS stop),
  decode_b64       bf16 params and compute; per-token step = (sampler - prefill alone) / (new - 1).
                   Bytes a decode step must read: every weight once in its dtype + the live KV cache
                   (prompt + tokens so far, averaged over the decode); value = those bytes / step time
                   as a fraction of the measured bandwidth. At batch 64 also FLOP/s against the peak.
  small_f32,       the fixed GRPO "small" workload (shared/bench: Qwen2 hidden 512, 8 layers, vocab 512;
  small_bf16       8 prompts x G=8, prompt 16, exactly 64 new tokens, T=1, beta 0, one AdamW step per
                   rollout batch) driven like the trainer loop: sampler -> rollout to host -> host
                   rewards (a stand-in: token parity) -> jitted GRPO advantages -> train_step, params
                   ready; step = end of update k-1 to end of update k, median of steps 3..12.
                   f32 everything (as the CPU peers ran it), and bf16 compute with f32 params.

    bash benchmarks/device_check.sh                    # on a GPU machine (installs .whl/ if present)
    python benchmarks/device_check.py --dry-run        # the same code paths on CPU, tiny model, ~1 min
    JAX_PLATFORMS=cpu python benchmarks/device_check.py --preset medium --update-rows 8 \
        --update-prompt 32 --update-completion 96 --decode-batches 1,8 --small-model tiny \
        --matmul-n 1024 --bandwidth-mib 256            # the full-run code path on CPU, a few minutes

With --profile (on by default) the update and decode figures are followed by `profile_<figure>`: one
more call of the same compiled step under `jax.profiler`, summed per op (benchmarks/op_profile.py):
value = the ops' busy time as a % of the call's wall time (a GPU waiting on the host shows here), with
the op time by class (matmul / collective / copy / other) and the top ops. --profile-dir keeps the raw
traces (open them in ui.perfetto.dev).

--xla-flops adds XLA's own FLOP count of the lowered update and decode steps (tracing only) beside
the analytic one; at the full size the two agree within 0.3 % (update) and 1 % (decode step).

Each figure runs in its own try/except (an error prints a JSON line with "error" and the run goes
on), under a global wall-clock budget (a figure is skipped when its estimate no longer fits; a
watchdog prints what it has and ends the process, exit status 3, 20 s after the budget). A short
table closes the output. Exit status 1 if any figure failed or was skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):  # the repository's rlvr_jax and op_profile, wherever this runs from
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# Model shapes (HF config.json names mapped to Arch fields). Qwen2.5-0.5B: 494M parameters.
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        rope_theta=1000000.0,
    ),
    "medium": dict(
        vocab_size=8192, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64
    ),
    "tiny": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
    ),
}
# The shared/bench GRPO workload's models (make_workload.py SIZES; vocab 512, tied, theta 1e4).
WORKLOAD_MODELS: dict[str, dict[str, Any]] = {
    "small": dict(
        vocab_size=512, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8, num_kv_heads=2, head_dim=64
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
    ),
}
# Datasheet peaks, dense (no sparsity): (substring of device_kind, bf16 TFLOP/s, HBM GB/s). First match wins.
DATASHEET = [
    ("H100 PCIe", 756.0, 2000.0),
    ("H100 NVL", 835.0, 3900.0),
    ("H100", 989.4, 3350.0),  # H100 SXM5 80GB HBM3
    ("H200", 989.4, 4800.0),
    ("A100", 312.0, 2039.0),  # A100 SXM 80GB
]
FIGURES = ("matmul_peak", "memory_bandwidth", "update_mfu", "decode_b1", "decode_b64", "small_f32", "small_bf16")

# Full-run sizes, and the --dry-run ones (tiny model, short sequences, CPU). Explicit flags override both.
FULL = dict(
    preset="qwen2.5-0.5b",
    matmul_n=8192,
    bandwidth_mib=1024,
    update_rows=64,
    update_prompt=128,
    update_completion=384,
    micro_batches=4,
    decode_prompt=128,
    decode_new=256,
    decode_batches="1,64",
    small_model="small",
    small_shape="8,8,16,64",
    small_steps=12,
    repeats=5,
)
DRY = dict(
    preset="tiny",
    matmul_n=256,
    bandwidth_mib=16,
    update_rows=8,
    update_prompt=8,
    update_completion=8,
    micro_batches=2,
    decode_prompt=8,
    decode_new=8,
    decode_batches="1,64",
    small_model="tiny",
    small_shape="2,4,8,8",
    small_steps=3,
    repeats=2,
)
# Seconds a figure needs at least on the full run (compile included); skipped when less is left.
NEED_S = dict(
    matmul_peak=10,
    memory_bandwidth=10,
    update_mfu=90,
    decode_b1=45,
    decode_b64=45,
    small_f32=40,
    small_bf16=40,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, short sequences (CI); about a minute")
    ap.add_argument("--out", default=None, help="JSON-lines file (default $OUT/device_check.jsonl when $OUT is set)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 400; dry-run 300)")
    ap.add_argument(
        "--figures",
        default=None,
        help=f"comma-separated subset of {','.join(FIGURES)} (decode_bN for any batch N); default: all, "
        "with one decode figure per --decode-batches entry",
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model of update/decode figures")
    ap.add_argument("--matmul-n", type=int, default=None)
    ap.add_argument("--bandwidth-mib", type=int, default=None, help="size of the bandwidth probe's f32 array")
    ap.add_argument("--update-rows", type=int, default=None, help="sequences per update step")
    ap.add_argument("--update-prompt", type=int, default=None)
    ap.add_argument("--update-completion", type=int, default=None)
    ap.add_argument("--micro-batches", type=int, default=None, help="gradient accumulation steps (x2 on OOM)")
    ap.add_argument("--update-param-dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument(
        "--update-remat",
        default="none",
        choices=("none", "full", "save_linear"),
        help="model.remat of the update step (compare with fewer --micro-batches; FLOPs counted without remat)",
    )
    ap.add_argument("--decode-param-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--decode-prompt", type=int, default=None)
    ap.add_argument("--decode-new", type=int, default=None)
    ap.add_argument("--decode-batches", default=None, help="comma-separated decode batch sizes (default 1,64)")
    ap.add_argument("--small-model", choices=sorted(WORKLOAD_MODELS), default=None)
    ap.add_argument("--small-shape", default=None, help="prompts,group,prompt_len,new_tokens (default 8,8,16,64)")
    ap.add_argument("--small-steps", type=int, default=None, help="GRPO steps; timed: 3..N (1-based)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (median)")
    ap.add_argument(
        "--xla-flops",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also lower the update and decode steps for XLA's own FLOP count (tracing only; ~20 s at 0.5B)",
    )
    ap.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the update and decode figures, one more traced call summed per op (profile_<figure>)",
    )
    ap.add_argument("--profile-dir", default=None, help="keep the raw profiler traces here (default: discarded)")
    args = ap.parse_args(argv)
    for key, value in (DRY if args.dry_run else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.budget_s is None:
        args.budget_s = 300.0 if args.dry_run else 400.0
    if args.out is None and os.environ.get("OUT"):
        args.out = str(Path(os.environ["OUT"]) / "device_check.jsonl")
    if args.figures is None:
        decode = [f"decode_b{int(b)}" for b in args.decode_batches.split(",")]
        args.figures = [f for f in FIGURES if not f.startswith("decode_b")]
        args.figures[3:3] = decode  # after the anchors and the update, before the small workload
    else:
        args.figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = [f for f in args.figures if f not in FIGURES and not re.fullmatch(r"decode_b[1-9][0-9]*", f)]
    if unknown:
        ap.error(f"unknown figures {unknown}; known: {FIGURES}")
    return args


def setup_environment(args: argparse.Namespace) -> None:
    """Before jax is imported: CPU for --dry-run; otherwise 90 % of the GPU's memory for XLA's pool.

    No XLA flag is set on GPU: the latency-hiding scheduler only overlaps collectives (none on one
    device), and a flag that a newer XLA no longer knows aborts the process at start-up. Flags in
    XLA_FLAGS are passed through (the env line prints them).
    """
    if args.dry_run:  # code paths, not speed: XLA:CPU's LLVM passes are most of a compile
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
        return
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")


# --- output ---------------------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become null, floats keep 6 significant digits, numpy -> python."""
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


class Recorder:
    """Prints each figure as one JSON line (and appends it to `out`); keeps them for the summary."""

    def __init__(self, out: str | None):
        self.rows: list[dict[str, Any]] = []
        self.out = Path(out) if out else None
        self.lock = threading.Lock()
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text("")

    def emit(self, figure: str, value: Any, unit: str, **fields: Any) -> dict[str, Any]:
        row = _clean({"figure": figure, "value": value, "unit": unit, **fields})
        line = json.dumps(row)
        with self.lock:
            self.rows.append(row)
            print(line, flush=True)
            if self.out:
                with self.out.open("a") as f:
                    f.write(line + "\n")
        return row

    def summary(self) -> None:
        notes = {
            "matmul_peak": lambda r: f"{r.get('dtype')} n={r.get('n')}",
            "memory_bandwidth": lambda r: f"read-only {r.get('read_gb_s')} GB/s",
            "update_mfu": lambda r: (
                f"step {r.get('step_s')} s, {r.get('achieved_tflop_s')} TFLOP/s, "
                + (f"{r['mfu_datasheet_pct']}% of datasheet, " if r.get("mfu_datasheet_pct") else "")
                + f"compile {r.get('compile_s')} s, micro-batches {r.get('micro_batches')}"
            ),
            "small": lambda r: (
                f"gen {r.get('gen_s')} s, update {r.get('update_s')} s, first step {r.get('first_step_s')} s"
            ),
            "profile": lambda r: (
                f"{r.get('ops_per_call')} ops, top {r['top'][0]['op']} {r['top'][0]['pct']}%" if r.get("top") else ""
            ),
            "decode": lambda r: (
                f"{r.get('step_ms')} ms/token-step, {r.get('gb_s')} GB/s, {r.get('tokens_s')} tok/s"
                + (f", {r.get('flop_pct_of_peak')}% of matmul peak" if r.get("batch", 1) > 1 else "")
            ),
        }
        lines = ["", "| figure | value | unit | notes |", "|---|---|---|---|"]
        for r in self.rows:
            fig = r["figure"]
            if fig == "env":
                continue
            if r.get("error") or r.get("skipped"):
                lines.append(
                    f"| {fig} | - | - | {'ERROR ' + r['error'] if r.get('error') else 'skipped: ' + r['skipped']} |"
                )
                continue
            note = next((fn for key, fn in notes.items() if fig.startswith(key)), lambda r: "")
            lines.append(f"| {fig} | {r['value']} | {r['unit']} | {note(r)} |")
        print("\n".join(lines), flush=True)


# --- timing ---------------------------------------------------------------------------------------


def repeat_times(fn: Callable[[], Any], repeats: int, max_s: float) -> list[float]:
    """Wall times of `fn()` (which blocks on its result), `repeats` times or until `max_s` is spent (>= 1)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < max_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def per_call_times(call: Callable[[], Any], inner: int, groups: int, max_s: float) -> list[float]:
    """Per-call seconds of `inner` back-to-back asynchronous calls, blocking only on the last."""
    import jax

    def group() -> None:
        out = None
        for _ in range(inner):
            out = call()
        jax.block_until_ready(out)

    return [t / inner for t in repeat_times(group, groups, max_s)]


def is_oom(err: BaseException) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "Out of memory" in text


# --- model sizes and analytic costs ---------------------------------------------------------------


def make_arch(shape: dict[str, Any]):
    from rlvr_jax.model import Arch

    return Arch(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, rms_norm_eps=1e-6, **shape)


def update_flops(arch, rows: int, prompt: int, completion: int) -> dict[str, float]:
    """Model FLOPs of one update step over `rows` sequences (module docstring): forward + backward."""
    seq = prompt + completion
    table = arch.vocab_size * arch.hidden_size
    dense = arch.num_params - table * (1 if arch.tie_word_embeddings else 2)
    out = {
        "dense": 6.0 * dense * rows * seq,
        "lm_head": 6.0 * table * rows * completion,
        "attention": 12.0 * arch.num_layers * arch.num_heads * arch.head_dim * rows * seq * seq,
    }
    out["total"] = sum(out.values())
    return out


def decode_costs(arch, batch: int, prompt: int, new: int, param_bytes: int, kv_itemsize: int) -> dict[str, float]:
    """What one decode step must read and compute, averaged over the M - 1 decode steps.

    Prefill samples token 1; decode step j (1..M-1) feeds token j at slot P + j - 1 and attends over
    the P + j filled slots: every weight once (the tied embedding once, as the LM head) plus those
    slots' k and v in every layer. The sampler scans all P + M slots under a mask; `kv_bytes_scanned`
    is that, for reference.
    """
    steps = new - 1
    live = prompt + (steps + 1) / 2  # mean of P + j over j = 1..steps
    slot_bytes = batch * arch.num_layers * 2 * arch.num_kv_heads * arch.head_dim * kv_itemsize
    attn_flops_per_slot = 4.0 * batch * arch.num_layers * arch.num_heads * arch.head_dim  # q.k and p.v
    return dict(
        steps=steps,
        live_slots=live,
        param_bytes=param_bytes,
        kv_bytes=slot_bytes * live,
        kv_bytes_scanned=slot_bytes * (prompt + new),
        step_bytes=param_bytes + slot_bytes * live,
        step_flops=2.0 * batch * arch.num_params + attn_flops_per_slot * live,
        step_flops_scanned=2.0 * batch * arch.num_params + attn_flops_per_slot * (prompt + new),
    )


def xla_flops(lowered) -> float | None:
    """XLA's own FLOP count of a lowered (uncompiled) program; loop bodies are counted once."""
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def xla_update_flops(arch, rows: int, prompt: int, completion: int, param_dtype: Any) -> float:
    """XLA's FLOP count of the trainer's update step (one micro-batch: XLA counts a loop body once),
    from the lowered program with abstract inputs: nothing is allocated or compiled."""
    import jax
    import jax.numpy as jnp

    from rlvr_jax.config import LossConfig, MeshConfig, OptimConfig
    from rlvr_jax.mesh import TRAIN_RULES, make_mesh
    from rlvr_jax.model import abstract_model
    from rlvr_jax.types import TrainBatch
    from rlvr_jax.update import UpdateSpec, abstract_train_state, make_optimizer, train_step

    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    graphdef, params = abstract_model(arch, param_dtype, jnp.bfloat16)
    optim = OptimConfig(lr=1e-5)
    tx = make_optimizer(optim, 100)
    state = abstract_train_state(params, tx, mesh, TRAIN_RULES)
    spec = UpdateSpec(LossConfig(), optim, completion)
    i32 = lambda n: jax.ShapeDtypeStruct((rows, n), jnp.int32)  # noqa: E731
    batch = TrainBatch(
        prompt_tokens=i32(prompt),
        prompt_mask=i32(prompt),
        tokens=i32(completion),
        mask=i32(completion),
        logp_old=jax.ShapeDtypeStruct((rows, completion), jnp.float32),
        adv=jax.ShapeDtypeStruct((rows,), jnp.float32),
        weight=jax.ShapeDtypeStruct((rows,), jnp.float32),
    )
    return xla_flops(jax.jit(lambda s, b: train_step(s, b, graphdef, tx, spec)).lower(state, batch))


def xla_decode_flops(arch, batch: int, prompt: int, new: int, param_dtype: Any) -> float:
    """XLA's FLOP count of one decode step (the sampler's while body, counted once by XLA), lowered
    from abstract inputs; attention runs over all prompt + new cache slots."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rlvr_jax.model import abstract_model
    from rlvr_jax.rollout import SamplingSpec, decode, prefill
    from rlvr_jax.types import PromptBatch

    graphdef, params = abstract_model(arch, param_dtype, jnp.bfloat16)
    sp = SamplingSpec(max_new_tokens=new, temperature=1.0, stop_on_eos=False, pad_id=1)
    tokens = jax.ShapeDtypeStruct((batch, prompt), jnp.int32)
    prompts = PromptBatch(tokens=tokens, mask=tokens, index=jax.ShapeDtypeStruct((batch,), jnp.int32))
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = jax.eval_shape(lambda ps, pr, k: prefill(nnx.merge(graphdef, ps), pr, k, sp), params, prompts, key)
    return xla_flops(jax.jit(lambda ps, st: decode(nnx.merge(graphdef, ps), st, sp)).lower(params, state))


def datasheet(device_kind: str) -> tuple[str, float, float] | None:
    return next((row for row in DATASHEET if row[0].lower() in device_kind.lower()), None)


# --- the check ------------------------------------------------------------------------------------


class Check:
    def __init__(self, args: argparse.Namespace, rec: Recorder, deadline: float):
        import jax

        self.args = args
        self.rec = rec
        self.deadline = deadline
        self.device = jax.devices()[0]
        self.platform = self.device.platform
        self.kind = getattr(self.device, "device_kind", self.platform)
        self.sheet = datasheet(self.kind) if self.platform == "gpu" else None
        self.peak_tflops: float | None = None  # measured anchors, filled by the first two figures
        self.bw_gb_s: float | None = None
        self.read_gb_s: float | None = None
        self._decode_model: tuple | None = None
        self._mesh = None

    @property
    def mesh(self):
        """One-device mesh, made on first use (the anchors need no rlvr_jax import)."""
        if self._mesh is None:
            import jax

            from rlvr_jax.config import MeshConfig
            from rlvr_jax.mesh import make_mesh

            self._mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
        return self._mesh

    def left_s(self) -> float:
        return self.deadline - time.perf_counter()

    def measure_s(self, cap: float) -> float:
        """Seconds a figure may spend on timed repeats: `cap`, less if the budget is short."""
        return max(0.5, min(cap, self.left_s() / 6))

    # anchors ---------------------------------------------------------------------------------------

    def matmul_peak(self) -> None:
        import jax
        import jax.numpy as jnp

        n = self.args.matmul_n
        ka, kb = jax.random.split(jax.random.key(0))
        a = jax.random.normal(ka, (n, n), jnp.bfloat16)  # random data: zeros run faster than real inputs
        b = jax.random.normal(kb, (n, n), jnp.bfloat16)
        mm = jax.jit(jnp.matmul)
        jax.block_until_ready(mm(a, b))  # compile
        inner = 20 if self.platform == "gpu" else 2
        per_call_times(lambda: mm(a, b), inner, 2, 5.0)  # warm-up (clocks up)
        times = per_call_times(lambda: mm(a, b), inner, max(self.args.repeats, 5), self.measure_s(10.0))
        t = statistics.median(times)
        self.peak_tflops = 2.0 * n**3 / t / 1e12
        extra = {}
        if self.sheet:
            extra = dict(datasheet_tflop_s=self.sheet[1], pct_of_datasheet=100 * self.peak_tflops / self.sheet[1])
        self.rec.emit(
            "matmul_peak",
            self.peak_tflops,
            "TFLOP/s",
            n=n,
            dtype="bfloat16",
            calls_per_group=inner,
            median_call_ms=1e3 * t,
            call_ms=[1e3 * x for x in times],
            **extra,
        )

    def memory_bandwidth(self) -> None:
        import jax
        import jax.numpy as jnp

        count = self.args.bandwidth_mib * 2**20 // 4
        x = jax.random.uniform(jax.random.key(1), (count,), jnp.float32)
        scale = jax.jit(lambda x: x * 1.0001)  # read 4 B + write 4 B per element
        total = jax.jit(jnp.sum)  # read 4 B per element
        jax.block_until_ready((scale(x), total(x)))  # compile
        inner = 10 if self.platform == "gpu" else 2  # each call writes a new array: 10 in flight
        per_call_times(lambda: scale(x), inner, 2, 5.0)
        copy_t = statistics.median(
            per_call_times(lambda: scale(x), inner, max(self.args.repeats, 5), self.measure_s(5.0))
        )
        read_t = statistics.median(
            per_call_times(lambda: total(x), inner, max(self.args.repeats, 5), self.measure_s(5.0))
        )
        nbytes = 4 * count
        self.bw_gb_s = 2 * nbytes / copy_t / 1e9
        self.read_gb_s = nbytes / read_t / 1e9
        extra = {}
        if self.sheet:
            extra = dict(datasheet_gb_s=self.sheet[2], pct_of_datasheet=100 * self.bw_gb_s / self.sheet[2])
        self.rec.emit(
            "memory_bandwidth",
            self.bw_gb_s,
            "GB/s",
            op="y = x * c (f32), bytes read + written",
            array_bytes=nbytes,
            median_call_ms=1e3 * copy_t,
            read_gb_s=self.read_gb_s,
            read_op="sum(x) (f32), bytes read",
            **extra,
        )

    def _need_anchor(self) -> None:
        """Measure the anchors if no figure did yet; a figure whose anchor failed still reports its raw
        numbers (and the datasheet fractions), its value then read against the datasheet."""
        for have, measure in ((self.peak_tflops, self.matmul_peak), (self.bw_gb_s, self.memory_bandwidth)):
            if have is None:
                try:
                    measure()
                except Exception as err:
                    print(f"# anchor {measure.__name__} failed: {type(err).__name__}: {err}", flush=True)

    def _value(self, rate: float, anchor: float | None, sheet_index: int, what: str) -> tuple[float | None, str]:
        """(percent, unit) of `rate` against the measured anchor, else against the datasheet."""
        if anchor:
            return 100 * rate / anchor, f"% of measured {what}"
        if self.sheet:
            return 100 * rate / self.sheet[sheet_index], f"% of datasheet {what} (measured anchor failed)"
        return None, f"% of measured {what} (anchor failed)"

    # update ----------------------------------------------------------------------------------------

    def update_mfu(self) -> None:
        self._need_anchor()
        micro = self.args.micro_batches
        while True:
            try:
                return self._update(micro)
            except Exception as err:
                if not is_oom(err) or micro * 2 > self.args.update_rows or self.left_s() < NEED_S["update_mfu"] / 2:
                    raise
                print(f"# update_mfu: out of memory at micro_batches={micro}; retrying with {micro * 2}", flush=True)
                micro *= 2
                gc.collect()

    def _update(self, micro: int) -> None:
        import jax
        import jax.numpy as jnp
        import numpy as np

        from rlvr_jax.config import LossConfig, OptimConfig
        from rlvr_jax.mesh import TRAIN_RULES
        from rlvr_jax.model import init_params
        from rlvr_jax.types import TrainBatch
        from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step

        args = self.args
        arch = make_arch(PRESETS[args.preset])
        rows, prompt, completion = args.update_rows, args.update_prompt, args.update_completion
        pdt = jnp.dtype(args.update_param_dtype)
        remat = False if args.update_remat == "none" else args.update_remat
        graphdef, params = init_params(
            arch, self.mesh, TRAIN_RULES, jax.random.key(0), param_dtype=pdt, dtype=jnp.bfloat16, remat=remat
        )
        optim = OptimConfig(lr=1e-5, micro_batches=micro)
        tx = make_optimizer(optim, 100)
        spec = UpdateSpec(LossConfig(), optim, completion)
        xla = xla_update_flops(arch, rows, prompt, completion, pdt) if args.xla_flops else None
        state = init_train_state(params, tx, self.mesh, TRAIN_RULES)
        del params
        step = make_train_step(graphdef, tx, spec, state, self.mesh, TRAIN_RULES)
        rng = np.random.default_rng(0)
        batch = TrainBatch(
            prompt_tokens=jnp.asarray(rng.integers(2, arch.vocab_size, (rows, prompt)), jnp.int32),
            prompt_mask=jnp.ones((rows, prompt), jnp.int32),
            tokens=jnp.asarray(rng.integers(2, arch.vocab_size, (rows, completion)), jnp.int32),
            mask=jnp.ones((rows, completion), jnp.int32),
            logp_old=jnp.full((rows, completion), -math.log(arch.vocab_size), jnp.float32),
            adv=jnp.asarray(rng.normal(size=rows), jnp.float32),
            weight=jnp.ones(rows, jnp.float32),
        )
        holder: dict[str, Any] = {"state": state}
        del state

        def run() -> None:
            holder["state"], holder["metrics"] = step(holder["state"], batch)
            jax.block_until_ready((holder["state"].params, holder["metrics"]))

        try:
            first = repeat_times(run, 1, 0)[0]  # compile + one step
            run()  # warm-up
            times = repeat_times(run, args.repeats, self.measure_s(30.0))
            metrics = jax.device_get(holder["metrics"])
            emit_profile = self.profile("update_mfu", run)
        finally:
            holder.clear()  # free the train state even when a step fails
        step_s = statistics.median(times)
        flops = update_flops(arch, rows, prompt, completion)
        achieved = flops["total"] / step_s / 1e12
        fields: dict[str, Any] = dict(
            step_s=step_s,
            times=times,
            first_call_s=first,
            compile_s=first - step_s,
            achieved_tflop_s=achieved,
            model_tflop_per_step=flops["total"] / 1e12,
            flops_split={k: v / flops["total"] for k, v in flops.items() if k != "total"},
            measured_peak_tflop_s=self.peak_tflops,
            mfu_datasheet_pct=100 * achieved / self.sheet[1] if self.sheet else None,
            datasheet_tflop_s=self.sheet[1] if self.sheet else None,
            tokens_per_s=rows * (prompt + completion) / step_s,
            model=args.preset,
            num_params=arch.num_params,
            rows=rows,
            prompt=prompt,
            completion=completion,
            micro_batches=micro,
            remat=args.update_remat,
            param_dtype=str(pdt),
            compute_dtype="bfloat16",
            optimizer="AdamW + global-norm clip 1.0",
            loss="PPO clip 0.2, token-mean",
            loss_value=float(metrics["loss"]),
            skipped_steps=int(metrics["update/skipped_total"]),
            flop_formula="6*P_dense*rows*seq + 6*V*D*rows*completion + 12*L*N*H*rows*seq^2",
        )
        if xla is not None:
            fields.update(xla_tflop_per_step=xla / 1e12, model_over_xla_flops=flops["total"] / xla)
        self.rec.emit("update_mfu", *self._value(achieved, self.peak_tflops, 1, "bf16 matmul peak"), **fields)
        emit_profile()

    def profile(self, figure: str, run: Callable[[], None]) -> Callable[[], None]:
        """One more call of `run` (compiled, warm) under the profiler, summed per op; returns what emits
        it as `profile_<figure>` (after the figure's own line). A failure is that line's error: the
        figure's timing stands."""
        if not self.args.profile:
            return lambda: None
        import op_profile

        folder = Path(self.args.profile_dir) / figure if self.args.profile_dir else None
        try:
            found = op_profile.capture(run, calls=1, workdir=folder)
        except Exception as err:
            error = f"{type(err).__name__}: {str(err)[:400]}"
            return lambda: self.rec.emit(f"profile_{figure}", None, "", error=error)
        busy = found.pop("busy_pct")
        return lambda: self.rec.emit(f"profile_{figure}", busy, "% of wall time with an op running", **found)

    # decode ----------------------------------------------------------------------------------------

    def decode_model(self) -> tuple:
        if self._decode_model is None:
            import jax
            import jax.numpy as jnp

            from rlvr_jax.mesh import ROLLOUT_RULES
            from rlvr_jax.model import init_params

            arch = make_arch(PRESETS[self.args.preset])
            pdt = jnp.dtype(self.args.decode_param_dtype)
            graphdef, params = init_params(
                arch, self.mesh, ROLLOUT_RULES, jax.random.key(2), param_dtype=pdt, dtype=jnp.bfloat16
            )
            self._decode_model = (arch, graphdef, params)
        return self._decode_model

    def decode(self, batch: int) -> None:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from rlvr_jax.mesh import ROLLOUT_RULES
        from rlvr_jax.rollout import SamplingSpec, make_sampler, prefill
        from rlvr_jax.types import PromptBatch

        self._need_anchor()
        args = self.args
        arch, graphdef, params = self.decode_model()
        p, m = args.decode_prompt, args.decode_new
        sp = SamplingSpec(max_new_tokens=m, temperature=1.0, stop_on_eos=False, pad_id=1)
        sampler = make_sampler(arch, graphdef, params, self.mesh, ROLLOUT_RULES, sp)
        tokens = jax.random.randint(jax.random.key(batch), (batch, p), 2, arch.vocab_size, jnp.int32)
        prompts = PromptBatch(tokens=tokens, mask=jnp.ones_like(tokens), index=jnp.arange(batch, dtype=jnp.int32))
        key = jax.random.key(3)
        # The rollout module's own prefill, jitted alone: the decode steps are timed by subtraction.
        prefill_jit = jax.jit(lambda ps, pr, k: prefill(nnx.merge(graphdef, ps), pr, k, sp))

        def run() -> None:
            out = jax.block_until_ready(sampler(params, prompts, key))
            if int(out.lengths.min()) != m:
                raise RuntimeError(f"sampler stopped early: lengths {out.lengths.min()} < {m}")

        def run_prefill() -> None:
            with jax.set_mesh(self.mesh):
                jax.block_until_ready(prefill_jit(params, prompts, key))

        first = repeat_times(run, 1, 0)[0]
        run_prefill()
        budget = self.measure_s(20.0)
        totals, prefills = [], []
        start = time.perf_counter()
        while len(totals) < args.repeats and (not totals or time.perf_counter() - start < budget):
            totals += repeat_times(run, 1, 0)
            prefills += repeat_times(run_prefill, 1, 0)
        emit_profile = self.profile(f"decode_b{batch}", run)
        total_s, prefill_s = statistics.median(totals), statistics.median(prefills)
        param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
        kv_itemsize = jnp.dtype(jnp.bfloat16).itemsize  # the cache is kept in the compute dtype
        cost = decode_costs(arch, batch, p, m, param_bytes, kv_itemsize)
        step_s = (total_s - prefill_s) / cost["steps"]
        gb_s = cost["step_bytes"] / step_s / 1e9
        tflop_s = cost["step_flops"] / step_s / 1e12
        fields: dict[str, Any] = dict(
            step_ms=1e3 * step_s,
            gb_s=gb_s,
            measured_bw_gb_s=self.bw_gb_s,
            pct_of_read_bw=100 * gb_s / self.read_gb_s if self.read_gb_s else None,
            pct_of_datasheet_bw=100 * gb_s / self.sheet[2] if self.sheet else None,
            tokens_s=batch * m / total_s,
            tflop_s=tflop_s,
            flop_pct_of_peak=100 * tflop_s / self.peak_tflops if self.peak_tflops else None,
            sampler_s=total_s,
            prefill_s=prefill_s,
            first_call_s=first,
            sampler_times=totals,
            prefill_times=prefills,
            batch=batch,
            prompt=p,
            new_tokens=m,
            model=args.preset,
            num_params=arch.num_params,
            param_dtype=args.decode_param_dtype,
            compute_dtype="bfloat16",
            kv_dtype="bfloat16",
            sampling="temperature 1, no top-p/top-k, stop_on_eos=False",
            **{k: v for k, v in cost.items() if k != "steps"},
            decode_steps=cost["steps"],
        )
        if args.xla_flops:  # one decode step as XLA counts it (the while body once), over all scanned slots
            xla = xla_decode_flops(arch, batch, p, m, jnp.dtype(args.decode_param_dtype))
            fields.update(xla_step_flops=xla, model_scanned_over_xla_flops=cost["step_flops_scanned"] / xla)
        self.rec.emit(f"decode_b{batch}", *self._value(gb_s, self.bw_gb_s, 2, "memory bandwidth"), **fields)
        emit_profile()

    # the small GRPO workload -------------------------------------------------------------------------

    def small(self, compute: str) -> None:
        import jax
        import jax.numpy as jnp
        import numpy as np

        from rlvr_jax import advantage as adv_lib
        from rlvr_jax.config import AdvantageConfig, LossConfig, OptimConfig
        from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES
        from rlvr_jax.model import init_params
        from rlvr_jax.rollout import SamplingSpec, make_sampler
        from rlvr_jax.types import PromptBatch, TrainBatch
        from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step

        args = self.args
        arch = make_arch({**WORKLOAD_MODELS[args.small_model], "max_position_embeddings": 128})
        n_prompts, g, p, m = (int(x) for x in args.small_shape.split(","))  # workload: 8, 8, 16, 64
        pad, eos, pool_size = 1, 0, 64  # shared/bench/make_workload.py: 64 prompts, pad id 1, eos id 0
        steps = args.small_steps
        dtype = jnp.float32 if compute == "f32" else jnp.bfloat16
        graphdef, params = init_params(arch, self.mesh, TRAIN_RULES, jax.random.key(4), jnp.float32, dtype)
        sp = SamplingSpec(
            max_new_tokens=m, group_size=g, temperature=1.0, stop_ids=(eos,), pad_id=pad, stop_on_eos=False
        )
        sampler = make_sampler(arch, graphdef, params, self.mesh, ROLLOUT_RULES, sp)
        optim = OptimConfig(lr=1e-5, max_grad_norm=1.0)  # AdamW b 0.9/0.999, eps 1e-8, no decay, constant
        tx = make_optimizer(optim, steps)
        state = init_train_state(params, tx, self.mesh, TRAIN_RULES)
        del params
        train_step = make_train_step(graphdef, tx, UpdateSpec(LossConfig(), optim, m), state, self.mesh, TRAIN_RULES)
        adv_cfg = AdvantageConfig()  # GRPO: (r - mean) / (population std + 1e-6)
        advantages = jax.jit(lambda r: adv_lib.advantages(r, adv_cfg))
        # 64 prompts of 4..8 tokens, left-padded to 16 (the workload's arithmetic prompts are that long).
        rng = np.random.default_rng(0)
        lens = rng.integers(min(4, p), min(8, p) + 1, pool_size)
        pool = np.full((pool_size, p), pad, np.int32)
        for i, n in enumerate(lens):
            pool[i, p - n :] = rng.integers(2, arch.vocab_size, n)
        pool_mask = (np.arange(p)[None, :] >= p - lens[:, None]).astype(np.int32)
        rollout_key = jax.random.key(6)

        step_s, gen_s, update_s = [], [], []
        t_prev = time.perf_counter()
        for k in range(steps):
            rows = (np.arange(n_prompts) + n_prompts * k) % pool_size  # step k+1: rows 8k mod 64 .. +7
            prompts = PromptBatch(
                tokens=jnp.asarray(pool[rows]), mask=jnp.asarray(pool_mask[rows]), index=jnp.asarray(rows, jnp.int32)
            )
            t0 = time.perf_counter()
            rollout = sampler(state.params, prompts, jax.random.fold_in(rollout_key, k))
            host = jax.device_get(rollout)  # the loop scores on the host
            t1 = time.perf_counter()
            if int(host.lengths.min()) != m:
                raise RuntimeError(f"sampler stopped early: lengths {host.lengths.min()} < {m}")
            rewards = (host.tokens[:, 0] % 2 == 0).astype(np.float32).reshape(n_prompts, g)  # reward stand-in
            adv_lib.check_rewards(rewards)
            adv, weight = advantages(jnp.asarray(rewards))
            batch = TrainBatch(
                prompt_tokens=rollout.prompt_tokens,
                prompt_mask=rollout.prompt_mask,
                tokens=rollout.tokens,
                mask=rollout.mask,
                logp_old=rollout.logp,
                adv=adv.reshape(-1),
                weight=weight.reshape(-1),
            )
            state, metrics = train_step(state, batch)
            jax.block_until_ready(state)
            t2 = time.perf_counter()
            step_s.append(t2 - t_prev)
            gen_s.append(t1 - t0)
            update_s.append(t2 - t1)
            t_prev = t2
            if k >= 2 and self.left_s() < 5:
                break
        timed = slice(2, None)  # steps 3..N (1-based)
        if len(step_s) < 3:
            raise RuntimeError(f"only {len(step_s)} steps ran before the budget ran out")
        median = statistics.median(step_s[timed])
        self.rec.emit(
            f"small_{compute}",
            median,
            "s/step",
            gen_s=statistics.median(gen_s[timed]),
            update_s=statistics.median(update_s[timed]),
            tokens_per_s=n_prompts * g * m / median,
            first_step_s=step_s[0],
            second_step_s=step_s[1],
            step_times=step_s,
            timed_steps=f"3..{len(step_s)}",
            loss_value=float(jax.device_get(metrics["loss"])),
            model=f"workload {args.small_model}",
            num_params=arch.num_params,
            compute_dtype=str(jnp.dtype(dtype)),
            param_dtype="float32",
            prompts=n_prompts,
            group_size=g,
            prompt_len=p,
            new_tokens=m,
            reward="stand-in on the host: first token id even (the workload's integer match needs its tokenizer)",
        )

    # driver ----------------------------------------------------------------------------------------

    def run(self, figure: str) -> None:
        if figure == "matmul_peak":
            return self.matmul_peak()
        if figure == "memory_bandwidth":
            return self.memory_bandwidth()
        if figure == "update_mfu":
            return self.update_mfu()
        if figure.startswith("decode_b"):
            return self.decode(int(figure[len("decode_b") :]))
        if figure in ("small_f32", "small_bf16"):
            return self.small(figure.split("_")[1])
        raise ValueError(figure)

    def release_decode_model(self) -> None:
        self._decode_model = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_environment(args)
    start = time.perf_counter()
    deadline = start + args.budget_s
    rec = Recorder(args.out)

    def watchdog() -> None:
        rec.emit("watchdog", None, "", error=f"wall-clock budget of {args.budget_s:.0f} s spent; exiting")
        rec.summary()
        sys.stdout.flush()
        os._exit(3)

    timer = threading.Timer(args.budget_s + (30 if args.dry_run else 20), watchdog)
    timer.daemon = True
    timer.start()

    import jax

    try:
        jax.config.update("jax_enable_compilation_cache", False)  # compile times are part of what we report
    except Exception as err:  # an option renamed in a later jax: note it, measure anyway
        print(f"# could not turn the persistent compilation cache off: {err}", flush=True)
    devices = jax.devices()
    check = Check(args, rec, deadline)
    rec.emit(
        "env",
        len(devices),
        "devices",
        device_kind=check.kind,
        platform=check.platform,
        jax=jax.__version__,
        jaxlib=_version("jaxlib"),
        flax=_version("flax"),
        optax=_version("optax"),
        pydantic=_version("pydantic"),
        python=sys.version.split()[0],
        dry_run=args.dry_run,
        budget_s=args.budget_s,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
        datasheet=check.sheet and dict(match=check.sheet[0], bf16_tflop_s=check.sheet[1], hbm_gb_s=check.sheet[2]),
    )
    if check.platform == "cpu" and not args.dry_run and "cpu" not in os.environ.get("JAX_PLATFORMS", ""):
        # a broken CUDA plugin makes jax fall back to the CPU with only a warning: stop now, not in 7 minutes
        rec.emit("env", None, "", error="no accelerator: jax runs on the CPU (set JAX_PLATFORMS=cpu to mean it)")
        timer.cancel()
        return 2
    failed = skipped = 0
    for figure in args.figures:
        if not figure.startswith("decode_b"):
            check.release_decode_model()  # the decode figures share one model; free it after them
        need = NEED_S.get(figure, NEED_S["decode_b1"]) * (0.1 if args.dry_run else 1.0)
        if check.left_s() < need:
            rec.emit(figure, None, "", skipped=f"budget: {check.left_s():.0f} s left, needs ~{need:.0f} s")
            skipped += 1
            continue
        t0 = time.perf_counter()
        try:
            check.run(figure)
        except Exception as err:  # one figure's failure must not cost the others
            failed += 1
            tail = traceback.format_exc().strip().splitlines()[-6:]
            rec.emit(figure, None, "", error=f"{type(err).__name__}: {str(err)[:400]}", traceback=tail)
        finally:
            gc.collect()
        print(f"# {figure}: {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - start:.1f} s)", flush=True)
    timer.cancel()
    rec.summary()
    took = time.perf_counter() - start
    print(f"# device check done in {took:.1f} s; {failed} figure(s) failed, {skipped} skipped", flush=True)
    return 1 if failed or skipped else 0


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
