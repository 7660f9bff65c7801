"""Quantizers (TWN, LAT, min-max, 8-bit activation fake-quant) in graph mode: values on hand-made tensors, STE
gradients against the analytic ones, error bounds, role-based wrapping of a model, LAT's Adam Hessian proxy."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from src import quant
from src.train_step import TrainStep, build_optimizer
from src.quant import (ActQuantizer, LatHessianRefresh, QuantConfig, StepWithHessian, WeightQuantizer,
                       quantize_model, quantized_state, role_params)
from src.tinybert_model import BertConfig, BertForSequenceClassification, LogitsOnly
import tiny_run


class Fn(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, *x):
        return self.fn(*x)


def twn_tensor(x):
    return quant.twn(x, False)


def twn_rows(x):
    return quant.twn(x, True)


def lat10(x, d):
    return quant.lat(x, d, False, 10)


def lat_rows(x, d):
    return quant.lat(x, d, True, 10)


def T(x):
    return ms.Tensor(np.asarray(x, np.float32))


def test_twn_per_tensor_hand_made():
    w = np.array([[0.1, -0.5, 0.9], [-1.2, 0.05, 0.3]], np.float32)
    # mean|w| = 3.05/6, Delta = 0.7 * 0.508333 = 0.355833 -> kept {-0.5, 0.9, -1.2}, alpha = 2.6/3
    out = Fn(twn_tensor)(T(w)).asnumpy()
    a = np.float32(2.6) / np.float32(3.0)
    np.testing.assert_allclose(out, [[0, -a, a], [-a, 0, 0]], rtol=1e-6)
    assert np.unique(out).size == 3


def test_twn_per_row_hand_made():
    w = np.array([[0.1, -0.5, 0.9, 0.0], [-4.0, 1.0, 0.1, 3.0]], np.float32)
    # row 0: mean .375, Delta .2625 -> {-0.5, 0.9}, alpha 0.7;  row 1: mean 2.025, Delta 1.4175 -> {-4, 3}, alpha 3.5
    out = Fn(twn_rows)(T(w)).asnumpy()
    np.testing.assert_allclose(out, [[0, -0.7, 0.7, 0], [-3.5, 0, 0, 3.5]], rtol=1e-6)
    for row in out:
        assert np.unique(np.abs(row[row != 0])).size == 1


def test_weight_clip_applies_before_delta_and_alpha():
    w = np.array([[4.0, -0.2, 1.0, 0.0]], np.float32)
    # clipped to 2.5: mean 0.925, Delta 0.6475 -> {2.5, 1.0}, alpha 1.75 (unclipped would be 2.5)
    out = Fn(WeightQuantizer(2, "twn", clip=2.5))(T(w)).asnumpy()
    np.testing.assert_allclose(out, [[1.75, 0, 1.75, 0]], rtol=1e-6)


def test_lat_d1_moves_support_and_alpha():
    w = np.array([[0.55, 1.0, 1.0, -1.0, 1.0]], np.float32)
    # TWN: Delta 0.637 -> 0.55 dropped, alpha 1.0. LAT (D=1): threshold alpha/2 = 0.5 takes 0.55 back in,
    # alpha = 4.55 / 5 = 0.91, threshold 0.455: fixed point.
    twn = Fn(WeightQuantizer(2, "twn", clip=0))(T(w)).asnumpy()
    lat = Fn(WeightQuantizer(2, "lat_d1", clip=0))(T(w)).asnumpy()
    np.testing.assert_allclose(twn, [[0, 1, 1, -1, 1]], rtol=1e-6)
    np.testing.assert_allclose(lat, [[0.91, 0.91, 0.91, -0.91, 0.91]], rtol=1e-6)


def test_lat_hessian_weights_alpha():
    w = np.array([0.2, 0.5, 1.0, -2.0], np.float32)
    d = np.array([1.0, 1.0, 3.0, 1.0], np.float32)
    # support {1.0, -2.0}: alpha = (3*1 + 1*2) / (3 + 1) = 1.25; threshold 0.625 keeps the support
    out = Fn(lat10)(T(w), T(d)).asnumpy()
    np.testing.assert_allclose(out, [0, 0, 1.25, -1.25], rtol=1e-6)


def test_lat_per_row_hand_made():
    """quant.weight_method lat with weight_rowwise: each row its own TWN start, threshold and D-weighted alpha
    (the rows are the two cases above; per tensor they would share one alpha)."""
    w = np.array([[0.55, 1.0, 1.0, -1.0, 1.0], [0.2, 0.5, 1.0, -2.0, 0.0]], np.float32)
    d = np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 3.0, 1.0, 1.0]], np.float32)
    # row 0 (D = 1): TWN Delta 0.637 drops 0.55, threshold alpha/2 = 0.5 takes it back, alpha 4.55 / 5 = 0.91
    # row 1: mean 0.74, Delta 0.518 -> {1.0, -2.0}, alpha (3*1 + 2) / (3 + 1) = 1.25, threshold 0.625 keeps it
    out = Fn(lat_rows)(T(w), T(d)).asnumpy()
    np.testing.assert_allclose(out, [[0.91, 0.91, 0.91, -0.91, 0.91], [0, 0, 1.25, -1.25, 0]], rtol=1e-6)
    shared = Fn(lat10)(T(w), T(d)).asnumpy()
    assert np.unique(np.abs(shared[shared != 0])).size == 1


def test_minmax_4bit_values():
    w = np.linspace(-1.0, 2.0, 50, dtype=np.float32).reshape(5, 10)
    out = Fn(WeightQuantizer(4, clip=0))(T(w)).asnumpy()
    s = np.float32(3.0) / np.float32(15.0)
    assert np.unique(out).size == 16
    assert np.abs(out - w).max() <= s / 2 + 1e-6


class GradW(nn.Cell):
    """dL/dw of L = sum((x @ q(w)^T) * g), compiled as one graph."""

    def __init__(self, wq, w):
        super().__init__()
        self.wq = wq
        self.w = ms.Parameter(T(w), name="w")
        self.grad = ops.GradOperation(get_by_list=True)
        self.params = ms.ParameterTuple([self.w])

    def loss(self, x, g):
        return (ops.matmul(x, self.wq(self.w).T) * g).sum()

    def construct(self, x, g):
        return self.grad(self.loss, self.params)(x, g)[0]


def test_weight_ste_gradient_is_analytic_in_graph_mode():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    w[0, 0], w[2, 3] = 3.1, -2.9                       # outside the clip range: zero gradient
    x = rng.standard_normal((5, 6)).astype(np.float32)
    g = rng.standard_normal((5, 4)).astype(np.float32)
    got = GradW(WeightQuantizer(2, "twn", clip=2.5), w)(T(x), T(g)).asnumpy()
    expect = (g.T @ x) * (np.abs(w) <= 2.5)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    assert got[0, 0] == 0 and got[2, 3] == 0


def _sym_ref(xc, amax):
    """numpy float32 of src/quant.py sym_quant: s = 127 / amax, floor(x * s + 0.5) / s."""
    s = np.float32(127.0) / np.float32(amax)
    return np.floor(xc * s + np.float32(0.5)) / s


def test_activation_ste_gradient_and_sym_error_bound():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 7, 5)) * 1.5).astype(np.float32)
    aq = ActQuantizer(8, "sym", "dynamic", clip=2.5)
    out = Fn(aq)(T(x)).asnumpy()
    xc = np.clip(x, -2.5, 2.5)
    step = np.abs(xc).max() / 127
    assert np.abs(out - xc).max() <= step / 2 * (1 + 1e-5)
    np.testing.assert_array_equal(out, _sym_ref(xc, np.abs(xc).max()))       # exact values
    assert (out != xc).any() and np.unique(out).size <= 255
    grad = ops.GradOperation(sens_param=True)(Fn(aq))
    g = rng.standard_normal(x.shape).astype(np.float32)
    got = Fn(grad)(T(x), T(g)).asnumpy()
    np.testing.assert_allclose(got, g * (np.abs(x) <= 2.5), rtol=1e-6)


def test_sym_dynamic_scale_is_max_abs_over_the_whole_tensor():
    """No clip: s = 127 / max|x| of the whole batch (not per row, not max x): the largest |x| is one negative value
    in row 0, so every other row's values depend on it."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.0, 1.0, (4, 9)).astype(np.float32)
    x[0, 2] = -3.7
    out = Fn(ActQuantizer(8, "sym", "dynamic", clip=0))(T(x)).asnumpy()
    np.testing.assert_array_equal(out, _sym_ref(x, 3.7))
    per_row = np.concatenate([_sym_ref(r[None], np.abs(r).max()) for r in x])
    assert not np.array_equal(out[1:], per_row[1:]) and not np.array_equal(out, _sym_ref(x, x.max()))
    assert (out != x).any()


