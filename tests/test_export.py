"""export.py / src/export.py / run_eval_onnx.py on a tiny classifier: MINDIR reload is bit-exact, ONNX in
onnxruntime matches the exact-GELU checkpoint (<= 1e-4, via the exportable erf rewritten to ONNX Erf) and fuses its
LayerNorms and GELUs, `--gelu erf_poly` keeps the polynomial, the tanh fallback reports its difference, AIR on CPU
and bad inputs give one-line errors, and the exported-model eval equals the checkpoint eval.
One model shape (batch 4, seq 16) for every graph."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from src.errors import UserError
from src.export import export_checkpoint, sample_inputs
from src.ort_cpu import ort_session
from src.tasks import get_task
from src.tinybert_model import BertConfig, ErfPolyGELU, LogitsOnly
from src.evaluation import evaluate
from src.checkpoint import checkpoint_head_type, load_into, save_cell
from src.dataset import load_split
from src.tinybert_model import build_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, S = 4, 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny exact-GELU classifier saved as config.json + ckpt; its reference logits on a fixed batch."""
    d = tmp_path_factory.mktemp("tiny")
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, hidden_act="gelu", num_labels=2, initializer_range=0.5)
    ms.set_seed(3)
    model = build_classifier(cfg, "dense")
    model.set_train(False)
    cfg.to_json_file(str(d / "config.json"))
    save_cell(model, str(d / "model.ckpt"))
    inputs = sample_inputs(B, S, cfg.vocab_size, seed=11)
    net = LogitsOnly(model)
    net.set_train(False)
    ref = net(*[ms.Tensor(x) for x in inputs]).asnumpy()
    return {"dir": d, "cfg": cfg, "model": model, "net": net, "inputs": inputs, "ref": ref,
            "config": str(d / "config.json"), "ckpt": str(d / "model.ckpt")}


def _quiet(*_):
    pass


def test_mindir_export_reload_is_exact(tiny, tmp_path):
    info = export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "m"), "MINDIR", B, S, log=_quiet)
    path = tmp_path / "m.mindir"
    assert sorted(os.listdir(tmp_path)) == ["m.mindir", "m.mindir.json"]      # no temp files left
    assert info["parity"]["max_abs_logit_diff"] == 0.0
    assert info["hidden_act"] == "gelu"
    graph = nn.GraphCell(ms.load(str(path)))
    out = graph(*[ms.Tensor(x) for x in tiny["inputs"]]).asnumpy()
    np.testing.assert_array_equal(out, tiny["ref"])          # a batch the export never saw: bit-exact
    side = json.loads((tmp_path / "m.mindir.json").read_text())
    assert [i["name"] for i in side["inputs"]] == ["input_ids", "token_type_ids", "input_mask"]
    assert side["output"]["shape"] == [B, 2] and side["seq_length"] == S


def test_onnx_export_matches_exact_gelu_checkpoint(tiny, tmp_path):
    import onnxruntime as ort
    info = export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "m.onnx"), "ONNX", B, S, log=_quiet)
    assert info["hidden_act"] == "gelu_erf_poly" and info["checkpoint_hidden_act"] == "gelu"
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "token_type_ids", "input_mask"]
    assert [tuple(i.shape) for i in sess.get_inputs()] == [(B, S)] * 3
    out = sess.run(None, dict(zip(["input_ids", "token_type_ids", "input_mask"], tiny["inputs"])))[0]
    assert out.shape == (B, 2)
    diff = np.abs(out - tiny["ref"]).max()
    assert diff <= 1e-4, diff
    assert info["parity"]["max_abs_logit_diff"] <= 1e-4
    # src/onnx_graph.py: 2 layers x 2 LayerNorms + the embeddings' one, 2 GELUs, now standard patterns...
    assert info["onnx_rewrite"] == {"layernorm": 5, "gelu": 2}
    ops = _op_counts(tmp_path / "m.onnx")
    assert ops.get("Erf") == 2 and "Abs" not in ops and "ReduceSumSquare" not in ops and ops.get("Pow") == 5
    # ... that onnxruntime fuses: every LayerNorm and GELU becomes one kernel; the project's CPU sessions keep the
    # residual Adds out of the LayerNorm kernels (SkipLayerNormalization is slower on CPU), plain onnxruntime
    # merges them
    fused = _ort_optimized_ops(tmp_path / "m.onnx", tmp_path / "ortopt.onnx")
    assert fused.get("LayerNormalization") == 5 and "SkipLayerNormalization" not in fused, fused
    sess = ort_session(str(tmp_path / "m.onnx"))
    assert sess.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
    feeds = dict(zip(["input_ids", "token_type_ids", "input_mask"], tiny["inputs"]))
    assert np.abs(sess.run(None, feeds)[0] - tiny["ref"]).max() <= 1e-4       # denormals flushed: same logits
    default = _ort_optimized_ops(tmp_path / "m.onnx", tmp_path / "ortopt.onnx", project_session=False)
    assert default.get("SkipLayerNormalization") == 5 and "LayerNormalization" not in default, default
    assert fused.get("Gelu", 0) + fused.get("BiasGelu", 0) == 2, fused
    assert "Erf" not in fused and "Sqrt" not in fused


