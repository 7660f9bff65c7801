"""Extractive question answering (SQuAD v1.1 / v2.0): reading SQuAD files, windows and records, the features
sidecar, n-best span decoding and the official evaluation rules.

Records of a span task (one row per feature = one window of a context for one question):
    input_ids, input_mask, segment_ids  int64[max_seq_length]  [CLS] question [SEP] context window [SEP], zero
                                                               padding; segment 0 up to the first [SEP], 1 after
    label_ids                          int64[2]               start and end row positions of the answer's word
                                                               pieces; (0, 0) = [CLS] when the answer is not inside
                                                               this window or the question has none (v2)
    feature_id                         int64[1]               index of the row within its split
The question keeps its first `max_query_length` pieces. The context pieces are cut into windows of
max_seq_length - len(question) - 3 pieces, each starting `doc_stride` pieces after the previous one, until the
last piece is in a window (the layout of Google BERT's run_squad.py). A piece that is in several windows is
"max context" in the one where min(pieces left of it, pieces right of it) + 0.01 * window length is largest
(the first of equal ones); decoding starts answers only at max-context pieces. The training answer is the first
gold answer: its word pieces are the pieces whose characters overlap context[answer_start:answer_start +
len(text)] (so an answer that ends inside a word, as "1990" in "1990s", gets the whole piece "1990"; one that
covers only part of a piece gets the whole piece).

The features sidecar `<split>_features.json` (written with the records, all or nothing) holds what decoding needs:
    {"format": "squad-features", "format_version": 1, "version": "1.1" | "2.0", "split": ...,
     "max_seq_length", "doc_stride", "max_query_length", "num_features": N,
     "contexts": [{"text": context string, "offsets": [[char_start, char_end], ...] one per context word piece}],
     "examples": [{"id", "question", "context": index into contexts, "answers": [every gold text],
                   "is_impossible": bool}],
     "features": [{"example": index into examples, "row_start": row position of the first context piece
                   (= len(question pieces) + 2), "doc_start": index of that piece in the context's pieces,
                   "length": number of context pieces in the row, "max_context": string of "0"/"1", one per
                   context piece of the row}]}
Feature i is the record row whose feature_id is i. Row position p in [row_start, row_start + length) holds
context piece doc_start + p - row_start, whose text is context[char_start:char_end]; an answer from piece a to
piece b is context[offsets[a][0]:offsets[b][1]], an exact substring of the original context.

Scores follow the official SQuAD evaluation rules (v1.1 and v2.0): answers are normalized (lower case,
punctuation removed, the articles a / an / the removed, whitespace collapsed); exact match is 1 when the
normalized prediction equals a normalized gold answer; F1 is the harmonic mean of precision and recall over the
bag of normalized tokens; both take the maximum over the gold answers. As in the v2.0 script, gold answers that
normalize to nothing are dropped, a question without gold answers has the one gold answer "" (no answer), and
F1 against an empty answer is 1 when both are empty, else 0. Scores are fractions in [0, 1] (the official
scripts print percentages).

This module never imports MindSpore: converters, decoding and metrics run without it.
"""
import json
import math
import os
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from src.errors import UserError
from src.fileio import read_errors
from src.tasks import SQUAD_METRICS, SQUAD_V2_METRICS

VERSIONS = ("1.1", "2.0")
FEATURES_FORMAT = "squad-features"
FEATURES_FORMAT_VERSION = 1
DOC_STRIDE = 128             # tools/prepare_data.py --task squad defaults (--doc_stride, --max_query_length)
MAX_QUERY_LENGTH = 64
N_BEST = 20                  # decode's defaults
MAX_ANSWER_LENGTH = 30
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


# ---------------------------------------------------------------------------------------------------------
# official answer normalization and scores
# ---------------------------------------------------------------------------------------------------------
def normalize_answer(s: str) -> str:
    """Lower case, drop ASCII punctuation (string.punctuation), replace the words a / an / the by a space,
    collapse whitespace: the official SQuAD rules, in that order."""
    s = "".join(ch for ch in str(s).lower() if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds) -> List[str]:
    if isinstance(golds, str):
        golds = [golds]
    kept = [g for g in golds if normalize_answer(g)]
    return kept if kept else [""]


