"""Size and onnxruntime latency of each stage of a finished compression pipeline run (run_compress.py) against its
fp32 teacher, at batch 1 / 16 / 32 x seq 64 / 128, measured in the same run.

    python benchmarks/bench_compress.py                                 # output/compress_mr; ~6 min on 2 busy cores
    python benchmarks/bench_compress.py --run_dir output/compress_mr --results docs/results.md

Rows: the run's teacher (teacher.config / teacher.ckpt of its config_resolved.yaml) and the model of each finished
stage (its stage.json). Deployable bytes: the model's ONNX file at batch 1 / export.seq_length, as the run's stage
table (src/runs/compress_report.py) exports it - fp32 for fp32 models, export.format for ternary ones - and for the
export stage the shipped export/model.onnx itself; packed bytes: the model.tpack of a ternary model. Latency: one ONNX
file per (model, batch, seq), exported once into --out_dir (kept there and reused while its sidecar names the same
model and shape); a cell the model cannot take (seq above its position table: a packed ternary model keeps only the
run's max_seq_length rows) is '-', with the reason under the table. Timing: --rounds rounds, in each every cell's
models one after the other (one session alive at a time), a round's value the median of its timed calls, the cell
the median of the rounds; every ratio is against the teacher row of this run. Dev metric: each stage's stage.json
"metrics" (the teacher's: its checkpoint's record, as in the stage table). Writes <out_dir>/compress.json;
--from_json renders a saved one again.
"""
import json
import os
import shlex
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (emit, fmt, machine, machine_line, markdown_table, read_result, time_call,  # noqa
                               write_json)
from src.runlog import read_manifest  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402
from src.cli import doc_parser  # noqa: E402

FORMAT_NOTES = {"nbits_int8": ": 2-bit codes stored, int8 kernels", "int8": ": int8 codes, int8 kernels",
                "nbits": ": 2-bit MatMulNBits, fp32 compute", "fp32": ": ternary weights as fp32, fake-quant graph"}
BATCHES = (1, 16, 32)
SEQS = (64, 128)


def short_hash(h: str) -> str:
    """A git hash as 12 characters, keeping a -dirty mark."""
    return h[:12] + ("-dirty" if h.endswith("-dirty") else "")


def cell_key(batch: int, seq: int) -> str:
    return f"b{batch}/s{seq}"


def load_run(run_dir: str):
    """(cfg, task, [(name, Model, metrics)]) of a finished run_compress.py folder; UserError when it is not one."""
    from src.config import load_run_config
    from src.errors import UserError
    from src.runs.compress import OPEN_SECTIONS
    from src.runs.compress_report import entries_of
    from src.runs.compress_stages import Model
    from src.tasks import task_from_config
    cfg = load_run_config(run_dir, "expected a run_compress.py output folder as --run_dir",
                          open_sections=OPEN_SECTIONS)
    task = task_from_config(cfg)
    entries = entries_of(run_dir, Model(cfg.teacher.config, cfg.teacher.ckpt), task.main_metric)
    if len(entries) == 1:
        raise UserError(f"--run_dir {run_dir}: no finished stage (no <stage>/stage.json); run run_compress.py first")
    return cfg, task, entries


def positions_of(model) -> tuple:
    """(rows of the model's position table, where that number comes from): a ternary model's packed artefact header
    (pack.max_positions keeps the first rows only), else its config.json."""
    from src.tinybert_model import load_bert_config
    if model.kind == "ternary" and model.packed:
        from src.packing import read_header
        return int(read_header(model.packed)["config"]["max_position_embeddings"]), "the packed artefact keeps"
    return load_bert_config(model.config, "model config").max_position_embeddings, "the config has"


