"""Where the time goes: onnxruntime's per-node profile of the exported models behind the two latency goals of
issue 6 (TinyBERT-4 vs BERT-base >= 14x, width 0.667 vs the full teacher shape >= 1.45x), grouped by the kind of
work, with each kind's ratio between the two models of a goal.

    python benchmarks/bench_ort_profile.py                               # ~6 min on 2 cores
    python benchmarks/bench_ort_profile.py --readme docs/benchmarks.md   # also write the table there
    python benchmarks/bench_ort_profile.py --quick                       # tiny shapes (tests); timings meaningless

The models are random-init exports as export.py writes them (speed does not depend on the weights), run in the
project's sessions (src/ort_cpu.py). Per model and (batch, seq) cell: one session times its calls without the
profiler (median, as bench_export does), then one session with onnxruntime's profiler runs warm-up calls and
profiled calls; each node's kernel time over the profiled calls is summed into its kind and divided by the calls.
The profiler adds a little per node, so the kinds add up to a bit more than the unprofiled time.

Kinds (by onnxruntime's op type after its graph optimizations): dense GEMMs (Gemm / FusedGemm: the Q/K/V, output
and FFN projections, pooler, classifier), attention matmuls (MatMul / FusedMatMul: QK^T and PV), softmax,
element-wise adds (the attention mask, residuals, embeddings), LayerNorm, GELU, layout (Transpose, Reshape and other
copies), other (embedding Gather, mask arithmetic). Writes output/bench/ort_profile.json.
"""
import argparse
import collections
import glob
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_timing_args, bert_flops, emit, machine, machine_line, markdown_table,  # noqa
                               rounds_and_budget, time_call, write_json)

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
    del sess
    prefix = os.path.join(work, "prof")
    sess = ort_session(path, threads, profile_prefix=prefix)
    for _ in range(warmup):
        sess.run(None, feeds)
    time_call(lambda: sess.run(None, feeds), budget_s=budget, warmup=0)
    prof = sess.end_profiling()
    del sess
    try:
        k = kernel_times(prof, warmup)
    finally:
        for f in glob.glob(prefix + "*"):
            os.remove(f)
    return seconds, k


def measure(cells, threads, budget, quick, work):
    from benchmarks.bench_export import _spec, build, export_file
    from benchmarks.bench_ort_layernorm import model_specs
    models = [(name, cfg, build(_spec(name, cfg), "gelu_erf_poly")) for name, cfg in model_specs(quick)]
    rows = []
    for b, seq in cells:
        for name, cfg, model in models:
            path, inputs = export_file(model, os.path.join(work, name.replace(" ", "_").replace(".", "")), "ONNX",
                                       b, seq, cfg.vocab_size)
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


PAIRS = (("TinyBERT-4 vs BERT-base", "BERT-base shape", "TinyBERT-4 shape"),
         ("width 0.667 vs full", "MiniLM-L6 teacher shape", "width 0.667"))


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


def table(out) -> str:
    parts = [f"### Where the time goes (onnxruntime profiler, the goal pairs of issue 6)\n\n"
             f"{machine_line(out['machine'])}. onnxruntime {out['onnxruntime']}; sessions of src/ort_cpu.py; "
             f"random-init exports. 'ms' = kernel time per call summed by kind (profiled calls after "
             f"warm-up); 'x' = the reference's ms / the smaller model's; 'share' = the kind's part of the smaller "
             f"model's kernel time. 'measured' = median ms per call without the profiler."
             f"{' QUICK MODE: tiny shapes, timings meaningless.' if out['quick'] else ''}"]
    for t in out["pairs"]:
        rows = [[k["kind"], k["ref_ms"], k["small_ms"], "-" if k["ratio"] is None else f"{k['ratio']:.2f}",
                 f"{100 * k['small_share']:.1f}%"] for k in t["kinds"]]
        rows.append(["all kernels", t["ref_kernel_ms"], t["small_kernel_ms"], f"{t['kernel_ratio']:.2f}", "100%"])
        rows.append(["measured", t["ref_s"] * 1e3, t["small_s"] * 1e3, f"{t['measured_ratio']:.2f}", "-"])
        parts.append(f"**{t['goal']}, batch {t['batch']}, seq {t['seq']}** (FLOPs ratio {t['flop_ratio']:.2f}x, "
                     f"dense GEMMs alone {t['gemm_flop_ratio']:.2f}x):\n\n"
                     + markdown_table(["kind", f"{t['ref']} ms", f"{t['small']} ms", "x", "share"], rows))
    return "\n\n".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description="onnxruntime per-node profile of the goal pairs of issue 6")
    add_timing_args(p, "seconds of timed calls per model and cell (unprofiled and profiled each)")
    p.add_argument("--cells", nargs="+", default=None, help="batch x seq cells, e.g. 1x128 32x128")
    args = p.parse_args(argv)
    import onnxruntime as ort
    from src import runtime
    from src.errors import UserError
    _, budget = rounds_and_budget(args)
    cells = []
    for c in args.cells or (["2x16"] if args.quick else ["1x64", "1x128", "16x64", "32x128"]):
        try:
            b, s = (int(x) for x in c.lower().split("x"))
        except ValueError:
            raise UserError(f"--cells {c}: expected BATCHxSEQ, e.g. 32x128") from None
        if b < 1 or s < 1:
            raise UserError(f"--cells {c}: batch and seq must be >= 1")
        cells.append((b, s))
    runtime.init_context("CPU", "graph", threads=args.threads)
    work = os.path.join(args.out_dir, "tmp_ort_profile")
    os.makedirs(work, exist_ok=True)
    try:
        rows = measure(cells, args.threads, budget, args.quick, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"machine": machine(args.threads), "quick": args.quick, "budget_s": budget, "onnxruntime": ort.__version__,
           "models": rows}
    out["pairs"] = pair_tables(rows)
    write_json(os.path.join(args.out_dir, "ort_profile.json"), out)
    emit("ort_profile", table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
