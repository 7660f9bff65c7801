"""The 2-bit TernaryBERT ONNX files (export.py --ternary --nbits 2, alone and with --int8; src/ternary_nbits.py)
against the fp32 and --int8 exports of the same packed model and the fp32 ONNX of the MiniLM-L6 teacher shape: file
bytes, onnxruntime latency and the logit difference from the packed model.

    python benchmarks/bench_nbits.py                          # MiniLM-L6 shape, b1/s64 and b16/s64 (~6 min, 2 cores)
    python benchmarks/bench_nbits.py --shape compressed       # 3L / 384H / 6 heads of 32 / 768 / vocab 12000
    python benchmarks/bench_nbits.py --shape base             # BERT-base shape (12L / 768H / 3072)
    python benchmarks/bench_nbits.py --teacher_dir output/td_mr/teacher --data_dir data/mr   # + MR dev accuracy
    python benchmarks/bench_nbits.py --results docs/export.md # also write the table there (bench:nbits_<shape>)
    python benchmarks/bench_nbits.py --quick                  # tiny shapes (tests); timings meaningless

The model is built at random for its shape (init range 0.02, seed 0), made ternary with the default QuantConfig
(TWN weights, ternary word embedding with one alpha per row, symmetric dynamic 8-bit activations) and packed with
the position table cut to --seq rows (as a run packs it); no training, so the logits say nothing about accuracy.
Each file is written by src/export.py's export_checkpoint (reloaded and checked before it is written), one per
batch size (exported shapes are fixed): fp32, --int8 (int8 storage and compute), --nbits 2 (2-bit storage,
MatMulNBits in fp32) and --int8 --nbits 2 (2-bit storage, int8 compute: the --int8 graph rebuilt from 2-bit codes
when the session starts). Two more 2-bit files are variants for comparison, not options of export.py: MatMulNBits at
accuracy_level 4 (onnxruntime quantizes A again to int8, per row and block of K, and runs its VNNI 2-bit kernels)
with the trained fake-quant kept in front, and the same without the trained fake-quant in front of the Dense (the
op's own int8 quantization instead of the trained per-tensor one). The reference row is the fp32 ONNX
(export.py, not ternary) of a random model of the MiniLM-L6 teacher shape (6L / 384H / 12 heads / 1536 / vocab
30522; --quick: the quick shape), the model a compressed file replaces; its bytes and latency are the ratios' base.
Timing: the project's onnxruntime sessions (src/ort_cpu.py), --rounds interleaved rounds over every file, median of
the round medians. With --teacher_dir the same files are also made from a post-training ternary copy of that
fine-tuned teacher (no quantization-aware training: its accuracy is low, it shows whether the files agree) and
evaluated on the whole dev split with run_eval_onnx.py's code. Writes <out_dir>/nbits_<shape>.json.
"""
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (add_timing_args, emit, machine, machine_line, markdown_table,  # noqa: E402
                               rounds_and_budget, time_call, write_json)
from src.cli import doc_parser  # noqa: E402

KINDS = ("fp32", "int8", "nbits", "nbits_int8", "nbits_acc4", "nbits_acc4_own")
REFERENCE = "teacher_fp32"
LABELS = {"fp32": "fp32 ONNX (export.py --ternary)",
          "int8": "int8 codes, MatMulInteger (--int8)",
          "nbits": "2-bit codes, MatMulNBits in fp32 (--nbits 2)",
          "nbits_int8": "2-bit codes, int8 MatMulInteger (--int8 --nbits 2)",
          "nbits_acc4": "variant: 2-bit, accuracy_level 4, trained fake-quant kept",
          "nbits_acc4_own": "variant: 2-bit, accuracy_level 4, op's own int8 activations",
          REFERENCE: "reference: fp32 ONNX of the MiniLM-L6 teacher shape (not ternary)"}
EXPORTS = (("fp32", {}), ("int8", {"int8": True}), ("nbits", {"nbits": 2}), ("nbits_int8", {"int8": True, "nbits": 2}))


def shape_config(shape: str, quick: bool):
    from src.tinybert_model import BertConfig
    if quick:
        return BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=64)
    if shape == "base":
        return BertConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
    if shape == "compressed":          # width-sliced (heads of 32: 12 in the config, 6 kept per layer), vocab pruned
        return BertConfig(vocab_size=12000, num_hidden_layers=3, hidden_size=384, num_attention_heads=12,
                          layer_num_heads=[6, 6, 6], intermediate_size=768, max_position_embeddings=64)
    return teacher_config(False)


