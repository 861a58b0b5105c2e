"""Tiny random Hugging Face checkpoints (torch, tests only) and a local tokenizer."""

from __future__ import annotations

from pathlib import Path

from rlvr_jax.tokenizer import build_bpe_tokenizer

VOCAB = 320
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=None,
    eos_token_id=0,
    pad_token_id=1,
)
TINY_CONFIGS = {
    "qwen2": dict(_COMMON, rope_theta=10000.0, tie_word_embeddings=True),
    "llama": dict(
        _COMMON,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "qwen3": dict(_COMMON, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False),
}
_CLASSES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}
CORPUS = [
    "What is 12 + 30? The answer is 42.",
    "Hello world, hello tokens.",
    "S1 S2 S3 strategy answer",
    "\\boxed{7} 0123456789 + - * / = ( )",
] * 50


def make_tokenizer(out_dir: Path) -> Path:
    tok = build_bpe_tokenizer(CORPUS, VOCAB, out_dir)
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1
    return Path(out_dir)


def make_hf_model(family: str, out_dir: Path, tokenizer_dir: Path | None = None, seed: int = 0, **overrides) -> Path:
    """Save a random torch model of `family` (f32) with `save_pretrained`; its weights are random
    but larger than the default init so that logits differ clearly across tokens."""
    import torch
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in _CLASSES[family])
    torch.manual_seed(seed)
    config = config_cls(**{**TINY_CONFIGS[family], **overrides})
    model = model_cls(config).to(torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 and p.shape[0] != config.vocab_size:
                p.add_(0.1 * torch.randn_like(p))  # non-trivial norms and biases
            else:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(out_dir))
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out_dir))
    return Path(out_dir)


def torch_logits(model_dir: Path, tokens, mask):
    """Reference logits of the torch model for a left-padded batch (positions from the mask)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.tensor(np.asarray(tokens), dtype=torch.long)
    attn = torch.tensor(np.asarray(mask), dtype=torch.long)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attn, position_ids=positions).logits.numpy()
