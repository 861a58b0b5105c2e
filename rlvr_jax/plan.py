"""`rlvr-jax plan`: per-device memory of a config's model on its mesh, before renting the hardware.

Exact parts (from the abstract model and the same rule tables the trainer uses): parameters in the
training layout, AdamW moments, the frozen KL reference, the rollout-layout parameter copy, the KV
cache of one rollout batch, gradients. Estimated part: activations of one micro-batch, counted per
layer as the tensors the backward pass keeps (no remat: the attention block's inputs, q/k/v, scores
and softmax, the MLP's gate/up/activation; remat: each layer's input plus one layer's working set),
plus the logits block (whole completion, or `loss.logits_chunk` positions at a time).

Two phases peak separately: rollout (state + rollout copy + KV cache) and update (state + gradients
+ activations). "Fits" means the larger is within 90 % of the accelerator's memory (XLA and the
runtime keep the rest).
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
from rlvr_jax.model import Arch, abstract_model

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
    rollout_params: int
    kv_cache: int
    activations: int
    logits: int

    @property
    def rollout_peak(self) -> int:
        return self.params + self.optimizer + self.reference + self.rollout_params + self.kv_cache

    @property
    def update_peak(self) -> int:
        return self.params + self.optimizer + self.reference + self.gradients + self.activations + self.logits

    @property
    def peak(self) -> int:
        return max(self.rollout_peak, self.update_peak)

    def fits(self, accelerator: str) -> bool:
        return self.peak <= USABLE * ACCELERATORS[accelerator]


def _sharded_bytes(abstract: Any, mesh_shape: dict[str, int], rules: Rules) -> int:
    """Bytes one device holds of a tree of NNX Variables (largest shard, rounded up)."""
    from flax import nnx

    mesh = types.SimpleNamespace(shape=mesh_shape)
    total = 0
    for var in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        shape, itemsize = var.shape, np.dtype(var.dtype).itemsize
        spec = logical_to_spec(var.logical_axes, rules, shape, mesh)
        per_device = 1
        for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
            parts = (
                1 if axes is None else math.prod(mesh_shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            )
            per_device *= math.ceil(dim / parts)
        total += per_device * itemsize
    return total


def plan_memory(cfg: Config, arch: Arch, devices: int) -> MemoryPlan:
    data, fsdp, tensor = resolve_axis_sizes(cfg.mesh, devices)
    mesh_shape = {"data": data, "fsdp": fsdp, "tensor": tensor}
    _, abstract = abstract_model(arch, cfg.model.param_dtype.value, cfg.model.dtype.value, cfg.model.remat)
    params = _sharded_bytes(abstract, mesh_shape, TRAIN_RULES)
    act_bytes = np.dtype(cfg.model.dtype.value).itemsize
    batch_shards = data * fsdp
    rows = cfg.data.prompts_per_step * cfg.rollout.group_size
    seq = cfg.data.max_prompt_len + cfg.rollout.max_new_tokens
    kv_heads = arch.num_kv_heads // tensor if arch.num_kv_heads % tensor == 0 else arch.num_kv_heads
    kv_cache = arch.num_layers * 2 * math.ceil(rows / batch_shards) * kv_heads * seq * arch.head_dim * act_bytes
    micro_rows = math.ceil(rows / (cfg.optim.mini_batches * cfg.optim.micro_batches) / batch_shards)
    return MemoryPlan(
        mesh=mesh_shape,
        params=params,
        optimizer=2 * params,
        reference=params if cfg.loss.kl_beta > 0 else 0,
        gradients=params * (2 if cfg.optim.micro_batches > 1 else 1),
        rollout_params=_sharded_bytes(abstract, mesh_shape, ROLLOUT_RULES),
        kv_cache=kv_cache,
        activations=_activation_bytes(arch, micro_rows, seq, tensor, act_bytes, cfg.model.remat),
        logits=_logit_bytes(arch, micro_rows, cfg.rollout.max_new_tokens, cfg.loss.logits_chunk, tensor),
    )


def _activation_bytes(arch: Arch, rows: int, seq: int, tensor: int, itemsize: int, remat: bool) -> int:
    heads = math.ceil(arch.num_heads / tensor)
    kv = math.ceil(arch.num_kv_heads / tensor)
    mlp = math.ceil(arch.intermediate_size / tensor)
    tokens = rows * seq
    attention = tokens * (4 * arch.hidden_size + (heads + 2 * kv) * arch.head_dim * 2 + heads * arch.head_dim)
    scores = rows * heads * seq * seq * 2  # scores and softmax, kept for the backward pass
    mlp_part = tokens * (arch.hidden_size + 3 * mlp)
    per_layer = (attention + mlp_part) * itemsize + scores * 4  # scores are f32
    if remat:
        return arch.num_layers * tokens * arch.hidden_size * itemsize + per_layer
    return arch.num_layers * per_layer


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
                + ("" if cfg.model.remat else ", or model.remat=true")
                + ("" if cfg.loss.logits_chunk else ", loss.logits_chunk=256")
            )
    if plan.rollout_peak > budget:
        if plan.rollout_params > 0.3 * budget:
            out.append(
                f"the rollout copy of the weights is {plan.rollout_params / GIB:.1f} GiB (rollout shards weights "
                "over the tensor axis only): raise mesh.tensor (e.g. to the chips per host)"
            )
        out.append(
            f"rollout KV cache {plan.kv_cache / GIB:.1f} GiB: fewer data.prompts_per_step or rollout.group_size "
            "per step, or more devices on the data / fsdp axes"
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
        f"  rollout params copy       {g(plan.rollout_params)}",
        f"  KV cache (rollout batch)  {g(plan.kv_cache)}",
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
