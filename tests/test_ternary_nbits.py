"""TernaryBERT with 2-bit weights in the ONNX file (src/ternary_nbits.py, `export.py --ternary --nbits 2`): one
MatMulNBits on a 384 x 384 ternary matrix equals numpy; the rewrite of a hand-built graph (Gemm with bias, MatMul,
K not a whole number of blocks, a weight that is not ternary) computes the same values; a tiny packed TernaryBERT
model with real activation scales (frozen EMA scales set by hand, dynamic scales, asymmetric EMA ranges) exports with
every ternary Dense as MatMulNBits bits=2, no fp32 copy of a ternary weight, and logits equal to the packed model's;
bad flags are one ERROR line, exit 2, no file.

`export.py --ternary --int8 --nbits 2` (2-bit storage, int8 compute): on a hand-built int8 graph the 2-bit codes
rebuild every int8 code tensor exactly (a width that is not a multiple of 4 included) and leave codes outside
{-1, 0, 1} alone; a width-sliced packed model (per-layer heads and FFN, small vocab) exports with no int8 code tensor
left in the file, onnxruntime folding the rebuild and fusing as for --int8, and logits bit-identical to the --int8
file; a wrong bit order or codes that are not ternary write nothing."""
import json
import os

import numpy as np
import pytest
import mindspore as ms
import onnx
from onnx import TensorProto, helper, numpy_helper

from src.errors import UserError
from src.ort_cpu import ort_session
from src.packing import ternary_signs
from src.ternary_nbits import _sign_table, block_size_for, nbits_model, nbits_weight, pack_2bit
import tiny_run

# The 2-bit file against the packed model (MindSpore) on the tiny model: the same fake-quant math in both, measured
# 2.4e-7 (fp32 rounding of LayerNorm / GELU / sums); a wrong code, scale or zero point moves logits by ~0.1-1.
TIGHT = 1e-5


def _nbits_node_model(signs, alpha, bias, block_size, k, n):
    b, scales, zp = nbits_weight(signs, alpha, block_size)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "S"), numpy_helper.from_array(zp, "Z"),
             numpy_helper.from_array(bias, "bias")]
    node = helper.make_node("MatMulNBits", ["A", "B", "S", "Z", "", "bias"], ["Y"], domain="com.microsoft", K=k, N=n,
                            bits=2, block_size=block_size)
    f = lambda name, s: helper.make_tensor_value_info(name, TensorProto.FLOAT, s)
    g = helper.make_graph([node], "g", [f("A", [None, k])], [f("Y", [None, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("per_row", [False, True])
def test_one_matmulnbits_on_a_384x384_ternary_matrix_equals_numpy(per_row, tmp_path):
    k = n = 384
    rng = np.random.default_rng(0)
    signs = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    alpha = (rng.uniform(0.05, 0.5, size=n) if per_row else np.array([0.37])).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    bs = block_size_for(k)
    assert bs == 128                                   # the largest power of two <= 128 that divides 384
    model = _nbits_node_model(signs, alpha, bias, bs, k, n)
    onnx.checker.check_model(model)
    path = str(tmp_path / "one.onnx")
    onnx.save(model, path)
    a = rng.normal(size=(64, k)).astype(np.float32)
    got = ort_session(path, 2).run(None, {"A": a})[0]
    w = alpha.reshape(-1, 1).astype(np.float64) * signs
    want = a.astype(np.float64) @ w.T + bias
    # fp32 sums of 384 products of values ~1: measured 6e-6 on outputs of ~26; a wrong code, zero point, block order
    # or scale is off by ~alpha per term
    assert np.abs(got - want).max() <= 2e-5 * max(1.0, np.abs(want).max())
    assert np.abs(want).max() > 5


def test_packing_layout_is_the_contrib_ops():
    """B [N, n_blocks, block_size / 4]: code k of a block in bits 2 (k % 4) of byte k // 4, code = sign + 2;
    scales row-major [N * n_blocks]; zero points 2, four per byte, each row padded to a whole byte."""
    signs = np.array([[1, -1, 0, 1] * 5 + [0] * 20], np.int8)          # K = 40: three blocks of 16, 8 padded
    b, scales, zp = nbits_weight(signs, np.array([0.5], np.float32), 16)
    assert b.shape == (1, 3, 4) and scales.shape == (3,) and zp.shape == (1,)
    assert b[0, 0, 0] == 3 | (1 << 2) | (2 << 4) | (3 << 6)
    assert b[0, 2, 2] == 0b10101010 and zp[0] == 0b10101010 and np.all(scales == 0.5)
    assert np.array_equal(pack_2bit(np.array([[0, 1, 2, 3]], np.uint8)), np.array([[0b11100100]], np.uint8))
    assert np.array_equal(_sign_table()[0b11100100], [-2, -1, 0, 1])


def _graph(tmp_path):
    """x [R, K] -> Gemm(W1^T, b1) ternary, MatMul(x, W2) ternary per row, Gemm(W3^T) not ternary; K = 40;
    ids [2, R] -> Gather(E), E a table ternary per row."""
    rng = np.random.default_rng(1)
    r, k, n = 5, 40, 24
    w1 = (0.3 * rng.integers(-1, 2, size=(n, k))).astype(np.float32)
    w2 = (rng.uniform(0.1, 1, size=(1, n)) * rng.integers(-1, 2, size=(k, n))).astype(np.float32)   # [K, N]
    w3 = rng.normal(size=(n, k)).astype(np.float32)
    b1 = rng.normal(size=n).astype(np.float32)
    e = (rng.uniform(0.1, 1, size=(9, 1)) * rng.integers(-1, 2, size=(9, n))).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["y1"], transB=1),
             helper.make_node("MatMul", ["x", "W2"], ["y2"]),
             helper.make_node("Gemm", ["x", "W3"], ["y3"], transB=1),
             helper.make_node("Gather", ["E", "ids"], ["emb"])]
    f = lambda name, s: helper.make_tensor_value_info(name, TensorProto.FLOAT, s)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2, r])
    g = helper.make_graph(nodes, "g", [f("x", [r, k]), ids],
                          [f("y1", [r, n]), f("y2", [r, n]), f("y3", [r, n]), f("emb", [2, r, n])],
                          [numpy_helper.from_array(v, name) for name, v in
                           (("W1", w1), ("W2", w2), ("W3", w3), ("b1", b1), ("E", e))])
    feeds = {"x": rng.normal(size=(r, k)).astype(np.float32), "ids": rng.integers(0, 9, size=(2, r))}
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]), feeds


