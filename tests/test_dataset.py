"""Record writers and readers: TensorFlow-written fixtures, round trips, training pipeline, eval batches, errors."""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.dataset import (check_labels, create_train_dataset,  # noqa: E402
                         list_record_files, read_all, read_schema)
from src.errors import UserError  # noqa: E402
from src.records import write_records, write_schema  # noqa: E402
from src.tasks import get_task  # noqa: E402

TF_DIR = ROOT / "tests" / "fixtures" / "tf_written"
EXPECTED = json.loads((TF_DIR / "expected_values.json").read_text())
L = EXPECTED["seq_length"]                                                  # 32
CLS_COLUMNS = {"input_ids": ("int64", L), "input_mask": ("int64", L), "segment_ids": ("int64", L),
               "label_ids": ("int64", 1), "is_real_example": ("int64", 1)}
PRE_COLUMNS = {"input_ids": ("int64", L), "input_mask": ("int64", L), "segment_ids": ("int64", L),
               "masked_lm_positions": ("int64", 5), "masked_lm_ids": ("int64", 5),
               "masked_lm_weights": ("float32", 5), "next_sentence_labels": ("int64", 1)}
TRAIN_COLUMNS = ["input_ids", "input_mask", "segment_ids", "label_ids"]


def expected(kind, column):
    return [row[column] for row in EXPECTED[kind]]


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    d = tmp_path_factory.mktemp("schemas")
    write_schema(d / "classification_schema.json", CLS_COLUMNS, len(EXPECTED["classification"]))
    write_schema(d / "pretraining_schema.json", PRE_COLUMNS, len(EXPECTED["pretraining"]))
    return d


def numbered_rows(n, seq=16):
    """Rows whose input_ids[0] is the row number (to follow order), label = row % 3, a float column."""
    for i in range(n):
        yield {"input_ids": [i] + [7] * (seq - 1), "input_mask": [1] * seq, "segment_ids": [0] * seq,
               "label_ids": [i % 3], "score": [i * 0.5]}


NUM_COLUMNS = {"input_ids": ("int64", 16), "input_mask": ("int64", 16), "segment_ids": ("int64", 16),
               "label_ids": ("int64", 1), "score": ("float32", 1)}


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """64 numbered rows as TFRecord + MindRecord, each with its schema."""
    d = tmp_path_factory.mktemp("numbered")
    for fmt, ext in (("tfrecord", ".tf_record"), ("mindrecord", ".mindrecord")):
        n = write_records(d / f"train{ext}", numbered_rows(64), NUM_COLUMNS, fmt=fmt)
        write_schema(d / f"train_{fmt}_schema.json", NUM_COLUMNS, n, fmt=fmt)
    return d


def first_ids(dataset):
    return [int(b["input_ids"][r, 0]) for b in dataset.create_dict_iterator(output_numpy=True, num_epochs=1)
            for r in range(b["input_ids"].shape[0])]


# ---- fixtures written by real TensorFlow ----------------------------------------------------------------
def test_tf_written_classification_exact(schemas):
    got = read_all(str(TF_DIR / "classification.tf_record"), str(schemas / "classification_schema.json"),
                   list(CLS_COLUMNS))
    for c in CLS_COLUMNS:
        assert got[c].dtype == np.int64
        assert got[c].tolist() == expected("classification", c), c


