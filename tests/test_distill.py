"""Distillation loss cells (src/distill.py): the frozen teacher, fit_dense, the cached-teacher phase-1 loss."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from src.distill import FitDense, FrozenTeacher
from src.tinybert_model import BertConfig, BertForSequenceClassification, BertModel


TINY = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5, max_position_embeddings=16)


def test_frozen_teacher_has_no_dropout_and_no_trainable_params():
    class Wrapper(nn.Cell):
        def __init__(self):
            super().__init__()
            self.teacher = FrozenTeacher(BertModel(TINY))

        def construct(self, a, b, c):
            return self.teacher(a, b, c)[0]

    w = Wrapper()
    w.set_train(True)                                      # what the train step does to the whole graph
    ids = ms.Tensor(np.arange(16).reshape(2, 8) % 30, ms.int32)
    zeros = ms.Tensor(np.zeros((2, 8)), ms.int32)
    mask = ms.Tensor(np.ones((2, 8)), ms.int32)
    a = w(ids, zeros, mask).asnumpy()
    b = w(ids, zeros, mask).asnumpy()
    np.testing.assert_array_equal(a, b)                    # dropout 0.5 would make these differ
    assert w.trainable_params() == []


def test_fit_dense_is_identity_for_equal_widths():
    fd = FitDense(4, 4)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(fd(ms.Tensor(x)).asnumpy(), x, atol=1e-6)
    assert FitDense(4, 6).dense.weight.shape == (6, 4)


def test_cached_teacher_phase1_loss_equals_live_teacher_loss_and_gradients():
    """Phase 1 with precomputed teacher tensors (what caching would feed) gives the live-teacher loss and the
    same student gradients: the teacher contributes only constants to phase 1."""
    from src.distill import CachedTeacherPhase1Loss, DistillLossConfig, TaskDistillPhase1Loss
    ms.set_seed(5)
    teacher = BertForSequenceClassification(TINY.replace(num_hidden_layers=4))
    student = BertForSequenceClassification(TINY)
    fit = FitDense(16, 16)
    att_map, hid_map = (1, 3), (0, 2, 4)                               # uniform 4 -> 2 map
    cfg = DistillLossConfig()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 30, (3, 8)).astype(np.int32)
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6], np.int32)
    inputs = [ms.Tensor(ids), ms.Tensor(np.zeros_like(ids)), ms.Tensor(mask), ms.Tensor(np.array([0, 1, 1], np.int32))]
    live = TaskDistillPhase1Loss(student, teacher, fit, att_map, hid_map, cfg)
    cached = CachedTeacherPhase1Loss(student, fit, len(att_map), len(hid_map), cfg)
    keeping = TaskDistillPhase1Loss(student, teacher, fit, att_map, hid_map, cfg, return_targets=True)
    hidden, scores = keeping(*inputs)[1][3:]                         # what the pipeline's cache keeps
    assert hidden.shape == (3, 3, 8, 16) and scores.shape == (2, 3, 2, 8, 8)
    np.testing.assert_allclose(live(*inputs)[1][2].asnumpy(), teacher(*inputs[:3])[0].asnumpy(), rtol=0, atol=1e-6)
    weights = student.trainable_params() + fit.trainable_params()

    def live_loss(*a):
        return live(*a)[0]

    def cached_loss(*a):
        return cached(*a)[0]
    g_live = ops.value_and_grad(live_loss, None, weights)(*inputs)
    g_cached = ops.value_and_grad(cached_loss, None, weights)(*inputs, hidden, scores)
    np.testing.assert_allclose(g_cached[0].asnumpy(), g_live[0].asnumpy(), rtol=1e-6)
    assert float(g_live[0].asnumpy()) > 0
    for a, b in zip(g_live[1], g_cached[1]):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-7)


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _FirstIdLogits(nn.Cell):
    """A stand-in classifier with one output: logits (B, 1) = first input id / 4 (no parameters)."""

    def construct(self, input_ids, segment_ids, input_mask):
        return (input_ids[:, :1].astype(ms.float32) / 4.0,)


def test_regression_loss_cells_are_row_by_row_mse():
    """Regression (STS-B, num_labels 1): logits (B, 1), teacher logits (B, 1) and the batcher's labels (B, 1).
    Fine-tuning MSE, the phase-2 soft and hard terms and their weighting are means of per-row squared errors; a
    (B, 1) - (B,) broadcast would average all B x B pairs (its value is checked to differ)."""
    from src.distill import CachedLogitsPhase2Loss, DistillLossConfig, FinetuneLoss, PredictionLoss
    ids = np.array([[4, 1, 1], [9, 1, 1], [2, 1, 1], [13, 1, 1]], np.int32)
    ins = [ms.Tensor(ids), ms.Tensor(np.zeros_like(ids)), ms.Tensor(np.ones_like(ids))]
    s = ids[:, :1] / 4.0
    t = np.array([[0.5], [2.5], [1.0], [2.0]])
    y = np.array([[1.5], [2.0], [0.0], [4.0]])
    assert ((s - y.reshape(-1)) ** 2).mean() != pytest.approx(((s - y) ** 2).mean(), rel=1e-3)
    f32 = [ms.Tensor(a.astype(np.float32)) for a in (t, y)]

    loss, (ce,) = FinetuneLoss(_FirstIdLogits(), kind="regression")(*ins, f32[1])
    assert float(loss.asnumpy()) == float(ce.asnumpy()) == pytest.approx(((s - y) ** 2).mean(), rel=1e-6)

    cfg = DistillLossConfig(pred_weight=2.0, hard_label_weight=0.5)
    soft, hard = ((s - t) ** 2).mean(), ((s - y) ** 2).mean()
    for labels in (f32[1], ms.Tensor(y.reshape(-1).astype(np.float32))):          # (B, 1) or (B,)
        loss, sv, hv = PredictionLoss(cfg, kind="regression")(ms.Tensor(s.astype(np.float32)), f32[0], labels)
        assert (float(sv.asnumpy()), float(hv.asnumpy())) == (pytest.approx(soft, rel=1e-6),
                                                              pytest.approx(hard, rel=1e-6))
        assert float(loss.asnumpy()) == pytest.approx(2.0 * soft + 0.5 * hard, rel=1e-6)
    loss, (sv, hv) = CachedLogitsPhase2Loss(_FirstIdLogits(), cfg, kind="regression")(*ins, f32[1], f32[0])
    assert float(loss.asnumpy()) == pytest.approx(2.0 * soft + 0.5 * hard, rel=1e-6)
    assert float(sv.asnumpy()) == pytest.approx(soft, rel=1e-6)


@pytest.mark.parametrize("regression", [False, True])
def test_phase2_live_teacher_equals_cached_logits_loss_and_gradients(regression):
    """TD phase 2 with the teacher run live (td2.cache_teacher_logits false) and a hard-label term
    (loss.hard_label_weight 0.5): the same loss, parts and student gradients as the cached-logits loss fed the
    teacher's logits, and the loss is pred_weight * soft + hard_label_weight * hard computed in numpy (soft CE at
    T=2 with T^2, or MSE for regression). The teacher has dropout 0.5: a teacher not kept in inference mode
    would differ."""
    from src.distill import CachedLogitsPhase2Loss, DistillLossConfig, TaskDistillPhase2Loss
    labels = 1 if regression else 3
    ms.set_seed(8)
    teacher = BertForSequenceClassification(TINY.replace(num_labels=labels, initializer_range=0.5))
    student = BertForSequenceClassification(TINY.replace(num_labels=labels, hidden_dropout_prob=0.0,
                                                         attention_probs_dropout_prob=0.0, initializer_range=0.5))
    cfg = DistillLossConfig(pred_weight=1.5, hard_label_weight=0.5, temperature=2.0, temperature_squared=True,
                            soft_ce_reduction="row_mean")
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 30, (4, 8)).astype(np.int32)
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6, [1] * 7 + [0]], np.int32)
    y = (np.array([[0.5], [3.0], [1.5], [4.5]], np.float32) if regression else np.array([[0], [2], [1], [2]], np.int32))
    inputs = [ms.Tensor(ids), ms.Tensor(np.zeros_like(ids)), ms.Tensor(mask), ms.Tensor(y)]
    t_logits = FrozenTeacher(teacher)(*inputs[:3])[0]
    live = TaskDistillPhase2Loss(student, teacher, cfg, "regression" if regression else "classification")
    live.set_train(True)                                    # what the train step does: the teacher stays in inference
    cached = CachedLogitsPhase2Loss(student, cfg, "regression" if regression else "classification")
    weights = student.trainable_params()

    def live_loss(*a):
        loss, parts = live(*a)
        return loss, parts[0], parts[1]

    def cached_loss(*a):
        loss, parts = cached(*a)
        return loss, parts[0], parts[1]
    g_live = ops.value_and_grad(live_loss, None, weights, has_aux=True)(*inputs)
    g_cached = ops.value_and_grad(cached_loss, None, weights, has_aux=True)(*inputs, t_logits)
    (l_live, soft, hard), (l_cached, soft_c, hard_c) = g_live[0], g_cached[0]
    np.testing.assert_allclose([float(v.asnumpy()) for v in (l_cached, soft_c, hard_c)],
                               [float(v.asnumpy()) for v in (l_live, soft, hard)], rtol=1e-6)
    for a, b in zip(g_live[1], g_cached[1]):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-7)
    assert max(float(np.abs(g.asnumpy()).max()) for g in g_live[1]) > 1e-4

    s = student(*inputs[:3])[0].asnumpy().astype(np.float64)
    t = t_logits.asnumpy().astype(np.float64)
    if regression:
        want_soft, want_hard = ((s - t) ** 2).mean(), ((s - y) ** 2).mean()
    else:
        t_prob = np.exp(_np_log_softmax(t / 2.0))
        want_soft = -(t_prob * _np_log_softmax(s / 2.0)).sum(-1).mean() * 4.0
        want_hard = -_np_log_softmax(s)[np.arange(4), y[:, 0]].mean()
    assert float(soft.asnumpy()) == pytest.approx(want_soft, rel=1e-5)
    assert float(hard.asnumpy()) == pytest.approx(want_hard, rel=1e-5) and want_hard > 0.05
    assert float(l_live.asnumpy()) == pytest.approx(1.5 * want_soft + 0.5 * want_hard, rel=1e-5)


def test_layer_map_that_does_not_divide_needs_an_explicit_map():
    """TinyBERT's uniform map needs teacher layers = k x student layers; 6 -> 4 (k = 1) would end at teacher
    layer 4 and never use the last two, so it is a UserError naming both counts and the keys that choose the map,
    unless the maps the loss uses are given explicitly. Dividing depths keep the uniform map."""
    import os
    from src.config import load_config
    from src.distill import student_layer_map
    from src.errors import UserError
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    teacher, student = TINY.replace(num_hidden_layers=6), TINY.replace(num_hidden_layers=4)

    def layer_map(s_cfg, *over, attention_weight=1.0):
        cfg = load_config(os.path.join(root, "configs", "td_mr.yaml"), list(over))
        return student_layer_map(cfg, teacher, s_cfg, attention_weight)

    with pytest.raises(UserError) as e:
        layer_map(student)
    msg = str(e.value)
    assert "teacher's 6 layers are not a multiple of the student's 4" in msg
    assert "layer_map.attention" in msg and "layer_map.hidden" in msg and "[0, 2, 3, 5, 6]" in msg
    assert msg.endswith("missing: layer_map.attention, layer_map.hidden")
    with pytest.raises(UserError, match="missing: layer_map.hidden$"):             # one explicit is not enough
        layer_map(student, "--layer_map.attention", "1", "2", "4", "5")
    assert layer_map(student, "--layer_map.attention", "1", "2", "4", "5", "--layer_map.hidden", "0", "2", "3", "5",
                     "6") == ([1, 2, 4, 5], [0, 2, 3, 5, 6])
    # a map the loss does not use need not be given
    assert layer_map(student, "--layer_map.hidden", "0", "2", "3", "5", "6", attention_weight=0.0)[1] == [0, 2, 3, 5, 6]
    with pytest.raises(UserError, match="missing: layer_map.attention$"):
        layer_map(student, "--layer_map.hidden", "0", "2", "3", "5", "6")
    # dividing depths: the uniform map, unchanged (6 -> 3, 6 -> 6; the shipped configs' 1 -> 1 of the tests)
    assert layer_map(TINY.replace(num_hidden_layers=3)) == ([1, 3, 5], [0, 2, 4, 6])
    assert layer_map(teacher) == ([0, 1, 2, 3, 4, 5], list(range(7)))
