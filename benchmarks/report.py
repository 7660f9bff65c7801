"""Trade-off table and plots for the embedded default, from the runs' own records (never typed by hand).

    python benchmarks/report.py                          # teacher + TD student of output/td_mr, bench JSON
    python benchmarks/report.py --run width0.667=output/width/w0.667 --results docs/results.md

Table: model, params, bytes (checkpoint), latency (from output/bench/export.json, batch/seq chosen with
--latency_batch/--latency_seq, onnxruntime), dev metric (best eval in the run's metrics.jsonl), % of the teacher's
metric. PNGs (needs matplotlib, requirements-bench.txt; the table prints without it):
tradeoff.png (dev metric vs latency, marker area ~ bytes) and curves.png (training loss per logged step and the
metric per eval, every run). No MindSpore needed: runs with either venv.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit, markdown_table, write_json  # noqa: E402
from src.runlog import read_records  # noqa: E402
from src.cli import doc_parser  # noqa: E402

DEFAULT_RUNS = ["MiniLM-L6 teacher=output/td_mr/teacher", "MR student=output/compress_mr/depth/td2"]


def run_summary(name: str, run_dir: str, metric: str):
    """Best dev metric, checkpoint bytes, params and curves of one run. `run_dir#w0.667` selects one width of a
    width-supernet run (its `<metric>_w0.667` evals, best_w0.667.ckpt, config_w0.667.json). A TernaryBERT run
    counts its packed artefact (model_base3.tpack, else model.tpack), which is what ships."""
    run_dir, _, width = run_dir.partition("#")
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        return None
    train, evals = read_records(run_dir, "train"), read_records(run_dir, "eval")
    if width:
        metric = f"{metric}_{width}" if any(f"{metric}_{width}" in e for e in evals) else metric
        train = []                                   # the supernet's loss is not this sub-model's
    scores = [e[metric] for e in evals if metric in e]
    names = (f"best_{width}.ckpt",) if width else ("model_base3.tpack", "model.tpack", "best.ckpt", "student.ckpt",
                                                  "model.ckpt")
    ckpt = next((os.path.join(run_dir, c) for c in names if os.path.exists(os.path.join(run_dir, c))), None)
    params = None
    cfg = os.path.join(run_dir, f"config_{width}.json" if width else "config.json")
    if ckpt and ckpt.endswith(".tpack"):              # the artefact's own shape (its position table is cut)
        from src.packing import read_header
        params = _param_count(read_header(ckpt)["config"])
    elif os.path.exists(cfg):
        params = _param_count(json.load(open(cfg, encoding="utf-8")))
    return {"name": name, "dir": run_dir, "best": max(scores) if scores else None, "evals": len(scores),
            "ckpt_bytes": os.path.getsize(ckpt) if ckpt else None, "params": params,
            "train": [(r["step"], r["loss"]) for r in train if "loss" in r],
            "eval_curve": [(e.get("step"), e[metric]) for e in evals if metric in e]}


def _param_count(c: dict) -> int:
    """Parameters of a BertForSequenceClassification from its config.json (per-layer sizes honoured)."""
    h, L = c["hidden_size"], c["num_hidden_layers"]
    d = h // c["num_attention_heads"]
    heads = c.get("layer_num_heads") or [c["num_attention_heads"]] * L
    ffn = c.get("layer_intermediate_sizes") or [c["intermediate_size"]] * L
    n = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"]) * h + 2 * h
    for i in range(L):
        a = heads[i] * d
        n += 3 * (h * a + a) + a * h + h + 2 * h + h * ffn[i] + ffn[i] + ffn[i] * h + h + 2 * h
    return n + h * h + h + h * c.get("num_labels", 2) + c.get("num_labels", 2)


def latency_of(bench: dict, name: str, batch: int, seq: int):
    for r in (bench or {}).get("latency", []):
        if r["model"] == name and r["batch"] == batch and r["seq"] == seq and r.get("ort_s"):
            return r["ort_s"] * 1e3
    return None


def main(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--run", action="append", default=None,
                   help="NAME=RUN_DIR (repeat; RUN_DIR#w0.667 = one width of a width run); default: teacher + TD "
                        "student")
    p.add_argument("--metric", default="acc")
    p.add_argument("--bench_json", default="output/bench/export.json")
    p.add_argument("--latency_batch", type=int, default=1)
    p.add_argument("--latency_seq", type=int, default=64)
    p.add_argument("--latency_row", action="append", default=[],
                   help="NAME=EXPORT_ROW: take run NAME's latency from that export.json row (repeatable), e.g. "
                        "\"TernaryBERT W2E2A8=TernaryBERT W2E2A8 int8 kernels\" (its deployable integer-kernel file)")
    p.add_argument("--out_dir", default="output/bench")
    p.add_argument("--no_plots", action="store_true")
    from tools.marked_blocks import add_results_arg
    add_results_arg(p, what="the table")
    args = p.parse_args(argv)
    bench = json.load(open(args.bench_json, encoding="utf-8")) if os.path.exists(args.bench_json) else None
    specs = args.run or DEFAULT_RUNS
    runs, missing = [], []
    for s in specs:
        if "=" not in s:
            from src.errors import UserError
            raise UserError(f"--run '{s}': expected NAME=RUN_DIR")
        name, d = s.split("=", 1)
        r = run_summary(name, d, args.metric)
        (runs.append(r) if r else missing.append(f"{name} ({d}/metrics.jsonl missing)"))
    teacher = runs[0]["best"] if runs and runs[0]["best"] else None
    latency_rows = {}
    for s in args.latency_row:
        name, sep, row = s.partition("=")
        if not sep or not name or not row:
            from src.errors import UserError
            raise UserError(f"--latency_row '{s}': expected NAME=EXPORT_ROW")
        latency_rows[name] = row
    rows = []
    for r in runs:
        r["latency_row"] = latency_rows.get(r["name"], r["name"])
        r["latency_ms"] = latency_of(bench, r["latency_row"], args.latency_batch, args.latency_seq)
        pct = 100 * r["best"] / teacher if teacher and r["best"] is not None else None
        rows.append([r["name"], r["params"], r["ckpt_bytes"], r["latency_ms"], r["best"], pct, r["evals"]])
    heads = ["model", "params", "ckpt / artefact bytes", f"ORT latency ms (b{args.latency_batch}, s{args.latency_seq})",
             f"dev {args.metric}", "% of teacher", "evals"]
    text = ("### Trade-off on the embedded default (MR)\n\nFrom each run's metrics.jsonl (best dev metric) and "
            f"{args.bench_json} (latency; '-' = not benchmarked). First row is the reference.\n\n"
            + markdown_table(heads, [r[:4] + [None if r[4] is None else f"{r[4]:.4f}",
                                              None if r[5] is None else f"{r[5]:.1f}%"] + r[6:] for r in rows]))
    moved = [f"{r['name']}: latency of the export row '{r['latency_row']}'" for r in runs
             if r["latency_row"] != r["name"]]
    if moved:
        text += "\n\n" + "; ".join(moved) + "."
    if missing:
        text += "\n\nNot found: " + "; ".join(missing)
    pngs = [] if args.no_plots else plots(runs, args)
    if pngs:
        text += "\n\n" + " ".join(f"![{os.path.basename(pth)}]({image_link(pth, args.results)})" for pth in pngs)
    write_json(os.path.join(args.out_dir, "report.json"), {"runs": runs, "missing": missing, "pngs": pngs})
    emit("tradeoff", text, args.results or None)
    return {"rows": rows, "runs": runs, "pngs": pngs, "text": text}


def image_link(png: str, results: str) -> str:
    """The path a markdown file at `results` links `png` by (relative to that file's folder, as markdown resolves
    it); without a results file, `png` as given."""
    if not results:
        return png
    rel = os.path.relpath(os.path.abspath(png), os.path.dirname(os.path.abspath(results)))
    return rel.replace(os.sep, "/")


def plots(runs, args):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -r requirements-bench.txt): plots skipped")
        return []
    os.makedirs(args.out_dir, exist_ok=True)
    out = []
    pts = [r for r in runs if r["latency_ms"] is not None and r["best"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in pts:
            size = 40 + 400 * (r["ckpt_bytes"] or 0) / max(x["ckpt_bytes"] or 1 for x in pts)
            ax.scatter(r["latency_ms"], r["best"], s=size, alpha=0.6)
            ax.annotate(r["name"], (r["latency_ms"], r["best"]), fontsize=8)
        ax.set_xlabel(f"onnxruntime latency, ms (batch {args.latency_batch}, seq {args.latency_seq})")
        ax.set_ylabel(f"dev {args.metric}")
        ax.set_title("accuracy vs latency (marker area ~ checkpoint bytes)")
        out.append(_save(fig, os.path.join(args.out_dir, "tradeoff.png")))
        plt.close(fig)
    if any(r["train"] or r["eval_curve"] for r in runs):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for r in runs:
            if r["train"]:
                a1.plot(*zip(*r["train"]), label=r["name"])
            if r["eval_curve"]:
                a2.plot(*zip(*r["eval_curve"]), marker="o", label=r["name"])
        a1.set_xlabel("step"), a1.set_ylabel("training loss"), a1.legend(fontsize=8)
        a2.set_xlabel("step"), a2.set_ylabel(f"dev {args.metric}"), a2.legend(fontsize=8)
        out.append(_save(fig, os.path.join(args.out_dir, "curves.png")))
        plt.close(fig)
    return out


def _save(fig, path):
    from src.fileio import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main, sys.argv[1:])
