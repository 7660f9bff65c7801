"""onnxruntime CPU settings, measured: why the sessions of src/ort_cpu.py leave two of onnxruntime's defaults, and
where the time of the models behind the export latency goals goes. One study per run:

    python benchmarks/investigations/bench_ort_settings.py --study skip_layernorm   # ~4 min on 2 cores
    python benchmarks/investigations/bench_ort_settings.py --study denormal         # ~4 min on 2 cores
    python benchmarks/investigations/bench_ort_settings.py --study profile          # ~6 min on 2 cores
        --results docs/benchmarks.md    # also write the study's table there (bench:ort_layernorm, bench:ort_denormal,
                                        # bench:ort_profile)
        --quick                         # tiny shapes (tests); timings meaningless
        --from_json output/bench/ort_profile.json   # print (and write) a saved study's table again, timing nothing

skip_layernorm: onnxruntime's fused SkipLayerNormalization kernel against the residual Add + LayerNormalization it
replaces, as single kernels (one-node graphs [1, rows, hidden], every other optimization off) and inside whole
models, each timed with onnxruntime's default graph optimizations ("fused") and with the project's ("unfused":
SkipLayerNormFusion off), both with the project's session config (ORT_CPU_SESSION_CONFIG). This is why the project's
sessions pass `disabled_optimizers=["SkipLayerNormFusion"]` (docs/export.md). Writes output/bench/ort_layernorm.json.

denormal: with and without `session.set_denormal_as_zero`: a masked attention softmax as one kernel, and whole
models (in the project's sessions otherwise). onnxruntime sets the flush-to-zero flags on the thread that creates a
session too, and they stay set there after the session is gone, so every measurement runs in its own process (this
script started again with --child). This is why the project's sessions flush denormals. Writes
output/bench/ort_denormal.json.

profile: onnxruntime's per-node profile of the goal pairs, grouped by the kind of work, with each kind's ratio
between the two models of a pair. Per model and (batch, seq) cell: one session times its calls without the profiler
(median, as bench_export does), then one session with onnxruntime's profiler runs warm-up calls and profiled calls;
each node's kernel time over the profiled calls is summed into its kind and divided by the calls. The profiler adds
a little per node, so the kinds add up to a bit more than the unprofiled time. Kinds (by onnxruntime's op type after
its graph optimizations): dense GEMMs (Gemm / FusedGemm: the Q/K/V, output and FFN projections, pooler,
classifier), attention matmuls (MatMul / FusedMatMul: QK^T and PV), softmax, element-wise adds (the attention mask,
residuals, embeddings), LayerNorm, GELU, layout (Transpose, Reshape and other copies), other (embedding Gather, mask
arithmetic). Writes output/bench/ort_profile.json.

All studies: the models are random-init exports (speed does not depend on the weights) of four shapes, the
MiniLM-L6 teacher, BERT-base, TinyBERT-4 and the teacher at width 0.667, written as export.py writes them. The goal
pairs are the export latency goals of benchmarks/bench_export.py: TinyBERT-4 vs BERT-base and width 0.667 vs the
full teacher shape. The two settings of a comparison alternate, in rounds, and the median of the round medians is
reported.
"""
import argparse
import collections
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.bench_export import BASE, GOAL_TINY4, GOAL_WIDTH, TEACHER, TINY4  # noqa: E402
from benchmarks.common import (add_timing_args, bert_flops, emit, machine, machine_line,  # noqa: E402
                               markdown_table, read_result, rounds_and_budget, time_call, write_json)
from src.cli import doc_parser  # noqa: E402

WIDTH = "width 0.667"
QUICK_NOTE = " QUICK MODE: tiny shapes, timings meaningless."


# ----------------------------------------------------------------------------------------------- shared by studies

def goal_models(quick: bool):
    """[(name, BertConfig)] of the four shapes the goal pairs compare."""
    from src.tinybert_model import BertConfig
    from src.width import sub_config, width_spec
    if quick:
        teacher = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2, num_attention_heads=12,
                             intermediate_size=96, max_position_embeddings=64)
        base = teacher.replace(hidden_size=64, num_attention_heads=4, intermediate_size=128)
        tiny = teacher.replace(hidden_size=24, num_hidden_layers=1, intermediate_size=48)
    else:
        teacher = BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
        base = BertConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
        tiny = BertConfig(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200)
    return [(TEACHER + " shape", teacher), (BASE, base), (TINY4, tiny),
            (WIDTH, sub_config(teacher, width_spec(teacher, 2 / 3)))]


