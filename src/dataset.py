"""Schema-driven readers for TFRecord / MindRecord files made by tools/prepare_data.py (or Google BERT).

- `create_train_dataset`: MindSpore's native reader, columns chosen by name, int columns cast to int32,
  globally shuffled with a seed, sharded per rank, `drop_remainder=True`.
- `read_all`: every row in file order as numpy arrays (eval sets, teacher-output caches).
- `load_split` / `load_eval_sets`: a split of a task's records as validated numpy arrays (labels checked against
  the task, lengths against data.max_seq_length); the eval splits of a run (MNLI: matched and mismatched).

Before handing files to MindSpore, TFRecords are checked here: MindSpore's reader does not verify record
checksums (a flipped byte silently changes a token id, a truncated file silently loses its tail) and reads an
int64 feature declared float32 as garbage. `scan_tfrecord` verifies the framing and CRCs of every record and
the first record's features against the schema, so bad input becomes one `UserError` naming the file.
MindSpore is imported inside functions only.
"""
import json
import os
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from src.errors import UserError
from src.fileio import read_errors, require_file
from src.tasks import IGNORE_LABEL

DATASET_TYPES = ("tfrecord", "mindrecord")
SCHEMA_TYPES = ("int64", "int32", "float32")
SEQ_COLUMNS = ("input_ids", "input_mask", "segment_ids")   # length must equal the configured seq_length
LABEL_COLUMN = "label_ids"


