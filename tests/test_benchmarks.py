"""benchmarks/ in --quick mode: every table has every row with positive, finite values and ratios against the
rows of the same run; result blocks are replaced between their markers; the report reads run records exactly.
Timings themselves are not asserted (shared CPU). torch is not required: its columns say "skipped"."""
import json
import math
import os
import sys

import pytest

from benchmarks import bench_compress, bench_export, bench_int8, bench_td_throughput, report
from benchmarks.common import bert_flops
from tools.marked_blocks import write_between, write_block
from src.errors import UserError
from src.tinybert_model import BertConfig
from src.tinybert_model import build_classifier

NO_PY = "no-such-python"      # forces the optional torch / onnx side to be skipped, whatever is installed


def _pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _packed_ternary(run_dir):
    """A packed W2E2A8 artefact of a tiny random model, with the config.json a run writes beside it; it keeps 16
    positions (a run's max_seq_length)."""
    from src.packing import pack
    from src.quant import QuantConfig, quantize_model, quantized_state
    from src.tinybert_model import BertForSequenceClassification
    cfg = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=12,
                     intermediate_size=96, max_position_embeddings=16, initializer_range=0.3)
    model = BertForSequenceClassification(cfg)
    quantize_model(model, QuantConfig())
    os.makedirs(run_dir)
    path = os.path.join(run_dir, "model.tpack")
    pack(quantized_state(model), cfg, QuantConfig(), path)
    cfg.to_json_file(os.path.join(run_dir, "config.json"))
    return path


def test_bench_export_quick_has_every_row(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- bench:export_latency:start -->\nold\n"
                      "<!-- bench:export_latency:end -->\n\nTail\n")
    tpack = _packed_ternary(str(tmp_path / "ternary"))
    out = bench_export.main(["--quick", "--no_mindir", "--batches", "2", "--seqs", "16", "24", "--rounds", "2",
                             "--quant_python", sys.executable, "--out_dir", str(tmp_path / "bench"),
                             "--ternary_packed", tpack, "--results", str(readme)])
    (skipped,) = [r for r in out["latency"] if r["seq"] == 24 and r["model"] == "TernaryBERT W2E2A8"]
    assert "ort_s" not in skipped and skipped["note"].startswith("skipped: the model has 16 positions")
    assert all(_pos(r["ort_s"]) for r in out["latency"] if r["seq"] == 24 and r is not skipped
               and "int8" not in r["model"])
    names = [bench_export.TEACHER, bench_export.BASE, bench_export.TINY4, bench_export.STUDENT, "TernaryBERT W2E2A8",
             "width 0.833", "width 0.667", "width 0.5"]
    lat = {r["model"]: r for r in out["latency"] if r["seq"] == 16}
    assert set(names) <= set(lat)
    for n in names:
        r = lat[n]
        assert (r["batch"], r["seq"]) == (2, 16)
        for k in ("ort_s", "ort_seq_s", "ort_gflops", "gflop_per_seq", "x_teacher", "x_base", "params"):
            assert _pos(r[k]), (n, k, r.get(k))
        assert r["ort_seq_s"] == pytest.approx(2 / r["ort_s"])
        assert len(r["ort_rounds_s"]) == 2 and r["ort_s"] == pytest.approx(sum(r["ort_rounds_s"]) / 2)
    assert lat[bench_export.TEACHER]["x_teacher"] == 1.0 and lat[bench_export.BASE]["x_base"] == 1.0
    sizes = {s["model"]: s for s in out["sizes"]}
    for n in (bench_export.STUDENT, bench_export.TINY4):                # int8 rows: quantized with onnx, timed
        r8 = lat[n + bench_export.INT8]
        assert _pos(r8["ort_s"]) and len(r8["ort_rounds_s"]) == 2 and "int8 weights" in r8["note"]
        assert 0 < sizes[n]["int8_onnx_bytes"] < sizes[n]["onnx_bytes"]
    rk = lat["TernaryBERT W2E2A8" + bench_export.KERNELS]           # the ternary row's integer-kernel form, timed
    assert _pos(rk["ort_s"]) and _pos(rk["x_teacher"]) and "MatMulInteger" in rk["note"]
    kept = tmp_path / "bench" / "onnx" / "TernaryBERT_W2E2A8_kernels.onnx"
    assert sizes["TernaryBERT W2E2A8"]["int8_onnx_bytes"] == os.path.getsize(kept) == rk["onnx_bytes"]
    import onnx
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(kept)).graph.node}
    assert list(dict.fromkeys(r["model"] for r in out["latency"]))[:2] == [bench_export.TEACHER, bench_export.BASE]
    assert set(sizes) == set(names)
    for s in sizes.values():
        assert s["fp32_bytes"] == 4 * s["params"] and _pos(s["onnx_bytes"])
        assert 0 < s["ternary_packed_bytes"] < s["fp32_bytes"]
    t = sizes["TernaryBERT W2E2A8"]                   # the artefact's own size; its model has the packed shape
    assert t["ternary_packed_bytes"] == os.path.getsize(tpack) and t["ckpt_bytes"] is None
    assert lat["TernaryBERT W2E2A8"]["params"] == lat[bench_export.TEACHER]["params"] - (64 - 16) * 48   # positions
    assert "fake-quant" in lat["TernaryBERT W2E2A8"]["note"]
    # width rows really are narrower: fewer params than the full teacher, monotone in width
    p = [lat[n]["params"] for n in ("width 0.833", "width 0.667", "width 0.5")]
    assert lat[bench_export.TEACHER]["params"] > p[0] > p[1] > p[2]
    text = readme.read_text()
    assert text.startswith("# Title") and "\nold\n" not in text
    assert text.index("<!-- bench:export_latency:end -->") < text.index("Tail") < text.index("bench:export_size:start")
    assert text.count("<!-- bench:export_latency:start -->") == 1 and "<!-- bench:export_size:start -->" in text
    assert "| width 0.5 |" in text and "nominal fp32 peak" in text
    saved = json.loads((tmp_path / "bench" / "export.json").read_text())
    assert len(saved["latency"]) == len(out["latency"])
    assert bench_export.render(saved) == bench_export.render(out)          # the saved JSON alone renders both tables
    for name, table in bench_export.BLOCKS:
        assert f"<!-- bench:{name}:start -->\n{table(saved)}\n<!-- bench:{name}:end -->" in text
    # goals judged on the unrounded ratios; --from_json writes the same blocks again without timing
    t4 = lat[bench_export.TINY4]["x_base"]
    assert f"TinyBERT-4 vs BERT-base {math.floor(t4 * 100) / 100:.2f}x ({'met' if t4 >= 14 else 'not met'};" in text
    assert bench_export._down(1.4497, 3) == "1.449" and bench_export._down(14.0, 2) == "14.00"
    t4_24 = next(r["x_base"] for r in out["latency"] if r["model"] == bench_export.TINY4 and r["seq"] == 24)
    assert f"met in {int(t4 >= 14) + int(t4_24 >= 14)} of 2 cells" in text
    again = tmp_path / "again.md"
    again.write_text(text)
    bench_export.main(["--from_json", str(tmp_path / "bench" / "export.json"), "--readme", str(again)])  # old name
    assert again.read_text() == text
    with pytest.raises(UserError, match="not an export.json"):
        (tmp_path / "bad.json").write_text("{}")
        bench_export.main(["--from_json", str(tmp_path / "bad.json")])
    with pytest.raises(UserError, match="--ternary_packed"):
        bench_export.main(["--quick", "--ternary_packed", str(tmp_path / "none.tpack"), "--out_dir", str(tmp_path)])
    os.remove(os.path.join(os.path.dirname(tpack), "config.json"))
    with pytest.raises(UserError, match="config.json"):
        bench_export.main(["--quick", "--ternary_packed", tpack, "--out_dir", str(tmp_path)])


