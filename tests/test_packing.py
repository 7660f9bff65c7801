"""Packed artefact: code packing round trips, ternary checks, pack -> unpack bit-exact (ternary, row-wise and
codebook tensors), sizes from the real file, the rebuilt inference model's logits, clear errors."""
import os

import numpy as np
import pytest
import mindspore as ms

from src.errors import UserError
from src.packing import (build_ternary_inference_model, pack, pack_codes, ternary_join, ternary_split,
                         unpack, unpack_codes)
from src.quant import QuantConfig, quantize_model, quantized_state
from src.tinybert_model import BertConfig, BertForSequenceClassification, LogitsOnly
import tiny_run
from src.checkpoint import load_into


@pytest.mark.parametrize("codec,per", [("2bit", 4), ("base3", 5)])
def test_code_packing_round_trip(codec, per):
    codes = np.random.default_rng(0).integers(0, 3, 1003).astype(np.uint8)
    data = pack_codes(codes, codec)
    assert len(data) == -(-1003 // per)
    np.testing.assert_array_equal(unpack_codes(data, 1003, codec), codes)
    if codec == "2bit":   # documented layout: code i at bits 2i..2i+1 of its byte
        assert data[0] == codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6


def test_ternary_split_per_row_and_errors():
    w = np.array([[0.5, -0.5, 0.0], [0.0, 2.0, -2.0]], np.float32)
    alpha, codes = ternary_split(w, rowwise=True, name="emb")
    np.testing.assert_array_equal(alpha, [0.5, 2.0])
    np.testing.assert_array_equal(codes, [1, 2, 0, 0, 1, 2])
    np.testing.assert_array_equal(ternary_join(alpha, codes, w.shape, True), w)
    with pytest.raises(UserError, match=r"'emb' is not ternary \(5 distinct values"):
        ternary_split(w, rowwise=False, name="emb", source="x.ckpt")      # two alphas: not per-tensor ternary
    with pytest.raises(UserError, match=r"'q' row 1 is not ternary"):
        ternary_split(np.array([[1.0, -1.0], [0.3, 0.2]], np.float32), rowwise=True, name="q")


TINY = BertConfig(**tiny_run.TINY)


def _inputs():
    return tiny_run.token_inputs(seed=4, pad_row=0, pad_from=6)


@pytest.mark.parametrize("qcfg,codec", [
    (QuantConfig(), "2bit"),
    (QuantConfig(weight_bits=4, embedding_bits=8, activation_mode="asym"), "base3")])
def test_pack_unpack_bit_exact_and_same_logits(tmp_path, qcfg, codec):
    ms.set_seed(0)
    model = BertForSequenceClassification(TINY.replace(initializer_range=0.3))
    quantize_model(model, qcfg)
    net = LogitsOnly(model)
    net.set_train(False)
    ref = net(*_inputs()).asnumpy()
    state = quantized_state(model)
    path = str(tmp_path / "m.tpack")
    sizes = pack(state, TINY, qcfg, path, codec=codec, max_positions=8)
    assert sizes["total"] == os.path.getsize(path)
    got, cfg, qcfg2, head, _ = unpack(path)
    assert qcfg2 == qcfg and cfg.max_position_embeddings == 8
    for k, v in state.items():
        if k.endswith("position_embeddings.embedding_table"):
            np.testing.assert_array_equal(got[k], v[:8])
        else:
            assert got[k].dtype == np.float32 and np.array_equal(got[k], v), k     # bit-exact
    if qcfg.weight_bits == 2:
        n = sum(v.size for k, v in state.items() if k.endswith(".weight") and not k.startswith("classifier"))
        n += state["bert.embeddings.word_embeddings.embedding_table"].size
        per_tensor = -(-np.array([v.size for k, v in state.items() if (k.endswith(".weight") and not
                                  k.startswith("classifier")) or k.endswith("word_embeddings.embedding_table")])
                       // 4)
        assert sizes["ternary codes"] == per_tensor.sum() and per_tensor.sum() >= n / 4
        assert sizes["ternary alphas"] == 4 * (30 + 7)      # one per embedding row + one per linear weight
    inf = build_ternary_inference_model(path)
    np.testing.assert_array_equal(inf(*_inputs()).asnumpy(), ref)


def test_bad_inputs_are_clear_errors(tmp_path):
    bad = tmp_path / "x.tpack"
    bad.write_bytes(b"not a pack")
    with pytest.raises(UserError, match="not a packed ternary model"):
        unpack(str(bad))
    model = BertForSequenceClassification(TINY)
    state = {n: p.asnumpy() for n, p in model.parameters_and_names()}
    with pytest.raises(UserError, match=r"fp32\.ckpt: tensor 'bert\..*' .*is not ternary"):
        pack(state, TINY, QuantConfig(activation_bits=32), str(tmp_path / "y.tpack"), source="fp32.ckpt")
    with pytest.raises(UserError, match=r"more than a 8-bit quantized tensor can"):
        pack(state, TINY, QuantConfig(weight_bits=8, embedding_bits=32, activation_bits=32),
             str(tmp_path / "y.tpack"))
    assert not os.path.exists(tmp_path / "y.tpack")
    with pytest.raises(UserError, match="codec 'zip'"):
        pack(state, TINY, QuantConfig(), str(tmp_path / "y.tpack"), codec="zip")


@pytest.fixture(scope="module")
def ema_packed(tmp_path_factory):
    """A packed EMA-scale ternary model whose frozen activation scales come from real activations, with its
    config.json beside it. A fresh EMA quantizer's scale is 0, which quantizes every activation to 0 and makes
    every logit 0: value comparisons on such a model cannot fail."""
    tmp_path = tmp_path_factory.mktemp("ema")
    qcfg = QuantConfig(activation_scale="ema")
    ms.set_seed(0)
    model = quantize_model(BertForSequenceClassification(TINY.replace(initializer_range=0.3)), qcfg)
    amax = tiny_run.calibrate(model)
    assert amax and min(amax.values()) > 0.1
    path = str(tmp_path / "m.tpack")
    pack(quantized_state(model), TINY, qcfg, path)
    TINY.to_json_file(str(tmp_path / "config.json"))
    return path


def _assert_not_degenerate(ref):
    assert np.abs(ref).max() > 0.1 and not np.allclose(ref[0], ref[1], atol=1e-3), ref


def test_onnx_export_of_ternary_model_runs_in_onnxruntime(ema_packed, tmp_path):
    """The fp32 fake-quant ONNX of a ternary model with frozen scales equals the packed model's logits up to fp32
    rounding (a frozen scale is batch-independent: a rounding tie that flips a quantization step is rare)."""
    from src.export import export_checkpoint
    from src.ort_cpu import ort_session
    path, config = ema_packed, os.path.join(os.path.dirname(ema_packed), "config.json")
    ids, seg, mask = _inputs()
    ref = build_ternary_inference_model(path)(ids, seg, mask).asnumpy()
    _assert_not_degenerate(ref)
    # MindSpore exports no Erf: built with the erf-free GELU, which the ONNX rewrite maps back to Erf
    export_checkpoint(config, path, str(tmp_path / "m"), "ONNX", 2, 8, ternary=True, log=lambda *_: None)
    onnx_path = str(tmp_path / "m.onnx")
    sess = ort_session(onnx_path, 2)
    feeds = dict(zip([i.name for i in sess.get_inputs()], [t.asnumpy() for t in (ids, seg, mask)]))
    np.testing.assert_allclose(sess.run(None, feeds)[0], ref, rtol=0, atol=1e-4)
    import onnx                                   # rewritten like export.py's files: Erf GELU, standard LayerNorm
    ops = [n.op_type for n in onnx.load(onnx_path).graph.node]
    assert ops.count("Erf") == TINY.num_hidden_layers and "ReduceSumSquare" not in ops


def test_export_py_ternary_builds_from_the_packed_artefact(ema_packed, tmp_path):
    """export.py --ternary --ckpt_file m.tpack: the MINDIR holds exactly the weights the packed file rebuilds (one
    ternary code changed in the pooler gives other logits: the comparison sees a single code)."""
    from mindspore import nn
    from src.export import export_checkpoint
    path, config = ema_packed, os.path.join(os.path.dirname(ema_packed), "config.json")
    info = export_checkpoint(config, path, str(tmp_path / "t"), "MINDIR", 2, 8, ternary=True, log=lambda *_: None)
    ids, seg, mask = _inputs()
    ref = build_ternary_inference_model(path)(ids, seg, mask).asnumpy()
    _assert_not_degenerate(ref)
    out = nn.GraphCell(ms.load(str(tmp_path / "t.mindir")))(ids, seg, mask).asnumpy()
    np.testing.assert_array_equal(out, ref)
    assert info["parity"]["max_abs_logit_diff"] == 0.0
    state, cfg, qcfg, head, _ = unpack(path)
    w = state["bert.pooler.weight"]
    i = np.argmax(np.abs(w))                                 # a +-alpha code becomes 0
    w.reshape(-1)[i] = 0.0
    one_code = build_ternary_inference_model(state, cfg, qcfg, head)(ids, seg, mask).asnumpy()
    assert np.abs(one_code - out).max() > 1e-4
    with pytest.raises(UserError, match="head_type relu_pooler"):
        export_checkpoint(config, path, str(tmp_path / "u"), "MINDIR", 2, 8, head_type="relu_pooler", ternary=True,
                          log=lambda *_: None)


def _saved_run(tmp_path, model, qcfg):
    """A run folder as run_ternary.py leaves it (config.json, best.ckpt, best_quant.ckpt, quant.json) for the
    quantized `model`; returns its logits on _inputs()."""
    from src.ternary import save_quantized
    net = LogitsOnly(model)
    net.set_train(False)
    TINY.to_json_file(str(tmp_path / "config.json"))
    save_quantized(model, str(tmp_path), "best", qcfg, extra={"step": 1})
    return net(*_inputs()).asnumpy()


def test_pack_run_records_the_runs_head_type(tmp_path):
    """A relu_pooler run is packed as relu_pooler: the rebuilt model keeps the ReLU on the pooled output, so its
    logits equal the trained model's (it was once packed as "dense", which drops the ReLU)."""
    from src.runs.ternary import pack_run
    qcfg = QuantConfig()
    model = quantize_model(BertForSequenceClassification(TINY.replace(initializer_range=0.3),
                                                         head_type="relu_pooler"), qcfg)
    ref = _saved_run(tmp_path, model, qcfg)
    pack_run(str(tmp_path), "2bit", 16, "relu_pooler", log=None)
    state, bcfg, qcfg_back, head, _ = unpack(str(tmp_path / "model.tpack"))
    assert head == "relu_pooler"
    np.testing.assert_array_equal(build_ternary_inference_model(str(tmp_path / "model.tpack"))(*_inputs()).asnumpy(),
                                  ref)
    as_dense = build_ternary_inference_model(state, bcfg, qcfg_back, "dense")(*_inputs()).asnumpy()
    assert np.abs(as_dense - ref).max() > 1e-3          # the head matters: this test would see the old bug


def test_pack_run_of_an_ema_run_keeps_the_frozen_activation_scales(tmp_path):
    """best_quant.ckpt of an `activation_scale: ema` run holds 0-d `amax` parameters: they go through the file,
    the packer and a strict load unchanged (they once came back as checkpoint metadata and were dropped)."""
    from src.runs.ternary import pack_run
    qcfg = QuantConfig(activation_scale="ema")
    model = BertForSequenceClassification(TINY.replace(initializer_range=0.3))
    quantize_model(model, qcfg)
    amax = {n: p for n, p in model.parameters_and_names() if n.endswith("amax")}
    assert amax and all(p.shape == () for p in amax.values())
    for i, p in enumerate(amax.values()):
        p.set_data(ms.Tensor(0.5 + 0.25 * i, ms.float32))      # frozen scales, as after training
    ref = _saved_run(tmp_path, model, qcfg)
    pack_run(str(tmp_path), "base3", 16, "dense", log=None)
    state, *_ = unpack(str(tmp_path / "model.tpack"))
    for n, p in amax.items():
        assert state[n] == p.asnumpy(), n
    np.testing.assert_array_equal(build_ternary_inference_model(str(tmp_path / "model.tpack"))(*_inputs()).asnumpy(),
                                  ref)
    again = quantize_model(BertForSequenceClassification(TINY), qcfg)
    load_into(again, str(tmp_path / "best.ckpt"), "latent checkpoint", strict=True)
    got = dict(again.parameters_and_names())
    assert all(got[n].asnumpy() == p.asnumpy() for n, p in amax.items())
