"""Token classification (NER) data and metrics: tag schemes, entity chunks, entity-level scores, word pieces.

Tags are strings `O` or `P-TYPE` (the prefix is everything before the first `-`, the type everything after it,
so types may contain hyphens, as in conlleval). Schemes:
    iob1   I-X inside a chunk, B-X only where a chunk follows a chunk of the same type (original CoNLL-2003)
    iob2   B-X at the first word of every chunk, I-X after it (the HF `conll2003` dataset, CONLL_LABELS)
    bioes  B-X first, I-X inside, E-X last word of a chunk of two words or more, S-X a one-word chunk
           (the spelling "iobes" is accepted for it)
Every scheme is converted to IOB2 (`to_iob2`) before records are written, so the records and the model only see
IOB2 tags; `from_iob2` goes back.

Chunks follow the conlleval script's startOfChunk / endOfChunk rules: a chunk starts at B-X, and at I-X or E-X
after O, after a tag of another type or after the end of a chunk; it ends before O, before the start of another
chunk, and after E-X. The perl script predates S- tags and starts no chunk at B-X right after E-X of the same
type; here S-X is a one-word chunk and B-X always starts one, as BIOES defines them. On IOB1 / IOB2 tags (with
or without ill-formed spans such as `O I-PER` or `B-PER I-ORG`) the chunks are exactly conlleval's.

Entity scores are conlleval's: a predicted chunk is correct when a gold chunk has the same start, end and type;
precision = correct / predicted chunks, recall = correct / gold chunks, F1 their harmonic mean (0.0 where a
denominator is 0). Scores are fractions (conlleval prints percentages).

Records of a token task (one row per window of a sentence):
    input_ids, input_mask, segment_ids  int64[max_seq_length]   [CLS] pieces [SEP], zero padding, segment 0
    label_ids                          int64[max_seq_length]   the tag id on the first word piece of each word
                                                                the row owns, IGNORE_LABEL (-1) elsewhere
    sentence_id                        int64[1]                index of the sentence in its split
A sentence whose pieces fit in max_seq_length - 2 is one row. A longer one is cut into windows of whole words;
each word is owned (labelled) by exactly one window, in order, and a window also carries up to `context`
pieces of the neighbouring words on each side (labels -1) so that the words near a cut see their neighbours.
A word with no word pieces (only characters the tokenizer drops) is encoded as [UNK], so every word has a
first piece; a single word with more pieces than a row keeps only its first pieces.
`sentence_tags` undoes this: the tags at the positions with label_ids >= 0, concatenated over the rows of a
sentence, are exactly one tag per word.

This module never imports MindSpore: converters and metrics run without it.
"""
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from src.tasks import IGNORE_LABEL

SCHEMES = ("iob1", "iob2", "bioes")
SCHEME_ALIASES = {"iobes": "bioes"}
_PREFIXES = {"iob1": ("B", "I"), "iob2": ("B", "I"), "bioes": ("B", "I", "E", "S")}
CHUNK_PREFIXES = ("B", "I", "E", "S")

Chunk = Tuple[str, int, int]          # (type, start, end): words start .. end - 1 (end exclusive)


