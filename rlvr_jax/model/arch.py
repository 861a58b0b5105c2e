"""Architecture description of a Llama / Qwen2 / Qwen3 decoder, read from and written to HF config.json.

Both `rope_theta` layouts are accepted: transformers 4 (top-level `rope_theta` + `rope_scaling`) and
transformers 5 (`rope_parameters: {rope_theta, rope_type, ...}`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from etils import epath

from rlvr_jax.storage import ModelSourceError, as_path, resolve_model_path

SUPPORTED = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


class ArchError(ValueError):
    """An unsupported or malformed config.json; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.x frequency-dependent RoPE scaling."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class Arch:
    model_type: str  # qwen2 | llama | qwen3
    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: always; Llama/Qwen3: `attention_bias`
    o_bias: bool = False  # Llama/Qwen3 `attention_bias` also biases o_proj
    mlp_bias: bool = False  # Llama `mlp_bias`
    qk_norm: bool = False  # Qwen3 RMSNorm over head_dim on q and k
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ArchError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ArchError(f"head_dim ({self.head_dim}) must be even for RoPE")

    @property
    def num_params(self) -> int:
        d, f, n, k, h, v = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.vocab_size,
        )
        attn = d * h * (2 * n + 2 * k) + (h * (n + 2 * k) if self.qkv_bias else 0) + (2 * h if self.qk_norm else 0)
        attn += d if self.o_bias else 0
        layer = attn + 3 * d * f + (2 * f + d if self.mlp_bias else 0) + 2 * d
        return self.num_layers * layer + v * d * (1 if self.tie_word_embeddings else 2) + d

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str = "config.json") -> Arch:
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED:
            raise ArchError(f"{source}: model_type {model_type!r} is not supported; supported: {sorted(SUPPORTED)}")
        if cfg.get("use_sliding_window"):
            raise ArchError(f"{source}: use_sliding_window=true is not supported; set it to false")

        def need(key: str) -> Any:
            if key not in cfg:
                raise ArchError(f"{source}: required field {key!r} is missing")
            return cfg[key]

        n_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        theta, scaling = _read_rope(cfg, source)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=need("num_hidden_layers"),
            num_heads=n_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or hidden // n_heads,
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=attention_bias if model_type in ("llama", "qwen3") else False,
            mlp_bias=bool(cfg.get("mlp_bias", False)) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=cfg.get("pad_token_id"),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Arch:
        """The config.json of a model folder: local, in a bucket (gs://), or a Hub model id."""
        file = model_dir(path) / "config.json"
        if not file.is_file():
            raise ArchError(f"{file} not found: a model folder needs config.json (Hugging Face format)")
        try:
            cfg = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ArchError(f"{file} is not valid JSON: {err}") from err
        return cls.from_hf(cfg, str(file))

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict that transformers 5 loads (and 4.x reads rope_theta from)."""
        rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling is not None:
            rope = {"rope_theta": self.rope_theta, "rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        out: dict[str, Any] = {
            "architectures": [SUPPORTED[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_parameters": rope,
            "rope_theta": self.rope_theta,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
        }
        if self.model_type == "llama":
            out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        if self.model_type == "qwen3":
            out.update(attention_bias=self.qkv_bias)
        if self.model_type == "qwen2":
            out.update(use_sliding_window=False)
        return out


def model_dir(path: str | Path) -> epath.Path:
    """A model folder as a path: local, in a bucket (gs://), or for a Hugging Face Hub model id
    (`owner/name`) its snapshot in the HF cache, downloaded once."""
    try:
        return as_path(resolve_model_path(path))
    except ModelSourceError as err:
        raise ArchError(str(err)) from None


def _read_rope(cfg: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    params = cfg.get("rope_parameters") or {}
    legacy = cfg.get("rope_scaling") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    merged = {**legacy, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise ArchError(f"{source}: rope_type {rope_type!r} is not supported; supported: default, llama3")
    try:
        return theta, RopeScaling(
            factor=float(merged["factor"]),
            low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
        )
    except KeyError as err:
        raise ArchError(f"{source}: llama3 rope scaling needs field {err.args[0]!r}") from err