def test_tf_written_pretraining_exact(schemas):
    got = read_all(str(TF_DIR / "pretraining.tf_record"), str(schemas / "pretraining_schema.json"),
                   list(PRE_COLUMNS))
    for c in PRE_COLUMNS:
        assert got[c].tolist() == expected("pretraining", c), c
    assert got["masked_lm_weights"].dtype == np.float32
    assert got["masked_lm_weights"][0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("fmt,ext", [("tfrecord", ".tf_record"), ("mindrecord", ".mindrecord")])
def test_our_records_round_trip(tmp_path, fmt, ext):
    rows = [{c: r[c] for c in PRE_COLUMNS} for r in EXPECTED["pretraining"]]
    path = tmp_path / f"pre{ext}"
    assert write_records(path, rows, PRE_COLUMNS, fmt=fmt) == 2
    write_schema(tmp_path / "pre_schema.json", PRE_COLUMNS, 2, fmt=fmt)
    got = read_all(str(path), str(tmp_path / "pre_schema.json"), list(PRE_COLUMNS), fmt)
    for c, (dtype, _) in PRE_COLUMNS.items():
        assert got[c].dtype == np.dtype(dtype)
        assert got[c].tolist() == expected("pretraining", c), c
    # only the record file (and MindRecord's index) + schema remain: no temporaries
    want = {path.name, "pre_schema.json"} | ({path.name + ".db"} if fmt == "mindrecord" else set())
    assert set(os.listdir(tmp_path)) == want


def test_schema_json_layout(tmp_path):
    write_schema(tmp_path / "s.json", {"input_ids": ("int64", 128), "label_ids": ("float32", 1)}, 7)
    assert json.loads((tmp_path / "s.json").read_text()) == {
        "datasetType": "TF", "numRows": 7,
        "columns": {"input_ids": {"type": "int64", "rank": 1, "shape": [128]},
                    "label_ids": {"type": "float32", "rank": 1, "shape": [1]}}}


@pytest.mark.parametrize("fmt", ["tfrecord", "mindrecord"])
def test_failed_write_leaves_nothing(tmp_path, fmt):
    def rows():
        yield from numbered_rows(3)
        yield {"input_ids": [1, 2, 3]}                     # wrong row: missing/short columns

    with pytest.raises(ValueError, match="row 3"):
        write_records(tmp_path / "out.rec", rows(), NUM_COLUMNS, fmt=fmt)
    assert os.listdir(tmp_path) == []


# ---- training pipeline -----------------------------------------------------------------------------------
def test_train_dataset_shuffled_seeded_int32(numbered):
    def build(seed):
        return create_train_dataset(str(numbered / "train.tf_record"), str(numbered / "train_tfrecord_schema.json"),
                                    TRAIN_COLUMNS, batch_size=8, seq_length=16, seed=seed)
    order = first_ids(build(0))
    assert sorted(order) == list(range(64))
    assert order != list(range(64))                        # shuffled, not file order
    assert first_ids(build(0)) == order                    # same seed, same order
    assert first_ids(build(5)) != order                    # another seed, another order
    batch = next(build(0).create_dict_iterator(output_numpy=True, num_epochs=1))
    assert list(batch) == TRAIN_COLUMNS
    assert all(batch[c].dtype == np.int32 for c in TRAIN_COLUMNS)
    assert batch["input_ids"].shape == (8, 16) and batch["label_ids"].shape == (8, 1)
    # rows stay intact through the shuffle: label follows its row
    assert np.array_equal(batch["label_ids"][:, 0], batch["input_ids"][:, 0] % 3)


def test_train_dataset_float_label_and_drop_remainder(tmp_path):
    cols = {"input_ids": ("int64", 16), "input_mask": ("int64", 16), "segment_ids": ("int64", 16),
            "label_ids": ("float32", 1)}
    rows = ({**r, "label_ids": [r["score"][0]]} for r in numbered_rows(30))
    write_records(tmp_path / "train.tf_record", rows, cols)
    write_schema(tmp_path / "train_schema.json", cols, 30)
    dataset = create_train_dataset(str(tmp_path / "train.tf_record"), str(tmp_path / "train_schema.json"),
                                   list(cols), batch_size=8, seq_length=16, label_dtype="float32")
    batches = list(dataset.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert len(batches) == 3                               # 30 rows, batch 8: the last 6 rows are dropped
    assert batches[0]["label_ids"].dtype == np.float32
    assert np.allclose(batches[0]["label_ids"][:, 0], batches[0]["input_ids"][:, 0] * 0.5)


@pytest.mark.parametrize("fmt,ext", [("tfrecord", ".tf_record"), ("mindrecord", ".mindrecord")])
def test_train_dataset_shards_are_disjoint_halves(numbered, fmt, ext):
    seen = []
    for rank in (0, 1):
        dataset = create_train_dataset(str(numbered / f"train{ext}"), str(numbered / f"train_{fmt}_schema.json"),
                                       TRAIN_COLUMNS, batch_size=4, seq_length=16, dataset_type=fmt, seed=3,
                                       rank_id=rank, rank_size=2)
        seen.append(first_ids(dataset))
    assert len(seen[0]) == len(seen[1]) == 32
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(64))


def test_train_dataset_checks_seq_length_and_columns(numbered):
    data, schema = str(numbered / "train.tf_record"), str(numbered / "train_tfrecord_schema.json")
    with pytest.raises(UserError, match=r"schema .*train_tfrecord_schema\.json: column input_ids has length 16, "
                                        r"config expects 128"):
        create_train_dataset(data, schema, TRAIN_COLUMNS, batch_size=8, seq_length=128)
    with pytest.raises(UserError, match="no column next_sentence_labels"):
        create_train_dataset(data, schema, TRAIN_COLUMNS + ["next_sentence_labels"], batch_size=8, seq_length=16)
    with pytest.raises(UserError, match="fewer than batch_size 128"):
        create_train_dataset(data, schema, TRAIN_COLUMNS, batch_size=128, seq_length=16)


# ---- eval batches --------------------------------------------------------------------------------------


def test_read_all_file_order(numbered):
    got = read_all(str(numbered / "train.tf_record"), str(numbered / "train_tfrecord_schema.json"),
                   ["input_ids", "score"])
    assert got["input_ids"][:, 0].tolist() == list(range(64))
    assert got["score"].dtype == np.float32 and got["score"][5, 0] == 2.5


# ---- file lists, schemas, labels -----------------------------------------------------------------------
def test_list_record_files(tmp_path):
    for name in ("b.tf_record", "a.tf_record", "a_schema.json", "x.mindrecord", "x.mindrecord.db",
                 ".a.tf_record.123.tmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert list_record_files(str(tmp_path), "tfrecord") == [str(tmp_path / "a.tf_record"),
                                                            str(tmp_path / "b.tf_record")]
    assert list_record_files(str(tmp_path), "mindrecord") == [str(tmp_path / "x.mindrecord")]
    a, b = str(tmp_path / "a.tf_record"), str(tmp_path / "b.tf_record")
    assert list_record_files(f"{b},{a}", "tfrecord") == [b, a]
    with pytest.raises(UserError, match="missing.tf_record: not found"):
        list_record_files(str(tmp_path / "missing.tf_record"), "tfrecord")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no tfrecord files"):
        list_record_files(str(tmp_path / "empty"), "tfrecord")


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ('{"columns": {}}', "field columns"),
    ('{"numRows": -1, "columns": {"input_ids": {"type": "int64", "shape": [8]}}}', "field numRows"),
    ('{"columns": {"input_ids": {"type": "int8", "shape": [8]}}}', "column input_ids: type is 'int8'"),
    ('{"columns": {"input_ids": {"type": "int64", "shape": [0]}}}', "column input_ids: shape is"),
    ('{"columns": {"input_ids": {"type": "int64", "rank": 2, "shape": [8]}}}', "column input_ids: rank is 2"),
])
def test_read_schema_rejects_malformed(tmp_path, text, match):
    path = tmp_path / "bad_schema.json"
    path.write_text(text)
    with pytest.raises(UserError, match=f"bad_schema.json: {match}"):
        read_schema(str(path))


