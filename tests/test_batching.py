"""Training batches (src/batching.py): seeded per-epoch order, data-parallel shards, length buckets."""
import numpy as np
import pytest

from conftest import ragged_arrays as _arrays
from src.batching import ArrayBatcher, bucket_of, length_buckets_of
from src.errors import UserError


def test_batcher_shuffles_per_epoch_deterministically_and_shards():
    a = _arrays()
    b1 = ArrayBatcher(a, 2, shuffle=True, seed=7)
    e1 = [x["label_ids"].tolist() for x in b1.epoch(1)]
    e1_again = [x["label_ids"].tolist() for x in ArrayBatcher(a, 2, shuffle=True, seed=7).epoch(1)]
    e2 = [x["label_ids"].tolist() for x in b1.epoch(2)]
    assert e1 == e1_again and e1 != e2
    assert sorted(sum(e1, [])) == list(range(10))
    r0 = sum((x["label_ids"].tolist() for x in ArrayBatcher(a, 1, seed=1, rank=0, world=2).epoch(1)), [])
    r1 = sum((x["label_ids"].tolist() for x in ArrayBatcher(a, 1, seed=1, rank=1, world=2).epoch(1)), [])
    assert sorted(r0 + r1) == list(range(10)) and not set(r0) & set(r1)


def test_batcher_length_buckets_trim_only_padding():
    a = _arrays()
    b = ArrayBatcher(a, 2, shuffle=True, seed=0, length_buckets=[4])
    assert b.buckets == [4, 8]
    rows = 0
    for batch in b.epoch(1):
        width = batch["input_ids"].shape[1]
        for lab, mask in zip(batch["label_ids"], batch["input_mask"]):
            full = a["input_mask"][lab]
            assert full.sum() == mask.sum() <= width           # nothing real was cut
            np.testing.assert_array_equal(a["input_ids"][lab][:width], batch["input_ids"][list(batch["label_ids"]).index(lab)])
        rows += len(batch["label_ids"])
    assert rows == 8 and len(b) == 4       # 5 rows <= 4 tokens, 5 longer; batch 2 drops one per bucket
    # batch 6: 10 rows are more than a batch, but neither bucket holds 6 -> no step at all; one clear error
    # (it once "trained" 0 steps and saved the untrained model)
    with pytest.raises(UserError, match=r"training set has 10 rows but no length bucket holds a full batch "
                                        r"\(6 x 1 worker\(s\)\); rows per bucket \{4: 5, 8: 5\}: "
                                        r"lower train\.batch_size"):
        ArrayBatcher(a, 6, length_buckets=[4])
    assert len(ArrayBatcher(a, 6)) == 1


def test_one_bucket_rule():
    """Buckets in use: the configured lengths up to the sequence length, plus the sequence length; each row goes to
    the shortest bucket that holds its real tokens (the batcher, predict and the benchmarks share this rule)."""
    assert length_buckets_of(8, [4, 2, 16]) == [2, 4, 8]
    assert length_buckets_of(8, []) == length_buckets_of(8, None) == [8]
    mask = _arrays()["input_mask"]                       # real lengths 2 3 8 8 4 7 2 5 6 3
    assert bucket_of(mask.sum(axis=1), [2, 4, 8]).tolist() == [0, 1, 2, 2, 1, 2, 0, 2, 2, 1]
