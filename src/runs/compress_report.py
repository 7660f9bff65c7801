"""The stage table of the compression pipeline (stages.md, log.txt): for the teacher and each finished stage, its
shape, parameters, deployable bytes (the ONNX file it exports to: fp32 for fp32 models, export.format for ternary
ones; the final row is the shipped file itself), onnxruntime latency at batch 1 and export.seq_length (median of
report.latency_runs runs, every model timed in this process one after the other), dev metric and % of the
teacher's. Ends with `The best acc is X` of the final model."""
import os
import statistics
import time

import numpy as np

from src.config import RESOLVED_NAME
from src.fileio import atomic_json, atomic_text
from src.runs.compress_stages import ORDER, Model, read_stage

FORMAT_FLAGS = {"nbits_int8": dict(int8=True, nbits=2), "int8": dict(int8=True, nbits=0),
                "nbits": dict(int8=False, nbits=2), "fp32": dict(int8=False, nbits=0)}


def shape_of(config_path: str) -> dict:
    from src.tinybert_model import load_bert_config
    from src.width import sizes_txt
    c = load_bert_config(config_path, "model config")
    n = c.num_hidden_layers
    return {"layers": n, "heads": sizes_txt([c.heads(i) for i in range(n)]),
            "ffn": sizes_txt([c.ffn(i) for i in range(n)]), "vocab": c.vocab_size, "hidden": c.hidden_size}


def params_of(config_path: str, num_labels: int, head_type: str, head_kind: str) -> int:
    from src.tinybert_model import build_classifier, count_params, load_bert_config
    return count_params(build_classifier(load_bert_config(config_path, "model config", num_labels=num_labels),
                                         head_type, head_kind))


def onnx_of(cfg, model: Model, path: str, num_labels: int, batch: int = 1, seq: int = 0) -> str:
    """`model` exported to ONNX at `batch` / `seq` (default: batch 1 / export.seq_length), fp32 for an fp32 model and
    export.format for a ternary one (from its packed artefact); reloaded and checked by export_checkpoint. An
    existing `path` is returned as it is."""
    from src.export import export_checkpoint
    if os.path.isfile(path):
        return path
    ternary = model.kind == "ternary"
    flags = FORMAT_FLAGS[cfg.export.format] if ternary else FORMAT_FLAGS["fp32"]
    export_checkpoint(model.config, model.packed if ternary else model.ckpt, path, "ONNX", batch,
                      seq or cfg.export.seq_length, num_labels, cfg.teacher.head_type, "auto", None, ternary, "CPU",
                      log=lambda *_: None, **flags)
    return path


