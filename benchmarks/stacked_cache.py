"""A decode loop's KV cache per layer, or stacked [L, ...]: compile time, copies and step time on XLA:CPU.

The sampler keeps one K and one V cache per layer, so its decode loop carries 2L buffers and compiles
every layer. A stacked cache would carry two whatever the depth. This measures what XLA:CPU makes of
the stacked one in a stand-alone loop shaped like the sampler's (per-layer weights, one query per row,
the update written in place with `dynamic_update_slice`, attention as a multiply-reduce over the cache),
against the same loop with per-layer caches:

    python benchmarks/stacked_cache.py      # one JSON line: compile s, cache-sized copies, step ms
"""

from __future__ import annotations

import json
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

L, B, K, R, S, H, D = 10, 64, 2, 5, 96, 64, 640  # layers, rows, kv heads, q per kv, slots, head dim, hidden


def weights(key: jax.Array) -> list[tuple[jax.Array, ...]]:
    def w(i: int, shape: tuple[int, ...]) -> jax.Array:
        return 0.02 * jax.random.normal(jax.random.fold_in(key, i), shape)

    return [(w(3 * i, (K * R * H, D)), w(3 * i + 1, (2 * K * H, D)), w(3 * i + 2, (D, K * R * H))) for i in range(L)]


def attend(x: jax.Array, w: tuple[jax.Array, ...], k_all: jax.Array, v_all: jax.Array, at: tuple) -> tuple:
    """One layer's step: write this token's k, v at `at` of the given cache arrays, attend over the
    layer's slice (the whole array when per layer), project back."""
    wq, wkv, wo = w
    q = (x @ wq.T).reshape(B, K, R, H)
    kv = (x @ wkv.T).reshape(B, 2, K, 1, H)
    stacked = k_all.ndim == 5
    new_k, new_v = (kv[None, :, 0], kv[None, :, 1]) if stacked else (kv[:, 0], kv[:, 1])
    k_all = jax.lax.dynamic_update_slice(k_all, new_k, at)
    v_all = jax.lax.dynamic_update_slice(v_all, new_v, at)
    k, v = (k_all[at[0]], v_all[at[0]]) if stacked else (k_all, v_all)
    p = jax.nn.softmax(jnp.sum(q[:, :, :, None, :] * k[:, :, None], axis=-1), axis=-1)
    out = jnp.sum(p[..., None] * v[:, :, None], axis=-2).reshape(B, K * R * H)
    return x + out @ wo.T, k_all, v_all


def per_layer_loop(ws, x, caches):
    def body(i, carry):
        x, caches = carry
        new = []
        for layer, (k, v) in enumerate(caches):
            x, k, v = attend(x, ws[layer], k, v, (0, 0, i, 0))
            new.append((k, v))
        return jnp.tanh(x), tuple(new)

    return jax.lax.fori_loop(0, S, body, (x, caches))


def stacked_loop(ws, x, k_all, v_all):
    def body(i, carry):
        x, k_all, v_all = carry
        for layer in range(L):
            x, k_all, v_all = attend(x, ws[layer], k_all, v_all, (layer, 0, 0, i, 0))
        return jnp.tanh(x), k_all, v_all

    return jax.lax.fori_loop(0, S, body, (x, k_all, v_all))


def main() -> None:
    key = jax.random.key(0)
    ws, x = weights(key), jax.random.normal(key, (B, D))
    fresh = {
        "per_layer": lambda: (tuple((jnp.zeros((B, K, S, H)), jnp.zeros((B, K, S, H))) for _ in range(L)),),
        "stacked": lambda: (jnp.zeros((L, B, K, S, H)), jnp.zeros((L, B, K, S, H))),
    }
    loops = {"per_layer": (per_layer_loop, (2,)), "stacked": (stacked_loop, (2, 3))}
    result, outputs, compiled = {}, {}, {}
    for name, (fn, donate) in loops.items():
        start = time.perf_counter()
        compiled[name] = jax.jit(fn, donate_argnums=donate).lower(ws, x, *fresh[name]()).compile()
        hlo = compiled[name].as_text()
        cache_copies = len(re.findall(r"= f32\[[\d,]*96,64\]\{[^}]*\} (?:copy|transpose)\(", hlo))
        result[name] = {"compile_s": time.perf_counter() - start, "cache_sized_copies": cache_copies, "times": []}
    for _ in range(5):  # alternate, so a busy neighbour lands on both
        for name in loops:
            caches = fresh[name]()
            start = time.perf_counter()
            outputs[name] = jax.block_until_ready(compiled[name](ws, x, *caches))
            result[name]["times"].append(time.perf_counter() - start)
    np.testing.assert_allclose(outputs["per_layer"][0], outputs["stacked"][0], rtol=1e-5, atol=1e-5)
    for row in result.values():
        row["step_ms"] = 1e3 * statistics.median(row.pop("times")) / S
    shape = dict(layers=L, rows=B, kv_heads=K, q_per_kv=R, slots=S, head_dim=H, hidden=D)
    print(json.dumps({"shape": shape, **result, "jax": jax.__version__}))


if __name__ == "__main__":
    main()
