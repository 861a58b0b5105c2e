"""The KV-cache sampler against uncached forwards, its RNG contract, stopping, filtering, sharding."""

import dataclasses
import functools
import json
import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import cli
from rlvr_jax import rollout as rollout_lib
from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
from rlvr_jax.model import forward, from_pretrained, state_shardings
from rlvr_jax.rollout import (
    SamplingSpec,
    _first_above,
    filter_logits,
    inverse_cdf_draw,
    make_sampler,
    rollout_weights,
    sample_tokens,
)
from rlvr_jax.tokenizer import encode_left_padded, load_tokenizer
from rlvr_jax.types import PromptBatch

PAD, EOS = 1, 0
M = 7  # new tokens
PROMPTS = np.array(
    [
        [PAD, PAD, PAD, 5, 6, 7, 8],
        [2, 3, 4, 5, 6, 7, 9],
        [PAD, 11, 12, 13, 14, 15, 16],
        [PAD, PAD, PAD, PAD, PAD, 40, 41],
    ],
    np.int32,
)


def _batch(tokens=PROMPTS, start=0):
    return PromptBatch(
        tokens=jnp.asarray(tokens),
        mask=jnp.asarray((tokens != PAD).astype(np.int32)),
        index=jnp.arange(start, start + len(tokens)),
    )


@pytest.fixture(scope="module")
def single(qwen2_dir):
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    arch, graphdef, params = from_pretrained(qwen2_dir, mesh, ROLLOUT_RULES)
    return mesh, arch, graphdef, params


@pytest.fixture(scope="module")
def samplers(single):
    mesh, arch, graphdef, params = single

    def make(**kw):
        return make_sampler(
            arch,
            graphdef,
            params,
            mesh,
            ROLLOUT_RULES,
            SamplingSpec(max_new_tokens=M, pad_id=PAD, **kw),
        )

    return {
        "greedy": make(temperature=0.0, stop_on_eos=False),
        "sample": make(temperature=0.8, group_size=3, stop_on_eos=False),
        "topk1": make(temperature=1.0, top_k=1, stop_on_eos=False),
    }


def _full_logp(single, rollout):
    """log-softmax of one uncached forward over prompt + completion, at the completion's positions."""
    _, _, graphdef, params = single
    tokens = np.concatenate([rollout.prompt_tokens, rollout.tokens], axis=1)
    mask = np.concatenate([rollout.prompt_mask, rollout.mask], axis=1)
    logits = np.asarray(forward(graphdef, params, tokens, mask))
    p = rollout.prompt_tokens.shape[1]
    return np.asarray(jax.nn.log_softmax(logits[:, p - 1 : -1], axis=-1))


def test_greedy_cache_equals_uncached_argmax(single, samplers):
    rollout = jax.device_get(samplers["greedy"](single[3], _batch(), jax.random.key(0)))
    logp = _full_logp(single, rollout)
    np.testing.assert_array_equal(rollout.tokens, logp.argmax(-1))
    assert (rollout.lengths == M).all() and not rollout.eos.any()


