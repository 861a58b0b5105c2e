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
        """Read config.json fields; a field of the wrong type or size is an ArchError naming `source` and it."""
        if not isinstance(cfg, dict):
            raise ArchError(f"{source} must hold a JSON object of config fields, got {type(cfg).__name__}")
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED:
            raise ArchError(f"{source}: model_type {model_type!r} is not supported; supported: {sorted(SUPPORTED)}")
        fields = _Fields(cfg, source)
        if fields.flag("use_sliding_window"):
            raise ArchError(f"{source}: use_sliding_window=true is not supported; set it to false")
        n_heads = fields.count("num_attention_heads")
        hidden = fields.count("hidden_size")
        head_dim = fields.count("head_dim", optional=True)
        if head_dim is None and hidden % n_heads:
            raise ArchError(
                f"{source}: hidden_size ({hidden}) is not divisible by num_attention_heads ({n_heads}); "
                "fix one of them, or give head_dim"
            )
        theta, scaling = _read_rope(cfg, source)
        attention_bias = fields.flag("attention_bias")
        try:
            return cls(
                model_type=model_type,
                vocab_size=fields.count("vocab_size"),
                hidden_size=hidden,
                intermediate_size=fields.count("intermediate_size"),
                num_layers=fields.count("num_hidden_layers"),
                num_heads=n_heads,
                num_kv_heads=fields.count("num_key_value_heads", optional=True) or n_heads,
                head_dim=head_dim or hidden // n_heads,
                rope_theta=_positive(theta, "rope_theta", source),
                rope_scaling=scaling,
                rms_norm_eps=_positive(cfg.get("rms_norm_eps", 1e-6), "rms_norm_eps", source),
                tie_word_embeddings=fields.flag("tie_word_embeddings"),
                qkv_bias=True if model_type == "qwen2" else attention_bias,
                o_bias=attention_bias if model_type in ("llama", "qwen3") else False,
                mlp_bias=fields.flag("mlp_bias") if model_type == "llama" else False,
                qk_norm=model_type == "qwen3",
                max_position_embeddings=fields.count("max_position_embeddings", optional=True) or 32768,
                bos_token_id=fields.token_id("bos_token_id"),
                eos_token_ids=fields.token_ids("eos_token_id"),
                pad_token_id=fields.token_id("pad_token_id"),
            )
        except ArchError as err:  # the relations between fields (heads per kv head, even head_dim)
            raise ArchError(f"{source}: {err}") from None

    @classmethod
    def from_dir(cls, path: str | Path) -> Arch:
        """The config.json of a model folder: local, in a bucket (gs://), or a Hub model id."""
        file = model_dir(path) / "config.json"
        return cls.from_hf(read_config_json(file), str(file))

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


def read_config_json(file: epath.Path) -> dict[str, Any]:
    """A model folder's config.json as a dict; a missing, unreadable or non-object file is an ArchError."""
    if not file.is_file():
        raise ArchError(f"{file} not found: a model folder needs config.json (Hugging Face format)")
    try:
        cfg = json.loads(file.read_bytes())
    except ValueError as err:  # JSON and UTF-8 errors alike
        raise ArchError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise ArchError(f"{file} must hold a JSON object of config fields, got {type(cfg).__name__}")
    return cfg


class _Fields:
    """Typed reads of config.json fields: JSON gives any type anywhere, and `"512"` or `0` for a size would
    otherwise surface as a TypeError or ZeroDivisionError deep inside model building."""

    def __init__(self, cfg: dict[str, Any], source: str):
        self.cfg, self.source = cfg, source

    def count(self, key: str, optional: bool = False) -> int | None:
        """A positive integer field (None when optional and absent or null)."""
        if self.cfg.get(key) is None:
            if optional:
                return None
            raise ArchError(f"{self.source}: required field {key!r} is missing")
        value = self.cfg[key]
        if not _is_int(value) or value < 1:
            raise ArchError(f"{self.source}: {key} must be a positive integer, got {value!r}")
        return value

    def flag(self, key: str) -> bool:
        value = self.cfg.get(key)
        if value is not None and not isinstance(value, bool):  # "false" would read as true
            raise ArchError(f"{self.source}: {key} must be true or false, got {value!r}")
        return bool(value)

    def token_id(self, key: str) -> int | None:
        value = self.cfg.get(key)
        if value is not None and not _is_int(value):
            raise ArchError(f"{self.source}: {key} must be an integer token id or null, got {value!r}")
        return value

    def token_ids(self, key: str) -> tuple[int, ...]:
        value = self.cfg.get(key)
        ids = value if isinstance(value, list) else [] if value is None else [value]
        if not all(_is_int(i) for i in ids):
            raise ArchError(f"{self.source}: {key} must be a token id or a list of them, got {value!r}")
        return tuple(ids)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ArchError(f"{source}: {key} must be a positive number, got {value!r}")
    return float(value)


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
    missing = [
        k
        for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if k not in merged
    ]
    if missing:
        raise ArchError(f"{source}: llama3 rope scaling needs field {missing[0]!r}")
    original = merged["original_max_position_embeddings"]
    if not _is_int(original) or original < 1:
        raise ArchError(f"{source}: original_max_position_embeddings must be a positive integer, got {original!r}")
    return theta, RopeScaling(
        factor=_positive(merged["factor"], "factor", source),
        low_freq_factor=_positive(merged["low_freq_factor"], "low_freq_factor", source),
        high_freq_factor=_positive(merged["high_freq_factor"], "high_freq_factor", source),
        original_max_position_embeddings=original,
    )
