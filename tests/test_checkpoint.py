"""Checkpoint building blocks: round trip onto another mesh, retention (latest K + best), shape
checks, fingerprints, config-change classification, stop requests."""

import os
import signal

import jax
import numpy as np
import pytest

from rlvr_jax.checkpoint import Checkpointer, CheckpointError, fingerprint
from rlvr_jax.config import CheckpointConfig, ConfigChanges, MeshConfig, OptimConfig, load_config
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.preemption import StopRequest
from rlvr_jax.update import abstract_train_state, init_train_state, make_optimizer

ARCH = Arch.from_hf(
    dict(
        model_type="qwen2",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
)
MESH_A = MeshConfig(data=2, fsdp=2, tensor=2)
MESH_B = MeshConfig(data=1, fsdp=4, tensor=2)


@pytest.fixture(scope="module")
def state():
    mesh = make_mesh(MESH_A)
    _, params = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0))
    tx = make_optimizer(OptimConfig(lr=1e-3), 10)
    return init_train_state(params, tx, mesh, TRAIN_RULES), params, tx


def target_on(mesh_cfg, params, tx):
    return abstract_train_state(params, tx, make_mesh(mesh_cfg), TRAIN_RULES)


def leaves_equal(a, b):
    return all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_round_trip_onto_another_mesh_is_bit_exact(state, tmp_path):
    train_state, params, tx = state
    ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=True))
    ckpt.save(5, train_state, {"note": "x"})
    ckpt.wait()
    restored, meta = ckpt.restore_latest(target_on(MESH_B, params, tx), lambda m: None, pytest.fail)
    assert meta["step"] == 5 and meta["note"] == "x"
    assert leaves_equal(restored.params, train_state.params) and leaves_equal(restored.opt_state, train_state.opt_state)
    assert int(restored.step) == int(train_state.step) and int(restored.skipped) == int(train_state.skipped)
    embed = restored.params["embed"].get_value()
    assert embed.sharding.mesh.shape["fsdp"] == 4  # laid out for the new mesh, not the saved one
    ckpt.close()


def test_keeps_the_latest_k_and_the_best(state, tmp_path):
    train_state, _, _ = state
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep=2, best_metric="eval/acc", async_save=False))
    scores = {1: 0.2, 2: None, 3: 0.9, 4: None, 5: 0.1, 6: None}
    for step, score in scores.items():
        ckpt.save(step, train_state, {}, {"eval/acc": score} if score is not None else {"loss": 1.0})
    assert ckpt.steps() == [3, 5, 6]  # the latest two, plus step 3 (best eval/acc)
    ckpt.close()
    reopened = Checkpointer(
        tmp_path, CheckpointConfig(keep=2, best_metric="eval/acc", best_mode="min", async_save=False)
    )
    reopened.save(7, train_state, {}, {"eval/acc": 0.5})
    assert reopened.steps() == [5, 6, 7]  # min mode: step 5 (0.1) is now the best
    reopened.close()


def test_shape_change_is_an_error_not_corruption(state, tmp_path):
    train_state, _, _tx = state
    ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=False))
    ckpt.save(1, train_state, {})
    wider = Arch.from_hf({**ARCH.to_hf(), "intermediate_size": 96})
    mesh = make_mesh(MESH_A)
    _, other = init_params(wider, mesh, TRAIN_RULES, jax.random.key(0))
    target = abstract_train_state(other, make_optimizer(OptimConfig(lr=1e-3), 10), mesh, TRAIN_RULES)
    with pytest.raises(CheckpointError, match=r"does not fit this run's params[\s\S]*mlp"):
        ckpt.restore_latest(target, lambda m: None, pytest.fail)
    assert ckpt.steps() == [1]  # still there: a mismatch never moves or deletes a checkpoint
    ckpt.close()


def test_fingerprint_sees_every_bit_and_ignores_layout(state):
    _train_state, params, _ = state
    assert fingerprint(params) == fingerprint(jax.device_put(params, jax.devices()[0]))
    flipped = jax.tree.map(lambda x: x, params)
    value = np.asarray(flipped["final_norm"]["scale"].get_value()).copy()
    value.view(np.uint32)[0] ^= 1  # one bit of one parameter
    flipped["final_norm"]["scale"].set_value(jax.numpy.asarray(value))
    assert fingerprint(flipped) != fingerprint(params)


def test_checkpoint_with_the_old_train_key_still_restores(state, tmp_path, monkeypatch):
    """Checkpoints written while TrainState carried an (unused) train key hold `train/key`."""
    from rlvr_jax import checkpoint as ckpt_lib

    train_state, params, tx = state
    original = ckpt_lib._train_item
    with_key = lambda s: {**original(s), "key": jax.random.key_data(jax.random.key(7))}  # noqa: E731
    monkeypatch.setattr(ckpt_lib, "_train_item", with_key)
    ckpt = Checkpointer(tmp_path, CheckpointConfig(async_save=False))
    ckpt.save(3, train_state, {"note": "old"})
    monkeypatch.undo()
    restored, meta = ckpt.restore_latest(target_on(MESH_B, params, tx), lambda m: None, pytest.fail)
    assert meta["step"] == 3 and leaves_equal(restored.params, train_state.params)
    ckpt.close()


def test_config_changes_are_classified():
    saved = load_config(None).model_dump(mode="json")
    changes = ConfigChanges.between(
        saved,
        load_config(
            None,
            [
                "run.steps=500",
                "logging.probe_every=5",
                "mesh.fsdp=4",
                "eval.every=10",
                "optim.lr=0.1",
                "advantage.sign=negative_only",
                "model.param_dtype=bfloat16",
                "model.dtype=bfloat16",
            ],
        ),
    )
    assert changes.harmless == [
        "eval.every: 0 -> 10",
        "logging.probe_every: 10 -> 5",
        "mesh.fsdp: -1 -> 4",
        "run.steps: 100 -> 500",
    ]
    assert changes.trajectory == [
        "advantage.sign: 'full' -> 'negative_only'",
        "model.dtype: 'float32' -> 'bfloat16'",
        "optim.lr: 1e-05 -> 0.1",
    ]
    assert changes.state == ["model.param_dtype: 'float32' -> 'bfloat16'"]
    assert ConfigChanges.between(saved, load_config(None)) == ConfigChanges([], [], [])


def test_a_filled_section_is_not_a_change_from_its_empty_default():
    toy = load_config("toy_strategy")  # model.arch set; its default is {}
    assert ConfigChanges.between(toy.model_dump(mode="json"), toy) == ConfigChanges([], [], [])
    wider = load_config("toy_strategy", ["model.arch.hidden_size=128"])
    assert ConfigChanges.between(toy.model_dump(mode="json"), wider).state == ["model.arch.hidden_size: 64 -> 128"]
    bare = load_config(None)  # a checkpoint without the section keeps meaning its default
    assert ConfigChanges.between(bare.model_dump(mode="json"), toy).state[0] == "model.arch: {} -> '<unset>'"


def test_sigint_requests_a_stop_and_a_second_one_aborts():
    messages = []
    original = signal.signal(signal.SIGINT, signal.default_int_handler)  # CI may start us with SIGINT ignored
    try:
        _sigint_twice(messages)
    finally:
        signal.signal(signal.SIGINT, original)


def test_an_ignored_signal_stays_ignored():
    original = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest(lambda _: None):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, original)


def _sigint_twice(messages):
    with StopRequest(messages.append) as stop:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop(1) and stop.reason == "SIGINT" and "finishing the current step" in messages[0]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
