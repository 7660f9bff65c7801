"""The fused LayerNorm / GELU CPU kernels (src/cpu_kernels.py): values and gradients against float64 references
and MindSpore's own ops, a whole model with and without them, the runtime switch, and the build."""
import math
import os
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from src import cpu_kernels, runtime
from src.config import load_config
from src.tinybert_model import BertConfig, BertForSequenceClassification
from tests.tiny_run import TINY, token_inputs
from src.distill import student_layer_map

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not on PATH: the kernels cannot be built")


class _Grad(nn.Cell):
    """(output, d<sum(output * sens)>/d input, d/d params) of `net` in graph mode."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)

    def construct(self, x, sens):
        return self.net(x), self.grad(self.net, self.params)(x, sens)


def _gelu64(x):
    erf = np.vectorize(math.erf)(x / math.sqrt(2.0))
    cdf = 0.5 * (1.0 + erf)
    return x * cdf, cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@needs_gxx
def test_gelu_matches_exact_gelu_in_float64():
    rng = np.random.default_rng(0)
    edges = [0.0, 1e-8, -1e-8, 0.5, -0.5, 3.0, -3.0, 5.0, -5.0, 9.0, -9.0, 14.0, -14.0, 40.0, -40.0, 1e4, -1e4]
    x = np.concatenate([rng.normal(0.0, 3.0, 4000 - len(edges)), np.array(edges)]).astype(np.float32).reshape(2, -1)
    sens = rng.normal(size=x.shape).astype(np.float32)
    y, (grads, _) = _Grad(cpu_kernels.FusedGELU())(ms.Tensor(x), ms.Tensor(sens))
    y_ref, dy_ref = _gelu64(x.astype(np.float64))
    scale = np.maximum(1.0, np.abs(x))
    assert np.max(np.abs(y.asnumpy() - y_ref) / scale) < 3e-7
    assert np.max(np.abs(grads[0].asnumpy() - sens * dy_ref)) < 2e-6
    tail = dict(zip(edges, y.asnumpy().reshape(-1)[-len(edges):]))
    assert tail[0.0] == 0.0 and tail[-1e4] == 0.0 and tail[1e4] == 1e4 and tail[40.0] == 40.0


@needs_gxx
@pytest.mark.parametrize("shape", [(3, 5, 37), (64, 384)])
def test_layernorm_matches_mindspore_and_float64(shape):
    rng = np.random.default_rng(1)
    h = shape[-1]
    x = (rng.normal(size=shape) * 3.0 + 1.5).astype(np.float32)
    sens = rng.normal(size=shape).astype(np.float32)
    gamma = rng.normal(size=h).astype(np.float32)
    beta = rng.normal(size=h).astype(np.float32)
    outs = {}
    for name, cell in (("fused", cpu_kernels.FusedLayerNorm(h, 1e-12)), ("ms", nn.LayerNorm((h,), epsilon=1e-12))):
        cell.gamma.set_data(ms.Tensor(gamma))
        cell.beta.set_data(ms.Tensor(beta))
        y, (gx, gp) = _Grad(cell)(ms.Tensor(x), ms.Tensor(sens))
        outs[name] = [y.asnumpy(), gx[0].asnumpy(), gp[0].asnumpy(), gp[1].asnumpy()]
    # float64 reference
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-12)
    xh = (x64 - mean) * rstd
    g = sens * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True))
    ref = [xh * gamma + beta, dx, (sens * xh).reshape(-1, h).sum(0), sens.reshape(-1, h).sum(0)]
    for name in ("fused", "ms"):
        for got, want in zip(outs[name], ref):
            assert np.max(np.abs(got - want)) <= 2e-5 * max(1.0, np.max(np.abs(want))), name
    for got, want in zip(outs["fused"], outs["ms"]):
        assert np.max(np.abs(got - want)) <= 2e-5 * max(1.0, np.max(np.abs(want)))


def _pair():
    cfg = BertConfig(**{**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    ms.set_seed(3)
    plain = BertForSequenceClassification(cfg)
    fused = BertForSequenceClassification(cfg.replace(fused_cpu_kernels=True))
    assert sorted(n for n, _ in plain.parameters_and_names()) == sorted(n for n, _ in fused.parameters_and_names())
    ms.load_param_into_net(fused, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in plain.get_parameters()},
                           strict_load=True)
    return plain, fused


class _Loss(nn.Cell):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, ids, types, mask, labels):
        logits, hidden, scores = self.model(ids, types, mask)
        return ops.cross_entropy(logits, labels) + 0.1 * (hidden[-1] * hidden[-1]).mean() + 1e-3 * scores[0].mean()


@needs_gxx
def test_model_with_fused_kernels_matches_mindspore_ops():
    """Same parameter names (checkpoints interchange), same logits / hidden states / scores and gradients."""
    plain, fused = _pair()
    assert any(isinstance(c, cpu_kernels.FusedLayerNorm) for _, c in fused.cells_and_names())
    assert any(isinstance(c, cpu_kernels.FusedGELU) for _, c in fused.cells_and_names())
    fused_types = (cpu_kernels.FusedLayerNorm, cpu_kernels.FusedGELU)
    assert not any(isinstance(c, fused_types) for _, c in plain.cells_and_names())
    ids, types, mask = token_inputs(seed=4, pad_row=1, pad_from=5)
    labels = ms.Tensor(np.array([0, 1], np.int32))
    results = []
    for model in (plain, fused):
        model.set_train(False)
        logits, hidden, scores = model(ids, types, mask)
        loss_net = _Loss(model)
        params = ms.ParameterTuple(model.trainable_params())
        grads = ms.grad(loss_net, grad_position=None, weights=params)(ids, types, mask, labels)
        results.append(([logits.asnumpy()] + [h.asnumpy() for h in hidden] + [s.asnumpy() for s in scores],
                        {p.name: g.asnumpy() for p, g in zip(params, grads)}))
    (out_a, grad_a), (out_b, grad_b) = results
    for a, b in zip(out_a, out_b):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert grad_a.keys() == grad_b.keys()
    for name in grad_a:
        np.testing.assert_allclose(grad_b[name], grad_a[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_runtime_flag_is_never_read_from_or_written_to_config_json(tmp_path):
    cfg = BertConfig(**TINY).replace(fused_cpu_kernels=True)
    assert "fused_cpu_kernels" not in cfg.to_dict()
    path = tmp_path / "config.json"
    cfg.to_json_file(str(path))
    assert BertConfig.from_json_file(str(path)).fused_cpu_kernels is False
    assert BertConfig.from_dict({**TINY, "fused_cpu_kernels": True}).fused_cpu_kernels is False


@needs_gxx
def test_run_switch_and_its_log_line(monkeypatch, tmp_path):
    run = load_config("configs/td_mr.yaml", [])
    assert run.fused_cpu_kernels is True and run.device_target == "CPU"
    assert runtime.fused_kernels(run) is True
    assert runtime.kernels_line(run).startswith("kernels: fused CPU LayerNorm, GELU, masked loss sums (cpu_kernels-")
    off = run.replace(fused_cpu_kernels=False)
    assert runtime.fused_kernels(off) is False
    assert runtime.kernels_line(off) == "kernels: MindSpore ops (fused_cpu_kernels false)"
    # no compiler: the run says why and uses MindSpore's ops
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("TINYBERT_KERNEL_DIR", str(tmp_path))
    cpu_kernels.library.cache_clear()
    try:
        assert runtime.fused_kernels(run) is False
        assert runtime.kernels_line(run) == ("kernels: MindSpore ops, fused_cpu_kernels unavailable: no C++ compiler: "
                                             "'no-such-compiler-here' is not on PATH")
    finally:
        cpu_kernels.library.cache_clear()
    assert os.listdir(tmp_path) == []


@needs_gxx
def test_build_is_keyed_by_source_and_leaves_no_partial_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYBERT_KERNEL_DIR", str(tmp_path))
    cpu_kernels.library.cache_clear()
    try:
        path = cpu_kernels.library()
        assert os.path.dirname(path) == str(tmp_path) and os.listdir(tmp_path) == [os.path.basename(path)]
        cpu_kernels.library.cache_clear()
        assert cpu_kernels.library() == path          # found, not rebuilt
        bad = tmp_path / "broken.cc"
        bad.write_text("extern \"C\" int GeluForward( {\n")
        monkeypatch.setattr(cpu_kernels, "SOURCE", str(bad))
        cpu_kernels.library.cache_clear()
        with pytest.raises(cpu_kernels.KernelBuildError, match="broken.cc"):
            cpu_kernels.library()
        assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path), "broken.cc"])
    finally:
        cpu_kernels.library.cache_clear()


@needs_gxx
@pytest.mark.parametrize("s_shape,w_shape", [((2, 3, 5, 5), (2, 1, 5, 5)), ((2, 5, 37), (2, 5, 1)),
                                             ((4, 6), (4, 6))])
def test_masked_squared_error_matches_float64(s_shape, w_shape):
    rng = np.random.default_rng(5)
    s = rng.normal(size=s_shape).astype(np.float32)
    t = rng.normal(size=s_shape).astype(np.float32)
    w = (rng.random(w_shape) > 0.4).astype(np.float32)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.sq = cpu_kernels.MaskedSquaredError()
            self.grad = ops.GradOperation(get_all=True)

        def construct(self, a, b, c):
            return self.sq(a, b, c), self.grad(self.sq)(a, b, c)

    out, (ds, dt, dw) = Net()(ms.Tensor(s), ms.Tensor(t), ms.Tensor(w))
    d = s.astype(np.float64) - t
    assert out.shape == (1,)
    assert abs(out.asnumpy()[0] - (d * d * w).sum()) <= 1e-6 * (d * d * w).sum()
    np.testing.assert_allclose(ds.asnumpy(), 2.0 * d * w, rtol=1e-6, atol=1e-7)
    assert not dt.asnumpy().any() and not dw.asnumpy().any()      # the target is a constant (frozen teacher)


@needs_gxx
def test_masked_squared_error_refuses_a_target_of_another_shape():
    """The kernel reads the target with the student's layout: a teacher with fewer heads ([2, 2, 5, 5] against
    [2, 4, 5, 5]) once read past its end (inf, or garbage) instead of failing."""
    sq = cpu_kernels.MaskedSquaredError()
    s, w = ms.Tensor(np.ones((2, 4, 5, 5), np.float32)), ms.Tensor(np.ones((2, 1, 5, 5), np.float32))
    with pytest.raises((ValueError, RuntimeError), match="differ in shape"):
        sq(s, ms.Tensor(np.ones((2, 2, 5, 5), np.float32)), w).asnumpy()


def test_attention_loss_checks_heads_per_mapped_layer():
    """A width sub-model teacher keeps num_attention_heads but has fewer heads per layer: the attention loss
    needs the mapped layers' counts to agree, which is checked per layer (it compared num_attention_heads only)."""
    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "td_mr.yaml"), [])
    teacher = BertConfig(**TINY).replace(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                                         layer_num_heads=[2, 2])
    student = teacher.replace(layer_num_heads=None)
    with pytest.raises(runtime.UserError, match="student layer 0 has 4, teacher layer 0 has 2"):
        student_layer_map(cfg, teacher, student, attention_weight=1.0)
    assert student_layer_map(cfg, teacher, student, attention_weight=0.0) == ([0, 1], [0, 1, 2])
    assert student_layer_map(cfg, teacher, teacher, attention_weight=1.0) == ([0, 1], [0, 1, 2])