def test_recorded_logp_equals_full_forward(single, samplers):
    rollout = jax.device_get(samplers["sample"](single[3], _batch(), jax.random.key(3)))
    logp = _full_logp(single, rollout)
    taken = np.take_along_axis(logp, rollout.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(rollout.logp, taken, atol=1e-5)
    # Row b*G + g belongs to prompt b.
    np.testing.assert_array_equal(rollout.prompt_tokens, np.repeat(PROMPTS, 3, axis=0))


def test_seeds_reproduce_and_differ(single, samplers):
    run = lambda seed: jax.device_get(samplers["sample"](single[3], _batch(), jax.random.key(seed)).tokens)  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5
    # The G samples of one prompt differ from each other.
    assert len({tuple(r) for r in a[:3]}) == 3


def test_prompt_stream_independent_of_batch(single, samplers):
    """A prompt draws the same tokens whatever batch it sits in: keys fold in the global index."""
    whole = jax.device_get(samplers["sample"](single[3], _batch(), jax.random.key(5)).tokens)
    tail = jax.device_get(samplers["sample"](single[3], _batch(PROMPTS[2:], start=2), jax.random.key(5)).tokens)
    np.testing.assert_array_equal(whole[6:], tail)


def test_top_k_one_is_greedy(single, samplers):
    greedy = jax.device_get(samplers["greedy"](single[3], _batch(), jax.random.key(0)).tokens)
    topk = jax.device_get(samplers["topk1"](single[3], _batch(), jax.random.key(9)).tokens)
    np.testing.assert_array_equal(greedy, topk)


def test_stop_token_ends_sequence_and_masks_rest(single):
    mesh, arch, graphdef, params = single
    greedy = make_sampler(
        arch,
        graphdef,
        params,
        mesh,
        ROLLOUT_RULES,
        SamplingSpec(max_new_tokens=M, temperature=0.0, pad_id=PAD, stop_on_eos=False),
    )
    free = jax.device_get(greedy(params, _batch(), jax.random.key(0)))
    stop = int(free.tokens[0, 2])  # the third greedy token of row 0 becomes a stop id
    stopping = make_sampler(
        arch,
        graphdef,
        params,
        mesh,
        ROLLOUT_RULES,
        SamplingSpec(max_new_tokens=M, temperature=0.0, pad_id=PAD, stop_ids=(stop,)),
    )
    out = jax.device_get(stopping(params, _batch(), jax.random.key(0)))
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[row] == stop)
        length = hits[0] + 1 if hits.size else M
        assert out.lengths[row] == length and bool(out.eos[row]) == bool(hits.size)
        np.testing.assert_array_equal(out.tokens[row, :length], free.tokens[row, :length])
        np.testing.assert_array_equal(out.tokens[row, length:], PAD)
        np.testing.assert_array_equal(out.mask[row], np.arange(M) < length)
        np.testing.assert_array_equal(out.logp[row, length:], 0.0)
    assert out.lengths[0] <= 3 and out.finish_reasons[0] == "eos"


def test_decode_exits_early_when_all_done(single):
    """With every sequence stopped after its first token, the while_loop runs no decode step."""
    from flax import nnx

    from rlvr_jax.rollout import decode, prefill

    mesh, arch, graphdef, params = single
    first = jax.device_get(
        make_sampler(
            arch, graphdef, params, mesh, ROLLOUT_RULES, SamplingSpec(max_new_tokens=1, temperature=0.0, pad_id=PAD)
        )(params, _batch(), jax.random.key(0)).tokens[:, 0]
    )
    sp = SamplingSpec(max_new_tokens=M, temperature=0.0, pad_id=PAD, stop_ids=tuple(sorted(set(first.tolist()))))

    @jax.jit
    def run(params, prompts):
        model = nnx.merge(graphdef, params)
        state = decode(model, prefill(model, prompts, jax.random.key(0), sp), sp)
        return state.step, state.done.all()

    step, all_done = run(params, _batch())
    assert int(step) == 1 and bool(all_done)


def _reference_set(logits, top_k, top_p):
    order = np.argsort(-logits, kind="stable")
    keep = np.zeros(logits.shape, bool)
    probs = np.exp(logits[order] - logits.max())
    probs /= probs.sum()
    if top_k:
        keep[order[:top_k]] = True
        return keep
    n = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
    keep[order[:n]] = True
    return keep


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.5), (0, 0.9)])
def test_filtering_never_samples_outside_the_set(top_k, top_p):
    logits = jax.random.normal(jax.random.key(0), (16, 50)) * 3
    sp = SamplingSpec(max_new_tokens=1, temperature=1.0, top_k=top_k, top_p=top_p)
    keys = jax.random.split(jax.random.key(1), 16)
    draws = jax.jit(jax.vmap(lambda step: sample_tokens(logits, keys, step, sp)[0]))(jnp.arange(400))
    draws = np.asarray(draws)
    filtered = np.isfinite(np.asarray(filter_logits(logits, sp)))
    for row in range(16):
        allowed = _reference_set(np.asarray(logits[row]), top_k, top_p)
        np.testing.assert_array_equal(filtered[row], allowed)
        assert allowed[draws[:, row]].all()
        assert len(set(draws[:, row])) > 1 or allowed.sum() == 1


