import math

import numpy as np
import pytest

from src.metrics import (accuracy, compute_metrics, f1_binary, matthews_corrcoef,
                         pearson, spearman)
from src.tasks import get_task

# Binary example: TP=3 (0,1,2), FP=1 (3), TN=4 (4..7), FN=2 (8,9)
PREDS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
LABELS = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]


def test_accuracy():
    assert accuracy(PREDS, LABELS) == pytest.approx(7 / 10)


def test_f1_has_factor_two():
    # 2TP / (2TP + FP + FN) = 6 / (6 + 1 + 2) = 2/3  (without the factor 2: 3 / 6 = 0.5)
    assert f1_binary(PREDS, LABELS) == pytest.approx(2 / 3)
    # positive=0: TP=4, FP=2 (the FN above), FN=1 -> 8 / (8 + 2 + 1)
    assert f1_binary(PREDS, LABELS, positive=0) == pytest.approx(8 / 11)
    assert f1_binary([0, 0], [0, 0]) == 0.0


def test_mcc_binary_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3*4 - 1*2) / sqrt(4*5*5*6) = 10 / sqrt(600)
    assert matthews_corrcoef(PREDS, LABELS) == pytest.approx(10 / math.sqrt(600))
    assert matthews_corrcoef(LABELS, LABELS) == pytest.approx(1.0)
    assert matthews_corrcoef([1 - x for x in LABELS], LABELS) == pytest.approx(-1.0)


def test_mcc_undefined_is_zero():
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0   # a constant prediction
    assert matthews_corrcoef([1, 1], [1, 1]) == 0.0


def test_mcc_three_classes_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 1, 2, 1, 1, 2, 0]
    # confusion (rows true, cols pred): [[2,1,1],[0,2,0],[1,0,1]]
    # t (row sums) = [4,2,2], p (col sums) = [3,3,2], c (trace) = 5, s = 8
    # num = c*s - p.t = 40 - (12+6+4) = 18
    # den = sqrt((s^2 - p.p)(s^2 - t.t)) = sqrt((64-22)(64-24)) = sqrt(1680)
    assert matthews_corrcoef(preds, labels) == pytest.approx(18 / math.sqrt(1680))


def test_mcc_symmetric_three_classes():
    # confusion [[2,1,0],[0,2,1],[1,0,2]]: t = p = [3,3,3], c = 6, s = 9
    # (54 - 27) / sqrt((81-27)(81-27)) = 27 / 54
    assert matthews_corrcoef([0, 0, 1, 1, 1, 2, 2, 2, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2]) == pytest.approx(0.5)


def test_pearson_exact():
    # dx = [-1.5,-.5,.5,1.5], dy = [-3,-1,0,4]: sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26 -> 11 / sqrt(130)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_spearman_with_ties():
    # x = [1,2,2,3] -> average ranks [1, 2.5, 2.5, 4]; y = [1,3,2,4] -> ranks [1, 3, 2, 4]; both mean 2.5
    # dx = [-1.5, 0, 0, 1.5], dy = [-1.5, .5, -.5, 1.5]
    # sum dx*dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10) = 0.948683
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    # ordinal ranks [1,2,3,4] for x would give exactly 0.8 instead


def test_spearman_is_rank_based():
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 10, 100, 1000]) < 0.9
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)   # unsorted input


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])


def test_compute_metrics_cola_logits():
    logits = np.array([[0.0, 1.0] if p else [1.0, 0.0] for p in PREDS])
    m = compute_metrics(get_task("CoLA"), logits, np.array(LABELS))
    assert set(m) == {"mcc", "acc"}
    assert m["mcc"] == pytest.approx(10 / math.sqrt(600))
    assert m["acc"] == pytest.approx(0.7)
    assert all(type(v) is float for v in m.values())
    assert get_task("CoLA").main_metric == "mcc"


def test_compute_metrics_mrpc_accepts_ids():
    m = compute_metrics(get_task("MRPC"), np.array(PREDS), LABELS)
    assert m == {"f1": pytest.approx(2 / 3), "acc": pytest.approx(0.7)}
    assert get_task("MRPC").main_metric == "f1"


def test_compute_metrics_stsb_regression():
    preds = np.array([[1.0], [2.0], [2.0], [3.0]], dtype=np.float32)   # (N, 1) head output
    m = compute_metrics(get_task("STS-B"), preds, np.array([1.0, 3.0, 2.0, 4.0]))
    assert set(m) == {"pearson", "spearman"}
    assert m["spearman"] == pytest.approx(3 / math.sqrt(10))
    assert m["pearson"] == pytest.approx(np.corrcoef([1, 2, 2, 3], [1, 3, 2, 4])[0, 1])
    assert get_task("STS-B").main_metric == "pearson"


def test_compute_metrics_mnli_three_way():
    logits = np.array([[3, 1, 0], [0, 2, 1], [0, 1, 5], [4, 0, 0]], dtype=np.float32)   # argmax 0,1,2,0
    m = compute_metrics(get_task("MNLI"), logits, [0, 1, 1, 0])
    assert m == {"acc": pytest.approx(0.75)}


def test_compute_metrics_rejects_bad_shapes():
    with pytest.raises(ValueError):
        compute_metrics(get_task("MNLI"), np.zeros((4, 2)), [0, 1, 1, 0])    # 2 columns for 3 labels
    with pytest.raises(ValueError):
        compute_metrics(get_task("SST-2"), np.array([0.2, 0.9]), [0, 1])    # 1-D floats are not ids
    with pytest.raises(ValueError):
        compute_metrics(get_task("STS-B"), np.zeros((4, 2)), [0, 1, 1, 0])