def test_packed_size_formula_equals_the_packer(tmp_path):
    """The size table's shape formula for packed ternary bytes equals what src/packing.pack writes for that shape
    (codes + scales + fp32 tensors; the pooler Dense is ternary too, which the formula once left in fp32), for a
    uniform model and a width sub-model with per-layer sizes."""
    from benchmarks.bench_export import packed_ternary_bytes
    from src.packing import pack
    from src.quant import QuantConfig, quantize_model, quantized_state
    from src.tinybert_model import BertConfig, BertForSequenceClassification, count_params
    base = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=32, max_position_embeddings=16)
    for cfg in (base, base.replace(layer_num_heads=[4, 2], layer_intermediate_sizes=[32, 12])):
        model = BertForSequenceClassification(cfg)
        quantize_model(model, QuantConfig())
        sizes = pack(quantized_state(model), cfg, QuantConfig(), str(tmp_path / "m.tpack"))
        tensors = sizes["ternary codes"] + sizes["ternary alphas"] + sizes["fp32 tensors"]
        assert packed_ternary_bytes(cfg, count_params(model)) == tensors


def test_bench_export_without_onnx_marks_int8_rows_skipped(tmp_path):
    out = bench_export.main(["--quick", "--no_mindir", "--batches", "2", "--seqs", "16", "--quant_python", NO_PY,
                             "--out_dir", str(tmp_path)])
    lat = {r["model"]: r for r in out["latency"]}
    for n in (bench_export.STUDENT, bench_export.TINY4):
        assert "skipped" in lat[n + bench_export.INT8]["note"] and "ort_s" not in lat[n + bench_export.INT8]
    assert not [f for f in os.listdir(tmp_path / "onnx") if "int8" in f]
    assert not os.path.exists(tmp_path / "tmp_export")                 # temporary exports removed


