"""Hugging Face safetensors import/export through one declarative name table.

Each row maps our parameter path to the HF tensor name and says which of our dims merge into each HF
dim (our q is [N, H, D], HF q_proj.weight is [N*H, D]): loading and saving are reshapes only. Tensors
are read shard by shard (`jax.make_array_from_callback`), so each host reads only the slices its own
devices hold and full parameters never sit on one device.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from rlvr_jax.model.arch import Arch
from rlvr_jax.model.decoder import to_per_layer

log = logging.getLogger(__name__)

Merge = tuple[tuple[int, ...], ...]
_ROW = ((0,), (1,))  # same layout
_HEADS_IN = ((0, 1), (2,))  # [N, H, D] <- [N*H, D]
_HEADS_OUT = ((0,), (1, 2))  # [D, N, H] <- [D, N*H]
_HEAD_BIAS = ((0, 1),)  # [N, H] <- [N*H]
_VEC = ((0,),)

# (our path, HF tensor name, merge groups); {i} is the layer index.
NAME_TABLE: tuple[tuple[str, str, Merge], ...] = (
    ("embed", "model.embed_tokens.weight", _ROW),
    ("lm_head", "lm_head.weight", _ROW),
    ("final_norm.scale", "model.norm.weight", _VEC),
    ("layers.{i}.attn_norm.scale", "model.layers.{i}.input_layernorm.weight", _VEC),
    ("layers.{i}.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight", _VEC),
    ("layers.{i}.attn.q", "model.layers.{i}.self_attn.q_proj.weight", _HEADS_IN),
    ("layers.{i}.attn.k", "model.layers.{i}.self_attn.k_proj.weight", _HEADS_IN),
    ("layers.{i}.attn.v", "model.layers.{i}.self_attn.v_proj.weight", _HEADS_IN),
    ("layers.{i}.attn.o", "model.layers.{i}.self_attn.o_proj.weight", _HEADS_OUT),
    ("layers.{i}.attn.q_bias", "model.layers.{i}.self_attn.q_proj.bias", _HEAD_BIAS),
    ("layers.{i}.attn.k_bias", "model.layers.{i}.self_attn.k_proj.bias", _HEAD_BIAS),
    ("layers.{i}.attn.v_bias", "model.layers.{i}.self_attn.v_proj.bias", _HEAD_BIAS),
    ("layers.{i}.attn.o_bias", "model.layers.{i}.self_attn.o_proj.bias", _VEC),
    ("layers.{i}.attn.q_norm.scale", "model.layers.{i}.self_attn.q_norm.weight", _VEC),
    ("layers.{i}.attn.k_norm.scale", "model.layers.{i}.self_attn.k_norm.weight", _VEC),
    ("layers.{i}.mlp.gate", "model.layers.{i}.mlp.gate_proj.weight", _ROW),
    ("layers.{i}.mlp.up", "model.layers.{i}.mlp.up_proj.weight", _ROW),
    ("layers.{i}.mlp.down", "model.layers.{i}.mlp.down_proj.weight", _ROW),
    ("layers.{i}.mlp.gate_bias", "model.layers.{i}.mlp.gate_proj.bias", _VEC),
    ("layers.{i}.mlp.up_bias", "model.layers.{i}.mlp.up_proj.bias", _VEC),
    ("layers.{i}.mlp.down_bias", "model.layers.{i}.mlp.down_proj.bias", _VEC),
)
# HF tensors that carry no parameters of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointFormatError(ValueError):
    """A safetensors folder that does not match config.json; the message names the tensor."""


class NonFiniteWeightsError(CheckpointFormatError):
    """Loaded weights hold NaN or inf (a damaged download, a diverged export); the message names the tensor."""


def name_map(arch: Arch, state: nnx.State) -> dict[tuple[Any, ...], tuple[str, Merge]]:
    """Our state path -> (HF name, merge groups), for exactly the parameters `state` holds."""
    table: dict[str, tuple[str, Merge]] = {}
    for ours, hf, merge in NAME_TABLE:
        layers = range(arch.num_layers) if "{i}" in ours else [None]
        for i in layers:
            table[ours.format(i=i)] = (hf.format(i=i), merge)
    out = {}
    for path, _ in nnx.to_flat_state(state):
        dotted = ".".join(str(p) for p in path)
        if dotted not in table:
            raise KeyError(f"parameter {dotted} has no entry in hf_io.NAME_TABLE")
        out[path] = table[dotted]
    return out


def hf_shape(shape: tuple[int, ...], merge: Merge) -> tuple[int, ...]:
    return tuple(math.prod(shape[d] for d in group) for group in merge)


class SafetensorsReader:
    """Lazy reader over one `model.safetensors` or a sharded folder with its index json."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._handles: dict[Path, Any] = {}
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.is_file():
            self.file_of = {name: self.folder / file for name, file in _weight_map(index).items()}
        elif single.is_file():
            self.file_of = dict.fromkeys(self._handle_of(single).keys(), single)
        else:
            raise CheckpointFormatError(
                f"{self.folder}: no model.safetensors or model.safetensors.index.json (expected HF safetensors)"
            )
        for file in set(self.file_of.values()):
            if not file.is_file():
                raise CheckpointFormatError(f"{file} is listed in the index but missing")

    def names(self) -> set[str]:
        return set(self.file_of)

    def _handle(self, name: str) -> Any:
        return self._handle_of(self.file_of[name])

    def _handle_of(self, file: Path) -> Any:
        if file not in self._handles:
            self._handles[file] = _open(file)
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        tensor = self._handle(name).get_slice(name)
        return np.asarray(tensor[index] if index else tensor[:])

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()


