"""Vocabulary pruning: keep only the word pieces a task uses, remap the word-embedding rows, write the pruned vocab.

For a small BERT (all-MiniLM-L6-v2: 30,522 x 384 word embedding = 11.7 M of its 22.7 M parameters) most of the
bytes are word-embedding rows of pieces the task never sees. Kept (`kept_ids`):
- the special tokens [PAD] [UNK] [CLS] [SEP] [MASK];
- every piece that occurs in the task's training rows (input_ids, padding excluded by the mask);
- optionally the `top_n` most frequent pieces of a general corpus (e.g. the IMDB general-distillation records);
- single-character pieces "c" and "##c" of the original vocab (`single_chars`): "all" of them, so a word made of
  characters the original vocab has as single pieces never becomes [UNK] (WordPiece falls back to shorter
  sub-pieces instead); or "seen": those of the characters the other kept pieces are made of, so the guarantee holds
  for every word written in the training text's characters, and a word with a character the training text never
  had (another script) becomes [UNK] (1,994 rows of bert-base-uncased are single characters, most of them of
  scripts an English task never sees); or "none".
Kept pieces keep their original order (new id = rank of the old id among the kept ones), so [PAD] = 0 and the
other special tokens keep their relative order.

Why the pruned tokenization is identical on text made only of kept pieces: normalisation and pre-tokenization
(whitespace / punctuation split) do not depend on the vocab, and WordPiece is greedy longest-match-first per word:
at each position it takes the longest piece of the vocab that matches there. Say the original vocab V split a word
into p1 ... pk and every pi is in the pruned vocab V' (a subset of V). At the first position V' contains p1, and
no longer match can exist in V' (it would be in V too, and V's longest match is p1), so V' also takes p1; the same
argument holds at every later position, so V' gives p1 ... pk again, and only the ids change (old id -> its rank).
A word whose original pieces include a dropped one is split at that point into the longest kept pieces, down to
single characters; it becomes [UNK] only when one of its characters has no kept single-character piece (then the
original tokenization needed a multi-character piece to cover that character).

Checkpoints (`prune_rows`, `prune_model_dir`): the word-embedding table `...word_embeddings.embedding_table` and
every tensor of the same module with one row per vocab entry (LAT's Hessian proxy `weight_quant.lat_hessian` when
a checkpoint has it) are taken in `keep` order; all other tensors are unchanged. A TernaryBERT run's
best_quant.ckpt holds the ternary word embedding as its quantized values (alpha_r * {-1, 0, +1} per row with one
alpha per row): no separate alpha tensor exists, each row carries its own alpha, so taking rows keeps every row's
alpha and the pruned table still packs (src/packing.py recomputes the alphas from the rows). With one alpha for the
whole table (`embedding_rowwise: false`, or 4 / 8-bit embeddings) the pruned best_quant.ckpt still holds exactly
the values the model was trained with, but re-quantizing the pruned latent best.ckpt would give another alpha
(its statistics cover the remaining rows only): the report says so (`latent_requantizes_identically`).

Rows encoded with the original vocab are re-encoded without their text by `retokenize` (words rebuilt from a
piece and the "##" pieces after it). MindSpore is imported by src/checkpoint only.
"""
import json
import os
import shutil
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from src.errors import UserError
from src.fileio import atomic_json, atomic_path, atomic_write, require_file
from src.tokenization import PAD_ID, load_vocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORD_TABLE = "word_embeddings.embedding_table"       # name suffix of the word-embedding table in every checkpoint
CONTINUATION = "##"
MAX_WORD_CHARS = 100                                 # as BertTokenizer's WordPiece: longer words are [UNK]
MODEL_CKPTS = ("best.ckpt", "best_quant.ckpt", "student.ckpt", "model.ckpt")
REPORT = "prune_report.json"
ROW_COLUMNS = ("input_ids", "input_mask", "segment_ids")