def _f1_one(pred_tokens: List[str], gold_tokens: List[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds) -> float:
    """1.0 when normalize_answer(pred) equals the normalized form of one gold answer, else 0.0. `golds` is a list
    of gold texts (or one string); an empty list (or only answers that normalize to "") means "no answer", which
    only the empty prediction matches."""
    p = normalize_answer(pred)
    return max(float(p == normalize_answer(g)) for g in _golds(golds))


def f1_score(pred: str, golds) -> float:
    """Token-level F1 of the normalized prediction, the maximum over the gold answers (see exact_match for
    `golds`); against the no-answer gold "" it is 1.0 for an empty prediction and 0.0 otherwise."""
    p = normalize_answer(pred).split()
    return max(_f1_one(p, normalize_answer(g).split()) for g in _golds(golds))


# ---------------------------------------------------------------------------------------------------------
# SQuAD files
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Example:
    qid: str
    question: str
    context: int                   # index into the file's contexts
    answers: List[str]             # every gold text ([] for an impossible question)
    answer_starts: List[int]       # character offsets of the answers in the context
    is_impossible: bool


def _where(path: str, art: int, par: int, qid=None, q: Optional[int] = None) -> str:
    if qid is not None:
        return f"{path}: question id '{qid}' (article {art}, paragraph {par})"
    if q is not None:
        return f"{path}: article {art}, paragraph {par}, question {q}"
    return f"{path}: article {art}, paragraph {par}"


def read_squad(path: str, version: Optional[str] = None) -> Tuple[List[str], List[Example], str]:
    """(contexts, examples, version) of a SQuAD-format JSON file ({"data": [{"paragraphs": [{"context",
    "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}). The version is
    "2.0" when any question has an is_impossible field, else "1.1"; `version` forces it ("1.1" refuses
    impossible questions). Every problem is a UserError naming the file and the question id (or the article /
    paragraph index): a missing or empty context, question or id, a repeated id, an answerable question without
    answers, an impossible one with answers, an answer whose text is not at its answer_start in the context."""
    if version is not None and version not in VERSIONS:
        raise UserError(f"--version {version}: expected one of {', '.join(VERSIONS)}")
    if not os.path.isfile(path):
        raise UserError(f"input file {path}: not found (expected a SQuAD-format JSON file)")
    with read_errors(path), open(path, "r", encoding="utf-8-sig") as f:
        doc = json.load(f)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a SQuAD JSON object with a \"data\" list of articles")
    v2 = any("is_impossible" in qa for art in data if isinstance(art, dict)
             for par in (art.get("paragraphs") or []) if isinstance(par, dict)
             for qa in (par.get("qas") or []) if isinstance(qa, dict))
    found = "2.0" if v2 else "1.1"
    version = version or found
    contexts: List[str] = []
    examples: List[Example] = []
    seen = set()
    for a, art in enumerate(data):
        pars = art.get("paragraphs") if isinstance(art, dict) else None
        if not isinstance(pars, list):
            raise UserError(f"{path}: article {a}: expected a \"paragraphs\" list")
        for p, par in enumerate(pars):
            if not isinstance(par, dict):
                raise UserError(f"{_where(path, a, p)}: expected an object with \"context\" and \"qas\"")
            context, qas = par.get("context"), par.get("qas")
            if not isinstance(qas, list):
                raise UserError(f"{_where(path, a, p)}: expected a \"qas\" list of questions")
            first = next((qa.get("id") for qa in qas if isinstance(qa, dict)), None)
            if not isinstance(context, str) or not context.strip():
                what = f" (first question id '{first}')" if first is not None else ""
                raise UserError(f"{_where(path, a, p)}{what}: empty or missing context")
            ci = len(contexts)
            contexts.append(context)
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str) or not qa["id"]:
                    raise UserError(f"{_where(path, a, p, q=q)}: expected an object with a non-empty string \"id\"")
                qid = qa["id"]
                where = _where(path, a, p, qid)
                if qid in seen:
                    raise UserError(f"{where}: id given twice")
                seen.add(qid)
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise UserError(f"{where}: empty or missing question")
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise UserError(f"{where}: is_impossible is {impossible!r}, expected true or false")
                if impossible and version == "1.1":
                    raise UserError(f"{where}: is_impossible true, but --version 1.1 has no impossible questions")
                answers = qa.get("answers", [])
                if not isinstance(answers, list):
                    raise UserError(f"{where}: \"answers\" must be a list of {{\"text\", \"answer_start\"}}")
                if impossible and answers:
                    raise UserError(f"{where}: is_impossible true but {len(answers)} answer(s) given (SQuAD v2.0 "
                                    f"keeps those in \"plausible_answers\")")
                if not impossible and not answers:
                    raise UserError(f"{where}: no answers (an answerable question needs at least one; in v2.0 set "
                                    f"is_impossible true)")
                texts, starts = [], []
                for k, ans in enumerate(answers):
                    text = ans.get("text") if isinstance(ans, dict) else None
                    start = ans.get("answer_start") if isinstance(ans, dict) else None
                    if not isinstance(text, str) or not text.strip() or isinstance(start, bool) \
                            or not isinstance(start, int):
                        raise UserError(f"{where}: answer {k}: expected a non-empty \"text\" and an integer "
                                        f"\"answer_start\"")
                    if start < 0 or context[start:start + len(text)] != text:
                        there = context[max(start, 0):max(start, 0) + len(text)]
                        raise UserError(f"{where}: answer {k} {text!r} is not in the context at answer_start "
                                        f"{start} (the context has {there!r} there)")
                    texts.append(text)
                    starts.append(start)
                examples.append(Example(qid, question, ci, texts, starts, impossible))
    if not examples:
        raise UserError(f"{path}: no questions (empty input)")
    return contexts, examples, version


