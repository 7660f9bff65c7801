"""TernaryBERT end to end on a tiny model: quantized distillation lowers the loss, the run writes the zoo log
line, a quantized checkpoint that is ternary per tensor / per row, a packed artefact whose size ratio is
computed from the real files and whose rebuilt model scores the same dev metric; bad input fails clearly."""
import json
import os

import numpy as np
import pytest
import mindspore as ms

from src.checkpoint import read_ms_checkpoint
from src.errors import UserError
from src.records import write_records, write_schema
from src.tinybert_model import BertConfig, BertForSequenceClassification

import run_ternary
from tools import pack_ternary

SEQ = 16
VOCAB = 40
COLUMNS = {"input_ids": ("int64", SEQ), "input_mask": ("int64", SEQ), "segment_ids": ("int64", SEQ),
           "label_ids": ("int64", 1)}
TINY = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, num_labels=2)


def _rows(n, rng):
    for _ in range(n):
        length = int(rng.integers(6, SEQ + 1))
        ids = [2] + list(rng.integers(5, VOCAB, length - 2)) + [3] + [0] * (SEQ - length)
        label = int(sum(1 for t in ids if 5 <= t < 20) > length // 2)
        yield {"input_ids": ids, "input_mask": [1] * length + [0] * (SEQ - length), "segment_ids": [0] * SEQ,
               "label_ids": [label]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ternary")
    rng = np.random.default_rng(0)
    data = d / "data"
    data.mkdir()
    for split, n in (("train", 64), ("dev", 40)):
        k = write_records(data / f"{split}.tf_record", _rows(n, rng), COLUMNS)
        write_schema(data / f"{split}_schema.json", COLUMNS, k)
    teacher_dir = d / "teacher"
    teacher_dir.mkdir()
    ms.set_seed(1)
    teacher = BertForSequenceClassification(TINY.replace(initializer_range=0.2))
    ms.save_checkpoint(teacher, str(teacher_dir / "best.ckpt"))
    TINY.to_json_file(str(teacher_dir / "config.json"))
    out = d / "out"
    argv = ["--data.dir", str(data), "--data.max_seq_length", str(SEQ), "--data.length_buckets", "[]",
            "--teacher.config", str(teacher_dir / "config.json"), "--teacher.ckpt", str(teacher_dir / "best.ckpt"),
            "--output_dir", str(out), "--train.epochs", "3", "--train.batch_size", "8", "--train.lr", "0.001",
            "--train.warmup_ratio", "0.0", "--eval.batch_size", "16", "--log_every", "1",
            "--quant.activation_clip", "0.0"]
    result = run_ternary.main(argv)
    return {"dir": out / "w2e2a8", "result": result, "teacher": str(teacher_dir / "best.ckpt"), "argv": argv}


def _argv(run, out, *extra):
    """The module run's command line writing to `out` instead, then `extra`."""
    i = run["argv"].index("--output_dir")
    return run["argv"][:i] + ["--output_dir", str(out)] + run["argv"][i + 2:] + list(extra)


def _records(run_dir, kind):
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_distillation_lowers_loss_and_logs_best(run):
    d = run["dir"]
    train = _records(d, "train")
    assert len(train) == 24
    def mean(rs, key):
        return np.mean([sum(r[k] for k in key) for r in rs])
    # the student starts as a ternarized copy of the teacher: distillation must pull it back towards it
    assert mean(train[-3:], ["att", "rep"]) < 0.75 * mean(train[:3], ["att", "rep"])
    assert mean(train[-3:], ["loss"]) < 0.85 * mean(train[:3], ["loss"])
    log = (d / "log.txt").read_text()
    assert "TernaryBERT W2E2A8" in log
    best = max(r["acc"] for r in _records(d, "eval"))
    assert f"The best acc is {best:.6f}" in log


def test_quantized_checkpoint_is_ternary_at_training_granularity(run):
    q = read_ms_checkpoint(str(run["dir"] / "best_quant.ckpt"))
    latent = read_ms_checkpoint(str(run["dir"] / "best.ckpt"))
    assert set(q) == set(latent)
    emb = q["bert.embeddings.word_embeddings.embedding_table"]
    per_row = [np.unique(np.abs(r[r != 0])).size for r in emb]
    assert max(per_row) == 1
    assert np.unique(np.abs(emb[emb != 0])).size > 1          # row-wise alphas, not one per tensor
    quantized = [k for k in q if k.endswith(".weight") and not k.startswith("classifier")]
    assert len(quantized) == 2 * 6 + 1                         # 6 per layer + pooler
    for k in quantized:
        assert np.unique(q[k]).size == 3, k
    for k in ("classifier.weight", "bert.embeddings.position_embeddings.embedding_table",
              "bert.encoder.0.attention.output_LayerNorm.gamma", "bert.encoder.0.attention.query.bias"):
        np.testing.assert_array_equal(q[k], latent[k])         # full precision parts untouched


def test_packed_artefact_size_and_same_metric(run):
    d = run["dir"]
    packed = run["result"]["packed"]
    assert packed["packed_bytes"] == os.path.getsize(d / "model.tpack")
    assert packed["fp32_bytes"] == os.path.getsize(d / "best.ckpt")
    assert packed["ratio"] == pytest.approx(os.path.getsize(d / "best.ckpt") / os.path.getsize(d / "model.tpack"))
    best = max(r["acc"] for r in _records(d, "eval"))
    assert packed["acc"] == best
    assert "| packed artefact model.tpack (W2E2A8, codes 2bit)" in (d / "model_sizes.md").read_text()


def test_pack_tool_base3_export_and_report(run, capsys):
    d = run["dir"]
    assert pack_ternary.main(["--run_dir", str(d), "--codec", "base3", "--export", "MINDIR"]) == 0
    assert os.path.getsize(d / "model_base3.tpack") < os.path.getsize(d / "model.tpack")
    from src.packing import build_ternary_inference_model
    net = build_ternary_inference_model(str(d / "model_base3.tpack"))
    rng = np.random.default_rng(3)
    ids = ms.Tensor(rng.integers(0, VOCAB, (1, SEQ)).astype(np.int32))
    zeros = ms.Tensor(np.zeros((1, SEQ), np.int32))
    mask = ms.Tensor(np.ones((1, SEQ), np.int32))
    ref = net(ids, zeros, mask).asnumpy()
    graph = ms.nn.GraphCell(ms.load(str(d / "model_base3.mindir")))
    np.testing.assert_allclose(graph(ids, zeros, mask).asnumpy(), ref, rtol=0, atol=1e-6)
    side = json.loads((d / "model_base3.mindir.json").read_text())     # export.py's verified path, sidecar included
    assert side["ternary"] and side["parity"]["max_abs_logit_diff"] <= 1e-5
    # --export ONNX --int8: the integer-kernel file, verified like export.py --int8
    assert pack_ternary.main(["--run_dir", str(d), "--codec", "base3", "--export", "ONNX", "--int8"]) == 0
    side = json.loads((d / "model_base3.onnx.json").read_text())
    assert side["int8_rewrite"]["dense"] > 0 and "8-bit activations" in side["parity"]["tolerance_rule"]
    import onnx
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(d / "model_base3.onnx")).graph.node}
    with pytest.raises(UserError, match="--int8 rewrites the ONNX export: give --export ONNX"):
        pack_ternary.main(["--run_dir", str(d), "--export", "MINDIR", "--int8"])
    capsys.readouterr()
    pack_ternary.main(["--report", str(d.parent)])
    out = capsys.readouterr().out
    assert "| w2e2a8 | W2E2A8 twn" in out


