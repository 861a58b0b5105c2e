"""Content-verified checkpoints: bits changed on disk in files that still parse (a flipped byte in an
array's OCDBT data file, an edited meta record) are caught by the fingerprints saved with the
checkpoint, which is then moved aside like an unreadable one; checkpoints from before fingerprints
still restore; a corrupt checkpoint that cannot be moved aside, or a checkpoint folder that cannot be
written, is one clear error instead of a traceback."""

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from rlvr_jax import checkpoint as checkpoint_lib
from rlvr_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    abstract_items,
    content_fingerprints,
    move_aside,
    read_arrays,
)
from rlvr_jax.config import CheckpointConfig, MeshConfig, OptimConfig
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, init_params
from rlvr_jax.storage import StorageError
from rlvr_jax.update import abstract_train_state, init_train_state, make_optimizer

# Leaves large enough (32 KiB) that Orbax stores their chunks in OCDBT data files: values up to
# 1 KiB are inlined in B-tree nodes, whose checksums already turn a flip into a read error.
ARCH = Arch.from_hf(
    dict(
        model_type="qwen2",
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
)
CFG = CheckpointConfig(async_save=False, keep=5)
PARAMS_LEAF = ("params", "layers.0.mlp.up.value", "layers/0/mlp/up")
MOMENT_LEAF = ("train", "opt_state.1.0.mu.layers.1.mlp.down.value", "opt_state/1/0/mu/layers/1/mlp/down")


@pytest.fixture(scope="module")
def setup():
    """A one-device train state whose Adam moments are not zeros (each leaf its own values, as after
    an update), and the restore target."""
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    _, params = init_params(ARCH, mesh, TRAIN_RULES, jax.random.key(0))
    tx = make_optimizer(OptimConfig(lr=1e-3), 10)
    state = init_train_state(params, tx, mesh, TRAIN_RULES)
    leaves, treedef = jax.tree.flatten(state.params)
    grads = treedef.unflatten([jax.random.normal(jax.random.key(i), x.shape, x.dtype) for i, x in enumerate(leaves)])
    _, opt_state = jax.jit(tx.update)(grads, state.opt_state, state.params)
    state = dataclasses.replace(state, opt_state=opt_state)
    return state, abstract_train_state(params, tx, mesh, TRAIN_RULES)


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def assert_bit_exact(restored, state):
    for name in ("params", "opt_state", "step", "skipped"):
        a, b = flat(getattr(restored, name)), flat(getattr(state, name))
        assert a.keys() == b.keys()
        assert all(a[k].tobytes() == b[k].tobytes() for k in a), name


def saved_run(tmp_path, state, steps=(1, 2)):
    run_dir = tmp_path / "run"
    ckpt = Checkpointer(run_dir / "checkpoints", CFG)
    for step in steps:
        ckpt.save(step, state, {"note": "x"})
    ckpt.close()
    return run_dir


def flip_stored_chunk(item_dir: Path, key: str, flip) -> None:
    """Change bytes inside the stored chunk of one array, in place in the OCDBT data file(s) that
    hold it, keeping every file's size (`flip(chunk) -> changed chunk`)."""
    store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{item_dir}/"}).result()
    (chunk_key,) = [k for k in store.list().result() if k.startswith(f"{key}/".encode()) and b".z" not in k]
    chunk = store.read(chunk_key).result().value
    assert len(chunk) > 1024, "inlined in a B-tree node: not what this test is about"
    changed = flip(chunk)
    assert len(changed) == len(chunk) and changed != chunk
    holders = [f for f in item_dir.rglob("*") if f.is_file() and chunk in f.read_bytes()]
    assert holders, f"no data file holds {chunk_key}"
    for path in holders:
        data = path.read_bytes()
        path.write_bytes(data.replace(chunk, changed))
        assert path.stat().st_size == len(data)


def xor_64_bytes(chunk: bytes) -> bytes:
    """64 bytes inverted in the middle of the (zstd-compressed) chunk, as in the issue's report."""
    mid = len(chunk) // 2
    return chunk[:mid] + bytes(b ^ 0xFF for b in chunk[mid : mid + 64]) + chunk[mid + 64 :]


def one_bit(chunk: bytes) -> bytes:
    mid = len(chunk) // 2
    return chunk[:mid] + bytes([chunk[mid] ^ 0x01]) + chunk[mid + 1 :]


def raw_leaves(run_dir, step, item):
    """One item as Orbax reads it back, unchecked: leaf path (spelt as in the fingerprints) -> array."""
    out = {}

    def walk(tree, path):
        if isinstance(tree, dict | list | tuple):
            for key, value in tree.items() if isinstance(tree, dict) else enumerate(tree):
                walk(value, [*path, str(key)])
        else:
            out["/".join(w for w in path if w != "value")] = np.asarray(tree)

    walk(read_arrays(run_dir, step, item), [])
    return out


def changed_leaves(run_dir, item):
    """Leaves of `item` that read back differently in step 2 than in step 1 (saved from the same state)."""
    before, after = raw_leaves(run_dir, 1, item), raw_leaves(run_dir, 2, item)
    assert before.keys() == after.keys()
    return sorted(k for k in after if after[k].tobytes() != before[k].tobytes())


@pytest.mark.parametrize(
    ("leaf", "flip"), [(PARAMS_LEAF, xor_64_bytes), (MOMENT_LEAF, one_bit)], ids=["params", "adam_mu"]
)
def test_a_flip_inside_array_data_is_caught_and_the_previous_checkpoint_used(setup, tmp_path, leaf, flip):
    state, target = setup
    item, key, path = leaf
    run_dir = saved_run(tmp_path, state)
    flip_stored_chunk(run_dir / "checkpoints" / "2" / item, key, flip)
    # The flip really changes what Orbax reads back, without any error: only the fingerprints can tell.
    assert changed_leaves(run_dir, item) == [path]

    warnings = []
    ckpt = Checkpointer(run_dir / "checkpoints", CFG)
    restored, meta = ckpt.restore_latest(target, lambda m: None, warnings.append)
    assert meta["step"] == 1
    assert_bit_exact(restored, state)
    src = run_dir / "checkpoints" / "2"
    assert warnings == [
        f"checkpoint {src} cannot be restored ({item} leaf {path} does not match the fingerprint saved with it); "
        f"moved to {next((run_dir / 'checkpoints.corrupt').iterdir())}, trying the previous one"
    ]
    assert ckpt.steps() == [1]
    assert [p.name.split("-")[0] for p in (run_dir / "checkpoints.corrupt").iterdir()] == ["2"]  # kept, not deleted
    ckpt.close()


def test_export_refuses_a_checkpoint_whose_params_changed(setup, tmp_path):
    state, target = setup
    run_dir = saved_run(tmp_path, state, steps=(1,))
    flip_stored_chunk(run_dir / "checkpoints" / "1" / "params", PARAMS_LEAF[1], one_bit)
    ckpt = Checkpointer(run_dir / "checkpoints", read_only=True)
    params_target, _ = abstract_items(target)
    with pytest.raises(
        CheckpointError, match=r"checkpoint .*/1 failed its content check \(params leaf layers/0/mlp/up"
    ):
        ckpt.restore_params(1, params_target, ckpt.read_meta(1))
    ckpt.close()


def test_an_edited_meta_record_is_caught(setup, tmp_path):
    state, target = setup
    run_dir = saved_run(tmp_path, state)
    record = run_dir / "checkpoints" / "2" / "meta" / "metadata"
    text = record.read_text()
    assert '"note": "x"' in text
    record.write_text(text.replace('"note": "x"', '"note": "y"'))  # still valid JSON, same size
    warnings = []
    ckpt = Checkpointer(run_dir / "checkpoints", CFG)
    _, meta = ckpt.restore_latest(target, lambda m: None, warnings.append)
    assert meta["step"] == 1
    assert len(warnings) == 1 and "the meta record does not match its digest" in warnings[0]
    ckpt.close()


def test_a_clean_restore_is_verified_and_bit_exact(setup, tmp_path):
    state, target = setup
    run_dir = saved_run(tmp_path, state)
    ckpt = Checkpointer(run_dir / "checkpoints", CFG)
    restored, meta = ckpt.restore_latest(target, lambda m: None, pytest.fail)  # no warning, no notice
    assert meta["step"] == 2 and meta["integrity"]["scheme"] == checkpoint_lib.FINGERPRINT_SCHEME
    assert set(meta["integrity"]["params"]) >= {"embed", "layers/0/mlp/up"}
    assert {"step", "skipped", "opt_state/1/0/mu/layers/1/mlp/down"} <= set(meta["integrity"]["train"])
    assert_bit_exact(restored, state)
    ckpt.close()


def test_a_checkpoint_from_before_fingerprints_restores_with_a_notice(setup, tmp_path):
    state, target = setup
    directory = tmp_path / "run" / "checkpoints"
    ckpt = Checkpointer(directory, CFG)
    # What save() wrote before fingerprints existed: the same three items (the train item still holding
    # the since-removed train key), a record without `integrity`.
    old_record = {"format": 1, "step": 3, "key_impl": "threefry2x32", "note": "x"}
    old_train = {**checkpoint_lib._train_item(state), "key": jax.random.key_data(jax.random.key(7))}
    ckpt.manager.save(
        3,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(old_train),
            meta=ocp.args.JsonSave(old_record),
        ),
        force=True,
    )
    ckpt.close()
    notices = []
    ckpt = Checkpointer(directory, CFG)
    restored, meta = ckpt.restore_latest(target, lambda m: None, notices.append)
    assert meta == old_record
    assert notices == [
        f"checkpoint {directory / '3'}: it has no content fingerprints (saved by an rlvr-jax without them); "
        "restored unverified"
    ]
    assert_bit_exact(restored, state)
    ckpt.close()


