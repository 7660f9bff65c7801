"""Predictions of an exported folder (src/export_folder.py) on raw text: run_predict.py.

Text becomes model inputs exactly as tools/prepare_data.py makes records: the folder's own vocab.txt and
do_lower_case, `BertTokenizer.encode_batch` at the folder's max_seq_length (zero-padded to the exported seq length
when that is longer). Rows run in the exported fixed batch; the last batch is padded with zero rows (one visible
token each, as src/evaluation.py pads) that are sliced off again, so every prediction equals the evaluation of the
same file on the same rows. Output per input: the label and the softmax probabilities (regression: the value).

Inputs: texts given on the command line, a text file (one text per line; `text_a<TAB>text_b` for pairs) or a
CSV/TSV file with a header (`--text_column`, `--text_b_column`; .tsv/.tab are tab-separated without quoting, as
tools/prepare_data.py reads them). Every input error is a UserError raised before anything runs or is written.
"""
import csv
import io
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from src.dataset import padded_batches
from src.errors import UserError
from src.export_folder import ExportFolder, read_export_folder
from src.fileio import atomic_text
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
        return a, b, "command line"
    if text_file:
        if not os.path.isfile(text_file):
            raise UserError(f"--text_file '{text_file}': not found")
        try:
            with open(text_file, encoding="utf-8-sig") as f:
                raw = f.read().split("\n")
        except UnicodeDecodeError as e:
            raise UserError(f"--text_file '{text_file}': not UTF-8 text ({e.reason} at byte {e.start})") from None
        lines = [(f"{text_file} line {i + 1}", t.rstrip("\r")) for i, t in enumerate(raw) if t.strip()]
        if not lines:
            raise UserError(f"--text_file '{text_file}': no text (empty input)")
        a, b = _split_pairs(lines)
        return a, b, text_file
    return _read_csv(csv_file, text_column, text_b_column)


def _read_csv(path: str, text_column: str, text_b_column: Optional[str]):
    if not os.path.isfile(path):
        raise UserError(f"--csv '{path}': not found")
    delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    a, b = [], []
    try:
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
                if "--text_b_column" in index:
                    b.append(row[index["--text_b_column"]])
    except UnicodeDecodeError as e:
        raise UserError(f"--csv '{path}': not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise UserError(f"--csv '{path}': cannot parse it ({e})") from None
    if not a:
        raise UserError(f"--csv '{path}': no rows (empty input)")
    return a, (b if text_b_column else None), path


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


def predict_folder(model_dir: str, texts: Sequence[str] = (), text_file: Optional[str] = None,
                   csv_file: Optional[str] = None, text_column: str = "text", text_b_column: Optional[str] = None,
                   output: Optional[str] = None, threads: int = 0, log=print) -> List[dict]:
    """run_predict.py: read the folder and the input, check both, predict, print one line per input and write
    `output` (.jsonl / .csv) atomically. Returns the prediction dicts (with text / text_b)."""
    from src.export import exported_shape, runner_for
    check_output(output)
    folder = read_export_folder(model_dir)
    texts_a, texts_b, source = read_texts(texts, text_file, csv_file, text_column, text_b_column)
    check_pairing(folder, texts_b, source)
    arrays = encode(folder, texts_a, texts_b)
    runner = runner_for(folder.model_file, threads)
    exported_shape(folder.model_file, runner, folder.batch_size, folder.seq_length)   # the file agrees with labels
    preds = predictions(folder, run_batches(runner, arrays, folder.batch_size))
    for i, p in enumerate(preds):
        log(format_line(p, texts_a[i] if texts_b is None else f"{texts_a[i]} | {texts_b[i]}"))
    if output:
        atomic_text(output, render_output(output, preds, texts_a, texts_b, folder.labels))
    return [{"text": texts_a[i], **({"text_b": texts_b[i]} if texts_b is not None else {}), **p}
            for i, p in enumerate(preds)]
