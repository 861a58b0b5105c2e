"""Model options that change how, not what, the decoder computes: remat, scan over layers, the compute dtype."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, abstract_model, forward, init_params, to_per_layer, to_stacked

ARCH = Arch(
    model_type="qwen2",
    vocab_size=48,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qkv_bias=True,
    tie_word_embeddings=True,
)
TOKENS = np.array([[1, 1, 5, 6, 7, 8], [2, 3, 4, 5, 6, 7]], np.int32)
MASK = (TOKENS != 1).astype(np.int32)


def _loss_and_grad(remat: bool, scan_layers: bool = False, arch: Arch = ARCH):
    """Loss and gradients of one fixed per-layer initialisation (stacked for a scan_layers decoder)."""
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    _, state = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0))
    graphdef, _ = abstract_model(arch, remat=remat, scan_layers=scan_layers)
    state = to_stacked(state) if scan_layers else state

    def loss(params):
        logits = forward(graphdef, params, TOKENS, MASK)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, TOKENS[:, 1:, None], -1))

    return jax.jit(jax.value_and_grad(loss))(state)


@pytest.mark.parametrize("remat", [True, "save_linear"])
def test_remat_keeps_loss_and_gradients(remat):
    (l0, g0), (l1, g1) = _loss_and_grad(False), _loss_and_grad(remat)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_save_linear_remat_recomputes_only_attention(scan_layers):
    """The gradient program's matmuls (lowered, before XLA's optimisations): "save_linear" adds exactly
    attention's two per layer (scores and p.v, recomputed; the linear layers' outputs are kept); full
    remat recomputes the linear layers whose outputs the backward pass needs as well."""
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])

    def dots(remat) -> int:
        graphdef, state = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0), remat=remat, scan_layers=scan_layers)
        grad = jax.jit(jax.grad(lambda p: forward(graphdef, p, TOKENS, MASK).mean()))
        return grad.lower(state).as_text().count("stablehlo.dot_general")

    none, linear, full = dots(False), dots("save_linear"), dots(True)
    layers = 1 if scan_layers else ARCH.num_layers  # a scanned program traces one layer
    assert linear - none == 2 * layers
    # full remat recomputes q, k, v, o (the residual after attention feeds the MLP's norm), gate and up;
    # not down: the backward pass needs its input, never its output
    assert full - linear == 6 * layers


def test_remat_accepts_a_policy_name_and_refuses_others():
    assert nnx.merge(*abstract_model(ARCH, remat="save_linear")).remat == "save_linear"
    assert nnx.merge(*abstract_model(ARCH, remat=True)).remat == "full"
    assert nnx.merge(*abstract_model(ARCH, remat=False)).remat is None
    with pytest.raises(ValueError, match="model.remat: 'some' is not one of false, true, full, save_linear"):
        abstract_model(ARCH, remat="some")


DEEPER = dataclasses.replace(ARCH, num_layers=3, qk_norm=True)


@pytest.mark.parametrize("remat", [False, True, "save_linear"])
def test_scan_over_layers_keeps_params_loss_and_gradients(remat):
    """The scanned decoder runs the same weights, stacked, to the same loss and the same gradients (one
    [L, ...] leaf per weight, whose layer i is the unrolled decoder's layer-i gradient)."""
    (l0, g0), (l1, g1) = _loss_and_grad(False, arch=DEEPER), _loss_and_grad(remat, True, DEEPER)
    assert dict(nnx.to_flat_state(g1))[("layers", "attn", "q")].get_value().shape[0] == DEEPER.num_layers
    g1 = to_per_layer(g1)
    assert jax.tree.structure(g0) == jax.tree.structure(g1)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scan_over_layers_program_does_not_grow_with_depth():
    """The traced program of a scanned decoder holds one layer's matmuls whatever the depth (only the
    stacking of the weights grows with it); the unrolled program's grow with the layer count."""

    def size(layers: int, scan: bool) -> int:
        arch = dataclasses.replace(ARCH, num_layers=layers)
        mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
        graphdef, state = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0), scan_layers=scan)
        return str(jax.make_jaxpr(lambda p: forward(graphdef, p, TOKENS, MASK))(state)).count("dot_general")

    scanned, unrolled = [size(n, True) for n in (2, 12)], [size(n, False) for n in (2, 12)]
    assert scanned[0] == scanned[1] > 0
    per_layer = unrolled[0] - scanned[0]  # 2 unrolled layers vs one traced layer: one layer's matmuls
    assert per_layer > 0 and unrolled[1] - unrolled[0] == 10 * per_layer


