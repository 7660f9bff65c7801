"""Record writers: TFRecord (tf.train.Example, no TensorFlow needed) and MindRecord, plus the schema JSON.

Every writer is atomic: output goes to a temporary name in the destination directory and is moved into place
with `os.replace` only after the last row was written, so a failed run (bad row, full disk, Ctrl-C) never
leaves a partial file behind. MindRecord stores its own file name inside the data and `.db` files, so both are
written under their final names inside a temporary sub-directory and then moved out together.

`columns` describes every record column: {name: (dtype, length)} with dtype "int64", "int32" or "float32" and a
fixed length (e.g. input_ids int64[128], label_ids int64[1] or float32[1] for regression). TFRecord has one integer
kind (int64_list, varint-coded): an int32 column is stored there and declared int32 in the schema, which MindSpore's
TFRecordDataset returns as int32; MindRecord stores int32 itself.
"""
import json
import os
import shutil
import struct
import tempfile
import uuid
from typing import Dict, Iterable, Mapping, Sequence, Tuple, Union

import numpy as np

DTYPES = {"int64": np.int64, "int32": np.int32, "float32": np.float32}
FORMATS = ("tfrecord", "mindrecord")
SCHEMA_DATASET_TYPE = {"tfrecord": "TF", "mindrecord": "MindRecord"}
# MindRecord's default header/page sizes make even a 10-row file ~50 MB. 1 MB pages hold rows of thousands of
# tokens; a 64 KB header held 200k rows of length 128 in a test, 256 KB leaves room to spare.
MINDRECORD_HEADER_SIZE = 1 << 18
MINDRECORD_PAGE_SIZE = 1 << 20

Columns = Mapping[str, Tuple[str, int]]
Row = Mapping[str, Union[Sequence[int], Sequence[float], np.ndarray]]


def check_columns(columns: Columns) -> None:
    """Column specs must be (\"int64\"|\"int32\"|\"float32\", positive length)."""
    if not columns:
        raise ValueError("columns: at least one column is needed")
    for name, spec in columns.items():
        if (not isinstance(spec, (tuple, list)) or len(spec) != 2 or spec[0] not in DTYPES
                or not isinstance(spec[1], (int, np.integer)) or spec[1] < 1):
            raise ValueError(f"column {name}: spec {spec!r}, expected (dtype in {list(DTYPES)}, length >= 1)")


def _row_arrays(row: Row, columns: Columns, index: int) -> Dict[str, np.ndarray]:
    """Validate one row against the column specs; returns its values as 1-D numpy arrays."""
    out = {}
    for name, (dtype, length) in columns.items():
        if name not in row:
            raise ValueError(f"row {index}: column {name} missing (row has {sorted(row)})")
        raw = np.asarray(row[name])
        if dtype != "float32" and raw.size and not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"row {index}: column {name} must hold integers, got dtype {raw.dtype}")
        value = raw.astype(DTYPES[dtype]).reshape(-1)
        if value.shape[0] != length:
            raise ValueError(f"row {index}: column {name} has {value.shape[0]} values, expected {length}")
        out[name] = value
    return out


def write_schema(path: str, columns: Columns, num_rows: int, fmt: str = "tfrecord") -> str:
    """Write the model-zoo MindSpore schema JSON atomically:
    {"datasetType": "TF", "numRows": N, "columns": {"input_ids": {"type": "int64", "rank": 1, "shape": [L]}}}.
    (datasetType is "MindRecord" for fmt="mindrecord"; the column block is the same.)"""
    check_columns(columns)
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {FORMATS}")
    schema = {
        "datasetType": SCHEMA_DATASET_TYPE[fmt],
        "numRows": int(num_rows),
        "columns": {name: {"type": dtype, "rank": 1, "shape": [int(length)]}
                    for name, (dtype, length) in columns.items()},
    }
    path = os.fspath(path)
    tmp = _temp_name(path)
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(schema, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def write_records(path: str, rows: Iterable[Row], columns: Columns, fmt: str = "tfrecord",
                  mindrecord_batch: int = 1000) -> int:
    """Write `rows` (dicts of fixed-length int/float lists) to one record file; returns the number of rows.

    Any exception (including one raised by the `rows` generator itself) removes the temporary output and
    propagates; the destination is only replaced once every row is written."""
    check_columns(columns)
    path = os.fspath(path)
    if fmt == "tfrecord":
        return _write_tfrecord(path, rows, columns)
    if fmt == "mindrecord":
        return _write_mindrecord(path, rows, columns, mindrecord_batch)
    raise ValueError(f"format {fmt!r}: expected one of {FORMATS}")


def _write_tfrecord(path: str, rows: Iterable[Row], columns: Columns) -> int:
    """tf.train.Example records, serialized deterministically (features in name order: the bytes of a file are a
    function of its rows, not of the process's hash seed), framed as TFRecord (length, masked CRC32C of the length,
    payload, masked CRC32C of the payload)."""
    from tfrecord import example_pb2
    from tfrecord.writer import TFRecordWriter

    floats = {name for name, (dtype, _) in columns.items() if dtype == "float32"}
    tmp = _temp_name(path)
    n = 0
    try:
        with open(tmp, "xb") as f:
            for n, row in enumerate(rows, start=1):
                values = _row_arrays(row, columns, n - 1)
                example = example_pb2.Example()
                feats = example.features.feature
                for name in columns:
                    kind = feats[name].float_list if name in floats else feats[name].int64_list
                    kind.value.extend(values[name].tolist())
                record = example.SerializeToString(deterministic=True)
                length = struct.pack("<Q", len(record))
                f.write(length + TFRecordWriter.masked_crc(length) + record + TFRecordWriter.masked_crc(record))
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return n


def _write_mindrecord(path: str, rows: Iterable[Row], columns: Columns, batch: int) -> int:
    from mindspore.mindrecord import FileWriter

    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    stage = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    n = 0
    db_moved = False
    try:
        staged = os.path.join(stage, name)
        writer = FileWriter(staged, shard_num=1, overwrite=True)
        writer.set_header_size(MINDRECORD_HEADER_SIZE)
        writer.set_page_size(MINDRECORD_PAGE_SIZE)
        writer.add_schema({c: {"type": dtype, "shape": [int(length)]} for c, (dtype, length) in columns.items()},
                          "bert_inputs")
        buf = []
        for n, row in enumerate(rows, start=1):
            buf.append(_row_arrays(row, columns, n - 1))
            if len(buf) >= batch:
                writer.write_raw_data(buf)
                buf = []
        if buf:
            writer.write_raw_data(buf)
        writer.commit()
        # the data file names its .db: move the .db first, so a present data file always has its index
        os.replace(staged + ".db", path + ".db")
        db_moved = True
        os.replace(staged, path)
    except BaseException:
        if db_moved:
            _remove(path + ".db")
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return n


def _temp_name(path: str) -> str:
    """A unique hidden name next to `path` (same filesystem, so os.replace is atomic)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
