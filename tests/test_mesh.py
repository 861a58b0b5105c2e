"""Mesh construction, logical-axis rules, and parameter shardings."""

import itertools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from rlvr_jax.config import DistributedConfig, DistributedInit, MeshConfig
from rlvr_jax.mesh import (
    MESH_AXES,
    ROLLOUT_RULES,
    TRAIN_RULES,
    logical_to_spec,
    make_mesh,
    maybe_initialize_distributed,
    replicated,
    report_sharding,
    resolve_axis_sizes,
    sharding_for,
    tree_shardings,
)
from rlvr_jax.model import Arch, abstract_model

_BASE = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
# Every optional parameter appears in at least one arch: qkv biases (qwen2), o/mlp biases (llama with
# attention_bias/mlp_bias), qk-norm and an untied head (qwen3), tied embeddings (qwen2).
ARCH_CONFIGS = {
    "qwen2": dict(_BASE, model_type="qwen2", tie_word_embeddings=True),
    "llama": dict(
        _BASE,
        model_type="llama",
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "qwen3": dict(_BASE, model_type="qwen3", head_dim=16, tie_word_embeddings=False),
}


@pytest.fixture(scope="module")
def mesh222():
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


def _params(arch_name):
    _, abstract = abstract_model(Arch.from_hf(ARCH_CONFIGS[arch_name]))
    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(abstract)}


def _flat_axes(spec):
    out = []
    for entry in spec:
        out.extend(entry if isinstance(entry, tuple) else [] if entry is None else [entry])
    return out


# --- axis sizes and meshes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes,n,want",
    [
        ((1, -1, 1), 8, (1, 8, 1)),
        ((2, -1, 2), 8, (2, 2, 2)),
        ((-1, 2, 2), 8, (2, 2, 2)),
        ((2, 2, -1), 8, (2, 2, 2)),
        ((2, 2, 2), 8, (2, 2, 2)),
        ((1, -1, 1), 1, (1, 1, 1)),
        ((4, -1, 1), 4, (4, 1, 1)),
    ],
)
def test_resolve_axis_sizes(sizes, n, want):
    data, fsdp, tensor = sizes
    assert resolve_axis_sizes(MeshConfig(data=data, fsdp=fsdp, tensor=tensor), n) == want


@pytest.mark.parametrize(
    "sizes,n,match",
    [
        ((-1, -1, 1), 8, "at most one"),
        ((-1, 1, -1), 8, "at most one"),
        ((3, -1, 1), 8, "not divisible"),
        ((1, -1, 3), 8, "not divisible"),
        ((2, 2, 1), 8, "8 are present"),
        ((2, 2, 4), 8, "not divisible"),
        ((0, -1, 1), 8, "positive"),
        ((1, -2, 1), 8, "positive"),
    ],
)
def test_resolve_axis_sizes_errors(sizes, n, match):
    data, fsdp, tensor = sizes
    with pytest.raises(ValueError, match=match):
        resolve_axis_sizes(MeshConfig(data=data, fsdp=fsdp, tensor=tensor), n)


def test_make_mesh_222(mesh222):
    assert len(jax.devices()) == 8
    assert mesh222.axis_names == MESH_AXES
    assert dict(mesh222.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh222.axis_types == (AxisType.Auto,) * 3
    assert sorted(d.id for d in mesh222.devices.flat) == sorted(d.id for d in jax.devices())


def test_make_mesh_default_is_all_fsdp():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert mesh.devices.size == 8


def test_make_mesh_device_subset():
    one = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert list(one.devices.flat) == jax.devices()[:1]
    four = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=1), devices=jax.devices()[4:])
    assert dict(four.shape) == {"data": 2, "fsdp": 2, "tensor": 1}
    assert list(four.devices.flat) == jax.devices()[4:]
    assert four.axis_types == (AxisType.Auto,) * 3
    with pytest.raises(ValueError, match="not divisible"):
        make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), devices=jax.devices()[:4])


# --- logical axis rules -------------------------------------------------------------------------


