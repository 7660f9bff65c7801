"""TernaryBERT of a width sub-model: which teacher and attention-loss option keeps the most accuracy.

A width sub-model (DynaBERT-style, run_ofa_width.py) has fewer heads per layer than the models it came from, so
TernaryBERT's per-head attention MSE cannot compare it with them. This runs the width stage once on a depth
student, then TernaryBERT (run_ternary.py, W2E2A8, TWN) of the sliced sub-model under each option, every run with
the same step budget and seed, each as a subprocess of the entry scripts:

    a  teacher = the fine-tuned teacher            loss.attention_heads average (uniform layer map)
    b  teacher = the depth student, full width     loss.attention_heads average
    c  teacher = the fp32 sub-model itself         loss.attention_heads each (same heads: TernaryBERT's own setup)
    d  no attention term (loss.attention_weight 0) with the teacher of the best of a-c (--d_teacher to pick one)

    python benchmarks/bench_ternary_attention.py                       # ~20 min on 2 cores (MR, 200 steps each)
    python benchmarks/bench_ternary_attention.py --extra_seed 4321 --results docs/ternary.md
    python benchmarks/bench_ternary_attention.py --quick               # tiny random models and data (seconds)

--extra_seed reruns the two best options of the first seed with a second seed. Each run's best dev metric is the
best of its evals (metrics.jsonl), the packed-model metric is the eval of the model rebuilt from model.tpack; the
table prints them against the fp32 sub-model (the width stage's best at --width) and the fine-tuned teacher (its
fp32 eval as run_ternary.py logs it before training). Seconds: wall time of each subprocess (compile, teacher
baseline, training, packing and evals). Writes <out_dir>/ternary_attention.json; --from_json renders it again.
"""
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import (emit, fmt, machine, machine_line, markdown_table, measured_or_saved,  # noqa: E402
                               write_json)
from src.runlog import read_records  # noqa: E402
from tools.marked_blocks import add_results_arg  # noqa: E402
from src.cli import doc_parser  # noqa: E402

BLOCK = "ternary_attention"
OPTIONS = ("a", "b", "c", "d")
TEACHERS = {"a": "fine-tuned teacher", "b": "depth student (full width)", "c": "fp32 width sub-model"}
QUICK_SEQ = 16


# ------------------------------------------------------------------------------------------------ run records

def parse_ternary_run(run_dir: str, metric: str = "acc") -> dict:
    """A run_ternary.py run folder -> {best, best_step, evals, packed, teacher, steps, train_s}: the best of its
    eval records (not the last one), the packed model's eval, the fp32 teacher's baseline eval (None when the run
    skipped it) and the training time from log.txt."""
    recs = read_records(run_dir)
    evals = [r for r in recs if r["kind"] == "eval"]
    if not evals:
        raise RuntimeError(f"{run_dir}: no eval records")
    best = max(evals, key=lambda r: r[metric])
    packed = [r for r in recs if r["kind"] == "packed_eval"]
    teacher = [r for r in recs if r["kind"] == "teacher_eval"]
    steps = max(r["step"] for r in recs if r["kind"] in ("train", "eval"))
    return {"best": best[metric], "best_step": best["step"], "evals": [r[metric] for r in evals],
            "packed": packed[-1][metric] if packed else None, "teacher": teacher[0][metric] if teacher else None,
            "steps": steps, "train_s": _train_seconds(os.path.join(run_dir, "log.txt"))}


def parse_width_run(run_dir: str, width: float, metric: str = "acc") -> dict:
    """A run_ofa_width.py folder -> {metric (best of `width`), teacher, config, ckpt} of its sliced sub-model."""
    recs = read_records(run_dir)
    rows = [r for r in recs if r["kind"] == "width" and abs(r["width"] - width) < 1e-9 and r.get("depth", 1.0) == 1.0]
    if not rows:
        raise RuntimeError(f"{run_dir}: no width {width} row (widths: "
                           f"{sorted({r['width'] for r in recs if r['kind'] == 'width'})})")
    teacher = [r for r in recs if r["kind"] == "teacher_eval"]
    label = f"{width:.3f}"
    return {"metric": rows[-1]["metric"], "best_step": rows[-1]["best_step"], "heads": rows[-1]["heads"],
            "teacher": teacher[0][metric] if teacher else None,
            "train_s": _train_seconds(os.path.join(run_dir, "log.txt")),
            "config": os.path.join(run_dir, f"config_w{label}.json"),
            "ckpt": os.path.join(run_dir, f"best_w{label}.ckpt")}