def test_check_labels():
    task = get_task("MNLI")
    check_labels(np.array([[0], [2], [1]]), task, source="dev.tf_record")
    with pytest.raises(UserError, match=r"dev.tf_record: row 1: label id 3 is outside \[0, 3\)"):
        check_labels(np.array([[0], [3]]), task, source="dev.tf_record")
    with pytest.raises(UserError, match="label id -1"):
        check_labels(np.array([-1]), get_task("SST-2"), source="x")
    check_labels(np.array([[0.5], [4.2]], dtype=np.float32), get_task("STS-B"), source="x")
    with pytest.raises(UserError, match="not a finite number"):
        check_labels(np.array([[np.nan]], dtype=np.float32), get_task("STS-B"), source="x")


# ---- bad records -----------------------------------------------------------------------------------------
def test_schema_record_length_mismatch(tmp_path):
    write_schema(tmp_path / "s16.json", {**CLS_COLUMNS, "input_ids": ("int64", 16)}, 4)
    with pytest.raises(UserError, match=r"s16.json: column input_ids has length 16, records in .*classification"
                                        r"\.tf_record have 32"):
        read_all(str(TF_DIR / "classification.tf_record"), str(tmp_path / "s16.json"), list(CLS_COLUMNS))


def test_schema_record_type_and_count_mismatch(tmp_path):
    write_schema(tmp_path / "float.json", {**CLS_COLUMNS, "label_ids": ("float32", 1)}, 4)
    with pytest.raises(UserError, match="column label_ids is float32 but records in .* store int64_list"):
        read_all(str(TF_DIR / "classification.tf_record"), str(tmp_path / "float.json"), ["label_ids"])
    write_schema(tmp_path / "rows.json", CLS_COLUMNS, 3)
    with pytest.raises(UserError, match="numRows is 3 but .*classification.tf_record hold 4 records"):
        read_all(str(TF_DIR / "classification.tf_record"), str(tmp_path / "rows.json"), ["label_ids"])