def teacher_config(quick: bool):
    """The MiniLM-L6 teacher shape (6L / 384H / 12 heads / 1536 / vocab 30522); quick: the quick shape."""
    from src.tinybert_model import BertConfig
    if quick:
        return shape_config("minilm", True)
    return BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)


def make_reference(cfg, d: str, batch: int, seq: int) -> str:
    """The fp32 ONNX (export.py, not ternary) of a random classifier of shape `cfg`, in `d`."""
    import mindspore as ms
    from src.checkpoint import save_cell
    from src.export import export_checkpoint
    from src.tinybert_model import build_classifier
    os.makedirs(d, exist_ok=True)
    ms.set_seed(0)
    save_cell(build_classifier(cfg, "dense"), os.path.join(d, "teacher.ckpt"))
    cfg.to_json_file(os.path.join(d, "config.json"))
    export_checkpoint(os.path.join(d, "config.json"), os.path.join(d, "teacher.ckpt"), os.path.join(d, f"b{batch}"),
                      "ONNX", batch, seq, log=lambda *_: None)
    return os.path.join(d, f"b{batch}.onnx")


def make_packed(model, cfg, path: str, seq: int, head_type: str = "dense") -> str:
    """Pack the ternary copy of `model` (default QuantConfig) into `path` with config.json beside it."""
    from src.packing import pack
    from src.quant import QuantConfig, quantize_model, quantized_state
    q = QuantConfig()
    quantize_model(model, q)
    pack(quantized_state(model), cfg, q, path, head_type=head_type, max_positions=seq)
    cfg.to_json_file(os.path.join(os.path.dirname(path), "config.json"))
    return path


def drop_dense_fake_quant(path: str, out_path: str) -> int:
    """out_path: the 2-bit file with each MatMulNBits reading the activation before its symmetric fake-quant (the
    op's accuracy_level 4 quantizes it instead). Dynamic scales only (a frozen scale would also clip). Returns how
    many were rewired."""
    import onnx
    from src.onnx_graph import _Graph
    from src.ternary_int8 import _fake_quant_site
    m = onnx.load(path)
    G = _Graph(m.graph)
    done, rewired = 0, set()               # Q, K and V can read one Reshape of their shared input
    for n in m.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        src, reshape = n.input[0], G.producer.get(n.input[0])
        if reshape is not None and reshape.op_type == "Reshape":
            src = reshape.input[0]
        else:
            reshape = None
        if reshape is not None and id(reshape) in rewired:
            done += 1
            continue
        site = _fake_quant_site(G, src)
        if site is None:
            continue
        if reshape is not None:
            reshape.input[0] = site[0]
            rewired.add(id(reshape))
        else:
            n.input[0] = site[0]
        done += 1
    from src.onnx_graph import _drop_dead
    _drop_dead(m.graph)
    onnx.save(m, out_path)
    return done


def write_files(config: str, packed: str, base: str, batch: int, seq: int) -> dict:
    """{kind: path} of every file of KINDS at (batch, seq), and the export checks of the export.py files."""
    from src.export import export_checkpoint
    from src.ternary_nbits import nbits_file
    quiet = lambda *_: None                                     # noqa: E731
    files, checks = {}, {}
    for kind, kw in EXPORTS:
        info = export_checkpoint(config, packed, f"{base}_{kind}", "ONNX", batch, seq, ternary=True, log=quiet, **kw)
        files[kind] = f"{base}_{kind}.onnx"
        checks[kind] = {"parity": info["parity"], "nbits_parity": info.get("nbits_parity"),
                        "int8_parity": info.get("int8_parity")}
    nbits_file(files["fp32"], f"{base}_nbits_acc4.onnx", accuracy_level=4)
    files["nbits_acc4"] = f"{base}_nbits_acc4.onnx"
    rewired = drop_dense_fake_quant(files["nbits_acc4"], f"{base}_nbits_acc4_own.onnx")
    files["nbits_acc4_own"] = f"{base}_nbits_acc4_own.onnx"
    return {"files": files, "checks": checks, "rewired": rewired}


