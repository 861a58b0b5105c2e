"""NNX decoder for the Llama 3.x / Qwen2 / Qwen2.5 / Qwen3 family.

Dimension alphabet (names, einsums, comments): B batch, T tokens, S cache slots, D model, N query
heads, K kv heads, R = N/K query heads per kv head, H head dim, F MLP hidden, V vocab.

Weights keep the Hugging Face `[out, in]` layout (q: [N, H, D], gate: [F, D], ...): loading is a
reshape, never a transpose, and decode-shaped matmuls read `[out, in]` weights faster on CPU
(docs/platform.md). Every parameter carries `logical_axes` metadata that `mesh.py` maps to mesh axes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from rlvr_jax.mesh import constrain
from rlvr_jax.model.arch import Arch

_INIT_STD = 0.02


@struct.dataclass
class LayerCache:
    k: jax.Array  # [B, K, S, H]
    v: jax.Array  # [B, K, S, H]


KVCache = tuple[LayerCache, ...]


def _param(
    rngs: nnx.Rngs | None, shape: Sequence[int], axes: tuple[str, ...], dtype: jnp.dtype, fill: float | None = None
) -> nnx.Param:
    """A parameter with logical axis names; random normal unless `fill` is given."""
    if fill is not None:
        value = jnp.full(shape, fill, dtype)
    else:
        value = (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, size: int, eps: float, param_dtype: jnp.dtype):
        self.scale = _param(None, (size,), ("norm",), param_dtype, fill=1.0)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # Normalise in f32 like the reference, then scale in the compute dtype.
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] times an `[out, in]` weight: [..., out], contracted as a 2-D [rows, in] view.

    Why 2-D: with 3-D activations ("btd,fd->btf") the weight gradient contracts over two axes (b, t),
    and XLA:CPU then wrote the upstream gradient in a transposed copy fused into the elementwise
    backward (silu's, in the MLP): 15.7 % of the op time of the peer workload's 22.8M update. A
    [B*T, D] view (a free reshape) keeps every dot of forward and backward in plain matrix form: that
    update's op time went 14.2 -> 9.0 s a step, and an isolated MLP's forward + backward on
    [64, 80, 512] 0.79 -> 0.45 s (README, Performance).
    """
    y = jnp.einsum("ni,oi->no", x.reshape(-1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], w.shape[0])


@functools.lru_cache(maxsize=16)
def rope_inv_freq(arch: Arch) -> np.ndarray:
    """Inverse frequencies [H/2], with Llama 3 frequency-dependent scaling when configured."""
    h = arch.head_dim
    inv = 1.0 / (arch.rope_theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
    sc = arch.rope_scaling
    if sc is None:
        return inv.astype(np.float32)
    low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
    high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / sc.factor, inv)
    smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
        sc.high_freq_factor - sc.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


@struct.dataclass
class RopeTables:
    """cos and sin of every position's rotation angles, [B, T, 1, H/2] (the 1 broadcasts over heads)."""

    cos: jax.Array
    sin: jax.Array


