"""TernaryBERT in integer kernels (src/ternary_int8.py, `export.py --ternary --int8`): on a hand-built graph in the
export's fake-quant pattern the rewrite computes exactly (a * alpha) * (round(x / a) @ C^T) + bias; look-alike
patterns are left alone; a tiny packed TernaryBERT model (dynamic and EMA scales) exports with every quantized
matmul as MatMulInteger (fused by onnxruntime into MatMulIntegerToFloat), its word embedding as int8 codes, and on
64 rows of real logits the fp32 file equals the checkpoint within 1e-4, the int8 file up to rare one-step rounding
differences; bench_int8 evaluates that file like run_eval_onnx.py; bad uses are one-line errors that leave no
file."""
import os

import numpy as np
import pytest
import mindspore as ms
import onnx
from onnx import TensorProto, helper, numpy_helper

from src.errors import UserError
from src.ort_cpu import ort_session
from src.ternary_int8 import integerize_model
import tiny_run

R, K, N = 6, 16, 8                       # rows, input width, output width of the hand-built graph


def _fake_quant(x, p, half=0.5, levels=127.0, axes=()):
    """Nodes of src/quant.py's dynamic symmetric fake-quant as MindSpore exports it; output name p + '.y'."""
    c = lambda n, v: helper.make_node("Constant", [], [p + n], value=helper.make_tensor(p + n, TensorProto.FLOAT,
                                                                                          [], [v]))
    return [c(".eps", 1e-8), c(".lv", levels), c(".half", half),
            helper.make_node("Abs", [x], [p + ".abs"]),
            _reduce_max(p, axes),
            helper.make_node("Max", [p + ".max", p + ".eps"], [p + ".amax"]),
            helper.make_node("Div", [p + ".lv", p + ".amax"], [p + ".s"]),
            helper.make_node("Mul", [x, p + ".s"], [p + ".xs"]),
            helper.make_node("Add", [p + ".xs", p + ".half"], [p + ".xh"]),
            helper.make_node("Floor", [p + ".xh"], [p + ".f"]),
            helper.make_node("Div", [p + ".f", p + ".s"], [p + ".q"]),
            helper.make_node("Sub", [x, x], [p + ".zero"]),
            helper.make_node("Add", [p + ".q", p + ".zero"], [p + ".y"])]


def _reduce_max(p, axes):
    """ReduceMax as MindSpore writes it: keepdims 0 and an `axes` attribute, empty for the whole tensor."""
    n = helper.make_node("ReduceMax", [p + ".abs"], [p + ".max"], keepdims=0)
    n.attribute.append(helper.make_attribute("axes", list(axes), attr_type=onnx.AttributeProto.INTS))
    return n


def _graph(w, half=0.5, levels=127.0, axes=()):
    """x [R, K] -> fake-quant -> Gemm(W^T, b) -> out [R, N]; y [2, R, K] -> fake-quant pair -> y_a @ y_b^T."""
    rng = np.random.default_rng(0)
    b = rng.normal(size=N).astype(np.float32)
    nodes = _fake_quant("x", "fx", half, levels, axes) + [
        helper.make_node("Gemm", ["fx.y", "W", "b"], ["out"], transB=1)]
    nodes += _fake_quant("ya", "fa") + _fake_quant("yb", "fb") + [
        helper.make_node("Transpose", ["fb.y"], ["fbT"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["fa.y", "fbT"], ["scores"])]
    f = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
    g = helper.make_graph(nodes, "g", [f("x", [R, K]), f("ya", [2, R, K]), f("yb", [2, R, K])],
                          [f("out", [R, N]), f("scores", [2, R, R])],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]), b


def _run(model, feeds, path):
    onnx.save(model, str(path))
    return ort_session(str(path), 2).run(None, feeds)


def _quant_ref(x):
    """numpy: (round half to even of x / a, a) with a = max|x| / 127 in fp32, as QuantizeLinear computes it."""
    a = np.float32(np.abs(x).max()) / np.float32(127.0)
    return np.rint(x / a).astype(np.float64), float(a)


