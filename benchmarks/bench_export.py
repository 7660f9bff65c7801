"""Latency / throughput of exported models (ONNX in onnxruntime, MINDIR in MindSpore) and model sizes.

    python benchmarks/bench_export.py                   # full grid: batch 1/16/32 x seq 64/128 (~20 min, 2 cores)
    python benchmarks/bench_export.py --quick           # tiny shapes, seconds (what the tests run)
    python benchmarks/bench_export.py --results docs/results.md   # also write both tables between the bench markers

Rows: BERT-base shape and TinyBERT-4 shape (random init: speed only), the MiniLM-L6 teacher, the MR student
(checkpoints when they exist, else random init of their config, marked so), width 0.833/0.667/0.5 sub-models of the
teacher (sliced from --width_supernet when given, else random init of the sliced config) and int8 dynamic
quantization of the students in onnxruntime. Every ratio is against rows measured in the same run. The line under the
latency table checks the latency goals in every cell: TinyBERT-4 vs BERT-base >= 14x, width 0.667 vs the full
teacher >= 1.45x. Writes output/bench/export.json; --from_json renders a saved one again.
"""
import math
import os
import shutil
import statistics
import subprocess
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (ROOT, add_timing_args, bert_flops, emit, machine, machine_line,  # noqa
                               markdown_table, measured_or_saved, rounds_and_budget, time_call)
from src.fileio import require_file  # noqa: E402
from src.tinybert_model import build_classifier, load_bert_config  # noqa: E402
from src.cli import doc_parser  # noqa: E402

TEACHER, BASE, TINY4 = "MiniLM-L6 teacher", "BERT-base shape", "TinyBERT-4 shape"
STUDENT = "MR student"
INT8 = " int8 (ORT dynamic)"
KERNELS = " int8 kernels"                 # a TernaryBERT row's integer-kernel form (src/ternary_int8.py, export --int8)
WIDTHS = (5 / 6, 2 / 3, 0.5)              # the trained widths; rows are named "width 0.833" etc.


def _spec(name, cfg, ckpt=None, config_path=None, note=""):
    return {"name": name, "cfg": cfg, "ckpt": ckpt, "config_path": config_path, "note": note}


def _ternary_spec(packed: str):
    """The packed TernaryBERT artefact's inference model (src/packing.py): its shape and W-E-A notation come from the
    file; config.json beside it gives build_model the run's config (the activation is swapped for ONNX)."""
    from src.packing import unpack
    require_file(packed, "--ternary_packed")
    _, cfg, qcfg, _, _ = unpack(packed)
    config_path = os.path.join(os.path.dirname(os.path.abspath(packed)), "config.json")
    require_file(config_path, "--ternary_packed's config.json (written beside it by run_ternary.py)")
    source = f"packed artefact {os.path.basename(packed)}"
    spec = _spec(f"TernaryBERT {qcfg.notation}", cfg, packed, config_path,
                 f"{source}: ternary weights rebuilt as fp32, 8-bit activation fake-quant as trained (onnxruntime has "
                 f"no 2-bit kernels)")
    spec["ternary"], spec["source"] = True, source
    return spec


