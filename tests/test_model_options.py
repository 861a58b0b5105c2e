"""Model options that change how, not what, the decoder computes: remat and the compute dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, forward, init_params

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


def _loss_and_grad(remat: bool):
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    graphdef, state = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0), remat=remat)

    def loss(params):
        logits = forward(graphdef, params, TOKENS, MASK)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, TOKENS[:, 1:, None], -1))

    return jax.jit(jax.value_and_grad(loss))(state)


def test_remat_keeps_loss_and_gradients():
    (l0, g0), (l1, g1) = _loss_and_grad(False), _loss_and_grad(True)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


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
    arch, _, state = load_policy(cfg.model, mesh, TRAIN_RULES, jax.random.key(0))
    assert arch.model_type == "qwen2" and arch.qkv_bias and arch.tie_word_embeddings
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