# ---------------------------------------------------------------------------------------------------------
# windows and records
# ---------------------------------------------------------------------------------------------------------
def doc_windows(n_pieces: int, max_pieces: int, doc_stride: int) -> List[Tuple[int, int]]:
    """(start, length) windows over n_pieces context pieces, at most max_pieces each, every one starting
    doc_stride pieces after the previous one (never more than the previous window's length), until the last
    piece is covered: Google run_squad's doc spans."""
    if max_pieces < 1 or doc_stride < 1:
        raise ValueError(f"windows of {max_pieces} pieces with stride {doc_stride}: expected both >= 1")
    out, start = [], 0
    while start < n_pieces:
        length = min(n_pieces - start, max_pieces)
        out.append((start, length))
        if start + length == n_pieces:
            break
        start += min(length, doc_stride)
    return out


def max_context_flags(windows: Sequence[Tuple[int, int]]) -> List[str]:
    """One string of "0"/"1" per window: "1" where the window is the max-context window of that piece (score
    min(left, right) + 0.01 * length, the first window of equal scores)."""
    best: Dict[int, Tuple[float, int]] = {}
    for w, (start, length) in enumerate(windows):
        for k in range(start, start + length):
            score = min(k - start, start + length - 1 - k) + 0.01 * length
            if k not in best or score > best[k][0]:
                best[k] = (score, w)
    return ["".join("1" if best[k][1] == w else "0" for k in range(start, start + length))
            for w, (start, length) in enumerate(windows)]


def answer_pieces(offsets: Sequence[Tuple[int, int]], char_start: int, char_end: int) -> Optional[Tuple[int, int]]:
    """(first, last) context piece whose characters overlap [char_start, char_end); None when none does."""
    first = next((k for k, (s, e) in enumerate(offsets) if e > char_start and s < char_end), None)
    if first is None:
        return None
    last = first
    while last + 1 < len(offsets) and offsets[last + 1][0] < char_end:
        last += 1
    return first, last


def example_rows(question_ids: Sequence[int], context_ids: Sequence[int], offsets: Sequence[Tuple[int, int]],
                 example: Example, example_index: int, first_feature_id: int, cls_id: int, sep_id: int,
                 max_seq_length: int, doc_stride: int, max_query_length: int) -> Tuple[List[dict], List[dict]]:
    """(record rows, feature entries) of one question (see the module text). A ValueError when the question
    leaves no room for the context or the context or the answer has no word pieces (the caller names the id)."""
    q = list(question_ids)[:max_query_length]
    if not q:
        raise ValueError("the question has no word pieces")
    if not context_ids:
        raise ValueError("the context has no word pieces")
    max_pieces = max_seq_length - len(q) - 3
    if max_pieces < 1:
        raise ValueError(f"the question has {len(q)} word pieces (after --max_query_length {max_query_length}): "
                         f"with [CLS] and two [SEP] no room is left for the context in max_seq_length "
                         f"{max_seq_length}")
    span = None
    if not example.is_impossible:
        a_start = example.answer_starts[0]
        span = answer_pieces(offsets, a_start, a_start + len(example.answers[0]))
        if span is None:
            raise ValueError(f"answer {example.answers[0]!r} has no word pieces")
    windows = doc_windows(len(context_ids), max_pieces, doc_stride)
    flags = max_context_flags(windows)
    row_start = len(q) + 2
    rows, feats = [], []
    for w, (start, length) in enumerate(windows):
        ids = [cls_id] + q + [sep_id] + list(context_ids[start:start + length]) + [sep_id]
        seg = [0] * row_start + [1] * (length + 1)
        label = [0, 0]
        if span is not None and start <= span[0] and span[1] < start + length:
            label = [row_start + span[0] - start, row_start + span[1] - start]
        pad = max_seq_length - len(ids)
        rows.append({"input_ids": ids + [0] * pad, "input_mask": [1] * len(ids) + [0] * pad,
                     "segment_ids": seg + [0] * pad, "label_ids": label, "feature_id": [first_feature_id + w]})
        feats.append({"example": example_index, "row_start": row_start, "doc_start": start, "length": length,
                      "max_context": flags[w]})
    return rows, feats


