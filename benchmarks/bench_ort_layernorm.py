"""onnxruntime on CPU: its fused SkipLayerNormalization kernel against the residual Add + LayerNormalization it
replaces, as single kernels and inside whole exported models. This is why src/export.py's sessions pass
`disabled_optimizers=["SkipLayerNormFusion"]` (src/ort_cpu.py, docs/export.md).

    python benchmarks/bench_ort_layernorm.py                            # ~4 min on 2 cores
    python benchmarks/bench_ort_layernorm.py --readme docs/benchmarks.md   # also write the table there
    python benchmarks/bench_ort_layernorm.py --quick                    # tiny shapes (tests); timings meaningless

Kernels: one-node graphs [1, rows, hidden], every other optimization off. Models: random-init exports (speed does
not depend on the weights) written as export.py writes them, each timed with onnxruntime's default graph
optimizations ("fused") and with the project's ("unfused": SkipLayerNormFusion off), alternating, in rounds, both
with the project's session config (src/ort_cpu.py ORT_CPU_SESSION_CONFIG); the median of the round
medians is reported. The ratio rows show what the setting does to the export goals (issue 6). Writes
output/bench/ort_layernorm.json.
"""
import argparse
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_timing_args, emit, machine, machine_line, markdown_table,  # noqa: E402
                               rounds_and_budget, time_call, write_json)

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


def kernel_rows(shapes, threads, rounds, budget):
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
        times = {k: [] for k in sessions}
        for _ in range(rounds):
            for kind, s in sessions.items():
                times[kind].append(time_call(lambda: s.run(None, feeds), min_reps=5, budget_s=budget, warmup=3))
        row = {"rows": rows, "hidden": hidden, "skip_s": statistics.median(times["skip"]),
               "add_ln_s": statistics.median(times["add_ln"]),
               "max_abs_diff": float(np.abs(outs["skip"] - outs["add_ln"]).max())}
        row["speedup"] = row["skip_s"] / row["add_ln_s"]
        results.append(row)
        print(f"kernel rows {rows:<5} hidden {hidden:<4} skip {row['skip_s'] * 1e6:9.1f} us  add+ln "
              f"{row['add_ln_s'] * 1e6:9.1f} us  {row['speedup']:.2f}x", flush=True)
    return results


def model_specs(quick: bool):
    from benchmarks.bench_export import BASE, TEACHER, TINY4
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
            ("width 0.667", sub_config(teacher, width_spec(teacher, 2 / 3)))]


def _optimized_ops(path, disabled):
    import collections
    import onnx
    from src.export import ort_session
    dump = path + ".opt.onnx"
    ort_session(path, optimized_model_filepath=dump, disabled_optimizers=disabled)
    ops = collections.Counter(n.op_type for n in onnx.load(dump).graph.node)
    os.remove(dump)
    return ops


def model_rows(cells, threads, rounds, budget, quick, work):
    import numpy as np
    from benchmarks.bench_export import _spec, build, export_file
    from src.ort_cpu import ORT_CPU_DISABLED_OPTIMIZERS, ort_session
    modes = {"fused": (), "unfused": ORT_CPU_DISABLED_OPTIMIZERS}
    models = [(name, cfg, build(_spec(name, cfg), "gelu_erf_poly")) for name, cfg in model_specs(quick)]
    results = []
    for b, seq in cells:
        cell = []
        for name, cfg, model in models:
            path, inputs = export_file(model, os.path.join(work, name.replace(" ", "_").replace(".", "")), "ONNX",
                                       b, seq, cfg.vocab_size)
            row = {"model": name, "batch": b, "seq": seq, "layernorms": 2 * cfg.num_hidden_layers + 1}
            for mode, disabled in modes.items():
                row[mode + "_skip_nodes"] = _optimized_ops(path, disabled).get(SKIP, 0)
            cell.append((row, path, inputs))
        for _ in range(rounds):
            for row, path, inputs in cell:
                for mode, disabled in modes.items():
                    sess = ort_session(path, threads, disabled_optimizers=disabled)
                    feeds = dict(zip([i.name for i in sess.get_inputs()], inputs))
                    out = sess.run(None, feeds)[0]
                    row.setdefault(mode + "_rounds_s", []).append(
                        time_call(lambda: sess.run(None, feeds), budget_s=budget, warmup=2))
                    row.setdefault("_outs", {})[mode] = out
                    del sess
        for row, path, _ in cell:
            outs = row.pop("_outs")
            row["max_abs_logit_diff"] = float(np.abs(outs["fused"] - outs["unfused"]).max())
            for mode in modes:
                row[mode + "_s"] = statistics.median(row[mode + "_rounds_s"])
            row["speedup"] = row["fused_s"] / row["unfused_s"]
            os.remove(path)
            results.append(row)
            print(f"{row['model']:<24} b{b:<3} s{seq:<4} fused {row['fused_s'] * 1e3:8.2f} ms  unfused "
                  f"{row['unfused_s'] * 1e3:8.2f} ms  {row['speedup']:.2f}x", flush=True)
    return results