@pytest.mark.parametrize("where", ["length", "payload", "last"])
def test_corrupted_tfrecord(tmp_path, schemas, where):
    data = bytearray((TF_DIR / "classification.tf_record").read_bytes())
    pos = {"length": 2, "payload": 40, "last": len(data) - 1}[where]
    data[pos] ^= 0x01
    bad = tmp_path / "flipped.tf_record"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"flipped\.tf_record: corrupted TFRecord file"):
        read_all(str(bad), str(schemas / "classification_schema.json"), list(CLS_COLUMNS))


def test_truncated_and_empty_tfrecord(tmp_path, schemas):
    data = (TF_DIR / "classification.tf_record").read_bytes()
    (tmp_path / "cut.tf_record").write_bytes(data[:-10])
    with pytest.raises(UserError, match=r"cut\.tf_record: truncated TFRecord file"):
        read_all(str(tmp_path / "cut.tf_record"), str(schemas / "classification_schema.json"), ["input_ids"])
    (tmp_path / "empty.tf_record").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.tf_record: no records"):
        read_all(str(tmp_path / "empty.tf_record"), str(schemas / "classification_schema.json"), ["input_ids"])


def test_corrupted_tfrecord_in_training_pipeline(tmp_path, numbered):
    data = bytearray((numbered / "train.tf_record").read_bytes())
    data[len(data) // 2] ^= 0x10
    (tmp_path / "train.tf_record").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train\.tf_record: corrupted TFRecord file"):
        create_train_dataset(str(tmp_path / "train.tf_record"), str(numbered / "train_tfrecord_schema.json"),
                             TRAIN_COLUMNS, batch_size=8, seq_length=16)


def test_mindrecord_errors_name_the_file(tmp_path, numbered):
    shutil.copy(numbered / "train.mindrecord", tmp_path / "moved.mindrecord")     # without its .db index
    with pytest.raises(UserError, match=r"moved\.mindrecord: cannot read mindrecord records"):
        read_all(str(tmp_path / "moved.mindrecord"), None, ["input_ids"], "mindrecord")
    write_schema(tmp_path / "s8.json", {**NUM_COLUMNS, "input_ids": ("int64", 8)}, 64, fmt="mindrecord")
    with pytest.raises(UserError, match="s8.json: column input_ids has length 8"):
        read_all(str(numbered / "train.mindrecord"), str(tmp_path / "s8.json"), ["input_ids"], "mindrecord")
