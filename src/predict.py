"""Predictions of an exported folder (src/export_folder.py) on raw text: run_predict.py.

Text becomes model inputs exactly as tools/prepare_data.py makes records, with the folder's own vocab.txt,
do_lower_case and max_seq_length (rows zero-padded to the exported seq length when that is longer). Rows run in
the exported fixed batch; the last batch is padded with zero rows (one visible token each, as src/evaluation.py
pads) that are sliced off again, so every prediction equals the evaluation of the same file on the same rows.

Per task kind:
  classification / regression  `BertTokenizer.encode_batch`; output the label and the softmax probabilities
                               (regression: the value).
  token (CoNLL, ner)           each text is split into BERT's words (BertTokenizer.surface_words: the
                               BasicTokenizer split on whitespace and punctuation, each word printed as written
                               in the text), encoded as prepare_data --task conll / ner encodes a sentence
                               (src/ner.py: the first piece of each word labelled, a long sentence in windows with
                               the folder's window_context pieces of context); the tag of a word is the argmax at
                               its first piece, the windows recombined (ner.sentence_tags), entities by conlleval's
                               chunk rules (ner.chunks). Output: words, IOB2 tags, entities.
  span (SQuAD, SQuAD-v2,       each input is a question and a context, featurized as prepare_data --task squad does
  CoNLL-MRC)                   (src/squad.py SplitBuilder: the folder's doc_stride and max_query_length) and
                               decoded by squad.decode (n-best 20, max answer length 30): the answer is cut from
                               the original context by character offsets; score = start + end logit of the span.
                               v2.0 scoring (SQuAD-v2, CoNLL-MRC): "no answer" when the null score minus the best
                               span's score is above the folder's null_threshold (0.0 unless it records one).

Inputs: texts given on the command line, a text file (one text per line; `text_a<TAB>text_b` for pairs,
`question<TAB>context` for a span task) or a CSV/TSV file with a header (`--text_column`, `--text_b_column`;
.tsv/.tab are tab-separated without quoting, as tools/prepare_data.py reads them). Every input error is a UserError
raised before anything runs or is written.
"""
import csv
import io
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from src import ner, squad
from src.dataset import padded_batches
from src.errors import UserError
from src.export_folder import ExportFolder, read_export_folder
from src.fileio import atomic_text, read_errors
from src.outputs import check_output_dir
from src.tokenization import BertTokenizer

OUTPUT_FORMATS = (".jsonl", ".csv")
MODEL_INPUT_ORDER = ("input_ids", "segment_ids", "input_mask")     # the exported graph's inputs, in order


def _split_pairs(lines: Sequence[Tuple[str, str]]) -> Tuple[List[str], Optional[List[str]]]:
    """(where, text) lines -> texts_a, texts_b (None when no line holds a TAB); a pair line holds exactly one."""
    if not any("\t" in t for _, t in lines):
        return [t for _, t in lines], None
    a, b = [], []
    for where, t in lines:
        parts = t.split("\t")
        if len(parts) != 2:
            raise UserError(f"{where}: {len(parts) - 1} TAB(s), expected one (text_a<TAB>text_b) since other inputs "
                            f"are text pairs")
        a.append(parts[0])
        b.append(parts[1])
    return a, b


def read_texts(texts: Sequence[str] = (), text_file: Optional[str] = None, csv_file: Optional[str] = None,
               text_column: str = "text", text_b_column: Optional[str] = None
               ) -> Tuple[List[str], Optional[List[str]], str]:
    """(texts_a, texts_b or None, source description) from exactly one of: texts, text_file, csv_file."""
    return read_inputs(texts, text_file, csv_file, text_column, text_b_column)[:3]


def read_inputs(texts: Sequence[str] = (), text_file: Optional[str] = None, csv_file: Optional[str] = None,
                text_column: str = "text", text_b_column: Optional[str] = None
                ) -> Tuple[List[str], Optional[List[str]], str, List[str]]:
    """read_texts plus where each input comes from ("text 2", "<file> line 5"), for error messages."""
    given = [n for n, v in (("texts", list(texts)), ("--text_file", text_file), ("--csv", csv_file)) if v]
    if len(given) != 1:
        raise UserError("give the input as texts on the command line, --text_file or --csv" if not given else
                        f"give one input, not {' and '.join(given)}")
    if text_b_column and not csv_file:
        raise UserError("--text_b_column applies to --csv only (a --text_file pair is text_a<TAB>text_b)")
    if texts:
        lines = [(f"text {i + 1}", t) for i, t in enumerate(texts)]
        if any(not t.strip() for _, t in lines):
            raise UserError(f"{next(w for w, t in lines if not t.strip())}: empty text")
        a, b = _split_pairs(lines)
        return a, b, "command line", [w for w, _ in lines]
    if text_file:
        if not os.path.isfile(text_file):
            raise UserError(f"--text_file '{text_file}': not found")
        with read_errors(f"--text_file '{text_file}'"), open(text_file, encoding="utf-8-sig") as f:
            raw = f.read().split("\n")
        lines = [(f"{text_file} line {i + 1}", t.rstrip("\r")) for i, t in enumerate(raw) if t.strip()]
        if not lines:
            raise UserError(f"--text_file '{text_file}': no text (empty input)")
        a, b = _split_pairs(lines)
        return a, b, text_file, [w for w, _ in lines]
    return _read_csv(csv_file, text_column, text_b_column)