def _reusable(path: str, model, batch: int, seq: int) -> bool:
    """True when `path` and its sidecar exist and were exported from this model's files at this shape; a stale file
    (another run's, another shape) is removed."""
    side = path + ".json"
    try:
        with open(side, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = None
    source = model.packed if model.kind == "ternary" else model.ckpt
    ok = (info is not None and os.path.isfile(path) and info.get("ckpt") == source and info.get("config") ==
          model.config and info.get("batch_size") == batch and info.get("seq_length") == seq
          and os.path.getmtime(path) >= os.path.getmtime(source))
    if not ok:
        for p in (path, side):
            if os.path.exists(p):
                os.remove(p)
    return ok


def export_cell(cfg, name: str, model, batch: int, seq: int, out_dir: str, run_dir: str, num_labels: int) -> str:
    """The ONNX file of `model` at (batch, seq): the run's export/model.onnx for the export stage at its own shape,
    else a file in out_dir exported by the stage table's code (onnx_of) unless a reusable one is there."""
    from src.runs.compress_report import onnx_of
    if name == "export" and (batch, seq) == (cfg.export.batch_size, cfg.export.seq_length):
        return os.path.join(run_dir, "export", "model.onnx")
    fmt_name = cfg.export.format if model.kind == "ternary" else "fp32"
    path = os.path.join(out_dir, f"{name}_{fmt_name}_b{batch}_s{seq}.onnx")
    _reusable(path, model, batch, seq)
    return onnx_of(cfg, model, path, num_labels, batch, seq)


def time_file(path: str, inputs, threads: int, budget: float) -> float:
    """Median seconds per call of the ONNX file at `path` on `inputs` (benchmarks/common.py time_call), in a session
    that is closed before the next one opens."""
    from src.export import OnnxRunner
    runner = OnnxRunner(path, threads)
    return time_call(lambda: runner(*inputs), budget_s=budget)


def summarize(rows: list, cells: list) -> list:
    """Fill each row's per-cell ms (median of its round medians, seconds -> ms) and the ratios against rows[0]
    (the teacher): x smaller (deployable and packed bytes), x faster per cell, % of the teacher's metric. A cell
    without rounds stays None."""
    base = rows[0]
    for r in rows:
        r["ms"] = {c: (1e3 * statistics.median(r["rounds_s"][c]) if r["rounds_s"].get(c) else None) for c in cells}
    for r in rows:
        r["x_smaller"] = base["bytes"] / r["bytes"]
        r["packed_x_smaller"] = base["bytes"] / r["packed_bytes"] if r["packed_bytes"] else None
        r["x_faster"] = {c: (base["ms"][c] / r["ms"][c] if r["ms"][c] and base["ms"][c] else None) for c in cells}
        r["pct_teacher"] = (100 * r["metric"] / base["metric"]) if r["metric"] is not None and base["metric"] else None
    return rows


def table(out: dict) -> str:
    cells, metric = out["cells"], out["metric"]

    def lat(r, c):
        if r["ms"].get(c) is None:
            return "-"
        ratio = r["x_faster"][c]
        return f"{fmt(r['ms'][c])} ({ratio:.2f}x)" if ratio is not None else fmt(r["ms"][c])

    body = [[r["stage"], r["kind"], r["bytes"], f"{r['x_smaller']:.1f}x",
             "-" if not r["packed_bytes"] else f"{r['packed_bytes']:,} ({r['packed_x_smaller']:.1f}x)",
             *[lat(r, c) for c in cells], "-" if r["metric"] is None else f"{r['metric']:.4f}",
             "-" if r["pct_teacher"] is None else f"{r['pct_teacher']:.1f}%"] for r in out["rows"]]
    headers = ["stage", "kind", "deployable bytes", "x smaller", "packed bytes (x smaller)",
               *[f"ms {c} (x faster)" for c in cells], f"dev {metric}", "% of teacher"]
    groups = {}                   # (positions, source) -> [(stage, skipped seqs)]
    for r in out["rows"]:
        if r["skipped"]:
            seqs = sorted({int(c.split("/s")[1]) for c in r["skipped"]})
            groups.setdefault((r["positions"], r["positions_note"]), []).append((r["stage"], seqs))
    notes = [f"{', '.join(s for s, _ in v)} at seq {', '.join(str(q) for q in sorted({q for _, qs in v for q in qs}))}"
             f" (every batch): {source} {n} position rows, so the graph cannot take a longer sequence"
             for (n, source), v in groups.items()]
    note = ("\n\n'-' = not possible: " + "; ".join(notes) + ". The ternary stage packs its model for one sequence "
            "length (pack.max_positions, by default the run's data.max_seq_length) and the later stages keep that "
            "table.") if notes else ""
    run = out["run"]
    m = out["machine"]
    rounds = f"{out['rounds']} round{'s' if out['rounds'] > 1 else ''}"
    caption = " ".join([
        f"{machine_line(m)}. Run `{run['dir']}` (`{run['command']}`, git {short_hash(run['git'])}); written by",
        f"`{out['command']}` at commit {short_hash(out['commit'])}.",
        f"Deployable bytes: the model's ONNX file at batch 1 / seq {out['export_seq']} (fp32 for fp32 models,",
        f"`{out['export_format']}` for ternary ones{FORMAT_NOTES.get(out['export_format'], '')}), for the export row",
        "the run's export/model.onnx; packed bytes: the ternary model's model.tpack.",
        f"Latency: ms per batch in the project's onnxruntime CPU sessions, {m['threads']} threads, one ONNX file per",
        f"(model, batch, seq); {rounds}, in each a cell's models timed one after the other (one session alive at a",
        "time), a round's value the median of its timed calls after one warm-up (at least 3,",
        f"{out['budget_s']:g} s budget), the cell the median of the rounds.",
        "Every ratio is against the teacher row of this run"
        + (f" (1-minute load average {out['load']:.1f} when the timing started)." if out.get("load") is not None
           else "."),
        f"Dev {metric}: each stage's stage.json (the teacher's: its checkpoint's record)."])
    return (f"### Compression pipeline stages against the fp32 teacher (onnxruntime)\n\n{caption}\n\n"
            + markdown_table(headers, body) + note)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = doc_parser(__doc__)
    p.add_argument("--run_dir", default="output/compress_mr", help="a finished run_compress.py output folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (median of their medians)")
    p.add_argument("--budget", type=float, default=0.5, help="seconds of timed calls per model, cell and round")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--seqs", type=int, nargs="+", default=list(SEQS))
    p.add_argument("--out_dir", default="output/bench/compress", help="the exported files and compress.json")
    p.add_argument("--from_json", default="", help="print (and with --results write) the table of a saved "
                                                   "compress.json instead of measuring")
    add_results_arg(p)
    args = p.parse_args(argv)
    if args.from_json:
        out = read_result(args.from_json, table, "a compress.json")
        emit("compress", table(out), args.results or None)
        return out
    from src.errors import UserError
    from src.export import sample_inputs
    from src.runlog import git_hash
    from src.tinybert_model import load_bert_config
    if args.rounds < 1 or args.budget <= 0 or min(args.batches + args.seqs) < 1:
        raise UserError(f"--rounds {args.rounds} / --budget {args.budget} / --batches / --seqs: all must be > 0")
    cfg, task, entries = load_run(args.run_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    cells = [(b, s) for b in args.batches for s in args.seqs]
    keys = [cell_key(b, s) for b, s in cells]
    rows = []
    for name, model, metrics in entries:
        positions, source = positions_of(model)
        deploy = export_cell(cfg, name, model, 1 if name != "export" else cfg.export.batch_size,
                             cfg.export.seq_length, args.out_dir, args.run_dir, task.num_labels)
        files = {cell_key(b, s): export_cell(cfg, name, model, b, s, args.out_dir, args.run_dir, task.num_labels)
                 for b, s in cells if s <= positions}
        print(f"{name}: {len(files)} of {len(cells)} cells exported", flush=True)
        rows.append({"stage": name, "kind": model.kind, "file": deploy, "bytes": os.path.getsize(deploy),
                     "packed_bytes": os.path.getsize(model.packed) if model.packed else None,
                     "vocab": load_bert_config(model.config, "model config").vocab_size, "files": files,
                     "positions": positions, "positions_note": source,
                     "skipped": [k for k in keys if k not in files], "metric": metrics.get(task.main_metric),
                     "rounds_s": {}})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for rnd in range(args.rounds):
        for (b, s), key in zip(cells, keys):
            for r in rows:
                if key not in r["files"]:
                    continue
                r["rounds_s"].setdefault(key, []).append(
                    time_file(r["files"][key], sample_inputs(b, s, r["vocab"], seed=1), args.threads, args.budget))
        print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    summarize(rows, keys)
    manifest = read_manifest(args.run_dir, missing_ok=True)
    out = {"machine": machine(args.threads), "rounds": args.rounds, "budget_s": args.budget, "load": load,
           "cells": keys, "metric": task.main_metric, "export_format": cfg.export.format,
           "export_seq": cfg.export.seq_length,
           "run": {"dir": args.run_dir, "command": manifest.get("command", "?"), "git": manifest.get("git", "?")},
           "command": "python benchmarks/bench_compress.py" + (" " + shlex.join(argv) if argv else ""),
           "commit": git_hash(), "rows": rows}
    write_json(os.path.join(args.out_dir, "compress.json"), out)
    emit("compress", table(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