def latency_ms(path: str, seq: int, vocab: int, runs: int, threads: int) -> float:
    from src.export import OnnxRunner, sample_inputs
    r = OnnxRunner(path, threads)
    x = sample_inputs(1, seq, vocab, seed=1)
    for _ in range(3):
        r(*x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r(*x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def entries_of(out_dir: str, teacher: Model, metric: str) -> list:
    """[(name, Model, metrics)]: the teacher (`metric` as its checkpoint records it) and each finished stage of the
    run in `out_dir`, in pipeline order (its stage.json's model and metrics)."""
    entries = [("teacher", teacher, {metric: teacher_metric(teacher.ckpt, metric)})]
    for name in ORDER:
        st = read_stage(os.path.join(out_dir, name))
        if st is not None:
            entries.append((name, Model(**st["model"]), st.get("metrics", {})))
    return entries


def report(cfg, out_dir: str, teacher: Model, log) -> list:
    from src.tasks import task_from_config
    task = task_from_config(cfg)
    metric = task.main_metric
    rep = os.path.join(out_dir, "report")
    os.makedirs(rep, exist_ok=True)
    rows = []
    for name, model, metrics in entries_of(out_dir, teacher, metric):
        shape = shape_of(model.config)
        fmt = cfg.export.format if model.kind == "ternary" else "fp32"
        b1 = os.path.join(rep, f"{name}_{fmt}.onnx")
        if name == "export":               # the shipped file; timed itself when its batch is 1
            path = os.path.join(out_dir, "export", "model.onnx")
            lat_path = path if cfg.export.batch_size == 1 else onnx_of(cfg, model, b1, task.num_labels)
        else:
            path = lat_path = onnx_of(cfg, model, b1, task.num_labels)
        lat = latency_ms(lat_path, cfg.export.seq_length, shape["vocab"], cfg.report.latency_runs,
                         cfg.threads) if cfg.report.latency_runs else None
        rows.append({"stage": name, **shape, "params": params_of(model.config, task.num_labels,
                                                                 cfg.teacher.head_type, task.head),
                     "kind": model.kind, "bytes": os.path.getsize(path),
                     "packed_bytes": os.path.getsize(model.packed) if model.packed else None,
                     "latency_ms": lat, "metric": metrics.get(metric)})
    base = rows[0]
    for r in rows:
        r["x_smaller"] = base["bytes"] / r["bytes"]
        r["x_faster"] = base["latency_ms"] / r["latency_ms"] if r["latency_ms"] and base["latency_ms"] else None
        r["pct_teacher"] = (100 * r["metric"] / base["metric"]) if r["metric"] and base["metric"] else None
    table = format_table(rows, metric, cfg.export.seq_length)
    atomic_text(os.path.join(out_dir, "stages.md"), "\n".join(table) + "\n")
    atomic_json(os.path.join(out_dir, "stages.json"), rows)
    log.info(f"stage table (deployable bytes: the ONNX file; latency: onnxruntime, batch 1, seq "
             f"{cfg.export.seq_length}, median of {cfg.report.latency_runs} runs, {cfg.threads} threads):")
    for line in table:
        log.info(line)
    if rows[-1]["stage"] == "export":
        where = bytes_breakdown(os.path.join(out_dir, "export", "model.onnx"), rows[-1]["vocab"])
        atomic_json(os.path.join(out_dir, "export_bytes.json"), where)
        lines = format_bytes(where)
        log.info("where the bytes of export/model.onnx go:")
        for line in lines:
            log.info(line)
        atomic_text(os.path.join(out_dir, "stages.md"), "\n".join(table + [""] + lines) + "\n")
        write_card(cfg, os.path.join(out_dir, "export"), rows, metric)
    final = rows[-1]
    if final["metric"] is not None:
        log.info(f"The best acc is {final['metric']:.6f}")   # the zoo line, whatever the main metric
    return rows


def write_card(cfg, folder: str, rows: list, metric: str):
    """The exported folder's model_card.md, generated from the stage table (src/export_folder.py)."""
    import json
    import platform
    from src.export_folder import _file_sizes, render_model_card
    from src.runlog import git_hash
    stages = [{"stage": r["stage"], "layers / heads / FFN / vocab": f"{r['layers']} / {r['heads']} / {r['ffn']} / "
               f"{r['vocab']}", "params": r["params"], "ONNX bytes": r["bytes"], "x smaller": round(r["x_smaller"], 1),
               f"ms b1/s{cfg.export.seq_length}": r["latency_ms"], f"dev {metric}": r["metric"]} for r in rows]
    final, teacher = rows[-1], rows[0]
    card = {"title": f"{cfg.task.name} classifier compressed from {cfg.teacher.ckpt}",
            "teacher": f"{cfg.teacher.ckpt} ({teacher['layers']} layers, {teacher['params']:,} parameters)",
            "recipe": " -> ".join(r["stage"] for r in rows[1:]) + f" (width {cfg.width.target}, export "
                      f"{cfg.export.format})",
            "stages": stages,
            "metrics": {"teacher": {f"dev {metric}": teacher["metric"]},
                        "this model": {f"dev {metric}": final["metric"]}},
            "sizes": {"teacher ONNX (fp32)": teacher["bytes"], "this model.onnx": final["bytes"]},
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs; onnxruntime {cfg.threads} "
                       f"threads",
            "command": f"python run_compress.py --config_path {os.path.join(cfg.output_dir, RESOLVED_NAME)}",
            "commit": git_hash()}
    if final["latency_ms"] is not None:
        card["latency"] = {"teacher, batch 1": teacher["latency_ms"], "this model, batch 1": final["latency_ms"]}
    with open(os.path.join(folder, "labels.json"), encoding="utf-8") as f:
        labels = json.load(f)
    atomic_text(os.path.join(folder, "model_card.md"), render_model_card(card, labels, _file_sizes(folder)))


def bytes_breakdown(path: str, vocab_size: int) -> dict:
    """Bytes of an exported ONNX file by what they hold: its constant tensors grouped by kind, the rest (graph
    nodes, names, metadata) as "graph"."""
    import onnx
    from onnx import numpy_helper
    groups = {"word embedding: 2-bit codes": 0, "Dense weights: 2-bit codes": 0, "scales (alpha per row / tensor)": 0,
              "fp32 tensors (position and token-type embeddings, LayerNorm, biases, classifier)": 0,
              "int8 / fp32 weights (not 2-bit)": 0, "other constants": 0}
    for t in onnx.load(path).graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.uint8 and a.ndim == 2 and t.name.endswith(".codes"):
            key = "word embedding: 2-bit codes" if a.shape[0] == vocab_size else "Dense weights: 2-bit codes"
        elif "alpha" in t.name or "scale" in t.name:
            key = "scales (alpha per row / tensor)"
        elif a.dtype == np.int8 and a.size > 1024 or (a.dtype == np.float32 and a.ndim == 2 and min(a.shape) > 2
                                                        and "embeddings" not in t.name):
            key = "int8 / fp32 weights (not 2-bit)"
        elif a.dtype == np.float32:
            key = "fp32 tensors (position and token-type embeddings, LayerNorm, biases, classifier)"
        else:
            key = "other constants"
        groups[key] += int(a.nbytes)
    total = os.path.getsize(path)
    groups["graph (nodes, names, metadata)"] = total - sum(groups.values())
    return {"file": os.path.basename(path), "total": total, "groups": groups}


def format_bytes(where: dict) -> list:
    out = [f"| {where['file']} holds | bytes | share |", "|---|---:|---:|"]
    for k, v in where["groups"].items():
        if v:
            out.append(f"| {k} | {v:,} | {100 * v / where['total']:.1f}% |")
    out.append(f"| total | {where['total']:,} | 100.0% |")
    return out


def teacher_metric(ckpt: str, metric: str):
    """The fine-tuned teacher's dev metric as its keep-best checkpoint records it (None when it records none)."""
    from src.checkpoint import read_ms_checkpoint
    _, meta = read_ms_checkpoint(ckpt, with_extra=True)
    v = meta.get(metric)
    return float(v) if v is not None else None


def format_table(rows, metric: str, seq: int) -> list:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)
    out = [f"| stage | layers / heads / FFN / vocab | params | deployable bytes | x smaller | ms b1/s{seq} | "
           f"x faster | dev {metric} | % of teacher |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        packed = (f" (packed {r['packed_bytes']:,}: {rows[0]['bytes'] / r['packed_bytes']:.1f}x)"
                  if r["packed_bytes"] else "")
        out.append(f"| {r['stage']} | {r['layers']} / {r['heads']} / "
                   f"{r['ffn']} / {r['vocab']:,} | {r['params']:,} | {r['bytes']:,}{packed} | "
                   f"{r['x_smaller']:.1f}x | {num(r['latency_ms'], '.2f')} | {num(r['x_faster'], '.1f')} | "
                   f"{num(r['metric'], '.4f')} | {num(r['pct_teacher'], '.1f')} |")
    return out