def goal_ratios(models, modes=("fused", "unfused")):
    """TinyBERT-4 vs BERT-base and width 0.667 vs the full teacher shape, per cell, for each mode (row key
    <mode>_s): keys tiny_vs_base_<mode>, width_vs_full_<mode>. Also used by bench_ort_denormal.py."""
    from benchmarks.bench_export import BASE, TEACHER, TINY4
    by = {(r["model"], r["batch"], r["seq"]): r for r in models}
    out = []
    for (name, b, seq), r in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if name != TINY4:
            continue
        base, teacher, w = by[(BASE, b, seq)], by[(TEACHER + " shape", b, seq)], by[("width 0.667", b, seq)]
        row = {"batch": b, "seq": seq}
        for mode in modes:
            row["tiny_vs_base_" + mode] = base[mode + "_s"] / r[mode + "_s"]
        for mode in modes:
            row["width_vs_full_" + mode] = teacher[mode + "_s"] / w[mode + "_s"]
        out.append(row)
    return out


def goal_table(goals, modes=("fused", "unfused"), labels=("fused", "unfused")) -> str:
    """The rows of goal_ratios as a markdown table, one column per mode (headed by `labels`) for each goal."""
    heads = ["batch", "seq"]
    for goal in ("TinyBERT-4 vs BERT-base", "width 0.667 vs full"):
        heads += [f"{goal}: {labels[0]}", *labels[1:]]
    rows = [[r["batch"], r["seq"]] + [r[f"{key}_{mode}"] for key in ("tiny_vs_base", "width_vs_full") for mode in modes]
            for r in goals]
    return markdown_table(heads, rows)


def table(out) -> str:
    k = markdown_table(["rows (batch x seq)", "hidden", "SkipLayerNormalization us", "Add + LayerNormalization us",
                        "speed-up", "max abs diff"],
                       [[r["rows"], r["hidden"], r["skip_s"] * 1e6, r["add_ln_s"] * 1e6, r["speedup"],
                         f"{r['max_abs_diff']:.1e}"] for r in out["kernels"]])
    m = markdown_table(["model", "batch", "seq", "fused ms (SkipLN nodes)", "unfused ms (SkipLN nodes)", "speed-up",
                        "max abs logit diff"],
                       [[r["model"], r["batch"], r["seq"], f"{r['fused_s'] * 1e3:.2f} ({r['fused_skip_nodes']})",
                         f"{r['unfused_s'] * 1e3:.2f} ({r['unfused_skip_nodes']})", r["speedup"],
                         f"{r['max_abs_logit_diff']:.1e}"] for r in out["models"]])
    g = goal_table(out["goals"])
    return (f"### onnxruntime CPU: SkipLayerNormalization fusion on (\"fused\", onnxruntime's default) vs off "
            f"(\"unfused\", this project's sessions)\n\n{machine_line(out['machine'])}. onnxruntime "
            f"{out['onnxruntime']}; {out['rounds']} rounds, median of the round medians; models are random-init "
            f"exports as export.py writes them; model sessions with {out.get('session_config', {})}."
            f"{' QUICK MODE: tiny shapes, timings meaningless.' if out['quick'] else ''}\n\n"
            f"Kernels (one node, fp32, [1, rows, hidden]):\n\n{k}\n\nWhole models:\n\n{m}\n\n"
            f"Goal ratios of the same runs (issue 6: TinyBERT-4 vs BERT-base >= 14x, width 0.667 vs full >= 1.45x):"
            f"\n\n{g}")


def main(argv=None):
    p = argparse.ArgumentParser(description="onnxruntime CPU: SkipLayerNormalization vs Add + LayerNormalization")
    add_timing_args(p, "seconds of timed calls per case and round")
    args = p.parse_args(argv)
    import onnxruntime as ort
    from src import runtime
    from src.ort_cpu import ORT_CPU_SESSION_CONFIG
    rounds, budget = rounds_and_budget(args)
    runtime.init_context("CPU", "graph", threads=args.threads)
    shapes = [(8, 24)] if args.quick else [(64, 312), (64, 768), (1024, 312), (1024, 768), (4096, 312), (4096, 768)]
    cells = [(2, 16)] if args.quick else [(1, 64), (16, 64), (16, 128)]
    work = os.path.join(args.out_dir, "tmp_ort_layernorm")
    os.makedirs(work, exist_ok=True)
    try:
        out = {"machine": machine(args.threads), "quick": args.quick, "rounds": rounds, "budget_s": budget,
               "onnxruntime": ort.__version__, "session_config": dict(ORT_CPU_SESSION_CONFIG),
               "kernels": kernel_rows(shapes, args.threads, rounds, budget),
               "models": model_rows(cells, args.threads, rounds, budget, args.quick, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["goals"] = goal_ratios(out["models"])
    write_json(os.path.join(args.out_dir, "ort_layernorm.json"), out)
    emit("ort_layernorm", table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