def _read_csv(path: str, text_column: str, text_b_column: Optional[str]):
    if not os.path.isfile(path):
        raise UserError(f"--csv '{path}': not found")
    delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    a, b, wheres = [], [], []
    with read_errors(f"--csv '{path}'", table="TSV" if delimiter == "\t" else "CSV"):
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            names = next(reader, None)
            if names is None:
                raise UserError(f"--csv '{path}': empty file (expected a header line and texts)")
            names = [n.strip() for n in names]
            index = {}
            for flag, col in (("--text_column", text_column), ("--text_b_column", text_b_column)):
                if col is None:
                    continue
                if col not in names:
                    raise UserError(f"--csv '{path}': {flag} '{col}' is not a column (columns: {', '.join(names)})")
                index[flag] = names.index(col)
            need = max(index.values()) + 1
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue                                            # blank line
                if len(row) < need:
                    raise UserError(f"--csv '{path}' line {reader.line_num}: {len(row)} fields, expected at least "
                                    f"{need}")
                a.append(row[index["--text_column"]])
                wheres.append(f"--csv '{path}' line {reader.line_num}")
                if "--text_b_column" in index:
                    b.append(row[index["--text_b_column"]])
    if not a:
        raise UserError(f"--csv '{path}': no rows (empty input)")
    return a, (b if text_b_column else None), path, wheres


def check_pairing(folder: ExportFolder, texts_b: Optional[list], source: str):
    """Pair input to a single-text model, or single texts to a pair model: a UserError (when the folder says)."""
    if folder.text_pair is False and texts_b is not None:
        raise UserError(f"{source}: text pairs given, but the model in '{folder.path}' takes single texts (task "
                        f"{folder.task.name})")
    if folder.text_pair is True and texts_b is None:
        how = "--text_b_column" if source.lower().endswith((".csv", ".tsv", ".tab")) else "text_a<TAB>text_b"
        raise UserError(f"{source}: single texts given, but the model in '{folder.path}' takes text pairs (task "
                        f"{folder.task.name}): give {how}")


def encode(folder: ExportFolder, texts_a: Sequence[str], texts_b: Optional[Sequence[str]] = None) -> dict:
    """Model input arrays [n, seq_length] (int32) of the texts, featurized as tools/prepare_data.py does."""
    tok = BertTokenizer(folder.vocab_file, do_lower_case=folder.do_lower_case)
    rows = tok.encode_batch(list(texts_a), None if texts_b is None else list(texts_b), folder.max_seq_length)
    ids, mask, seg = (np.asarray([r[i] for r in rows], np.int32) for i in range(3))
    pad = folder.seq_length - folder.max_seq_length
    if pad:
        ids, mask, seg = (np.pad(x, ((0, 0), (0, pad))) for x in (ids, mask, seg))
    return {"input_ids": ids, "input_mask": mask, "segment_ids": seg}


def run_batches(runner, arrays: dict, batch_size: int) -> np.ndarray:
    """Logits of every row in order, in fixed batches; the tail padded as src/evaluation.py:predict pads it
    (src/dataset.py padded_batches) and sliced off."""
    return np.concatenate([np.asarray(runner(*[batch[k] for k in MODEL_INPUT_ORDER]))[:real]
                           for batch, real in padded_batches(arrays, MODEL_INPUT_ORDER, batch_size)])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predictions(folder: ExportFolder, logits: np.ndarray) -> List[dict]:
    """One dict per row: {label, probabilities {label: p}} (regression: {value})."""
    if folder.regression:
        return [{"value": float(v)} for v in logits[:, 0]]
    probs = softmax(logits)
    return [{"label": folder.labels[int(p.argmax())],
             "probabilities": {lab: float(x) for lab, x in zip(folder.labels, p)}} for p in probs]