def _asym_ref(x, lo, hi):
    """numpy float32 of src/quant.py asym_quant on clip(x, lo, hi): s = (hi - lo) / 255, zp = floor(-lo / s + 0.5),
    q = clip(floor(x / s + 0.5) + zp, 0, 255), (q - zp) * s."""
    lo, hi, half = np.float32(lo), np.float32(hi), np.float32(0.5)
    s = (hi - lo) / np.float32(255.0)
    zp = np.floor(-lo / s + half)
    q = np.clip(np.floor(np.clip(x, lo, hi) / s + half) + zp, 0.0, 255.0)
    return ((q - zp) * s).astype(np.float32)


def test_asym_ema_update_and_frozen_inference():
    x1 = np.array([[-1.0, 0.5, 3.0]], np.float32)
    aq = ActQuantizer(8, "asym", clip=2.5, ema_decay=0.9)
    net = Fn(aq)
    net.set_train(True)
    net(T(x1))
    lo = min(0.9 * -2.5 + 0.1 * -1.0, 0.0)
    hi = max(0.9 * 2.5 + 0.1 * 3.0, 0.0)
    assert float(aq.ema_min.asnumpy()) == pytest.approx(lo, rel=1e-6)
    assert float(aq.ema_max.asnumpy()) == pytest.approx(hi, rel=1e-6)
    net.set_train(False)
    x = np.linspace(-2.0, 2.5, 40, dtype=np.float32).reshape(2, 20)
    out = net(T(x)).asnumpy()
    s = (hi - lo) / 255
    assert np.abs(out - x).max() <= s / 2 + 1e-6
    np.testing.assert_array_equal(out, _asym_ref(x, aq.ema_min.asnumpy(), aq.ema_max.asnumpy()))
    assert (out != x).any()
    # 0.0 is exactly representable (rounded zero point); beyond the frozen range values saturate at its ends
    edge = np.array([[0.0, -9.0, lo - 0.3, 9.0, hi + 0.3, hi]], np.float32)
    got = net(T(edge)).asnumpy()
    np.testing.assert_array_equal(got, _asym_ref(edge, aq.ema_min.asnumpy(), aq.ema_max.asnumpy()))
    assert got[0, 0] == 0.0 and got[0, 1] == got[0, 2] and got[0, 3] == got[0, 4] == got[0, 5]
    assert got[0, 1] == pytest.approx(lo, abs=s / 2) and got[0, 3] == pytest.approx(hi, abs=s / 2)
    assert float(aq.ema_max.asnumpy()) == pytest.approx(hi, rel=1e-6)   # frozen at inference
    np.testing.assert_array_equal(net(T(x[:1])).asnumpy(), out[:1])     # batch-independent