@pytest.mark.parametrize("mesh_cfg", [MeshConfig(), MeshConfig(data=2, fsdp=2, tensor=2)])
def test_random_init_is_sharded_and_seeded(mesh_cfg):
    mesh = make_mesh(mesh_cfg)
    _, a = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0))
    _, b = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0))
    _, c = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(1))
    for x, y, _z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(x, y)
    q = nnx.to_flat_state(a)
    q = dict(q)[("layers", 0, "attn", "q")].get_value()
    assert not np.array_equal(q, dict(nnx.to_flat_state(c))[("layers", 0, "attn", "q")].get_value())
    if mesh.size > 1:
        assert q.sharding.spec == jax.sharding.PartitionSpec("tensor", None, "fsdp")
        assert q.addressable_shards[0].data.shape == (4 // mesh.shape["tensor"], 8, 32 // mesh.shape["fsdp"])


def test_bfloat16_compute_close_to_float32():
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    g32, s32 = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0))
    g16, s16 = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(s16))
    l32 = np.asarray(forward(g32, s32, TOKENS, MASK))
    l16 = np.asarray(forward(g16, s16, TOKENS, MASK))
    assert l16.dtype == np.float32
    scale = np.abs(l32).max()
    assert np.abs(l32 - l16)[MASK.astype(bool)].max() <= 0.05 * scale


def test_load_policy_from_config(qwen2_dir):
    from rlvr_jax.config import load_config
    from rlvr_jax.model import ArchError, load_policy

    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    cfg = load_config(None, [f"model.path={qwen2_dir}"])
    arch, graphdef, state = load_policy(cfg.model, mesh, TRAIN_RULES, jax.random.key(0))
    assert arch.model_type == "qwen2" and arch.qkv_bias and arch.tie_word_embeddings
    assert not nnx.merge(graphdef, state).scan_layers
    scanned = load_policy(
        load_config(None, [f"model.path={qwen2_dir}", "model.scan_layers=true"]).model,
        mesh,
        TRAIN_RULES,
        jax.random.key(0),
    )
    assert nnx.merge(scanned[1], scanned[2]).scan_layers  # the config reaches the decoder every step merges
    for a, b in zip(jax.tree.leaves(to_per_layer(scanned[2])), jax.tree.leaves(state)):  # the files' weights, stacked
        np.testing.assert_array_equal(a, b)
    cfg = load_config(
        None,
        [
            "model.arch={model_type: llama, vocab_size: 40, hidden_size: 16, intermediate_size: 32,"
            " num_hidden_layers: 1, num_attention_heads: 2}",
            "model.param_dtype=bfloat16",
        ],
    )
    arch, _, state = load_policy(cfg.model, mesh, TRAIN_RULES, jax.random.key(0))
    assert arch.num_kv_heads == 2 and arch.head_dim == 8
    assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype(jnp.bfloat16)}
    with pytest.raises(ArchError, match="model.path"):
        load_policy(load_config().model, mesh, TRAIN_RULES, jax.random.key(0))
    with pytest.raises(ArchError, match="required field .num_attention_heads"):
        load_policy(load_config(None, ["model.arch={model_type: qwen2}"]).model, mesh, TRAIN_RULES, jax.random.key(0))


def test_a_scan_layers_model_is_sharded_and_exports_the_files_tensors(qwen2_dir, tmp_path):
    """Loaded with scan_layers, the weights are stacked [L, ...] and sharded like each layer's (the layer
    axis unsharded); exported again, the files hold exactly the tensors they were loaded from."""
    from safetensors.numpy import load_file

    from rlvr_jax.model import from_pretrained, save_pretrained

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    arch, _, state = from_pretrained(qwen2_dir, mesh, TRAIN_RULES, scan_layers=True)
    q = dict(nnx.to_flat_state(state))[("layers", "attn", "q")].get_value()
    assert q.shape[0] == arch.num_layers
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", None, "fsdp")
    save_pretrained(tmp_path, arch, state)
    before = {k: v for f in sorted(qwen2_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
    after = load_file(tmp_path / "model.safetensors")
    assert set(after) <= set(before) and any(".layers.1." in k for k in after)
    for name, tensor in after.items():
        np.testing.assert_array_equal(tensor, before[name], err_msg=name)