def format_line(pred: dict, text: str) -> str:
    """The printed line: `label<TAB>name=p ...<TAB>text` (regression: `value<TAB>text`)."""
    text = text if len(text) <= 80 else text[:77] + "..."
    if "value" in pred:
        return f"{pred['value']:.6f}\t{text}"
    probs = " ".join(f"{k}={v:.4f}" for k, v in pred["probabilities"].items())
    return f"{pred['label']}\t{probs}\t{text}"


def render_output(path: str, preds: List[dict], texts_a, texts_b, labels) -> str:
    """The --output file's content: JSON lines, or a CSV with text[, text_b], label, p_<label>... (value)."""
    if path.lower().endswith(".jsonl"):
        lines = []
        for i, p in enumerate(preds):
            row = {"text": texts_a[i], **({"text_b": texts_b[i]} if texts_b is not None else {}), **p}
            lines.append(json.dumps(row, ensure_ascii=False))
        return "\n".join(lines) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["text"] + (["text_b"] if texts_b is not None else [])
    regression = bool(preds) and "value" in preds[0]
    w.writerow(head + (["value"] if regression else ["label"] + [f"p_{x}" for x in labels]))
    for i, p in enumerate(preds):
        row = [texts_a[i]] + ([texts_b[i]] if texts_b is not None else [])
        w.writerow(row + ([repr(p["value"])] if regression else
                          [p["label"]] + [repr(p["probabilities"][x]) for x in labels]))
    return buf.getvalue()


def check_output(path: Optional[str]):
    if not path:
        return
    if not path.lower().endswith(OUTPUT_FORMATS):
        raise UserError(f"--output '{path}': expected a .jsonl or .csv file name")
    if os.path.isdir(path):
        raise UserError(f"--output '{path}' is a folder, expected a file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)), "--output")


# ------------------------------------------------------------------------------------------------- token tasks
def token_inputs(folder: ExportFolder, texts: Sequence[str], wheres: Sequence[str]):
    """(words, arrays, label_ids, sentence_id) of single texts for a token task: words[i] is the
    (word, start, end) list of text i (BertTokenizer.surface_words); the rows are those tools/prepare_data.py
    --task conll / ner writes for sentences of these words (ner.iter_sentence_rows: every word's first piece
    marked in label_ids, long sentences in windows of the folder's window_context), zero-padded to the exported
    seq length (label_ids with IGNORE_LABEL)."""
    tok = BertTokenizer(folder.vocab_file, do_lower_case=folder.do_lower_case)
    words = []
    for text, where in zip(texts, wheres):
        w = tok.surface_words(text)
        if not w:
            raise UserError(f"{where}: no words (only characters the tokenizer drops)")
        words.append(w)
    rows = list(ner.iter_sentence_rows([([x for x, _, _ in w], [0] * len(w)) for w in words], tok,
                                       folder.max_seq_length, folder.settings["window_context"]))
    pad = folder.seq_length - folder.max_seq_length
    arrays = {c: np.pad(np.asarray([r[c] for r in rows], np.int32), ((0, 0), (0, pad))) for c in MODEL_INPUT_ORDER}
    label_ids = np.pad(np.asarray([r["label_ids"] for r in rows], np.int64), ((0, 0), (0, pad)),
                       constant_values=-1)
    sentence_id = np.asarray([r["sentence_id"][0] for r in rows], np.int64)
    return words, arrays, label_ids, sentence_id


def token_predictions(folder: ExportFolder, texts: Sequence[str], words, logits: np.ndarray, label_ids,
                      sentence_id) -> List[dict]:
    """One dict per text: {text, words, tags (one IOB2 tag per word: the argmax at its first piece, windows
    recombined), entities [{type, text (cut from the text), start_word, end_word (exclusive)}]}."""
    _, tags = ner.sentence_tags(label_ids, logits.argmax(axis=-1), sentence_id, folder.labels)
    out = []
    for text, w, t in zip(texts, words, tags):
        if len(t) != len(w):                                   # every word is owned by exactly one window
            raise RuntimeError(f"{len(w)} words but {len(t)} tags for {text!r}")
        ents = [{"type": kind, "text": text[w[a][1]:w[b - 1][2]], "start_word": a, "end_word": b}
                for kind, a, b in ner.chunks(t)]
        out.append({"text": text, "words": [x for x, _, _ in w], "tags": list(t), "entities": ents})
    return out


def format_token_line(pred: dict) -> str:
    """`word/TAG word/TAG ...<TAB>entities: PER "John Smith", LOC "Paris"` (`entities: none` without any)."""
    ents = ", ".join(f'{e["type"]} "{e["text"]}"' for e in pred["entities"]) or "none"
    return " ".join(f"{w}/{t}" for w, t in zip(pred["words"], pred["tags"])) + f"\tentities: {ents}"


def render_token_output(path: str, preds: List[dict]) -> str:
    """JSON lines {text, words, tags, entities}, or a CSV: text, words and tags (space-separated, one per word),
    entities (JSON list)."""
    if path.lower().endswith(".jsonl"):
        return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "words", "tags", "entities"])
    for p in preds:
        w.writerow([p["text"], " ".join(p["words"]), " ".join(p["tags"]), json.dumps(p["entities"],
                                                                                    ensure_ascii=False)])
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------- span tasks
def span_v2(folder: ExportFolder) -> bool:
    """Whether the folder's task scores like SQuAD v2.0 (null answers): SQuAD-v2, CoNLL-MRC."""
    return "null_threshold" in folder.settings


