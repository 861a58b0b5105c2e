"""Policy losses against analytic gradients, finite differences and hand-computed tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.config import Aggregation, KLEstimator, LossConfig, MeshConfig, PolicyObjective
from rlvr_jax.loss import (
    combine_terms,
    completion_logp_entropy,
    finalize_metrics,
    gspo_token_loss,
    kl_penalty,
    normaliser,
    policy_loss,
    ppo_token_loss,
    row_contributions,
    token_logp_entropy,
)
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.types import TrainBatch


def _batch(tokens, mask, logp_old, adv, weight=None, logp_ref=None, prompt_width=1):
    n = len(tokens)
    return TrainBatch(
        prompt_tokens=jnp.full((n, prompt_width), 3, jnp.int32),
        prompt_mask=jnp.ones((n, prompt_width), jnp.int32),
        tokens=jnp.asarray(tokens, jnp.int32),
        mask=jnp.asarray(mask, jnp.int32),
        logp_old=jnp.asarray(logp_old, jnp.float32),
        adv=jnp.asarray(adv, jnp.float32),
        weight=jnp.ones(n, jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32),
        logp_ref=None if logp_ref is None else jnp.asarray(logp_ref, jnp.float32),
    )


def _loss_from_logits(logits, batch, cfg, max_len=None):
    """Loss with logits given directly (head = identity, hidden = logits)."""
    v = logits.shape[-1]
    logp, ent = token_logp_entropy(logits, jnp.eye(v, dtype=logits.dtype), batch.tokens)
    norm = normaliser(batch.mask, batch.weight, cfg.aggregation)
    return policy_loss(logp, ent, batch, cfg, max_len or batch.tokens.shape[1], norm)[0]


def test_one_position_gradient_is_analytic():
    """At ratio 1 with token_mean: dL/dz_v = -A (1[v=y] - pi_v), the update of docs/algorithms.md section 1."""
    z = jnp.array([[[0.3, -1.2, 2.0, 0.5, 0.0]]])
    pi = np.asarray(jax.nn.softmax(z[0, 0]))
    for y, a in [(2, 1.5), (1, -0.7)]:
        logp_old = np.log(pi[y])
        batch = _batch([[y]], [[1]], [[logp_old]], [a])
        grad = jax.grad(_loss_from_logits)(z, batch, LossConfig())[0, 0]
        expected = -a * (np.eye(5)[y] - pi)
        np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_zero_advantage_rows_get_exactly_zero_gradient():
    """negative_only sets positive advantages to 0: those rollouts contribute exactly nothing."""
    logits = jax.random.normal(jax.random.key(0), (3, 4, 6))
    tokens = np.array([[1, 2, 3, 4], [5, 0, 1, 2], [2, 2, 2, 2]])
    logp_old = np.asarray(jax.nn.log_softmax(logits))[np.arange(3)[:, None], np.arange(4), tokens] + 0.05
    batch = _batch(tokens, np.ones((3, 4)), logp_old, [min(1.2, 0.0), -0.8, min(0.4, 0.0)])
    grad = jax.grad(_loss_from_logits)(logits, batch, LossConfig(dual_clip=3.0, entropy_coef=0.0))
    assert np.all(np.asarray(grad[0]) == 0.0) and np.all(np.asarray(grad[2]) == 0.0)
    assert np.abs(np.asarray(grad[1])).max() > 1e-3


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(
            eps_low=0.1, eps_high=0.3, dual_clip=2.0, kl_beta=0.1, kl_estimator=KLEstimator.k3, entropy_coef=0.01
        ),
        LossConfig(
            objective=PolicyObjective.gspo,
            aggregation=Aggregation.seq_mean_token_mean,
            kl_beta=0.05,
            kl_estimator=KLEstimator.k2,
        ),
        LossConfig(aggregation=Aggregation.seq_mean_token_sum_norm, kl_beta=0.2, kl_estimator=KLEstimator.k1),
    ],
)
def test_full_loss_matches_finite_differences(cfg):
    with jax.enable_x64(True):
        logits = jax.random.normal(jax.random.key(1), (3, 4, 5), jnp.float64)
        tokens = np.array([[1, 2, 3, 4], [0, 0, 1, 2], [2, 4, 2, 0]])
        mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
        rng = np.random.default_rng(0)
        logp_now = np.asarray(jax.nn.log_softmax(logits))[np.arange(3)[:, None], np.arange(4), tokens]
        # Old and reference log-probs off the current ones: ratios inside and outside the clip range.
        batch = _batch(
            tokens,
            mask,
            logp_now + rng.normal(0, 0.3, (3, 4)),
            [0.9, -1.1, 0.4],
            logp_ref=logp_now + rng.normal(0, 0.2, (3, 4)),
        )
        batch = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, batch)
        f = lambda z: _loss_from_logits(z, batch, cfg, max_len=6)  # noqa: E731
        grad = np.asarray(jax.grad(f)(logits))
        direction = np.asarray(jax.random.normal(jax.random.key(2), logits.shape, jnp.float64))
        eps = 1e-6
        fd = (f(logits + eps * direction) - f(logits - eps * direction)) / (2 * eps)
        np.testing.assert_allclose(fd, np.sum(grad * direction), rtol=1e-6, atol=1e-9)


def test_aggregation_modes_by_hand():
    per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [6.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    weight = jnp.array([1.0, 1.0, 0.0])  # the third rollout is dropped (NSR/PSR subsetting)

    def agg(mode, w=weight):
        return float(jnp.sum(row_contributions(per_token, mask, w, mode, 4)) / normaliser(mask, w, mode))

    # token_mean over kept tokens: (1+2+3+4+5) / 5
    assert agg(Aggregation.token_mean) == pytest.approx(15 / 5)
    # seq_mean_token_mean: mean over kept rows of per-row means: (2 + 4.5) / 2
    assert agg(Aggregation.seq_mean_token_mean) == pytest.approx(3.25)
    # seq_mean_token_sum_norm (Dr.GRPO): (6/4 + 9/4) / 2
    assert agg(Aggregation.seq_mean_token_sum_norm) == pytest.approx(1.875)
    # loss_denominator=all: every rollout counts: (1+...+6) / 6
    assert agg(Aggregation.token_mean, jnp.ones(3)) == pytest.approx(21 / 6)


def test_grpo_n_nonzero_denominator_divides_by_negative_tokens_only():
    # One group r = (1, 0, 0, 0), GRPO-N with eps = 0: A = (0, -1/sqrt3, -1/sqrt3, -1/sqrt3).
    # Completion lengths (3, 2, 4, 1). At ratio 1 the PPO token loss is -A, so with token_mean:
    #   kept    (every rollout): sum over tokens of -A / 10 = 7 / sqrt3 / 10 = 0.4041452
    #   nonzero (negatives only): 7 / sqrt3 / 7 = 1 / sqrt3 = 0.5773503, the mean over negative tokens.
    from rlvr_jax.advantage import advantages
    from rlvr_jax.config import AdvantageConfig, SignFilter

    lengths = np.array([3, 2, 4, 1])
    mask = jnp.asarray(np.arange(4)[None, :] < lengths[:, None], jnp.int32)
    out = {}
    for mode in ("kept", "nonzero"):
        cfg = AdvantageConfig(sign=SignFilter.negative_only, eps=0.0, loss_denominator=mode)
        adv, weight = advantages(jnp.array([[1.0, 0.0, 0.0, 0.0]]), cfg)
        batch = _batch(np.zeros((4, 4)), mask, np.zeros((4, 4)), adv[0], weight=weight[0])
        norm = normaliser(batch.mask, batch.weight, Aggregation.token_mean)
        loss, _ = policy_loss(jnp.zeros((4, 4)), jnp.zeros((4, 4)), batch, LossConfig(), 4, norm)
        out[mode] = (float(norm), float(loss))
    assert out["kept"] == (10.0, pytest.approx(0.4041452, rel=1e-6))
    assert out["nonzero"] == (7.0, pytest.approx(0.5773503, rel=1e-6))


def test_gspo_sequence_ratio_clip_and_sequence_mean_by_hand():
    """GSPO (Zheng et al. 2025) with its paper's defaults: s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|), the
    geometric mean of the token ratios; l_i = -min(s_i A_i, clip(s_i, 1 - 3e-4, 1 + 4e-4) A_i); the loss
    is the mean of l_i over sequences (seq_mean_token_mean)."""
    cfg = LossConfig(
        objective=PolicyObjective.gspo, eps_low=3e-4, eps_high=4e-4, aggregation=Aggregation.seq_mean_token_mean
    )
    ln = np.log
    # Token log-ratios log(pi / pi_old); padding (mask 0) holds junk that must not count.
    log_w = jnp.array([[ln(2.0), ln(0.5), 5.0], [ln(2.0), ln(8.0), -5.0], [ln(0.9), 5.0, 5.0]], jnp.float32)
    mask = jnp.array([[1, 1, 0], [1, 1, 0], [1, 0, 0]])
    adv = jnp.array([1.5, 2.0, -2.0])
    # s_1 = sqrt(2 * 0.5) = 1; s_2 = sqrt(2 * 8) = 4; s_3 = 0.9 (one token).
    # l_1 = -1.5 * 1 = -1.5 (inside the range); l_2 = -min(8, 1.0004 * 2) = -2.0008 (clipped above);
    # l_3 = -min(0.9 * -2, 0.9997 * -2) = -min(-1.8, -1.9994) = 1.9994 (clipped below).
    logp_old = jnp.zeros((3, 3))
    per_token, s, active = gspo_token_loss(log_w, logp_old, adv, mask, cfg)
    np.testing.assert_allclose(s[:, 0], [1.0, 4.0, 0.9], rtol=1e-6)
    np.testing.assert_allclose(per_token[:, 0], [-1.5, -2.0008, 1.9994], rtol=1e-6)
    np.testing.assert_array_equal(per_token, jnp.broadcast_to(per_token[:, :1], (3, 3)))  # l_i on every token
    np.testing.assert_array_equal(active[:, 0], [False, True, True])

    weight = jnp.ones(3)

    def loss(logp):
        rows = row_contributions(gspo_token_loss(logp, logp_old, adv, mask, cfg)[0], mask, weight, cfg.aggregation, 3)
        return jnp.sum(rows) / normaliser(mask, weight, cfg.aggregation)

    # Sequence mean: (-1.5 - 2.0008 + 1.9994) / 3 = -0.5004667.
    assert float(loss(log_w)) == pytest.approx(-0.5004667, rel=1e-6)
    # d l_i / d logp_it = -A_i s_i / |y_i| inside the range, 0 where clipped; / 3 sequences:
    # row 1: -1.5 * 1 / 2 / 3 = -0.25 on its two tokens; rows 2 and 3 are flat.
    grad = np.asarray(jax.grad(loss)(log_w))
    np.testing.assert_allclose(grad, [[-0.25, -0.25, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)


def test_kl_estimators_by_hand():
    logp, logp_ref = jnp.array([np.log(0.5)]), jnp.array([np.log(0.25)])  # p = 0.5, q = 0.25
    assert float(kl_penalty(logp, logp_ref, KLEstimator.k1)[0]) == pytest.approx(np.log(2))
    assert float(kl_penalty(logp, logp_ref, KLEstimator.k2)[0]) == pytest.approx(0.5 * np.log(2) ** 2)
    assert float(kl_penalty(logp, logp_ref, KLEstimator.k3)[0]) == pytest.approx(0.5 - 1 - np.log(0.5))


def test_ppo_clip_table_by_hand():
    logp_old = jnp.zeros((1, 4))
    ratios = np.array([0.5, 0.9, 1.1, 1.5])
    logp = jnp.log(jnp.asarray(ratios))[None]
    cfg = LossConfig(eps_low=0.2, eps_high=0.28)
    loss_pos, _, act_pos = ppo_token_loss(logp, logp_old, jnp.array([2.0]), cfg)
    # A > 0: -min(w A, clip(w) A) = -A * min(w, clip(w)): 0.5 -> -1.0, 0.9 -> -1.8, 1.1 -> -2.2, 1.5 -> -2.56
    np.testing.assert_allclose(loss_pos[0], [-1.0, -1.8, -2.2, -2.56], rtol=1e-6)
    np.testing.assert_array_equal(act_pos[0], [False, False, False, True])
    loss_neg, _, act_neg = ppo_token_loss(logp, logp_old, jnp.array([-1.0]), cfg)
    # A < 0: -min(-w, -clip(w)) = max(w, clip(w)): 0.5 -> 0.8, 0.9 -> 0.9, 1.1 -> 1.1, 1.5 -> 1.5
    np.testing.assert_allclose(loss_neg[0], [0.8, 0.9, 1.1, 1.5], rtol=1e-6)
    np.testing.assert_array_equal(act_neg[0], [True, False, False, False])
    dual, _, _ = ppo_token_loss(logp, logp_old, jnp.array([-1.0]), LossConfig(dual_clip=1.2))
    # dual clip caps the negative-advantage loss at -c A = 1.2
    np.testing.assert_allclose(dual[0], [0.8, 0.9, 1.1, 1.2], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_policy():
    arch = Arch(
        model_type="qwen2",
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        qkv_bias=True,
        tie_word_embeddings=True,
    )
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    graphdef, state = init_params(arch, mesh, TRAIN_RULES, jax.random.key(0))
    return graphdef, state


def _model_loss(tiny_policy, batch, chunk=0):
    from flax import nnx

    graphdef, state = tiny_policy
    cfg = LossConfig(logits_chunk=chunk)

    def f(state):
        logp, ent = completion_logp_entropy(nnx.merge(graphdef, state), batch, chunk)
        return policy_loss(
            logp, ent, batch, cfg, batch.tokens.shape[1], normaliser(batch.mask, batch.weight, cfg.aggregation)
        )

    return jax.jit(jax.value_and_grad(f, has_aux=True))(state)


def test_padding_does_not_change_the_loss(tiny_policy):
    tokens = np.array([[5, 6, 7], [8, 9, 10]])
    base = _batch(tokens, [[1, 1, 1], [1, 1, 0]], np.full((2, 3), -3.0), [1.0, -0.5], prompt_width=2)
    padded = base.replace(
        prompt_tokens=jnp.concatenate([jnp.full((2, 3), 1, jnp.int32), base.prompt_tokens], axis=1),
        prompt_mask=jnp.concatenate([jnp.zeros((2, 3), jnp.int32), base.prompt_mask], axis=1),
        tokens=jnp.concatenate([base.tokens, jnp.full((2, 2), 1, jnp.int32)], axis=1),
        mask=jnp.concatenate([base.mask, jnp.zeros((2, 2), jnp.int32)], axis=1),
        logp_old=jnp.concatenate([base.logp_old, jnp.zeros((2, 2))], axis=1),
    )
    (l0, _), g0 = _model_loss(tiny_policy, base)
    (l1, _), g1 = _model_loss(tiny_policy, padded)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_chunked_logits_equal_unchunked(tiny_policy):
    tokens = np.arange(14).reshape(2, 7) + 3
    batch = _batch(tokens, np.ones((2, 7)), np.full((2, 7), -3.5), [0.7, -1.3], prompt_width=2)
    (l0, m0), g0 = _model_loss(tiny_policy, batch)
    (l1, m1), g1 = _model_loss(tiny_policy, batch, chunk=3)  # 7 is not a multiple of 3: padding path
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    np.testing.assert_allclose(m0["sum/entropy"], m1["sum/entropy"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_metrics_split_by_sign_and_combine():
    logp_old = jnp.zeros((2, 2))
    logp = jnp.log(jnp.array([[1.5, 1.0], [0.5, 1.0]]))
    batch = _batch([[1, 2], [3, 4]], [[1, 1], [1, 1]], logp_old, [1.0, -1.0], weight=[1.0, 0.0])
    _, terms = policy_loss(logp, jnp.zeros((2, 2)), batch, LossConfig(), 2, jnp.array(1.0))
    m = finalize_metrics(combine_terms(terms, terms))
    assert float(m["clip_frac/pos"]) == 0.5 and float(m["clip_frac/neg"]) == 0.5
    assert float(m["ratio/min"]) == pytest.approx(0.5) and float(m["ratio/max"]) == pytest.approx(1.5)
    assert float(m["tokens"]) == 8 and float(m["tokens_kept"]) == 4