def test_logical_to_spec_mapping():
    assert logical_to_spec(("batch", "seq"), TRAIN_RULES) == P(("data", "fsdp"), None)
    assert logical_to_spec(("vocab", "embed"), TRAIN_RULES) == P("tensor", "fsdp")
    assert logical_to_spec(("vocab", "embed"), ROLLOUT_RULES) == P("tensor", None)
    assert logical_to_spec(("q_heads", "head_dim", "embed"), TRAIN_RULES) == P("tensor", None, "fsdp")
    assert logical_to_spec(("embed", "mlp"), TRAIN_RULES) == P("fsdp", "tensor")
    assert logical_to_spec(("norm",), TRAIN_RULES) == P(None)
    assert logical_to_spec((None, "embed"), TRAIN_RULES) == P(None, "fsdp")
    assert logical_to_spec((), TRAIN_RULES) == P()


def test_logical_to_spec_unknown_name():
    with pytest.raises(KeyError, match="'nonsense'"):
        logical_to_spec(("batch", "nonsense"), TRAIN_RULES)


def test_non_divisible_dims_fall_back_to_replication(mesh222):
    # vocab 3 is not divisible by tensor=2; embed 32 is divisible by fsdp=2.
    assert logical_to_spec(("vocab", "embed"), TRAIN_RULES, (3, 32), mesh222) == P(None, "fsdp")
    assert logical_to_spec(("vocab", "embed"), TRAIN_RULES, (64, 5), mesh222) == P("tensor", None)
    # batch is sharded over data x fsdp (4 devices): 2 rows do not divide, so the dim is replicated.
    assert logical_to_spec(("batch", "seq"), TRAIN_RULES, (2, 7), mesh222) == P(None, None)
    assert logical_to_spec(("batch", "seq"), TRAIN_RULES, (12, 7), mesh222) == P(("data", "fsdp"), None)
    # Without a shape nothing falls back.
    assert logical_to_spec(("vocab", "embed"), TRAIN_RULES) == P("tensor", "fsdp")
    # A replicated dim leaves its mesh axis free for a later dim.
    assert logical_to_spec(("embed", "embed"), TRAIN_RULES, (3, 4), mesh222) == P(None, "fsdp")
    sharding = sharding_for(("vocab", "embed"), mesh222, TRAIN_RULES, (3, 32))
    assert isinstance(sharding, NamedSharding) and sharding.mesh is mesh222 and sharding.spec == P(None, "fsdp")


def test_mesh_axis_used_once_per_spec(mesh222):
    rules = {"a": "fsdp", "b": ("fsdp", "tensor"), "c": "tensor", "d": ("data", "fsdp")}
    assert logical_to_spec(("a", "b"), rules) == P("fsdp", "tensor")
    assert logical_to_spec(("c", "b"), rules) == P("tensor", "fsdp")
    assert logical_to_spec(("a", "a"), rules) == P("fsdp", None)
    assert logical_to_spec(("d", "a", "b"), rules) == P(("data", "fsdp"), None, "tensor")
    assert logical_to_spec(("batch", "embed"), TRAIN_RULES) == P(("data", "fsdp"), None)
    # Exhaustively: no mesh axis appears twice in any spec built from the real rule tables.
    for rules in (TRAIN_RULES, ROLLOUT_RULES):
        for n in (1, 2, 3):
            for names in itertools.product(sorted(rules), repeat=n):
                for shape in (None, (8,) * n):
                    axes = _flat_axes(logical_to_spec(names, rules, shape, mesh222 if shape else None))
                    assert len(axes) == len(set(axes)), (names, axes)
                    assert set(axes) <= set(MESH_AXES)


def test_rollout_rules_do_not_shard_embed():
    assert ROLLOUT_RULES["embed"] is None
    assert {k: v for k, v in ROLLOUT_RULES.items() if k != "embed"} == {
        k: v for k, v in TRAIN_RULES.items() if k != "embed"
    }
    assert TRAIN_RULES["embed"] == "fsdp"
    assert set(ROLLOUT_RULES) == set(TRAIN_RULES)