def _train_seconds(log_path: str):
    """Seconds of the `training done: ... in Xs (...)` line, or None."""
    if not os.path.isfile(log_path):
        return None
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("training done:") and " in " in line:
                return float(line.split(" in ")[1].split("s")[0])
    return None


# ------------------------------------------------------------------------------------------------- the table

def render(out: dict) -> str:
    """The markdown block: one row per run, the fp32 references first, then the mean of options run twice."""
    ref, teacher = out["fp32_sub_model"], out.get("teacher_metric")
    m = out.get("metric", "acc")

    def pct(v, base):
        return f"{100.0 * v / base:.1f}%" if v is not None and base else "-"

    headers = ["option", "teacher", "attention", "seed", "steps", f"best dev {m}", f"packed-model {m}",
               "% of fp32 w sub-model", "% of fine-tuned teacher", "seconds"]
    rows = []
    if teacher is not None:
        rows.append(["fp32 fine-tuned teacher", "-", "-", "-", "-", f"{teacher:.4f}", "-", pct(teacher, ref["metric"]),
                     "100.0%", "-"])
    if ref.get("teacher") is not None:
        rows.append(["fp32 depth student (full width)", "-", "-", "-", "-", f"{ref['teacher']:.4f}", "-",
                     pct(ref["teacher"], ref["metric"]), pct(ref["teacher"], teacher), "-"])
    rows.append([f"fp32 width {out['width']:g} sub-model ({ref['heads']} heads)", "depth student", "-",
                 str(out["seed"]), out["width_steps"], f"{ref['metric']:.4f}", "-", "100.0%",
                 pct(ref["metric"], teacher), _secs(ref.get("wall_s"))])
    for r in out["runs"]:
        rows.append([r["option"], r["teacher_name"], r["attention"], str(r["seed"]), r["steps"], f"{r['best']:.4f}",
                     "-" if r["packed"] is None else f"{r['packed']:.4f}", pct(r["best"], ref["metric"]),
                     pct(r["best"], teacher), _secs(r.get("wall_s"))])
    text = markdown_table(headers, rows)
    means = []
    for opt in OPTIONS:
        vals = [r["best"] for r in out["runs"] if r["option"] == opt]
        if len(vals) > 1:
            means.append(f"{opt} {statistics.mean(vals):.4f} ({len(vals)} seeds, "
                         f"{pct(statistics.mean(vals), ref['metric'])} of the fp32 sub-model)")
    if means:
        text += "\n\nMean best dev " + m + ": " + "; ".join(means)
    ranked = sorted({r["option"] for r in out["runs"]}, key=lambda o: -_mean(out, o))
    text += f"\n\nRanked by mean best dev {m}: " + " > ".join(f"{o} ({_mean(out, o):.4f})" for o in ranked)
    text += (f"\n\nW2E2A8 (TWN), {out['steps']} steps of batch {out['batch_size']} per run, eval every "
             f"{out['eval_every']}; width stage: widths {' '.join(f'{w:g}' for w in out['width_list'])}, "
             f"{out['width_steps']} steps. Seconds: wall time of each entry-script process (compile, evals and "
             f"packing included).")
    if ref.get("sliced_eval") is not None:
        text += (f"\nThe sliced fp32 sub-model checkpoint (option c's teacher) evaluates to {ref['sliced_eval']:.6f}; "
                 f"the width stage's eval of the supernet at width {out['width']:g}: {ref['metric']:.6f}.")
    if out.get("machine"):
        text += "\n" + machine_line(out["machine"])
    if out.get("quick"):
        text += "\n(--quick: tiny random models and data; the numbers mean nothing)"
    if out.get("partial"):
        text += "\n(partial: the runs that finished before the benchmark stopped)"
    return text


def _secs(v):
    return "-" if v is None else fmt(float(round(v)), 0)


def _mean(out, opt):
    return statistics.mean(r["best"] for r in out["runs"] if r["option"] == opt)


# ------------------------------------------------------------------------------------------------ the runs

def _cli(args: dict) -> list:
    out = []
    for k, v in args.items():
        values = v if isinstance(v, list) else [v]
        out += [f"--{k}"] + [str(x).lower() if isinstance(x, bool) else str(x) for x in values]
    return out


