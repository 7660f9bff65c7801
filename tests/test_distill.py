"""Distillation loss cells (src/distill.py): the frozen teacher, fit_dense, the cached-teacher phase-1 loss."""
import numpy as np
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
