"""The decoder against transformers (torch) logits, HF import/export, sharded loading, RoPE, config.json
parsing, checkpoint format errors, and the tokenizer helpers."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
from rlvr_jax.model import (
    Arch,
    ArchError,
    CheckpointFormatError,
    abstract_model,
    forward,
    from_pretrained,
    init_params,
    positions_from_mask,
    save_pretrained,
    state_shardings,
)
from rlvr_jax.model.decoder import RopeTables, apply_rope, rope_inv_freq, rope_tables, swiglu
from rlvr_jax.tokenizer import (
    TokenizerError,
    encode_left_padded,
    load_tokenizer,
    render_prompt,
    stop_token_ids,
)
from tests import hf_fixtures

PARITY_TOL = 1e-4  # JAX f32 vs torch f32
MESH_TOL = 1e-5  # the same JAX model on 1 vs 8 devices

# jit once per (graphdef, input shardings): the graphdef is static and hashable.
_forward = jax.jit(forward, static_argnums=0)


def _batch(vocab: int = hf_fixtures.VOCAB, pad_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A left-padded batch [3, 12]: one full row, one with 5 pads, one with 9 pads."""
    rng = np.random.default_rng(0)
    b, t = 3, 12
    mask = np.zeros((b, t), np.int32)
    for row, length in enumerate((12, 7, 3)):
        mask[row, t - length :] = 1
    tokens = np.where(mask == 1, rng.integers(2, vocab, (b, t)), pad_id).astype(np.int32)
    return tokens, mask


TOKENS, MASK = _batch()
REAL = MASK.astype(bool)


