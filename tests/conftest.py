"""Test setup: 8 fake CPU devices (set before anything imports jax) and shared tiny fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent XLA cache for the session: the many short training runs (in process and in
# subprocesses, which inherit the environment) compile the same functions; executables are identical.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rlvr_jax_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest

from tests import hf_fixtures


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab 320, ChatML template) saved as a transformers folder."""
    return hf_fixtures.make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session", params=sorted(hf_fixtures.TINY_CONFIGS))
def hf_model_dir(request, tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random torch model per family (qwen2, llama with llama3 rope, qwen3), saved HF-style."""
    return hf_fixtures.make_hf_model(request.param, tmp_path_factory.mktemp(request.param), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory, tiny_tokenizer_dir):
    return hf_fixtures.make_hf_model("qwen2", tmp_path_factory.mktemp("qwen2_single"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def toy_base(tmp_path_factory):
    """A briefly warm-started toy policy and its data dir (runs start from it via model.path)."""
    from rlvr_jax import cli
    from rlvr_jax.config import load_config
    from rlvr_jax.mesh import make_mesh
    from rlvr_jax.warmstart import build_base_policy

    out = tmp_path_factory.mktemp("toy_base")
    cfg = load_config(
        cli.DEFAULT_CONFIG, ["warmstart.steps=30", "warmstart.traces=512", f"data.data_dir={out / 'data'}"]
    )
    folder = build_base_policy(cfg, out / "policy", out / "data", make_mesh(cfg.mesh), log=lambda _: None)
    return folder, out / "data"
