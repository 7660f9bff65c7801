"""Evaluation: logits for every row in order, metrics on the run's eval splits, the teacher's own score.

Eval sets are never shuffled and never dropped: fixed-size batches, the last one padded with zero rows that are
sliced off again.
"""
from typing import Dict, Optional, Sequence

import numpy as np

from src.batching import MODEL_INPUTS, bucket_of, length_buckets_of, pad_positions, to_tensors
from src.dataset import padded_batches


def predict(logits_fn, arrays: Dict[str, np.ndarray], batch_size: int,
            length_buckets: Optional[Sequence[int]] = None) -> np.ndarray:
    """Logits for every row in order: fixed batch shape, last batch padded with zero rows, then sliced off.

    With `length_buckets` (e.g. the training buckets) rows are grouped by length and each group runs with its
    padding columns trimmed to the bucket length (one compiled graph per bucket): same logits up to float
    rounding (padding is masked), at a fraction of the cost when most rows are short (per-position logits of a
    token task come back zero-padded to the full length)."""
    n = len(arrays["input_ids"])
    if length_buckets:
        seq_len = arrays["input_ids"].shape[1]
        buckets = length_buckets_of(seq_len, length_buckets)
        which = bucket_of(arrays["input_mask"].sum(axis=1), buckets)
        out = None
        for b, length in enumerate(buckets):
            idx = np.flatnonzero(which == b)
            if len(idx):
                part = pad_positions(predict(logits_fn, {k: arrays[k][idx, :length] for k in MODEL_INPUTS},
                                             batch_size), seq_len)
                out = np.zeros((n,) + part.shape[1:], part.dtype) if out is None else out
                out[idx] = part
        return out
    outs = []
    for batch, real in padded_batches(arrays, MODEL_INPUTS, batch_size):
        out = logits_fn(*to_tensors(batch, MODEL_INPUTS))
        outs.append(out.asnumpy()[:real])
    return np.concatenate(outs)


def numpy_logits(runner):
    """The logits_fn of predict / evaluate for a runner on numpy arrays (an exported model: onnxruntime session,
    MINDIR GraphCell): predict hands MindSpore tensors."""
    import mindspore as ms

    def logits_fn(*tensors):
        return ms.Tensor(runner(*[t.asnumpy() for t in tensors]))
    return logits_fn


def evaluate(logits_fn, eval_sets: Dict[str, Dict[str, np.ndarray]], batch_size: int, task,
             length_buckets: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """Metrics on every eval split (MNLI: dev_matched and dev_mismatched, prefixed 'mm_' for the second); a token
    task's are entity-level precision / recall / F1 over its sentences (src/ner.py), a span task's SQuAD exact match
    and F1 over its questions (src/squad.py). `length_buckets`: batches grouped by length (predict)."""
    from src.metrics import compute_metrics
    from src.ner import entity_metrics
    results = {}
    for i, (split, arrays) in enumerate(eval_sets.items()):
        logits = predict(logits_fn, arrays, batch_size, length_buckets)
        if task.token_level:        # entity level (conlleval), the windows of a long sentence recombined first
            m = entity_metrics(task.labels, arrays["label_ids"], logits, arrays["sentence_id"])
        elif task.kind == "span":   # answers decoded over every window of a question, SQuAD EM / F1
            from src.squad import span_metrics
            m = span_metrics(task, logits[:, :, 0], logits[:, :, 1], arrays["features"],
                             feature_ids=arrays["feature_id"].reshape(-1))
        else:
            m = compute_metrics(task, logits, arrays["label_ids"].reshape(-1))
        prefix = "" if i == 0 else "mm_" if split == "dev_mismatched" else f"{split}_"
        results.update({prefix + k: v for k, v in m.items()})
    return results


def teacher_baseline(teacher, eval_sets: Dict[str, Dict[str, np.ndarray]], batch_size: int, task, log,
                     length_buckets: Optional[Sequence[int]] = None) -> dict:
    """The fine-tuned teacher's own score before training, logged and recorded as `teacher_eval` (the reference
    of the ternary and width tables: tools/pack_ternary.py, tools/readme_results.py)."""
    from src.runtime import release_compiled_graphs
    from src.tinybert_model import LogitsOnly
    net = LogitsOnly(teacher)
    net.set_train(False)
    metrics = evaluate(net, eval_sets, batch_size, task, length_buckets)
    log.info("teacher fp32 " + ", ".join(f"{k} {v:.6f}" for k, v in metrics.items()))
    log.record("teacher_eval", **metrics)
    # its eval graphs (one per length bucket) are not used again; without this their memory stays beside the
    # training graphs for the whole run
    del net
    release_compiled_graphs()
    return metrics