def span_columns(max_seq_length: int) -> Dict[str, Tuple[str, int]]:
    """Record columns of a span split."""
    cols = {c: ("int64", max_seq_length) for c in ("input_ids", "input_mask", "segment_ids")}
    cols["label_ids"] = ("int64", 2)
    cols["feature_id"] = ("int64", 1)
    return cols


class SplitBuilder:
    """Rows and the features sidecar of one split of a SQuAD file. `rows()` yields the record rows (feature ids
    0, 1, ... in question order) and fills `sidecar` and `stats` ("questions", "features", "windowed": questions
    with more than one window, "out_of_window": rows of answerable questions whose answer is outside the window,
    "inexact": answers whose pieces' text is not exactly the gold text, "truncated": questions cut to
    max_query_length)."""

    def __init__(self, path: str, split: str, contexts: Sequence[str], examples: Sequence[Example], version: str,
                 tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int):
        self.path, self.split, self.contexts, self.examples, self.version = path, split, contexts, examples, version
        self.tokenizer = tokenizer
        self.L, self.stride, self.max_query = max_seq_length, doc_stride, max_query_length
        self.stats = dict(questions=0, features=0, windowed=0, out_of_window=0, inexact=0, truncated=0)
        self.sidecar: Optional[dict] = None

    def rows(self, chunk: int = 512) -> Iterator[dict]:
        used = sorted({e.context for e in self.examples})
        ctx_index = {c: i for i, c in enumerate(used)}
        encoded = self.tokenizer.token_ids_offsets_batch([self.contexts[c] for c in used])
        contexts = [{"text": self.contexts[c], "offsets": [list(o) for o in off]}
                    for c, (_, off) in zip(used, encoded)]
        examples, features = [], []
        st = self.stats
        for c0 in range(0, len(self.examples), chunk):
            part = self.examples[c0:c0 + chunk]
            q_ids = self.tokenizer.token_ids_batch([e.question for e in part])
            for j, (ex, q) in enumerate(zip(part, q_ids)):
                ci = ctx_index[ex.context]
                ids, offsets = encoded[ci]
                try:
                    rows, feats = example_rows(q, ids, offsets, ex, c0 + j, len(features), self.tokenizer.cls_id,
                                               self.tokenizer.sep_id, self.L, self.stride, self.max_query)
                except ValueError as e:
                    raise UserError(f"{self.path}: question id '{ex.qid}': {e}") from None
                st["questions"] += 1
                st["features"] += len(rows)
                st["windowed"] += len(rows) > 1
                st["truncated"] += len(q) > self.max_query
                if not ex.is_impossible:
                    st["out_of_window"] += sum(r["label_ids"] == [0, 0] for r in rows)
                    a, b = answer_pieces(offsets, ex.answer_starts[0], ex.answer_starts[0] + len(ex.answers[0]))
                    st["inexact"] += self.contexts[ex.context][offsets[a][0]:offsets[b][1]] != ex.answers[0]
                examples.append({"id": ex.qid, "question": ex.question, "context": ci, "answers": list(ex.answers),
                                 "is_impossible": ex.is_impossible})
                features.extend(feats)
                yield from rows
        self.sidecar = {"format": FEATURES_FORMAT, "format_version": FEATURES_FORMAT_VERSION,
                        "version": self.version, "split": self.split, "max_seq_length": self.L,
                        "doc_stride": self.stride, "max_query_length": self.max_query,
                        "num_features": len(features), "contexts": contexts, "examples": examples,
                        "features": features}

    def sidecar_text(self) -> str:
        if self.sidecar is None:
            raise RuntimeError("sidecar_text before rows() was consumed")
        return json.dumps(self.sidecar, ensure_ascii=False, separators=(",", ":")) + "\n"