def _open(file: Path) -> Any:
    """An open safetensors file; a truncated or damaged one (the header is checked against the file's
    size on open) is an error naming the file."""
    try:
        return safe_open(file, framework="flax").__enter__()
    except (SafetensorError, OSError) as err:
        raise CheckpointFormatError(
            f"{file} is not a readable safetensors file ({err}): it is truncated or damaged; download or export it again"
        ) from err


def _weight_map(index: Path) -> dict[str, str]:
    """The tensor -> file table of a sharded checkpoint's index json."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:  # JSON, UTF-8, a missing or misplaced weight_map
        raise CheckpointFormatError(
            f"{index} is not a safetensors index (a JSON object with weight_map): {err!r}"
        ) from err
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointFormatError(f"{index}: weight_map must map tensor names to file names")
    return weight_map


def _read_shard(
    reader: SafetensorsReader,
    name: str,
    shape: tuple[int, ...],
    merge: Merge,
    index: tuple[slice, ...],
    dtype: np.dtype,
) -> np.ndarray:
    """Read the part of HF tensor `name` that lands in our shard `index` (slices over our dims)."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    hf_index, after = [], []
    for group in merge:
        lead, rest = group[0], group[1:]
        start, stop, _ = index[lead].indices(shape[lead])
        inner = math.prod(shape[d] for d in rest)
        hf_index.append(slice(start * inner, stop * inner))
        after.extend([slice(None)] + [index[d] for d in rest])
    block = reader.read(name, tuple(hf_index))
    local = [len(range(*index[d].indices(shape[d]))) if d == g[0] else shape[d] for g in merge for d in g]
    return block.reshape(local)[tuple(after)].astype(dtype)