def test_packing_the_fp32_teacher_is_refused(run, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(run["dir"], bad, ignore=shutil.ignore_patterns("*.tpack", "*.mindir"))
    shutil.copy(run["teacher"], bad / "best_quant.ckpt")
    with pytest.raises(UserError, match=r"'bert\..*' (row \d+ )?is not ternary.*best_quant\.ckpt"):
        pack_ternary.main(["--run_dir", str(bad)])


def test_pack_tool_needs_the_resolved_config(run, tmp_path):
    """The head type comes from the run's resolved config: without it the tool stops before writing anything."""
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(run["dir"], bare, ignore=shutil.ignore_patterns("*.tpack", "*.mindir", "*.onnx*",
                                                                    "config_resolved.yaml"))
    with pytest.raises(UserError, match=r"config_resolved\.yaml missing: expected the run's resolved config"):
        pack_ternary.main(["--run_dir", str(bare)])
    assert not list(bare.glob("*.tpack*"))


@pytest.mark.parametrize("flag,value,msg", [
    ("--pack.codec", "3bit", r"pack\.codec '3bit': expected one of \['2bit', 'base3'\]"),
    ("--pack.max_positions", "64", r"pack\.max_positions 64: expected 1\.\.32")])
def test_bad_pack_option_stops_before_training(run, tmp_path, flag, value, msg):
    """Packing runs after training: its options are checked before the first step, and nothing is written."""
    out = tmp_path / "bad_pack"
    with pytest.raises(UserError, match=msg):
        run_ternary.main(_argv(run, out, flag, value))
    assert not out.exists()


def test_empty_teacher_ckpt_with_a_student_checkpoint_is_an_error(run, tmp_path):
    """student.init ckpt reads the student from its own file; `--teacher.ckpt ""` must still be refused, not
    leave the freshly built teacher untrained and distil from it."""
    out = tmp_path / "no_teacher"
    with pytest.raises(UserError, match=r"teacher\.ckpt: no path given"):
        run_ternary.main(_argv(run, out, "--student.init", "ckpt", "--student.ckpt", run["teacher"],
                               "--teacher.ckpt", ""))
    assert not out.exists()


def test_error_after_training_keeps_the_trained_run(run, tmp_path, monkeypatch):
    """A failure in the packing step after training keeps the run's checkpoints and log (it once removed
    everything the run had written)."""
    from src.runs import ternary

    def fail(*_, **__):
        raise UserError("disk full while packing")
    monkeypatch.setattr(ternary, "pack_run", fail)
    out = tmp_path / "kept"
    with pytest.raises(UserError, match="disk full while packing"):
        run_ternary.main(_argv(run, out, "--train.epochs", "1"))
    d = out / "w2e2a8"
    for name in ("best.ckpt", "best_quant.ckpt", "log.txt", "metrics.jsonl", "config_resolved.yaml"):
        assert (d / name).is_file(), name


def _cells_holding_graphs():
    import gc
    from mindspore import nn
    gc.collect()
    seen = []
    for o in gc.get_objects():
        try:
            if isinstance(o, nn.Cell) and o.compile_cache:
                seen.append(type(o).__name__)           # a cell that still holds compiled graphs
        except ReferenceError:                     # a weak proxy whose object is gone
            pass
    return seen


def test_the_fit_graphs_are_released_before_the_packed_model_compiles(run, tmp_path, monkeypatch):
    """When packing starts, no graph of the fit is held any more (on CoNLL's four buckets the fit's graphs took
    ~20 GB and the packed model's eval beside them ran the machine out of memory)."""
    from src.runs import ternary
    seen, real = [], ternary.pack_run

    def pack_and_look(*a, **kw):
        seen.extend(_cells_holding_graphs())
        return real(*a, **kw)
    monkeypatch.setattr(ternary, "pack_run", pack_and_look)
    assert run_ternary.main(_argv(run, tmp_path / "o", "--train.epochs", "1"))["packed"]["ratio"] > 1
    assert seen == []


def test_the_teacher_baseline_memory_is_recycled_before_training(run, tmp_path, monkeypatch):
    """The fp32 teacher's eval (eval.teacher_baseline) gives back MindSpore's cached runtime memory of its graphs
    before the student trains, and the fit's before packing: deleting a cell frees its graph but not that memory,
    which only ms_memory_recycle returns (a CoNLL run held both beside its training graphs)."""
    import mindspore
    from src.runs import ternary
    events, real = [], mindspore.ms_memory_recycle

    def recycle():
        events.append("recycle")
        real()

    class Look(ternary.Trainer):
        def fit(self):
            events.append("fit")
            return super().fit()
    monkeypatch.setattr(mindspore, "ms_memory_recycle", recycle)
    monkeypatch.setattr(ternary, "Trainer", Look)
    run_ternary.main(_argv(run, tmp_path / "o", "--train.epochs", "1", "--eval.teacher_baseline", "true"))
    assert events == ["recycle", "fit", "recycle"]
    assert [r["kind"] for r in _records(tmp_path / "o" / "w2e2a8", "teacher_eval")] == ["teacher_eval"]
    assert _cells_holding_graphs() == []


def test_loss_scale_lets_the_trainer_skip_overflowing_steps(run, tmp_path, monkeypatch):
    """optim.loss_scale > 1 (the Ascend/GPU fp16 path): TrainStep skips a step whose scaled gradients overflow and
    returns an inf norm; the Trainer must then go on, as in TD and GD, not stop with 'gradient norm is inf'
    (run_ternary once did not tell it). Scales that overflow this tiny model's fp32 gradients underflow 1/scale,
    so the Trainer's setting is checked where run_ternary builds it."""
    from src.runs import ternary
    seen = {}

    class Spy(ternary.Trainer):
        def __init__(self, *args, **kwargs):
            seen["skip_overflow_steps"] = kwargs.get("skip_overflow_steps")
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(ternary, "Trainer", Spy)
    for scale, expected in (("1024", True), ("1.0", False)):
        run_ternary.main(_argv(run, tmp_path / scale, "--train.max_steps", "1", "--pack.after_train", "false",
                               "--optim.loss_scale", scale))
        assert seen.pop("skip_overflow_steps") is expected


def test_lat_with_only_a_ternary_embedding_refreshes_its_hessian(run, tmp_path):
    """LAT with 8-bit Dense weights and the ternary word embedding: the run refreshes the embedding's D after every
    step (it once refreshed only when the Dense weights were ternary, so D stayed 1 and LAT ran as lat_d1)."""
    run_ternary.main(_argv(run, tmp_path / "lat", "--train.max_steps", "2", "--pack.after_train", "false",
                           "--quant.weight_method", "lat", "--quant.bits.weight", "8", "--quant.bits.embedding", "2"))
    log = next((tmp_path / "lat").glob("*/log.txt")).read_text()
    assert "LAT: D = sqrt(Adam v) + eps refreshed after every step for 1 weight(s)" in log


def test_unsupported_bit_width_is_a_user_error(run):
    with pytest.raises(UserError, match=r"quant\.bits\.weight 3 not supported: expected one of \[2, 4, 8, 32\]"):
        run_ternary.main(run["argv"] + ["--quant.bits.weight", "3"])


@pytest.fixture(scope="module")
def narrow_student(run, tmp_path_factory):
    """A width-0.5 sub-model of the run's teacher (1 head per layer where the teacher has 2), as a width run
    slices it: the student of a width -> TernaryBERT chain."""
    from src.checkpoint import save_cell
    from src.width import slice_to_width
    d = tmp_path_factory.mktemp("narrow")
    teacher = BertForSequenceClassification(TINY)
    ms.load_param_into_net(teacher, ms.load_checkpoint(run["teacher"]))
    sub = slice_to_width(teacher, 0.5)
    assert [sub.config.heads(i) for i in range(2)] == [1, 1]
    save_cell(sub, str(d / "model.ckpt"))
    sub.config.to_json_file(str(d / "config.json"))
    return str(d / "model.ckpt")


def _narrow_argv(run, out, ckpt, *extra):
    return _argv(run, out, "--student.init", "ckpt", "--student.ckpt", ckpt, "--train.epochs", "1",
                 "--pack.after_train", "false", *extra)


@pytest.mark.slow
def test_width_submodel_with_fewer_heads_goes_on_to_ternarybert(run, narrow_student, tmp_path):
    """A student with fewer heads than its teacher: the per-head attention loss is one clear error naming the
    ways out; loss.attention_heads average (head-mean scores) trains, its attention term is real and falls; with
    loss.attention_weight 0 the attention term is not built at all (it once built it and failed in the fused
    masked-loss kernel's shape check)."""
    with pytest.raises(UserError, match="attention loss needs equal head counts: student layer 0 has 1, teacher "
                                        "layer 0 has 2 \\(set loss.attention_heads average"):
        run_ternary.main(_narrow_argv(run, tmp_path / "each", narrow_student))
    assert not (tmp_path / "each").exists()
    run_ternary.main(_narrow_argv(run, tmp_path / "avg", narrow_student, "--loss.attention_heads", "average"))
    train = _records(tmp_path / "avg" / "w2e2a8", "train")
    assert "layer map: attention [0, 1] (head-mean scores), hidden [0, 1, 2]" in \
        (tmp_path / "avg" / "w2e2a8" / "log.txt").read_text()
    assert train[0]["att"] > 1e-3 and np.mean([r["att"] for r in train[-3:]]) < np.mean([r["att"] for r in train[:3]])
    run_ternary.main(_narrow_argv(run, tmp_path / "no_att", narrow_student, "--loss.attention_weight", "0"))
    train = _records(tmp_path / "no_att" / "w2e2a8", "train")
    assert "layer map: attention none (loss.attention_weight 0), hidden [0, 1, 2]" in \
        (tmp_path / "no_att" / "w2e2a8" / "log.txt").read_text()
    assert all(r["att"] == 0.0 for r in train) and train[-1]["rep"] < train[0]["rep"]


def test_quant_ablation_recomputes_the_run_and_its_fp32_model(run, tmp_path):
    """benchmarks/bench_quant_ablation.py: "as trained" is the run's best eval and "fp32 model" its teacher_eval,
    recomputed from best.ckpt / teacher.ckpt under the run's config (a wrong checkpoint, quant config or eval
    setting moves them); every row is measured (per-batch scales: the A8-only row too); a saved result renders
    again."""
    from benchmarks import bench_quant_ablation
    out = bench_quant_ablation.main(["--run_dir", str(run["dir"]), "--out_dir", str(tmp_path),
                                     "--block", "quant_ablation_test"])
    by = {r["key"]: r["value"] for r in out["rows"]}
    assert by["as_trained"] == max(r["acc"] for r in _records(run["dir"], "eval"))
    assert by["fp32"] == _records(run["dir"], "teacher_eval")[0]["acc"]
    assert [r["key"] for r in out["rows"]] == [k for k, *_ in bench_quant_ablation.ROWS]
    assert all(isinstance(v, float) for v in by.values())
    again = bench_quant_ablation.main(["--from_json", str(tmp_path / "quant_ablation.json"),
                                       "--block", "quant_ablation_test"])
    assert bench_quant_ablation.render(again) == bench_quant_ablation.render(out)


def test_quant_ablation_needs_a_ternary_run_folder(tmp_path):
    from benchmarks import bench_quant_ablation
    with pytest.raises(UserError, match="config_resolved.yaml missing"):
        bench_quant_ablation.main(["--run_dir", str(tmp_path), "--out_dir", str(tmp_path)])


def test_quant_ablation_of_a_run_with_frozen_activation_scales(run, tmp_path):
    """EMA scales live in best.ckpt: "as trained" loads them (recomputing the run's best eval), the rows without
    activation fake-quant leave them out, and the A8-only row of the untrained fp32 model is not measured."""
    from benchmarks import bench_quant_ablation
    run_ternary.main(_argv(run, tmp_path / "ema", "--quant.activation_scale", "ema", "--train.epochs", "1",
                           "--pack.after_train", "false"))
    d = tmp_path / "ema" / "w2e2a8"
    out = bench_quant_ablation.main(["--run_dir", str(d), "--out_dir", str(tmp_path)])
    by = {r["key"]: r["value"] for r in out["rows"]}
    assert by["as_trained"] == max(r["acc"] for r in _records(d, "eval"))
    assert by["fp32_a8"] is None and isinstance(by["a32"], float)
    assert "| fp32 model, A8 only (no training) | - | - | - |" in bench_quant_ablation.render(out)
