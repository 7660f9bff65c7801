"""WordPiece tokenizer: exact ids with the bert-base-uncased vocab (every row of the HF reference fixture),
Google-style truncation, casing."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HF_REF = ROOT / "tests" / "fixtures" / "hf_reference"

from src.errors import UserError  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file, truncate_seq_pair  # noqa: E402

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
              "one", "two", "three", "four", "five", "six",      # ids 5..10
              "red", "green", "blue", "gold",                    # ids 11..14
              "Apple", "apple", "café", "cafe", "##s", "!"]      # ids 15..20


@pytest.fixture(scope="module")
def bert_tok():
    return BertTokenizer(default_vocab_file(), do_lower_case=True)


def tiny_vocab(tmp_path, tokens=TINY_VOCAB):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


def test_ids_equal_hf_tokenizer_on_every_reference_row(bert_tok):
    """The three rows HF transformers tokenised for the model fixture (a pair; capitals and a full stop glued to a
    word; 'Stocks', 'Tuesday,'), padded to 24: ids, segments and mask exactly."""
    hf = HF_REF / "minilm_l6_reference"
    meta = json.loads(hf.with_suffix(".json").read_text(encoding="utf-8"))
    ref = np.load(hf.with_suffix(".npz"))
    assert len(meta["sentences_a"]) == len(ref["input_ids"]) == 3
    for i, (a, b) in enumerate(zip(meta["sentences_a"], meta["sentences_b"])):
        ids, mask, seg = bert_tok.encode(a, b, max_seq_length=meta["max_length"])
        assert ids == ref["input_ids"][i].tolist(), (i, a)
        assert seg == ref["token_type_ids"][i].tolist(), (i, a)
        assert mask == ref["attention_mask"][i].tolist(), (i, a)
    assert ref["token_type_ids"][0].max() == 1 and ref["attention_mask"].sum(1).min() < 24   # a pair, padding
    assert bert_tok.vocab_size == 30522


def test_padding_and_case_folding(bert_tok):
    ids, mask, seg = bert_tok.encode("The MOVIE was surprisingly delightful !", max_seq_length=12)
    assert ids == [101, 1996, 3185, 2001, 10889, 26380, 999, 102, 0, 0, 0, 0]
    assert mask == [1] * 8 + [0] * 4
    assert seg == [0] * 12
    assert bert_tok.tokenize("Surprisingly delightful!") == ["surprisingly", "delightful", "!"]


def test_encode_batch_matches_encode(bert_tok):
    a = ["the movie was surprisingly delightful !", "a dull , lifeless exercise in tedium ."]
    b = ["a paraphrase of it .", "it never finds its footing and the jokes fall flat ."]
    assert bert_tok.encode_batch(a, b, 12) == [bert_tok.encode(x, y, 12) for x, y in zip(a, b)]
    assert bert_tok.encode_batch(a, None, 6) == [bert_tok.encode(x, None, 6) for x in a]


def test_pair_truncation_longest_first(tmp_path):
    tok = BertTokenizer(tiny_vocab(tmp_path))
    # a: 6 tokens, b: 3 tokens, room for 7 -> two pops, both from the longer a
    ids, mask, seg = tok.encode("one two three four five six", "red green blue", max_seq_length=10)
    assert ids == [2, 5, 6, 7, 8, 3, 11, 12, 13, 3]
    assert seg == [0] * 6 + [1] * 4
    assert mask == [1] * 10
    # b longer: pops from b until the lengths tie, then the tie pops from b too (Google's _truncate_seq_pair)
    ids, _, seg = tok.encode("one two three", "red green blue gold", max_seq_length=8)
    assert ids == [2, 5, 6, 7, 3, 11, 12, 3]
    assert seg == [0] * 5 + [1] * 3
    # equal lengths from the start: the tie pops from b, not a
    ids, _, _ = tok.encode("one two three", "red green blue", max_seq_length=8)
    assert ids == [2, 5, 6, 7, 3, 11, 12, 3]


def test_single_truncation_and_helper(tmp_path):
    tok = BertTokenizer(tiny_vocab(tmp_path))
    ids, mask, seg = tok.encode("one two three four five six", max_seq_length=5)
    assert ids == [2, 5, 6, 7, 3] and mask == [1] * 5 and seg == [0] * 5
    a, b = list(range(10)), list(range(4))
    truncate_seq_pair(a, b, 6)
    assert (a, b) == ([0, 1, 2], [0, 1, 2])


def _google_is_chinese_char(cp):
    """Google BERT tokenization.py's CJK ranges, copied as numbers."""
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                              (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                              (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def test_every_cjk_character_is_its_own_token_as_in_google_bert(bert_tok):
    """Google's BasicTokenizer puts spaces around every CJK character. The tokenizers normaliser misses
    U+2B820-U+2B91F (the start of Extension E); the tokenizer isolates those itself."""
    cps = [cp for cp in range(0x3400, 0x2FA20) if _google_is_chinese_char(cp)][::97] + \
        list(range(0x2B81E, 0x2B923))
    for cp in cps:
        toks = bert_tok.tokenize(f"the{chr(cp)}cat")
        assert toks[0] == "the" and toks[-1] == "cat" and len(toks) == 3, (hex(cp), toks)
    assert bert_tok.tokenize("the\u00e9cat") == bert_tok.tokenize("theecat")     # not CJK: stays in the word


def test_surface_words_are_the_basic_words_as_written(bert_tok):
    """surface_words: the BasicTokenizer's words (whitespace, punctuation, CJK characters apart, control characters
    dropped), each cut from the original text; normalised they are basic_words."""
    text = "Café  Müller's\tNEW-York,\x00ok 東京x ..."
    words = bert_tok.surface_words(text)
    assert [w for w, _, _ in words] == ["Café", "Müller", "'", "s", "NEW", "-", "York", ",", "ok", "東", "京", "x",
                                        ".", ".", "."]
    assert all(text[s:e] == w for w, s, e in words)
    assert [bert_tok.basic_words(w)[0] for w, _, _ in words] == bert_tok.basic_words(text)
    assert bert_tok.surface_words(" \x00 ") == []


def test_lower_casing_can_be_turned_off(tmp_path):
    vocab = tiny_vocab(tmp_path)
    cased = BertTokenizer(vocab, do_lower_case=False)
    assert cased.tokenize("Apple apple café Apples") == ["Apple", "apple", "café", "Apple", "##s"]
    assert cased.tokenize("APPLE") == ["[UNK]"]
    uncased = BertTokenizer(vocab, do_lower_case=True)
    assert uncased.tokenize("Apple apple café APPLES") == ["apple", "apple", "cafe", "apple", "##s"]
    assert cased.encode("Apple !", max_seq_length=5)[0] == [2, 15, 20, 3, 0]


def test_bad_vocab_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        BertTokenizer(str(tmp_path / "missing.txt"))
    no_cls = tiny_vocab(tmp_path, [t for t in TINY_VOCAB if t != "[CLS]"])
    with pytest.raises(UserError, match=r"vocab\.txt.*\[CLS\]"):
        BertTokenizer(no_cls)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        BertTokenizer(str(empty))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"[PAD]\n\xff\xfe\x00\n")
    with pytest.raises(UserError, match="binary.txt: not UTF-8"):
        BertTokenizer(str(binary))


def test_tokenizer_does_not_import_mindspore():
    code = ("import sys; sys.path.insert(0, %r); import src.tokenization as t; "
            "t.BertTokenizer(t.default_vocab_file()).encode('a b'); "
            "assert 'mindspore' not in sys.modules, 'mindspore imported'" % str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