# ---------------------------------------------------------------------------------------------------------
# vocab and kept ids
# ---------------------------------------------------------------------------------------------------------
def read_vocab_tokens(vocab_file: str) -> List[str]:
    """The tokens of a vocab.txt in id order (id = line number, stripped line), checked like BertTokenizer's."""
    load_vocab(vocab_file)                                   # not found / not UTF-8 / empty / special tokens
    with open(vocab_file, "r", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


SINGLE_CHARS = ("all", "seen", "none")


def single_char_ids(vocab_tokens: Sequence[str], chars=None) -> np.ndarray:
    """Ids of every one-character piece "c" and continuation piece "##c" (of the characters `chars`, if given)."""
    def char_of(t):
        if len(t) == 1:
            return t
        return t[len(CONTINUATION):] if t.startswith(CONTINUATION) and len(t) == len(CONTINUATION) + 1 else None
    return np.array([i for i, t in enumerate(vocab_tokens)
                     if char_of(t) is not None and (chars is None or char_of(t) in chars)], np.int64)


def _masked_ids(ids, mask, vocab_size: int, what: str) -> np.ndarray:
    """The ids of `ids` ([rows, L] or a flat array) at mask == 1 (all non-[PAD] ids when mask is None)."""
    ids = np.asarray(ids)
    if mask is None:
        flat = ids[ids != PAD_ID].reshape(-1)
    else:
        mask = np.asarray(mask)
        if mask.shape != ids.shape:
            raise UserError(f"{what}: input_mask has shape {mask.shape}, input_ids {ids.shape}")
        flat = ids[mask.astype(bool)].reshape(-1)
    flat = flat.astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise UserError(f"{what}: token id {int(flat.max() if flat.max() >= vocab_size else flat.min())} outside "
                        f"the vocab of {vocab_size} tokens (were these rows encoded with another vocab?)")
    return flat


def kept_ids(vocab_tokens: Sequence[str], train_ids, extra_ids=None, top_n: int = 0, train_mask=None,
             extra_mask=None, single_chars="all", parts: Optional[dict] = None) -> np.ndarray:
    """Sorted old ids to keep: the special tokens, every id of the training rows `train_ids` (padding excluded by
    `train_mask`; without a mask every non-[PAD] id), the `top_n` most frequent ids of the corpus rows `extra_ids`
    (`extra_mask`; ties: the lower id first; counted over all corpus pieces, so some may already be kept) and,
    single-character pieces per `single_chars` (SINGLE_CHARS: all | seen = of the characters of the other kept
    pieces | none; True / False = all / none). New id = position in the returned array.
    `parts` (a dict), when given, receives each source's ids: special, train, corpus_top_n, single_char."""
    n = len(vocab_tokens)
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 0:
        raise UserError(f"top_n {top_n!r}: expected an integer >= 0")
    if top_n and extra_ids is None:
        raise UserError(f"top_n {top_n}: needs a general corpus (extra_ids) to take the most frequent pieces from")
    index = {t: i for i, t in enumerate(vocab_tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in index]
    if missing:
        raise UserError(f"vocab: missing special token(s) {', '.join(missing)}")
    got = {"special": np.array(sorted(index[t] for t in SPECIAL_TOKENS), np.int64),
           "train": np.unique(_masked_ids(train_ids, train_mask, n, "training rows"))}
    if extra_ids is not None and top_n:
        counts = np.bincount(_masked_ids(extra_ids, extra_mask, n, "corpus rows"), minlength=n)
        order = np.lexsort((np.arange(n), -counts))           # most frequent first, ties by id
        top = order[:top_n]
        got["corpus_top_n"] = np.sort(top[counts[top] > 0]).astype(np.int64)
    else:
        got["corpus_top_n"] = np.zeros(0, np.int64)
    mode = {True: "all", False: "none"}.get(single_chars, single_chars)
    if mode not in SINGLE_CHARS:
        raise UserError(f"single_chars {single_chars!r}: expected one of {', '.join(SINGLE_CHARS)}")
    if mode == "seen":
        special = set(SPECIAL_TOKENS)
        pieces = (vocab_tokens[i] for i in np.concatenate([got["train"], got["corpus_top_n"]]))
        chars = {c for t in pieces if t not in special
                 for c in (t[len(CONTINUATION):] if t.startswith(CONTINUATION) else t)}
        got["single_char"] = single_char_ids(vocab_tokens, chars)
    else:
        got["single_char"] = single_char_ids(vocab_tokens) if mode == "all" else np.zeros(0, np.int64)
    if parts is not None:
        parts.update(got)
    return np.unique(np.concatenate(list(got.values())))


def check_keep(keep, vocab_size: int) -> np.ndarray:
    """`keep` as a sorted, duplicate-free int64 array of ids in [0, vocab_size) that starts with [PAD] = 0."""
    k = np.asarray(keep, np.int64).reshape(-1)
    if k.size == 0:
        raise ValueError("keep: no ids")
    if np.any(np.diff(k) <= 0):
        raise ValueError("keep: ids must be sorted and distinct (new id = rank of the old id)")
    if k[0] < 0 or k[-1] >= vocab_size:
        raise ValueError(f"keep: ids must lie in [0, {vocab_size})")
    return k


def id_map(keep, vocab_size: int) -> np.ndarray:
    """old id -> new id (-1 for a dropped piece)."""
    k = check_keep(keep, vocab_size)
    m = np.full(vocab_size, -1, np.int64)
    m[k] = np.arange(k.size)
    return m


def remap_ids(ids, keep, vocab_size: int) -> np.ndarray:
    """Old ids -> new ids, for ids whose pieces are all kept (ValueError on a dropped one)."""
    m = id_map(keep, vocab_size)
    out = m[np.asarray(ids, np.int64)]
    if np.any(out < 0):
        raise ValueError(f"remap_ids: {int((out < 0).sum())} id(s) of dropped pieces")
    return out


def pruned_tokens(vocab_tokens: Sequence[str], keep) -> List[str]:
    return [vocab_tokens[i] for i in check_keep(keep, len(vocab_tokens))]


def write_vocab(path: str, tokens: Sequence[str]) -> str:
    """vocab.txt (one token a line, id = line number), written atomically."""
    return atomic_write(path, lambda f: f.write("".join(t + "\n" for t in tokens)))


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------
def word_table_name(state: Dict[str, np.ndarray], source: str = "checkpoint") -> str:
    names = [n for n in state if n.endswith(WORD_TABLE)]
    if len(names) != 1:
        raise UserError(f"{source}: expected one word-embedding table '*{WORD_TABLE}', found "
                        f"{len(names)}{(': ' + ', '.join(names)) if names else ''}")
    return names[0]


def row_tensor_names(state: Dict[str, np.ndarray], source: str = "checkpoint") -> List[str]:
    """The word-embedding table and every tensor of its module with the same number of rows (per-row state)."""
    table = word_table_name(state, source)
    module = table[:-len("embedding_table")]
    rows = np.shape(state[table])[0]
    return [n for n, v in state.items()
            if n == table or (n.startswith(module) and np.ndim(v) >= 1 and np.shape(v)[0] == rows)]


def prune_rows(state: Dict[str, np.ndarray], keep, vocab_size: Optional[int] = None,
               source: str = "checkpoint") -> Dict[str, np.ndarray]:
    """A copy of `state` with the word-embedding rows (and the per-row tensors tied to them, `row_tensor_names`)
    taken in `keep` order; every other tensor unchanged (same order of names). `vocab_size` = the vocab the rows
    must match (default: the table's rows); a table of another size -> UserError naming `source` and the sizes."""
    table = word_table_name(state, source)
    rows = int(np.shape(state[table])[0])
    if vocab_size is not None and rows != vocab_size:
        raise UserError(f"{source}: word-embedding table '{table}' has {rows} rows but the vocab has "
                        f"{vocab_size} tokens: prune with the vocab.txt the model was trained with")
    try:
        k = check_keep(keep, rows)
    except ValueError as e:
        raise UserError(f"{source}: {e} (the table has {rows} rows)") from None
    tied = set(row_tensor_names(state, source))
    return {n: (np.ascontiguousarray(np.asarray(v)[k]) if n in tied else v) for n, v in state.items()}


def _copy_file(src: str, dst: str) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _embedding_quant(quant_json: str) -> Tuple[str, bool]:
    """(description, whether re-quantizing the pruned latent table gives the pruned quantized table)."""
    from src.ternary import read_quant_json
    q = read_quant_json(quant_json)
    bits = q.embedding_bits
    if bits == 32:
        return "fp32 (not quantized)", True
    if q.rowwise("word_embedding"):
        return "ternary, one alpha per row", True
    return (f"{'ternary' if bits == 2 else f'{bits}-bit'}, one scale for the whole table", False)


def model_config(in_dir: str, n_tokens: int) -> dict:
    """The run folder's config.json as a dict, checked: vocab_size must equal the vocab's `n_tokens`."""
    if not os.path.isdir(in_dir):
        raise UserError(f"model folder '{in_dir}' does not exist")
    path = require_file(os.path.join(in_dir, "config.json"), "model config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        vocab_size, _ = int(config["vocab_size"]), int(config["hidden_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a BERT config.json with vocab_size and hidden_size ({e})") from None
    if vocab_size != n_tokens:
        raise UserError(f"{path}: vocab_size {vocab_size} but the vocab has {n_tokens} tokens: prune with the "
                        f"vocab.txt the model was trained with")
    return config


def prune_model_dir(in_dir: str, out_dir: str, keep, vocab_tokens: Sequence[str],
                    ckpt_names: Sequence[str] = MODEL_CKPTS, report_extra: Optional[dict] = None) -> dict:
    """Copy a run folder's model into `out_dir` with the vocab pruned to `keep` (sorted old ids of `vocab_tokens`,
    the vocab the model was trained with): config.json (vocab_size = len(keep), every other field as it was), each
    checkpoint of `ckpt_names` that exists (best.ckpt, and best_quant.ckpt of a TernaryBERT run; a plain fp32
    checkpoint) with its rows pruned and its metadata (head type, metrics) kept, quant.json when present, the
    pruned vocab.txt and prune_report.json (+ `report_extra`). On a UserError nothing is left in out_dir.
    Returns the report."""
    from src.checkpoint import read_ms_checkpoint, save_checkpoint_atomic
    from src.outputs import output_guard

    if os.path.abspath(in_dir) == os.path.abspath(out_dir):
        raise UserError(f"output folder '{out_dir}' is the model folder: the pruned files would replace the "
                        f"original ones; choose another folder")
    config = model_config(in_dir, len(vocab_tokens))
    vocab_size, hidden = int(config["vocab_size"]), int(config["hidden_size"])
    try:
        k = check_keep(keep, vocab_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    ckpts = [n for n in ckpt_names if os.path.isfile(os.path.join(in_dir, n))]
    if not ckpts:
        raise UserError(f"model folder '{in_dir}': none of {', '.join(ckpt_names)} found")
    quant_json = os.path.join(in_dir, "quant.json")
    report = {"source_dir": os.path.abspath(in_dir), "vocab_size_before": vocab_size, "vocab_size_after": int(k.size),
              "rows_removed": int(vocab_size - k.size), "hidden_size": hidden, "checkpoints": {}}
    with output_guard(out_dir, "output folder"):
        os.makedirs(out_dir, exist_ok=True)
        for name in ckpts:
            path = os.path.join(in_dir, name)
            state, extra = read_ms_checkpoint(path, with_extra=True)
            tied = row_tensor_names(state, path)
            pruned = prune_rows(state, k, vocab_size, source=path)
            save_checkpoint_atomic(pruned, os.path.join(out_dir, name), extra=extra)
            report["checkpoints"][name] = {"pruned_tensors": tied, "rows_before": vocab_size, "rows_after": int(k.size),
                                           "bytes_before": os.path.getsize(path),
                                           "bytes_after": os.path.getsize(os.path.join(out_dir, name))}
        if os.path.isfile(quant_json):
            _copy_file(quant_json, os.path.join(out_dir, "quant.json"))
            report["embedding_quantization"], report["latent_requantizes_identically"] = _embedding_quant(quant_json)
        atomic_json(os.path.join(out_dir, "config.json"), {**config, "vocab_size": int(k.size)}, sort_keys=True)
        write_vocab(os.path.join(out_dir, "vocab.txt"), pruned_tokens(vocab_tokens, k))
        report["embedding_bytes_saved"] = embedding_bytes_saved(vocab_size - int(k.size), hidden)
        report.update(report_extra or {})
        atomic_json(os.path.join(out_dir, REPORT), report)
    return report


def embedding_bytes_saved(rows: int, hidden: int) -> Dict[str, int]:
    """Bytes of `rows` word-embedding rows of `hidden` values: fp32 (4 bytes a value), int8 (1), 2-bit codes
    (4 values a byte; a ternary table with one alpha per row also drops 4 bytes of alpha per row)."""
    return {"fp32": rows * hidden * 4, "int8": rows * hidden, "2bit": rows * ((hidden + 3) // 4),
            "2bit_with_row_alpha": rows * ((hidden + 3) // 4 + 4)}


# ---------------------------------------------------------------------------------------------------------
# re-encoding rows without their text
# ---------------------------------------------------------------------------------------------------------
def wordpiece(word: str, vocab: Dict[str, int], unk_id: int, continuation: bool = False) -> List[int]:
    """Greedy longest-match-first WordPiece of one pre-tokenized word (BertTokenizer's rule: a word longer than
    100 characters, or with a position where no piece matches, is one [UNK]). `continuation`: the word is the tail
    of a word cut off before it (a general-distillation window that starts inside a word), so every piece,
    the first one included, is a "##" piece."""
    if len(word) > MAX_WORD_CHARS:
        return [unk_id]
    out, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end]
            if start > 0 or continuation:
                piece = CONTINUATION + piece
            if piece in vocab:
                out.append(vocab[piece])
                break
            end -= 1
        if end == start:
            return [unk_id]
        start = end
    return out


def _segment_words(pieces: Sequence[str], unk: str) -> List[Tuple[str, bool, bool]]:
    """(word text, is [UNK], starts with a "##" piece) of a segment's pieces: a word = a piece + the "##" pieces
    after it."""
    words: List[list] = []
    for p in pieces:
        if p.startswith(CONTINUATION) and words and not words[-1][1]:
            words[-1][0] += p[len(CONTINUATION):]
        elif p.startswith(CONTINUATION):
            words.append([p[len(CONTINUATION):], False, True])     # a row that starts inside a word
        else:
            words.append([p, p == unk, False])
    return [tuple(w) for w in words]


def retokenize(rows: Dict[str, np.ndarray], old_tokens: Sequence[str], pruned_tokenizer,
               max_seq_length: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], int]:
    """The rows as the pruned vocab encodes them, without their text: each segment's pieces are grouped into
    words (a piece and the "##" pieces after it), each word string is split again by greedy WordPiece with the
    pruned vocab (a word that was [UNK] stays [UNK]), the segments (split at [SEP]: [CLS] a [SEP] (b [SEP])) are
    truncated like tools/prepare_data (a[:L-2] for one text, truncate_seq_pair for a pair) and padded again.
    `pruned_tokenizer`: a BertTokenizer on the pruned vocab.txt. Other columns (label_ids) are passed through.

    Exact for every row shorter than max length; a row at max length may have lost the tail of its text when it
    was first encoded (a word cut in the middle, whole words dropped), so its re-encoding can differ from encoding
    the text. Returns (new rows, number of rows that were at max length). The pruned vocab never needs more pieces
    for a word whose pieces were all kept (module docstring), so only words with dropped pieces grow."""
    ids, mask = np.asarray(rows["input_ids"]), np.asarray(rows["input_mask"]).astype(bool)
    L = int(max_seq_length or ids.shape[1])
    vocab, unk_id = pruned_tokenizer.vocab, pruned_tokenizer.unk_id
    cls_old, sep_old = old_tokens.index("[CLS]"), old_tokens.index("[SEP]")
    cache: Dict[Tuple[str, bool], List[int]] = {}

    def encode(words):
        out = []
        for text, is_unk, cont in words:
            if is_unk:
                out.append(unk_id)
                continue
            key = (text, cont)
            if key not in cache:
                cache[key] = wordpiece(text, vocab, unk_id, cont)
            out.extend(cache[key])
        return out

    new = {c: np.zeros((len(ids), L), np.asarray(rows[c]).dtype) for c in ROW_COLUMNS}
    at_max = 0
    for r in range(len(ids)):
        real = ids[r][mask[r]]
        if len(real) < 2 or real[0] != cls_old or real[-1] != sep_old:
            raise UserError(f"row {r}: not a BERT input row ([CLS] text [SEP] (text [SEP]) expected)")
        at_max += int(mask[r].sum() == ids.shape[1])
        seps = np.flatnonzero(real == sep_old)
        segs = [real[1:seps[0]]] + ([real[seps[0] + 1:seps[1]]] if len(seps) > 1 else [])
        if len(seps) > 2:
            raise UserError(f"row {r}: {len(seps)} [SEP] tokens, expected 1 or 2")
        enc = [encode(_segment_words([old_tokens[i] for i in s], "[UNK]")) for s in segs]
        # build_inputs truncates as tools/prepare_data did: a[:L-2], or truncate_seq_pair(a, b, L-3) for a pair
        i, m, s = pruned_tokenizer.build_inputs(enc[0], enc[1] if len(enc) > 1 else None, L)
        new["input_ids"][r], new["input_mask"][r], new["segment_ids"][r] = i, m, s
    out = {**{k: v for k, v in rows.items() if k not in ROW_COLUMNS}, **new}
    return out, at_max


def kept_ids_of_rows(vocab_tokens: Sequence[str], train_rows: Dict[str, np.ndarray], corpus_rows=None,
                     top_n: int = 0, single_chars="all", parts: Optional[dict] = None) -> np.ndarray:
    """kept_ids of encoded rows (read_rows): the training rows' input_ids under their mask, and the corpus rows'
    (None = no corpus) for top_n."""
    return kept_ids(vocab_tokens, train_rows["input_ids"], None if corpus_rows is None else corpus_rows["input_ids"],
                    top_n, train_mask=train_rows["input_mask"],
                    extra_mask=None if corpus_rows is None else corpus_rows["input_mask"], single_chars=single_chars,
                    parts=parts)


def reencode(rows: Dict[str, np.ndarray], old_tokens: Sequence[str], keep, pruned_tokenizer,
             max_seq_length: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], dict]:
    """(retokenize's rows, token_stats of the change + rows_at_max_length) for rows encoded with `old_tokens`."""
    new, at_max = retokenize(rows, old_tokens, pruned_tokenizer, max_seq_length)
    stats = token_stats(rows, new, keep, len(old_tokens), old_tokens.index("[UNK]"), pruned_tokenizer.unk_id)
    return new, {**stats, "rows_at_max_length": at_max}


def token_stats(old_rows: Dict[str, np.ndarray], new_rows: Dict[str, np.ndarray], keep, old_vocab_size: int,
                old_unk: int, new_unk: int) -> dict:
    """How a re-encoding changed the rows: % of rows whose tokens changed (compared through the id map: a row is
    unchanged when the new ids are its old ids remapped), tokens before / after (special tokens included, padding
    not), the % change, the % of the original tokens whose piece was dropped, and the [UNK] rate (of non-padding
    tokens) before / after."""
    old_ids, new_ids = np.asarray(old_rows["input_ids"]), np.asarray(new_rows["input_ids"])
    old_m, new_m = np.asarray(old_rows["input_mask"]).astype(bool), np.asarray(new_rows["input_mask"]).astype(bool)
    mapped = id_map(keep, old_vocab_size)[old_ids]          # -1 for a dropped piece: never equal to a new id
    same_len = old_m.sum(1) == new_m.sum(1)
    changed = ~(same_len & np.all(np.where(old_m, mapped, 0) == np.where(new_m, new_ids, 0), axis=1))
    t_old, t_new = int(old_m.sum()), int(new_m.sum())
    return {"rows": int(len(old_ids)), "changed_rows_pct": 100.0 * float(changed.mean()) if len(old_ids) else 0.0,
            "tokens_before": t_old, "tokens_after": t_new,
            "tokens_change_pct": 100.0 * (t_new - t_old) / max(t_old, 1),
            "dropped_token_pct": 100.0 * float((old_m & (mapped < 0)).sum()) / max(t_old, 1),
            "unk_pct_before": 100.0 * float(((old_ids == old_unk) & old_m).sum()) / max(t_old, 1),
            "unk_pct_after": 100.0 * float(((new_ids == new_unk) & new_m).sum()) / max(t_new, 1)}


def read_rows(data_dir: str, split: str, dataset_type: str = "tfrecord",
              columns: Iterable[str] = ROW_COLUMNS) -> Dict[str, np.ndarray]:
    """Every row of `<data_dir>/<split>` (records written by tools/prepare_data) as int arrays."""
    from src.dataset import read_all, split_files
    if not os.path.isdir(data_dir):
        raise UserError(f"records folder '{data_dir}' does not exist")
    records, schema = split_files(data_dir, split, dataset_type)
    require_file(records, f"records of split '{split}'")
    return read_all(records, schema, list(columns), dataset_type)