def exported_cells(quick: bool, cells, work: str):
    """Per (batch, seq) cell: (batch, seq, [(name, cfg, ONNX path, inputs)]) with the goal models exported at that
    shape into `work` (built once; one file per model and cell)."""
    from benchmarks.bench_export import _spec, build, export_file
    models = [(name, cfg, build(_spec(name, cfg), "gelu_erf_poly")) for name, cfg in goal_models(quick)]
    for b, seq in cells:
        exported = []
        for name, cfg, model in models:
            base = os.path.join(work, f"{name.replace(' ', '_').replace('.', '')}_b{b}_s{seq}")
            path, inputs = export_file(model, base, "ONNX", b, seq, cfg.vocab_size)
            exported.append((name, cfg, path, inputs))
        yield b, seq, exported


def alternate(items, modes, rounds: int, time_one):
    """`time_one(item, mode)` for every item under every mode, `rounds` times over (each round: item by item, the
    modes in turn), so a slow patch of the shared machine falls on both sides of a comparison. Per item:
    {mode: [its result per round]}."""
    got = [{mode: [] for mode in modes} for _ in items]
    for _ in range(rounds):
        for item, results in zip(items, got):
            for mode in modes:
                results[mode].append(time_one(item, mode))
    return got


def goal_ratios(models, modes=("fused", "unfused")):
    """TinyBERT-4 vs BERT-base and width 0.667 vs the full teacher shape, per cell, for each mode (row key
    <mode>_s): keys tiny_vs_base_<mode>, width_vs_full_<mode>."""
    by = {(r["model"], r["batch"], r["seq"]): r for r in models}
    out = []
    for (name, b, seq), r in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if name != TINY4:
            continue
        base, teacher, w = by[(BASE, b, seq)], by[(TEACHER + " shape", b, seq)], by[(WIDTH, b, seq)]
        row = {"batch": b, "seq": seq}
        for mode in modes:
            row["tiny_vs_base_" + mode] = base[mode + "_s"] / r[mode + "_s"]
        for mode in modes:
            row["width_vs_full_" + mode] = teacher[mode + "_s"] / w[mode + "_s"]
        out.append(row)
    return out


def goal_table(goals, modes=("fused", "unfused"), labels=("fused", "unfused")) -> str:
    """The rows of goal_ratios as a markdown table, one column per mode (headed by `labels`) for each goal, under a
    line naming the goals."""
    heads = ["batch", "seq"]
    for goal in ("TinyBERT-4 vs BERT-base", "width 0.667 vs full"):
        heads += [f"{goal}: {labels[0]}", *labels[1:]]
    rows = [[r["batch"], r["seq"]] + [r[f"{key}_{mode}"] for key in ("tiny_vs_base", "width_vs_full") for mode in modes]
            for r in goals]
    return (f"Goal ratios of the same runs (TinyBERT-4 vs BERT-base >= {GOAL_TINY4:g}x, width 0.667 vs full >= "
            f"{GOAL_WIDTH:g}x):\n\n" + markdown_table(heads, rows))


def header(title: str, out: dict, details: str) -> str:
    return (f"### {title}\n\n{machine_line(out['machine'])}. onnxruntime {out['onnxruntime']}; {details}"
            f"{QUICK_NOTE if out['quick'] else ''}")


# --------------------------------------------------------------------------------------------------- skip_layernorm

SKIP = "SkipLayerNormalization"