def model_specs(args):
    from src.tinybert_model import BertConfig
    from src.width import sub_config, width_spec
    specs = []
    if args.quick:
        v = 100
        base = BertConfig(vocab_size=v, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=64)
        tiny = BertConfig(vocab_size=v, hidden_size=24, num_hidden_layers=1, num_attention_heads=12,
                          intermediate_size=48, max_position_embeddings=64)
        teacher = BertConfig(vocab_size=v, hidden_size=48, num_hidden_layers=2, num_attention_heads=12,
                             intermediate_size=96, max_position_embeddings=64)
        student = teacher.replace(num_hidden_layers=1)
        specs += [_spec(TEACHER, teacher, note="random init"), _spec(BASE, base, note="random init"),
                  _spec(TINY4, tiny, note="random init"), _spec(STUDENT, student, note="random init")]
    else:
        base = BertConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
        tiny = BertConfig(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200)
        t_cfg_path = os.path.join(args.teacher_dir, "config.json")
        t_ckpt = os.path.join(args.teacher_dir, "best.ckpt")
        if os.path.exists(t_cfg_path) and os.path.exists(t_ckpt):
            teacher = load_bert_config(t_cfg_path, "teacher config")
            specs.append(_spec(TEACHER, teacher, t_ckpt, t_cfg_path, "fine-tuned on MR"))
        else:
            teacher = load_bert_config(args.minilm_config, "--minilm_config")
            specs.append(_spec(TEACHER, teacher, note="random init (no fine-tuned teacher yet)"))
        specs += [_spec(BASE, base, note="random init"), _spec(TINY4, tiny, note="random init")]
        s_cfg_path = os.path.join(args.student_dir, "config.json")
        s_ckpt = os.path.join(args.student_dir, "best.ckpt")
        if os.path.exists(s_cfg_path) and os.path.exists(s_ckpt):
            specs.append(_spec(STUDENT, load_bert_config(s_cfg_path, "student config"), s_ckpt, s_cfg_path,
                               "TD on MR"))
        elif os.path.exists(args.gd_config):
            specs.append(_spec(STUDENT, load_bert_config(args.gd_config, "--gd_config"),
                               note="random init of the GD student shape (no TD run yet)"))
    if args.ternary_packed:
        specs.append(_ternary_spec(args.ternary_packed))
    for w in WIDTHS:
        spec = width_spec(teacher, w)
        note = f"heads {spec.heads[0]}/{teacher.num_attention_heads}, FFN {spec.ffn[0]}"
        if args.width_supernet and not args.quick:
            specs.append(_spec(f"width {w:.3g}", sub_config(teacher, spec), args.width_supernet,
                               args.width_supernet_config, note + ", sliced from the supernet"))
            specs[-1]["width_mult"] = w
        else:
            specs.append(_spec(f"width {w:.3g}", sub_config(teacher, spec), note=note + ", random init"))
    return specs


def build(spec, hidden_act):
    """Classifier of a spec with the given activation (weights from its checkpoint, or seeded random init)."""
    import mindspore as ms
    from src.export import build_model
    if spec["ckpt"]:
        _, model = build_model(spec["config_path"], spec["ckpt"], spec["cfg"].num_labels, "auto",
                               width_mult=spec.get("width_mult"), ternary=spec.get("ternary", False),
                               hidden_act=hidden_act)
        return model
    ms.set_seed(0)
    model = build_classifier(spec["cfg"].replace(hidden_act=hidden_act), "dense")
    model.set_train(False)
    return model


def export_file(model, path_base, fmt, batch, seq, vocab):
    import mindspore as ms
    from src.export import sample_inputs
    from src.tinybert_model import LogitsOnly
    net = LogitsOnly(model)
    net.set_train(False)
    inputs = sample_inputs(batch, seq, vocab)
    ms.export(net, *[ms.Tensor(x) for x in inputs], file_name=path_base, file_format=fmt)
    if fmt == "ONNX":                  # what export.py writes: LayerNorm / GELU in the patterns onnxruntime fuses
        from src.export import standardize_onnx
        standardize_onnx(path_base + ".onnx")
    return path_base + (".onnx" if fmt == "ONNX" else ".mindir"), inputs


def _quantize(qpy, src, dst):
    """onnxruntime int8 dynamic quantization of src into dst (benchmarks/ort_quantize.py); dst or None."""
    r = subprocess.run([qpy, os.path.join(ROOT, "benchmarks", "ort_quantize.py"), src, dst], capture_output=True,
                       text=True)
    if r.returncode != 0:
        print(f"int8 quantization of {src} failed: {r.stderr.strip()[-300:]}")
        return None
    return dst


def quant_python(args):
    """A python that can run onnxruntime.quantization (needs `onnx`), or None."""
    cands = [args.quant_python] if args.quant_python else [sys.executable,
                                                           os.path.join(ROOT, ".venv-bench", "bin", "python")]
    for py in cands:
        if py and os.path.exists(py) and subprocess.run(
                [py, "-c", "import onnx, onnxruntime.quantization"], capture_output=True).returncode == 0:
            return py
    return None


