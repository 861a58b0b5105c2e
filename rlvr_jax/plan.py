"""`rlvr-jax plan`: per-device memory of a config's model on its mesh, before renting the hardware.

Exact parts (from the abstract model and the same rule tables and dtypes the trainer uses):
parameters in the training layout, AdamW moments, the frozen KL reference, the sampler's copy of
the weights (rollout layout, in the compute dtype when that is narrower: `rollout.rollout_weights`;
nothing when it aliases the training buffers), the KV cache of one rollout batch (compute dtype),
gradients. Estimated parts: the rollout working set (prefill computes f32 logits at every prompt
position; decode samples from f32 [rows, V] blocks), and activations of one micro-batch, counted per
layer as the tensors the backward pass keeps (no remat: the attention block's inputs, q/k/v, scores
and softmax, the MLP's gate/up/activation; remat: each layer's input plus one layer's working set;
remat save_linear: also the linear layers' outputs),
plus the logits block (whole completion, or `loss.logits_chunk` positions at a time).

A batch dimension that the data x fsdp devices do not divide is replicated (as `mesh.logical_to_spec`
does), so every device then holds all its rows.

Two phases peak separately: rollout (state + rollout copy + KV cache + rollout working set) and
update (state + gradients + activations). "Fits" means the larger is within 90 % of the
accelerator's memory (XLA and the runtime keep the rest). `benchmarks/plan_vs_measured.py` sets
each term beside XLA's compiled memory analysis and the process's measured peak.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any

import jax
import numpy as np

from rlvr_jax.config import Config
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, Rules, logical_to_spec, resolve_axis_sizes
from rlvr_jax.model import Arch, abstract_model, remat_mode, rollout_dtype

GIB = 1 << 30
ACCELERATORS = {"v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB, "h100": 80 * GIB, "h200": 141 * GIB}
USABLE = 0.9


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    mesh: dict[str, int]
    params: int
    optimizer: int
    reference: int
    gradients: int
    rollout_params: int  # beyond the training params: 0 when the sampler reads the training buffers
    kv_cache: int
    rollout_work: int  # the larger of prefill's and decode's working sets
    activations: int
    logits: int
    rollout_dtype: str = "float32"

    @property
    def rollout_peak(self) -> int:
        return self.params + self.optimizer + self.reference + self.rollout_params + self.kv_cache + self.rollout_work

    @property
    def update_peak(self) -> int:
        return self.params + self.optimizer + self.reference + self.gradients + self.activations + self.logits

    @property
    def peak(self) -> int:
        return max(self.rollout_peak, self.update_peak)

    def fits(self, accelerator: str) -> bool:
        return self.peak <= USABLE * ACCELERATORS[accelerator]


def _per_device(shape: tuple[int, ...], spec: Any, mesh_shape: dict[str, int]) -> int:
    """Elements one device holds of an array of `shape` laid out by `spec` (largest shard)."""
    n = 1
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else axes
        n *= math.ceil(dim / math.prod(mesh_shape[a] for a in names))
    return n


def _variables(abstract: Any) -> list[Any]:
    from flax import nnx

    return jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _sharded_bytes(abstract: Any, mesh_shape: dict[str, int], rules: Rules) -> int:
    """Bytes one device holds of a tree of NNX Variables (largest shard, rounded up)."""
    mesh = types.SimpleNamespace(shape=mesh_shape)
    return sum(
        _per_device(v.shape, logical_to_spec(v.logical_axes, rules, v.shape, mesh), mesh_shape)
        * np.dtype(v.dtype).itemsize
        for v in _variables(abstract)
    )


def _rollout_copy_bytes(abstract: Any, mesh_shape: dict[str, int], compute_dtype: str, split: bool = False) -> int:
    """Bytes one device holds of the sampler's copy beyond the training params (`rollout_weights`):
    a leaf already in the rollout layout and dtype is the training buffer itself; any other is new.
    `split` (model.scan_layers): the sampler splits the stacked layers into a copy of every leaf."""
    mesh = types.SimpleNamespace(shape=mesh_shape)

    def layout(rules: Rules, v: Any) -> tuple:
        # Axes of size 1 split nothing: ('tensor', 'fsdp') and ('tensor', None) are one layout there,
        # and `device_put` between them returns the same buffer.
        spec = logical_to_spec(v.logical_axes, rules, v.shape, mesh)
        names = [() if a is None else (a,) if isinstance(a, str) else tuple(a) for a in spec]
        return tuple(tuple(a for a in axes if mesh_shape[a] > 1) for axes in names)

    total = 0
    for v in _variables(abstract):
        roll = logical_to_spec(v.logical_axes, ROLLOUT_RULES, v.shape, mesh)
        dtype = rollout_dtype(v.dtype, compute_dtype)
        if split or layout(ROLLOUT_RULES, v) != layout(TRAIN_RULES, v) or dtype != np.dtype(v.dtype):
            total += _per_device(v.shape, roll, mesh_shape) * dtype.itemsize
    return total


def _local_rows(rows: int, shards: int) -> int:
    """Rows per device of a batch laid over `shards` devices: replicated when they do not divide it."""
    return rows // shards if rows % shards == 0 else rows


def plan_memory(cfg: Config, arch: Arch, devices: int) -> MemoryPlan:
    data, fsdp, tensor = resolve_axis_sizes(cfg.mesh, devices)
    mesh_shape = {"data": data, "fsdp": fsdp, "tensor": tensor}
    compute = cfg.model.dtype.value
    _, abstract = abstract_model(arch, cfg.model.param_dtype.value, compute, cfg.model.remat)
    params = _sharded_bytes(abstract, mesh_shape, TRAIN_RULES)
    act_bytes = np.dtype(compute).itemsize
    batch_shards = data * fsdp
    group = cfg.rollout.group_size
    prompts = _local_rows(cfg.data.prompts_per_step, batch_shards)
    rows = _local_rows(cfg.data.prompts_per_step * group, batch_shards)
    seq = cfg.data.max_prompt_len + cfg.rollout.max_new_tokens
    kv_heads = arch.num_kv_heads // tensor if arch.num_kv_heads % tensor == 0 else arch.num_kv_heads
    kv_cache = arch.num_layers * 2 * rows * kv_heads * seq * arch.head_dim * act_bytes
    vocab = arch.vocab_size // tensor if arch.vocab_size % tensor == 0 else arch.vocab_size
    # Prefill: the prompts' own cache before it is repeated G times, and one layer's widest
    # activation (the MLP's gate and up projections over every prompt token); only the last
    # position is projected to logits. Decode: f32 logits, their log-softmax and the tempered
    # copy of [rows, V], plus a sort, softmax and cumulative sum under top-p.
    inter = math.ceil(arch.intermediate_size / tensor)
    prompt_tokens = prompts * cfg.data.max_prompt_len
    prefill = kv_cache * prompts // max(rows, 1) + prompt_tokens * 2 * inter * act_bytes + prompts * vocab * 4
    decode = rows * vocab * 4 * (6 if cfg.rollout.top_p < 1.0 else 3)
    parts = cfg.optim.mini_batches * cfg.optim.micro_batches
    micro_rows = math.ceil(rows / parts)
    return MemoryPlan(
        mesh=mesh_shape,
        params=params,
        optimizer=2 * params,
        reference=params if cfg.loss.kl_beta > 0 else 0,
        gradients=params * (2 if cfg.optim.micro_batches > 1 else 1),
        rollout_params=_rollout_copy_bytes(abstract, mesh_shape, compute, cfg.model.scan_layers),
        kv_cache=kv_cache,
        rollout_work=max(prefill, decode),
        activations=_activation_bytes(arch, micro_rows, seq, tensor, act_bytes, cfg.model.remat),
        logits=_logit_bytes(arch, micro_rows, cfg.rollout.max_new_tokens, cfg.loss.logits_chunk, tensor),
        rollout_dtype=str(rollout_dtype(cfg.model.param_dtype.value, compute)),
    )


def _activation_bytes(arch: Arch, rows: int, seq: int, tensor: int, itemsize: int, remat: bool | str) -> int:
    heads = math.ceil(arch.num_heads / tensor)
    kv = math.ceil(arch.num_kv_heads / tensor)
    mlp = math.ceil(arch.intermediate_size / tensor)
    tokens = rows * seq
    attention = tokens * (4 * arch.hidden_size + (heads + 2 * kv) * arch.head_dim * 2 + heads * arch.head_dim)
    scores = rows * heads * seq * seq * 2  # scores and softmax, kept for the backward pass
    mlp_part = tokens * (arch.hidden_size + 3 * mlp)
    per_layer = (attention + mlp_part) * itemsize + scores * 4  # scores are f32
    mode = remat_mode(remat)
    if mode is None:
        return arch.num_layers * per_layer
    kept = tokens * arch.hidden_size  # each layer's input
    if mode == "save_linear":  # + the linear layers' outputs: q, k, v, o; gate, up, down
        kept += tokens * ((heads + 2 * kv) * arch.head_dim + 2 * arch.hidden_size + 2 * mlp)
    return arch.num_layers * kept * itemsize + per_layer  # + one layer's working set, recomputed


def _logit_bytes(arch: Arch, rows: int, completion: int, chunk: int, tensor: int) -> int:
    positions = min(chunk, completion) if chunk > 0 else completion
    vocab = arch.vocab_size // tensor if arch.vocab_size % tensor == 0 else arch.vocab_size
    return rows * positions * vocab * 4 * 3  # f32 logits, softmax and their gradient


def suggestions(cfg: Config, plan: MemoryPlan, accelerator: str) -> list[str]:
    """Concrete changes that bring the peak under the accelerator's usable memory."""
    budget = USABLE * ACCELERATORS[accelerator]
    out = []
    state = plan.params + plan.optimizer + plan.reference
    if state > 0.6 * budget:
        out.append(
            f"model state alone is {state / GIB:.1f} GiB per device: shard it over more devices (raise mesh.fsdp, "
            "or use a larger slice), or use model.param_dtype=bfloat16"
        )
    if plan.update_peak > budget:
        spare = budget - (state + plan.gradients)
        act = plan.activations + plan.logits
        if spare > 0 and act > spare:
            factor = math.ceil(act / spare)
            out.append(
                f"activations {act / GIB:.1f} GiB at the micro-batch: optim.micro_batches="
                f"{cfg.optim.micro_batches * factor} (x{factor})"
                + {None: ", or model.remat=true", "save_linear": ", or model.remat=full"}.get(
                    remat_mode(cfg.model.remat), ""
                )
                + ("" if cfg.loss.logits_chunk else ", loss.logits_chunk=256")
            )
    if plan.rollout_peak > budget:
        if plan.rollout_params > 0.3 * budget:
            out.append(
                f"the rollout copy of the weights is {plan.rollout_params / GIB:.1f} GiB (rollout shards weights "
                "over the tensor axis only): raise mesh.tensor (e.g. to the chips per host)"
            )
        out.append(
            f"rollout KV cache {plan.kv_cache / GIB:.1f} GiB and working set {plan.rollout_work / GIB:.1f} GiB: "
            "fewer data.prompts_per_step or rollout.group_size per step, or more devices on the data / fsdp axes"
        )
    return out