def _kernel_model(kind: str, rows: int, hidden: int) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    shape = [1, rows, hidden]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "r")]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    inits = [numpy_helper.from_array(np.full(hidden, 1.1, np.float32), "gamma"),
             numpy_helper.from_array(np.full(hidden, 0.1, np.float32), "beta")]
    if kind == "skip":
        nodes = [helper.make_node(SKIP, ["x", "r", "gamma", "beta"], ["y"], domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
                 helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(helper.make_graph(nodes, kind, ins, out, inits), opset_imports=opsets).SerializeToString()


def layernorm_kernels(shapes, threads, rounds, budget):
    import numpy as np
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    results = []
    for rows, hidden in shapes:
        feeds = {n: rng.standard_normal((1, rows, hidden)).astype(np.float32) for n in ("x", "r")}
        sessions, outs = {}, {}
        for kind in ("skip", "add_ln"):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.log_severity_level = 3
            sessions[kind] = ort.InferenceSession(_kernel_model(kind, rows, hidden), opts,
                                                  providers=["CPUExecutionProvider"])
            outs[kind] = sessions[kind].run(None, feeds)[0]
        (times,) = alternate([sessions], sessions, rounds, lambda s, kind: time_call(
            lambda: s[kind].run(None, feeds), min_reps=5, budget_s=budget, warmup=3))
        row = {"rows": rows, "hidden": hidden, "skip_s": statistics.median(times["skip"]),
               "add_ln_s": statistics.median(times["add_ln"]),
               "max_abs_diff": float(np.abs(outs["skip"] - outs["add_ln"]).max())}
        row["speedup"] = row["skip_s"] / row["add_ln_s"]
        results.append(row)
        print(f"kernel rows {rows:<5} hidden {hidden:<4} skip {row['skip_s'] * 1e6:9.1f} us  add+ln "
              f"{row['add_ln_s'] * 1e6:9.1f} us  {row['speedup']:.2f}x", flush=True)
    return results


def _optimized_ops(path, disabled):
    import onnx
    from src.ort_cpu import ort_session
    dump = path + ".opt.onnx"
    ort_session(path, optimized_model_filepath=dump, disabled_optimizers=disabled)
    ops = collections.Counter(n.op_type for n in onnx.load(dump).graph.node)
    os.remove(dump)
    return ops


def layernorm_models(cells, threads, rounds, budget, quick, work):
    import numpy as np
    from src.ort_cpu import ORT_CPU_DISABLED_OPTIMIZERS, ort_session
    modes = {"fused": (), "unfused": ORT_CPU_DISABLED_OPTIMIZERS}

    def time_one(case, mode):
        row, path, inputs = case
        sess = ort_session(path, threads, disabled_optimizers=modes[mode])
        feeds = dict(zip([i.name for i in sess.get_inputs()], inputs))
        out = sess.run(None, feeds)[0]
        return time_call(lambda: sess.run(None, feeds), budget_s=budget, warmup=2), out

    results = []
    for b, seq, exported in exported_cells(quick, cells, work):
        cell = []
        for name, cfg, path, inputs in exported:
            row = {"model": name, "batch": b, "seq": seq, "layernorms": 2 * cfg.num_hidden_layers + 1}
            for mode, disabled in modes.items():
                row[mode + "_skip_nodes"] = _optimized_ops(path, disabled).get(SKIP, 0)
            cell.append((row, path, inputs))
        for (row, path, _), got in zip(cell, alternate(cell, modes, rounds, time_one)):
            for mode in modes:
                row[mode + "_rounds_s"] = [s for s, _ in got[mode]]
                row[mode + "_s"] = statistics.median(row[mode + "_rounds_s"])
            row["max_abs_logit_diff"] = float(np.abs(got["fused"][-1][1] - got["unfused"][-1][1]).max())
            row["speedup"] = row["fused_s"] / row["unfused_s"]
            os.remove(path)
            results.append(row)
            print(f"{row['model']:<24} b{b:<3} s{seq:<4} fused {row['fused_s'] * 1e3:8.2f} ms  unfused "
                  f"{row['unfused_s'] * 1e3:8.2f} ms  {row['speedup']:.2f}x", flush=True)
    return results


def measure_skip_layernorm(args, cells, rounds, budget, work) -> dict:
    from src.ort_cpu import ORT_CPU_SESSION_CONFIG
    shapes = [(8, 24)] if args.quick else [(64, 312), (64, 768), (1024, 312), (1024, 768), (4096, 312), (4096, 768)]
    out = {"rounds": rounds, "session_config": dict(ORT_CPU_SESSION_CONFIG),
           "kernels": layernorm_kernels(shapes, args.threads, rounds, budget),
           "models": layernorm_models(cells, args.threads, rounds, budget, args.quick, work)}
    out["goals"] = goal_ratios(out["models"])
    return out


def table_skip_layernorm(out) -> str:
    k = markdown_table(["rows (batch x seq)", "hidden", "SkipLayerNormalization us", "Add + LayerNormalization us",
                        "speed-up", "max abs diff"],
                       [[r["rows"], r["hidden"], r["skip_s"] * 1e6, r["add_ln_s"] * 1e6, r["speedup"],
                         f"{r['max_abs_diff']:.1e}"] for r in out["kernels"]])
    m = markdown_table(["model", "batch", "seq", "fused ms (SkipLN nodes)", "unfused ms (SkipLN nodes)", "speed-up",
                        "max abs logit diff"],
                       [[r["model"], r["batch"], r["seq"], f"{r['fused_s'] * 1e3:.2f} ({r['fused_skip_nodes']})",
                         f"{r['unfused_s'] * 1e3:.2f} ({r['unfused_skip_nodes']})", r["speedup"],
                         f"{r['max_abs_logit_diff']:.1e}"] for r in out["models"]])
    return (header("onnxruntime CPU: SkipLayerNormalization fusion on (\"fused\", onnxruntime's default) vs off "
                   "(\"unfused\", this project's sessions)", out,
                   f"{out['rounds']} rounds, median of the round medians; models are random-init exports as "
                   f"export.py writes them; model sessions with {out.get('session_config', {})}.")
            + f"\n\nKernels (one node, fp32, [1, rows, hidden]):\n\n{k}\n\nWhole models:\n\n{m}\n\n"
            + goal_table(out["goals"]))


# --------------------------------------------------------------------------------------------------------- denormal

FILL = -10000.0          # the model's additive mask for padded keys (src/tinybert_model.py)


def _softmax_model(shape):
    from onnx import TensorProto, helper
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "y")]
    node = helper.make_node("Softmax", ["x"], ["y"], axis=3)
    return helper.make_model(helper.make_graph([node], "softmax", io[:1], io[1:]),
                             opset_imports=[helper.make_opsetid("", 11)])


