"""Evaluation (src/evaluation.py): logits for every row in order, bucketed or not."""
import re

import numpy as np
import pytest
import mindspore as ms

from conftest import ragged_arrays as _arrays
from src.evaluation import predict
from src.tinybert_model import BertConfig, BertForSequenceClassification


def test_bucketed_predict_gives_the_same_logits_in_row_order():
    """Teacher-logit caching runs rows grouped by length with the padding trimmed: same logits, same order."""
    from src.tinybert_model import LogitsOnly
    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=8, num_labels=3)
    net = LogitsOnly(BertForSequenceClassification(cfg))
    net.set_train(False)
    a = _arrays()
    full = predict(net, a, 4)
    bucketed = predict(net, a, 4, length_buckets=[4])
    assert bucketed.shape == (10, 3)
    np.testing.assert_allclose(bucketed, full, rtol=0, atol=2e-6)
    assert not np.allclose(full[0], full[1])                # rows really differ: the order is checked


def test_predict_keeps_every_row_in_order_with_one_batch_shape():
    """10 rows at batch 4: three calls of shape [4, S] (the tail padded with zero rows, one visible token each)
    and exactly the 10 rows' outputs back, in order."""
    shapes = []

    def logits_fn(input_ids, segment_ids, input_mask):
        shapes.append(tuple(input_ids.shape))
        assert input_mask.asnumpy().sum(axis=1).min() >= 1
        return ms.Tensor(input_ids.asnumpy().sum(axis=1, keepdims=True).astype(np.float32))
    a = _arrays()
    out = predict(logits_fn, a, 4)
    assert shapes == [(4, 8)] * 3
    np.testing.assert_array_equal(out[:, 0], a["input_ids"].sum(axis=1))


# ------------------------------------------------------------------ MNLI: two dev splits

def _mnli_split(correct, n):
    """`n` rows (row i has input id i + 1 first) with labels 0..2; the stub model below is right on the rows in
    `correct` and wrong (label + 1) on the others."""
    labels = np.arange(n, dtype=np.int32) % 3
    ids = np.zeros((n, 4), np.int32)
    ids[:, 0] = np.arange(1, n + 1)
    pred = np.where(np.isin(np.arange(n), list(correct)), labels, (labels + 1) % 3)
    return {"input_ids": ids, "input_mask": np.ones((n, 4), np.int32), "segment_ids": np.zeros((n, 4), np.int32),
            "label_ids": labels[:, None]}, pred


def _stub_logits(preds):
    """logits_fn giving class `preds[row]` (row from the first input id; padded rows, id 0, get class 0)."""
    def logits_fn(input_ids, segment_ids, input_mask):
        rows = input_ids.asnumpy()[:, 0]
        p = np.where(rows > 0, np.asarray(preds)[np.maximum(rows - 1, 0)], 0)
        return ms.Tensor(np.eye(3, dtype=np.float32)[p])
    return logits_fn


def test_mnli_evaluate_reports_matched_acc_and_mismatched_as_mm_acc():
    """evaluate() over MNLI's two dev splits: the first (dev_matched) gives the plain keys, dev_mismatched the mm_
    ones; tail batches (8 and 5 rows at batch 4) included."""
    from src.evaluation import evaluate
    from src.tasks import get_task
    task = get_task("MNLI")
    assert task.eval_splits == ("dev_matched", "dev_mismatched") and task.main_metric == "acc"
    matched, pm = _mnli_split(range(6), 8)             # 6 of 8 right
    mism, pmm = _mnli_split([0, 3], 5)                 # 2 of 5 right
    for name, (arrays, preds) in (("matched", (matched, pm)), ("mismatched", (mism, pmm))):
        assert evaluate(_stub_logits(preds), {"dev": arrays}, 4, task) == {"acc": pytest.approx(
            {"matched": 0.75, "mismatched": 0.4}[name], abs=1e-12)}
    offset = np.concatenate([pm, pmm])                 # one stub for both splits: the mismatched ids follow on
    mism_ids = dict(mism, input_ids=mism["input_ids"] + np.array([8, 0, 0, 0], np.int32))
    got = evaluate(_stub_logits(offset), {"dev_matched": matched, "dev_mismatched": mism_ids}, 4, task)
    assert got == {"acc": pytest.approx(0.75, abs=1e-12), "mm_acc": pytest.approx(0.4, abs=1e-12)}


