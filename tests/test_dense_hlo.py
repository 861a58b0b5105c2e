"""The training backward of a linear layer writes no transposed copy of its activations.

`decoder.dense` contracts a 2-D [rows, in] view. Written as a 3-D einsum ("btd,fd->btf"), the weight
gradient contracts over (b, t) and XLA:CPU writes the MLP's upstream gradient as an [F, B*T] transposed
copy fused into silu's backward (15.7 % of the peer workload's 22.8M update; README, Performance). The
test compiles an MLP's gradient and looks for any copy, transpose or fusion producing an [F, B*T] array;
the positive control puts the 3-D einsum back and checks the same scan finds those copies.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rlvr_jax.model import Arch, decoder
from tests.hf_fixtures import TINY_CONFIGS

B, T, D, F = 8, 80, 64, 128
# The shared tiny Qwen2 config, with the MLP sizes whose [F, B*T] copy the scan looks for.
ARCH = Arch.from_hf(dict(TINY_CONFIGS["qwen2"], model_type="qwen2", hidden_size=D, intermediate_size=F))
TRANSPOSED = re.compile(rf"= f32\[{F},{B * T}\]\{{[0-9,]*\}} (fusion|copy|transpose)\(")


def mlp_grad_hlo() -> str:
    mlp = decoder.MLP(ARCH, nnx.Rngs(0), jnp.float32, jnp.float32)
    graphdef, params = nnx.split(mlp)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)))
    return grad.lower(params, jnp.ones((B, T, D))).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layout choice")
def test_mlp_backward_writes_no_transposed_activation_copy():
    assert not TRANSPOSED.findall(mlp_grad_hlo())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layout choice")
def test_positive_control_a_3d_einsum_does_write_them(monkeypatch):
    monkeypatch.setattr(decoder, "dense", lambda x, w: jnp.einsum("...i,oi->...o", x, w))
    assert TRANSPOSED.findall(mlp_grad_hlo())
