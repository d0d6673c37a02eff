"""Token display text: byte-level BPE pieces, SentencePiece pieces, split multi-byte characters."""

from __future__ import annotations

from wbtrace.vocab import Vocab, build_vocab

# "é" is 0xC3 0xA9; in GPT-2's byte alphabet those bytes are "Ã" and "©".
PIECES = ["Hello", "Ġworld", "Ċ", "Ã", "©", "<|im_end|>", "ĠâĢĶ"]


def test_byte_level_pieces_become_text():
    v = Vocab(build_vocab(pieces=PIECES, byte_level=True))
    assert [v.text(i) for i in range(3)] == ["Hello", " world", "\n"]
    assert v.text(6) == " —"  # em dash, three bytes in one piece


def test_split_multibyte_char_shows_bytes_and_decodes_joined():
    v = Vocab(build_vocab(pieces=PIECES, byte_level=True))
    assert v.text(3) == "<0xC3>" and v.text(4) == "<0xA9>"
    assert v.decode([0, 3, 4]) == "Helloé"


def test_special_tokens_kept_and_sentencepiece():
    v = Vocab(build_vocab(pieces=PIECES, byte_level=True))
    assert v.text(5) == "<|im_end|>"
    sp = Vocab(build_vocab(pieces=["▁the", "<0x0A>", "x"], byte_level=False))
    assert [sp.text(i) for i in range(3)] == [" the", "\n", "x"]


def test_hf_tokenizer_vocab():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(["a", "b", "Ġ", "Ġa"])}, merges=[("Ġ", "a")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    v = Vocab(build_vocab(tokenizer=hf))
    assert v.text(3) == " a" and v.text(2) == " "
