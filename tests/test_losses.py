"""Distillation losses against values computed by hand on small tensors."""
import math

import numpy as np
import pytest
import mindspore as ms

from src import losses

T = lambda x, dt=np.float32: ms.Tensor(np.asarray(x, dt))


def test_attention_mse_masks_padded_queries_and_keys():
    # B=1, H=1, S=2, second token padded. Only the (query 0, key 0) pair is valid.
    s = np.array([[[[1.0, -10000.0], [3.0, -9999.0]]]])
    t = np.array([[[[4.0, -10002.0], [0.0, -10000.0]]]])
    mask = [[1, 0]]
    got = float(losses.attention_mse(T(s), T(t), T(mask, np.int32), mask_padding=True).asnumpy())
    assert got == pytest.approx((1.0 - 4.0) ** 2)          # 9 over 1 valid pair


def test_attention_mse_anchor_masking_reproduces_model_zoo():
    # anchors: entries <= -100 become 0 in both tensors, then a plain mean over all B*H*S*S entries
    s = np.array([[[[1.0, -10000.0], [3.0, -9999.0]]]])
    t = np.array([[[[4.0, -10002.0], [0.0, -10000.0]]]])
    got = float(losses.attention_mse(T(s), T(t), T([[1, 0]], np.int32), mask_padding=False).asnumpy())
    assert got == pytest.approx((9.0 + 0.0 + 9.0 + 0.0) / 4)


def test_attention_mse_averages_over_heads():
    s = np.zeros((1, 2, 1, 1)); t = np.array([[[[1.0]], [[3.0]]]])
    got = float(losses.attention_mse(T(s), T(t), T([[1]], np.int32)).asnumpy())
    assert got == pytest.approx((1.0 + 9.0) / 2)


def test_attention_mse_of_head_means_compares_fewer_student_heads():
    """average_heads: each side's scores are averaged over its heads first, so a 1-head student meets a 3-head
    teacher; B=2 rows of lengths 3 and 2, the masked mean over the 9 + 4 valid (query, key) pairs (numpy)."""
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    s = rng.standard_normal((2, 1, 3, 3)) + bias
    t = rng.standard_normal((2, 3, 3, 3)) + bias
    valid = mask[:, None, :, None] * mask[:, None, None, :]
    want = float((np.square(s - t.mean(axis=1, keepdims=True)) * valid).sum() / valid.sum())
    got = float(losses.attention_mse(T(s), T(t), T(mask, np.int32), average_heads=True).asnumpy())
    assert got == pytest.approx(want, rel=1e-5) and want > 0.5
    per_head = float(losses.attention_mse(T(np.repeat(s, 3, axis=1)), T(t), T(mask, np.int32)).asnumpy())
    assert abs(per_head - got) > 0.1                                  # not the per-head loss under another name


def test_attention_mse_masked_mean_over_rows_of_different_lengths_and_heads():
    """B=2 rows of lengths 3 and 2, H=2, S=3: the sum over every valid (row, head, query, key) of (s - t)^2 divided
    by the number of those, (3*3 + 2*2) pairs x 2 heads (not per row, not per head, not B*H*S*S)."""
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 2, 3, 3)), rng.normal(size=(2, 2, 3, 3))
    lengths = [3, 2]
    mask = [[1, 1, 1], [1, 1, 0]]
    num = sum((s[b, h, q, k] - t[b, h, q, k]) ** 2 for b in range(2) for h in range(2)
              for q in range(lengths[b]) for k in range(lengths[b]))
    got = float(losses.attention_mse(T(s), T(t), T(mask, np.int32), mask_padding=True).asnumpy())
    assert got == pytest.approx(num / ((9 + 4) * 2), rel=1e-5)
    per_row = np.mean([((s[b, :, :n, :n] - t[b, :, :n, :n]) ** 2).mean() for b, n in enumerate(lengths)])
    assert abs(per_row - num / 26) > 1e-3                  # the other reductions give other numbers here


def test_hidden_mse_valid_tokens_only_vs_all_positions():
    s = np.array([[[1.0, 2.0], [5.0, 5.0]]])               # B=1, S=2, H=2
    t = np.array([[[0.0, 0.0], [0.0, 0.0]]])
    mask = T([[1, 0]], np.int32)
    assert float(losses.hidden_mse(T(s), T(t), mask, True).asnumpy()) == pytest.approx((1 + 4) / 2)
    assert float(losses.hidden_mse(T(s), T(t), mask, False).asnumpy()) == pytest.approx((1 + 4 + 25 + 25) / 4)


def test_soft_cross_entropy_reductions_and_temperature():
    # teacher probs [0.25, 0.75]; student uniform -> -sum p log q = log 2
    s = T([[0.0, 0.0]])
    t = T([[0.0, math.log(3.0)]])
    ce = float(losses.soft_cross_entropy(s, t, 1.0, "row_mean").asnumpy())
    mean = float(losses.soft_cross_entropy(s, t, 1.0, "element_mean").asnumpy())
    assert ce == pytest.approx(math.log(2.0), rel=1e-5)
    assert mean == pytest.approx(math.log(2.0) / 2, rel=1e-5)       # anchors: mean over B*C = CE / C
    # T=2 on teacher logits [0, 2 log 3] gives the same teacher probs; student [0, 2 log 3]/2 = [0, log 3]
    s2 = T([[0.0, 2 * math.log(3.0)]])
    t2 = T([[0.0, 2 * math.log(3.0)]])
    ent = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    got = float(losses.soft_cross_entropy(s2, t2, 2.0, "row_mean").asnumpy())
    assert got == pytest.approx(ent, rel=1e-5)
    got_t2 = float(losses.soft_cross_entropy(s2, t2, 2.0, "row_mean", temperature_squared=True).asnumpy())
    assert got_t2 == pytest.approx(4 * ent, rel=1e-5)


def test_hard_cross_entropy():
    logits = T([[0.0, math.log(3.0)], [0.0, 0.0]])
    got = float(losses.hard_cross_entropy(logits, T([1, 0], np.int32)).asnumpy())
    assert got == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, rel=1e-5)


def test_uniform_layer_map_matches_tinybert():
    assert losses.uniform_layer_map(6, 3) == ([1, 3, 5], [0, 2, 4, 6])
    assert losses.uniform_layer_map(12, 4) == ([2, 5, 8, 11], [0, 3, 6, 9, 12])
    assert losses.uniform_layer_map(6, 6) == ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6])


def test_explicit_layer_map_and_errors():
    assert losses.resolve_layer_map(6, 2, [2, 5], [0, 3, 6]) == ([2, 5], [0, 3, 6])
    with pytest.raises(ValueError, match=r"layer_map.attention entries \[6\] out of range"):
        losses.resolve_layer_map(6, 2, [2, 6], None)
    with pytest.raises(ValueError, match="layer_map.hidden has 2 entries"):
        losses.resolve_layer_map(6, 2, None, [0, 6])
    with pytest.raises(ValueError, match="student layers"):
        losses.uniform_layer_map(2, 3)
