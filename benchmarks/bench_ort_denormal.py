"""onnxruntime on CPU with and without `session.set_denormal_as_zero`: a masked attention softmax as one kernel, and
whole exported models. This is why src/ort_cpu.py's sessions flush denormals (ORT_CPU_SESSION_CONFIG, docs/export.md).

    python benchmarks/bench_ort_denormal.py                               # ~4 min on 2 cores
    python benchmarks/bench_ort_denormal.py --readme docs/benchmarks.md   # also write the table there
    python benchmarks/bench_ort_denormal.py --quick                       # tiny shapes (tests); timings meaningless

onnxruntime sets the flush-to-zero flags on the thread that creates a session too, and they stay set there after
the session is gone, so every measurement runs in its own process (this script started again with --child); the
two settings alternate, in rounds, and the median of the round medians is reported. Models are random-init exports
(speed does not depend on the weights) written as export.py writes them, in the project's sessions otherwise
(SkipLayerNormFusion off). Writes output/bench/ort_denormal.json.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_timing_args, emit, machine, machine_line, markdown_table,  # noqa: E402
                               rounds_and_budget, time_call, write_json)

FILL = -10000.0          # the model's additive mask for padded keys (src/tinybert_model.py)


def _softmax_model(shape):
    from onnx import TensorProto, helper
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "y")]
    node = helper.make_node("Softmax", ["x"], ["y"], axis=3)
    return helper.make_model(helper.make_graph([node], "softmax", io[:1], io[1:]),
                             opset_imports=[helper.make_opsetid("", 11)])


def child(spec: dict) -> dict:
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
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(cases, threads, rounds, budget, work):
    """cases: list of (row dict, spec without daz). Adds off_s / on_s / speedup / max_abs_diff to each row."""
    import numpy as np
    for row, spec in cases:
        times, outs = {False: [], True: []}, {}
        for _ in range(rounds):
            for daz in (False, True):
                got = _run_child(dict(spec, daz=daz, threads=threads, budget=budget, work=work))
                times[daz].append(got["s"])
                outs[daz] = np.array(got["out"])
        row["off_s"], row["on_s"] = statistics.median(times[False]), statistics.median(times[True])
        row["speedup"] = row["off_s"] / row["on_s"]
        row["max_abs_diff"] = float(np.abs(outs[False] - outs[True]).max())
        print(f"{row['case']:<40} off {row['off_s'] * 1e3:9.2f} ms  on {row['on_s'] * 1e3:9.2f} ms  "
              f"{row['speedup']:.2f}x", flush=True)
    return [row for row, _ in cases]


def table(out) -> str:
    from benchmarks.bench_ort_layernorm import goal_table
    k = markdown_table(["softmax [batch, 12, seq, seq]", "keys masked", "ms, denormals kept", "ms, as zero",
                        "speed-up", "max abs diff"],
                       [[r["case"], r["masked"], r["off_s"] * 1e3, r["on_s"] * 1e3, r["speedup"],
                         f"{r['max_abs_diff']:.1e}"] for r in out["kernels"]])
    m = markdown_table(["model", "batch", "seq", "ms, denormals kept", "ms, as zero", "speed-up", "max abs logit diff"],
                       [[r["model"], r["batch"], r["seq"], r["off_s"] * 1e3, r["on_s"] * 1e3, r["speedup"],
                         f"{r['max_abs_diff']:.1e}"] for r in out["models"]])
    g = goal_table(out["goals"], modes=("off", "on"), labels=("kept", "as zero"))
    return (f"### onnxruntime CPU: denormals kept vs flushed to zero (`session.set_denormal_as_zero`)\n\n"
            f"{machine_line(out['machine'])}. onnxruntime {out['onnxruntime']}; every measurement in its own "
            f"process; {out['rounds']} rounds, median of the round medians; masked = the second half of the keys "
            f"at {FILL:g} (the model's padding mask); models are random-init exports in the project's sessions."
            f"{' QUICK MODE: tiny shapes, timings meaningless.' if out['quick'] else ''}\n\n"
            f"Kernel:\n\n{k}\n\nWhole models (sample batches with padding):\n\n{m}\n\n"
            f"Goal ratios of the same runs (issue 6):\n\n{g}")


def main(argv=None):
    p = argparse.ArgumentParser(description="onnxruntime CPU: denormals kept vs flushed to zero")
    add_timing_args(p, "seconds of timed calls per measurement")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None
    import numpy as np
    import onnxruntime as ort
    from benchmarks.bench_export import _spec, build, export_file
    from benchmarks.bench_ort_layernorm import goal_ratios, model_specs
    from src import runtime
    rounds, budget = rounds_and_budget(args)
    runtime.init_context("CPU", "graph", threads=args.threads)
    cells = [(2, 16)] if args.quick else [(1, 64), (16, 128)]
    work = os.path.abspath(os.path.join(args.out_dir, "tmp_ort_denormal"))
    os.makedirs(work, exist_ok=True)
    try:
        kernels = [({"case": f"[{b}, 12, {s}, {s}]", "masked": masked}, {"softmax": [b, 12, s, s], "masked": masked})
                   for b, s in cells for masked in (False, True)]
        models = []
        for name, cfg in model_specs(args.quick):
            net = build(_spec(name, cfg), "gelu_erf_poly")
            for b, s in cells:
                base = os.path.join(work, f"{name.replace(' ', '_').replace('.', '')}_b{b}_s{s}")
                path, inputs = export_file(net, base, "ONNX", b, s, cfg.vocab_size)
                np.savez(base + ".npz", ids=inputs[0], types=inputs[1], mask=inputs[2])
                models.append(({"model": name, "batch": b, "seq": s, "case": f"{name} b{b} s{s}"},
                               {"path": path, "inputs": base + ".npz"}))
        out = {"machine": machine(args.threads), "quick": args.quick, "rounds": rounds, "budget_s": budget,
               "onnxruntime": ort.__version__,
               "kernels": measure(kernels, args.threads, rounds, budget, work),
               "models": measure(models, args.threads, rounds, budget, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["goals"] = goal_ratios(out["models"], modes=("off", "on"))
    write_json(os.path.join(args.out_dir, "ort_denormal.json"), out)
    emit("ort_denormal", table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