def test_sym_ema_scale_is_frozen_at_inference():
    aq = ActQuantizer(8, "sym", "ema", clip=0, ema_decay=0.5)
    net = Fn(aq)
    net.set_train(True)
    net(T([[1.0, -2.0]]))                 # first batch initialises the EMA: 2.0
    net(T([[4.0, 0.0]]))                  # 0.5 * 2 + 0.5 * 4 = 3.0
    assert float(aq.amax.asnumpy()) == pytest.approx(3.0)
    net.set_train(False)
    big = net(T([[10.0, 1.5]])).asnumpy()
    np.testing.assert_allclose(big, [[3.0, np.round(1.5 * 127 / 3) * 3 / 127]], rtol=1e-6)   # saturates


@pytest.mark.parametrize("kw,msg", [({"weight_bits": 3}, r"weight_bits 3 not supported"),
                                    ({"embedding_bits": 1}, r"embedding_bits 1 not supported"),
                                    ({"activation_bits": 4}, r"activation_bits 4 not supported"),
                                    ({"weight_method": "xnor"}, r"weight_method 'xnor'"),
                                    ({"roles": ["classifier"]}, r"roles \['classifier'\]")])
def test_quant_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        QuantConfig(**kw)


TINY = BertConfig(**tiny_run.TINY)