def test_inverse_cdf_draws_follow_the_softmax():
    """200k draws over a 300-token vocabulary (not a multiple of the 128-token block: the padding is
    exercised) whose mass spans blocks, a block boundary pair and -inf tokens: the counts pass a
    chi-square test against softmax at p = 1e-5 (fixed keys: deterministic), and no -inf token is drawn."""
    logits = np.array(jax.random.normal(jax.random.key(3), (300,)) * 2.0)
    logits[[127, 128]] = 6.0  # the two likeliest tokens straddle the first block boundary
    logits[[0, 5, 129, 299]] = -np.inf
    n = 200_000
    keys = jax.random.split(jax.random.key(4), n)
    draws = np.asarray(jax.jit(inverse_cdf_draw)(keys, jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, 300))))
    counts = np.bincount(draws, minlength=300)
    assert counts[[0, 5, 129, 299]].sum() == 0
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    expected = probs * n
    big = expected >= 5  # pool the tail so every bin has >= 5 expected
    observed = np.append(counts[big], counts[~big].sum())
    expect = np.append(expected[big], expected[~big].sum())
    chi2 = float(((observed - expect) ** 2 / expect).sum())
    df = len(observed) - 1
    z = 4.265  # upper 1e-5 normal quantile; Wilson-Hilferty for the chi-square quantile
    assert chi2 < df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3, (chi2, df)


def test_first_above_skips_zero_mass_and_falls_back_to_the_last_positive():
    cdf = jnp.array([[0.2, 0.5, 0.5, 1.0]] * 3)
    positive = jnp.array([[True, True, False, True]] * 3)
    u = jnp.array([[0.3], [0.5], [1.0]])  # 1.0: rounding left nothing above u
    np.testing.assert_array_equal(np.asarray(_first_above(cdf, u, positive)), [1, 3, 3])


def test_bf16_compute_samples_from_a_bf16_copy_as_before(qwen2_dir, monkeypatch):
    """bf16 compute over f32 weights: the sampler's copy is bf16 (one cast per rollout), and it draws
    the same tokens with the same log-probs as the f32 weights cast at each use inside the jitted
    prefill and decode (the decoder rounds every weight to the compute dtype either way)."""
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    arch, graphdef, params = from_pretrained(qwen2_dir, mesh, TRAIN_RULES, dtype=jnp.bfloat16)
    copy = rollout_weights(graphdef, params, state_shardings(params, mesh, ROLLOUT_RULES))(params)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(copy)} == {jnp.dtype(jnp.bfloat16)}
    sp = SamplingSpec(max_new_tokens=M, temperature=0.8, group_size=3, pad_id=PAD, stop_on_eos=False)
    cast_once = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, sp)
    monkeypatch.setattr(rollout_lib, "rollout_weights", lambda g, a, sh, per_layer: lambda p: jax.device_put(p, sh))
    cast_at_use = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, sp)
    new = jax.device_get(cast_once(params, _batch(), jax.random.key(4)))
    old = jax.device_get(cast_at_use(params, _batch(), jax.random.key(4)))
    np.testing.assert_array_equal(new.tokens, old.tokens)
    np.testing.assert_array_equal(new.logp, old.logp)


def test_sharded_sampling_equals_single_device(qwen2_dir, single, samplers):
    """On (2, 2, 2) devices, from training-layout params (the sampler reshards them): same tokens."""
    mesh8 = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    arch, graphdef, params8 = from_pretrained(qwen2_dir, mesh8, TRAIN_RULES)
    sharded = make_sampler(
        arch,
        graphdef,
        params8,
        mesh8,
        ROLLOUT_RULES,
        SamplingSpec(max_new_tokens=M, temperature=0.8, group_size=3, pad_id=PAD, stop_on_eos=False),
    )
    out8 = jax.device_get(sharded(params8, _batch(), jax.random.key(11)))
    out1 = jax.device_get(samplers["sample"](single[3], _batch(), jax.random.key(11)))
    np.testing.assert_array_equal(out8.tokens, out1.tokens)
    np.testing.assert_allclose(out8.logp, out1.logp, atol=1e-5)


