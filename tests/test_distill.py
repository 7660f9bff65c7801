"""Train step (clipping, loss scale), LR schedule, frozen teacher, layer-copy init and the batcher."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops, Parameter

from src.distill import (FitDense, FrozenTeacher, TrainStep, WarmupLinearDecayLR, build_optimizer)
from src.tinybert_model import BertConfig, BertForSequenceClassification, BertModel
from src.errors import UserError
from src.trainer import ArrayBatcher


class LinearLoss(nn.Cell):
    """loss = sum(w * x): dL/dw = x exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = Parameter(ms.Tensor(np.asarray(w, np.float32)), name="w")

    def construct(self, x):
        loss = (self.w * x).sum()
        return loss, (loss,)


@pytest.mark.parametrize("mode", ["global", "per_tensor", "none"])
def test_train_step_clips_gradients(mode):
    x = np.array([3.0, 4.0], np.float32)                   # |grad| = 5
    net = LinearLoss([1.0, 1.0])
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.1), clip_norm=1.0, clip_mode=mode)
    step.set_train(True)
    loss, _, norm = step(ms.Tensor(x))
    assert float(norm.asnumpy()) == pytest.approx(5.0)
    g = x / 5.0 if mode != "none" else x                  # one tensor: global and per-tensor agree
    np.testing.assert_allclose(net.w.asnumpy(), 1.0 - 0.1 * g, rtol=1e-6)
    assert float(loss.asnumpy()) == pytest.approx(7.0)


class TwoLinearLoss(nn.Cell):
    """loss = sum(a * x) + sum(b * y): dL/da = x, dL/db = y."""

    def __init__(self):
        super().__init__()
        self.a = Parameter(ms.Tensor(np.ones(2, np.float32)), name="a")
        self.b = Parameter(ms.Tensor(np.ones(2, np.float32)), name="b")

    def construct(self, x, y):
        loss = (self.a * x).sum() + (self.b * y).sum()
        return loss, (loss,)


@pytest.mark.parametrize("mode", ["global", "per_tensor"])
def test_train_step_clip_modes_differ_on_two_tensors(mode):
    x, y = np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32)   # norms 5 and 0.5
    net = TwoLinearLoss()
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.1), clip_norm=1.0, clip_mode=mode)
    step.set_train(True)
    _, _, norm = step(ms.Tensor(x), ms.Tensor(y))
    total = np.sqrt(25.0 + 0.25)
    assert float(norm.asnumpy()) == pytest.approx(total, rel=1e-6)       # the global norm is logged in both modes
    ga, gb = (x / total, y / total) if mode == "global" else (x / 5.0, y)  # per tensor: only a's norm is over 1
    np.testing.assert_allclose(net.a.asnumpy(), 1.0 - 0.1 * ga, rtol=1e-6)
    np.testing.assert_allclose(net.b.asnumpy(), 1.0 - 0.1 * gb, rtol=1e-6)


def test_train_step_loss_scale_unscales_and_skips_overflow():
    x = np.array([0.3, 0.4], np.float32)
    net = LinearLoss([1.0, 1.0])
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.1), clip_mode="none", loss_scale=1024.0)
    step.set_train(True)
    step(ms.Tensor(x))
    np.testing.assert_allclose(net.w.asnumpy(), 1.0 - 0.1 * x, rtol=1e-6)  # same update as without scaling
    before = net.w.asnumpy().copy()
    step(ms.Tensor(np.array([np.inf, 1.0], np.float32)))   # overflow: the step is skipped
    np.testing.assert_array_equal(net.w.asnumpy(), before)


def test_warmup_linear_decay_schedule():
    lr = WarmupLinearDecayLR(1e-3, total_steps=10, warmup_steps=2, end_lr=0.0)
    host = [lr.value(s) for s in range(11)]
    assert host[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert host[6] == pytest.approx(1e-3 * (1 - 4 / 8))
    assert host[10] == pytest.approx(0.0)
    graph = [float(lr(ms.Tensor(s, ms.int32)).asnumpy()) for s in (1, 6)]
    assert graph == pytest.approx([host[1], host[6]], rel=1e-6)


def test_optimizer_decay_filter():
    cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    net = BertForSequenceClassification(cfg)
    opt = build_optimizer(net.trainable_params(), 1e-3, weight_decay=0.01)
    decay = {p.name for p, d in zip(opt.parameters, opt.decay_flags) if d}
    assert "bert.encoder.0.attention.query.weight" in decay
    assert not any(("LayerNorm" in n or n.endswith("bias")) for n in decay)


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


def _arrays(n=10, seq=8):
    rng = np.random.default_rng(0)
    lengths = np.array([2, 3, 8, 8, 4, 7, 2, 5, 6, 3])[:n]
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": rng.integers(1, 30, (n, seq)) * mask, "input_mask": mask,
            "segment_ids": np.zeros((n, seq), np.int32), "label_ids": np.arange(n, dtype=np.int32)}


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


def test_bucketed_predict_gives_the_same_logits_in_row_order():
    """Teacher-logit caching runs rows grouped by length with the padding trimmed: same logits, same order."""
    from src.tinybert_model import LogitsOnly
    from src.trainer import predict
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