def denormal_child(spec: dict) -> dict:
    """One measurement in this process: {"path" | "softmax", "daz", "threads", "budget", ...} -> seconds, output."""
    import numpy as np
    from src.ort_cpu import ORT_CPU_SESSION_CONFIG, ort_session
    config = ORT_CPU_SESSION_CONFIG if spec["daz"] else {}
    if "softmax" in spec:
        shape = spec["softmax"]
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        x[..., shape[-1] // 2:] += np.float32(FILL) if spec["masked"] else 0.0
        path = spec["work"] + f"/softmax_{os.getpid()}.onnx"
        with open(path, "wb") as f:
            f.write(_softmax_model(shape).SerializeToString())
        sess = ort_session(path, spec["threads"], session_config=config)
        os.remove(path)
        feeds = {"x": x}
    else:
        sess = ort_session(spec["path"], spec["threads"], session_config=config)
        data = np.load(spec["inputs"])
        feeds = dict(zip([i.name for i in sess.get_inputs()], [data[k] for k in ("ids", "types", "mask")]))
    out = sess.run(None, feeds)[0]
    t = time_call(lambda: sess.run(None, feeds), budget_s=spec["budget"], warmup=2)
    return {"s": t, "checksum": float(np.abs(out).sum()), "out": out.reshape(-1)[:64].tolist()}


def _run_child(spec: dict) -> dict:
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--study", "denormal", "--child", json.dumps(spec)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def denormal_rows(cases, threads, rounds, budget, work):
    """cases: list of (row dict, spec without daz). Adds off_s / on_s / speedup / max_abs_diff to each row."""
    import numpy as np
    for row, spec in cases:
        (got,) = alternate([spec], (False, True), rounds,
                           lambda s, daz: _run_child(dict(s, daz=daz, threads=threads, budget=budget, work=work)))
        row["off_s"], row["on_s"] = (statistics.median(r["s"] for r in got[daz]) for daz in (False, True))
        row["speedup"] = row["off_s"] / row["on_s"]
        row["max_abs_diff"] = float(np.abs(np.array(got[False][-1]["out"]) - np.array(got[True][-1]["out"])).max())
        print(f"{row['case']:<40} off {row['off_s'] * 1e3:9.2f} ms  on {row['on_s'] * 1e3:9.2f} ms  "
              f"{row['speedup']:.2f}x", flush=True)
    return [row for row, _ in cases]


def measure_denormal(args, cells, rounds, budget, work) -> dict:
    import numpy as np
    kernels = [({"case": f"[{b}, 12, {s}, {s}]", "masked": masked}, {"softmax": [b, 12, s, s], "masked": masked})
               for b, s in cells for masked in (False, True)]
    models = []
    for b, s, exported in exported_cells(args.quick, cells, work):
        for name, _, path, inputs in exported:
            np.savez(path[:-5] + ".npz", ids=inputs[0], types=inputs[1], mask=inputs[2])
            models.append(({"model": name, "batch": b, "seq": s, "case": f"{name} b{b} s{s}"},
                           {"path": path, "inputs": path[:-5] + ".npz"}))
    order = [name for name, _ in goal_models(args.quick)]
    models.sort(key=lambda m: order.index(m[0]["model"]))          # model by model, each over the cells
    out = {"rounds": rounds, "kernels": denormal_rows(kernels, args.threads, rounds, budget, work),
           "models": denormal_rows(models, args.threads, rounds, budget, work)}
    out["goals"] = goal_ratios(out["models"], modes=("off", "on"))
    return out


def table_denormal(out) -> str:
    k = markdown_table(["softmax [batch, 12, seq, seq]", "keys masked", "ms, denormals kept", "ms, as zero",
                        "speed-up", "max abs diff"],
                       [[r["case"], r["masked"], r["off_s"] * 1e3, r["on_s"] * 1e3, r["speedup"],
                         f"{r['max_abs_diff']:.1e}"] for r in out["kernels"]])
    m = markdown_table(["model", "batch", "seq", "ms, denormals kept", "ms, as zero", "speed-up", "max abs logit diff"],
                       [[r["model"], r["batch"], r["seq"], r["off_s"] * 1e3, r["on_s"] * 1e3, r["speedup"],
                         f"{r['max_abs_diff']:.1e}"] for r in out["models"]])
    return (header("onnxruntime CPU: denormals kept vs flushed to zero (`session.set_denormal_as_zero`)", out,
                   f"every measurement in its own process; {out['rounds']} rounds, median of the round medians; "
                   f"masked = the second half of the keys at {FILL:g} (the model's padding mask); models are "
                   f"random-init exports in the project's sessions.")
            + f"\n\nKernel:\n\n{k}\n\nWhole models (sample batches with padding):\n\n{m}\n\n"
            + goal_table(out["goals"], modes=("off", "on"), labels=("kept", "as zero")))


# ---------------------------------------------------------------------------------------------------------- profile

KINDS = (("dense GEMMs", ("Gemm", "FusedGemm")),
         ("attention matmuls", ("MatMul", "FusedMatMul")),
         ("softmax", ("Softmax",)),
         ("element-wise adds", ("Add", "Sum")),
         ("LayerNorm", ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization")),
         ("GELU", ("Gelu", "BiasGelu", "FastGelu")),
         ("layout", ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Concat", "Split",
                     "Identity", "Expand")))
OTHER = "other"
KIND_OF = {op: kind for kind, ops in KINDS for op in ops}
KIND_NAMES = [k for k, _ in KINDS] + [OTHER]
PAIRS = (("TinyBERT-4 vs BERT-base", BASE, TINY4), ("width 0.667 vs full", TEACHER + " shape", WIDTH))


def kernel_times(profile_path: str, skip_runs: int) -> dict:
    """{op type: (microseconds summed over the kept runs, node calls)} and the number of kept runs, from an
    onnxruntime profile: the first `skip_runs` model runs are warm-up, their nodes are left out."""
    with open(profile_path, encoding="utf-8") as f:
        events = json.load(f)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kept = runs[skip_runs:]
    if not kept:
        raise RuntimeError(f"{profile_path}: no profiled run after {skip_runs} warm-up runs")
    start = kept[0][0]
    us, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"]["op_name"]
            us[op] += e["dur"]
            calls[op] += 1
    return {"runs": len(kept), "op_us": dict(us), "op_calls": dict(calls)}


def by_kind(op_us: dict, runs: int) -> dict:
    """Milliseconds per run of each kind (every kind present, 0.0 when the graph has none)."""
    out = {k: 0.0 for k in KIND_NAMES}
    for op, us in op_us.items():
        out[KIND_OF.get(op, OTHER)] += us / 1000.0 / runs
    return out


def profile_model(path, inputs, threads, budget, warmup, work):
    from src.ort_cpu import ort_session
    sess = ort_session(path, threads)
    feeds = dict(zip([i.name for i in sess.get_inputs()], inputs))
    seconds = time_call(lambda: sess.run(None, feeds), budget_s=budget, warmup=2)
    sess = None
    prefix = os.path.join(work, "prof")
    sess = ort_session(path, threads, profile_prefix=prefix)
    for _ in range(warmup):
        sess.run(None, feeds)
    time_call(lambda: sess.run(None, feeds), budget_s=budget, warmup=0)
    prof = sess.end_profiling()
    sess = None
    try:
        k = kernel_times(prof, warmup)
    finally:
        for f in glob.glob(prefix + "*"):
            os.remove(f)
    return seconds, k


def profile_rows(cells, threads, budget, quick, work):
    rows = []
    for b, seq, exported in exported_cells(quick, cells, work):
        for name, cfg, path, inputs in exported:
            seconds, k = profile_model(path, inputs, threads, budget, 3, work)
            os.remove(path)
            kinds = by_kind(k["op_us"], k["runs"])
            gemm_gflop = b * (bert_flops(cfg, seq) - 4 * seq * seq * sum(cfg.heads(i) * cfg.head_size
                                                                        for i in range(cfg.num_hidden_layers)))
            rows.append({"model": name, "batch": b, "seq": seq, "s": seconds, "profiled_runs": k["runs"],
                         "op_us": k["op_us"], "op_calls": k["op_calls"], "kind_ms": kinds,
                         "kernel_ms": sum(kinds.values()), "gemm_gflop": gemm_gflop / 1e9,
                         "gflop": b * bert_flops(cfg, seq) / 1e9})
            print(f"{name:<24} b{b:<3} s{seq:<4} {seconds * 1e3:9.2f} ms  kernels {sum(kinds.values()):9.2f} ms  "
                  f"dense GEMMs {kinds['dense GEMMs']:9.2f} ms", flush=True)
    return rows


def pair_tables(rows):
    """Per goal and cell: each kind's ms in the reference and the smaller model and their ratio, plus totals."""
    by = {(r["model"], r["batch"], r["seq"]): r for r in rows}
    cells = sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda c: (c[1], c[0]))
    out = []
    for goal, ref, small in PAIRS:
        for b, seq in cells:
            R, S = by.get((ref, b, seq)), by.get((small, b, seq))
            if R is None or S is None:
                continue
            kinds = []
            for k in KIND_NAMES:
                r_ms, s_ms = R["kind_ms"][k], S["kind_ms"][k]
                kinds.append({"kind": k, "ref_ms": r_ms, "small_ms": s_ms, "ratio": r_ms / s_ms if s_ms else None,
                              "small_share": s_ms / S["kernel_ms"]})
            out.append({"goal": goal, "ref": ref, "small": small, "batch": b, "seq": seq, "kinds": kinds,
                        "kernel_ratio": R["kernel_ms"] / S["kernel_ms"], "measured_ratio": R["s"] / S["s"],
                        "gemm_flop_ratio": R["gemm_gflop"] / S["gemm_gflop"], "flop_ratio": R["gflop"] / S["gflop"],
                        "ref_s": R["s"], "small_s": S["s"], "ref_kernel_ms": R["kernel_ms"],
                        "small_kernel_ms": S["kernel_ms"]})
    return out


