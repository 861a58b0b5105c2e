"""Import a llama-family GGUF file (llama.cpp's format) as a Hugging Face folder (`rlvr-jax import-gguf`).

The `gguf` package (llama.cpp's own, numpy only) reads the metadata and tensors and dequantizes them;
tensor names go through one declarative table, `TENSOR_NAMES`, as in hf_io. Two things a GGUF
stores differently from a Hugging Face checkpoint are undone here:
- llama.cpp's converter permutes the rows of q and k (weights and biases) of Llama models for its
  interleaved RoPE (`LlamaModel.permute` in convert_hf_to_gguf.py). Qwen2 and Qwen3 run with the
  rotate-half RoPE there too and are written unpermuted.
- Llama 3 RoPE scaling is written as per-frequency factors (`rope_freqs.weight`), not as config
  fields; the fields are recovered from the factors and checked against them.
The tokenizer is rebuilt from `tokenizer.ggml.*` by transformers' own GGUF tokenizer converter
(the library transformers uses for `from_pretrained(..., gguf_file=...)`), without torch.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.model.arch import Arch, ArchError

ARCHITECTURES = ("llama", "qwen2", "qwen3")  # GGUF general.architecture, equal to the HF model_type
PERMUTED_QK = ("llama",)  # architectures whose q/k rows llama.cpp's converter permutes
# Storage types read (through gguf.quants.dequantize), as named by gguf.GGMLQuantizationType.
TENSOR_TYPES = (
    *("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"),
    *("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS"),
)
TOKENIZER_MODELS = ("gpt2",)  # tokenizer.ggml.model: byte-level BPE (Llama 3, Qwen2/3, SmolLM)
DTYPES = ("float32", "bfloat16")

# (GGUF tensor name, HF tensor name); {i} is the layer index.
TENSOR_NAMES: tuple[tuple[str, str], ...] = (
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output.weight", "lm_head.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("blk.{i}.attn_q.bias", "model.layers.{i}.self_attn.q_proj.bias"),
    ("blk.{i}.attn_k.bias", "model.layers.{i}.self_attn.k_proj.bias"),
    ("blk.{i}.attn_v.bias", "model.layers.{i}.self_attn.v_proj.bias"),
    ("blk.{i}.attn_output.bias", "model.layers.{i}.self_attn.o_proj.bias"),
    ("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
    ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
    ("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ("blk.{i}.ffn_gate.bias", "model.layers.{i}.mlp.gate_proj.bias"),
    ("blk.{i}.ffn_up.bias", "model.layers.{i}.mlp.up_proj.bias"),
    ("blk.{i}.ffn_down.bias", "model.layers.{i}.mlp.down_proj.bias"),
)
ROPE_FREQS = "rope_freqs.weight"  # Llama 3 RoPE scaling factors: read into config.json, not a weight
_MAX_SHARD_BYTES = 4 << 30


class GGUFError(ValueError):
    """A GGUF file that cannot be imported; the message names the file and what is supported."""


def import_gguf(
    file: str | Path, out: str | Path, dtype: str = "float32", max_shard_bytes: int = _MAX_SHARD_BYTES
) -> Arch:
    """Write the Hugging Face folder `out` (safetensors, config.json, tokenizer) of the GGUF `file`.

    Everything is checked before anything is written, and the folder is written under a temporary
    name and renamed when complete, so a failed import never leaves a half folder."""
    file, out = Path(file), Path(out)
    if dtype not in DTYPES:
        raise GGUFError(f"--dtype {dtype} is not supported; supported: {', '.join(DTYPES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GGUFError(f"--out {out} exists and is not an empty folder; choose a new folder")
    reader = _open(file)
    meta = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    arch = read_arch(meta, tensors, file)
    names = _check_tensors(arch, tensors, file)
    tokenizer = build_tokenizer(meta, file)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_safetensors(tmp, arch, [(names[n], tensors[n]) for n in names], dtype, max_shard_bytes)
        config = {**arch.to_hf(), "dtype": dtype}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return arch


def _open(file: Path) -> Any:
    from gguf import GGUFReader

    if not file.is_file():
        raise GGUFError(f"{file} does not exist (expected a .gguf file)")
    try:
        return GGUFReader(file)
    except Exception as err:  # - any parse failure means the same thing: not a GGUF file we can read
        reason = str(err).splitlines()[0] if str(err) else ""
        raise GGUFError(f"{file} is not a GGUF file ({type(err).__name__}: {reason})") from None


# --- config.json from the metadata ----------------------------------------------------------------


def read_arch(meta: dict[str, Any], tensors: dict[str, Any], file: Path) -> Arch:
    """The architecture the GGUF metadata (`{arch}.*` keys) and tensor list describe."""
    model_type = meta.get("general.architecture")
    if model_type not in ARCHITECTURES:
        raise GGUFError(
            f"{file}: general.architecture {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )

    def get(key: str, default: Any = None, integer: bool = False) -> Any:
        name = f"{model_type}.{key}"
        if name not in meta and default is None:
            raise GGUFError(f"{file}: metadata key {name} is missing")
        value = meta.get(name, default)
        if integer and (isinstance(value, bool) or not isinstance(value, int)):
            raise GGUFError(f"{file}: metadata key {name} is {value!r}; one integer is supported (not one per layer)")
        return value

    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{file}: tensor token_embd.weight is missing")
    heads, hidden = get("attention.head_count", integer=True), get("embedding_length", integer=True)
    head_dim = get("attention.key_length", hidden // heads, integer=True)
    if get("rope.dimension_count", head_dim) != head_dim:
        raise GGUFError(
            f"{file}: {model_type}.rope.dimension_count differs from the head size; partial RoPE is not supported"
        )
    if get("rope.scaling.type", "none") != "none":
        raise GGUFError(
            f"{file}: {model_type}.rope.scaling.type {get('rope.scaling.type')!r} is not supported; "
            "supported: none, and Llama 3 scaling (rope_freqs.weight)"
        )
    theta = _f32(get("rope.freq_base", 10000.0))
    cfg = {
        "model_type": model_type,
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),  # ggml order: [hidden, vocab]
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length", integer=True),
        "num_hidden_layers": get("block_count", integer=True),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads, integer=True),
        "head_dim": head_dim,
        "rope_theta": theta,
        "rms_norm_eps": _f32(get("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": get("context_length", integer=True),
        "tie_word_embeddings": "output.weight" not in tensors,  # llama.cpp writes no output.weight when tied
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_gate.bias" in tensors,
        **_token_ids(meta),
    }
    if ROPE_FREQS in tensors:
        cfg["rope_scaling"] = llama3_rope_scaling(_dequantize(tensors[ROPE_FREQS]), theta, head_dim, file)
    try:
        return Arch.from_hf(cfg, source=str(file))
    except ArchError as err:
        raise GGUFError(str(err)) from None


def _f32(value: float) -> float:
    """The shortest decimal of a float32 metadata value: 1e-05, not 9.999999747378752e-06."""
    return float(str(np.float32(value)))


def _token_ids(meta: dict[str, Any]) -> dict[str, Any]:
    """bos / eos / pad ids; the end-of-turn tokens llama.cpp stops on (eot, eom) join the eos list."""
    eos = [
        meta[f"tokenizer.ggml.{k}_token_id"] for k in ("eos", "eot", "eom") if f"tokenizer.ggml.{k}_token_id" in meta
    ]
    eos = list(dict.fromkeys(eos))
    return {
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


def llama3_rope_scaling(factors: np.ndarray, theta: float, head_dim: int, file: Path) -> dict[str, Any]:
    """config.json `rope_scaling` (llama3) that reproduces llama.cpp's per-frequency factors.

    llama.cpp divides frequency f by 1 above the high-frequency limit, by `factor` below the
    low-frequency one, and by 1 / ((1 - s) / factor + s) in between, where
    s = (orig * f / (2 pi) - low) / (high - low) is linear in f. The factors fix that line's slope and
    intercept, not (orig, low, high) themselves: the integer `orig` nearest the low = 1 solution (the
    value of every Llama 3 release) is chosen, and the result is checked against the factors.
    """
    from rlvr_jax.model.decoder import rope_inv_freq

    base = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    r = np.asarray(factors, np.float64).reshape(-1)
    factor = float(r.max())
    between = (r > 1 + 1e-6) & (r < factor * (1 - 1e-6))
    if r.shape != base.shape or factor <= 1 or between.sum() < 2:
        raise GGUFError(
            f"{file}: {ROPE_FREQS} is not Llama 3 RoPE scaling with two or more frequencies between "
            "its limits; the scaling cannot be recovered"
        )
    smooth = (1 / r[between] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(base[between], smooth, 1)
    orig_if_low_is_1 = -2 * math.pi * slope / intercept
    orig = round(orig_if_low_is_1)
    low = orig / orig_if_low_is_1
    scaling = {
        "rope_type": "llama3",
        "factor": _round(factor),
        "low_freq_factor": _round(low),
        "high_freq_factor": _round(low * (1 - 1 / intercept)),
        "original_max_position_embeddings": orig,
    }
    unrecoverable = f"{file}: {ROPE_FREQS} does not follow Llama 3 RoPE scaling; the scaling cannot be recovered"
    try:  # a fit to factors of another shape gives sizes no config may hold (a negative original length)
        arch = Arch.from_hf(
            {"model_type": "llama", "vocab_size": 1, "hidden_size": head_dim, "intermediate_size": 1,
             "num_hidden_layers": 1, "num_attention_heads": 1, "head_dim": head_dim, "rope_theta": theta,
             "rope_scaling": scaling}
        )  # fmt: skip
    except ArchError:
        raise GGUFError(unrecoverable) from None
    if not np.allclose(rope_inv_freq(arch), base / r, rtol=1e-5, atol=0):
        raise GGUFError(unrecoverable)
    return scaling


def _round(x: float) -> float:
    return float(f"{x:.6g}")


# --- tensors ----------------------------------------------------------------------------------------


def tensor_names(arch: Arch) -> dict[str, str]:
    """GGUF name -> HF name for every row of TENSOR_NAMES, expanded over the layers."""
    out = {}
    for gguf_name, hf_name in TENSOR_NAMES:
        for i in range(arch.num_layers) if "{i}" in gguf_name else [None]:
            out[gguf_name.format(i=i)] = hf_name.format(i=i)
    return out


def _check_tensors(arch: Arch, tensors: dict[str, Any], file: Path) -> dict[str, str]:
    """GGUF name -> HF name of every tensor to write, checked against what the decoder loads
    (hf_io's table for this architecture): names, shapes and storage types."""
    from flax import nnx
    from gguf import GGMLQuantizationType

    from rlvr_jax.model import abstract_model
    from rlvr_jax.model.hf_io import hf_shape, name_map

    table = tensor_names(arch)
    unknown = sorted(set(tensors) - set(table) - {ROPE_FREQS})
    if unknown:
        raise GGUFError(
            f"{file}: unexpected tensor {unknown[0]}{_more(unknown)}; not a {arch.model_type} model this importer reads"
        )
    _, abstract = abstract_model(arch)
    flat = dict(nnx.to_flat_state(abstract))
    wanted = {hf: hf_shape(tuple(flat[path].shape), merge) for path, (hf, merge) in name_map(arch, abstract).items()}
    have = {table[name]: name for name in tensors if name in table}
    gguf_of = {hf: g for g, hf in table.items()}
    missing = sorted(gguf_of[hf] for hf in set(wanted) - set(have))
    if missing:
        raise GGUFError(
            f"{file}: tensor {missing[0]} is missing{_more(missing)}; the metadata describes a model with it"
        )
    extra = sorted(have[hf] for hf in set(have) - set(wanted))
    if extra:
        raise GGUFError(
            f"{file}: unexpected tensor {extra[0]}{_more(extra)}; the metadata describes a model without it"
        )
    for hf, name in have.items():
        tensor = tensors[name]
        kind = GGMLQuantizationType(tensor.tensor_type).name
        if kind not in TENSOR_TYPES:
            raise GGUFError(
                f"{file}: tensor {name} is stored as {kind}, which is not supported; supported: {', '.join(TENSOR_TYPES)}"
            )
        shape = tuple(int(d) for d in reversed(tensor.shape))
        if shape != wanted[hf]:
            raise GGUFError(
                f"{file}: tensor {name} has shape {list(shape)}, but the metadata implies {list(wanted[hf])}"
            )
    return {name: hf for hf, name in have.items()}


def _more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _dequantize(tensor: Any) -> np.ndarray:
    """f32 values in numpy (HF) order: ggml lists dims innermost first, so [in, out] reads [out, in]."""
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)