# ---------------------------------------------------------------------------------------------------------
# schema and file lists
# ---------------------------------------------------------------------------------------------------------
def read_schema(path: str) -> dict:
    """Load and validate a MindSpore TFRecord schema JSON:
    {"datasetType": "TF", "numRows": N, "columns": {name: {"type": "int64"|"float32", "rank": 1, "shape": [L]}}}.
    `datasetType` and `numRows` are optional. Returns the parsed dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"schema file {path}: not found (expected <split>_schema.json written by "
                        f"tools/prepare_data.py)")
    with read_errors(f"schema file {path}"), open(path, "r", encoding="utf-8") as f:
        schema = json.load(f)
    if not isinstance(schema, dict):
        raise UserError(f"schema file {path}: expected a JSON object with a 'columns' field")
    if "numRows" in schema:
        n = schema["numRows"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"schema file {path}: field numRows is {n!r}, expected an integer >= 0")
    if "datasetType" in schema and schema["datasetType"] not in ("TF", "MindRecord"):
        raise UserError(f"schema file {path}: field datasetType is {schema['datasetType']!r}, expected 'TF'")
    columns = schema.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise UserError(f"schema file {path}: field columns must be a non-empty object "
                        f"{{name: {{\"type\": \"int64\", \"rank\": 1, \"shape\": [L]}}}}")
    for name, col in columns.items():
        where = f"schema file {path}: column {name}"
        if not isinstance(col, dict):
            raise UserError(f"{where}: expected an object with type and shape")
        if col.get("type") not in SCHEMA_TYPES:
            raise UserError(f"{where}: type is {col.get('type')!r}, expected one of {list(SCHEMA_TYPES)}")
        shape = col.get("shape")
        if (not isinstance(shape, list) or len(shape) != 1 or isinstance(shape[0], bool)
                or not isinstance(shape[0], int) or shape[0] < 1):
            raise UserError(f"{where}: shape is {shape!r}, expected [length] with length >= 1")
        if "rank" in col and col["rank"] != len(shape):
            raise UserError(f"{where}: rank is {col['rank']!r} but shape {shape} has rank {len(shape)}")
    return schema


def schema_columns(schema: dict) -> Dict[str, Tuple[str, int]]:
    """{name: (type, length)} of a schema returned by `read_schema`."""
    return {name: (col["type"], col["shape"][0]) for name, col in schema["columns"].items()}


def list_record_files(path_or_dir: str, dataset_type: str = "tfrecord") -> List[str]:
    """Record files from a file, a comma-separated list of files, or a directory (files whose name contains
    "record", without MindRecord's ".db" index files, hidden/temporary files or the other format; sorted)."""
    _check_dataset_type(dataset_type)
    text = os.fspath(path_or_dir)
    parts = [p.strip() for p in str(text).split(",") if p.strip()] if "," in str(text) else [text]
    if not parts:
        raise UserError(f"data path {text!r}: empty")
    if len(parts) == 1 and os.path.isdir(parts[0]):
        d = parts[0]
        names = sorted(n for n in os.listdir(d) if _is_record_name(n, dataset_type)
                       and os.path.isfile(os.path.join(d, n)))
        if not names:
            raise UserError(f"data directory {d}: no {dataset_type} files (expected names containing "
                            f"'{'mindrecord' if dataset_type == 'mindrecord' else 'record'}')")
        return [os.path.join(d, n) for n in names]
    for p in parts:
        if not os.path.isfile(p):
            raise UserError(f"record file {p}: not found")
    return parts


def _is_record_name(name: str, dataset_type: str) -> bool:
    if name.startswith(".") or name.endswith((".db", ".tmp", ".json")) or "record" not in name:
        return False
    return ("mindrecord" in name) == (dataset_type == "mindrecord")


def _check_dataset_type(dataset_type: str) -> None:
    if dataset_type not in DATASET_TYPES:
        raise UserError(f"dataset_type {dataset_type!r}: expected one of {list(DATASET_TYPES)}")


def _check_columns(schema: dict, schema_file: str, columns: Sequence[str],
                   seq_length: Optional[int] = None) -> None:
    if not columns:
        raise UserError(f"schema {schema_file}: no columns requested")
    specs = schema_columns(schema)
    for c in columns:
        if c not in specs:
            raise UserError(f"schema {schema_file}: no column {c} (it has {', '.join(specs)})")
        if seq_length is not None and c in SEQ_COLUMNS and specs[c][1] != seq_length:
            raise UserError(f"schema {schema_file}: column {c} has length {specs[c][1]}, "
                            f"config expects {seq_length}")


# ---------------------------------------------------------------------------------------------------------
# TFRecord integrity (MindSpore does not check CRCs)
# ---------------------------------------------------------------------------------------------------------
def _masked_crc(data: bytes) -> int:
    import crc32c
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def scan_tfrecord(path: str) -> Tuple[int, Optional[bytes]]:
    """Verify the framing and both CRCs of every record of a TFRecord file.
    Returns (number of records, first record's payload or None when empty)."""
    n, first = 0, None
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                break
            if len(header) < 12:
                raise UserError(f"{path}: truncated TFRecord file (record {n} at byte {offset} is cut short); "
                                f"regenerate it")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if _masked_crc(length_bytes) != length_crc:
                raise UserError(f"{path}: corrupted TFRecord file (length checksum mismatch in record {n} at "
                                f"byte {offset}); not a TFRecord file or damaged, regenerate it")
            length = struct.unpack("<Q", length_bytes)[0]
            if offset + 16 + length > size:
                raise UserError(f"{path}: truncated TFRecord file (record {n} at byte {offset} needs "
                                f"{length} bytes); regenerate it")
            payload = f.read(length)
            data_crc = struct.unpack("<I", f.read(4))[0]
            if _masked_crc(payload) != data_crc:
                raise UserError(f"{path}: corrupted TFRecord file (data checksum mismatch in record {n} at "
                                f"byte {offset}); regenerate it")
            if first is None:
                first = payload
            n += 1
    return n, first


def _check_first_example(path: str, payload: bytes, schema: dict, schema_file: str,
                         columns: Sequence[str]) -> None:
    """The first tf.train.Example must hold each requested column with the schema's kind and length."""
    from tfrecord import example_pb2

    example = example_pb2.Example()
    try:
        example.ParseFromString(payload)
    except Exception:  # protobuf raises DecodeError (module path differs between implementations)
        raise UserError(f"{path}: first record is not a tf.train.Example") from None
    feats = example.features.feature
    specs = schema_columns(schema)
    for c in columns:
        if c not in feats:
            raise UserError(f"{path}: records have no feature {c} required by schema {schema_file} "
                            f"(features: {', '.join(sorted(feats))})")
        kind = feats[c].WhichOneof("kind")
        want = "float_list" if specs[c][0] == "float32" else "int64_list"
        if kind != want:
            raise UserError(f"schema {schema_file}: column {c} is {specs[c][0]} but records in {path} store "
                            f"{kind}")
        got = len(getattr(feats[c], kind).value)
        if got != specs[c][1]:
            raise UserError(f"schema {schema_file}: column {c} has length {specs[c][1]}, records in {path} "
                            f"have {got}")


def _verify_tfrecords(files: Sequence[str], schema: dict, schema_file: str, columns: Sequence[str]) -> int:
    """CRC-check every file, check the first record against the schema and numRows against the total."""
    total = 0
    for path in files:
        n, first = scan_tfrecord(path)
        if n == 0:
            raise UserError(f"{path}: no records (empty file)")
        _check_first_example(path, first, schema, schema_file, columns)
        total += n
    if "numRows" in schema and schema["numRows"] != total:
        raise UserError(f"schema {schema_file}: numRows is {schema['numRows']} but "
                        f"{', '.join(files)} hold {total} records; regenerate the schema")
    return total


def _ms_schema(schema: dict, columns: Sequence[str]):
    """A MindSpore Schema with just the requested columns (no numRows: never silently truncate)."""
    import mindspore as ms
    import mindspore.dataset as ds

    s = ds.Schema()
    specs = schema_columns(schema)
    for c in columns:
        dtype, length = specs[c]
        s.add_column(c, de_type={"int64": ms.int64, "int32": ms.int32}.get(dtype, ms.float32), shape=[length])
    return s


def _pipeline_error(e: Exception) -> str:
    """The one informative line of a MindSpore dataset-pipeline exception."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("[ERROR]"):
            return ln[len("[ERROR]"):].strip()
    return lines[0] if lines else type(e).__name__


# ---------------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------------
def create_train_dataset(data: str, schema_file: Optional[str], columns: Sequence[str], batch_size: int,
                         seq_length: int, dataset_type: str = "tfrecord", shuffle: bool = True, seed: int = 0,
                         rank_id: int = 0, rank_size: int = 1, label_dtype: Optional[str] = None,
                         num_parallel_workers: Optional[int] = None, verify: bool = True):
    """Training pipeline with MindSpore's native reader: columns by name, int columns -> int32 (the label
    column `label_ids` -> float32 with label_dtype="float32"), global shuffle seeded by `seed` (this sets
    `mindspore.dataset.config.set_seed`), `rank_size` shards of equal size, batches with drop_remainder=True.

    `schema_file` is required for TFRecord and optional (but checked when given) for MindRecord.
    `verify` CRC-checks TFRecord files first (one sequential read)."""
    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore.dataset.transforms import TypeCast

    _check_dataset_type(dataset_type)
    columns = list(columns)
    if label_dtype not in (None, "int32", "float32"):
        raise UserError(f"label_dtype {label_dtype!r}: expected None, 'int32' or 'float32'")
    if not (isinstance(rank_size, int) and rank_size >= 1 and isinstance(rank_id, int) and 0 <= rank_id < rank_size):
        raise UserError(f"rank_id {rank_id} / rank_size {rank_size}: expected 0 <= rank_id < rank_size")
    if batch_size < 1:
        raise UserError(f"batch_size {batch_size}: expected >= 1")
    files = list_record_files(data, dataset_type)
    schema = None
    if schema_file is not None:
        schema = read_schema(schema_file)
        _check_columns(schema, schema_file, columns, seq_length)
    elif dataset_type == "tfrecord":
        raise UserError(f"{files[0]}: a schema file is needed to read TFRecord files")

    total = None
    if dataset_type == "tfrecord" and verify:
        total = _verify_tfrecords(files, schema, schema_file, columns)
    elif schema is not None:
        total = schema.get("numRows")
    if total is not None and (total + rank_size - 1) // rank_size < batch_size:
        raise UserError(f"{', '.join(files)}: {total} rows give {(total + rank_size - 1) // rank_size} per rank "
                        f"(rank_size {rank_size}), fewer than batch_size {batch_size}: every batch would be dropped")

    shards = dict(num_shards=rank_size, shard_id=rank_id) if rank_size > 1 else {}
    if shuffle:
        ds.config.set_seed(int(seed))
    try:
        if dataset_type == "tfrecord":
            dataset = ds.TFRecordDataset(files, _ms_schema(schema, columns), columns_list=columns,
                                         shuffle=ds.Shuffle.GLOBAL if shuffle else False,
                                         num_parallel_workers=num_parallel_workers,
                                         shard_equal_rows=True, **shards)
        else:
            dataset = ds.MindDataset(files, columns_list=columns, shuffle=ds.Shuffle.GLOBAL if shuffle else False,
                                     num_parallel_workers=num_parallel_workers, **shards)
        specs = schema_columns(schema) if schema is not None else {}
        for c in columns:
            if c == LABEL_COLUMN and label_dtype == "float32":
                target = ms.float32
            elif specs.get(c, ("int64",))[0] == "float32":
                continue
            else:
                target = ms.int32
            dataset = dataset.map(operations=TypeCast(target), input_columns=c)
        dataset = dataset.batch(batch_size, drop_remainder=True)
    except (RuntimeError, ValueError) as e:  # MindSpore reports bad files as either
        raise UserError(f"{', '.join(files)}: cannot build the {dataset_type} pipeline: {_pipeline_error(e)}") from None
    return dataset


def read_all(data: str, schema_file: Optional[str], columns: Sequence[str],
             dataset_type: str = "tfrecord") -> Dict[str, np.ndarray]:
    """Every row in file order (no shuffle) as {column: array [rows, length]} with the stored dtypes
    (int64 / float32). Corrupted files, schema/record mismatches and empty files raise UserError."""
    import mindspore.dataset as ds

    _check_dataset_type(dataset_type)
    columns = list(columns)
    files = list_record_files(data, dataset_type)
    where = ", ".join(files)
    schema = None
    if schema_file is not None:
        schema = read_schema(schema_file)
        _check_columns(schema, schema_file, columns)
    elif dataset_type == "tfrecord":
        raise UserError(f"{where}: a schema file is needed to read TFRecord files")
    if dataset_type == "tfrecord":
        _verify_tfrecords(files, schema, schema_file, columns)

    rows: Dict[str, list] = {c: [] for c in columns}
    try:
        if dataset_type == "tfrecord":
            dataset = ds.TFRecordDataset(files, _ms_schema(schema, columns), columns_list=columns,
                                         shuffle=False, num_parallel_workers=1)
        else:
            dataset = ds.MindDataset(files, columns_list=columns, shuffle=False, num_parallel_workers=1)
        for row in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
            for c, v in zip(columns, row):
                rows[c].append(v)
    except (RuntimeError, ValueError) as e:  # MindSpore reports bad files as either
        raise UserError(f"{where}: cannot read {dataset_type} records"
                        f"{f' with schema {schema_file}' if schema_file else ''}: {_pipeline_error(e)}") from None
    if not rows[columns[0]]:
        raise UserError(f"{where}: no rows")
    out = {c: np.stack(v) for c, v in rows.items()}
    if schema is not None:
        specs = schema_columns(schema)
        for c, arr in out.items():
            if arr.ndim != 2 or arr.shape[1] != specs[c][1]:
                raise UserError(f"schema {schema_file}: column {c} has length {specs[c][1]}, records in {where} "
                                f"have shape {list(arr.shape[1:])}")
        if dataset_type == "mindrecord" and "numRows" in schema and schema["numRows"] != len(out[columns[0]]):
            raise UserError(f"schema {schema_file}: numRows is {schema['numRows']} but {where} hold "
                            f"{len(out[columns[0]])} rows; regenerate the schema")
    return out


# ---------------------------------------------------------------------------------------------------------
# label checks and the splits of a run
# ---------------------------------------------------------------------------------------------------------


def check_labels(labels: np.ndarray, task, source: str = "labels") -> None:
    """Classification label ids must be integers in [0, task.num_labels); regression labels finite.
    `source` (the record file) is named in the error."""
    arr = np.asarray(labels).reshape(-1)
    low = IGNORE_LABEL if task.token_level else 0     # a token task's positions without a label hold -1
    if task.regression:
        bad = np.flatnonzero(~np.isfinite(arr.astype(np.float64)))
        if bad.size:
            raise UserError(f"{source}: row {bad[0]}: label {arr[bad[0]]} is not a finite number "
                            f"(task {task.name} is regression)")
        return
    if not np.issubdtype(arr.dtype, np.integer):
        frac = np.flatnonzero(arr != np.round(arr))
        if frac.size:
            raise UserError(f"{source}: row {frac[0]}: label {arr[frac[0]]} is not an integer class id "
                            f"(task {task.name} has {task.num_labels} labels)")
    bad = np.flatnonzero((arr < low) | (arr >= task.num_labels))
    if bad.size:
        where = (f"row {bad[0] // labels.shape[1]} position {bad[0] % labels.shape[1]}" if task.token_level
                 else f"row {bad[0]}")
        raise UserError(f"{source}: {where}: label id {arr[bad[0]]} is outside [{low}, {task.num_labels}) for "
                        f"task {task.name} (labels {', '.join(task.labels)})")


def check_span_labels(labels: np.ndarray, seq_length: int, source: str = "labels") -> None:
    """Span labels [N, 2] are (start, end) row positions with 0 <= start <= end < seq_length ((0, 0): no answer
    in the row); `source` (the record file) is named in the error."""
    arr = np.asarray(labels)
    bad = np.flatnonzero((arr[:, 0] < 0) | (arr[:, 1] < arr[:, 0]) | (arr[:, 1] >= seq_length))
    if bad.size:
        raise UserError(f"{source}: row {bad[0]}: answer start / end {arr[bad[0]].tolist()}, expected positions "
                        f"0 <= start <= end < {seq_length} (max_seq_length)")


RECORD_EXT = {"tfrecord": ".tf_record", "mindrecord": ".mindrecord"}


def split_files(data_dir: str, split: str, dataset_type: str):
    if dataset_type not in RECORD_EXT:
        raise UserError(f"data.dataset_type '{dataset_type}': expected one of {list(RECORD_EXT)}")
    return (os.path.join(data_dir, split + RECORD_EXT[dataset_type]),
            os.path.join(data_dir, f"{split}_schema.json"))


def load_split(data_dir: str, split: str, dataset_type: str, seq_length: int, task=None,
               columns: Sequence[str] = ("input_ids", "input_mask", "segment_ids", "label_ids"),
               ) -> Dict[str, np.ndarray]:
    """All rows of one split as numpy arrays (file order), validated against the expected sequence length and
    the task's label set. A token task's rows also get `sentence_id`, a span task's `feature_id`."""
    records, schema = split_files(data_dir, split, dataset_type)
    require_file(records, f"data split '{split}'")
    columns = list(columns)
    if task is not None and task.token_level and "label_ids" in columns:
        columns.append("sentence_id")           # ties the windows of a long sentence together (src/ner.py)
    if task is not None and task.kind == "span" and "feature_id" not in columns:
        columns.append("feature_id")            # ties a row to its entry in <split>_features.json (src/squad.py)
    arrays = read_all(records, schema, columns, dataset_type)
    got = arrays["input_ids"].shape[1]
    if got != seq_length:
        raise UserError(f"{records}: input_ids has length {got}, config data.max_seq_length is {seq_length}")
    if task is not None and "label_ids" in arrays:
        labels = arrays["label_ids"]
        width = seq_length if task.token_level else 2 if task.kind == "span" else 1
        what = {"token": "one tag per position", "span": "answer start and end"}.get(task.kind, "one label")
        if labels.ndim != 2 or labels.shape[1] != width:
            raise UserError(f"{records}: label_ids has shape {list(labels.shape[1:])} per row, task {task.name} "
                            f"expects [{width}] ({what}): the records were written for another kind of task")
    if task is not None and "label_ids" in arrays:
        if task.regression:
            arrays["label_ids"] = arrays["label_ids"].astype(np.float32)
        elif task.kind == "span":
            check_span_labels(arrays["label_ids"], seq_length, source=records)
            arrays["label_ids"] = arrays["label_ids"].astype(np.int32)
        else:
            check_labels(arrays["label_ids"], task, source=records)
            arrays["label_ids"] = arrays["label_ids"].astype(np.int32)
    for k in ("input_ids", "input_mask", "segment_ids"):
        if k in arrays:
            arrays[k] = arrays[k].astype(np.int32)
    return arrays