def parse_args(argv=None):
    p = doc_parser(__doc__)
    add_timing_args(p, "seconds of timed calls per model, cell and round")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--seqs", type=int, nargs="+", default=None)
    p.add_argument("--no_mindir", action="store_true", help="skip the MINDIR-in-MindSpore column")
    p.add_argument("--teacher_dir", default="output/td_mr/teacher")
    p.add_argument("--student_dir", default="output/compress_mr/depth/td2")
    p.add_argument("--minilm_config", default="output/minilm/config.json")
    p.add_argument("--gd_config", default="output/gd/config.json")
    p.add_argument("--width_supernet", default="", help="supernet checkpoint to slice the width rows from")
    p.add_argument("--width_supernet_config", default="", help="its config.json (default: the one beside it)")
    p.add_argument("--ternary_packed", default="", help="packed TernaryBERT artefact (a run's model_base3.tpack or "
                                                        "model.tpack) for a TernaryBERT row")
    p.add_argument("--quant_python", default="", help="python with onnx + onnxruntime (default: this one or "
                                                      ".venv-bench/bin/python)")
    p.add_argument("--from_json", default="", help="print (and with --results write) the tables of a saved "
                                                   "export.json again, without timing anything")
    args = p.parse_args(argv)
    if args.width_supernet and not args.width_supernet_config:
        args.width_supernet_config = os.path.join(os.path.dirname(os.path.abspath(args.width_supernet)), "config.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = measured_or_saved(args, measure, render, "export.json", "an export.json")
    for name, table in BLOCKS:
        emit(name, table(out), args.results or None)
    return out


def measure(args) -> dict:
    """Every model of model_specs(args) exported and timed over the (batch, seq) grid, and their sizes: the dict
    export.json saves (render needs nothing else). The first cell's ONNX files are kept in <out_dir>/onnx."""
    batches = args.batches or ([1, 4] if args.quick else [1, 16, 32])
    seqs = args.seqs or ([16] if args.quick else [64, 128])
    rounds, budget = rounds_and_budget(args)

    from src import runtime
    runtime.init_context("CPU", "graph", threads=args.threads)
    from src.tinybert_model import count_params
    mach = machine(args.threads)
    work = os.path.join(args.out_dir, "tmp_export")
    os.makedirs(work, exist_ok=True)
    keep = os.path.join(args.out_dir, "onnx")
    os.makedirs(keep, exist_ok=True)
    qpy = quant_python(args)
    models = []
    for spec in model_specs(args):
        cfg = spec["cfg"]
        onnx_model = build(spec, "gelu_erf_poly" if cfg.hidden_act in ("gelu", "gelu_exact") else cfg.hidden_act)
        models.append({"spec": spec, "onnx": onnx_model, "params": count_params(onnx_model),
                       "ms": None if args.no_mindir else build(spec, cfg.hidden_act),
                       "tag": spec["name"].replace(" ", "_").replace(".", ""), "int8": None, "kernels_bytes": None})
    order = [n for m in models for n in (m["spec"]["name"], m["spec"]["name"] + INT8, m["spec"]["name"] + KERNELS)]
    first = (batches[0], seqs[0])
    results = []
    # Cell by cell: export every model at this (batch, seq), then time them in rounds, one onnxruntime session alive
    # at a time (several live sessions' spinning threads steal each other's cores), so a slow patch of the shared
    # machine is spread over the rows that a ratio compares.
    for seq in seqs:
        for b in batches:
            results += _measure_cell(models, b, seq, (b, seq) == first, work, keep, qpy, rounds, budget, args.threads)
    results.sort(key=lambda r: (order.index(r["model"]), r["seq"], r["batch"]))
    sizes = [_size_row(m["spec"], m["params"], keep, m["tag"], m["int8"], m["kernels_bytes"]) for m in models]
    shutil.rmtree(work, ignore_errors=True)
    _ratios(results)
    for r in results:
        if r.get("ort_s"):
            r["ort_seq_s"] = r["batch"] / r["ort_s"]
            r["ort_gflops"] = r["gflop_per_seq"] * r["batch"] / r["ort_s"]
            r["pct_peak"] = 100 * r["ort_gflops"] / mach["peak_gflops"] if mach["peak_gflops"] else None
    return {"machine": mach, "quick": args.quick, "rounds": rounds, "budget_s": budget, "latency": results,
            "sizes": sizes, "int8_python": qpy}


def _measure_cell(models, b, seq, first, work, keep, qpy, rounds, budget, threads):
    """The latency rows of one (batch, seq) cell: each model exported (and its MINDIR timed), its integer-kernel
    and int8 forms where it has them, then every ONNX file timed in `rounds` rounds. `first`: the first cell, whose
    files are kept in `keep` (and quantized to int8 there)."""
    from src.export import MindirRunner, OnnxRunner
    cell, results = [], []
    for m in models:
        spec, cfg = m["spec"], m["spec"]["cfg"]
        row = {"model": spec["name"], "note": spec["note"], "params": m["params"], "batch": b, "seq": seq,
               "gflop_per_seq": bert_flops(cfg, seq) / 1e9}
        if seq > cfg.max_position_embeddings:       # a packed artefact keeps only its run's positions
            row["note"] = (f"skipped: the model has {cfg.max_position_embeddings} positions"
                           + (f" ({spec['source']})" if spec.get("source") else ""))
            results.append(row)
            continue
        path, inputs = export_file(m["onnx"], os.path.join(work, m["tag"]), "ONNX", b, seq, cfg.vocab_size)
        if first:
            final = os.path.join(keep, m["tag"] + ".onnx")
            shutil.copyfile(path, final)
            row["onnx_bytes"] = os.path.getsize(final)
            if spec["name"] in (STUDENT, TINY4) and qpy:
                m["int8"] = _quantize(qpy, final, os.path.join(keep, m["tag"] + "_int8.onnx"))
        if m["ms"] is not None:
            mpath, _ = export_file(m["ms"], os.path.join(work, m["tag"]), "MINDIR", b, seq, cfg.vocab_size)
            mr = MindirRunner(mpath)
            row["ms_s"] = time_call(lambda: mr(*inputs), budget_s=budget)
            del mr
            os.remove(mpath)
        cell.append((row, path, inputs))
        if spec.get("ternary"):                    # the deployable form: ternary matmuls as MatMulInteger
            from src.ternary_int8 import integerize_file
            kpath = path[:-5] + "_kernels.onnx"
            integerize_file(path, kpath)
            rowk = {"model": spec["name"] + KERNELS, "params": m["params"], "batch": b, "seq": seq,
                    "gflop_per_seq": row["gflop_per_seq"],
                    "note": "src/ternary_int8.py (export.py --ternary --int8): ternary codes as int8, "
                            "8-bit activations with the trained symmetric rule, MatMulInteger"}
            if first:
                final = os.path.join(keep, m["tag"] + "_kernels.onnx")
                shutil.copyfile(kpath, final)
                rowk["onnx_bytes"] = m["kernels_bytes"] = os.path.getsize(final)
            cell.append((rowk, kpath, inputs))
        if spec["name"] in (STUDENT, TINY4):
            row8 = {"model": spec["name"] + INT8, "params": m["params"], "batch": b, "seq": seq,
                    "gflop_per_seq": row["gflop_per_seq"]}
            if m["int8"] is None:
                row8["note"] = "skipped: needs the onnx package (pip install -r requirements.txt)"
                results.append(row8)
            elif first:
                row8["onnx_bytes"] = os.path.getsize(m["int8"])
                row8["note"] = "int8 weights, dynamic int8 activations; measured at the first shape only"
                cell.append((row8, m["int8"], inputs))
    for _ in range(rounds):
        for row, path, inputs in cell:
            runner = OnnxRunner(path, threads)
            row.setdefault("ort_rounds_s", []).append(time_call(lambda: runner(*inputs), budget_s=budget))
            runner = None                                        # its session closes before the next opens
    for row, path, _ in cell:
        row["ort_s"] = statistics.median(row["ort_rounds_s"])
        results.append(row)
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(work):     # not the kept int8 file
            os.remove(path)
        print(f"{row['model']:<36} b{b:<3} s{seq:<4} ort {row['ort_s'] * 1e3:9.2f} ms ("
              + " ".join(f"{x * 1e3:.2f}" for x in row["ort_rounds_s"]) + ")"
              + (f"  mindir {row['ms_s'] * 1e3:9.2f} ms" if "ms_s" in row else ""), flush=True)
    return results


def packed_ternary_bytes(cfg, params: int) -> int:
    """The tensor bytes of a packed TernaryBERT artefact (W2E2, src/packing.py, header aside) of this shape: 2 bits
    per weight of every encoder Dense, the pooler Dense and the word embedding; one fp32 scale per Dense weight
    and per word-embedding row; every other parameter (biases, LayerNorm, position / token-type embeddings, the
    classifier) in fp32."""
    h, v, layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    dense_w = sum(4 * h * cfg.heads(i) * cfg.head_size + 2 * h * cfg.ffn(i) for i in range(layers)) + h * h
    ternary_n = dense_w + v * h
    return (ternary_n * 2 + 7) // 8 + 4 * (params - ternary_n) + 4 * (6 * layers + 1 + v)


def _size_row(spec, params, keep, tag, int8_path, kernels_bytes=None):
    cfg = spec["cfg"]
    ckpt_bytes = os.path.getsize(spec["ckpt"]) if spec["ckpt"] and not spec.get("width_mult") else None
    onnx = os.path.join(keep, tag + ".onnx")
    if spec.get("ternary"):                 # the artefact itself: its real size, and no fp32 checkpoint here
        packed, ckpt_bytes = os.path.getsize(spec["ckpt"]), None
    else:
        packed = packed_ternary_bytes(cfg, params)
    return {"model": spec["name"], "params": params, "fp32_bytes": 4 * params, "ckpt_bytes": ckpt_bytes,
            "onnx_bytes": os.path.getsize(onnx) if os.path.exists(onnx) else None,
            "int8_onnx_bytes": (kernels_bytes if kernels_bytes else os.path.getsize(int8_path)
                                if int8_path and os.path.exists(int8_path) else None),
            "ternary_packed_bytes": packed, "note": spec["note"]}


def _ratios(results):
    ref = {(r["batch"], r["seq"]): r for r in results if r["model"] == TEACHER}
    base = {(r["batch"], r["seq"]): r for r in results if r["model"] == BASE}
    for r in results:
        k = (r["batch"], r["seq"])
        for key, table in (("x_teacher", ref), ("x_base", base)):
            t = table.get(k)
            if t and r.get("ort_s") and t.get("ort_s"):
                r[key] = t["ort_s"] / r["ort_s"]
        t = ref.get(k)
        if t and r.get("ms_s") and t.get("ms_s"):
            r["ms_x_teacher"] = t["ms_s"] / r["ms_s"]


def latency_table(out) -> str:
    heads = ["model", "params", "GFLOP/seq", "batch", "seq", "ORT ms/batch", "ORT seq/s", "GFLOP/s", "% peak",
             "x vs teacher", "x vs BERT-base", "MINDIR (MS) ms/batch", "MS x vs teacher", "note"]
    rows = []
    for r in out["latency"]:
        int8_row = r["model"].endswith((INT8, KERNELS))             # integer kernels: no fp32 peak to compare with
        rows.append([r["model"], r["params"], r["gflop_per_seq"], r["batch"], r["seq"],
                     r["ort_s"] * 1e3 if r.get("ort_s") else None, r.get("ort_seq_s"), r.get("ort_gflops"),
                     None if int8_row else r.get("pct_peak"), r.get("x_teacher"), r.get("x_base"),
                     r["ms_s"] * 1e3 if r.get("ms_s") else None, r.get("ms_x_teacher"), r.get("note", "")])
    m = out["machine"]
    goal = _goal_line(out)
    return (f"### Exported-model latency (onnxruntime CPU EP; MINDIR via ms.load + GraphCell)\n\n{machine_line(m)}. "
            f"ONNX files as export.py writes them (LayerNorm and the exact GELU rewritten to the standard patterns "
            f"onnxruntime fuses, src/onnx_graph.py), run in the sessions src/ort_cpu.py opens (all graph optimizations "
            f"except SkipLayerNormFusion, slower on CPU; denormals as zero). "
            f"onnxruntime: {out.get('rounds', 1)} rounds per (batch, seq) cell, the cell's models timed one after "
            f"the other in each round (one session alive at a time); a round's value is the median of its timed calls "
            f"after one warm-up, the table gives the median of the rounds. MINDIR: one round. Ratios are against rows "
            f"of the same run. GFLOP/s counts the fp32 model's multiply-adds for every row; '% peak' is given for "
            f"fp32 rows only (int8 rows run integer kernels, whose peak is another)."
            f"{' QUICK MODE: tiny shapes, timings meaningless.' if out['quick'] else ''}\n\n"
            + markdown_table(heads, rows) + "\n\n" + goal)


GOAL_TINY4, GOAL_WIDTH = 14.0, 1.45          # latency goals: TinyBERT-4 vs BERT-base, width 0.667 vs full


def _down(v: float, digits: int) -> str:
    """v rounded down to `digits` decimals, so a ratio just under a goal never prints as the goal (1.4497 -> 1.449)."""
    return f"{math.floor(v * 10 ** digits) / 10 ** digits:.{digits}f}"


def _goal_line(out) -> str:
    """Each cell's two goal ratios, judged on the unrounded values, and how many cells meet each goal."""
    lines, met = [], {"t4": [], "w": []}
    by = {(r["model"], r["batch"], r["seq"]): r for r in out["latency"]}
    for (b, s) in sorted({(r["batch"], r["seq"]) for r in out["latency"]}):
        t4 = by.get((TINY4, b, s))
        w = by.get(("width 0.667", b, s))
        if t4 and t4.get("x_base"):
            met["t4"].append(t4["x_base"] >= GOAL_TINY4)
            lines.append(f"b{b}/s{s}: TinyBERT-4 vs BERT-base {_down(t4['x_base'], 2)}x "
                         f"({'met' if met['t4'][-1] else 'not met'}; FLOPs ratio "
                         f"{by[(BASE, b, s)]['gflop_per_seq'] / t4['gflop_per_seq']:.1f}x)")
        if w and w.get("x_teacher"):
            met["w"].append(w["x_teacher"] >= GOAL_WIDTH)
            lines.append(f"b{b}/s{s}: width 0.667 vs full {_down(w['x_teacher'], 3)}x "
                         f"({'met' if met['w'][-1] else 'not met'})")
    if not lines:
        return ""
    return (f"Goals: TinyBERT-4 vs BERT-base >= {GOAL_TINY4:g}x met in {sum(met['t4'])} of "
            f"{len(met['t4'])} cells, width 0.667 vs full >= {GOAL_WIDTH:g}x in {sum(met['w'])} of {len(met['w'])}. "
            + "; ".join(lines))


def size_table(out) -> str:
    heads = ["model", "params", "fp32 bytes", "ckpt bytes", "ONNX bytes", "int8 ONNX bytes", "packed ternary bytes",
             "fp32 / packed ternary", "x smaller than teacher (fp32)", "note"]
    t = next((s for s in out["sizes"] if s["model"] == TEACHER), None)
    rows = []
    for s in out["sizes"]:
        rows.append([s["model"], s["params"], s["fp32_bytes"], s["ckpt_bytes"], s["onnx_bytes"],
                     s["int8_onnx_bytes"], s["ternary_packed_bytes"], s["fp32_bytes"] / s["ternary_packed_bytes"],
                     t["fp32_bytes"] / s["fp32_bytes"] if t else None, s["note"]])
    return ("### Model sizes\n\nPacked ternary = 2 bits per encoder/pooler Dense and word-embedding weight + fp32 "
            "scales and other parameters (computed from the shape, header aside; a TernaryBERT row gives its "
            "artefact file's size). int8 = "
            "onnxruntime dynamic quantization, or for a TernaryBERT row its integer-kernel file (export.py --int8)."
            "\n\n"
            + markdown_table(heads, rows))


BLOCKS = (("export_latency", latency_table), ("export_size", size_table))     # (marker name, table of the result)


def render(out) -> str:
    """Both tables of a measure() result, or of the export.json it was saved as."""
    return "\n\n".join(table(out) for _, table in BLOCKS)


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main, sys.argv[1:])
