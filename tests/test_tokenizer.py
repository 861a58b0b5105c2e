"""Tokenizer loading traps."""

from rlvr_jax.tokenizer import build_bpe_tokenizer, load_tokenizer


def test_local_bpe_beside_a_qwen2_model_keeps_its_tokenization(tmp_path):
    """transformers 5 would pick Qwen2's digit-splitting tokenizer from config.json's model_type."""
    corpus = ["47 52 13", "answer 75 12 34", "12 34 56 78 90"] * 200
    tok = build_bpe_tokenizer(corpus, 300, tmp_path)
    expected = tok.encode(" 75 12 34", add_special_tokens=False)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}')
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.encode(" 75 12 34", add_special_tokens=False) == expected
    assert len(expected) == 3  # the BPE merged each number into one token