# --- the fingerprint itself ---------------------------------------------------------------------


def test_every_single_bit_flip_changes_both_sums():
    values = {"f32": jnp.linspace(-3.0, 3.0, 24, dtype=jnp.float32).reshape(4, 6), "bf16": jnp.ones(5, jnp.bfloat16)}
    base = content_fingerprints(values)
    for name, width in (("f32", 32), ("bf16", 16)):
        bits = np.asarray(values[name]).view(np.uint32 if width == 32 else np.uint16)
        for bit in range(width):
            flipped = bits.copy()
            flipped.reshape(-1)[3] ^= 1 << bit
            changed = content_fingerprints({**values, name: jnp.asarray(flipped.view(values[name].dtype))})
            assert changed[name][0] != base[name][0] and changed[name][1] != base[name][1], (name, bit)
            assert [k for k in base if base[k] != changed[k]] == [name]


def test_the_mixed_sum_sees_what_the_plain_sum_misses():
    x = np.arange(16, dtype=np.float32)
    swapped = x.copy()
    swapped[[2, 9]] = swapped[[9, 2]]  # same words, other places
    bits = x.view(np.uint32).copy()
    assert bits[2] & (1 << 23) == 0 and bits[1] & (1 << 23)  # 2.0 and 1.0: exponents differ in bit 23
    bits[2] |= 1 << 23  # one bit set in one word ...
    bits[1] &= ~np.uint32(1 << 23)  # ... and the same bit cleared in another: the plain sum is unchanged
    cancelling = bits.view(np.float32)
    base = content_fingerprints({"x": jnp.asarray(x)})["x"]
    for other in (swapped, cancelling):
        plain, mixed = content_fingerprints({"x": jnp.asarray(other)})["x"]
        assert plain == base[0] and mixed != base[1]


