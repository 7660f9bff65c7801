"""benchmarks/investigations/bench_ort_settings.py in --quick mode: each study measures what it claims (the optimized
graphs hold the nodes they should, both settings give the same outputs, ratios are those of the rows of the same run),
writes its block, and a saved study JSON renders the same table again. Not part of the default test run
(`pytest tests`): run it with `python -m pytest -q benchmarks/investigations`."""
import json
import math
import os

import pytest

from benchmarks.bench_export import BASE, TEACHER, TINY4
from benchmarks.investigations import bench_ort_settings as S
from src.errors import UserError


def _pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_ort_layernorm_quick(tmp_path):
    """Both sessions of every model are what they claim: onnxruntime's default merges every LayerNorm with its
    residual Add (SkipLayerNormalization), the project's session (src/ort_cpu.py) merges none; same logits."""
    readme = tmp_path / "bench.md"
    out = S.main(["--study", "skip_layernorm", "--quick", "--out_dir", str(tmp_path / "bench"), "--results",
                  str(readme)])
    assert [(r["rows"], r["hidden"]) for r in out["kernels"]] == [(8, 24)]
    k = out["kernels"][0]
    assert _pos(k["skip_s"]) and _pos(k["add_ln_s"]) and k["max_abs_diff"] < 1e-5
    models = {r["model"]: r for r in out["models"]}
    assert set(models) == {TEACHER + " shape", BASE, TINY4, "width 0.667"}
    for r in models.values():
        assert (r["batch"], r["seq"]) == (2, 16)
        assert r["fused_skip_nodes"] == r["layernorms"] and r["unfused_skip_nodes"] == 0, r
        assert _pos(r["fused_s"]) and _pos(r["unfused_s"]) and r["speedup"] == r["fused_s"] / r["unfused_s"]
        assert r["max_abs_logit_diff"] < 1e-5
    assert models[TINY4]["layernorms"] == 3 and models[BASE]["layernorms"] == 5
    (g,) = out["goals"]
    assert g["tiny_vs_base_unfused"] == pytest.approx(models[BASE]["unfused_s"]
                                                      / models[TINY4]["unfused_s"])
    assert all(_pos(v) for v in g.values())
    assert json.loads((tmp_path / "bench" / "ort_layernorm.json").read_text())["goals"] == out["goals"]
    text = readme.read_text()
    assert text.count("<!-- bench:ort_layernorm:start -->") == 1 and "| TinyBERT-4" in text
    assert not os.path.exists(tmp_path / "bench" / "tmp_ort_layernorm")
    # the saved JSON renders the same block again without timing; another study's JSON is refused
    again = tmp_path / "again.md"
    S.main(["--study", "skip_layernorm", "--from_json", str(tmp_path / "bench" / "ort_layernorm.json"),
            "--results", str(again)])
    assert again.read_text() == text
    with pytest.raises(UserError, match="a skip_layernorm study, not profile"):
        S.main(["--study", "profile", "--from_json", str(tmp_path / "bench" / "ort_layernorm.json")])


def test_bench_ort_profile_quick(tmp_path):
    """Each model's optimized graph runs the nodes it should per call (6L+1 Gemm + the pooler's FusedGemm, L QK^T
    FusedMatMul and L PV MatMul, L Softmax and GELU, 2L+1 LayerNormalization, 3L+2 Add: mask, residuals,
    embeddings), every node lands in a kind, and the goal tables are the ratios of the model rows."""
    readme = tmp_path / "bench.md"
    out = S.main(["--study", "profile", "--quick", "--out_dir", str(tmp_path / "bench"), "--results",
                  str(readme)])
    layers = {TEACHER + " shape": 2, BASE: 2, TINY4: 1, "width 0.667": 2}
    models = {r["model"]: r for r in out["models"]}
    assert set(models) == set(layers)
    for name, r in models.items():
        L, n = layers[name], r["profiled_runs"]
        assert n >= 1 and (r["batch"], r["seq"]) == (2, 16)
        per_call = {op: c / n for op, c in r["op_calls"].items()}
        assert {op: per_call.get(op) for op in ("Gemm", "FusedGemm", "FusedMatMul", "MatMul", "Softmax", "Gelu",
                                               "LayerNormalization", "Add", "SkipLayerNormalization")} == {
            "Gemm": 6 * L + 1, "FusedGemm": 1, "FusedMatMul": L, "MatMul": L, "Softmax": L, "Gelu": L,
            "LayerNormalization": 2 * L + 1, "Add": 3 * L + 2, "SkipLayerNormalization": None}, name
        assert set(r["kind_ms"]) == set(S.KIND_NAMES)
        assert r["kernel_ms"] == pytest.approx(sum(r["op_us"].values()) / 1000.0 / n)
        assert r["kernel_ms"] == pytest.approx(sum(r["kind_ms"].values()))
        assert all(_pos(r["kind_ms"][k]) for k in ("dense GEMMs", "attention matmuls", "softmax", "LayerNorm", "GELU"))
        assert _pos(r["s"]) and _pos(r["gflop"]) and 0 < r["gemm_gflop"] < r["gflop"]
    pairs = {(t["goal"], t["batch"], t["seq"]): t for t in out["pairs"]}
    assert set(pairs) == {("TinyBERT-4 vs BERT-base", 2, 16), ("width 0.667 vs full", 2, 16)}
    t = pairs[("TinyBERT-4 vs BERT-base", 2, 16)]
    base, tiny = models[BASE], models[TINY4]
    assert t["measured_ratio"] == base["s"] / tiny["s"] and t["kernel_ratio"] == base["kernel_ms"] / tiny["kernel_ms"]
    gemm = t["kinds"][0]
    assert gemm["kind"] == "dense GEMMs"
    assert gemm["ratio"] == base["kind_ms"]["dense GEMMs"] / tiny["kind_ms"]["dense GEMMs"]
    assert sum(k["small_share"] for k in t["kinds"]) == pytest.approx(1.0)
    assert json.loads((tmp_path / "bench" / "ort_profile.json").read_text())["pairs"] == out["pairs"]
    text = readme.read_text()
    assert text.count("<!-- bench:ort_profile:start -->") == 1 and "| dense GEMMs |" in text
    assert not os.path.exists(tmp_path / "bench" / "tmp_ort_profile")


