"""Pack a TernaryBERT run into the real compressed artefact and print the size table; optionally evaluate the
model rebuilt from the packed file and export it to MINDIR / ONNX.

    python tools/pack_ternary.py --run_dir output/ternary_mr/w2e2a8                 # 2-bit codes
    python tools/pack_ternary.py --run_dir output/ternary_mr/w2e2a8 --codec base3   # 5 codes per byte
    python tools/pack_ternary.py --run_dir output/ternary_mr/w2e2a8 --eval --export MINDIR ONNX
    python tools/pack_ternary.py --run_dir output/ternary_mr/w2e2a8 --export ONNX --int8   # integer kernels
    python tools/pack_ternary.py --report output/ternary_mr     # markdown table of every run under the folder

The run folder must hold best_quant.ckpt (quantized values), quant.json, config.json and config_resolved.yaml
(run_ternary.py writes them; the student's head type and max_seq_length come from the resolved config). A
checkpoint whose quantized tensors are not ternary (e.g. the fp32 teacher) is refused. Exports go through
export.py's code (src/export.py: reloaded and compared with the packed model before the file is written, sidecar
JSON), as `export.py --ternary --ckpt_file <packed file>` would write them.
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)

from src.cli import doc_parser  # noqa: E402
from src.config import RESOLVED_NAME  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402
from src.runlog import read_records  # noqa: E402
from src.dataset import load_eval_sets
from src.tasks import task_from_config


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--run_dir", help="a run_ternary.py output folder, e.g. output/ternary_mr/w2e2a8")
    p.add_argument("--codec", default="2bit", choices=["2bit", "base3"])
    p.add_argument("--max_positions", type=int, default=-1,
                   help="position rows kept (-1 = the run's data.max_seq_length, 0 = all)")
    p.add_argument("--fp32_ckpt", default="", help="fp32 checkpoint to compare with (default <run_dir>/best.ckpt)")
    p.add_argument("--out", default="", help="packed file (default <run_dir>/model.tpack, model_base3.tpack)")
    p.add_argument("--eval", action="store_true", help="evaluate the packed model on the run's dev set")
    p.add_argument("--export", nargs="*", default=[], choices=["MINDIR", "ONNX"],
                   help="export the ternary inference model (fixed batch --export_batch, seq max_seq_length)")
    p.add_argument("--export_batch", type=int, default=1)
    p.add_argument("--int8", action="store_true", help="with --export ONNX: ternary matmuls as MatMulInteger "
                                                       "(src/ternary_int8.py, as export.py --int8)")
    p.add_argument("--report", default="", help="print a markdown table of all runs under this folder")
    return p.parse_args(argv)


def _teacher_best(run_dir: str) -> float:
    """The teacher's own recorded best dev acc (metrics.jsonl beside its checkpoint), for runs that skipped the
    teacher baseline eval."""
    import yaml
    try:
        with open(os.path.join(run_dir, RESOLVED_NAME), encoding="utf-8") as f:
            ckpt = yaml.safe_load(f)["teacher"]["ckpt"]
    except (OSError, KeyError, TypeError):
        return float("nan")
    evals = read_records(os.path.dirname(ckpt), "eval", missing_ok=True)
    return max((r["acc"] for r in evals), default=float("nan"))


def report(folder: str) -> str:
    """One row per run folder: teacher acc, best quantized acc, ratio to teacher, packed acc and size."""
    rows = ["| run | quant | teacher dev acc | quantized dev acc (best) | % of teacher | packed-model dev acc | "
            "fp32 ckpt bytes | packed bytes (2-bit codes) | ratio | packed bytes (base-3 codes) | ratio | steps |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    runs = sorted(d for d in glob.glob(os.path.join(folder, "*"))
                  if os.path.isfile(os.path.join(d, "metrics.jsonl")) and os.path.isfile(os.path.join(d, "quant.json")))
    if not runs:
        raise UserError(f"--report: no run folders with metrics.jsonl under '{folder}'")
    for d in runs:
        recs = read_records(d)
        quant = {}
        if os.path.isfile(os.path.join(d, "quant.json")):
            with open(os.path.join(d, "quant.json"), encoding="utf-8") as f:
                quant = json.load(f)
        teacher = [r for r in recs if r["kind"] == "teacher_eval"]
        evals = [r for r in recs if r["kind"] == "eval"]
        packed = [r for r in recs if r["kind"] == "packed_eval"]
        t = teacher[-1]["acc"] if teacher else _teacher_best(d)
        best = max((r["acc"] for r in evals), default=float("nan"))
        steps = max((r["step"] for r in evals), default=0)
        p = packed[-1] if packed else {}
        b3 = os.path.join(d, "model_base3.tpack")
        b3_bytes = os.path.getsize(b3) if os.path.isfile(b3) else 0
        b3_ratio = p.get("fp32_bytes", 0) / b3_bytes if b3_bytes else float("nan")
        desc = quant.get("notation", "?") + (f" {quant.get('weight_method')}, act {quant.get('activation_mode')}"
                                             f"/{quant.get('activation_scale')}" if quant else "")
        rows.append(f"| {os.path.basename(d)} | {desc} | {t:.4f} | {best:.4f} | {100 * best / t:.1f}% | "
                    f"{p.get('acc', float('nan')):.4f} | {p.get('fp32_bytes', 0):,} | {p.get('packed_bytes', 0):,} | "
                    f"{p.get('ratio', float('nan')):.2f}x | {b3_bytes:,} | {b3_ratio:.2f}x | {steps} |")
    return "\n".join(rows)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if not args.run_dir:
        raise UserError("--run_dir: required (a run_ternary.py output folder), or use --report")
    from src.config import load_run_config
    from src.runs import ternary
    cfg = load_run_config(args.run_dir, "expected the run's resolved config (student.head_type, "
                          "data.max_seq_length), as run_ternary.py writes it")
    max_pos = args.max_positions if args.max_positions >= 0 else cfg.data.max_seq_length
    eval_sets = task = None
    if args.int8 and "ONNX" not in args.export:
        raise UserError("--int8 rewrites the ONNX export: give --export ONNX")
    if args.eval or args.export:
        from src.runtime import init_context
        init_context(cfg.device_target, cfg.mode, cfg.threads, False)
        task = task_from_config(cfg)
        eval_sets = load_eval_sets(cfg, task) if args.eval else None
    out = args.out or os.path.join(args.run_dir, "model.tpack" if args.codec == "2bit" else "model_base3.tpack")
    result = ternary.pack_run(args.run_dir, args.codec, max_pos, cfg.student.head_type, eval_sets=eval_sets,
                              eval_batch=cfg.eval.batch_size, task=task, fp32_ckpt=args.fp32_ckpt, out_path=out)
    if args.export:
        from src.export import export_checkpoint
        for fmt in args.export:
            info = export_checkpoint(os.path.join(args.run_dir, "config.json"), out, os.path.splitext(out)[0], fmt,
                                     args.export_batch, cfg.data.max_seq_length, head_type=cfg.student.head_type,
                                     ternary=True, device_target=cfg.device_target, int8=args.int8 and fmt == "ONNX")
            print(f"exported {fmt}: {info['file']} (weights stored as "
                  f"{'int8 codes' if info.get('int8_rewrite') else 'fp32 values'}; the packed size is the .tpack)")
    return 0 if result else 1


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
