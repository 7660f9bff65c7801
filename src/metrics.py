"""GLUE metrics in numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman.

Undefined correlations (a constant input, a single class) are 0.0 rather than NaN, so "keep the best
checkpoint" comparisons stay well-defined.
"""
from typing import Dict

import numpy as np


def _pair(a, b):
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"predictions and labels differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("no examples to score")
    return a, b


def accuracy(preds, labels) -> float:
    preds, labels = _pair(preds, labels)
    return float(np.mean(preds == labels))


def f1_binary(preds, labels, positive=1) -> float:
    """F1 of the positive class: 2TP / (2TP + FP + FN); 0.0 with no positive predictions or labels."""
    preds, labels = _pair(preds, labels)
    p, t = preds == positive, labels == positive
    tp, fp, fn = np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K; the usual phi for two classes).

    With confusion matrix C (rows: true, columns: predicted), t = row sums, p = column sums, c = trace,
    s = total: MCC = (c*s - p.t) / sqrt((s^2 - p.p) (s^2 - t.t)); 0.0 when the denominator is 0.
    """
    preds, labels = _pair(preds, labels)
    classes, idx = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    k, n = len(classes), len(labels)
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (idx[:n], idx[n:]), 1)
    t, p = conf.sum(axis=1), conf.sum(axis=0)
    c, s = np.trace(conf), conf.sum()
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - p @ t) / denom) if denom > 0 else 0.0


def pearson(x, y) -> float:
    """Pearson correlation; 0.0 when either input is constant."""
    x, y = _pair(x, y)
    dx, dy = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float(np.sum(dx * dy) / denom) if denom > 0 else 0.0


def _average_ranks(a) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (fractional ranking)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    first = np.r_[True, s[1:] != s[:-1]]          # first position of each run of equal values
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]              # exclusive
    run_rank = (starts + ends - 1) / 2.0 + 1.0     # mean of ranks starts+1 .. ends
    ranks = np.empty(len(a))
    ranks[order] = run_rank[np.cumsum(first) - 1]
    return ranks


def spearman(x, y) -> float:
    """Spearman correlation: Pearson of average ranks."""
    x, y = _pair(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


_CLASSIFICATION = {"acc": accuracy, "f1": f1_binary, "mcc": matthews_corrcoef}
_REGRESSION = {"pearson": pearson, "spearman": spearman}


def _predictions(task, logits_or_preds) -> np.ndarray:
    out = np.asarray(logits_or_preds)
    if task.regression:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise ValueError(f"{task.name}: regression outputs must be (N,) or (N, 1), got shape {out.shape}")
        return out.astype(np.float64)
    if out.ndim == 2:
        if out.shape[1] != task.num_labels:
            raise ValueError(f"{task.name}: logits have {out.shape[1]} columns, expected {task.num_labels}")
        return np.argmax(out, axis=-1)
    if out.ndim != 1:
        raise ValueError(f"{task.name}: expected logits (N, {task.num_labels}) or predicted ids (N,), "
                         f"got shape {out.shape}")
    if not np.issubdtype(out.dtype, np.integer) and not np.all(out == np.round(out)):
        raise ValueError(f"{task.name}: 1-D predictions must be class ids, got non-integer values")
    return out.astype(np.int64)


def compute_metrics(task, logits_or_preds, labels) -> Dict[str, float]:
    """Every metric in `task.metrics`, keyed by its name. Classification takes logits (N, C) or ids (N,)."""
    preds = _predictions(task, logits_or_preds)
    labels = np.asarray(labels).reshape(-1)
    table = _REGRESSION if task.regression else _CLASSIFICATION
    unknown = [m for m in task.metrics if m not in table]
    if unknown:
        raise ValueError(f"{task.name}: no metric named {', '.join(unknown)}; known: {', '.join(table)}")
    if not task.regression:
        labels = labels.astype(np.int64)
    return {m: float(table[m](preds, labels)) for m in task.metrics}