def test_rewrite_of_a_hand_built_graph(tmp_path):
    model, feeds = _graph(tmp_path)
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    want = ort_session(str(tmp_path / "fp32.onnx"), 2).run(None, feeds)
    counts = nbits_model(model)
    assert counts["dense"] == 2 and counts["dense_fp32"] == 1 and counts["block_sizes"] == {"40": 16}
    assert counts["embedding"] == 1
    ops = [(n.op_type, n.domain) for n in model.graph.node]
    assert ops.count(("MatMulNBits", "com.microsoft")) == 2 and ops.count(("Gemm", "")) == 1
    assert {t.name for t in model.graph.initializer} >= {"W3"} and not {"W1", "W2", "E"} & {
        t.name for t in model.graph.initializer}
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "nbits.onnx"))
    got = ort_session(str(tmp_path / "nbits.onnx"), 2).run(None, feeds)
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
    assert np.array_equal(got[3], want[3])                    # the embedding rows: alpha x {-1, 0, 1}, exact


def _set_scales(model):
    """Frozen EMA scales amax = 0.5 + 0.25 i (sym), or ranges [-(0.5 + 0.25 i), 0.75 + 0.25 i] (asym), by hand:
    an untrained EMA quantizer holds 0, which would quantize every activation to 0."""
    from src.quant import ActQuantizer
    i = 0
    for _, c in model.cells_and_names():
        if isinstance(c, ActQuantizer):
            if hasattr(c, "amax"):
                c.amax.set_data(ms.Tensor(0.5 + 0.25 * i, ms.float32))
            if hasattr(c, "ema_min"):
                c.ema_min.set_data(ms.Tensor(-(0.5 + 0.25 * i), ms.float32))
                c.ema_max.set_data(ms.Tensor(0.75 + 0.25 * i, ms.float32))
            i += 1
    return i


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from src.packing import pack
    from src.quant import QuantConfig, quantize_model, quantized_state
    from src.tinybert_model import BertConfig, BertForSequenceClassification
    d = tmp_path_factory.mktemp("tern_nbits")
    cfg = BertConfig(**tiny_run.TINY)
    cfg.to_json_file(str(d / "config.json"))
    out = {"dir": d, "config": str(d / "config.json"), "cfg": cfg}
    for name, q in (("ema", QuantConfig(activation_scale="ema")), ("dynamic", QuantConfig()),
                    ("asym", QuantConfig(activation_mode="asym")), ("w8", QuantConfig(weight_bits=8)),
                    ("rowwise", QuantConfig(weight_rowwise=True))):
        ms.set_seed(0)
        model = BertForSequenceClassification(cfg.replace(initializer_range=0.3))
        quantize_model(model, q)
        if name in ("ema", "asym"):
            assert _set_scales(model) == 11 * cfg.num_hidden_layers       # 10 per layer + the pooler's
        pack(quantized_state(model), cfg, q, str(d / f"{name}.tpack"))
        out[name] = str(d / f"{name}.tpack")
    return out


