"""int8 versions of the real exported models: dev accuracy and latency, fp32 against int8, measured in the same run.
The export table times int8 rows; this says what they cost in accuracy.

    python benchmarks/bench_int8.py                                # after bench_export.py; ~2 min on 2 cores
    python benchmarks/bench_int8.py --results docs/results.md      # also write the table there
    python benchmarks/bench_int8.py --model "MR student=output/bench/onnx/MR_student.onnx" --data_dir data/mr

Models (default): the ONNX files bench_export.py keeps in output/bench/onnx (its first cell, batch 1 x seq 64) for
the fine-tuned teacher, the MR student and the TernaryBERT artefact, where they exist; random-init shapes have no
accuracy to report. Each is quantized with benchmarks/ort_quantize.py (int8 weights per tensor, activations
quantized at run time; ternary weights {-a, 0, a} are exact in int8). The TernaryBERT file also gets a second int8
row, its integer-kernel form (src/ternary_int8.py, what `export.py --ternary --int8` writes): ternary codes as int8,
the activations quantized with the trained symmetric 8-bit rule, MatMulInteger in place of every quantized matmul.
Both files of a row are evaluated on the whole dev split by run_eval_onnx.py's code (onnxruntime, the project's
sessions) and timed in rounds at their exported shape. Writes output/bench/int8.json.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_timing_args, emit, machine, machine_line, markdown_table,  # noqa: E402
                               rounds_and_budget, time_call, write_json)
from src.cli import doc_parser  # noqa: E402

DEFAULT_MODELS = ("MiniLM-L6 teacher=output/bench/onnx/MiniLM-L6_teacher.onnx",
                  "MR student=output/bench/onnx/MR_student.onnx",
                  "TernaryBERT W2E2A8=output/bench/onnx/TernaryBERT_W2E2A8.onnx")
DEFAULT_TERNARY = ("TernaryBERT W2E2A8=output/bench/onnx/TernaryBERT_W2E2A8.onnx",)
REFERENCE = "MiniLM-L6 teacher"
METHODS = {"ort_dynamic": "onnxruntime quantize_dynamic",
           "ternary_kernels": "integer kernels (export.py --int8)"}


def _models(specs, explicit: bool, method: str, flag: str):
    """[(name, fp32 path, method)]; defaults whose file does not exist are left out."""
    from src.errors import UserError
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            raise UserError(f"{flag} {s}: expected NAME=FILE.onnx")
        if not os.path.isfile(path):
            if explicit:
                raise UserError(f"{flag} {name}: '{path}' does not exist")
            continue
        out.append((name, path, method))
    return out


def _ternary_kernels(src: str, dst: str, name: str) -> str:
    """dst: src rewritten into integer kernels (src/ternary_int8.py); UserError when nothing in it is ternary."""
    from src.errors import UserError
    from src.ternary_int8 import integerize_file
    counts = integerize_file(src, dst)
    if not counts["dense"]:
        os.remove(dst)
        raise UserError(f"--ternary_kernels {name}: '{src}' has no ternary Dense with 8-bit activations")
    return dst


def main(argv=None):
    p = doc_parser(__doc__)
    add_timing_args(p, "seconds of timed calls per file and round")
    p.add_argument("--model", action="append", default=None,
                   help="NAME=FILE.onnx, int8 by onnxruntime quantize_dynamic (repeatable; default: the teacher, MR "
                        "student and TernaryBERT files of bench_export)")
    p.add_argument("--ternary_kernels", action="append", default=None,
                   help="NAME=FILE.onnx of a TernaryBERT export, int8 by src/ternary_int8.py (repeatable; default: "
                        "bench_export's TernaryBERT file; with --model given, none unless named here)")
    p.add_argument("--task", default="MR")
    p.add_argument("--data_dir", default="data/mr")
    p.add_argument("--quant_python", default="", help="python with onnx + onnxruntime (default: this one or "
                                                      ".venv-bench/bin/python)")
    args = p.parse_args(argv)
    import run_eval_onnx
    from benchmarks.bench_export import _quantize, quant_python
    from src.errors import UserError
    from src.export import runner_for
    rounds, budget = rounds_and_budget(args)
    explicit = args.model is not None or args.ternary_kernels is not None
    models = _models((args.model or []) if explicit else DEFAULT_MODELS, explicit, "ort_dynamic", "--model") \
        + _models((args.ternary_kernels or []) if explicit else DEFAULT_TERNARY, explicit, "ternary_kernels",
                  "--ternary_kernels")
    if not models:
        raise UserError("no exported models found (run benchmarks/bench_export.py first, or pass --model NAME=FILE)")
    qpy = quant_python(args) if any(m == "ort_dynamic" for _, _, m in models) else None
    if qpy is None and any(m == "ort_dynamic" for _, _, m in models):
        raise UserError("int8 quantization needs the onnx package (pip install -r requirements.txt)")
    work = os.path.join(args.out_dir, "int8")
    os.makedirs(work, exist_ok=True)
    rows = []
    for name, path, method in models:
        base = os.path.join(work, os.path.basename(path)[:-5])
        if method == "ort_dynamic":
            q = _quantize(qpy, path, base + "_int8.onnx")
            if q is None:
                raise UserError(f"--model {name}: onnxruntime could not quantize '{path}'")
        else:
            q = _ternary_kernels(path, base + "_int8_kernels.onnx", name)
        row = {"model": name, "method": method, "fp32_file": path, "int8_file": q, "fp32_bytes": os.path.getsize(path),
               "int8_bytes": os.path.getsize(q)}
        for kind, f in (("fp32", path), ("int8", q)):
            metrics = run_eval_onnx.main(["--model_file", f, "--task", args.task, "--data_dir", args.data_dir,
                                          "--threads", str(args.threads)])
            row[kind + "_metrics"] = {k: float(v) for k, v in metrics.items()}
        rows.append(row)
    from src.tasks import get_task
    main_metric = get_task(args.task).main_metric
    feeds = {row["model"]: _sample_feeds(row["fp32_file"]) for row in rows}   # same shape and vocab in both files
    for _ in range(rounds):                  # same-run timing, one session alive at a time
        for row in rows:
            for kind in ("fp32", "int8"):
                runner = runner_for(row[kind + "_file"], args.threads)
                inputs = feeds[row["model"]]
                row.setdefault(kind + "_rounds_s", []).append(time_call(lambda: runner(*inputs), budget_s=budget))
                runner = None                                    # its session closes before the next opens
    ref = next((r["fp32_metrics"][main_metric] for r in rows if r["model"] == REFERENCE), None)
    for row in rows:
        for kind in ("fp32", "int8"):
            row[kind + "_s"] = statistics.median(row[kind + "_rounds_s"])
            row[kind + "_acc"] = row[kind + "_metrics"][main_metric]
            row[kind + "_pct_ref"] = (100 * row[kind + "_acc"] / ref) if ref is not None else None
        row["speedup"] = row["fp32_s"] / row["int8_s"]
    out = {"machine": machine(args.threads), "quick": args.quick, "rounds": rounds, "budget_s": budget,
           "task": args.task, "metric": main_metric, "reference": REFERENCE if ref is not None else None,
           "models": rows}
    write_json(os.path.join(args.out_dir, "int8.json"), out)
    emit("int8", table(out), args.results or None)
    return out


def _sample_feeds(path: str):
    """sample_inputs at an exported ONNX model's fixed (batch, seq) input shape, with ids below its vocab size (the
    rows of the word-embedding table, the first Gather's data input). One read of the file."""
    import onnx
    from onnx import numpy_helper
    from src.export import sample_inputs
    m = onnx.load(path, load_external_data=False)
    batch, seq = (d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)
    if not batch or not seq:
        raise ValueError(f"{path}: its input shape is not fixed (an export.py / bench_export.py file has one)")
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Gather" and n.input[0] in inits:
            return sample_inputs(batch, seq, int(numpy_helper.to_array(inits[n.input[0]]).shape[0]))
    raise ValueError(f"{path}: no embedding Gather")