def _op_counts(path):
    import collections
    import onnx
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _ort_optimized_ops(path, dump, project_session=True):
    """Op counts of the graph onnxruntime runs: in src/export.py's session, or in a default one."""
    if project_session:
        ort_session(str(path), optimized_model_filepath=str(dump))
    else:
        ort_session(str(path), optimized_model_filepath=str(dump), disabled_optimizers=())
    out = _op_counts(dump)
    os.remove(dump)
    return out


def test_erf_poly_gelu_equals_exact_gelu():
    x = np.linspace(-8, 8, 4001).astype(np.float32)
    got = ErfPolyGELU()(ms.Tensor(x)).asnumpy().astype(np.float64)
    exact = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
    assert np.abs(got - exact).max() < 2e-6            # A-S 7.1.26 |err| < 1.5e-7 on erf, plus fp32 rounding
    assert got[0] == pytest.approx(0.0, abs=1e-6) and got[-1] == pytest.approx(8.0, abs=1e-5)


def test_onnx_gelu_modes_erf_poly_keeps_polynomial_and_tanh_reports_difference(tiny, tmp_path):
    info = export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "e"), "ONNX", B, S, gelu="exact",
                             log=_quiet)                                 # exact = auto for ONNX: Erf
    assert info["onnx_rewrite"] == {"layernorm": 5, "gelu": 2} and _op_counts(tmp_path / "e.onnx").get("Erf") == 2
    info = export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "p"), "ONNX", B, S, gelu="erf_poly",
                             log=_quiet)
    assert info["onnx_rewrite"] == {"layernorm": 5, "gelu": 0} and info["parity"]["max_abs_logit_diff"] <= 1e-4
    ops = _op_counts(tmp_path / "p.onnx")
    assert "Erf" not in ops and ops.get("Abs") == 2
    info = export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "t"), "ONNX", B, S, gelu="tanh",
                             log=_quiet)
    assert info["hidden_act"] == "gelu_tanh" and "tanh" in info["gelu_note"]
    assert info["parity"]["max_abs_logit_diff"] > 0.0                   # the approximation is visible, reported
    # the files themselves, in onnxruntime on the fixture's batch (not the one the export measured itself on)
    ref = tiny["ref"]
    assert np.abs(ref).max() > 0.1 and not np.allclose(ref[0], ref[1], atol=1e-3)
    feeds = dict(zip(["input_ids", "token_type_ids", "input_mask"], tiny["inputs"]))
    poly = ort_session(str(tmp_path / "p.onnx")).run(None, feeds)[0]
    assert np.abs(poly - ref).max() <= 1e-4
    tanh = ort_session(str(tmp_path / "t.onnx")).run(None, feeds)[0]
    assert 1e-6 < np.abs(tanh - ref).max() < 1e-2                      # erf vs tanh GELU: about 8e-4 per value
    assert np.array_equal(tanh.argmax(-1), ref.argmax(-1))


def _run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_air_on_cpu_is_a_clear_error(tiny, tmp_path):
    r = _run("export.py", "--config_path", tiny["config"], "--ckpt_file", tiny["ckpt"], "--file_format", "AIR",
             "--file_name", str(tmp_path / "a"))
    assert r.returncode == 2
    lines = [x for x in r.stderr.strip().splitlines() if x.startswith("ERROR")]
    assert len(lines) == 1 and "AIR" in lines[0] and "Ascend" in lines[0]
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def test_bad_checkpoint_and_config_are_user_errors(tiny, tmp_path):
    other = tiny["cfg"].replace(hidden_size=24, num_attention_heads=2)
    other.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(UserError, match="--ckpt_file"):            # shape mismatch named, strict load
        export_checkpoint(str(tmp_path / "config.json"), tiny["ckpt"], str(tmp_path / "x"), "MINDIR", B, S, log=_quiet)
    with pytest.raises(UserError, match="--config_path"):
        export_checkpoint(str(tmp_path / "missing.json"), tiny["ckpt"], str(tmp_path / "x"), "MINDIR", B, S,
                          log=_quiet)
    with pytest.raises(UserError, match="file_format"):
        export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "x"), "TFLITE", B, S, log=_quiet)
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def _write_records(d, n, seed):
    from src.records import write_records, write_schema
    ids, types, mask = sample_inputs(n, S, 64, seed=seed)
    labels = np.random.default_rng(seed).integers(0, 2, n)
    cols = {"input_ids": ("int64", S), "input_mask": ("int64", S), "segment_ids": ("int64", S),
            "label_ids": ("int64", 1)}
    rows = [{"input_ids": ids[i], "input_mask": mask[i], "segment_ids": types[i], "label_ids": [labels[i]]}
            for i in range(n)]
    os.makedirs(d, exist_ok=True)
    write_records(os.path.join(d, "dev.tf_record"), rows, cols)
    write_schema(os.path.join(d, "dev_schema.json"), cols, n)