def test_mnli_keep_best_follows_the_matched_split(tmp_path):
    """The Trainer keeps the best by the task's main metric, which for MNLI is the matched split's acc: three evals
    where matched acc peaks at the second and mismatched acc at the third keep the second (best value, step, the
    metrics handed to save_best, the 'The best acc is' lines)."""
    from src.batching import ArrayBatcher
    from src.evaluation import evaluate
    from src.runlog import RunLog
    from src.tasks import get_task
    from src.trainer import Evaluation, Schedule, Trainer
    task = get_task("MNLI")
    n_m, n_mm = 8, 5
    schedule_m, schedule_mm = (2, 6, 4), (1, 2, 5)     # rows right at evals 1, 2, 3
    evals, saved = [], []

    def eval_fn():
        k = len(evals)
        matched, pm = _mnli_split(range(schedule_m[k]), n_m)
        mism, pmm = _mnli_split(range(schedule_mm[k]), n_mm)
        mism["input_ids"][:, 0] += n_m
        evals.append(k)
        return evaluate(_stub_logits(np.concatenate([pm, pmm])), {"dev_matched": matched, "dev_mismatched": mism},
                        4, task)

    def step(input_ids):
        return ms.Tensor(1.0, ms.float32), (), ms.Tensor(0.5, ms.float32)

    train = {"input_ids": np.ones((6, 4), np.int32), "input_mask": np.ones((6, 4), np.int32)}
    log = RunLog(str(tmp_path), echo=False)
    tr = Trainer(step, ArrayBatcher(train, 2, seed=0), inputs=["input_ids"], parts=[], log=log,
                 schedule=Schedule(epochs=1, max_steps=0, lr_value=lambda s: 0.0), log_every=10,
                 evaluation=Evaluation(eval_fn, task.main_metric, every=1, save_best=saved.append))
    res = tr.fit()
    log.close()
    assert [(h["step"], h["acc"], h["mm_acc"]) for h in tr.history] == [(1, 0.25, 0.2), (2, 0.75, 0.4),
                                                                         (3, 0.5, 1.0)]
    assert (res["best"], res["best_step"]) == (0.75, 2)
    assert saved == [{"acc": 0.25, "mm_acc": 0.2}, {"acc": 0.75, "mm_acc": 0.4}]
    text = open(tmp_path / "log.txt", encoding="utf-8").read()
    assert re.findall(r"^The best acc is ([0-9.]+)$", text, re.M) == ["0.250000", "0.750000"]


def test_token_metrics_from_length_buckets_equal_the_full_length_ones():
    """eval.length_buckets: a token task's per-position logits come back in row order and at the right positions
    (zero-padded to the full length), so entity F1 of a bucketed eval equals the full-length one: a real tiny model
    (logits equal up to float rounding) and a stub tagging every word right (F1 1.0 only if each position's
    logits reach its own label)."""
    import tiny_run
    from src.evaluation import evaluate
    from src.tasks import get_task
    from src.tinybert_model import LogitsOnly, build_classifier
    task = get_task("ner", tiny_run.TOKEN_LABELS)
    rows, _ = tiny_run.token_rows(30, 3)
    arrays = {k: np.asarray([r[k] for r in rows], np.int32) for k in rows[0]}
    lengths = arrays["input_mask"].sum(1)
    assert lengths.min() <= 8 < lengths.max()                # both buckets below are used
    cfg = BertConfig(**tiny_run.TINY, num_labels=3)
    net = LogitsOnly(build_classifier(cfg, "dense", "token"))
    net.set_train(False)
    full, bucketed = predict(net, arrays, 4), predict(net, arrays, 4, length_buckets=[8, tiny_run.SEQ])
    real = arrays["input_mask"] == 1                          # padding positions: zeros when trimmed
    np.testing.assert_allclose(bucketed[real], full[real], rtol=0, atol=2e-6)
    gold = np.maximum(arrays["label_ids"], 0)
    label_of = {tuple(np.trim_zeros(ids, "b")): g for ids, g in zip(arrays["input_ids"], gold)}
    assert len(label_of) == len(rows)                         # each row found again from its ids

    def tagger(input_ids, segment_ids, input_mask):           # a row's gold tags, trimmed to the batch's length
        ids = input_ids.asnumpy()
        lab = np.stack([label_of.get(tuple(np.trim_zeros(r, "b")), np.zeros(tiny_run.SEQ, int))[:ids.shape[1]]
                        for r in ids])
        return ms.Tensor(np.eye(3, dtype=np.float32)[lab])
    sets = {"dev": arrays}
    exact = evaluate(tagger, sets, 4, task)
    assert exact["f1"] == 1.0, exact
    assert evaluate(tagger, sets, 4, task, length_buckets=[8, tiny_run.SEQ]) == exact
    assert evaluate(net, sets, 4, task, length_buckets=[8, tiny_run.SEQ]) == evaluate(net, sets, 4, task)
