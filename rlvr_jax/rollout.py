"""Jitted rollout: a prefill, then a `lax.while_loop` decode over an explicit, donated sampler state.

Randomness is per sequence: each sequence's key is folded from (rollout key, global prompt index,
sample index) and then with the decode step, so what a prompt draws does not depend on the batch it
sits in, the mesh, or the host count. Shapes are static; nothing syncs with the host inside.
With live-row compaction (rollout.compact_rows) the decode runs in stretches, each on a smaller batch
of the still-live rows: the same tokens, fewer row-steps, one host sync per stretch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh

from rlvr_jax.config import RolloutConfig
from rlvr_jax.mesh import Rules, replicated, sharding_for
from rlvr_jax.model import (
    KVCache,
    LayerCache,
    abstract_model,
    init_cache,
    positions_from_mask,
    rollout_dtype,
    state_shardings,
    to_per_layer,
)
from rlvr_jax.model.arch import Arch
from rlvr_jax.types import PromptBatch, Rollout


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    max_new_tokens: int  # M
    group_size: int = 1  # G samples per prompt
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    stop_on_eos: bool = True  # False: always generate max_new_tokens (benchmarks)
    # Record the entropy of the un-tempered next-token distribution at every generated position
    # (evaluation's eval/entropy). Off for training rollouts, whose traced graph stays as it was.
    entropy: bool = False
    # Live-row compaction (rollout.compact_rows): 0 runs every row until the longest is done; k > 0
    # drops finished rows whenever at least 1/k of the batch has finished (see `compacting_decode`).
    compact_rows: int = 0

    @classmethod
    def from_config(cls, cfg: RolloutConfig, stop_ids: tuple[int, ...], pad_id: int) -> SamplingSpec:
        return cls(
            max_new_tokens=cfg.max_new_tokens,
            group_size=cfg.group_size,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            stop_ids=tuple(stop_ids),
            pad_id=pad_id,
            stop_on_eos=cfg.stop_on_eos,
            compact_rows=cfg.compact_rows,
        )


@struct.dataclass
class SamplerState:
    cache: KVCache  # per layer [B*G, K, S, H], S = P + M
    key_mask: jax.Array  # i32[B*G, S]: prompt mask, then ones for generated slots
    prompt_lens: jax.Array  # i32[B*G]: real prompt tokens (position of the first new token)
    seq_keys: jax.Array  # key[B*G]
    tokens: jax.Array  # i32[B*G, M]
    logp: jax.Array  # f32[B*G, M]
    done: jax.Array  # bool[B*G]
    eos: jax.Array  # bool[B*G]
    lengths: jax.Array  # i32[B*G]
    step: jax.Array  # i32[]: tokens generated so far
    entropy: jax.Array | None = None  # f32[B*G, M] when sampling.entropy, else None


def sequence_keys(key: jax.Array, prompt_index: jax.Array, group_size: int) -> jax.Array:
    """key[B*G]: row b*G + g is fold_in(fold_in(key, prompt_index[b]), g)."""
    per_prompt = jax.vmap(lambda i: jax.random.fold_in(key, i))(prompt_index)
    per_sample = jax.vmap(lambda k: jax.vmap(lambda g: jax.random.fold_in(k, g))(jnp.arange(group_size)))(per_prompt)
    return per_sample.reshape(-1)


def filter_logits(logits: jax.Array, sampling: SamplingSpec) -> jax.Array:
    """Tempered logits [B, V] with everything outside the top-k / top-p set at -inf."""
    scaled = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = jax.lax.top_k(scaled, sampling.top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Smallest set whose mass reaches top_p: keep a token while the mass before it is < top_p.
        threshold = jnp.min(jnp.where(mass_before < sampling.top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
    return scaled


_BLOCK = 128  # inverse-CDF search: vocabulary blocks of this many tokens


def inverse_cdf_draw(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One token i32[B] per row from softmax(logits [B, V]), from one uniform per row: the first token
    whose cumulative probability exceeds u * total.

    `jax.random.categorical` draws a Gumbel for every vocabulary entry, V threefry hashes a row, which
    was most of a batch-64 decode step on CPU. Here the search is two-level, because a cumulative sum
    over V lowers to a slow reduce-window: the cumulative mass of V/128 block sums picks the block,
    then that block's 128 cumulative sums pick the token. Resolution: u has 24 random bits, so a token
    below about 6e-8 of the mass is drawn less often than its probability (Gumbel-max in f32 has a like
    floor, about 1e-8). A token of probability exactly 0 (outside top-k / top-p) is never drawn.
    """
    b, v = logits.shape
    pad = -v % _BLOCK
    logits = jnp.pad(logits.astype(jnp.float32), ((0, 0), (0, pad)), constant_values=-jnp.inf)
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)).reshape(b, -1, _BLOCK)
    block_mass = weights.sum(axis=-1)  # [B, V/128]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    u = jax.vmap(jax.random.uniform)(keys) * block_cdf[:, -1]
    block = _first_above(block_cdf, u[:, None], block_mass > 0)
    before = jnp.where(
        block > 0, jnp.take_along_axis(block_cdf, jnp.maximum(block - 1, 0)[:, None], axis=-1)[:, 0], 0.0
    )
    inside = jnp.take_along_axis(weights, block[:, None, None], axis=1)[:, 0]  # [B, 128]
    offset = _first_above(jnp.cumsum(inside, axis=-1), (u - before)[:, None], inside > 0)
    return (block * _BLOCK + offset).astype(jnp.int32)