def test_run_eval_onnx_equals_checkpoint_eval(tiny, tmp_path):
    import run_eval_onnx
    data = str(tmp_path / "data")
    _write_records(data, 10, seed=5)                       # 10 rows, batch 4: the tail batch is padded
    export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "m"), "ONNX", B, S, log=_quiet)
    export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "m"), "MINDIR", B, S, log=_quiet)
    task = get_task("MR")
    arrays = load_split(data, "dev", "tfrecord", S, task)
    ref = evaluate(tiny["net"], {"dev": arrays}, B, task)
    for ext in ("onnx", "mindir"):
        got = run_eval_onnx.main(["--model_file", str(tmp_path / f"m.{ext}"), "--data_dir", data, "--task", "MR"])
        assert got == ref, ext
    with pytest.raises(UserError, match="fixed batch"):
        run_eval_onnx.main(["--model_file", str(tmp_path / "m.onnx"), "--data_dir", data, "--batch_size", "8"])


def test_width_export_equals_sliced_model(tiny, tmp_path):
    from src.width import slice_to_width
    info = export_checkpoint(tiny["config"], tiny["ckpt"], str(tmp_path / "w"), "MINDIR", B, S, width_mult=0.5,
                             log=_quiet)
    sub = slice_to_width(tiny["model"], 0.5)
    sub.set_train(False)
    ref = LogitsOnly(sub)(*[ms.Tensor(x) for x in tiny["inputs"]]).asnumpy()
    out = nn.GraphCell(ms.load(str(tmp_path / "w.mindir")))(*[ms.Tensor(x) for x in tiny["inputs"]]).asnumpy()
    np.testing.assert_array_equal(out, ref)
    assert info["width_mult"] == 0.5 and info["parity"]["max_abs_logit_diff"] == 0.0
    assert not np.allclose(out, tiny["ref"])                # really narrower than the full model


def test_export_takes_the_head_type_the_checkpoint_records(tiny, tmp_path):
    """The pooler ReLU has no parameter, so only the checkpoint's record tells the heads apart: export.py's default
    (auto) builds the recorded relu_pooler head, an explicit other head is one clear error, and so is loading the
    file into a model with the other head."""
    relu = build_classifier(tiny["cfg"], "relu_pooler")
    dense = dict(tiny["model"].parameters_and_names())
    for n, p in relu.parameters_and_names():                          # same weights, other head
        p.set_data(dense[n].data.copy())
    save_cell(relu, str(tmp_path / "relu.ckpt"))
    assert checkpoint_head_type(str(tmp_path / "relu.ckpt")) == "relu_pooler"
    assert checkpoint_head_type(tiny["ckpt"]) == "dense"
    relu.set_train(False)
    ref = LogitsOnly(relu)(*[ms.Tensor(x) for x in tiny["inputs"]]).asnumpy()
    assert np.abs(ref - tiny["ref"]).max() > 1e-3                      # the heads really differ here
    info = export_checkpoint(tiny["config"], str(tmp_path / "relu.ckpt"), str(tmp_path / "r"), "MINDIR", B, S,
                             log=_quiet)
    assert info["head_type"] == "relu_pooler"
    out = nn.GraphCell(ms.load(str(tmp_path / "r.mindir")))(*[ms.Tensor(x) for x in tiny["inputs"]]).asnumpy()
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(UserError, match=r"--head_type dense: checkpoint '.*relu\.ckpt' was saved with head_type "
                                        r"relu_pooler"):
        export_checkpoint(tiny["config"], str(tmp_path / "relu.ckpt"), str(tmp_path / "d"), "MINDIR", B, S,
                          head_type="dense", log=_quiet)
    assert not list(tmp_path.glob("d.*"))
    with pytest.raises(UserError, match=r"was saved with head_type relu_pooler, the model to load it into has "
                                        r"head_type dense"):
        load_into(build_classifier(tiny["cfg"], "dense"), str(tmp_path / "relu.ckpt"), "ckpt")


def test_onnx_rewrite_leaves_lookalikes_alone():
    """Only the exact MindSpore LayerNorm and ErfPolyGELU shapes are rewritten: an |x|-term not halved and a sum of
    squares not taken around its own mean stay as they are."""
    from onnx import TensorProto, helper
    from src.onnx_graph import standardize_model
    c = lambda name, v: helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT,
                                                                                          [], [v]))
    nodes = [c("k", 0.25), c("n", 4.0),
             helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Mul", ["a", "k"], ["m"]),
             helper.make_node("Add", ["x", "m"], ["s"]), helper.make_node("Mul", ["s", "k"], ["y1"]),
             helper.make_node("ReduceMean", ["x"], ["mu"], axes=[1]), helper.make_node("Sub", ["s", "mu"], ["d"]),
             helper.make_node("ReduceSumSquare", ["d"], ["q"], axes=[1]), helper.make_node("Div", ["q", "n"], ["y2"])]
    vi = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    model = helper.make_model(helper.make_graph(nodes, "g", [vi("x", [2, 4])], [vi("y1", [2, 4]), vi("y2", [2, 1])]))
    before = model.SerializeToString()
    assert standardize_model(model) == {"layernorm": 0, "gelu": 0}
    assert model.SerializeToString() == before