def measure_profile(args, cells, rounds, budget, work) -> dict:
    rows = profile_rows(cells, args.threads, budget, args.quick, work)
    return {"models": rows, "pairs": pair_tables(rows)}


def table_profile(out) -> str:
    parts = [header("Where the time goes (onnxruntime profiler, the two export latency goal pairs)", out,
                    "sessions of src/ort_cpu.py; random-init exports. 'ms' = kernel time per call summed by kind "
                    "(profiled calls after warm-up); 'x' = the reference's ms / the smaller model's; 'share' = the "
                    "kind's part of the smaller model's kernel time. 'measured' = median ms per call without the "
                    "profiler.")]
    for t in out["pairs"]:
        rows = [[k["kind"], k["ref_ms"], k["small_ms"], "-" if k["ratio"] is None else f"{k['ratio']:.2f}",
                 f"{100 * k['small_share']:.1f}%"] for k in t["kinds"]]
        rows.append(["all kernels", t["ref_kernel_ms"], t["small_kernel_ms"], f"{t['kernel_ratio']:.2f}", "100%"])
        rows.append(["measured", t["ref_s"] * 1e3, t["small_s"] * 1e3, f"{t['measured_ratio']:.2f}", "-"])
        parts.append(f"**{t['goal']}, batch {t['batch']}, seq {t['seq']}** (FLOPs ratio {t['flop_ratio']:.2f}x, "
                     f"dense GEMMs alone {t['gemm_flop_ratio']:.2f}x):\n\n"
                     + markdown_table(["kind", f"{t['ref']} ms", f"{t['small']} ms", "x", "share"], rows))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------------------------- main