def test_profile_kernel_times_skip_warmup_runs(tmp_path):
    """Only the nodes of the runs after the warm-up count, summed per op type; a profile without such a run is an
    error, not zeros."""
    ev = [{"name": "model_run", "cat": "Session", "ts": 0, "dur": 100},
          {"name": "a_kernel_time", "cat": "Node", "ts": 10, "dur": 50, "args": {"op_name": "Gemm"}},
          {"name": "model_run", "cat": "Session", "ts": 200, "dur": 100},
          {"name": "a_kernel_time", "cat": "Node", "ts": 210, "dur": 30, "args": {"op_name": "Gemm"}},
          {"name": "b_kernel_time", "cat": "Node", "ts": 250, "dur": 8, "args": {"op_name": "Erf"}},
          {"name": "a_fence_before", "cat": "Node", "ts": 250, "dur": 1, "args": {"op_name": "Gemm"}},
          {"name": "model_run", "cat": "Session", "ts": 400, "dur": 100},
          {"name": "a_kernel_time", "cat": "Node", "ts": 410, "dur": 34, "args": {"op_name": "Gemm"}}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(ev))
    k = S.kernel_times(str(path), 1)
    assert k == {"runs": 2, "op_us": {"Gemm": 64, "Erf": 8}, "op_calls": {"Gemm": 2, "Erf": 1}}
    assert S.by_kind(k["op_us"], k["runs"]) == {
        "dense GEMMs": 0.032, "attention matmuls": 0.0, "softmax": 0.0, "element-wise adds": 0.0, "LayerNorm": 0.0,
        "GELU": 0.0, "layout": 0.0, "other": 0.004}
    with pytest.raises(RuntimeError, match="no profiled run after 3"):
        S.kernel_times(str(path), 3)
    with pytest.raises(UserError, match="--cells 3by4: expected BATCHxSEQ"):
        S.main(["--study", "profile", "--quick", "--cells", "3by4", "--out_dir", str(tmp_path / "b")])


def test_bench_ort_denormal_quick(tmp_path):
    """Every measurement ran (each in its own process) with and without flushing denormals, and the two settings give
    the same softmax / logits; the goal ratios are those of the model rows."""
    readme = tmp_path / "bench.md"
    out = S.main(["--study", "denormal", "--quick", "--out_dir", str(tmp_path / "bench"), "--results",
                  str(readme)])
    assert [(r["case"], r["masked"]) for r in out["kernels"]] == [("[2, 12, 16, 16]", False), ("[2, 12, 16, 16]", True)]
    models = {r["model"]: r for r in out["models"]}
    assert set(models) == {TEACHER + " shape", BASE, TINY4, "width 0.667"}
    for r in out["kernels"] + out["models"]:
        assert _pos(r["off_s"]) and _pos(r["on_s"]) and r["speedup"] == r["off_s"] / r["on_s"]
        assert r["max_abs_diff"] < 1e-6, r
    (g,) = out["goals"]
    assert g["tiny_vs_base_on"] == pytest.approx(models[BASE]["on_s"] / models[TINY4]["on_s"])
    assert json.loads((tmp_path / "bench" / "ort_denormal.json").read_text())["goals"] == out["goals"]
    assert readme.read_text().count("<!-- bench:ort_denormal:start -->") == 1
    assert not os.path.exists(tmp_path / "bench" / "tmp_ort_denormal")


def test_alternate_rounds_item_by_item_with_the_modes_in_turn():
    calls = []
    got = S.alternate(["a", "b"], ("off", "on"), 2, lambda item, mode: calls.append((item, mode)) or len(calls))
    assert calls == [("a", "off"), ("a", "on"), ("b", "off"), ("b", "on")] * 2
    assert got == [{"off": [1, 5], "on": [2, 6]}, {"off": [3, 7], "on": [4, 8]}]