def _run(script: str, overrides: dict, log_path: str, timeout: float) -> float:
    """One entry-script subprocess; its stdout/stderr go to log_path. Returns wall seconds; RuntimeError on failure."""
    env = dict(os.environ)
    env.setdefault("GLOG_v", "3")
    cmd = [sys.executable, os.path.join(ROOT, script)] + _cli(overrides)
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = open(log_path, encoding="utf-8").read()[-2000:]
        raise RuntimeError(f"{script} failed (exit {proc.returncode}), output {log_path}:\n{tail}")
    return wall


def quick_workspace(root: str) -> dict:
    """Tiny random stand-ins: MR-style records (seq 16), a 2-layer 4-head 'fine-tuned teacher' and a 1-layer
    4-head 'depth student' (classifier checkpoints + config.json each)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import mindspore as ms
    import tiny_run
    from src.checkpoint import save_cell
    from src.tinybert_model import BertConfig, BertForSequenceClassification
    data = os.path.join(root, "data")
    tiny_run.write_split(data, "train", 64, 1)
    tiny_run.write_split(data, "dev", 32, 2)
    dirs = {}
    for name, layers in (("teacher", 2), ("student", 1)):
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        cfg = BertConfig(**tiny_run.TINY).replace(num_hidden_layers=layers, num_attention_heads=4,
                                                  initializer_range=0.2)
        ms.set_seed(layers)
        save_cell(BertForSequenceClassification(cfg), os.path.join(d, "best.ckpt"))
        cfg.to_json_file(os.path.join(d, "config.json"))
        dirs[name] = d
    return {"data": data, **dirs}


def measure(args) -> dict:
    os.makedirs(args.out_dir, exist_ok=True)
    student_dir, teacher_dir, data_dir = args.student_dir, args.teacher_dir, args.data_dir
    common = {"threads": args.threads, "data.dir": data_dir, "task.name": args.task}
    if args.quick:
        ws = quick_workspace(os.path.join(args.out_dir, "workspace"))
        student_dir, teacher_dir, data_dir = ws["student"], ws["teacher"], ws["data"]
        common.update({"data.dir": data_dir, "data.max_seq_length": QUICK_SEQ, "data.length_buckets": [QUICK_SEQ],
                       "eval.batch_size": 16, "log_every": 2, "checkpoint.every_steps": 0})
    steps = args.steps or (4 if args.quick else 200)
    width_steps = args.width_steps or (4 if args.quick else 150)
    every = args.eval_every or (2 if args.quick else 50)
    batch = 4 if args.quick else args.batch_size
    width_list = [args.width] if args.single_width or args.width == 1.0 else [1.0, args.width]

    width_dir = os.path.join(args.out_dir, "width")
    wall = _run("run_ofa_width.py", {**common, "seed": args.seed, "output_dir": width_dir,
                                     "teacher.config": os.path.join(student_dir, "config.json"),
                                     "teacher.ckpt": os.path.join(student_dir, "best.ckpt"),
                                     "width_mult_list": width_list, "train.max_steps": width_steps,
                                     "eval.every": every, "latency.runs": 0,
                                     **({"train.batch_size": batch, "importance.max_batches": 2} if args.quick
                                        else {})},
                os.path.join(args.out_dir, "width.out"), args.timeout)
    sub = {**parse_width_run(width_dir, args.width), "wall_s": wall}
    teachers = {"a": teacher_dir, "b": student_dir}

    def teacher_paths(opt):
        if opt == "c":
            return sub["config"], sub["ckpt"]
        return os.path.join(teachers[opt], "config.json"), os.path.join(teachers[opt], "best.ckpt")

    runs = []
    head = {"metric": "acc", "task": args.task, "quick": args.quick, "seed": args.seed, "width": args.width,
            "width_list": width_list, "width_steps": width_steps, "steps": steps, "eval_every": every,
            "batch_size": batch, "fp32_sub_model": sub, "runs": runs, "machine": machine(args.threads),
            "command": "python benchmarks/bench_ternary_attention.py " + " ".join(sys.argv[1:])}

    def ternary(opt, seed, teacher_opt=None):
        teacher_opt = teacher_opt or opt
        config, ckpt = teacher_paths(teacher_opt)
        no_att = opt == "d"
        attention = "none (weight 0)" if no_att else "each" if teacher_opt == "c" else "average"
        out = os.path.join(args.out_dir, f"{opt}_s{seed}")
        over = {**common, "seed": seed, "output_dir": out, "teacher.config": config, "teacher.ckpt": ckpt,
                "student.init": "ckpt", "student.ckpt": sub["ckpt"], "student.config": sub["config"],
                "loss.attention_heads": "each" if teacher_opt == "c" else "average",
                "loss.attention_weight": 0 if no_att else 1.0, "train.max_steps": steps, "eval.every": every,
                "train.batch_size": batch}
        wall = _run("run_ternary.py", over, os.path.join(args.out_dir, f"{opt}_s{seed}.out"), args.timeout)
        rec = parse_ternary_run(os.path.join(out, "w2e2a8"))
        name = TEACHERS[teacher_opt] + (f" (as {teacher_opt})" if no_att else "")
        row = {"option": opt, "teacher_option": teacher_opt, "teacher_name": name, "attention": attention,
               "seed": seed, "wall_s": wall, **rec}
        runs.append(row)
        write_json(os.path.join(args.out_dir, "ternary_attention.partial.json"),   # what --from_json renders if the
                   {**head, "teacher_metric": _teacher_metric(runs), "partial": True})   # later runs never finish
        print(f"option {opt} seed {seed}: best {rec['best']:.4f} (step {rec['best_step']}), packed "
              f"{rec['packed']}, {wall:.0f}s", flush=True)
        return row

    first = [o for o in args.options if o != "d"]
    for opt in first:
        ternary(opt, args.seed)
    d_teacher = args.d_teacher
    if "d" in args.options:
        if d_teacher == "auto":
            d_teacher = max(first, key=lambda o: _mean({"runs": runs}, o)) if first else "c"
        ternary("d", args.seed, d_teacher)
    if args.extra_seed is not None:
        top = sorted({r["option"] for r in runs}, key=lambda o: -_mean({"runs": runs}, o))[:2]
        for opt in top:
            ternary(opt, args.extra_seed, d_teacher if opt == "d" else None)

    teacher_metric = _teacher_metric(runs)
    # the sliced checkpoint, evaluated as option c's teacher, against the width stage's eval of the supernet view
    sub["sliced_eval"] = next((r["teacher"] for r in runs if r["teacher_option"] == "c"), None)
    return {**head, "teacher_metric": teacher_metric, "d_teacher": d_teacher}


def _teacher_metric(runs):
    """The fine-tuned teacher's fp32 metric: the baseline eval of a run that distils from it (option a)."""
    return next((r["teacher"] for r in runs if r["teacher_option"] == "a" and r["teacher"] is not None), None)


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--student_dir", default="output/td_mr/td2", help="depth student: config.json + best.ckpt")
    p.add_argument("--teacher_dir", default="output/td_mr/teacher", help="fine-tuned teacher: config.json + best.ckpt")
    p.add_argument("--data_dir", default="data/mr")
    p.add_argument("--task", default="MR")
    p.add_argument("--width", type=float, default=0.5, help="the sub-model's width multiplier")
    p.add_argument("--single_width", action="store_true",
                   help="train the width stage at --width only (default: widths 1.0 and --width together)")
    p.add_argument("--steps", type=int, default=0, help="TernaryBERT steps per run (default 200, --quick 4)")
    p.add_argument("--width_steps", type=int, default=0, help="width-stage steps (default 150, --quick 4)")
    p.add_argument("--eval_every", type=int, default=0, help="eval every N steps (default 50, --quick 2)")
    p.add_argument("--batch_size", type=int, default=32, help="TernaryBERT batch (the width stage keeps its config's)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--extra_seed", type=int, default=None, help="rerun the two best options with this seed")
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    p.add_argument("--d_teacher", default="auto", choices=("auto", "a", "b", "c"),
                   help="option d's teacher (auto: the best of the a-c runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    p.add_argument("--quick", action="store_true", help="tiny random models and data (tests); numbers meaningless")
    p.add_argument("--out_dir", default="output/bench/ternary_attention")
    p.add_argument("--from_json", default="", help="render a saved ternary_attention.json again (no runs)")
    add_results_arg(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = measured_or_saved(args, measure, render, "ternary_attention.json", "a ternary_attention.json")
    emit(BLOCK, render(out), args.results or None)
    return out


if __name__ == "__main__":
    from src.errors import run_main
    run_main(main, sys.argv[1:])