def _init_bytes(model, skip=()):
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name not in skip)


@pytest.mark.parametrize("scale", ["ema", "dynamic", "asym", "rowwise"])
def test_export_nbits_of_a_packed_ternary_model(packed, scale, tmp_path):
    from src.export import OnnxRunner, export_checkpoint, sample_inputs
    from src.packing import build_ternary_inference_model
    b, s, layers = 4, tiny_run.SEQ, packed["cfg"].num_hidden_layers
    ids, types, mask = sample_inputs(b, s, packed["cfg"].vocab_size, seed=7)
    ref = build_ternary_inference_model(packed[scale])(ms.Tensor(ids), ms.Tensor(types), ms.Tensor(mask)).asnumpy()
    assert np.abs(ref).max() > 0.05 and np.ptp(ref, axis=0).max() > 0.05     # real activations: logits vary
    kw = dict(ternary=True, log=lambda *_: None)
    export_checkpoint(packed["config"], packed[scale], str(tmp_path / "f"), "ONNX", b, s, **kw)
    info = export_checkpoint(packed["config"], packed[scale], str(tmp_path / "n"), "ONNX", b, s, nbits=2, **kw)
    path = str(tmp_path / "n.onnx")
    rw = info["nbits_rewrite"]
    assert rw["dense"] == 6 * layers + 1 and rw["embedding"] == 1 and rw["dense_fp32"] == 1   # the classifier
    assert rw["bits"] == 2 and rw["accuracy_level"] == 0
    assert rw["check"]["dense"] == rw["dense"] and rw["check"]["dense_max_rel_diff"] <= 1e-5
    assert rw["check"]["embedding_rows"] == packed["cfg"].vocab_size and rw["check"]["embedding_max_diff"] == 0.0
    assert info["nbits_parity"]["max_abs_logit_diff"] <= info["nbits_parity"]["tolerance"]
    with open(path + ".json", encoding="utf-8") as f:
        assert json.load(f)["nbits_rewrite"] == rw
    got = OnnxRunner(path)(ids, types, mask)
    assert np.abs(got - ref).max() <= TIGHT * max(1.0, np.abs(ref).max()), (got, ref)
    # every ternary Dense is a 2-bit MatMulNBits, and no fp32 copy of a ternary weight is left in the file
    m, fp32 = onnx.load(path), onnx.load(str(tmp_path / "f.onnx"))
    nb = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert len(nb) == 6 * layers + 1 and all(n.domain == "com.microsoft" for n in nb)
    assert all(helper.get_attribute_value(a) == 2 for n in nb for a in n.attribute if a.name == "bits")
    assert [n.op_type for n in m.graph.node].count("Gemm") == 1
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    # the block scales [N, blocks]: one value per output row (quant.weight_rowwise) or one for the whole matrix
    distinct = [np.unique(inits[n.input[2]]).size for n in nb]
    assert all(d == inits[n.input[2]].shape[0] for d, n in zip(distinct, nb)) if scale == "rowwise" \
        else distinct == [1] * len(nb)
    ternary = {t.name for t in fp32.graph.initializer if numpy_helper.to_array(t).ndim == 2
               and numpy_helper.to_array(t).shape[0] > 2 and ternary_signs(numpy_helper.to_array(t), True) is not None}
    assert len(ternary) == 6 * layers + 2                         # the Dense weights and the word embedding
    assert not ternary & {t.name for t in m.graph.initializer}
    assert not [t.name for t in m.graph.initializer if t.data_type == TensorProto.FLOAT
                and numpy_helper.to_array(t).ndim == 2 and ternary_signs(numpy_helper.to_array(t), True) is not None
                and numpy_helper.to_array(t).shape[0] > 2 and numpy_helper.to_array(t).shape[1] > 1]
    # bytes: the fp32 file's other tensors + the 2-bit codes, scales, zero points, row alphas, 256 x 4 sign table and
    # the embedding width (int64), nothing else
    rest = _init_bytes(fp32, skip=ternary)
    assert _init_bytes(m) == rest + rw["weight_bytes"] + 256 * 4 * 4 + 8
    want = 0                                  # 2 bits per weight, a float scale and a 2-bit zero point per block
    for t in fp32.graph.initializer:          # (blocks of 16 and 32 at these widths), a float alpha per table row
        if t.name in ternary:
            rows, k = numpy_helper.to_array(t).shape
            if t.name.endswith("word_embeddings.embedding_table"):
                want += rows * k // 4 + 4 * rows
            else:
                nb = k // block_size_for(k)
                want += rows * k // 4 + 4 * rows * nb + rows * -(-nb // 4)
    assert rw["weight_bytes"] == want