def test_bench_int8_accuracy_is_the_eval_of_each_file(tmp_path):
    """Both files of a model are evaluated on the whole dev split exactly as run_eval_onnx.py does; the int8 copy is
    a real quantized file (integer ops); missing files and bad --model specs are clear errors."""
    import onnx
    import run_eval_onnx
    import tiny_run
    data = str(tmp_path / "data")
    tiny_run.write_split(data, "dev", 24, seed=5)
    cfg = BertConfig(**tiny_run.TINY, initializer_range=0.5)
    model = bench_export.build(bench_export._spec("tiny", cfg), "gelu_erf_poly")
    path, _ = bench_export.export_file(model, str(tmp_path / "tiny"), "ONNX", 4, tiny_run.SEQ, cfg.vocab_size)
    readme = tmp_path / "bench.md"
    out = bench_int8.main(["--quick", "--model", f"teacher-like={path}", "--data_dir", data,
                           "--quant_python", sys.executable, "--out_dir", str(tmp_path / "bench"),
                           "--results", str(readme)])
    (r,) = out["models"]
    for kind in ("fp32", "int8"):
        ref = run_eval_onnx.main(["--model_file", r[kind + "_file"], "--data_dir", data])
        assert r[kind + "_acc"] == pytest.approx(ref["acc"], abs=1e-12)
        assert _pos(r[kind + "_s"])
    assert r["int8_bytes"] == os.path.getsize(r["int8_file"]) and r["speedup"] == r["fp32_s"] / r["int8_s"]
    assert r["int8_pct_ref"] is None and out["reference"] is None
    ops = {n.op_type for n in onnx.load(r["int8_file"]).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
    assert "| teacher-like |" in readme.read_text()
    assert json.loads((tmp_path / "bench" / "int8.json").read_text())["models"][0]["int8_acc"] == r["int8_acc"]
    # the reference row may come after the rows it is the reference for
    two = bench_int8.main(["--quick", "--model", f"first={path}", "--model", f"{bench_int8.REFERENCE}={path}",
                           "--data_dir", data, "--quant_python", sys.executable, "--out_dir", str(tmp_path / "b3")])
    first, ref = two["models"]
    assert two["reference"] == bench_int8.REFERENCE and ref["fp32_pct_ref"] == pytest.approx(100.0)
    assert first["int8_pct_ref"] == pytest.approx(100 * first["int8_acc"] / ref["fp32_acc"])
    with pytest.raises(UserError, match="'nope.onnx' does not exist"):
        bench_int8.main(["--model", "x=nope.onnx", "--out_dir", str(tmp_path / "b2")])
    with pytest.raises(UserError, match="expected NAME=FILE.onnx"):
        bench_int8.main(["--model", "nope.onnx", "--out_dir", str(tmp_path / "b2")])


def test_bench_td_quick_table(tmp_path):
    out = bench_td_throughput.main(["--quick", "--buckets", "16", "--torch_python", NO_PY, "--rows", "40",
                                    "--out_dir", str(tmp_path)])
    rows = out["table"]
    assert len(rows) == 16
    for r in rows[:14]:
        assert _pos(r[1]) and _pos(r[3])              # project seq/s and seconds
        assert r[2] is None and r[4] is None and r[5] is None    # torch skipped, not invented
    ms_res = out["mindspore"]
    assert out["bucket_batches"] == {16: 10}           # 40 rows, batch 4, one bucket
    p1, fill, hit = ms_res["phase1"][16], ms_res["phase1_filling"][16], ms_res["phase1_cached"][16]
    assert rows[3][3] == fill and rows[4][3] == hit
    assert rows[5][3] == pytest.approx(10 * p1)
    # td1 cache: no remainder is dropped (40 = 10 x 4), so epoch 1 fills it and epochs 2 and 3 read every batch
    assert [r[3] for r in rows[6:9]] == pytest.approx([10 * fill, 10 * hit, 10 * hit])
    assert "(0% of batches" in rows[6][0] and "(100% of batches" in rows[7][0]
    # phase 2: the teacher-logit cache over all 40 rows at the bucket length, then 10 cached-logit steps; after a
    # phase-1 epoch every row was in a batch, so only the check of min(64, 40) kept rows runs the teacher
    per_row, train2 = ms_res["teacher_fwd_per_row"][16], 10 * ms_res["phase2_cached"][16]
    assert out["rows_in_no_phase1_batch"] == {16: 0} and "0 rows computed" in rows[10][0]
    assert rows[9][3] == pytest.approx(40 * per_row + train2)
    assert rows[10][3] == pytest.approx(40 * per_row + train2)
    assert rows[11][3] == pytest.approx(train2)
    assert rows[12][3] == pytest.approx(rows[5][3] + rows[10][3])        # first epochs: uncached phase 1
    assert rows[13][3] == pytest.approx(rows[8][3] + rows[11][3])
    c = ms_res["compile_s"]                             # compiles: reported once, not folded into the epoch
    assert rows[14][3] == pytest.approx(c["phase1_16"] + c["teacher_infer_16"] + c["phase2_cached_16"])
    assert rows[15][3] == pytest.approx(rows[14][3] + c["phase1_filling_16"] + c["phase1_cached_16"] - c["phase1_16"])
    assert rows[14][1] is None and rows[14][4] == 0.0
    # quick teacher 2 layers / 32 hidden / 4 heads -> student 1 layer: 2 hidden states + 1 attention map per row
    assert ms_res["phase1_cache_bytes_per_row"][16] == 4 * (2 * 16 * 32 + 1 * 4 * 16 * 16)
    saved = json.loads((tmp_path / "td_throughput.json").read_text())
    assert saved["torch"] is None and saved["table"] == json.loads(json.dumps(rows))
    # the saved JSON alone renders the measured block again (--from_json times nothing)
    text = bench_td_throughput.render(out)
    assert bench_td_throughput.render(saved) == text and "| TD phase 2 epoch 2+ (logits already cached) |" in text
    results = tmp_path / "results.md"
    bench_td_throughput.main(["--from_json", str(tmp_path / "td_throughput.json"), "--results", str(results)])
    assert results.read_text() == f"<!-- bench:td_throughput:start -->\n{text}\n<!-- bench:td_throughput:end -->\n"
    with pytest.raises(UserError, match="not a td_throughput.json"):
        bench_td_throughput.main(["--from_json", str(tmp_path / "results.md")])


def test_report_table_from_run_records(tmp_path):
    def run(name, accs, losses, cfg):
        d = tmp_path / name
        d.mkdir()
        with open(d / "metrics.jsonl", "w") as f:
            for i, l in enumerate(losses):
                f.write(json.dumps({"kind": "train", "step": 10 * (i + 1), "loss": l}) + "\n")
            for i, a in enumerate(accs):
                f.write(json.dumps({"kind": "eval", "step": 100 * (i + 1), "acc": a}) + "\n")
        (d / "best.ckpt").write_bytes(b"x" * 1000)
        cfg.to_json_file(str(d / "config.json"))
        return str(d)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, layer_num_heads=[2, 1], layer_intermediate_sizes=[32, 8])
    t = run("t", [0.80, 0.85], [1.0, 0.5], cfg)
    s = run("s", [0.70, 0.765, 0.75], [2.0, 1.0, 0.7], cfg.replace(num_hidden_layers=1, layer_num_heads=None,
                                                                      layer_intermediate_sizes=None))
    bench = tmp_path / "export.json"
    bench.write_text(json.dumps({"latency": [{"model": "T", "batch": 1, "seq": 64, "ort_s": 0.004},
                                             {"model": "S", "batch": 1, "seq": 64, "ort_s": 0.001}]}))
    out = report.main(["--run", f"T={t}", "--run", f"S={s}", "--run", f"X={tmp_path / 'nope'}", "--bench_json",
                       str(bench), "--out_dir", str(tmp_path / "o"), "--no_plots"])
    rows = {r[0]: r for r in out["rows"]}
    assert rows["T"][4] == 0.85 and rows["S"][4] == 0.765
    assert rows["T"][5] == pytest.approx(100.0) and rows["S"][5] == pytest.approx(90.0)
    assert rows["T"][3] == pytest.approx(4.0) and rows["S"][3] == pytest.approx(1.0)
    assert rows["S"][2] == 1000
    assert "X (" in out["text"]                         # missing run named, not dropped silently
    # the config.json parameter count equals the built model's
    from src.tinybert_model import count_params
    assert rows["T"][1] == count_params(build_classifier(cfg, "dense"))
    assert out["runs"][1]["train"] == [(10, 2.0), (20, 1.0), (30, 0.7)]
    # --latency_row: a run's latency from another export row (TernaryBERT's integer-kernel file), said in the text
    bench.write_text(json.dumps({"latency": [{"model": "T", "batch": 1, "seq": 64, "ort_s": 0.004},
                                             {"model": "S int8 kernels", "batch": 1, "seq": 64, "ort_s": 0.002}]}))
    out = report.main(["--run", f"T={t}", "--run", f"S={s}", "--bench_json", str(bench), "--latency_row",
                       "S=S int8 kernels", "--out_dir", str(tmp_path / "o"), "--no_plots"])
    assert out["rows"][1][3] == pytest.approx(2.0) and "S: latency of the export row 'S int8 kernels'" in out["text"]
    with pytest.raises(UserError, match="--latency_row 'S': expected NAME=EXPORT_ROW"):
        report.main(["--run", f"T={t}", "--latency_row", "S", "--out_dir", str(tmp_path / "o"), "--no_plots"])


