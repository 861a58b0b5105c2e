"""Tiny GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them (tests only).

The writer uses llama.cpp's own `gguf` package for everything it can (tensor names from
`gguf.get_tensor_name_map`, metadata keys from `GGUFWriter`, quantization from `gguf.quants`), so the
importer's declarative table and metadata reading are checked against an independent source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from rlvr_jax.model import Arch

GGUF_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}
F32, Q8_0 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`, applied to Llama q/k weights and biases."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(arch: Arch) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.generate_extra_tensors`: the `rope_freqs.weight` factors."""
    sc = arch.rope_scaling
    dim = arch.head_dim
    freqs = 1.0 / (arch.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
    high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(sc.factor)
        else:
            smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
                sc.high_freq_factor - sc.low_freq_factor
            )
            factors.append(1 / ((1 - smooth) / sc.factor + smooth))
    return np.asarray(factors, np.float32)


def quantized(w: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """What a GGUF stores for the HF tensor `w` (2-D weights in `qtype`, vectors in F32), dequantized."""
    if w.ndim < 2 or qtype == F32:
        return w
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)


def write_gguf(
    hf_dir: Path,
    path: Path,
    qtype: gguf.GGMLQuantizationType = F32,
    architecture: str | None = None,
    tokenizer_model: str = "gpt2",
    odd_type: tuple[str, gguf.GGMLQuantizationType] | None = None,
) -> Path:
    """The GGUF llama.cpp's converter writes for the HF folder `hf_dir`. For error tests:
    `architecture` overrides general.architecture, `tokenizer_model` tokenizer.ggml.model, and
    `odd_type` = (GGUF tensor name, type) stores that tensor as random bytes of that type."""
    arch = Arch.from_dir(hf_dir)
    gguf_arch = GGUF_ARCH[arch.model_type]
    writer = gguf.GGUFWriter(str(path), architecture or gguf.MODEL_ARCH_NAMES[gguf_arch])
    _add_hparams(writer, arch, qtype)
    add_tokenizer(writer, hf_dir, tokenizer_model)
    names = gguf.get_tensor_name_map(gguf_arch, arch.num_layers)
    for hf_name, w in load_file(hf_dir / "model.safetensors").items():
        if arch.model_type == "llama" and ".q_proj." in hf_name:
            w = llama_cpp_permute(w, arch.num_heads, arch.num_heads)
        if arch.model_type == "llama" and ".k_proj." in hf_name:
            w = llama_cpp_permute(w, arch.num_heads, arch.num_kv_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if odd_type is not None and name == odd_type[0]:
            raw = np.random.default_rng(0).integers(0, 256, gguf.quants.quant_shape_to_byte_shape(w.shape, odd_type[1]))
            writer.add_tensor(name, raw.astype(np.uint8), raw_dtype=odd_type[1])
        elif w.ndim < 2 or qtype == F32:
            writer.add_tensor(name, w.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    if arch.rope_scaling is not None:
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(arch))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_hparams(writer: gguf.GGUFWriter, arch: Arch, qtype: gguf.GGMLQuantizationType) -> None:
    """`TextModel.set_gguf_parameters` (+ `LlamaModel`'s vocab size and rope dimension count)."""
    writer.add_context_length(arch.max_position_embeddings)
    writer.add_embedding_length(arch.hidden_size)
    writer.add_block_count(arch.num_layers)
    writer.add_feed_forward_length(arch.intermediate_size)
    writer.add_head_count(arch.num_heads)
    writer.add_head_count_kv(arch.num_kv_heads)
    writer.add_rope_freq_base(arch.rope_theta)
    writer.add_layer_norm_rms_eps(arch.rms_norm_eps)
    if arch.head_dim != arch.hidden_size // arch.num_heads:  # config.json states head_dim
        writer.add_key_length(arch.head_dim)
        writer.add_value_length(arch.head_dim)
    if arch.model_type == "llama":
        writer.add_vocab_size(arch.vocab_size)
        writer.add_rope_dimension_count(arch.head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == F32 else gguf.LlamaFileType.MOSTLY_Q8_0)


def add_tokenizer(writer: gguf.GGUFWriter, hf_dir: Path, model: str = "gpt2") -> None:
    """`_set_vocab_gpt2`: tokens by id (padded with [PAD{i}]), token types, merges, special ids, template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    size = Arch.from_dir(hf_dir).vocab_size
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            special = i in added and added[i].special
            types.append(
                gguf.TokenType.CONTROL
                if special
                else gguf.TokenType.USER_DEFINED
                if i in added
                else gguf.TokenType.NORMAL
            )
    merges = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["merges"]
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    if tok.bos_token_id is not None:
        writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)