def padded_batches(arrays: Dict[str, np.ndarray], names: Sequence[str], batch_size: int):
    """(batch {name: rows}, real row count) over the rows of `arrays` in order, every batch exactly `batch_size`
    rows (an exported graph's fixed shape): the last one padded with zero rows, each with its first token visible
    (input_mask[:, 0] = 1) so it stays well defined; the caller slices the padded rows off. Shared by the
    training-time evaluation and the predictions of an exported folder."""
    n = len(arrays[names[0]])
    for s in range(0, n, batch_size):
        batch = {k: arrays[k][s:s + batch_size] for k in names}
        real = len(batch[names[0]])
        if real < batch_size:
            batch = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
                     for k, v in batch.items()}
            batch["input_mask"][real:, 0] = 1
        yield batch, real


def load_eval_split(data_dir: str, split: str, dataset_type: str, seq_length: int, task) -> Dict[str, np.ndarray]:
    """load_split of an evaluated split: a span task's also holds, under "features", the split's decoding sidecar
    (src/squad.py load_features: contexts, answers, piece offsets), which its metrics need."""
    arrays = load_split(data_dir, split, dataset_type, seq_length, task)
    if task.kind == "span":
        from src.squad import load_features
        arrays["features"] = load_features(data_dir, split)
    return arrays


def load_eval_sets(cfg, task) -> Dict[str, Dict[str, np.ndarray]]:
    """The full eval split(s) of the run: the task's dev splits (MNLI: matched and mismatched) or cfg.eval.split."""
    split = cfg.eval.split
    splits = task.eval_splits if split == "dev" else (split,)
    return {s: load_eval_split(cfg.data.dir, s, cfg.data.dataset_type, cfg.data.max_seq_length, task)
            for s in splits}