def _inputs():
    return tiny_run.token_inputs(seed=2, pad_row=1, pad_from=5)


def test_roles_select_weights_and_names_do_not_change():
    ms.set_seed(0)
    model = BertForSequenceClassification(TINY)
    names = [n for n, _ in model.parameters_and_names()]
    fp = LogitsOnly(model)
    fp.set_train(False)
    ref = fp(*_inputs()).asnumpy()
    qcfg = QuantConfig(roles=["query", "ffn_in", "word_embedding"], activation_bits=32)
    layout = role_params(model, qcfg)
    assert sorted(layout) == ["bert.embeddings.word_embeddings.embedding_table",
                              "bert.encoder.0.attention.query.weight", "bert.encoder.0.ffn.intermediate.weight"]
    assert layout["bert.embeddings.word_embeddings.embedding_table"]["rowwise"] is True
    quantize_model(model, qcfg)
    assert [n for n, _ in model.parameters_and_names()] == names            # same checkpoint names
    state = quantized_state(model)
    assert np.unique(state["bert.encoder.0.attention.key.weight"]).size > 3   # not a chosen role
    assert np.unique(state["bert.encoder.0.attention.query.weight"]).size == 3
    # the forward pass uses exactly these weights: a plain model loaded with them gives the same logits
    plain = BertForSequenceClassification(TINY)
    for n, p in plain.parameters_and_names():
        p.set_data(ms.Tensor(state[n]))
    q_net, p_net = LogitsOnly(model), LogitsOnly(plain)
    q_net.set_train(False)
    p_net.set_train(False)
    np.testing.assert_allclose(q_net(*_inputs()).asnumpy(), p_net(*_inputs()).asnumpy(), rtol=0, atol=1e-6)
    assert np.abs(q_net(*_inputs()).asnumpy() - ref).max() > 1e-4