def test_a_wrong_rewrite_is_refused_before_the_file_is_written(packed, tmp_path, monkeypatch):
    """The export's check of each rewritten site (MatMulNBits alone vs the fp32 Gemm it replaced) with the zero
    point put at 1: the file is not written."""
    from src import ternary_nbits
    from src.export import export_checkpoint
    right = ternary_nbits.nbits_weight

    def wrong_zero_point(signs, alpha, block_size):
        b, scales, zp = right(signs, alpha, block_size)
        return b, scales, np.full_like(zp, 0b01010101)
    monkeypatch.setattr(ternary_nbits, "nbits_weight", wrong_zero_point)
    with pytest.raises(RuntimeError, match="a rewritten site differs from the fp32 one it replaced"):
        export_checkpoint(packed["config"], packed["ema"], str(tmp_path / "n"), "ONNX", 2, 8, ternary=True, nbits=2,
                          log=lambda *_: None)
    assert os.listdir(tmp_path) == []


def test_nbits_without_ternary_dense_is_an_error(packed, tmp_path):
    from src.export import export_checkpoint
    with pytest.raises(UserError, match=r"--nbits: .* has no ternary Dense .* \(8 Dense with weights that are not "):
        export_checkpoint(packed["config"], packed["w8"], str(tmp_path / "a"), "ONNX", 2, 8, ternary=True, nbits=2,
                          log=lambda *_: None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, message", [
    (["--ternary", "--nbits", "3"], "--nbits 3: expected 2"),
    (["--nbits", "2"], "--nbits rewrites the ONNX of a TernaryBERT model: it needs --ternary"),
    (["--int8", "--nbits", "2"], "--int8 --nbits rewrites the ONNX of a TernaryBERT model: it needs --ternary"),
])
def test_bad_nbits_flags_are_one_error_line(packed, flags, message, tmp_path):
    r = tiny_run.run_script("export.py", ["--config_path", packed["config"], "--ckpt_file", packed["dynamic"],
                                          "--file_format", "ONNX", "--file_name", str(tmp_path / "out" / "m")] + flags)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("ERROR: " + message), r.stderr[-2000:]
    assert not os.path.exists(tmp_path / "out")


