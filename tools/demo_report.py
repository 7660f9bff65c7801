"""Teacher-vs-student table for a finished task-distillation run, from its own outputs (logs, configs,
checkpoint files), never typed by hand.

    python tools/demo_report.py --td_dir output/td_mr --gd_dir output/gd [--results README.md]
    python tools/demo_report.py --compress_dir output/compress_mr --td_dir output/td_mr --gd_dir output/gd

Prints the table and `The best acc is X` (the student's best dev metric; with --compress_dir the stage table of
that compression pipeline run, stages.json, and the final model's metric). With --results (old name --readme), the
block between `<!-- demo-results:start -->` and `<!-- demo-results:end -->` in that file (README.md holds it)
is replaced by the table; without it nothing is written.
"""
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")   # MindSpore's C++ log: errors only, unless GLOG_v is set (GLOG_v=2: warnings)

from src.cli import doc_parser  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402
from src.tasks import task_from_config

START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"


def best_eval(run_dir):
    from src.runlog import read_records
    evals = read_records(run_dir, "eval")
    if not evals:
        raise UserError(f"{run_dir}/metrics.jsonl has no eval record")
    return evals[-1]["best"], evals


def main_metric(run_dir):
    """The metric the run's eval records call `best` (its task's main metric: acc, f1, mcc, ...)."""
    from src.config import load_run_config
    return task_from_config(load_run_config(run_dir, "run that phase first")).main_metric


def train_seconds(run_dir):
    path = os.path.join(run_dir, "log.txt")
    for line in reversed(open(path, encoding="utf-8").read().splitlines()):
        if line.startswith("training done:"):
            return float(line.split(" in ")[1].split("s")[0])
    return float("nan")


def params_of(ckpt):
    import mindspore as ms
    d = ms.load_checkpoint(ckpt)     # model tensors only: not fit_dense, not the metrics saved beside them
    return sum(int(v.size) for k, v in d.items() if k.startswith(("bert.", "classifier.")))


def main(argv=None):
    ap = doc_parser(__doc__)
    ap.add_argument("--td_dir", default="output/td_mr")
    ap.add_argument("--gd_dir", default="output/gd")
    ap.add_argument("--compress_dir", default=None, help="a run_compress.py output folder: report its stage table")
    ap.add_argument("--block", default="demo-results", help="with --results: the marked block to replace "
                                                             "(<!-- NAME:start --> ... <!-- NAME:end -->)")
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the whole job, for the table")
    ap.add_argument("--results", "--readme", dest="results", default=None, metavar="FILE.md",
                    help="replace the demo-results block of this file (README.md) by the table")
    args = ap.parse_args(argv)
    if args.compress_dir:
        return compress_report(args)
    teacher_dir, td1_dir, td2_dir = (os.path.join(args.td_dir, d) for d in ("teacher", "td1", "td2"))
    t_best, t_evals = best_eval(teacher_dir)
    s_best, s_evals = best_eval(td2_dir)
    metric = main_metric(td2_dir)
    rows = []
    for name, d in (("teacher (all-MiniLM-L6-v2, fine-tuned)", teacher_dir), ("student (TinyBERT GD+TD)", td2_dir)):
        cfg = json.load(open(os.path.join(d, "config.json")))
        ckpt = os.path.join(d, "best.ckpt")
        rows.append((name, f"{cfg['num_hidden_layers']}L/{cfg['hidden_size']}H", params_of(ckpt),
                     os.path.getsize(ckpt)))
    lines = [f"| model | shape | params | checkpoint bytes | dev {metric} | % of teacher |",
             "|---|---|---|---|---|---|"]
    for (name, shape, n, size), best in zip(rows, (t_best, s_best)):
        lines.append(f"| {name} | {shape} | {n:,} | {size:,} | {best:.4f} | {100 * best / t_best:.1f}% |")
    times = {"fine-tune teacher": train_seconds(teacher_dir), "general distillation": train_seconds(args.gd_dir),
             "TD phase 1": train_seconds(td1_dir), "TD phase 2": train_seconds(td2_dir)}
    lines.append("")
    lines.append("Training time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
                 + (f"; whole job incl. data and conversion {args.seconds:.0f}" if args.seconds else ""))
    from tools.machine_info import cpu_model
    cpu = cpu_model()
    lines.append(f"Machine: {cpu}, {os.cpu_count()} CPUs, {platform.system()}, MindSpore graph mode fp32; "
                 f"student/teacher params {rows[1][2] / rows[0][2]:.2f}x, "
                 f"checkpoint {rows[0][3] / rows[1][3]:.2f}x smaller")
    table = "\n".join(lines)
    print(table)
    print(f"The best acc is {s_best:.6f}")
    if args.results:
        from tools.marked_blocks import write_between
        write_between(args.results, START, END, table)


def compress_report(args):
    """The stage table of a compression pipeline run (written by the run from its own outputs), each stage's
    seconds, the teacher's fine-tuning and general distillation times, the machine."""
    from src.runs.compress_report import format_table
    from src.runs.compress_stages import ORDER, read_stage
    path = os.path.join(args.compress_dir, "stages.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} missing: run run_compress.py to the end first")
    rows = json.load(open(path, encoding="utf-8"))
    from src.config import load_run_config
    from src.runs.compress import OPEN_SECTIONS
    cfg = load_run_config(args.compress_dir, "run run_compress.py to the end first", open_sections=OPEN_SECTIONS)
    metric = task_from_config(cfg).main_metric
    lines = format_table(rows, metric, cfg.export.seq_length)
    bytes_json = os.path.join(args.compress_dir, "export_bytes.json")
    if os.path.isfile(bytes_json):
        from src.runs.compress_report import format_bytes
        lines += [""] + format_bytes(json.load(open(bytes_json, encoding="utf-8")))
    times = {"fine-tune teacher": train_seconds(os.path.join(args.td_dir, "teacher")),
             "general distillation": train_seconds(args.gd_dir)}
    for name in ORDER:
        st = read_stage(os.path.join(args.compress_dir, name))
        if st is not None:
            times[f"stage {name}"] = st["seconds"]
    from tools.machine_info import cpu_model
    lines += ["", "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
              + (f"; whole job incl. data and conversion {args.seconds:.0f}" if args.seconds else ""),
              f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()}, MindSpore graph mode fp32 "
              f"training; onnxruntime {cfg.threads} threads for the latency column"]
    table = "\n".join(lines)
    print(table)
    final = rows[-1]
    if final["metric"] is not None:
        print(f"The best acc is {final['metric']:.6f}")
    if args.results:
        from tools.marked_blocks import write_between
        write_between(args.results, f"<!-- {args.block}:start -->", f"<!-- {args.block}:end -->", table)
    return rows


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