def load_state(folder: str | Path, arch: Arch, abstract: nnx.State, shardings: nnx.State) -> nnx.State:
    """Fill `abstract` (shapes/dtypes) from HF safetensors straight into `shardings`."""
    reader = SafetensorsReader(folder)
    try:
        mapping = name_map(arch, abstract)
        available = reader.names()
        _check_names(folder, arch, mapping, available)
        flat_shard = dict(nnx.to_flat_state(shardings))
        loaded = []
        for path, var in nnx.to_flat_state(abstract):
            name, merge = mapping[path]
            shape, dtype = tuple(var.shape), np.dtype(var.dtype)
            found = reader.shape(name)
            if found != hf_shape(shape, merge):
                raise CheckpointFormatError(
                    f"{folder}: tensor {name} has shape {list(found)}, but config.json implies "
                    f"{list(hf_shape(shape, merge))}; the weights do not match the config"
                )
            sharding = flat_shard[path].get_value()
            array = jax.make_array_from_callback(
                shape, sharding, lambda idx, n=name, s=shape, m=merge, d=dtype: _read_shard(reader, n, s, m, idx, d)
            )
            loaded.append((path, var.replace(array)))
        return nnx.from_flat_state(loaded)
    finally:
        reader.close()


def check_finite(folder: str | Path, arch: Arch, state: nnx.State) -> None:
    """Refuse weights holding NaN or inf, naming the first such tensor. Counted on device in one jitted
    pass (each device reduces its own shards; only one integer per tensor comes back to the host), so
    it costs about one read of the weights."""
    count = jax.jit(lambda s: jax.tree.map(lambda x: jnp.sum(~jnp.isfinite(x), dtype=jnp.int32), s))
    flat = dict(nnx.to_flat_state(state))
    counts = jax.device_get({path: v.get_value() for path, v in nnx.to_flat_state(count(state))})
    bad = [(name, int(counts[path]), flat[path].get_value().size) for path, (name, _) in name_map(arch, state).items()]
    bad = [b for b in bad if b[1]]
    if bad:
        name, n, size = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(
            f"{folder}: tensor {name} has {n} of {size} values NaN or inf{more}; the weights are damaged "
            "(download or export them again), or load them anyway with model.allow_nonfinite=true "
            "(rlvr-jax generate / eval: --allow-nonfinite)"
        )


def _check_names(folder: str | Path, arch: Arch, mapping: dict, available: set[str]) -> None:
    wanted = {name for name, _ in mapping.values()}
    missing = sorted(wanted - available)
    if missing:
        raise CheckpointFormatError(
            f"{folder}: tensor {missing[0]} is missing from the safetensors files"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; check that config.json matches the weights"
        )
    extra = sorted(
        n
        for n in available - wanted
        if not n.endswith(_IGNORED_SUFFIXES) and not (arch.tie_word_embeddings and n == "lm_head.weight")
    )
    if extra:
        raise CheckpointFormatError(
            f"{folder}: unexpected tensor {extra[0]}"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + f"; config.json describes a {arch.model_type} model without it"
        )


def _host_arrays(arch: Arch, state: nnx.State) -> Iterator[tuple[str, np.ndarray]]:
    from jax.experimental import multihost_utils

    flat = dict(nnx.to_flat_state(state))
    for path, (name, merge) in name_map(arch, state).items():
        value = flat[path].get_value()
        if not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        host = np.asarray(jax.device_get(value))
        yield name, host.reshape(hf_shape(host.shape, merge))


def save_pretrained(
    folder: str | Path,
    arch: Arch,
    state: nnx.State,
    tokenizer: Any = None,
    max_shard_bytes: int = 4 << 30,
    write: bool | None = None,
) -> Path:
    """Write config.json + safetensors (+ index when sharded) + tokenizer that `transformers` loads.

    Every process must call it (the arrays are gathered); `write` (default: process 0 only) says which
    processes write the files."""
    from safetensors.flax import save_file

    folder = Path(folder)
    tensors = dict(_host_arrays(arch, to_per_layer(state)))  # a scan_layers tree as the files' layers
    if not (jax.process_index() == 0 if write is None else write):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    cpu = jax.local_devices(backend="cpu")[0]  # this process's own (devices("cpu")[0] is process 0's)
    for file, shard in zip(files, shards):
        save_file({n: jax.device_put(a, cpu) for n, a in shard.items()}, str(folder / file), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
            "weight_map": {n: f for f, s in zip(files, shards) for n in s},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = arch.to_hf()
    config["dtype"] = str(jnp.dtype(next(iter(tensors.values())).dtype))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