def test_bench_nbits_quick(tmp_path):
    from benchmarks import bench_nbits
    out = bench_nbits.main(["--quick", "--batches", "2", "--seq", "16", "--budget", "0.01",
                            "--out_dir", str(tmp_path)])
    size = out["bytes"]
    assert size["nbits"] < size["int8"] < size["fp32"]
    (cell,) = out["cells"].values()
    assert cell["diffs"]["nbits"]["vs_fp32_onnx"] <= 1e-6 and cell["diffs"]["nbits"]["argmax_vs_packed"] == 1.0
    assert cell["checks"]["nbits"]["nbits_parity"]["max_abs_logit_diff"] <= 1e-6
    assert cell["rewired"] == 6 * out["config"]["layers"] + 1
    assert all(t > 0 for t in cell["latency_s"].values())
    assert size["nbits_int8"] < size["int8"]
    assert cell["diffs"]["nbits_int8"]["vs_int8_onnx"] == 0.0     # the same int8 codes, rebuilt when loaded
    assert cell["checks"]["nbits_int8"]["int8_parity"]["bit_identical"]
    text = bench_nbits.table(out)
    assert all(label in text for label in bench_nbits.LABELS.values())
    assert size[bench_nbits.REFERENCE] > size["nbits_int8"] and cell["latency_s"][bench_nbits.REFERENCE] > 0
    assert not os.path.exists(tmp_path / "nbits") and os.path.exists(tmp_path / "nbits_minilm.json")


def _int8_graph():
    """x uint8 [R, K] -> MatMulInteger(C1 int8 [K, 10], zp 128) and MatMulInteger(C2 int8 [K, 8], values up to 2);
    ids [2, R] -> Gather(E int8 [9, 12]). 10 is not a multiple of 4 (the rebuild slices the padding off)."""
    rng = np.random.default_rng(2)
    r, k = 5, 16
    c1, e = rng.integers(-1, 2, size=(k, 10)).astype(np.int8), rng.integers(-1, 2, size=(9, 12)).astype(np.int8)
    c2 = rng.integers(-2, 3, size=(k, 8)).astype(np.int8)
    nodes = [helper.make_node("MatMulInteger", ["x", "C1", "zp"], ["y1"]),
             helper.make_node("MatMulInteger", ["x", "C2", "zp"], ["y2"]),
             helper.make_node("Gather", ["E", "ids"], ["emb"])]
    v = helper.make_tensor_value_info
    g = helper.make_graph(nodes, "g", [v("x", TensorProto.UINT8, [r, k]), v("ids", TensorProto.INT64, [2, r])],
                          [v("y1", TensorProto.INT32, [r, 10]), v("y2", TensorProto.INT32, [r, 8]),
                           v("emb", TensorProto.INT8, [2, r, 12])],
                          [numpy_helper.from_array(a, n) for n, a in
                           (("C1", c1), ("C2", c2), ("E", e), ("zp", np.array(128, np.uint8)))])
    feeds = {"x": rng.integers(1, 256, size=(r, k)).astype(np.uint8), "ids": rng.integers(0, 9, size=(2, r))}
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)]), feeds, {"C1": c1, "E": e}