def human(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:8.2f} {unit}"
    return f"{n:8d} B  "


def format_plan(cfg: Config, arch: Arch, plan: MemoryPlan, accelerators: list[str]) -> str:
    g = human
    lines = [
        f"model {arch.model_type}, {arch.num_params / 1e6:,.1f}M params, param dtype {cfg.model.param_dtype.value}; "
        f"mesh data={plan.mesh['data']} fsdp={plan.mesh['fsdp']} tensor={plan.mesh['tensor']}",
        "per device:",
        f"  params (train layout)     {g(plan.params)}",
        f"  AdamW moments             {g(plan.optimizer)}",
        f"  KL reference              {g(plan.reference)}",
        f"  gradients                 {g(plan.gradients)}",
        f"  rollout params copy       {g(plan.rollout_params)}  "
        + (f"({plan.rollout_dtype})" if plan.rollout_params else "(none: the sampler reads the training buffers)"),
        f"  KV cache (rollout batch)  {g(plan.kv_cache)}",
        f"  rollout working set       {g(plan.rollout_work)}  (estimate: prefill logits or decode sampling)",
        f"  activations (micro-batch) {g(plan.activations)}  (estimate)",
        f"  logits block              {g(plan.logits)}",
        f"peak: rollout {g(plan.rollout_peak)}, update {g(plan.update_peak)}",
    ]
    for name in accelerators:
        verdict = "fits" if plan.fits(name) else "does NOT fit"
        lines.append(
            f"{name} ({ACCELERATORS[name] // GIB} GiB): {verdict} ({plan.peak / ACCELERATORS[name]:.0%} of memory)"
        )
        if not plan.fits(name):
            lines += [f"  - {s}" for s in suggestions(cfg, plan, name)]
    return "\n".join(lines)
