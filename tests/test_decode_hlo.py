"""The compiled decode loop moves no weight and no KV cache: no transposed/copied q/k/v/o (or any other
parameter) and no transposed layer cache per token.

benchmarks/decode_hlo.py classifies every copy/transpose in the decode `while` body; here it runs on a
tiny model (every weight >= 32 KiB, so a weight copy would be classified as one). Positive controls put
the old 3-D q/k/v einsum, or a dot-based decode attention, back and check the same scan does find their
per-step copies, so the assertions cannot pass by finding nothing at all.
"""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from rlvr_jax.model import Arch, decoder

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "decode_hlo.py"
ARCH = Arch.from_hf(
    dict(
        model_type="qwen2",
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        use_sliding_window=False,
    )
)


@pytest.fixture(scope="module")
def decode_hlo():
    spec = importlib.util.spec_from_file_location("decode_hlo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path  # the script puts benchmarks/ and the repo root first
    return module


def _moves(decode_hlo, batch: int) -> dict:
    hlo, cache_bytes, _ = decode_hlo.compiled_decode(ARCH, batch, prompt_len=8, new_tokens=8, dtype=jnp.float32)
    return decode_hlo.summarize(decode_hlo.layout_ops(hlo, cache_bytes))


def _weight_ops(decode_hlo, batch: int) -> dict:
    return _moves(decode_hlo, batch)["weight"]


@pytest.mark.parametrize("batch", [1, 4])
def test_no_weight_or_cache_copy_in_decode_loop(decode_hlo, batch):
    """Neither a weight nor a layer's KV cache is copied or transposed per decode step."""
    moves = _moves(decode_hlo, batch)
    assert moves["weight"] == dict(count=0, bytes=0)
    assert moves["cache"] == dict(count=0, bytes=0)


def test_scan_finds_cache_transposes_of_a_dot_attention(decode_hlo, monkeypatch):
    """Positive control: decode attention as two einsums (the prefill path) makes XLA:CPU transpose a
    layer's cache per step at batch 1; the scan finds those moves."""

    def einsum_attend(q, k, v, key_mask, index):
        b, t, n, h = q.shape
        qg = q.reshape(b, t, k.shape[1], n // k.shape[1], h)
        scores = jnp.einsum("btkrh,bksh->bkrts", qg, k).astype(jnp.float32)
        mask = (jnp.arange(k.shape[2])[None, :] <= index + jnp.arange(t)[:, None])[None] & key_mask[:, None, :].astype(
            bool
        )
        probs = jax.nn.softmax(jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min), axis=-1)
        return jnp.einsum("bkrts,bksh->btkrh", probs.astype(v.dtype), v).reshape(b, t, n, h)

    monkeypatch.setattr(decoder, "_attend", einsum_attend)
    assert _moves(decode_hlo, 1)["cache"]["count"] >= ARCH.num_layers


def test_scan_finds_3d_projection_copies(decode_hlo, monkeypatch):
    def project_3d(self, x, name):  # the einsum before the 2-D views (no bias, no constraint: qwen2 adds the bias)
        y = jnp.einsum("btd,nhd->btnh", x, getattr(self, name)[...].astype(self.dtype))
        return y + getattr(self, f"{name}_bias")[...].astype(self.dtype) if self.arch.qkv_bias else y

    monkeypatch.setattr(decoder.Attention, "_project", project_3d)
    found = _weight_ops(decode_hlo, 1)
    # q, k and v in each layer: at least one weight-sized copy per layer, each >= the smallest (k) weight.
    k_bytes = ARCH.num_kv_heads * ARCH.head_dim * ARCH.hidden_size * 4
    assert found["count"] >= ARCH.num_layers
    assert found["bytes"] >= ARCH.num_layers * k_bytes