def _first_above(cdf: jax.Array, u: jax.Array, positive: jax.Array) -> jax.Array:
    """Per row, the first index whose cumulative mass exceeds u among entries of positive mass; where
    rounding leaves none above u (u within an ulp of the total), the last entry of positive mass."""
    hit = (cdf > u) & positive
    last = positive.shape[-1] - 1 - jnp.argmax(positive[:, ::-1], axis=-1)
    return jnp.where(hit.any(axis=-1), jnp.argmax(hit, axis=-1), last)


def sample_tokens(
    logits: jax.Array, keys: jax.Array, step: jax.Array, sampling: SamplingSpec
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(token i32[B], log pi(token) f32[B] under the un-tempered policy: PPO's logp_old, and the
    un-tempered distribution's entropy f32[B] when sampling.entropy, else None)."""
    if sampling.temperature == 0.0:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        token = inverse_cdf_draw(step_keys, filter_logits(logits, sampling))
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, token[:, None], axis=-1)[:, 0]
    # The log-softmax is already there for logp: the exact entropy costs one more pass over V.
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1) if sampling.entropy else None
    return token, logp, entropy


def _record(
    state: SamplerState, token: jax.Array, logp: jax.Array, sampling: SamplingSpec, entropy: jax.Array | None = None
) -> SamplerState:
    """Write the step's token (pad once a sequence is done) and update the stop bookkeeping."""
    live = ~state.done
    token = jnp.where(live, token, sampling.pad_id)
    col = state.step
    hit_stop = live & jnp.isin(token, jnp.asarray(sampling.stop_ids or (-1,), jnp.int32)) & sampling.stop_on_eos
    if entropy is not None:
        state = state.replace(entropy=state.entropy.at[:, col].set(jnp.where(live, entropy, 0.0)))
    return state.replace(
        tokens=state.tokens.at[:, col].set(token),
        logp=state.logp.at[:, col].set(jnp.where(live, logp, 0.0)),
        lengths=state.lengths + live.astype(jnp.int32),
        eos=state.eos | hit_stop,
        done=state.done | hit_stop,
        step=state.step + 1,
    )