class TagError(ValueError):
    """A tag that is not valid for its scheme; `index` is its position in the sentence (0-based)."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


# ---------------------------------------------------------------------------------------------------------
# tags and schemes
# ---------------------------------------------------------------------------------------------------------
def scheme_name(scheme: str) -> str:
    """Canonical scheme name ("iob1", "iob2", "bioes"; "iobes" -> "bioes"); ValueError for anything else."""
    key = str(scheme).lower()
    key = SCHEME_ALIASES.get(key, key)
    if key not in SCHEMES:
        raise ValueError(f"tag scheme '{scheme}': expected one of {', '.join(SCHEMES)} (or iobes)")
    return key


def scheme_prefixes(scheme: str) -> Tuple[str, ...]:
    """The tag prefixes a scheme allows besides O: ("B", "I") for iob1 / iob2, ("B", "I", "E", "S") for bioes."""
    return _PREFIXES[scheme_name(scheme)]


def split_tag(tag: str) -> Tuple[str, str]:
    """("O", "") for O, else (prefix, type) split at the first '-' ("B-PER" -> ("B", "PER")); a tag without '-'
    is (tag, "")."""
    prefix, sep, kind = tag.partition("-")
    return (prefix, kind) if sep else (tag, "")


def check_tag(tag: str, scheme: str = "iob2", index: int = 0) -> Tuple[str, str]:
    """(prefix, type) of a tag that is O or P-TYPE with P a prefix of `scheme` and TYPE non-empty; otherwise a
    TagError naming the position."""
    prefixes = _PREFIXES[scheme_name(scheme)]
    prefix, kind = split_tag(tag)
    if tag == "O":
        return prefix, kind
    if prefix not in prefixes or not kind:
        raise TagError(f"tag {index + 1} '{tag}': expected O or X-TYPE with X one of {', '.join(prefixes)} "
                       f"(scheme {scheme_name(scheme)})", index)
    return prefix, kind


def chunks(tags: Sequence[str]) -> List[Chunk]:
    """Entity chunks (type, start, end exclusive) of one sentence, by conlleval's rules (see the module text).
    Accepts IOB1, IOB2 and BIOES tags (mixed too); a tag that is not O or B/I/E/S-TYPE is a TagError."""
    out: List[Chunk] = []
    start, kind = None, ""           # the open chunk (E- and S- close it at once)
    for i, tag in enumerate(tags):
        if tag == "O":
            p, t = "O", ""
        else:
            p, t = split_tag(tag)
            if p not in CHUNK_PREFIXES or not t:
                raise TagError(f"tag {i + 1} '{tag}': expected O or X-TYPE with X one of "
                               f"{', '.join(CHUNK_PREFIXES)}", i)
        begins = p in ("B", "S") or (p in ("I", "E") and (start is None or t != kind))
        if start is not None and (p == "O" or begins):
            out.append((kind, start, i))
            start = None
        if begins:
            start, kind = i, t
        if start is not None and p in ("E", "S"):
            out.append((kind, start, i + 1))
            start = None
    if start is not None:
        out.append((kind, start, len(tags)))
    return out


def _emit(chunk_list: Sequence[Chunk], n: int, scheme: str) -> List[str]:
    tags = ["O"] * n
    last_end, last_kind = -1, None
    for kind, s, e in chunk_list:
        if scheme == "bioes" and e - s == 1:
            tags[s] = f"S-{kind}"
        else:
            first = "B" if scheme != "iob1" or (s == last_end and kind == last_kind) else "I"
            tags[s] = f"{first}-{kind}"
            for j in range(s + 1, e):
                tags[j] = f"I-{kind}"
            if scheme == "bioes":
                tags[e - 1] = f"E-{kind}"
        last_end, last_kind = e, kind
    return tags


def to_iob2(tags: Sequence[str], scheme: str = "iob2") -> List[str]:
    """IOB2 tags of one sentence written in `scheme` (each tag is checked by `check_tag`; a TagError names the
    first bad position). Spans are read by conlleval's rules, so an ill-formed span is repaired the way
    conlleval scores it (iob2 `O I-PER` -> `O B-PER`)."""
    scheme = scheme_name(scheme)
    for i, tag in enumerate(tags):
        check_tag(tag, scheme, i)
    return _emit(chunks(tags), len(tags), "iob2")


def from_iob2(tags: Sequence[str], scheme: str) -> List[str]:
    """The chunks of IOB2 (or any conlleval-readable) tags written in `scheme`: to_iob2(from_iob2(t, s), s) == t
    for well-formed IOB2 t."""
    return _emit(chunks(tags), len(tags), scheme_name(scheme))


def label_order(tags) -> List[str]:
    """The tag set of a user's data in id order: O first, then for every type (sorted) B-TYPE, I-TYPE. `tags`
    are IOB2 tags (any iterable); both B- and I- of a type are included even if only one occurs."""
    kinds = sorted({split_tag(t)[1] for t in tags if t != "O"})
    return ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]


# ---------------------------------------------------------------------------------------------------------
# entity scores
# ---------------------------------------------------------------------------------------------------------
def _prf(correct: int, predicted: int, gold: int) -> Tuple[float, float, float]:
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def entity_scores(gold_sentences: Sequence[Sequence[str]], pred_sentences: Sequence[Sequence[str]]) -> dict:
    """conlleval's counts over sentences of tag strings (gold and predicted, one tag per word each):
    {"precision", "recall", "f1" (fractions), "accuracy" (fraction of words whose tag is right), "correct",
    "predicted", "gold" (chunk counts), "per_type": {type: {"precision", "recall", "f1", "support" (gold chunks),
    "predicted", "correct"}}} with the types of gold and predicted chunks, sorted."""
    if len(gold_sentences) != len(pred_sentences):
        raise ValueError(f"{len(gold_sentences)} gold sentences but {len(pred_sentences)} predicted")
    counts: Dict[str, List[int]] = {}            # type -> [correct, predicted, gold]
    words = right = 0
    for k, (g, p) in enumerate(zip(gold_sentences, pred_sentences)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k}: {len(g)} gold tags but {len(p)} predicted")
        words += len(g)
        right += sum(a == b for a, b in zip(g, p))
        gc, pc = set(chunks(g)), set(chunks(p))
        for chunk in gc:
            counts.setdefault(chunk[0], [0, 0, 0])[2] += 1
        for chunk in pc:
            c = counts.setdefault(chunk[0], [0, 0, 0])
            c[1] += 1
            c[0] += chunk in gc
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    p, r, f = _prf(*total)
    per_type = {}
    for kind in sorted(counts):
        c = counts[kind]
        tp, tr, tf = _prf(*c)
        per_type[kind] = {"precision": tp, "recall": tr, "f1": tf, "support": c[2], "predicted": c[1],
                          "correct": c[0]}
    return {"precision": p, "recall": r, "f1": f, "accuracy": right / words if words else 0.0,
            "correct": total[0], "predicted": total[1], "gold": total[2], "per_type": per_type}


def format_entity_table(scores: dict) -> str:
    """The per-type table of `entity_scores` as aligned text (percentages, two decimals), one line per type and
    an "overall" line: type, precision, recall, f1, support (gold chunks), predicted chunks."""
    rows = [(k, v) for k, v in scores["per_type"].items()]
    rows.append(("overall", {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
                             "support": scores["gold"], "predicted": scores["predicted"]}))
    width = max([len("type")] + [len(k) for k, _ in rows])
    lines = [f"{'type':<{width}}  {'precision':>9}  {'recall':>7}  {'f1':>7}  {'support':>7}  {'predicted':>9}"]
    for k, v in rows:
        lines.append(f"{k:<{width}}  {100 * v['precision']:>9.2f}  {100 * v['recall']:>7.2f}  {100 * v['f1']:>7.2f}"
                     f"  {v['support']:>7d}  {v['predicted']:>9d}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# records: word pieces, windows, recombination
# ---------------------------------------------------------------------------------------------------------
def word_pieces(words: Sequence[str], tokenizer) -> List[List[int]]:
    """WordPiece ids of each word (tokenized one word at a time); a word without pieces gets [UNK]."""
    ids = tokenizer.token_ids_batch(list(words))
    return [p if p else [tokenizer.unk_id] for p in ids]


def windows(piece_counts: Sequence[int], width: int, context: int) -> List[Tuple[int, int, int, int]]:
    """Windows (left, start, end, right) over words: the window owns words start .. end - 1 and also holds the
    context words left .. start - 1 and end .. right - 1. Total pieces fit `width` (a first owned word that is
    longer than what is left is cut by the caller). One window when the sentence fits; otherwise each window
    owns as many words as fit beside up to `context` pieces of context on each side, and every word is owned by
    exactly one window, in order. Needs 0 <= 2 * context < width."""
    if width < 1 or context < 0 or 2 * context >= width:
        raise ValueError(f"window of {width} pieces with {context} context pieces per side: expected "
                         f"0 <= 2 * context < width")
    n = len(piece_counts)
    total = sum(piece_counts)
    if total <= width:
        return [(0, 0, n, n)]
    out = []
    start = 0
    while start < n:
        left, used = start, 0
        while left > 0 and used + piece_counts[left - 1] <= context:
            left -= 1
            used += piece_counts[left]
        budget = width - used
        rest = sum(piece_counts[start:])
        if rest <= budget:
            out.append((left, start, n, n))
            break
        end, owned = start + 1, piece_counts[start]
        while end < n and owned + piece_counts[end] <= budget - context:
            owned += piece_counts[end]
            end += 1
        right, room = end, budget - owned
        while right < n and piece_counts[right] <= room:
            room -= piece_counts[right]
            right += 1
        out.append((left, start, end, right))
        start = end
    return out


def default_window_context(max_seq_length: int) -> int:
    """The context pieces per side that tools/prepare_data.py --task conll / ner uses without --window_context."""
    return min(16, (max_seq_length - 3) // 2)


def sentence_rows(pieces: Sequence[Sequence[int]], tag_ids: Sequence[int], sentence_id: int, tokenizer,
                  max_seq_length: int, context: int) -> List[dict]:
    """The record rows of one sentence (see the module text) from its words' piece ids (`word_pieces`) and tag
    ids: {input_ids, input_mask, segment_ids, label_ids: lists of max_seq_length ints, sentence_id: [id]}."""
    if len(pieces) != len(tag_ids):
        raise ValueError(f"sentence {sentence_id}: {len(pieces)} words but {len(tag_ids)} tags")
    if not pieces:
        raise ValueError(f"sentence {sentence_id}: no words")
    width = max_seq_length - 2
    rows = []
    for left, start, end, right in windows([len(p) for p in pieces], width, context):
        ids, labels = [tokenizer.cls_id], [IGNORE_LABEL]
        for w in range(left, right):
            p = list(pieces[w])[:width - (len(ids) - 1)]
            ids += p
            labels += [tag_ids[w] if start <= w < end else IGNORE_LABEL] + [IGNORE_LABEL] * (len(p) - 1)
        ids.append(tokenizer.sep_id)
        labels.append(IGNORE_LABEL)
        pad = max_seq_length - len(ids)
        rows.append({"input_ids": ids + [0] * pad, "input_mask": [1] * len(ids) + [0] * pad,
                     "segment_ids": [0] * max_seq_length, "label_ids": labels + [IGNORE_LABEL] * pad,
                     "sentence_id": [sentence_id]})
    return rows


def sentence_tags(label_ids, pred_ids, sentence_id, labels: Optional[Sequence[str]] = None
                  ) -> Tuple[List[list], List[list]]:
    """Per-sentence tags from rows: label_ids [N, S] (IGNORE_LABEL where a position has no word), pred_ids
    [N, S] (predicted tag ids; positions without a label are ignored) and sentence_id [N] (or [N, 1]).
    Rows are grouped by sentence id (ascending), keeping their given order within a sentence, and the tags at
    the labelled positions are concatenated: (gold, pred), one list per sentence, one entry per word. Entries are
    tag ids, or the strings labels[id] when `labels` is given (a predicted id outside it is a ValueError)."""
    label_ids = np.asarray(label_ids)
    pred_ids = np.asarray(pred_ids)
    sid = np.asarray(sentence_id).reshape(-1)
    if label_ids.ndim != 2 or pred_ids.shape != label_ids.shape or sid.shape[0] != label_ids.shape[0]:
        raise ValueError(f"sentence_tags: label_ids {label_ids.shape}, pred_ids {pred_ids.shape} and sentence_id "
                         f"{sid.shape}: expected [N, S], [N, S] and [N]")
    order = np.argsort(sid, kind="stable")
    mask = label_ids >= 0
    gold_out: List[list] = []
    pred_out: List[list] = []
    last = None
    for i in order:
        if sid[i] != last:
            gold_out.append([])
            pred_out.append([])
            last = sid[i]
        gold_out[-1].extend(label_ids[i][mask[i]].tolist())
        pred_out[-1].extend(pred_ids[i][mask[i]].tolist())
    if labels is not None:
        names = list(labels)
        for sentences in (gold_out, pred_out):
            for s in sentences:
                for j, v in enumerate(s):
                    if not 0 <= v < len(names):
                        raise ValueError(f"tag id {v}: outside the {len(names)} labels")
                    s[j] = names[v]
    return gold_out, pred_out


def entity_metrics(task_labels: Sequence[str], label_ids, logits_or_pred_ids, sentence_id) -> Dict[str, float]:
    """Entity-level {"f1", "precision", "recall"} (fractions, conlleval counts) of a token task's eval rows:
    label_ids [N, S], logits [N, S, num_labels] (argmax taken) or predicted ids [N, S], sentence_id [N] or
    [N, 1]; task_labels are the tag strings in id order (Task.labels)."""
    pred = np.asarray(logits_or_pred_ids)
    if pred.ndim == 3:
        pred = pred.argmax(axis=-1)
    gold, guess = sentence_tags(label_ids, pred, sentence_id, task_labels)
    s = entity_scores(gold, guess)
    return {"f1": s["f1"], "precision": s["precision"], "recall": s["recall"]}


def iter_sentence_rows(sentences: Sequence[Tuple[Sequence[str], Sequence[int]]], tokenizer, max_seq_length: int,
                       context: int, stats: Optional[dict] = None, chunk: int = 512) -> Iterator[dict]:
    """Rows of many (words, tag ids) sentences, sentence ids 0, 1, ... in order; word pieces are computed
    `chunk` sentences at a time. `stats` (if given) gets "sentences", "rows" and "windowed" (sentences that
    needed more than one row)."""
    if stats is not None:
        stats.update(sentences=0, rows=0, windowed=0)
    for c in range(0, len(sentences), chunk):
        part = sentences[c:c + chunk]
        flat = word_pieces([w for words, _ in part for w in words], tokenizer)
        k = 0
        for j, (words, tag_ids) in enumerate(part):
            rows = sentence_rows(flat[k:k + len(words)], tag_ids, c + j, tokenizer, max_seq_length, context)
            k += len(words)
            if stats is not None:
                stats["sentences"] += 1
                stats["rows"] += len(rows)
                stats["windowed"] += len(rows) > 1
            yield from rows
