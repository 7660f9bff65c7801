"""Evaluation (src/evaluation.py): logits for every row in order, bucketed or not."""
import numpy as np
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
