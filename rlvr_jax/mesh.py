"""Device mesh over ('data', 'fsdp', 'tensor'), logical-axis rule tables, and tree shardings.

Parameters and activations carry logical axis names ('embed', 'q_heads', ...). A rule table maps
each logical name to mesh axes; training and rollout use different tables (rollout keeps weights
unsharded over fsdp so decode does not all-gather them every token). A dimension that a mesh axis
does not divide is replicated instead of failing, so tiny test models run on any mesh.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from rlvr_jax.config import ConfigError, DistributedInit, MeshConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

# Training: batch over data x fsdp; weights sharded over fsdp (ZeRO-3 style) and tensor.
TRAIN_RULES: Rules = {
    "batch": ("data", "fsdp"),
    "seq": None,
    "cache_seq": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,  # a scan_layers decoder's stacked layer axis: every device holds all layers' shards
}
# Rollout: weights only tensor-sharded (replicated over data/fsdp), batch over data x fsdp.
ROLLOUT_RULES: Rules = {**TRAIN_RULES, "embed": None}


def maybe_initialize_distributed(cfg: MeshConfig) -> None:
    """Start JAX's multi-controller runtime when configured (or detected); no-op on one host."""
    dist = cfg.distributed
    if dist.init == DistributedInit.never:
        return
    explicit = dist.coordinator_address is not None
    detected = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "JAX_COORDINATOR_ADDRESS"))
    if dist.init == DistributedInit.auto and not (explicit or detected):
        return
    if jax.distributed.is_initialized():
        return
    # CPU processes (tests, CPU clusters) need a cross-process collectives backend; TPU/GPU ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=dist.coordinator_address,
        num_processes=dist.num_processes,
        process_id=dist.process_id,
    )


def resolve_axis_sizes(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Mesh axis sizes with at most one -1 filled by the devices left over (the config checked the sizes
    themselves; what is left is whether they fit this machine's devices, a ConfigError)."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = int(np.prod([s for s in sizes if s != -1]))
    given = f"mesh.data={cfg.data} mesh.fsdp={cfg.fsdp} mesh.tensor={cfg.tensor}"
    if n_devices % known:
        raise ConfigError(
            f"{given}: {n_devices} devices are not divisible by the fixed axes' product {known}; choose sizes whose "
            f"product divides {n_devices} (one of them -1 takes the rest)"
        )
    sizes = [n_devices // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != n_devices:
        raise ConfigError(
            f"{given} uses {np.prod(sizes)} devices, but {n_devices} are present; make the product {n_devices}, "
            "or set one axis to -1"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build the ('data', 'fsdp', 'tensor') mesh with Auto axis types (GSPMD propagation)."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_axis_sizes(cfg, len(devices))
    if devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(
    names: Sequence[str | None], rules: Rules, shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec; replicate dims the mesh axes do not divide."""
    spec: list[MeshAxes] = []
    used: set[str] = set()
    for dim, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        axes = rules[name]
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used)  # a mesh axis may shard one dim only
        if shape is not None and mesh is not None and axes_t:
            size = int(np.prod([mesh.shape[a] for a in axes_t]))
            if shape[dim] % size:
                axes_t = ()
        used.update(axes_t)
        spec.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*spec)


def sharding_for(
    names: Sequence[str | None], mesh: Mesh, rules: Rules, shape: Sequence[int] | None = None
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules, shape, mesh))


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings for a tree: NNX Variables by their `logical_axes` metadata, other leaves replicated.

    Optimizer moments made by `jax.tree.map` over an nnx.State keep the Variables' metadata, so a
    whole TrainState (params, Adam moments, counters) gets its layout from one call.
    """
    from flax import nnx

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, nnx.Variable):
            return replicated(mesh)
        names = getattr(leaf, "logical_axes", None)
        if names is None:
            raise ValueError(f"parameter of shape {leaf.shape} has no logical_axes metadata")
        return leaf.replace(sharding_for(names, mesh, rules, leaf.shape))

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


# Activations: batch over data x fsdp, heads / MLP hidden / vocab over tensor (Megatron-style).
ACTIVATION_RULES: Rules = {**TRAIN_RULES, "embed": None}


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pin an activation's layout under the mesh in context (`jax.set_mesh`); a no-op without one.

    Guides GSPMD where propagation alone picks a layout that needs a full rematerialisation
    (e.g. after the embedding gather from a vocab x fsdp sharded table).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, ACTIVATION_RULES, x.shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def report_sharding(
    params: Any, mesh: Mesh, rules: Rules, say: Any = print, strict: bool = False, shown: int = 8
) -> list[str]:
    """Say, once, which parameter dimensions are replicated because their mesh axes do not divide them
    (`logical_to_spec` replicates those silently); every parameter's resolved spec goes to the debug log.

    strict: raise instead (mesh.strict_sharding). Returns the replicated dimensions, one line each.
    """
    from flax import nnx

    replicated_dims = []
    leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for path, leaf in leaves:
        names = getattr(leaf, "logical_axes", None)
        if names is None:
            continue
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        wanted = logical_to_spec(names, rules)
        resolved = logical_to_spec(names, rules, leaf.shape, mesh)
        log.debug("sharding %s %s %s -> %s", name, tuple(leaf.shape), tuple(names), resolved)
        for dim, (want, got) in enumerate(zip(wanted, resolved)):
            if want is not None and got is None:
                axes = (want,) if isinstance(want, str) else tuple(want)
                size = int(np.prod([mesh.shape[a] for a in axes]))
                if size > 1:
                    replicated_dims.append(
                        f"{name} dim {dim} ({names[dim]}={leaf.shape[dim]} over {'x'.join(axes)}={size})"
                    )
    if not replicated_dims:
        return []
    head = f"mesh {dict(mesh.shape)}: {len(replicated_dims)} parameter dimension(s) not divisible by their mesh axes"
    listed = "; ".join(replicated_dims[:shown]) + (
        f"; ... and {len(replicated_dims) - shown} more" if len(replicated_dims) > shown else ""
    )
    if strict:
        raise ValueError(f"{head} (mesh.strict_sharding=true): {listed}. Choose mesh sizes that divide them.")
    say(f"{head}, replicated there instead: {listed} (set mesh.strict_sharding=true to make this an error)")
    return replicated_dims
