"""Probability-mass statistics on hand-made batches; the post-update pass inside the update step;
the probe reads the last real prompt position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.config import LossConfig, MeshConfig, OptimConfig
from rlvr_jax.dynamics import class_probabilities, probe_statistics, sampled_token_stats, update_shift_stats
from rlvr_jax.loss import completion_logp_top1
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import forward, init_params
from rlvr_jax.types import PromptBatch
from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step
from tests.test_update import ARCH, M, make_batch

# Three rollouts: advantage +1, -1, 0; the third token of rollout 0 and the last of rollout 1 are padding.
PROBS = np.array([[0.95, 0.5, 0.3], [0.005, 0.92, 0.9], [0.25, 0.999, 0.05]])
MASK = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1]])
ADV = np.array([1.0, -1.0, 0.0])


def test_sampled_token_stats_by_hand():
    out = jax.device_get(sampled_token_stats(jnp.log(jnp.asarray(PROBS)), jnp.asarray(ADV), jnp.asarray(MASK)))
    assert out["dyn/tokens/pos"] == 2 and out["dyn/tokens/neg"] == 2 and out["dyn/tokens/zero"] == 3
    assert out["dyn/pi_old/pos"] == pytest.approx((0.95 + 0.5) / 2)
    assert out["dyn/pi_old/neg"] == pytest.approx((0.005 + 0.92) / 2)
    assert out["dyn/saturated/pos"] == pytest.approx(0.5) and out["dyn/rare/pos"] == 0.0
    assert out["dyn/saturated/neg"] == pytest.approx(0.5) and out["dyn/rare/neg"] == pytest.approx(0.5)
    assert out["dyn/saturated/zero"] == pytest.approx(1 / 3) and out["dyn/rare/zero"] == 0.0
    expected_pos = np.zeros(10)
    expected_pos[[9, 5]] = 0.5  # 0.95 -> bin 9, 0.5 -> bin 5
    np.testing.assert_allclose(out["dyn/hist/pos"], expected_pos)
    np.testing.assert_allclose(out["dyn/hist/zero"], np.bincount([2, 9, 0], minlength=10) / 3)
    assert out["dyn/nonzero_adv_token_frac"] == pytest.approx(4 / 7)


def test_update_shift_stats_by_hand():
    logp0 = jnp.log(jnp.asarray(PROBS))
    top0 = jnp.log(jnp.asarray([[0.95, 0.5, 0.6], [0.9, 0.92, 0.9], [0.7, 0.999, 0.9]]))
    logp1 = logp0 + jnp.asarray([[0.1, 0.3, 9.0], [-0.2, -0.4, 9.0], [0.0, 0.0, 0.0]])
    top1 = jnp.log(jnp.exp(top0) + jnp.asarray([[0.01, 0.03, 0.0], [0.05, -0.1, 0.0], [0.0, 0.0, 0.0]]))
    rollout = logp0 + jnp.asarray([[1e-3, 0.0, 5.0], [0.0, -2e-3, 5.0], [0.0, 0.0, 0.0]])
    out = jax.device_get(update_shift_stats((logp0, top0), (logp1, top1), rollout, jnp.asarray(ADV), jnp.asarray(MASK)))
    assert out["dyn/dlogp/pos"] == pytest.approx(0.2) and out["dyn/dlogp/neg"] == pytest.approx(-0.3)
    assert out["dyn/dtop1/pos"] == pytest.approx(0.02) and out["dyn/dtop1/neg"] == pytest.approx(-0.025)
    assert out["dyn/sampled_is_top1/pos"] == 1.0 and out["dyn/sampled_is_top1/neg"] == 0.5
    assert out["dyn/sampler_mismatch/max"] == pytest.approx(2e-3, rel=1e-3)  # padding ignored
    assert out["dyn/sampler_mismatch/mean"] == pytest.approx(3e-3 / 7, rel=1e-3)


@pytest.fixture(scope="module")
def setup():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    graphdef, params = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0))
    optim = OptimConfig(lr=3e-3, mini_batches=2, micro_batches=2)
    tx = make_optimizer(optim, 10)
    return mesh, graphdef, params, tx, UpdateSpec(LossConfig(), optim, M)


def test_post_update_pass_measures_without_changing_the_update(setup):
    mesh, graphdef, params, tx, spec = setup
    batch = make_batch(0)
    # logp_old from the trainer itself: the sampler/trainer mismatch must then be ~0
    logp, top1 = jax.jit(lambda p: completion_logp_top1(__import__("flax").nnx.merge(graphdef, p), batch))(params)
    batch = batch.replace(logp_old=logp)
    fresh = lambda: init_train_state(params, tx, mesh, TRAIN_RULES)  # noqa: E731
    step = make_train_step(graphdef, tx, spec, fresh(), mesh, TRAIN_RULES)
    plain_state, plain = step(fresh(), batch)
    measured_state, measured = step(fresh(), batch, True)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(plain_state.params), jax.tree.leaves(measured_state.params))
    )
    assert "dyn/dlogp/pos" not in plain and "dyn/pi_old/pos" in plain
    m = jax.device_get(measured)
    assert m["dyn/sampler_mismatch/max"] < 1e-5
    # the update raises log pi of positive-advantage tokens and lowers negative ones
    assert m["dyn/dlogp/pos"] > 0 > m["dyn/dlogp/neg"]
    assert np.all(np.asarray(top1) >= np.asarray(logp) - 1e-6)  # the top-1 prob bounds the sampled one


def test_probe_reads_the_last_real_position_of_left_padded_prompts(setup):
    _mesh, graphdef, params, _, _ = setup
    tokens = jnp.asarray([[1, 1, 5, 6, 7], [8, 9, 10, 11, 12]], jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
    member = np.zeros((3, ARCH.vocab_size), np.float32)
    member[0, 3] = member[1, [4, 5]] = member[2, 9] = 1.0  # classes {3}, {4, 5}, {9}
    applies = np.array([[1, 1, 1], [1, 1, 0]], np.float32)  # class 2 only on prompt 0
    from flax import nnx

    got = np.asarray(
        class_probabilities(
            nnx.merge(graphdef, params),
            PromptBatch(tokens, mask, jnp.arange(2)),
            jnp.asarray(member),
            jnp.asarray(applies),
        )
    )
    short = np.asarray(jax.nn.softmax(forward(graphdef, params, tokens[:1, 2:], mask[:1, 2:])[0, -1]))
    full = np.asarray(jax.nn.softmax(forward(graphdef, params, tokens[1:], mask[1:])[0, -1]))
    expected = [(short[3] + full[3]) / 2, (short[4] + short[5] + full[4] + full[5]) / 2, short[9]]
    np.testing.assert_allclose(got[:3], expected, rtol=1e-5)
    rest = ((1 - short[3] - short[4] - short[5] - short[9]) + (1 - full[3] - full[4] - full[5])) / 2
    assert got[3] == pytest.approx(rest, abs=1e-6)


def test_statistics_split_by_the_unfiltered_advantage(setup):
    """Under negative-only training the positive rollouts carry adv = 0 in the loss, yet their tokens
    must still be reported as positive (adv_unfiltered), so one sees what happens to them."""
    mesh, graphdef, params, tx, spec = setup
    batch = make_batch(0)
    filtered = batch.replace(adv=jnp.minimum(batch.adv, 0.0), adv_unfiltered=batch.adv)
    step = make_train_step(graphdef, tx, spec, init_train_state(params, tx, mesh, TRAIN_RULES), mesh, TRAIN_RULES)
    _, m = step(init_train_state(params, tx, mesh, TRAIN_RULES), filtered, True)
    m = jax.device_get(m)
    positive_tokens = float(np.sum(np.asarray(batch.mask)[np.asarray(batch.adv) > 0]))
    assert m["dyn/tokens/pos"] == positive_tokens > 0 and m["dyn/tokens/zero"] == 0
    assert "dyn/dlogp/pos" in m  # the update's effect on tokens it did not push


def test_probe_statistics_by_hand(setup):
    """Per-subset masses, class logits (raw and centred) and the decision-token entropy, each worked
    out from the logits of one uncached forward per prompt."""
    _mesh, graphdef, params, _, _ = setup
    tokens = jnp.asarray([[1, 1, 5, 6, 7], [8, 9, 10, 11, 12], [1, 3, 4, 2, 6]], jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], jnp.int32)
    member = np.zeros((2, ARCH.vocab_size), np.float32)
    member[0, 3] = member[1, [4, 5]] = 1.0  # classes A = {3}, B = {4, 5}
    class_ids = np.array([[3, -1], [4, 5]], np.int32)
    applies = np.array([[1, 1], [1, 0], [1, 1]], np.float32)  # B is not defined on prompt 1
    in_subset = np.array([[1, 1, 0], [0, 0, 1]], np.float32)  # subsets: x = {0, 1}, y = {2}
    from flax import nnx

    got = jax.device_get(
        probe_statistics(
            nnx.merge(graphdef, params),
            PromptBatch(tokens, mask, jnp.arange(3)),
            *map(jnp.asarray, (member, applies, class_ids, in_subset)),
        )
    )
    z = [
        np.asarray(forward(graphdef, params, tokens[b : b + 1, s:], mask[b : b + 1, s:])[0, -1])
        for b, s in ((0, 2), (1, 0), (2, 1))
    ]
    p = [np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in z]
    mass = np.array([[q[3], q[4] + q[5]] for q in p]) * applies
    rest = 1 - mass.sum(axis=1)
    np.testing.assert_allclose(got["pi"], [mass[:, 0].mean(), mass[:, 1].sum() / 2, rest.mean()], rtol=1e-5)
    x_pi = [(mass[0, 0] + mass[1, 0]) / 2, mass[0, 1] / 1, (rest[0] + rest[1]) / 2]  # B: prompt 0 only in x
    np.testing.assert_allclose(got["pi_subset"], [x_pi, [mass[2, 0], mass[2, 1], rest[2]]], rtol=1e-5)
    lse = np.array([[x[3], np.log(np.exp(x[4]) + np.exp(x[5]))] for x in z])
    np.testing.assert_allclose(got["logit"], [lse[:, 0].mean(), (lse[0, 1] + lse[2, 1]) / 2], rtol=1e-5, atol=1e-6)
    centred = lse - np.array([[x.mean()] for x in z])
    np.testing.assert_allclose(
        got["zc"], [centred[:, 0].mean(), (centred[0, 1] + centred[2, 1]) / 2], rtol=1e-5, atol=1e-6
    )
    # A shift of every logit moves `logit` and leaves `zc` and the probabilities alone.
    assert not np.allclose(got["logit"], got["zc"])
    h = np.array([-(q * np.log(q)).sum() for q in p])
    assert got["entropy"] == pytest.approx(h.mean(), rel=1e-5)
    np.testing.assert_allclose(got["entropy_subset"], [(h[0] + h[1]) / 2, h[2]], rtol=1e-5)
    # A probe without subsets: the same overall values, empty per-subset arrays.
    none = jax.device_get(
        probe_statistics(
            nnx.merge(graphdef, params),
            PromptBatch(tokens, mask, jnp.arange(3)),
            *map(jnp.asarray, (member, applies, class_ids, np.zeros((0, 3), np.float32))),
        )
    )
    assert none["pi_subset"].shape == (0, 3) and none["entropy_subset"].shape == (0,)
    np.testing.assert_array_equal(none["pi"], got["pi"])
    # The probe's mass part is class_probabilities, value for value.
    mass_only = class_probabilities(
        nnx.merge(graphdef, params), PromptBatch(tokens, mask, jnp.arange(3)), jnp.asarray(member), jnp.asarray(applies)
    )
    np.testing.assert_array_equal(np.asarray(mass_only), got["pi"])