def test_marked_blocks_and_flops(tmp_path):
    p = str(tmp_path / "docs" / "R.md")                # the folder is created with the file
    write_block(p, "a", "one")
    write_block(p, "b", "two")
    write_block(p, "a", "three\n\n")
    assert open(p).read() == ("<!-- bench:a:start -->\nthree\n<!-- bench:a:end -->\n\n"
                              "<!-- bench:b:start -->\ntwo\n<!-- bench:b:end -->\n")
    assert os.listdir(tmp_path / "docs") == ["R.md"]   # no temp file left beside it
    # demo_report's block: replaced in place between its own markers; a file without them is an error, unchanged
    start, end = "<!-- demo-results:start -->", "<!-- demo-results:end -->"
    d = tmp_path / "demo.md"
    d.write_text(f"# Head\n\n{start}\nold\n{end}\n\nTail\n")
    write_between(str(d), start, end, "| new |")
    assert d.read_text() == f"# Head\n\n{start}\n| new |\n{end}\n\nTail\n"
    d.write_text("no markers\n")
    with pytest.raises(UserError, match="markers <!-- demo-results:start -->"):
        write_between(str(d), start, end, "| new |")
    assert d.read_text() == "no markers\n"
    base = BertConfig()                   # BERT-base: ~11.2 GMAC = 22.4 GFLOP per 128-token sequence
    assert bert_flops(base, 128) / 1e9 == pytest.approx(22.36, rel=0.01)


def test_report_selects_a_width_and_counts_the_ternary_artefact(tmp_path):
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32)
    w = tmp_path / "ofa"
    w.mkdir()
    (w / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 1, "loss": 3.0}) + "\n"
        + json.dumps({"kind": "eval", "step": 5, "acc": 0.8, "acc_w0.500": 0.7}) + "\n"
        + json.dumps({"kind": "eval", "step": 10, "acc": 0.82, "acc_w0.500": 0.75}) + "\n")
    (w / "best.ckpt").write_bytes(b"x" * 900)
    (w / "best_w0.500.ckpt").write_bytes(b"x" * 300)
    cfg.to_json_file(str(w / "config.json"))
    half = cfg.replace(layer_num_heads=[1, 1], layer_intermediate_sizes=[16, 16])
    half.to_json_file(str(w / "config_w0.500.json"))
    q = tmp_path / "ternary"
    tpack = _packed_ternary(str(q))                         # written by pack(): keeps 16 positions
    from src.packing import read_header, unpack
    _, packed_cfg, packed_q, _, _ = unpack(tpack)
    assert read_header(tpack)["config"] == packed_cfg.to_dict() and read_header(tpack)["quant"] == packed_q.to_dict()
    run_cfg = packed_cfg.replace(max_position_embeddings=32)    # the run's config.json: 32 positions
    run_cfg.to_json_file(str(q / "config.json"))
    (q / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 3, "acc": 0.79}) + "\n")
    (q / "best.ckpt").write_bytes(b"x" * 900)
    out = report.main(["--run", f"full={w}", "--run", f"half={w}#w0.500", "--run", f"tern={q}", "--out_dir",
                       str(tmp_path / "o"), "--no_plots", "--bench_json", str(tmp_path / "none.json")])
    rows = {r[0]: r for r in out["rows"]}
    assert rows["full"][4] == 0.82 and rows["half"][4] == 0.75
    assert rows["half"][2] == 300 and rows["tern"][2] == os.path.getsize(tpack)   # what ships
    from src.tinybert_model import count_params
    assert rows["half"][1] == count_params(build_classifier(half, "dense")) < rows["full"][1]
    # the artefact's own shape: its position table keeps 16 rows, the run's config.json has 32
    assert rows["tern"][1] == count_params(build_classifier(packed_cfg, "dense"))
    assert rows["tern"][1] == count_params(build_classifier(run_cfg, "dense")) - 16 * packed_cfg.hidden_size
    assert out["runs"][1]["train"] == [] and out["runs"][0]["train"] == [(1, 3.0)]


def test_tools_never_import_benchmarks():
    """tools/ is used without the benchmark scripts (and their second venv): no module of it imports benchmarks."""
    import ast
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
    for name in sorted(os.listdir(tools)):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(tools, name), encoding="utf-8").read())
            mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            mods += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [m for m in mods if m.split(".")[0] == "benchmarks"], name


def test_report_links_plots_from_the_results_file():
    """docs/results.md links the plots report.py writes into docs/results relative to its own folder (as markdown
    resolves links), README.md at the top from there; without a results file the path stays as given."""
    assert report.image_link("docs/results/tradeoff.png", "docs/results.md") == "results/tradeoff.png"
    assert report.image_link("docs/results/tradeoff.png", "README.md") == "docs/results/tradeoff.png"
    assert report.image_link("output/bench/curves.png", "docs/results.md") == "../output/bench/curves.png"
    assert report.image_link("output/bench/curves.png", "") == "output/bench/curves.png"


def test_readme_results_writes_the_width_block_into_docs_results(tmp_path, monkeypatch):
    """By default the width block goes into docs/results.md (created with its folder), between its bench markers:
    the run's table, its teacher's recorded score and the command it came from."""
    from tools import readme_results
    run = tmp_path / "output" / "ofa_mr"
    run.mkdir(parents=True)
    (run / "width_table.md").write_text("| width | acc |\n|---|---|\n| 0.500 | 0.7000 |\n")
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 3, "acc": 0.8}) + "\n"
                                       + json.dumps({"kind": "teacher_eval", "time": 1.0, "acc": 0.81234}) + "\n")
    (run / "manifest.json").write_text(json.dumps({"config": {"teacher": {"ckpt": "t.ckpt"}},
                                                   "command": "run_ofa_width.py --config_path configs/ofa_mr.yaml",
                                                   "git": "0123456789abcdef", "machine": {"cpus": 2},
                                                   "started": "2024-01-01T00:00:00"}))
    monkeypatch.chdir(tmp_path)
    readme_results.main(["--only", "width", "--width_dir", "output/ofa_mr"])
    assert (tmp_path / "docs" / "results.md").read_text() == (
        "<!-- bench:width:start -->\n| width | acc |\n|---|---|\n| 0.500 | 0.7000 |\n\n"
        "Teacher (full model before rewiring): acc 0.8123\n\n"
        "- `output/ofa_mr`: `run_ofa_width.py --config_path configs/ofa_mr.yaml` (teacher `t.ckpt`, git 0123456789ab, "
        "2 CPUs, started 2024-01-01T00:00:00)\n<!-- bench:width:end -->\n")
    assert not (tmp_path / "README.md").exists()