def test_fingerprints_ignore_layout():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    x = jax.random.normal(jax.random.key(0), (16, 8))
    sharded = jax.device_put(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), "tensor"))
    )
    assert content_fingerprints({"x": sharded}) == content_fingerprints({"x": jax.device_put(x, jax.devices()[0])})


# --- folders that cannot be written -------------------------------------------------------------


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_corrupt_checkpoint_that_cannot_be_moved_aside_is_one_clear_error(setup, tmp_path):
    state, target = setup
    run_dir = saved_run(tmp_path, state)
    flip_stored_chunk(run_dir / "checkpoints" / "2" / "params", PARAMS_LEAF[1], one_bit)
    (run_dir / "checkpoints.corrupt").write_text("a file where the quarantine folder goes")  # a real OS error
    ckpt = Checkpointer(run_dir / "checkpoints", CFG)
    with pytest.raises(CheckpointError) as err:
        ckpt.restore_latest(target, lambda m: None, pytest.fail)
    text = one_line(err)
    assert text.startswith(
        f"checkpoint {run_dir / 'checkpoints' / '2'} cannot be restored (params leaf layers/0/mlp/up"
    )
    assert "cannot be moved aside to" in text and "FileExistsError" in text
    assert f"or move {run_dir / 'checkpoints' / '2'} out of {run_dir / 'checkpoints'} yourself" in text
    assert ckpt.steps() == [1, 2]  # nothing moved, nothing lost
    ckpt.close()