def logit_diffs(packed: str, files: dict, batch: int, seq: int, vocab: int, seed: int, threads: int) -> dict:
    """max|logits - packed model's| and argmax agreement of each file on sample_inputs(seed), and max|logits - fp32
    ONNX's| and max|logits - --int8 ONNX's|."""
    import mindspore as ms
    import numpy as np
    from src.export import OnnxRunner, sample_inputs
    from src.packing import build_ternary_inference_model
    ids, types, mask = sample_inputs(batch, seq, vocab, seed=seed)
    ref = build_ternary_inference_model(packed)(ms.Tensor(ids), ms.Tensor(types), ms.Tensor(mask)).asnumpy()
    got = {k: OnnxRunner(p, threads)(ids, types, mask) for k, p in files.items()}
    return {k: {"vs_packed": float(np.abs(v - ref).max()), "vs_fp32_onnx": float(np.abs(v - got["fp32"]).max()),
                "vs_int8_onnx": float(np.abs(v - got["int8"]).max()),
                "argmax_vs_packed": float(np.mean(v.argmax(-1) == ref.argmax(-1))),
                "max_abs_logit": float(np.abs(ref).max())} for k, v in got.items()}


def time_files(cells: dict, rounds: int, budget: float, threads: int) -> dict:
    """{cell: {kind: median of round medians (s)}}: every round times every file of every cell once."""
    from src.export import OnnxRunner, sample_inputs
    times = {c: {k: [] for k in v["files"]} for c, v in cells.items()}
    for _ in range(rounds):
        for c, v in cells.items():
            inputs = sample_inputs(v["batch"], v["seq"], v["vocab"])
            for kind, path in v["files"].items():
                runner = OnnxRunner(path, threads)
                times[c][kind].append(time_call(lambda r=runner: r(*inputs), budget_s=budget))
                del runner
    return {c: {k: statistics.median(t) for k, t in ts.items()} for c, ts in times.items()}


def dev_metrics(args, work: str) -> dict:
    """MR dev metric of each kind, files made from a post-training ternary copy of --teacher_dir."""
    import run_eval_onnx
    from src.export import build_model
    from src.tasks import get_task
    cfg, model = build_model(os.path.join(args.teacher_dir, "config.json"), os.path.join(args.teacher_dir, "best.ckpt"))
    d = os.path.join(work, "teacher_ptq")
    os.makedirs(d, exist_ok=True)
    packed = make_packed(model, cfg, os.path.join(d, "model.tpack"), args.seq, model.head_type)
    made = write_files(os.path.join(d, "config.json"), packed, os.path.join(d, "t"), args.dev_batch, args.seq)
    metric = get_task(args.task).main_metric
    out = {"metric": metric, "batch": args.dev_batch, "checks": made["checks"], "acc": {}}
    for kind, path in made["files"].items():
        m = run_eval_onnx.main(["--model_file", path, "--task", args.task, "--data_dir", args.data_dir,
                                "--threads", str(args.threads)])
        out["acc"][kind] = float(m[metric])
    out["diffs"] = logit_diffs(packed, made["files"], args.dev_batch, args.seq, cfg.vocab_size, 1, args.threads)
    return out


def main(argv=None):
    p = doc_parser(__doc__)
    add_timing_args(p, "seconds of timed calls per file and round")
    p.add_argument("--shape", default="minilm", choices=["minilm", "compressed", "base"],
                   help="minilm: 6L / 384H / 1536 (the MiniLM-L6 teacher); compressed: 3L / 384H / 6 heads of 32 per "
                        "layer / 768 / vocab 12000 / 64 positions (width-sliced, vocabulary pruned); base: 12L / 768H "
                        "/ 3072")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--teacher_dir", default="", help="fine-tuned teacher run (config.json, best.ckpt): also the dev "
                                                     "metric of a post-training ternary copy")
    p.add_argument("--data_dir", default="data/mr")
    p.add_argument("--task", default="MR")
    p.add_argument("--dev_batch", type=int, default=32)
    p.add_argument("--keep", action="store_true", help="keep the exported files (default: removed at the end)")
    args = p.parse_args(argv)
    rounds, budget = rounds_and_budget(args)
    from src import runtime
    runtime.init_context("CPU", "graph", threads=args.threads)
    import mindspore as ms
    from src.tinybert_model import build_classifier
    cfg = shape_config(args.shape, args.quick)
    if args.seq > cfg.max_position_embeddings:
        from src.errors import UserError
        raise UserError(f"--seq {args.seq} exceeds the shape's {cfg.max_position_embeddings} positions")
    work = os.path.join(args.out_dir, "nbits")
    os.makedirs(work, exist_ok=True)
    start = time.time()
    ms.set_seed(0)
    packed = make_packed(build_classifier(cfg, "dense"), cfg, os.path.join(work, "model.tpack"), args.seq)
    cells = {}
    for b in args.batches:
        made = write_files(os.path.join(work, "config.json"), packed, os.path.join(work, f"b{b}"), b, args.seq)
        made.update(batch=b, seq=args.seq, vocab=cfg.vocab_size,
                    diffs=logit_diffs(packed, made["files"], b, args.seq, cfg.vocab_size, 1, args.threads))
        made["files"][REFERENCE] = make_reference(teacher_config(args.quick), os.path.join(work, "teacher"), b,
                                                  args.seq)
        cells[f"b{b}/s{args.seq}"] = made
    latency = time_files(cells, rounds, budget, args.threads)
    first = next(iter(cells.values()))
    out = {"machine": machine(args.threads), "quick": args.quick, "rounds": rounds, "budget_s": budget,
           "shape": args.shape, "config": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                                           "heads": [cfg.heads(i) for i in range(cfg.num_hidden_layers)],
                                           "head_size": cfg.hidden_size // cfg.num_attention_heads,
                                           "ffn": cfg.intermediate_size, "vocab": cfg.vocab_size,
                                           "positions": args.seq},
           "packed_bytes": os.path.getsize(packed),
           "bytes": {k: os.path.getsize(v) for k, v in first["files"].items()},
           "cells": {c: {"latency_s": latency[c], "diffs": v["diffs"], "checks": v["checks"], "rewired": v["rewired"]}
                     for c, v in cells.items()}}
    if args.teacher_dir:
        out["dev"] = dev_metrics(args, work)
    out["wall_s"] = time.time() - start
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    write_json(os.path.join(args.out_dir, f"nbits_{args.shape}.json"), out)
    emit(f"nbits_{args.shape}", table(out), args.results or None)
    return out