def _logits(graphdef, state, tokens=TOKENS, mask=MASK) -> np.ndarray:
    return np.asarray(_forward(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask)))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| over real (non-pad) positions."""
    return float(np.abs(a - b)[REAL].max())


def _flat(state) -> dict:
    return {".".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def mesh1():
    return make_mesh(MeshConfig(), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def mesh8():
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


@pytest.fixture(scope="module")
def single(hf_model_dir, mesh1):
    """(arch, graphdef, state, logits) of each family loaded on one device, f32."""
    arch, graphdef, state = from_pretrained(hf_model_dir, mesh1, TRAIN_RULES)
    return arch, graphdef, state, _logits(graphdef, state)


@pytest.fixture(scope="module")
def torch_ref(hf_model_dir):
    return hf_fixtures.torch_logits(hf_model_dir, TOKENS, MASK)


def test_positions_from_mask():
    positions = np.asarray(positions_from_mask(jnp.asarray(MASK)))
    assert positions[0].tolist() == list(range(12))
    assert positions[1].tolist() == [0] * 5 + list(range(7))
    assert positions[2].tolist() == [0] * 9 + [0, 1, 2]


# --- parity with transformers -------------------------------------------------------------------


def test_logits_match_transformers(hf_model_dir, single, torch_ref):
    arch, _, state, ours = single
    assert arch.num_params == sum(v.size for v in _flat(state).values())
    assert hf_model_dir.name.startswith(arch.model_type)
    assert ours.shape == torch_ref.shape == (*TOKENS.shape, hf_fixtures.VOCAB)
    assert ours.dtype == np.float32
    assert all(v.dtype == jnp.float32 for v in _flat(state).values())
    assert _max_diff(ours, torch_ref) <= PARITY_TOL
    # Non-trivial logits: the comparison would catch a wrong layer (scale well above the tolerance).
    assert np.abs(torch_ref[REAL]).max() > 1.0
    assert np.abs(np.diff(torch_ref[REAL], axis=0)).max() > 0.1


@pytest.mark.parametrize(
    "family,overrides",
    [
        ("llama", dict(attention_bias=True, mlp_bias=True)),
        ("qwen3", dict(attention_bias=True)),
        ("qwen2", dict(tie_word_embeddings=False)),
        ("llama", dict(tie_word_embeddings=True, num_key_value_heads=4, rope_scaling=None)),
    ],
    ids=["llama-biases", "qwen3-attention-bias", "qwen2-untied", "llama-tied-mha-plain-rope"],
)
def test_logits_match_transformers_variants(tmp_path, tiny_tokenizer_dir, mesh1, family, overrides):
    folder = hf_fixtures.make_hf_model(family, tmp_path / family, seed=1, **overrides)
    arch, graphdef, state = from_pretrained(folder, mesh1, TRAIN_RULES)
    ref = hf_fixtures.torch_logits(folder, TOKENS, MASK)
    assert _max_diff(_logits(graphdef, state), ref) <= PARITY_TOL
    hf_tensors = load_file(folder / "model.safetensors")
    hf_count = sum(a.size for n, a in hf_tensors.items() if not (arch.tie_word_embeddings and n == "lm_head.weight"))
    assert arch.num_params == sum(v.size for v in _flat(state).values()) == hf_count


# --- export -------------------------------------------------------------------------------------


def test_export_round_trip(hf_model_dir, single, tmp_path):
    from transformers import AutoTokenizer

    arch, _, state, ours = single
    out = save_pretrained(tmp_path / "export", arch, state, tokenizer=load_tokenizer(hf_model_dir))
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    # The exported tensors are bit-identical to the original checkpoint's.
    original, exported = load_file(hf_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(exported) == set(original)
    for name, array in original.items():
        assert exported[name].dtype == array.dtype and np.array_equal(exported[name], array), name
    assert Arch.from_dir(out) == arch
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    # transformers loads the folder and computes the same logits.
    assert _max_diff(hf_fixtures.torch_logits(out, TOKENS, MASK), ours) <= PARITY_TOL
    # ...and its tokenizer.
    tok, ref_tok = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(hf_model_dir))
    text = "What is 12 + 30? Hello world."
    assert tok.encode(text) == ref_tok.encode(text) and len(tok.encode(text)) > 3
    assert tok.eos_token_id == ref_tok.eos_token_id and tok.pad_token_id == ref_tok.pad_token_id
    assert tok.chat_template == ref_tok.chat_template


def test_sharded_export_from_sharded_state(hf_model_dir, single, mesh8, mesh1, tmp_path):
    """Export from an 8-device state in several files + index; both loaders read it back."""
    arch, _, state, ours = single
    _, _, state8 = from_pretrained(hf_model_dir, mesh8, TRAIN_RULES)
    out = save_pretrained(tmp_path / "sharded", arch, state8, max_shard_bytes=16 * 1024)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) >= 3 and "model.safetensors" not in files
    assert files == [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    original = load_file(hf_model_dir / "model.safetensors")
    assert set(index["weight_map"]) == set(original)
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in original.values())
    for file in files:
        tensors = load_file(out / file)
        assert {n for n, f in index["weight_map"].items() if f == file} == set(tensors)
        for name, array in tensors.items():
            assert np.array_equal(array, original[name]), name
    # transformers reads the sharded folder...
    assert _max_diff(hf_fixtures.torch_logits(out, TOKENS, MASK), ours) <= PARITY_TOL
    # ...and so do we, to the same parameters.
    arch2, graphdef2, state2 = from_pretrained(out, mesh1, TRAIN_RULES)
    assert arch2 == arch
    reloaded, before = _flat(state2), _flat(state)
    assert set(reloaded) == set(before)
    for name in before:
        assert np.array_equal(np.asarray(reloaded[name]), np.asarray(before[name])), name
    np.testing.assert_array_equal(_logits(graphdef2, state2), ours)


# --- sharded loading ----------------------------------------------------------------------------


@pytest.mark.parametrize("rules", [TRAIN_RULES, ROLLOUT_RULES], ids=["train", "rollout"])
def test_sharded_load_matches_single_device(hf_model_dir, single, mesh8, rules):
    _, _, state1, ours = single
    arch, graphdef, state = from_pretrained(hf_model_dir, mesh8, rules)
    expected = _flat(state_shardings(abstract_model(arch)[1], mesh8, rules))
    params, params1 = _flat(state), _flat(state1)
    for name, value in params.items():
        assert value.sharding == expected[name], name
        assert np.array_equal(np.asarray(value), np.asarray(params1[name])), name
    # Really sharded: the embedding is split over tensor (and fsdp when training).
    embed = params["embed"]
    assert not embed.sharding.is_fully_replicated
    v, d = arch.vocab_size, arch.hidden_size
    want = (v // 2, d // 2) if rules is TRAIN_RULES else (v // 2, d)
    assert {s.data.shape for s in embed.addressable_shards} == {want}
    assert len(embed.addressable_shards) == 8
    assert sum(not p.sharding.is_fully_replicated for p in params.values()) >= 4 * arch.num_layers
    logits = _logits(graphdef, state)
    assert _max_diff(logits, ours) <= MESH_TOL


def test_load_with_every_dim_sharded(qwen2_dir, mesh1, mesh8):
    """Shard dims the built-in rules leave whole (head_dim, norm) so every slice path of the reader runs."""
    rules = {
        **TRAIN_RULES,
        "q_heads": "data",
        "kv_heads": "data",
        "head_dim": "tensor",
        "embed": "fsdp",
        "mlp": ("data", "tensor"),
        "norm": ("fsdp", "tensor"),
        "vocab": ("data", "fsdp", "tensor"),
    }
    _, _, state1 = from_pretrained(qwen2_dir, mesh1, TRAIN_RULES)
    _, _, state8 = from_pretrained(qwen2_dir, mesh8, rules)
    params, params1 = _flat(state8), _flat(state1)
    assert params["layers.0.attn.q"].sharding.spec == jax.P("data", "tensor", "fsdp")
    assert params["layers.0.attn.o"].sharding.spec == jax.P("fsdp", "data", "tensor")
    assert params["layers.0.attn.q_bias"].sharding.spec == jax.P("data", "tensor")
    for name, value in params.items():
        assert np.array_equal(np.asarray(value), np.asarray(params1[name])), name


# --- dtypes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32-compute", "bf16-compute"])
def test_bf16_params_close_to_f32(hf_model_dir, single, mesh1, dtype):
    _, _, state32, ours = single
    _, graphdef, state = from_pretrained(hf_model_dir, mesh1, TRAIN_RULES, param_dtype=jnp.bfloat16, dtype=dtype)
    params, params32 = _flat(state), _flat(state32)
    for name, value in params.items():
        assert value.dtype == jnp.bfloat16, name
        np.testing.assert_array_equal(np.asarray(value), np.asarray(params32[name].astype(jnp.bfloat16)))
    logits = _logits(graphdef, state)
    assert logits.dtype == np.float32
    real, ref = logits[REAL], ours[REAL]
    scale = np.abs(ref).max()
    # bf16 keeps ~3 significant digits: errors are ~1-2% of the logit scale, a wrong weight is ~100%.
    assert np.abs(real - ref).max() <= 0.05 * scale
    assert np.linalg.norm(real - ref) <= 0.03 * np.linalg.norm(ref)
    assert np.abs(real - ref).max() > 0  # really computed in lower precision
    assert (real.argmax(-1) == ref.argmax(-1)).mean() >= 0.8


# --- random init --------------------------------------------------------------------------------


def test_init_params_sharded(mesh8):
    # One layer holds every parameter kind (qk-norm, q/k/v/o biases, untied head) and compiles faster.
    arch = Arch.from_hf(
        dict(hf_fixtures.TINY_CONFIGS["qwen3"], model_type="qwen3", attention_bias=True, num_hidden_layers=1)
    )
    graphdef, state = init_params(arch, mesh8, TRAIN_RULES, jax.random.key(0))
    abstract = abstract_model(arch)[1]
    expected = _flat(state_shardings(abstract, mesh8, TRAIN_RULES))
    shapes = {k: (v.shape, v.dtype) for k, v in _flat(abstract).items()}
    params = _flat(state)
    assert set(params) == set(expected)
    for name, value in params.items():
        # jit may normalise P(None,) to P(): compare the device layouts, not the spec spelling.
        assert value.sharding.is_equivalent_to(expected[name], value.ndim), name
        assert (value.shape, value.dtype) == shapes[name], name
    assert params["embed"].sharding.spec == jax.P("tensor", "fsdp")
    assert params["layers.0.attn.q"].sharding.spec == jax.P("tensor", None, "fsdp")
    assert {s.data.shape for s in params["embed"].addressable_shards} == {(arch.vocab_size // 2, arch.hidden_size // 2)}
    # Norm scales start at one, biases at zero, matrices ~ N(0, 0.02).
    np.testing.assert_array_equal(np.asarray(params["final_norm.scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(params["layers.0.attn.q_norm.scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(params["layers.0.attn.k_bias"]), 0.0)
    np.testing.assert_array_equal(np.asarray(params["layers.0.attn.o_bias"]), 0.0)
    for name in ("embed", "lm_head", "layers.0.attn.q", "layers.0.mlp.down"):
        assert 0.015 < float(np.asarray(params[name]).std()) < 0.025, name
    assert not np.array_equal(np.asarray(params["layers.0.attn.q"])[:2], np.asarray(params["layers.0.attn.k"]))
    # (Each init_params call compiles afresh, ~10 s of XLA:CPU time for the RNG ops, so key
    # determinism is not checked here.)
    logits = _logits(graphdef, state)
    assert logits.shape == (*TOKENS.shape, arch.vocab_size) and np.isfinite(logits).all()
    assert np.abs(logits[REAL]).max() > 0


# --- RoPE ---------------------------------------------------------------------------------------


def test_rope_llama3_matches_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )  # Llama 3.1
    config = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_parameters=rope,
    )
    ref, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    ref = ref.numpy()
    arch = Arch.from_hf(config.to_dict())
    assert arch.rope_scaling is not None and arch.rope_scaling.factor == 8.0
    ours = rope_inv_freq(arch)
    assert ours.shape == ref.shape == (64,) and ours.dtype == np.float32 and attention_factor == 1.0
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)
    # All three regimes (unscaled, smoothed, scaled by 1/factor) occur, so each branch is compared.
    wavelen = 2 * np.pi / (1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128))
    assert (wavelen < 8192 / 4).any() and ((wavelen >= 8192 / 4) & (wavelen <= 8192)).any() and (wavelen > 8192).any()
    plain = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    assert not np.allclose(ref, plain)


def _rope_arch(head_dim: int = 64, theta: float = 1000000.0) -> Arch:
    """A one-layer Qwen2 config with two heads of head_dim and plain RoPE at theta."""
    return Arch.from_hf(
        dict(
            model_type="qwen2",
            vocab_size=8,
            hidden_size=head_dim * 2,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            rope_theta=theta,
        )
    )


@pytest.mark.parametrize("theta,head_dim", [(10000.0, 64), (1000000.0, 128), (500000.0, 8)])
def test_rope_plain_theta(theta, head_dim):
    arch = _rope_arch(head_dim, theta)
    assert arch.rope_scaling is None and arch.head_dim == head_dim
    i = np.arange(head_dim // 2)
    want = 1.0 / theta ** (2 * i / head_dim)
    np.testing.assert_allclose(rope_inv_freq(arch), want, rtol=1e-7, atol=0)


def test_rope_tables_are_cos_and_sin_of_the_f32_angle():
    """The looked-up tables hold cos/sin of the reference's f32 angle (position x inv_freq rounded to f32),
    to f32 rounding, at left-padded positions and at the last slot of a longer cache."""
    arch = _rope_arch()
    positions = jnp.asarray([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [4093, 4094, 4095, 4095, 0]], jnp.int32)
    tables = rope_tables(positions, arch, 4096)
    angles = (np.asarray(positions, np.float32)[..., None] * rope_inv_freq(arch)).astype(np.float64)
    assert tables.cos.shape == tables.sin.shape == (3, 5, 1, 32)
    np.testing.assert_allclose(np.asarray(tables.cos)[:, :, 0], np.cos(angles), rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(tables.sin)[:, :, 0], np.sin(angles), rtol=0, atol=1e-7)


def test_rope_position_outside_the_table_is_nan_not_a_wrong_angle():
    arch = _rope_arch()
    tables = rope_tables(jnp.asarray([[0, 7, 8]], jnp.int32), arch, 8)
    cos = np.asarray(tables.cos)[0, :, 0]
    assert np.isfinite(cos[:2]).all() and np.isnan(cos[2]).all()


def test_rope_rotates_pairs_by_their_angle():
    """Hand-computed: head_dim 4 pairs (x0, x2) and (x1, x3); position p turns each pair by p x inv_freq."""
    arch = _rope_arch(head_dim=4, theta=100.0)
    inv = np.array([1.0, 0.1])  # 1 / 100 ** (0 / 4), 1 / 100 ** (2 / 4)
    x = jnp.asarray([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    out = np.asarray(apply_rope(x, rope_tables(jnp.asarray([[3]]), arch, 4)))[0, 0, 0]
    a = 3 * inv
    want = [1 * np.cos(a[0]) - 3 * np.sin(a[0]), 2 * np.cos(a[1]) - 4 * np.sin(a[1])]
    want += [3 * np.cos(a[0]) + 1 * np.sin(a[0]), 4 * np.cos(a[1]) + 2 * np.sin(a[1])]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert isinstance(rope_tables(jnp.zeros((1, 1), jnp.int32), arch, 1), RopeTables)


def test_compiled_forward_computes_no_sin_or_cos(single):
    """The rotation tables come from a constant: the compiled forward + backward holds no sine or cosine,
    which XLA:CPU otherwise recomputed per head and element inside every layer's rotation."""
    _, graphdef, state, _ = single
    grad = jax.jit(jax.grad(lambda s: forward(graphdef, s, jnp.asarray(TOKENS), jnp.asarray(MASK)).sum()))
    hlo = grad.lower(state).compile().as_text()
    assert " sine(" not in hlo and " cosine(" not in hlo
    control = jax.jit(lambda x: jnp.cos(x) * jnp.sin(x)).lower(jnp.ones(3)).compile().as_text()
    assert " sine(" in control and " cosine(" in control  # the search does find them when they are there


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_swiglu_gradient_matches_autodiff(dtype, tol):
    """The hand-written backward of silu(gate) * up against autodiff of the same expression."""
    keys = jax.random.split(jax.random.key(0), 3)
    gate, up, cotangent = (4 * jax.random.normal(k, (5, 7), jnp.float32).astype(dtype) for k in keys)

    def plain(g, u):
        return jax.nn.silu(g) * u

    ours, vjp_ours = jax.vjp(swiglu, gate, up)
    want, vjp_want = jax.vjp(plain, gate, up)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(want, np.float32))
    for a, b in zip(vjp_ours(cotangent), vjp_want(cotangent), strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


# --- config.json --------------------------------------------------------------------------------

_LLAMA = dict(
    model_type="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=2048,
    eos_token_id=[1, 2],
    bos_token_id=0,
)
_SCALING = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def test_arch_from_hf_rope_layouts():
    v4_type = Arch.from_hf(dict(_LLAMA, rope_theta=500000.0, rope_scaling=dict(_SCALING, type="llama3")))
    v4_rope_type = Arch.from_hf(dict(_LLAMA, rope_theta=500000.0, rope_scaling=dict(_SCALING, rope_type="llama3")))
    v5 = Arch.from_hf(dict(_LLAMA, rope_parameters=dict(_SCALING, rope_type="llama3", rope_theta=500000.0)))
    assert v4_type == v4_rope_type == v5
    assert v5.rope_theta == 500000.0
    assert v5.rope_scaling.factor == 32.0 and v5.rope_scaling.original_max_position_embeddings == 8192
    assert v5.head_dim == 16 and v5.num_kv_heads == 2 and v5.eos_token_ids == (1, 2) and v5.bos_token_id == 0
    # Default rope in both layouts; rope_parameters wins over a stale top-level rope_theta.
    plain4 = Arch.from_hf(dict(_LLAMA, rope_theta=1e6, rope_scaling=None))
    plain5 = Arch.from_hf(dict(_LLAMA, rope_parameters=dict(rope_type="default", rope_theta=1e6), rope_theta=1.0))
    assert plain4 == plain5 and plain5.rope_theta == 1e6 and plain5.rope_scaling is None
    assert Arch.from_hf(dict(_LLAMA)).rope_theta == 10000.0


@pytest.mark.parametrize("family", sorted(hf_fixtures.TINY_CONFIGS))
def test_arch_to_hf_round_trip(family):
    cfg = dict(hf_fixtures.TINY_CONFIGS[family], model_type=family)
    arch = Arch.from_hf(cfg)
    assert Arch.from_hf(json.loads(json.dumps(arch.to_hf()))) == arch
    assert arch.qkv_bias == (family == "qwen2") and arch.qk_norm == (family == "qwen3")
    assert (arch.rope_scaling is not None) == (family == "llama")


def test_arch_from_hf_family_flags():
    llama = Arch.from_hf(dict(_LLAMA, attention_bias=True, mlp_bias=True))
    assert llama.qkv_bias and llama.o_bias and llama.mlp_bias and not llama.qk_norm
    qwen2 = Arch.from_hf(dict(_LLAMA, model_type="qwen2", use_sliding_window=False))
    assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.mlp_bias
    qwen3 = Arch.from_hf(dict(_LLAMA, model_type="qwen3", head_dim=32, attention_bias=True))
    assert qwen3.qk_norm and qwen3.head_dim == 32 and qwen3.qkv_bias and qwen3.o_bias
    assert Arch.from_hf(dict(_LLAMA, num_key_value_heads=None)).num_kv_heads == 4


def test_arch_unsupported_rope_type():
    with pytest.raises(ArchError, match="rope_type 'yarn'"):
        Arch.from_hf(dict(_LLAMA, rope_parameters=dict(rope_type="yarn", rope_theta=1e6, factor=4.0)))
    with pytest.raises(ArchError, match="rope_type 'linear'"):
        Arch.from_hf(dict(_LLAMA, rope_scaling=dict(type="linear", factor=2.0)))
    with pytest.raises(ArchError, match="'low_freq_factor'"):
        Arch.from_hf(
            dict(
                _LLAMA,
                rope_parameters=dict(
                    rope_type="llama3", factor=8.0, high_freq_factor=4.0, original_max_position_embeddings=8192
                ),
            )
        )


def test_arch_unsupported_model_type():
    with pytest.raises(ArchError, match="model_type 'mistral'") as info:
        Arch.from_hf(dict(_LLAMA, model_type="mistral"), source="some/config.json")
    assert "some/config.json" in str(info.value) and "qwen2" in str(info.value)
    with pytest.raises(ArchError, match="model_type None"):
        Arch.from_hf({k: v for k, v in _LLAMA.items() if k != "model_type"})


@pytest.mark.parametrize(
    "field", ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
)
def test_arch_missing_field(field):
    with pytest.raises(ArchError, match=f"required field '{field}' is missing"):
        Arch.from_hf({k: v for k, v in _LLAMA.items() if k != field})


def test_arch_sliding_window_rejected():
    with pytest.raises(ArchError, match="use_sliding_window"):
        Arch.from_hf(dict(_LLAMA, model_type="qwen2", use_sliding_window=True))


def test_arch_invalid_shapes_and_files(tmp_path):
    with pytest.raises(ArchError, match="num_key_value_heads"):
        Arch.from_hf(dict(_LLAMA, num_key_value_heads=3))
    with pytest.raises(ArchError, match="head_dim"):
        Arch.from_hf(dict(_LLAMA, head_dim=15))
    with pytest.raises(ArchError, match="config.json not found"):
        Arch.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.from_dir(tmp_path)


# --- checkpoint format errors -------------------------------------------------------------------


def _copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_tensor(qwen2_dir, tmp_path, mesh1):
    name = "model.layers.1.mlp.up_proj.weight"
    folder = _copy_with(qwen2_dir, tmp_path / "m", lambda t: t.pop(name))
    with pytest.raises(CheckpointFormatError, match=f"tensor {name} is missing") as info:
        from_pretrained(folder, mesh1, TRAIN_RULES)
    assert str(folder) in str(info.value)


def test_wrong_shape_tensor(qwen2_dir, tmp_path, mesh1):
    name = "model.layers.0.self_attn.k_proj.weight"

    def edit(t):
        t[name] = np.zeros((t[name].shape[0] * 2, t[name].shape[1]), np.float32)

    folder = _copy_with(qwen2_dir, tmp_path / "m", edit)
    with pytest.raises(CheckpointFormatError, match=f"tensor {name} has shape \\[32, 32\\].*\\[16, 32\\]"):
        from_pretrained(folder, mesh1, TRAIN_RULES)


def test_unexpected_tensor(qwen2_dir, tmp_path, mesh1):
    name = "model.layers.0.self_attn.o_proj.bias"  # qwen2 has no o_proj bias
    folder = _copy_with(qwen2_dir, tmp_path / "m", lambda t: t.update({name: np.zeros(32, np.float32)}))
    with pytest.raises(CheckpointFormatError, match=f"unexpected tensor {name}"):
        from_pretrained(folder, mesh1, TRAIN_RULES)


def test_ignored_tensors_are_accepted(qwen2_dir, tmp_path, mesh1):
    """HF rotary buffers and a tied model's duplicate lm_head are not parameters of ours."""

    def edit(t):
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()

    folder = _copy_with(qwen2_dir, tmp_path / "m", edit)
    arch, _, state = from_pretrained(folder, mesh1, TRAIN_RULES)
    assert arch.tie_word_embeddings and "lm_head" not in _flat(state)


def test_folder_without_safetensors(qwen2_dir, tmp_path, mesh1):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(qwen2_dir / "config.json", folder / "config.json")
    with pytest.raises(CheckpointFormatError, match="no model.safetensors"):
        from_pretrained(folder, mesh1, TRAIN_RULES)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(CheckpointFormatError, match="model-00001-of-00002.safetensors is listed in the index"):
        from_pretrained(folder, mesh1, TRAIN_RULES)


# --- tokenizers ---------------------------------------------------------------------------------


def test_qwen25_vocabulary(tmp_path):
    from tests.qwen_vocab import SPECIAL_IDS, build_qwen25_tokenizer

    tok = load_tokenizer(build_qwen25_tokenizer(tmp_path / "qwen"))
    assert tok.encode("Hello", add_special_tokens=False) == [9707]
    assert tok.encode("<|im_start|>", add_special_tokens=False) == [151644]
    assert tok.encode("Hello world!", add_special_tokens=False) == [9707, 1879, 0]
    assert len(tok) == 151665
    for text, want in SPECIAL_IDS.items():
        assert tok.convert_tokens_to_ids(text) == want
    assert tok.padding_side == "left" and tok.pad_token_id == 151643
    assert set(stop_token_ids(tok)) == {151645}
    prompt = render_prompt(tok, "What is 2+2?")
    ids, mask = encode_left_padded(tok, [prompt], max_len=64)
    real = ids[0][mask[0] == 1].tolist()
    assert real[0] == 151644 and real[-3:-2] == [151644] and tok.decode(real) == prompt


@pytest.fixture(scope="module")
def tiny_tok(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def test_load_tokenizer(tiny_tok, tmp_path):
    assert tiny_tok.padding_side == "left"
    assert tiny_tok.eos_token_id == 0 and tiny_tok.pad_token_id == 1
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_load_tokenizer_pads_with_eos_when_no_pad(tiny_tok, tmp_path):
    tiny_tok.save_pretrained(str(tmp_path / "tok"))
    config_file = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token")
    config_file.write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.pad_token_id == tok.eos_token_id == 0


def test_render_prompt(tiny_tok):
    assert render_prompt(tiny_tok, "What is 2+2?") == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        render_prompt(tiny_tok, "What is 2+2?", use_chat_template=False, plain_template="Q: {prompt}\nA:")
        == "Q: What is 2+2?\nA:"
    )
    assert render_prompt(tiny_tok, "x", use_chat_template=False) == "x"


def test_render_prompt_without_chat_template(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    tok.chat_template = None
    assert render_prompt(tok, "What is 2+2?", plain_template="Problem: {prompt}\nAnswer:") == (
        "Problem: What is 2+2?\nAnswer:"
    )


def test_encode_left_padded(tiny_tok):
    texts = ["What is 12 + 30?", "Hello"]
    want = [tiny_tok.encode(t, add_special_tokens=False) for t in texts]
    assert len(want[0]) > len(want[1]) >= 1
    ids, mask = encode_left_padded(tiny_tok, texts)
    width = len(want[0])
    assert ids.shape == mask.shape == (2, width) and ids.dtype == mask.dtype == np.int32
    assert ids[0].tolist() == want[0] and mask[0].tolist() == [1] * width
    pad = width - len(want[1])
    assert ids[1].tolist() == [tiny_tok.pad_token_id] * pad + want[1]
    assert mask[1].tolist() == [0] * pad + [1] * len(want[1])
    # A fixed width pads every row on the left.
    ids, mask = encode_left_padded(tiny_tok, texts, max_len=width + 3)
    assert ids.shape == (2, width + 3)
    assert ids[0].tolist() == [tiny_tok.pad_token_id] * 3 + want[0] and mask[0].sum() == width


def test_encode_left_padded_too_long(tiny_tok):
    text = "What is 12 + 30? The answer is 42."
    n = len(tiny_tok.encode(text, add_special_tokens=False))
    with pytest.raises(ValueError, match=f"{n} tokens.*max_prompt_len={n - 2}"):
        encode_left_padded(tiny_tok, [text, "Hello"], max_len=n - 2)
    ids, mask = encode_left_padded(tiny_tok, [text, "Hello"], max_len=n - 2, truncate=True)
    assert ids.shape == (2, n - 2) and mask[0].tolist() == [1] * (n - 2)
    assert ids[0].tolist() == tiny_tok.encode(text, add_special_tokens=False)[2:]  # the end is kept
    hello = tiny_tok.encode("Hello", add_special_tokens=False)
    assert ids[1].tolist()[-len(hello) :] == hello


def test_stop_token_ids(tiny_tok):
    im_end = tiny_tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tiny_tok.eos_token_id
    stops = stop_token_ids(tiny_tok)
    assert set(stops) == {tiny_tok.eos_token_id, im_end} and list(stops) == sorted(stops)
    assert set(stop_token_ids(tiny_tok, extra=[7])) == {tiny_tok.eos_token_id, im_end, 7}