def test_bench_compress_ratios_against_the_teacher_and_cells_not_possible(tmp_path):
    """The stage table of bench_compress.py on synthetic rows: each cell is the median of its round medians, every
    ratio is against the teacher row, a cell a model cannot take is '-' with its reason, and a saved result renders
    the same table again."""
    cells = ["b1/s64", "b1/s128"]

    def row(stage, kind, nbytes, packed, rounds, metric, positions=512, note="its config has"):
        return {"stage": stage, "kind": kind, "bytes": nbytes, "packed_bytes": packed, "rounds_s": rounds,
                "metric": metric, "positions": positions, "positions_note": note,
                "skipped": [c for c in cells if c not in rounds]}
    rows = bench_compress.summarize([
        row("teacher", "fp32", 8000, None, {"b1/s64": [0.010, 0.008, 0.030], "b1/s128": [0.020]}, 0.80),
        row("width", "fp32", 4000, None, {"b1/s64": [0.004, 0.004, 0.001], "b1/s128": [0.005]}, 0.78),
        row("ternary", "ternary", 500, 400, {"b1/s64": [0.002, 0.001, 0.002]}, None, 64,
            "the packed artefact keeps")], cells)
    t, w, q = rows
    assert t["ms"]["b1/s64"] == pytest.approx(10.0) and t["x_faster"]["b1/s64"] == pytest.approx(1.0)
    assert w["x_faster"]["b1/s64"] == pytest.approx(2.5) and w["x_faster"]["b1/s128"] == pytest.approx(4.0)
    assert q["x_faster"]["b1/s64"] == pytest.approx(5.0) and q["ms"]["b1/s128"] is None
    assert q["x_faster"]["b1/s128"] is None
    assert (w["x_smaller"], q["x_smaller"], q["packed_x_smaller"]) == (2.0, 16.0, 20.0)
    assert w["pct_teacher"] == pytest.approx(97.5) and q["pct_teacher"] is None
    out = {"machine": {"cpu": "cpu", "cores": 2, "threads": 2, "isa": "AVX2+FMA", "mhz": 1000.0,
                       "peak_gflops": 64.0},
           "rounds": 3, "budget_s": 0.5, "cells": cells, "metric": "acc", "export_format": "nbits_int8",
           "export_seq": 64, "run": {"dir": "r", "command": "run_compress.py", "git": "a" * 40 + "-dirty"},
           "command": "python benchmarks/bench_compress.py --run_dir r", "commit": "b" * 40, "rows": rows}
    text = bench_compress.table(out)
    lines = {ln.split(" | ")[0][2:]: ln.split(" | ") for ln in text.splitlines() if ln.startswith("| ")}
    assert lines["teacher"][5:7] == ["10.00 (1.00x)", "20.00 (1.00x)"]
    assert lines["width"][3:7] == ["2.0x", "-", "4.00 (2.50x)", "5.00 (4.00x)"]
    assert lines["ternary"][4:7] == ["400 (20.0x)", "2.00 (5.00x)", "-"]
    assert lines["ternary"][7:] == ["-", "- |"] and lines["width"][7:] == ["0.7800", "97.5% |"]
    assert "ternary at seq 128 (every batch): the packed artefact keeps 64 position rows" in text
    assert "width at" not in text
    assert "git aaaaaaaaaaaa-dirty" in text and "at commit bbbbbbbbbbbb." in text
    path = tmp_path / "compress.json"
    path.write_text(json.dumps(out))
    assert bench_compress.table(bench_compress.main(["--from_json", str(path)])) == text


def _write_run(d, records, log_lines=()):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(d, "log.txt"), "w") as f:
        f.writelines(line + "\n" for line in log_lines)


def test_ternary_attention_table_reads_each_run_record(tmp_path):
    """bench_ternary_attention's parsers: a run's best dev metric is the best of its evals (not the last one), its
    packed-model metric the packed_eval record, its teacher the teacher_eval before training; the width stage's row
    is the one of the width asked for (not the full width, which is recorded first). The percentages are against
    the fp32 sub-model and the fine-tuned teacher, and two seeds of one option give its mean."""
    from benchmarks import bench_ternary_attention as bta
    width = str(tmp_path / "width")
    _write_run(width, [{"kind": "teacher_eval", "acc": 0.81},
                       {"kind": "width", "width": 1.0, "depth": 1.0, "metric": 0.805, "best_step": 100, "heads": "12"},
                       {"kind": "width", "width": 0.5, "depth": 1.0, "metric": 0.8, "best_step": 150, "heads": "6"}],
               ["training done: 150 steps, 2400 sequences in 91.9s (26.1 seq/s)"])
    sub = bta.parse_width_run(width, 0.5)
    assert (sub["metric"], sub["heads"], sub["teacher"], sub["train_s"]) == (0.8, "6", 0.81, 91.9)
    assert sub["ckpt"] == os.path.join(width, "best_w0.500.ckpt")
    with pytest.raises(RuntimeError, match="no width 0.75 row"):
        bta.parse_width_run(width, 0.75)

    def ternary(name, accs, packed, teacher):
        d = str(tmp_path / name / "w2e2a8")
        recs = [{"kind": "teacher_eval", "acc": teacher}]
        best = 0.0
        for i, a in enumerate(accs):
            best = max(best, a)
            recs += [{"kind": "train", "step": 50 * i + 40, "loss": 1.0},
                     {"kind": "eval", "step": 50 * (i + 1), "acc": a, "best": best}]
        recs.append({"kind": "packed_eval", "acc": packed, "ratio": 15.0})
        _write_run(d, recs, ["epoch: 1, step: 200, outputs are 1.0",
                             "training done: 200 steps, 6400 sequences in 120.5s (53.1 seq/s)"])
        return bta.parse_ternary_run(d)

    a = ternary("a", [0.70, 0.78, 0.74, 0.76], 0.77, 0.83)
    assert (a["best"], a["best_step"], a["packed"], a["teacher"], a["steps"], a["train_s"]) == \
        (0.78, 100, 0.77, 0.83, 200, 120.5)
    c1, c2 = ternary("c1", [0.79, 0.80], 0.80, 0.8), ternary("c2", [0.77], 0.76, 0.8)
    runs = [{"option": "a", "teacher_option": "a", "teacher_name": "fine-tuned teacher", "attention": "average",
             "seed": 1234, "wall_s": 200.4, **a},
            {"option": "c", "teacher_option": "c", "teacher_name": "fp32 width sub-model", "attention": "each",
             "seed": 1234, "wall_s": 150.0, **c1},
            {"option": "c", "teacher_option": "c", "teacher_name": "fp32 width sub-model", "attention": "each",
             "seed": 7, "wall_s": 151.0, **c2}]
    out = {"metric": "acc", "seed": 1234, "width": 0.5, "width_list": [1.0, 0.5], "width_steps": 150, "steps": 200,
           "eval_every": 50, "batch_size": 32, "fp32_sub_model": {**sub, "wall_s": 108.0}, "teacher_metric": 0.83,
           "runs": runs, "quick": False}
    lines = bta.render(out).splitlines()
    cells = [[c.strip() for c in line.split("|")] for line in lines if line.startswith("| ")]
    row = {c[1]: c for c in cells}
    assert row["a"][6:11] == ["0.7800", "0.7700", "97.5%", "94.0%", "200"]
    assert row["fp32 width 0.5 sub-model (6 heads)"][6:11] == ["0.8000", "-", "100.0%", "96.4%", "108"]
    assert row["fp32 depth student (full width)"][6] == "0.8100"
    text = bta.render(out)
    assert "c 0.7850 (2 seeds, 98.1% of the fp32 sub-model)" in text
    assert "Ranked by mean best dev acc: c (0.7850) > a (0.7800)" in text