def test_generate_cli_greedy_equals_transformers(qwen2_dir, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    prompts = ["What is 12 + 30?", "Hello"]
    assert (
        cli.main(
            ["generate", "--model", str(qwen2_dir), "--raw", "--temperature", "0", "--max-new-tokens", "12"]
            + functools.reduce(operator.iadd, (["--prompt", p] for p in prompts), [])
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    tok = load_tokenizer(qwen2_dir)
    ids, mask = encode_left_padded(tok, prompts)
    model = AutoModelForCausalLM.from_pretrained(str(qwen2_dir), dtype=torch.float32).eval()
    stop = [EOS, tok.convert_tokens_to_ids("<|im_end|>")]
    with torch.no_grad():
        ref = model.generate(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=stop,
            pad_token_id=PAD,
        )[:, ids.shape[1] :].numpy()
    for row, out in zip(ref, rows):
        expected = row.tolist()
        for i, t in enumerate(expected):
            if t in stop:
                expected = expected[: i + 1]
                break
        assert out["token_ids"] == expected
        assert out["finish_reason"] == ("eos" if expected[-1] in stop else "length")
        assert out["completion"] == tok.decode(expected, skip_special_tokens=True)


def test_generate_cli_rejects_bad_arguments(qwen2_dir, tmp_path):
    with pytest.raises(SystemExit, match="--top-p"):
        cli.main(["generate", "--model", str(qwen2_dir), "--prompt", "x", "--top-p", "0"])
    with pytest.raises(SystemExit, match="config.json"):
        cli.main(["generate", "--model", str(tmp_path), "--tokenizer", str(qwen2_dir), "--prompt", "x"])


def test_recorded_entropy_is_the_untempered_distributions_and_changes_no_draw(single, samplers):
    """SamplingSpec(entropy=True), as evaluation uses it: at every generated position the exact entropy
    of the un-tempered next-token distribution (0 after a stop); tokens and logp as without it."""
    mesh, arch, graphdef, params = single
    free = jax.device_get(samplers["sample"](params, _batch(), jax.random.key(4)))
    stop = int(free.tokens[0, 2])  # a token row 0 draws third: with it as a stop id, some rows stop early
    spec = SamplingSpec(max_new_tokens=M, pad_id=PAD, temperature=0.8, group_size=3, stop_ids=(stop,))
    plain = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, spec)
    measured = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, dataclasses.replace(spec, entropy=True))
    a = jax.device_get(plain(params, _batch(), jax.random.key(4)))
    b = jax.device_get(measured(params, _batch(), jax.random.key(4)))
    assert a.entropy is None
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logp, b.logp)
    logp = _full_logp(single, b)  # un-tempered log-softmax from one uncached forward
    expected = -(np.exp(logp) * logp).sum(-1) * b.mask
    np.testing.assert_allclose(b.entropy, expected, atol=2e-5)
    assert (b.mask == 0).any() and np.all(b.entropy[b.mask == 0] == 0)  # some rows stopped early


# --- live-row compaction ----------------------------------------------------------------------------


