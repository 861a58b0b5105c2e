"""Host-level helpers for JAX's multi-controller runtime (every host runs this same program).

Data enters as each process's own rows and leaves the same way: `global_rows` turns process-local
rows into one global array sharded over the batch axes (process p holds rows [p * B/P, (p+1) * B/P),
the layout the prompt pipeline produces), `local_rows` gives a process its rows of a global
row-sharded array back as numpy (for reward scoring and logging). Host-side values that feed a
decision or a log line are combined with `allgather_objects` / `sum_over_processes`. With one
process every helper is the identity or a plain device transfer.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rlvr_jax.mesh import Rules, sharding_for


def global_rows(local: np.ndarray, mesh: Mesh, rules: Rules) -> jax.Array:
    """Process-local rows [b, ...] -> the global array [b * P, ...] with rows over the batch axes."""
    local = np.asarray(local)
    shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
    sharding = sharding_for(("batch",) + (None,) * (local.ndim - 1), mesh, rules, shape)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, shape)


def global_tree(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    return jax.tree.map(lambda x: global_rows(x, mesh, rules), tree)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array whose first axis is sharded over processes (or replicated)."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if x.ndim == 0:  # a replicated scalar: every process holds it whole
        return np.asarray(x.addressable_shards[0].data)
    blocks: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        start = (shard.index[0].start or 0) if x.ndim else 0
        blocks.setdefault(start, np.asarray(shard.data))  # replicas along other axes hold the same rows
    return np.concatenate([blocks[k] for k in sorted(blocks)], axis=0)


def local_tree(tree: Any) -> Any:
    return jax.tree.map(local_rows, tree)


def allgather_objects(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([payload.size]))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(rows, sizes)]


def sum_over_processes(values: dict[str, float]) -> dict[str, float]:
    parts = allgather_objects(values)
    return {k: float(sum(p[k] for p in parts)) for k in values}


def sync(name: str) -> None:
    """Barrier across processes (no-op on one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def folder_is_shared(folder: Any, name: str) -> bool:
    """Whether every process sees the same `folder` (a shared disk, or processes on one machine).

    A collective. When it is False the folder is host-local (a run directory in a bucket keeps its
    dataset builds and warm start in each host's local cache), and every process must write its own
    copy instead of reading what process 0 wrote.
    """
    if jax.process_count() == 1:
        return True
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".rlvr-jax-shared-{name}"
    token = allgather_objects(os.urandom(8).hex())[0]  # process 0's, known to all
    if jax.process_index() == 0:
        marker.write_text(token)
    sync(f"rlvr_jax_shared_{name}_written")
    seen = marker.is_file() and marker.read_text() == token
    shared = all(allgather_objects(seen))
    if jax.process_index() == 0:
        marker.unlink()
    return shared