def test_bench_gd_corpus_estimates_from_a_saved_result(tmp_path):
    """--from_json re-renders a saved result: the estimate rows are words x tokens per word / tokens per row, the
    times rows / rate, the 8-device column 1/8 of them; a file of another kind is one UserError."""
    from benchmarks import bench_gd_corpus as b
    run = dict(rows=100_000, seconds=50.0, rows_per_s=2000.0, rows_per_s_per_process=2000.0, cpu_s=40.0,
               rows_per_cpu_s=2500.0, load_1min=1.0, rss_main_mb=70.0, rss_worker_mb=0.0)
    saved = {"machine": {"cpu": "x", "cores": 2, "threads": 2, "mhz": 1000.0, "flop_per_cycle": 32, "peak_gflops": 64,
                         "isa": "AVX2+FMA"},
             "prepare": [dict(run, docs=25000, workers=1), dict(run, docs=25000, workers=2, rows_per_s=3000.0),
                         dict(run, docs=3125, workers=1, rows=12500)],
             "shape": {"words": 1, "tokens": 1, "tokens_per_word": 1.25, "text_tokens_per_row": 100.0,
                       "random_next_share": 0.55, "shards": 10},
             "gd": {"steps": 6, "batch": 32, "seq": 128, "seq_per_s": 10.0, "first_step_seq_per_s": 1.0, "wall_s": 1},
             "wiki_words": 2.5e9, "devices": 8}
    path = tmp_path / "gd_corpus.json"
    path.write_text(json.dumps(saved))
    results = tmp_path / "results.md"
    b.main(["--from_json", str(path), "--results", str(results)])
    text = results.read_text()
    assert "1.50x the rows/s of 1" in text
    # 2.5e9 x 1.25 / 100 = 31.25 M rows: 15,625 s preparing at 2000 rows/s (4.3 h, 8 devices 33 min), GD 3.125 M s
    assert "| ~2.5B words (English Wikipedia size) | 31.2 M | 4.3 h | 33 min | 36 days | 5 days |" in text
    assert "| all 25,000 IMDB reviews (scripts/run_gd_imdb_full.sh) | 100 k | 50 s | 6 s | 2.8 h | 21 min |" in text
    path.write_text(json.dumps({"prepare": []}))
    with pytest.raises(UserError, match="not a GD corpus benchmark result"):
        b.main(["--from_json", str(path)])


def _grid_json():
    """A width_grid.json as bench_width_grid.measure writes it, with made-up scores: staged below joint at one point."""
    from benchmarks import bench_width_grid as g
    runs = {}
    for name, base in (("stage1", 0.81), ("stage2", 0.80), ("joint", 0.79)):
        rows = {}
        for d in (g.DEPTHS if name != "stage1" else (1.0,)):
            for w in g.WIDTHS:
                rows[f"{w:.3f}_{d:.3f}"] = {"width": w, "depth": d, "metric": base - 0.01 * (1 - w) - 0.02 * (1 - d)}
        runs[name] = {"rows": rows, "teacher_acc": 0.82, "command": f"run_ofa_width.py {name}", "git": "abc",
                      "train_s": 600.0}
    runs["joint"]["rows"]["0.250_0.500"]["metric"] = 0.99
    points = [{"width": w, "depth": d, "layers": 6, "heads": 12, "ffn": 1536, "params": 1000, "ort_ms": 10.0 * w * d,
               "staged_parity": 1e-6, "joint_parity": 2e-6} for d in g.DEPTHS for w in g.WIDTHS]
    return {"machine": {"cpu": "cpu", "cores": 2, "threads": 2, "isa": "AVX2+FMA", "mhz": 2000.0,
                        "peak_gflops": 128.0}, "steps1": 80, "steps2": 80, "seq": 64, "rounds": 3, "runs": runs,
            "points": points}