Study = collections.namedtuple("Study", "block measure table cells")
STUDIES = {
    "skip_layernorm": Study("ort_layernorm", measure_skip_layernorm, table_skip_layernorm, ("1x64", "16x64", "16x128")),
    "denormal": Study("ort_denormal", measure_denormal, table_denormal, ("1x64", "16x128")),
    "profile": Study("ort_profile", measure_profile, table_profile, ("1x64", "1x128", "16x64", "32x128")),
}
QUICK_CELLS = ("2x16",)


def parse_cells(specs):
    """[(batch, seq)] of BATCHxSEQ strings; UserError for anything else."""
    from src.errors import UserError
    cells = []
    for c in specs:
        try:
            b, s = (int(x) for x in c.lower().split("x"))
        except ValueError:
            raise UserError(f"--cells {c}: expected BATCHxSEQ, e.g. 32x128") from None
        if b < 1 or s < 1:
            raise UserError(f"--cells {c}: batch and seq must be >= 1")
        cells.append((b, s))
    return cells


def measure(args) -> dict:
    """The study's measurements (exports in a temp folder under --out_dir, removed afterwards) as the saved dict."""
    import onnxruntime as ort
    from src import runtime
    study = STUDIES[args.study]
    rounds, budget = rounds_and_budget(args)
    cells = parse_cells(args.cells or (QUICK_CELLS if args.quick else study.cells))
    runtime.init_context("CPU", "graph", threads=args.threads)
    work = os.path.abspath(os.path.join(args.out_dir, "tmp_" + study.block))
    os.makedirs(work, exist_ok=True)
    out = {"study": args.study, "machine": machine(args.threads), "quick": args.quick, "budget_s": budget,
           "onnxruntime": ort.__version__}
    try:
        out.update(study.measure(args, cells, rounds, budget, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--study", choices=sorted(STUDIES), required=True)
    add_timing_args(p, "seconds of timed calls per measurement (profile: per model and cell, unprofiled and "
                       "profiled each)")
    p.add_argument("--cells", nargs="+", default=None, help="batch x seq cells of the whole-model rows, e.g. 1x128 "
                                                            "32x128 (default: the study's)")
    p.add_argument("--from_json", default="", help="print (and with --results write) the table of a saved study "
                                                   "JSON again, timing nothing")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(denormal_child(json.loads(args.child))))
        return None
    study = STUDIES[args.study]
    if args.from_json:
        def render(saved):
            if saved.get("study", args.study) != args.study:
                from src.errors import UserError
                raise UserError(f"--from_json '{args.from_json}': a {saved['study']} study, not {args.study}")
            return study.table(saved)
        out = read_result(args.from_json, render, f"an {study.block}.json")
    else:
        out = measure(args)
        write_json(os.path.join(args.out_dir, study.block + ".json"), out)
    emit(study.block, study.table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
