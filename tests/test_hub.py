"""Hugging Face Hub model ids (`owner/name`) as model paths: downloaded once (process 0 first) into the
HF cache and read from there by every loader; offline, one line that says what to do instead."""

import argparse
import json
import shutil
import time
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest
from flax import nnx

from rlvr_jax import cli, storage
from rlvr_jax.config import MeshConfig, ModelConfig
from rlvr_jax.mesh import TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, ArchError, from_pretrained, load_policy
from rlvr_jax.storage import ModelSourceError, resolve_model_path
from rlvr_jax.tokenizer import TokenizerError, load_tokenizer

REPO = "tiny-org/tiny-qwen2"
NEVER_CACHED = "rlvr-jax-tests/never-downloaded"


@pytest.fixture(autouse=True)
def fresh_resolution_cache():
    storage._hub_snapshot.cache_clear()  # each test sees its own (fake or real) Hub
    yield
    storage._hub_snapshot.cache_clear()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, qwen2_dir):
    """snapshot_download replaced by a copy of the tiny saved qwen2 model into an HF-style cache."""
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        owner, name = repo_id.split("/")
        snapshot = tmp_path / "hub-cache" / f"models--{owner}--{name}" / "snapshots" / "0123abcd"
        if not snapshot.exists():
            shutil.copytree(qwen2_dir, snapshot)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.fixture(scope="module")
def mesh1():
    return make_mesh(MeshConfig(), devices=jax.devices()[:1])


def _flat(state) -> dict:
    return {".".join(map(str, path)): np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}


def test_a_hub_id_loads_like_its_folder_and_downloads_once(fake_hub, qwen2_dir, mesh1):
    arch, _, state = from_pretrained(REPO, mesh1, TRAIN_RULES)
    arch_dir, _, state_dir = from_pretrained(qwen2_dir, mesh1, TRAIN_RULES)
    assert arch == arch_dir == Arch.from_dir(REPO)
    got, want = _flat(state), _flat(state_dir)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert load_policy(ModelConfig(path=REPO), mesh1, TRAIN_RULES, jax.random.key(0))[0] == arch
    tok, tok_dir = load_tokenizer(REPO), load_tokenizer(qwen2_dir)
    assert tok.encode("What is 12 + 30?") == tok_dir.encode("What is 12 + 30?")
    assert tok.chat_template == tok_dir.chat_template and tok.padding_side == "left"
    # One download check for the five loads; config, weights and tokenizer files, top level only.
    assert [repo for repo, _ in fake_hub] == [REPO]
    kwargs = fake_hub[0][1]
    assert {"*.json", "*.safetensors"} <= set(kwargs["allow_patterns"]) and kwargs["ignore_patterns"] == ["*/*"]


def test_generate_and_eval_take_a_hub_id(fake_hub, capsys):
    assert (
        cli.main(["generate", "--model", REPO, "--prompt", "12 + 30", "--max-new-tokens", "3", "--temperature", "0"])
        == 0
    )
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert row["prompt"] == "12 + 30" and 1 <= len(row["token_ids"]) <= 3
    assert [repo for repo, _ in fake_hub] == [REPO]
    parser_args = ["eval", "--model", REPO, "--task", "arithmetic", "--out", "x.json"]
    parser = argparse.ArgumentParser()
    cli.evaluate.add_eval_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(parser_args).model == REPO  # kept as given (it was made an absolute local path)


def test_offline_and_not_cached_fails_at_once_with_one_line(tmp_path):
    """The real snapshot_download, offline (tests run with HF_HUB_OFFLINE=1) and with nothing cached."""
    start = time.perf_counter()
    with pytest.raises(ArchError) as info:
        Arch.from_dir(NEVER_CACHED)
    message = str(info.value)
    assert time.perf_counter() - start < 10
    assert "\n" not in message and message.startswith(f"{NEVER_CACHED}: no such folder")
    assert "HF_HUB_OFFLINE=1" in message and "rlvr-jax import-gguf FILE.gguf --out DIR" in message
    with pytest.raises(TokenizerError, match="no such folder, and the Hugging Face Hub cannot be reached"):
        load_tokenizer(NEVER_CACHED)
    for command in (
        ["generate", "--model", NEVER_CACHED, "--prompt", "x"],
        ["train", "--run-dir", str(tmp_path / "run"), f"model.path={NEVER_CACHED}", "run.steps=1"],
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(command)
        assert str(exited.value) == f"rlvr-jax {command[0]}: {message}" and exited.value.code == 2


def test_paths_that_look_local_keep_their_error_and_never_reach_the_hub(monkeypatch, tmp_path):
    def no_hub(*args, **kwargs):
        raise AssertionError("a local-looking path reached the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    for path in ("./no/such", "../no-such", str(tmp_path / "absent"), "no/such/model", "~/models/x", "gs://b/m"):
        assert resolve_model_path(path) == path
    with pytest.raises(ArchError, match=r"absent/config.json not found"):
        Arch.from_dir(tmp_path / "absent")
    (tmp_path / "owner" / "name").mkdir(parents=True)  # an existing local folder wins over a Hub id
    assert resolve_model_path("owner/name") == "owner/name"


@pytest.mark.parametrize("process", [0, 1])
def test_process_0_downloads_first_and_everyone_meets_its_error(monkeypatch, fake_hub, process):
    """Seen from each of 2 processes: process 0 downloads before the barrier (and reaches it even when
    the download fails); process 1 only after it, from the cache process 0 filled."""
    from jax.experimental import multihost_utils

    events = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: process)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: events.append(("barrier", name)))
    download = huggingface_hub.snapshot_download  # the fake, seen in order with the barrier
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda r, **kw: events.append(("download", r)) or download(r, **kw)
    )
    assert Path(resolve_model_path(REPO)).is_dir() and len(fake_hub) == 1
    barrier = ("barrier", f"rlvr_jax_hub_download_{REPO}")
    assert events == ([barrier, ("download", REPO)] if process else [("download", REPO), barrier])

    def offline(repo_id, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    storage._hub_snapshot.cache_clear()
    events.clear()
    with pytest.raises(ModelSourceError, match=f"{REPO}: no such folder, and the Hugging Face Hub cannot be reached"):
        resolve_model_path(REPO)
    assert events == [barrier]  # process 0 released the others before raising; process 1 waited first