@pytest.mark.parametrize("arch_name", sorted(ARCH_CONFIGS))
def test_every_parameter_axis_has_a_rule(arch_name):
    params = _params(arch_name)
    names = set()
    for path, var in params.items():
        axes = var.logical_axes
        assert len(axes) == len(var.shape), path
        names.update(a for a in axes if a is not None)
    assert names <= set(TRAIN_RULES), names - set(TRAIN_RULES)
    assert names <= set(ROLLOUT_RULES), names - set(ROLLOUT_RULES)
    assert {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm"} <= names


def test_arches_cover_every_optional_parameter():
    # Guards the coverage of the test above: biases, qk-norm, and an untied head are all present.
    qwen2, llama, qwen3 = (_params(a) for a in ("qwen2", "llama", "qwen3"))
    assert "layers.0.attn.q_bias" in qwen2 and "lm_head" not in qwen2
    for name in (
        "layers.1.attn.k_bias",
        "layers.1.attn.o_bias",
        "layers.0.mlp.gate_bias",
        "layers.0.mlp.down_bias",
        "lm_head",
    ):
        assert name in llama, name
    assert "layers.0.attn.q_norm.scale" in qwen3 and "lm_head" in qwen3


@pytest.mark.parametrize("rules", [TRAIN_RULES, ROLLOUT_RULES], ids=["train", "rollout"])
def test_tree_shardings_of_decoder(mesh222, rules):
    for arch_name in sorted(ARCH_CONFIGS):
        _, abstract = abstract_model(Arch.from_hf(ARCH_CONFIGS[arch_name]))
        shardings = dict(nnx.to_flat_state(tree_shardings(abstract, mesh222, rules)))
        for path, var in nnx.to_flat_state(abstract):
            sharding = shardings[path].get_value()
            assert isinstance(sharding, NamedSharding) and sharding.mesh is mesh222
            assert sharding.spec == logical_to_spec(var.logical_axes, rules, var.shape, mesh222)
            for dim, entry in zip(var.shape, sharding.spec):
                if entry is not None:
                    size = 1
                    for axis in entry if isinstance(entry, tuple) else (entry,):
                        size *= mesh222.shape[axis]
                    assert dim % size == 0
        embed = shardings[("embed",)].get_value().spec
        assert embed == (P("tensor", "fsdp") if rules is TRAIN_RULES else P("tensor", None))


def test_tree_shardings_requires_logical_axes(mesh222):
    state = nnx.State({"w": nnx.Param(jnp.zeros((4, 4)))})
    with pytest.raises(ValueError, match="logical_axes"):
        tree_shardings(state, mesh222, TRAIN_RULES)


def test_replicated_dimensions_are_reported_once_or_refused():
    _, abstract = abstract_model(Arch.from_hf(ARCH_CONFIGS["qwen2"]))  # 2 KV heads
    lines = []
    found = report_sharding(abstract, make_mesh(MeshConfig(data=1, fsdp=2, tensor=4)), TRAIN_RULES, lines.append)
    assert found and all("kv_heads=2 over tensor=4" in f for f in found)
    assert {f.split(" dim")[0] for f in found} >= {"layers.0.attn.k", "layers.1.attn.v"}
    assert len(lines) == 1 and "mesh.strict_sharding=true" in lines[0] and f"{len(found)} parameter" in lines[0]
    with pytest.raises(ValueError, match=r"mesh.strict_sharding=true.*kv_heads=2 over tensor=4"):
        report_sharding(abstract, make_mesh(MeshConfig(data=1, fsdp=2, tensor=4)), TRAIN_RULES, strict=True)
    quiet = []
    assert report_sharding(abstract, make_mesh(MeshConfig(data=1, fsdp=8, tensor=1)), TRAIN_RULES, quiet.append) == []
    assert quiet == []


def test_replicated(mesh222):
    sharding = replicated(mesh222)
    assert sharding.spec == P() and sharding.is_fully_replicated


# --- distributed init ---------------------------------------------------------------------------


def test_distributed_init_is_a_no_op_on_one_host(monkeypatch):
    for var in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    maybe_initialize_distributed(MeshConfig())
    maybe_initialize_distributed(MeshConfig(distributed=DistributedConfig(init=DistributedInit.never)))
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    maybe_initialize_distributed(MeshConfig(distributed=DistributedConfig(init=DistributedInit.never)))
    assert calls == []
    # auto + a detected cluster environment, and `always`, do initialise.
    maybe_initialize_distributed(MeshConfig())
    assert len(calls) == 1
    monkeypatch.delenv("SLURM_JOB_ID")
    maybe_initialize_distributed(
        MeshConfig(
            distributed=DistributedConfig(
                init=DistributedInit.always, coordinator_address="localhost:1234", num_processes=2, process_id=1
            )
        )
    )
    assert calls[-1] == dict(coordinator_address="localhost:1234", num_processes=2, process_id=1)