def _row_steps_by_hand(lengths, eos, n, unit, m):
    """The compacting decode's row-steps, from its rule: a stretch on `rows` rows runs while more than
    rows - unit are live, then the live rows move to the smallest multiple of unit that holds them."""
    live = lambda step: int(np.sum(~(eos & (lengths <= step))))  # noqa: E731  done = stopped by this step
    rows, step, total = n, 1, 0
    while True:
        while step < m and live(step) > rows - unit:
            step, total = step + 1, total + rows
        if live(step) == 0 or step >= m:
            return total
        rows = -(-live(step) // unit) * unit


@pytest.fixture(scope="module")
def spread(single):
    """Samplers whose stop set holds a sixteenth of the vocabulary, so lengths spread from 1 to max_new_tokens."""
    mesh, arch, graphdef, params = single
    spec = SamplingSpec(
        max_new_tokens=20, group_size=8, pad_id=PAD, stop_ids=tuple(range(2, 2 + arch.vocab_size // 16))
    )

    def make(k):
        return make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, dataclasses.replace(spec, compact_rows=k))

    return spec, {k: make(k) for k in (0, 4, 32)}


def test_compaction_draws_the_same_tokens_in_fewer_row_steps(single, spread):
    _, samplers = spread
    plain, *compacted = (jax.device_get(samplers[k](single[3], _batch(), jax.random.key(11))) for k in (0, 4, 32))
    n, m = plain.tokens.shape
    assert plain.lengths.min() < m / 3 and plain.eos.any() and not plain.eos.all()  # a real spread
    assert plain.decode_row_steps == n * (plain.lengths.max() - 1)  # every row runs until the longest stops
    for k, got in zip((4, 32), compacted):
        for field in ("tokens", "mask", "lengths", "eos", "prompt_tokens"):
            np.testing.assert_array_equal(
                getattr(got, field), getattr(plain, field), err_msg=f"compact_rows={k} {field}"
            )
        # A smaller batch may run other matmul kernels: the log-probs agree to rounding, not bit for bit.
        np.testing.assert_allclose(got.logp, plain.logp, atol=1e-5)
        unit = rollout_lib.compaction_unit(n, k, 1)
        assert got.decode_row_steps == _row_steps_by_hand(plain.lengths, plain.eos, n, unit, m)
        needed = int(np.sum(plain.lengths - 1))
        assert needed <= got.decode_row_steps < plain.decode_row_steps
    # One row per unit: no finished row ever takes a decode step.
    assert compacted[1].decode_row_steps == int(np.sum(plain.lengths - 1))


def test_compaction_unit_splits_over_the_batch_shards():
    assert rollout_lib.compaction_unit(64, 8, 1) == 8
    assert rollout_lib.compaction_unit(64, 8, 16) == 16  # at least one row per shard
    assert rollout_lib.compaction_unit(30, 4, 4) == 8  # ceil(30 / 4) = 8, already a multiple of 4
    assert rollout_lib.compaction_unit(6, 100, 2) == 2
    assert rollout_lib.compaction_unit(4, 1, 8) == 4  # never more than the batch


def test_compaction_on_a_sharded_mesh_draws_the_single_device_tokens(qwen2_dir, single, spread):
    """On (2, 2, 2) devices the batch splits 4 ways: every smaller batch is a multiple of 4 rows, and the
    rows move between devices as they are compacted; the tokens are still the single-device ones."""
    spec, samplers = spread
    mesh8 = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    arch, graphdef, params8 = from_pretrained(qwen2_dir, mesh8, TRAIN_RULES)
    sharded = make_sampler(arch, graphdef, params8, mesh8, ROLLOUT_RULES, dataclasses.replace(spec, compact_rows=32))
    out8 = jax.device_get(sharded(params8, _batch(), jax.random.key(11)))
    out1 = jax.device_get(samplers[0](single[3], _batch(), jax.random.key(11)))
    np.testing.assert_array_equal(out8.tokens, out1.tokens)
    np.testing.assert_array_equal(out8.lengths, out1.lengths)
    np.testing.assert_allclose(out8.logp, out1.logp, atol=1e-5)
    n, m = out1.tokens.shape
    assert rollout_lib.batch_shards(mesh8, ROLLOUT_RULES, n) == 4
    assert out8.decode_row_steps == _row_steps_by_hand(out1.lengths, out1.eos, n, 4, m) < out1.decode_row_steps


@pytest.mark.parametrize("devices", [1, 8])
def test_a_scanned_decoder_samples_the_unrolled_tokens(qwen2_dir, single, spread, devices):
    """scan_layers: one [B, L, K, S, H] cache updated layer by layer inside the scan, repeated per group,
    compacted and sharded like the per-layer caches: the same tokens as the unrolled decoder, on one
    device and on (2, 2, 2) devices."""
    spec, samplers = spread
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)) if devices == 8 else single[0]
    arch, graphdef, params = from_pretrained(qwen2_dir, mesh, TRAIN_RULES, scan_layers=True)
    assert arch.num_layers > 1
    scanned = make_sampler(arch, graphdef, params, mesh, ROLLOUT_RULES, dataclasses.replace(spec, compact_rows=4))
    got = jax.device_get(scanned(params, _batch(), jax.random.key(11)))
    plain = jax.device_get(samplers[0](single[3], _batch(), jax.random.key(11)))
    for field in ("tokens", "mask", "lengths", "eos"):
        np.testing.assert_array_equal(getattr(got, field), getattr(plain, field), err_msg=field)
    np.testing.assert_allclose(got.logp, plain.logp, atol=1e-5)
    assert got.decode_row_steps < plain.decode_row_steps  # it did compact


def test_one_compacting_sampler_serves_batches_of_every_size(single, spread):
    """A smaller batch first, then the full one, through the same sampler (compiled functions cached per
    shape): the full batch still equals the plain sampler's. Padding rows carry an origin out of range for
    any batch, so a function compiled for the smaller batch cannot write one over a real row."""
    _, samplers = spread
    assert rollout_lib.PADDING >= 2**31 - 1
    tail = jax.device_get(samplers[4](single[3], _batch(PROMPTS[2:], start=2), jax.random.key(11)))
    whole = jax.device_get(samplers[4](single[3], _batch(), jax.random.key(11)))
    plain = jax.device_get(samplers[0](single[3], _batch(), jax.random.key(11)))
    np.testing.assert_array_equal(whole.tokens, plain.tokens)
    np.testing.assert_array_equal(whole.lengths, plain.lengths)
    np.testing.assert_array_equal(tail.tokens, plain.tokens[16:])  # rows of prompts 2 and 3