def undo_qk_permutation(rows: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `LlamaModel.permute`, which wrote each head's rows [2, H/2] as [H/2, 2]."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def hf_tensor(arch: Arch, tensor: Any) -> np.ndarray:
    """One GGUF tensor as the HF tensor it came from (f32)."""
    values = _dequantize(tensor)
    if arch.model_type in PERMUTED_QK and ".attn_q." in tensor.name:
        values = undo_qk_permutation(values, arch.num_heads)
    if arch.model_type in PERMUTED_QK and ".attn_k." in tensor.name:
        values = undo_qk_permutation(values, arch.num_kv_heads)
    return values


def _write_safetensors(folder: Path, arch: Arch, items: list, dtype: str, max_shard_bytes: int) -> None:
    """model.safetensors, or shards + index (save_pretrained's layout); one shard in memory at a time."""
    import ml_dtypes
    from safetensors.numpy import save_file

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float32)
    shards: list[list] = [[]]
    size = 0
    for hf, tensor in items:
        nbytes = math.prod(int(d) for d in tensor.shape) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((hf, tensor))
        size += nbytes
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    total = 0
    for file, shard in zip(files, shards):
        arrays = {hf: hf_tensor(arch, tensor).astype(np_dtype) for hf, tensor in shard}
        total += sum(a.nbytes for a in arrays.values())
        save_file(arrays, str(folder / file), metadata={"format": "pt"})
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {hf: f for f, s in zip(files, shards) for hf, _ in s}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


# --- tokenizer ----------------------------------------------------------------------------------------


def build_tokenizer(meta: dict[str, Any], file: Path) -> Any:
    """The `PreTrainedTokenizerFast` (with the chat template) that `tokenizer.*` metadata describes."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    fields = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    vocab, config = fields["tokenizer"], fields["tokenizer_config"]
    model = vocab.get("tokenizer_type")
    if model not in TOKENIZER_MODELS:
        raise GGUFError(
            f"{file}: tokenizer.ggml.model {model!r} is not supported; supported: {', '.join(TOKENIZER_MODELS)} "
            "(byte-level BPE)"
        )
    for key in ("tokens", "merges"):
        if key not in vocab:
            raise GGUFError(f"{file}: metadata key tokenizer.ggml.{key} is missing; the tokenizer cannot be built")
    backend, extra = convert_gguf_tokenizer(meta["general.architecture"], vocab)
    special = {
        "bos_token": "bos_token_id",
        "eos_token": "eos_token_id",
        "unk_token": "unk_token_id",
        "pad_token": "pad_token_id",
    }
    config.update({name: vocab["tokens"][vocab[key]] for name, key in special.items() if key in vocab})
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
