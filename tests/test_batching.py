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
            np.testing.assert_array_equal(a["input_ids"][lab][:width],
                                          batch["input_ids"][list(batch["label_ids"]).index(lab)])
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


def test_length_buckets_with_data_parallel_give_every_rank_the_same_batches_shapes():
    """Several length buckets and 2 workers: both ranks run the same number of steps with the same bucket width at
    every step (a collective with unequal shapes or counts would hang), their rows are disjoint, and together they
    are exactly the batches one worker gets at twice the batch size (rank r takes rows r::2 of each)."""
    rng = np.random.default_rng(4)
    seq = 16
    # rows per bucket 17, 11, 13, 20: odd counts whose halves fill a different number of per-rank batches (a
    # batcher that split the rows between ranks before forming batches would give rank 1 fewer steps)
    lengths = rng.permutation(np.concatenate([rng.integers(lo, hi + 1, k) for lo, hi, k in
                                              ((2, 4, 17), (5, 8, 11), (9, 12, 13), (13, 16, 20))]))
    n = len(lengths)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    arrays = {"input_ids": rng.integers(1, 30, (n, seq)) * mask, "input_mask": mask,
              "segment_ids": np.zeros((n, seq), np.int32), "label_ids": np.arange(n, dtype=np.int32)}
    buckets = [4, 8, 12]
    one = ArrayBatcher(arrays, 6, seed=5, length_buckets=buckets)
    ranks = [ArrayBatcher(arrays, 3, seed=5, rank=r, world=2, length_buckets=buckets) for r in (0, 1)]
    assert one.buckets == ranks[0].buckets == ranks[1].buckets == [4, 8, 12, 16]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for epoch in (1, 2):
        b1 = list(one.epoch(epoch))
        r0, r1 = list(ranks[0].epoch(epoch)), list(ranks[1].epoch(epoch))
        assert len(r0) == len(r1) == len(b1) == len(one)
        assert len({b["input_ids"].shape[1] for b in b1}) == 4          # every bucket is really used
        for g, a, b in zip(b1, r0, r1):
            width = g["input_ids"].shape[1]
            for k in arrays:
                assert a[k].shape[1:] == b[k].shape[1:] == g[k].shape[1:], k
            assert len(a["label_ids"]) == len(b["label_ids"]) == 3
            assert not set(a["label_ids"]) & set(b["label_ids"])
            np.testing.assert_array_equal(a["label_ids"], g["label_ids"][0::2])
            np.testing.assert_array_equal(b["label_ids"], g["label_ids"][1::2])
            np.testing.assert_array_equal(a["input_ids"], arrays["input_ids"][a["label_ids"], :width])
            assert (lengths[g["label_ids"]] <= width).all()               # each row in a bucket that holds it
        seen = np.concatenate([b["label_ids"] for b in r0 + r1])
        assert len(seen) == len(set(seen)) == 6 * len(one)


def test_dataset_batcher_streams_every_epoch_and_a_resumed_run_reads_past_earlier_ones():
    """DatasetBatcher over a shuffled MindSpore dataset: each epoch gives all its batches (MindSpore's iterator stops
    at every epoch end; reading on once ran into that stop and failed at the start of epoch 2), the order changes
    between epochs, and a fresh batcher asked for epoch 2 first (a resumed run) gives the second epoch's order."""
    import mindspore.dataset as ds
    from src.batching import DatasetBatcher

    def batcher():
        ds.config.set_seed(3)
        data = ds.NumpySlicesDataset({"input_ids": np.arange(12).reshape(12, 1)}, shuffle=True).batch(2)
        return DatasetBatcher(data, epochs=3)

    b = batcher()
    assert len(b) == 6
    epochs = [[x["input_ids"][:, 0].tolist() for x in b.epoch(e)] for e in (1, 2, 3)]
    assert [len(e) for e in epochs] == [6, 6, 6]
    assert all(sorted(sum(e, [])) == list(range(12)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    resumed = batcher()
    assert [x["input_ids"][:, 0].tolist() for x in resumed.epoch(2)] == epochs[1]
    assert [x["input_ids"][:, 0].tolist() for x in resumed.epoch(3)] == epochs[2]