def test_rowwise_dense_weights_have_one_alpha_per_output_row_and_pack_exactly(tmp_path):
    """quant.weight_rowwise: each Dense weight [out, in] gets TWN per output row (numpy reference on the clipped
    latent weight), the layout says so, and the packed file unpacks to the same values."""
    from src.packing import pack, unpack
    ms.set_seed(0)
    model = BertForSequenceClassification(TINY.replace(initializer_range=0.3))
    latent = {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}
    qcfg = QuantConfig(weight_rowwise=True, activation_bits=32)
    assert "TWN per row" in qcfg.describe()
    layout = role_params(model, qcfg)
    name = "bert.encoder.0.ffn.intermediate.weight"
    assert layout[name]["rowwise"] is True and layout["bert.embeddings.word_embeddings.embedding_table"]["rowwise"]
    assert role_params(model, QuantConfig())[name]["rowwise"] is False
    quantize_model(model, qcfg)
    state = quantized_state(model)
    w = np.clip(latent[name], -2.5, 2.5).astype(np.float64)
    a = np.abs(w)
    keep = a > 0.7 * a.mean(axis=1, keepdims=True)
    alpha = (a * keep).sum(axis=1, keepdims=True) / keep.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(state[name], np.sign(w) * keep * alpha, rtol=1e-5, atol=1e-7)
    assert np.unique(np.round(alpha, 6)).size == w.shape[0]          # a different alpha in every row
    pack(state, TINY.replace(initializer_range=0.3), qcfg, str(tmp_path / "m.tpack"))
    got, _, q2, _, _ = unpack(str(tmp_path / "m.tpack"))
    assert q2.weight_rowwise is True
    for n in layout:
        np.testing.assert_array_equal(got[n], state[n])


class _SquaredLogits(nn.Cell):
    """A train-step loss: the sum of squared logits (loss, (loss,))."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def construct(self, a, b, c):
        loss = (self.m(a, b, c)[0] ** 2).sum()
        return loss, (loss,)


def test_lat_hessian_proxy_is_adam_second_moment():
    ms.set_seed(0)
    model = BertForSequenceClassification(TINY)
    quantize_model(model, QuantConfig(weight_method="lat", activation_bits=32, roles=["query", "pooler"]))

    opt = build_optimizer(model.trainable_params(), 1e-3, 0.0)
    step = StepWithHessian(TrainStep(_SquaredLogits(model), opt, clip_mode="none"), LatHessianRefresh(model, opt))
    step.set_train(True)
    step(*_inputs())
    wq = model.bert.encoder[0].attention.query.weight_quant
    names = [p.name for p in opt.parameters]
    v = opt.moments2[names.index(model.bert.encoder[0].attention.query.weight.name)].asnumpy()
    assert v.max() > 0
    np.testing.assert_allclose(wq.lat_hessian.asnumpy(), np.sqrt(v) + 1e-8, rtol=1e-6)
    assert not any(n.endswith("lat_hessian") for n in quantized_state(model))


def test_lat_refresh_follows_any_lat_weight():
    """with_lat_refresh wraps the step whenever a weight is LAT-quantized: here only the ternary word embedding
    (8-bit Dense weights are min-max); its D = sqrt(Adam v) + eps after a step (run_ternary once wrapped only when
    the Dense weights were ternary, so this D stayed all ones). TWN: the step itself."""
    from src.quant import with_lat_refresh
    ms.set_seed(0)
    model = BertForSequenceClassification(TINY)
    quantize_model(model, QuantConfig(weight_method="lat", weight_bits=8, embedding_bits=2, activation_bits=32))

    opt = build_optimizer(model.trainable_params(), 1e-3, 0.0)
    plain = TrainStep(_SquaredLogits(model), opt, clip_mode="none")
    step, count = with_lat_refresh(plain, model, opt)
    assert isinstance(step, StepWithHessian) and step.refresh.count == count == 1
    step(*_inputs())
    emb = model.bert.embeddings.word_embeddings
    wq = emb.weight_quant
    names = [p.name for p in opt.parameters]
    v = opt.moments2[names.index(emb.embedding_table.name)].asnumpy()
    assert v.max() > 0
    np.testing.assert_allclose(wq.lat_hessian.asnumpy(), np.sqrt(v) + 1e-8, rtol=1e-6)
    twn = BertForSequenceClassification(TINY)
    quantize_model(twn, QuantConfig())
    opt2 = build_optimizer(twn.trainable_params(), 1e-3, 0.0)
    plain2 = TrainStep(_SquaredLogits(twn), opt2, clip_mode="none")
    same, count = with_lat_refresh(plain2, twn, opt2)
    assert same is plain2 and count == 0