@functools.lru_cache(maxsize=32)
def _rope_table(arch: Arch, num_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [P, H/2] of positions 0..P-1: the angle rounded to f32 as the reference computes it,
    its cos and sin rounded once from f64."""
    angles = np.arange(num_positions, dtype=np.float32)[:, None] * rope_inv_freq(arch)
    return np.cos(angles.astype(np.float64)).astype(np.float32), np.sin(angles.astype(np.float64)).astype(np.float32)


def rope_tables(positions: jax.Array, arch: Arch, num_positions: int) -> RopeTables:
    """The rotation tables for integer positions [B, T] in [0, num_positions), looked up once per forward
    in a constant table and shared by every layer; a position out of range gets NaN, never a wrong angle.

    Why a lookup: with cos and sin computed in the graph, XLA:CPU fused them into each layer's rotation
    of q and k (forward and backward) and recomputed them per head and element: 8.4 % of the op time of
    the peer workload's 22.8M update (README, Performance). It removes a barrier before fusion, and a
    conditional with equal branches, so neither keeps them apart."""
    cos, sin = (
        jnp.take(table, positions, axis=0, mode="fill", fill_value=np.nan) for table in _rope_table(arch, num_positions)
    )
    return RopeTables(cos=cos[:, :, None, :], sin=sin[:, :, None, :])


def apply_rope(x: jax.Array, rope: RopeTables) -> jax.Array:
    """Rotate-half RoPE on x [B, T, heads, H] with the tables of its positions."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * rope.cos - x2 * rope.sin, x2 * rope.cos + x1 * rope.sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, arch: Arch, rngs: nnx.Rngs, param_dtype: jnp.dtype, dtype: jnp.dtype):
        n, k, h, d = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.hidden_size
        self.q = _param(rngs, (n, h, d), ("q_heads", "head_dim", "embed"), param_dtype)
        self.k = _param(rngs, (k, h, d), ("kv_heads", "head_dim", "embed"), param_dtype)
        self.v = _param(rngs, (k, h, d), ("kv_heads", "head_dim", "embed"), param_dtype)
        self.o = _param(rngs, (d, n, h), ("embed", "q_heads", "head_dim"), param_dtype)
        if arch.qkv_bias:
            self.q_bias = _param(None, (n, h), ("q_heads", "head_dim"), param_dtype, fill=0.0)
            self.k_bias = _param(None, (k, h), ("kv_heads", "head_dim"), param_dtype, fill=0.0)
            self.v_bias = _param(None, (k, h), ("kv_heads", "head_dim"), param_dtype, fill=0.0)
        if arch.o_bias:
            self.o_bias = _param(None, (d,), ("embed",), param_dtype, fill=0.0)
        if arch.qk_norm:
            self.q_norm = RMSNorm(h, arch.rms_norm_eps, param_dtype)
            self.k_norm = RMSNorm(h, arch.rms_norm_eps, param_dtype)
        self.arch = arch
        self.dtype = dtype

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        w = getattr(self, name)[...].astype(self.dtype)
        heads, h, d = w.shape
        # A 2-D [heads*H, D] view (a free reshape of the row-major [heads, H, D] weight): XLA's dot
        # canonicalisation transposes a 3-D operand into a [D, heads*H] copy, which inside the decode
        # loop re-reads and re-writes the weight every step; a 2-D weight is used in place.
        y = dense(x, w.reshape(heads * h, d)).reshape(*x.shape[:2], heads, h)
        if self.arch.qkv_bias:
            y = y + getattr(self, f"{name}_bias")[...].astype(self.dtype)
        return constrain(y, ("batch", None, "q_heads" if name == "q" else "kv_heads", None))

    def __call__(
        self, x: jax.Array, rope: RopeTables, key_mask: jax.Array, cache: LayerCache | None, index: jax.Array | int
    ) -> tuple[jax.Array, LayerCache | None]:
        """x [B, T, D] at cache slots index..index+T-1; key_mask [B, S] marks slots holding tokens."""
        q, k, v = (self._project(x, name) for name in ("q", "k", "v"))
        if self.arch.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        # K and V live as [B, K, S, H], the layout both attention contractions read as they are: a
        # [B, S, K, H] cache was transposed in full, per layer, every decode step (25 MB a step for
        # 16 MB of weights at batch 64 in benchmarks/decode_hlo.py). Only the T new rows move here.
        k, v = (jnp.swapaxes(x, 1, 2) for x in (k, v))
        if cache is not None:
            start = (0, 0, index, 0)
            k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start)
            cache = LayerCache(k=k, v=v)
        out = _attend(q, k.astype(self.dtype), v.astype(self.dtype), key_mask, index)
        o = self.o[...].astype(self.dtype)
        # The same 2-D view for o ([D, N*H]): no per-step transposed copy of the weight.
        y = dense(out.reshape(*out.shape[:2], -1), o.reshape(o.shape[0], -1))
        if self.arch.o_bias:
            y = y + self.o_bias[...].astype(self.dtype)
        return constrain(y, ("batch", None, None)), cache


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, index: jax.Array | int) -> jax.Array:
    """Causal GQA attention of q [B, T, N, H] over k, v [B, K, S, H]; softmax in f32."""
    b, t, n, h = q.shape
    kv_heads = k.shape[1]
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h)
    if t == 1:
        # One query per row (a decode step): a batched matrix-vector product that reads the cache
        # once; as a multiply + reduce it reads K in place, where XLA:CPU's dot transposes K to
        # [H, S] for batch 1 every step.
        scores = jnp.sum(qg[:, 0, :, :, None, :] * k[:, :, None], axis=-1)[:, :, :, None]
        scores = scores.astype(jnp.float32) / math.sqrt(h)
    else:
        scores = jnp.einsum("btkrh,bksh->bkrts", qg, k).astype(jnp.float32) / math.sqrt(h)
    query_slot = index + jnp.arange(t)
    causal = jnp.arange(k.shape[2])[None, :] <= query_slot[:, None]  # [T, S]
    mask = causal[None, :, :] & key_mask[:, None, :].astype(bool)  # [B, T, S]
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if t == 1:  # the same for the weighted sum of V: [B, K, R, S] x [B, K, S, H] read in place
        out = jnp.sum(probs[:, :, :, 0, :, None] * v[:, :, None], axis=-2)[:, None]
    else:
        out = jnp.einsum("bkrts,bksh->btkrh", probs, v)
    return out.reshape(b, t, n, h)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, with a hand-written backward that keeps only gate and up.

    Why: autodiff kept three more [rows, F] arrays from inside silu for the backward
    (`jax.ad_checkpoint.print_saved_residuals`), each a pass over memory written and read again; this
    backward recomputes sigmoid(gate) instead (README, Performance: with the RoPE table, the peer
    workload's 22.8M update ran 1.03-1.11x faster). It computes in the inputs' dtype, as autodiff did."""
    return jax.nn.silu(gate) * up


def _swiglu_forward(gate: jax.Array, up: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return swiglu(gate, up), (gate, up)


def _swiglu_backward(saved: tuple[jax.Array, jax.Array], grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    gate, up = saved
    sig = jax.nn.sigmoid(gate)
    # d silu(g) / dg = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
    return grad * up * sig * (1 + gate * (1 - sig)), grad * gate * sig


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


class MLP(nnx.Module):
    def __init__(self, arch: Arch, rngs: nnx.Rngs, param_dtype: jnp.dtype, dtype: jnp.dtype):
        d, f = arch.hidden_size, arch.intermediate_size
        self.gate = _param(rngs, (f, d), ("mlp", "embed"), param_dtype)
        self.up = _param(rngs, (f, d), ("mlp", "embed"), param_dtype)
        self.down = _param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        if arch.mlp_bias:
            self.gate_bias = _param(None, (f,), ("mlp",), param_dtype, fill=0.0)
            self.up_bias = _param(None, (f,), ("mlp",), param_dtype, fill=0.0)
            self.down_bias = _param(None, (d,), ("embed",), param_dtype, fill=0.0)
        self.bias = arch.mlp_bias
        self.dtype = dtype

    def _linear(self, x: jax.Array, name: str) -> jax.Array:
        y = dense(x, getattr(self, name)[...].astype(self.dtype))
        return y + getattr(self, f"{name}_bias")[...].astype(self.dtype) if self.bias else y

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = swiglu(self._linear(x, "gate"), self._linear(x, "up"))
        hidden = constrain(hidden, ("batch", None, "mlp"))
        return constrain(self._linear(hidden, "down"), ("batch", None, None))


class Block(nnx.Module):
    def __init__(self, arch: Arch, rngs: nnx.Rngs, param_dtype: jnp.dtype, dtype: jnp.dtype):
        self.attn_norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, param_dtype)
        self.attn = Attention(arch, rngs, param_dtype, dtype)
        self.mlp_norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, param_dtype)
        self.mlp = MLP(arch, rngs, param_dtype, dtype)

    def __call__(
        self, x: jax.Array, rope: RopeTables, key_mask: jax.Array, cache: LayerCache | None, index: jax.Array | int
    ) -> tuple[jax.Array, LayerCache | None]:
        attn_out, cache = self.attn(self.attn_norm(x), rope, key_mask, cache, index)
        x = x + attn_out
        return x + self.mlp(self.mlp_norm(x)), cache


def _run_block(block: Block, x, rope, key_mask, cache, index):
    return block(x, rope, key_mask, cache, index)


# What a rematerialised layer keeps for the backward pass beyond its input (model.remat). The linear
# layers contract 2-D [rows, in] views (`dense`): dots without batch dimensions, so "save_linear" keeps
# exactly their outputs; attention's scores and p.v contract per (batch, head) and are recomputed.
REMAT_POLICIES = {"full": None, "save_linear": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_mode(remat: bool | str | None) -> str | None:
    """model.remat as a policy name: None (no remat), "full" (true) or "save_linear"."""
    if remat is None or remat is False:
        return None
    mode = "full" if remat is True else getattr(remat, "value", remat)
    if mode not in REMAT_POLICIES:
        raise ValueError(f"model.remat: {remat!r} is not one of false, true, {', '.join(REMAT_POLICIES)}")
    return mode


LAYER_AXIS = "layers"  # the leading axis of a scan_layers decoder's stacked layer parameters


def stacked_blocks(arch: Arch, rngs: nnx.Rngs, param_dtype: jnp.dtype, dtype: jnp.dtype) -> Block:
    """One Block whose parameters carry a leading [L] axis (named `layers`, never sharded): what
    `lax.scan` runs, one slice per layer."""

    @nnx.split_rngs(splits=arch.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> Block:
        return Block(arch, rngs, param_dtype, dtype)

    blocks = make(rngs)
    for _, var in nnx.to_flat_state(nnx.state(blocks)):
        var.set_metadata(logical_axes=(LAYER_AXIS, *var.logical_axes))
    return blocks


class Decoder(nnx.Module):
    """Token ids -> f32 logits, optionally through a KV cache."""

    def __init__(
        self,
        arch: Arch,
        rngs: nnx.Rngs,
        param_dtype: jnp.dtype = jnp.float32,
        dtype: jnp.dtype = jnp.float32,
        remat: bool | str = False,
        scan_layers: bool = False,
    ):
        self.embed = _param(rngs, (arch.vocab_size, arch.hidden_size), ("vocab", "embed"), param_dtype)
        if scan_layers:
            self.layers = stacked_blocks(arch, rngs, param_dtype, dtype)
        else:
            self.layers = nnx.List([Block(arch, rngs, param_dtype, dtype) for _ in range(arch.num_layers)])
        self.final_norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, param_dtype)
        if not arch.tie_word_embeddings:
            self.lm_head = _param(rngs, (arch.vocab_size, arch.hidden_size), ("vocab", "embed"), param_dtype)
        self.arch = arch
        self.dtype = dtype
        self.remat = remat_mode(remat)  # a policy name (static in the graph), checked here
        self.scan_layers = scan_layers

    def hidden_states(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        cache: KVCache | None = None,
        index: jax.Array | int = 0,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, D] (and the updated cache). Positions lie in [0, T) without a
        cache and in [0, S) with one (RoPE's table has that many rows; outside it, NaN)."""
        # Gather D in full first (the FSDP weight all-gather): a lookup from a D-sharded table would
        # come out sharded on D and need a full rematerialisation to reach the batch layout.
        table = constrain(self.embed[...], ("vocab", None))
        x = constrain(jnp.take(table, tokens, axis=0).astype(self.dtype), ("batch", None, None))
        # Every position is below the sequence length (no cache) or the cache's slot count.
        rope = rope_tables(positions, self.arch, tokens.shape[1] if cache is None else cache[0].k.shape[2])
        if self.scan_layers:
            if cache is not None:
                raise ValueError("a scan_layers decoder runs without a KV cache: sample with `to_per_layer` weights")
            return self.final_norm(self._scan(x, rope, key_mask)), None
        run = nnx.remat(_run_block, policy=REMAT_POLICIES[self.remat]) if self.remat else _run_block
        new_cache = []
        for i, block in enumerate(self.layers):
            x, layer_cache = run(block, x, rope, key_mask, None if cache is None else cache[i], index)
            new_cache.append(layer_cache)
        return self.final_norm(x), (None if cache is None else tuple(new_cache))

    def _scan(self, x: jax.Array, rope: RopeTables, key_mask: jax.Array) -> jax.Array:
        """The stacked layers under `lax.scan`: one layer is traced and compiled whatever the depth, and
        the optimizer sees one [L, ...] leaf per weight instead of L leaves."""
        graphdef, params = nnx.split(self.layers)

        def body(x, layer_params):
            return nnx.merge(graphdef, layer_params)(x, rope, key_mask, None, 0)[0], None

        body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat]) if self.remat else body
        return jax.lax.scan(body, x, params)[0]

    def head_weight(self) -> jax.Array:
        """The output projection [V, D] in the compute dtype (the embedding when tied)."""
        head = self.embed if self.arch.tie_word_embeddings else self.lm_head
        return head[...].astype(self.dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """f32 logits [B, T, V] from hidden states [B, T, D]."""
        return head_logits(hidden, self.head_weight())

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        cache: KVCache | None = None,
        index: jax.Array | int = 0,
    ) -> tuple[jax.Array, KVCache | None]:
        hidden, cache = self.hidden_states(tokens, positions, key_mask, cache, index)
        return self.logits(hidden), cache


