"""Tokenizers through `transformers.AutoTokenizer`, prompt rendering, and static-shape batches.

Toy tasks get a real byte-level BPE tokenizer trained locally with the `tokenizers` library and
wrapped in `PreTrainedTokenizerFast`, so they run exactly the code path of a real checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlvr_jax.storage import ModelSourceError, is_remote, local_copy, resolve_model_path

# ChatML, the template of the Qwen family; used for locally built tokenizers.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")


class TokenizerError(ValueError):
    """A tokenizer folder that cannot be used; the message names the folder and the fix."""


def load_tokenizer(folder: str | Path) -> Any:
    """A Hugging Face tokenizer folder (local, gs:// or a Hub model id), padding on the left for generation."""
    try:
        folder = resolve_model_path(folder)
    except ModelSourceError as err:
        raise TokenizerError(str(err)) from None
    if is_remote(folder):
        try:
            with local_copy(folder) as local:
                return load_tokenizer(local)
        except FileNotFoundError as err:
            raise TokenizerError(f"tokenizer folder {folder} does not exist") from err
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"tokenizer folder {folder} does not exist")
    try:
        tok = _generic_class(folder).from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise TokenizerError(
            f"{folder}: cannot load a tokenizer ({err}); it needs tokenizer.json or "
            "the files of a Hugging Face tokenizer"
        ) from err
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise TokenizerError(f"{folder}: the tokenizer has neither a pad nor an eos token; set pad_token")
        tok.pad_token = tok.eos_token
    return tok


_GENERIC_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _generic_class(folder: Path) -> Any:
    """AutoTokenizer, unless the folder's tokenizer says it is a plain tokenizers-library tokenizer.

    transformers 5 picks the tokenizer class from config.json's model_type when a model sits in the
    same folder; for a locally trained BPE saved beside a qwen2 model, that swaps in Qwen2's digit-
    splitting pre-tokenizer and silently changes every token id. A tokenizer saved as the generic
    class is loaded as exactly what tokenizer.json says.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = folder / "tokenizer_config.json"
    try:
        declared = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{config} is not valid JSON: {err}") from err
    return PreTrainedTokenizerFast if declared in _GENERIC_CLASSES else AutoTokenizer


def render_messages(
    tok: Any, messages: Sequence[dict[str, str]], use_chat_template: bool = True, plain_template: str = "{prompt}"
) -> str:
    """The string the policy sees for chat messages: the chat template with a generation prompt when
    the tokenizer has one; else the messages' contents, joined by blank lines, in the plain template."""
    if use_chat_template and getattr(tok, "chat_template", None):
        return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return plain_template.replace("{prompt}", "\n\n".join(m["content"] for m in messages))


def render_prompt(tok: Any, text: str, use_chat_template: bool = True, plain_template: str = "{prompt}") -> str:
    """The string the policy sees for a problem text: one user message."""
    return render_messages(tok, [{"role": "user", "content": text}], use_chat_template, plain_template)


def encode_left_padded(
    tok: Any, texts: Sequence[str], max_len: int | None = None, truncate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask [B, P], left padded to `max_len` (or the longest prompt). A prompt of no tokens
    is an error: the sampler's first step reads the prompt's last token."""
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    if empty := [i for i, x in enumerate(ids) if not x]:
        raise TokenizerError(f"prompt number {empty[0] + 1} encodes to no tokens (rendered: {texts[empty[0]]!r})")
    longest = max(len(x) for x in ids)
    width = max_len or longest
    if longest > width and not truncate:
        raise ValueError(
            f"a prompt has {longest} tokens, more than max_prompt_len={width}; raise the limit "
            "or set data.long_prompt=truncate"
        )
    out = np.full((len(ids), width), tok.pad_token_id, np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for row, x in enumerate(ids):
        x = x[-width:]  # keep the end of the prompt: the generation prompt must survive truncation
        out[row, width - len(x) :] = x
        mask[row, width - len(x) :] = 1
    return out, mask


def stop_token_ids(tok: Any, extra: Iterable[int] = ()) -> tuple[int, ...]:
    """EOS plus the chat end-of-turn token when the vocabulary has one."""
    ids = set(extra)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    end_turn = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
    if end_turn is not None:
        ids.add(int(end_turn))
    return tuple(sorted(ids))


def build_bpe_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    out_dir: str | Path | None = None,
    chat_template: str | None = CHATML_TEMPLATE,
) -> Any:
    """Train a byte-level BPE on `corpus` and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="left",
    )
    if chat_template:
        tok.chat_template = chat_template
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def build_bpe_tokenizer_with_special_tokens(
    corpus: Iterable[str],
    vocab_size: int,
    extra_special: Sequence[str],
    out_dir: str | Path | None = None,
    chat_template: str | None = CHATML_TEMPLATE,
) -> Any:
    """`build_bpe_tokenizer` plus `extra_special` tokens, each one id that BPE never splits.

    The BPE is trained to `vocab_size - len(extra_special)` so the whole vocabulary stays within
    `vocab_size`; the extra tokens take the ids after it.
    """
    tok = build_bpe_tokenizer(corpus, vocab_size - len(extra_special), None, chat_template)
    # transformers 5 calls the list `extra_special_tokens` (4.x: additional_special_tokens); extend it.
    tok.add_special_tokens({"extra_special_tokens": list(extra_special)}, replace_extra_special_tokens=False)
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def decode_completions(tok: Any, tokens: Any, lengths: Any, stop_ids: tuple[int, ...]) -> list[str]:
    """Completion text per row (`tokens[row][:lengths[row]]`), without the stop token; special tokens
    are kept (a task's answer format may use them, e.g. the toy's strategy tokens)."""
    out = []
    for row, length in zip(tokens, lengths):
        ids = [int(t) for t in row[:length]]
        if ids and ids[-1] in stop_ids:
            ids = ids[:-1]
        out.append(tok.decode(ids, skip_special_tokens=False))
    return out