def test_bench_width_grid_renders_a_saved_json_and_its_runs(tmp_path):
    """--from_json renders the grid again into the markers (no training); the goal line and the staged-vs-joint
    verdict come from the numbers; stage 2 starts from stage 1's supernet, joint trains steps1 + steps2 steps."""
    from benchmarks import bench_width_grid as g
    saved = tmp_path / "width_grid.json"
    saved.write_text(json.dumps(_grid_json()))
    doc = tmp_path / "doc.md"
    doc.write_text("# grid\n<!-- bench:width_grid:start -->\nold\n<!-- bench:width_grid:end -->\n")
    g.main(["--from_json", str(saved), "--results", str(doc)])
    text = doc.read_text()
    assert "old" not in text and "Schedule: stage 1 80 steps (widths only), stage 2 80 steps from it; joint 160" in text
    # staged 0.5 x 0.5: 0.80 - 0.005 - 0.01 = 0.785 of 0.82 = 95.7 %
    assert "Goal width 0.5 x depth 0.5 staged >= 98 % of the teacher: 95.7 %, NOT met" in text
    assert "no, lower at w 0.25 x d 0.5 (" in text and "w 1 x d 1" not in text
    assert "| 0.50 | 0.50 | 6 | 12 | 1,536 | 1,000 | - | 0.7850 | 95.7 % | 0.7750 | 94.5 % | +1.22 | 2.50 | 4.00x |" \
        in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": {}}))
    with pytest.raises(UserError, match="--from_json"):
        g.main(["--from_json", str(bad)])
    # a stage-3 result: its line against the staged score before it, the goal read on it, its commands as RUNS/...
    with_s3 = _grid_json()
    with_s3["stage3"] = [{"width": 0.5, "depth": 0.5, "acc": 0.8077, "evals": 1, "steps": 213, "git": "abc",
                          "commands": ["tools/slice_width.py --ckpt /x/y/stage2/supernet.ckpt --output_dir "
                                       "/x/y/stage3_0.500_d0.500/sub"]}]
    text = g.render(with_s3)
    assert ("- w 0.5 x d 0.5: stage 3 acc 0.8077 = 98.5 % of the teacher (staged before it 95.7 %, +2.8 pts), 213 td2 "
            "steps, best of 1 dev evaluation(s); goal >= 98 % met") in text
    assert "`tools/slice_width.py --ckpt RUNS/stage2/supernet.ckpt --output_dir RUNS/stage3_0.500_d0.500/sub`" in text
    args = g.parse_args(["--runs_dir", "R", "--steps1", "7", "--steps2", "5"])
    s2, joint = g.run_args(args, "stage2"), g.run_args(args, "joint")
    assert s2[s2.index("--supernet.init_ckpt") + 1] == os.path.join("R", "stage1", "supernet.ckpt")
    assert s2[s2.index("--train.distill_from") + 1] == "supernet" and s2[s2.index("--loss.lambda2") + 1] == "1.0"
    assert joint[joint.index("--train.max_steps") + 1] == "12" and "--train.distill_from" not in joint