@pytest.mark.parametrize("per_row", [False, True])
def test_rewrite_computes_the_integer_product_exactly(per_row, tmp_path):
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 2, size=(N, K)).astype(np.float32)
    # one alpha, or one per output row (quant.weight_rowwise): W = alpha[:, None] * C
    alpha = (np.linspace(0.2, 0.9, N) if per_row else np.full(N, 0.37)).astype(np.float32)
    model, bias = _graph(alpha[:, None] * codes)
    feeds = {"x": rng.normal(size=(R, K)).astype(np.float32) * 3,
             "ya": rng.normal(size=(2, R, K)).astype(np.float32), "yb": rng.normal(size=(2, R, K)).astype(np.float32)}
    fp32_out, fp32_scores = _run(model, feeds, tmp_path / "fp32.onnx")
    counts = integerize_model(model)
    assert counts == {"dense": 1, "attention": 1, "embedding": 0, "dense_fp32": 0}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("QuantizeLinear") == 3
    assert "Floor" not in ops and "Gemm" not in ops and "W" not in {t.name for t in model.graph.initializer}
    codes_init = [t for t in model.graph.initializer if t.name.endswith(".codes")]
    assert len(codes_init) == 1 and np.array_equal(numpy_helper.to_array(codes_init[0]), codes.T.astype(np.int8))
    alpha_init = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".alpha")]
    assert len(alpha_init) == 1 and alpha_init[0].shape == ((N,) if per_row else ())
    out, scores = _run(model, feeds, tmp_path / "int8.onnx")
    q, a = _quant_ref(feeds["x"])
    want = a * (q @ codes.T.astype(np.float64)) * alpha.astype(np.float64) + bias
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)
    qa, aa = _quant_ref(feeds["ya"])
    qb, ab = _quant_ref(feeds["yb"])
    np.testing.assert_allclose(scores, aa * ab * (qa @ qb.transpose(0, 2, 1)), rtol=1e-6, atol=1e-5)
    # and the fp32 fake-quant graph it replaces gives the same values up to the rounding of its fp32 sums (no .5
    # ties in these random inputs: round-half-up and half-to-even agree)
    np.testing.assert_allclose(out, fp32_out, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores, fp32_scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("change", ["half", "levels", "two_alphas", "per_row_max"])
def test_lookalikes_are_left_in_fp32(change):
    rng = np.random.default_rng(2)
    w = (0.3 * rng.integers(-1, 2, size=(N, K))).astype(np.float32)
    w[:, 0], w[:, 1] = 0.3, -0.3                              # every row has non-zero codes
    if change == "two_alphas":
        w[0, : K // 2] *= 2                                   # two alphas in one output row: not ternary
    model, _ = _graph(w, half=0.4 if change == "half" else 0.5, levels=100.0 if change == "levels" else 127.0,
                      axes=[1] if change == "per_row_max" else [])
    counts = integerize_model(model)
    assert counts["dense"] == 0 and counts["dense_fp32"] == (1 if change == "two_alphas" else 0)
    assert [n.op_type for n in model.graph.node].count("Gemm") == 1


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Tiny packed TernaryBERT artefacts (dynamic and EMA activation scales, 8-bit weights, asymmetric activations)
    + config.json. The EMA scales are calibrated on a few training-mode batches."""
    from src.packing import pack
    from src.quant import QuantConfig, quantize_model, quantized_state
    from src.tinybert_model import BertConfig, BertForSequenceClassification
    d = tmp_path_factory.mktemp("tern")
    cfg = BertConfig(**tiny_run.TINY)
    cfg.to_json_file(str(d / "config.json"))
    out = {"dir": d, "config": str(d / "config.json"), "cfg": cfg}
    for name, q in (("dynamic", QuantConfig()), ("ema", QuantConfig(activation_scale="ema")),
                    ("w8", QuantConfig(weight_bits=8)), ("asym", QuantConfig(activation_mode="asym")),
                    ("rowwise", QuantConfig(weight_rowwise=True))):
        ms.set_seed(0)
        model = BertForSequenceClassification(cfg.replace(initializer_range=0.3))
        quantize_model(model, q)
        if name == "ema":         # frozen scales from real activations (a fresh EMA scale is 0: all logits 0)
            assert min(tiny_run.calibrate(model).values()) > 0.1
        pack(quantized_state(model), cfg, q, str(d / f"{name}.tpack"))
        out[name] = str(d / f"{name}.tpack")
    return out


@pytest.mark.parametrize("scale", ["dynamic", "ema", "rowwise"])
def test_export_int8_of_a_packed_ternary_model(packed, scale, tmp_path):
    """64 rows of real (non-zero, row-dependent) logits: the fp32 fake-quant file equals the packed model up to fp32
    rounding; the integer-kernel file rounds activations half to even from a scale computed as max|x| / 127
    (the fake-quant: half up, from 127 / max|x|), so a value near a rounding tie can move one step: at least 90 %
    of its logits within 1e-4, none off by more than 10 % of the largest, argmax equal on >= 95 % of the rows."""
    from src.export import OnnxRunner, export_checkpoint, sample_inputs
    from src.packing import build_ternary_inference_model
    b, s, layers = 64, tiny_run.SEQ, packed["cfg"].num_hidden_layers
    kw = dict(ternary=True, log=lambda *_: None)
    fp32 = export_checkpoint(packed["config"], packed[scale], str(tmp_path / "f"), "ONNX", b, s, **kw)
    info = export_checkpoint(packed["config"], packed[scale], str(tmp_path / "i"), "ONNX", b, s, int8=True, **kw)
    assert info["int8_rewrite"] == {"dense": 6 * layers + 1, "attention": 2 * layers, "embedding": 1,
                                    "dense_fp32": 0}
    assert "8-bit activations" in info["parity"]["tolerance_rule"] and info["parity"]["tolerance"] >= 0.5
    path = str(tmp_path / "i.onnx")
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("MatMulInteger") == 8 * layers + 1 and ops.count("Gemm") == 1     # the classifier stays fp32
    # the fake-quant is gone; one QuantizeLinear per activation scale (EMA: query/key/value each have their own
    # frozen scale; dynamic: one max|x| of their shared input, which MindSpore's export computes once)
    assert "Floor" not in ops and ops.count("QuantizeLinear") == (10 if scale == "ema" else 8) * layers + 1
    alphas = [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.name.endswith(".alpha")]
    dense_alphas = [a for a in alphas if a.ndim < 2]        # the embedding's alphas are [vocab, 1]
    assert len(dense_alphas) == 6 * layers + 1
    # rowwise (quant.weight_rowwise): one alpha per output row of every Dense, else one per tensor
    assert all(a.ndim == (1 if scale == "rowwise" else 0) for a in dense_alphas)
    assert os.path.getsize(path) < os.path.getsize(str(tmp_path / "f.onnx"))
    opt = str(tmp_path / "opt.onnx")
    ort_session(path, 2, optimized_model_filepath=opt)
    fused = [n.op_type for n in onnx.load(opt).graph.node]
    if scale != "ema":          # onnxruntime fuses MatMulInteger -> Cast -> Mul(a, alpha) into one kernel
        assert fused.count("MatMulIntegerToFloat") == 8 * layers + 1 and "MatMulInteger" not in fused
    else:                       # frozen scales: it folds Mul(a, alpha) to a constant first, so the pattern is gone
        assert fused.count("MatMulInteger") == 8 * layers + 1 and "MatMulIntegerToFloat" not in fused
    ids, types, mask = sample_inputs(b, s, packed["cfg"].vocab_size, seed=7)
    ref = build_ternary_inference_model(packed[scale])(ms.Tensor(ids), ms.Tensor(types), ms.Tensor(mask)).asnumpy()
    assert np.abs(ref).max() > 0.1 and not np.allclose(ref[0], ref[1], atol=1e-3)
    # this random classifier favours one class; the argmax is compared with the decision boundary moved to the
    # median margin (another classifier bias, added after everything else), so half the rows are on each side
    centre = np.array([0.0, np.median(ref[:, 1] - ref[:, 0])], np.float32)
    assert (ref - centre).argmax(-1).mean() == 0.5
    got, f32 = OnnxRunner(path)(ids, types, mask), OnnxRunner(str(tmp_path / "f.onnx"))(ids, types, mask)
    np.testing.assert_allclose(f32, ref, rtol=0, atol=1e-4)
    assert fp32["parity"]["max_abs_logit_diff"] <= 1e-4
    diff = np.abs(got - ref)
    assert diff.max() <= 0.1 * np.abs(ref).max() and (diff <= 1e-4).mean() >= 0.9, (diff.max(), np.median(diff))
    assert ((got - centre).argmax(-1) == (ref - centre).argmax(-1)).mean() >= 0.95


def test_bench_int8_evaluates_the_integer_kernel_file(packed, tmp_path):
    import run_eval_onnx
    from benchmarks import bench_int8
    from src.export import export_checkpoint
    data = str(tmp_path / "data")
    tiny_run.write_split(data, "dev", 24, seed=5)
    export_checkpoint(packed["config"], packed["dynamic"], str(tmp_path / "t"), "ONNX", 4, tiny_run.SEQ,
                      ternary=True, log=lambda *_: None)
    out = bench_int8.main(["--quick", "--ternary_kernels", f"tern={tmp_path / 't.onnx'}", "--data_dir", data,
                           "--out_dir", str(tmp_path / "bench")])
    (r,) = out["models"]
    assert r["method"] == "ternary_kernels" and r["int8_file"].endswith("_int8_kernels.onnx")
    for kind in ("fp32", "int8"):
        assert r[kind + "_acc"] == pytest.approx(run_eval_onnx.main(["--model_file", r[kind + "_file"],
                                                                     "--data_dir", data])["acc"], abs=1e-12)
    assert "MatMulInteger" in {n.op_type for n in onnx.load(r["int8_file"]).graph.node}
    assert "integer kernels" in bench_int8.table(out)
    from benchmarks import bench_export                     # a full-precision export has nothing to rewrite
    model = bench_export.build(bench_export._spec("fp", packed["cfg"]), "gelu_erf_poly")
    plain, _ = bench_export.export_file(model, str(tmp_path / "fp"), "ONNX", 4, tiny_run.SEQ,
                                        packed["cfg"].vocab_size)
    with pytest.raises(UserError, match="--ternary_kernels x: .* has no ternary Dense"):
        bench_int8.main(["--quick", "--ternary_kernels", f"x={plain}", "--data_dir", data,
                         "--out_dir", str(tmp_path / "b2")])
    assert not os.path.exists(tmp_path / "b2" / "int8" / "fp_int8_kernels.onnx")


def test_int8_bad_uses_are_clear_errors_and_leave_no_file(packed, tmp_path):
    from src.export import export_checkpoint
    kw = dict(log=lambda *_: None)
    with pytest.raises(UserError, match="--int8 .* needs --ternary and --file_format ONNX"):
        export_checkpoint(packed["config"], packed["dynamic"], str(tmp_path / "a"), "MINDIR", 2, 8, ternary=True,
                          int8=True, **kw)
    with pytest.raises(UserError, match="needs --ternary"):
        export_checkpoint(packed["config"], packed["dynamic"], str(tmp_path / "a"), "ONNX", 2, 8, int8=True, **kw)
    with pytest.raises(UserError, match=r"no ternary Dense .* \(7 quantized Dense without ternary weights; "):
        export_checkpoint(packed["config"], packed["w8"], str(tmp_path / "a"), "ONNX", 2, 8, ternary=True,
                          int8=True, **kw)
    with pytest.raises(UserError, match=r"\(0 quantized Dense .* activation_mode asym, are not rewritten"):
        export_checkpoint(packed["config"], packed["asym"], str(tmp_path / "a"), "ONNX", 2, 8, ternary=True,
                          int8=True, **kw)
    assert os.listdir(tmp_path) == []
    r = tiny_run.run_script("export.py", ["--config_path", packed["config"], "--ckpt_file", packed["dynamic"],
                                          "--file_format", "ONNX", "--int8", "--file_name", str(tmp_path / "b")])
    assert r.returncode == 2 and "needs --ternary" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert os.listdir(tmp_path) == []