def test_a_read_only_checkpoint_folder_is_one_clear_error(setup, tmp_path, monkeypatch):
    """A permission error on the move (as on a read-only checkpoints/; root ignores chmod, so it is
    raised here by the rename) names the folders and the fix."""
    state, target = setup
    run_dir = saved_run(tmp_path, state)
    flip_stored_chunk(run_dir / "checkpoints" / "2" / "train", MOMENT_LEAF[1], one_bit)
    ckpt = Checkpointer(run_dir / "checkpoints", CFG)

    def read_only(self, dest):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(ckpt.directory), "rename", read_only)
    with pytest.raises(CheckpointError) as err:
        ckpt.restore_latest(target, lambda m: None, pytest.fail)
    text = one_line(err)
    assert "(PermissionError: [Errno 13] Permission denied" in text
    assert f"check that this user may write to {run_dir / 'checkpoints'} and {run_dir}" in text
    assert ckpt.steps() == [1, 2]
    ckpt.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores chmod (the rename test above covers it)")
def test_chmod_read_only_checkpoint_folder_stops_at_once(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    try:
        with pytest.raises(
            StorageError, match=r"cannot write to the checkpoint folder .*PermissionError.*check that this user"
        ):
            Checkpointer(folder, CFG)
    finally:
        folder.chmod(0o755)


def test_a_checkpoint_folder_that_cannot_be_written_stops_at_once(tmp_path):
    (tmp_path / "run").write_text("a file where the run directory goes")
    with pytest.raises(StorageError) as err:
        Checkpointer(tmp_path / "run" / "checkpoints", CFG)
    text = one_line(err)
    assert text.startswith(f"cannot write to the checkpoint folder {tmp_path / 'run' / 'checkpoints'} (")
    assert "check that this user may write to" in text


def test_restart_that_cannot_move_checkpoints_aside_is_one_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "run" / "checkpoints"
    (folder / "4").mkdir(parents=True)
    monkeypatch.setattr(checkpoint_lib.time, "strftime", lambda *args: "T")
    (tmp_path / "run" / "checkpoints.replaced-T" / "1").mkdir(parents=True)  # taken: the rename fails
    with pytest.raises(CheckpointError) as err:
        move_aside(checkpoint_lib.as_path(folder))
    text = one_line(err)
    assert text.startswith(f"--restart: cannot move {folder} aside to {folder}.replaced-T (FileExistsError: ")
    assert text.endswith("then run again (nothing was deleted)")
    assert (folder / "4").is_dir()


def test_meta_digest_covers_the_whole_record(setup, tmp_path):
    state, _ = setup
    run_dir = saved_run(tmp_path, state, steps=(1,))
    record = json.loads((run_dir / "checkpoints" / "1" / "meta" / "metadata").read_text())
    assert record["integrity"]["meta_sha256"] == checkpoint_lib._record_digest(record)
    record["integrity"]["params"]["embed"][0] += 1
    assert record["integrity"]["meta_sha256"] != checkpoint_lib._record_digest(record)