def table(out) -> str:
    m = out["metric"]
    rows = [[r["model"], METHODS[r.get("method", "ort_dynamic")], f"{r['fp32_acc']:.4f}", f"{r['int8_acc']:.4f}",
             f"{100 * (r['int8_acc'] - r['fp32_acc']):+.2f}",
             "-" if r["int8_pct_ref"] is None else f"{r['int8_pct_ref']:.1f}%", r["fp32_s"] * 1e3, r["int8_s"] * 1e3,
             r["speedup"], r["fp32_bytes"], r["int8_bytes"]] for r in out["models"]]
    ref = f"% of the {out['reference']} (fp32)" if out["reference"] else "% of reference"
    return (f"### int8 (onnxruntime): dev {m} and latency, fp32 vs int8\n\n"
            f"{machine_line(out['machine'])}. Task {out['task']}, whole dev split; the files bench_export.py keeps "
            f"(batch x seq of its first cell) and their int8 copies, run in the project's sessions: "
            f"`quantize_dynamic` (int8 weights per tensor, activations quantized at run time, asymmetric uint8) or, "
            f"for TernaryBERT, its integer kernels (src/ternary_int8.py: ternary codes as int8, activations "
            f"quantized with the trained symmetric 8-bit scales, MatMulInteger). {out['rounds']} timing rounds, "
            f"median of the round medians."
            f"{' QUICK MODE: tiny shapes, timings meaningless.' if out['quick'] else ''}\n\n"
            + markdown_table(["model", "int8 method", f"fp32 {m}", f"int8 {m}", "int8 - fp32 (points)", f"int8 {ref}",
                              "fp32 ms", "int8 ms", "int8 speed-up", "fp32 ONNX bytes", "int8 ONNX bytes"], rows))


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