def span_inputs(folder: ExportFolder, questions: Sequence[str], contexts: Sequence[str], wheres: Sequence[str],
                source: str):
    """(arrays, features) of question / context pairs, featurized as tools/prepare_data.py --task squad does
    (squad.SplitBuilder at the folder's max_seq_length, doc_stride and max_query_length; question i has id
    str(i)); arrays zero-padded to the exported seq length. A question or context that is empty or has no word
    pieces, or a question that leaves no room for the context, is a UserError naming the input."""
    tok = BertTokenizer(folder.vocab_file, do_lower_case=folder.do_lower_case)
    L, stride, max_query = (folder.max_seq_length, folder.settings["doc_stride"],
                            folder.settings["max_query_length"])
    q_ids = tok.token_ids_batch(list(questions))
    c_ids = tok.token_ids_batch(list(contexts))
    for where, q, c, qi, ci in zip(wheres, questions, contexts, q_ids, c_ids):
        for what, text, ids in (("question", q, qi), ("context", c, ci)):
            if not text.strip():
                raise UserError(f"{where}: empty {what} (expected question<TAB>context)")
            if not ids:
                raise UserError(f"{where}: the {what} has no word pieces (only characters the tokenizer drops)")
        n = min(len(qi), max_query)
        if L - n - 3 < 1:
            raise UserError(f"{where}: the question has {n} word pieces (max_query_length {max_query}): with "
                            f"[CLS] and two [SEP] no room is left for the context in max_seq_length {L}")
    version = "2.0" if span_v2(folder) else "1.1"
    examples = [squad.Example(str(i), q, i, [], [], True) for i, q in enumerate(questions)]
    builder = squad.SplitBuilder(source, "predict", list(contexts), examples, version, tok, L, stride, max_query)
    rows = list(builder.rows())
    side = builder.sidecar
    feats = squad.SquadFeatures(source, version, "predict", L, side["contexts"], side["examples"],
                                side["features"])
    pad = folder.seq_length - L
    arrays = {c: np.pad(np.asarray([r[c] for r in rows], np.int32), ((0, 0), (0, pad))) for c in MODEL_INPUT_ORDER}
    return arrays, feats


def span_predictions(folder: ExportFolder, questions: Sequence[str], contexts: Sequence[str], logits: np.ndarray,
                     feats) -> List[dict]:
    """One dict per question: {question, context, answer (cut from the context; "" for no answer), score (start
    + end logit of the best span, None when no span qualifies)}; v2.0 scoring adds no_answer and null_score_diff
    (the null score minus the best span's score; "no answer" when it is above the folder's null_threshold)."""
    scores: dict = {}
    answers, nulls = squad.decode(logits[:, :, 0], logits[:, :, 1], feats, span_scores=scores)
    v2 = span_v2(folder)
    out = []
    for i, (q, c) in enumerate(zip(questions, contexts)):
        qid = str(i)
        score = scores[qid] if np.isfinite(scores[qid]) else None
        p = {"question": q, "context": c, "answer": answers[qid], "score": score}
        if v2:
            diff = nulls[qid]
            no = diff > folder.settings["null_threshold"]
            p.update(answer="" if no else answers[qid], no_answer=bool(no),
                     null_score_diff=float(diff) if np.isfinite(diff) else None)
        out.append(p)
    return out


def _clip(text: str) -> str:
    text = " ".join(text.split("\t")).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def format_span_line(pred: dict) -> str:
    """`answer<TAB>score<TAB>question` (`(no answer)` for a null answer, score `-` when no span qualifies)."""
    answer = pred["answer"].replace("\t", " ").replace("\n", " ") if pred["answer"] else "(no answer)"
    score = "-" if pred["score"] is None else f"{pred['score']:.4f}"
    return f"{answer}\t{score}\t{_clip(pred['question'])}"