def features_file(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}_features.json")


# ---------------------------------------------------------------------------------------------------------
# the features sidecar
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SquadFeatures:
    """The content of a `<split>_features.json` (see the module text); `path` is the file it came from."""
    path: str
    version: str
    split: str
    max_seq_length: int
    contexts: List[dict]
    examples: List[dict]
    features: List[dict]

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def v2(self) -> bool:
        return self.version == "2.0"


def _bad(path: str, what: str):
    return UserError(f"features file {path}: {what}; regenerate it with tools/prepare_data.py --task squad")


def load_features(data_dir: str, split: str) -> SquadFeatures:
    """Read and check `<data_dir>/<split>_features.json`; one UserError naming the file when it is missing, not
    JSON, or not a consistent features file."""
    path = features_file(data_dir, split)
    if not os.path.isfile(path):
        raise UserError(f"features file {path}: not found (a span task's split needs the <split>_features.json "
                        f"that tools/prepare_data.py --task squad writes beside the records)")
    with read_errors(f"features file {path}", "the JSON tools/prepare_data.py --task squad writes"), \
            open(path, "r", encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != FEATURES_FORMAT:
        raise _bad(path, f"not a {FEATURES_FORMAT} file")
    if doc.get("format_version") != FEATURES_FORMAT_VERSION:
        raise _bad(path, f"format_version {doc.get('format_version')!r}, this version reads "
                         f"{FEATURES_FORMAT_VERSION}")
    for key in ("version", "split", "max_seq_length", "num_features", "contexts", "examples", "features"):
        if key not in doc:
            raise _bad(path, f"key \"{key}\" missing")
    if doc["version"] not in VERSIONS:
        raise _bad(path, f"version {doc['version']!r}, expected one of {', '.join(VERSIONS)}")
    contexts, examples, features = doc["contexts"], doc["examples"], doc["features"]
    if not (isinstance(contexts, list) and isinstance(examples, list) and isinstance(features, list)):
        raise _bad(path, "contexts, examples and features must be lists")
    if doc["num_features"] != len(features) or not features:
        raise _bad(path, f"num_features {doc['num_features']} but {len(features)} features")
    try:
        for i, c in enumerate(contexts):
            if not isinstance(c["text"], str) or not isinstance(c["offsets"], list):
                raise _bad(path, f"context {i}: expected \"text\" and \"offsets\"")
        for i, e in enumerate(examples):
            if not (0 <= e["context"] < len(contexts)) or not isinstance(e["answers"], list) \
                    or not isinstance(e["is_impossible"], bool) or not isinstance(e["id"], str):
                raise _bad(path, f"example {i}: bad id, context, answers or is_impossible")
        S = int(doc["max_seq_length"])
        for i, ft in enumerate(features):
            e, r0, d0, n, mc = ft["example"], ft["row_start"], ft["doc_start"], ft["length"], ft["max_context"]
            if not 0 <= e < len(examples):
                raise _bad(path, f"feature {i}: example {e} outside the {len(examples)} examples")
            n_pieces = len(contexts[examples[e]["context"]]["offsets"])
            if not (n >= 1 and r0 >= 1 and r0 + n < S and 0 <= d0 and d0 + n <= n_pieces
                    and isinstance(mc, str) and len(mc) == n):
                raise _bad(path, f"feature {i}: row_start {r0}, doc_start {d0}, length {n} do not fit "
                                 f"max_seq_length {S} and the context's {n_pieces} pieces")
    except (KeyError, TypeError) as e:
        raise _bad(path, f"missing or malformed entry ({type(e).__name__}: {e})") from None
    return SquadFeatures(path, doc["version"], doc["split"], S, contexts, examples, features)


# ---------------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------------
def _top(row: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-row, kind="stable")[:n]


def _feature_order(n_rows: int, feats: SquadFeatures, feature_ids) -> np.ndarray:
    """rows[i] = the logits row of feature i."""
    if feature_ids is None:
        if n_rows != feats.num_features:
            raise ValueError(f"{n_rows} logits rows but {feats.num_features} features in {feats.path}")
        return np.arange(n_rows)
    fid = np.asarray(feature_ids).reshape(-1).astype(np.int64)
    if fid.shape[0] != n_rows or not np.array_equal(np.sort(fid), np.arange(feats.num_features)):
        raise ValueError(f"feature_ids: expected every feature id 0 .. {feats.num_features - 1} of {feats.path} "
                         f"exactly once, one per logits row ({n_rows} rows)")
    rows = np.empty(n_rows, np.int64)
    rows[fid] = np.arange(n_rows)
    return rows


def decode(start_logits, end_logits, feats: SquadFeatures, n_best: int = N_BEST,
           max_answer_length: int = MAX_ANSWER_LENGTH, feature_ids=None,
           span_scores: Optional[Dict[str, float]] = None) -> Tuple[Dict[str, str], Dict[str, float]]:
    """Best answer span per question, Google run_squad's n-best search over all features of a question.

    start_logits, end_logits: [N, S] (row i = feature i, or feature feature_ids[i] when given; S may be shorter
    than max_seq_length as long as it covers every feature's context part). Per feature the n_best highest start
    and end positions are paired; a pair is a candidate when both are context pieces of the row, start <= end,
    end - start + 1 <= max_answer_length and the start piece is max-context in this row; its score is
    start_logit + end_logit. Returns (predictions, null_scores):
      predictions[qid]  the text of the best candidate over the question's features, cut from the original
                        context by character offsets ("" when no feature has a candidate);
      null_scores[qid]  min over the question's features of (start_logit[CLS] + end_logit[CLS]) minus the best
                        candidate's score (Google's score_null - best non-null; +inf when there is no
                        candidate). A v2 prediction is "no answer" when its null score is above the threshold
                        (apply_null_threshold); for v1.1 files the value is computed the same way, unused.
    span_scores (a dict, when given) gets the best candidate's score start_logit + end_logit per question (-inf
    when there is no candidate)."""
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape:
        raise ValueError(f"start_logits {start_logits.shape} and end_logits {end_logits.shape}: expected two [N, S]")
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best {n_best}, max_answer_length {max_answer_length}: expected both >= 1")
    rows = _feature_order(start_logits.shape[0], feats, feature_ids)
    S = start_logits.shape[1]
    by_example: Dict[int, List[int]] = {}
    for i, ft in enumerate(feats.features):
        if ft["row_start"] + ft["length"] > S:
            raise ValueError(f"logits of {S} positions, feature {i} has context pieces up to position "
                             f"{ft['row_start'] + ft['length'] - 1}")
        by_example.setdefault(ft["example"], []).append(i)
    predictions: Dict[str, str] = {}
    null_scores: Dict[str, float] = {}
    for e, ex in enumerate(feats.examples):
        best = None                                   # (score, feature, start, end)
        null = math.inf
        for i in by_example.get(e, []):
            ft = feats.features[i]
            s_row, e_row = start_logits[rows[i]], end_logits[rows[i]]
            null = min(null, s_row[0] + e_row[0])
            r0, n, mc = ft["row_start"], ft["length"], ft["max_context"]
            starts, ends = _top(s_row, n_best), _top(e_row, n_best)
            for s in starts:
                if not r0 <= s < r0 + n or mc[s - r0] != "1":
                    continue
                for t in ends:
                    if not r0 <= t < r0 + n or t < s or t - s + 1 > max_answer_length:
                        continue
                    score = s_row[s] + e_row[t]
                    if best is None or score > best[0]:
                        best = (score, i, int(s), int(t))
        if span_scores is not None:
            span_scores[ex["id"]] = -math.inf if best is None else float(best[0])
        if best is None:
            predictions[ex["id"]], null_scores[ex["id"]] = "", math.inf
            continue
        score, i, s, t = best
        ft = feats.features[i]
        ctx = feats.contexts[ex["context"]]
        a = ft["doc_start"] + s - ft["row_start"]
        b = ft["doc_start"] + t - ft["row_start"]
        predictions[ex["id"]] = ctx["text"][ctx["offsets"][a][0]:ctx["offsets"][b][1]]
        null_scores[ex["id"]] = float(null - score)
    return predictions, null_scores


def apply_null_threshold(predictions: Dict[str, str], null_scores: Dict[str, float],
                         threshold: float) -> Dict[str, str]:
    """v2 predictions: "" (no answer) where null_scores[qid] > threshold, else the predicted span."""
    return {q: ("" if null_scores[q] > threshold else p) for q, p in predictions.items()}


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------
V1_METRICS = SQUAD_METRICS
V2_METRICS = SQUAD_V2_METRICS


def _scores(preds: Dict[str, str], examples: Sequence[dict]) -> Tuple[np.ndarray, np.ndarray]:
    em = np.array([exact_match(preds[e["id"]], e["answers"]) for e in examples])
    f1 = np.array([f1_score(preds[e["id"]], e["answers"]) for e in examples])
    return em, f1


def best_null_threshold(predictions: Dict[str, str], null_scores: Dict[str, float], examples: Sequence[dict]
                        ) -> Tuple[float, float]:
    """(threshold, total F1) with the best F1 summed over the examples when every question whose null score is
    above the threshold is answered "" (the official v2.0 script's best_f1_thresh search). Candidate thresholds:
    every null score, or one below all of them (everything "no answer"); questions of equal null score go
    together; of equal totals the lowest threshold wins."""
    qids = [e["id"] for e in examples]
    ns = np.array([null_scores[q] for q in qids], dtype=np.float64)
    _, f1_answered = _scores(predictions, examples)
    f1_null = np.array([f1_score("", e["answers"]) for e in examples])
    gain = f1_answered - f1_null
    order = np.argsort(ns, kind="stable")
    total = float(f1_null.sum())
    best_total, best_thr = total, (float(ns.min()) - 1.0 if len(ns) else 0.0)
    k = 0
    while k < len(order):
        j = k
        while j < len(order) and ns[order[j]] == ns[order[k]]:
            total += gain[order[j]]
            j += 1
        if total > best_total + 1e-12:
            best_total, best_thr = total, float(ns[order[k]])
        k = j
    return best_thr, best_total


def span_metrics(task, start_logits, end_logits, feats: SquadFeatures, feature_ids=None,
                 null_threshold: Optional[float] = None, n_best: int = 20, max_answer_length: int = 30
                 ) -> Dict[str, float]:
    """Every metric of `task.metrics` (fractions in [0, 1], means over the questions) from the logits of a span
    split (see decode for the arguments). v1.1 (task SQuAD): {"f1", "exact"}. v2.0 (task SQuAD-v2):
      f1, exact                 at `null_threshold`, or without one at the threshold of best F1 on this split
                                (the official script's best_f1 / best_f1_thresh: an oracle on the split itself)
      f1_thresh0, exact_thresh0 at threshold 0.0 (Google run_squad's default null_score_diff_threshold)
      has_ans_f1, has_ans_exact, no_ans_exact  f1 / exact over the answerable / impossible questions at the
                                threshold of "f1" (0.0 when the split has none)
      null_threshold            the threshold used for "f1" / "exact" (a logit difference, not a fraction)"""
    if feats.v2 != (tuple(task.metrics) == V2_METRICS):
        raise UserError(f"features file {feats.path}: SQuAD v{feats.version} data, but task {task.name} scores "
                        f"{'v2.0' if tuple(task.metrics) == V2_METRICS else 'v1.1'} (use task "
                        f"{'SQuAD-v2' if feats.v2 else 'SQuAD'})")
    preds, nulls = decode(start_logits, end_logits, feats, n_best, max_answer_length, feature_ids)
    examples = feats.examples
    if not feats.v2:
        em, f1 = _scores(preds, examples)
        return {"f1": float(f1.mean()), "exact": float(em.mean())}
    if null_threshold is None:
        null_threshold, _ = best_null_threshold(preds, nulls, examples)
    em0, f10 = _scores(apply_null_threshold(preds, nulls, 0.0), examples)
    em, f1 = _scores(apply_null_threshold(preds, nulls, float(null_threshold)), examples)
    has = np.array([not e["is_impossible"] for e in examples])

    def mean(a, m):
        return float(a[m].mean()) if m.any() else 0.0

    return {"f1": float(f1.mean()), "exact": float(em.mean()), "f1_thresh0": float(f10.mean()),
            "exact_thresh0": float(em0.mean()), "has_ans_f1": mean(f1, has), "has_ans_exact": mean(em, has),
            "no_ans_exact": mean(em, ~has), "null_threshold": float(null_threshold)}