def test_bench_conll_rows_against_their_references(tmp_path):
    """Best dev F1 of each run, test F1 from an eval folder (split test only) or a saved run_eval_onnx output, %
    of the teacher (TernaryBERT: of its fp32 model's dev F1), the goal met or not, '-' rows for runs not given."""
    from benchmarks import bench_conll

    def run(name, records, config, command="run_x.py"):
        d = tmp_path / name
        d.mkdir(parents=True)
        with open(d / "metrics.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        (d / "manifest.json").write_text(json.dumps({"command": command, "git": "abcdef1234567890", "config": config}))
        return str(d)
    tr = [{"kind": "train", "step": 50}, {"kind": "train", "step": 100}]
    teacher = run("td/teacher", tr + [{"kind": "eval", "f1": 0.80}, {"kind": "eval", "f1": 0.90},
                                      {"kind": "eval", "f1": 0.85}], {"finetune": {"batch_size": 32}})
    run("td/td1", [{"kind": "train", "step": 150}], {"td1": {"batch_size": 32}}, "run_td1.py")
    student = run("td/td2", tr + [{"kind": "eval", "f1": 0.873}], {"td2": {"batch_size": 32}})
    ternary = run("tern", tr + [{"kind": "teacher_eval", "f1": 0.80}, {"kind": "eval", "f1": 0.79}],
                  {"train": {"batch_size": 16}})
    width = run("ofa", tr + [{"kind": "width", "width": 1.0, "metric": 0.95},
                             {"kind": "width", "width": 0.5, "metric": 0.88}],
                {"train": {"batch_size": 16}, "width_mult_list": [1.0, 0.5]})
    test_t = run("test/teacher", [{"kind": "eval", "f1": 0.80}], {"eval": {"split": "test"}}, "run_eval.py")
    onnx = tmp_path / "tern_test.txt"
    onnx.write_text("$ run_eval_onnx.py --model_file t.onnx --task CoNLL --split test\n"
                    "eval f1 0.776000, precision 0.7, recall 0.8 | 3454 rows | t.onnx\n")
    out = bench_conll.main(["--teacher_run", teacher, "--student_run", student, "--ternary_run", ternary,
                            "--width_run", width, "--test", f"teacher={test_t}", "--test", f"ternary={onnx}",
                            "--out_dir", str(tmp_path / "o"), "--runs_root", str(tmp_path)])
    rows = {r["row"]: r for r in out["rows"]}
    text = bench_conll.render(out)
    assert str(tmp_path) not in text and "--teacher_run <runs>/td/teacher" in text   # no machine paths in docs
    assert (rows["teacher"]["dev"], rows["student"]["dev"], rows["width"]["dev"]) == (0.90, 0.873, 0.88)
    assert (rows["teacher"]["test"], rows["ternary"]["test"], rows["ternary"]["fp32_dev"]) == (0.80, 0.776, 0.80)
    lines = {ln.split(" | ")[0].strip("| "): ln.split(" | ") for ln in bench_conll.render(out).splitlines()
             if ln.startswith("| ") and "---" not in ln}
    # student 0.873 / 0.90 = 97.0% (goal 97%: met); ternary 0.79 / 0.80 = 98.75% of its fp32 model (met), on test
    # 0.776 / 0.80 = 97.0% of the teacher; width 0.88 / 0.90 = 97.8% (goal 98%: not met)
    assert lines["TinyBERT student"][4:8] == ["97.0%", "-", ">= 97%", "met"]
    assert lines["TinyBERT student"][8].startswith("td1 150 steps x 32, td2 100 steps x 32")
    assert lines["TernaryBERT W2E2A8"][1:8] == ["0.7900", "0.7760", "its fp32 model", "98.8%", "97.0%", ">= 98%",
                                                "met / not met"]           # the goal held on dev and on test
    assert lines["width 0.5 (DynaBERT)"][4:8] == ["97.8%", "-", ">= 98%", "not met"]
    assert "(widths 1, 0.5)" in lines["width 0.5 (DynaBERT)"][8]
    # the compression pipeline's row: the final file's dev F1 and bytes from stages.json, each stage's steps
    comp = tmp_path / "comp"
    for sub, step in (("depth/td1", 150), ("depth/td2", 436), ("width", 200), ("ternary/w2e2a8", 439)):
        run(f"comp/{sub}", [{"kind": "train", "step": step}], {})
    stages = [{"stage": "teacher", "metric": 0.9, "bytes": 9000, "x_smaller": 1.0},
              {"stage": "export", "metric": 0.81, "bytes": 1000, "x_smaller": 9.0}]
    (comp / "stages.json").write_text(json.dumps(stages))
    (comp / "manifest.json").write_text(json.dumps({"command": "run_compress.py", "git": "abc", "config": {}}))
    test_c = tmp_path / "comp_test.txt"
    test_c.write_text("$ run_eval_onnx.py --model_file comp/export/model.onnx --task CoNLL --split test\n"
                      "eval f1 0.720000, precision 0.7, recall 0.8 | 3454 rows\n")
    out = bench_conll.main(["--teacher_run", teacher, "--compound_run", str(comp), "--test", f"teacher={test_t}",
                            "--test", f"compound={test_c}", "--out_dir", str(tmp_path / "o")])
    line = next(ln for ln in bench_conll.render(out).splitlines() if ln.startswith("| compressed"))
    assert line.split(" | ")[1:8] == ["0.8100", "0.7200", "teacher", "90.0%", "90.0%", "-", "-"], line
    assert "td1 150, td2 436, width 200, ternary 439 steps; export file 1,000 bytes, 9.0x smaller" in line
    # without a teacher_eval record (eval.teacher_baseline false) the fp32 model is the teacher checkpoint it
    # quantized: the dev F1 recorded beside it (0.90)
    tern2 = run("tern2", tr + [{"kind": "eval", "f1": 0.883}],
                {"train": {"batch_size": 16}, "teacher": {"ckpt": os.path.join(teacher, "best.ckpt")}})
    out = bench_conll.main(["--teacher_run", teacher, "--ternary_run", tern2, "--out_dir", str(tmp_path / "o")])
    assert [r["fp32_dev"] for r in out["rows"] if r["row"] == "ternary"] == [0.90]
    assert "| TernaryBERT W2E2A8 | 0.8830 | - | its fp32 model | 98.1% | - | >= 98% | met |" in bench_conll.render(out)
    # a run with quant.weight_rowwise says so in its label, in the table and in its command line
    tern3 = run("tern3", tr + [{"kind": "eval", "f1": 0.883}],
                {"train": {"batch_size": 16}, "quant": {"weight_rowwise": True},
                 "teacher": {"ckpt": os.path.join(teacher, "best.ckpt")}})
    text = bench_conll.render(bench_conll.main(["--teacher_run", teacher, "--ternary_run", tern3,
                                                "--out_dir", str(tmp_path / "o")]))
    assert "| TernaryBERT W2E2A8 (row-wise Dense alphas) | 0.8830 |" in text
    assert "- TernaryBERT W2E2A8 (row-wise Dense alphas): `run_x.py`" in text
    # so do a prediction-loss weight other than 1 and train data with augmented copies (its augment.json)
    aug = tmp_path / "aug_data"
    aug.mkdir()
    (aug / "augment.json").write_text(json.dumps({"copies": 4}))
    tern4 = run("tern4", tr + [{"kind": "eval", "f1": 0.883}],
                {"train": {"batch_size": 16}, "quant": {"weight_rowwise": True}, "loss": {"pred_weight": 10.0},
                 "data": {"dir": str(aug)}, "teacher": {"ckpt": os.path.join(teacher, "best.ckpt")}})
    text = bench_conll.render(bench_conll.main(["--teacher_run", teacher, "--ternary_run", tern4,
                                                "--out_dir", str(tmp_path / "o")]))
    assert ("| TernaryBERT W2E2A8 (row-wise Dense alphas, prediction loss x10, train data + 4 augmented copies) "
            "| 0.8830 |") in text
    # and LAT weights (quant.weight_method lat) and a learning rate other than MindSpore TernaryBERT's 5e-5
    tern5 = run("tern5", tr + [{"kind": "eval", "f1": 0.883}],
                {"train": {"batch_size": 16, "lr": 1e-4}, "quant": {"weight_method": "lat", "weight_rowwise": True},
                 "teacher": {"ckpt": os.path.join(teacher, "best.ckpt")}})
    text = bench_conll.render(bench_conll.main(["--teacher_run", teacher, "--ternary_run", tern5,
                                                "--out_dir", str(tmp_path / "o")]))
    assert "| TernaryBERT W2E2A8 (LAT weights, row-wise Dense alphas, lr 0.0001) | 0.8830 |" in text
    # a run not given is a '-' row; an eval of the dev split is no test score
    out = bench_conll.main(["--teacher_run", teacher, "--out_dir", str(tmp_path / "o")])
    assert "| TernaryBERT W2E2A8 | - | - | - | - | - | >= 98% | not run | - |" in bench_conll.render(out)
    # another block: only the rows given, into bench:NAME of the results file and NAME.json
    md = tmp_path / "results.md"
    md.write_text("<!-- bench:conll:start -->\nkept\n<!-- bench:conll:end -->\n")
    out = bench_conll.main(["--teacher_run", teacher, "--ternary_run", tern2, "--block", "conll_rerun", "--out_dir",
                            str(tmp_path / "o"), "--results", str(md)])
    written = md.read_text()
    assert "kept" in written and "<!-- bench:conll_rerun:start -->" in written
    assert "| TernaryBERT W2E2A8 | 0.8830 |" in written and "TinyBERT student" not in written
    assert os.path.isfile(tmp_path / "o" / "conll_rerun.json")
    assert bench_conll.main(["--from_json", str(tmp_path / "o" / "conll_rerun.json")])["block"] == "conll_rerun"
    dev_eval = run("test/dev", [{"kind": "eval", "f1": 0.8}], {"eval": {"split": "dev"}})
    with pytest.raises(UserError, match="expected --eval.split test"):
        bench_conll.main(["--teacher_run", teacher, "--test", f"teacher={dev_eval}", "--out_dir", str(tmp_path)])
    with pytest.raises(UserError, match="--test x=1: expected ROW=PATH"):
        bench_conll.main(["--teacher_run", teacher, "--test", "x=1", "--out_dir", str(tmp_path)])