def table(out) -> str:
    c = out["config"]
    cells = list(out["cells"])
    last = cells[-1]
    headers = ["file", "bytes", "x smaller than fp32 ONNX", "bytes / reference"] + [f"ms {x}" for x in cells] + [
        f"ms / reference ({x})" for x in cells] + [f"max abs logit diff vs packed model ({last})", "vs fp32 ONNX",
                                                   "vs --int8 ONNX"]
    dev = out.get("dev")
    if dev:
        headers += [f"dev {dev['metric']} (PTQ teacher, b{dev['batch']})"]
    rows = []
    ref = REFERENCE
    for k in KINDS + (ref,):
        d = out["cells"][last]["diffs"].get(k)
        row = [LABELS[k], out["bytes"][k], out["bytes"]["fp32"] / out["bytes"][k], out["bytes"][k] / out["bytes"][ref]]
        row += [out["cells"][x]["latency_s"][k] * 1e3 for x in cells]
        row += [out["cells"][x]["latency_s"][k] / out["cells"][x]["latency_s"][ref] for x in cells]
        row += [f"{d['vs_packed']:.2e}", f"{d['vs_fp32_onnx']:.2e}", f"{d['vs_int8_onnx']:.2e}"] if d else ["-"] * 3
        if dev:
            row.append(f"{dev['acc'][k]:.4f}" if k in dev["acc"] else "-")
        rows.append(row)
    logits = out["cells"][last]["diffs"]["fp32"]["max_abs_logit"]
    text = (f"### 2-bit TernaryBERT ONNX vs the fp32 and int8 exports ({out['shape']} shape)\n\n"
            f"{machine_line(out['machine'])}. Shape {out['shape']}: {c['layers']} layers, hidden {c['hidden']}, heads "
            f"{c['heads']} of {c['head_size']}, FFN "
            f"{c['ffn']}, vocab {c['vocab']}, {c['positions']} positions; random init, ternary (W2E2A8, dynamic "
            f"8-bit activations), packed artefact {out['packed_bytes']:,} bytes. onnxruntime, the project's sessions, "
            f"{out['rounds']} interleaved rounds, median of the round medians. Logit differences on a fixed random "
            f"batch (max |logits| {logits:.3g}). Reference: {LABELS[ref][len('reference: '):]}, random init, "
            f"{out['bytes'][ref]:,} bytes.{' QUICK MODE: tiny shapes, timings meaningless.' if out['quick'] else ''}"
            f"\n\n" + markdown_table(headers, rows))
    if dev:
        text += (f"\n\nDev column: the same files made from a post-training ternary copy of the fine-tuned teacher "
                 f"(no quantization-aware training), whole dev split at batch {dev['batch']}; max |logit diff| vs its "
                 f"packed model on one batch: " + ", ".join(f"{k} {v['vs_packed']:.2e}" for k, v in
                                                           dev["diffs"].items()) + ".")
    return text


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main)