def test_int8_codes_as_2bit_codes_on_a_hand_built_graph(tmp_path):
    from src.ternary_nbits import check_int8_codes, int8_codes_to_2bit_model
    model, feeds, ternary = _int8_graph()
    onnx.save(model, str(tmp_path / "int8.onnx"))
    want = ort_session(str(tmp_path / "int8.onnx"), 2).run(None, feeds)
    counts = int8_codes_to_2bit_model(model)
    tensors = counts.pop("tensors")
    assert counts == {"dense": 1, "embedding": 1, "not_ternary": 1, "int8_bytes": 16 * 10 + 9 * 12,
                      "weight_bytes": 16 * 3 + 9 * 3}
    assert sorted(tensors) == ["C1", "E"]
    inits = {t.name: t for t in model.graph.initializer}
    assert "C1" not in inits and "E" not in inits and "C2" in inits          # C2 holds a 2: left as int8 codes
    int8 = [n for n, t in inits.items() if t.data_type == TensorProto.INT8]
    assert sorted(int8) == ["C2", "int8nbits.sign_table"]
    onnx.checker.check_model(model)
    assert check_int8_codes(model, tensors) == {"tensors": 2, "mismatched": []}
    onnx.save(model, str(tmp_path / "int8_2bit.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Slice") == 1 and ops.count("Reshape") == 2             # the 10-wide one is sliced back
    got = ort_session(str(tmp_path / "int8_2bit.onnx"), 2).run(None, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    # onnxruntime folds the rebuild when the session starts: the graph it runs is the int8 one
    opt = str(tmp_path / "opt.onnx")
    ort_session(str(tmp_path / "int8_2bit.onnx"), 2, optimized_model_filepath=opt)
    assert sorted(n.op_type for n in onnx.load(opt).graph.node) == ["Gather", "MatMulInteger", "MatMulInteger"]


# A width-sliced model as src/width.py writes it: per-layer heads (2 and 3) other than the config's 4, per-layer FFN
# (38 is not a multiple of 4), a small vocabulary.
SLICED = dict(vocab_size=150, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              layer_num_heads=[2, 3], layer_intermediate_sizes=[38, 24], max_position_embeddings=tiny_run.SEQ,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    from src.packing import pack
    from src.quant import QuantConfig, quantize_model, quantized_state
    from src.tinybert_model import BertConfig, BertForSequenceClassification
    d = tmp_path_factory.mktemp("tern_sliced")
    cfg = BertConfig(**SLICED)
    cfg.to_json_file(str(d / "config.json"))
    out = {"dir": d, "config": str(d / "config.json"), "cfg": cfg}
    for name, q in (("dynamic", QuantConfig()), ("ema", QuantConfig(activation_scale="ema"))):
        ms.set_seed(0)
        model = BertForSequenceClassification(cfg.replace(initializer_range=0.3))
        quantize_model(model, q)
        if name == "ema":
            assert _set_scales(model) == 10 * cfg.num_hidden_layers + 1            # + the pooler's
        pack(quantized_state(model), cfg, q, str(d / f"{name}.tpack"))
        out[name] = str(d / f"{name}.tpack")
    return out


@pytest.mark.parametrize("scale", ["dynamic", "ema"])
def test_export_int8_nbits_of_a_width_sliced_packed_model(sliced, scale, tmp_path):
    from src.export import OnnxRunner, export_checkpoint, sample_inputs
    from src.packing import build_ternary_inference_model
    cfg, layers = sliced["cfg"], sliced["cfg"].num_hidden_layers
    b, s = 32, tiny_run.SEQ
    kw = dict(ternary=True, log=lambda *_: None)
    export_checkpoint(sliced["config"], sliced[scale], str(tmp_path / "i"), "ONNX", b, s, int8=True, **kw)
    info = export_checkpoint(sliced["config"], sliced[scale], str(tmp_path / "n"), "ONNX", b, s, int8=True, nbits=2,
                             **kw)
    path, int8_path = str(tmp_path / "n.onnx"), str(tmp_path / "i.onnx")
    rw = info["nbits_rewrite"]
    assert (rw["dense"], rw["embedding"], rw["not_ternary"]) == (6 * layers + 1, 1, 0)      # + the pooler
    assert rw["check"] == {"tensors": 6 * layers + 2, "mismatched": []}
    assert info["int8_rewrite"]["dense"] == 6 * layers + 1 and info["int8_parity"]["bit_identical"]
    with open(path + ".json", encoding="utf-8") as f:
        assert json.load(f)["int8_parity"] == info["int8_parity"]
    # the file: no int8 code tensor but the sign table, the codes at 2 bits, the rest the --int8 file's
    m, i8 = onnx.load(path), onnx.load(int8_path)
    assert [t.name for t in m.graph.initializer if t.data_type == TensorProto.INT8] == ["int8nbits.sign_table"]
    codes = {t.name: numpy_helper.to_array(t) for t in i8.graph.initializer if t.data_type == TensorProto.INT8}
    assert len(codes) == 6 * layers + 2
    heads = [cfg.layer_num_heads[i] * (cfg.hidden_size // cfg.num_attention_heads) for i in range(layers)]
    assert sorted(c.shape for c in codes.values()) == sorted(
        [(cfg.hidden_size, h) for h in heads for _ in range(3)] + [(h, cfg.hidden_size) for h in heads]
        + [(cfg.hidden_size, f) for f in cfg.layer_intermediate_sizes]
        + [(f, cfg.hidden_size) for f in cfg.layer_intermediate_sizes]
        + [(cfg.hidden_size, cfg.hidden_size), (cfg.vocab_size, cfg.hidden_size)])
    assert rw["weight_bytes"] == sum(r * -(-c // 4) for r, c in (v.shape for v in codes.values()))
    assert rw["int8_bytes"] == sum(v.nbytes for v in codes.values())
    assert _init_bytes(m) == _init_bytes(i8) - rw["int8_bytes"] + rw["weight_bytes"] + 256 * 4 + 16 * len(codes) \
        + 24 * sum(1 for v in codes.values() if v.shape[1] % 4)               # shapes, and the slices of 38
    # onnxruntime folds the rebuild and runs the --int8 graph: the same fused kernels, nothing left of the rebuild
    opt = {}
    for k, p in (("int8", int8_path), ("2bit", path)):
        ort_session(p, 2, optimized_model_filepath=str(tmp_path / f"opt_{k}.onnx"))
        opt[k] = sorted(n.op_type for n in onnx.load(str(tmp_path / f"opt_{k}.onnx")).graph.node)
    assert opt["2bit"] == opt["int8"] and info["int8_parity"]["ort_optimized_same_as_int8"]
    fused = "MatMulIntegerToFloat" if scale == "dynamic" else "MatMulInteger"    # frozen scales: unfused, as --int8
    assert opt["2bit"].count(fused) == 8 * layers + 1
    # logits on an unseen batch: bit for bit the --int8 file's, and as close to the packed model as --int8 is
    ids, types, mask = sample_inputs(b, s, cfg.vocab_size, seed=11)
    got, want = OnnxRunner(path)(ids, types, mask), OnnxRunner(int8_path)(ids, types, mask)
    assert np.array_equal(got, want)
    ref = build_ternary_inference_model(sliced[scale])(ms.Tensor(ids), ms.Tensor(types), ms.Tensor(mask)).asnumpy()
    assert np.abs(ref).max() > 0.05 and np.ptp(ref, axis=0).max() > 0.05     # real activations: logits vary
    # (--int8's rounding: QuantizeLinear half to even from max|x| / 127 moves a value near a tie by one step; measured
    # here max 0.059 on logits up to 1.5, median 1.2e-5; a wrong code or scale moves logits by about themselves)
    diff = np.abs(got - ref)
    assert diff.max() <= 0.1 * np.abs(ref).max() and np.median(diff) <= 1e-4, (diff.max(), np.median(diff))
    assert info["parity"]["max_abs_logit_diff"] <= info["parity"]["tolerance"]      # the export's 8-bit rule


def test_int8_nbits_wrong_bit_order_is_refused_before_the_file_is_written(sliced, tmp_path, monkeypatch):
    """The packing with its four codes per byte in the wrong order (high bits first): the rebuild check fails and
    nothing is written."""
    from src import ternary_nbits
    from src.export import export_checkpoint

    def high_bits_first(codes):
        c = np.asarray(codes, np.uint8)
        c = c.reshape(c.shape[:-1] + (c.shape[-1] // 4, 4))
        return (c[..., 3] | (c[..., 2] << 2) | (c[..., 1] << 4) | (c[..., 0] << 6)).astype(np.uint8)
    monkeypatch.setattr(ternary_nbits, "pack_2bit", high_bits_first)
    with pytest.raises(RuntimeError, match="the 2-bit codes do not rebuild the int8 codes"):
        export_checkpoint(sliced["config"], sliced["dynamic"], str(tmp_path / "n"), "ONNX", 2, 8, ternary=True,
                          int8=True, nbits=2, log=lambda *_: None)
    assert os.listdir(tmp_path) == []


def test_int8_nbits_of_codes_that_are_not_ternary_is_an_error(sliced, tmp_path, monkeypatch):
    """An int8 graph with one code tensor outside {-1, 0, 1} (here made by hand): a UserError, nothing written."""
    from src import ternary_int8
    from src.export import export_checkpoint
    right = ternary_int8.integerize_file

    def one_code_doubled(path, out_path=None):
        counts = right(path, out_path)
        m = onnx.load(path)
        t = next(t for t in m.graph.initializer if t.data_type == TensorProto.INT8)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))
        onnx.save(m, path)
        return counts
    monkeypatch.setattr(ternary_int8, "integerize_file", one_code_doubled)
    with pytest.raises(UserError, match=r"--int8 --nbits 2: .* has 1 int8 code tensors with values outside"):
        export_checkpoint(sliced["config"], sliced["dynamic"], str(tmp_path / "n"), "ONNX", 2, 8, ternary=True,
                          int8=True, nbits=2, log=lambda *_: None)
    assert os.listdir(tmp_path) == []