@needs_gxx
def test_intermediate_loss_fused_matches_mindspore_ops():
    from src.distill import DistillLossConfig, FitDense, IntermediateLoss
    rng = np.random.default_rng(6)
    b, h, s, d = 3, 2, 7, 8
    mask = np.ones((b, s), np.int32)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    s_hidden = tuple(ms.Tensor(rng.normal(size=(b, s, 4)).astype(np.float32)) for _ in range(3))
    t_hidden = tuple(ms.Tensor(rng.normal(size=(b, s, d)).astype(np.float32)) for _ in range(5))
    s_scores = tuple(ms.Tensor(rng.normal(size=(b, h, s, s)).astype(np.float32)) for _ in range(2))
    t_scores = tuple(ms.Tensor(rng.normal(size=(b, h, s, s)).astype(np.float32)) for _ in range(4))
    ms.set_seed(1)
    fit = FitDense(4, d)
    results = []
    for fused in (False, True):
        net = IntermediateLoss(fit, [1, 3], [0, 2, 4], DistillLossConfig(), fused=fused)
        assert (net.sq_err is not None) == fused

        class Total(nn.Cell):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def construct(self, sh, ss, th, ts, m):
                att, rep = self.inner(sh, ss, th, ts, m)
                return att + 2.0 * rep

        total = Total(net)
        params = ms.ParameterTuple(fit.trainable_params())
        value = total(s_hidden, s_scores, t_hidden, t_scores, ms.Tensor(mask))
        grads = ms.grad(total, grad_position=(0, 1), weights=params)(s_hidden, s_scores, t_hidden, t_scores,
                                                                       ms.Tensor(mask))
        flat = [g.asnumpy() for group in grads for g in (group if isinstance(group, tuple) else (group,))
                for g in (g if isinstance(g, tuple) else (g,))]
        results.append((float(value.asnumpy()), flat))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    assert len(results[0][1]) == len(results[1][1])
    for a, b in zip(*(r[1] for r in results)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@needs_gxx
def test_threads_split_rows_without_changing_results():
    """With 2 or 3 threads a kernel splits its rows (tensors large enough: >= 65536 elements a thread): every
    result, the row-summed ones (dgamma, dbeta, the masked sums) included, is bitwise the one of 1 thread (sums
    over fixed chunks, added in chunk order)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(512, 384)).astype(np.float32)
    sens = rng.normal(size=x.shape).astype(np.float32)
    t = rng.normal(size=(8, 12, 64, 64)).astype(np.float32)
    s = rng.normal(size=t.shape).astype(np.float32)
    w = (rng.random((8, 1, 64, 64)) > 0.3).astype(np.float32)
    gelu, ln, sq = cpu_kernels.FusedGELU(), cpu_kernels.FusedLayerNorm(384, 1e-12), cpu_kernels.MaskedSquaredError()
    ln.gamma.set_data(ms.Tensor(rng.normal(size=384).astype(np.float32)))
    results = {}
    previous = cpu_kernels.set_threads(1)
    try:
        for threads in (1, 2, 3):
            cpu_kernels.set_threads(threads)
            y, (gx, _) = _Grad(gelu)(ms.Tensor(x), ms.Tensor(sens))
            z, (lx, lp) = _Grad(ln)(ms.Tensor(x), ms.Tensor(sens))
            results[threads] = [y.asnumpy(), gx[0].asnumpy(), z.asnumpy(), lx[0].asnumpy(), lp[0].asnumpy(),
                                lp[1].asnumpy(), sq(ms.Tensor(s), ms.Tensor(t), ms.Tensor(w)).asnumpy()]
    finally:
        cpu_kernels.set_threads(previous)
    for threads in (2, 3):
        for i in range(7):
            assert np.array_equal(results[1][i], results[threads][i]), (threads, i)
