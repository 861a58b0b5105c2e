"""The policy model: NNX decoder, sharded creation, HF import/export.

NNX defines the model; plain (graphdef, state) pytrees cross every jit boundary. Parameters are
created or loaded directly in their sharded layout: `eval_shape` gives shapes and logical axes, the
rule table gives shardings, and a jitted init (or a per-shard safetensors read) fills them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from rlvr_jax.config import ModelConfig
from rlvr_jax.mesh import Rules, tree_shardings
from rlvr_jax.model.arch import Arch, ArchError, RopeScaling, model_dir
from rlvr_jax.model.decoder import (
    Decoder,
    KVCache,
    LayerCache,
    init_cache,
    positions_from_mask,
    remat_mode,
    to_per_layer,
    to_stacked,
)
from rlvr_jax.model.hf_io import CheckpointFormatError, NonFiniteWeightsError, check_finite, load_state, save_pretrained
from rlvr_jax.storage import local_copy

__all__ = [
    "Arch",
    "ArchError",
    "CheckpointFormatError",
    "Decoder",
    "KVCache",
    "LayerCache",
    "NonFiniteWeightsError",
    "RopeScaling",
    "abstract_model",
    "check_arch_matches",
    "check_finite",
    "forward",
    "from_pretrained",
    "init_cache",
    "init_params",
    "load_policy",
    "model_dir",
    "positions_from_mask",
    "remat_mode",
    "rollout_dtype",
    "save_pretrained",
    "state_shardings",
    "to_per_layer",
    "to_stacked",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(name: Any) -> Any:
    return _DTYPES[getattr(name, "value", name)] if isinstance(getattr(name, "value", name), str) else name


def abstract_model(
    arch: Arch,
    param_dtype: Any = jnp.float32,
    dtype: Any = jnp.float32,
    remat: bool | str = False,
    scan_layers: bool = False,
) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and abstract (shape-only) state; no memory is allocated."""
    model = nnx.eval_shape(lambda: Decoder(arch, nnx.Rngs(0), _dtype(param_dtype), _dtype(dtype), remat, scan_layers))
    return nnx.split(model)


def rollout_dtype(param_dtype: Any, compute_dtype: Any) -> jnp.dtype:
    """The dtype of the sampler's copy of the weights (`rollout.rollout_weights`, `rlvr-jax plan`):
    the compute dtype when it is narrower than the parameters' (bf16 over f32 master weights), else
    the parameters' own (a wider copy would only cost memory: the decoder casts at use)."""
    param_dtype, compute_dtype = jnp.dtype(_dtype(param_dtype)), jnp.dtype(_dtype(compute_dtype))
    return compute_dtype if compute_dtype.itemsize < param_dtype.itemsize else param_dtype


def state_shardings(abstract: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    return tree_shardings(abstract, mesh, rules)


def init_params(
    arch: Arch,
    mesh: Mesh,
    rules: Rules,
    key: jax.Array,
    param_dtype: Any = jnp.float32,
    dtype: Any = jnp.float32,
    remat: bool | str = False,
    scan_layers: bool = False,
) -> tuple[nnx.GraphDef, nnx.State]:
    """Random parameters created directly in their sharded layout (never whole on one device)."""
    graphdef, abstract = abstract_model(arch, param_dtype, dtype, remat, scan_layers)
    shardings = state_shardings(abstract, mesh, rules)

    def make(key: jax.Array) -> nnx.State:
        return nnx.split(Decoder(arch, nnx.Rngs(key), _dtype(param_dtype), _dtype(dtype), remat, scan_layers))[1]

    with jax.set_mesh(mesh):  # out_shardings: each device computes only its own shard
        return graphdef, jax.jit(make, out_shardings=shardings)(key)


def from_pretrained(
    folder: str | Path,
    mesh: Mesh,
    rules: Rules,
    param_dtype: Any = jnp.float32,
    dtype: Any = jnp.float32,
    remat: bool | str = False,
    scan_layers: bool = False,
    allow_nonfinite: bool = False,
) -> tuple[Arch, nnx.GraphDef, nnx.State]:
    """Load an HF folder (config.json + safetensors; local, gs:// or a Hub model id) straight into the
    sharded layout. Weights holding NaN or inf are an error naming the tensor, unless `allow_nonfinite`
    (such a model samples garbage, or nothing at all, without failing)."""
    arch = Arch.from_dir(folder)
    graphdef, abstract = abstract_model(arch, param_dtype, dtype, remat, scan_layers)
    files = jax.eval_shape(to_per_layer, abstract) if scan_layers else abstract  # the files' per-layer tree
    # A bucket folder is downloaded (safetensors are memory-mapped from local files); a Hub id is in the HF cache.
    with local_copy(model_dir(folder)) as local:
        state = load_state(local, arch, files, state_shardings(files, mesh, rules))
    if not allow_nonfinite:
        check_finite(folder, arch, state)
    if scan_layers:  # one jitted stack into the sharded [L, ...] layout (the per-layer arrays are then freed)
        state = jax.jit(to_stacked, out_shardings=state_shardings(abstract, mesh, rules))(state)
    return arch, graphdef, state


def load_policy(cfg: ModelConfig, mesh: Mesh, rules: Rules, key: jax.Array) -> tuple[Arch, nnx.GraphDef, nnx.State]:
    """The policy a run config names: an HF folder (`model.path`) or a random model (`model.arch`)."""
    options = dict(param_dtype=cfg.param_dtype, dtype=cfg.dtype, remat=cfg.remat, scan_layers=cfg.scan_layers)
    if cfg.path is not None:
        found = Arch.from_dir(cfg.path)  # first: a missing or broken folder is the error to report
        if cfg.arch:  # recipes state the architecture they were sized for: catch a wrong checkpoint early
            check_arch_matches(Arch.from_hf(cfg.arch, source="config model.arch"), found, cfg.path)
        return from_pretrained(cfg.path, mesh, rules, **options, allow_nonfinite=cfg.allow_nonfinite)
    if not cfg.arch:
        raise ArchError("config: set model.path (an HF folder) or model.arch (config.json fields of a random model)")
    arch = Arch.from_hf(cfg.arch, source="config model.arch")
    return (arch, *init_params(arch, mesh, rules, key, **options))


def check_arch_matches(expected: Arch, found: Arch, folder: str) -> None:
    import dataclasses

    skip = {"bos_token_id", "eos_token_ids", "pad_token_id"}  # token ids may legitimately differ by release
    diff = [
        f"{f.name}: config {getattr(expected, f.name)!r} vs {folder} {getattr(found, f.name)!r}"
        for f in dataclasses.fields(Arch)
        if f.name not in skip and getattr(expected, f.name) != getattr(found, f.name)
    ]
    if diff:
        raise ArchError("model.arch does not match the checkpoint's config.json:\n  " + "\n  ".join(diff))


def forward(
    graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, key_mask: jax.Array, positions: jax.Array | None = None
) -> jax.Array:
    """Uncached full forward: f32 logits [B, T, V] of a (left-padded) batch. `positions` (default: from the
    mask) must lie in [0, T): RoPE looks them up in a table of T rows, and a row outside it gets NaN."""
    positions = positions_from_mask(key_mask) if positions is None else positions
    logits, _ = nnx.merge(graphdef, state)(tokens, positions, key_mask)
    return logits