def render_span_output(path: str, preds: List[dict]) -> str:
    """JSON lines {question, context, answer, score[, no_answer, null_score_diff]}, or a CSV of those columns."""
    if path.lower().endswith(".jsonl"):
        return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = list(preds[0])
    w.writerow(cols)
    for p in preds:
        w.writerow(["" if p[k] is None else repr(p[k]) if isinstance(p[k], float) else p[k] for k in cols])
    return buf.getvalue()


def _check_logits(folder: ExportFolder, logits: np.ndarray):
    """The model output agrees with the task: [rows, labels] for a sentence task, [rows, seq, labels] else."""
    token = folder.task.kind in ("token", "span")
    want = 3 if token else 2
    if logits.ndim != want or logits.shape[-1] != folder.num_labels:
        shape = "[batch, seq, " if token else "[batch, "
        raise UserError(f"'{folder.model_file}': the model outputs shape {list(logits.shape)}, task "
                        f"{folder.task.name} ({folder.task.kind}) needs {shape}{folder.num_labels}] (the folder's "
                        f"labels.json is not the model's)")


def check_inputs(folder: ExportFolder, texts_b: Optional[list], source: str):
    """The input layout the folder's task takes: single texts for a token task, question<TAB>context for a span
    task (check_pairing for sentence tasks)."""
    kind, name = folder.task.kind, folder.task.name
    if kind == "token" and texts_b is not None:
        raise UserError(f"{source}: text pairs given, but the model in '{folder.path}' tags single texts (task "
                        f"{name}, one tag per word)")
    if kind == "span" and texts_b is None:
        how = "--text_column <question> --text_b_column <context>" \
            if source.lower().endswith((".csv", ".tsv", ".tab")) else "question<TAB>context"
        raise UserError(f"{source}: no TAB in the input, but the model in '{folder.path}' answers questions about "
                        f"a context (task {name}): give {how}")
    if kind not in ("token", "span"):
        check_pairing(folder, texts_b, source)


def predict_folder(model_dir: str, texts: Sequence[str] = (), text_file: Optional[str] = None,
                   csv_file: Optional[str] = None, text_column: str = "text", text_b_column: Optional[str] = None,
                   output: Optional[str] = None, threads: int = 0, log=print) -> List[dict]:
    """run_predict.py: read the folder and the input, check both, predict, print one line per input and write
    `output` (.jsonl / .csv) atomically. Returns the prediction dicts: sentence tasks {text[, text_b], label,
    probabilities} ({value} for regression), token tasks {text, words, tags, entities}, span tasks {question,
    context, answer, score[, no_answer, null_score_diff]}."""
    from src.export import exported_shape, runner_for
    check_output(output)
    folder = read_export_folder(model_dir)
    texts_a, texts_b, source, wheres = read_inputs(texts, text_file, csv_file, text_column, text_b_column)
    check_inputs(folder, texts_b, source)
    kind = folder.task.kind
    if kind == "token":
        words, arrays, label_ids, sentence_id = token_inputs(folder, texts_a, wheres)
    elif kind == "span":
        arrays, feats = span_inputs(folder, texts_a, texts_b, wheres, source)
    else:
        arrays = encode(folder, texts_a, texts_b)
    runner = runner_for(folder.model_file, threads)
    exported_shape(folder.model_file, runner, folder.batch_size, folder.seq_length)   # the file agrees with labels
    logits = run_batches(runner, arrays, folder.batch_size)
    _check_logits(folder, logits)
    if kind == "token":
        preds = token_predictions(folder, texts_a, words, logits, label_ids, sentence_id)
        lines, render = [format_token_line(p) for p in preds], render_token_output
    elif kind == "span":
        preds = span_predictions(folder, texts_a, texts_b, logits, feats)
        lines, render = [format_span_line(p) for p in preds], render_span_output
    else:
        raw = predictions(folder, logits)
        lines = [format_line(p, texts_a[i] if texts_b is None else f"{texts_a[i]} | {texts_b[i]}")
                 for i, p in enumerate(raw)]

        def render(path, _):
            return render_output(path, raw, texts_a, texts_b, folder.labels)
        preds = [{"text": texts_a[i], **({"text_b": texts_b[i]} if texts_b is not None else {}), **p}
                 for i, p in enumerate(raw)]
    for line in lines:
        log(line)
    if output:
        atomic_text(output, render(output, preds))
    return preds