def head_logits(hidden: jax.Array, head: jax.Array) -> jax.Array:
    """Logits [B, T, V] in at least f32 (bf16 compute still gets f32 log-softmax)."""
    logits = dense(hidden, head)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def init_cache(arch: Arch, batch: int, slots: int, dtype: jnp.dtype) -> KVCache:
    shape = (batch, arch.num_kv_heads, slots, arch.head_dim)  # [B, K, S, H]
    return tuple(LayerCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype)) for _ in range(arch.num_layers))


def to_per_layer(state: nnx.State) -> nnx.State:
    """A scan_layers decoder's parameters in the per-layer tree (`layers.{i}...`) that the unrolled decoder,
    the sampler, the HF writer and the name tables use; a per-layer tree comes back as it is."""
    flat = nnx.to_flat_state(state)
    if not any(path[0] == "layers" and not isinstance(path[1], int) for path, _ in flat):
        return state
    out = []
    for path, var in flat:
        if path[0] != "layers":
            out.append((path, var))
            continue
        axes = var.logical_axes[1:]
        value = var.get_value()
        out += [(("layers", i, *path[1:]), var.replace(value[i], logical_axes=axes)) for i in range(value.shape[0])]
    return nnx.from_flat_state(out)


def to_stacked(state: nnx.State) -> nnx.State:
    """Per-layer parameters stacked into a scan_layers decoder's tree (`layers...` with a leading [L])."""
    flat = nnx.to_flat_state(state)
    layers: dict[tuple, list] = {}
    out = []
    for path, var in flat:
        if path[0] == "layers" and isinstance(path[1], int):
            layers.setdefault(path[2:], []).append((path[1], var))
        else:
            out.append((path, var))
    for rest, items in layers.items():
        items.sort(key=lambda item: item[0])
        first = items[0][1]
        value = jnp.stack([var.get_value() for _, var in items])
        out.append((("layers", *rest), first.replace(value, logical_axes=(LAYER_AXIS, *first.logical_axes))))
    return nnx.from_flat_state(out)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions [B, T] for a left-padded batch: the first real token is at 0, padding at 0."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