def prefill(model: nnx.Module, prompts: PromptBatch, key: jax.Array, sampling: SamplingSpec) -> SamplerState:
    """Run the prompts once, copy the cache G times, and sample the first token of every sequence."""
    b, p = prompts.tokens.shape
    g, m = sampling.group_size, sampling.max_new_tokens
    cache = init_cache(model.arch, b, p + m, model.dtype)
    key_mask = jnp.concatenate([prompts.mask, jnp.ones((b, m), prompts.mask.dtype)], axis=1)
    positions = positions_from_mask(prompts.mask)
    # Only the last position is sampled: project it alone, so no backend materialises [B, P, V] logits.
    hidden, cache = model.hidden_states(prompts.tokens, positions, key_mask, cache, 0)
    logits = model.logits(hidden[:, -1:])
    repeat = lambda x: jnp.repeat(x, g, axis=0)  # noqa: E731  row b*G + g belongs to prompt b
    n = b * g
    state = SamplerState(
        cache=jax.tree.map(repeat, cache),
        key_mask=repeat(key_mask),
        prompt_lens=repeat(prompts.mask.sum(axis=1).astype(jnp.int32)),
        seq_keys=sequence_keys(key, prompts.index, g),
        tokens=jnp.full((n, m), sampling.pad_id, jnp.int32),
        logp=jnp.zeros((n, m), jnp.float32),
        done=jnp.zeros((n,), bool),
        eos=jnp.zeros((n,), bool),
        lengths=jnp.zeros((n,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        entropy=jnp.zeros((n, m), jnp.float32) if sampling.entropy else None,
    )
    token, logp, entropy = sample_tokens(repeat(logits[:, -1]), state.seq_keys, state.step, sampling)
    return _record(state, token, logp, sampling, entropy)


def decode(model: nnx.Module, state: SamplerState, sampling: SamplingSpec, floor: int = 0) -> SamplerState:
    """Generate until every sequence stopped or max_new_tokens; exits early when all are done, or once
    no more than `floor` rows are still live (the compacting sampler then moves them to a smaller batch)."""
    prompt_len = state.key_mask.shape[1] - sampling.max_new_tokens

    def cond(s: SamplerState) -> jax.Array:
        return (s.step < sampling.max_new_tokens) & (live_rows(s) > floor)

    def body(s: SamplerState) -> SamplerState:
        prev = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)  # [B*G, 1]
        positions = (s.prompt_lens + s.step - 1)[:, None]
        logits, cache = model(prev, positions, s.key_mask, s.cache, prompt_len + s.step - 1)
        s = s.replace(cache=cache)
        token, logp, entropy = sample_tokens(logits[:, 0], s.seq_keys, s.step, sampling)
        return _record(s, token, logp, sampling, entropy)

    return jax.lax.while_loop(cond, body, state)


def live_rows(state: SamplerState) -> jax.Array:
    return jnp.sum(~state.done).astype(jnp.int32)


PADDING = jnp.iinfo(jnp.int32).max  # the origin of a padding row: out of range for any batch, so dropped


def compact(state: SamplerState, origin: jax.Array, rows: int) -> tuple[SamplerState, jax.Array]:
    """The live rows (and finished ones as padding up to `rows`) moved to a batch of `rows`, cache
    included; `origin` maps each row to its row in the full batch (PADDING for padding rows).
    Every row keeps its key, prompt and step, so it draws exactly what it would have drawn in place."""
    keep = jnp.argsort(state.done, stable=True)[:rows]  # live rows first, in their order
    small = jax.tree.map(lambda x: x if x.ndim == 0 else x[keep], state)
    return small, jnp.where(small.done, PADDING, origin[keep])


def write_back(full: SamplerState, small: SamplerState, origin: jax.Array) -> SamplerState:
    """The compacted rows' outputs written into the full batch's rows (padding rows are dropped)."""
    put = lambda a, b: a.at[origin].set(b, mode="drop")  # noqa: E731
    return full.replace(
        tokens=put(full.tokens, small.tokens),
        logp=put(full.logp, small.logp),
        lengths=put(full.lengths, small.lengths),
        eos=put(full.eos, small.eos),
        done=put(full.done, small.done),
        step=small.step,
        entropy=None if full.entropy is None else put(full.entropy, small.entropy),
    )


def finish(
    prompts: PromptBatch, state: SamplerState, sampling: SamplingSpec, row_steps: jax.Array | None = None
) -> Rollout:
    """The rollout of the full batch. row_steps: the decode loop's row-steps when it compacted (else
    every row ran every step after the prefill's: rows x (step - 1))."""
    g, m = sampling.group_size, sampling.max_new_tokens
    mask = (jnp.arange(m)[None, :] < state.lengths[:, None]).astype(jnp.int32)
    if row_steps is None:
        row_steps = state.tokens.shape[0] * jnp.maximum(state.step - 1, 0)
    return Rollout(
        prompt_tokens=jnp.repeat(prompts.tokens, g, axis=0),
        prompt_mask=jnp.repeat(prompts.mask, g, axis=0),
        tokens=state.tokens,
        mask=mask,
        lengths=state.lengths,
        eos=state.eos,
        logp=state.logp,
        entropy=state.entropy,
        decode_row_steps=jnp.asarray(row_steps, jnp.int32),
    )


def _state_shardings(arch: Arch, mesh: Mesh, rules: Rules, n: int, slots: int, entropy: bool) -> SamplerState:
    batch = lambda *rest: sharding_for(("batch",) + rest, mesh, rules, (n,) + (1,) * len(rest))  # noqa: E731
    cache_sh = sharding_for(
        ("batch", "kv_heads", "cache_seq", "head_dim"), mesh, rules, (n, arch.num_kv_heads, slots, arch.head_dim)
    )
    return SamplerState(
        cache=tuple(LayerCache(k=cache_sh, v=cache_sh) for _ in range(arch.num_layers)),
        key_mask=batch(None),
        prompt_lens=batch(),
        seq_keys=batch(),
        tokens=batch(None),
        logp=batch(None),
        done=batch(),
        eos=batch(),
        lengths=batch(),
        step=replicated(mesh),
        entropy=batch(None) if entropy else None,
    )


Sampler = Callable[[nnx.State, PromptBatch, jax.Array], Rollout]


def unrolled(arch: Arch, graphdef: nnx.GraphDef, abstract_params: nnx.State) -> tuple[nnx.GraphDef, nnx.State, bool]:
    """The sampler's decoder: a scan_layers policy's per-layer twin (graph, abstract per-layer params,
    True), or the policy itself (False). The decode loop runs its layers unrolled on per-layer caches:
    a scanned decode step made XLA:CPU copy each layer's weights and cache slice out of the stacked
    arrays, every token."""
    model = nnx.merge(graphdef, abstract_params)
    if not model.scan_layers:
        return graphdef, abstract_params, False
    param_dtype = model.embed.get_value().dtype
    twin, _ = abstract_model(arch, param_dtype, model.dtype, model.remat)
    return twin, jax.eval_shape(to_per_layer, abstract_params), True


def rollout_weights(
    graphdef: nnx.GraphDef, abstract_params: nnx.State, param_sh: nnx.State, per_layer: bool = False
) -> Callable[[nnx.State], nnx.State]:
    """`params -> the sampler's copy`, made once per rollout.

    Same dtype (f32 on CPU): `device_put` to the rollout layout, which returns the training buffers
    themselves for every leaf already in that layout (one device, or tensor-only meshes), so the
    default run allocates nothing here. Compute dtype narrower than the parameters (bf16 over f32
    master weights): one jitted cast into the rollout layout (out_shardings; nothing donated, the
    training params stay): the resident copy is half the size, and the decoder's casts at use
    (`Attention._project`, `RMSNorm`, ...) become no-ops inside the decode loop, so the compiler
    neither reads f32 weights every token nor keeps its own hoisted bf16 copy. The sampled log-probs
    (PPO's logp_old) then come from truly bf16-rounded weights, while the trainer's forward casts f32
    weights inside its jit, where XLA may keep excess precision: `dyn/sampler_mismatch` measures it.
    `per_layer` (a scan_layers policy): the stacked layers are split in the same jitted copy.
    """
    compute = nnx.merge(graphdef, abstract_params).dtype
    dtypes = {jnp.dtype(x.dtype) for x in jax.tree.leaves(abstract_params)}
    target = {d: rollout_dtype(d, compute) for d in dtypes}
    if all(d == t for d, t in target.items()) and not per_layer:
        return lambda params: jax.device_put(params, param_sh)
    split = to_per_layer if per_layer else (lambda params: params)  # stacked training params: split once here
    return jax.jit(
        lambda params: jax.tree.map(lambda x: x.astype(target[jnp.dtype(x.dtype)]), split(params)),
        out_shardings=param_sh,
    )


def make_sampler(
    arch: Arch, graphdef: nnx.GraphDef, abstract_params: nnx.State, mesh: Mesh, rules: Rules, sampling: SamplingSpec
) -> Sampler:
    """Compile-once sampler: `sampler(params, prompts, key) -> Rollout`.

    Parameters are resharded to the rollout rule table on entry (weights unsharded over fsdp, heads
    over tensor) and, when the compute dtype is narrower than the parameter dtype (bf16 compute over
    f32 master weights), cast to it in the same jitted copy: see `rollout_weights`. Sequences are
    split over data x fsdp. Prefill and decode are two jits; decode donates the sampler state so the
    KV cache is updated in place. With sampling.compact_rows, `compacting_decode` drives the decode
    jit once per batch size (each compiled the first time it is met).
    """
    graphdef, abstract_params, per_layer = unrolled(arch, graphdef, abstract_params)
    param_sh = state_shardings(abstract_params, mesh, rules)
    to_rollout = rollout_weights(graphdef, abstract_params, param_sh, per_layer)

    jitted: dict[tuple[int, ...], Callable] = {}
    finish_jit = jax.jit(functools.partial(finish, sampling=sampling))
    states = lambda n, p: _state_shardings(arch, mesh, rules, n, p + sampling.max_new_tokens, sampling.entropy)  # noqa: E731

    def once(key: tuple, make: Callable[[], Callable]) -> Callable:
        if key not in jitted:
            jitted[key] = make()
        return jitted[key]

    def prefill_at(b: int, p: int) -> Callable:
        def make():
            pb = lambda *rest: sharding_for(("batch",) + rest, mesh, rules, (b,) + (1,) * len(rest))  # noqa: E731
            prompt_sh = PromptBatch(tokens=pb(None), mask=pb(None), index=pb())

            def fn(params, prompts, key):
                return prefill(nnx.merge(graphdef, params), prompts, key, sampling)

            return jax.jit(
                fn, in_shardings=(param_sh, prompt_sh, None), out_shardings=states(b * sampling.group_size, p)
            )

        return once(("prefill", b, p), make)

    def decode_at(n: int, p: int, floor: int) -> Callable:
        def make():
            fn = lambda params, state: decode(nnx.merge(graphdef, params), state, sampling, floor)  # noqa: E731
            sh = states(n, p)
            return jax.jit(fn, in_shardings=(param_sh, sh), out_shardings=sh, donate_argnums=1)

        return once(("decode", n, p, floor), make)

    def compact_at(n: int, rows: int, p: int) -> Callable:
        def make():
            origin_sh = sharding_for(("batch",), mesh, rules, (rows,))
            fn = lambda state, origin: compact(state, origin, rows)  # noqa: E731
            return jax.jit(fn, out_shardings=(states(rows, p), origin_sh))

        return once(("compact", n, rows, p), make)

    progress = jax.jit(lambda s: jnp.stack([s.step, live_rows(s)]), out_shardings=replicated(mesh))
    write = jax.jit(write_back)

    def compacting_decode(params: nnx.State, state: SamplerState, p: int) -> tuple[SamplerState, int]:
        """Decode in stretches: each runs until the live rows fit a batch `unit` rows smaller, then they
        move there (`compact`) and the next stretch runs on that batch; the outputs are written back
        into the full batch's rows. Host syncs: one per stretch. Returns the full batch and its
        row-steps."""
        n = state.tokens.shape[0]
        unit = compaction_unit(n, sampling.compact_rows, batch_shards(mesh, rules, n))
        full, origin, rows, row_steps = None, jnp.arange(n, dtype=jnp.int32), n, 0
        step = 1  # prefill sampled every row's first token
        while True:
            state = decode_at(rows, p, rows - unit)(params, state)
            done_at, live = (int(x) for x in jax.device_get(progress(state)))
            row_steps += rows * (done_at - step)
            step = done_at
            full = state.replace(cache=()) if full is None else write(full, state, origin)
            if live == 0 or step >= sampling.max_new_tokens:
                return full, row_steps
            smaller = -(-live // unit) * unit
            state, origin = compact_at(rows, smaller, p)(state, origin)
            rows = smaller

    def sampler(params: nnx.State, prompts: PromptBatch, key: jax.Array) -> Rollout:
        b, p = prompts.tokens.shape
        params = to_rollout(params)
        with jax.set_mesh(mesh):
            state = prefill_at(b, p)(params, prompts, key)
            if not sampling.compact_rows:
                return finish_jit(prompts, decode_at(state.tokens.shape[0], p, 0)(params, state))
            state, row_steps = compacting_decode(params, state, p)
            return finish_jit(prompts, state, row_steps=row_steps)

    return sampler


def batch_shards(mesh: Mesh, rules: Rules, n: int) -> int:
    """How many ways the sampler splits a batch of n rows (data x fsdp)."""
    sharding = sharding_for(("batch",), mesh, rules, (n,))
    return n // sharding.shard_shape((n,))[0]


def compaction_unit(n: int, parts: int, shards: int) -> int:
    """The row count a compacting decode's batch shrinks by: about n / parts, a multiple of the batch
    shards so every smaller batch splits over the same devices (at least one row per shard)."""
    unit = -(-n // parts)
    return min(n, -(-unit // shards) * shards)
