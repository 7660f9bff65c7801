"""The train step (clipping, loss scale), the LR schedule, the optimizer's decay filter and the one total-steps
rule (src/train_step.py)."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, Parameter

from src.tinybert_model import BertConfig, BertForSequenceClassification
from src.train_step import TrainStep, WarmupLinearDecayLR, build_optimizer, epochs_to_run, total_steps


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


def test_total_steps_is_epochs_capped_by_max_steps():
    assert total_steps(7, 3, 0) == 21                      # max_steps 0 = every epoch
    assert total_steps(7, 3, 10) == 10 and total_steps(7, 3, 50) == 21
    assert total_steps(7, 0, 10) == 10 and epochs_to_run(7, 0, 10) == 2     # epochs 0: exactly max_steps
    assert epochs_to_run(7, 0, 14) == 2 and epochs_to_run(7, 3, 10) == 3


class TwoLinearLoss(nn.Cell):
    """loss = sum(a * x) + sum(b * y): dL/da = x, dL/db = y."""

    def __init__(self):
        super().__init__()
        self.a = Parameter(ms.Tensor(np.ones(2, np.float32)), name="a")
        self.b = Parameter(ms.Tensor(np.ones(2, np.float32)), name="b")

    def construct(self, x, y):
        loss = (self.a * x).sum() + (self.b * y).sum()
        return loss, (loss,)
